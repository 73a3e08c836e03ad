"""Smoke test of the scale-out test infrastructure (tests/scaleout.py).

A Prefect server on PostgreSQL, a process work pool, two workers standing for
two machines; a job deployed with ``longrun deploy`` (a local root for now)
runs to completion on one of them, and its flow run is a row in PostgreSQL.
Killing a worker kills the flow run it started, wherever Prefect put it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import longrun_cli
from scaleout import deploy_job, job_spec, wait_final

pytestmark = [pytest.mark.prefect, pytest.mark.slow, pytest.mark.scaleout]


def _trigger(env: dict, target: str, key: str, cwd: Path) -> str:
    t = longrun_cli("trigger", target, "--key", key, "--json", cwd=cwd, env=env)
    assert t.returncode == 0, t.stdout + t.stderr
    return json.loads(t.stdout)["flow_run_id"]


def _wait_picked_up(client, flow_run_id: str, timeout: float = 60) -> None:
    """Until the flow run leaves SCHEDULED (a worker took it)."""
    deadline = time.monotonic() + timeout
    while client.read_flow_run(flow_run_id).state.type.value == "SCHEDULED":
        assert time.monotonic() < deadline, f"no worker picked up {flow_run_id} in {timeout}s"
        time.sleep(0.2)


def _pickup_seconds(client, flow_run_id: str) -> float:
    """From the flow run's SCHEDULED state to its PENDING one (the worker's submission), by the server's timestamps."""
    states = {s.type.value: s.timestamp for s in reversed(client.read_flow_run_states(flow_run_id))}
    return (states["PENDING"] - states["SCHEDULED"]).total_seconds()


def test_two_workers_on_postgres_run_a_deployed_job(postgres, pg_prefect_server, scaleout_pool, scaleout_workers, tmp_path):
    t0 = time.monotonic()
    machines = [scaleout_workers("machine-a"), scaleout_workers("machine-b")]
    workers_up = time.monotonic() - t0
    assert len({w.workdir for w in machines}) == 2 and all(w.workdir.is_dir() for w in machines)
    assert {w.env["LONGRUN_WORKDIR"] for w in machines} == {str(w.workdir) for w in machines}

    env = pg_prefect_server.cli_env()
    spec = job_spec(tmp_path, "scaleout-smoke")
    root = tmp_path / "root"
    doc = deploy_job(env, spec, "--pool", scaleout_pool, "--root", str(root))
    assert doc["pool"] == scaleout_pool and doc["pool_created"] is False

    flow_run_id = _trigger(env, doc["name"], "smoke-1", tmp_path)
    with pg_prefect_server.client() as client:
        final = wait_final(client, flow_run_id, 240, machines[0].log_path)
        picked_up = _pickup_seconds(client, flow_run_id)
    logs = "\n".join(w.log()[-3000:] for w in machines)
    assert final.state.is_completed(), (final.state, logs)
    assert sum(w.ran(flow_run_id) for w in machines) == 1  # one machine ran it (the other may have tried)

    # The flow run lives in PostgreSQL, not in a SQLite file in some PREFECT_HOME.
    row = postgres.psql(f"SELECT name, state_type FROM flow_run WHERE id = '{flow_run_id}'")
    assert row == f"{final.name}|COMPLETED"
    assert not list(pg_prefect_server.home.glob("*.db"))
    timings = {
        "postgres_start_s": postgres.timings["start_s"],
        "prefect_ready_on_pg_s": pg_prefect_server.timings["ready_s"],
        "two_workers_registered_s": workers_up,
        "pickup_s": picked_up,
    }
    print("scale-out timings:", json.dumps({k: round(v, 1) for k, v in timings.items()}))


def test_killing_a_worker_kills_the_flow_run_it_started(pg_prefect_server, scaleout_pool, scaleout_workers, tmp_path):
    """A machine dies: SIGKILL reaches the flow-run process, which Prefect starts in a session of its own."""
    machine = scaleout_workers("doomed")
    env = pg_prefect_server.cli_env()
    spec = job_spec(tmp_path, "scaleout-kill")
    spec.write_text(
        spec.read_text().replace("        import os\n", "        import os, time\n        time.sleep(25)  # slow-stage\n", 1)
    )
    doc = deploy_job(env, spec, "--pool", scaleout_pool, "--root", str(tmp_path / "root"))
    flow_run_id = _trigger(env, doc["name"], "kill-1", tmp_path)
    with pg_prefect_server.client() as client:
        _wait_picked_up(client, flow_run_id)
    deadline = time.monotonic() + 120
    while True:
        pids = machine.pids()
        if any("slow-stage" in _cmdline(p) for p in pids):  # the stage is running
            break
        assert time.monotonic() < deadline, machine.log()[-3000:]
        time.sleep(0.2)
    sessions = {os.getsid(p) for p in pids if _exists(p)}
    machine.kill()
    assert not machine.alive() and not machine.pids()
    assert not any(_exists(p) for p in pids)
    assert len(sessions) >= 2, sessions  # the flow run was in its own session, and it died too


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _exists(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False
