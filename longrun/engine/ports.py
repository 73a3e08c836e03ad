"""The ports: everything the engine needs from the world, as small protocols.

The engine (:mod:`longrun.engine.loop`) decides; the ports do. ``flows/``
implements them with Prefect (tasks with result persistence, ``pause_flow_run``,
artifacts, events); the unit tests implement them with in-memory fakes. No
port is asked for something the journal already records: a stage or gate that
the journal says finished is rebuilt from the journal and the record store,
never executed again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from longrun.errors import LongrunError
from longrun.execution.checkpoint import GateResult, IterationCheckpoint, StageResult
from longrun.execution.gates import GateInput
from longrun.execution.runtime import JobRuntime
from longrun.journal.events import Event
from longrun.journal.state import RunState
from longrun.spec.compile import PlannedGate, PlannedStage
from longrun.workspace.travel import Materialized


class JournalPort(Protocol):
    """The job's append-only journal."""

    def read(self) -> list[Event]:
        """Every event, in order (the one full read, when a run starts)."""
        ...

    def tail(self) -> list[Event]:
        """Events appended since the last ``read``/``tail`` (by anyone), in order."""
        ...

    def append(
        self,
        type: str,
        payload: Mapping[str, Any],
        *,
        job_id: str,
        unless: Callable[[RunState], LongrunError | None] | None = None,
    ) -> Event:
        """Append one event with the next ``seq``; returns it.

        ``unless`` makes it a compare-and-set: called with the state of every
        event before this one, atomically with the append; an error it returns
        is raised and nothing is appended.
        """
        ...


class RecordPort(Protocol):
    """Read side of the checkpoint store: the records the executor persisted.

    Keys are ``<iter>/stages/<stage>.json``, ``<iter>/gates/<gate>.json`` and
    ``<iter>/checkpoint.json`` (relative to the job's checkpoint directory).
    """

    def load(self, key: str) -> StageResult | GateResult | IterationCheckpoint | None:
        """The record under ``key``, or None when there is none. A damaged record raises."""
        ...


class Executor(Protocol):
    """Runs the work of an iteration; each call persists its record under its key."""

    def run_stage(self, rt: JobRuntime, stage: PlannedStage, iteration: int, attempt: int) -> StageResult:
        """One attempt of ``stage``. Never raises for a failing command."""
        ...

    def evaluate_gate(self, rt: JobRuntime, gate: PlannedGate, iteration: int, inp: GateInput) -> GateResult: ...

    def write_checkpoint(
        self,
        rt: JobRuntime,
        iteration: int,
        stages: list[StageResult],
        gates: list[GateResult],
        patch: str,
        usd: float,
        tokens: int,
    ) -> IterationCheckpoint: ...


class WorkspacePort(Protocol):
    """The workspace: made ready before a run, then seen as git trees (snapshots, diffs, changed paths)."""

    def prepare(self, rt: JobRuntime, template_base: Path | None) -> None:
        """Refuse bad input (paths, workspace, template, store) and create the workspace from its template."""
        ...

    def materialize(self, rt: JobRuntime, state: RunState) -> Materialized | None:
        """With ``workspace.repo``: make the workspace what ``state`` says (clone, replay, check); None without.

        Called after :meth:`prepare`, before the run starts. Raises
        ``workspace_repo_unreachable``, ``workspace_ref_not_found``,
        ``workspace_diverged`` or ``workspace_unrecoverable``
        (:mod:`longrun.workspace.travel`).
        """
        ...

    def push(self, rt: JobRuntime, state: RunState, iteration: int, tree: str) -> str:
        """``workspace.push_branch``: commit ``tree`` (iteration ``iteration``'s end) and push it; the commit.

        Raises ``workspace_push_failed`` (the engine journals it and goes on).
        """
        ...

    def isolate(self, rt: JobRuntime) -> Path:
        """The job's own git worktree (``isolation: worktree``), created or reused."""
        ...

    def snapshot(self, path: Path) -> str | None: ...

    def diff(self, path: Path, a: str, b: str) -> str: ...

    def changed(self, path: Path, a: str, b: str) -> list[str]: ...


@dataclass(frozen=True)
class Answer:
    """A human's answer at an approval checkpoint."""

    decision: Literal["approve", "reject"]
    approver: str
    comment: str = ""


@dataclass(frozen=True)
class Wait:
    """One approval wait: what the approver port is asked to do."""

    step: str
    iteration: int
    key: str
    timeout: float
    poll_interval: float
    mode: str
    description: str


class ApproverPort(Protocol):
    def where(self) -> dict[str, Any]:
        """Where the wait happens, journaled with ``approval_requested`` (``flow_run_id``, ``api_url``)."""
        ...

    def wait(self, request: Wait) -> Answer | None:
        """Block until a decision (an :class:`Answer`) or the timeout (None)."""
        ...


class ProgressPort(Protocol):
    """Telling the run as it goes (the terminal, the run logger, the UI). Never decides anything."""

    def say(self, line: str) -> None: ...

    def event(self, event: Event) -> None:
        """An event the engine journaled."""
        ...

    def iteration_done(
        self, iteration: int, checkpoint: IterationCheckpoint, gates: list[GateResult], state: RunState
    ) -> None: ...

    def evidence(self, outcome: Any) -> None: ...


class Clock(Protocol):
    def now(self) -> datetime: ...

    def sleep(self, seconds: float) -> None: ...


class LivenessPort(Protocol):
    def flow_run_alive(self, flow_run_id: str) -> str | None:
        """A description if the flow run is still running or paused, else None."""
        ...


class StartLock(Protocol):
    """The job's start lock (one start of a job at a time), held until the run has journaled ``run_started``."""

    def release(self) -> None:
        """Let go; idempotent."""
        ...
