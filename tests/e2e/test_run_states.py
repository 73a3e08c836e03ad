"""The Prefect state of a job's flow run tells the run's outcome; approvals decided after a timeout, by shorthand.

Real parts: ``longrun run``/``resume``/``approve`` subprocesses on the session's
``prefect server``, whose flow and task runs are read back over its API.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import longrun_cli, write_job

from longrun.spec import load_spec

pytestmark = [pytest.mark.prefect]

SPEC = """
name: {name}
goal: end as the test says
workspace: {{path: ws, template: template}}
allowed_tools: [python]
model_policy: {{default: m}}
stages:
  - {{id: work, run: [python, -c, "{stage}"]}}
quality_gates:
  required:
    - {{id: check, kind: command_pass, run: [python, -c, "import sys; sys.exit({gate_exit})"]}}
stop_conditions: {{max_iterations: {max_iterations}}}
"""

SPEND = "import json, os; json.dump({'usd': 0.4, 'tokens': 10}, open(os.environ['LONGRUN_USAGE_FILE'], 'w'))"


def _spec(
    tmp_path: Path, name: str, *, gate_exit: int = 0, stage: str = "pass", max_iterations: int = 3, extra: str = ""
) -> Path:
    text = SPEC.format(name=name, stage=stage, gate_exit=gate_exit, max_iterations=max_iterations) + extra
    (tmp_path / name).mkdir(parents=True, exist_ok=True)
    return write_job(tmp_path / name, text)


def _run(spec: Path, env: dict, *args: str) -> tuple[int, dict]:
    r = longrun_cli("run", str(spec), "--json", "--root", str(spec.parent), *args, cwd=spec.parent, env=env)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, json.loads(r.stdout)


def _flow_run(flow_run_id: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def _task_states(flow_run_id: str) -> dict[str, tuple[str, str]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {tr.name: (tr.state.type.value, tr.state.name) for tr in runs}


def _log_lines(flow_run_id: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs]


@pytest.fixture
def prefect_env(cli_env, monkeypatch):
    for k, v in cli_env.items():
        if k.startswith("PREFECT_"):
            monkeypatch.setenv(k, v)
    return cli_env


def test_flow_run_states_tell_the_outcome(prefect_env, tmp_path):
    env = prefect_env
    cases = {
        # name: (spec, expected exit, status, Prefect state type, state name)
        "ends-completed": (_spec(tmp_path, "ends-completed"), 0, "COMPLETED", "COMPLETED", "Completed"),
        "ends-stopped": (_spec(tmp_path, "ends-stopped", gate_exit=1, max_iterations=1), 3, "STOPPED", "CANCELLED", "Stopped"),
        "ends-failed": (
            _spec(tmp_path, "ends-failed", gate_exit=1, extra="on_failure: {action: abort}\n"),
            1,
            "FAILED",
            "FAILED",
            "Failed",
        ),
        "ends-budget": (
            _spec(tmp_path, "ends-budget", gate_exit=1, stage=SPEND, extra="budgets: {total_usd: 0.5}\n"),
            4,
            "STOPPED_BUDGET",
            "FAILED",
            "StoppedBudget",
        ),
    }
    for name, (spec, code, status, state_type, state_name) in cases.items():
        rc, out = _run(spec, env)
        assert (rc, out["status"]) == (code, status), (name, out)
        fr = _flow_run(out["run_id"])
        assert (fr.state.type.value, fr.state.name) == (state_type, state_name), (name, fr.state)
        assert fr.state.message.startswith(status), (name, fr.state.message)
        if name == "ends-budget":
            assert "total_usd" in fr.state.message
        tasks = _task_states(out["run_id"])
        if name == "ends-completed":
            assert tasks["gate-check#1"] == ("COMPLETED", "Completed")
            # Progress lines reach the flow run's log (the UI), not only the terminal.
            lines = _log_lines(out["run_id"])
            assert any(line.startswith("iteration 1") for line in lines), lines
            assert any("gate check" in line and "PASS" in line for line in lines), lines
        else:
            # A failed gate ends its task run Failed, and the flow goes on to decide (stop, abort, budget).
            assert tasks["gate-check#1"] == ("FAILED", "GateFailed"), (name, tasks)


APPROVAL = """
approvals:
  - {before: work, timeout: 2, poll_interval: 1}
"""


def test_a_decision_after_the_pause_timed_out_is_honoured_and_a_rejection_ends_cancelled(prefect_env, tmp_path):
    env = prefect_env
    spec = _spec(tmp_path, "late-decision", extra=APPROVAL)
    job_id = load_spec(spec).job_id
    rc, out = _run(spec, env)
    assert (rc, out["status"]) == (6, "WAITING_APPROVAL")
    fr = _flow_run(out["run_id"])
    assert (fr.state.type.value, fr.state.name) == ("CANCELLED", "AwaitingApproval")
    root = str(spec.parent)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return longrun_cli(*args, "--root", root, cwd=spec.parent, env=env)

    # The stage's id names the step it guards; no --step: the one step the run waits for.
    wrong = cli("approve", job_id, "--step", "nope", "--approver", "ann")
    assert wrong.returncode == 2 and "approval_step_unknown" in wrong.stderr and "before-work" in wrong.stderr
    ok = cli("approve", job_id, "--step", "work", "--approver", "ann", "--json")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert (doc["step"], doc["decision"], doc["recorded"], doc["status"]) == ("before-work", "approved", True, "APPROVED")
    # A second, different decision is refused and names who decided first; the same one records nothing.
    again = cli("approve", job_id, "--reject", "--approver", "bob", "--step", "before-work")
    assert again.returncode == 2 and "approval_conflict" in again.stderr and "approved by ann" in again.stderr
    same = cli("approve", job_id, "--approver", "carl", "--step", "before-work", "--json")
    assert same.returncode == 0 and json.loads(same.stdout)["recorded"] is False
    status = cli("status", job_id, "--json")
    assert json.loads(status.stdout)["status"] == "APPROVED"
    resumed = cli("resume", job_id, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "COMPLETED"
    # Resuming after the approval went on with the same run: one run, two segments (flow runs).
    assert [r["status"] for r in json.loads(cli("runs", job_id, "--json").stdout)["runs"]] == ["COMPLETED"]
    st = json.loads(cli("status", job_id, "--json").stdout)
    assert (st["runs_of_job"], len(st["segments"])) == (1, 2)
    human = cli("status", job_id).stdout
    assert "over 2 segment(s)" in human and "run(s)" not in human

    # Rejected: the flow run ends Cancelled, named Rejected.
    spec2 = _spec(tmp_path, "rejected-late", extra=APPROVAL)
    rc, out = _run(spec2, env)
    assert rc == 6
    rej = longrun_cli(
        "approve",
        load_spec(spec2).job_id,
        "--reject",
        "--approver",
        "dan",
        "--root",
        str(spec2.parent),
        cwd=spec2.parent,
        env=env,
    )
    assert rej.returncode == 0, rej.stderr
    end = longrun_cli("resume", load_spec(spec2).job_id, "--json", "--root", str(spec2.parent), cwd=spec2.parent, env=env)
    # A rejected run is over: resume reports it (exit 5) without a flow run.
    assert end.returncode == 5 and json.loads(end.stdout)["status"] == "REJECTED"


def test_concurrent_cli_approvals_record_one_decision(prefect_env, tmp_path):
    env = prefect_env
    spec = _spec(tmp_path, "racing-approvers", extra=APPROVAL)
    job_id = load_spec(spec).job_id
    rc, _ = _run(spec, env)
    assert rc == 6
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "longrun.cli.main", "approve", job_id, "--approver", f"p{i}", "--root", str(spec.parent)]
            + (["--reject"] if i % 2 else []),
            cwd=spec.parent,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(6)
    ]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    from longrun.journal.registry import find_job

    journal = find_job(spec.parent, job_id).journal
    decisions = [e for e in journal.read() if e.type in ("approved", "rejected")]
    assert len(decisions) == 1, results
    winner = decisions[0].type
    for i, (code, err) in enumerate(results):
        mine = "rejected" if i % 2 else "approved"
        if mine != winner:
            assert code == 2 and "approval_conflict" in err, (i, code, err)
        else:
            assert code == 0, (i, err)
