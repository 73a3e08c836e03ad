"""What the engine journals and prints about stages and gates (payloads and lines)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from longrun.execution.checkpoint import GateResult, StageResult, UsageRecord
from longrun.journal.payloads import StageFinished
from longrun.spec.compile import PlannedStage


def usage_payload(usage: UsageRecord) -> dict[str, Any]:
    """A stage's usage as journaled: the agent-format fields only when set."""
    doc = usage.model_dump()
    return {k: v for k, v in doc.items() if v is not None or k in ("usd", "tokens", "model")}


def stage_payload(result: StageResult, out_of_scope: list[str] | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "iteration": result.iteration,
        "stage": result.stage,
        "exit_code": result.exit_code,
        "timed_out": result.timed_out,
        "duration_s": result.duration_s,
        "phase": result.phase,
        "model": result.model,
        "attempts": result.attempts,
        "usage": usage_payload(result.usage),
        "error": result.error,
    }
    if out_of_scope:
        payload["out_of_scope"] = out_of_scope
    return payload


def skipped_stage(job_id: str, stage: PlannedStage, iteration: int, failed: list[str]) -> StageResult:
    """A stage not run because a stage it depends on failed (``attempts`` 0)."""
    return StageResult(
        job_id=job_id,
        iteration=iteration,
        stage=stage.id,
        phase=stage.phase,
        model=stage.model,
        argv=list(stage.argv),
        exit_code=None,
        timed_out=False,
        duration_s=0.0,
        attempts=0,
        error=f"skipped: dependency {', '.join(failed)} failed",
    )


def stage_from_journal(job_id: str, argv: list[str], finished: StageFinished) -> StageResult:
    """A finished stage as the journal records it (its record may be gone: a skipped stage has none)."""
    return StageResult(
        job_id=job_id,
        iteration=finished.iteration,
        stage=finished.stage,
        phase=finished.phase,
        model=finished.model,
        argv=argv,
        exit_code=finished.exit_code,
        timed_out=finished.timed_out,
        duration_s=finished.duration_s,
        attempts=finished.attempts,
        usage=UsageRecord.model_validate({k: v for k, v in finished.usage.model_dump().items() if k in UsageRecord.model_fields}),
        error=finished.error,
    )


def stage_line(result: StageResult) -> str:
    if result.attempts == 0:
        return f"  {result.stage:<12} skipped  ({result.error})"
    status = "ok" if result.ok else ("timeout" if result.timed_out else f"exit {result.exit_code}")
    return (
        f"  {result.stage:<12} {status:<8} {result.duration_s:6.2f}s  model={result.model}  "
        f"${result.usage.usd:.4f} {result.usage.tokens} tok" + _usage_detail(result.usage)
    )


def _usage_detail(u: UsageRecord) -> str:
    if u.usd_source is None:
        return ""
    if u.usd_source == "none":
        return f"  (no usage in the {u.format} output)"
    priced = f", priced by table {u.prices_version}" if u.usd_source == "computed" else ""
    return f"  (in {u.input_tokens} out {u.output_tokens} cache-read {u.cache_read_tokens}, usd {u.usd_source}{priced})"


def gate_payload(g: GateResult) -> dict[str, Any]:
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


def gate_line(g: GateResult) -> str:
    detail = ""
    if "tests" in g.evidence:
        detail = f"  {g.evidence['passed']}/{g.evidence['tests']} tests passed"
    elif g.evidence.get("matched"):
        detail = "  " + ", ".join(g.evidence["matched"])
    return f"  gate {g.gate:<8} {'PASS' if g.passed else 'FAIL'}{'' if g.required else ' (optional)'}{detail}"


def human(detail: Mapping[str, Any]) -> str:
    """``key=value`` pairs for a stop or budget detail (not a Python dict)."""
    return ", ".join(f"{k}={v}" for k, v in detail.items())
