"""The agent prompt: a stage's ``prompt_file`` rendered for one iteration.

Only three placeholders are replaced — ``{goal}``, ``{iteration}`` and
``{previous_failures}`` — by plain text substitution in one pass. Nothing else
in the template is interpreted: other braces stay as written, and there is no
``str.format`` (so no attribute or index access such as ``{goal.__class__}``),
and a substituted value is never scanned again.
"""

from __future__ import annotations

import re

from longrun.errors import LongrunError
from longrun.execution.runtime import JobRuntime
from longrun.journal.local import Journal
from longrun.journal.payloads import GateEvaluated
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
    """What failed in the previous iteration: its failing gates and their failing tests ("none" if nothing).

    Read from the journal's ``gate_evaluated`` events (the last evaluation of
    each gate counts), which every executor writes, passed or not.
    """
    if iteration <= 1:
        return "none (first iteration)"
    prev = iteration - 1
    failed: dict[str, tuple[str, bool, list[str]]] = {}
    if rt.paths.events_file.exists():
        for event in Journal(rt.paths.events_file).read():
            p = event.payload
            if not isinstance(p, GateEvaluated) or p.iteration != prev:
                continue
            if p.passed:
                failed.pop(p.gate, None)
            else:
                listed = p.evidence.get("failing")
                tests = [str(t) for t in listed] if isinstance(listed, (list, tuple)) else []
                failed[p.gate] = (p.kind, p.required, tests)
    lines: list[str] = []
    for gate, (kind, required, tests) in failed.items():
        lines.append(f"- gate {gate} ({kind}) failed" + ("" if required else " (optional)"))
        lines.extend(f"  - test {name} failed" for name in tests[:_MAX_LISTED])
        if len(tests) > _MAX_LISTED:
            lines.append(f"  - … and {len(tests) - _MAX_LISTED} more failing tests")
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
