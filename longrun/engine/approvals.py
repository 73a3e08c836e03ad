"""Approval checkpoints (SPEC G3): when to ask, what to journal, which answer wins.

The engine journals ``approval_requested`` (step, iteration, a pause key that
is unique per request, and where the wait happens), then asks the approver
port to wait. The answer is journaled once: a decision the CLI journaled
first (it journals, then resumes the paused run) is the decision. When the
wait times out, the journal is read again, so an approval journaled just
before the timeout still wins; otherwise ``approval_timeout`` is journaled and
the job waits in ``WAITING_APPROVAL`` until ``longrun resume``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from longrun import faults
from longrun.engine.ports import Wait
from longrun.engine.session import Session
from longrun.errors import LongrunError
from longrun.execution.checkpoint import patch_stats
from longrun.governance.policy import first_decision_wins
from longrun.journal.state import RunState
from longrun.spec.models import Approval

if TYPE_CHECKING:
    from longrun.engine.loop import Engine

Decision = Literal["approved", "rejected", "timeout"]


def decided(state: RunState, step: str, iteration: int) -> str | None:
    """``approved``/``rejected`` if ``step`` was decided for this ``iteration``."""
    record = state.approvals.get(step)
    if record is not None and record.iteration == iteration:
        return record.decision
    return None


def suspended_here(s: Session, step: str) -> bool:
    """True when this flow run itself suspended at ``step`` and has been resumed (suspend mode)."""
    req = s.state.last_approval_request
    return req is not None and req.step == step and req.mode == "suspend" and req.flow_run_id == s.rt.run_id


def pause_key(step: str, iteration: int, n: int) -> str:
    """``<step>-<iteration>-<n>`` in Prefect's key alphabet (lowercase letters, digits, dashes)."""
    slug = "-".join(filter(None, "".join(c if c.isalnum() else "-" for c in step.lower()).split("-")))
    return f"{slug}-{iteration}-{n}"


def ask(e: Engine, step: str, iteration: int, what: str) -> Decision:
    """An approval checkpoint; its timeout, poll interval and mode come from the ``approvals`` entry of ``step``."""
    s = e.s
    if (done := decided(s.state, step, iteration)) is not None:
        # Decided before (by the CLI while no run was active).
        if done == "approved" and s.state.status != "RUNNING":
            s.start_segment()
        return "approved" if done == "approved" else "rejected"
    entry = next((a for a in s.rt.spec.approvals if a.step_name == step), None)
    defaults = Approval.model_fields
    timeout = float(entry.timeout if entry else defaults["timeout"].default)
    poll = float(entry.poll_interval if entry else defaults["poll_interval"].default)
    mode = entry.mode if entry else "pause"
    req = s.state.last_approval_request
    where = s.ports.approver.where()
    if (
        mode == "suspend"
        and req is not None
        and req.step == step
        and req.iteration == iteration
        and req.flow_run_id == s.rt.run_id
        and req.key
    ):
        key = req.key  # resumed after suspending here: the same key hands back the input
    else:
        key = pause_key(step, iteration, s.state.approval_requests.get((step, iteration), 0) + 1)
        s.emit(
            "approval_requested",
            {
                "step": step,
                "iteration": iteration,
                "key": key,
                "flow_run_id": s.rt.run_id,
                "api_url": where.get("api_url"),
                "timeout_s": timeout,
                "mode": mode,
            },
        )
        faults.point("approval.requested")
    s.say(
        f"  waiting for approval {step!r} (iteration {iteration}): approve in the Prefect UI"
        + (f" ({where['ui_url']})" if where.get("ui_url") else "")
        + f", or run\n    longrun approve {s.rt.job_id} --step {step} --approver NAME [--reject]"
    )
    wait = Wait(step, iteration, key, timeout, poll, mode, describe(s, step, iteration, what=what))
    answer = s.ports.approver.wait(wait)
    s.sync()  # the CLI journals a decision before it resumes the run, or while the pause times out
    journaled = decided(s.state, step, iteration)
    if answer is None and journaled is None:
        s.emit("approval_timeout", {"step": step, "iteration": iteration, "timeout_s": timeout})
        s.say(f"  approval {step!r} timed out after {timeout:g}s; approve, then: longrun resume {s.rt.job_id}")
        return "timeout"
    if journaled is not None or answer is None:
        decision: Decision = "approved" if journaled == "approved" else "rejected"
        record = s.state.approvals[step]
        who, comment = record.approver, record.comment or ""
    else:
        decision = "approved" if answer.decision == "approve" else "rejected"
        who, comment = answer.approver, answer.comment
        try:
            s.emit(
                decision,
                {"step": step, "iteration": iteration, "approver": who, "comment": comment},
                unless=first_decision_wins(step, iteration, decision),
            )
        except LongrunError as exc:
            if exc.code not in ("approval_conflict", "approval_already_decided"):
                raise
            # `longrun approve` journaled a decision between our read and our append: it was first, it wins.
            s.sync()
            record = s.state.approvals[step]
            decision = "approved" if record.decision == "approved" else "rejected"
            who, comment = record.approver, record.comment or ""
    s.say(f"  {decision} {step!r} by {who}" + (f": {comment}" if comment else ""))
    if decision == "approved":
        s.start_segment()  # the run goes on: a new active segment (time spent waiting is not run time)
    return decision


def describe(s: Session, step: str, iteration: int, *, what: str) -> str:
    """The form's description: what is being approved, with the evidence so far."""
    rt, state = s.rt, s.state
    it_dir = rt.paths.iteration_dir(iteration)
    summary = it_dir / "summary.md"
    patch = it_dir / "patch.diff"
    lines = [
        f"### Approve `{step}` — {rt.spec.name} (`{rt.job_id}`), iteration {iteration}",
        "",
        f"- **What:** {what}",
        f"- **Goal:** {rt.spec.goal}",
        f"- **Spend so far:** ${state.usd_total:.4f}, {state.tokens_total} tokens",
        f"- **Checkpoint:** `{it_dir}`" + (" (see `summary.md` there)" if summary.is_file() else ""),
    ]
    if patch.is_file():
        st = patch_stats(patch.read_text(encoding="utf-8", errors="replace"))
        lines.append(f"- **Patch:** {st['files']} file(s), +{st['added']} −{st['removed']}")
    gates = state.gate_results.get(iteration, {})
    if gates:
        lines += ["", "| gate | result |", "|---|---|"]
        lines += [f"| {g} | {'PASS' if r.passed else 'FAIL'} |" for g, r in gates.items()]
    return "\n".join(lines)
