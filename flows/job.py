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

import json
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Callable

from prefect import flow, get_run_logger, task
from prefect.cache_policies import CacheKeyFnPolicy
from prefect.context import TaskRunContext, get_run_context
from prefect.filesystems import LocalFileSystem

from longrun import gitutil
from longrun.blocks.checkpoints import CheckpointSerializer, CheckpointStorage
from longrun.checkpoint import (
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
from longrun.compile import PlannedGate, PlannedStage
from longrun.errors import LongrunError
from longrun.gates import GateInput, evaluate_gate
from longrun.jobs import JobRecord, ensure_workspace, register
from longrun.journal import Journal
from longrun.runtime import JobRuntime
from longrun.spec.loader import LoadedSpec, canonical_json, job_id_for
from longrun.spec.loader import validate_spec_data
from longrun.stages import run_stage, should_retry
from longrun.state import RunState, apply
from longrun.stop import StopInput, policy_from_spec

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
def gate_task(rt: JobRuntime, name: str, iteration: int, gate: PlannedGate, changed: tuple[str, ...]) -> GateResult:
    return evaluate_gate(rt, gate, iteration, GateInput(changed_paths=changed))


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
        gates_passed=all(g.passed for g in gates if g.required),
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

    def refresh(self) -> None:
        self.state = self.journal.state()


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


def run_iterations(rt: JobRuntime, source: str | None, say: Printer = _stderr) -> dict[str, Any]:
    """The body of the job flow (must run inside a Prefect flow run)."""
    record: JobRecord = register(rt.loaded, rt.root)
    template_base = Path(source).parent if source else None
    ensure_workspace(rt.loaded, rt.root, template_base)
    run = _Run(rt, record.journal, record.journal.state(), say)
    if run.state.status == "COMPLETED":
        say(f"{rt.spec.name} ({rt.job_id}) already completed; nothing to do")
        return _outcome(run)
    flow_run_id = rt.run_id
    run.emit("run_started", {"run_id": rt.run_id, "flow_run_id": flow_run_id, "resumed": run.state.iteration > 0})
    logger = get_run_logger()

    storage = CheckpointStorage(basepath=str(rt.paths.checkpoints_root.resolve()))
    storage.save(f"longrun-ckpt-{rt.job_id}", overwrite=True)
    meta = LocalFileSystem(basepath=str(rt.paths.results_meta.resolve()))
    stage_t = stage_task.with_options(**_task_options(storage, meta, "stages"))
    gate_t = gate_task.with_options(**_task_options(storage, meta, "gates"))
    ckpt_t = checkpoint_task.with_options(**_task_options(storage, meta, "checkpoint"))

    plan = rt.plan
    policy = policy_from_spec(rt.spec.stop_conditions, rt.stop_files)
    workspace = rt.workspace

    def stop_now() -> bool:
        decision = policy(StopInput(run.state, datetime.now(UTC)))
        if decision is None:
            return False
        run.emit("run_stopped", {"reason": decision.reason, "detail": decision.detail})
        say(f"stopped: {decision.reason} {decision.detail}")
        logger.info("stopped: %s %s", decision.reason, decision.detail)
        return True

    while True:
        if stop_now():
            break
        if run.state.open_iteration is None:
            iteration = run.state.iteration + 1
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
                return _outcome(run)
            failed_deps = [d for d in stage.depends_on if not stage_results[d].ok]
            if failed_deps:
                say(f"  {stage.id:<12} skipped: dependency {', '.join(failed_deps)} failed")
                result = StageResult(
                    job_id=rt.job_id, iteration=iteration, stage=stage.id, phase=stage.phase, model=stage.model,
                    argv=list(stage.argv), exit_code=None, timed_out=False, duration_s=0.0, attempts=0,
                    error=f"skipped: dependency {', '.join(failed_deps)} failed",
                )
            else:
                result = stage_t.with_options(name=stage.id, task_run_name=f"{stage.id}#{iteration}", retries=stage.retry.max_retries, retry_delay_seconds=stage.retry.delay_seconds)(
                    rt, stage.id, iteration, stage
                )
            stage_results[stage.id] = result
            if not run.state.stage_done(iteration, stage.id):
                run.emit(
                    "stage_finished",
                    {
                        "iteration": iteration,
                        "stage": stage.id,
                        "exit_code": result.exit_code,
                        "timed_out": result.timed_out,
                        "duration_s": result.duration_s,
                        "phase": result.phase,
                        "model": result.model,
                        "attempts": result.attempts,
                        "usage": result.usage.model_dump(),
                        "error": result.error,
                    },
                )
                status = "ok" if result.ok else ("timeout" if result.timed_out else f"exit {result.exit_code}")
                say(
                    f"  {stage.id:<12} {status:<8} {result.duration_s:6.2f}s  model={result.model}  "
                    f"${result.usage.usd:.4f} {result.usage.tokens} tok"
                )
            else:
                say(f"  {stage.id:<12} done (from checkpoint, not rerun)")

        end_tree = gitutil.snapshot_tree(workspace)
        patch = gitutil.diff_trees(workspace, start_tree, end_tree) if start_tree else ""
        changed = tuple(gitutil.changed_paths(workspace, start_tree, end_tree)) if start_tree else ()

        gate_results: list[GateResult] = []
        for pg in plan.gates:
            if stop_now():
                return _outcome(run)
            g = gate_t.with_options(name=f"gate-{pg.id}", task_run_name=f"gate-{pg.id}#{iteration}")(
                rt, pg.id, iteration, pg, changed
            )
            gate_results.append(g)
            if not run.state.gate_done(iteration, pg.id):
                run.emit(
                    "gate_evaluated",
                    {
                        "iteration": iteration,
                        "gate": g.gate,
                        "kind": g.gate_kind,
                        "required": g.required,
                        "passed": g.passed,
                        "evidence": {k: v for k, v in g.evidence.items() if k != "report"}
                        | ({"failing": g.evidence["report"]["failing"]} if "report" in g.evidence else {}),
                    },
                )
                detail = ""
                if "tests" in g.evidence:
                    detail = f"  {g.evidence['passed']}/{g.evidence['tests']} tests passed"
                say(f"  gate {g.gate:<8} {'PASS' if g.passed else 'FAIL'}{'' if g.required else ' (optional)'}{detail}")

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
            run.emit(
                "iteration_finished",
                {"iteration": iteration, "gates_passed": ckpt.gates_passed, "fingerprint": ckpt.fingerprint},
            )
        say(f"  checkpoint   {rt.paths.iteration_dir(iteration)}")
        if ckpt.gates_passed:
            run.emit("run_completed", {"iteration": iteration, "reason": "all required gates passed"})
            say(f"completed after {iteration} iteration(s): all required gates passed")
            break
    return _outcome(run)


def _outcome(run: _Run) -> dict[str, Any]:
    s = run.state
    return {
        "job_id": run.rt.job_id,
        "name": run.rt.spec.name,
        "status": str(s.status),
        "reason": s.stop_reason,
        "iterations": s.iterations_finished,
        "usd": round(s.usd_total, 6),
        "tokens": s.tokens_total,
        "run_id": run.rt.run_id,
    }


@flow(name="longrun-job", persist_result=False, validate_parameters=False)
def longrun_job(spec: dict[str, Any], root: str = ".", source: str | None = None) -> dict[str, Any]:
    """Run a longrun job (the canonical spec) under ``root`` until it completes or stops."""
    job_spec = validate_spec_data(spec, file=source)
    loaded = LoadedSpec(
        spec=job_spec,
        source=Path(source) if source else None,
        job_id=job_id_for(job_spec),
        canonical=canonical_json(job_spec),
    )
    ctx = get_run_context()
    rt = JobRuntime(loaded=loaded, root=Path(root).resolve(), run_id=str(ctx.flow_run.id))
    try:
        return run_iterations(rt, source)
    except LongrunError as exc:
        _journal_failure(rt, exc.code, exc.message)
        raise
    except Exception as exc:
        _journal_failure(rt, "run_crashed", f"{type(exc).__name__}: {exc}")
        raise


def _journal_failure(rt: JobRuntime, code: str, message: str) -> None:
    """Record why the run failed, if the job got far enough to have a journal."""
    if rt.paths.spec_file.exists():
        Journal(rt.paths.events_file).append("run_failed", {"code": code, "message": message}, job_id=rt.job_id)


def job_flow(loaded: LoadedSpec):
    """The flow for one job: named after the job, flow runs named ``<job>-<jobId>``."""
    return longrun_job.with_options(name=loaded.spec.name, flow_run_name=f"{loaded.spec.name}-{loaded.job_id}")
