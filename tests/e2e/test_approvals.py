"""Approvals on Prefect's pause_flow_run: decided by the CLI, by the REST API, rejected, timed out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import api, longrun_cli, wait_paused, write_job

from longrun.journal.local import Journal
from longrun.spec import load_spec
from longrun.storage.paths import JobPaths

pytestmark = [pytest.mark.prefect, pytest.mark.slow]

SPEC = """
name: {name}
goal: ask a human before the work and before completion
workspace: {{path: ws, template: template}}
allowed_tools: [python]
model_policy: {{default: m}}
approvals:
  - {{before: work, timeout: {timeout}, poll_interval: 1}}
  - {{after: gates, step: release, timeout: {timeout}, poll_interval: 1}}
stages:
  - {{id: work, run: [python, -c, "open('ran.txt', 'a').write('x')"]}}
quality_gates:
  required:
    - {{id: made, kind: artifact_exists, path: ran.txt}}
"""


def start(background, tmp_path: Path, cli_env: dict, name: str, timeout: int = 120):
    spec = write_job(tmp_path, SPEC.format(name=name, timeout=timeout))
    job_id = load_spec(spec).job_id
    proc = background(tmp_path, cli_env, "run", str(spec))
    return spec, job_id, proc, Journal(JobPaths(tmp_path, job_id).events_file)


def decisions(journal: Journal):
    return [
        (e.type, e.payload.step, e.payload.approver, e.payload.comment)
        for e in journal.read()
        if e.type in ("approved", "rejected")
    ]


def test_approve_by_cli_both_checkpoints(background, cli_env, tmp_path):
    spec, job_id, proc, journal = start(background, tmp_path, cli_env, "ok-by-cli")
    wait_paused(journal, "before-work", proc)
    assert not (tmp_path / "ws" / "ran.txt").exists()  # nothing ran before the approval
    a = longrun_cli(
        "approve",
        job_id,
        "--step",
        "before-work",
        "--approver",
        "alice",
        "--comment",
        "go",
        "--root",
        str(tmp_path),
        cwd=tmp_path,
        env=cli_env,
    )
    assert a.returncode == 0 and "resumed paused flow run" in a.stdout, a.stderr
    req = wait_paused(journal, "release", proc)
    assert req.payload.key == "release-1-1"
    b = longrun_cli(
        "approve", job_id, "--step", "release", "--approver", "bob", "--root", str(tmp_path), cwd=tmp_path, env=cli_env
    )
    assert b.returncode == 0, b.stderr
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert json.loads(out)["status"] == "COMPLETED"
    assert decisions(journal) == [("approved", "before-work", "alice", "go"), ("approved", "release", "bob", "")]
    assert (tmp_path / "ws" / "ran.txt").read_text() == "x"
    # Pausing and resuming consumed no stage attempt.
    assert [e.payload.attempt for e in journal.read() if e.type == "stage_started"] == [1]
    # Each pause had its own key, so neither was skipped by Prefect's pause-key reuse rule.
    keys = [e.payload.key for e in journal.read() if e.type == "approval_requested"]
    assert keys == ["before-work-1-1", "release-1-1"]


def test_approve_by_rest_api(background, cli_env, tmp_path):
    spec, job_id, proc, journal = start(background, tmp_path, cli_env, "ok-by-rest")
    tail = None
    for step, approver in (("before-work", "carol"), ("release", "dave")):
        req = wait_paused(journal, step, proc)
        # A follower started while the run waits for a human keeps following: the run is paused, not over.
        tail = tail or background(tmp_path, cli_env, "tail", job_id, "--follow", "-n", "0")
        extra = req.payload.model_dump()
        body = {"run_input": {"decision": "approve", "approver": approver, "comment": "via REST"}}
        r = api("POST", f"{extra['api_url']}/flow_runs/{extra['flow_run_id']}/resume", body)
        assert r.status_code in (200, 201) and r.json()["status"] == "ACCEPT", r.text
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert decisions(journal) == [("approved", "before-work", "carol", "via REST"), ("approved", "release", "dave", "via REST")]
    followed, err = tail.communicate(timeout=30)
    assert tail.returncode == 0, err
    types = [json.loads(line)["type"] for line in followed.splitlines()]
    assert types[0] == "approved" and "approval_requested" in types and types.count("approved") == 2, types
    assert "run_completed" in types, types
    assert types[-1] == "evidence_built", types  # followed past the end of the run, until its engine exited


def test_reject_ends_the_run_rejected(background, cli_env, tmp_path):
    spec, job_id, proc, journal = start(background, tmp_path, cli_env, "rejected")
    wait_paused(journal, "before-work", proc)
    r = longrun_cli(
        "approve",
        job_id,
        "--step",
        "before-work",
        "--approver",
        "erin",
        "--reject",
        "--comment",
        "not today",
        "--root",
        str(tmp_path),
        cwd=tmp_path,
        env=cli_env,
    )
    assert r.returncode == 0, r.stderr
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 5, err
    outcome = json.loads(out)
    assert outcome["status"] == "REJECTED"
    # The flow run tells the outcome: Cancelled, named Rejected, the step in its message.
    state = api("GET", f"{cli_env['PREFECT_API_URL']}/flow_runs/{outcome['run_id']}").json()["state"]
    assert (state["type"], state["name"]) == ("CANCELLED", "Rejected") and state["message"].startswith("REJECTED: before-work"), (
        state
    )
    assert decisions(journal) == [("rejected", "before-work", "erin", "not today")]
    assert not (tmp_path / "ws" / "ran.txt").exists()
    again = longrun_cli("resume", job_id, "--root", str(tmp_path), cwd=tmp_path, env=cli_env)
    assert again.returncode == 5 and not (tmp_path / "ws" / "ran.txt").exists()


def test_timeout_is_journaled_and_the_job_resumes_after_approval(background, cli_env, tmp_path):
    spec, job_id, proc, journal = start(background, tmp_path, cli_env, "timed-out", timeout=3)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 6, err
    assert json.loads(out)["status"] == "WAITING_APPROVAL"
    types = [e.type for e in journal.read()]
    assert "approval_timeout" in types and "stage_started" not in types
    a = longrun_cli(
        "approve", job_id, "--step", "before-work", "--approver", "frank", "--root", str(tmp_path), cwd=tmp_path, env=cli_env
    )
    assert a.returncode == 0 and "longrun resume" in a.stdout, a.stdout + a.stderr
    # The second checkpoint (release) must be answered while the resumed run waits.
    proc2 = background(tmp_path, cli_env, "resume", job_id)
    wait_paused(journal, "release", proc2)
    longrun_cli("approve", job_id, "--step", "release", "--approver", "grace", "--root", str(tmp_path), cwd=tmp_path, env=cli_env)
    out2, err2 = proc2.communicate(timeout=120)
    assert proc2.returncode == 0, err2
    assert json.loads(out2)["status"] == "COMPLETED"
    assert decisions(journal) == [("approved", "before-work", "frank", ""), ("approved", "release", "grace", "")]
    assert (tmp_path / "ws" / "ran.txt").read_text() == "x"
