"""Approval checkpoints on Prefect's ``pause_flow_run`` (SPEC G3).

At a checkpoint the flow journals ``approval_requested`` (step, iteration, the
pause key, its flow run id and the API URL it talks to), then pauses with a
typed input form. Three ways to answer it:

* the Prefect UI's **Resume** form (decision, approver, comment);
* ``longrun approve JOB --step S --approver NAME [--reject]``, which finds the
  paused run through the journal and resumes it with the same input;
* the REST API: ``POST /api/flow_runs/<id>/resume`` with
  ``{"run_input": {"decision": "approve", "approver": "...", "comment": "..."}}``.

When the flow resumes it journals ``approved``/``rejected`` with the approver
(one writer, so the decision is journaled once). A wait that times out is
journaled as ``approval_timeout``; the job then waits in WAITING_APPROVAL and
is continued by ``longrun resume`` once someone approves.

Prefect traps handled here:

* a pause key reused within one flow run is rejected by the orchestrator and
  ``pause_flow_run`` returns the *old* input without pausing: every key is
  ``<step>-<iteration>-<n>`` with ``n`` counted from the journal;
* decisions are keyed by step *and* iteration, so an ``every_iteration``
  approval is asked again each iteration.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.input import RunInput
from pydantic import Field

Decision = Literal["approved", "rejected", "timeout"]


class ApprovalInput(RunInput):
    """The Resume form."""

    decision: Literal["approve", "reject"] = Field("approve", description="approve to continue, reject to end the run")
    approver: str = Field(..., min_length=1, description="who decides (journaled)")
    comment: str = Field("", description="optional note, journaled with the decision")


def decided(state: Any, step: str, iteration: int) -> str | None:
    """``approved``/``rejected`` if ``step`` was decided for this ``iteration``."""
    record = state.approvals.get(step)
    if record is not None and record.get("iteration") == iteration:
        return record["decision"]
    return None


def checkpoint(
    run: Any,
    step: str,
    iteration: int,
    *,
    timeout: float,
    poll_interval: float,
    description: str,
    mode: str = "pause",
) -> Decision:
    """Wait for a human decision on ``step`` in ``iteration``; journal it; return it."""
    if (done := decided(run.state, step, iteration)) is not None:
        # Decided before (by the CLI while no run was active, or journaled by
        # the CLI just before it resumed a paused run).
        if done == "approved" and run.state.status != "RUNNING":
            run.start_segment()
        return done
    from prefect.client.orchestration import get_client

    requests = [
        e
        for e in run.journal.read()
        if e.type == "approval_requested" and e.payload.step == step and e.payload.iteration == iteration
    ]
    ours = requests[-1] if requests and (requests[-1].payload.model_extra or {}).get("flow_run_id") == run.rt.run_id else None
    if ours is not None and mode == "suspend":
        # This flow run suspended here and was resumed: the same key makes
        # Prefect hand back the input instead of suspending again.
        key = ours.payload.model_extra["key"]
    else:
        # Prefect keys: lowercase letters, digits and dashes only.
        slug = "-".join(filter(None, "".join(c if c.isalnum() else "-" for c in step.lower()).split("-")))
        key = f"{slug}-{iteration}-{len(requests) + 1}"
        with get_client(sync_client=True) as client:
            api_url = str(client.api_url).rstrip("/")
        run.emit(
            "approval_requested",
            {
                "step": step,
                "iteration": iteration,
                "key": key,
                "flow_run_id": run.rt.run_id,
                "api_url": api_url,
                "timeout_s": timeout,
                "mode": mode,
            },
        )
    run.say(
        f"  waiting for approval {step!r} (iteration {iteration}): approve in the Prefect UI, or run\n"
        f"    longrun approve {run.rt.job_id} --step {step} --approver NAME [--reject]"
    )
    # Only the description: Prefect 3.8.8 rebuilds every field passed here and
    # drops its help text, and the class default already is "approve".
    form = ApprovalInput.with_initial_data(description=description)
    try:
        if mode == "suspend":
            # The process exits here (Prefect's Pause signal) and the worker is freed.
            answer = suspend_flow_run(wait_for_input=form, timeout=math.ceil(timeout), key=key)
        else:
            answer = pause_flow_run(
                wait_for_input=form, timeout=math.ceil(timeout), poll_interval=math.ceil(poll_interval), key=key
            )
    except FlowPauseTimeout:
        run.emit("approval_timeout", {"step": step, "iteration": iteration, "timeout_s": timeout})
        run.say(f"  approval {step!r} timed out after {timeout:g}s; approve, then: longrun resume {run.rt.job_id}")
        return "timeout"
    run.refresh()
    decision: Decision = "approved" if answer.decision == "approve" else "rejected"
    if decided(run.state, step, iteration) is None:
        run.emit(decision, {"step": step, "iteration": iteration, "approver": answer.approver, "comment": answer.comment})
    run.say(f"  {decision} {step!r} by {answer.approver}" + (f": {answer.comment}" if answer.comment else ""))
    if decision == "approved":
        # The run goes on: a new active segment (time spent waiting is not run time).
        run.start_segment()
    return decision


def suspended_here(run: Any, step: str) -> bool:
    """True when this flow run itself suspended at ``step`` and has been resumed (suspend mode)."""
    for e in reversed(run.journal.read()):
        if e.type == "approval_requested" and e.payload.step == step:
            extra = e.payload.model_extra or {}
            return extra.get("mode") == "suspend" and extra.get("flow_run_id") == run.rt.run_id
    return False


def describe(rt: Any, step: str, iteration: int, *, what: str, state: Any) -> str:
    """The form's description: what is being approved, with the evidence so far."""
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
        from longrun.execution.checkpoint import patch_stats

        st = patch_stats(patch.read_text(encoding="utf-8", errors="replace"))
        lines.append(f"- **Patch:** {st['files']} file(s), +{st['added']} −{st['removed']}")
    gates = state.gate_results.get(iteration, {})
    if gates:
        lines += ["", "| gate | result |", "|---|---|"]
        lines += [f"| {g} | {'PASS' if r['passed'] else 'FAIL'} |" for g, r in gates.items()]
    return "\n".join(lines)
