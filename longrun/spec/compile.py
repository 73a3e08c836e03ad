"""JobSpec → ExecutionPlan (pure).

The plan fixes the stage order (topological by ``depends_on``, ties broken by
declaration order), resolves each stage's phase, model, timeout and retry
policy, and lists the gates. The Prefect flow executes a plan; ``longrun plan``
prints one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

from longrun.spec import agents
from longrun.spec.models import FailurePolicy, Gate, JobSpec, RetryPolicy


class ScopeGate(BaseModel):
    """The implicit gate of SPEC G4: no change outside ``scope_paths``.

    Added to every job whose ``scope_paths`` do not include ``.``. A violation
    aborts the run: changes outside the agreed scope are never retried over.
    """

    model_config = ConfigDict(frozen=True)

    id: str = "scope"
    kind: Literal["scope"] = "scope"
    on_failure: FailurePolicy = FailurePolicy(action="abort", max_retries=0)


@dataclass(frozen=True)
class PlannedStage:
    id: str
    argv: tuple[str, ...]
    shell: bool
    phase: str | None
    model: str
    timeout: float
    retry: RetryPolicy
    depends_on: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    #: The agent preset (``claude`` …), its executable (allowed for this stage), usage format and prompt template.
    agent: str | None = None
    usage_format: str | None = None
    prompt_file: str | None = None

    @property
    def preset_tool(self) -> str | None:
        return agents.AGENT_EXECUTABLES[self.agent] if self.agent else None

    env_passthrough: tuple[str, ...] = ()
    #: Environment names passed through besides ``env_passthrough`` and
    #: ``defaults.env_passthrough``: the seam for names that come from elsewhere
    #: (an agent preset's API key variables, issue 14). They reach
    #: ``longrun.execution.environment.stage_environment`` as ``extra_names``.
    extra_env_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class PlannedGate:
    gate: Gate | ScopeGate
    required: bool

    @property
    def id(self) -> str:
        return self.gate.id

    @property
    def kind(self) -> str:
        return self.gate.kind


@dataclass(frozen=True)
class ExecutionPlan:
    job_name: str
    stages: tuple[PlannedStage, ...]
    gates: tuple[PlannedGate, ...]

    def to_dict(self) -> dict:
        return {
            "job": self.job_name,
            "stages": [
                {
                    "id": s.id,
                    "argv": list(s.argv),
                    "shell": s.shell,
                    "phase": s.phase,
                    "model": s.model,
                    "timeout": s.timeout,
                    "max_retries": s.retry.max_retries,
                    "depends_on": list(s.depends_on),
                    "agent": s.agent,
                    "usage_format": s.usage_format,
                    "prompt_file": s.prompt_file,
                }
                for s in self.stages
            ],
            "gates": [{"id": g.id, "kind": g.kind, "required": g.required} for g in self.gates],
        }


def stage_order(spec: JobSpec) -> list[str]:
    """Kahn's algorithm, always picking the earliest-declared ready stage."""
    pending = [s.id for s in spec.stages]
    deps = {s.id: set(s.depends_on) for s in spec.stages}
    done: list[str] = []
    while pending:
        ready = next(sid for sid in pending if deps[sid] <= set(done))
        done.append(ready)
        pending.remove(ready)
    return done


def compile_spec(spec: JobSpec) -> ExecutionPlan:
    stages = []
    for sid in stage_order(spec):
        st = spec.stage(sid)
        phase = st.effective_phase
        stages.append(
            PlannedStage(
                id=st.id,
                argv=agents.stage_argv(st),
                shell=st.shell,
                phase=phase,
                model=spec.select_model_for_phase(phase),
                timeout=st.timeout or spec.defaults.timeout,
                retry=st.retry or spec.defaults.retry,
                depends_on=tuple(st.depends_on),
                env=tuple(sorted(st.env.items())),
                agent=st.agent,
                usage_format=agents.stage_usage_format(st),
                prompt_file=agents.stage_prompt_file(st),
                env_passthrough=tuple(st.env_passthrough),
                extra_env_names=agents.preset_env_names(st),
            )
        )
    gates = [PlannedGate(g, True) for g in spec.quality_gates.required]
    if "." not in {p.strip("/") or "." for p in spec.scope_paths}:
        gates.append(PlannedGate(ScopeGate(), True))
    gates += [PlannedGate(g, False) for g in spec.quality_gates.optional]
    return ExecutionPlan(job_name=spec.name, stages=tuple(stages), gates=tuple(gates))
