"""The ``longrun`` command.

Human output by default, ``--json`` for machines. Exit codes are stable:

====  ===========================================================
0     success; for ``run``/``resume``: the job COMPLETED
1     the job FAILED, or an unexpected internal error
2     bad input: ``job_invalid_spec``, ``job_not_found``, bad usage
3     the job STOPPED (max iterations, wall time, stop file, no progress)
4     the job STOPPED_BUDGET (budget governor)
5     the job was REJECTED at an approval
6     the job is WAITING_APPROVAL
7     evidence upload failed (``evidence_upload_failed``); the local bundle is
      kept and ``longrun evidence push JOB`` retries
130   interrupted (Ctrl-C); the job can be resumed
====  ===========================================================

Prefect is imported only by the commands that run a flow.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from longrun import __version__
from longrun.errors import (
    EXIT_BAD_INPUT,
    EXIT_EVIDENCE_UPLOAD_FAILED,
    EXIT_FAILED,
    LongrunError,
    SpecError,
    exit_code_for,
)

EXIT_OK = 0
EXIT_STOPPED = 3
EXIT_STOPPED_BUDGET = 4
EXIT_REJECTED = 5
EXIT_WAITING = 6
EXIT_INTERRUPTED = 130

STATUS_EXIT = {
    "COMPLETED": EXIT_OK,
    "FAILED": EXIT_FAILED,
    "STOPPED": EXIT_STOPPED,
    "STOPPED_BUDGET": EXIT_STOPPED_BUDGET,
    "REJECTED": EXIT_REJECTED,
    "WAITING_APPROVAL": EXIT_WAITING,
}

#: Defaults for the embedded Prefect server; the user's environment wins.
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
}


class Out:
    def __init__(self, as_json: bool) -> None:
        self.json = as_json

    def emit(self, human: str, machine: Any) -> None:
        if self.json:
            print(json.dumps(machine, sort_keys=True, default=str))
        else:
            print(human)


def _root(args: argparse.Namespace) -> Path:
    return Path(args.root or os.environ.get("LONGRUN_ROOT") or ".").resolve()


# ---------------------------------------------------------------- commands


def cmd_validate(args: argparse.Namespace, out: Out) -> int:
    from longrun.spec import load_spec

    results = []
    worst = EXIT_OK
    for path in args.paths:
        try:
            loaded = load_spec(path)
        except SpecError as exc:
            worst = EXIT_BAD_INPUT
            results.append({"path": path, "ok": False, "error": exc.to_dict()})
            if not out.json:
                print(f"job_invalid_spec: {path}: {len(exc.problems)} problem(s)", file=sys.stderr)
                for p in exc.problems:
                    print(f"  {p.file or path}: {p.path}: {p.message}", file=sys.stderr)
            continue
        except LongrunError as exc:
            worst = EXIT_BAD_INPUT
            results.append({"path": path, "ok": False, "error": exc.to_dict()})
            if not out.json:
                print(f"{exc.code}: {exc.message}", file=sys.stderr)
            continue
        results.append({"path": path, "ok": True, "job_id": loaded.job_id, "name": loaded.spec.name})
        if not out.json:
            print(f"ok  {path}  job {loaded.spec.name} ({loaded.job_id})")
    if out.json:
        if len(results) == 1 and not results[0]["ok"]:
            print(json.dumps({"error": results[0]["error"]}, sort_keys=True))
        else:
            print(json.dumps({"results": results}, sort_keys=True))
    return worst


def plan_document(loaded) -> dict[str, Any]:
    """What a job would run, without running anything (advisory mode, ``longrun plan``)."""
    from longrun.spec.compile import compile_spec

    spec = loaded.spec
    doc = compile_spec(spec).to_dict()
    doc.update(
        {
            "job_id": loaded.job_id,
            "mode": spec.mode,
            "goal": spec.goal,
            "workspace": spec.workspace.path,
            "isolation": spec.isolation,
            "scope_paths": list(spec.scope_paths),
            "allowed_tools": list(spec.allowed_tools),
            "models": {phase: spec.select_model_for_phase(phase) for phase in ("search", "plan", "execute", "debug", "verify")},
            "budgets": spec.budgets.model_dump(),
            "stop_conditions": spec.stop_conditions.model_dump(),
            "approvals": [a.model_dump(exclude_none=True) for a in spec.approvals],
            "schedule": spec.schedule.model_dump() if spec.schedule else None,
        }
    )
    return doc


def _plan_text(doc: dict[str, Any]) -> str:
    lines = [
        f"job {doc['job']} ({doc['job_id']})  mode={doc['mode']}  isolation={doc['isolation']}",
        f"  goal: {doc['goal']}",
        "",
        "stages (per iteration, in order):",
    ]
    for s in doc["stages"]:
        after = f"  after {', '.join(s['depends_on'])}" if s["depends_on"] else ""
        lines.append(
            f"  {s['id']:<12} phase={s['phase'] or '-':<8} model={s['model']:<16} timeout={s['timeout']:g}s retries={s['max_retries']}{after}"
        )
        lines.append(f"  {'':<12} $ {' '.join(s['argv'])}")
    lines.append("gates:")
    for g in doc["gates"]:
        lines.append(f"  {g['id']:<12} {g['kind']:<16} {'required' if g['required'] else 'optional'}")
    lines.append("models: " + ", ".join(f"{k}={v}" for k, v in doc["models"].items()))
    b = doc["budgets"]
    lines.append(
        f"budgets: total_usd={b['total_usd']} per_hour_usd={b['per_hour_usd']} tokens={b['tokens']} on_hourly_limit={b['on_hourly_limit']}"
    )
    sc = doc["stop_conditions"]
    lines.append(
        f"stop: max_iterations={sc['max_iterations']} max_wall_time={sc['max_wall_time']} "
        f"no_progress_iterations={sc['no_progress_iterations']} stop_file={sc['stop_file']}"
    )
    if doc["schedule"]:
        lines.append(f"schedule: {doc['schedule']['cron']} ({doc['schedule']['timezone']})")
    lines.append("")
    lines.append("nothing was run (plan only)")
    return "\n".join(lines)


def cmd_plan(args: argparse.Namespace, out: Out) -> int:
    from longrun.spec import load_spec

    doc = plan_document(load_spec(args.path))
    out.emit(_plan_text(doc), doc)
    return EXIT_OK


def _run_flow(loaded, root: Path, out: Out, *, job_id: str | None = None, force: bool = False) -> int:
    """Run the job's flow in this process and report its outcome from the journal."""
    from longrun.engine.preflight import preflight
    from longrun.journal.registry import find_job

    preflight(loaded, root, loaded.source.parent if loaded.source else None)
    from prefect import tags

    from longrun.flows.job import job_flow

    flow = job_flow(loaded)
    source = str(loaded.source) if loaded.source else None
    try:
        with tags("longrun", *loaded.spec.tags):
            state = flow(
                spec=json.loads(loaded.canonical), root=str(root), source=source, job_id=job_id, force=force, return_state=True
            )
    except KeyboardInterrupt:
        print("interrupted; resume with: longrun resume " + loaded.job_id, file=sys.stderr)
        return EXIT_INTERRUPTED
    message = state.message or ""
    if not state.is_completed() and message.startswith("job_already_running: "):
        raise LongrunError(message.removeprefix("job_already_running: "), code="job_already_running")
    record = find_job(root, loaded.job_id)
    outcome = record.outcome(run_id=str(state.state_details.flow_run_id) if state.state_details.flow_run_id else None)
    journaled = record.state()
    if not state.is_completed() and (not journaled.is_terminal or journaled.status == "FAILED"):
        # The journal is the record; Prefect's state only matters when the
        # journal could not say how the run ended (a crash). A pause that timed
        # out fails the flow run in Prefect but leaves the job WAITING_APPROVAL.
        failure = record.last_failure()
        outcome.update(failure or {"code": "run_crashed", "message": state.message or "the job flow crashed"})
        outcome["status"] = "FAILED"
    evidence = record.state().evidence or {}
    failed, uploaded = evidence.get("upload_failed"), evidence.get("uploaded")
    if failed and (not uploaded or failed["ts"] > uploaded["ts"]):
        outcome["evidence_upload_failed"] = dict(failed)
    _print_outcome(outcome, out)
    if outcome["status"] == "FAILED" and exit_code_for(outcome.get("code")) == EXIT_BAD_INPUT:
        return EXIT_BAD_INPUT
    if outcome["status"] == "COMPLETED" and "evidence_upload_failed" in outcome:
        # The job is done and its bundle is kept locally; only the upload must be retried.
        print(f"evidence upload failed; retry with: longrun evidence push {loaded.job_id}", file=sys.stderr)
        return EXIT_EVIDENCE_UPLOAD_FAILED
    return STATUS_EXIT.get(outcome["status"], EXIT_FAILED)


def _print_outcome(outcome: dict[str, Any], out: Out) -> None:
    human = f"{outcome['name']} ({outcome['job_id']}): {outcome['status']}"
    if outcome.get("code"):
        human += f" [{outcome['code']}: {outcome['message']}]"
    elif outcome.get("reason"):
        human += f" [{outcome['reason']}]"
    human += f" after {outcome['iterations']} iteration(s), ${outcome['usd']:.4f}, {outcome['tokens']} tokens"
    out.emit(human, outcome)


def cmd_run(args: argparse.Namespace, out: Out) -> int:
    from longrun.journal.registry import find_job
    from longrun.spec import load_spec

    root = _root(args)
    loaded = load_spec(args.path)
    try:
        record = find_job(root, loaded.job_id)
    except LongrunError:
        record = None
    if record is not None and (code := _already_over(record, record.state(), out)) is not None:
        return code
    return _run_flow(loaded, root, out, force=args.force)


def _already_over(record, state, out: Out) -> int | None:
    """A COMPLETED or REJECTED job runs nothing: report it (and its exit code) without starting Prefect."""
    if state.status not in ("COMPLETED", "REJECTED"):
        return None
    _print_outcome(record.outcome(), out)
    return STATUS_EXIT[state.status]


def cmd_resume(args: argparse.Namespace, out: Out) -> int:
    from longrun import atomicio
    from longrun.journal.registry import find_job

    root = _root(args)
    record = find_job(root, args.job)
    if (code := _already_over(record, record.state(), out)) is not None:
        return code
    loaded = record.load()
    # The source spec (for the workspace template) is recorded at registration.
    source = _registered_source(record)
    if source is not None:
        from dataclasses import replace

        loaded = replace(loaded, source=Path(source))
    if atomicio.remove(record.paths.job_stop_file):
        print(f"removed stop file {record.paths.job_stop_file}", file=sys.stderr)
    root_stop = root / ".maestro" / "STOP"
    if root_stop.exists():
        print(f"note: the root-wide stop file {root_stop} is present; the job stops again until it is removed", file=sys.stderr)
    return _run_flow(loaded, root, out, job_id=record.job_id, force=args.force)


def _registered_source(record) -> str | None:
    for event in record.journal.read():
        if event.type == "job_registered":
            return event.payload.source
    return None


def cmd_stop(args: argparse.Namespace, out: Out) -> int:
    from longrun import atomicio
    from longrun.journal.registry import find_job

    record = find_job(_root(args), args.job)
    if record.state().status == "COMPLETED":
        out.emit(
            f"{record.name} ({record.job_id}) is already COMPLETED; nothing to stop",
            {"job_id": record.job_id, "status": "COMPLETED"},
        )
        return EXIT_OK
    atomicio.touch(record.paths.job_stop_file)
    record.journal.append(
        "stop_requested", {"by": args.by or os.environ.get("USER", "cli"), "reason": args.reason}, job_id=record.job_id
    )
    out.emit(
        f"stop requested for {record.name} ({record.job_id}); it stops before its next stage",
        {"job_id": record.job_id, "stop_file": str(record.paths.job_stop_file)},
    )
    return EXIT_OK


def _ts(value) -> str | None:
    from longrun.journal.events import format_ts

    return format_ts(value) if value is not None else None


def _state_dict(record, state) -> dict[str, Any]:
    return {
        "job_id": record.job_id,
        "name": record.name,
        "status": str(state.status),
        "reason": state.stop_reason,
        "iteration": state.iteration,
        "iterations_finished": state.iterations_finished,
        "open_iteration": state.open_iteration,
        "usd": round(state.usd_total, 6),
        "tokens": state.tokens_total,
        "active_seconds": round(state.active_seconds, 3),
        "no_progress_streak": state.no_progress_streak,
        "runs": list(state.runs),
        "last_event": {"seq": state.last_seq, "type": state.last_event_type, "ts": _ts(state.last_event_ts)},
        "stop_requested": state.stop_requested,
        "pruned_iterations": list(state.pruned_iterations),
        "patches_applied": dict(state.patches_applied) if state.patches_applied else None,
    }


def cmd_status(args: argparse.Namespace, out: Out) -> int:
    from longrun.journal.registry import find_job

    record = find_job(_root(args), args.job)
    state = record.state()
    d = _state_dict(record, state)
    gates = state.gate_results.get(state.iteration, {})
    d["gates"] = {name: bool(g["passed"]) for name, g in gates.items()}
    human = [
        f"{record.name} ({record.job_id})",
        f"  status      {d['status']}" + (f" [{d['reason']}]" if d["reason"] else ""),
        f"  iterations  {d['iterations_finished']}" + (f" (iteration {d['open_iteration']} open)" if d["open_iteration"] else ""),
        f"  spend       ${d['usd']:.4f}, {d['tokens']} tokens",
        f"  wall time   {d['active_seconds']:.1f}s over {len(d['runs'])} run(s)",
    ]
    if gates:
        human.append("  gates       " + ", ".join(f"{k}={'PASS' if v else 'FAIL'}" for k, v in d["gates"].items()))
    if state.pruned_iterations:
        human.append(
            f"  pruned      checkpoints of iteration(s) {', '.join(map(str, state.pruned_iterations))} (kept in the evidence bundle)"
        )
    if (applied := state.patches_applied) is not None:
        human.append(
            f"  applied     {len(applied['patches'])} patch(es) to {applied['repo']} at {applied['ts']} (HEAD {applied['head'][:12]})"
        )
    human.append(f"  last event  #{state.last_seq} {state.last_event_type} at {_ts(state.last_event_ts)}")
    out.emit("\n".join(human), d)
    return EXIT_OK


def cmd_list(args: argparse.Namespace, out: Out) -> int:
    from longrun.journal.registry import list_jobs

    rows = []
    for record in list_jobs(_root(args)):
        state = record.state()
        rows.append(_state_dict(record, state))
    if out.json:
        print(json.dumps({"jobs": rows}, sort_keys=True, default=str))
        return EXIT_OK
    if not rows:
        print("no jobs under " + str(_root(args)))
        return EXIT_OK
    print(f"{'JOB ID':<13} {'NAME':<24} {'STATUS':<17} {'ITER':>4}  LAST EVENT")
    for r in rows:
        last = r["last_event"]
        print(
            f"{r['job_id']:<13} {r['name'][:24]:<24} {r['status']:<17} {r['iterations_finished']:>4}  #{last['seq']} {last['type']} {last['ts']}"
        )
    return EXIT_OK


def _event_line(event) -> str:
    payload = event.payload.model_dump(mode="json")
    brief = " ".join(f"{k}={json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v}" for k, v in payload.items())
    return f"#{event.seq:<5} {event.ts.isoformat()} {event.type:<18} {brief}"


def cmd_tail(args: argparse.Namespace, out: Out) -> int:
    from longrun.journal.registry import find_job, last_run_started, live_local_pid
    from longrun.journal.state import apply, replay

    record = find_job(_root(args), args.job)
    journal = record.journal

    def show(event) -> None:
        if out.json:
            print(event.to_line().decode("utf-8").rstrip("\n"), flush=True)
        else:
            print(_event_line(event), flush=True)

    if args.n is not None and args.n < 0:
        raise LongrunError("-n must be 0 or more", code="usage_error")
    events = journal.read()
    last = events[-1].seq if events else 0
    # Folded once, then event by event: a poll never replays the whole journal (bench/journal.py).
    state = replay(events)
    if args.n is not None:
        events = events[len(events) - args.n :] if args.n else []
    for event in events:
        show(event)
    if not args.follow:
        return EXIT_OK

    def finished() -> bool:
        if args.forever:
            return False
        if state.status in ("WAITING_APPROVAL", "APPROVED"):
            # A run paused in place (pause_flow_run) is still alive and goes on after the decision.
            return live_local_pid(last_run_started(journal)) is None
        return state.is_terminal

    try:
        for event in journal.follow(after_seq=last, stop=finished):
            state = apply(state, event)
            show(event)
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


def cmd_approve(args: argparse.Namespace, out: Out) -> int:
    """Decide an approval step.

    If the job's flow run is paused at that step, resume it with the decision
    (the run journals it). Otherwise journal the decision; ``longrun resume``
    then continues the job.
    """
    from longrun.governance.policy import approval_status
    from longrun.journal.registry import find_job

    record = find_job(_root(args), args.job)
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
    flow_run_id, api_url = request.payload.flow_run_id, request.payload.api_url
    if not flow_run_id:
        return False
    from uuid import UUID

    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL, temporary_settings

    run_input = {"decision": "reject" if args.reject else "approve", "approver": args.approver, "comment": args.comment}
    updates = {PREFECT_API_URL: api_url} if api_url else {}
    try:
        with temporary_settings(updates=updates):
            resume_flow_run(UUID(flow_run_id), run_input=run_input)
    except Exception as exc:  # not paused any more, server gone: the journal is the fallback
        print(
            f"note: could not resume flow run {flow_run_id} ({type(exc).__name__}: {exc}); journaling the decision",
            file=sys.stderr,
        )
        return False
    return True


def cmd_apply(args: argparse.Namespace, out: Out) -> int:
    """Apply the patches a worktree-isolated job exported, only through ``git am``."""
    from longrun.execution.runtime import JobRuntime
    from longrun.journal.registry import find_job
    from longrun.workspace import worktree

    root = _root(args)
    record = find_job(root, args.job)
    loaded = record.load()
    if loaded.spec.isolation != "worktree":
        raise LongrunError(
            f"{record.name} does not run with isolation: worktree; there is nothing to apply", code="apply_nothing"
        )
    state = record.state()
    if state.status != "COMPLETED":
        raise LongrunError(
            f"{record.name} is {state.status}; patches are applied only from a COMPLETED job", code="apply_nothing"
        )
    rt = JobRuntime(loaded=loaded, root=root, run_id="apply")
    if (done := state.patches_applied) is not None:
        # Applying again would be a silent no-op in git (the commits are there): say so.
        out.emit(
            f"{record.name} ({record.job_id}): {len(done['patches'])} patch(es) were already applied to {done['repo']} "
            f"at {done['ts']} (HEAD {done['head'][:12]}); nothing to do",
            {"job_id": record.job_id, "patches": list(done["patches"]), "head": done["head"], "already_applied": True},
        )
        return EXIT_OK
    patches = sorted((rt.paths.checkpoints / "patches").glob("*.patch"))
    if not patches:
        raise LongrunError(f"no exported patches under {rt.paths.checkpoints / 'patches'}", code="apply_nothing")
    new_head = worktree.apply_patches(rt.repo, patches)
    record.journal.append(
        "patches_applied", {"repo": str(rt.repo), "patches": [p.name for p in patches], "head": new_head}, job_id=record.job_id
    )
    worktree.remove_worktree(rt.repo, rt.worktree_dir, branch_too=True)
    worktree.delete_branch(rt.repo, record.job_id)
    out.emit(
        f"applied {len(patches)} patch(es) to {rt.repo} with git am; HEAD is now {new_head[:12]}",
        {"job_id": record.job_id, "patches": [p.name for p in patches], "head": new_head, "already_applied": False},
    )
    return EXIT_OK


def cmd_prune(args: argparse.Namespace, out: Out) -> int:
    """Retention: old checkpoints of finished jobs (kept in their evidence bundles) and worktrees."""
    from datetime import UTC, datetime

    from longrun.evidence.prune import parse_age, prune_job
    from longrun.journal.registry import find_job, list_jobs

    root = _root(args)
    older_than = parse_age(args.older_than)
    records = [find_job(root, ref) for ref in args.jobs] if args.jobs else list_jobs(root)
    now = datetime.now(UTC)
    results = [
        prune_job(r, root, older_than=older_than, keep_last=args.keep_last, now=now, dry_run=args.dry_run, by=args.by)
        for r in records
    ]
    if out.json:
        print(json.dumps({"dry_run": args.dry_run, "jobs": [r.to_dict() for r in results]}, sort_keys=True))
    elif not results:
        print("no jobs under " + str(root))
    else:
        for r in results:
            print(r.line())
    return EXIT_OK


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    # Accepted before or after the command; SUPPRESS keeps a subcommand's
    # default from overwriting a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    common.add_argument(
        "--root", default=argparse.SUPPRESS, help="job root holding .maestro/ (default: $LONGRUN_ROOT or the current directory)"
    )

    p = argparse.ArgumentParser(prog="longrun", description="Governed, resumable long-run jobs on Prefect.")
    p.add_argument("--json", action="store_true", default=False, help=argparse.SUPPRESS)
    p.add_argument("--root", default=None, help=argparse.SUPPRESS)
    p.add_argument("--version", action="version", version=f"longrun {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("validate", parents=[common], help="check job specs against the schema")
    s.add_argument("paths", nargs="+", metavar="PATH")
    s.set_defaults(fn=cmd_validate)

    s = sub.add_parser("plan", parents=[common], help="print what a spec would run; runs nothing")
    s.add_argument("path", metavar="PATH")
    s.set_defaults(fn=cmd_plan)

    s = sub.add_parser("run", parents=[common], help="run (or continue) the job a spec describes")
    s.add_argument("path", metavar="PATH")
    s.add_argument("--force", action="store_true", help="start even if the journal says another run of this job is alive")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("resume", parents=[common], help="continue a stopped or crashed job")
    s.add_argument("job", metavar="JOB")
    s.add_argument("--force", action="store_true", help="start even if the journal says another run of this job is alive")
    s.set_defaults(fn=cmd_resume)

    s = sub.add_parser("stop", parents=[common], help="ask a running job to stop before its next stage")
    s.add_argument("job", metavar="JOB")
    s.add_argument("--reason", default="stopped by operator")
    s.add_argument("--by", default=None)
    s.set_defaults(fn=cmd_stop)

    s = sub.add_parser("status", parents=[common], help="a job's state, derived from its journal")
    s.add_argument("job", metavar="JOB")
    s.set_defaults(fn=cmd_status)

    s = sub.add_parser("list", parents=[common], help="every job with its state")
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("tail", parents=[common], help="print a job's events in order")
    s.add_argument("job", metavar="JOB")
    s.add_argument("-f", "--follow", action="store_true", help="keep printing new events until the run ends")
    s.add_argument("--forever", action="store_true", help="with --follow: do not end when the run ends")
    s.add_argument("-n", type=int, default=None, help="only the last N events first")
    s.set_defaults(fn=cmd_tail)
    s = sub.add_parser("approve", parents=[common], help="approve (or --reject) a step a job waits for")
    s.add_argument("job", metavar="JOB")
    s.add_argument("--step", required=True, help="the step, e.g. 'release' or 'escalate:tests'")
    s.add_argument("--approver", required=True, help="who decides (journaled)")
    s.add_argument("--reject", action="store_true", help="reject instead of approve")
    s.add_argument("--comment", default="")
    s.set_defaults(fn=cmd_approve)

    s = sub.add_parser("apply", parents=[common], help="apply a worktree job's patches to the main tree with git am")
    s.add_argument("job", metavar="JOB")
    s.set_defaults(fn=cmd_apply)

    s = sub.add_parser(
        "prune",
        parents=[common],
        help="free disk: old checkpoints of finished jobs (their evidence bundle keeps them) and worktrees; never an active job",
    )
    s.add_argument("jobs", nargs="*", metavar="JOB", help="jobs to prune (default: every job under the root)")
    s.add_argument(
        "--older-than",
        default="7d",
        metavar="AGE",
        help="only jobs whose last event is at least this old: 30m, 12h, 7d, 0 (default 7d)",
    )
    s.add_argument(
        "--keep-last", type=int, default=1, metavar="N", help="keep the checkpoints of the last N iterations (default 1)"
    )
    s.add_argument("--dry-run", action="store_true", help="report what would be removed; remove nothing")
    s.add_argument("--by", default=None, help="who prunes (journaled)")
    s.set_defaults(fn=cmd_prune)

    from longrun.cli.deploy import register as register_deploy

    register_deploy(sub, common)
    from longrun.cli.evidence import register as register_evidence

    register_evidence(sub, common)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Out(getattr(args, "json", False))
    # Before any command imports Prefect: the embedded server runs offline and quietly.
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    try:
        return args.fn(args, out)
    except LongrunError as exc:
        if out.json:
            print(json.dumps({"error": exc.to_dict()}, sort_keys=True))
        else:
            print(f"{exc.code}: {exc.message}", file=sys.stderr)
        return exit_code_for(exc.code)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
