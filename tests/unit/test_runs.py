"""Runs of a job: which run a start continues or opens, one live run per job, ``JOB@RUN``, the start lock.

Real files under a temporary root, the engine on fakes (``engine_fakes``): no Prefect.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest
from engine_fakes import Ran, world

from longrun.engine.ports import Answer
from longrun.engine.runs import Trigger, choose_run
from longrun.engine.session import NoLiveness
from longrun.errors import JobNotFound, LongrunError
from longrun.governance.budget import BudgetGovernor
from longrun.journal.local import Journal
from longrun.journal.registry import find_job, list_jobs
from longrun.journal.runs import JobLock, claim_run, list_runs, run_id_for
from longrun.spec.models import Budgets
from longrun.storage.paths import JobPaths

LIVE = NoLiveness()


def _run(w, trigger: Trigger = Trigger(), **kw):
    return choose_run(w.rt.loaded, w.root, trigger, LIVE, **kw)


def _journal(w, run_id: str) -> Journal:
    return Journal(JobPaths(w.root, run_id).events_file)


def test_a_first_run_keeps_the_job_id_and_a_finished_job_gets_a_new_run(tmp_path):
    w = world(tmp_path)
    assert w.run()["status"] == "COMPLETED"  # the first run, stored under the job's id
    again = _run(w)
    assert again.opened and again.record.job_id != w.rt.job_id
    assert again.record.definition == w.rt.job_id
    assert again.record.claim.key.startswith("manual:") and again.record.claim.trigger == "manual"
    assert again.prior_usd == pytest.approx(w.state().usd_total)
    # Not over yet: the next keyless start continues it, it does not open a third.
    assert _run(w).record.job_id == again.record.job_id
    assert [c.run_id for c in list_runs(w.root, w.rt.job_id)] == [w.rt.job_id, again.record.job_id]
    first = _journal(w, again.record.job_id).read()[0].payload
    assert (first.job, first.run_key, first.trigger) == (w.rt.job_id, again.record.claim.key, "manual")


def test_the_same_key_is_the_same_run(tmp_path):
    w = world(tmp_path)
    a = _run(w, Trigger("nightly-7", "key"))
    b = _run(w, Trigger("nightly-7", "key"))
    assert a.opened and not b.opened and a.record.job_id == b.record.job_id == run_id_for(w.rt.job_id, "nightly-7")
    c = _run(w, Trigger("nightly-8", "key"))
    assert c.record.job_id != a.record.job_id
    assert len(list_runs(w.root, w.rt.job_id)) == 3  # with the job's first run, which world() registered


def test_concurrent_claims_of_one_key_open_it_once(tmp_path):
    w = world(tmp_path)
    results: list[bool] = []
    barrier = threading.Barrier(16)

    def claim() -> None:
        barrier.wait()
        results.append(claim_run(w.root, w.rt.job_id, "tick", trigger="schedule")[1])

    threads = [threading.Thread(target=claim) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 15 + [True]
    assert [c.key for c in list_runs(w.root, w.rt.job_id)] == ["first", "tick"]


def test_a_run_waiting_for_approval_blocks_every_other_run_of_the_job(tmp_path):
    w = world(tmp_path, "approvals:\n  - {before: work, timeout: 5}\n")
    w.approver.answers = [None]
    assert w.run()["status"] == "WAITING_APPROVAL"
    with pytest.raises(LongrunError) as err:
        _run(w, Trigger("tick-2", "schedule"))
    assert err.value.code == "job_already_running" and "waiting for approval 'before-work'" in err.value.message
    assert len(list_runs(w.root, w.rt.job_id)) == 1  # the refused tick claimed nothing: it can come again
    assert _run(w, Trigger("tick-2", "schedule"), force=True).opened


def test_a_live_run_blocks_another_key(tmp_path):
    w = world(tmp_path)
    a = _run(w, Trigger("a", "key"))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        _journal(w, a.record.job_id).append(
            "run_started",
            {"run_id": "fr-1", "flow_run_id": "fr-1", "pid": sleeper.pid, "host": socket.gethostname()},
            job_id=a.record.job_id,
        )
        with pytest.raises(LongrunError) as err:
            _run(w, Trigger("b", "key"))
        assert err.value.code == "job_already_running" and f"pid {sleeper.pid}" in err.value.message
    finally:
        sleeper.kill()
        sleeper.wait()
    assert _run(w, Trigger("b", "key")).opened  # its engine is gone: no longer live


def test_job_ref_forms(tmp_path):
    w = world(tmp_path)
    assert w.run()["status"] == "COMPLETED"
    second = _run(w, Trigger("k2", "key")).record.job_id
    job = w.rt.job_id
    assert find_job(w.root, job).job_id == second  # JOB: its latest run
    assert find_job(w.root, "engine-job").job_id == second  # by name
    assert find_job(w.root, f"{job}@1").job_id == job
    assert find_job(w.root, f"{job}@2").job_id == second
    assert find_job(w.root, f"{job}@k2").job_id == second  # by key
    assert find_job(w.root, f"{job}@{second[:5]}").job_id == second  # unique prefix
    assert find_job(w.root, second).run_ref == f"{job}@{second}"  # a run id alone
    for bad in (f"{job}@3", f"{job}@nope", f"{second}@1"):
        with pytest.raises(JobNotFound):
            find_job(w.root, bad)
    (listed,) = list_jobs(w.root)  # runs are not jobs
    assert (listed.definition, listed.job_id) == (job, second)


def test_the_start_lock_serialises_starts(tmp_path):
    w = world(tmp_path)
    held = JobLock(w.root, w.rt.job_id).acquire()
    try:
        with pytest.raises(LongrunError) as err:
            JobLock(w.root, w.rt.job_id, wait_s=0.2).acquire()
        assert err.value.code == "job_already_running"
    finally:
        held.release()
    JobLock(w.root, w.rt.job_id, wait_s=0.2).acquire().release()


def test_job_total_usd_counts_every_run():
    from datetime import UTC, datetime

    from longrun.journal.state import RunState

    gov = BudgetGovernor(Budgets(job_total_usd=1.0, total_usd=5.0))
    now = datetime.now(UTC)
    assert gov.check(RunState(), now, 0.2, job_prior_usd=0.7) is None
    d = gov.check(RunState(), now, 0.4, job_prior_usd=0.7)
    assert d is not None and (d.reason, d.limit, d.counters["job_usd_total"]) == ("job_total_usd", 1.0, 0.7)
    assert gov.check(RunState(), now, 0.0, job_prior_usd=1.0).reason == "job_total_usd"  # already spent


def test_job_total_usd_stops_a_later_run_before_it_spends(tmp_path):
    stages = lambda stage, it, attempt: Ran(usd=0.3)  # noqa: E731
    w = world(tmp_path, "budgets: {job_total_usd: 1.0}\n", stages=stages)
    assert w.run()["usd"] == pytest.approx(0.6)  # two stages, one iteration
    second = w.run_of(_run(w, Trigger("second", "key")))
    assert second.prior_usd == pytest.approx(0.6)
    out = second.run()
    # 0.6 spent by the first run; each stage is expected to cost what it cost there (0.3): the
    # plan stage fits (0.9), the work stage would cross 1.0, so the run stops before it.
    assert (out["status"], out["usd"]) == ("STOPPED_BUDGET", 0.3)
    stop = [e.payload for e in second.journal.read() if e.type == "stopped_budget"][0]
    assert stop.reason == "job_total_usd"


def test_a_ui_answer_racing_a_cli_decision_records_only_the_first(tmp_path):
    w = world(tmp_path, "approvals:\n  - {before: work, timeout: 5}\n")

    def cli_approves_while_the_ui_rejects(request):
        Journal(w.rt.paths.events_file).append(
            "approved", {"step": request.step, "iteration": request.iteration, "approver": "cli"}, job_id=w.rt.job_id
        )
        return Answer("reject", "ui", "no")

    w.approver.answers = [cli_approves_while_the_ui_rejects]
    assert w.run()["status"] == "COMPLETED"
    decisions = [(e.type, e.payload.approver) for e in w.journal.read() if e.type in ("approved", "rejected")]
    assert decisions == [("approved", "cli")]


def test_concurrent_decisions_record_exactly_one(tmp_path):
    from longrun.governance.policy import first_decision_wins

    w = world(tmp_path)
    path = w.rt.paths.events_file
    outcomes: list[str] = []
    barrier = threading.Barrier(12)

    def decide(i: int) -> None:
        decision = "approved" if i % 2 else "rejected"
        barrier.wait()
        try:
            Journal(path).append(
                decision,
                {"step": "release", "iteration": 1, "approver": f"u{i}"},
                job_id=w.rt.job_id,
                unless=first_decision_wins("release", 1, decision),
            )
            outcomes.append("recorded")
        except LongrunError as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=decide, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("recorded") == 1
    recorded = [e for e in Journal(path).read() if e.type in ("approved", "rejected")]
    assert len(recorded) == 1
    same = "approval_already_decided"
    assert outcomes.count(same) == 5 and outcomes.count("approval_conflict") == 6
    assert os.path.getsize(path) > 0


def test_a_spec_stored_by_an_older_longrun_is_kept_and_a_different_one_refused(tmp_path):
    """spec.json written before fields with defaults were added is the same job: it is kept, not refused."""
    import json

    from longrun.errors import SpecImmutable
    from longrun.journal.registry import define

    w = world(tmp_path)
    path = JobPaths(w.root, w.rt.job_id).spec_file
    doc = json.loads(path.read_text())
    for field in ("sandbox", "allow_shell"):  # fields a later longrun added, with their defaults
        doc["spec"].pop(field, None)
    older = json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n"
    path.write_text(older)
    define(w.rt.loaded, w.root)
    assert path.read_text() == older  # kept as the job's record
    assert _run(w).record.job_id == w.rt.job_id  # and the job runs on

    doc["spec"]["goal"] = "something else"
    path.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")
    with pytest.raises(SpecImmutable):
        define(w.rt.loaded, w.root)


def test_the_first_event_is_written_once_and_a_torn_first_line_counts_as_empty(tmp_path):
    from longrun.journal.registry import register

    w = world(tmp_path)  # registered: job_registered written
    register(w.rt.loaded, w.root)
    assert [e.type for e in w.journal.read()] == ["job_registered"]
    other = Journal(tmp_path / "other.jsonl")
    assert other.is_empty()
    other.path.write_bytes(b'{"seq": 1, "ty')  # an append cut by a crash
    assert other.is_empty()
    other.path.write_bytes(w.journal.path.read_bytes())
    assert not other.is_empty()
