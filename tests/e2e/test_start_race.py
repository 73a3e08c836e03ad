"""Two starts of one job at the same moment: exactly one runs, the other is refused and appends nothing.

The start lock (``flock`` on ``.maestro/jobs/<jobId>/lock``) is held from choosing
the run until ``run_started`` is journaled, so this is never a check-then-write race.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import write_job

from longrun.journal.local import Journal
from longrun.spec import load_spec
from longrun.storage.paths import JobPaths

pytestmark = [pytest.mark.prefect]

#: Raced pairs (each on its own root); LONGRUN_RACE_PAIRS raises it for a longer sweep.
PAIRS = int(os.environ.get("LONGRUN_RACE_PAIRS", "20"))

SPEC = """
name: raced
goal: run once however many start it
workspace: {{path: ws, template: template}}
allowed_tools: [python]
model_policy: {{default: m}}
stages:
  - {{id: work, run: [python, -c, "import os, time\\nwhile not os.path.exists('{release}'): time.sleep(0.05)"]}}
quality_gates:
  required:
    - {{id: ok, kind: command_pass, run: [python, -c, "pass"]}}
"""


def _race(root: Path, env: dict) -> tuple[list[subprocess.CompletedProcess], Journal]:
    root.mkdir()
    release = root / "release"
    spec = write_job(root, SPEC.format(release=release))
    argv = [sys.executable, "-m", "longrun.cli.main", "run", str(spec), "--root", str(root)]
    procs = [subprocess.Popen(argv, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in (0, 1)]
    # The stage of whichever start won runs until the other start has ended, so they truly overlap.
    deadline = time.monotonic() + 180
    while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    release.touch()
    results = [subprocess.CompletedProcess(p.args, p.wait(timeout=240), *p.communicate()) for p in procs]
    return results, Journal(JobPaths(root, load_spec(spec).job_id).events_file)


def test_raced_starts_give_one_run_each_time(cli_env, tmp_path):
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(lambda i: _race(tmp_path / f"pair-{i}", cli_env), range(PAIRS)))
    for i, (results, journal) in enumerate(outcomes):
        codes = sorted(r.returncode for r in results)
        assert codes == [0, 2], (i, [(r.returncode, r.stderr[-500:]) for r in results])
        loser = next(r for r in results if r.returncode == 2)
        assert loser.stderr.startswith("job_already_running"), (i, loser.stderr)
        types = [e.type for e in journal.read()]
        # One run: one start, one stage, one completion; the refused start appended nothing.
        assert (types.count("run_started"), types.count("stage_finished"), types.count("run_completed")) == (1, 1, 1), (i, types)
        assert types[-2:] == ["run_completed", "evidence_built"], (i, types)
