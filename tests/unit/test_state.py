"""RunState as a pure fold, pinned by golden journals in tests/fixtures/journals.

The expected numbers below were worked out by hand from the fixture
timestamps and usages (see the comments), not copied from the code's output.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydantic
import pytest

from longrun.errors import JournalCorrupt
from longrun.journal.events import build_event, parse_event
from longrun.journal.fold import apply, replay
from longrun.journal.local import Journal
from longrun.journal.state import RunState, Status

FIXTURES = Path(__file__).parents[1] / "fixtures" / "journals"


def golden(name: str):
    return Journal(FIXTURES / name).read()


# -- golden journals ---------------------------------------------------------------


def test_golden_completed_two_iterations():
    s = replay(golden("completed_two_iterations.jsonl"))
    assert s.job_id == "a1b2c3d4e5f6" and s.name == "fix-tests"
    assert s.status == "COMPLETED" and s.is_terminal and s.stop_reason is None
    assert (s.iteration, s.iterations_finished, s.open_iteration) == (2, 2, None)
    assert s.usd_total == 2.0  # 0.25 + 1.0 + 0.25 + 0.5
    assert s.tokens_total == 8500  # 1000 + 4000 + 1000 + 2500
    assert s.fingerprints == ("fp-1", "fp-2")
    assert s.no_progress_streak == 0
    assert s.active_seconds == 190.0  # 10:00:05 → 10:03:15
    assert s.runs == ("run-1",) and s.flow_run_ids == ("fr-1",)
    assert s.stage_attempts == {(1, "plan"): 1, (1, "execute"): 2, (2, "plan"): 1, (2, "execute"): 1}
    assert s.stage_results[1]["execute"].attempts == 2
    # fields added later (input_tokens …) are None in a journal written before them
    assert s.stage_results[1]["execute"].usage.model_dump(exclude_none=True) == {"usd": 1.0, "tokens": 4000, "model": "big"}
    assert s.gate_results[1]["tests"].passed is False
    assert s.gate_results[2]["tests"].evidence == {"junit": {"tests": 10, "failed": 0}}
    assert set(s.checkpoints) == {1, 2} and set(s.checkpoints[2]) == {"diff.patch", "summary.json"}
    assert [(u.usd, u.tokens) for u in s.usage_log] == [(0.25, 1000), (1.0, 4000), (0.25, 1000), (0.5, 2500)]
    assert s.usage_log[0].ts == datetime(2025, 3, 1, 10, 0, 36, tzinfo=UTC)
    assert (s.last_seq, s.last_event_type) == (20, "run_completed")
    assert s.last_event_ts == datetime(2025, 3, 1, 10, 3, 15, tzinfo=UTC)


def test_golden_stopped_no_progress():
    s = replay(golden("stopped_no_progress.jsonl"))
    assert s.status == "STOPPED" and s.stop_reason == "no_progress"
    assert s.fingerprints == ("fp-a", "fp-b", "fp-b", "fp-b")
    assert s.no_progress_streak == 2  # a→b resets, b→b, b→b
    assert (s.iteration, s.iterations_finished) == (4, 4)
    assert s.usd_total == 0.5 and s.tokens_total == 400  # 4 × (0.125, 100)
    assert s.active_seconds == 50.0  # 09:00:00 → 09:00:50
    assert s.flow_run_ids == ()


def test_golden_stop_requested():
    s = replay(golden("stop_requested.jsonl"))
    assert s.status == "STOPPED" and s.stop_reason == "stop_file"
    assert s.stop_requested is True
    assert s.open_iteration == 1 and s.iterations_finished == 0
    assert s.stage_attempts == {(1, "search"): 1}
    assert not s.stage_done(1, "search")
    assert s.active_seconds == 30.0  # 11:00:01 → 11:00:31


def test_golden_torn_tail_replays_complete_lines_only():
    s = replay(golden("torn_tail.jsonl"))
    assert s.status == "RUNNING" and not s.is_terminal
    assert s.last_seq == 5 and s.last_event_type == "stage_finished"
    assert s.open_iteration == 1 and s.iterations_finished == 0
    assert (s.usd_total, s.tokens_total) == (0.5, 700)
    assert s.active_seconds == 11.0  # 12:00:01 → 12:00:12, run still open


def test_golden_resumed_three_runs():
    events = golden("resumed_three_runs.jsonl")
    s = replay(events)
    assert s.status == "COMPLETED" and s.stop_reason is None
    assert s.runs == ("run-1", "run-2", "run-3")
    assert s.flow_run_ids == ("fr-1", "fr-2")
    # run-1 08:00:10→08:00:41 (killed) = 31; run-2 09:00:00→09:01:09 = 69; run-3 10:00:00→10:00:50 = 50
    assert s.active_seconds == 150.0
    assert s.usd_total == 2.25 and s.tokens_total == 2250
    assert s.stage_attempts[(1, "execute")] == 2  # one per run
    assert s.stage_done(1, "execute") and s.stage_done(2, "plan") and not s.stage_done(2, "execute")
    assert s.no_progress_streak == 1  # fp-1, fp-1
    assert (s.iteration, s.iterations_finished, s.open_iteration) == (2, 2, None)


@pytest.mark.parametrize(
    ("upto", "status", "stop_reason", "active", "runs", "open_iteration"),
    [
        (1, "PENDING", None, 0.0, 0, None),
        (6, "RUNNING", None, 31.0, 1, 1),  # killed mid-stage
        (7, "RUNNING", None, 31.0, 2, 1),  # resumed: new segment starts, the gap is not counted
        (11, "FAILED", "stage_failed", 100.0, 2, None),
        (12, "RUNNING", None, 100.0, 3, None),  # resume after a terminal status
    ],
)
def test_resumed_prefixes(upto, status, stop_reason, active, runs, open_iteration):
    s = replay(golden("resumed_three_runs.jsonl")[:upto])
    assert s.status == status and s.stop_reason == stop_reason
    assert s.active_seconds == active
    assert len(s.runs) == runs and s.open_iteration == open_iteration


# -- purity ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.jsonl")))
def test_replay_is_pure_and_equals_stepwise_apply(name):
    events = golden(name)
    first, second = replay(events), replay(list(events))
    assert first == second
    stepwise = RunState()
    for event in events:
        before = copy.deepcopy(stepwise)
        after = apply(stepwise, event)
        assert stepwise == before  # apply never changes its input
        stepwise = after
    assert stepwise == first


def test_state_is_frozen_all_the_way_down():
    s = replay(golden("completed_two_iterations.jsonl"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.status = "RUNNING"  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.stage_results[1]["plan"] = {}  # type: ignore[index]
    with pytest.raises(TypeError):
        s.gate_results[1]["tests"].evidence["junit"]["failed"] = 0  # type: ignore[index]
    with pytest.raises(pydantic.ValidationError):
        s.gate_results[1]["tests"].passed = True  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.checkpoints.pop(1)  # type: ignore[attr-defined]


def test_state_pickles_and_serialises():
    s = replay(golden("resumed_three_runs.jsonl"))
    assert pickle.loads(pickle.dumps(s)) == s
    assert json.loads(s.stage_results[1]["plan"].model_dump_json())["usage"]["tokens"] == 500


# -- transitions -------------------------------------------------------------------

JOB = "0123456789ab"
T0 = datetime(2025, 1, 1, tzinfo=UTC)


class _Seq:
    """Builds consecutive events one second apart."""

    def __init__(self) -> None:
        self.events = []

    def __call__(self, type_, payload, at=None):
        seq = len(self.events) + 1
        ts = T0 + timedelta(seconds=seq if at is None else at)
        self.events.append(build_event(type_, payload, seq=seq, job_id=JOB, ts=ts))
        return self


def test_resume_after_stop_clears_stop_fields():
    ev = _Seq()
    ev("run_started", {"run_id": "r1"})("stop_requested", {"by": "cli", "reason": "x"})
    ev("run_stopped", {"reason": "stop_file"})
    stopped = replay(ev.events)
    assert (stopped.status, stopped.stop_reason, stopped.stop_requested) == ("STOPPED", "stop_file", True)
    ev("run_started", {"run_id": "r2", "resumed": True})
    resumed = replay(ev.events)
    assert (resumed.status, resumed.stop_reason, resumed.stop_requested) == ("RUNNING", None, False)
    assert resumed.status is Status.RUNNING


def test_events_after_terminal_do_not_add_wall_time():
    ev = _Seq()
    ev("run_started", {"run_id": "r1"}, at=0)("run_completed", {"iteration": 0, "reason": "done"}, at=10)
    ev("stop_requested", {"by": "cli", "reason": "late"}, at=500)
    s = replay(ev.events)
    assert s.active_seconds == 10.0 and s.status == "COMPLETED"


def test_streak_resets_on_change():
    ev = _Seq()
    for i, fp in enumerate(["a", "a", "a", "b", "b"], 1):
        ev("iteration_finished", {"iteration": i, "gates_passed": False, "fingerprint": fp})
    streaks = [replay(ev.events[:n]).no_progress_streak for n in range(1, 6)]
    assert streaks == [0, 1, 2, 0, 1]


def test_gate_done_and_extra_payload_fields_survive_on_read_but_are_refused_on_write():
    payload = {
        "iteration": 1,
        "gate": "lint",
        "kind": "command",
        "required": False,
        "passed": True,
        "evidence": {"lines": [1, 2]},
        "added_in_v1_1": "x",
    }
    with pytest.raises(ValueError, match="undeclared payload field.*added_in_v1_1"):
        build_event("gate_evaluated", payload, seq=1, job_id=JOB, ts=T0)
    # A line from a newer writer of the same version still reads.
    raw = {"seq": 1, "type": "gate_evaluated", "version": "job_event_v1", "ts": "2025-01-01T00:00:00.000000Z", "job_id": JOB}
    s = replay([parse_event({**raw, "payload": payload})])
    assert s.gate_done(1, "lint") and not s.gate_done(1, "tests") and not s.gate_done(2, "lint")
    assert s.gate_results[1]["lint"].model_extra["added_in_v1_1"] == "x"
    assert s.gate_results[1]["lint"].evidence["lines"] == (1, 2)  # lists freeze to tuples


def test_apply_rejects_out_of_order_and_foreign_events():
    ev = _Seq()
    ev("run_started", {"run_id": "r1"})("stop_requested", {"by": "a", "reason": "b"})
    s = replay(ev.events)
    with pytest.raises(JournalCorrupt, match="seq 2 does not follow seq 2"):
        apply(s, ev.events[1])
    foreign = build_event("run_failed", {"code": "x", "message": "y"}, seq=3, job_id="ffffffffffff", ts=T0)
    with pytest.raises(JournalCorrupt, match="ffffffffffff"):
        apply(s, foreign)


def test_empty_replay():
    s = replay([])
    assert s == RunState()
    assert (s.status, s.iteration, s.active_seconds, s.last_seq) == ("PENDING", 0, 0.0, 0)
    assert not s.is_terminal and not s.stage_done(1, "x")


def test_every_event_type_has_a_fold_handler():
    from longrun.journal.events import EVENT_TYPES
    from longrun.journal.fold import _HANDLERS

    assert set(_HANDLERS) == set(EVENT_TYPES)
    assert all(callable(h) for h in _HANDLERS.values())


def test_wall_time_is_the_sum_of_segments_not_the_downtime_after_a_crash():
    """A SIGKILLed engine writes no end event: its segment closes at its last event, not at the next start."""
    t0 = datetime(2026, 12, 3, 8, 0, 0, tzinfo=UTC)
    events = []

    def add(type_: str, payload: dict, at: timedelta) -> None:
        events.append(build_event(type_, payload, seq=len(events) + 1, job_id="a1b2c3d4e5f6", ts=t0 + at))

    add("job_registered", {"job_id": "a1b2c3d4e5f6", "name": "w", "spec_sha256": "0" * 64, "root": "/r"}, timedelta(0))
    add("run_started", {"run_id": "r1"}, timedelta(seconds=1))
    add("iteration_started", {"iteration": 1}, timedelta(seconds=2))
    add("stage_started", {"iteration": 1, "stage": "s", "model": "m"}, timedelta(seconds=11))  # then SIGKILL
    # The next morning: resumed 14 hours later, ran 5 seconds.
    add("run_started", {"run_id": "r2", "resumed": True}, timedelta(hours=14))
    add("stage_started", {"iteration": 1, "stage": "s", "model": "m", "attempt": 2}, timedelta(hours=14, seconds=5))
    s = replay(events)
    assert s.active_seconds == 15.0  # 08:00:01 → 08:00:11, then 22:00:00 → 22:00:05; not 14 hours
