"""The run, told in the Prefect UI: artifacts per iteration and Prefect events.

* every iteration: a markdown artifact (its ``summary.md``) and a table
  artifact of gate results;
* one progress artifact per flow run (iterations done against the limit, or
  the budget used when that is further along), updated as the run goes;
* every event the flow journals (iterations, stage results, gates, budget
  stops, approvals, completion) is mirrored as a Prefect event
  ``longrun.<type>`` on the resource ``longrun.job.<jobId>``, so automations
  can react to them. Events journaled outside the flow (``job_registered``,
  ``stage_started`` inside a task, CLI decisions, evidence) are not mirrored.
"""

from __future__ import annotations

from typing import Any

from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.events import emit_event


def emit_prefect_event(job_id: str, name: str, event_type: str, payload: dict[str, Any]) -> None:
    emit_event(
        event=f"longrun.{event_type}",
        resource={"prefect.resource.id": f"longrun.job.{job_id}", "prefect.resource.name": name},
        payload={k: v for k, v in payload.items() if isinstance(v, (str, int, float, bool, type(None), list, dict))},
    )


def iteration_artifacts(rt: Any, iteration: int, summary_md: str, gates: list[Any]) -> None:
    key = f"{rt.spec.name}-summary"
    create_markdown_artifact(markdown=summary_md, key=_key(key), description=f"{rt.spec.name} iteration {iteration}")
    rows = [
        {
            "iteration": iteration,
            "gate": g.gate,
            "kind": g.gate_kind,
            "required": g.required,
            "result": "PASS" if g.passed else "FAIL",
            "detail": gate_detail(g),
        }
        for g in gates
    ]
    create_table_artifact(table=rows, key=_key(f"{rt.spec.name}-gates"), description=f"Gate results, iteration {iteration}")


class Progress:
    """One progress artifact per flow run."""

    def __init__(self, rt: Any) -> None:
        self.rt = rt
        self.id = create_progress_artifact(progress=0.0, description=f"{rt.spec.name}: iterations and budget used")

    def update(self, state: Any) -> None:
        spec = self.rt.spec
        parts = [min(100.0, 100.0 * state.iterations_finished / spec.stop_conditions.max_iterations)]
        if spec.budgets.total_usd:
            parts.append(min(100.0, 100.0 * state.usd_total / spec.budgets.total_usd))
        if spec.budgets.tokens:
            parts.append(min(100.0, 100.0 * state.tokens_total / spec.budgets.tokens))
        value = 100.0 if state.status == "COMPLETED" else max(parts)
        update_progress_artifact(artifact_id=self.id, progress=round(value, 2))


def gate_detail(g: Any) -> str:
    """What a gate's evidence says, in a few words (the artifact table, a failed gate task's message)."""
    ev = g.evidence
    if "tests" in ev:
        return f"{ev['passed']}/{ev['tests']} passed"
    if ev.get("matched"):
        return ", ".join(ev["matched"])[:200]
    if "exit_code" in ev:
        return f"exit {ev['exit_code']}"
    return str(ev.get("reason", ""))


def _key(text: str) -> str:
    """Artifact keys: lowercase letters, numbers and dashes."""
    out = "".join(c if c.isalnum() else "-" for c in text.lower())
    return "-".join(p for p in out.split("-") if p)
