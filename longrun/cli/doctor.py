"""``longrun doctor JOB``: check a run's record (journal, chain, records) and repair what is safe (a torn tail)."""

from __future__ import annotations

import argparse
from typing import Any

from longrun.cli.common import EXIT_FAILED, EXIT_OK, Out, job_root

__all__ = ["PARSERS", "cmd_doctor"]


def cmd_doctor(args: argparse.Namespace, out: Out) -> int:
    from longrun.journal.doctor import examine
    from longrun.journal.registry import find_job

    record = find_job(job_root(args), args.job)
    report = examine(record.paths, repair=args.repair, claimed=record.claim is not None)
    doc = report.to_dict() | {"job": record.definition, "run": record.run_ref}
    lines = [
        f"{record.name} ({record.run_ref}): "
        + ("healthy" if report.healthy else f"{sum(not f.repaired for f in report.findings)} problem(s)")
        + f"; {report.events} event(s), hash chain {'complete' if report.chained else 'partial or absent (older events)'}"
    ]
    for f in report.findings:
        lines.append(f"  {'REPAIRED' if f.repaired else 'PROBLEM '} {f.code}: {f.path}: {f.message}")
    out.emit("\n".join(lines), doc)
    return EXIT_OK if report.healthy else EXIT_FAILED


def _add_doctor(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("doctor", parents=[common], help="check a run's journal, hash chain and records; --repair a torn tail")
    s.add_argument("job", metavar="JOB", help="a job (its latest run) or JOB@RUN")
    s.add_argument("--repair", action="store_true", help="drop a torn last line (the only repair; no complete event is removed)")
    s.set_defaults(fn=cmd_doctor)


#: Command name → the function that adds its subparser (``longrun.cli.main`` orders them).
PARSERS = {"doctor": _add_doctor}
