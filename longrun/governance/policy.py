"""Gate-failure policy (SPEC E6), pure: what a failed required gate does to the run.

A gate's ``on_failure`` (else the job's ``on_failure``) names one of four
actions. ``failures_so_far`` always comes from the journal
(:func:`gate_failures`), so every count survives restarts and new flow runs.

``retry`` (the default)
    Run another iteration while ``failures_so_far <= max_retries``: the first
    failure is not a retry, so a gate is evaluated at most ``1 + max_retries``
    times. Once the retries are used up, ``retry`` becomes ``abort`` with code
    ``gate_retries_exhausted`` (not ``escalate``: a job that wants a human at
    that point says ``escalate``).
``escalate``
    The same automatic retries first (``max_retries`` counts the retries
    *before* escalation, as in the runledger seed; ``max_retries: 0``
    escalates on the first failure), then the run pauses for a human: an
    ``escalated`` event (status ``WAITING_APPROVAL``, resumable) whose ``step``
    is ``escalate:<gate>``. Approving that step grants a fresh round of
    ``max_retries`` retries: only failures in iterations after the approval
    count (:func:`policy_failures`). Rejecting it ends the job (``REJECTED``).
``skip``
    Immediately: the gate is recorded as skipped (``gate_skipped``) and does
    not block completion — an iteration whose required gates all passed or
    were skipped completes the run. (Strict mode still reports a skipped
    required gate as unmet; see :mod:`longrun.governance.waiver`.)
``abort``
    Immediately: the run fails (``run_failed`` with code ``gate_failed``).

Optional gates are reported, never judged. An ``approval`` gate is not
subject to ``on_failure``: it passes once its step is approved
(:func:`approval_status`), else the run waits for it (``approval_requested``).

:func:`judge_iteration` combines the gates of one iteration into one verdict
(precedence ``abort`` > ``escalate`` > ``approval`` > ``retry`` > ``complete``)
and lists the events the flow should journal for it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from longrun.errors import LongrunError
from longrun.journal.payloads import escalation_step
from longrun.journal.state import RunState
from longrun.spec.compile import PlannedGate
from longrun.spec.models import ApprovalGate, FailurePolicy

__all__ = [
    "IterationVerdict",
    "PolicyDecision",
    "approval_status",
    "blocking_approval",
    "decide",
    "escalation_step",
    "gate_failures",
    "judge_iteration",
    "policy_failures",
]

Action = Literal["retry", "escalate", "skip", "abort"]


@dataclass(frozen=True)
class PolicyDecision:
    """What one failed gate does. ``code`` is set for ``abort`` (the ``run_failed`` code)."""

    action: Action
    reason: str
    retries_left: int
    code: str | None = None


def gate_failures(state: RunState, gate_id: str, *, after_iteration: int = 0) -> int:
    """Failed ``gate_evaluated`` events of ``gate_id`` in iterations ``> after_iteration``.

    One per iteration at most (the flow journals each gate once per iteration).
    """
    failed = state.gate_failed_iterations.get(gate_id, ())
    return len(failed) - bisect.bisect_right(failed, after_iteration)


def policy_failures(state: RunState, gate_id: str) -> int:
    """The count :func:`decide` takes: failures since the last approved escalation of the gate."""
    record = state.approvals.get(escalation_step(gate_id))
    after = int(record.iteration or 0) if record is not None and record.decision == "approved" else 0
    return gate_failures(state, gate_id, after_iteration=after)


def decide(
    gate_id: str,
    gate_policy: FailurePolicy | None,
    job_policy: FailurePolicy,
    failures_so_far: int,
) -> PolicyDecision:
    """The policy decision for a required gate that has just failed.

    ``failures_so_far`` includes the failure being decided (so it is >= 1).
    ``retries_left`` is how many automatic retries remain after this decision.
    """
    if failures_so_far < 1:
        raise ValueError(f"decide() is called after a failure; failures_so_far={failures_so_far}")
    policy = gate_policy if gate_policy is not None else job_policy
    n, m = failures_so_far, policy.max_retries
    times = f"failed {n} time{'s' if n != 1 else ''}"
    if policy.action == "skip":
        return PolicyDecision("skip", f"gate {gate_id!r} {times}; skipped by policy", 0)
    if policy.action == "abort":
        return PolicyDecision("abort", f"gate {gate_id!r} {times}; policy is abort", 0, code="gate_failed")
    if n <= m:
        return PolicyDecision("retry", f"gate {gate_id!r} {times}; retry {n} of {m}", m - n)
    if policy.action == "escalate":
        return PolicyDecision("escalate", f"gate {gate_id!r} {times}; {m} retries used, escalating to a human", 0)
    return PolicyDecision("abort", f"gate {gate_id!r} {times}; all {m} retries used", 0, code="gate_retries_exhausted")


def approval_status(state: RunState, step: str) -> Literal["approved", "rejected", "pending"]:
    """The last decision journaled for approval ``step``, or ``pending``."""
    record = state.approvals.get(step)
    return "pending" if record is None else record.decision  # type: ignore[return-value]


def blocking_approval(state: RunState) -> str | None:
    """The step a (resumed) run must still wait for, or ``None``.

    A ``run_started`` does not clear ``pending_approval``: resuming a job that
    waits for a step, before anyone approved it, must not run anything.
    """
    step = state.pending_approval
    if step is not None and approval_status(state, step) != "approved":
        return step
    return None


@dataclass(frozen=True)
class IterationVerdict:
    """How one iteration's gates end it.

    ``action``: ``complete`` (every required gate passed or was skipped),
    ``retry`` (run another iteration), ``escalate`` / ``approval`` (wait for
    ``step``), ``abort`` (fail with ``code``).
    """

    action: Literal["complete", "retry", "escalate", "approval", "abort"]
    iteration: int
    reason: str
    code: str | None = None
    step: str | None = None
    gate: str | None = None
    decisions: dict[str, PolicyDecision] = field(default_factory=dict)
    #: Required gates skipped by policy in this iteration (``gate_skipped`` to journal).
    skipped: tuple[str, ...] = ()

    @property
    def gates_passed(self) -> bool:
        """For ``iteration_finished.gates_passed``: required gates passed or skipped."""
        return self.action == "complete"

    def events(self, state: RunState | None = None) -> list[tuple[str, dict[str, Any]]]:
        """The events to journal, in order: ``gate_skipped`` for each skip, then the
        verdict's own event (none for ``retry``).

        ``run_completed`` / ``run_failed`` / ``escalated`` / ``approval_requested``
        end the run, so append them after ``checkpoint_written`` and
        ``iteration_finished``; ``gate_skipped`` events already in ``state`` are
        left out, so a resumed flow journals each fact once.
        """
        done = state.gate_skips.get(self.iteration, {}) if state is not None else {}
        out: list[tuple[str, dict[str, Any]]] = [
            ("gate_skipped", {"iteration": self.iteration, "gate": g, "reason": self.decisions[g].reason})
            for g in self.skipped
            if g not in done
        ]
        if self.action == "complete":
            out.append(("run_completed", {"iteration": self.iteration, "reason": self.reason}))
        elif self.action == "abort":
            out.append(("run_failed", {"code": self.code, "message": self.reason}))
        elif self.action == "escalate":
            out.append(("escalated", {"iteration": self.iteration, "gate": self.gate, "reason": self.reason, "step": self.step}))
        elif self.action == "approval":
            out.append(("approval_requested", {"step": self.step, "iteration": self.iteration}))
        return out


def judge_iteration(
    state: RunState,
    iteration: int,
    gates: Sequence[PlannedGate],
    job_policy: FailurePolicy,
) -> IterationVerdict:
    """Combine the journaled gate results of ``iteration`` into one verdict.

    Call it after every gate of the iteration has its ``gate_evaluated`` in
    ``state``. A required gate with no result counts as failed. Gates are
    considered in plan order; the first gate to abort or escalate names the
    verdict.
    """
    if not any(pg.required for pg in gates):
        # Nothing proves completion; the job runs until a stop condition ends it.
        return IterationVerdict("retry", iteration, "no required gate: the job runs until a stop condition")
    results = state.gate_results.get(iteration, {})
    skipped_before = state.gate_skips.get(iteration, {})
    decisions: dict[str, PolicyDecision] = {}
    skipped: list[str] = []
    waiting: tuple[str, str] | None = None  # (gate, step) of the first unapproved approval gate
    for pg in gates:
        if not pg.required:
            continue
        result = results.get(pg.id)
        if isinstance(pg.gate, ApprovalGate):
            approval_step = pg.gate.step
            if (result is not None and result.passed) or approval_status(state, approval_step) == "approved":
                continue
            if waiting is None:
                waiting = (pg.id, approval_step)
            continue
        if result is not None and result.passed:
            continue
        if pg.id in skipped_before:  # decided (and journaled) before a restart
            decisions[pg.id] = PolicyDecision("skip", skipped_before[pg.id], 0)
            skipped.append(pg.id)
            continue
        decision = decide(pg.id, pg.gate.on_failure, job_policy, max(1, policy_failures(state, pg.id)))
        decisions[pg.id] = decision
        if decision.action == "skip":
            skipped.append(pg.id)
    for action in ("abort", "escalate"):
        for gate, d in decisions.items():
            if d.action == action:
                step = escalation_step(gate) if action == "escalate" else None
                return IterationVerdict(
                    action,
                    iteration,
                    d.reason,
                    code=d.code,
                    step=step,
                    gate=gate,
                    decisions=decisions,
                    skipped=tuple(skipped),
                )
    if waiting is not None:
        gate, step = waiting
        return IterationVerdict(
            "approval",
            iteration,
            f"gate {gate!r} waits for approval {step!r}",
            step=step,
            gate=gate,
            decisions=decisions,
            skipped=tuple(skipped),
        )
    retries = [g for g, d in decisions.items() if d.action == "retry"]
    if retries:
        reason = "; ".join(decisions[g].reason for g in retries)
        return IterationVerdict("retry", iteration, reason, decisions=decisions, skipped=tuple(skipped))
    reason = "all required gates passed" + (f" ({len(skipped)} skipped by policy)" if skipped else "")
    return IterationVerdict("complete", iteration, reason, decisions=decisions, skipped=tuple(skipped))


def first_decision_wins(step: str, iteration: int | None, decision: str) -> Callable[[RunState], LongrunError | None]:
    """The condition of a decision's append: no decision on ``step`` for ``iteration`` is journaled yet.

    Used with ``Journal.append(..., unless=...)``, so of two concurrent
    deciders exactly one is recorded. The refusal names who decided first;
    its code is ``approval_already_decided`` when the first decision is the
    same one (nothing to do), ``approval_conflict`` when it differs.
    """

    def check(state: RunState) -> LongrunError | None:
        record = state.approvals.get(step)
        if record is None or (iteration is not None and record.iteration != iteration):
            return None
        who = f"{record.decision} by {record.approver or 'someone'}" + (f" at {record.ts}" if record.ts else "")
        if record.decision == decision:
            return LongrunError(f"step {step!r} was already {who}; nothing recorded", code="approval_already_decided")
        return LongrunError(f"step {step!r} was already {who}; a second, different decision is refused", code="approval_conflict")

    return check
