"""Scope guard (SPEC G4): changed paths against scope_paths, and spec paths under the root."""

from __future__ import annotations

import os

import pytest

from longrun.errors import LongrunError
from longrun.governance.scope import changed_since, check_spec_paths, ensure_in_scope, scope_gate, scope_violations
from longrun.spec import parse_spec_text
from longrun.workspace import gitutil

# -- scope_violations --------------------------------------------------------------


def test_equal_or_under_a_scope_path_is_in_scope():
    changed = ["src/a.py", "src", "srcx/b.py", "tests/test_a.py", "README.md", "docs/x/y.md"]
    assert scope_violations(changed, ["src", "docs/x"]) == ["README.md", "srcx/b.py", "tests/test_a.py"]


def test_dot_means_everything_and_maestro_is_ignored():
    assert scope_violations(["a", "b/c", "README.md"], ["."]) == []
    assert scope_violations([".maestro/checkpoints/x", ".maestro", ".maestrox/a"], ["src"]) == [".maestrox/a"]


def test_paths_are_normalised():
    assert scope_violations(["./src/a.py", "src//b.py", "lib/c.py", "lib/c.py"], ["./src/", "src"]) == ["lib/c.py"]
    assert scope_violations(["x"], ["./"]) == []


def test_scope_gate_and_ensure():
    assert scope_gate(["src/a.py"], ["src"]) == (True, {"scope_paths": ["src"], "violations": []})
    assert scope_gate(["etc/passwd"], ["src"])[1]["violations"] == ["etc/passwd"]
    ensure_in_scope(["src/a.py"], ["src"])
    with pytest.raises(LongrunError) as exc:
        ensure_in_scope(["src/a.py", "setup.py"], ["src"])
    assert exc.value.code == "scope_violation" and "setup.py" in exc.value.message


# -- changed_since in a real repository ---------------------------------------------


@pytest.fixture
def repo(tmp_path):
    template = tmp_path / "template"
    (template / "src").mkdir(parents=True)
    (template / "src" / "a.py").write_text("a = 1\n")
    (template / "README.md").write_text("readme\n")
    (template / "old.txt").write_text("to be deleted\n")
    (template / ".gitignore").write_text("*.log\n")
    ws = tmp_path / "ws"
    gitutil.init_from_template(template, ws)
    return ws


def test_changed_since_sees_edits_deletions_and_untracked_files(repo):
    start = gitutil.snapshot_tree(repo)
    (repo / "src" / "a.py").write_text("a = 2\n")
    (repo / "src" / "new.py").write_text("new\n")  # untracked
    (repo / "notes.txt").write_text("untracked, outside scope\n")
    (repo / "old.txt").unlink()
    (repo / "debug.log").write_text("ignored\n")
    (repo / ".maestro").mkdir()
    (repo / ".maestro" / "journal").write_text("longrun's own\n")
    changed = changed_since(repo, start)
    assert changed == ["notes.txt", "old.txt", "src/a.py", "src/new.py"]
    assert scope_violations(changed, ["src"]) == ["notes.txt", "old.txt"]
    assert changed_since(repo, gitutil.snapshot_tree(repo)) == []


# -- check_spec_paths --------------------------------------------------------------

SPEC = """
name: paths
goal: g
allowed_tools: [python]
model_policy: {default: m}
workspace: {path: ws}
scope_paths: [src, link/inner]
plan_file: link/PLAN.md
stages: [{id: execute, run: [python]}]
stop_conditions: {stop_file: .maestro/STOP}
quality_gates:
  required:
    - {id: art, kind: artifact_exists, path: link/out.bin}
    - {id: tests, kind: test_pass, run: [python], junit_xml: reports/junit.xml}
  optional:
    - {id: art2, kind: artifact_exists, path: dist/out.bin}
"""


def test_clean_spec_paths_have_no_problems(tmp_path):
    spec = parse_spec_text(SPEC.replace("link/", "ok/"))
    (tmp_path / "ws").mkdir()
    assert check_spec_paths(spec, tmp_path) == []


def test_symlink_leading_outside_is_a_path_escape(tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    (root / "ws").mkdir(parents=True)
    elsewhere.mkdir()
    os.symlink(elsewhere, root / "ws" / "link")  # ws/link → outside the root
    problems = check_spec_paths(parse_spec_text(SPEC), root)
    assert len(problems) == 3
    assert all(p.startswith("path_escape: ") for p in problems)
    joined = "\n".join(problems)
    for what in ("scope_paths[1] 'link/inner'", "plan_file 'link/PLAN.md'", "quality_gates.required[0].path 'link/out.bin'"):
        assert what in joined
    assert str(elsewhere.resolve()) in joined


def test_symlinked_workspace_outside_the_root(tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, root / "ws")
    os.symlink(elsewhere, root / ".maestro")
    problems = check_spec_paths(parse_spec_text(SPEC), root)
    assert [p.split(" '")[0] for p in problems] == [
        "path_escape: stop_conditions.stop_file",
        "path_escape: workspace.path",
    ]
