"""Read-only and journal-only commands: ``validate``, ``plan``, ``status``, ``list``, ``tail``, ``stop``.

None of them imports Prefect or boto3: they read specs and journals (``stop``
touches the stop file and journals the request).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from longrun.cli.common import EXIT_BAD_INPUT, EXIT_OK, Out, job_root
from longrun.errors import LongrunError, SpecError

__all__ = ["PARSERS", "cmd_list", "cmd_plan", "cmd_runs", "cmd_status", "cmd_stop", "cmd_tail", "cmd_validate", "plan_document"]


# ---------------------------------------------------------------- validate, plan


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
    from longrun.execution.pricing import shipped_prices
    from longrun.spec.agents import describe
    from longrun.spec.compile import compile_spec

    spec = loaded.spec
    doc = compile_spec(spec).to_dict()
    for stage in doc["stages"]:
        stage["preset"] = describe(spec.stage(stage["id"]))
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
            "model_prices": {k: v.model_dump() for k, v in spec.model_prices.items()},
            "prices_version": shipped_prices()[0],
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
        if (p := s.get("preset")) is not None:
            how = "argv overridden by run" if p["argv_overridden"] else "argv from the preset"
            lines.append(f"  {'':<12} agent={p['agent']} ({how}) allowed tool={p['allowed_tool']} prompt={p['prompt_file']}")
            lines.append(f"  {'':<12} env passed through: {', '.join(p['env_names'])}")
        if s.get("usage_format"):
            lines.append(f"  {'':<12} usage read as {s['usage_format']}")
    lines.append("gates:")
    for g in doc["gates"]:
        lines.append(f"  {g['id']:<12} {g['kind']:<16} {'required' if g['required'] else 'optional'}")
    lines.append("models: " + ", ".join(f"{k}={v}" for k, v in doc["models"].items()))
    b = doc["budgets"]
    lines.append(
        f"budgets: total_usd={b['total_usd']} usd={b['usd']} per_hour_usd={b['per_hour_usd']} tokens={b['tokens']} "
        f"input_tokens={b['input_tokens']} output_tokens={b['output_tokens']} on_hourly_limit={b['on_hourly_limit']}"
    )
    if any(s.get("usage_format") for s in doc["stages"]):
        own = ", ".join(doc["model_prices"]) or "none"
        lines.append(f"prices: table {doc['prices_version']} (USD per million tokens); model_prices in the spec: {own}")
    sc = doc["stop_conditions"]
    lines.append(
        f"stop: max_iterations={sc['max_iterations']} max_wall_time={sc['max_wall_time']} "
        f"no_progress_iterations={sc['no_progress_iterations']} stop_file={sc['stop_file']}"
    )
    for a in doc["approvals"]:
        where = (
            f"before stage {a['before']}"
            if a.get("before")
            else ("after the gates" if a.get("after") else f"on escalation of {a.get('escalate')}")
        )
        step = a.get("step") or (
            f"before-{a['before']}" if a.get("before") else "after-gates" if a.get("after") else f"escalate:{a.get('escalate')}"
        )
        lines.append(f"approval: {step:<16} {where}, timeout {a['timeout']:g}s, {a.get('mode', 'pause')}")
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


# ---------------------------------------------------------------- stop


def cmd_stop(args: argparse.Namespace, out: Out) -> int:
    from longrun import atomicio
    from longrun.journal.registry import find_job

    record = find_job(job_root(args), args.job)
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


# ---------------------------------------------------------------- status, list, tail


def _ts(value) -> str | None:
    from longrun.journal.events import format_ts

    return format_ts(value) if value is not None else None


def _state_dict(record, state) -> dict[str, Any]:
    return {
        "job_id": record.job_id,
        "job": record.definition,
        "run": record.run_ref,
        "run_key": state.run_key,
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
        #: Flow runs that ran this run: one per start, resume or approval that went on.
        "segments": list(state.runs),
        "last_event": {"seq": state.last_seq, "type": state.last_event_type, "ts": _ts(state.last_event_ts)},
        "stop_requested": state.stop_requested,
        "pruned_iterations": list(state.pruned_iterations),
        "patches_applied": dict(state.patches_applied) if state.patches_applied else None,
    }


def cmd_status(args: argparse.Namespace, out: Out) -> int:
    from longrun.journal.registry import find_job

    record = find_job(job_root(args), args.job)
    state = record.state()
    d = _state_dict(record, state)
    gates = state.gate_results.get(state.iteration, {})
    d["gates"] = {name: g.passed for name, g in gates.items()}
    runs = _runs_of(record)
    human = [f"{record.name} ({record.run_ref})"]
    if state.run_key is not None:
        number = next((i for i, c in enumerate(runs, 1) if c.run_id == record.job_id), len(runs))
        human.append(f"  run         #{number} of {len(runs)}, key {state.run_key}")
    d["runs_of_job"] = len(runs)
    human += [
        f"  status      {d['status']}" + (f" [{_reason_text(d['reason'])}]" if d["reason"] else ""),
        f"  iterations  {d['iterations_finished']}" + (f" (iteration {d['open_iteration']} open)" if d["open_iteration"] else ""),
        f"  spend       ${d['usd']:.4f}, {d['tokens']} tokens",
        f"  wall time   {d['active_seconds']:.1f}s over {len(d['segments'])} segment(s)",
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


def _runs_of(record) -> list:
    from longrun.journal.runs import list_runs

    return list_runs(record.paths.root, record.definition)


def _reason_text(reason: Any) -> str:
    if isinstance(reason, dict):
        return " ".join(f"{k}={v}" for k, v in reason.items())
    return str(reason)


def cmd_list(args: argparse.Namespace, out: Out) -> int:
    from longrun.journal.registry import list_jobs

    rows = []
    for record in list_jobs(job_root(args)):
        row = _state_dict(record, record.state())
        row["runs_of_job"] = len(_runs_of(record))
        rows.append(row)
    if out.json:
        print(json.dumps({"jobs": rows}, sort_keys=True, default=str))
        return EXIT_OK
    if not rows:
        print("no jobs under " + str(job_root(args)))
        return EXIT_OK
    print(f"{'JOB ID':<13} {'NAME':<24} {'RUNS':>4}  {'LAST RUN':<13} {'STATUS':<17} {'ITER':>4}  LAST EVENT")
    for r in rows:
        last = r["last_event"]
        run = r["job_id"] if r["job_id"] != r["job"] else "-"
        print(
            f"{r['job']:<13} {r['name'][:24]:<24} {r['runs_of_job']:>4}  {run:<13} {r['status']:<17} "
            f"{r['iterations_finished']:>4}  #{last['seq']} {last['type']} {last['ts']}"
        )
    return EXIT_OK


def cmd_runs(args: argparse.Namespace, out: Out) -> int:
    """Every run of a job, oldest first: number, id, key, status, iterations, spend."""
    from longrun.journal.registry import find_job, run_record

    job = find_job(job_root(args), args.job.partition("@")[0])
    rows = []
    for number, claim in enumerate(_runs_of(job), 1):
        record = run_record(job.paths.root, claim)
        state = record.state()
        rows.append(
            {
                "number": number,
                "run": record.run_ref,
                "run_id": claim.run_id,
                "key": claim.key,
                "trigger": claim.trigger,
                "opened_at": claim.opened_at,
                "status": str(state.status),
                "iterations": state.iterations_finished,
                "usd": round(state.usd_total, 6),
                "tokens": state.tokens_total,
            }
        )
    lines = [f"{job.name} ({job.definition}): {len(rows)} run(s)"]
    lines += [
        f"  #{r['number']:<3} {r['run_id']:<13} {r['status']:<17} {r['iterations']:>4} it  ${r['usd']:.4f}  {r['trigger']:<9} {r['key']}"
        for r in rows
    ]
    out.emit("\n".join(lines), {"job": job.definition, "name": job.name, "runs": rows})
    return EXIT_OK


def _same_host(started) -> bool:
    import socket

    return started.host == socket.gethostname()


def _event_line(event) -> str:
    payload = event.to_dict()["payload"]  # as journaled: optional fields that are None are left out
    brief = " ".join(f"{k}={json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v}" for k, v in payload.items())
    return f"#{event.seq:<5} {event.ts.isoformat()} {event.type:<18} {brief}"


def cmd_tail(args: argparse.Namespace, out: Out) -> int:
    from longrun.journal.fold import apply, replay
    from longrun.journal.registry import find_job, live_local_pid

    record = find_job(job_root(args), args.job)
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
        engine = live_local_pid(state.last_run)
        if state.status in ("WAITING_APPROVAL", "APPROVED"):
            # A run paused in place (pause_flow_run) is still alive and goes on after the decision.
            return engine is None
        if not state.is_terminal:
            return False
        # The run ended; its engine still builds (and uploads) the evidence: follow until it exits,
        # or, for an engine on another host, until the bundle is journaled.
        if engine is not None:
            return False
        remote = state.last_run is not None and (state.last_run.pid is None or not _same_host(state.last_run))
        return not (remote and state.evidence_behind)

    try:
        for event in journal.follow(after_seq=last, stop=finished):
            state = apply(state, event)
            show(event)
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


# ---------------------------------------------------------------- parsers


def _add_validate(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("validate", parents=[common], help="check job specs against the schema")
    s.add_argument("paths", nargs="+", metavar="PATH")
    s.set_defaults(fn=cmd_validate)


def _add_plan(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("plan", parents=[common], help="print what a spec would run; runs nothing")
    s.add_argument("path", metavar="PATH")
    s.set_defaults(fn=cmd_plan)


def _add_stop(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("stop", parents=[common], help="ask a running job to stop before its next stage")
    s.add_argument("job", metavar="JOB")
    s.add_argument("--reason", default="stopped by operator")
    s.add_argument("--by", default=None)
    s.set_defaults(fn=cmd_stop)


def _add_status(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("status", parents=[common], help="a run's state (a job's latest run, or JOB@RUN), from its journal")
    s.add_argument("job", metavar="JOB", help="a job (its latest run) or JOB@RUN")
    s.set_defaults(fn=cmd_status)


def _add_list(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("list", parents=[common], help="every job with its state")
    s.set_defaults(fn=cmd_list)


def _add_runs(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("runs", parents=[common], help="every run of a job, oldest first")
    s.add_argument("job", metavar="JOB")
    s.set_defaults(fn=cmd_runs)


def _add_tail(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("tail", parents=[common], help="print a run's events in order (a job's latest run, or JOB@RUN)")
    s.add_argument("job", metavar="JOB", help="a job (its latest run) or JOB@RUN")
    s.add_argument("-f", "--follow", action="store_true", help="keep printing new events until the run ends")
    s.add_argument("--forever", action="store_true", help="with --follow: do not end when the run ends")
    s.add_argument("-n", type=int, default=None, help="only the last N events first")
    s.set_defaults(fn=cmd_tail)


#: Command name → the function that adds its subparser (``longrun.cli.main`` orders them).
PARSERS = {
    "validate": _add_validate,
    "plan": _add_plan,
    "stop": _add_stop,
    "status": _add_status,
    "list": _add_list,
    "runs": _add_runs,
    "tail": _add_tail,
}
