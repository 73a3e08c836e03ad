"""The engine loop driven end to end with in-memory fakes: no Prefect, no subprocess.

Each test builds a job (``engine_fakes.world``), scripts what its stages,
gates and approvers do, runs ``longrun.engine.loop.run_job`` and checks the
journal, the state and what the fakes were asked to do.
"""

from __future__ import annotations

import pytest
from engine_fakes import Ran, world

from longrun.engine.ports import Answer
from longrun.journal.local import Journal


def _fails_first(gate: str, it: int) -> bool:
    return it >= 2


def test_completes_when_the_gate_passes_and_leaves_evidence(tmp_path):
    w = world(tmp_path, gates=_fails_first, stages=lambda s, it, a: Ran(usd=0.01, tokens=10))
    out = w.run()
    assert (out["status"], out["iterations"]) == ("COMPLETED", 2)
    assert w.executor.executed() == [
        ("stage", "plan", 1, 1),
        ("stage", "work", 1, 1),
        ("stage", "plan", 2, 1),
        ("stage", "work", 2, 1),
    ]
    st = w.state()
    assert st.usd_total == pytest.approx(0.04) and st.tokens_total == 40
    assert st.evidence["built"]["files"] > 0
    types = w.types()
    assert types[:3] == ["job_registered", "run_started", "iteration_started"]
    assert types[-2:] == ["run_completed", "evidence_built"]
    assert [e.seq for e in w.journal.read()] == list(range(1, len(types) + 1))
    assert w.progress.iterations == [1, 2]


def test_a_finished_job_runs_nothing(tmp_path):
    w = world(tmp_path)
    assert w.run()["status"] == "COMPLETED"
    before = w.types()
    out = w.run()
    assert out["status"] == "COMPLETED" and w.executor.calls == [] and w.types() == before
    assert any("nothing to do" in line for line in w.progress.lines)


def test_budget_stops_before_the_stage_that_would_cross_it(tmp_path):
    w = world(tmp_path, "budgets: {total_usd: 0.25}\n", gates=lambda g, it: False, stages=lambda s, it, a: Ran(usd=0.05))
    out = w.run()
    assert (out["status"], out["reason"]) == ("STOPPED_BUDGET", "total_usd")
    # 0.05 per stage: after 5 stages (0.25) nothing more may start.
    assert len(w.executor.executed()) == 5 and w.state().usd_total == pytest.approx(0.25)
    stop = [e for e in w.journal.read() if e.type == "stopped_budget"][0].payload
    assert stop.limit == 0.25 and stop.counters["usd_total"] == pytest.approx(0.25)


def test_a_failing_attempt_is_retried_and_each_attempt_is_journaled(tmp_path):
    extra = "defaults: {retry: {max_retries: 2, when: [nonzero]}}\n"
    w = world(tmp_path, extra, stages=lambda s, it, a: Ran(exit_code=1 if (s == "work" and a < 3) else 0))
    out = w.run()
    assert out["status"] == "COMPLETED"
    assert [c for c in w.executor.executed() if c[1] == "work"] == [
        ("stage", "work", 1, 1),
        ("stage", "work", 1, 2),
        ("stage", "work", 1, 3),
    ]
    started = [e.payload.attempt for e in w.journal.read() if e.type == "stage_started" and e.payload.stage == "work"]
    finished = [e.payload for e in w.journal.read() if e.type == "stage_finished" and e.payload.stage == "work"]
    assert started == [1, 2, 3] and [(f.attempts, f.exit_code) for f in finished] == [(3, 0)]


def test_gate_retry_runs_another_iteration_until_retries_run_out(tmp_path):
    w = world(tmp_path, "on_failure: {action: retry, max_retries: 2}\n", gates=lambda g, it: False)
    out = w.run()
    assert (out["status"], out["reason"], out["iterations"]) == ("FAILED", "gate_retries_exhausted", 3)


def test_gate_skip_lets_the_job_complete(tmp_path):
    w = world(tmp_path, "on_failure: {action: skip}\n", gates=lambda g, it: False)
    out = w.run()
    assert (out["status"], out["iterations"]) == ("COMPLETED", 1)
    assert "gate_skipped" in w.types()


def test_gate_abort_fails_the_run(tmp_path):
    w = world(tmp_path, "on_failure: {action: abort}\n", gates=lambda g, it: False)
    out = w.run()
    assert (out["status"], out["reason"], out["iterations"]) == ("FAILED", "gate_failed", 1)
    assert w.types()[-2:] == ["run_failed", "evidence_built"]


def test_escalation_approved_goes_on_and_rejected_ends(tmp_path):
    spec = "on_failure: {action: escalate, max_retries: 0}\n"
    ok = world(tmp_path / "a", spec, gates=_fails_first)
    ok.approver.answers = [Answer("approve", "ops", "go on")]
    out = ok.run()
    assert (out["status"], out["iterations"]) == ("COMPLETED", 2)
    assert [w.step for w in ok.approver.waits] == ["escalate:tests"]
    assert [e.payload.approver for e in ok.journal.read() if e.type == "approved"] == ["ops"]

    no = world(tmp_path / "b", spec, gates=lambda g, it: False)
    no.approver.answers = [Answer("reject", "ops", "stop it")]
    assert no.run()["status"] == "REJECTED"


def test_approval_before_a_stage_approved_rejected_and_timed_out(tmp_path):
    spec = "approvals:\n  - {before: work, timeout: 5, poll_interval: 1}\n"
    ok = world(tmp_path / "ok", spec)
    ok.approver.answers = [Answer("approve", "ann")]
    assert ok.run()["status"] == "COMPLETED"
    wait = ok.approver.waits[0]
    assert (wait.step, wait.iteration, wait.key, wait.timeout, wait.mode) == ("before-work", 1, "before-work-1-1", 5.0, "pause")
    req = [e.payload for e in ok.journal.read() if e.type == "approval_requested"][0]
    assert (req.key, req.flow_run_id, req.api_url, req.mode) == ("before-work-1-1", "run-1", "http://fake/api", "pause")

    no = world(tmp_path / "no", spec)
    no.approver.answers = [Answer("reject", "bob", "not today")]
    assert no.run()["status"] == "REJECTED"
    assert ("stage", "work", 1, 1) not in no.executor.executed()

    late = world(tmp_path / "late", spec)
    late.approver.answers = [None]
    out = late.run()
    assert (out["status"], out["reason"]) == ("WAITING_APPROVAL", "before-work")
    assert "approval_timeout" in late.types()
    # Approved afterwards (as `longrun approve` journals it), the next run goes on without asking again.
    late.journal.append("approved", {"step": "before-work", "iteration": 1, "approver": "carol"}, job_id=late.rt.job_id)
    assert late.run()["status"] == "COMPLETED"
    assert len(late.approver.waits) == 1
    assert [c for c in late.executor.executed() if c[1] == "plan"] == []  # plan was done before the wait


def test_an_approval_journaled_just_before_the_timeout_wins(tmp_path):
    w = world(tmp_path, "approvals:\n  - {before: work, timeout: 5}\n")

    def cli_approves_then_the_pause_times_out(request):
        Journal(w.rt.paths.events_file).append(
            "approved", {"step": request.step, "iteration": request.iteration, "approver": "dana"}, job_id=w.rt.job_id
        )
        return None

    w.approver.answers = [cli_approves_then_the_pause_times_out]
    assert w.run()["status"] == "COMPLETED"
    types = w.types()
    assert "approval_timeout" not in types and types.count("approved") == 1


def test_no_progress_stops_the_run(tmp_path):
    w = world(
        tmp_path,
        "stop_conditions: {max_iterations: 10, no_progress_iterations: 2}\n",
        gates=lambda g, it: False,
        stages=lambda s, it, a: Ran(edits=False),
    )
    w_out = w.run()
    assert (w_out["status"], w_out["reason"], w_out["iterations"]) == ("STOPPED", "no_progress", 3)


def test_the_stop_file_stops_before_the_next_stage(tmp_path):
    def stage(s, it, a):
        if s == "plan" and it == 2:
            (tmp_path / ".maestro" / "STOP").write_text("")
        return Ran()

    w = world(tmp_path, gates=lambda g, it: False, stages=stage)
    out = w.run()
    assert (out["status"], out["reason"]) == ("STOPPED", "stop_file")
    assert w.executor.executed()[-1] == ("stage", "plan", 2, 1)
    stopped = [e.payload for e in w.journal.read() if e.type == "run_stopped"][0]
    assert stopped.detail["path"].endswith(".maestro/STOP")
    assert "stopped: stop_file (path=" in "\n".join(w.progress.lines)


def test_max_iterations(tmp_path):
    w = world(tmp_path, "stop_conditions: {max_iterations: 2}\n", gates=lambda g, it: False)
    out = w.run()
    assert (out["status"], out["reason"], out["iterations"]) == ("STOPPED", "max_iterations", 2)


def test_a_dependency_failure_skips_the_stage_without_running_it(tmp_path):
    w = world(tmp_path, "stop_conditions: {max_iterations: 1}\n", stages=lambda s, it, a: Ran(exit_code=1 if s == "plan" else 0))
    w.run()
    work = [e.payload for e in w.journal.read() if e.type == "stage_finished" and e.payload.stage == "work"][0]
    assert work.attempts == 0 and "dependency plan failed" in work.error
    assert [c[1] for c in w.executor.executed()] == ["plan"]


def test_a_live_run_refuses_a_second_start(tmp_path):
    import os
    import socket

    w = world(tmp_path)
    w.journal.append(
        "run_started",
        {"run_id": "other", "flow_run_id": "other", "pid": os.getppid(), "host": socket.gethostname()},
        job_id=w.rt.job_id,
    )
    before = w.types()
    out = w.run()
    assert out["code"] == "job_already_running" and w.types() == before


def _reference(tmp_path):
    w = world(tmp_path, gates=_fails_first, stages=lambda s, it, a: Ran(usd=0.01, tokens=7))
    assert w.run()["status"] == "COMPLETED"
    return w


@pytest.mark.parametrize("stage_outlived_the_crash", [True, False])
def test_resume_at_every_event_boundary_of_a_recorded_journal(tmp_path, stage_outlived_the_crash):
    """Cut a complete run's journal after every event, resume, and get the same job.

    A crash right after ``stage_started`` happens either after the stage ended
    (its record was written, only ``stage_finished`` was lost: it is adopted)
    or while it ran (no record: it runs again, as the next attempt).
    """
    ref = _reference(tmp_path / "ref")
    lines = ref.rt.paths.events_file.read_bytes().splitlines(keepends=True)
    ref_state = ref.state()
    ran_before = list(zip(ref.executor.executed(), ref.executor.at, strict=True))
    for k in range(1, len(lines)):
        w = world(tmp_path / f"cut{k}", name="engine-job", gates=_fails_first, stages=lambda s, it, a: Ran(usd=0.01, tokens=7))
        assert w.rt.job_id == ref.rt.job_id
        w.rt.paths.events_file.write_bytes(b"".join(lines[:k]))
        w.records = ref.records.as_of(k if stage_outlived_the_crash else k - 1)
        w.clock.t = ref.clock.t
        out = w.run()
        st = w.state()
        assert (out["status"], st.iterations_finished) == ("COMPLETED", 2), (k, out)
        assert st.usd_total == pytest.approx(ref_state.usd_total) and st.tokens_total == ref_state.tokens_total, k
        events = w.journal.read()
        assert [e.seq for e in events] == list(range(1, len(events) + 1)), k
        assert events[-1].type == "evidence_built" and st.evidence_behind is False, k
        finished = [(e.payload.stage, e.payload.iteration) for e in events if e.type == "stage_finished"]
        assert sorted(finished) == sorted({(c[1], c[2]) for c, _ in ran_before}), k
        # Every stage ran to the end exactly once, across the crash and the resume.
        killed = {c[1:3] for c, at in ran_before if at == k and not stage_outlived_the_crash}
        for stage_it in {c[1:3] for c, _ in ran_before}:
            before = sum(1 for c, at in ran_before if c[1:3] == stage_it and at <= k and stage_it not in killed)
            after = sum(1 for c in w.executor.executed() if c[1:3] == stage_it)
            assert before + after == 1, (k, stage_it, before, after)


def test_a_job_interrupted_before_its_bundle_gets_it_on_the_next_run(tmp_path):
    ref = _reference(tmp_path / "ref")
    lines = ref.rt.paths.events_file.read_bytes().splitlines(keepends=True)
    assert b'"run_completed"' in lines[-2]
    w = world(tmp_path / "cut", gates=_fails_first)
    w.rt.paths.events_file.write_bytes(b"".join(lines[:-1]))
    assert w.state().evidence_behind
    out = w.run()
    assert out["status"] == "COMPLETED" and w.executor.calls == []
    assert w.types()[-1] == "evidence_built" and not w.state().evidence_behind
