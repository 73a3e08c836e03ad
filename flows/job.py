"""The job flow: a spec compiled into a Prefect flow, run iteration by iteration.

One flow run executes iterations in a loop (no subflow per iteration: each
subflow costs seconds of SQLite lock retries on the embedded server). Each
iteration runs the stages as Prefect tasks named after the stage (task runs
``<stage>#<iter>``), then the gates (``gate-<id>#<iter>``), then the
checkpoint (``checkpoint#<iter>``).

Every task persists its result through ``CheckpointStorage`` under the key
``<jobId>/<iter>/...``. Rerunning the flow after a crash gives the completed
tasks back from those records (Prefect's ``Cached`` state) instead of running
them again; the journal gets each fact exactly once because the flow only
appends what replay does not already show.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import CacheKeyFnPolicy
from prefect.context import TaskRunContext, get_run_context
from prefect.filesystems import LocalFileSystem
from prefect.states import Failed

import longrun.blocks.evidence  # noqa: F401 - installs the block loader for evidence.store block refs
from longrun.blocks.checkpoints import CheckpointSerializer, CheckpointStorage
from longrun.engine.preflight import ensure_workspace, preflight
from longrun.errors import EvidenceStoreInvalid, LongrunError, PathEscape
from longrun.evidence.bundle import manifest_markdown
from longrun.evidence.publish import finalize_evidence
from longrun.execution.checkpoint import (
    GateResult,
    IterationCheckpoint,
    StageResult,
    fingerprint,
    merge_test_reports,
    plan_diff,
    render_summary,
    sha256_file,
    sha256_text,
)
from longrun.execution.gates import GateInput, evaluate_gate
from longrun.execution.runtime import JobRuntime
from longrun.execution.stages import run_stage, should_retry
from longrun.flows import approvals
from longrun.flows.ui import Progress, emit_prefect_event, iteration_artifacts
from longrun.governance.budget import BudgetGovernor, expected_stage_spend
from longrun.governance.lineage import collect_children, spend_for_root
from longrun.governance.policy import blocking_approval, judge_iteration
from longrun.governance.scope import check_spec_paths, scope_violations
from longrun.governance.stop import StopInput, policy_from_spec
from longrun.governance.waiver import strict_report
from longrun.journal.local import Journal
from longrun.journal.registry import JobRecord, find_job, last_run_started, live_local_pid, outcome_dict, register
from longrun.journal.state import RunState, apply
from longrun.spec.compile import PlannedGate, PlannedStage
from longrun.spec.loader import LoadedSpec, canonical_json, job_id_for, validate_spec_data
from longrun.spec.models import Approval
from longrun.storage import resolve_store
from longrun.workspace import gitutil, worktree

Printer = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class StageAttemptFailed(LongrunError):
    """Raised inside a stage task so that Prefect retries the whole stage."""

    code = "stage_failed"


# ------------------------------------------------------------------ tasks


def _key(kind: str) -> Callable[[TaskRunContext, dict[str, Any]], str]:
    def key_fn(ctx: TaskRunContext, params: dict[str, Any]) -> str:
        rt: JobRuntime = params["rt"]
        it = params["iteration"]
        if kind == "checkpoint":
            return f"{rt.job_id}/{it}/checkpoint.json"
        return f"{rt.job_id}/{it}/{kind}/{params['name']}.json"

    return key_fn


@task(persist_result=True, result_serializer=CheckpointSerializer())
def stage_task(rt: JobRuntime, name: str, iteration: int, stage: PlannedStage) -> StageResult:
    # Attempts are counted in the journal, so they survive a crash and a new
    # flow run; Prefect's run_count only bounds the retries of this flow run.
    journal = Journal(rt.paths.events_file)
    attempt = journal.state().attempts(iteration, name) + 1
    prefect_try = TaskRunContext.get().task_run.run_count
    journal.append(
        "stage_started",
        {"iteration": iteration, "stage": name, "attempt": attempt, "phase": stage.phase, "model": stage.model},
        job_id=rt.job_id,
    )
    record, _ = run_stage(rt, stage, iteration, attempt)
    if should_retry(stage, record) and attempt <= stage.retry.max_retries and prefect_try <= stage.retry.max_retries:
        what = "timed out" if record.timed_out else f"exited {record.exit_code}"
        raise StageAttemptFailed(f"stage {name!r} attempt {attempt} {what}; retrying", retryable=True)
    return record


@task(persist_result=True, result_serializer=CheckpointSerializer())
def gate_task(rt: JobRuntime, name: str, iteration: int, gate: PlannedGate, inp: GateInput) -> GateResult:
    return evaluate_gate(rt, gate, iteration, inp)


@task(persist_result=True, result_serializer=CheckpointSerializer())
def checkpoint_task(
    rt: JobRuntime,
    iteration: int,
    stages: list[StageResult],
    gates: list[GateResult],
    patch: str,
    job_usd: float,
    job_tokens: int,
) -> IterationCheckpoint:
    it_dir = rt.paths.iteration_dir(iteration)
    plan_path = rt.plan_file()
    current_plan = plan_path.read_text(encoding="utf-8", errors="replace") if plan_path and plan_path.is_file() else None
    prev_plan_file = rt.paths.iteration_dir(iteration - 1) / "plan.md"
    previous_plan = prev_plan_file.read_text(encoding="utf-8") if prev_plan_file.is_file() else None
    report = merge_test_reports({g.gate: g.evidence["report"] for g in gates if "report" in g.evidence})
    files = {
        "plan-diff.md": plan_diff(previous_plan, current_plan, plan_file=rt.spec.plan_file or "PLAN.md", iteration=iteration),
        "patch.diff": patch,
        "test-report.json": json.dumps(report, indent=2, sort_keys=True) + "\n",
        "summary.md": render_summary(
            job_name=rt.spec.name,
            job_id=rt.job_id,
            goal=rt.spec.goal,
            iteration=iteration,
            stages=stages,
            gates=gates,
            patch=patch,
            test_report=report,
            job_usd=job_usd,
            job_tokens=job_tokens,
        ),
    }
    if current_plan is not None:
        files["plan.md"] = current_plan
    log = it_dir / "command.log"
    digests = {name: sha256_text(text) for name, text in files.items()}
    if log.exists():
        digests["command.log"] = sha256_file(log)
    return IterationCheckpoint(
        job_id=rt.job_id,
        iteration=iteration,
        # No required gate means nothing proves completion: the job runs until a stop condition.
        gates_passed=any(g.required for g in gates) and all(g.passed for g in gates if g.required),
        fingerprint=fingerprint(patch, report["failing"]),
        files=files,
        digests=digests,
    )


# ------------------------------------------------------------------ the loop


@dataclass
class _Run:
    """The flow's working set: the runtime, its journal and the replayed state."""

    rt: JobRuntime
    journal: Journal
    state: RunState
    say: Printer

    def emit(self, type_: str, payload: dict[str, Any]) -> None:
        event = self.journal.append(type_, payload, job_id=self.rt.job_id)
        self.state = apply(self.state, event)
        try:
            emit_prefect_event(self.rt.job_id, self.rt.spec.name, type_, event.payload.model_dump(mode="json"))
        except Exception as exc:  # the journal is the record; a lost UI event must not stop the job
            self.say(f"  (could not emit Prefect event {type_}: {exc})")

    def refresh(self) -> None:
        self.state = self.journal.state()

    def start_segment(self, *, resumed: bool = True) -> None:
        """``run_started``: this run begins, or goes on after an approval (a new active segment).

        It names this process and host, so the duplicate-run guard and
        ``tail --follow`` can tell the run is alive.
        """
        self.emit(
            "run_started",
            {
                "run_id": self.rt.run_id,
                "flow_run_id": self.rt.run_id,
                "resumed": resumed,
                "pid": os.getpid(),
                "host": socket.gethostname(),
            },
        )


def _task_options(storage: CheckpointStorage, meta: LocalFileSystem, kind: str) -> dict[str, Any]:
    return {
        "result_storage": storage,
        "cache_policy": CacheKeyFnPolicy(cache_key_fn=_key(kind), key_storage=meta),
    }


def _start_tree(journal: Journal, iteration: int) -> str | None:
    for event in journal.read():
        if event.type == "iteration_started" and event.payload.iteration == iteration:
            return event.payload.start_tree
    return None


def run_iterations(
    rt: JobRuntime,
    source: str | None,
    say: Printer = _stderr,
    *,
    force: bool = False,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """The body of the job flow (must run inside a Prefect flow run).

    Each iteration: budget check → stages (budget-checked one by one, scope
    checked after each) → spawned children → gates → checkpoint → the
    failure-policy verdict (complete, retry, escalate, approval, abort).
    Every run ends with an evidence bundle (and, in strict mode, the
    completion contract check).
    """
    record: JobRecord = register(rt.loaded, rt.root)
    run = _Run(rt, record.journal, record.journal.state(), say)
    status = run.state.status
    if status in ("COMPLETED", "REJECTED"):
        say(f"{rt.spec.name} ({rt.job_id}) is {status}; nothing to do")
        return _outcome(run)
    if (step := blocking_approval(run.state)) is not None and not approvals.suspended_here(run, step):
        say(
            f"{rt.spec.name} ({rt.job_id}) is waiting for approval {step!r}; approve it with: longrun approve {rt.job_id} --step {step} --approver NAME"
        )
        return _outcome(run)
    if not force and (alive := _live_run(run)) is not None:
        raise LongrunError(
            f"{rt.spec.name} ({rt.job_id}) is already RUNNING ({alive}); refusing to start it twice (use --force if that run is gone)",
            code="job_already_running",
        )
    template_base = Path(source).parent if source else None
    preflight(rt.loaded, rt.root, template_base)
    _check_store(rt)
    ensure_workspace(rt.loaded, rt.root, template_base)
    _check_paths(rt)  # again: a workspace created from a template may bring symlinks
    run.start_segment(resumed=run.state.iteration > 0)
    if rt.spec.isolation == "worktree":
        wt = worktree.ensure_worktree(rt.repo, rt.job_id, rt.worktree_dir)
        rt = replace(rt, workdir=wt)
        run.rt = rt
        say(f"isolated in worktree {wt} (branch {worktree.branch_name(rt.job_id)})")
    try:
        _loop(run, clock, sleep)
    except LongrunError as exc:
        # Journal the failure here, so that the run's evidence bundle records it.
        run.emit("run_failed", {"code": exc.code, "message": exc.message})
        exc.journaled = True
        raise
    finally:
        if run.state.is_terminal:
            _finish(run, clock)
    return _outcome(run)


def _check_store(rt: JobRuntime) -> None:
    """A store block that does not exist is bad input: refuse before any work, not after it.

    An API error loading it is not: the upload at the end retries, and journals it if it fails.
    """
    if rt.spec.evidence.store is None:
        return
    try:
        resolve_store(rt.spec.evidence.store, rt.root)
    except EvidenceStoreInvalid:
        raise
    except LongrunError:
        pass


def _check_paths(rt: JobRuntime) -> None:
    problems = check_spec_paths(rt.spec, rt.root)
    if problems:
        raise PathEscape("; ".join(p.removeprefix("path_escape: ") for p in problems))


def _live_run(run: _Run) -> str | None:
    """Whether the job's last run is still alive (the journal-level duplicate-run guard).

    A RUNNING status alone does not mean a live run: a SIGKILLed engine leaves
    it behind. The last ``run_started`` names its flow run, host and pid: on
    this host the pid must be alive; elsewhere Prefect must still see the flow
    run as running or paused.
    """
    if run.state.status != "RUNNING":
        return None
    started = last_run_started(run.journal)
    if started is None:
        return None
    extra = started.payload.model_extra or {}
    if extra.get("pid") is not None and extra.get("host") == socket.gethostname():
        pid = live_local_pid(started)
        if pid is None or pid == os.getpid():
            return None
        return f"pid {pid} on {extra['host']}, flow run {started.payload.flow_run_id}"
    if started.payload.flow_run_id and started.payload.flow_run_id != run.rt.run_id:
        from prefect.client.orchestration import get_client

        try:
            with get_client(sync_client=True) as client:
                fr = client.read_flow_run(started.payload.flow_run_id)
        except Exception:
            return None
        if fr.state is not None and (fr.state.is_running() or fr.state.is_paused()):
            return f"flow run {fr.id} is {fr.state.name}"
    return None


def _loop(run: _Run, clock: Callable[[], datetime], sleep: Callable[[float], None]) -> None:
    rt, say = run.rt, run.say
    logger = get_run_logger()
    storage = CheckpointStorage(basepath=str(rt.paths.checkpoints_root.resolve()))
    root_tag = hashlib.sha256(str(rt.root).encode()).hexdigest()[:8]
    storage.save(f"longrun-ckpt-{rt.job_id}-{root_tag}", overwrite=True)
    meta = LocalFileSystem(basepath=str(rt.paths.results_meta.resolve()))
    stage_t = stage_task.with_options(**_task_options(storage, meta, "stages"))
    gate_t = gate_task.with_options(**_task_options(storage, meta, "gates"))
    ckpt_t = checkpoint_task.with_options(**_task_options(storage, meta, "checkpoint"))

    plan = rt.plan
    policy = policy_from_spec(rt.spec.stop_conditions, rt.stop_files)
    governor = BudgetGovernor(rt.spec.budgets)
    workspace = rt.workspace
    scoped = any(g.kind == "scope" for g in plan.gates)
    progress = Progress(rt)

    def stop_now() -> bool:
        decision = policy(StopInput(run.state, clock()))
        if decision is None:
            return False
        run.emit("run_stopped", {"reason": decision.reason, "detail": decision.detail})
        say(f"stopped: {decision.reason} {decision.detail}")
        logger.info("stopped: %s %s", decision.reason, decision.detail)
        return True

    def budget_allows(expected: tuple[float, int], what: str) -> bool:
        """Budgets before work (E4): stop, or wait for the hourly window."""
        while True:
            lineage_usd, lineage_tokens = (
                spend_for_root(rt.root, rt.job_id, include_root=False) if run.state.children else (0.0, 0)
            )
            d = governor.check(run.state, clock(), *expected, lineage_usd=lineage_usd, lineage_tokens=lineage_tokens)
            if d is None:
                return True
            if d.action == "stop":
                run.emit("stopped_budget", d.stopped_budget_payload())
                say(f"stopped by budget before {what}: {d.reason} limit {d.limit} {d.counters}")
                return False
            run.emit("budget_wait", {"until": d.until, "reason": d.reason, "counters": d.counters})
            say(f"budget: {d.reason} limit reached; waiting until {d.until.isoformat()}")
            while (left := (d.until - clock()).total_seconds()) > 0:
                if stop_now():
                    return False
                sleep(min(1.0, left))

    # A resumed job may have been decided since its last iteration (an approval
    # gate approved, an escalation answered): conclude that iteration first.
    last = run.state.iterations_finished
    if run.state.open_iteration is None and last and not _conclude(run, last):
        return

    while True:
        if stop_now():
            return
        if run.state.open_iteration is None:
            iteration = run.state.iteration + 1
            first = plan.stages[0].id if plan.stages else None
            if not budget_allows(expected_stage_spend(run.state, first) if first else (0.0, 0), f"iteration {iteration}"):
                return
            run.emit("iteration_started", {"iteration": iteration, "start_tree": gitutil.snapshot_tree(workspace)})
            say(f"iteration {iteration}")
        else:
            iteration = run.state.open_iteration
            say(f"iteration {iteration} (resumed)")
        start_tree = _start_tree(run.journal, iteration)
        rt.paths.iteration_dir(iteration).mkdir(parents=True, exist_ok=True)

        stage_results: dict[str, StageResult] = {}
        for stage in plan.stages:
            if stop_now():
                return
            done = run.state.stage_done(iteration, stage.id)
            if not done and not budget_allows(expected_stage_spend(run.state, stage.id), f"stage {stage.id}"):
                return
            if not done:
                for a in rt.spec.approvals:
                    if a.before == stage.id and (a.when == "every_iteration" or iteration == 1):
                        what = f"run stage {stage.id!r} ({' '.join(stage.argv)}) with model {stage.model}"
                        if _approve(run, a.step_name, iteration, what) != "approved":
                            return
            failed_deps = [d for d in stage.depends_on if not stage_results[d].ok]
            if failed_deps:
                result = StageResult(
                    job_id=rt.job_id,
                    iteration=iteration,
                    stage=stage.id,
                    phase=stage.phase,
                    model=stage.model,
                    argv=list(stage.argv),
                    exit_code=None,
                    timed_out=False,
                    duration_s=0.0,
                    attempts=0,
                    error=f"skipped: dependency {', '.join(failed_deps)} failed",
                )
            else:
                result = stage_t.with_options(
                    name=stage.id,
                    task_run_name=f"{stage.id}#{iteration}",
                    retries=stage.retry.max_retries,
                    retry_delay_seconds=stage.retry.delay_seconds,
                )(rt, stage.id, iteration, stage)
            stage_results[stage.id] = result
            if done:
                say(f"  {stage.id:<12} done (from checkpoint, not rerun)")
                continue
            outside = (
                scope_violations(
                    gitutil.changed_paths(workspace, start_tree, gitutil.snapshot_tree(workspace)), rt.spec.scope_paths
                )
                if scoped and start_tree
                else []
            )
            run.emit("stage_finished", _stage_payload(result) | ({"out_of_scope": outside} if outside else {}))
            say(_stage_line(result) + (f"  OUT OF SCOPE: {', '.join(outside)}" if outside else ""))

        _register_children(run, iteration)
        end_tree = gitutil.snapshot_tree(workspace)
        patch = gitutil.diff_trees(workspace, start_tree, end_tree) if start_tree else ""
        changed = tuple(gitutil.changed_paths(workspace, start_tree, end_tree)) if start_tree else ()
        out_of_scope = _out_of_scope(run.state, iteration, scope_violations(changed, rt.spec.scope_paths) if scoped else [])

        gate_results: list[GateResult] = []
        for pg in plan.gates:
            if stop_now():
                return
            g = gate_t.with_options(name=f"gate-{pg.id}", task_run_name=f"gate-{pg.id}#{iteration}")(
                rt, pg.id, iteration, pg, GateInput(changed_paths=changed, out_of_scope=out_of_scope)
            )
            gate_results.append(g)
            if not run.state.gate_done(iteration, pg.id):
                run.emit("gate_evaluated", _gate_payload(g))
                say(_gate_line(g))

        ckpt = ckpt_t.with_options(name="checkpoint", task_run_name=f"checkpoint#{iteration}")(
            rt,
            iteration,
            [stage_results[s.id] for s in plan.stages],
            gate_results,
            patch,
            run.state.usd_total,
            run.state.tokens_total,
        )
        if iteration not in run.state.checkpoints:
            run.emit(
                "checkpoint_written",
                {"iteration": iteration, "dir": str(rt.paths.iteration_dir(iteration)), "files": ckpt.digests},
            )
        if run.state.open_iteration == iteration:
            passed = judge_iteration(run.state, iteration, plan.gates, rt.spec.on_failure).gates_passed
            run.emit("iteration_finished", {"iteration": iteration, "gates_passed": passed, "fingerprint": ckpt.fingerprint})
        if rt.workdir is not None:
            worktree.commit_all(rt.workdir, f"longrun {rt.job_id}: iteration {iteration}")
        say(f"  checkpoint   {rt.paths.iteration_dir(iteration)}")
        _ui(lambda: iteration_artifacts(rt, iteration, ckpt.files["summary.md"], gate_results), say)
        _ui(lambda: progress.update(run.state), say)
        if not _conclude(run, iteration):
            _ui(lambda: progress.update(run.state), say)
            return


def _conclude(run: _Run, iteration: int) -> bool:
    """Act on the failure-policy verdict of a finished iteration.

    Returns True to run another iteration, False when the run ends (completed,
    failed, rejected, or waiting for a human after a timeout).
    """
    rt = run.rt
    plan = rt.plan
    while True:
        verdict = judge_iteration(run.state, iteration, plan.gates, rt.spec.on_failure)
        for type_, payload in verdict.events(run.state):
            if type_ == "gate_skipped":
                run.emit(type_, payload)
        if verdict.action == "retry":
            return True
        if verdict.action == "abort":
            run.emit("run_failed", {"code": verdict.code, "message": verdict.reason})
            run.say(f"failed after {iteration} iteration(s): {verdict.reason}")
            return False
        if verdict.action == "escalate":
            if approvals.decided(run.state, verdict.step, iteration) == "approved":
                return True  # answered (while no run was active): go on with the next iteration
            run.emit("escalated", {"iteration": iteration, "gate": verdict.gate, "reason": verdict.reason, "step": verdict.step})
            # Approved: the policy grants a fresh round of retries.
            return (
                _approve(run, verdict.step, iteration, f"continue after gate {verdict.gate!r} failed: {verdict.reason}")
                == "approved"
            )
        if verdict.action == "approval":
            if _approve(run, verdict.step, iteration, f"pass approval gate {verdict.gate!r}") != "approved":
                return False
            continue  # judge again: the approval gate now passes
        for a in rt.spec.approvals:
            if (
                a.after == "gates"
                and _approve(run, a.step_name, iteration, "complete the job: all required gates passed") != "approved"
            ):
                return False
        run.emit("run_completed", {"iteration": iteration, "reason": verdict.reason})
        run.say(f"completed after {iteration} iteration(s): {verdict.reason}")
        return False


def _approve(run: _Run, step: str, iteration: int, what: str) -> str:
    """An approval checkpoint; timeouts and polling come from the ``approvals`` entry of that step."""
    entry = next((a for a in run.rt.spec.approvals if a.step_name == step), None)
    defaults = Approval.model_fields
    timeout = entry.timeout if entry else defaults["timeout"].default
    poll = entry.poll_interval if entry else defaults["poll_interval"].default
    return approvals.checkpoint(
        run,
        step,
        iteration,
        timeout=timeout,
        poll_interval=poll,
        mode=entry.mode if entry else "pause",
        description=approvals.describe(run.rt, step, iteration, what=what, state=run.state),
    )


def _ui(fn: Callable[[], Any], say: Printer) -> None:
    """Artifacts tell the run in the UI; failing to publish one must not stop the job."""
    try:
        fn()
    except Exception as exc:
        say(f"  (could not publish a Prefect artifact: {exc})")


def _finish(run: _Run, clock: Callable[[], datetime]) -> None:
    """End of every run: worktree patches, the evidence bundle, strict mode."""
    rt, say = run.rt, run.say
    if rt.workdir is not None and run.state.status == "COMPLETED":
        patches = worktree.export_patches(rt.workdir, worktree.fork_point(rt.repo, rt.job_id), rt.paths.checkpoints / "patches")
        worktree.remove_worktree(rt.repo, rt.workdir)
        say(f"exported {len(patches)} patch(es) to {rt.paths.checkpoints / 'patches'}; apply with: longrun apply {rt.job_id}")
    outcome = finalize_evidence(rt.root, rt.job_id, rt.spec.evidence.store, run.journal)
    run.refresh()
    where = outcome.store_uri or str(outcome.bundle.tar_path)
    if outcome.upload_failed:
        say(
            f"evidence upload FAILED ({outcome.error}); the bundle is kept at {outcome.bundle.tar_path}; retry with: longrun evidence push {rt.job_id}"
        )
    else:
        say(f"evidence: {where} (sha256 {outcome.bundle.sha256[:12]}…)")
    _evidence_artifacts(rt, outcome)
    if rt.spec.mode == "strict" and run.state.status == "COMPLETED":
        report = strict_report(rt.root, rt.job_id, run.state, rt.spec, clock())
        if report.ok:
            say("strict: completion contract holds" + (f" (waived by {report.waiver.approved_by})" if report.waived else ""))
        else:
            run.emit("run_failed", {"code": "strict_contract_failed", "message": "; ".join(report.problems)})
            say("strict: completion contract FAILED: " + "; ".join(report.problems))
            # The bundle must carry the verdict: build it again over the final journal.
            finalize_evidence(rt.root, rt.job_id, rt.spec.evidence.store, run.journal)
            run.refresh()


def _evidence_artifacts(rt: JobRuntime, outcome: Any) -> None:
    key = f"evidence-{rt.job_id}"
    link = outcome.store_uri or outcome.bundle.tar_path.resolve().as_uri()
    create_link_artifact(
        link=link, link_text=f"{rt.spec.name} evidence bundle", key=key, description="The run's hashed evidence bundle"
    )
    manifest = json.loads(outcome.bundle.manifest_path.read_text(encoding="utf-8"))
    create_markdown_artifact(markdown=manifest_markdown(manifest), key=f"{key}-manifest", description="Evidence manifest summary")


def _register_children(run: _Run, iteration: int) -> None:
    """Child specs a stage wrote into LONGRUN_SPAWN_DIR become registered jobs (S4)."""
    rt = run.rt
    spawn_dir = rt.paths.iteration_dir(iteration) / "spawn"
    if not spawn_dir.is_dir() or not any(spawn_dir.iterdir()):
        return
    root_job_id = rt.spec.lineage.root_job_id if rt.spec.lineage else rt.job_id
    generation = rt.spec.lineage.generation if rt.spec.lineage else 0
    limit = rt.spec.max_generation
    if rt.spec.lineage is not None:
        # The root's limit bounds the whole tree; a child cannot raise it for its own children.
        try:
            limit = min(limit, find_job(rt.root, root_job_id).load().spec.max_generation)
        except LongrunError:
            pass
    for child in collect_children(spawn_dir, rt.loaded, root_job_id, generation, limit):
        if child.job_id in run.state.children:
            continue
        register(child.loaded, rt.root)
        run.emit(
            "child_spawned",
            {
                "iteration": iteration,
                "child_job_id": child.job_id,
                "name": child.loaded.spec.name,
                "generation": child.lineage.generation,
                "source": str(child.source),
            },
        )
        run.say(f"  spawned      {child.loaded.spec.name} ({child.job_id}), generation {child.lineage.generation}")


def _out_of_scope(state: RunState, iteration: int, now: list[str]) -> tuple[str, ...]:
    """Every path found outside scope after any stage of the iteration, or at its end."""
    seen = set(now)
    for payload in state.stage_results.get(iteration, {}).values():
        seen.update(payload.get("out_of_scope", ()))
    return tuple(sorted(seen))


def _stage_payload(result: StageResult) -> dict[str, Any]:
    return {
        "iteration": result.iteration,
        "stage": result.stage,
        "exit_code": result.exit_code,
        "timed_out": result.timed_out,
        "duration_s": result.duration_s,
        "phase": result.phase,
        "model": result.model,
        "attempts": result.attempts,
        "usage": result.usage.model_dump(),
        "error": result.error,
    }


def _stage_line(result: StageResult) -> str:
    if result.attempts == 0:
        return f"  {result.stage:<12} skipped  ({result.error})"
    status = "ok" if result.ok else ("timeout" if result.timed_out else f"exit {result.exit_code}")
    return (
        f"  {result.stage:<12} {status:<8} {result.duration_s:6.2f}s  model={result.model}  "
        f"${result.usage.usd:.4f} {result.usage.tokens} tok"
    )


def _gate_payload(g: GateResult) -> dict[str, Any]:
    evidence = {k: v for k, v in g.evidence.items() if k != "report"}
    if "report" in g.evidence:
        evidence["failing"] = g.evidence["report"]["failing"]
    return {
        "iteration": g.iteration,
        "gate": g.gate,
        "kind": g.gate_kind,
        "required": g.required,
        "passed": g.passed,
        "evidence": evidence,
    }


def _gate_line(g: GateResult) -> str:
    detail = ""
    if "tests" in g.evidence:
        detail = f"  {g.evidence['passed']}/{g.evidence['tests']} tests passed"
    elif g.evidence.get("matched"):
        detail = "  " + ", ".join(g.evidence["matched"])
    return f"  gate {g.gate:<8} {'PASS' if g.passed else 'FAIL'}{'' if g.required else ' (optional)'}{detail}"


def _outcome(run: _Run) -> dict[str, Any]:
    return outcome_dict(run.rt.job_id, run.rt.spec.name, run.state, run.rt.run_id)


def _outcome_from(rt: JobRuntime) -> dict[str, Any]:
    state = Journal(rt.paths.events_file).state() if rt.paths.events_file.exists() else RunState()
    return outcome_dict(rt.job_id, rt.spec.name, state, rt.run_id)


@flow(name="longrun-job", persist_result=False, validate_parameters=False)
def longrun_job(
    spec: dict[str, Any], root: str = ".", source: str | None = None, job_id: str | None = None, force: bool = False
) -> dict[str, Any]:
    """Run a longrun job (the canonical spec) under ``root`` until it completes or stops.

    ``job_id`` names an already registered job (resume): its stored id and
    canonical spec are kept even if this longrun would hash the spec differently.
    """
    root_path = Path(root).resolve()
    if job_id is not None:
        loaded = find_job(root_path, job_id).load()
    else:
        job_spec = validate_spec_data(spec, file=source)
        loaded = LoadedSpec(
            spec=job_spec,
            source=Path(source) if source else None,
            job_id=job_id_for(job_spec),
            canonical=canonical_json(job_spec),
        )
    ctx = get_run_context()
    rt = JobRuntime(loaded=loaded, root=root_path, run_id=str(ctx.flow_run.id))
    try:
        return run_iterations(rt, source, force=force)
    except LongrunError as exc:
        # Expected failures end the flow run as Failed with the code, not a traceback.
        if exc.code not in REFUSALS and not getattr(exc, "journaled", False):
            _journal_failure(rt, exc.code, exc.message)
        return Failed(message=f"{exc.code}: {exc.message}", data={**_outcome_from(rt), "code": exc.code, "message": exc.message})
    except Exception as exc:
        _journal_failure(rt, "run_crashed", f"{type(exc).__name__}: {exc}")
        raise


#: Refusals to start: the journal belongs to another (live) run and is not touched.
REFUSALS = frozenset({"job_already_running"})


def _journal_failure(rt: JobRuntime, code: str, message: str) -> None:
    """Record why the run failed, if the job got far enough to have a journal."""
    if rt.paths.spec_file.exists():
        Journal(rt.paths.events_file).append("run_failed", {"code": code, "message": message}, job_id=rt.job_id)


def job_flow(loaded: LoadedSpec):
    """The flow for one job: named after the job, flow runs named ``<job>-<jobId>``."""
    return longrun_job.with_options(name=loaded.spec.name, flow_run_name=f"{loaded.spec.name}-{loaded.job_id}")
