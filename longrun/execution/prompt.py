"""The agent prompt: a stage's ``prompt_file`` rendered for one iteration.

Only three placeholders are replaced — ``{goal}``, ``{iteration}`` and
``{previous_failures}`` — by plain text substitution in one pass. Nothing else
in the template is interpreted: other braces stay as written, and there is no
``str.format`` (so no attribute or index access such as ``{goal.__class__}``),
and a substituted value is never scanned again.
"""

from __future__ import annotations

import json
import re

from longrun.errors import LongrunError
from longrun.execution.checkpointing import JobRecords
from longrun.execution.runtime import JobRuntime
from longrun.storage.paths import safe_join

__all__ = ["PLACEHOLDERS", "previous_failures", "render_prompt", "stage_prompt"]

PLACEHOLDERS = ("goal", "iteration", "previous_failures")
_PATTERN = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
#: The prompt ends up in argv; keep it well under the kernel's per-argument limit (128 KiB).
MAX_PROMPT_BYTES = 100_000
_MAX_LISTED = 20


def render_prompt(template: str, values: dict[str, str]) -> str:
    """Replace ``{goal}``, ``{iteration}``, ``{previous_failures}`` in ``template``; nothing else."""
    return _PATTERN.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def previous_failures(rt: JobRuntime, iteration: int) -> str:
    """What failed in the previous iteration: its failing required gates and failing tests ("none" if nothing)."""
    if iteration <= 1:
        return "none (first iteration)"
    prev = iteration - 1
    records = JobRecords(rt.paths)
    lines: list[str] = []
    for gate in rt.plan.gates:
        record = records.load(f"{prev}/gates/{gate.id}.json")
        if record is not None and getattr(record, "passed", True) is False:
            lines.append(f"- gate {gate.id} ({gate.kind}) failed")
    report = rt.paths.iteration_dir(prev) / "test-report.json"
    if report.is_file():
        try:
            failing = json.loads(report.read_text(encoding="utf-8")).get("failing") or []
        except (ValueError, OSError):
            failing = []
        for name in failing[:_MAX_LISTED]:
            lines.append(f"- test {name} failed")
        if len(failing) > _MAX_LISTED:
            lines.append(f"- … and {len(failing) - _MAX_LISTED} more failing tests")
    return "\n".join(lines) if lines else "none"


def stage_prompt(rt: JobRuntime, prompt_file: str, iteration: int) -> str:
    """The rendered prompt of a stage (``prompt_missing`` when the template is not there)."""
    path = safe_join(rt.workspace, prompt_file, what="prompt_file")
    try:
        template = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LongrunError(
            f"prompt_file {prompt_file!r} not found in the workspace {rt.workspace}", code="prompt_missing"
        ) from None
    text = render_prompt(
        template,
        {"goal": rt.spec.goal, "iteration": str(iteration), "previous_failures": previous_failures(rt, iteration)},
    )
    if len(text.encode("utf-8")) > MAX_PROMPT_BYTES:
        raise LongrunError(
            f"prompt_file {prompt_file!r} renders to more than {MAX_PROMPT_BYTES} bytes, too long for one argument",
            code="prompt_invalid",
        )
    return text
