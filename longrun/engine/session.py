"""The engine's working set for one run: the ports, the runtime and the live state.

The journal is read once, when the session opens; after that each event is
applied to the state in memory as it is appended (by this run, or by anyone
else: ``sync`` picks up what others appended, e.g. a CLI approval), so the
cost of an iteration does not grow with the journal.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from longrun.engine.ports import (
    ApproverPort,
    Clock,
    Executor,
    JournalPort,
    LivenessPort,
    ProgressPort,
    RecordPort,
    StartLock,
    WorkspacePort,
)
from longrun.engine.preflight import check_sandbox
from longrun.errors import LongrunError
from longrun.execution.runtime import JobRuntime
from longrun.governance.lineage import LineageSpend
from longrun.journal.events import Event
from longrun.journal.fold import apply, replay
from longrun.journal.registry import outcome_dict
from longrun.journal.state import RunState


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        import time

        time.sleep(seconds)


class NoLock:
    def release(self) -> None:
        return None


class NoLiveness:
    def flow_run_alive(self, flow_run_id: str) -> str | None:
        return None


@dataclass
class Ports:
    journal: JournalPort
    records: RecordPort
    executor: Executor
    workspace: WorkspacePort
    approver: ApproverPort
    progress: ProgressPort
    clock: Clock = field(default_factory=SystemClock)
    liveness: LivenessPort = field(default_factory=NoLiveness)
    #: The job's start lock, held by the caller until this run has started (released by the engine).
    start_lock: StartLock = field(default_factory=NoLock)


class Session:
    """One run of one job: the runtime, the ports and the state folded so far."""

    def __init__(
        self,
        rt: JobRuntime,
        ports: Ports,
        *,
        lineage: LineageSpend | None = None,
        prior_usd: float = 0.0,
        prior_stage_spend: Mapping[str, tuple[float, int]] | None = None,
    ) -> None:
        self.rt = rt
        self.ports = ports
        self.state: RunState = replay(ports.journal.read())
        #: USD the job's other runs spent (``budgets.job_total_usd``); they are over or not live, so it is fixed.
        self.prior_usd = prior_usd
        #: stage → its largest spend in the job's other runs: a new run's first estimate of a stage.
        self.prior_stage_spend = dict(prior_stage_spend or {})
        #: The spend of the job's descendants (SPEC S4), read incrementally.
        self.lineage = lineage if lineage is not None else LineageSpend(rt.root, rt.job_id)

    # -- the journal ----------------------------------------------------------

    def emit(
        self, type_: str, payload: Mapping[str, Any], *, unless: Callable[[RunState], LongrunError | None] | None = None
    ) -> Event:
        """Append an event and fold it (and anything others appended before it); ``unless``: see JournalPort.append."""
        event = self.ports.journal.append(type_, payload, job_id=self.rt.job_id, unless=unless)
        self.sync()
        try:
            self.ports.progress.event(event)
        except Exception as exc:  # the journal is the record; a lost UI event must not stop the job
            self.say(f"  (could not publish event {type_}: {type(exc).__name__}: {exc})")
        return event

    def sync(self) -> None:
        """Fold the events appended since the last read (ours and other writers')."""
        for event in self.ports.journal.tail():
            if event.seq > self.state.last_seq:
                self.state = apply(self.state, event)

    def say(self, line: str) -> None:
        self.ports.progress.say(line)

    def now(self) -> datetime:
        return self.ports.clock.now()

    # -- runs -----------------------------------------------------------------

    def start_segment(self, *, resumed: bool = True, unless: Callable[[RunState], LongrunError | None] | None = None) -> None:
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
                **self._sandbox_fields(),
            },
            unless=unless,
        )

    def _sandbox_fields(self) -> dict[str, Any]:
        """``sandbox`` (and the waiver that allowed ``none`` in strict mode) for ``run_started``."""
        sandbox = self.rt.spec.sandbox
        if sandbox != "none":
            return {"sandbox": "bwrap" if sandbox.network else "bwrap-no-network"}
        out: dict[str, Any] = {"sandbox": "none"}
        if self.rt.spec.mode == "strict":
            waiver = check_sandbox(self.rt.spec, self.rt.root, self.now())
            if waiver is not None:
                out["sandbox_waiver"] = f"{waiver.approved_by}: {waiver.reason}"
        return out

    def outcome(self) -> dict[str, Any]:
        return outcome_dict(self.rt.job_id, self.rt.spec.name, self.state, self.rt.run_id)
