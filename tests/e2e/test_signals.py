"""SIGTERM and SIGINT end a run cleanly: within seconds, exit 130, a journaled stop, and a resume that goes on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import longrun_cli, write_job

from longrun.journal.local import Journal
from longrun.spec import load_spec
from longrun.storage.paths import JobPaths

pytestmark = [pytest.mark.prefect]

SPEC = """
name: {name}
goal: be interrupted once
workspace: {{path: ws, template: template}}
allowed_tools: [python]
model_policy: {{default: m}}
stages:
  - {{id: slow, run: [python, -c, "import os, time; time.sleep(0 if os.path.exists('{go}') else 120)"], timeout: 300}}
quality_gates:
  required:
    - {{id: ok, kind: command_pass, run: [python, -c, "pass"]}}
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_run_cleanly_and_resume_goes_on(cli_env, tmp_path, sig):
    go = tmp_path / "go"
    spec = write_job(tmp_path, SPEC.format(name=f"sig-{sig.name.lower()}", go=go))
    job_id = load_spec(spec).job_id
    journal = Journal(JobPaths(tmp_path, job_id).events_file)
    proc = subprocess.Popen(
        [sys.executable, "-m", "longrun.cli.main", "run", str(spec), "--root", str(tmp_path)],
        cwd=tmp_path,
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (journal.path.exists() and any(e.type == "stage_started" for e in journal.read())):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "slow"
            time.sleep(0.2)
        time.sleep(0.5)
        sent = time.monotonic()
        os.killpg(proc.pid, sig)  # the whole process group, as a terminal or a supervisor does
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert took < 10, took
    assert "Traceback" not in err and f"resume with: longrun resume {job_id}" in err, err
    stopped = [e.payload for e in journal.read() if e.type == "run_stopped"]
    assert [(p.reason, p.detail["by"]) for p in stopped] == [
        ("interrupted", "TerminationSignal" if sig == signal.SIGTERM else "KeyboardInterrupt")
    ]
    assert journal.state().status == "STOPPED"

    go.touch()
    r = longrun_cli("resume", job_id, "--root", str(tmp_path), "--json", cwd=tmp_path, env=cli_env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "COMPLETED"
    finished = [e.payload for e in journal.read() if e.type == "stage_finished"]
    assert [(p.stage, p.exit_code) for p in finished] == [("slow", 0)]  # the interrupted attempt left no result
