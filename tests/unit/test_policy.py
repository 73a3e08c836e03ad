"""Gate-failure policy (SPEC E6): decide(), counts from the journal, iteration verdicts, approvals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from longrun.governance.policy import (
    PolicyDecision,
    approval_status,
    blocking_approval,
    decide,
    escalation_step,
    gate_failures,
    judge_iteration,
    policy_failures,
)
from longrun.journal.local import Journal
from longrun.journal.state import Status
from longrun.spec import parse_spec_text
from longrun.spec.compile import compile_spec
from longrun.spec.models import FailurePolicy

JOB = "90c1c7000001"
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)

RETRY2 = FailurePolicy(action="retry", max_retries=2)


# -- decide() ----------------------------------------------------------------------


def test_retry_until_max_retries_then_abort_exhausted():
    assert decide("t", None, RETRY2, 1) == PolicyDecision("retry", "gate 't' failed 1 time; retry 1 of 2", 1)
    assert decide("t", None, RETRY2, 2).action == "retry" and decide("t", None, RETRY2, 2).retries_left == 0
    d = decide("t", None, RETRY2, 3)
    assert (d.action, d.code, d.retries_left) == ("abort", "gate_retries_exhausted", 0)
    assert "all 2 retries used" in d.reason


def test_retry_with_zero_retries_aborts_on_first_failure():
    d = decide("t", FailurePolicy(action="retry", max_retries=0), RETRY2, 1)
    assert (d.action, d.code) == ("abort", "gate_retries_exhausted")


def test_gate_policy_overrides_job_policy():
    assert decide("t", FailurePolicy(action="abort"), RETRY2, 1).action == "abort"
    assert decide("t", None, FailurePolicy(action="abort"), 1).code == "gate_failed"


def test_escalate_retries_first_then_escalates():
    esc = FailurePolicy(action="escalate", max_retries=1)
    assert decide("t", esc, RETRY2, 1).action == "retry"
    d = decide("t", esc, RETRY2, 2)
    assert (d.action, d.code, d.retries_left) == ("escalate", None, 0)
    assert decide("t", FailurePolicy(action="escalate", max_retries=0), RETRY2, 1).action == "escalate"


def test_skip_and_abort_act_on_the_first_failure():
    assert decide("t", FailurePolicy(action="skip", max_retries=5), RETRY2, 1).action == "skip"
    d = decide("t", FailurePolicy(action="abort", max_retries=5), RETRY2, 1)
    assert (d.action, d.code) == ("abort", "gate_failed")


def test_decide_needs_a_failure():
    with pytest.raises(ValueError):
        decide("t", None, RETRY2, 0)


# -- journal-backed counts and verdicts ---------------------------------------------

SPEC = """
name: gated
goal: g
allowed_tools: [python]
model_policy: {default: m}
stages: [{id: execute, run: [python]}]
on_failure: {action: retry, max_retries: 2}
quality_gates:
  required:
    - {id: tests, kind: command_pass, run: [python]}
    - {id: lint, kind: command_pass, run: [python], on_failure: {action: skip}}
    - {id: review, kind: approval, step: release}
  optional:
    - {id: docs, kind: command_pass, run: [python], on_failure: {action: abort}}
"""


class Run:
    def __init__(self, path, spec_text=SPEC):
        self.now = T0
        self.journal = Journal(path, clock=self.tick)
        self.plan = compile_spec(parse_spec_text(spec_text))
        self.job_policy = parse_spec_text(spec_text).on_failure
        self.emit("job_registered", {"job_id": JOB, "name": "gated", "spec_sha256": "0" * 64, "root": "/r"})
        self.emit("run_started", {"run_id": "run-1"})
        self.iteration = 0

    def tick(self):
        self.now += timedelta(seconds=1)
        return self.now

    def emit(self, type_, payload):
        return self.journal.append(type_, payload, job_id=JOB)

    @property
    def state(self):
        return self.journal.state()

    def iterate(self, **passed):
        """One iteration whose gates pass or fail as given (missing gates pass)."""
        self.iteration += 1
        self.emit("iteration_started", {"iteration": self.iteration})
        for pg in self.plan.gates:
            self.emit(
                "gate_evaluated",
                {
                    "iteration": self.iteration,
                    "gate": pg.id,
                    "kind": pg.kind,
                    "required": pg.required,
                    "passed": passed.get(pg.id, pg.kind != "approval"),
                },
            )
        verdict = judge_iteration(self.state, self.iteration, self.plan.gates, self.job_policy)
        events = verdict.events(self.state)
        for type_, payload in events:
            if type_ == "gate_skipped":
                self.emit(type_, payload)
        self.emit(
            "iteration_finished",
            {"iteration": self.iteration, "gates_passed": verdict.gates_passed, "fingerprint": f"fp{self.iteration}"},
        )
        for type_, payload in events:
            if type_ != "gate_skipped":
                self.emit(type_, payload)
        return verdict


def test_gate_failures_are_counted_from_the_journal_across_runs(tmp_path):
    run = Run(tmp_path / "events.jsonl")
    run.emit("approved", {"step": "release", "approver": "ana"})
    assert run.iterate(tests=False).action == "retry"
    assert run.iterate(tests=True).action == "complete"
    s = run.state
    assert gate_failures(s, "tests") == 1 and gate_failures(s, "lint") == 0
    # A new process (a resumed run) reads the same counts back from the file.
    assert gate_failures(Journal(tmp_path / "events.jsonl").state(), "tests") == 1


def test_retries_exhausted_fails_the_run(tmp_path):
    run = Run(tmp_path / "events.jsonl")
    run.emit("approved", {"step": "release", "approver": "ana"})
    v1, v2 = run.iterate(tests=False), run.iterate(tests=False)
    assert (v1.action, v1.decisions["tests"].retries_left) == ("retry", 1)
    assert (v2.action, v2.decisions["tests"].retries_left) == ("retry", 0)
    v3 = run.iterate(tests=False)
    assert (v3.action, v3.code, v3.gate) == ("abort", "gate_retries_exhausted", "tests")
    s = run.state
    assert s.status == Status.FAILED and s.stop_reason == "gate_retries_exhausted"
    assert run.journal.read()[-1].type == "run_failed"
    assert s.iterations_finished == 3  # 1 + max_retries evaluations


def test_skipped_required_gate_does_not_block_completion(tmp_path):
    run = Run(tmp_path / "events.jsonl")
    run.emit("approved", {"step": "release", "approver": "ana"})
    v = run.iterate(lint=False)
    assert v.action == "complete" and v.gates_passed and v.skipped == ("lint",)
    assert v.reason == "all required gates passed (1 skipped by policy)"
    s = run.state
    assert s.status == Status.COMPLETED
    assert s.gate_skips == {1: {"lint": "gate 'lint' failed 1 time; skipped by policy"}}
    # The verdict is the same after a restart, and the skip is not journaled twice.
    again = judge_iteration(s, 1, run.plan.gates, run.job_policy)
    assert again.skipped == ("lint",) and [t for t, _ in again.events(s)] == ["run_completed"]


def test_optional_gate_failure_is_only_reported(tmp_path):
    run = Run(tmp_path / "events.jsonl")
    run.emit("approved", {"step": "release", "approver": "ana"})
    v = run.iterate(docs=False)  # docs has on_failure: abort, but it is optional
    assert v.action == "complete" and "docs" not in v.decisions


def test_abort_beats_retry_and_names_its_gate(tmp_path):
    spec = SPEC.replace(
        "{id: lint, kind: command_pass, run: [python], on_failure: {action: skip}}",
        "{id: lint, kind: command_pass, run: [python], on_failure: {action: abort}}",
    )
    run = Run(tmp_path / "events.jsonl", spec)
    v = run.iterate(tests=False, lint=False)
    assert (v.action, v.code, v.gate) == ("abort", "gate_failed", "lint")
    assert v.decisions["tests"].action == "retry"
    assert run.state.status == Status.FAILED and run.state.stop_reason == "gate_failed"


def test_approval_gate_waits_then_passes_once_approved(tmp_path):
    run = Run(tmp_path / "events.jsonl")
    v = run.iterate()
    assert (v.action, v.step, v.gate) == ("approval", "release", "review")
    s = run.state
    assert s.status == Status.WAITING_APPROVAL and s.is_terminal
    assert s.pending_approval == "release" and s.stop_reason == "release"
    assert approval_status(s, "release") == "pending" and blocking_approval(s) == "release"
    # Resuming before anyone approved does not bypass it.
    run.emit("run_started", {"run_id": "run-2", "resumed": True})
    assert blocking_approval(run.state) == "release"
    run.emit("approval_requested", {"step": "release", "iteration": 1})
    run.emit("approved", {"step": "release", "approver": "ana", "comment": "ship it"})
    s = run.state
    assert s.status == Status.APPROVED and s.pending_approval is None and blocking_approval(s) is None
    assert s.approvals["release"].decision == "approved" and s.approvals["release"].approver == "ana"
    run.emit("run_started", {"run_id": "run-3", "resumed": True})
    assert run.iterate().action == "complete"
    assert run.state.status == Status.COMPLETED


def test_rejection_ends_the_job(tmp_path):
    run = Run(tmp_path / "events.jsonl")
    run.iterate()
    run.emit("rejected", {"step": "release", "approver": "bo", "comment": "not yet"})
    s = run.state
    assert s.status == Status.REJECTED and s.is_terminal and s.stop_reason == "release"
    assert approval_status(s, "release") == "rejected"


def test_escalation_pauses_and_an_approval_grants_fresh_retries(tmp_path):
    spec = SPEC.replace("on_failure: {action: retry, max_retries: 2}", "on_failure: {action: escalate, max_retries: 1}")
    run = Run(tmp_path / "events.jsonl", spec)
    run.emit("approved", {"step": "release", "approver": "ana"})
    assert run.iterate(tests=False).action == "retry"
    v = run.iterate(tests=False)
    assert (v.action, v.gate, v.step) == ("escalate", "tests", "escalate:tests")
    s = run.state
    assert s.status == Status.WAITING_APPROVAL and s.pending_approval == escalation_step("tests")
    ev = run.journal.read()[-1]
    assert ev.type == "escalated" and ev.payload.iteration == 2 and ev.payload.step == "escalate:tests"
    # A human approves (the CLI gives no iteration: the current one is recorded).
    run.emit("approved", {"step": "escalate:tests", "approver": "ana"})
    s = run.state
    assert s.status == Status.APPROVED and s.approvals["escalate:tests"].iteration == 2
    assert gate_failures(s, "tests") == 2 and policy_failures(s, "tests") == 0
    run.emit("run_started", {"run_id": "run-2", "resumed": True})
    assert run.iterate(tests=False).action == "retry"  # one fresh retry…
    assert run.iterate(tests=False).action == "escalate"  # …then a human again


def test_approving_another_step_does_not_end_the_wait(tmp_path):
    run = Run(tmp_path / "events.jsonl")
    run.iterate()
    run.emit("approved", {"step": "something-else", "approver": "ana"})
    s = run.state
    assert s.status == Status.WAITING_APPROVAL and s.pending_approval == "release"
    assert s.approvals["something-else"].decision == "approved"


def test_approval_while_running_is_recorded_without_a_status_change(tmp_path):
    run = Run(tmp_path / "events.jsonl")
    run.emit("approved", {"step": "release", "approver": "ana"})
    assert run.state.status == Status.RUNNING and approval_status(run.state, "release") == "approved"


def test_approved_and_rejected_need_an_approver(tmp_path):
    run = Run(tmp_path / "events.jsonl")
    for kind in ("approved", "rejected"):
        with pytest.raises(ValueError):
            run.emit(kind, {"step": "release"})
