"""Retention: ``longrun prune`` frees disk from finished jobs, never from active ones, never losing evidence."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from conftest import longrun_cli, write_job

from longrun.journal.local import Journal
from longrun.journal.registry import register
from longrun.spec import load_spec
from longrun.storage.paths import JobPaths

HEADER = """
name: {name}
goal: g
workspace: {{path: ws, template: template}}
allowed_tools: [python]
model_policy: {{default: m}}
"""

STRICT = (
    HEADER
    + """
mode: strict
stages:
  - {{id: work, run: [python, -c, "import os; open('out.txt', 'a').write(os.environ['LONGRUN_ITERATION'])"]}}
quality_gates:
  required:
    - {{id: third, kind: command_pass, run: [python, -c, "import os, sys; sys.exit(int(os.environ['LONGRUN_ITERATION']) < 3)"]}}
"""
)


#: A worktree job that stops after one iteration (its gate never passes), leaving its worktree.
WT_STOPPED = (
    HEADER
    + """
isolation: worktree
stages: [{{id: edit, run: [python, -c, "open('made.txt', 'w').write('x')"]}}]
quality_gates: {{required: [{{id: never, kind: command_pass, run: [python, -c, "raise SystemExit(1)"]}}]}}
stop_conditions: {{max_iterations: 1}}
"""
)


def run_flow(spec: Path, root: Path) -> dict:
    from longrun.flows.job import job_flow

    loaded = load_spec(spec)
    state = job_flow(loaded)(spec=json.loads(loaded.canonical), root=str(root), source=str(loaded.source), return_state=True)
    return state.result(raise_on_failure=False)  # the outcome, also for a run that ended Cancelled or Failed


def prune(root: Path, *args: str) -> dict:
    r = longrun_cli("prune", *args, "--json", "--root", str(root), cwd=root)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pruned_events(paths: JobPaths) -> list:
    return [e for e in Journal(paths.events_file).read() if e.type == "pruned"]


@pytest.mark.prefect
def test_prune_removes_old_iterations_the_bundle_holds_and_evidence_still_verifies(prefect_server, tmp_path):
    out = run_flow(write_job(tmp_path, STRICT.format(name="prunable")), tmp_path)
    assert (out["status"], out["iterations"]) == ("COMPLETED", 3)
    job_id = out["job_id"]
    paths = JobPaths(tmp_path, job_id)
    bundle = paths.evidence_dir / f"{job_id}.tar.gz"
    bundle_sha = sha(bundle)
    kept = {p.relative_to(paths.checkpoints): sha(p) for p in paths.iteration_dir(3).rglob("*") if p.is_file()}

    # Recent jobs are left alone by default (--older-than 7d).
    (row,) = prune(tmp_path)["jobs"]
    assert row["skipped"].startswith("its last event is") and row["iterations"] == []
    # A dry run reports and removes nothing.
    (row,) = prune(tmp_path, "--older-than", "0", "--dry-run")["jobs"]
    assert (row["iterations"], row["dry_run"]) == ([1, 2], True) and row["freed_bytes"] > 0
    assert all(paths.iteration_dir(i).is_dir() for i in (1, 2, 3)) and pruned_events(paths) == []

    (row,) = prune(tmp_path, "--older-than", "0", "--by", "ops")["jobs"]
    assert (row["iterations"], row["skipped"], row["worktree"]) == ([1, 2], None, None)
    assert not paths.iteration_dir(1).exists() and not paths.iteration_dir(2).exists()
    assert not (paths.results_meta / job_id / "1").exists() and (paths.results_meta / job_id / "3").is_dir()
    assert {p.relative_to(paths.checkpoints): sha(p) for p in paths.iteration_dir(3).rglob("*") if p.is_file()} == kept
    (event,) = pruned_events(paths)
    assert (event.payload.iterations, event.payload.by) == ((1, 2), "ops")
    assert sha(bundle) == bundle_sha  # the record of the pruned iterations is untouched
    status = longrun_cli("status", job_id, "--json", "--root", str(tmp_path), cwd=tmp_path)
    assert json.loads(status.stdout)["pruned_iterations"] == [1, 2]

    # The bundle still verifies against the job's files, and so does the strict contract.
    v = longrun_cli("verify", job_id, "--json", "--root", str(tmp_path), cwd=tmp_path)
    assert v.returncode == 0, v.stdout + v.stderr
    report = json.loads(v.stdout)
    assert report["checked_disk"] is True and report["bundle_only"] > 0  # the pruned files, checked in the bundle
    s = longrun_cli("verify", job_id, "--strict", "--root", str(tmp_path), cwd=tmp_path)
    assert s.returncode == 0, s.stdout + s.stderr
    # Rebuilding would drop the pruned files: refused.
    e = longrun_cli("evidence", job_id, "--root", str(tmp_path), cwd=tmp_path)
    assert e.returncode == 2 and e.stderr.startswith("evidence_pruned") and "Traceback" not in e.stderr
    assert sha(bundle) == bundle_sha

    # Again: nothing left to remove, nothing journaled.
    (row,) = prune(tmp_path, "--older-than", "0")["jobs"]
    assert row["iterations"] == [] and len(pruned_events(paths)) == 1
    # --keep-last 0 removes the last iteration too.
    (row,) = prune(tmp_path, "--older-than", "0", "--keep-last", "0")["jobs"]
    assert row["iterations"] == [3] and not paths.iteration_dir(3).exists()
    assert longrun_cli("verify", job_id, "--strict", "--root", str(tmp_path), cwd=tmp_path).returncode == 0


@pytest.mark.prefect
def test_prune_keeps_files_the_bundle_does_not_hold(prefect_server, tmp_path):
    out = run_flow(write_job(tmp_path, STRICT.format(name="edited-after")), tmp_path)
    paths = JobPaths(tmp_path, out["job_id"])
    summary = paths.iteration_dir(1) / "summary.md"
    summary.write_text(summary.read_text() + "edited after the bundle was built\n")
    (row,) = prune(tmp_path, "--older-than", "0")["jobs"]
    assert row["iterations"] == [] and "not in the evidence bundle" in row["notes"][0], row
    assert summary.is_file() and pruned_events(paths) == []


def _journaled(tmp_path: Path, name: str):
    spec = write_job(tmp_path, HEADER.format(name=name) + "stages: [{id: a, run: [python, -c, 'pass']}]\n", name=f"{name}.yaml")
    loaded = load_spec(spec)
    record = register(loaded, tmp_path)
    paths = JobPaths(tmp_path, loaded.job_id)
    (paths.iteration_dir(1)).mkdir(parents=True)
    (paths.iteration_dir(1) / "summary.md").write_text("kept\n")
    return record, paths


def test_prune_never_touches_an_active_job(tmp_path):
    running, running_paths = _journaled(tmp_path, "running")
    running.journal.append(
        "run_started", {"run_id": "r", "resumed": False, "pid": 999_999_999, "host": "elsewhere"}, job_id=running.job_id
    )
    waiting, waiting_paths = _journaled(tmp_path, "waiting")
    waiting.journal.append("run_started", {"run_id": "r", "resumed": False}, job_id=waiting.job_id)
    waiting.journal.append("approval_requested", {"step": "release", "iteration": 1}, job_id=waiting.job_id)
    approved, approved_paths = _journaled(tmp_path, "approved")
    approved.journal.append("run_started", {"run_id": "r", "resumed": False}, job_id=approved.job_id)
    approved.journal.append("approval_requested", {"step": "release", "iteration": 1}, job_id=approved.job_id)
    approved.journal.append("approved", {"step": "release", "iteration": 1, "approver": "a"}, job_id=approved.job_id)

    rows = {r["name"]: r for r in prune(tmp_path, "--older-than", "0", "--keep-last", "0")["jobs"]}
    assert rows["running"]["skipped"] == "a run is active, or crashed (resume or stop it first)"
    assert rows["waiting"]["skipped"] == "it waits for an approval"
    assert rows["approved"]["skipped"] == "it was approved and goes on"
    for paths in (running_paths, waiting_paths, approved_paths):
        assert (paths.iteration_dir(1) / "summary.md").read_text() == "kept\n"
        assert pruned_events(paths) == []

    bad = longrun_cli("prune", "--older-than", "soon", "--root", str(tmp_path), cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("usage_error") and "Traceback" not in bad.stderr
    missing = longrun_cli("prune", "no-such-job", "--root", str(tmp_path), cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.startswith("job_not_found")


@pytest.mark.prefect
def test_prune_removes_a_stopped_job_s_worktree_but_keeps_its_branch_and_checkpoints(prefect_server, tmp_path):
    clean = run_flow(write_job(tmp_path, WT_STOPPED.format(name="wt-clean"), name="clean.yaml"), tmp_path)
    assert clean["status"] == "STOPPED"
    wt = tmp_path / ".maestro" / "worktrees" / clean["job_id"]
    assert wt.is_dir()

    (row,) = [r for r in prune(tmp_path, "--older-than", "0")["jobs"] if r["job_id"] == clean["job_id"]]
    assert row["worktree"] == str(wt) and row["iterations"] == []
    assert row["notes"] == ["checkpoints kept: a STOPPED job can still be resumed"]
    assert not wt.exists()
    branches = subprocess.run(
        ["git", "-C", str(tmp_path / "ws"), "branch", "--list", f"longrun/{clean['job_id']}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"longrun/{clean['job_id']}" in branches  # committed work stays reachable; resume checks it out again
    assert JobPaths(tmp_path, clean["job_id"]).iteration_dir(1).is_dir()
    (event,) = pruned_events(JobPaths(tmp_path, clean["job_id"]))
    assert (event.payload.worktree, event.payload.iterations) == (str(wt), ())


@pytest.mark.prefect
def test_prune_keeps_a_worktree_with_uncommitted_changes(prefect_server, tmp_path):
    out = run_flow(write_job(tmp_path, WT_STOPPED.format(name="wt-dirty")), tmp_path)
    wt = tmp_path / ".maestro" / "worktrees" / out["job_id"]
    (wt / "notes.txt").write_text("someone's work in progress\n")
    (row,) = prune(tmp_path, "--older-than", "0")["jobs"]
    assert row["worktree"] is None and any("has uncommitted changes" in n for n in row["notes"]), row
    assert (wt / "notes.txt").read_text() == "someone's work in progress\n"
