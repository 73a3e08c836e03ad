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

    If the job's flow run is paused at that step, resume it with the decision
    (the run journals it). Otherwise journal the decision; ``longrun resume``
    then continues the job.
    """
    from longrun.governance.policy import approval_status
    from longrun.journal.registry import find_job

    record = find_job(job_root(args), args.job)
    state = record.state()
    if state.status == "REJECTED":
        raise LongrunError(
            f"{record.name} ({record.job_id}) was rejected at {state.stop_reason!r}; nothing to approve",
            code="approval_step_unknown",
        )
    pending = state.pending_approval
    if pending is not None and pending != args.step:
        raise LongrunError(f"{record.name} waits for step {pending!r}, not {args.step!r}", code="approval_step_unknown")
    if pending is None and approval_status(state, args.step) == "pending":
        raise LongrunError(f"{record.name} ({record.job_id}) is not waiting for step {args.step!r}", code="approval_step_unknown")
    decision = "rejected" if args.reject else "approved"
    request = next(
        (e for e in reversed(record.journal.read()) if e.type == "approval_requested" and e.payload.step == args.step), None
    )
    # A run may still be paused there only if nothing (a timeout) came after the request.
    last_for_step = next((e for e in reversed(record.journal.read()) if getattr(e.payload, "step", None) == args.step), None)
    was_waiting = state.status == "WAITING_APPROVAL" and last_for_step is not None and last_for_step.type == "approval_requested"
    # Journal first: if the paused run's engine is gone, the decision is not lost.
    record.journal.append(
        decision,
        {
            "step": args.step,
            "iteration": (request.payload.iteration if request else None) or state.iteration or None,
            "approver": args.approver,
            "comment": args.comment,
        },
        job_id=record.job_id,
    )
    resumed = request is not None and was_waiting and _resume_paused(request, args)
    after = record.state()
    flow_run = request.payload.flow_run_id if request else None
    human = f"{decision} step {args.step!r} of {record.name} ({record.job_id}) by {args.approver}"
    if resumed:
        human += f": resumed paused flow run {flow_run}"
    else:
        human += f"; status {after.status}" + ("" if args.reject else f"; continue with: longrun resume {record.job_id}")
    out.emit(
        human,
        {
            "job_id": record.job_id,
            "step": args.step,
            "decision": decision,
            "approver": args.approver,
            "status": str(after.status),
            "resumed_flow_run": flow_run if resumed else None,
        },
    )
    return EXIT_OK


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
    s.add_argument("--step", required=True, help="the step, e.g. 'release' or 'escalate:tests'")
    s.add_argument("--approver", required=True, help="who decides (journaled)")
    s.add_argument("--reject", action="store_true", help="reject instead of approve")
    s.add_argument("--comment", default="")
    add_ephemeral(s)
    s.set_defaults(fn=cmd_approve)


#: Command name → the function that adds its subparser (``longrun.cli.main`` orders them).
PARSERS = {"approve": _add_approve}
