"""The Ralph loop: iterations until the gates pass, or a budget, a stop condition or a human ends the run.

Each iteration: budget check → stages (budget-checked one by one, scope
checked after each) → spawned children → gates → checkpoint → the
failure-policy verdict (complete, retry, escalate, approval, abort). Every run
that ends leaves an evidence bundle (and, in strict mode, the completion
contract check). Everything here talks to the world through
:mod:`longrun.engine.ports`; nothing imports Prefect.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from longrun.engine import conclude as conclusion
from longrun.engine.approvals import suspended_here
from longrun.engine.finish import finish
from longrun.engine.iteration import run_iteration
from longrun.engine.report import human, usage_payload
from longrun.engine.runs import alive
from longrun.engine.session import Session
from longrun.errors import LongrunError
from longrun.execution.checkpoint import StageResult
from longrun.governance.budget import BudgetGovernor, expected_stage_io, expected_stage_spend
from longrun.governance.policy import blocking_approval
from longrun.governance.stop import StopCondition, StopInput, policy_from_spec
from longrun.journal.runs import OVER
from longrun.journal.state import RunState
from longrun.spec.compile import ExecutionPlan
from longrun.workspace import worktree
from longrun.workspace.travel import Materialized

#: How long to wait after a rate limit whose reset time the tool did not say.
RATE_LIMIT_DEFAULT_WAIT = timedelta(minutes=5)
#: The shortest wait after a rate limit (a reset already past must not spin the stage).
RATE_LIMIT_MIN_WAIT = timedelta(seconds=1)


@dataclass
class Engine:
    """A session plus the rules of its job, built once per run."""

    s: Session
    plan: ExecutionPlan
    stop_policy: StopCondition
    governor: BudgetGovernor
    scoped: bool

    @classmethod
    def for_session(cls, s: Session) -> Engine:
        plan = s.rt.plan
        return cls(
            s=s,
            plan=plan,
            stop_policy=policy_from_spec(s.rt.spec.stop_conditions, s.rt.stop_files),
            governor=BudgetGovernor(s.rt.spec.budgets),
            scoped=any(g.kind == "scope" for g in plan.gates),
        )

    def stop_now(self) -> bool:
        """A stop condition holds: journal ``run_stopped`` and say so."""
        decision = self.stop_policy(StopInput(self.s.state, self.s.now()))
        if decision is None:
            return False
        self.s.emit("run_stopped", {"reason": decision.reason, "detail": decision.detail})
        self.s.say(f"stopped: {decision.reason} ({human(decision.detail)})")
        return True

    def budget_allows(self, expected: tuple[float, int], what: str, io: tuple[int, int] = (0, 0)) -> bool:
        """Budgets before work (E4): go on, stop, or wait for the hourly window.

        ``expected`` is the (usd, tokens) and ``io`` the (input, output) tokens the work is expected to spend.
        """
        s = self.s
        while True:
            lineage = s.lineage() if (s.lineage is not None and s.state.children) else (0.0, 0)
            d = self.governor.check(
                s.state,
                s.now(),
                *expected,
                lineage_usd=lineage[0],
                lineage_tokens=lineage[1],
                job_prior_usd=s.prior_usd,
                expected_input_tokens=io[0],
                expected_output_tokens=io[1],
            )
            if d is None:
                return True
            until = d.until
            if d.action == "stop" or until is None:
                s.emit("stopped_budget", d.stopped_budget_payload())
                s.say(f"stopped by budget before {what}: {d.reason} limit {d.limit} ({human(d.counters)})")
                return False
            s.emit("budget_wait", {"until": until, "reason": d.reason, "counters": d.counters})
            s.say(f"budget: {d.reason} limit reached; waiting until {until.isoformat()}")
            while (left := (until - s.now()).total_seconds()) > 0:
                if self.stop_now():
                    return False
                s.ports.clock.sleep(min(1.0, left))

    def expected(self, stage_id: str | None) -> tuple[float, int]:
        """The stage's largest spend so far, in this run or (for a run's first estimate) the job's other runs."""
        if not stage_id:
            return (0.0, 0)
        own = expected_stage_spend(self.s.state, stage_id)
        prior = self.s.prior_stage_spend.get(stage_id, (0.0, 0))
        return (max(own[0], prior[0]), max(own[1], prior[1]))

    def expected_io(self, stage_id: str | None) -> tuple[int, int]:
        return expected_stage_io(self.s.state, stage_id) if stage_id else (0, 0)

    def rate_limit_wait(self, result: StageResult) -> bool:
        """A rate-limited attempt: journal ``rate_limited`` (once) and wait until the reset.

        The wait counts no iteration and no stage retry; it is interruptible by
        the stop conditions (stop file, ``longrun stop``, ``max_wall_time``),
        checked every second. False when the run stopped while waiting.
        """
        s, rl = self.s, result.rate_limit
        if rl is None:
            return True
        seen = s.state.rate_limited_attempts.get((result.iteration, result.stage), ())
        if seen and seen[-1].attempt == result.attempts:
            until = seen[-1].until  # journaled before an interruption: wait for what was journaled
        else:
            now = s.now()
            until = max(rl.resets_at or now + RATE_LIMIT_DEFAULT_WAIT, now + RATE_LIMIT_MIN_WAIT)
            s.emit(
                "rate_limited",
                {
                    "iteration": result.iteration,
                    "stage": result.stage,
                    "attempt": result.attempts,
                    "until": until,
                    "resets_at_reported": rl.resets_at is not None,
                    "kind": rl.kind,
                    "message": rl.message,
                    "usage": usage_payload(result.usage),
                },
            )
            s.say(f"  {result.stage:<12} rate limited ({rl.kind or rl.message}); waiting until {until.isoformat()}")
        while (left := (until - s.now()).total_seconds()) > 0:
            if self.stop_now():
                return False
            s.ports.clock.sleep(min(1.0, left))
        return True


def run_job(s: Session, *, source: str | None = None, force: bool = False) -> dict[str, Any]:
    """Run the job until it completes or stops; returns its outcome.

    A ``COMPLETED``/``REJECTED`` run, or one waiting for an approval, returns
    at once. A failure is journaled as ``run_failed`` (so the evidence bundle
    records it) and raised with ``journaled`` set. The job's start lock
    (``ports.start_lock``) is released once the run has started, or has
    nothing to start.
    """
    try:
        over = _start(s, source, force)
    finally:
        s.ports.start_lock.release()
    if over is not None:
        return over
    rt = s.rt
    if rt.spec.isolation == "worktree":
        wt = s.ports.workspace.isolate(rt)
        s.rt = replace(rt, workdir=wt)
        s.say(f"isolated in worktree {wt} (branch {worktree.branch_name(rt.job_id)})")
    try:
        _loop(Engine.for_session(s))
    except LongrunError as exc:
        if exc.code == "job_already_running":
            raise  # another flow run took this run over (journal.remote): its journal is not ours to write
        s.emit("run_failed", {"code": exc.code, "message": exc.message})
        exc.journaled = True
        raise
    except BaseException as exc:
        if not isinstance(exc, Exception):
            _interrupted(s, exc)  # Ctrl-C, SIGTERM (as the orchestrator raises it), SystemExit
        raise
    finally:
        if s.state.is_terminal:
            finish(s)
    return s.outcome()


def _interrupted(s: Session, exc: BaseException) -> None:
    """Journal ``run_stopped`` (reason ``interrupted``): the run stops cleanly and ``resume`` goes on from here."""
    if s.state.is_terminal:
        return
    try:
        s.emit("run_stopped", {"reason": "interrupted", "detail": {"by": type(exc).__name__}})
        s.say(f"stopped: interrupted ({type(exc).__name__}); resume with: longrun resume {s.rt.job_id}")
    except Exception:  # the journal cannot be written: the run stays RUNNING and the next start resumes it
        pass


def _start(s: Session, source: str | None, force: bool) -> dict[str, Any] | None:
    """Journal ``run_started``, or return the outcome of a run with nothing to start."""
    rt, state = s.rt, s.state
    if state.status in OVER:
        if state.evidence_behind:
            # Interrupted between the end of the run and its bundle: finish it now (bundle, strict check).
            s.say(f"{rt.spec.name} ({rt.job_id}) is {state.status}; building the evidence bundle it did not get")
            finish(s)
        else:
            s.say(f"{rt.spec.name} ({rt.job_id}) is {state.status}; nothing to do")
        return s.outcome()
    if (step := blocking_approval(state)) is not None and not suspended_here(s, step):
        s.say(
            f"{rt.spec.name} ({rt.job_id}) is waiting for approval {step!r}; "
            f"approve it with: longrun approve {rt.job_id} --step {step} --approver NAME"
        )
        return s.outcome()
    if not force and (refusal := _live_elsewhere(s, state)) is not None:
        raise refusal  # before any work; run_started below checks again, atomically with its append
    s.ports.workspace.prepare(rt, Path(source).parent if source else None)
    done = s.ports.workspace.materialize(rt, state)
    # A compare-and-set: the check runs on the journal as it is at our seq (on a remote root, whoever
    # appended meanwhile on another machine), so two engines never both start one run.
    s.start_segment(resumed=state.iteration > 0, unless=None if force else lambda st: _live_elsewhere(s, st))
    if done is not None:
        _materialized(s, done)
    return None


def _live_elsewhere(s: Session, state: RunState) -> LongrunError | None:
    """``job_already_running`` if ``state`` shows this run live in another process (the duplicate-run guard)."""
    why = alive(state, s.ports.liveness, s.rt.run_id)
    if why is None:
        return None
    return LongrunError(
        f"{s.rt.spec.name} ({s.rt.job_id}) is already RUNNING ({why}); refusing to start it twice (use --force if that run is gone)",
        code="job_already_running",
    )


def _materialized(s: Session, done: Materialized) -> None:
    """Journal what ``workspace.materialize`` did (its first ``commit`` pins the job's base)."""
    repo = s.rt.spec.workspace.repo or ""
    s.emit(
        "workspace_materialized",
        {
            "repo": repo,
            "commit": done.commit,
            "tree": done.tree,
            "cloned": done.cloned,
            "iterations": list(done.iterations),
            "reset": done.reset,
        },
    )
    if done.cloned:
        s.say(f"workspace cloned from {repo} at {done.commit[:12]}; replayed iteration(s) {list(done.iterations)}")
    elif done.reset:
        s.say(f"workspace reset to the start tree of interrupted iteration {s.state.open_iteration}")


def _loop(e: Engine) -> None:
    s = e.s
    # A resumed job may have been decided since its last iteration (an approval
    # gate approved, an escalation answered): conclude that iteration first.
    last = s.state.iterations_finished
    if s.state.open_iteration is None and last and not conclusion.conclude(e, last):
        return
    while True:
        if e.stop_now():
            return
        if s.state.open_iteration is None:
            iteration = s.state.iteration + 1
            first = e.plan.stages[0].id if e.plan.stages else None
            if not e.budget_allows(e.expected(first), f"iteration {iteration}", e.expected_io(first)):
                return
            s.emit("iteration_started", {"iteration": iteration, "start_tree": s.ports.workspace.snapshot(s.rt.workspace)})
            s.say(f"iteration {iteration}")
        else:
            iteration = s.state.open_iteration
            s.say(f"iteration {iteration} (resumed)")
        if not run_iteration(e, iteration):
            return
        if not conclusion.conclude(e, iteration):
            return
