"""What every ``longrun`` command shares: exit codes, output, the job root.

Exit codes are stable:

====  ===========================================================
0     success; for ``run``/``resume``: the job COMPLETED
1     the job FAILED, or an unexpected internal error
2     bad input: ``job_invalid_spec``, ``job_not_found``, bad usage
3     the job STOPPED (max iterations, wall time, stop file, no progress)
4     the job STOPPED_BUDGET (budget governor)
5     the job was REJECTED at an approval
6     the job is WAITING_APPROVAL, or APPROVED and waiting for ``longrun resume``
7     evidence upload failed (``evidence_upload_failed``); the local bundle is
      kept and ``longrun evidence push JOB`` retries
8     no Prefect server could be reached or started (``prefect_unavailable``);
      nothing ran and nothing was journaled
130   interrupted (Ctrl-C); the job can be resumed
====  ===========================================================

1, 2, 7 and 8 are defined in ``longrun.errors`` (``exit_code_for`` maps an error
code to them); the others are a job's status.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from longrun.errors import (
    EXIT_BAD_INPUT,
    EXIT_EVIDENCE_UPLOAD_FAILED,
    EXIT_FAILED,
    EXIT_PREFECT_UNAVAILABLE,
    EXIT_REJECTED,
    EXIT_STOPPED,
    EXIT_STOPPED_BUDGET,
    EXIT_WAITING,
    STATUS_EXIT,
)

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_EVIDENCE_UPLOAD_FAILED",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PREFECT_UNAVAILABLE",
    "EXIT_REJECTED",
    "EXIT_STOPPED",
    "EXIT_STOPPED_BUDGET",
    "EXIT_WAITING",
    "PREFECT_DEFAULTS",
    "STATUS_EXIT",
    "Out",
    "job_root",
]

EXIT_OK = 0
EXIT_INTERRUPTED = 130

#: Defaults for Prefect in this process (and the servers it starts); the user's environment wins.
PREFECT_DEFAULTS = {
    # Prefect's 20 s is less than a first database migration on a loaded machine (--ephemeral).
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
}


class Out:
    """Where a command's result goes: a line for humans, or one JSON document with ``--json``."""

    def __init__(self, as_json: bool) -> None:
        self.json = as_json

    def emit(self, human: str, machine: Any) -> None:
        if self.json:
            print(json.dumps(machine, sort_keys=True, default=str))
        else:
            print(human)


def root_ref(args: argparse.Namespace) -> str:
    """The job root as given: ``--root``, else ``$LONGRUN_ROOT``, else the current directory.

    A directory comes back absolute; an ``s3://BUCKET/PREFIX`` URL as it is.
    """
    from longrun.storage.mirror import is_block_ref, is_remote_ref, normalize_url

    ref = getattr(args, "root", None) or os.environ.get("LONGRUN_ROOT") or "."
    if is_block_ref(ref):
        import longrun.blocks.evidence  # noqa: F401 - installs the block loader (imports Prefect)

        return ref
    return normalize_url(ref) if is_remote_ref(ref) else str(Path(ref).resolve())


def job_root(args: argparse.Namespace) -> Path:
    """The local path of the job root holding ``.maestro/``: the directory, or the mirror of a remote root."""
    from longrun.storage.mirror import open_root

    return open_root(root_ref(args))
