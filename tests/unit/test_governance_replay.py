"""Replay of the governance events, pinned by golden journals in tests/fixtures/journals.

The expected values were worked out by hand from the fixture timestamps (see
the comments); the byte-for-byte round trip of every fixture line is pinned by
test_journal.py, which picks these files up too.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from longrun.governance.budget import BudgetGovernor, usd_in_window
from longrun.governance.policy import blocking_approval, gate_failures, policy_failures
from longrun.journal.fold import replay
from longrun.journal.local import Journal
from longrun.journal.state import TERMINAL, Decision, Status
from longrun.spec.models import Budgets

FIXTURES = Path(__file__).parents[1] / "fixtures" / "journals"


def golden(name: str):
    return Journal(FIXTURES / name).read()


def at(h: int, m: int, s: int) -> datetime:
    return datetime(2025, 4, 2, h, m, s, tzinfo=UTC)


def test_new_statuses_are_terminal():
    assert {Status.WAITING_APPROVAL, Status.APPROVED, Status.STOPPED_BUDGET, Status.REJECTED} <= TERMINAL
    assert Status.RUNNING not in TERMINAL and Status.PENDING not in TERMINAL


def test_golden_budget_stop_resume_and_stop_again():
    events = golden("governance_budget_stop.jsonl")
    first = replay(events[:12])
    assert first.status == Status.STOPPED_BUDGET and first.stop_reason == "total_usd" and first.is_terminal
    wait = events[6]
    assert wait.type == "budget_wait" and wait.payload.until == at(8, 30, 0)
    assert replay(events[:7]).status == Status.RUNNING  # budget_wait is informational
    assert replay(events[:13]).status == Status.RUNNING  # run_started resumes
    s = replay(events)
    assert s.status == Status.STOPPED_BUDGET and s.stop_reason == "tokens"
    assert (s.usd_total, s.tokens_total, s.iterations_finished) == (0.8, 2000, 2)
    assert [u.ts for u in s.usage_log] == [at(8, 0, 32), at(8, 30, 30)]
    assert s.runs == ("run-1", "run-2")
    assert s.active_seconds == 1841.0  # 08:00:01 → 08:30:32 (1831, the wait included) + 09:00:00 → 09:00:10
    # The budget counters come back from the journal alone.
    stop = events[11].payload
    assert (stop.reason, stop.limit, stop.counters["usd_total"]) == ("total_usd", 1.0, 0.8)
    assert usd_in_window(s, at(9, 0, 31)) == 0.8  # 08:00:32 is 59:59 old
    assert usd_in_window(s, at(9, 0, 32)) == 0.4  # …and exactly 60:00 old here
    gov = BudgetGovernor(Budgets(total_usd=1.0, tokens=2000))
    assert gov.check(s, at(9, 1, 0)).reason == "tokens"  # 2000 >= 2000: reached


def test_golden_escalation_approval_and_completion():
    events = golden("governance_escalated_approved.jsonl")
    esc = replay(events[:8])
    assert esc.status == Status.WAITING_APPROVAL and esc.stop_reason == "escalate:tests"
    assert esc.pending_approval == "escalate:tests" and blocking_approval(esc) == "escalate:tests"
    assert events[7].payload.step == "escalate:tests"  # defaulted from the gate
    approved = replay(events[:9])
    assert approved.status == Status.APPROVED and approved.pending_approval is None
    assert approved.approvals == {
        "escalate:tests": Decision("approved", "ana", "try once more", 1, "2025-04-02T11:00:00.000000Z"),
    }
    assert gate_failures(approved, "tests") == 1 and policy_failures(approved, "tests") == 0
    waiting = replay(events[:15])
    assert waiting.status == Status.WAITING_APPROVAL and waiting.pending_approval == "release"
    s = replay(events)
    assert s.status == Status.COMPLETED and s.stop_reason is None and s.pending_approval is None
    assert s.approvals["release"].approver == "bo" and s.approvals["release"].iteration == 2
    assert s.gate_skips == {1: {"lint": "gate 'lint' failed 1 time; skipped by policy"}}
    assert s.runs == ("run-1", "run-2", "run-3")
    # Waiting for a human is not active time: 10:00:01→10:00:24, 11:00:05→11:00:33, 12:00:01→12:00:02.
    assert s.active_seconds == 52.0


def test_golden_rejected():
    s = replay(golden("governance_rejected.jsonl"))
    assert s.status == Status.REJECTED and s.is_terminal and s.stop_reason == "deploy"
    assert s.pending_approval is None
    assert s.approvals["deploy"] == Decision("rejected", "carol", "wrong target", 1, "2025-04-02T13:05:00.000000Z")
    assert s.active_seconds == 9.0  # 13:00:01 → 13:00:10; the rejection came while waiting


def test_governance_modules_do_not_import_prefect():
    import subprocess
    import sys

    code = (
        "import sys, longrun.governance.budget, longrun.governance.policy, longrun.governance.waiver, longrun.governance.scope, longrun.workspace.worktree, "
        "longrun.governance.lineage; assert 'prefect' not in sys.modules, 'prefect imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
