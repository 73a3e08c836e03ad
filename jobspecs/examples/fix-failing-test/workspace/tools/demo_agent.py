"""A deterministic stand-in for a coding agent (no LLM, standard library only).

Used by ``jobspecs/examples/fix-failing-test.yaml``; it runs with the job's
workspace as the current directory::

    python tools/demo_agent.py plan      # write PLAN.md
    python tools/demo_agent.py execute   # fix the first still-broken function

It knows the planted bugs of ``src/calc`` (the ``REPAIRS`` catalogue) and finds
them by parsing the source, so its behaviour depends only on the files in the
workspace: ``execute`` repairs exactly one bug per call, in source order, and
does nothing once every known bug is fixed.

Like a real agent under longrun it reads its context from ``LONGRUN_*``
environment variables (iteration, goal, model, the previous iteration's
``test-report.json``) and reports its spend as JSON in ``$LONGRUN_USAGE_FILE``.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path("src/calc/__init__.py")
PLAN_FILE = Path("PLAN.md")

# What each command pretends to cost: (USD, tokens).
USAGE = {"plan": (0.01, 1200), "execute": (0.05, 5000)}


@dataclass(frozen=True)
class Repair:
    """A known bug: ``function`` returns ``broken`` where it should return ``fixed``."""

    function: str
    broken: str
    fixed: str
    test: str  # the JUnit id ("classname::name") of the test that exposes it


REPAIRS = (
    Repair("add", "a - b", "a + b", "tests.test_calc::test_add"),
    Repair("mul", "a + b", "a * b", "tests.test_calc::test_mul"),
)


@dataclass(frozen=True)
class Bug:
    repair: Repair
    node: ast.expr  # the broken return value, with its position in SOURCE


def find_bugs(text: str) -> list[Bug]:
    """Known bugs still present in ``text``, in source order."""
    catalogue = {r.function: r for r in REPAIRS}
    bugs: list[Bug] = []
    for fn in ast.parse(text).body:
        if not isinstance(fn, ast.FunctionDef) or fn.name not in catalogue:
            continue
        repair = catalogue[fn.name]
        for node in ast.walk(fn):
            if isinstance(node, ast.Return) and node.value is not None and ast.unparse(node.value) == repair.broken:
                bugs.append(Bug(repair, node.value))
                break
    return bugs


def apply_fix(text: str, bug: Bug) -> str:
    """Replace the broken return expression of ``bug`` by the fixed one."""
    node = bug.node
    if node.lineno != node.end_lineno:
        raise ValueError(f"{bug.repair.function}: expected a one-line return expression")
    lines = text.splitlines(keepends=True)
    line = lines[node.lineno - 1]
    # AST column offsets count UTF-8 bytes.
    raw = line.encode("utf-8")
    raw = raw[: node.col_offset] + bug.repair.fixed.encode("utf-8") + raw[node.end_col_offset:]
    lines[node.lineno - 1] = raw.decode("utf-8")
    return "".join(lines)


def read_previous_report() -> tuple[dict | None, str]:
    """The previous iteration's test report, if there is one, and why not otherwise."""
    prev = os.environ.get("LONGRUN_PREV_CHECKPOINT_DIR", "")
    if not prev:
        return None, "first iteration: no previous test report"
    path = Path(prev) / "test-report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "the previous iteration left no test report"
    except (OSError, ValueError) as exc:
        return None, f"the previous test report is unreadable ({exc})"
    if not isinstance(report, dict) or not isinstance(report.get("failing"), list):
        return None, "the previous test report has no 'failing' list"
    return report, "previous iteration's test report"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file and ``os.replace``, keeping its mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def report_usage(command: str) -> None:
    usd, tokens = USAGE[command]
    usage = {"usd": usd, "tokens": tokens, "model": os.environ.get("LONGRUN_MODEL") or "demo"}
    target = os.environ.get("LONGRUN_USAGE_FILE", "")
    if target:
        write_atomic(Path(target), json.dumps(usage) + "\n")
    print(f"usage: {usage['usd']} USD, {usage['tokens']} tokens on {usage['model']}")


def plan() -> int:
    iteration = os.environ.get("LONGRUN_ITERATION", "?")
    goal = os.environ.get("LONGRUN_GOAL", "").strip()
    bugs = find_bugs(SOURCE.read_text(encoding="utf-8"))
    report, origin = read_previous_report()

    out = [f"# Plan — iteration {iteration}", ""]
    if goal:
        out += [f"Goal: {goal}", ""]
    out += ["## Failing tests", ""]
    if report is not None:
        failing = [str(t) for t in report["failing"]]
        out.append(f"From the {origin}: {len(failing)} failing of {report.get('tests', '?')}.")
    else:
        failing = [b.repair.test for b in bugs]
        out.append(f"No report to read ({origin}); suspected from inspecting {SOURCE}.")
    out.append("")
    out += [f"- `{t}`" for t in failing] or ["- none"]
    out += ["", "## This iteration", ""]
    if bugs:
        first = bugs[0].repair
        out.append(f"- Fix `{first.function}` in `{SOURCE}`: return `{first.fixed}` instead of `{first.broken}`.")
        out += ["", "## Later", ""]
        out += [f"- Fix `{b.repair.function}`." for b in bugs[1:]] or ["- Nothing else known; re-run the tests."]
    else:
        out.append("- Nothing left to fix: every known bug is repaired; the tests should pass.")
    write_atomic(PLAN_FILE, "\n".join(out) + "\n")

    print(f"plan: iteration {iteration}: {len(failing)} failing test(s) ({origin})")
    for t in failing:
        print(f"plan:   failing {t}")
    print(f"plan: wrote {PLAN_FILE}; will fix: {bugs[0].repair.function if bugs else 'nothing'}")
    report_usage("plan")
    return 0


def execute() -> int:
    text = SOURCE.read_text(encoding="utf-8")
    bugs = find_bugs(text)
    print(f"execute: iteration {os.environ.get('LONGRUN_ITERATION', '?')}: {len(bugs)} known bug(s) in {SOURCE}")
    if bugs:
        bug = bugs[0]
        write_atomic(SOURCE, apply_fix(text, bug))
        print(f"execute: fixed {bug.repair.function}: `{bug.repair.broken}` -> `{bug.repair.fixed}`")
        print(f"execute: {len(bugs) - 1} known bug(s) left")
    else:
        print("execute: nothing to fix")
    report_usage("execute")
    return 0


COMMANDS = {"plan": plan, "execute": execute}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in COMMANDS:
        print(f"usage: demo_agent.py {{{'|'.join(COMMANDS)}}}", file=sys.stderr)
        return 2
    if not SOURCE.is_file():
        print(f"demo_agent: {SOURCE} not found; run me from the workspace root", file=sys.stderr)
        return 1
    return COMMANDS[argv[0]]()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
