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
``budget_wait`` has no state effect. ``rate_limited`` adds the attempt's
spend and records the wait in ``rate_limited_attempts``; the status stays RUNNING.

To add a status: add the member to :class:`Status`, list it in ``TERMINAL`` if a
run ends there, and add the event's handler to :class:`_Fold`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from longrun.journal.payloads import ApprovalRequested, FrozenDict, GateEvaluated, RateLimited, RunStarted, StageFinished

__all__ = ["TERMINAL", "Decision", "FrozenDict", "RunState", "Status", "UsageEntry"]


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


@dataclass(frozen=True)
class Decision:
    """The last decision on an approval step."""

    decision: str
    approver: str
    comment: str | None
    #: The iteration it was given for (an approval without one applies from the current iteration on).
    iteration: int | None
    ts: str


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
    #: The job this run belongs to (its own id for a journal from before runs).
    job: str | None = None
    #: The intended run this journal records (None before runs).
    run_key: str | None = None
    name: str | None = None
    status: str = Status.PENDING
    stop_reason: str | None = None
    stop_requested: bool = False
    #: Last iteration started (0 if none).
    iteration: int = 0
    iterations_finished: int = 0
    #: Iteration started but not yet finished.
    open_iteration: int | None = None
    #: iteration → {stage: its stage_finished payload}
    stage_results: Mapping[int, Mapping[str, StageFinished]] = _EMPTY
    #: (iteration, stage) → number of stage_started seen
    stage_attempts: Mapping[tuple[int, str], int] = _EMPTY
    #: iteration → {gate: its gate_evaluated payload}
    gate_results: Mapping[int, Mapping[str, GateEvaluated]] = _EMPTY
    #: iteration → {file name: sha256}
    checkpoints: Mapping[int, Mapping[str, str]] = _EMPTY
    usd_total: float = 0.0
    tokens_total: int = 0
    #: Input and output tokens of the stages whose usage format reports them (budgets input_tokens/output_tokens).
    input_tokens_total: int = 0
    output_tokens_total: int = 0
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
    #: approval step → its last decision
    approvals: Mapping[str, Decision] = _EMPTY
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
    #: iteration → the tree it ended with (``checkpoint_written.end_tree``; absent in journals from before it).
    end_trees: Mapping[int, str] = _EMPTY
    #: ``workspace.repo``: the base commit of the job's first clone (``workspace_materialized.commit``).
    workspace_commit: str | None = None
    #: ``workspace.push_branch``: iteration → the commit pushed for it.
    pushed_commits: Mapping[int, str] = _EMPTY
    #: (step, iteration) → number of ``approval_requested`` so far (pause keys are unique per request).
    approval_requests: Mapping[tuple[str, int | None], int] = _EMPTY
    #: The payload of the last ``approval_requested``.
    last_approval_request: ApprovalRequested | None = None
    #: stage → the largest (usd, tokens) one of its runs spent (budget estimates, kept as events arrive).
    stage_max_spend: Mapping[str, tuple[float, int]] = _EMPTY
    #: stage → the largest (input_tokens, output_tokens) one of its runs spent (stages with a usage format).
    stage_max_io: Mapping[str, tuple[int, int]] = _EMPTY
    #: (iteration, stage) → the ``rate_limited`` payloads of that stage in that iteration, in order.
    rate_limited_attempts: Mapping[tuple[int, str], tuple[RateLimited, ...]] = _EMPTY
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
