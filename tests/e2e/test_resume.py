"""SIGKILL mid-run, then resume: real process, real Prefect server, real git workspace."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import longrun_cli, sigkill_engine_once, write_job

from longrun.journal.local import Journal
from longrun.spec import load_spec
from longrun.storage.paths import JobPaths

pytestmark = [pytest.mark.prefect, pytest.mark.slow]

# Every stage appends "<stage> <iteration>" to counter.txt (outside the
# workspace, so it is not part of the patch) and reports 0.01 USD / 10 tokens.
STAGE = """
import json, os, sys, time
name, it = os.environ["LONGRUN_STAGE"], os.environ["LONGRUN_ITERATION"]
with open(os.environ["COUNTER"], "a") as f:
    f.write(f"{name} {it} pid={os.getpid()}\\n")
with open(os.environ["LONGRUN_USAGE_FILE"], "w") as f:
    json.dump({"usd": 0.01, "tokens": 10}, f)
open(f"{name}-{it}.txt", "w").write("done\\n")
if name == "slow" and it == os.environ.get("KILL_ITERATION", "1") and not os.path.exists(os.environ["SLEPT"]):
    open(os.environ["SLEPT"], "w").close()
    time.sleep(120)   # the engine is SIGKILLed while we sleep
"""


def _killme(tmp_path, counter, slept, kill_iteration: int = 1):
    return write_job(
        tmp_path,
        f"""
name: killme
goal: survive a SIGKILL
workspace: {{path: ws, template: template}}
allowed_tools: [python]
model_policy: {{default: m}}
# counter.txt and the SLEPT marker live outside the workspace: not a sandbox test.
sandbox: none
stages:
  - {{id: first, run: [python, stage.py], env: {{COUNTER: "{counter}", SLEPT: "{slept}", KILL_ITERATION: "{kill_iteration}"}}}}
  - {{id: slow, run: [python, stage.py], timeout: 300, env: {{COUNTER: "{counter}", SLEPT: "{slept}", KILL_ITERATION: "{kill_iteration}"}}}}
  - {{id: last, run: [python, stage.py], env: {{COUNTER: "{counter}", SLEPT: "{slept}", KILL_ITERATION: "{kill_iteration}"}}}}
quality_gates:
  required:
    - id: second-iteration
      kind: command_pass
      run: [python, -c, "import os, sys; sys.exit(0 if int(os.environ['LONGRUN_ITERATION']) >= 2 else 1)"]
stop_conditions: {{max_iterations: 5}}
""",
        {"stage.py": STAGE},
    )


def _run_in_background(spec, root, env) -> subprocess.Popen:
    """``longrun run`` as a plain child process: SIGKILL must hit the engine alone, not its stages."""
    return subprocess.Popen(
        [sys.executable, "-m", "longrun.cli.main", "run", str(spec), "--root", str(root)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigkill_mid_stage_then_resume(cli_env, tmp_path):
    counter, slept = tmp_path / "counter.txt", tmp_path / "slept"
    spec = _killme(tmp_path, counter, slept)
    job_id = load_spec(spec).job_id
    paths = JobPaths(tmp_path, job_id)

    proc = _run_in_background(spec, tmp_path, cli_env)
    sigkill_engine_once(proc, slept, "stage 'slow'")
    assert proc.returncode == -signal.SIGKILL

    # The orphaned stage is still sleeping; the journal shows the open iteration.
    orphan_line = [l for l in counter.read_text().splitlines() if l.startswith("slow 1")][0]
    orphan_pid = int(orphan_line.split("pid=")[1])
    os.kill(orphan_pid, 0)  # alive
    state = Journal(paths.events_file).state()
    assert state.status == "RUNNING" and state.open_iteration == 1
    assert state.stage_done(1, "first") and not state.stage_done(1, "slow")
    events_before = Journal(paths.events_file).read()

    done = longrun_cli("resume", job_id, "--root", str(tmp_path), "--json", cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["status"] == "COMPLETED" and outcome["iterations"] == 2

    # The orphan was killed before 'slow' ran again.
    with pytest.raises(ProcessLookupError):
        for _ in range(50):
            os.kill(orphan_pid, 0)
            time.sleep(0.1)

    # Completed stages were not executed again: each (stage, iteration) ran
    # once, except 'slow 1', whose first attempt was killed.
    runs = [l.split(" pid=")[0] for l in counter.read_text().splitlines()]
    assert runs == ["first 1", "slow 1", "slow 1", "last 1", "first 2", "slow 2", "last 2"]

    evs = Journal(paths.events_file).read()
    # Nothing lost: the old events are a prefix of the new journal.
    assert [e.to_line() for e in evs[: len(events_before)]] == [e.to_line() for e in events_before]
    assert [e.seq for e in evs] == list(range(1, len(evs) + 1))
    # Nothing duplicated: one stage_finished per (iteration, stage).
    finished = [(e.payload.iteration, e.payload.stage) for e in evs if e.type == "stage_finished"]
    assert sorted(finished) == sorted({(i, s) for i in (1, 2) for s in ("first", "slow", "last")})
    assert len(finished) == 6
    started_slow1 = [
        e.payload.attempt for e in evs if e.type == "stage_started" and (e.payload.iteration, e.payload.stage) == (1, "slow")
    ]
    assert started_slow1 == [1, 2]
    assert [e.type for e in evs].count("iteration_started") == 2
    assert [e.payload.resumed for e in evs if e.type == "run_started"] == [False, True]

    # Counters continue across the crash: 6 stage executions recorded, 0.01 each.
    state = Journal(paths.events_file).state()
    assert state.status == "COMPLETED" and state.iterations_finished == 2
    assert state.usd_total == pytest.approx(0.06) and state.tokens_total == 60
    assert len(state.runs) == 2

    # The second flow run rebuilt 'first#1' from the journal: Prefect was not asked for it at all.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        tr = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[outcome["run_id"]])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=100,
        )
    states = {t.name: t.state.name for t in tr}
    assert "first#1" not in states
    assert states["slow#1 attempt 2"] == "Completed" and states["last#2"] == "Completed"


def test_sigkill_in_iteration_2_then_resume_with_prefect_cache_refresh_on(cli_env, tmp_path):
    """Resume never asks Prefect's cache: with PREFECT_TASKS_REFRESH_CACHE=true no finished stage runs again."""
    killed_root, clean_root = tmp_path / "killed", tmp_path / "clean"
    killed_root.mkdir()
    clean_root.mkdir()
    counter, slept = killed_root / "counter.txt", killed_root / "slept"
    spec = _killme(killed_root, counter, slept, kill_iteration=2)
    job_id = load_spec(spec).job_id
    sigkill_engine_once(_run_in_background(spec, killed_root, cli_env), slept, "stage 'slow' of iteration 2")
    state = Journal(JobPaths(killed_root, job_id).events_file).state()
    assert (state.open_iteration, state.iterations_finished) == (2, 1) and not state.stage_done(2, "slow")

    refresh = {**cli_env, "PREFECT_TASKS_REFRESH_CACHE": "true"}
    done = longrun_cli("resume", job_id, "--root", str(killed_root), "--json", cwd=killed_root, env=refresh)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "COMPLETED"
    runs = [l.split(" pid=")[0] for l in counter.read_text().splitlines()]
    # Each finished stage ran once; only 'slow 2', killed mid-run, ran twice.
    assert runs == ["first 1", "slow 1", "last 1", "first 2", "slow 2", "slow 2", "last 2"]

    # The same job run without interruption spends exactly the same.
    clean_counter = clean_root / "counter.txt"
    clean_spec = _killme(clean_root, clean_counter, clean_root / "slept", kill_iteration=0)
    ok = longrun_cli("run", str(clean_spec), "--root", str(clean_root), "--json", cwd=clean_root, env=cli_env)
    assert ok.returncode == 0, ok.stderr
    killed = Journal(JobPaths(killed_root, job_id).events_file).state()
    clean = Journal(JobPaths(clean_root, load_spec(clean_spec).job_id).events_file).state()
    assert (killed.iterations_finished, clean.iterations_finished) == (2, 2)
    assert killed.usd_total == pytest.approx(clean.usd_total) == pytest.approx(0.06)
    assert killed.tokens_total == clean.tokens_total == 60
