"""The job flow: the engine's ports implemented with Prefect.

One flow run runs the engine (:func:`longrun.engine.loop.run_job`), which
decides everything; this module only does what it is asked:

* stages, gates and checkpoints run as Prefect tasks named ``<stage>#<iter>``,
  ``gate-<id>#<iter>`` and ``checkpoint#<iter>``, each persisting its record
  through ``CheckpointStorage`` under ``<jobId>/<iter>/...`` (Prefect's result
  persistence: the checkpoint of every iteration);
* approvals wait in ``pause_flow_run``/``suspend_flow_run``
  (:mod:`longrun.flows.approvals`);
* progress goes to the terminal and the run logger, events to Prefect events,
  iteration summaries and the evidence link to artifacts.

Resume never depends on Prefect's cache: the engine asks for a task only when
the journal does not show its work as done, and every task refreshes its
cache entry (``refresh_cache=True``), so ``PREFECT_TASKS_REFRESH_CACHE`` or a
lost cache-metadata file changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import CacheKeyFnPolicy
from prefect.context import TaskRunContext, get_run_context
from prefect.exceptions import MissingContextError
from prefect.states import Cancelled, Completed, Failed, State
from prefect.utilities.annotations import quote

import longrun.blocks.evidence  # noqa: F401 - installs the block loader for evidence.store block refs
from longrun.blocks.checkpoints import CheckpointSerializer, CheckpointStorage
from longrun.engine.iteration import checkpoint_key, gate_key, stage_key
from longrun.engine.loop import run_job
from longrun.engine.preflight import GitWorkspace
from longrun.engine.report import human
from longrun.engine.runs import RunChoice, Trigger, choose_run
from longrun.engine.session import Ports, Session
from longrun.errors import LongrunError
from longrun.evidence.manifest import manifest_markdown
from longrun.execution.checkpoint import GateResult, IterationCheckpoint, StageResult
from longrun.execution.checkpointing import JobRecords, build_checkpoint
from longrun.execution.gates import GateInput, evaluate_gate
from longrun.execution.runtime import JobRuntime
from longrun.execution.stages import run_stage
from longrun.flows.approvals import PrefectApprover
from longrun.flows.deploy import utc_text
from longrun.flows.ui import Progress, emit_prefect_event, gate_detail, iteration_artifacts
from longrun.journal.chain import line_hash
from longrun.journal.events import Event
from longrun.journal.local import Journal
from longrun.journal.registry import find_job, outcome_dict
from longrun.journal.runs import JobLock
from longrun.journal.state import RunState
from longrun.spec.compile import PlannedGate, PlannedStage
from longrun.spec.loader import LoadedSpec, canonical_json, job_id_for, stored_spec_data, validate_spec_data
from longrun.storage import mirror

# ------------------------------------------------------------------ tasks


@task(persist_result=True, result_serializer=CheckpointSerializer(), refresh_cache=True)
def stage_task(rt: JobRuntime, stage: PlannedStage, iteration: int, attempt: int) -> StageResult:
    record, _ = run_stage(rt, stage, iteration, attempt)
    return record


@task(persist_result=True, result_serializer=CheckpointSerializer(), refresh_cache=True)
def gate_task(rt: JobRuntime, gate: PlannedGate, iteration: int, inp: GateInput) -> GateResult:
    return evaluate_gate(rt, gate, iteration, inp)


def _mark_gate_failed(task_run_id: Any, gate: PlannedGate, result: GateResult) -> None:
    """A gate that did not pass: its task run ends Failed (``GateFailed``) in the UI, after its record was persisted.

    The task itself completes, so its record is written like every other
    (resume reads it back); the state is set afterwards. The flow goes on:
    the engine decides what the failure means.
    """
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            client.set_task_run_state(
                task_run_id,
                Failed(name="GateFailed", message=f"gate {gate.id} failed: {gate_detail(result) or 'did not pass'}"),
                force=True,
            )
    except Exception:  # the journal and the record hold the truth; a lost UI state must not stop the job
        pass


@task(persist_result=True, result_serializer=CheckpointSerializer(), refresh_cache=True)
def checkpoint_task(
    rt: JobRuntime, iteration: int, stages: list[StageResult], gates: list[GateResult], patch: str, usd: float, tokens: int
) -> IterationCheckpoint:
    return build_checkpoint(rt, iteration, stages, gates, patch, usd, tokens)


def _record_key(job_id: str, key: str) -> Any:
    """A cache policy that names the record's key; with ``refresh_cache`` it only says where to write."""

    def key_fn(ctx: TaskRunContext, params: dict[str, Any]) -> str:
        return f"{job_id}/{key}"

    return key_fn


class PrefectExecutor:
    """The executor port: one Prefect task per stage attempt, gate and checkpoint.

    Arguments that are plain data go in ``quote()``: Prefect then hands them over
    as they are instead of walking them for upstream futures (milliseconds per call).
    """

    def __init__(self, rt: JobRuntime) -> None:
        self.storage = CheckpointStorage(basepath=str(rt.paths.checkpoints_root.resolve()))
        root_tag = hashlib.sha256(str(rt.root).encode()).hexdigest()[:8]
        self.storage.save(f"longrun-ckpt-{rt.job_id}-{root_tag}", overwrite=True)
        # Prefect's record metadata, written atomically and fsynced like the records.
        self.meta = CheckpointStorage(basepath=str(rt.paths.results_meta.resolve()))

    def _options(self, job_id: str, key: str, name: str, run_name: str) -> dict[str, Any]:
        return {
            "name": name,
            "task_run_name": run_name,
            "result_storage": self.storage,
            "cache_policy": CacheKeyFnPolicy(cache_key_fn=_record_key(job_id, key), key_storage=self.meta),
            "refresh_cache": True,
        }

    def run_stage(self, rt: JobRuntime, stage: PlannedStage, iteration: int, attempt: int) -> StageResult:
        run_name = f"{stage.id}#{iteration}" + (f" attempt {attempt}" if attempt > 1 else "")
        t = stage_task.with_options(**self._options(rt.job_id, stage_key(iteration, stage.id), stage.id, run_name))
        return t(quote(rt), quote(stage), iteration, attempt)

    def evaluate_gate(self, rt: JobRuntime, gate: PlannedGate, iteration: int, inp: GateInput) -> GateResult:
        t = gate_task.with_options(
            **self._options(rt.job_id, gate_key(iteration, gate.id), f"gate-{gate.id}", f"gate-{gate.id}#{iteration}")
        )
        state = t(quote(rt), quote(gate), iteration, quote(inp), return_state=True)
        result: GateResult = state.result()
        if not result.passed and state.state_details.task_run_id is not None:
            _mark_gate_failed(state.state_details.task_run_id, gate, result)
        return result

    def write_checkpoint(
        self,
        rt: JobRuntime,
        iteration: int,
        stages: list[StageResult],
        gates: list[GateResult],
        patch: str,
        usd: float,
        tokens: int,
    ) -> IterationCheckpoint:
        t = checkpoint_task.with_options(
            **self._options(rt.job_id, checkpoint_key(iteration), "checkpoint", f"checkpoint#{iteration}")
        )
        return t(quote(rt), iteration, quote(stages), quote(gates), patch, usd, tokens)


class PrefectProgress:
    """The progress port: the terminal and the run logger, Prefect events, artifacts."""

    def __init__(self, rt: JobRuntime) -> None:
        self.rt = rt
        self.bar: Progress | None = None

    def say(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        try:
            get_run_logger().info(line)  # the flow run's log in the UI
        except MissingContextError:
            pass

    def event(self, event: Event) -> None:
        payload = event.payload.model_dump(mode="json")
        # The journal's chain head after this event, recorded outside the job root (see longrun.journal.chain).
        payload["chain_head"] = line_hash(event.to_line())
        payload["seq"] = event.seq
        emit_prefect_event(self.rt.job_id, self.rt.spec.name, event.type, payload)

    def iteration_done(self, iteration: int, checkpoint: IterationCheckpoint, gates: list[GateResult], state: RunState) -> None:
        iteration_artifacts(self.rt, iteration, checkpoint.files["summary.md"], gates)
        if self.bar is None:
            self.bar = Progress(self.rt)
        self.bar.update(state)

    def evidence(self, outcome: Any) -> None:
        key = f"evidence-{self.rt.job_id}"
        link = outcome.store_uri or outcome.bundle.tar_path.resolve().as_uri()
        create_link_artifact(
            link=link, link_text=f"{self.rt.spec.name} evidence bundle", key=key, description="The run's hashed evidence bundle"
        )
        manifest = json.loads(outcome.bundle.manifest_path.read_text(encoding="utf-8"))
        create_markdown_artifact(
            markdown=manifest_markdown(manifest), key=f"{key}-manifest", description="Evidence manifest summary"
        )


class PrefectLiveness:
    def flow_run_alive(self, flow_run_id: str) -> str | None:
        from prefect.client.orchestration import get_client

        try:
            with get_client(sync_client=True) as client:
                fr = client.read_flow_run(flow_run_id)  # type: ignore[arg-type]
        except Exception:
            return None
        if fr.state is not None and (fr.state.is_running() or fr.state.is_paused()):
            return f"flow run {fr.id} is {fr.state.name}"
        return None


def session_for(rt: JobRuntime, *, lock: JobLock | None = None, choice: RunChoice | None = None) -> Session:
    """A session on Prefect's ports for the run ``rt`` names (opened by :func:`choose_run`)."""
    ports = Ports(
        journal=Journal(rt.paths.events_file, owner=rt.run_id),
        records=JobRecords(rt.paths),
        executor=PrefectExecutor(rt),
        workspace=GitWorkspace(),
        approver=PrefectApprover(rt.run_id),
        progress=PrefectProgress(rt),
        liveness=PrefectLiveness(),
    )
    if lock is not None:
        ports.start_lock = lock
    if choice is None:
        return Session(rt, ports)
    return Session(rt, ports, prior_usd=choice.prior_usd, prior_stage_spend=choice.prior_stage_spend)


def trigger_for(flow_run: Any, run_key: str | None) -> Trigger:
    """The intended run a flow run stands for.

    * ``run_key`` (``longrun run --key``): that key.
    * A cron tick: ``at:<its scheduled time, UTC>``.
    * An idempotency key from ``longrun trigger`` (``longrun:<job>:key:K``,
      ``longrun:<job>:at:T``): ``K``, or ``at:T`` — so a trigger ``--at`` the
      time of a tick is that tick's run, and ``trigger --key K`` is ``run --key K``.
      Any other idempotency key: itself.
    * Any other deployment run: ``flow-run:<its id>``.
    * A local run without a key: None (continue the job's last run, or open one).
    """
    if run_key:
        return Trigger(run_key, "key")
    if getattr(flow_run, "auto_scheduled", False) and flow_run.expected_start_time is not None:
        at = utc_text(flow_run.expected_start_time)
        return Trigger(f"at:{at}", "schedule", at)
    idem = getattr(flow_run, "idempotency_key", None)
    if idem:
        parts = idem.split(":", 3)
        if len(parts) == 4 and parts[0] == "longrun" and parts[2] in ("key", "at", "once"):
            kind, rest = parts[2], parts[3]
            if kind == "key":
                return Trigger(rest, "key")
            return Trigger(f"{kind}:{rest}", "schedule" if kind == "at" else "key", rest if kind == "at" else None)
        return Trigger(idem, "key")
    if getattr(flow_run, "deployment_id", None) is not None:
        return Trigger(f"flow-run:{flow_run.id}", "flow-run")
    return Trigger(None, "manual")


@flow(name="longrun-job", persist_result=False, validate_parameters=False)
def longrun_job(
    spec: dict[str, Any],
    root: str = ".",
    source: str | None = None,
    job_id: str | None = None,
    force: bool = False,
    run_key: str | None = None,
) -> Any:
    """Run one run of a longrun job (the canonical spec) under ``root`` until it completes or stops.

    ``run_key`` names the intended run (see :func:`trigger_for`); ``job_id``
    names an existing run to continue (``longrun resume``): its stored id and
    canonical spec are kept even if this longrun would hash the spec differently.
    The flow run ends in a state that tells the run's outcome (:func:`final_state`).
    """
    flow_run: Any = get_run_context().flow_run  # type: ignore[union-attr]
    flow_run_id = str(flow_run.id)
    rt: JobRuntime | None = None  # the run's runtime, once the run is chosen
    lock: JobLock | None = None
    try:
        # A directory, or the local mirror of an s3:// root (any worker: the deployment holds the URL).
        root_path = mirror.open_root(root)
        loaded, run_id = _definition(root_path, spec, source, job_id)
        lock = JobLock(root_path, loaded.job_id).acquire()
        choice = choose_run(
            loaded,
            root_path,
            trigger_for(flow_run, run_key),
            PrefectLiveness(),
            run_id=run_id,
            own_flow_run=flow_run_id,
            force=force,
        )
        rt = JobRuntime(loaded=replace(loaded, job_id=choice.record.job_id), root=root_path, run_id=flow_run_id)
        mirror.pull_tree(rt.paths.checkpoints)  # a remote root: the run's checkpoints, wherever they were written
        outcome = run_job(session_for(rt, lock=lock, choice=choice), source=source, force=force)
    except LongrunError as exc:
        # Expected failures end the flow run with the code, not a traceback; a refusal touches no journal.
        if exc.code in REFUSALS:
            return Cancelled(
                name="Blocked", message=f"{exc.code}: {exc.message}", data={"code": exc.code, "message": exc.message}
            )
        if rt is not None and not getattr(exc, "journaled", False):
            _journal_failure(rt, exc.code, exc.message)
        data = {**(_outcome_from(rt) if rt is not None else {}), "code": exc.code, "message": exc.message}
        return Failed(message=f"{exc.code}: {exc.message}", data=data)
    except Exception as exc:
        if rt is not None:
            _journal_failure(rt, "run_crashed", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if lock is not None:
            lock.release()
    return final_state(outcome)


def _definition(root: Path, spec: dict[str, Any], source: str | None, job_id: str | None) -> tuple[LoadedSpec, str | None]:
    """The job (its loaded spec, under the job's id) and, for a resume, the run to continue."""
    if job_id is not None:
        record = find_job(root, job_id)
        return replace(record.load(), job_id=record.definition), record.job_id
    # A spec document, or the content of a stored spec.json (any known spec_schema).
    job_spec = validate_spec_data(stored_spec_data(spec, file=source), file=source)
    loaded = LoadedSpec(
        spec=job_spec, source=Path(source) if source else None, job_id=job_id_for(job_spec), canonical=canonical_json(job_spec)
    )
    return loaded, None


#: Refusals to start: the journal belongs to another (live) run and is not touched.
REFUSALS = frozenset({"job_already_running"})

#: A run's status → the flow run's final state: (state type, state name). The message carries the reason.
FINAL_STATES: dict[str, tuple[Any, str]] = {
    "COMPLETED": (Completed, "Completed"),
    "FAILED": (Failed, "Failed"),
    "STOPPED": (Cancelled, "Stopped"),
    "STOPPED_BUDGET": (Failed, "StoppedBudget"),
    "REJECTED": (Cancelled, "Rejected"),
    "WAITING_APPROVAL": (Cancelled, "AwaitingApproval"),
    "APPROVED": (Cancelled, "Approved"),
}


def final_state(outcome: dict[str, Any]) -> State:
    """The flow run's state for a run's outcome: Completed only when the run completed."""
    make, name = FINAL_STATES.get(str(outcome["status"]), (Failed, "Failed"))
    reason = outcome.get("reason")
    message = f"{outcome['status']}" + (f": {human(reason) if isinstance(reason, dict) else reason}" if reason else "")
    message += f" after {outcome['iterations']} iteration(s), ${outcome['usd']:.4f}, {outcome['tokens']} tokens"
    state: State = make(name=name, message=message, data=outcome)
    return state


def _outcome_from(rt: JobRuntime) -> dict[str, Any]:
    state = Journal(rt.paths.events_file).state() if rt.paths.events_file.exists() else RunState()
    return outcome_dict(rt.job_id, rt.spec.name, state, rt.run_id)


def _journal_failure(rt: JobRuntime, code: str, message: str) -> None:
    """Record why the run failed, if the run got far enough to have a journal."""
    if rt.paths.events_file.exists():
        Journal(rt.paths.events_file).append("run_failed", {"code": code, "message": message}, job_id=rt.job_id)


def job_flow(loaded: LoadedSpec) -> Any:
    """The flow for one job: named after the job, flow runs named ``<job>-<jobId>``."""
    return longrun_job.with_options(name=loaded.spec.name, flow_run_name=f"{loaded.spec.name}-{loaded.job_id}")
