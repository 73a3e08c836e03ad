"""``longrun deploy`` and ``longrun trigger`` (SPEC O2).

::

    longrun deploy SPEC [--pool NAME | --serve] [--name DEPLOYMENT] [--root DIR] [--json]
    longrun trigger JOB_OR_DEPLOYMENT [--key KEY] [--at ISO8601] [--root DIR] [--json]

``deploy`` validates the spec, then creates (or updates) the Prefect deployment
``<job>/<deployment>`` (flow named after the job; deployment name defaults to
the job name) with the canonical spec, the absolute job root and spec path as
parameters, the spec's cron schedule in its IANA time zone, one run at a time
(``ENQUEUE``), and the tags ``longrun``, ``job:<name>``, ``job-id:<jobId>`` plus
the spec's tags. ``--pool`` (default ``longrun-process``; a missing pool is
created as a process pool) registers it for workers of that pool; ``--serve``
serves it from this process until Ctrl-C, on the local Prefect server unless
``PREFECT_API_URL`` is set or ``--ephemeral`` is given.

``trigger`` starts one intended run: ``run_deployment(..., timeout=0,
idempotency_key=intended_run_key(jobId, --at, --key))``; repeated triggers of
the same intended run return the same flow run.

Exit codes: 0 ok; 1 Prefect API error; 2 bad input (``job_invalid_spec``,
``job_not_found``, ``deployment_not_found``, ``deployment_ambiguous``,
``deployment_not_longrun``, ``usage_error``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from longrun.cli.common import EXIT_OK, Out, job_root, root_ref
from longrun.cli.connect import add_ephemeral
from longrun.errors import LongrunError

__all__ = ["PARSERS", "cmd_deploy", "cmd_trigger"]


def _add_deploy(sub: Any, common: argparse.ArgumentParser) -> None:
    from longrun.flows.deploy import COLLISION_STRATEGIES, DEFAULT_POOL  # pure: no Prefect

    s = sub.add_parser(
        "deploy",
        parents=[common],
        help="deploy a spec to Prefect (a work pool, or --serve from this process)",
        description="Create or update the Prefect deployment <job>/<deployment> of a job spec: the canonical "
        "spec, the job root and the spec path as parameters, the spec's cron schedule in its time zone, "
        "one run at a time. Runs write under --root (default: the current directory).",
    )
    s.add_argument("path", metavar="SPEC")
    mode = s.add_mutually_exclusive_group()
    mode.add_argument(
        "--pool",
        default=None,
        metavar="NAME",
        help=f"work pool for workers (default: {DEFAULT_POOL}; created as a process pool if missing)",
    )
    mode.add_argument(
        "--serve",
        action="store_true",
        help="serve the deployment from this process until Ctrl-C (no work pool, no worker), on the local Prefect server "
        "unless PREFECT_API_URL is set",
    )
    add_ephemeral(s)
    s.add_argument("--name", default=None, metavar="DEPLOYMENT", help="deployment name (default: the job name)")
    s.add_argument(
        "--concurrency", type=int, default=1, metavar="N", help="runs of this deployment at the same time (default: 1)"
    )
    s.add_argument(
        "--collision-strategy",
        default="ENQUEUE",
        choices=COLLISION_STRATEGIES,
        help="what happens to a run over the limit: wait (ENQUEUE, default) or be cancelled (CANCEL_NEW)",
    )
    s.set_defaults(fn=cmd_deploy)


def _add_trigger(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "trigger",
        parents=[common],
        help="start one intended run of a deployed job (idempotent per --at/--key)",
        description="Create a flow run of a deployment with run_deployment(timeout=0) and an idempotency key "
        "derived from the job id and --at or --key: triggers of the same intended run share one flow run.",
    )
    s.add_argument(
        "target",
        metavar="JOB_OR_DEPLOYMENT",
        help="a job name or id (its one deployment), <flow>/<deployment>, or a deployment id",
    )
    s.add_argument("--key", default=None, help="explicit idempotency key naming the intended run")
    s.add_argument(
        "--at",
        default=None,
        metavar="ISO8601",
        help="the intended run's scheduled time, with an offset (e.g. 2027-03-28T02:00:00+01:00)",
    )
    s.set_defaults(fn=cmd_trigger)


#: Command name → the function that adds its subparser (``longrun.cli.main`` orders them).
PARSERS = {"deploy": _add_deploy, "trigger": _add_trigger}


def _api_note() -> None:
    from longrun.flows.deploy_runner import api_url

    if not api_url():
        print(
            "note: PREFECT_API_URL is not set; using Prefect's embedded server (its database in $PREFECT_HOME). "
            "Workers and the UI need a running server: longrun server start, then export PREFECT_API_URL=<its API URL>.",
            file=sys.stderr,
        )


def _api_errors(exc: Exception) -> LongrunError:
    """Any error from a Prefect API call, as ``prefect_api_error`` (exit 1) naming the server."""
    from longrun.flows.deploy_runner import api_url

    url = api_url() or "the embedded server"
    return LongrunError(f"Prefect API error ({url}): {type(exc).__name__}: {exc}", code="prefect_api_error")


def _fmt_time(dt, tz: str) -> str:
    from zoneinfo import ZoneInfo

    return dt.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M %Z (%z)")


# ---------------------------------------------------------------- deploy


def cmd_deploy(args: argparse.Namespace, out: Out) -> int:
    from longrun.engine.preflight import preflight
    from longrun.flows.deploy import DEFAULT_POOL, plan_deployment
    from longrun.spec import load_spec

    root = job_root(args)
    loaded = load_spec(args.path)
    preflight(loaded, root, loaded.source.parent if loaded.source else None, probe_sandbox=False)
    try:
        plan = plan_deployment(
            loaded, root_ref(args), name=args.name, concurrency_limit=args.concurrency, collision_strategy=args.collision_strategy
        )
    except ValueError as exc:
        raise LongrunError(str(exc), code="usage_error") from None
    if args.serve:
        from longrun.cli.connect import connect

        connect(args)  # the local server by default: served runs show in its UI
    from longrun.flows import deploy_runner

    _api_note()
    if not args.serve:
        return _deploy(plan, args.pool or DEFAULT_POOL, out)
    with deploy_runner.stop_on_signals() as seen:
        deployment_id = None
        try:
            deployment, deployment_id = _apply(plan, None, out)
            print(
                f"serving {plan.full_name} from this process (pid {os.getpid()}); Ctrl-C stops serving and pauses its schedule",
                file=sys.stderr,
                flush=True,
            )
            deploy_runner.serve(deployment, seen)
        except deploy_runner.ServeStopped:
            pass
        finally:
            # Whatever the moment of the signal: no schedule keeps running without its server.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                paused = deploy_runner.pause_schedule(plan.full_name, deployment_id)
            except Exception as exc:
                raise _api_errors(exc) from None
    why = f" on {seen[0]}" if seen else ""
    if paused:
        print(
            f"stopped serving {plan.full_name}{why}; its schedule is paused "
            "(resume: prefect deployment schedule resume, or deploy again)",
            file=sys.stderr,
        )
    else:
        print(f"stopped serving {plan.full_name}{why} before it was deployed; nothing to pause", file=sys.stderr)
    return EXIT_OK


def _deploy(plan, pool: str, out: Out) -> int:
    _apply(plan, pool, out)
    return EXIT_OK


def _apply(plan, pool: str | None, out: Out) -> tuple[Any, Any]:
    """Create or update the deployment (for ``pool``, or to be served), print what it is; returns it and its id."""
    from longrun.flows.deploy_runner import apply_deployment, next_run_times, runner_deployment

    _, deployment = runner_deployment(plan, pool)
    try:
        created_pool = _ensure_pool(pool) if pool else False
        deployment_id = apply_deployment(deployment, pool)
    except LongrunError:
        raise
    except Exception as exc:
        raise _api_errors(exc) from None
    doc = plan.to_dict() | {
        "deployment_id": str(deployment_id),
        "mode": "pool" if pool else "serve",
        "pool": pool,
        "pool_created": created_pool,
        "entrypoint": deployment.entrypoint,
        "next_runs": [],
    }
    if plan.schedule:
        doc["next_runs"] = [d.isoformat() for d in next_run_times(plan.schedule, 3)]
    out.emit(_deploy_text(doc), doc)
    sys.stdout.flush()
    return deployment, deployment_id


def _ensure_pool(pool: str) -> bool:
    """The work pool exists afterwards; a missing one is created as a process pool (returns True)."""
    from longrun.flows.deploy_runner import ensure_pool

    found = ensure_pool(pool)
    if found.created:
        print(f"created process work pool {pool!r}", file=sys.stderr)
    elif found.type is not None and found.type != "process":
        print(
            f"note: work pool {pool!r} is of type {found.type!r}; its workers must have longrun installed "
            "(the entrypoint is the module longrun.flows.entry)",
            file=sys.stderr,
        )
    return found.created


def _deploy_text(doc: dict[str, Any]) -> str:
    from datetime import datetime

    lines = [
        f"deployed {doc['job']} ({doc['job_id']}) as {doc['name']!r}",
        f"  deployment id  {doc['deployment_id']}",
    ]
    if doc["mode"] == "serve":
        lines.append("  served by      this process (no work pool)")
    else:
        lines.append(f"  work pool      {doc['pool']}" + (" (created, type process)" if doc["pool_created"] else ""))
    lines.append(f"  root           {doc['parameters']['root']}")
    lines.append(f"  spec           {doc['parameters']['source']}")
    if doc["schedule"]:
        lines.append(f"  schedule       {doc['schedule']['cron']} ({doc['schedule']['timezone']})")
        for i, iso in enumerate(doc["next_runs"]):
            lines.append(
                f"  {'next runs' if i == 0 else '':<14} {_fmt_time(datetime.fromisoformat(iso), doc['schedule']['timezone'])}"
            )
    else:
        lines.append("  schedule       none (trigger it)")
    c = doc["concurrency"]
    lines.append(f"  concurrency    {c['limit']} run(s) at a time, {c['collision_strategy']}")
    lines.append(f"  tags           {', '.join(doc['tags'])}")
    lines.append("")
    lines.append("trigger it from code:")
    lines.append("  from prefect.deployments import run_deployment")
    lines.append("  from longrun.flows.deploy import intended_run_key")
    lines.append(
        f"  run_deployment({doc['name']!r}, timeout=0, "
        f"idempotency_key=intended_run_key({doc['job_id']!r}, scheduled_time, explicit_key))"
    )
    lines.append(f"or: longrun trigger {doc['name']} [--at ISO8601 | --key KEY]")
    if doc["mode"] == "pool":
        lines.append(f"runs start when a worker polls the pool: prefect worker start --pool {doc['pool']}")
    return "\n".join(lines)


# ---------------------------------------------------------------- trigger


def cmd_trigger(args: argparse.Namespace, out: Out) -> int:
    from longrun.flows.deploy import parse_time

    if args.at is not None:
        try:
            parse_time(args.at)
        except ValueError as exc:
            raise LongrunError(f"--at: {exc}", code="usage_error") from None
    if args.key is not None and not args.key.strip():
        raise LongrunError("--key is empty", code="usage_error")
    parameters = None
    if getattr(args, "root", None):
        job_root(args)  # a bad or unreachable root is refused here, not in the flow run
        parameters = {"root": root_ref(args)}
    from longrun.flows.deploy_trigger import trigger

    _api_note()
    try:
        result = trigger(args.target, key=args.key, at=args.at, parameters=parameters)
    except LongrunError:
        raise
    except Exception as exc:
        raise _api_errors(exc) from None
    doc = result.to_dict()
    human = (
        f"flow run {result.flow_run_id} ({result.flow_run_name}) of {result.deployment}: {result.state}\n"
        f"  idempotency key  {result.idempotency_key}"
        + (f"\n  scheduled for    {result.scheduled_time}" if result.scheduled_time else "")
        + ("\n  (the run that already existed for that time)" if result.scheduled_run_reused else "")
    )
    out.emit(human, doc)
    return EXIT_OK
