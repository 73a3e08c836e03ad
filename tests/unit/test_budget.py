"""The budget governor (SPEC E4), over real journals with an injected clock.

The stopping points below are worked out by hand: each loop checks the
governor before every stage with that stage's largest spend so far, the way
the flow does, and journals the stage's spend as a ``stage_finished``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from longrun.governance.budget import (
    HOUR,
    BudgetGovernor,
    BudgetInput,
    expected_iteration_spend,
    expected_stage_spend,
    max_tokens,
    max_total_usd,
    max_usd_per_hour,
    usage,
    usd_in_window,
)
from longrun.journal.local import Journal
from longrun.journal.state import Status
from longrun.spec.models import Budgets

JOB = "b0d9e7000001"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Ledger:
    """A real journal driven by a fake clock (one second per event unless moved)."""

    def __init__(self, path):
        self.now = T0
        self.journal = Journal(path, clock=lambda: self.now)
        self.emit("job_registered", {"job_id": JOB, "name": "budgeted", "spec_sha256": "0" * 64, "root": "/r"})
        self.emit("run_started", {"run_id": "run-1"})
        self.iteration = 0

    def emit(self, type_, payload):
        self.now += timedelta(seconds=1)
        return self.journal.append(type_, payload, job_id=JOB)

    @property
    def state(self):
        return self.journal.state()

    def start_iteration(self):
        self.iteration += 1
        self.emit("iteration_started", {"iteration": self.iteration})

    def stage(self, name, usd, tokens=0):
        self.emit("stage_started", {"iteration": self.iteration, "stage": name, "model": "m"})
        self.emit(
            "stage_finished",
            {
                "iteration": self.iteration,
                "stage": name,
                "exit_code": 0,
                "duration_s": 1.0,
                "model": "m",
                "usage": {"usd": usd, "tokens": tokens},
            },
        )

    def finish_iteration(self):
        self.emit(
            "iteration_finished", {"iteration": self.iteration, "gates_passed": False, "fingerprint": f"fp{self.iteration}"}
        )


def run_until_refused(ledger, governor, stages, max_iterations=20):
    """Run iterations of ``stages`` ({name: (usd, tokens)}) until the governor refuses one.

    Returns (iteration, stage or None for the pre-iteration check, decision).
    """
    for _ in range(max_iterations):
        if (d := governor.check(ledger.state, ledger.now)) is not None:
            return ledger.iteration + 1, None, d
        ledger.start_iteration()
        for name, (usd, tokens) in stages.items():
            exp_usd, exp_tokens = expected_stage_spend(ledger.state, name)
            if (d := governor.check(ledger.state, ledger.now, exp_usd, exp_tokens)) is not None:
                return ledger.iteration, name, d
            ledger.stage(name, usd, tokens)
        ledger.finish_iteration()
    raise AssertionError("never refused")


# -- exact stopping points ---------------------------------------------------------


def test_total_usd_three_stages_of_030_against_100(tmp_path):
    """Iteration 1 spends 0.90 (first runs expect 0); iteration 2's plan would bring
    0.90 + 0.30 (its previous spend) = 1.20 > 1.00 → refused before it starts."""
    ledger = Ledger(tmp_path / "events.jsonl")
    gov = BudgetGovernor(Budgets(total_usd=1.00))
    it, stage, d = run_until_refused(ledger, gov, {"plan": (0.30, 100), "execute": (0.30, 100), "verify": (0.30, 100)})
    assert (it, stage) == (2, "plan")
    assert d.reason == "total_usd" and d.limit == 1.00 and d.action == "stop"
    assert d.counters == {
        "usd_total": 0.9,
        "tokens_total": 300,
        "usd_last_hour": 0.9,
        "expected_usd": 0.3,
        "expected_tokens": 100,
    }
    assert ledger.state.usd_total == pytest.approx(0.9)  # never over the limit
    assert d.stopped_budget_payload() == {"reason": "total_usd", "limit": 1.0, "counters": d.counters}


def test_total_usd_one_stage_of_030_per_iteration(tmp_path):
    """0.30 per iteration: 0.90 after three; the fourth would reach 1.20."""
    ledger = Ledger(tmp_path / "events.jsonl")
    it, stage, d = run_until_refused(ledger, BudgetGovernor(Budgets(total_usd=1.00)), {"execute": (0.30, 0)})
    assert (it, stage) == (4, "execute")
    assert d.counters["usd_total"] == 0.9 and d.counters["expected_usd"] == 0.3
    assert ledger.state.iterations_finished == 3


def test_landing_exactly_on_the_limit_then_reached_stops_with_expected_zero(tmp_path):
    """0.3 + 0.3 + 0.3 is 0.8999999999999999 in floats; the third stage may land on
    0.90 (not crossing), and then the limit is reached: the fourth iteration is
    refused by the pre-iteration check, where nothing is expected yet."""
    ledger = Ledger(tmp_path / "events.jsonl")
    it, stage, d = run_until_refused(ledger, BudgetGovernor(Budgets(total_usd=0.90)), {"execute": (0.30, 0)})
    assert (it, stage) == (4, None)
    assert d.reason == "total_usd" and d.counters["usd_total"] == 0.9 and d.counters["expected_usd"] == 0.0
    assert ledger.state.iterations_finished == 3


def test_overshoot_is_at_most_the_stage_that_got_dearer(tmp_path):
    """Costs 0.20, 0.20, then 0.70: before the third run it expects 0.20 (0.40 + 0.20 ≤ 1.00),
    spends 0.70 and ends at 1.10 — over by 0.10 < 0.70. After that the limit is reached
    and even a zero-expected check stops."""
    ledger = Ledger(tmp_path / "events.jsonl")
    gov = BudgetGovernor(Budgets(total_usd=1.00))
    for cost in (0.20, 0.20, 0.70):
        ledger.start_iteration()
        exp = expected_stage_spend(ledger.state, "execute")
        assert gov.check(ledger.state, ledger.now, *exp) is None
        ledger.stage("execute", cost)
        ledger.finish_iteration()
    assert ledger.state.usd_total == pytest.approx(1.10)
    d = gov.check(ledger.state, ledger.now)
    assert d.reason == "total_usd" and d.counters["usd_total"] == 1.1 and d.counters["expected_usd"] == 0.0


def test_tokens_limit(tmp_path):
    """300 tokens per stage, limit 1000: 900 after three; 900 + 300 > 1000."""
    ledger = Ledger(tmp_path / "events.jsonl")
    it, stage, d = run_until_refused(ledger, BudgetGovernor(Budgets(tokens=1000)), {"execute": (0.0, 300)})
    assert (it, stage, d.reason, d.limit) == (4, "execute", "tokens", 1000)
    assert d.counters["tokens_total"] == 900 and d.counters["expected_tokens"] == 300


def test_zero_limit_refuses_everything_and_no_limits_refuse_nothing(tmp_path):
    ledger = Ledger(tmp_path / "events.jsonl")
    assert BudgetGovernor(Budgets(total_usd=0)).check(ledger.state, ledger.now).reason == "total_usd"
    assert BudgetGovernor(Budgets(tokens=0)).check(ledger.state, ledger.now).reason == "tokens"
    ledger.start_iteration()
    ledger.stage("execute", 1000.0, 10**9)
    assert BudgetGovernor(Budgets()).check(ledger.state, ledger.now, 5.0, 5) is None


def test_total_is_checked_before_hourly_and_tokens(tmp_path):
    ledger = Ledger(tmp_path / "events.jsonl")
    ledger.start_iteration()
    ledger.stage("execute", 2.0, 2000)
    gov = BudgetGovernor(Budgets(total_usd=1.0, tokens=1000, per_hour_usd=1.0, on_hourly_limit="wait"))
    d = gov.check(ledger.state, ledger.now)
    assert d.reason == "total_usd" and d.action == "stop"  # waiting cannot lift a total


def test_policies_compose_like_stop_conditions(tmp_path):
    ledger = Ledger(tmp_path / "events.jsonl")
    ledger.start_iteration()
    ledger.stage("execute", 0.5, 500)
    policy = max_total_usd(10) | max_tokens(400) | max_usd_per_hour(0.1)
    inp = BudgetInput(ledger.state, ledger.now)
    assert policy(inp).reason == "tokens"
    assert (max_total_usd(10) | max_usd_per_hour(0.1))(inp).reason == "per_hour_usd"


def test_expected_stage_spend_is_the_per_stage_maximum(tmp_path):
    ledger = Ledger(tmp_path / "events.jsonl")
    assert expected_stage_spend(ledger.state, "execute") == (0.0, 0)
    for usd, tokens in ((0.1, 900), (0.4, 100), (0.2, 50)):
        ledger.start_iteration()
        ledger.stage("plan", 0.05, 10)
        ledger.stage("execute", usd, tokens)
        ledger.finish_iteration()
    assert expected_stage_spend(ledger.state, "execute") == (0.4, 900)
    assert expected_stage_spend(ledger.state, "plan") == (0.05, 10)
    assert expected_stage_spend(ledger.state, "never") == (0.0, 0)
    assert expected_iteration_spend(ledger.state, ["plan", "execute"]) == (0.45, 910)


def test_lineage_spend_counts_against_totals_not_the_hour(tmp_path):
    ledger = Ledger(tmp_path / "events.jsonl")
    ledger.start_iteration()
    ledger.stage("execute", 0.5, 100)
    gov = BudgetGovernor(Budgets(total_usd=1.0, per_hour_usd=0.6))
    assert gov.check(ledger.state, ledger.now) is None
    d = gov.check(ledger.state, ledger.now, lineage_usd=0.5, lineage_tokens=7)
    assert d.reason == "total_usd"
    assert d.counters["usd_total"] == 1.0 and d.counters["lineage_usd"] == 0.5 and d.counters["tokens_total"] == 107
    assert d.error().code == "budget_exhausted"


# -- the sliding hour --------------------------------------------------------------


def windowed(tmp_path, spends):
    """A journal whose stage_finished events are stamped at T0 + offset (minutes)."""
    ledger = Ledger(tmp_path / "events.jsonl")
    ledger.start_iteration()
    for i, (minutes, usd) in enumerate(spends):
        ledger.now = T0 + timedelta(minutes=minutes) - timedelta(seconds=2)  # two emits, a second each
        ledger.stage(f"s{i}", usd)
    return ledger.state


def test_window_counts_only_the_last_60_minutes(tmp_path):
    # Spend at 12:00 (1.0), 12:30 (0.3), 12:55 (0.1).
    state = windowed(tmp_path, [(0, 1.0), (30, 0.3), (55, 0.1)])
    assert [e.ts for e in state.usage_log] == [T0, T0 + timedelta(minutes=30), T0 + timedelta(minutes=55)]
    assert usd_in_window(state, T0 + timedelta(minutes=59, seconds=59)) == 1.4
    assert usd_in_window(state, T0 + HOUR) == pytest.approx(0.4)  # exactly 60 min old: aged out
    assert usd_in_window(state, T0 + timedelta(minutes=95)) == 0.1
    assert usd_in_window(state, T0 + timedelta(hours=3)) == 0.0
    u = usage(state, T0 + timedelta(minutes=70))
    assert (u.usd_total, u.tokens_total, u.usd_last_hour) == (1.4, 0, 0.4)


def test_hourly_limit_slides_with_the_injected_clock(tmp_path):
    state = windowed(tmp_path, [(0, 1.0), (30, 0.3)])
    gov = BudgetGovernor(Budgets(per_hour_usd=1.2))
    at_40 = gov.check(state, T0 + timedelta(minutes=40), 0.3)
    assert at_40.reason == "per_hour_usd" and at_40.action == "stop"
    assert at_40.counters["usd_last_hour"] == 1.3 and at_40.counters["usd_total"] == 1.3
    assert gov.check(state, T0 + timedelta(minutes=60), 0.3) is None  # the 1.0 aged out: 0.3 + 0.3


def test_wait_until_is_when_enough_spend_ages_out(tmp_path):
    # 12:10 0.6, 12:40 0.3; limit 1.0 per hour; now 12:50; a 0.3 stage needs the 0.6 gone → 13:10.
    state = windowed(tmp_path, [(10, 0.6), (40, 0.3)])
    now = T0 + timedelta(minutes=50)
    gov = BudgetGovernor(Budgets(per_hour_usd=1.0, on_hourly_limit="wait"))
    assert gov.wait_until(state, now, 0.3) == T0 + timedelta(minutes=70)
    d = gov.check(state, now, 0.3)
    assert d.action == "wait" and d.until == T0 + timedelta(minutes=70) and d.reason == "per_hour_usd"
    # After sleeping until then, the same check passes.
    assert gov.check(state, d.until, 0.3) is None
    # A 0.8 stage needs both entries gone: 13:40.
    assert gov.wait_until(state, now, 0.8) == T0 + timedelta(minutes=100)
    # Room now → now; more than the limit alone → waiting cannot help.
    assert gov.wait_until(state, now, 0.05) == now
    assert gov.wait_until(state, now, 1.5) is None
    stop = gov.check(state, now, 1.5)
    assert stop.action == "stop" and stop.until is None


def test_wait_until_with_limit_reached_and_nothing_expected(tmp_path):
    state = windowed(tmp_path, [(0, 0.5), (20, 0.5)])  # window holds exactly the limit
    gov = BudgetGovernor(Budgets(per_hour_usd=1.0, on_hourly_limit="wait"))
    now = T0 + timedelta(minutes=30)
    d = gov.check(state, now)
    assert d.action == "wait" and d.until == T0 + HOUR
    assert BudgetGovernor(Budgets(per_hour_usd=1.0)).check(state, now).action == "stop"  # on_hourly_limit: stop
    assert BudgetGovernor(Budgets(total_usd=5)).wait_until(state, now) is None  # no hourly limit


# -- journal: stopped_budget and budget_wait ---------------------------------------


def test_stopped_budget_is_terminal_and_a_run_started_resumes(tmp_path):
    ledger = Ledger(tmp_path / "events.jsonl")
    ledger.start_iteration()
    ledger.stage("execute", 0.9)
    gov = BudgetGovernor(Budgets(total_usd=1.0, per_hour_usd=0.95, on_hourly_limit="wait"))
    d = gov.check(ledger.state, ledger.now, 0.9)
    assert d.reason == "total_usd"
    ledger.emit("budget_wait", {"until": ledger.now + timedelta(minutes=5), "reason": "per_hour_usd"})
    assert ledger.state.status == Status.RUNNING  # informational only
    ledger.emit("stopped_budget", d.stopped_budget_payload())
    s = ledger.state
    assert s.status == Status.STOPPED_BUDGET and s.stop_reason == "total_usd" and s.is_terminal
    event = ledger.journal.read()[-1]
    assert event.payload.counters["expected_usd"] == 0.9 and event.payload.limit == 1.0
    ledger.emit("run_started", {"run_id": "run-2", "resumed": True})
    s = ledger.state
    assert s.status == Status.RUNNING and s.stop_reason is None and s.usd_total == 0.9


def test_stopped_budget_reason_is_closed(tmp_path):
    ledger = Ledger(tmp_path / "events.jsonl")
    with pytest.raises(ValueError):
        ledger.emit("stopped_budget", {"reason": "vibes", "limit": 1.0})
