"""``longrun approve``: decide an approval step a job waits for.

The decision is journaled first; a flow run paused at that step is then
resumed with it through ``longrun.flows.runner`` (imported only then).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from longrun.cli.common import EXIT_OK, Out, job_root
from longrun.cli.connect import add_ephemeral
from longrun.errors import LongrunError

__all__ = ["PARSERS", "cmd_approve"]


def cmd_approve(args: argparse.Namespace, out: Out) -> int:
    """Decide an approval step.

    The decision is journaled first, as a compare-and-set (the first decision
    on a step wins; a second, different one is refused with
    ``approval_conflict``). If the run's flow run is paused at that step it is
    then resumed with the decision; otherwise ``longrun resume`` continues the
    run and honours it.
    """
    from longrun.governance.policy import approval_status, first_decision_wins
    from longrun.journal.registry import find_job

    record = find_job(job_root(args), args.job)
    state = record.state()
    decision = "rejected" if args.reject else "approved"
    step = _step(record, state, args.step)
    pending = state.pending_approval
    if state.status == "REJECTED" and approval_status(state, step) == "pending":
        raise LongrunError(
            f"{record.name} ({record.run_ref}) was rejected at {state.stop_reason!r}; nothing to approve",
            code="approval_step_unknown",
        )
    if pending is not None and pending != step and approval_status(state, step) == "pending":
        raise LongrunError(f"{record.name} waits for step {pending!r}, not {step!r}", code="approval_step_unknown")
    if pending is None and approval_status(state, step) == "pending":
        raise LongrunError(f"{record.name} ({record.run_ref}) is not waiting for step {step!r}", code="approval_step_unknown")
    events = record.journal.read()
    request = next((e for e in reversed(events) if e.type == "approval_requested" and e.payload.step == step), None)
    iteration = (request.payload.iteration if request else None) or state.iteration or None
    # A run may still be paused there only if nothing (a timeout) came after the request.
    last_for_step = next((e for e in reversed(events) if getattr(e.payload, "step", None) == step), None)
    was_waiting = state.status == "WAITING_APPROVAL" and last_for_step is not None and last_for_step.type == "approval_requested"
    try:
        # Journal first: if the paused run's engine is gone, the decision is not lost.
        record.journal.append(
            decision,
            {"step": step, "iteration": iteration, "approver": args.approver, "comment": args.comment},
            job_id=record.job_id,
            unless=first_decision_wins(step, iteration, decision),
        )
    except LongrunError as exc:
        if exc.code != "approval_already_decided":
            raise
        out.emit(
            f"{record.name} ({record.run_ref}): {exc.message}",
            {"job_id": record.job_id, "step": step, "decision": decision, "recorded": False, "message": exc.message},
        )
        return EXIT_OK
    resumed = request is not None and was_waiting and _resume_paused(request, args)
    after = record.state()
    flow_run = request.payload.flow_run_id if request else None
    human = f"{decision} step {step!r} of {record.name} ({record.run_ref}) by {args.approver}"
    if resumed:
        human += f": resumed paused flow run {flow_run}"
    else:
        human += f"; status {after.status}" + ("" if args.reject else f"; continue with: longrun resume {record.run_ref}")
    out.emit(
        human,
        {
            "job_id": record.job_id,
            "run": record.run_ref,
            "step": step,
            "decision": decision,
            "recorded": True,
            "approver": args.approver,
            "status": str(after.status),
            "resumed_flow_run": flow_run if resumed else None,
        },
    )
    return EXIT_OK


def _step(record, state, given: str | None) -> str:
    """The step to decide: as given, or the stage id an approval guards (``plan`` for ``before-plan``),
    or without ``--step`` the one approval the run waits for."""
    if given is None:
        last = state.last_approval_request
        if state.pending_approval is None and last is not None and last.step in state.approvals:
            return str(last.step)  # decided meanwhile (a racing approver): the compare-and-set says by whom
        if state.pending_approval is None:
            raise LongrunError(
                f"{record.name} ({record.run_ref}) is not waiting for an approval; name the step with --step",
                code="approval_step_unknown",
            )
        return str(state.pending_approval)
    spec = record.load().spec
    steps = {a.step_name: a for a in spec.approvals}
    gate_steps = {g.step for g in (*spec.quality_gates.required, *spec.quality_gates.optional) if g.kind == "approval"}
    requested = {step for step, _ in state.approval_requests}
    if given in steps or given in gate_steps or given in requested or given.startswith("escalate:"):
        return given
    guarded = [name for name, a in steps.items() if a.before == given]
    if len(guarded) == 1:
        return guarded[0]
    if given == "gates" and "after-gates" in steps:
        return "after-gates"
    known = ", ".join(sorted({*steps, *gate_steps})) or "none"
    raise LongrunError(
        f"{record.name} ({record.run_ref}) has no approval step {given!r} (steps: {known}; a stage id names the step before it)",
        code="approval_step_unknown",
    )


def _resume_paused(request, args: argparse.Namespace) -> bool:
    """Resume the paused flow run named in ``approval_requested``; False if it is not paused (any more)."""
    # Extra fields of the payload today, declared fields once events.py names them: getattr reads both.
    flow_run_id, api_url = request.payload.flow_run_id, request.payload.api_url
    if not flow_run_id:
        return False
    try:
        api_url = _server_for(args, api_url)
    except LongrunError as exc:  # no server to be had: the journaled decision is applied by `longrun resume`
        print(f"note: {exc.message}; the decision is journaled", file=sys.stderr)
        return False
    from longrun.flows.runner import resume_paused_run

    run_input = {"decision": "reject" if args.reject else "approve", "approver": args.approver, "comment": args.comment}
    try:
        resume_paused_run(flow_run_id, api_url, run_input)
    except Exception as exc:  # not paused any more, server gone: the journal is the fallback
        print(
            f"note: could not resume flow run {flow_run_id} ({type(exc).__name__}: {exc}); journaling the decision",
            file=sys.stderr,
        )
        return False
    return True


def _server_for(args: argparse.Namespace, recorded: str | None) -> str | None:
    """The server holding the paused run: the one it recorded if that answers, else the local server (restarted).

    Raises ``prefect_unavailable`` when the local server cannot be started.
    """
    from longrun.cli.connect import configured_api_url, ensure_local, wants_ephemeral
    from longrun.flows.server import reachable

    if recorded and reachable(recorded, timeout=5) is None:
        return recorded
    if recorded and recorded.startswith("http://127.0.0.1:") and not configured_api_url() and not wants_ephemeral(args):
        # The local server was stopped since the pause: its database still holds the run.
        server = ensure_local()
        os.environ["PREFECT_API_URL"] = server.api_url
        return server.api_url
    return recorded  # None: the run was on the embedded server, whose database this process's embedded server opens


def _add_approve(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("approve", parents=[common], help="approve (or --reject) a step a job waits for")
    s.add_argument("job", metavar="JOB")
    s.add_argument(
        "--step",
        default=None,
        help="the step ('before-plan', or the stage id 'plan'; 'escalate:tests'); default: the one the run waits for",
    )
    s.add_argument("--approver", required=True, help="who decides (journaled)")
    s.add_argument("--reject", action="store_true", help="reject instead of approve")
    s.add_argument("--comment", default="")
    add_ephemeral(s)
    s.set_defaults(fn=cmd_approve)


#: Command name → the function that adds its subparser (``longrun.cli.main`` orders them).
PARSERS = {"approve": _add_approve}
