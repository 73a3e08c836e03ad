"""Rate limits and the normalized budget caps, driven through the engine loop on fakes (no Prefect, no subprocess).

A stage attempt whose output reported a rate limit (``StageResult.rate_limit``)
is journaled as ``rate_limited``; the loop waits on the fake clock until the
reset, counts neither an iteration nor a retry, and runs the stage again.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from engine_fakes import FakeClock, Ran, world


def _limited_once(stage: str, it: int, attempt: int) -> Ran:
    if stage == "work" and it == 1 and attempt == 1:
        return Ran(usd=0.002, tokens=30, rate_limit_in=90, edits=False)
    return Ran(usd=0.01, tokens=100)


def test_a_rate_limited_stage_waits_for_the_reset_and_goes_on_without_using_an_iteration(tmp_path):
    # max_iterations 1: had the rate-limited attempt used up the iteration, the job could not complete.
    w = world(tmp_path, "stop_conditions: {max_iterations: 1}\n", stages=_limited_once)
    t0 = w.clock.now()
    out = w.run()
    assert (out["status"], out["iterations"]) == ("COMPLETED", 1)
    assert w.executor.executed() == [("stage", "plan", 1, 1), ("stage", "work", 1, 1), ("stage", "work", 1, 2)]
    (limited,) = [e.payload for e in w.journal.read() if e.type == "rate_limited"]
    assert (limited.iteration, limited.stage, limited.attempt) == (1, "work", 1)
    assert limited.until == t0 + timedelta(seconds=90) and limited.resets_at_reported
    assert limited.kind == "five_hour"
    assert sum(w.clock.slept) == pytest.approx(90)
    assert w.clock.slept and max(w.clock.slept) <= 1.0, "the wait checks the stop conditions every second"
    types = w.types()
    assert types.count("iteration_started") == 1
    assert types.index("rate_limited") < [i for i, t in enumerate(types) if t == "stage_started"][-1]
    st = w.state()
    assert st.stage_results[1]["work"].attempts == 2
    # The rate-limited attempt's spend counts once; it does not become the stage's estimate.
    assert st.usd_total == pytest.approx(0.022) and st.tokens_total == 230
    assert st.stage_max_spend["work"] == (0.01, 100)
    assert any("rate limited (five_hour); waiting until" in line for line in w.progress.lines)


RETRY_BASE = """
name: {name}
goal: make the gate pass
workspace: {{path: ws}}
allowed_tools: [python]
model_policy: {{default: m}}
stages:
  - {{id: work, run: [python, work.py], retry: {{max_retries: 1, when: [nonzero]}}}}
quality_gates:
  required:
    - {{id: tests, kind: command_pass, run: [python, -m, pytest]}}
"""


def test_a_rate_limited_attempt_uses_up_no_retry(tmp_path):
    script = {1: Ran(rate_limit_in=5, edits=False), 2: Ran(exit_code=1), 3: Ran()}
    w = world(tmp_path, base=RETRY_BASE, stages=lambda s, it, a: script[a])
    out = w.run()
    assert out["status"] == "COMPLETED"
    assert [c[3] for c in w.executor.executed()] == [1, 2, 3]
    assert w.state().stage_results[1]["work"].exit_code == 0


class StopDuringWait(FakeClock):
    """Touches the stop file on the third second of sleep."""

    def __init__(self, stop_file) -> None:
        super().__init__()
        self.stop_file = stop_file

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        if len(self.slept) == 3:
            self.stop_file.write_text("")


def test_the_rate_limit_wait_is_interruptible_by_the_stop_file(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    clock = StopDuringWait(tmp_path / ".maestro" / "STOP")
    w = world(tmp_path, stages=_limited_once, clock=clock)
    out = w.run()
    assert (out["status"], out["reason"]) == ("STOPPED", "stop_file")
    assert len(clock.slept) == 3
    assert w.executor.executed()[-1] == ("stage", "work", 1, 1)
    types = w.types()
    assert types.index("rate_limited") < types.index("run_stopped")
    assert "stage_finished" not in types[types.index("rate_limited") :], "the stage did not finish"


def test_the_rate_limit_wait_is_bounded_by_max_wall_time(tmp_path):
    def stages(s: str, it: int, a: int) -> Ran:
        return Ran(rate_limit_in=7200, edits=False) if s == "work" and a == 1 else Ran()

    w = world(tmp_path, "stop_conditions: {max_wall_time: 600}\n", stages=stages)
    out = w.run()
    assert (out["status"], out["reason"]) == ("STOPPED", "max_wall_time")
    assert 600 <= sum(w.clock.slept) <= 602, "it stopped at the wall-time limit, not at the reset two hours away"


def test_a_rate_limit_without_a_reset_time_waits_the_default(tmp_path):
    def stages(s: str, it: int, a: int) -> Ran:
        return Ran(rate_limit_in=float("nan"), edits=False) if s == "work" and a == 1 else Ran()

    w = world(tmp_path, stages=stages)
    assert w.run()["status"] == "COMPLETED"
    (limited,) = [e.payload for e in w.journal.read() if e.type == "rate_limited"]
    assert limited.resets_at_reported is False
    assert sum(w.clock.slept) == pytest.approx(300)


class Interrupted(Exception):
    pass


class CutDuringWait(FakeClock):
    def sleep(self, seconds: float) -> None:
        if len(self.slept) == 30:
            raise Interrupted("the engine died during the wait")
        super().sleep(seconds)


def test_a_run_cut_during_the_wait_resumes_the_wait_without_a_second_rate_limited(tmp_path):
    clock = CutDuringWait()
    w = world(tmp_path, stages=_limited_once, clock=clock)
    with pytest.raises(Interrupted):
        w.run()
    assert w.types().count("rate_limited") == 1
    w.clock = FakeClock(clock.now())  # a new engine, 30 s later
    out = w.run()
    assert out["status"] == "COMPLETED"
    assert w.types().count("rate_limited") == 1, "the journaled wait is resumed, not journaled again"
    assert sum(w.clock.slept) == pytest.approx(60), "only what was left of the 90 s"
    assert w.executor.executed() == [("stage", "work", 1, 2)], "the rate-limited attempt was not run again"


# -------------------------------------------------------------- budget caps of the normalized budget


@pytest.mark.parametrize(
    ("cap", "reason"),
    [("input_tokens: 2500", "input_tokens"), ("output_tokens: 250", "output_tokens"), ("usd: 0.025", "usd")],
)
def test_input_output_and_usd_caps_stop_before_the_stage_predicted_to_cross(tmp_path, cap, reason):
    w = world(
        tmp_path,
        f"budgets: {{{cap}}}\n",
        gates=lambda g, it: False,
        stages=lambda s, it, a: Ran(usd=0.01, tokens=1100, input_tokens=1000, output_tokens=100),
    )
    out = w.run()
    assert (out["status"], out["reason"]) == ("STOPPED_BUDGET", reason)
    # Two stages spent 2000 in / 200 out / 0.02 USD; the next, predicted from the stage's
    # largest run so far, would cross the cap.
    assert len(w.executor.executed()) == 2
    (stop,) = [e.payload for e in w.journal.read() if e.type == "stopped_budget"]
    assert stop.counters["input_tokens_total"] == 2000 and stop.counters["output_tokens_total"] == 200
    assert stop.counters["expected_input_tokens"] == 1000 and stop.counters["expected_output_tokens"] == 100


def test_a_rate_limited_attempts_spend_counts_toward_the_budget(tmp_path):
    def stages(s: str, it: int, a: int) -> Ran:
        if s == "work" and a == 1:
            return Ran(usd=0.5, tokens=10, rate_limit_in=5, edits=False)
        return Ran(usd=0.01, tokens=10)

    w = world(tmp_path, "budgets: {total_usd: 0.5}\n", stages=stages)
    out = w.run()
    assert (out["status"], out["reason"]) == ("STOPPED_BUDGET", "total_usd")
    assert w.state().usd_total == pytest.approx(0.51)
