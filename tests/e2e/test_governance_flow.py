"""Governance end to end (SPEC E4, E6, E7, G1, G2, G4, S4) on the session's real Prefect server.

Flows run in-process (``job_flow(loaded)(...)``, as in test_flow.py) where only
the journal matters, and through the ``longrun`` CLI in a subprocess where the
exit code is part of the contract. Stages are real processes (``stage.py``
below), workspaces are real git repositories, and nothing is mocked.

``stage.py`` is driven by its environment (set per stage in the spec):

``USD`` / ``TOKENS``  spend reported through ``$LONGRUN_USAGE_FILE``
``COUNTER``           a file outside the workspace; one line per execution
``WRITE``             ``path=text;...`` appended to (workspace-relative) files
``DELETE``            ``path;...`` removed
``SPAWN``             a child spec copied into ``$LONGRUN_SPAWN_DIR`` (iteration 1 only)
``STOP_JOBS``         ``.maestro/jobs`` dir: touch this job's STOP file at iteration ``STOP_AT``, once
``SLEEP_ONCE``        a marker: the first execution creates it and sleeps 120 s (to be SIGKILLed)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import longrun_cli, sigkill_engine_once, wait_paused, write_job

from longrun.journal.local import Journal
from longrun.journal.registry import find_job, register
from longrun.spec import load_spec
from longrun.storage.paths import JobPaths
from longrun.workspace import gitutil
from longrun.workspace.gitutil import _git

pytestmark = pytest.mark.prefect

STAGE = r"""
import json, os, shutil, time
env = os.environ
name, it = env["LONGRUN_STAGE"], int(env["LONGRUN_ITERATION"])
if env.get("COUNTER"):
    with open(env["COUNTER"], "a") as f:
        f.write(f"{name} {it} pid={os.getpid()}\n")
with open(env["LONGRUN_USAGE_FILE"], "w") as f:
    json.dump({"usd": float(env.get("USD", "0")), "tokens": int(env.get("TOKENS", "0"))}, f)
for item in filter(None, env.get("WRITE", "").split(";")):
    path, _, text = item.partition("=")
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.write(text.replace("@IT", str(it)) + "\n")
for path in filter(None, env.get("DELETE", "").split(";")):
    if os.path.exists(path):
        os.remove(path)
if env.get("SPAWN") and it == 1:
    os.makedirs(env["LONGRUN_SPAWN_DIR"], exist_ok=True)
    shutil.copy(env["SPAWN"], env["LONGRUN_SPAWN_DIR"])
if env.get("STOP_JOBS") and it == int(env.get("STOP_AT", "1")):
    stop = os.path.join(env["STOP_JOBS"], env["LONGRUN_JOB_ID"], "STOP")
    if not os.path.exists(stop + ".once"):
        open(stop + ".once", "w").close()
        open(stop, "w").close()
if env.get("SLEEP_ONCE") and not os.path.exists(env["SLEEP_ONCE"]):
    open(env["SLEEP_ONCE"], "w").close()
    time.sleep(120)   # the engine is SIGKILLed while this stage sleeps
"""

NEVER = '{id: never, kind: command_pass, run: [python, -c, "raise SystemExit(1)"]}'
ALWAYS = '{id: ok, kind: command_pass, run: [python, -c, "pass"]}'


# ------------------------------------------------------------------ helpers


def job(
    tmp_path: Path,
    body: str,
    *,
    name: str = "job",
    files: dict[str, str] | None = None,
    workspace: str = "{path: ws, template: template}",
) -> Path:
    """A spec ``<name>.yaml`` with the common header and ``stage.py`` in its template.

    These tests are about governance, not the sandbox, and ``stage.py`` writes
    outside its workspace by design (``COUNTER``, ``STOP_JOBS``, ``SLEEP_ONCE``),
    so non-strict jobs opt out with ``sandbox: none``. Strict jobs (which
    refuse the opt-out without a waiver) stay sandboxed and write only their
    workspace. The sandbox itself is tested in test_adversarial.py.
    """
    sandbox = "" if "mode: strict" in body else "sandbox: none\n"
    text = f"""
name: {name}
goal: governance test {name}
workspace: {workspace}
allowed_tools: [python]
model_policy: {{default: m}}
{sandbox}{body}
"""
    return write_job(tmp_path, text, {"stage.py": STAGE, **(files or {})}, name=f"{name}.yaml")


def _outcome(state):
    """An in-process flow's result: the run's outcome, whatever state the flow run ended in."""
    return state.result(raise_on_failure=False)


def run_flow(spec_path: Path, root: Path, **kw):
    from longrun.flows.job import job_flow

    loaded = load_spec(spec_path)
    want_state = kw.pop("return_state", False)
    state = job_flow(loaded)(
        spec=json.loads(loaded.canonical), root=str(root), source=str(loaded.source), return_state=True, **kw
    )
    return state if want_state else _outcome(state)


def resume_flow(root: Path, job_id: str, **kw):
    """What ``longrun resume`` runs, in-process: the stored spec under the stored id."""
    from longrun.flows.job import job_flow

    loaded = find_job(root, job_id).load()
    source = next(e.payload.source for e in journal(root, job_id).read() if e.type == "job_registered")
    want_state = kw.pop("return_state", False)
    state = job_flow(loaded)(
        spec=json.loads(loaded.canonical), root=str(root), source=source, job_id=job_id, return_state=True, **kw
    )
    return state if want_state else _outcome(state)


def journal(root: Path, job_id: str) -> Journal:
    return Journal(JobPaths(root, job_id).events_file)


def events(root: Path, job_id: str, type_: str | None = None):
    evs = journal(root, job_id).read()
    return [e for e in evs if type_ is None or e.type == type_]


def types(root: Path, job_id: str) -> list[str]:
    return [e.type for e in events(root, job_id)]


def cli(*args: str, root: Path, env: dict) -> subprocess.CompletedProcess:
    r = longrun_cli(*args, "--root", str(root), cwd=root, env=env)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def counter_lines(path: Path) -> list[str]:
    return [line.split(" pid=")[0] for line in path.read_text().splitlines()] if path.exists() else []


def git(ws: Path, *args: str) -> str:
    return _git(ws, *args).stdout


# ------------------------------------------------------------------ 1. budgets (E4)


def test_total_usd_budget_stops_before_the_iteration_that_would_cross(cli_env, tmp_path):
    counter = tmp_path / "counter.txt"
    stage = f'run: [python, stage.py], env: {{USD: "0.30", TOKENS: "100", COUNTER: "{counter}"}}'
    spec = job(
        tmp_path,
        f"""
budgets: {{total_usd: 1.0}}
on_failure: {{action: retry, max_retries: 100}}
stages:
  - {{id: a, {stage}}}
  - {{id: b, {stage}}}
  - {{id: c, {stage}}}
quality_gates: {{required: [{NEVER}]}}
stop_conditions: {{max_iterations: 10}}
""",
        name="budget-usd",
    )
    job_id = load_spec(spec).job_id
    r = cli("run", str(spec), "--json", root=tmp_path, env=cli_env)
    assert r.returncode == 4, (r.stdout, r.stderr)
    outcome = json.loads(r.stdout)
    assert (outcome["status"], outcome["reason"], outcome["iterations"]) == ("STOPPED_BUDGET", "total_usd", 1)
    assert outcome["usd"] == pytest.approx(0.9)

    # Iteration 2 would cost 0.30 (the largest spend of its first stage) on top
    # of 0.90: 1.20 > 1.0, so it never started.
    stopped = events(tmp_path, job_id, "stopped_budget")
    assert len(stopped) == 1
    p = stopped[0].payload
    assert (p.reason, p.limit) == ("total_usd", 1.0)
    assert p.counters == {
        "usd_total": 0.9,
        "tokens_total": 300,
        "usd_last_hour": 0.9,
        "expected_usd": 0.3,
        "expected_tokens": 100,
    }
    assert counter_lines(counter) == ["a 1", "b 1", "c 1"]
    assert [e.payload.iteration for e in events(tmp_path, job_id, "iteration_started")] == [1]
    state = journal(tmp_path, job_id).state()
    assert (state.status, state.stop_reason, state.open_iteration) == ("STOPPED_BUDGET", "total_usd", None)
    assert state.usd_total <= 1.0 + 0.3
    # The stop comes after iteration 1 closed (checkpoint, iteration_finished).
    t = types(tmp_path, job_id)
    assert t.index("iteration_finished") < t.index("stopped_budget")

    # `longrun status` derives the same status from the journal.
    s = cli("status", job_id, "--json", root=tmp_path, env=cli_env)
    assert s.returncode == 0 and json.loads(s.stdout)["status"] == "STOPPED_BUDGET"


def test_budget_overshoot_is_bounded_by_one_stage_and_checked_before_each_stage(prefect_server, tmp_path):
    counter = tmp_path / "counter.txt"
    stage = f'run: [python, stage.py], env: {{USD: "0.30", COUNTER: "{counter}"}}'
    spec = job(
        tmp_path,
        f"""
budgets: {{total_usd: 0.5}}
stages:
  - {{id: a, {stage}}}
  - {{id: b, {stage}}}
  - {{id: c, {stage}}}
quality_gates: {{required: [{NEVER}]}}
""",
        name="overshoot",
    )
    out = run_flow(spec, tmp_path)
    job_id = out["job_id"]
    # a: 0 + 0 (no history) <= 0.5 runs; b: 0.3 + 0 (its first run) <= 0.5 runs
    # and crosses to 0.6; c: 0.6 >= 0.5 is refused mid-iteration.
    assert (out["status"], out["reason"]) == ("STOPPED_BUDGET", "total_usd")
    assert counter_lines(counter) == ["a 1", "b 1"]
    p = events(tmp_path, job_id, "stopped_budget")[0].payload
    assert p.limit == 0.5 and p.counters["usd_total"] == 0.6 and p.counters["expected_usd"] == 0.0
    assert p.counters["usd_total"] <= p.limit + 0.3  # at most one stage's spend over
    state = journal(tmp_path, job_id).state()
    assert state.open_iteration == 1 and state.stage_done(1, "b") and not state.stage_done(1, "c")

    # A rerun with the same budget refuses again before any stage: nothing more is spent.
    again = run_flow(spec, tmp_path)
    assert again["status"] == "STOPPED_BUDGET" and again["usd"] == pytest.approx(0.6)
    assert counter_lines(counter) == ["a 1", "b 1"]
    assert len(events(tmp_path, job_id, "stopped_budget")) == 2


def test_tokens_budget_uses_the_expected_spend_of_the_next_stage(prefect_server, tmp_path):
    counter = tmp_path / "counter.txt"
    stage = f'run: [python, stage.py], env: {{TOKENS: "300", COUNTER: "{counter}"}}'
    spec = job(
        tmp_path,
        f"""
budgets: {{tokens: 1000, total_usd: 100}}
stages:
  - {{id: a, {stage}}}
  - {{id: b, {stage}}}
quality_gates: {{required: [{NEVER}]}}
""",
        name="budget-tokens",
    )
    out = run_flow(spec, tmp_path)
    # Iteration 1: 600. Iteration 2: a expects 300 -> 900 <= 1000 runs; b expects
    # 300 -> 1200 > 1000: stopped before b, never crossing the limit.
    assert (out["status"], out["reason"], out["tokens"]) == ("STOPPED_BUDGET", "tokens", 900)
    assert counter_lines(counter) == ["a 1", "b 1", "a 2"]
    p = events(tmp_path, out["job_id"], "stopped_budget")[0].payload
    assert (p.reason, p.limit) == ("tokens", 1000)
    assert p.counters["tokens_total"] == 900 and p.counters["expected_tokens"] == 300
    assert p.counters["usd_total"] == 0.0


def test_hourly_limit_with_wait_sleeps_until_the_window_has_room(prefect_server, tmp_path):
    """``on_hourly_limit: wait`` journals ``budget_wait`` and continues (clock and sleep injected)."""
    from prefect import flow

    from longrun.engine.loop import run_job
    from longrun.execution.runtime import JobRuntime
    from longrun.flows.job import session_for

    counter = tmp_path / "counter.txt"
    spec = job(
        tmp_path,
        f"""
budgets: {{per_hour_usd: 0.5, on_hourly_limit: wait}}
stages:
  - {{id: a, run: [python, stage.py], env: {{USD: "0.30", COUNTER: "{counter}"}}}}
quality_gates:
  required:
    - {{id: third, kind: command_pass, run: [python, -c, "import os, sys; sys.exit(int(os.environ['LONGRUN_ITERATION']) < 3)"]}}
""",
        name="hourly-wait",
    )
    loaded = load_spec(spec)
    offset = [0.0]
    slept: list[float] = []

    def clock() -> datetime:
        return datetime.now(UTC) + timedelta(seconds=offset[0])

    def nap(s: float) -> None:
        # Each nap lets two hours pass: the journal stamps real time, so the
        # injected clock must leave every journaled spend behind at once.
        slept.append(s)
        offset[0] += 2 * 3600

    class Clock:
        def now(self) -> datetime:
            return clock()

        def sleep(self, seconds: float) -> None:
            nap(seconds)

    @flow(name="hourly-wait-test", persist_result=False)
    def body() -> dict:
        from prefect.context import get_run_context

        rt = JobRuntime(loaded=loaded, root=tmp_path, run_id=str(get_run_context().flow_run.id))
        register(loaded, tmp_path)  # the job's first run, under the job's id (what choose_run opens)
        s = session_for(rt)
        s.ports.clock = Clock()
        return run_job(s, source=str(spec))

    out = body()
    assert out["status"] == "COMPLETED" and out["iterations"] == 3
    waits = events(tmp_path, loaded.job_id, "budget_wait")
    # Before iteration 2 the window held 0.30 and 0.30 more would exceed 0.50:
    # wait until iteration 1's spend leaves the window, 60 minutes after it was
    # journaled. (By iteration 3 the injected clock is two hours ahead of the
    # journal, so the window is empty again: one wait.)
    assert len(waits) == 1 and waits[0].payload.reason == "per_hour_usd"
    assert waits[0].payload.counters["usd_last_hour"] == 0.3 and waits[0].payload.counters["expected_usd"] == 0.3
    finished = events(tmp_path, loaded.job_id, "stage_finished")
    assert waits[0].payload.until == finished[0].ts + timedelta(minutes=60)
    assert slept == [1.0]  # naps of at most a second, checking the stop file in between
    t = types(tmp_path, loaded.job_id)
    assert t.index("budget_wait") < [i for i, x in enumerate(t) if x == "iteration_started"][1]
    assert counter_lines(counter) == ["a 1", "a 2", "a 3"]
    assert not events(tmp_path, loaded.job_id, "stopped_budget")


def test_budget_counters_survive_sigkill_and_resume(cli_env, prefect_server, background, tmp_path):
    def spec_in(root: Path, slept: Path) -> Path:
        counter = root / "counter.txt"
        env = f'USD: "0.30", TOKENS: "10", COUNTER: "{counter}"'
        return job(
            root,
            f"""
budgets: {{total_usd: 1.0}}
on_failure: {{action: retry, max_retries: 100}}
stages:
  - {{id: a, run: [python, stage.py], env: {{{env}}}}}
  - {{id: slow, run: [python, stage.py], env: {{{env}, SLEEP_ONCE: "{slept}"}}, timeout: 300}}
  - {{id: c, run: [python, stage.py], env: {{{env}}}}}
quality_gates: {{required: [{NEVER}]}}
""",
            name="budget-crash",
        )

    # The reference: the same job, uninterrupted (its marker exists, so nothing sleeps).
    ref_root = tmp_path / "reference"
    ref_root.mkdir()
    (ref_root / "slept").touch()
    ref = run_flow(spec_in(ref_root, ref_root / "slept"), ref_root)
    assert ref["status"] == "STOPPED_BUDGET"
    ref_stop = events(ref_root, ref["job_id"], "stopped_budget")[0].payload

    root = tmp_path / "crash"
    root.mkdir()
    slept, counter = root / "slept", root / "counter.txt"
    spec = spec_in(root, slept)
    job_id = load_spec(spec).job_id
    proc = background(root, cli_env, "run", str(spec))
    sigkill_engine_once(proc, slept, "stage 'slow'")
    orphan_pid = int([l for l in counter.read_text().splitlines() if l.startswith("slow 1")][0].split("pid=")[1])
    os.kill(orphan_pid, 0)  # still sleeping
    before = journal(root, job_id).state()
    assert before.status == "RUNNING" and before.usd_total == pytest.approx(0.3)  # a's spend is journaled

    r = cli("resume", job_id, "--json", root=root, env=cli_env)
    assert r.returncode == 4, (r.stdout, r.stderr)
    assert json.loads(r.stdout)["status"] == "STOPPED_BUDGET"
    with pytest.raises(ProcessLookupError):  # the orphan was killed before 'slow' ran again
        for _ in range(50):
            os.kill(orphan_pid, 0)
            time.sleep(0.1)

    # a's 0.30 from before the crash counts once; the killed attempt of 'slow'
    # reported 0.30 in its usage file but never finished, so only its rerun counts.
    state = journal(root, job_id).state()
    assert state.usd_total == pytest.approx(0.9) and state.tokens_total == 30
    finished = [(e.payload.iteration, e.payload.stage) for e in events(root, job_id, "stage_finished")]
    assert finished == [(1, "a"), (1, "slow"), (1, "c")]
    assert counter_lines(counter) == ["a 1", "slow 1", "slow 1", "c 1"]
    # Same stop point and counters as the uninterrupted run.
    stop = events(root, job_id, "stopped_budget")[0].payload
    assert (stop.reason, stop.limit, stop.counters) == (ref_stop.reason, ref_stop.limit, ref_stop.counters)
    assert state.iterations_finished == ref["iterations"] == 1


# ------------------------------------------------------------------ 3. failure policies (E6)


def test_retry_is_bounded_then_fails_with_retries_exhausted(prefect_server, tmp_path):
    counter = tmp_path / "counter.txt"
    spec = job(
        tmp_path,
        f"""
stages: [{{id: work, run: [python, stage.py], env: {{COUNTER: "{counter}"}}}}]
quality_gates:
  required:
    - {{id: never, kind: command_pass, run: [python, -c, "raise SystemExit(1)"], on_failure: {{action: retry, max_retries: 1}}}}
stop_conditions: {{max_iterations: 10}}
""",
        name="retry-bounded",
    )
    out = run_flow(spec, tmp_path)
    assert (out["status"], out["reason"], out["iterations"]) == ("FAILED", "gate_retries_exhausted", 2)
    failed = events(tmp_path, out["job_id"], "run_failed")
    assert len(failed) == 1 and failed[0].payload.code == "gate_retries_exhausted"
    assert "'never' failed 2 times" in failed[0].payload.message
    assert counter_lines(counter) == ["work 1", "work 2"]
    assert [e.payload.passed for e in events(tmp_path, out["job_id"], "gate_evaluated")] == [False, False]


def test_skip_policy_completes_with_gate_skipped(prefect_server, tmp_path):
    spec = job(
        tmp_path,
        f"""
stages: [{{id: work, run: [python, stage.py]}}]
quality_gates:
  required:
    - {ALWAYS}
    - {{id: flaky, kind: command_pass, run: [python, -c, "raise SystemExit(1)"], on_failure: {{action: skip}}}}
""",
        name="skip-policy",
    )
    out = run_flow(spec, tmp_path)
    assert (out["status"], out["iterations"]) == ("COMPLETED", 1)
    skipped = events(tmp_path, out["job_id"], "gate_skipped")
    assert [(e.payload.iteration, e.payload.gate) for e in skipped] == [(1, "flaky")]
    assert "skipped by policy" in skipped[0].payload.reason
    t = types(tmp_path, out["job_id"])
    assert t.index("gate_skipped") < t.index("run_completed")
    done = events(tmp_path, out["job_id"], "run_completed")[0].payload
    assert "1 skipped by policy" in done.reason
    assert events(tmp_path, out["job_id"], "iteration_finished")[0].payload.gates_passed is True


def test_abort_policy_fails_after_one_iteration(prefect_server, tmp_path):
    counter = tmp_path / "counter.txt"
    spec = job(
        tmp_path,
        f"""
stages: [{{id: work, run: [python, stage.py], env: {{COUNTER: "{counter}"}}}}]
on_failure: {{action: abort}}
quality_gates: {{required: [{NEVER}]}}
""",
        name="abort-policy",
    )
    out = run_flow(spec, tmp_path)
    assert (out["status"], out["reason"], out["iterations"]) == ("FAILED", "gate_failed", 1)
    failed = events(tmp_path, out["job_id"], "run_failed")[0].payload
    assert failed.code == "gate_failed" and "policy is abort" in failed.message
    assert counter_lines(counter) == ["work 1"]
    # The job-level policy applied; the failure is in the journal before the end.
    t = types(tmp_path, out["job_id"])
    assert t.index("checkpoint_written") < t.index("iteration_finished") < t.index("run_failed")


ESCALATE = """
stages: [{{id: work, run: [python, stage.py], env: {{COUNTER: "{counter}"}}}}]
quality_gates:
  required:
    - id: ready
      kind: command_pass
      run: [python, -c, "import os, sys; sys.exit(0 if os.path.exists(os.environ['GO']) else 1)"]
      env: {{GO: "{go}"}}
      on_failure: {{action: escalate, max_retries: {retries}}}
stop_conditions: {{max_iterations: 10}}
"""


def run_until_escalated(background, cli_env: dict, tmp_path: Path, name: str, retries: int):
    """Start an ESCALATE job in the background; return ``(counter, go, job_id, proc)`` once it waits on ``escalate:ready``."""
    counter, go = tmp_path / "counter.txt", tmp_path / "go"
    spec = job(tmp_path, ESCALATE.format(counter=counter, go=go, retries=retries), name=name)
    job_id = load_spec(spec).job_id
    proc = background(tmp_path, cli_env, "run", str(spec))
    wait_paused(journal(tmp_path, job_id), "escalate:ready", proc)
    return counter, go, job_id, proc


def test_escalate_pauses_for_a_human_and_cli_approval_continues(cli_env, background, tmp_path):
    counter, go, job_id, proc = run_until_escalated(background, cli_env, tmp_path, "escalate-policy", retries=1)
    # One automatic retry first (max_retries: 1), then the human.
    esc = events(tmp_path, job_id, "escalated")
    assert [(e.payload.iteration, e.payload.gate, e.payload.step) for e in esc] == [(2, "ready", "escalate:ready")]
    assert "1 retries used" in esc[0].payload.reason
    state = journal(tmp_path, job_id).state()
    assert (state.status, state.pending_approval) == ("WAITING_APPROVAL", "escalate:ready")
    assert counter_lines(counter) == ["work 1", "work 2"]

    # The wrong step is refused; the run keeps waiting.
    r = cli("approve", job_id, "--step", "escalate:other", "--approver", "alice", root=tmp_path, env=cli_env)
    assert r.returncode == 2 and r.stderr.startswith("approval_step_unknown")
    assert proc.poll() is None

    go.touch()  # the human fixes what the gate checks, then approves
    r = cli(
        "approve",
        job_id,
        "--step",
        "escalate:ready",
        "--approver",
        "alice",
        "--comment",
        "fixed the env",
        root=tmp_path,
        env=cli_env,
    )
    assert r.returncode == 0 and "resumed paused flow run" in r.stdout, (r.stdout, r.stderr)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert (json.loads(out)["status"], json.loads(out)["iterations"]) == ("COMPLETED", 3)
    approved = events(tmp_path, job_id, "approved")
    assert [(e.payload.step, e.payload.iteration, e.payload.approver, e.payload.comment) for e in approved] == [
        ("escalate:ready", 2, "alice", "fixed the env")
    ]
    assert counter_lines(counter) == ["work 1", "work 2", "work 3"]
    t = types(tmp_path, job_id)
    assert t.index("escalated") < t.index("approved") < t.index("run_completed")


def test_an_approvals_entry_sets_the_escalation_wait(cli_env, tmp_path):
    """`approvals: [{escalate: ready, timeout: 2}]`: the escalation waits 2 s, not the default hour."""
    counter, go = tmp_path / "counter.txt", tmp_path / "go"
    body = ESCALATE.format(counter=counter, go=go, retries=0) + "approvals: [{escalate: ready, timeout: 2, poll_interval: 1}]\n"
    spec = job(tmp_path, body, name="escalate-timeout")
    job_id = load_spec(spec).job_id
    r = cli("run", str(spec), "--json", root=tmp_path, env=cli_env)
    assert r.returncode == 6, r.stdout + r.stderr
    assert json.loads(r.stdout)["status"] == "WAITING_APPROVAL"
    (timed_out,) = events(tmp_path, job_id, "approval_timeout")
    assert (timed_out.payload.step, timed_out.payload.timeout_s) == ("escalate:ready", 2)
    assert counter_lines(counter) == ["work 1"]  # no checkpoint of its own: the stage ran first
    assert [e.type for e in events(tmp_path, job_id) if e.type in ("escalated", "approval_requested")][0] == "escalated"


def test_escalation_rejected_ends_the_job(cli_env, background, tmp_path):
    counter, go, job_id, proc = run_until_escalated(background, cli_env, tmp_path, "escalate-reject", retries=0)
    assert [e.payload.iteration for e in events(tmp_path, job_id, "escalated")] == [1]  # max_retries 0: at once
    r = cli("approve", job_id, "--step", "escalate:ready", "--approver", "carol", "--reject", root=tmp_path, env=cli_env)
    assert r.returncode == 0, r.stderr
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 5, err
    assert json.loads(out)["status"] == "REJECTED"
    n = len(events(tmp_path, job_id))
    assert resume_flow(tmp_path, job_id)["status"] == "REJECTED" and len(events(tmp_path, job_id)) == n
    assert counter_lines(counter) == ["work 1"]
    assert [(e.payload.step, e.payload.approver) for e in events(tmp_path, job_id, "rejected")] == [("escalate:ready", "carol")]


APPROVE_LOST_BUG = (
    "longrun/cli.py cmd_approve/_resume_paused: when the job's paused flow run has lost its process (engine "
    "SIGKILLed while waiting), Prefect still shows the run PAUSED and accepts resume_flow_run, so `longrun approve` "
    "prints 'resumed paused flow run' and journals nothing (only the dead flow would have journaled the decision): "
    "the approval is lost and `longrun resume` keeps exiting 6"
)


def test_escalation_approved_while_the_engine_was_down_is_honoured(cli_env, background, tmp_path):
    """The engine dies while paused; the human approves with the CLI, then resumes the job."""
    counter, go, job_id, proc = run_until_escalated(background, cli_env, tmp_path, "escalate-crash", retries=1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    go.touch()
    r = cli("approve", job_id, "--step", "escalate:ready", "--approver", "dave", root=tmp_path, env=cli_env)
    assert r.returncode == 0, r.stderr
    assert "escalate:ready" in journal(tmp_path, job_id).state().approvals, (
        "the decision was not journaled: " + r.stdout + r.stderr
    )
    r = cli("resume", job_id, "--json", root=tmp_path, env=cli_env)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert json.loads(r.stdout)["status"] == "COMPLETED"
    assert counter_lines(counter) == ["work 1", "work 2", "work 3"]
    assert len(events(tmp_path, job_id, "escalated")) == 1


def test_retry_counts_survive_a_stop_and_resume(prefect_server, tmp_path):
    counter = tmp_path / "counter.txt"
    jobs_dir = tmp_path / ".maestro" / "jobs"
    spec = job(
        tmp_path,
        f"""
stages:
  - id: work
    run: [python, stage.py]
    env: {{COUNTER: "{counter}", STOP_JOBS: "{jobs_dir}", STOP_AT: "2"}}
quality_gates:
  required:
    - {{id: never, kind: command_pass, run: [python, -c, "raise SystemExit(1)"], on_failure: {{action: retry, max_retries: 2}}}}
stop_conditions: {{max_iterations: 10}}
""",
        name="retry-restart",
    )
    out = run_flow(spec, tmp_path)
    job_id = out["job_id"]
    # The stage of iteration 2 asked the job to stop: it stopped before the gates.
    assert (out["status"], out["reason"]) == ("STOPPED", "stop_file")
    state = journal(tmp_path, job_id).state()
    assert state.open_iteration == 2 and not state.gate_done(2, "never")
    assert len(events(tmp_path, job_id, "gate_evaluated")) == 1

    JobPaths(tmp_path, job_id).job_stop_file.unlink()  # what `longrun resume` does
    out = run_flow(spec, tmp_path)
    # Failures 1 (first run) + 2 and 3 (second run) > 1 + max_retries: exhausted
    # after exactly 3 evaluations, not 3 more in the new run.
    assert (out["status"], out["reason"], out["iterations"]) == ("FAILED", "gate_retries_exhausted", 3)
    assert [(e.payload.iteration, e.payload.passed) for e in events(tmp_path, job_id, "gate_evaluated")] == [
        (1, False),
        (2, False),
        (3, False),
    ]
    assert "failed 3 times" in events(tmp_path, job_id, "run_failed")[0].payload.message
    assert counter_lines(counter) == ["work 1", "work 2", "work 3"]
    assert len(events(tmp_path, job_id, "run_started")) == 2


# ------------------------------------------------------------------ 4. approval gates (G1, G3)


def test_resumed_escalation_is_not_escalated_again(cli_env, background, tmp_path):
    counter, go, job_id, proc = run_until_escalated(background, cli_env, tmp_path, "escalate-resume", retries=0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    go.touch()
    # Decide with the CLI until the decision is journaled (see APPROVE_LOST_BUG: the first
    # attempt may only resume the orphaned Prefect flow run).
    for _ in range(2):
        if "escalate:ready" not in journal(tmp_path, job_id).state().approvals:
            assert (
                cli("approve", job_id, "--step", "escalate:ready", "--approver", "erin", root=tmp_path, env=cli_env).returncode
                == 0
            )
    assert journal(tmp_path, job_id).state().approvals["escalate:ready"].iteration == 1
    r = cli("resume", job_id, "--json", root=tmp_path, env=cli_env)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert (json.loads(r.stdout)["status"], json.loads(r.stdout)["iterations"]) == ("COMPLETED", 2)
    assert counter_lines(counter) == ["work 1", "work 2"]
    evs = events(tmp_path, job_id)
    assert [e.payload.iteration for e in evs if e.type == "escalated"] == [1]
    # While iteration 2 ran, the job was RUNNING, not WAITING_APPROVAL.
    from longrun.journal.fold import replay

    upto = [e for e in evs][: [i for i, e in enumerate(evs) if e.type == "iteration_started"][1] + 1]
    assert replay(upto).status == "RUNNING"


def approval_gate_job(tmp_path: Path, counter: Path, name: str, approvals: str = "") -> Path:
    return job(
        tmp_path,
        f"""
stages: [{{id: work, run: [python, stage.py], env: {{COUNTER: "{counter}"}}}}]
quality_gates:
  required:
    - {ALWAYS}
    - {{id: release, kind: approval, step: release}}
{approvals}
""",
        name=name,
    )


#: How long the approval gate's pause lasts (its step's entry in ``approvals``).
SHORT_WAIT = "approvals: [{after: gates, step: release, timeout: 1, poll_interval: 1}]"


def test_approval_gate_pauses_until_approved_by_cli(cli_env, background, tmp_path):
    counter = tmp_path / "counter.txt"
    spec = approval_gate_job(tmp_path, counter, "approval-live")
    job_id = load_spec(spec).job_id
    proc = background(tmp_path, cli_env, "run", str(spec))
    req = wait_paused(journal(tmp_path, job_id), "release", proc)
    assert req.payload.iteration == 1
    gates = {e.payload.gate: e.payload for e in events(tmp_path, job_id, "gate_evaluated")}
    assert gates["ok"].passed is True and gates["release"].passed is False
    assert gates["release"].evidence["step"] == "release"
    assert journal(tmp_path, job_id).state().status == "WAITING_APPROVAL"

    r = cli("approve", job_id, "--step", "release", "--approver", "bob", root=tmp_path, env=cli_env)
    assert r.returncode == 0 and "resumed paused flow run" in r.stdout, (r.stdout, r.stderr)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert (json.loads(out)["status"], json.loads(out)["iterations"]) == ("COMPLETED", 1)
    assert counter_lines(counter) == ["work 1"]
    assert [(e.payload.step, e.payload.approver) for e in events(tmp_path, job_id, "approved")] == [("release", "bob")]


def test_approval_gate_timeout_then_approve_and_resume_without_another_iteration(cli_env, tmp_path):
    counter = tmp_path / "counter.txt"
    spec = approval_gate_job(tmp_path, counter, "approval-gate", SHORT_WAIT)
    job_id = load_spec(spec).job_id
    r = cli("run", str(spec), "--json", root=tmp_path, env=cli_env)
    assert r.returncode == 6, (r.stdout, r.stderr)
    assert (json.loads(r.stdout)["status"], json.loads(r.stdout)["reason"]) == ("WAITING_APPROVAL", "release")
    assert [(e.payload.step, e.payload.iteration) for e in events(tmp_path, job_id, "approval_requested")] == [("release", 1)]
    assert [e.payload.step for e in events(tmp_path, job_id, "approval_timeout")] == ["release"]

    n = len(events(tmp_path, job_id))
    assert resume_flow(tmp_path, job_id)["status"] == "WAITING_APPROVAL"  # nothing decided: nothing runs
    assert counter_lines(counter) == ["work 1"] and len(events(tmp_path, job_id)) == n

    r = cli("approve", job_id, "--step", "release", "--approver", "bob", root=tmp_path, env=cli_env)
    assert r.returncode == 0 and "approved step 'release'" in r.stdout, (r.stdout, r.stderr)
    assert [(e.payload.step, e.payload.approver) for e in events(tmp_path, job_id, "approved")] == [("release", "bob")]
    r = cli("resume", job_id, "--json", root=tmp_path, env=cli_env)
    assert r.returncode == 0, (r.stdout, r.stderr)
    out = json.loads(r.stdout)
    assert (out["status"], out["iterations"]) == ("COMPLETED", 1)
    assert counter_lines(counter) == ["work 1"]  # no stage ran again
    assert [e.payload.iteration for e in events(tmp_path, job_id, "iteration_started")] == [1]
    assert len(events(tmp_path, job_id, "approval_requested")) == 1  # not asked again
    t = types(tmp_path, job_id)
    assert t.index("approved") < t.index("run_completed")


def test_approval_gate_rejected_ends_the_job(cli_env, tmp_path):
    counter = tmp_path / "counter.txt"
    spec = approval_gate_job(tmp_path, counter, "approval-reject", SHORT_WAIT)
    out = run_flow(spec, tmp_path)  # in-process: the pause times out after a second
    job_id = out["job_id"]
    assert (out["status"], out["reason"]) == ("WAITING_APPROVAL", "release")
    r = cli(
        "approve",
        job_id,
        "--step",
        "release",
        "--approver",
        "bob",
        "--reject",
        "--comment",
        "not now",
        root=tmp_path,
        env=cli_env,
    )
    assert r.returncode == 0
    state = journal(tmp_path, job_id).state()
    assert (state.status, state.stop_reason) == ("REJECTED", "release")
    n = len(events(tmp_path, job_id))

    r = cli("resume", job_id, "--json", root=tmp_path, env=cli_env)
    assert r.returncode == 5, (r.stdout, r.stderr)
    assert json.loads(r.stdout)["status"] == "REJECTED"
    assert counter_lines(counter) == ["work 1"]
    # Nothing ran; the only event is the bundle that now records the rejection (it was behind it).
    assert [e.type for e in events(tmp_path, job_id)[n:]] == ["evidence_built"]
    rejected = events(tmp_path, job_id, "rejected")[0].payload
    assert (rejected.approver, rejected.comment) == ("bob", "not now")


GATE_INPUT_BUG = (
    "flows/job.py gate_task(rt, name, iteration, gate, changed) builds GateInput(changed_paths=changed) from its "
    "5th argument, but _loop passes it a whole GateInput(changed_paths=..., out_of_scope=...): the gate sees "
    "changed_paths=<GateInput> and out_of_scope=()"
)
SCOPE_BUG = GATE_INPUT_BUG + ", so the scope gate always passes even when stage_finished reports out_of_scope paths"
FILE_CHANGED_BUG = GATE_INPUT_BUG + (
    ", so every file_changed gate raises TypeError: 'GateInput' object is not iterable and the run ends run_crashed"
)


def test_changes_outside_scope_fail_the_scope_gate_and_abort(prefect_server, tmp_path):
    spec = job(
        tmp_path,
        f"""
scope_paths: [src]
stages:
  - {{id: edit, run: [python, stage.py], env: {{WRITE: "src/app.py=in scope;README.md=tracked, outside;notes.txt=untracked, outside"}}}}
  - {{id: tidy, run: [python, stage.py], env: {{WRITE: "tmp/scratch.txt=gone soon", DELETE: "tmp/scratch.txt"}}}}
quality_gates: {{required: [{ALWAYS}]}}
stop_conditions: {{max_iterations: 5}}
""",
        name="scope-out",
        files={"src/app.py": "x = 1\n"},
    )
    out = run_flow(spec, tmp_path)
    job_id = out["job_id"]
    assert (out["status"], out["reason"], out["iterations"]) == ("FAILED", "gate_failed", 1)
    gates = {e.payload.gate: e.payload for e in events(tmp_path, job_id, "gate_evaluated")}
    assert gates["ok"].passed is True
    scope = gates["scope"]
    assert (scope.kind, scope.required, scope.passed) == ("scope", True, False)
    assert scope.evidence["scope_paths"] == ("src",)  # payload records are frozen: lists read back as tuples
    assert scope.evidence["matched"] == ("README.md", "notes.txt")
    finished = {e.payload.stage: e.payload for e in events(tmp_path, job_id, "stage_finished")}
    assert finished["edit"].out_of_scope == ("README.md", "notes.txt")
    assert "gate 'scope'" in events(tmp_path, job_id, "run_failed")[0].payload.message


def test_scope_catches_a_change_made_and_reverted_within_the_iteration(prefect_server, tmp_path):
    spec = job(
        tmp_path,
        f"""
scope_paths: [src]
stages:
  - {{id: mess, run: [python, stage.py], env: {{WRITE: "scratch.txt=outside for a moment"}}}}
  - {{id: tidy, run: [python, stage.py], env: {{DELETE: "scratch.txt"}}}}
quality_gates: {{required: [{ALWAYS}]}}
""",
        name="scope-reverted",
    )
    out = run_flow(spec, tmp_path)
    assert (out["status"], out["reason"]) == ("FAILED", "gate_failed")
    assert not (tmp_path / "ws" / "scratch.txt").exists()
    scope = {e.payload.gate: e.payload for e in events(tmp_path, out["job_id"], "gate_evaluated")}["scope"]
    assert scope.passed is False and scope.evidence["matched"] == ("scratch.txt",)


def test_changes_inside_scope_pass_the_scope_gate(prefect_server, tmp_path):
    spec = job(
        tmp_path,
        f"""
scope_paths: [src, tests]
stages:
  - {{id: edit, run: [python, stage.py], env: {{WRITE: "src/app.py=more;src/pkg/new.py=x = 2;tests/test_new.py=pass"}}}}
quality_gates: {{required: [{ALWAYS}]}}
""",
        name="scope-in",
        files={"src/app.py": "x = 1\n"},
    )
    out = run_flow(spec, tmp_path)
    assert (out["status"], out["iterations"]) == ("COMPLETED", 1)
    gates = {e.payload.gate: e.payload for e in events(tmp_path, out["job_id"], "gate_evaluated")}
    assert set(gates) == {"ok", "scope"}
    assert gates["scope"].passed is True and gates["scope"].evidence == {"scope_paths": ("src", "tests"), "matched": ()}
    finished = events(tmp_path, out["job_id"], "stage_finished")[0].payload
    assert finished.out_of_scope is None
    patch = (JobPaths(tmp_path, out["job_id"]).iteration_dir(1) / "patch.diff").read_text()
    assert "src/pkg/new.py" in patch and "tests/test_new.py" in patch


def test_file_changed_gate_in_a_flow(prefect_server, tmp_path):
    spec = job(
        tmp_path,
        """
stages:
  - {id: edit, run: [python, stage.py], env: {WRITE: "src/app.py=more;docs/notes.md=n"}}
quality_gates:
  required:
    - {id: touched, kind: file_changed, pattern: "src/*"}
""",
        name="file-changed",
        files={"src/app.py": "x = 1\n"},
    )
    out = run_flow(spec, tmp_path)
    assert (out["status"], out["iterations"]) == ("COMPLETED", 1)
    touched = events(tmp_path, out["job_id"], "gate_evaluated")[0].payload
    assert touched.passed is True and touched.evidence == {"pattern": "src/*", "matched": ("src/app.py",)}


# ------------------------------------------------------------------ 6. path escapes (G4)


def _refused(r: subprocess.CompletedProcess, code: str, *needles: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith(code), r.stderr
    for n in needles:
        assert n in r.stderr, (n, r.stderr)


def test_path_escapes_are_refused_before_anything_runs(cli_env, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    marker = tmp_path / "ran"
    stage = f'stages: [{{id: work, run: [python, stage.py], env: {{COUNTER: "{marker}"}}}}]'

    spec = job(root, stage, name="ws-dotdot", workspace="{path: ../escape, template: template}")
    _refused(cli("run", str(spec), root=root, env=cli_env), "job_invalid_spec", "workspace.path", "'..'")

    spec = job(root, f"scope_paths: [/etc]\n{stage}", name="scope-abs")
    _refused(cli("run", str(spec), root=root, env=cli_env), "job_invalid_spec", "scope_paths[0]", "absolute")

    spec = job(root, f"stop_conditions: {{stop_file: ../x}}\n{stage}", name="stop-dotdot")
    _refused(cli("run", str(spec), root=root, env=cli_env), "job_invalid_spec", "stop_conditions.stop_file")

    spec = job(
        root,
        f"quality_gates: {{required: [{{id: a, kind: artifact_exists, path: ../../etc/passwd}}]}}\n{stage}",
        name="artifact-dotdot",
    )
    _refused(cli("run", str(spec), root=root, env=cli_env), "job_invalid_spec", "quality_gates.required[0].path")

    # plan_file through a symlink in an existing workspace that points outside it.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    gitutil.init_from_template(root / "template", root / "ws")
    (root / "ws" / "plans").symlink_to(outside, target_is_directory=True)
    spec = job(root, f"plan_file: plans/PLAN.md\n{stage}", name="plan-symlink")
    r = cli("run", str(spec), "--json", root=root, env=cli_env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    err = json.loads(r.stdout)["error"]
    assert err["code"] == "path_escape" and "plan_file" in err["message"] and str(outside) in err["message"]

    # The workspace itself a symlink out of the root.
    spec = job(root, stage, name="ws-symlink", workspace="{path: linked}")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    _refused(cli("run", str(spec), root=root, env=cli_env), "path_escape", "workspace.path")

    # Nothing ran and no job was registered.
    assert not marker.exists() and not (tmp_path / "escape").exists()
    assert not (root / ".maestro" / "jobs").exists() or not any((root / ".maestro" / "jobs").iterdir())
    assert list(outside.iterdir()) == []


def test_plan_file_symlink_from_the_template_is_refused_before_any_stage(cli_env, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    marker, outside = tmp_path / "ran", tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "PLAN.md").write_text("secret plan outside the workspace\n")
    spec = job(
        root,
        f"""
plan_file: plans/PLAN.md
stages: [{{id: work, run: [python, stage.py], env: {{COUNTER: "{marker}"}}}}]
quality_gates: {{required: [{ALWAYS}]}}
""",
        name="template-symlink",
    )
    (root / "template" / "plans").symlink_to(outside, target_is_directory=True)
    r = cli("run", str(spec), "--json", root=root, env=cli_env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "path_escape" in r.stdout
    assert not marker.exists(), "a stage ran in a workspace whose plan_file escapes it"


# ------------------------------------------------------------------ 7. worktree isolation (E7)

EDIT = """
import os, pathlib
it = os.environ["LONGRUN_ITERATION"]
main = pathlib.Path(os.environ["MAIN"])
with open(os.environ["SEEN"], "a") as f:   # what the main tree looks like while the job runs
    f.write(f"{it} cwd={os.getcwd()} main_app={(main / 'src' / 'app.py').read_text()!r} "
            f"main_new={sorted(p.name for p in (main / 'src').iterdir())}\\n")
with open("src/app.py", "a") as f:
    f.write(f"# iteration {it}\\n")
pathlib.Path(f"src/new_{it}.py").write_text(f"N = {it}\\n")
"""


def test_worktree_isolation_patches_and_apply(cli_env, prefect_server, tmp_path):
    seen = tmp_path / "seen.txt"
    ws = tmp_path / "ws"
    body = f"""
isolation: worktree
stages: [{{id: edit, run: [python, edit.py], env: {{MAIN: "{ws}", SEEN: "{seen}"}}}}]
quality_gates:
  required:
    - {{id: second, kind: command_pass, run: [python, -c, "import os, sys; sys.exit(int(os.environ['LONGRUN_ITERATION']) < 2)"]}}
"""
    spec = job(tmp_path, body, name="isolated", files={"edit.py": EDIT, "src/app.py": "value = 1\n"})
    out = run_flow(spec, tmp_path)
    job_id = out["job_id"]
    assert (out["status"], out["iterations"]) == ("COMPLETED", 2)
    wt = tmp_path / ".maestro" / "worktrees" / job_id

    # Stages ran in the worktree and never saw a change in the main tree.
    lines = seen.read_text().splitlines()
    assert len(lines) == 2
    for line in lines:
        assert f"cwd={wt.resolve()}" in line
        assert "main_app='value = 1\\n'" in line and "main_new=['app.py']" in line
    # The main tree is unchanged after the run: one commit, clean, original file.
    assert (ws / "src" / "app.py").read_text() == "value = 1\n"
    assert not (ws / "src" / "new_1.py").exists()
    assert git(ws, "status", "--porcelain") == ""
    base = git(ws, "rev-parse", "HEAD").strip()
    assert len(git(ws, "log", "--format=%H").split()) == 1
    # The worktree is gone; its patches are exported, one per iteration.
    assert not wt.exists()
    assert [l for l in git(ws, "worktree", "list", "--porcelain").splitlines() if l.startswith("worktree ")] == [
        f"worktree {ws.resolve()}"
    ]
    patches = sorted((JobPaths(tmp_path, job_id).checkpoints / "patches").glob("*.patch"))
    assert [p.name[:5] for p in patches] == ["0001-", "0002-"]
    assert f"Subject: [PATCH 1/2] longrun {job_id}: iteration 1" in patches[0].read_text()
    assert "+N = 2" in patches[1].read_text()
    # The journaled per-iteration patch shows the iteration's change.
    it2 = (JobPaths(tmp_path, job_id).iteration_dir(2) / "patch.diff").read_text()
    assert "+# iteration 2" in it2 and "new_2.py" in it2 and "new_1.py" not in it2

    # A dirty main tree: apply refuses and leaves everything as it was.
    (ws / "README.md").write_text("local edit\n")
    r = cli("apply", job_id, root=tmp_path, env=cli_env)
    assert r.returncode == 2 and r.stderr.startswith("workspace_dirty"), r.stderr
    assert git(ws, "rev-parse", "HEAD").strip() == base and (ws / "README.md").read_text() == "local edit\n"

    # ... and a new isolated job refuses to start from it (nothing registered, nothing run).
    seen2 = tmp_path / "seen2.txt"
    spec2 = job(
        tmp_path, body.replace(str(seen), str(seen2)), name="isolated-two", files={"edit.py": EDIT, "src/app.py": "value = 1\n"}
    )
    r = cli("run", str(spec2), root=tmp_path, env=cli_env)
    assert r.returncode == 2 and r.stderr.startswith("workspace_dirty"), r.stderr
    assert not seen2.exists() and not JobPaths(tmp_path, load_spec(spec2).job_id).job_dir.exists()

    # Clean again: apply goes through git am; the main tree gets the commits.
    git(ws, "checkout", "--", "README.md")
    r = cli("apply", job_id, "--json", root=tmp_path, env=cli_env)
    assert r.returncode == 0, r.stderr
    applied = json.loads(r.stdout)
    assert len(applied["patches"]) == 2 and applied["head"] == git(ws, "rev-parse", "HEAD").strip()
    log = git(ws, "log", "--format=%s").splitlines()
    assert log == [f"longrun {job_id}: iteration 2", f"longrun {job_id}: iteration 1", "longrun: initial workspace"]
    assert (ws / "src" / "app.py").read_text() == "value = 1\n# iteration 1\n# iteration 2\n"
    assert (ws / "src" / "new_2.py").read_text() == "N = 2\n"
    assert git(ws, "status", "--porcelain") == ""
    assert git(ws, "branch", "--list", f"longrun/{job_id}") == ""
    (done,) = events(tmp_path, job_id, "patches_applied")
    assert (done.payload.head, done.payload.patches, done.payload.repo) == (applied["head"], tuple(applied["patches"]), str(ws))

    # Applying again changes nothing and says so (git am alone would report success again).
    r = cli("apply", job_id, "--json", root=tmp_path, env=cli_env)
    assert r.returncode == 0, r.stderr
    again = json.loads(r.stdout)
    assert again["already_applied"] is True and again["head"] == applied["head"]
    assert git(ws, "log", "--format=%s").splitlines() == log
    assert len(events(tmp_path, job_id, "patches_applied")) == 1
    status = json.loads(cli("status", job_id, "--json", root=tmp_path, env=cli_env).stdout)
    assert status["patches_applied"]["head"] == applied["head"]
    assert "already applied" in cli("apply", job_id, root=tmp_path, env=cli_env).stdout


def test_worktree_flow_refuses_a_dirty_tree_without_running(prefect_server, tmp_path):
    seen = tmp_path / "seen.txt"
    spec = job(
        tmp_path,
        f"""
isolation: worktree
stages: [{{id: edit, run: [python, edit.py], env: {{MAIN: "{tmp_path / "ws"}", SEEN: "{seen}"}}}}]
quality_gates: {{required: [{ALWAYS}]}}
""",
        name="isolated-dirty",
        files={"edit.py": EDIT, "src/app.py": "value = 1\n"},
    )
    gitutil.init_from_template(tmp_path / "template", tmp_path / "ws")
    (tmp_path / "ws" / "untracked.txt").write_text("not committed\n")
    state = run_flow(spec, tmp_path, return_state=True)
    assert state.is_failed() and state.message.startswith("workspace_dirty")
    job_id = load_spec(spec).job_id
    assert events(tmp_path, job_id, "run_failed")[0].payload.code == "workspace_dirty"
    assert not seen.exists() and not events(tmp_path, job_id, "stage_started")
    assert not (tmp_path / ".maestro" / "worktrees" / job_id).exists()


# ------------------------------------------------------------------ 8. strict mode and waivers (G2)


def _waiver(root: Path, doc) -> Path:
    path = root / ".maestro" / "waivers" / "longrun.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def _verify_has_strict() -> bool:
    r = subprocess.run([sys.executable, "-m", "longrun.cli.main", "verify", "--help"], capture_output=True, text=True)
    return "--strict" in r.stdout


def test_strict_job_completes_and_the_contract_is_checked(prefect_server, cli_env, tmp_path):
    try:
        from longrun.governance.waiver import strict_report
    except ImportError:  # older layout: the flow module held it
        from longrun.flows.job import strict_report

    spec = job(
        tmp_path,
        f"""
mode: strict
stages: [{{id: work, run: [python, stage.py], env: {{WRITE: "out.txt=result"}}}}]
quality_gates: {{required: [{ALWAYS}]}}
""",
        name="strict-ok",
    )
    out = run_flow(spec, tmp_path)
    job_id = out["job_id"]
    assert out["status"] == "COMPLETED"
    assert "run_failed" not in types(tmp_path, job_id)
    assert "evidence_built" in types(tmp_path, job_id)
    loaded = load_spec(spec)

    def report(now: datetime | None = None):
        state = journal(tmp_path, job_id).state()
        return strict_report(tmp_path, job_id, state, loaded.spec, now or datetime.now(UTC))

    r = report()
    assert (r.ok, r.waived, r.problems) == (True, False, [])

    # Tamper with a checkpoint file: the contract names it.
    summary = JobPaths(tmp_path, job_id).iteration_dir(1) / "summary.md"
    summary.write_text(summary.read_text() + "\nall good, trust me\n")
    r = report()
    assert r.ok is False and r.waiver is None
    assert any("iteration 1: summary.md sha256" in p for p in r.problems), r.problems
    assert any(p.startswith("evidence: ") and "summary.md" in p for p in r.problems), r.problems
    assert not any("waiver" in p for p in r.problems)  # no waiver: a plain failure

    if _verify_has_strict():
        v = cli("verify", job_id, "--strict", root=tmp_path, env=cli_env)
        assert v.returncode != 0 and "summary.md" in v.stdout + v.stderr

    future = (datetime.now(UTC) + timedelta(days=7)).isoformat()
    _waiver(
        tmp_path, {"reason": "hotfix; evidence rebuilt after release", "expires_at": future, "approved_by": "release-captain"}
    )
    r = report()
    assert r.ok is True and r.waived is True and r.waiver.approved_by == "release-captain"
    assert any("summary.md" in p for p in r.problems)  # the problems are still listed
    assert r.to_dict()["waiver"]["reason"].startswith("hotfix")
    if _verify_has_strict():
        assert cli("verify", job_id, "--strict", root=tmp_path, env=cli_env).returncode == 0

    # Expired (at the moment of the check): reported, never ok.
    r = report(now=datetime.now(UTC) + timedelta(days=8))
    assert r.ok is False and any(p.startswith("waiver_expired: ") for p in r.problems), r.problems

    _waiver(tmp_path, {"reason": "x", "expires_at": future})
    r = report()
    assert r.ok is False
    assert any(p.startswith("waiver_invalid: ") and "approved_by: field required" in p for p in r.problems), r.problems

    _waiver(tmp_path, "{not json")
    r = report()
    assert r.ok is False and any(p.startswith("waiver_invalid: ") and "not a readable JSON" in p for p in r.problems)

    _waiver(tmp_path, {"reason": "x", "expires_at": "2099-01-01T00:00:00", "approved_by": "a"})
    r = report()
    assert r.ok is False and any("waiver_invalid" in p and "no time zone" in p for p in r.problems)


def test_strict_mode_fails_a_completion_that_skipped_a_required_gate(prefect_server, tmp_path):
    body = f"""
mode: strict
stages: [{{id: work, run: [python, stage.py]}}]
quality_gates:
  required:
    - {ALWAYS}
    - {{id: lint, kind: command_pass, run: [python, -c, "raise SystemExit(1)"], on_failure: {{action: skip}}}}
"""
    spec = job(tmp_path, body, name="strict-skip")
    out = run_flow(spec, tmp_path)
    job_id = out["job_id"]
    assert (out["status"], out["reason"]) == ("FAILED", "strict_contract_failed")
    t = types(tmp_path, job_id)
    assert t.index("gate_skipped") < t.index("run_completed") < t.index("run_failed")
    failed = events(tmp_path, job_id, "run_failed")[0].payload
    assert failed.code == "strict_contract_failed"
    assert "required gate 'lint' was skipped by policy, not passed" in failed.message

    # The same job under a valid waiver completes (in another root, so it runs afresh).
    other = tmp_path / "waived"
    other.mkdir()
    spec2 = job(other, body, name="strict-skip")
    _waiver(other, {"reason": "lint is being replaced", "expires_at": "2099-01-01T00:00:00Z", "approved_by": "qa-lead"})
    out2 = run_flow(spec2, other)
    assert out2["status"] == "COMPLETED"
    assert "run_failed" not in types(other, out2["job_id"])


def test_advisory_mode_does_not_check_the_contract(prefect_server, tmp_path):
    spec = job(
        tmp_path,
        f"""
stages: [{{id: work, run: [python, stage.py]}}]
quality_gates:
  required:
    - {ALWAYS}
    - {{id: lint, kind: command_pass, run: [python, -c, "raise SystemExit(1)"], on_failure: {{action: skip}}}}
""",
        name="advisory-skip",
    )
    out = run_flow(spec, tmp_path)
    assert out["status"] == "COMPLETED" and "run_failed" not in types(tmp_path, out["job_id"])


# ------------------------------------------------------------------ 9. lineage (S4)

CHILD = """
name: child-job
goal: spend on behalf of the root
workspace: {{path: ws}}
allowed_tools: [python]
model_policy: {{default: m}}
sandbox: none
stages:
  - {{id: spend, run: [python, stage.py], env: {{USD: "{usd}", COUNTER: "{counter}"{extra}}}}}
quality_gates:
  required:
    - {{id: ok, kind: command_pass, run: [python, -c, "pass"]}}
"""


def test_spawned_child_is_registered_with_lineage_and_spends_against_the_root(cli_env, prefect_server, tmp_path):
    counter, jobs_dir = tmp_path / "counter.txt", tmp_path / ".maestro" / "jobs"
    child_file = tmp_path / "child.yaml"
    child_file.write_text(CHILD.format(usd="0.50", counter=counter, extra=""))
    spec = job(
        tmp_path,
        f"""
budgets: {{total_usd: 1.0}}
on_failure: {{action: retry, max_retries: 50}}
stages:
  - {{id: spawn, run: [python, stage.py], env: {{SPAWN: "{child_file}", COUNTER: "{counter}"}}}}
  - {{id: spend, run: [python, stage.py], env: {{USD: "0.20", COUNTER: "{counter}", STOP_JOBS: "{jobs_dir}", STOP_AT: "1"}}}}
quality_gates: {{required: [{NEVER}]}}
stop_conditions: {{max_iterations: 20}}
""",
        name="root-job",
    )
    out = run_flow(spec, tmp_path)
    root_id = out["job_id"]
    assert (out["status"], out["reason"]) == ("STOPPED", "stop_file")  # paused so the child can run
    spawned = events(tmp_path, root_id, "child_spawned")
    assert len(spawned) == 1
    p = spawned[0].payload
    assert (p.iteration, p.name, p.generation) == (1, "child-job", 1)
    child_id = p.child_job_id
    assert journal(tmp_path, root_id).state().children == (child_id,)

    # The child is a registered job with its lineage in its stored spec.
    s = cli("status", child_id, "--json", root=tmp_path, env=cli_env)
    assert s.returncode == 0, s.stderr
    assert (json.loads(s.stdout)["name"], json.loads(s.stdout)["status"]) == ("child-job", "PENDING")
    stored = json.loads(JobPaths(tmp_path, child_id).spec_file.read_text())
    assert stored["spec"]["lineage"] == {"root_job_id": root_id, "parent_job_id": root_id, "generation": 1}

    # The child runs and spends 0.50 ...
    r = cli("resume", child_id, "--json", root=tmp_path, env=cli_env)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert json.loads(r.stdout)["usd"] == pytest.approx(0.5)

    # ... which the root's budget counts: own 0.20 + child 0.50; iteration 2 fits
    # (0.70 + 0.20), iteration 3's 'spend' would not (0.90 + 0.20 > 1.0). Without
    # the child's spend the root would have run 5 iterations.
    r = cli("resume", root_id, "--json", root=tmp_path, env=cli_env)
    assert r.returncode == 4, (r.stdout, r.stderr)
    stop = events(tmp_path, root_id, "stopped_budget")[0].payload
    assert stop.reason == "total_usd"
    assert stop.counters["lineage_usd"] == 0.5 and stop.counters["usd_total"] == 0.9
    assert stop.counters["expected_usd"] == 0.2
    state = journal(tmp_path, root_id).state()
    assert state.usd_total == pytest.approx(0.4) and state.iterations_finished == 2
    assert state.open_iteration == 3 and state.stage_done(3, "spawn") and not state.stage_done(3, "spend")
    assert counter_lines(counter) == ["spawn 1", "spend 1", "spend 1", "spawn 2", "spend 2", "spawn 3"]
    # Spawning is once: later iterations wrote no spec, the child is not re-registered.
    assert len(events(tmp_path, root_id, "child_spawned")) == 1


def test_spawning_beyond_max_generation_is_refused(prefect_server, tmp_path):
    counter = tmp_path / "counter.txt"
    child_file = tmp_path / "child.yaml"
    child_file.write_text(CHILD.format(usd="0", counter=counter, extra=""))
    spec = job(
        tmp_path,
        f"""
max_generation: 0
stages: [{{id: spawn, run: [python, stage.py], env: {{SPAWN: "{child_file}"}}}}]
quality_gates: {{required: [{ALWAYS}]}}
""",
        name="no-children",
    )
    state = run_flow(spec, tmp_path, return_state=True)
    job_id = load_spec(spec).job_id
    assert state.is_failed() and state.message.startswith("lineage_too_deep")
    failed = events(tmp_path, job_id, "run_failed")[0].payload
    assert failed.code == "lineage_too_deep" and "exceeds max_generation 0" in failed.message
    js = journal(tmp_path, job_id).state()
    assert (js.status, js.stop_reason, js.children) == ("FAILED", "lineage_too_deep", ())
    assert [d.name for d in (tmp_path / ".maestro" / "jobs").iterdir()] == [job_id]


def test_root_max_generation_bounds_grandchildren(prefect_server, tmp_path):
    counter = tmp_path / "counter.txt"
    grandchild = tmp_path / "grandchild.yaml"
    grandchild.write_text(CHILD.format(usd="0", counter=counter, extra="").replace("child-job", "grandchild-job"))
    child = tmp_path / "child.yaml"
    child.write_text(CHILD.format(usd="0", counter=counter, extra=f', SPAWN: "{grandchild}"'))
    spec = job(
        tmp_path,
        f"""
max_generation: 1
stages: [{{id: spawn, run: [python, stage.py], env: {{SPAWN: "{child}"}}}}]
quality_gates: {{required: [{ALWAYS}]}}
""",
        name="shallow-root",
    )
    out = run_flow(spec, tmp_path)
    assert out["status"] == "COMPLETED"
    child_id = events(tmp_path, out["job_id"], "child_spawned")[0].payload.child_job_id
    resume_flow(tmp_path, child_id, return_state=True)
    state = journal(tmp_path, child_id).state()
    assert state.children == (), "a generation-2 job was registered under a root with max_generation 1"
    assert (state.status, state.stop_reason) == ("FAILED", "lineage_too_deep")
