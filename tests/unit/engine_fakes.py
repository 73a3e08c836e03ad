"""In-memory fakes of the engine's ports, for driving the whole loop without Prefect or subprocesses.

The journal is the real local journal on a temporary directory (it is the
store the engine writes; the evidence bundle reads it back). Everything the
engine asks of the world — running stages, evaluating gates, writing
checkpoints, waiting for approvals, git trees, the clock — is a fake that
records what it was asked.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from longrun.engine.iteration import checkpoint_key, gate_key, stage_key
from longrun.engine.loop import run_job
from longrun.engine.ports import Answer, Wait
from longrun.engine.session import Ports, Session
from longrun.errors import LongrunError
from longrun.execution.checkpoint import (
    GateResult,
    IterationCheckpoint,
    RateLimitRecord,
    StageResult,
    UsageRecord,
    fingerprint,
)
from longrun.execution.runtime import JobRuntime
from longrun.journal.local import Journal
from longrun.journal.registry import register
from longrun.journal.state import RunState
from longrun.spec.loader import load_spec


@dataclass(frozen=True)
class Ran:
    """What a stage attempt does: its exit code, spend, and whether it changes the workspace."""

    exit_code: int = 0
    usd: float = 0.0
    tokens: int = 0
    edits: bool = True
    #: Input/output tokens, as an agent usage format reports them (None: the stage reports no split).
    input_tokens: int | None = None
    output_tokens: int | None = None
    #: The output reported a rate limit resetting this many seconds from the fake clock's now
    #: (``float("nan")``: a rate limit without a reset time).
    rate_limit_in: float | None = None


StageScript = Callable[[str, int, int], Ran]
GateScript = Callable[[str, int], bool]


class FakeClock:
    def __init__(self, start: datetime | None = None) -> None:
        self.t = start or datetime.now(UTC)
        self.slept: list[float] = []

    def now(self) -> datetime:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += timedelta(seconds=seconds)


class FakeRecords:
    """The record store: key → record, with the journal length when each was written."""

    def __init__(self) -> None:
        self.records: dict[str, Any] = {}
        self.written_at: dict[str, int] = {}

    def put(self, key: str, record: Any, journal_len: int) -> None:
        self.records[key] = record
        self.written_at[key] = journal_len

    def load(self, key: str) -> Any:
        return self.records.get(key)

    def as_of(self, journal_len: int) -> FakeRecords:
        """The records that existed when the journal had ``journal_len`` events."""
        out = FakeRecords()
        for key, n in self.written_at.items():
            if n <= journal_len:
                out.put(key, self.records[key], n)
        return out


class FakeWorkspace:
    """Git trees as a counter: every editing stage attempt makes a new tree."""

    def __init__(self) -> None:
        self.tree = 0
        self.changed_paths: list[str] = ["src/app.py"]

    def prepare(self, rt: JobRuntime, template_base: Path | None) -> None:
        pass

    def materialize(self, rt: JobRuntime, state: Any) -> None:
        return None

    def push(self, rt: JobRuntime, state: Any, iteration: int, tree: str) -> str:
        raise AssertionError("push is not faked")

    def isolate(self, rt: JobRuntime) -> Path:
        raise AssertionError("isolation is not faked")

    def snapshot(self, path: Path) -> str:
        return f"tree-{self.tree}"

    def diff(self, path: Path, a: str, b: str) -> str:
        return "" if a == b else f"diff {a}..{b}\n"

    def changed(self, path: Path, a: str, b: str) -> list[str]:
        return [] if a == b else list(self.changed_paths)


class FakeExecutor:
    def __init__(
        self,
        stages: StageScript,
        gates: GateScript,
        records: FakeRecords,
        ws: FakeWorkspace,
        journal_len: Callable[[], int],
        clock: FakeClock | None = None,
    ):
        self.stages, self.gates, self.records, self.ws, self.journal_len = stages, gates, records, ws, journal_len
        self.clock = clock or FakeClock()
        self.calls: list[tuple[Any, ...]] = []
        #: Journal length when each stage attempt ran (its stage_started is the last event then).
        self.at: list[int] = []

    def run_stage(self, rt: JobRuntime, stage: Any, iteration: int, attempt: int) -> StageResult:
        self.calls.append(("stage", stage.id, iteration, attempt))
        self.at.append(self.journal_len())
        ran = self.stages(stage.id, iteration, attempt)
        if ran.edits:
            self.ws.tree += 1
        rate_limit = None
        if ran.rate_limit_in is not None:
            known = ran.rate_limit_in == ran.rate_limit_in  # NaN: no reset time reported
            resets_at = self.clock.now() + timedelta(seconds=ran.rate_limit_in) if known else None
            rate_limit = RateLimitRecord(resets_at=resets_at, kind="five_hour", message="rate_limit_event status='rejected'")
        io = {}
        if ran.input_tokens is not None or ran.output_tokens is not None:
            io = {"input_tokens": ran.input_tokens or 0, "output_tokens": ran.output_tokens or 0}
        result = StageResult(
            job_id=rt.job_id,
            iteration=iteration,
            stage=stage.id,
            phase=stage.phase,
            model=stage.model,
            argv=list(stage.argv),
            exit_code=ran.exit_code,
            timed_out=False,
            duration_s=0.01,
            attempts=attempt,
            usage=UsageRecord(usd=ran.usd, tokens=ran.tokens, **io),
            rate_limit=rate_limit,
        )
        self.records.put(stage_key(iteration, stage.id), result, self.journal_len())
        return result

    def evaluate_gate(self, rt: JobRuntime, gate: Any, iteration: int, inp: Any) -> GateResult:
        self.calls.append(("gate", gate.id, iteration))
        passed = (not inp.out_of_scope) if gate.kind == "scope" else self.gates(gate.id, iteration)
        result = GateResult(
            job_id=rt.job_id,
            iteration=iteration,
            gate=gate.id,
            gate_kind=gate.kind,
            required=gate.required,
            passed=passed,
            evidence={"changed": list(inp.changed_paths)},
        )
        self.records.put(gate_key(iteration, gate.id), result, self.journal_len())
        return result

    def write_checkpoint(self, rt: JobRuntime, iteration: int, stages: list, gates: list, patch: str, usd: float, tokens: int):
        self.calls.append(("checkpoint", iteration))
        failing = sorted(g.gate for g in gates if not g.passed)
        ckpt = IterationCheckpoint(
            job_id=rt.job_id,
            iteration=iteration,
            gates_passed=all(g.passed for g in gates if g.required),
            fingerprint=fingerprint(patch, failing),
            files={"summary.md": f"iteration {iteration}\n", "patch.diff": patch},
            digests={},
        )
        self.records.put(checkpoint_key(iteration), ckpt, self.journal_len())
        return ckpt

    def executed(self, kind: str = "stage") -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == kind]


class FakeApprover:
    """Answers approval waits from a script: an Answer, None (timeout), or a callable run during the wait."""

    def __init__(self, answers: list[Any] | None = None) -> None:
        self.answers = list(answers or [])
        self.waits: list[Wait] = []

    def where(self) -> dict[str, Any]:
        return {"flow_run_id": "run-1", "api_url": "http://fake/api"}

    def wait(self, request: Wait) -> Answer | None:
        self.waits.append(request)
        answer = self.answers.pop(0) if self.answers else None
        return answer(request) if callable(answer) else answer


class FakeProgress:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.events: list[str] = []
        self.iterations: list[int] = []

    def say(self, line: str) -> None:
        self.lines.append(line)

    def event(self, event: Any) -> None:
        self.events.append(event.type)

    def iteration_done(self, iteration: int, checkpoint: Any, gates: Any, state: RunState) -> None:
        self.iterations.append(iteration)

    def evidence(self, outcome: Any) -> None:
        pass


@dataclass
class World:
    """One job under a temporary root, with fakes for everything but the journal."""

    root: Path
    rt: JobRuntime
    stages: StageScript = lambda stage, it, attempt: Ran()
    gates: GateScript = lambda gate, it: True
    records: FakeRecords = field(default_factory=FakeRecords)
    ws: FakeWorkspace = field(default_factory=FakeWorkspace)
    clock: FakeClock = field(default_factory=FakeClock)
    approver: FakeApprover = field(default_factory=FakeApprover)
    progress: FakeProgress = field(default_factory=FakeProgress)
    executor: FakeExecutor | None = None
    run_ids: int = 0
    #: USD the job's other runs spent (``choose_run``'s ``prior_usd``).
    prior_usd: float = 0.0
    prior_stage_spend: dict[str, tuple[float, int]] = field(default_factory=dict)

    @property
    def journal(self) -> Journal:
        return Journal(self.rt.paths.events_file, clock=self.clock.now)

    def session(self) -> Session:
        journal = self.journal
        self.executor = FakeExecutor(
            self.stages, self.gates, self.records, self.ws, lambda: len(journal.read()), clock=self.clock
        )
        self.run_ids += 1
        rt = JobRuntime(loaded=self.rt.loaded, root=self.rt.root, run_id=f"run-{self.run_ids}")
        ports = Ports(
            journal=journal,
            records=self.records,
            executor=self.executor,
            workspace=self.ws,
            approver=self.approver,
            progress=self.progress,
            clock=self.clock,
        )
        return Session(rt, ports, prior_usd=self.prior_usd, prior_stage_spend=self.prior_stage_spend)

    def run_of(self, choice: Any) -> World:
        """The same job and scripts, on another of its runs (a ``RunChoice``)."""
        rt = replace(self.rt, loaded=replace(self.rt.loaded, job_id=choice.record.job_id))
        return World(
            root=self.root,
            rt=rt,
            stages=self.stages,
            gates=self.gates,
            prior_usd=choice.prior_usd,
            prior_stage_spend=choice.prior_stage_spend,
        )

    def run(self, **kwargs: Any) -> dict[str, Any]:
        """Run the job; a LongrunError comes back as the outcome plus its ``code``."""
        s = self.session()
        try:
            return run_job(s, **kwargs)
        except LongrunError as exc:
            return {**s.outcome(), "code": exc.code}

    def state(self) -> RunState:
        return self.journal.state()

    def types(self) -> list[str]:
        return [e.type for e in self.journal.read()]


BASE = """
name: {name}
goal: make the gate pass
workspace: {{path: ws}}
allowed_tools: [python]
model_policy: {{default: m}}
stages:
  - {{id: plan, phase: plan, run: [python, plan.py]}}
  - {{id: work, phase: execute, run: [python, work.py], depends_on: [plan]}}
quality_gates:
  required:
    - {{id: tests, kind: command_pass, run: [python, -m, pytest]}}
"""


def world(tmp_path: Path, extra: str = "", *, name: str = "engine-job", base: str = BASE, **kw: Any) -> World:
    """A registered job from ``BASE`` plus ``extra`` YAML (top-level keys), and its fakes."""
    text = textwrap.dedent(base.format(name=name)) + textwrap.dedent(extra)
    tmp_path.mkdir(parents=True, exist_ok=True)
    spec = tmp_path / "job.yaml"
    spec.write_text(text)
    (tmp_path / "ws").mkdir(exist_ok=True)
    loaded = load_spec(spec)
    register(loaded, tmp_path)
    rt = JobRuntime(loaded=loaded, root=tmp_path, run_id="run-0")
    return World(root=tmp_path, rt=rt, **kw)
