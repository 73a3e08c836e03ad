"""The job flow on a real Prefect server: iterations, checkpoints, journal, stop conditions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import write_job

from longrun.journal.local import Journal
from longrun.spec import load_spec
from longrun.storage.paths import JobPaths

pytestmark = pytest.mark.prefect
PY = "python"


def run_flow(spec_path: Path, root: Path, **params) -> dict:
    from longrun.flows.job import job_flow

    loaded = load_spec(spec_path)
    # The flow run ends in a state that tells the outcome (Failed, Cancelled, ...); its data is the outcome.
    state = job_flow(loaded)(
        spec=json.loads(loaded.canonical), root=str(root), source=str(loaded.source), return_state=True, **params
    )
    return state.result(raise_on_failure=False)


def events(root: Path, job_id: str):
    return Journal(JobPaths(root, job_id).events_file).read()


def task_run_names(flow_run_id: str) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=200,
        )
        flow_run = client.read_flow_run(flow_run_id)
        flow = client.read_flow(flow_run.flow_id)
    return {"__flow__": flow.name, "__flow_run__": flow_run.name, **{r.name: r.state.name for r in runs}}


def test_example_completes_in_two_iterations_with_checkpoints(prefect_server, example_copy, tmp_path):
    spec_path = example_copy / "fix-failing-test.yaml"
    out = run_flow(spec_path, tmp_path)
    assert out["status"] == "COMPLETED" and out["iterations"] == 2
    assert out["usd"] == pytest.approx(0.12) and out["tokens"] == 12400
    paths = JobPaths(tmp_path, out["job_id"])

    it1, it2 = paths.iteration_dir(1), paths.iteration_dir(2)
    for d in (it1, it2):
        for name in ("plan-diff.md", "patch.diff", "command.log", "test-report.json", "summary.md"):
            assert (d / name).is_file() and (d / name).stat().st_size > 0, (d, name)
    # Iteration 1 fixed add, iteration 2 fixed mul: the patches say so.
    assert "-    return a - b" in (it1 / "patch.diff").read_text()
    assert "-    return a + b" in (it2 / "patch.diff").read_text() and "+    return a * b" in (it2 / "patch.diff").read_text()
    r1 = json.loads((it1 / "test-report.json").read_text())
    r2 = json.loads((it2 / "test-report.json").read_text())
    assert (r1["tests"], r1["passed"], r1["failing"]) == (3, 2, ["tests.test_calc::test_mul"])
    assert (r2["tests"], r2["passed"], r2["failing"]) == (3, 3, [])
    summary = (it1 / "summary.md").read_text()
    assert "| plan | plan | small-fast | 0 |" in summary and "| execute | execute | large-careful | 0 |" in summary
    assert "| tests | test_pass | yes | FAIL |" in summary and "$0.0600" in summary
    assert "| tests | test_pass | yes | PASS |" in (it2 / "summary.md").read_text()
    assert "+++ PLAN.md (iteration 2)" in (it2 / "plan-diff.md").read_text()
    log = (it1 / "command.log").read_text()
    assert "=== stage plan #1 attempt 1 $ python tools/demo_agent.py plan ===" in log
    assert "fixed add" in log and "gate tests #1" in log

    # Records persisted through Prefect's result storage, readable JSON.
    rec = json.loads((it1 / "stages" / "execute.json").read_text())
    assert rec["kind"] == "stage" and rec["model"] == "large-careful" and rec["usage"]["tokens"] == 5000
    ckpt = json.loads((it2 / "checkpoint.json").read_text())
    assert ckpt["gates_passed"] is True and set(ckpt["digests"]) >= {"summary.md", "patch.diff", "command.log"}

    # The journal replays to COMPLETED; seqs are 1..n.
    evs = events(tmp_path, out["job_id"])
    assert [e.seq for e in evs] == list(range(1, len(evs) + 1))
    state = Journal(paths.events_file).state()
    assert state.status == "COMPLETED" and state.iterations_finished == 2
    assert [e.type for e in evs].count("stage_finished") == 4
    assert [e.type for e in evs][-2:] == ["run_completed", "evidence_built"]

    # The spec is stored canonically and immutably beside the runs.
    stored = json.loads(paths.spec_file.read_text())
    assert stored["spec_schema"] == 2 and stored["spec"]["name"] == "fix-failing-test"

    # Prefect shows the flow named after the job, tasks named <stage>#<iter>.
    names = task_run_names(out["run_id"])
    assert names["__flow__"] == "fix-failing-test"
    assert names["__flow_run__"] == f"fix-failing-test-{out['job_id']}"
    for n in ("plan#1", "execute#1", "checkpoint#1", "plan#2", "execute#2", "gate-tests#2", "checkpoint#2"):
        assert names[n] == "Completed", (n, names)
    assert names["gate-tests#1"] == "GateFailed"  # 2 of 3 tests passed: the gate's task run failed, the flow went on

    # The run's evidence bundle verifies; one changed byte is caught and named.
    from longrun.evidence.bundle import bundle_paths
    from longrun.evidence.verify import verify

    tar, manifest = bundle_paths(tmp_path, out["job_id"])
    assert verify(manifest, tar, job_files_root=tmp_path).ok
    summary = it1 / "summary.md"
    data = bytearray(summary.read_bytes())
    data[10] ^= 1
    summary.write_bytes(bytes(data))
    report = verify(manifest, tar, job_files_root=tmp_path)
    assert not report.ok and [m.name for m in report.mismatches] == ["checkpoints/1/summary.md"]

    # Running a completed job again does nothing.
    again = run_flow(spec_path, tmp_path)
    assert again["status"] == "COMPLETED" and len(events(tmp_path, out["job_id"])) == len(evs)


ENV_DUMP = """
import json, os, sys
keys = [k for k in os.environ if k.startswith("LONGRUN_")]
out = {k: os.environ[k] for k in keys}
out["cwd"] = os.getcwd()
name = os.environ["LONGRUN_STAGE"] + "-" + os.environ["LONGRUN_ITERATION"] + ".json"
# Into the workspace: the sandbox lets a stage read its checkpoint directory, not write it.
os.makedirs("env-dumps", exist_ok=True)
open(os.path.join("env-dumps", name), "w").write(json.dumps(out))
open(os.environ["LONGRUN_USAGE_FILE"], "w").write(json.dumps({"usd": 0.25, "tokens": 7, "model": "reported"}))
print("stdout line"); print("stderr line", file=sys.stderr)
"""


def test_stage_contract_environment_and_routing(prefect_server, tmp_path):
    spec = write_job(
        tmp_path,
        f"""
name: env-contract
goal: check the stage environment
workspace: {{path: ws, template: template}}
allowed_tools: [{PY}]
model_policy: {{default: cheap, search: cheap-search, execute: strong}}
stages:
  - {{id: search, run: [{PY}, dump.py]}}
  - {{id: build, phase: execute, run: [{PY}, dump.py]}}
  - {{id: other, run: [{PY}, dump.py]}}
quality_gates:
  required:
    - {{id: ok, kind: command_pass, run: [{PY}, -c, "pass"]}}
""",
        {"dump.py": ENV_DUMP},
    )
    out = run_flow(spec, tmp_path)
    assert out["status"] == "COMPLETED" and out["iterations"] == 1
    d = JobPaths(tmp_path, out["job_id"]).iteration_dir(1)
    dumps = tmp_path / "ws" / "env-dumps"
    env = {s: json.loads((dumps / f"{s}-1.json").read_text()) for s in ("search", "build", "other")}
    assert env["search"]["LONGRUN_PHASE"] == "search" and env["search"]["LONGRUN_MODEL"] == "cheap-search"
    assert env["build"]["LONGRUN_PHASE"] == "execute" and env["build"]["LONGRUN_MODEL"] == "strong"
    assert env["other"]["LONGRUN_PHASE"] == "" and env["other"]["LONGRUN_MODEL"] == "cheap"
    e = env["build"]
    assert e["LONGRUN_JOB_ID"] == out["job_id"] and e["LONGRUN_RUN_ID"] == out["run_id"]
    assert e["LONGRUN_ITERATION"] == "1" and e["LONGRUN_STAGE"] == "build"
    assert e["LONGRUN_GOAL"] == "check the stage environment"
    assert Path(e["LONGRUN_CHECKPOINT_DIR"]) == d.resolve()
    assert Path(e["LONGRUN_USAGE_FILE"]).parent == (d / "usage").resolve()
    assert Path(e["cwd"]) == (tmp_path / "ws").resolve()
    log = (d / "command.log").read_text()
    assert "stdout line" in log and "stderr line" in log
    state = Journal(JobPaths(tmp_path, out["job_id"]).events_file).state()
    assert state.usd_total == pytest.approx(0.75) and state.tokens_total == 21
    assert state.stage_results[1]["build"].usage.model == "reported"


def test_max_iterations_stops(prefect_server, tmp_path):
    spec = write_job(
        tmp_path,
        f"""
name: never-done
goal: never passes
workspace: {{path: ws, template: template}}
allowed_tools: [{PY}]
model_policy: {{default: m}}
stages:
  - {{id: work, run: [{PY}, -c, "import os; open('n.txt','a').write(os.environ['LONGRUN_ITERATION'])"]}}
quality_gates:
  required:
    - {{id: never, kind: command_pass, run: [{PY}, -c, "raise SystemExit(1)"]}}
stop_conditions: {{max_iterations: 3}}
""",
    )
    out = run_flow(spec, tmp_path)
    assert (out["status"], out["reason"], out["iterations"]) == ("STOPPED", "max_iterations", 3)
    assert (tmp_path / "ws" / "n.txt").read_text() == "123"
    last = [e for e in events(tmp_path, out["job_id"]) if e.type != "evidence_built"][-1]
    assert last.type == "run_stopped" and last.payload.detail == {"limit": 3, "iterations": 3}


def test_no_progress_stops(prefect_server, tmp_path):
    spec = write_job(
        tmp_path,
        f"""
name: stuck
goal: an agent that changes nothing
workspace: {{path: ws, template: template}}
allowed_tools: [{PY}]
model_policy: {{default: m}}
stages:
  - {{id: idle, run: [{PY}, -c, "print('thinking')"]}}
quality_gates:
  required:
    - {{id: never, kind: command_pass, run: [{PY}, -c, "raise SystemExit(1)"]}}
stop_conditions: {{max_iterations: 10, no_progress_iterations: 2}}
""",
    )
    out = run_flow(spec, tmp_path)
    # Iterations 2 and 3 each repeat iteration 1's (empty) patch and failing tests.
    assert (out["status"], out["reason"], out["iterations"]) == ("STOPPED", "no_progress", 3)


def test_stop_file_stops_before_next_stage_and_rerun_continues(prefect_server, tmp_path):
    # The stop file is in the workspace: a sandboxed stage cannot write .maestro/STOP (.maestro is hidden).
    stop = tmp_path / "ws" / "STOP"
    spec = write_job(
        tmp_path,
        f"""
name: stoppable
goal: stop me
workspace: {{path: ws, template: template}}
allowed_tools: [{PY}]
model_policy: {{default: m}}
stop_conditions: {{stop_file: ws/STOP}}
stages:
  - id: first
    run: [{PY}, -c, "import os; open('first.log','a').write('x'); open(os.environ['STOP_PATH'],'w').close() if not os.path.exists('stopped-once') else None; open('stopped-once','w').close()"]
    env: {{STOP_PATH: "{stop}"}}
  - {{id: second, run: [{PY}, -c, "open('second.log','a').write('x')"]}}
quality_gates:
  required:
    - {{id: ok, kind: command_pass, run: [{PY}, -c, "pass"]}}
""",
    )
    out = run_flow(spec, tmp_path)
    assert (out["status"], out["reason"]) == ("STOPPED", "stop_file")
    assert not (tmp_path / "ws" / "second.log").exists()
    state = Journal(JobPaths(tmp_path, out["job_id"]).events_file).state()
    assert state.open_iteration == 1 and state.stage_done(1, "first") and not state.stage_done(1, "second")

    stop.unlink()
    out2 = run_flow(spec, tmp_path)
    assert out2["status"] == "COMPLETED" and out2["iterations"] == 1
    # 'first' was rebuilt from the journal: it did not run again, and Prefect was not even asked for it.
    assert (tmp_path / "ws" / "first.log").read_text() == "x"
    assert (tmp_path / "ws" / "second.log").read_text() == "x"
    names = task_run_names(out2["run_id"])
    assert "first#1" not in names and names["second#1"] == "Completed"


def test_max_wall_time_stops(prefect_server, tmp_path):
    spec = write_job(
        tmp_path,
        f"""
name: slowpoke
goal: too slow
workspace: {{path: ws, template: template}}
allowed_tools: [{PY}]
model_policy: {{default: m}}
stages:
  - {{id: slow, run: [{PY}, -c, "import time; time.sleep(1.5)"]}}
  - {{id: after, run: [{PY}, -c, "open('after','w')"]}}
stop_conditions: {{max_wall_time: 1}}
""",
    )
    out = run_flow(spec, tmp_path)
    assert (out["status"], out["reason"]) == ("STOPPED", "max_wall_time")
    assert not (tmp_path / "ws" / "after").exists()
    last = [e for e in events(tmp_path, out["job_id"]) if e.type != "evidence_built"][-1]
    assert last.payload.detail["limit_s"] == 1 and last.payload.detail["elapsed_s"] >= 1.5


def test_timeout_retry_and_failed_dependency(prefect_server, tmp_path):
    spec = write_job(
        tmp_path,
        f"""
name: flaky
goal: retry a stage that hangs once
workspace: {{path: ws, template: template}}
allowed_tools: [{PY}]
model_policy: {{default: m}}
stages:
  - id: hangs-once
    run: [{PY}, -c, "import os, time; first = not os.path.exists('tried'); open('tried','a').write('x'); time.sleep(30 if first else 0)"]
    timeout: 1
    retry: {{max_retries: 1, when: [timeout]}}
  - {{id: fails, run: [{PY}, -c, "raise SystemExit(3)"]}}
  - {{id: dependent, depends_on: [fails], run: [{PY}, -c, "open('dependent-ran','w')"]}}
quality_gates:
  required:
    - {{id: ok, kind: command_pass, run: [{PY}, -c, "pass"]}}
""",
    )
    out = run_flow(spec, tmp_path)
    assert out["status"] == "COMPLETED"
    evs = events(tmp_path, out["job_id"])
    started = [e.payload.attempt for e in evs if e.type == "stage_started" and e.payload.stage == "hangs-once"]
    assert started == [1, 2]
    finished = {e.payload.stage: e.payload for e in evs if e.type == "stage_finished"}
    assert finished["hangs-once"].exit_code == 0 and finished["hangs-once"].attempts == 2
    assert finished["fails"].exit_code == 3
    assert finished["dependent"].exit_code is None and not (tmp_path / "ws" / "dependent-ran").exists()
    assert (tmp_path / "ws" / "tried").read_text() == "xx"


def test_no_required_gate_never_completes_and_bad_usage_fails_cleanly(prefect_server, tmp_path):
    spec = write_job(
        tmp_path,
        f"""
name: gateless
goal: nothing proves completion
workspace: {{path: ws, template: template}}
allowed_tools: [{PY}]
model_policy: {{default: m}}
stages:
  - {{id: work, run: [{PY}, -c, "import os; open('n.txt','a').write(os.environ['LONGRUN_ITERATION'])"]}}
stop_conditions: {{max_iterations: 2}}
""",
    )
    out = run_flow(spec, tmp_path)
    assert (out["status"], out["reason"], out["iterations"]) == ("STOPPED", "max_iterations", 2)

    bad = write_job(
        tmp_path / "b" if (tmp_path / "b").mkdir() is None else tmp_path,
        f"""
name: bad-usage
goal: a stage prints a non-number where the regex expects spend
workspace: {{path: ws2, template: template}}
allowed_tools: [{PY}]
model_policy: {{default: m}}
stages:
  - id: spend
    run: [{PY}, -c, "print('cost: 1,234 dollars')"]
    usage: {{usd_regex: 'cost: ([^ ]+)'}}
quality_gates:
  required:
    - {{id: ok, kind: command_pass, run: [{PY}, -c, "pass"]}}
""",
    )
    from longrun.flows.job import job_flow

    loaded = load_spec(bad)
    state = job_flow(loaded)(spec=json.loads(loaded.canonical), root=str(tmp_path), source=str(loaded.source), return_state=True)
    assert state.is_failed() and state.message.startswith("usage_invalid")
    js = Journal(JobPaths(tmp_path, loaded.job_id).events_file)
    evs = js.read()
    assert [e.type for e in evs][-2:] == ["run_failed", "evidence_built"]  # a failed run leaves evidence too
    failed = evs[-2]
    assert failed.payload.code == "usage_invalid" and "'1,234'" in failed.payload.message
    assert [e.type for e in evs].count("run_failed") == 1
    assert js.state().status == "FAILED"
    assert (JobPaths(tmp_path, loaded.job_id).evidence_dir / f"{loaded.job_id}.tar.gz").is_file()


def test_a_finished_run_runs_nothing_whatever_its_workspace_looks_like_now(prefect_server, tmp_path):
    """The same intended run (its key) of a COMPLETED run: "nothing to do", never a failure journaled over the result."""
    spec = write_job(
        tmp_path,
        "name: done-once\ngoal: g\nworkspace: {path: ws, template: template}\nallowed_tools: [python]\n"
        "model_policy: {default: m}\nstages: [{id: a, run: [python, -c, 'pass']}]\n"
        "quality_gates: {required: [{id: ok, kind: command_pass, run: [python, -c, 'pass']}]}\n",
    )
    first = run_flow(spec, tmp_path, run_key="tick-1")
    assert first["status"] == "COMPLETED"
    shutil.rmtree(tmp_path / "ws")
    shutil.rmtree(tmp_path / "template")  # what the run was made from is gone
    again = run_flow(spec, tmp_path, run_key="tick-1")
    assert again["status"] == "COMPLETED" and again["job_id"] == first["job_id"] != load_spec(spec).job_id
    types = [e.type for e in events(tmp_path, again["job_id"])]
    assert "run_failed" not in types and types.count("run_started") == 1
    assert not (tmp_path / "ws").exists()
