"""Named crash points for the crash matrix (``tests/e2e/test_crash_matrix.py``).

``point(name)`` kills this process with SIGKILL when ``LONGRUN_CRASH_AT`` names
it, and does nothing otherwise (one dictionary lookup). The points sit in the
windows a real crash can hit (a stage ran but its event is not journaled, the
run completed but its bundle is not built, ...), so tests can show that a resume
from each one ends exactly as an uninterrupted run. It only ever makes the
engine stop sooner: whoever can set the engine's environment can kill it anyway.
"""

from __future__ import annotations

import os
import signal

#: The environment variable that names the crash point.
CRASH_ENV = "LONGRUN_CRASH_AT"

#: Every crash point, in the order a run passes them.
POINTS = (
    "stage.started",  # stage_started journaled, the command not run yet
    "stage.recorded",  # the command ran and its record is persisted; stage_finished not journaled
    "stage.finished",  # stage_finished journaled
    "gate.before",  # about to evaluate a gate
    "gate.recorded",  # the gate's record is persisted; gate_evaluated not journaled
    "checkpoint.files",  # the checkpoint's files and record are written; checkpoint_written not journaled
    "iteration.finished",  # iteration_finished journaled, the verdict not acted on
    "run.completed",  # run_completed journaled, no evidence bundle yet
    "evidence.tar",  # the bundle's tar is written, its manifest not yet
    "evidence.built",  # evidence_built journaled, the upload not started
    "approval.requested",  # approval_requested journaled, waiting
    "prune.removing",  # pruned journaled, one of its directories removed, the rest not yet
)


def point(name: str) -> None:
    """SIGKILL this process if ``LONGRUN_CRASH_AT`` is ``name``."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
