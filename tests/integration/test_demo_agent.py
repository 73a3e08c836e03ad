"""The fix-failing-test example, run for real without the engine.

The test plays the engine's part by hand: it copies the workspace template into a
fresh git repository, runs the example's stages and its test gate as subprocesses
with the stage contract's environment, and turns the JUnit XML into the
``test-report.json`` that the next iteration's plan stage reads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from longrun.spec import load_spec
from longrun.spec.models import JobSpec, Stage

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")

SPEC_FILE = Path(__file__).resolve().parents[2] / "jobspecs" / "examples" / "fix-failing-test.yaml"


@pytest.fixture(scope="module")
def spec() -> JobSpec:
    return load_spec(SPEC_FILE).spec


def git(ws: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    cmd = ["git", "-c", "user.name=longrun-test", "-c", "user.email=test@longrun.invalid", *args]
    return subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def workspace(tmp_path: Path, spec: JobSpec) -> Path:
    """The template copied into a new git repository, as the engine prepares it."""
    ws = tmp_path / "workspace"
    shutil.copytree(SPEC_FILE.parent / spec.workspace.template, ws, ignore=shutil.ignore_patterns("__pycache__"))
    git(ws, "init", "-q")
    git(ws, "add", "-A")
    git(ws, "commit", "-q", "-m", "workspace template")
    return ws


def argv(run: list[str]) -> list[str]:
    """The spec's argv with ``python`` resolved to this interpreter."""
    return [sys.executable if run[0] == "python" else run[0], *run[1:]]


def contract_env(
    spec: JobSpec, ckpt: Path, *, iteration: int, stage: str, phase: str | None, prev: Path | None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LONGRUN_", "PYTEST_"))}
    env.update(
        LONGRUN_JOB_ID="0123456789ab",
        LONGRUN_RUN_ID="run-test",
        LONGRUN_ITERATION=str(iteration),
        LONGRUN_STAGE=stage,
        LONGRUN_PHASE=phase or "",
        LONGRUN_MODEL=spec.select_model_for_phase(phase),
        LONGRUN_GOAL=spec.goal,
        LONGRUN_CHECKPOINT_DIR=str(ckpt),
        LONGRUN_USAGE_FILE=str(ckpt / f"usage-{stage}.json"),
        LONGRUN_PREV_CHECKPOINT_DIR=str(prev) if prev is not None else "",
    )
    return env


def run_stage(spec: JobSpec, ws: Path, ckpt: Path, stage: Stage, *, iteration: int, prev: Path | None) -> str:
    ckpt.mkdir(parents=True, exist_ok=True)
    env = contract_env(spec, ckpt, iteration=iteration, stage=stage.id, phase=stage.effective_phase, prev=prev)
    proc = subprocess.run(argv(stage.run), cwd=ws, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def run_gate(spec: JobSpec, ws: Path, ckpt: Path, *, iteration: int) -> dict:
    """Run the example's test gate and return the test report built from its JUnit XML."""
    (gate,) = spec.quality_gates.required
    ckpt.mkdir(parents=True, exist_ok=True)
    junit = ckpt / "junit.xml"
    env = contract_env(spec, ckpt, iteration=iteration, stage=f"gate:{gate.id}", phase="verify", prev=None)
    env.update(gate.env, LONGRUN_JUNIT_XML=str(junit))
    cmd = [a.replace("{junit_xml}", str(junit)) for a in argv(gate.run)]
    subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=120)
    report = junit_report(junit)
    (ckpt / "test-report.json").write_text(json.dumps(report), encoding="utf-8")
    return report


def junit_report(path: Path) -> dict:
    """The stage contract's test-report.json, from JUnit XML."""
    cases = list(ET.parse(path).getroot().iter("testcase"))
    failed = [c for c in cases if c.find("failure") is not None]
    errors = [c for c in cases if c.find("error") is not None]
    skipped = [c for c in cases if c.find("skipped") is not None]
    passed = len(cases) - len(failed) - len(errors) - len(skipped)
    return {
        "tests": len(cases),
        "passed": passed,
        "failed": len(failed),
        "errors": len(errors),
        "skipped": len(skipped),
        "pass_rate": passed / len(cases) if cases else 0.0,
        "failing": [f"{c.get('classname')}::{c.get('name')}" for c in failed + errors],
    }


def changed_paths(ws: Path) -> list[str]:
    return sorted(line[3:] for line in git(ws, "status", "--porcelain", "--untracked-files=all").splitlines())


def in_scope(path: str, scope: list[str]) -> bool:
    return any(path == s or path.startswith(s.rstrip("/") + "/") for s in scope)


def test_template_starts_with_two_failing_tests(spec, workspace, tmp_path):
    report = run_gate(spec, workspace, tmp_path / "ckpt" / "0", iteration=0)
    assert report["tests"] == 3 and report["failed"] == 2 and report["errors"] == 0
    assert report["failing"] == ["tests.test_calc::test_add", "tests.test_calc::test_mul"]


def test_two_iterations_fix_everything(spec, workspace, tmp_path):
    plan, execute = spec.stages
    ckpt = tmp_path / "checkpoints"

    # Iteration 1: no previous report; the plan inspects the source.
    out = run_stage(spec, workspace, ckpt / "1", plan, iteration=1, prev=None)
    assert "2 failing test(s)" in out
    plan_md = (workspace / "PLAN.md").read_text(encoding="utf-8")
    assert "# Plan — iteration 1" in plan_md
    assert "tests.test_calc::test_add" in plan_md and "tests.test_calc::test_mul" in plan_md
    assert "Fix `add`" in plan_md

    out = run_stage(spec, workspace, ckpt / "1", execute, iteration=1, prev=None)
    assert "fixed add" in out
    diff = git(workspace, "diff")
    assert "-    return a - b\n+    return a + b" in diff and "a * b" not in diff

    report1 = run_gate(spec, workspace, ckpt / "1", iteration=1)
    assert (report1["tests"], report1["passed"], report1["failed"], report1["errors"]) == (3, 2, 1, 0)
    assert report1["failing"] == ["tests.test_calc::test_mul"]

    # Iteration 2: the plan reads iteration 1's test report.
    run_stage(spec, workspace, ckpt / "2", plan, iteration=2, prev=ckpt / "1")
    plan_md = (workspace / "PLAN.md").read_text(encoding="utf-8")
    assert "previous iteration's test report: 1 failing of 3" in plan_md
    assert "tests.test_calc::test_mul" in plan_md and "test_add" not in plan_md
    assert "Fix `mul`" in plan_md

    out = run_stage(spec, workspace, ckpt / "2", execute, iteration=2, prev=ckpt / "1")
    assert "fixed mul" in out

    report2 = run_gate(spec, workspace, ckpt / "2", iteration=2)
    assert (report2["tests"], report2["passed"], report2["failed"], report2["errors"]) == (3, 3, 0, 0)
    assert report2["failing"] == [] and report2["pass_rate"] == 1.0

    # The agent touched only paths in the spec's scope; the gate left no caches behind.
    assert changed_paths(workspace) == ["PLAN.md", "src/calc/__init__.py"]
    assert all(in_scope(p, spec.scope_paths) for p in changed_paths(workspace))
    assert not (workspace / ".pytest_cache").exists()
    assert not list(workspace.rglob("__pycache__"))


def test_execute_does_nothing_once_fixed(spec, workspace, tmp_path):
    _, execute = spec.stages
    for i in (1, 2):
        run_stage(spec, workspace, tmp_path / str(i), execute, iteration=i, prev=None)
    source = (workspace / "src" / "calc" / "__init__.py").read_bytes()
    out = run_stage(spec, workspace, tmp_path / "3", execute, iteration=3, prev=None)
    assert "nothing to fix" in out
    assert (workspace / "src" / "calc" / "__init__.py").read_bytes() == source


def test_execute_is_deterministic(spec, tmp_path):
    _, execute = spec.stages
    results = []
    for name in ("a", "b"):
        ws = tmp_path / name
        shutil.copytree(SPEC_FILE.parent / spec.workspace.template, ws, ignore=shutil.ignore_patterns("__pycache__"))
        run_stage(spec, ws, tmp_path / f"ckpt-{name}", execute, iteration=1, prev=None)
        results.append((ws / "src" / "calc" / "__init__.py").read_bytes())
    assert results[0] == results[1]


def test_usage_is_reported(spec, workspace, tmp_path):
    plan, execute = spec.stages
    ckpt = tmp_path / "ckpt"
    run_stage(spec, workspace, ckpt, plan, iteration=1, prev=None)
    run_stage(spec, workspace, ckpt, execute, iteration=1, prev=None)
    plan_usage = json.loads((ckpt / "usage-plan.json").read_text(encoding="utf-8"))
    execute_usage = json.loads((ckpt / "usage-execute.json").read_text(encoding="utf-8"))
    assert plan_usage == {"usd": 0.01, "tokens": 1200, "model": "small-fast"}
    assert execute_usage == {"usd": 0.05, "tokens": 5000, "model": "large-careful"}


def test_plan_falls_back_to_the_source_when_the_report_is_unreadable(spec, workspace, tmp_path):
    plan, _ = spec.stages
    prev = tmp_path / "prev"
    prev.mkdir()
    (prev / "test-report.json").write_text("{not json", encoding="utf-8")
    run_stage(spec, workspace, tmp_path / "ckpt", plan, iteration=2, prev=prev)
    plan_md = (workspace / "PLAN.md").read_text(encoding="utf-8")
    assert "unreadable" in plan_md and "tests.test_calc::test_add" in plan_md


def test_unknown_command_is_refused(workspace):
    proc = subprocess.run([sys.executable, "tools/demo_agent.py", "deploy"], cwd=workspace, capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr
