"""gitutil against real repositories in tmp_path."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from longrun.errors import LongrunError
from longrun.workspace.gitutil import (
    INITIAL_COMMIT_MESSAGE,
    changed_paths,
    diff_trees,
    init_from_template,
    is_repo,
    snapshot_tree,
)


@pytest.fixture(autouse=True)
def no_user_git_config(tmp_path, monkeypatch):
    """Behave like a fresh machine: no HOME config, no identity, and hostile GIT_* vars."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "wrong-index"))  # must be ignored
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.delenv(var, raising=False)


def git(cwd: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def workspace(tmp_path) -> Path:
    template = tmp_path / "template"
    (template / "src").mkdir(parents=True)
    (template / "src" / "app.py").write_text("print('v1')\n")
    (template / "README.md").write_text("hello\n")
    (template / ".gitignore").write_text("*.log\n")
    dest = tmp_path / "ws"
    init_from_template(template, dest)
    return dest


def index_state(ws: Path) -> tuple[str, str, bytes]:
    return git(ws, "status", "--porcelain"), git(ws, "rev-parse", "HEAD"), (ws / ".git" / "index").read_bytes()


def test_init_from_template_creates_one_commit(tmp_path, workspace):
    assert is_repo(workspace)
    assert git(workspace, "log", "--format=%s|%an|%ae").strip() == f"{INITIAL_COMMIT_MESSAGE}|longrun|longrun@localhost"
    assert git(workspace, "branch", "--show-current").strip() == "main"
    assert sorted(git(workspace, "ls-files").split()) == [".gitignore", "README.md", "src/app.py"]
    assert git(workspace, "status", "--porcelain") == ""


def test_init_returns_head_sha_and_skips_template_git(tmp_path):
    template = tmp_path / "tpl"
    template.mkdir()
    (template / "a.txt").write_text("a\n")
    git(template, "init", "-q")
    sha = init_from_template(template, tmp_path / "ws")
    assert sha == git(tmp_path / "ws", "rev-parse", "HEAD").strip()
    assert len(sha) == 40
    assert git(tmp_path / "ws", "rev-list", "--count", "HEAD").strip() == "1"


def test_init_from_empty_template(tmp_path):
    (tmp_path / "empty").mkdir()
    assert len(init_from_template(tmp_path / "empty", tmp_path / "ws")) == 40


def test_init_refuses_existing_dest_and_missing_template(tmp_path, workspace):
    with pytest.raises(LongrunError) as info:
        init_from_template(tmp_path / "template", workspace)
    assert info.value.code == "workspace_exists"
    with pytest.raises(LongrunError) as info:
        init_from_template(tmp_path / "nope", tmp_path / "ws2")
    assert info.value.code == "template_not_found"
    assert not (tmp_path / "ws2").exists()


def test_is_repo(tmp_path, workspace):
    assert is_repo(workspace) and is_repo(workspace / "src")
    plain = tmp_path / "plain"
    plain.mkdir()
    assert not is_repo(plain)
    assert not is_repo(tmp_path / "missing")


def test_snapshot_of_clean_tree_equals_head_tree(workspace):
    assert snapshot_tree(workspace) == git(workspace, "rev-parse", "HEAD^{tree}").strip()


def test_snapshot_includes_untracked_and_changes_without_touching_index(workspace):
    before = snapshot_tree(workspace)
    (workspace / "src" / "app.py").write_text("print('v2')\n")
    (workspace / "src" / "new.py").write_text("x = 1\n")
    (workspace / "README.md").unlink()
    (workspace / "debug.log").write_text("ignored\n")
    (workspace / ".maestro").mkdir()
    (workspace / ".maestro" / "state.json").write_text("{}\n")
    state = index_state(workspace)

    after = snapshot_tree(workspace)

    assert index_state(workspace) == state  # status, HEAD and the index file itself unchanged
    listed = sorted(git(workspace, "ls-tree", "-r", "--name-only", after).split())
    assert listed == [".gitignore", "src/app.py", "src/new.py"]
    assert changed_paths(workspace, before, after) == ["README.md", "src/app.py", "src/new.py"]
    patch = diff_trees(workspace, before, after)
    assert "-print('v1')\n+print('v2')" in patch
    assert "+x = 1" in patch and "deleted file mode" in patch
    assert ".maestro" not in patch and "debug.log" not in patch


def test_snapshot_drops_excluded_paths_even_if_committed(workspace):
    (workspace / ".maestro").mkdir()
    (workspace / ".maestro" / "old.json").write_text("{}\n")
    git(workspace, "add", "-f", ".maestro")
    git(workspace, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "oops")
    tree = snapshot_tree(workspace)
    assert ".maestro" not in git(workspace, "ls-tree", "--name-only", tree)
    assert ".maestro" in git(workspace, "ls-tree", "--name-only", snapshot_tree(workspace, exclude=()))


def test_snapshot_in_repo_without_commits(tmp_path):
    ws = tmp_path / "fresh"
    ws.mkdir()
    git(ws, "init", "-q")
    (ws / "a.txt").write_text("a\n")
    tree = snapshot_tree(ws)
    assert git(ws, "ls-tree", "--name-only", tree).split() == ["a.txt"]
    assert git(ws, "status", "--porcelain") == "?? a.txt\n"
    assert not (ws / ".git" / "index").exists()


def test_diff_between_two_snapshots_applies_cleanly(tmp_path, workspace):
    a = snapshot_tree(workspace)
    (workspace / "src" / "app.py").write_text("print('v3')\n")
    (workspace / "blob.bin").write_bytes(bytes(range(256)) * 4)
    b = snapshot_tree(workspace)
    patch = diff_trees(workspace, a, b)
    assert "GIT binary patch" in patch
    # Apply the patch to a pristine copy of the template: it reproduces snapshot b.
    clone = tmp_path / "clone"
    init_from_template(tmp_path / "template", clone)
    (tmp_path / "p.diff").write_bytes(patch.encode("utf-8", "surrogateescape"))
    git(clone, "apply", "--index", str(tmp_path / "p.diff"))
    assert git(clone, "write-tree").strip() == b


def test_changed_paths_handles_unicode_names_and_identical_trees(workspace):
    a = snapshot_tree(workspace)
    assert changed_paths(workspace, a, a) == [] and diff_trees(workspace, a, a) == ""
    (workspace / "naïve file.txt").write_text("x\n")
    b = snapshot_tree(workspace)
    assert changed_paths(workspace, a, b) == ["naïve file.txt"]


def test_git_failure_carries_stderr(tmp_path, workspace):
    with pytest.raises(LongrunError) as info:
        diff_trees(workspace, "0" * 40, "HEAD")
    assert info.value.code == "git_failed"
    assert "bad object" in info.value.message or "invalid" in info.value.message.lower()
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(LongrunError) as info:
        snapshot_tree(plain)
    assert info.value.code == "git_failed" and "not a git repository" in info.value.message
