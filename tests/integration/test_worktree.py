"""Worktree isolation (SPEC E7), end to end in real git repositories."""

from __future__ import annotations

import pytest

from longrun.errors import LongrunError
from longrun.workspace import gitutil
from longrun.workspace.gitutil import _git
from longrun.workspace.worktree import (
    apply_patches,
    branch_name,
    commit_all,
    ensure_worktree,
    export_patches,
    fork_point,
    head,
    is_dirty,
    remove_worktree,
    worktrees,
)

JOB = "3071c7000001"


@pytest.fixture
def repo(tmp_path):
    template = tmp_path / "template"
    (template / "src").mkdir(parents=True)
    (template / "src" / "app.py").write_text("value = 1\n")
    (template / "README.md").write_text("readme\n")
    (template / ".gitignore").write_text("*.log\n")
    ws = tmp_path / "repo"
    gitutil.init_from_template(template, ws)
    return ws


def wt_path(repo):
    return repo / ".maestro" / "worktrees" / JOB


def test_is_dirty(repo):
    assert not is_dirty(repo)
    (repo / "build.log").write_text("ignored\n")
    (repo / ".maestro").mkdir()
    (repo / ".maestro" / "events.jsonl").write_text("{}\n")
    assert not is_dirty(repo)  # ignored files and longrun's own .maestro do not count
    (repo / "new.txt").write_text("untracked\n")
    assert is_dirty(repo)
    (repo / "new.txt").unlink()
    (repo / "src" / "app.py").write_text("value = 2\n")
    assert is_dirty(repo)
    _git(repo, "add", "src/app.py")
    assert is_dirty(repo)  # staged counts too


def test_isolated_run_then_patches_applied_through_git(repo, tmp_path):
    base = head(repo)
    wt = ensure_worktree(repo, JOB, wt_path(repo))
    assert wt == wt_path(repo).resolve()
    assert {"worktree": str(wt), "HEAD": base, "branch": branch_name(JOB)} in worktrees(repo)
    assert ensure_worktree(repo, JOB, wt_path(repo)) == wt  # idempotent
    assert not is_dirty(repo)  # the worktree lives under .maestro

    # Iteration 1 and 2 change code in the worktree only.
    (wt / "src" / "app.py").write_text("value = 2\n")
    (wt / "src" / "new.py").write_text("print('new')\n")
    c1 = commit_all(wt, "longrun: iteration 1")
    assert c1 and commit_all(wt, "longrun: nothing") is None
    (wt / "README.md").write_text("readme, improved\n")
    c2 = commit_all(wt, "longrun: iteration 2")
    assert head(wt) == c2 != c1

    # The main tree is untouched until apply.
    assert head(repo) == base and not is_dirty(repo)
    assert (repo / "src" / "app.py").read_text() == "value = 1\n" and not (repo / "src" / "new.py").exists()

    (repo / "UNRELATED.md").write_text("main moves on\n")
    _git(repo, "add", "UNRELATED.md")
    _git(repo, "commit", "-q", "-m", "unrelated work on main")
    base_main = head(repo)
    assert fork_point(repo, JOB) == base  # not the moved main HEAD

    patches = export_patches(wt, fork_point(repo, JOB), tmp_path / "patches")
    assert [p.name for p in patches] == ["0001-longrun-iteration-1.patch", "0002-longrun-iteration-2.patch"]
    assert all(p.is_file() for p in patches)
    assert head(repo) == base_main  # exporting does not touch the main tree either

    new_head = apply_patches(repo, patches)
    assert new_head != base_main and head(repo) == new_head
    assert (repo / "src" / "app.py").read_text() == "value = 2\n"
    assert (repo / "src" / "new.py").read_text() == "print('new')\n"
    assert (repo / "README.md").read_text() == "readme, improved\n"
    log = _git(repo, "log", "--format=%s", f"{base_main}..HEAD").stdout.split("\n")
    assert log[:2] == ["longrun: iteration 2", "longrun: iteration 1"]  # commits, not a merge
    assert _git(repo, "rev-list", "--merges", f"{base}..HEAD").stdout == ""
    assert (repo / "UNRELATED.md").exists()
    assert not is_dirty(repo)

    remove_worktree(repo, wt, branch_too=True)
    assert not wt.exists()
    assert all(e.get("branch") != branch_name(JOB) for e in worktrees(repo))
    assert _git(repo, "rev-parse", "--verify", "-q", f"refs/heads/{branch_name(JOB)}", check=False).returncode != 0


def test_apply_refuses_a_dirty_main_tree(repo, tmp_path):
    base = head(repo)
    wt = ensure_worktree(repo, JOB, wt_path(repo))
    (wt / "src" / "app.py").write_text("value = 2\n")
    commit_all(wt, "change")
    patches = export_patches(wt, base, tmp_path / "patches")
    (repo / "scratch.txt").write_text("a user's uncommitted work\n")
    with pytest.raises(LongrunError) as exc:
        apply_patches(repo, patches)
    assert exc.value.code == "workspace_dirty"
    assert head(repo) == base and (repo / "src" / "app.py").read_text() == "value = 1\n"
    assert (repo / "scratch.txt").read_text() == "a user's uncommitted work\n"


def test_conflicting_patch_is_aborted_never_merged(repo, tmp_path):
    base = head(repo)
    wt = ensure_worktree(repo, JOB, wt_path(repo))
    (wt / "src" / "app.py").write_text("value = 'from the job'\n")
    commit_all(wt, "job change")
    patches = export_patches(wt, base, tmp_path / "patches")
    # Meanwhile someone commits a conflicting change on main.
    (repo / "src" / "app.py").write_text("value = 'from a human'\n")
    _git(repo, "commit", "-q", "-am", "human change")
    main_head = head(repo)
    with pytest.raises(LongrunError) as exc:
        apply_patches(repo, patches)
    assert exc.value.code == "patch_apply_failed"
    assert head(repo) == main_head and not is_dirty(repo)
    assert (repo / "src" / "app.py").read_text() == "value = 'from a human'\n"
    assert not (repo / ".git" / "rebase-apply").exists()  # the am session was aborted


def test_new_worktree_from_a_dirty_tree_fails_closed(repo):
    (repo / "src" / "app.py").write_text("uncommitted\n")
    with pytest.raises(LongrunError) as exc:
        ensure_worktree(repo, JOB, wt_path(repo))
    assert exc.value.code == "workspace_dirty" and not wt_path(repo).exists()
    wt = ensure_worktree(repo, JOB, wt_path(repo), require_clean=False)
    assert (wt / "src" / "app.py").read_text() == "value = 1\n"  # from HEAD, without the local change


def test_existing_branch_is_reused_after_the_worktree_was_deleted(repo):
    wt = ensure_worktree(repo, JOB, wt_path(repo))
    (wt / "kept.txt").write_text("work\n")
    sha = commit_all(wt, "kept")
    remove_worktree(repo, wt)  # branch kept
    wt2 = ensure_worktree(repo, JOB, wt_path(repo))
    assert head(wt2) == sha and (wt2 / "kept.txt").read_text() == "work\n"


def test_path_taken_by_something_else(repo, tmp_path):
    other = tmp_path / "occupied"
    other.mkdir()
    (other / "file").write_text("x\n")
    with pytest.raises(LongrunError) as exc:
        ensure_worktree(repo, JOB, other)
    assert exc.value.code == "workspace_exists"
    ensure_worktree(repo, JOB, wt_path(repo))
    with pytest.raises(LongrunError) as exc:  # a worktree, but on another job's branch
        ensure_worktree(repo, "3071c7000002", wt_path(repo))
    assert exc.value.code == "workspace_exists"


def test_remove_refuses_uncommitted_work_unless_forced(repo):
    wt = ensure_worktree(repo, JOB, wt_path(repo))
    (wt / "src" / "app.py").write_text("not committed\n")
    with pytest.raises(LongrunError) as exc:
        remove_worktree(repo, wt)
    assert exc.value.code == "git_failed" and wt.exists()
    remove_worktree(repo, wt, force=True)
    assert not wt.exists()
    remove_worktree(repo, wt)  # not a worktree any more: nothing to do


def test_job_ids_are_allowlisted(repo):
    with pytest.raises(LongrunError) as exc:
        ensure_worktree(repo, "../../evil", wt_path(repo))
    assert exc.value.code == "job_id_invalid"
