"""Quality gates: completion is decided from evidence the engine gathers itself.

``command_pass`` / ``build_pass``: the command exits 0.
``test_pass``: the command writes JUnit XML (to ``$LONGRUN_JUNIT_XML`` or the
gate's ``junit_xml``); the report has no failures or errors and at least one
test ran, or, with ``min_pass_rate``, its pass rate reaches it. The exit code
alone never passes a test gate.
``file_changed``: a path in the iteration's diff matches the glob, by path
segments (:func:`glob_match`: ``*`` and ``?`` never cross ``/``, ``**`` is any
number of directories).
``artifact_exists``: the path exists inside the workspace.
``approval``: never passes by itself (approval events resolve it).
``scope`` (implicit, see ``longrun.spec.compile.ScopeGate``): nothing changed outside
``scope_paths``; the evidence names the offending paths.
"""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longrun import atomicio
from longrun.errors import LongrunError
from longrun.execution.checkpoint import GateResult
from longrun.execution.junit import empty_report, parse_junit
from longrun.execution.process import run_command
from longrun.execution.runtime import JobRuntime
from longrun.execution.stages import argv_values, check_tool, expand_argv
from longrun.spec.compile import PlannedGate, ScopeGate
from longrun.spec.models import ApprovalGate, ArtifactExistsGate, FileChangedGate, TestPassGate, _CommandGate
from longrun.storage.paths import safe_join


@dataclass(frozen=True)
class GateInput:
    """What a gate may look at besides the workspace: the iteration's diff."""

    changed_paths: tuple[str, ...] = ()
    #: Paths changed outside ``scope_paths`` after any stage of the iteration.
    out_of_scope: tuple[str, ...] = ()


def _segment_regex(seg: str) -> str:
    out, i = [], 0
    while i < len(seg):
        c = seg[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (j := seg.find("]", i + 2)) != -1:
            inner = seg[i + 1 : j]
            inner = "^" + inner[1:] if inner.startswith("!") else inner
            out.append("(?!/)[" + inner.replace("\\", "\\\\") + "]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def glob_match(path: str, pattern: str) -> bool:
    """Whether the POSIX ``path`` matches ``pattern`` segment by segment.

    ``*`` matches within one segment, ``?`` one character of it, ``[...]`` a
    class (``[!...]`` negated); a whole segment ``**`` matches any number of
    segments, none included (``src/**/*.py`` matches ``src/a.py`` and
    ``src/x/y/a.py``; a trailing ``**`` matches everything below).
    """
    parts = pattern.split("/")
    rx = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            rx += ".*" if last else "(?:[^/]+/)*"
        else:
            rx += _segment_regex(part) + ("" if last else "/")
    return re.fullmatch(rx, path, flags=re.DOTALL) is not None


def evaluate_gate(rt: JobRuntime, pg: PlannedGate, iteration: int, inp: GateInput) -> GateResult:
    started = time.monotonic()
    gate = pg.gate
    kind = gate.kind
    evidence: dict[str, Any]
    if isinstance(gate, _CommandGate):
        passed, evidence = _command_gate(rt, gate, iteration)
    elif isinstance(gate, FileChangedGate):
        matched = sorted(p for p in inp.changed_paths if glob_match(p, gate.pattern))
        passed, evidence = bool(matched), {"pattern": gate.pattern, "matched": matched}
    elif isinstance(gate, ArtifactExistsGate):
        target = safe_join(rt.workspace, gate.path, what=f"gate {gate.id} path")
        passed, evidence = target.exists(), {"path": gate.path}
    elif isinstance(gate, ScopeGate):
        passed, evidence = not inp.out_of_scope, {"scope_paths": list(rt.spec.scope_paths), "matched": list(inp.out_of_scope)}
    elif isinstance(gate, ApprovalGate):
        passed, evidence = False, {"step": gate.step, "reason": "awaiting an approval event"}
    else:  # pragma: no cover - the spec's discriminated union forbids it
        raise LongrunError(f"unknown gate kind {kind!r}", code="gate_unknown")
    return GateResult(
        job_id=rt.job_id,
        iteration=iteration,
        gate=gate.id,
        gate_kind=kind,
        required=pg.required,
        passed=passed,
        duration_s=round(time.monotonic() - started, 3),
        evidence=evidence,
    )


def _command_gate(rt: JobRuntime, gate: _CommandGate, iteration: int) -> tuple[bool, dict[str, Any]]:
    check_tool(rt, gate.run, gate.shell, f"gate {gate.id!r}")
    it_dir = rt.paths.iteration_dir(iteration)
    extra: dict[str, str] = {}
    junit_env: dict[str, str] = {}
    writable: list[Path] = []
    junit: Path | None = None
    if isinstance(gate, TestPassGate):
        if gate.junit_xml is not None:
            junit = safe_join(rt.workspace, gate.junit_xml, what=f"gate {gate.id} junit_xml")
        else:
            junit = (it_dir / "junit" / f"{gate.id}.xml").resolve()
        atomicio.remove(junit)
        junit.parent.mkdir(parents=True, exist_ok=True)
        writable.append(junit.parent)
        junit_env["LONGRUN_JUNIT_XML"] = str(junit)
        extra["junit_xml"] = str(junit)
    argv = expand_argv(gate.run, argv_values(rt, iteration, extra), shell=gate.shell)
    log = it_dir / "command.log"
    with tempfile.TemporaryDirectory(prefix="longrun-tmp-") as tmpdir:
        env = rt.base_env(iteration, extra=gate.env, passthrough=gate.env_passthrough, tmpdir=tmpdir)
        env.update({"LONGRUN_GATE": gate.id, "LONGRUN_STAGE": f"gate:{gate.id}", **junit_env})
        result = run_command(
            argv,
            cwd=rt.workspace,
            env=env,
            timeout=gate.timeout or rt.spec.defaults.timeout,
            log_path=log,
            shell=gate.shell,
            header=f"gate {gate.id} #{iteration}",
            sandbox=rt.sandbox_plan(iteration, (*writable, Path(tmpdir))),
        )
    evidence: dict = {
        "exit_code": result.exit_code,
        "timed_out": result.timed_out,
        "log": str(log),
        "log_range": [result.log_offset_start, result.log_offset_end],
    }
    if not isinstance(gate, TestPassGate) or junit is None:
        return result.ok, evidence
    try:
        report = parse_junit(junit, base=(rt.workspace if gate.junit_xml is not None else it_dir).resolve())
    except LongrunError as exc:
        report = empty_report(f"{exc.code}: {exc.message}", source=str(junit))
    evidence["report"] = report
    evidence.update({k: report[k] for k in ("tests", "passed", "failed", "errors", "pass_rate")})
    ran = report["tests"] - report["skipped"]
    if gate.min_pass_rate is not None:
        passed = ran > 0 and report["pass_rate"] >= gate.min_pass_rate
    else:
        passed = ran > 0 and report["failed"] == 0 and report["errors"] == 0
    if "error" in report:
        passed = False
    return passed, evidence
