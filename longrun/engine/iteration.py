"""One iteration: stages, spawned children, gates, checkpoint.

Resume rule: what the journal says finished is rebuilt from the journal and
the record store and never executed again; the executor is asked only for
work the journal does not show as done. A stage attempt whose record the
executor persisted but whose ``stage_finished`` a crash lost is adopted from
its record, not run again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from longrun import faults
from longrun.engine import approvals
from longrun.engine.children import register_children
from longrun.engine.report import gate_line, gate_payload, skipped_stage, stage_from_journal, stage_line, stage_payload
from longrun.errors import LongrunError
from longrun.execution.checkpoint import GateResult, IterationCheckpoint, StageResult
from longrun.execution.checkpointing import save_stage_patch
from longrun.execution.gates import GateInput
from longrun.execution.stages import should_retry
from longrun.governance.policy import judge_iteration
from longrun.governance.scope import scope_violations
from longrun.journal.state import RunState
from longrun.spec.compile import PlannedGate, PlannedStage
from longrun.workspace import worktree

if TYPE_CHECKING:
    from longrun.engine.loop import Engine


def stage_key(iteration: int, stage: str) -> str:
    return f"{iteration}/stages/{stage}.json"


def gate_key(iteration: int, gate: str) -> str:
    return f"{iteration}/gates/{gate}.json"


def checkpoint_key(iteration: int) -> str:
    return f"{iteration}/checkpoint.json"


def run_iteration(e: Engine, iteration: int) -> bool:
    """Run (or finish) ``iteration``. False when the run ends inside it (stop, budget, approval)."""
    s, rt = e.s, e.s.rt
    ws = s.ports.workspace
    start_tree = s.state.start_trees.get(iteration)
    rt.paths.iteration_dir(iteration).mkdir(parents=True, exist_ok=True)

    results: dict[str, StageResult] = {}
    for stage in e.plan.stages:
        if e.stop_now():
            return False
        result = _stage(e, stage, iteration, results, start_tree)
        if result is None:
            return False
        results[stage.id] = result

    register_children(s, iteration)
    end_tree = ws.snapshot(rt.workspace)
    patch = ws.diff(rt.workspace, start_tree, end_tree) if start_tree and end_tree else ""
    changed = tuple(ws.changed(rt.workspace, start_tree, end_tree)) if start_tree and end_tree else ()
    now_outside = scope_violations(changed, rt.spec.scope_paths) if e.scoped else []
    inp = GateInput(changed_paths=changed, out_of_scope=_out_of_scope(s.state, iteration, now_outside))

    gates: list[GateResult] = []
    for pg in e.plan.gates:
        if e.stop_now():
            return False
        gates.append(_gate(e, pg, iteration, inp))

    # The end tree is what patch.diff leads to from the start tree (a workspace that travels replays it).
    ckpt = _checkpoint(e, iteration, [results[st.id] for st in e.plan.stages], gates, patch, end_tree if start_tree else None)
    if s.state.open_iteration == iteration:
        passed = judge_iteration(s.state, iteration, e.plan.gates, rt.spec.on_failure).gates_passed
        s.emit("iteration_finished", {"iteration": iteration, "gates_passed": passed, "fingerprint": ckpt.fingerprint})
        faults.point("iteration.finished")
        if rt.spec.workspace.push_branch is not None and end_tree is not None and start_tree:
            _push(e, iteration, end_tree)
    if rt.workdir is not None:
        worktree.commit_all(rt.workdir, f"longrun {rt.job_id}: iteration {iteration}")
    s.say(f"  checkpoint   {rt.paths.iteration_dir(iteration)}")
    try:
        s.ports.progress.iteration_done(iteration, ckpt, gates, s.state)
    except Exception as exc:  # the UI tells the run; failing to must not stop it
        s.say(f"  (could not publish the iteration summary: {type(exc).__name__}: {exc})")
    return True


def _stage(
    e: Engine, stage: PlannedStage, iteration: int, done: dict[str, StageResult], start_tree: str | None
) -> StageResult | None:
    s, rt = e.s, e.s.rt
    if s.state.stage_done(iteration, stage.id):
        s.say(f"  {stage.id:<12} done (from the journal, not rerun)")
        return _finished_stage(e, stage, iteration)
    if not e.budget_allows(e.expected(stage.id), f"stage {stage.id}", e.expected_io(stage.id)):
        return None
    for a in rt.spec.approvals:
        if a.before == stage.id and (a.when == "every_iteration" or iteration == 1):
            what = f"run stage {stage.id!r} ({' '.join(stage.argv)}) with model {stage.model}"
            if approvals.ask(e, a.step_name, iteration, what) != "approved":
                return None
    failed = [d for d in stage.depends_on if not done[d].ok]
    result = skipped_stage(rt.job_id, stage, iteration, failed) if failed else _attempts(e, stage, iteration)
    if result is None:
        return None  # stopped while waiting out a rate limit, or the budget refused the next attempt
    outside: list[str] = []
    travels = rt.spec.workspace.repo is not None and result.attempts > 0
    now = s.ports.workspace.snapshot(rt.workspace) if start_tree and (e.scoped or travels) else None
    if e.scoped and start_tree and now:
        outside = scope_violations(s.ports.workspace.changed(rt.workspace, start_tree, now), rt.spec.scope_paths)
    payload = stage_payload(result, outside)
    if travels and start_tree and now:
        # The iteration's changes so far travel with the stage (a worker elsewhere resumes after it),
        # in the checkpoint store before the journal names them.
        digest = save_stage_patch(rt, iteration, stage.id, s.ports.workspace.diff(rt.workspace, start_tree, now))
        payload |= {"tree": now, "patch_sha256": digest}
    s.emit("stage_finished", payload)
    faults.point("stage.finished")
    s.say(stage_line(result) + (f"  OUT OF SCOPE: {', '.join(outside)}" if outside else ""))
    return result


def _attempts(e: Engine, stage: PlannedStage, iteration: int) -> StageResult | None:
    """Attempts of ``stage`` until one does not call for a retry (SPEC E3); each is journaled.

    A rate-limited attempt is journaled (``rate_limited``), waited out and run
    again after a fresh budget check; it uses up no retry. None when the run
    stopped during that wait or the budget refused the next attempt.
    """
    s = e.s
    attempt = s.state.attempts(iteration, stage.id)
    result: StageResult | None = None
    if attempt:
        record = s.ports.records.load(stage_key(iteration, stage.id))
        if isinstance(record, StageResult) and record.attempts == attempt:
            result = record  # it ran to the end before a crash; only its journal event was lost
            s.say(f"  {stage.id:<12} attempt {attempt} finished before the interruption (from its record, not rerun)")
    while True:
        if result is None:
            attempt += 1
            s.emit(
                "stage_started",
                {"iteration": iteration, "stage": stage.id, "attempt": attempt, "phase": stage.phase, "model": stage.model},
            )
            faults.point("stage.started")
            result = s.ports.executor.run_stage(s.rt, stage, iteration, attempt)
            faults.point("stage.recorded")
        if result.rate_limit is not None:
            if not e.rate_limit_wait(result):
                return None
            # The limited attempt spent something too: check the budget again before the next one.
            if not e.budget_allows(e.expected(stage.id), f"stage {stage.id} (after a rate limit)", e.expected_io(stage.id)):
                return None
            result = None
            continue
        limited = len(s.state.rate_limited_attempts.get((iteration, stage.id), ()))
        if should_retry(stage, result) and attempt - limited <= stage.retry.max_retries:
            what = "timed out" if result.timed_out else f"exited {result.exit_code}"
            s.say(f"  {stage.id:<12} attempt {attempt} {what}; retrying")
            if stage.retry.delay_seconds:
                s.ports.clock.sleep(stage.retry.delay_seconds)
            result = None
            continue
        return result


def _finished_stage(e: Engine, stage: PlannedStage, iteration: int) -> StageResult:
    """A stage the journal says finished: its journal event, with the argv its record ran."""
    s = e.s
    finished = s.state.stage_results[iteration][stage.id]
    record = s.ports.records.load(stage_key(iteration, stage.id))
    argv = record.argv if isinstance(record, StageResult) else list(stage.argv)
    return stage_from_journal(s.rt.job_id, argv, finished)


def _gate(e: Engine, pg: PlannedGate, iteration: int, inp: GateInput) -> GateResult:
    s = e.s
    if s.state.gate_done(iteration, pg.id):
        record = s.ports.records.load(gate_key(iteration, pg.id))
        if not isinstance(record, GateResult):
            raise LongrunError(
                f"the journal records gate {pg.id!r} of iteration {iteration}, but its record "
                f"{gate_key(iteration, pg.id)} is missing from the checkpoint store",
                code="checkpoint_missing",
            )
        return record
    faults.point("gate.before")
    g = s.ports.executor.evaluate_gate(s.rt, pg, iteration, inp)
    faults.point("gate.recorded")
    s.emit("gate_evaluated", gate_payload(g))
    s.say(gate_line(g))
    return g


def _checkpoint(
    e: Engine, iteration: int, stages: list[StageResult], gates: list[GateResult], patch: str, end_tree: str | None
) -> IterationCheckpoint:
    s, rt = e.s, e.s.rt
    if iteration in s.state.checkpoints:
        record = s.ports.records.load(checkpoint_key(iteration))
        if not isinstance(record, IterationCheckpoint):
            raise LongrunError(
                f"the journal records the checkpoint of iteration {iteration}, but its record "
                f"{checkpoint_key(iteration)} is missing from the checkpoint store",
                code="checkpoint_missing",
            )
        return record
    ckpt = s.ports.executor.write_checkpoint(rt, iteration, stages, gates, patch, s.state.usd_total, s.state.tokens_total)
    faults.point("checkpoint.files")
    s.emit(
        "checkpoint_written",
        {"iteration": iteration, "dir": str(rt.paths.iteration_dir(iteration)), "files": ckpt.digests, "end_tree": end_tree},
    )
    return ckpt


def _push(e: Engine, iteration: int, tree: str) -> None:
    """``workspace.push_branch``: push the iteration's tree for review; a failure is journaled, never fatal."""
    s, branch = e.s, e.s.rt.spec.workspace.push_branch or ""
    try:
        commit = s.ports.workspace.push(s.rt, s.state, iteration, tree)
    except LongrunError as exc:
        s.emit("workspace_push_failed", {"iteration": iteration, "branch": branch, "error": f"{exc.code}: {exc.message}"})
        s.say(f"  push         FAILED to {branch} ({exc.code}); the run goes on")
        return
    s.emit("workspace_pushed", {"iteration": iteration, "branch": branch, "commit": commit})
    s.say(f"  push         {commit[:12]} to {branch}")


def _out_of_scope(state: RunState, iteration: int, now: list[str]) -> tuple[str, ...]:
    """Every path found outside scope after any stage of the iteration, or at its end."""
    seen = set(now)
    for payload in state.stage_results.get(iteration, {}).values():
        seen.update(payload.out_of_scope or ())
    return tuple(sorted(seen))
