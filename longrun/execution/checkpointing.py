"""An iteration's checkpoint content, and the job's record store (read side).

:func:`build_checkpoint` turns an iteration's stage and gate results into the
``IterationCheckpoint`` record and its plain files (the adapter persists it
through Prefect's result persistence). :class:`JobRecords` reads records back
by key, for resume, without asking Prefect.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from longrun import atomicio
from longrun.errors import LongrunError, PathEscape
from longrun.execution.checkpoint import (
    CheckpointStore,
    GateResult,
    IterationCheckpoint,
    StageResult,
    decode_record,
    fingerprint,
    merge_test_reports,
    plan_diff,
    render_summary,
    sha256_text,
)
from longrun.execution.runtime import JobRuntime
from longrun.storage import mirror
from longrun.storage.paths import JobPaths, read_nofollow, sha256_file
from longrun.workspace.travel import stage_patch_path


def _read_plan(path: Path, workspace: Path) -> str | None:
    """The plan file as the stage left it; None when absent, a symlink or not a regular file."""
    try:
        return read_nofollow(path, base=workspace.resolve()).decode("utf-8", errors="replace")
    except (OSError, PathEscape, ValueError):
        return None


def build_checkpoint(
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
    current_plan = _read_plan(plan_path, rt.workspace) if plan_path is not None else None
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
        # No required gate means nothing proves completion: the job runs until a stop condition.
        gates_passed=any(g.required for g in gates) and all(g.passed for g in gates if g.required),
        fingerprint=fingerprint(patch, report["failing"]),
        files=files,
        digests=digests,
    )


class JobRecords:
    """The records of one job, by key relative to its checkpoint directory (``<iter>/stages/<stage>.json``)."""

    def __init__(self, paths: JobPaths) -> None:
        self.job_id = paths.job_id
        self.store = CheckpointStore(paths.checkpoints_root)

    def load(self, key: str) -> StageResult | GateResult | IterationCheckpoint | None:
        full = f"{self.job_id}/{key}"
        try:
            blob = self.store.read(full)
        except FileNotFoundError:
            return None
        try:
            record = decode_record(blob)
        except ValueError as exc:  # torn or edited JSON
            raise LongrunError(f"checkpoint record {full} is not valid JSON ({exc})", code="record_invalid") from None
        if isinstance(record, StageResult | GateResult | IterationCheckpoint):
            return record
        return None  # an error record: the attempt raised instead of returning a result


def save_stage_patch(rt: JobRuntime, iteration: int, stage: str, patch: str) -> str:
    """Write a stage's patch into the checkpoint (and, on a remote root, the store); its sha256."""
    data = patch.encode("utf-8", "surrogateescape")
    path = stage_patch_path(rt.paths, iteration, stage)
    atomicio.write_atomic(path, data)
    mirror.push(path)
    return hashlib.sha256(data).hexdigest()
