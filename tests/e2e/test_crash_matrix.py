"""The crash matrix: SIGKILL at every crash point of a run (``longrun.faults.POINTS``), then resume.

After each resume the run ends exactly as an uninterrupted one: COMPLETED, every
stage of every iteration ran once, ``seq`` has no gap and no duplicate, the hash
chain holds, iterations and spend are the same, and the evidence verifies. Real
parts: ``longrun run``/``resume``/``approve``/``prune`` subprocesses on the
session's Prefect server, killed by SIGKILL at the named point.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import longrun_cli, write_job

from longrun.faults import CRASH_ENV, POINTS
from longrun.journal.chain import check_chain
from longrun.journal.local import Journal
from longrun.spec import load_spec
from longrun.storage.paths import JobPaths

pytestmark = [pytest.mark.prefect]

SPEC = """
name: crashy
goal: pass on the second iteration, whatever kills the engine
workspace: {{path: ws, template: template}}
allowed_tools: [python]
model_policy: {{default: m}}
stages:
  - {{id: plan, run: [python, -c, "{stage}", plan]}}
  - {{id: work, run: [python, -c, "{stage}", work], depends_on: [plan]}}
quality_gates:
  required:
    - {{id: second, kind: command_pass, run: [python, -c, "import os, sys; sys.exit(int(os.environ['LONGRUN_ITERATION']) < 2)"]}}
{extra}"""

# Each stage appends "<stage> <iteration>" to ran.log in the workspace and reports 0.25 USD.
STAGE = (
    "import json, os, sys; "
    "open('ran.log', 'a').write(sys.argv[1] + ' ' + os.environ['LONGRUN_ITERATION'] + chr(10)); "
    "json.dump({'usd': 0.25, 'tokens': 100}, open(os.environ['LONGRUN_USAGE_FILE'], 'w'))"
)
APPROVAL = "approvals:\n  - {after: gates, step: release, timeout: 1, poll_interval: 1}\n"
UNINTERRUPTED = {"iterations": 2, "usd": 1.0, "tokens": 400, "ran": ["plan 1", "work 1", "plan 2", "work 2"]}


def _case(base: Path, env: dict, point: str) -> dict:
    root = base / point.replace(".", "-")
    root.mkdir(parents=True)
    approval = point == "approval.requested"
    spec = write_job(root, SPEC.format(stage=STAGE, extra=APPROVAL if approval else ""))
    job_id = load_spec(spec).job_id

    def cli(*args: str, crash: bool = False) -> subprocess.CompletedProcess:
        e = {**env, CRASH_ENV: point} if crash else env
        return subprocess.run(
            [sys.executable, "-m", "longrun.cli.main", *args, "--root", str(root)],
            cwd=root,
            env=e,
            capture_output=True,
            text=True,
            timeout=300,
        )

    steps = []
    if point == "prune.removing":
        steps.append(cli("run", str(spec)).returncode)
        steps.append(cli("prune", job_id, "--older-than", "0", crash=True).returncode)
        steps.append(cli("prune", job_id, "--older-than", "0").returncode)
    else:
        steps.append(cli("run", str(spec), crash=True).returncode)
        steps.append(cli("resume", job_id).returncode)
        if approval:
            steps.append(cli("approve", job_id, "--approver", "ops").returncode)
            steps.append(cli("resume", job_id).returncode)
    journal = Journal(JobPaths(root, job_id).events_file)
    verify = cli("verify", job_id, "--json")
    return {
        "point": point,
        "steps": steps,
        "state": journal.state(),
        "events": journal.read(),
        "chain": check_chain(journal.path.read_bytes()),
        "ran": (root / "ws" / "ran.log").read_text().splitlines(),
        "verify": (verify.returncode, verify.stdout, verify.stderr),
    }


def _check(c: dict) -> None:
    point, state, events = c["point"], c["state"], c["events"]
    if point == "prune.removing":
        assert c["steps"] == [0, -9, 0], c
    elif point == "approval.requested":
        assert c["steps"] == [-9, 6, 0, 0], c  # killed; waits again (timeout); approved; completes
    else:
        assert c["steps"] == [-9, 0], c  # killed at the point; the resume completes
    assert state.status == "COMPLETED", (point, state.status, state.stop_reason)
    assert c["ran"] == UNINTERRUPTED["ran"], (point, c["ran"])  # every stage of every iteration ran once
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), point  # no gap, no duplicate
    assert c["chain"].ok and c["chain"].chained, (point, c["chain"])
    assert (state.iterations_finished, round(state.usd_total, 6), state.tokens_total) == (
        UNINTERRUPTED["iterations"],
        UNINTERRUPTED["usd"],
        UNINTERRUPTED["tokens"],
    ), point
    assert [e.type for e in events].count("run_completed") == 1, point
    code, out, err = c["verify"]
    assert code == 0 and json.loads(out)["ok"] is True, (point, out, err)
    if point == "prune.removing":
        assert [e.type for e in events].count("pruned") == 1, point


def _matrix(points: list[str], base: Path, env: dict) -> None:
    with ThreadPoolExecutor(max_workers=3) as pool:
        cases = list(pool.map(lambda p: _case(base, env, p), points))
    for c in cases:
        _check(c)


def test_every_crash_point_resumes_to_the_uninterrupted_result(cli_env, tmp_path):
    assert len(POINTS) >= 12
    _matrix(list(POINTS), tmp_path, cli_env)


@pytest.mark.slow
def test_a_randomized_sweep_of_crash_points(cli_env, tmp_path):
    """Points drawn at random, each from a fresh root: LONGRUN_CRASH_SWEEP of them (default 6, bounded for
    every run of the suite; raise it, and change LONGRUN_CRASH_SEED, for a longer sweep)."""
    rng = random.Random(int(os.environ.get("LONGRUN_CRASH_SEED", "7")))
    n = int(os.environ.get("LONGRUN_CRASH_SWEEP", "6"))
    points = [rng.choice(POINTS) for _ in range(n)]
    for i, chunk in enumerate(points[j : j + 6] for j in range(0, len(points), 6)):
        _matrix(chunk, tmp_path / f"batch-{i}", cli_env)


def test_the_uninterrupted_run_is_what_the_matrix_compares_with(cli_env, tmp_path):
    spec = write_job(tmp_path, SPEC.format(stage=STAGE, extra=""))
    r = longrun_cli("run", str(spec), "--root", str(tmp_path), "--json", cwd=tmp_path, env=cli_env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["iterations"], out["usd"], out["tokens"]) == (
        UNINTERRUPTED["iterations"],
        UNINTERRUPTED["usd"],
        UNINTERRUPTED["tokens"],
    )
    assert (tmp_path / "ws" / "ran.log").read_text().splitlines() == UNINTERRUPTED["ran"]
