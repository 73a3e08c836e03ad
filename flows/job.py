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
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import CacheKeyFnPolicy
from prefect.context import TaskRunContext, get_run_context
from prefect.states import Failed
from prefect.utilities.annotations import quote

import longrun.blocks.evidence  # noqa: F401 - installs the block loader for evidence.store block refs
from longrun.blocks.checkpoints import CheckpointSerializer, CheckpointStorage
from longrun.engine.iteration import checkpoint_key, gate_key, stage_key
from longrun.engine.loop import run_job
from longrun.engine.preflight import GitWorkspace
from longrun.engine.session import Ports, Session
from longrun.errors import LongrunError
from longrun.evidence.manifest import manifest_markdown
from longrun.execution.checkpoint import GateResult, IterationCheckpoint, StageResult
from longrun.execution.checkpointing import JobRecords, build_checkpoint
from longrun.execution.gates import GateInput, evaluate_gate
from longrun.execution.runtime import JobRuntime
from longrun.execution.stages import run_stage
from longrun.flows.approvals import PrefectApprover
from longrun.flows.ui import Progress, emit_prefect_event, iteration_artifacts
from longrun.journal.events import Event
from longrun.journal.local import Journal
from longrun.journal.registry import find_job, outcome_dict, register
from longrun.journal.state import RunState
from longrun.spec.compile import PlannedGate, PlannedStage
from longrun.spec.loader import LoadedSpec, canonical_json, job_id_for, stored_spec_data, validate_spec_data

# ------------------------------------------------------------------ tasks


@task(persist_result=True, result_serializer=CheckpointSerializer(), refresh_cache=True)
def stage_task(rt: JobRuntime, stage: PlannedStage, iteration: int, attempt: int) -> StageResult:
    record, _ = run_stage(rt, stage, iteration, attempt)
    return record


@task(persist_result=True, result_serializer=CheckpointSerializer(), refresh_cache=True)
def gate_task(rt: JobRuntime, gate: PlannedGate, iteration: int, inp: GateInput) -> GateResult:
    return evaluate_gate(rt, gate, iteration, inp)


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
        return t(quote(rt), quote(gate), iteration, quote(inp))

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

    def event(self, event: Event) -> None:
        emit_prefect_event(self.rt.job_id, self.rt.spec.name, event.type, event.payload.model_dump(mode="json"))

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


def session_for(rt: JobRuntime) -> Session:
    """Register the job (its spec and first event, once) and open a session on Prefect's ports."""
    register(rt.loaded, rt.root)
    ports = Ports(
        journal=Journal(rt.paths.events_file),
        records=JobRecords(rt.paths),
        executor=PrefectExecutor(rt),
        workspace=GitWorkspace(),
        approver=PrefectApprover(rt.run_id),
        progress=PrefectProgress(rt),
        liveness=PrefectLiveness(),
    )
    return Session(rt, ports)


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
        # A spec document, or the content of a stored spec.json (any known spec_schema).
        job_spec = validate_spec_data(stored_spec_data(spec, file=source), file=source)
        loaded = LoadedSpec(
            spec=job_spec,
            source=Path(source) if source else None,
            job_id=job_id_for(job_spec),
            canonical=canonical_json(job_spec),
        )
    rt = JobRuntime(loaded=loaded, root=root_path, run_id=str(get_run_context().flow_run.id))  # type: ignore[union-attr]
    try:
        return run_job(session_for(rt), source=source, force=force)
    except LongrunError as exc:
        # Expected failures end the flow run as Failed with the code, not a traceback.
        if exc.code not in REFUSALS and not getattr(exc, "journaled", False):
            _journal_failure(rt, exc.code, exc.message)
        return Failed(message=f"{exc.code}: {exc.message}", data={**_outcome_from(rt), "code": exc.code, "message": exc.message})  # type: ignore[return-value]
    except Exception as exc:
        _journal_failure(rt, "run_crashed", f"{type(exc).__name__}: {exc}")
        raise


#: Refusals to start: the journal belongs to another (live) run and is not touched.
REFUSALS = frozenset({"job_already_running"})


def _outcome_from(rt: JobRuntime) -> dict[str, Any]:
    state = Journal(rt.paths.events_file).state() if rt.paths.events_file.exists() else RunState()
    return outcome_dict(rt.job_id, rt.spec.name, state, rt.run_id)


def _journal_failure(rt: JobRuntime, code: str, message: str) -> None:
    """Record why the run failed, if the job got far enough to have a journal."""
    if rt.paths.spec_file.exists():
        Journal(rt.paths.events_file).append("run_failed", {"code": code, "message": message}, job_id=rt.job_id)


def job_flow(loaded: LoadedSpec) -> Any:
    """The flow for one job: named after the job, flow runs named ``<job>-<jobId>``."""
    return longrun_job.with_options(name=loaded.spec.name, flow_run_name=f"{loaded.spec.name}-{loaded.job_id}")
