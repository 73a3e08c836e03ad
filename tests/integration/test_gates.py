"""Every quality gate kind (SPEC G1, G4), passing and failing, on a real workspace.

No Prefect: a job is registered with ``longrun.journal.registry.register``, its workspace
created from a template (a real git repository) by ``ensure_workspace``, and
each ``PlannedGate`` from ``compile_spec`` is handed to
``longrun.execution.gates.evaluate_gate``. The commands are real (python, pytest) and so
are the diffs (``gitutil.snapshot_tree`` / ``changed_paths``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_job

from longrun.engine.preflight import ensure_workspace
from longrun.execution.gates import GateInput, evaluate_gate
from longrun.execution.runtime import JobRuntime
from longrun.governance.scope import scope_violations
from longrun.journal.registry import register
from longrun.spec import load_spec
from longrun.spec.compile import ScopeGate, compile_spec
from longrun.workspace import gitutil

PYTEST = ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts="]

SPEC = f"""
name: gates
goal: exercise every gate kind
workspace: {{path: ws, template: template}}
scope_paths: [src, tests]
allowed_tools: [python]
model_policy: {{default: m}}
stages:
  - {{id: noop, run: [python, -c, "pass"]}}
quality_gates:
  required:
    - {{id: cmd-ok, kind: command_pass, run: [python, -c, "print('cmd-ok says hi')"]}}
    - {{id: cmd-fail, kind: command_pass, run: [python, -c, "import sys; print('cmd-fail says bye'); sys.exit(3)"]}}
    - {{id: build-ok, kind: build_pass, run: [python, -m, py_compile, src/app.py]}}
    - {{id: build-fail, kind: build_pass, run: [python, -m, py_compile, src/broken.py]}}
    - {{id: tests-ok, kind: test_pass, run: {json.dumps(PYTEST + ["tests/test_good.py", "--junitxml={junit_xml}"])}}}
    - {{id: tests-fail, kind: test_pass, run: {json.dumps(PYTEST + ["tests/test_mixed.py", "--junitxml={junit_xml}"])}}}
    - id: rate-half
      kind: test_pass
      min_pass_rate: 0.5
      run: {json.dumps(PYTEST + ["tests/test_mixed.py", "--junitxml={junit_xml}"])}
    - id: rate-high
      kind: test_pass
      min_pass_rate: 0.9
      run: {json.dumps(PYTEST + ["tests/test_mixed.py", "--junitxml={junit_xml}"])}
    - {{id: no-report, kind: test_pass, run: [python, -c, "print('all good, trust me')"]}}
    - id: fixed-path
      kind: test_pass
      junit_xml: reports/junit.xml
      run: {json.dumps(PYTEST + ["tests/test_good.py", "--junitxml=reports/junit.xml"])}
    - id: stale-report
      kind: test_pass
      junit_xml: reports/stale.xml
      run: [python, -c, "pass"]
    - id: env-report
      kind: test_pass
      run: [python, write_junit.py]
    - id: exit0-failing
      kind: test_pass
      run: [python, write_junit.py, fail]
    - {{id: changed-src, kind: file_changed, pattern: "src/*.py"}}
    - {{id: changed-docs, kind: file_changed, pattern: "docs/*.md"}}
    - {{id: artifact-there, kind: artifact_exists, path: src/app.py}}
    - {{id: artifact-missing, kind: artifact_exists, path: dist/app.whl}}
    - {{id: release, kind: approval, step: release}}
  optional:
    - {{id: opt-cmd, kind: command_pass, run: [python, -c, "raise SystemExit(1)"]}}
"""

WRITE_JUNIT = """
import os, sys
fail = len(sys.argv) > 1 and sys.argv[1] == "fail"
case = '<testcase classname="t" name="b"><failure message="no"/></testcase>' if fail else '<testcase classname="t" name="b"/>'
xml = '<testsuite name="s"><testcase classname="t" name="a"/>' + case + '</testsuite>'
open(os.environ["LONGRUN_JUNIT_XML"], "w").write(xml)
print("wrote", os.environ["LONGRUN_JUNIT_XML"])
"""

FILES = {
    "src/app.py": "def add(a, b):\n    return a + b\n",
    "src/broken.py": "def oops(:\n",
    "tests/test_good.py": "def test_one():\n    assert 1 + 1 == 2\n\ndef test_two():\n    assert 'a' in 'abc'\n",
    "tests/test_mixed.py": "def test_passes():\n    assert True\n\ndef test_fails():\n    assert 1 == 2\n",
    "write_junit.py": WRITE_JUNIT,
}


@pytest.fixture
def job(tmp_path):
    spec = write_job(tmp_path, SPEC, FILES)
    loaded = load_spec(spec)
    register(loaded, tmp_path)
    ensure_workspace(loaded, tmp_path, spec.parent)
    rt = JobRuntime(loaded=loaded, root=tmp_path, run_id="gate-test")
    gates = {pg.id: pg for pg in compile_spec(loaded.spec).gates}
    return rt, gates


def gate(job, gate_id, inp=GateInput(), iteration=1):
    rt, gates = job
    return evaluate_gate(rt, gates[gate_id], iteration, inp)


def log_slice(result) -> str:
    start, end = result.evidence["log_range"]
    return Path(result.evidence["log"]).read_bytes()[start:end].decode()


# ------------------------------------------------------------------ plan


def test_compiled_plan_has_every_gate_and_the_implicit_scope_gate(job):
    rt, gates = job
    plan = compile_spec(rt.spec)
    kinds = [(g.id, g.kind, g.required) for g in plan.gates]
    # Required gates in spec order, then the implicit scope gate, then optional ones.
    assert kinds[-2:] == [("scope", "scope", True), ("opt-cmd", "command_pass", False)]
    assert {k for _, k, _ in kinds} == {
        "command_pass",
        "build_pass",
        "test_pass",
        "file_changed",
        "artifact_exists",
        "approval",
        "scope",
    }
    scope = gates["scope"].gate
    assert isinstance(scope, ScopeGate) and scope.on_failure.action == "abort" and scope.on_failure.max_retries == 0


def test_no_scope_gate_when_scope_is_the_whole_workspace(tmp_path):
    for scope in ('["."]', '["./"]', '[src, "."]'):
        text = SPEC.replace("scope_paths: [src, tests]", f"scope_paths: {scope}")
        loaded = load_spec(write_job(tmp_path, text))
        assert "scope" not in [g.kind for g in compile_spec(loaded.spec).gates], scope


# ------------------------------------------------------------------ command_pass / build_pass


def test_command_pass_passes_on_exit_0_with_log_evidence(job):
    r = gate(job, "cmd-ok")
    assert (r.passed, r.gate, r.gate_kind, r.required, r.iteration) == (True, "cmd-ok", "command_pass", True, 1)
    assert r.evidence["exit_code"] == 0 and r.evidence["timed_out"] is False
    rt, _ = job
    assert Path(r.evidence["log"]) == rt.paths.iteration_dir(1) / "command.log"
    assert log_slice(r) == "cmd-ok says hi\n"
    assert "=== gate cmd-ok #1 $ python -c" in Path(r.evidence["log"]).read_text()


def test_command_pass_fails_on_nonzero_exit(job):
    r = gate(job, "cmd-fail")
    assert r.passed is False and r.evidence["exit_code"] == 3 and r.evidence["timed_out"] is False
    assert log_slice(r) == "cmd-fail says bye\n"


def test_build_pass_passes_and_fails_on_the_build_exit_code(job):
    ok, bad = gate(job, "build-ok"), gate(job, "build-fail")
    assert (ok.passed, ok.gate_kind, ok.evidence["exit_code"]) == (True, "build_pass", 0)
    assert (bad.passed, bad.gate_kind, bad.evidence["exit_code"]) == (False, "build_pass", 1)
    assert "SyntaxError" in log_slice(bad)
    # Both commands appended to the same iteration log, in order.
    assert ok.evidence["log"] == bad.evidence["log"]
    assert ok.evidence["log_range"][1] <= bad.evidence["log_range"][0]


def test_optional_gate_is_marked_optional(job):
    r = gate(job, "opt-cmd")
    assert r.passed is False and r.required is False and r.evidence["exit_code"] == 1


def test_command_gate_honours_its_timeout(tmp_path):
    text = SPEC.replace(
        "- {id: cmd-ok, kind: command_pass, run: [python, -c, \"print('cmd-ok says hi')\"]}",
        '- {id: cmd-ok, kind: command_pass, timeout: 0.5, run: [python, -c, "import time; time.sleep(30)"]}',
    )
    spec = write_job(tmp_path, text, FILES)
    loaded = load_spec(spec)
    register(loaded, tmp_path)
    ensure_workspace(loaded, tmp_path, spec.parent)
    rt = JobRuntime(loaded=loaded, root=tmp_path, run_id="t")
    pg = next(g for g in compile_spec(loaded.spec).gates if g.id == "cmd-ok")
    r = evaluate_gate(rt, pg, 1, GateInput())
    assert r.passed is False and r.evidence["timed_out"] is True and r.evidence["exit_code"] is None
    assert r.duration_s < 10


# ------------------------------------------------------------------ test_pass


def test_test_pass_passes_on_real_pytest_junit(job):
    rt, _ = job
    r = gate(job, "tests-ok")
    assert r.passed is True and r.gate_kind == "test_pass"
    ev = r.evidence
    assert (ev["tests"], ev["passed"], ev["failed"], ev["errors"], ev["pass_rate"]) == (2, 2, 0, 0, 1.0)
    assert ev["exit_code"] == 0
    junit = rt.paths.iteration_dir(1) / "junit" / "tests-ok.xml"
    assert junit.is_file() and ev["report"]["source"] == str(junit.resolve())
    assert ev["report"]["failing"] == [] and "error" not in ev["report"]


def test_test_pass_fails_on_failing_tests_naming_them(job):
    r = gate(job, "tests-fail")
    ev = r.evidence
    assert r.passed is False
    assert (ev["tests"], ev["passed"], ev["failed"], ev["errors"], ev["pass_rate"]) == (2, 1, 1, 0, 0.5)
    assert ev["exit_code"] == 1
    assert ev["report"]["failing"] == ["tests.test_mixed::test_fails"]


def test_min_pass_rate_threshold(job):
    half, high = gate(job, "rate-half"), gate(job, "rate-high")
    assert half.evidence["pass_rate"] == 0.5 and half.evidence["failed"] == 1
    assert half.passed is True  # 1 of 2 passing meets 0.5
    assert high.evidence["pass_rate"] == 0.5 and high.passed is False  # but not 0.9


def test_test_pass_without_a_report_fails_with_the_report_error(job):
    r = gate(job, "no-report")
    ev = r.evidence
    assert r.passed is False
    assert ev["exit_code"] == 0  # the command "succeeded": the exit code alone never passes a test gate
    assert ev["report"]["error"].startswith("junit_missing: JUnit report not found")
    assert (ev["tests"], ev["passed"], ev["pass_rate"]) == (0, 0, 0.0)


def test_test_pass_with_a_fixed_junit_path_in_the_workspace(job):
    rt, _ = job
    r = gate(job, "fixed-path")
    assert r.passed is True and r.evidence["tests"] == 2
    assert r.evidence["report"]["source"] == str((rt.workspace / "reports" / "junit.xml").resolve())


def test_stale_report_from_before_the_gate_never_counts(job):
    rt, _ = job
    stale = rt.workspace / "reports" / "stale.xml"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text('<testsuite><testcase classname="t" name="ok"/></testsuite>')
    r = gate(job, "stale-report")
    assert r.passed is False and r.evidence["report"]["error"].startswith("junit_missing")
    assert not stale.exists()


def test_test_pass_reads_the_report_written_to_LONGRUN_JUNIT_XML(job):
    ok, bad = gate(job, "env-report"), gate(job, "exit0-failing")
    assert ok.passed is True and (ok.evidence["tests"], ok.evidence["passed"]) == (2, 2)
    assert "wrote " in log_slice(ok) and log_slice(ok).strip().endswith("env-report.xml")
    # The command exits 0 but its report has a failure: the gate fails.
    assert bad.evidence["exit_code"] == 0 and bad.passed is False
    assert bad.evidence["failed"] == 1 and bad.evidence["report"]["failing"] == ["t::b"]


def test_test_pass_report_is_per_iteration(job):
    rt, _ = job
    r1, r2 = gate(job, "tests-ok", iteration=1), gate(job, "tests-ok", iteration=2)
    assert r1.passed and r2.passed and r2.iteration == 2
    assert r2.evidence["report"]["source"] == str((rt.paths.iteration_dir(2) / "junit" / "tests-ok.xml").resolve())
    assert r2.evidence["log"] == str(rt.paths.iteration_dir(2) / "command.log")


# ------------------------------------------------------------------ file_changed


def _diff(rt: JobRuntime, change) -> tuple[str, ...]:
    ws = rt.workspace
    before = gitutil.snapshot_tree(ws)
    change(ws)
    return tuple(gitutil.changed_paths(ws, before, gitutil.snapshot_tree(ws)))


def test_file_changed_matches_the_iterations_diff(job):
    rt, _ = job

    def change(ws: Path) -> None:
        (ws / "src" / "app.py").write_text("def add(a, b):\n    return b + a\n")
        (ws / "src" / "new.py").write_text("x = 1\n")  # untracked counts too
        (ws / "README.md").write_text("changed\n")

    changed = _diff(rt, change)
    assert changed == ("README.md", "src/app.py", "src/new.py")
    hit = gate(job, "changed-src", GateInput(changed_paths=changed))
    assert hit.passed is True and hit.evidence == {"pattern": "src/*.py", "matched": ["src/app.py", "src/new.py"]}
    miss = gate(job, "changed-docs", GateInput(changed_paths=changed))
    assert miss.passed is False and miss.evidence == {"pattern": "docs/*.md", "matched": []}


def test_file_changed_fails_when_nothing_changed(job):
    rt, _ = job
    changed = _diff(rt, lambda ws: None)
    assert changed == ()
    r = gate(job, "changed-src", GateInput(changed_paths=changed))
    assert r.passed is False and r.evidence["matched"] == []


# ------------------------------------------------------------------ artifact_exists


def test_artifact_exists_present_and_absent(job):
    rt, _ = job
    there, missing = gate(job, "artifact-there"), gate(job, "artifact-missing")
    assert there.passed is True and there.evidence == {"path": "src/app.py"}
    assert missing.passed is False and missing.evidence == {"path": "dist/app.whl"}
    (rt.workspace / "dist").mkdir()
    (rt.workspace / "dist" / "app.whl").write_bytes(b"PK")
    assert gate(job, "artifact-missing").passed is True


# ------------------------------------------------------------------ approval


def test_approval_gate_never_passes_by_itself(job):
    rt, _ = job
    # Not even with everything else looking perfect, nor when a human approved
    # in the journal: the gate itself only reports the step; the failure policy
    # (longrun.governance.policy.judge_iteration) resolves it from approval events.
    rt.paths.job_dir.mkdir(parents=True, exist_ok=True)
    from longrun.journal.local import Journal

    Journal(rt.paths.events_file).append(
        "approved", {"step": "release", "iteration": 1, "approver": "alice", "comment": ""}, job_id=rt.job_id
    )
    r = gate(job, "release", GateInput(changed_paths=("src/app.py",)))
    assert (r.passed, r.gate_kind, r.required) == (False, "approval", True)
    assert r.evidence == {"step": "release", "reason": "awaiting an approval event"}


# ------------------------------------------------------------------ scope (implicit)


def test_scope_gate_fails_naming_the_paths_outside_scope(job):
    rt, _ = job

    def change(ws: Path) -> None:
        (ws / "src" / "app.py").write_text("# in scope\n")
        (ws / "README.md").write_text("out of scope\n")
        (ws / "notes").mkdir()
        (ws / "notes" / "todo.txt").write_text("untracked, out of scope\n")
        (ws / "srcx.py").write_text("a prefix of 'src' is not inside it\n")

    changed = _diff(rt, change)
    outside = tuple(scope_violations(changed, rt.spec.scope_paths))
    assert outside == ("README.md", "notes/todo.txt", "srcx.py")
    r = gate(job, "scope", GateInput(changed_paths=changed, out_of_scope=outside))
    assert (r.passed, r.gate_kind, r.required) == (False, "scope", True)
    assert r.evidence == {"scope_paths": ["src", "tests"], "matched": ["README.md", "notes/todo.txt", "srcx.py"]}


def test_scope_gate_passes_when_changes_stay_inside(job):
    rt, _ = job

    def change(ws: Path) -> None:
        (ws / "src" / "app.py").write_text("# in scope\n")
        (ws / "tests" / "test_new.py").write_text("def test_x():\n    pass\n")

    changed = _diff(rt, change)
    assert changed == ("src/app.py", "tests/test_new.py")
    outside = tuple(scope_violations(changed, rt.spec.scope_paths))
    r = gate(job, "scope", GateInput(changed_paths=changed, out_of_scope=outside))
    assert r.passed is True and r.evidence == {"scope_paths": ["src", "tests"], "matched": []}


def test_scope_ignores_longruns_own_files():
    assert scope_violations([".maestro/jobs/x/events.jsonl", "./src//a.py", "src"], ["src"]) == []
    assert scope_violations(["src2/a.py", "a/src/b.py"], ["./src/"]) == ["a/src/b.py", "src2/a.py"]
