"""Acting on the failure-policy verdict of a finished iteration (SPEC E6, G3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from longrun import faults
from longrun.engine import approvals
from longrun.governance.policy import judge_iteration
from longrun.journal.payloads import escalation_step

if TYPE_CHECKING:
    from longrun.engine.loop import Engine


def conclude(e: Engine, iteration: int) -> bool:
    """True to run another iteration; False when the run ends (completed, failed,
    rejected, or waiting for a human after a timeout)."""
    s, rt = e.s, e.s.rt
    while True:
        verdict = judge_iteration(s.state, iteration, e.plan.gates, rt.spec.on_failure)
        for type_, payload in verdict.events(s.state):
            if type_ == "gate_skipped":
                s.emit(type_, payload)
        if verdict.action == "retry":
            return True
        if verdict.action == "abort":
            s.emit("run_failed", {"code": verdict.code, "message": verdict.reason})
            s.say(f"failed after {iteration} iteration(s): {verdict.reason}")
            return False
        step = verdict.step or escalation_step(verdict.gate or "")
        if verdict.action == "escalate":
            if approvals.decided(s.state, step, iteration) == "approved":
                return True  # answered while no run was active: go on with the next iteration
            s.emit("escalated", {"iteration": iteration, "gate": verdict.gate, "reason": verdict.reason, "step": step})
            # Approved: the policy grants a fresh round of retries.
            what = f"continue after gate {verdict.gate!r} failed: {verdict.reason}"
            return approvals.ask(e, step, iteration, what) == "approved"
        if verdict.action == "approval":
            if approvals.ask(e, step, iteration, f"pass approval gate {verdict.gate!r}") != "approved":
                return False
            continue  # judge again: the approval gate now passes
        for a in rt.spec.approvals:
            if a.after == "gates":
                if approvals.ask(e, a.step_name, iteration, "complete the job: all required gates passed") != "approved":
                    return False
        s.emit("run_completed", {"iteration": iteration, "reason": verdict.reason})
        faults.point("run.completed")
        s.say(f"completed after {iteration} iteration(s): {verdict.reason}")
        return False
