"""Pure core pieces: stop policies, stage order, checkpoint records and content."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from longrun.errors import LongrunError, PathEscape
from longrun.execution.checkpoint import (
    CheckpointStore,
    IterationCheckpoint,
    StageResult,
    decode_record,
    encode_record,
    fingerprint,
    merge_test_reports,
    plan_diff,
)
from longrun.governance.stop import StopInput, max_iterations, max_wall_time, no_progress, policy_from_spec, stop_file
from longrun.journal.state import RunState
from longrun.spec import parse_spec_text
from longrun.spec.compile import compile_spec, stage_order

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)

SPEC = """
name: order
goal: g
allowed_tools: [python]
model_policy: {default: cheap, execute: strong}
stages:
  - {id: verify, run: [python], depends_on: [execute]}
  - {id: plan, run: [python]}
  - {id: execute, run: [python], depends_on: [plan], timeout: 5}
  - {id: notes, run: [python]}
"""


def test_stage_order_is_topological_with_declaration_tiebreak():
    spec = parse_spec_text(SPEC)
    assert stage_order(spec) == ["plan", "execute", "verify", "notes"]
    plan = compile_spec(spec)
    by_id = {s.id: s for s in plan.stages}
    assert by_id["execute"].model == "strong" and by_id["plan"].model == "cheap"
    assert by_id["verify"].phase == "verify" and by_id["notes"].phase is None
    assert by_id["execute"].timeout == 5 and by_id["plan"].timeout == 600


def test_stop_policies():
    s = RunState(
        status="RUNNING", iterations_finished=3, open_iteration=None, last_event_ts=NOW - timedelta(seconds=5), active_seconds=10
    )
    assert max_iterations(3)(StopInput(s, NOW)).reason == "max_iterations"
    assert max_iterations(4)(StopInput(s, NOW)) is None
    # Never mid-iteration: the open iteration finishes first.
    assert max_iterations(3)(StopInput(replace(s, open_iteration=4), NOW)) is None
    d = max_wall_time(15)(StopInput(s, NOW))
    assert d.reason == "max_wall_time" and d.detail["elapsed_s"] == 15.0
    assert max_wall_time(15.5)(StopInput(s, NOW)) is None
    stuck = replace(s, no_progress_streak=2, fingerprints=("a", "a", "a"))
    assert no_progress(2)(StopInput(stuck, NOW)).detail == {"limit": 2, "streak": 2, "fingerprint": "a"}
    assert no_progress(3)(StopInput(stuck, NOW)) is None
    present = {Path("/x/STOP")}
    sf = stop_file((Path("/x/STOP"),), exists=lambda p: p in present)
    assert sf(StopInput(s, NOW)).detail == {"path": "/x/STOP"}
    # Composition: the first condition that fires wins.
    combined = sf | max_iterations(1)
    assert combined(StopInput(s, NOW)).reason == "stop_file"
    present.clear()
    assert combined(StopInput(s, NOW)).reason == "max_iterations"


def test_policy_from_spec_puts_the_stop_file_first(tmp_path):
    spec = parse_spec_text(SPEC + "stop_conditions: {max_iterations: 1, no_progress_iterations: 1}\n")
    (tmp_path / "STOP").touch()
    policy = policy_from_spec(spec.stop_conditions, (tmp_path / "STOP",))
    s = RunState(iterations_finished=5, no_progress_streak=5, fingerprints=("f",))
    assert policy(StopInput(s, NOW)).reason == "stop_file"


def _stage(**kw) -> StageResult:
    base = dict(
        job_id="0123456789ab",
        iteration=1,
        stage="a",
        phase=None,
        model="m",
        argv=["python"],
        exit_code=0,
        timed_out=False,
        duration_s=1.0,
        attempts=1,
    )
    return StageResult(**{**base, **kw})


def test_records_round_trip_as_readable_json():
    rec = _stage()
    blob = encode_record(rec)
    doc = json.loads(blob)
    assert doc["kind"] == "stage" and doc["record_version"] == 1 and doc["argv"] == ["python"]
    assert decode_record(blob) == rec
    err = decode_record(encode_record(RuntimeError("boom")))
    assert isinstance(err, LongrunError) and err.message == "boom"
    with pytest.raises(LongrunError, match="record version"):
        decode_record(json.dumps({"record_version": 99, "kind": "stage"}).encode())
    with pytest.raises(TypeError):
        encode_record({"not": "a record"})


def test_checkpoint_store_writes_plain_files_and_refuses_escapes(tmp_path):
    store = CheckpointStore(tmp_path)
    ck = IterationCheckpoint(
        job_id="0123456789ab", iteration=1, gates_passed=False, fingerprint="f", files={"summary.md": "# hi\n", "patch.diff": ""}
    )
    store.write("0123456789ab/1/checkpoint.json", encode_record(ck))
    assert (tmp_path / "0123456789ab/1/summary.md").read_text() == "# hi\n"
    assert (tmp_path / "0123456789ab/1/patch.diff").read_text() == ""
    assert decode_record(store.read("0123456789ab/1/checkpoint.json")) == ck
    with pytest.raises(PathEscape):
        store.write("../outside.json", encode_record(_stage()))
    bad = ck.model_copy(update={"files": {"../evil": "x"}})
    with pytest.raises(PathEscape):
        store.write("0123456789ab/2/checkpoint.json", encode_record(bad))
    assert not (tmp_path.parent / "evil").exists()


def test_plan_diff_fingerprint_and_test_report_merge():
    first = plan_diff(None, "a\nb\n", plan_file="PLAN.md", iteration=1)
    assert "--- /dev/null" in first and "+a" in first
    second = plan_diff("a\nb\n", "a\nc\n", plan_file="PLAN.md", iteration=2)
    assert "-b" in second and "+c" in second and "PLAN.md (iteration 1)" in second
    assert "did not change" in plan_diff("a\n", "a\n", plan_file="PLAN.md", iteration=3)
    assert "did not write" in plan_diff("a\n", None, plan_file="PLAN.md", iteration=3)

    assert fingerprint("p", ["b", "a"]) == fingerprint("p", ["a", "b"]) != fingerprint("p", ["a"])
    assert fingerprint("p", []) != fingerprint("q", [])

    merged = merge_test_reports(
        {
            "unit": {"tests": 3, "passed": 2, "failed": 1, "errors": 0, "skipped": 0, "failing": ["t::x"]},
            "e2e": {"tests": 2, "passed": 1, "failed": 0, "errors": 0, "skipped": 1, "failing": []},
        }
    )
    assert (merged["tests"], merged["passed"], merged["failing"]) == (5, 3, ["t::x"])
    assert merged["pass_rate"] == 0.75
    assert merge_test_reports({})["note"] == "this job has no test_pass gate"
