"""Corrupt state: each case gives a stable code naming the line or file, never a traceback or a silent loss.

``longrun doctor`` reports them and repairs the one safe thing (a torn tail). Real
parts: a run through the CLI on the session's Prefect server, then its files damaged.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import longrun_cli, write_job

from longrun.spec import load_spec
from longrun.storage.paths import JobPaths

pytestmark = [pytest.mark.prefect]

SPEC = """
name: damaged
goal: be damaged afterwards
workspace: {path: ws, template: template}
allowed_tools: [python]
model_policy: {default: m}
stages:
  - {id: work, run: [python, -c, "pass"]}
quality_gates:
  required:
    - {id: ok, kind: command_pass, run: [python, -c, "pass"]}
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory, prefect_server):
    import os

    env = {**os.environ, **prefect_server["env"], "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    root = tmp_path_factory.mktemp("finished")
    spec = write_job(root, SPEC)
    r = longrun_cli("run", str(spec), "--root", str(root), cwd=root, env=env)
    assert r.returncode == 0, r.stderr
    return root, spec, load_spec(spec).job_id, env


@pytest.fixture
def copy(finished, tmp_path):
    """A copy of the finished job's root, to damage."""
    root, spec, job_id, env = finished
    dest = tmp_path / "root"
    shutil.copytree(root, dest, symlinks=True)
    return dest, dest / spec.name, job_id, env


def _cli(root: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    r = longrun_cli(*args, "--root", str(root), cwd=root, env=env)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def _doctor(root: Path, env: dict, job_id: str, *args: str) -> tuple[int, dict]:
    r = _cli(root, env, "doctor", job_id, "--json", *args)
    return r.returncode, json.loads(r.stdout)


def test_a_healthy_run_and_a_torn_tail_repaired(copy):
    root, _, job_id, env = copy
    code, doc = _doctor(root, env, job_id)
    assert (code, doc["healthy"], doc["chained"], doc["findings"]) == (0, True, True, [])
    journal = JobPaths(root, job_id).events_file
    events = doc["events"]
    with open(journal, "ab") as fh:
        fh.write(b'{"seq": 99, "type": "sta')  # an append cut by a crash
    code, doc = _doctor(root, env, job_id)
    assert code == 1 and [f["code"] for f in doc["findings"]] == ["journal_torn_tail"]
    assert _cli(root, env, "status", job_id).returncode == 0  # readers skip a torn tail
    code, doc = _doctor(root, env, job_id, "--repair")
    assert code == 0 and doc["findings"][0]["repaired"] is True and doc["events"] == events
    assert journal.read_bytes().endswith(b"\n")


@pytest.mark.parametrize("damage", ["garbage", "duplicate"])
def test_a_bad_line_in_the_middle_is_named_by_line(copy, damage):
    root, _, job_id, env = copy
    journal = JobPaths(root, job_id).events_file
    lines = journal.read_bytes().splitlines(keepends=True)
    extra = b"not an event\n" if damage == "garbage" else lines[2]
    journal.write_bytes(b"".join([*lines[:3], extra, *lines[3:]]))
    r = _cli(root, env, "status", job_id)
    assert r.returncode == 1 and r.stderr.startswith("journal_corrupt") and f"{journal}:4" in r.stderr, r.stderr
    code, doc = _doctor(root, env, job_id)
    assert code == 1 and doc["findings"][0]["code"] == "journal_corrupt" and ":4" in doc["findings"][0]["message"]
    assert journal.read_bytes().count(b"\n") == len(lines) + 1  # nothing was "repaired" away


def test_a_missing_checkpoint_record_is_named(copy):
    root, _, job_id, env = copy
    record = JobPaths(root, job_id).iteration_dir(1) / "checkpoint.json"
    record.unlink()
    code, doc = _doctor(root, env, job_id)
    assert code == 1 and [(f["code"], f["path"]) for f in doc["findings"]] == [("checkpoint_missing", str(record))]


def test_a_deleted_journal_is_never_started_over(copy):
    root, spec, job_id, env = copy
    journal = JobPaths(root, job_id).events_file
    journal.unlink()
    r = _cli(root, env, "run", str(spec))
    assert r.returncode == 1 and r.stderr.startswith("journal_missing") and str(journal) in r.stderr, r.stderr
    assert not journal.exists()  # no fresh journal written over the lost history
    code, doc = _doctor(root, env, job_id)
    assert code == 1 and doc["findings"][0]["code"] == "journal_missing"


def test_a_read_only_journal_is_reported_not_a_traceback(copy):
    root, spec, job_id, env = copy
    journal = JobPaths(root, job_id).events_file
    if subprocess.run(["chattr", "+i", str(journal)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available on this filesystem")
    try:
        code, doc = _doctor(root, env, job_id)
        assert code == 1 and "journal_unwritable" in [f["code"] for f in doc["findings"]]
        r = _cli(root, env, "evidence", job_id)  # a command that appends (evidence_built)
        assert r.returncode == 1 and r.stderr.startswith("journal_unwritable") and str(journal) in r.stderr, r.stderr
    finally:
        subprocess.run(["chattr", "-i", str(journal)], check=False)
