"""The engine's git calls never run what a workspace plants: real repos, real git, a marker file.

Each plant is first shown to work with a plain ``git`` (the marker appears), so
a test that passes is not passing because the plant was broken.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from longrun.errors import LongrunError
from longrun.workspace import worktree
from longrun.workspace.gitutil import _git, changed_paths, diff_trees, init_from_template, snapshot_tree

JOB = "0123456789ab"


def plain_git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull)
    cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=check)


def script(path: Path, marker: Path, word: str, body: str = "") -> str:
    path.write_text(f"#!/bin/sh\necho {word} >> {marker}\n{body}")
    path.chmod(0o755)
    return str(path)


def plant_everything(ws: Path, marker: Path, tools: Path) -> None:
    """fsmonitor, hooks, a clean/smudge filter, textconv, diff.external and a diff/merge driver."""
    tools.mkdir(exist_ok=True)
    config = {
        "core.fsmonitor": script(tools / "fsmonitor", marker, "fsmonitor"),
        "filter.evil.clean": script(tools / "clean", marker, "clean", "cat\n"),
        "filter.evil.smudge": script(tools / "smudge", marker, "smudge", "cat\n"),
        "filter.evil.required": "true",
        "diff.evil.textconv": script(tools / "textconv", marker, "textconv", 'cat "$1"\n'),
        "diff.evil.command": script(tools / "diffcmd", marker, "diffcommand"),
        "diff.external": script(tools / "external", marker, "external"),
        "merge.evil.driver": script(tools / "merge", marker, "merge"),
        "core.sshCommand": script(tools / "ssh", marker, "ssh"),
        "core.pager": script(tools / "pager", marker, "pager"),
    }
    for key, value in config.items():
        plain_git(ws, "config", key, value)
    hooks = ws / ".git" / "hooks"
    for hook in ("pre-commit", "post-commit", "commit-msg", "post-checkout", "pre-applypatch", "post-applypatch"):
        script(hooks / hook, marker, f"hook-{hook}")
    (ws / ".gitattributes").write_text("* filter=evil diff=evil merge=evil\n")
    (ws / ".git" / "info").mkdir(exist_ok=True)
    (ws / ".git" / "info" / "attributes").write_text("*.txt filter=evil diff=evil merge=evil\n")


@pytest.fixture
def planted(tmp_path) -> tuple[Path, Path]:
    template = tmp_path / "template"
    template.mkdir()
    (template / "a.txt").write_text("one\n")
    ws = tmp_path / "ws"
    init_from_template(template, ws)
    marker = tmp_path / "marker"
    plant_everything(ws, marker, tmp_path / "tools")
    (ws / "a.txt").write_text("two\n")
    (ws / "new.txt").write_text("new\n")
    return ws, marker


def test_the_plants_are_real_plain_git_runs_them(planted):
    ws, marker = planted
    plain_git(ws, "status", "--porcelain")
    plain_git(ws, "add", "-A")
    plain_git(ws, "diff", "--cached", "HEAD")
    plain_git(ws, "commit", "-q", "-m", "x")
    ran = set(marker.read_text().split())
    assert {"fsmonitor", "clean", "diffcommand", "hook-pre-commit", "hook-post-commit"} <= ran


def test_snapshot_diff_changed_and_dirty_run_nothing_the_workspace_planted(planted):
    ws, marker = planted
    head = _git(ws, "rev-parse", "HEAD").stdout.strip()
    tree = snapshot_tree(ws)
    assert worktree.is_dirty(ws)
    assert changed_paths(ws, head, tree) == [".gitattributes", "a.txt", "new.txt"]
    patch = diff_trees(ws, head, tree)
    assert "-one\n+two\n" in patch  # the real content: no textconv, no filter applied
    assert not marker.exists(), marker.read_text()


def test_commit_format_patch_worktree_and_am_run_nothing_the_workspace_planted(planted, tmp_path):
    ws, marker = planted
    plain_git(ws, "add", "-A")
    plain_git(ws, "-c", "core.hooksPath=/dev/null", "-c", "filter.evil.clean=cat", "commit", "-q", "-m", "base")
    marker.unlink(missing_ok=True)
    wt = worktree.ensure_worktree(ws, JOB, tmp_path / "wt")
    (wt / "a.txt").write_text("three\n")
    assert worktree.commit_all(wt, "change") is not None
    patches = worktree.export_patches(wt, worktree.fork_point(ws, JOB), tmp_path / "patches")
    assert len(patches) == 1
    worktree.remove_worktree(ws, wt)
    worktree.apply_patches(ws, patches)
    assert (ws / "a.txt").read_text() == "three\n"
    assert not marker.exists(), marker.read_text()


def test_filter_driver_named_with_dots_is_neutralised(tmp_path):
    ws = tmp_path / "ws"
    (tmp_path / "t").mkdir()
    init_from_template(tmp_path / "t", ws)
    marker = tmp_path / "marker"
    plain_git(ws, "config", "filter.a.b=c.clean", script(tmp_path / "clean", marker, "clean", "cat\n"))
    (ws / ".gitattributes").write_text("* filter=a.b=c\n")
    (ws / "f").write_text("x\n")
    plain_git(ws, "add", "-A")
    assert marker.exists()  # the control: plain git runs it
    marker.unlink()
    snapshot_tree(ws)
    assert not marker.exists()


def test_included_config_plants_are_neutralised(tmp_path):
    ws = tmp_path / "ws"
    (tmp_path / "t").mkdir()
    init_from_template(tmp_path / "t", ws)
    marker = tmp_path / "marker"
    extra = tmp_path / "extra.cfg"
    clean = script(tmp_path / "clean", marker, "clean", "cat\n")
    extra.write_text(f'[filter "inc"]\n\tclean = {clean}\n')
    plain_git(ws, "config", "include.path", str(extra))
    plain_git(ws, "config", "core.fsmonitor", script(tmp_path / "fsm", marker, "fsmonitor"))
    (ws / ".gitattributes").write_text("* filter=inc\n")
    (ws / "f").write_text("x\n")
    snapshot_tree(ws)
    worktree.is_dirty(ws)
    assert not marker.exists(), marker.read_text()


def test_a_git_call_that_hangs_is_killed_with_git_timeout(tmp_path):
    ws = tmp_path / "ws"
    (tmp_path / "t").mkdir()
    init_from_template(tmp_path / "t", ws)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading blocks until a writer comes: none will
    with pytest.raises(LongrunError) as err:
        _git(ws, "hash-object", str(fifo), timeout=1.0)
    assert err.value.code == "git_timeout"
    assert "timed out after 1s" in err.value.message
