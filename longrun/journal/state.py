"""RunState: what a job's journal says, as a pure fold over its events.

``replay(events)`` and ``apply(state, event)`` take no clock and do no I/O;
every time they use (``active_seconds``, ``usage_log``) comes from event
timestamps, so replaying the same journal always yields an equal state. Golden
journals in ``tests/fixtures/journals`` pin the result.

The transition rules live in one place, :class:`_Fold` (a private mutable
accumulator, one handler per event type). ``replay`` feeds it every event and
freezes once (linear time); ``apply`` thaws a state, feeds one event and
freezes again.

Status machine (``run_started`` after a terminal status is a resume)::

    PENDING ──run_started──▶ RUNNING ──run_completed──▶ COMPLETED
                               │  ▲    ──run_stopped───▶ STOPPED (stop_reason)
                               │  │    ──run_failed────▶ FAILED  (stop_reason=code)
                               │  └──── run_started ◀── any terminal status

Governance statuses (budget, gate-failure policy, approvals)::

    RUNNING ──stopped_budget─────▶ STOPPED_BUDGET (stop_reason = budget reason)
            ──escalated──────────▶ WAITING_APPROVAL (stop_reason = pending step)
            ──approval_requested─▶ WAITING_APPROVAL
    WAITING_APPROVAL ──approved (the pending step)──▶ APPROVED
    any ──rejected──▶ REJECTED (stop_reason = step)

All four are in ``TERMINAL`` (no run is active; a later ``run_started``
resumes). ``approved``/``rejected`` always record the decision in
``approvals`` (step → last decision); ``approved`` moves the status only
when the job waits for that very step. ``pending_approval`` is the step a
job waits for; ``run_started`` does not clear it (a resume does not bypass an
approval). ``gate_skipped`` records the gate in ``gate_skips``;
``budget_wait`` has no state effect.

To add a status: add the member to :class:`Status`, list it in ``TERMINAL`` if a
run ends there, and add the event's handler to :class:`_Fold`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from longrun.errors import JournalCorrupt
from longrun.journal.events import EVENT_TYPES, Event
from longrun.journal.payloads import ApprovalRequested, RunStarted, format_ts

__all__ = ["TERMINAL", "FrozenDict", "RunState", "Status", "UsageEntry", "apply", "replay"]


class Status(StrEnum):
    """Job status; members are plain ``str`` (``Status.RUNNING == "RUNNING"``)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    STOPPED = "STOPPED"
    FAILED = "FAILED"
    WAITING_APPROVAL = "WAITING_APPROVAL"
    APPROVED = "APPROVED"
    STOPPED_BUDGET = "STOPPED_BUDGET"
    REJECTED = "REJECTED"


#: Statuses in which no run is active; a later ``run_started`` resumes.
TERMINAL: frozenset[Status] = frozenset({Status.COMPLETED, Status.STOPPED, Status.FAILED})
#: Governance statuses: the run ended (paused or refused); a later ``run_started`` resumes.
TERMINAL |= {Status.WAITING_APPROVAL, Status.APPROVED, Status.STOPPED_BUDGET, Status.REJECTED}


class FrozenDict(dict):
    """A read-only dict: equal to, and JSON-serialisable like, a plain dict; picklable."""

    __slots__ = ()

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("RunState mappings are read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]
    __ior__ = _readonly  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))


def _freeze(value: Any) -> Any:
    """Deep-freeze JSON-like data: dicts become FrozenDict, lists become tuples."""
    if isinstance(value, Mapping):
        return FrozenDict({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


@dataclass(frozen=True)
class UsageEntry:
    """One stage's spend, stamped with its ``stage_finished`` time (for sliding windows)."""

    ts: datetime
    usd: float
    tokens: int


_EMPTY: Mapping[Any, Any] = FrozenDict()


@dataclass(frozen=True)
class RunState:
    """Everything the journal says about one job. Build it with :func:`replay`."""

    job_id: str | None = None
    name: str | None = None
    status: str = Status.PENDING
    stop_reason: str | None = None
    stop_requested: bool = False
    #: Last iteration started (0 if none).
    iteration: int = 0
    iterations_finished: int = 0
    #: Iteration started but not yet finished.
    open_iteration: int | None = None
    #: iteration → {stage: stage_finished payload}
    stage_results: Mapping[int, Mapping[str, Mapping[str, Any]]] = _EMPTY
    #: (iteration, stage) → number of stage_started seen
    stage_attempts: Mapping[tuple[int, str], int] = _EMPTY
    #: iteration → {gate: gate_evaluated payload}
    gate_results: Mapping[int, Mapping[str, Mapping[str, Any]]] = _EMPTY
    #: iteration → {file name: sha256}
    checkpoints: Mapping[int, Mapping[str, str]] = _EMPTY
    usd_total: float = 0.0
    tokens_total: int = 0
    usage_log: tuple[UsageEntry, ...] = ()
    #: One fingerprint per finished iteration, in order.
    fingerprints: tuple[str, ...] = ()
    #: Trailing finished iterations whose fingerprint equals the one before.
    no_progress_streak: int = 0
    #: Wall time summed over runs, up to the last event of the current run.
    active_seconds: float = 0.0
    #: Seconds of runs already closed (by a terminal event or a later run_started).
    closed_seconds: float = 0.0
    #: Start and latest event time of the current run's segment (None when no run is active).
    segment_start: datetime | None = None
    segment_end: datetime | None = None
    runs: tuple[str, ...] = ()
    flow_run_ids: tuple[str, ...] = ()
    last_seq: int = 0
    last_event_type: str | None = None
    last_event_ts: datetime | None = None
    #: Latest evidence events (never change ``status``): None before the first
    #: ``evidence_built``, else {"built": {...}, "uploaded": {...} | None,
    #: "upload_failed": {...} | None}, each the event's payload plus its ``ts``.
    evidence: Mapping[str, Any] | None = None
    #: approval step → last decision {decision: approved|rejected, approver, comment, iteration, ts}
    approvals: Mapping[str, Mapping[str, Any]] = _EMPTY
    #: The approval step the job waits for (set by approval_requested/escalated).
    pending_approval: str | None = None
    #: iteration → {gate: reason} for gates skipped by the failure policy
    gate_skips: Mapping[int, Mapping[str, str]] = _EMPTY
    #: Job ids of children spawned by this job, in order.
    children: tuple[str, ...] = ()
    #: The last ``patches_applied`` payload plus its ``ts`` (``longrun apply``), or None.
    patches_applied: Mapping[str, Any] | None = None
    #: Checkpoint iterations removed by ``longrun prune`` (their files live on in the evidence bundle).
    pruned_iterations: tuple[int, ...] = ()
    #: The payload of the last ``run_started`` (names the live run's flow run, pid and host).
    last_run: RunStarted | None = None
    #: iteration → the tree it started from (``iteration_started.start_tree``).
    start_trees: Mapping[int, str | None] = _EMPTY
    #: (step, iteration) → number of ``approval_requested`` so far (pause keys are unique per request).
    approval_requests: Mapping[tuple[str, int | None], int] = _EMPTY
    #: The payload of the last ``approval_requested``.
    last_approval_request: ApprovalRequested | None = None
    #: stage → the largest (usd, tokens) one of its runs spent (budget estimates, kept as events arrive).
    stage_max_spend: Mapping[str, tuple[float, int]] = _EMPTY
    #: gate → iterations (ascending) whose evaluation of the gate failed.
    gate_failed_iterations: Mapping[str, tuple[int, ...]] = _EMPTY
    #: Seq of the event that last ended a run (completed, stopped, failed, rejected, waiting).
    terminal_seq: int = 0

    @property
    def evidence_behind(self) -> bool:
        """True when the run ended after the last evidence bundle was built (or none was)."""
        built = (self.evidence or {}).get("built")
        return self.terminal_seq > 0 and (built is None or (built.get("built_from_seq") or 0) < self.terminal_seq)

    @property
    def is_terminal(self) -> bool:
        """True when the last run ended (completed, stopped or failed)."""
        return self.status in TERMINAL

    def stage_done(self, iteration: int, stage: str) -> bool:
        """True when ``stage`` of ``iteration`` has a ``stage_finished`` (any outcome)."""
        return stage in self.stage_results.get(iteration, _EMPTY)

    def gate_done(self, iteration: int, gate: str) -> bool:
        """True when ``gate`` of ``iteration`` has a ``gate_evaluated``."""
        return gate in self.gate_results.get(iteration, _EMPTY)

    def attempts(self, iteration: int, stage: str) -> int:
        """Number of ``stage_started`` seen for ``stage`` of ``iteration``."""
        return self.stage_attempts.get((iteration, stage), 0)


class _Fold:
    """Mutable accumulator holding the transition rules; never escapes this module."""

    def __init__(self, state: RunState) -> None:
        self.v: dict[str, Any] = {f: getattr(state, f) for f in RunState.__dataclass_fields__}
        # Copy-on-write: a container is thawed (copied) the first time a
        # handler changes it, once per fold, so applying one event costs what
        # that event touches, not the size of the state.
        self._thawed: set[str] = set()
        self._thawed_inner: set[tuple[str, Any]] = set()

    def _list(self, name: str) -> list[Any]:
        if name not in self._thawed:
            self.v[name] = list(self.v[name])
            self._thawed.add(name)
        return self.v[name]  # type: ignore[no-any-return,unused-ignore]

    def _map(self, name: str) -> dict[Any, Any]:
        if name not in self._thawed:
            self.v[name] = dict(self.v[name])
            self._thawed.add(name)
        return self.v[name]  # type: ignore[no-any-return,unused-ignore]

    def _inner(self, name: str, key: Any) -> dict[Any, Any]:
        outer = self._map(name)
        if (name, key) not in self._thawed_inner:
            outer[key] = dict(outer.get(key, _EMPTY))
            self._thawed_inner.add((name, key))
        return outer[key]  # type: ignore[no-any-return,unused-ignore]

    def freeze(self) -> RunState:
        v = dict(self.v)
        for name, key in self._thawed_inner:
            v[name][key] = FrozenDict(v[name][key])
        for name in self._thawed:
            v[name] = tuple(v[name]) if isinstance(v[name], list) else FrozenDict(v[name])
        return RunState(**v)

    def feed(self, event: Event) -> _Fold:
        v = self.v
        if event.seq <= v["last_seq"]:
            raise JournalCorrupt(f"event seq {event.seq} does not follow seq {v['last_seq']}")
        if v["job_id"] is None:
            v["job_id"] = event.job_id
        elif event.job_id != v["job_id"]:
            raise JournalCorrupt(f"event seq {event.seq} is for job {event.job_id}, not {v['job_id']}")
        self._seq = event.seq
        _HANDLERS[event.type](self, event.payload, event.ts)
        self._extend_segment(event.ts)
        v.update(last_seq=event.seq, last_event_type=event.type, last_event_ts=event.ts)
        return self

    # -- wall time ---------------------------------------------------------------

    def _extend_segment(self, ts: datetime) -> None:
        v = self.v
        if v["segment_start"] is None:
            return
        if v["segment_end"] is None or ts > v["segment_end"]:
            v["segment_end"] = ts
        span = (v["segment_end"] - v["segment_start"]).total_seconds()
        v["active_seconds"] = v["closed_seconds"] + max(0.0, span)

    def _close_segment(self, ts: datetime) -> None:
        self._extend_segment(ts)
        self.v.update(closed_seconds=self.v["active_seconds"], segment_start=None, segment_end=None)

    def _finish(self, status: Status, reason: str | None, ts: datetime) -> None:
        self.v.update(status=status, stop_reason=reason, terminal_seq=self._seq)
        self._close_segment(ts)

    # -- handlers, one per event type ---------------------------------------------

    def _on_job_registered(self, p: Any, ts: datetime) -> None:
        self.v.update(job_id=p.job_id, name=p.name)

    def _on_run_started(self, p: Any, ts: datetime) -> None:
        v = self.v
        if v["segment_start"] is not None:  # previous run ended without a terminal event
            self._close_segment(v["segment_end"])
        v.update(status=Status.RUNNING, stop_reason=None, stop_requested=False)
        v.update(segment_start=ts, segment_end=ts, last_run=p)
        self._list("runs").append(p.run_id)
        if p.flow_run_id is not None:
            self._list("flow_run_ids").append(p.flow_run_id)

    def _on_iteration_started(self, p: Any, ts: datetime) -> None:
        self.v.update(iteration=max(self.v["iteration"], p.iteration), open_iteration=p.iteration)
        self._map("start_trees")[p.iteration] = p.start_tree

    def _on_stage_started(self, p: Any, ts: datetime) -> None:
        key = (p.iteration, p.stage)
        attempts = self._map("stage_attempts")
        attempts[key] = attempts.get(key, 0) + 1

    def _on_stage_finished(self, p: Any, ts: datetime) -> None:
        v = self.v
        self._inner("stage_results", p.iteration)[p.stage] = _freeze(p.model_dump(mode="json"))
        v["usd_total"] += p.usage.usd
        v["tokens_total"] += p.usage.tokens
        self._list("usage_log").append(UsageEntry(ts=ts, usd=p.usage.usd, tokens=p.usage.tokens))
        spend = self._map("stage_max_spend")
        usd, tokens = spend.get(p.stage, (0.0, 0))
        spend[p.stage] = (max(usd, float(p.usage.usd)), max(tokens, int(p.usage.tokens)))

    def _on_gate_evaluated(self, p: Any, ts: datetime) -> None:
        self._inner("gate_results", p.iteration)[p.gate] = _freeze(p.model_dump(mode="json"))
        failed = self._map("gate_failed_iterations")
        its = tuple(i for i in failed.get(p.gate, ()) if i != p.iteration)  # the last evaluation of an iteration counts
        failed[p.gate] = its if p.passed else tuple(sorted((*its, p.iteration)))

    def _on_checkpoint_written(self, p: Any, ts: datetime) -> None:
        self._map("checkpoints")[p.iteration] = _freeze(p.files)

    def _on_iteration_finished(self, p: Any, ts: datetime) -> None:
        v = self.v
        fps = self._list("fingerprints")
        v["no_progress_streak"] = v["no_progress_streak"] + 1 if fps and fps[-1] == p.fingerprint else 0
        fps.append(p.fingerprint)
        v["iterations_finished"] += 1
        if v["open_iteration"] == p.iteration:
            v["open_iteration"] = None

    def _on_stop_requested(self, p: Any, ts: datetime) -> None:
        self.v["stop_requested"] = True

    def _on_run_completed(self, p: Any, ts: datetime) -> None:
        self._finish(Status.COMPLETED, None, ts)

    def _on_run_stopped(self, p: Any, ts: datetime) -> None:
        self._finish(Status.STOPPED, p.reason, ts)

    def _on_run_failed(self, p: Any, ts: datetime) -> None:
        self._finish(Status.FAILED, p.code, ts)

    # -- governance (budget, gate-failure policy, approvals) ----------------------
    # These mappings are rebuilt copy-on-write (few events), so _Fold's
    # thaw/freeze lists need no entry for them.

    def _on_budget_wait(self, p: Any, ts: datetime) -> None:
        """The run sleeps for the hourly window; its status stays RUNNING (time waiting is run time)."""

    def _on_stopped_budget(self, p: Any, ts: datetime) -> None:
        self._finish(Status.STOPPED_BUDGET, p.reason, ts)

    def _wait_for(self, step: str, ts: datetime) -> None:
        self.v["pending_approval"] = step
        self._finish(Status.WAITING_APPROVAL, step, ts)

    def _on_escalated(self, p: Any, ts: datetime) -> None:
        self._wait_for(p.step, ts)

    def _on_approval_requested(self, p: Any, ts: datetime) -> None:
        requests = self._map("approval_requests")
        requests[(p.step, p.iteration)] = requests.get((p.step, p.iteration), 0) + 1
        self.v["last_approval_request"] = p
        self._wait_for(p.step, ts)

    def _decide(self, p: Any, decision: str, ts: datetime) -> None:
        # An approval given without an iteration (the CLI) applies from the current one on.
        iteration = p.iteration if p.iteration is not None else self.v["iteration"]
        record = {"decision": decision, "approver": p.approver, "comment": p.comment, "iteration": iteration}
        record["ts"] = format_ts(ts)
        self.v["approvals"] = FrozenDict({**self.v["approvals"], p.step: _freeze(record)})
        if self.v["pending_approval"] == p.step:
            self.v["pending_approval"] = None

    def _on_approved(self, p: Any, ts: datetime) -> None:
        waiting = self.v["status"] == Status.WAITING_APPROVAL and self.v["pending_approval"] == p.step
        self._decide(p, "approved", ts)
        if waiting:
            self.v.update(status=Status.APPROVED, stop_reason=p.step)

    def _on_rejected(self, p: Any, ts: datetime) -> None:
        self._decide(p, "rejected", ts)
        self._finish(Status.REJECTED, p.step, ts)

    def _on_approval_timeout(self, p: Any, ts: datetime) -> None:
        """The wait ended unanswered; the job stays WAITING_APPROVAL for ``p.step``."""

    def _on_child_spawned(self, p: Any, ts: datetime) -> None:
        if p.child_job_id not in self.v["children"]:
            self.v["children"] = self.v["children"] + (p.child_job_id,)

    def _on_gate_skipped(self, p: Any, ts: datetime) -> None:
        skips = self.v["gate_skips"]
        inner = FrozenDict({**skips.get(p.iteration, _EMPTY), p.gate: p.reason})
        self.v["gate_skips"] = FrozenDict({**skips, p.iteration: inner})

    def _on_patches_applied(self, p: Any, ts: datetime) -> None:
        self.v["patches_applied"] = _freeze(_stamped(p, ts))

    def _on_pruned(self, p: Any, ts: datetime) -> None:
        self.v["pruned_iterations"] = tuple(sorted(set(self.v["pruned_iterations"]) | set(p.iterations)))

    # -- evidence (C3): status never changes; copy-on-write like governance ------

    def _evidence(self, key: str, p: Any, ts: datetime, **reset: None) -> None:
        record = _stamped(p, ts)
        current = self.v["evidence"] or {"built": None, "uploaded": None, "upload_failed": None}
        self.v["evidence"] = _freeze({**current, **reset, key: record})

    def _on_evidence_built(self, p: Any, ts: datetime) -> None:
        previous = (self.v["evidence"] or {}).get("built")
        if previous is not None and previous.get("sha256") == p.sha256:
            self._evidence("built", p, ts)  # the same bundle again: its upload still stands
        else:
            self._evidence("built", p, ts, uploaded=None, upload_failed=None)

    def _on_evidence_uploaded(self, p: Any, ts: datetime) -> None:
        self._evidence("uploaded", p, ts, upload_failed=None)

    def _on_evidence_upload_failed(self, p: Any, ts: datetime) -> None:
        self._evidence("upload_failed", p, ts)


def _handlers() -> dict[str, Callable[[_Fold, Any, datetime], None]]:
    """Every event type's transition rule; a type without one fails at import, not at replay."""
    missing = [t for t in EVENT_TYPES if not hasattr(_Fold, f"_on_{t}")]
    if missing:
        raise TypeError(f"RunState fold has no handler for event type(s): {', '.join(missing)}")
    return {t: getattr(_Fold, f"_on_{t}") for t in EVENT_TYPES}


_HANDLERS = _handlers()


def _stamped(p: Any, ts: datetime) -> dict[str, Any]:
    """An event's payload plus its ``ts`` (as the journal writes it)."""
    return {**p.model_dump(mode="json"), "ts": format_ts(ts)}


def apply(state: RunState, event: Event) -> RunState:
    """The state after ``event``. Pure: ``state`` is not changed.

    Raises :class:`JournalCorrupt` if ``event.seq`` does not follow
    ``state.last_seq`` or the event belongs to another job.
    """
    return _Fold(state).feed(event).freeze()


def replay(events: Iterable[Event]) -> RunState:
    """Fold ``events`` (in journal order) from an empty state."""
    fold = _Fold(RunState())
    for event in events:
        fold.feed(event)
    return fold.freeze()
