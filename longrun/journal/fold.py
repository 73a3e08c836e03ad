"""The fold: one transition rule per event type, applied copy-on-write.

:func:`apply` returns the state after one event without changing the old one;
a container is copied the first time a handler changes it, once per fold, so
one event costs what it touches, not the size of the state. :func:`replay`
folds a whole journal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from longrun.errors import JournalCorrupt
from longrun.journal.events import EVENT_TYPES, Event
from longrun.journal.payloads import FrozenDict, format_ts, freeze
from longrun.journal.state import _EMPTY, Decision, RunState, Status, UsageEntry

__all__ = ["apply", "replay"]


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
        self.v.update(job_id=p.job_id, name=p.name, job=p.job or p.job_id, run_key=p.run_key)

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

    def _spend(self, usage: Any, ts: datetime) -> None:
        v = self.v
        v["usd_total"] += usage.usd
        v["tokens_total"] += usage.tokens
        v["input_tokens_total"] += usage.input_tokens or 0
        v["output_tokens_total"] += usage.output_tokens or 0
        self._list("usage_log").append(UsageEntry(ts=ts, usd=usage.usd, tokens=usage.tokens))

    def _on_stage_finished(self, p: Any, ts: datetime) -> None:
        self._inner("stage_results", p.iteration)[p.stage] = p
        self._spend(p.usage, ts)
        spend = self._map("stage_max_spend")
        usd, tokens = spend.get(p.stage, (0.0, 0))
        spend[p.stage] = (max(usd, float(p.usage.usd)), max(tokens, int(p.usage.tokens)))
        if p.usage.input_tokens is not None or p.usage.output_tokens is not None:
            io = self._map("stage_max_io")
            i, o = io.get(p.stage, (0, 0))
            io[p.stage] = (max(i, p.usage.input_tokens or 0), max(o, p.usage.output_tokens or 0))

    def _on_rate_limited(self, p: Any, ts: datetime) -> None:
        # A rate-limited attempt's spend is real spend; it does not raise the stage's estimate.
        self._spend(p.usage, ts)
        seen = self._map("rate_limited_attempts")
        seen[(p.iteration, p.stage)] = (*seen.get((p.iteration, p.stage), ()), p)

    def _on_gate_evaluated(self, p: Any, ts: datetime) -> None:
        self._inner("gate_results", p.iteration)[p.gate] = p
        failed = self._map("gate_failed_iterations")
        its = failed.get(p.gate, ())
        if p.iteration in its[-1:]:  # evaluated again in the same iteration: the last evaluation counts
            its = its[:-1]
        if not p.passed:
            its = (*its, p.iteration) if not its or its[-1] < p.iteration else tuple(sorted({*its, p.iteration}))
        failed[p.gate] = its

    def _on_checkpoint_written(self, p: Any, ts: datetime) -> None:
        self._map("checkpoints")[p.iteration] = freeze(p.files)
        if p.end_tree is not None:
            self._map("end_trees")[p.iteration] = p.end_tree

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
        self._map("approvals")[p.step] = Decision(decision, p.approver, p.comment, iteration, format_ts(ts))
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
        self.v["patches_applied"] = freeze(_stamped(p, ts))

    def _on_workspace_materialized(self, p: Any, ts: datetime) -> None:
        if self.v["workspace_commit"] is None:  # the first clone pins the base for every later one
            self.v["workspace_commit"] = p.commit

    def _on_workspace_pushed(self, p: Any, ts: datetime) -> None:
        self.v["pushed_commits"] = FrozenDict({**self.v["pushed_commits"], p.iteration: p.commit})

    def _on_workspace_push_failed(self, p: Any, ts: datetime) -> None:
        """Journaled for the record; the run goes on and the next iteration pushes again."""

    def _on_pruned(self, p: Any, ts: datetime) -> None:
        self.v["pruned_iterations"] = tuple(sorted(set(self.v["pruned_iterations"]) | set(p.iterations)))

    # -- evidence (C3): status never changes; copy-on-write like governance ------

    def _evidence(self, key: str, p: Any, ts: datetime, **reset: None) -> None:
        record = _stamped(p, ts)
        current = self.v["evidence"] or {"built": None, "uploaded": None, "upload_failed": None}
        self.v["evidence"] = freeze({**current, **reset, key: record})

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
