"""``longrun run`` and ``longrun resume``: run a job's flow in this process.

Prefect is imported (through ``longrun.flows.runner``) only once the job is
known to need a run: a COMPLETED or REJECTED job, a bad spec or a failed
preflight are reported without it. The server is chosen just before that
(``longrun.cli.connect``: ``PREFECT_API_URL``, else the local server, else
``--ephemeral``'s embedded one).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from longrun.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_EVIDENCE_UPLOAD_FAILED,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    STATUS_EXIT,
    Out,
    job_root,
)
from longrun.cli.connect import add_ephemeral
from longrun.errors import EXIT_CODES, LongrunError, exit_code_for

__all__ = ["PARSERS", "cmd_resume", "cmd_run"]


def _run_flow(
    args: argparse.Namespace, loaded, root: Path, out: Out, *, job_id: str | None = None, run_key: str | None = None
) -> int:
    """Run the job's flow in this process and report the run's outcome from its journal."""
    from longrun.cli.connect import connect
    from longrun.engine.preflight import preflight
    from longrun.journal.registry import find_job, outcome_dict

    preflight(loaded, root, loaded.source.parent if loaded.source else None)
    api_url = connect(args)  # before Prefect is imported; prefect_unavailable if no server can be had
    from longrun.flows.runner import run_job_flow

    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)  # SIGTERM ends a run as Ctrl-C does
    try:
        end = run_job_flow(loaded, root, job_id=job_id, force=args.force, api_url=api_url, run_key=run_key)
    except KeyboardInterrupt:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the message short
        print("interrupted; resume with: longrun resume " + (job_id or loaded.job_id), file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not end.completed and end.run is None:
        # Refused or failed before a run was chosen (another run holds the job, a lost journal, a bad key):
        # nothing was journaled, so the flow run's message is the whole story.
        code, _, message = end.message.partition(": ")
        if code in EXIT_CODES:
            raise LongrunError(message, code=code)
    record = find_job(root, end.run or job_id or loaded.job_id)
    journaled = record.state()  # replayed once, for the outcome, the failure check and the evidence
    outcome = outcome_dict(record.job_id, record.name, journaled, end.flow_run_id)
    if not end.completed and (not journaled.is_terminal or journaled.status == "FAILED"):
        # The journal is the record; Prefect's state only matters when the
        # journal could not say how the run ended (a crash). A pause that timed
        # out fails the flow run in Prefect but leaves the job WAITING_APPROVAL.
        failure = record.last_failure()
        outcome.update(failure or {"code": "run_crashed", "message": end.message or "the job flow crashed"})
        outcome["status"] = "FAILED"
    evidence = journaled.evidence or {}
    failed, uploaded = evidence.get("upload_failed"), evidence.get("uploaded")
    if failed and (not uploaded or failed["ts"] > uploaded["ts"]):
        outcome["evidence_upload_failed"] = dict(failed)
    _print_outcome(outcome, out)
    if outcome["status"] == "FAILED" and exit_code_for(outcome.get("code")) == EXIT_BAD_INPUT:
        return EXIT_BAD_INPUT
    if outcome["status"] == "COMPLETED" and "evidence_upload_failed" in outcome:
        # The job is done and its bundle is kept locally; only the upload must be retried.
        print(f"evidence upload failed; retry with: longrun evidence push {record.job_id}", file=sys.stderr)
        return EXIT_EVIDENCE_UPLOAD_FAILED
    return STATUS_EXIT.get(outcome["status"], EXIT_FAILED)


def _sigterm_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _print_outcome(outcome: dict[str, Any], out: Out) -> None:
    human = f"{outcome['name']} ({outcome.get('run_ref') or outcome['job_id']}): {outcome['status']}"
    if outcome.get("code"):
        human += f" [{outcome['code']}: {outcome['message']}]"
    elif outcome.get("reason"):
        human += f" [{outcome['reason']}]"
    human += f" after {outcome['iterations']} iteration(s), ${outcome['usd']:.4f}, {outcome['tokens']} tokens"
    out.emit(human, outcome)


def _already_over(record, state, out: Out) -> int | None:
    """A COMPLETED or REJECTED job runs nothing: report it (and its exit code) without starting Prefect.

    Unless its evidence is behind (killed between its end and its bundle): then the
    flow runs, and the engine builds the bundle and runs the strict check.
    """
    from longrun.journal.runs import OVER

    if state.status not in OVER or state.evidence_behind:
        return None
    _print_outcome(record.outcome(), out)
    return STATUS_EXIT[state.status]


def _registered_source(record) -> str | None:
    for event in record.journal.read():
        if event.type == "job_registered":
            return event.payload.source
    return None


def cmd_run(args: argparse.Namespace, out: Out) -> int:
    """Run the spec's job: the run ``--key`` names, else continue its last run unless that is over, else a new run."""
    from longrun.journal.registry import find_job
    from longrun.journal.runs import check_run_key, run_id_for
    from longrun.spec import load_spec

    root = job_root(args)
    loaded = load_spec(args.path)
    key = check_run_key(args.key) if args.key is not None else None
    if key is not None:
        try:
            record = find_job(root, run_id_for(loaded.job_id, key))
        except LongrunError:
            record = None
        if record is not None and (code := _already_over(record, record.state(), out)) is not None:
            return code
    return _run_flow(args, loaded, root, out, run_key=key)


def _resumable(root: Path, ref: str):
    """``JOB@RUN`` as named; ``JOB``: its last run that is not over (else its last run)."""
    from longrun.journal.registry import find_job, run_record
    from longrun.journal.runs import OVER, list_runs

    record = find_job(root, ref)
    if "@" in ref or (record.claim is None and record.definition != record.job_id):
        return record
    for claim in reversed(list_runs(root, record.definition)):
        candidate = run_record(root, claim)
        if candidate.state().status not in OVER:
            return candidate
    return record


def cmd_resume(args: argparse.Namespace, out: Out) -> int:
    from longrun import atomicio

    root = job_root(args)
    record = _resumable(root, args.job)
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
    return _run_flow(args, loaded, root, out, job_id=record.job_id)


# ---------------------------------------------------------------- parsers

_FORCE_HELP = "start even if the journal says another run of this job is alive"


def _add_run(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("run", parents=[common], help="run the job a spec describes (a new run once its last is over)")
    s.add_argument("path", metavar="PATH")
    s.add_argument(
        "--key", default=None, help="the intended run: the same key always means the same run (started once, then continued)"
    )
    s.add_argument("--force", action="store_true", help=_FORCE_HELP)
    add_ephemeral(s)
    s.set_defaults(fn=cmd_run)


def _add_resume(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("resume", parents=[common], help="continue a job's last unfinished run (or JOB@RUN)")
    s.add_argument("job", metavar="JOB", help="a job (its last unfinished run) or JOB@RUN")
    s.add_argument("--force", action="store_true", help=_FORCE_HELP)
    add_ephemeral(s)
    s.set_defaults(fn=cmd_resume)


#: Command name → the function that adds its subparser (``longrun.cli.main`` orders them).
PARSERS = {"run": _add_run, "resume": _add_resume}
