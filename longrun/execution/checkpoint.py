"""Per-iteration checkpoints (SPEC C1): the records and the plain files.

Stage, gate and checkpoint results are frozen models. The Prefect adapter
persists them through its result storage (``longrun.blocks.checkpoints``),
which calls ``encode_record`` / ``decode_record`` as its serializer and
``CheckpointStore`` as its storage. Keys are::

    <jobId>/<iter>/stages/<stage>.json
    <jobId>/<iter>/gates/<gate>.json
    <jobId>/<iter>/checkpoint.json

When the checkpoint record is written, the store also writes its files as
plain, readable files beside it: ``plan-diff.md``, ``patch.diff``,
``test-report.json``, ``summary.md`` (``command.log`` is streamed there by the
stages while they run) and ``plan.md`` (the plan as it stood, for the next
iteration's plan diff).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from longrun import atomicio
from longrun.errors import LongrunError, PathEscape
from longrun.storage import mirror

RECORD_VERSION = 1
CHECKPOINT_FILES = ("plan-diff.md", "patch.diff", "command.log", "test-report.json", "summary.md")


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class UsageRecord(_Record):
    """One stage run's spend. The optional fields come from an agent usage format (docs/agents.md)."""

    usd: float = 0.0
    tokens: int = 0
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    #: reported: the tool said the USD; computed: from the price table; none: the format found no usage.
    usd_source: Literal["reported", "computed", "none"] | None = None
    #: The price table version (or "spec") that priced a computed USD.
    prices_version: str | None = None
    format: str | None = None


class RateLimitRecord(_Record):
    """A rate limit the stage's output reported: the stage ends ``rate_limited`` and the loop waits."""

    resets_at: datetime | None = None
    kind: str | None = None
    message: str = ""


class StageResult(_Record):
    kind: Literal["stage"] = "stage"
    job_id: str
    iteration: int
    stage: str
    phase: str | None
    model: str
    argv: list[str]
    exit_code: int | None
    timed_out: bool
    duration_s: float
    attempts: int
    usage: UsageRecord = Field(default_factory=UsageRecord)
    error: str | None = None
    rate_limit: RateLimitRecord | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


class GateResult(_Record):
    kind: Literal["gate"] = "gate"
    job_id: str
    iteration: int
    gate: str
    gate_kind: str
    required: bool
    passed: bool
    duration_s: float = 0.0
    evidence: dict[str, Any] = Field(default_factory=dict)


class IterationCheckpoint(_Record):
    kind: Literal["checkpoint"] = "checkpoint"
    job_id: str
    iteration: int
    gates_passed: bool
    fingerprint: str
    files: dict[str, str] = Field(description="name → text, written beside the record")
    digests: dict[str, str] = Field(default_factory=dict, description="name → sha256 of every checkpoint file")


class ErrorRecord(_Record):
    """What a failed task's exception is persisted as (never pickled)."""

    kind: Literal["error"] = "error"
    type: str
    message: str


_KINDS: dict[str, type[_Record]] = {
    "stage": StageResult,
    "gate": GateResult,
    "checkpoint": IterationCheckpoint,
    "error": ErrorRecord,
}


def encode_record(obj: Any) -> bytes:
    """Readable JSON for a record; exceptions become an ``ErrorRecord``."""
    if isinstance(obj, BaseException):
        obj = ErrorRecord(type=type(obj).__name__, message=str(obj))
    if not isinstance(obj, _Record):
        raise TypeError(f"longrun records only; got {type(obj).__name__}")
    doc = {"record_version": RECORD_VERSION, **obj.model_dump(mode="json")}
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def decode_record(blob: bytes) -> Any:
    doc = json.loads(blob)
    version = doc.pop("record_version", None)
    if version != RECORD_VERSION:
        raise LongrunError(f"checkpoint record version {version!r} is not supported", code="record_version_unsupported")
    model = _KINDS.get(doc.get("kind"))
    if model is None:
        raise LongrunError(f"unknown checkpoint record kind {doc.get('kind')!r}", code="record_invalid")
    record = model.model_validate(doc)
    if isinstance(record, ErrorRecord):
        return LongrunError(record.message, code="stage_failed")
    return record


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class CheckpointStore:
    """Reads and writes records under ``base`` (``.maestro/checkpoints``)."""

    def __init__(self, base: Path) -> None:
        self.base = Path(base)

    def resolve(self, key: str) -> Path:
        base = self.base.resolve()
        target = (base / key).resolve()
        if base not in target.parents:
            raise PathEscape(f"result key {key!r} escapes {base}")
        return target

    def write(self, key: str, content: bytes) -> Path:
        target = self.resolve(key)
        doc = json.loads(content)
        if doc.get("kind") == "checkpoint":
            # Files first, record last: a record on disk means its files are too.
            for name, text in doc["files"].items():
                if "/" in name or name.startswith("."):
                    raise PathEscape(f"checkpoint file name {name!r} is not a plain name")
                atomicio.write_atomic(target.parent / name, text)
        # On a remote root the same order in the store: the iteration's files (the checkpoint files,
        # the command log, JUnit reports, usage files the stages and gates wrote) before the record,
        # so a record the journal names is in the store, with its files, before the journal names it.
        mirror.push_tree(self.resolve("/".join(key.split("/")[:2])), skip=target)
        atomicio.write_atomic(target, content)
        mirror.push(target)
        return target

    def read(self, key: str) -> bytes:
        target = self.resolve(key)
        if not target.exists():
            mirror.fetch(target)  # a remote root: the record another machine wrote
        return target.read_bytes()


# ---------------------------------------------------------------- content


def plan_diff(previous: str | None, current: str | None, *, plan_file: str, iteration: int) -> str:
    """Markdown with a unified diff between the previous and this iteration's plan."""
    before = (previous or "").splitlines(keepends=True)
    after = (current or "").splitlines(keepends=True)
    diff = "".join(
        difflib.unified_diff(
            before,
            after,
            fromfile=f"{plan_file} (iteration {iteration - 1})" if previous is not None else "/dev/null",
            tofile=f"{plan_file} (iteration {iteration})" if current is not None else "/dev/null",
        )
    )
    head = f"# Plan diff — iteration {iteration}\n\n"
    if current is None:
        return head + f"The plan stage did not write `{plan_file}` in this iteration.\n"
    if not diff:
        return head + "The plan did not change since the previous iteration.\n"
    return head + "```diff\n" + diff + ("" if diff.endswith("\n") else "\n") + "```\n"


def merge_test_reports(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One ``test-report.json`` from every test gate's JUnit report."""
    if not reports:
        return {
            "format": "junit",
            "tests": 0,
            "passed": 0,
            "failed": 0,
            "errors": 0,
            "skipped": 0,
            "pass_rate": 1.0,
            "failing": [],
            "gates": {},
            "note": "this job has no test_pass gate",
        }
    totals = {k: sum(int(r.get(k, 0)) for r in reports.values()) for k in ("tests", "passed", "failed", "errors", "skipped")}
    failing = sorted({t for r in reports.values() for t in r.get("failing", [])})
    ran = totals["tests"] - totals["skipped"]
    return {
        "format": "junit",
        **totals,
        "pass_rate": round(totals["passed"] / ran, 6) if ran else 1.0,
        "failing": failing,
        "gates": reports,
    }


def fingerprint(patch: str, failing: list[str]) -> str:
    """What 'progress' means: the iteration's patch and its failing tests."""
    h = hashlib.sha256()
    h.update(patch.encode("utf-8"))
    h.update(b"\0")
    h.update("\n".join(sorted(failing)).encode("utf-8"))
    return h.hexdigest()[:16]


def patch_stats(patch: str) -> dict[str, int]:
    files = added = removed = 0
    for line in patch.splitlines():
        if line.startswith("diff --git "):
            files += 1
        elif line.startswith("+") and not line.startswith("+++"):
            added += 1
        elif line.startswith("-") and not line.startswith("---"):
            removed += 1
    return {"files": files, "added": added, "removed": removed}


def render_summary(
    *,
    job_name: str,
    job_id: str,
    goal: str,
    iteration: int,
    stages: list[StageResult],
    gates: list[GateResult],
    patch: str,
    test_report: dict[str, Any],
    job_usd: float,
    job_tokens: int,
) -> str:
    stats = patch_stats(patch)
    it_usd = sum(s.usage.usd for s in stages)
    it_tokens = sum(s.usage.tokens for s in stages)
    required_ok = all(g.passed for g in gates if g.required)
    lines = [
        f"# {job_name} — iteration {iteration}",
        "",
        f"- job: `{job_id}`",
        f"- goal: {goal}",
        f"- outcome: {'all required gates passed' if required_ok else 'required gates not yet passing'}",
        f"- spend this iteration: ${it_usd:.4f}, {it_tokens} tokens (job total ${job_usd:.4f}, {job_tokens} tokens)",
        f"- patch: {stats['files']} file(s), +{stats['added']} −{stats['removed']}",
        f"- tests: {test_report.get('passed', 0)}/{test_report.get('tests', 0)} passed, "
        f"{len(test_report.get('failing', []))} failing",
        "",
        "## Stages",
        "",
        "| stage | phase | model | exit | duration | attempts | usd | tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in stages:
        code = "timeout" if s.timed_out else str(s.exit_code)
        lines.append(
            f"| {s.stage} | {s.phase or '-'} | {s.model} | {code} | {s.duration_s:.2f}s | {s.attempts} "
            f"| {s.usage.usd:.4f} | {s.usage.tokens} |"
        )
    lines += ["", "## Gates", "", "| gate | kind | required | result | evidence |", "|---|---|---|---|---|"]
    for g in gates:
        ev = ", ".join(f"{k}={v}" for k, v in g.evidence.items() if k in _SUMMARY_EVIDENCE)
        lines.append(f"| {g.gate} | {g.gate_kind} | {'yes' if g.required else 'no'} | {'PASS' if g.passed else 'FAIL'} | {ev} |")
    if test_report.get("failing"):
        lines += ["", "## Failing tests", ""] + [f"- `{t}`" for t in test_report["failing"]]
    return "\n".join(lines) + "\n"


_SUMMARY_EVIDENCE = ("exit_code", "tests", "passed", "failed", "errors", "pass_rate", "matched", "path", "reason")
