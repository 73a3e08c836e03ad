"""The ``longrun`` command: its parser and ``main``.

Human output by default, ``--json`` for machines; the exit codes are the table
in ``longrun.cli.common``. Each command lives in a module that adds its own
subparser (``PARSERS``); this module orders them and dispatches. Imports point
one way: ``main`` imports the command modules, never the reverse.

Prefect (and boto3) are imported only by the commands that need them, inside
the command: ``validate``, ``plan``, ``status``, ``list``, ``tail``, ``stop``,
``server`` and ``verify`` of a local bundle never import either.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from longrun import __version__
from longrun.cli import apply, approve, deploy, doctor, evidence, jobs, run, server
from longrun.cli.common import EXIT_INTERRUPTED, EXIT_OK, PREFECT_DEFAULTS, Out
from longrun.errors import LongrunError, exit_code_for

__all__ = ["COMMANDS", "build_parser", "main"]

#: The commands, in the order ``longrun --help`` lists them.
COMMANDS = (
    "validate",
    "plan",
    "run",
    "resume",
    "stop",
    "status",
    "list",
    "runs",
    "tail",
    "approve",
    "apply",
    "prune",
    "deploy",
    "trigger",
    "evidence",
    "verify",
    "doctor",
    "server",
)


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
    # Built on every call: each command binds its function (fn) now, so a patched cmd_* is the one run.
    adders = (
        jobs.PARSERS
        | doctor.PARSERS
        | run.PARSERS
        | approve.PARSERS
        | apply.PARSERS
        | deploy.PARSERS
        | evidence.PARSERS
        | server.PARSERS
    )
    for name in COMMANDS:
        adders[name](sub, common)
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
