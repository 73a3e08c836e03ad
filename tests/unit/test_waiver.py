"""Strict mode and governed waivers (SPEC G2), on real job directories."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta

import pytest

from longrun.errors import LongrunError
from longrun.execution.checkpoint import CHECKPOINT_FILES
from longrun.governance.waiver import WAIVER_PATH, check_waiver, load_waiver, strict_check
from longrun.journal.local import Journal
from longrun.storage.paths import JobPaths

JOB = "5e1ec7000001"
NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
OK = lambda: []  # noqa: E731 - the evidence hook of a verified bundle


def write_waiver(root, doc):
    path = root / WAIVER_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


VALID = {"reason": "release excludes long-run jobs", "expires_at": "2026-01-31T00:00:00Z", "approved_by": "release-captain"}


# -- load_waiver / check_waiver ----------------------------------------------------


def test_no_waiver_is_none(tmp_path):
    assert load_waiver(tmp_path) is None


def test_valid_waiver(tmp_path):
    path = write_waiver(tmp_path, VALID)
    w = load_waiver(tmp_path)
    assert (w.reason, w.approved_by, w.path) == (VALID["reason"], "release-captain", path.resolve())
    assert w.expires_at == datetime(2026, 1, 31, tzinfo=UTC)
    assert check_waiver(w, NOW) is w
    with pytest.raises(LongrunError) as exc:
        check_waiver(w, datetime(2026, 1, 31, tzinfo=UTC))  # expiry instant itself: expired
    assert exc.value.code == "waiver_expired" and "release-captain" in exc.value.message


def test_offsets_are_time_zones(tmp_path):
    write_waiver(tmp_path, {**VALID, "expires_at": "2026-01-31T01:00:00+01:00"})
    assert load_waiver(tmp_path).expires_at == datetime(2026, 1, 31, tzinfo=UTC)


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ("{not json", "not a readable JSON document"),
        ("[1, 2]", "expected a JSON object, got list"),
        ({**VALID, "reason": "   "}, "reason: must not be empty"),
        ({k: v for k, v in VALID.items() if k != "approved_by"}, "approved_by: field required"),
        ({**VALID, "approved_by": 7}, "approved_by: must be a string, got int"),
        ({**VALID, "expires_at": "2026-01-31T00:00:00"}, "has no time zone"),
        ({**VALID, "expires_at": "2026-01-31"}, "has no time zone"),
        ({**VALID, "expires_at": "end of january"}, "is not an ISO 8601 date-time"),
        ({**VALID, "scope": "all"}, "unknown field(s): scope"),
    ],
)
def test_malformed_waivers_say_what_is_wrong(tmp_path, doc, says):
    write_waiver(tmp_path, doc)
    with pytest.raises(LongrunError) as exc:
        load_waiver(tmp_path)
    assert exc.value.code == "waiver_invalid" and says in exc.value.message


def test_every_problem_is_listed_at_once(tmp_path):
    write_waiver(tmp_path, {"reason": "", "expires_at": "soon"})
    with pytest.raises(LongrunError) as exc:
        load_waiver(tmp_path)
    msg = exc.value.message
    assert "reason: must not be empty" in msg and "expires_at: 'soon'" in msg and "approved_by: field required" in msg


def test_waiver_symlinked_outside_the_root_is_invalid(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside.json"
    outside.write_text(json.dumps(VALID))
    (root / ".maestro" / "waivers").mkdir(parents=True)
    os.symlink(outside, root / WAIVER_PATH)
    with pytest.raises(LongrunError) as exc:
        load_waiver(root)
    assert exc.value.code == "waiver_invalid" and "outside" in exc.value.message


# -- strict_check ------------------------------------------------------------------


def completed_job(root, iterations=2, *, complete=True, last_gate_passed=True):
    """A real job directory: checkpoint files on disk, their digests journaled."""
    paths = JobPaths(root, JOB)
    t = iter(NOW - timedelta(hours=1) + timedelta(seconds=i) for i in range(1000))
    journal = Journal(paths.events_file, clock=lambda: next(t))
    emit = lambda type_, payload: journal.append(type_, payload, job_id=JOB)  # noqa: E731
    emit("job_registered", {"job_id": JOB, "name": "strict", "spec_sha256": "0" * 64, "root": str(root)})
    emit("run_started", {"run_id": "run-1"})
    for it in range(1, iterations + 1):
        emit("iteration_started", {"iteration": it})
        last = it == iterations
        emit(
            "gate_evaluated",
            {"iteration": it, "gate": "tests", "kind": "test_pass", "required": True, "passed": last and last_gate_passed},
        )
        emit("gate_evaluated", {"iteration": it, "gate": "docs", "kind": "command_pass", "required": False, "passed": False})
        d = paths.iteration_dir(it)
        d.mkdir(parents=True)
        digests = {}
        for name in CHECKPOINT_FILES:
            data = f"{name} of iteration {it}\n".encode()
            (d / name).write_bytes(data)
            digests[name] = hashlib.sha256(data).hexdigest()
        emit("checkpoint_written", {"iteration": it, "dir": str(d), "files": digests})
        emit("iteration_finished", {"iteration": it, "gates_passed": last and last_gate_passed, "fingerprint": f"fp{it}"})
    if complete:
        emit("run_completed", {"iteration": iterations, "reason": "all required gates passed"})
    return paths, journal


def test_strict_contract_holds(tmp_path):
    paths, journal = completed_job(tmp_path)
    report = strict_check(tmp_path, JOB, journal.state(), NOW, bundle_check=OK, required_gates=["tests"])
    assert report.ok and report.problems == [] and report.waiver is None and not report.waived


def test_tampered_and_missing_checkpoint_files_are_problems(tmp_path):
    paths, journal = completed_job(tmp_path)
    (paths.iteration_dir(1) / "patch.diff").write_text("edited afterwards\n")
    (paths.iteration_dir(2) / "command.log").unlink()
    report = strict_check(tmp_path, JOB, journal.state(), NOW, bundle_check=OK)
    assert not report.ok
    assert len(report.problems) == 2
    assert report.problems[0].startswith("iteration 1: patch.diff sha256 ") and "differs from the journaled" in report.problems[0]
    assert report.problems[1].startswith("iteration 2: command.log is missing")


def test_unfinished_job_failed_gate_unjournaled_file_and_bundle_problems(tmp_path):
    paths, journal = completed_job(tmp_path, complete=False, last_gate_passed=False)
    (paths.iteration_dir(2) / "extra.txt").write_text("not journaled, not checked\n")
    report = strict_check(
        tmp_path,
        JOB,
        journal.state(),
        NOW,
        bundle_check=lambda: ["manifest sha256 mismatch"],
        required_gates=["tests", "build"],
    )
    assert not report.ok
    assert report.problems == [
        "job status is RUNNING, not COMPLETED",
        "iteration 2: required gate 'tests' did not pass",
        "iteration 2: required gate 'build' was not evaluated",
        "evidence: manifest sha256 mismatch",
    ]


def test_skipped_required_gate_is_not_passed_in_strict_mode(tmp_path):
    paths, journal = completed_job(tmp_path, complete=False, last_gate_passed=False)
    journal.append("gate_skipped", {"iteration": 2, "gate": "tests", "reason": "policy"}, job_id=JOB)
    journal.append("run_completed", {"iteration": 2, "reason": "all required gates passed (1 skipped by policy)"}, job_id=JOB)
    report = strict_check(tmp_path, JOB, journal.state(), NOW, bundle_check=OK)
    assert report.problems == ["iteration 2: required gate 'tests' was skipped by policy, not passed"]


def test_no_bundle_check_fails_closed(tmp_path):
    paths, journal = completed_job(tmp_path)
    report = strict_check(tmp_path, JOB, journal.state(), NOW)
    assert not report.ok and report.problems == ["evidence bundle not verified (no bundle check)"]


def test_missing_checkpoint_event(tmp_path):
    paths, journal = completed_job(tmp_path, iterations=1, complete=False)
    journal.append("iteration_started", {"iteration": 2}, job_id=JOB)
    report = strict_check(tmp_path, JOB, journal.state(), NOW, bundle_check=OK)
    assert "iteration 2: no checkpoint_written event" in report.problems


def test_valid_waiver_makes_a_failed_contract_ok(tmp_path):
    paths, journal = completed_job(tmp_path, complete=False)
    write_waiver(tmp_path, VALID)
    report = strict_check(tmp_path, JOB, journal.state(), NOW, bundle_check=OK)
    assert report.ok and report.waived and report.waiver.approved_by == "release-captain"
    assert report.problems == ["job status is RUNNING, not COMPLETED"]  # still listed: what was waived
    assert report.to_dict()["waiver"]["reason"] == VALID["reason"]


def test_expired_waiver_is_reported_and_not_ok(tmp_path):
    paths, journal = completed_job(tmp_path, complete=False)
    write_waiver(tmp_path, {**VALID, "expires_at": "2026-01-01T00:00:00Z"})
    report = strict_check(tmp_path, JOB, journal.state(), NOW, bundle_check=OK)
    assert not report.ok and report.waiver is None
    assert report.problems[-1].startswith("waiver_expired: ")


def test_malformed_waiver_is_reported_and_not_ok(tmp_path):
    paths, journal = completed_job(tmp_path, complete=False)
    write_waiver(tmp_path, {**VALID, "approved_by": ""})
    report = strict_check(tmp_path, JOB, journal.state(), NOW, bundle_check=OK)
    assert not report.ok and report.problems[-1].startswith("waiver_invalid: ")
    assert "approved_by: must not be empty" in report.problems[-1]
