"""Workspaces that travel (workspace.repo): clone, replay checkpointed patches, check trees; real git, real files."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from longrun.errors import LongrunError
from longrun.journal.events import Event, build_event
from longrun.journal.fold import replay
from longrun.journal.state import RunState
from longrun.storage.paths import JobPaths
from longrun.workspace.gitutil import diff_trees, snapshot_tree
from longrun.workspace.travel import apply_patch, clone, materialize, push_parent, push_tree

JOB = "0123456789ab"
TS = datetime(2026, 1, 1, tzinfo=UTC)
BINARY = bytes(range(256)) * 8  # NUL bytes: git sees a binary file


@pytest.fixture(autouse=True)
def fresh_machine(tmp_path, monkeypatch):
    """No user git config, and hostile GIT_* variables that must be ignored."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "wrong-git-dir"))
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "wrong-index"))


def git(cwd: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1")
    ident = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "protocol.file.allow=always"]
    return subprocess.run(["git", *ident, *args], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def origin(tmp_path) -> str:
    """A bare repository (file:// URL) whose main branch holds a few files; tag v1 is its first commit."""
    src = tmp_path / "src"
    src.mkdir()
    git(src, "init", "-q", "-b", "main")
    (src / "README.md").write_text("hello\n")
    (src / "old.txt").write_text("to be deleted\n")
    (src / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "rename_me.txt").write_text("".join(f"line {i}\n" for i in range(40)))
    (src / "data.bin").write_bytes(BINARY)
    git(src, "add", "-A")
    git(src, "commit", "-q", "-m", "base")
    git(src, "tag", "v1")
    bare = tmp_path / "origin.git"
    git(tmp_path, "clone", "-q", "--bare", str(src), str(bare))
    return bare.as_uri()


class Job:
    """A job's journal and checkpoints, written as the engine writes them, around a real workspace."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths = JobPaths(root, JOB)
        self.events: list[Event] = []

    def emit(self, type_: str, payload: dict[str, Any]) -> None:
        self.events.append(build_event(type_, payload, seq=len(self.events) + 1, job_id=JOB, ts=TS))

    @property
    def state(self) -> RunState:
        return replay(self.events)

    @property
    def ws(self) -> Path:
        return self.root / "ws"

    def start(self, iteration: int) -> str:
        tree = snapshot_tree(self.ws)
        self.emit("iteration_started", {"iteration": iteration, "start_tree": tree})
        return tree

    def iteration(self, iteration: int, change: Callable[[Path], None]) -> str:
        """One iteration: start tree, ``change``, patch.diff and checkpoint_written with its end tree, finished."""
        start = self.start(iteration)
        change(self.ws)
        end = snapshot_tree(self.ws)
        data = diff_trees(self.ws, start, end).encode("utf-8", "surrogateescape")
        it_dir = self.paths.iteration_dir(iteration)
        it_dir.mkdir(parents=True, exist_ok=True)
        (it_dir / "patch.diff").write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        self.emit(
            "checkpoint_written", {"iteration": iteration, "dir": str(it_dir), "files": {"patch.diff": digest}, "end_tree": end}
        )
        self.emit("iteration_finished", {"iteration": iteration, "gates_passed": False, "fingerprint": f"f{iteration}"})
        return end

    def materialize(self, url: str, ref: str | None = None) -> Any:
        done = materialize(self.ws, url, ref, self.state, self.paths)
        self.emit(
            "workspace_materialized",
            {"repo": url, "commit": done.commit, "tree": done.tree, "cloned": done.cloned, "iterations": list(done.iterations)},
        )
        return done

    def moved_to(self, root: Path) -> Job:
        """A fresh machine: only .maestro/ (journal and checkpoints) is copied to ``root``."""
        shutil.copytree(self.paths.maestro, root / ".maestro")
        other = Job(root)
        other.events = list(self.events)
        return other


def change_1(ws: Path) -> None:
    (ws / "data.bin").write_bytes(BINARY[::-1] + b"\x00tail")  # binary, changed
    (ws / "old.txt").unlink()  # deleted
    (ws / "script.sh").chmod(0o755)  # mode change
    (ws / "no-newline.txt").write_text("no final newline")  # no trailing newline
    (ws / "README.md").write_text("hello\nworld")  # newline removed at the end


def change_2(ws: Path) -> None:
    text = (ws / "rename_me.txt").read_text()
    (ws / "rename_me.txt").unlink()
    (ws / "sub").mkdir()
    (ws / "sub" / "renamed.txt").write_text(text + "one more\n")  # a rename with a change
    os.symlink("../README.md", ws / "sub" / "link")  # a symlink
    (ws / "latin1.txt").write_bytes("café\n".encode("latin-1"))  # not UTF-8
    (ws / "empty.bin").write_bytes(b"")


def tree_files(ws: Path) -> dict[str, tuple[str, bytes]]:
    """Every file under ``ws`` but .git: (kind and exec bit, content or link target)."""
    out: dict[str, tuple[str, bytes]] = {}
    for p in sorted(ws.rglob("*")):
        rel = p.relative_to(ws).as_posix()
        if rel == ".git" or rel.startswith(".git/") or (p.is_dir() and not p.is_symlink()):
            continue
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p).encode())
        else:
            out[rel] = ("x" if p.stat().st_mode & stat.S_IXUSR else "f", p.read_bytes())
    return out


def two_iterations(tmp_path: Path, origin: str) -> Job:
    job = Job(tmp_path / "a")
    job.materialize(origin)
    job.iteration(1, change_1)
    job.iteration(2, change_2)
    return job


# ---------------------------------------------------------------------------- replay


def test_a_fresh_clone_plus_the_patches_is_the_exact_tree(tmp_path, origin):
    job = two_iterations(tmp_path, origin)
    moved = job.moved_to(tmp_path / "b")
    assert not moved.ws.exists()

    done = moved.materialize(origin)

    assert (done.cloned, done.iterations) == (True, (1, 2))
    assert done.tree == job.state.end_trees[2] == snapshot_tree(moved.ws)
    assert tree_files(moved.ws) == tree_files(job.ws)
    files = tree_files(moved.ws)
    assert files["script.sh"][0] == "x" and files["no-newline.txt"][1] == b"no final newline"
    assert files["sub/link"] == ("link", b"../README.md") and "old.txt" not in files and "rename_me.txt" not in files
    assert files["latin1.txt"][1] == "café\n".encode("latin-1") and files["data.bin"][1].endswith(b"\x00tail")
    # The clone was built beside the workspace and renamed into place: nothing else is left there.
    assert sorted(p.name for p in moved.root.iterdir()) == [".maestro", "ws"]


def test_the_base_commit_is_pinned_so_a_moved_branch_does_not_change_the_job(tmp_path, origin):
    job = two_iterations(tmp_path, origin)
    base = job.state.workspace_commit
    src = tmp_path / "src"
    (src / "README.md").write_text("someone pushed to main meanwhile\n")
    git(src, "commit", "-q", "-am", "moved")
    git(src, "push", "-q", origin, "main")

    moved = job.moved_to(tmp_path / "b")
    done = moved.materialize(origin)

    assert done.commit == base and done.tree == job.state.end_trees[2]


def test_ref_names_a_branch_a_tag_or_a_commit(tmp_path, origin):
    src = tmp_path / "src"
    first = git(src, "rev-parse", "HEAD").strip()
    (src / "README.md").write_text("v2\n")
    git(src, "commit", "-q", "-am", "v2")
    git(src, "push", "-q", origin, "main", "main:other")
    second = git(src, "rev-parse", "HEAD").strip()
    for i, (ref, want) in enumerate([(None, second), ("main", second), ("other", second), ("v1", first), (first[:10], first)]):
        assert clone(origin, tmp_path / f"c{i}", ref) == want
        assert (tmp_path / f"c{i}" / "README.md").read_text() == ("v2\n" if want == second else "hello\n")


def test_a_missing_ref_or_an_unreachable_repo_fails_closed_and_leaves_nothing(tmp_path, origin):
    job = Job(tmp_path / "a")
    with pytest.raises(LongrunError) as info:
        materialize(job.ws, origin, "no-such-branch", job.state, job.paths)
    assert info.value.code == "workspace_ref_not_found"
    with pytest.raises(LongrunError) as info:
        materialize(job.ws, (tmp_path / "nowhere.git").as_uri(), None, job.state, job.paths)
    assert info.value.code == "workspace_repo_unreachable"
    assert not job.ws.exists() and sorted(p.name for p in job.root.iterdir()) == []


def test_a_pinned_base_commit_that_vanished_is_ref_not_found(tmp_path, origin):
    job = two_iterations(tmp_path, origin)
    moved = job.moved_to(tmp_path / "b")
    gone = {"repo": origin, "commit": "f" * 40, "tree": "t", "cloned": True}
    moved.events = [
        build_event(e.type, gone, seq=e.seq, job_id=JOB, ts=TS) if e.type == "workspace_materialized" else e for e in moved.events
    ]
    with pytest.raises(LongrunError) as info:
        moved.materialize(origin)
    assert info.value.code == "workspace_ref_not_found" and "f" * 40 in info.value.message


# ---------------------------------------------------------------------------- tampering


def _fails_diverged(job: Job, origin: str, *words: str) -> None:
    with pytest.raises(LongrunError) as info:
        job.materialize(origin)
    assert info.value.code == "workspace_diverged"
    for w in words:
        assert w in info.value.message
    assert not job.ws.exists(), "a failed materialisation leaves no workspace behind"
    assert sorted(p.name for p in job.root.iterdir()) == [".maestro"]


def test_an_altered_patch_is_refused_by_its_journaled_sha256(tmp_path, origin):
    moved = two_iterations(tmp_path, origin).moved_to(tmp_path / "b")
    patch = moved.paths.iteration_dir(2) / "patch.diff"
    patch.write_bytes(patch.read_bytes().replace(b"one more", b"evil more"))
    _fails_diverged(moved, origin, "sha256", "altered")


def test_an_altered_patch_without_a_digest_is_caught_by_the_tree_check(tmp_path, origin):
    job = two_iterations(tmp_path, origin)
    moved = job.moved_to(tmp_path / "b")
    patch = moved.paths.iteration_dir(2) / "patch.diff"
    patch.write_bytes(patch.read_bytes().replace(b"+one more", b"+evil more"))
    _without_digests(moved)
    _fails_diverged(moved, origin, "after the patch of iteration 2", job.state.end_trees[2])


def test_a_wrong_journaled_end_tree_is_diverged(tmp_path, origin):
    moved = two_iterations(tmp_path, origin).moved_to(tmp_path / "b")
    moved.events = [
        build_event(e.type, {**e.payload.model_dump(exclude_none=True), "end_tree": "0" * 40}, seq=e.seq, job_id=JOB, ts=TS)
        if e.type == "checkpoint_written" and e.payload.iteration == 1
        else e
        for e in moved.events
    ]
    _fails_diverged(moved, origin, "iteration 1", "0" * 40)


def test_a_missing_patch_is_diverged(tmp_path, origin):
    moved = two_iterations(tmp_path, origin).moved_to(tmp_path / "b")
    (moved.paths.iteration_dir(1) / "patch.diff").unlink()
    _fails_diverged(moved, origin, "missing")


def _without_digests(job: Job) -> None:
    job.events = [
        build_event(e.type, {**e.payload.model_dump(exclude_none=True), "files": {}}, seq=e.seq, job_id=JOB, ts=TS)
        if e.type == "checkpoint_written"
        else e
        for e in job.events
    ]


def test_a_patch_that_does_not_apply_is_diverged(tmp_path, origin):
    moved = two_iterations(tmp_path, origin).moved_to(tmp_path / "b")
    patch = moved.paths.iteration_dir(2) / "patch.diff"
    assert b" line 39\n" in patch.read_bytes()
    patch.write_bytes(patch.read_bytes().replace(b" line 39\n", b" line 99\n"))
    _without_digests(moved)
    _fails_diverged(moved, origin, "does not apply")


def test_an_existing_directory_that_is_not_a_clone_is_diverged(tmp_path, origin):
    moved = two_iterations(tmp_path, origin).moved_to(tmp_path / "b")
    moved.ws.mkdir()
    with pytest.raises(LongrunError) as info:
        moved.materialize(origin)
    assert info.value.code == "workspace_diverged" and "not the top of a git repository" in info.value.message


CRAFTED = {
    "dotdot": "diff --git a/../escaped b/../escaped\nnew file mode 100644\n--- /dev/null\n+++ b/../escaped\n@@ -0,0 +1 @@\n+x\n",
    "maestro": (
        "diff --git a/.maestro/x b/.maestro/x\nnew file mode 100644\n--- /dev/null\n+++ b/.maestro/x\n@@ -0,0 +1 @@\n+x\n"
    ),
    "dotgit": (
        "diff --git a/.git/hooks/post-checkout b/.git/hooks/post-checkout\nnew file mode 100755\n--- /dev/null\n"
        "+++ b/.git/hooks/post-checkout\n@@ -0,0 +1 @@\n+touch pwned\n"
    ),
    "through-symlink": (
        "diff --git a/out b/out\nnew file mode 120000\n--- /dev/null\n+++ b/out\n@@ -0,0 +1 @@\n+{outside}\n"
        "\\ No newline at end of file\n"
        "diff --git a/out/escaped b/out/escaped\nnew file mode 100644\n--- /dev/null\n+++ b/out/escaped\n@@ -0,0 +1 @@\n+x\n"
    ),
}


@pytest.mark.parametrize("kind", sorted(CRAFTED))
def test_a_crafted_patch_cannot_write_outside_the_work_tree(tmp_path, origin, kind):
    """The journal and the patch both altered (the digest matches): git apply, and the .maestro check, refuse it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    job = Job(tmp_path / "a")
    job.materialize(origin)
    start = job.start(1)
    data = CRAFTED[kind].format(outside=outside).encode()
    it_dir = job.paths.iteration_dir(1)
    it_dir.mkdir(parents=True)
    (it_dir / "patch.diff").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    job.emit("checkpoint_written", {"iteration": 1, "dir": str(it_dir), "files": {"patch.diff": digest}, "end_tree": start})
    job.emit("iteration_finished", {"iteration": 1, "gates_passed": False, "fingerprint": "f"})
    moved = job.moved_to(tmp_path / "b")

    _fails_diverged(moved, origin, "beyond a symbolic link" if kind == "through-symlink" else "patch")
    assert list(outside.iterdir()) == [] and not (tmp_path / "b" / "escaped").exists() and not (tmp_path / "escaped").exists()
    assert not (moved.paths.maestro / "x").exists() and not list(tmp_path.rglob("pwned"))


def test_a_symlink_from_an_earlier_iteration_is_not_followed(tmp_path, origin):
    """Iteration 1 (journal and all) leaves a symlink leading out; iteration 2's patch writes through it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    job = Job(tmp_path / "a")
    job.materialize(origin)
    job.iteration(1, lambda ws: os.symlink(str(outside), ws / "out"))
    start = job.start(2)
    data = CRAFTED["dotdot"].replace("../escaped", "out/escaped").encode()
    it_dir = job.paths.iteration_dir(2)
    it_dir.mkdir(parents=True)
    (it_dir / "patch.diff").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    job.emit("checkpoint_written", {"iteration": 2, "dir": str(it_dir), "files": {"patch.diff": digest}, "end_tree": start})
    job.emit("iteration_finished", {"iteration": 2, "gates_passed": False, "fingerprint": "f2"})

    _fails_diverged(job.moved_to(tmp_path / "b"), origin, "beyond a symbolic link")
    assert list(outside.iterdir()) == []


def test_apply_patch_refuses_a_maestro_path_before_writing_anything(tmp_path, origin):
    ws = tmp_path / "ws"
    clone(origin, ws, None)
    patch = tmp_path / "p.diff"
    patch.write_text(CRAFTED["maestro"].replace(".maestro/x", "ok.txt", 3).replace("+x", "+x") + CRAFTED["maestro"])
    with pytest.raises(LongrunError) as info:
        apply_patch(ws, patch)
    assert info.value.code == "workspace_diverged" and ".maestro" in info.value.message
    assert not (ws / "ok.txt").exists() and not (ws / ".maestro").exists()


# ---------------------------------------------------------------------------- existing workspace, interrupted iteration


def test_an_existing_workspace_is_checked_against_the_journal(tmp_path, origin):
    job = two_iterations(tmp_path, origin)
    done = job.materialize(origin)
    assert (done.cloned, done.tree) == (False, job.state.end_trees[2])

    (job.ws / "README.md").write_text("edited between iterations\n")
    with pytest.raises(LongrunError) as info:
        job.materialize(origin)
    assert info.value.code == "workspace_diverged" and "iteration 2" in info.value.message


def test_an_interrupted_iteration_restarts_from_its_start_tree_on_a_fresh_machine(tmp_path, origin):
    job = two_iterations(tmp_path, origin)
    start3 = job.start(3)
    job.emit("stage_started", {"iteration": 3, "stage": "agent", "attempt": 1, "model": "m"})
    (job.ws / "half-done.txt").write_text("the attempt was killed here\n")

    moved = job.moved_to(tmp_path / "b")
    done = moved.materialize(origin)

    assert (done.iterations, done.tree) == ((1, 2), start3)
    assert snapshot_tree(moved.ws) == start3 and not (moved.ws / "half-done.txt").exists()


def test_an_interrupted_attempt_is_undone_on_the_same_machine(tmp_path, origin):
    job = two_iterations(tmp_path, origin)
    start3 = job.start(3)
    job.emit("stage_started", {"iteration": 3, "stage": "agent", "attempt": 1, "model": "m"})
    (job.ws / "half-done.txt").write_text("the attempt was killed here\n")
    (job.ws / "README.md").unlink()
    (job.ws / "data.bin").write_bytes(b"\x00half")

    done = job.materialize(origin)

    assert (done.cloned, done.reset, done.tree) == (False, True, start3)
    assert snapshot_tree(job.ws) == start3 and not (job.ws / "half-done.txt").exists()
    assert (job.ws / "README.md").read_text() == "hello\nworld"


def _stage_finished(job: Job, iteration: int) -> None:
    job.emit(
        "stage_finished",
        {"iteration": iteration, "stage": "agent", "exit_code": 0, "duration_s": 1.0, "model": "m", "attempts": 1},
    )


def test_finished_stages_of_an_interrupted_iteration_cannot_travel(tmp_path, origin):
    job = two_iterations(tmp_path, origin)
    job.start(3)
    _stage_finished(job, 3)
    (job.ws / "stage-work.txt").write_text("in no checkpoint\n")

    moved = job.moved_to(tmp_path / "b")
    with pytest.raises(LongrunError) as info:
        moved.materialize(origin)
    assert info.value.code == "workspace_unrecoverable" and "agent" in info.value.message
    assert not moved.ws.exists()
    # Where it ran, the workspace holds that stage's work: the run goes on with it.
    done = job.materialize(origin)
    assert (done.reset, done.tree) == (False, snapshot_tree(job.ws)) and (job.ws / "stage-work.txt").exists()


def test_an_interrupted_iteration_whose_checkpoint_was_written_is_replayed(tmp_path, origin):
    job = two_iterations(tmp_path, origin)
    job.iteration(3, lambda ws: (ws / "three.txt").write_text("3\n"))
    job.events = job.events[:-1]  # iteration_finished of 3 lost in a crash
    assert job.state.open_iteration == 3

    done = job.moved_to(tmp_path / "b").materialize(origin)

    assert done.iterations == (1, 2, 3) and done.tree == job.state.end_trees[3]


# ---------------------------------------------------------------------------- push_branch


def test_push_tree_pushes_each_iteration_on_the_previous_one(tmp_path, origin):
    job = two_iterations(tmp_path, origin)
    state = job.state
    base = state.workspace_commit
    assert base is not None
    bare = Path(origin.removeprefix("file://"))

    c1 = push_tree(job.ws, origin, "longrun/review", state.end_trees[1], base, "iteration 1")
    job.emit("workspace_pushed", {"iteration": 1, "branch": "longrun/review", "commit": c1})
    parent = push_parent(job.ws, job.state, 2, base)
    c2 = push_tree(job.ws, origin, "longrun/review", job.state.end_trees[2], parent, "iteration 2")

    assert parent == c1
    assert git(bare, "rev-parse", "refs/heads/longrun/review").strip() == c2
    assert git(bare, "rev-parse", f"{c2}^{{tree}}").strip() == state.end_trees[2]
    assert git(bare, "rev-list", "refs/heads/longrun/review").split() == [c2, c1, base]
    # On a machine without c1, the next push starts again from the base commit (and force-updates the branch).
    assert push_parent(job.moved_to(tmp_path / "b").root, job.state, 2, base) == base


def test_push_ignores_what_the_stage_wrote_into_the_workspace_config(tmp_path, origin):
    job = two_iterations(tmp_path, origin)
    bare = Path(origin.removeprefix("file://"))
    decoy = tmp_path / "decoy.git"
    git(tmp_path, "init", "-q", "--bare", str(decoy))
    pwned = tmp_path / "pwned"
    config = job.ws / ".git" / "config"
    config.write_text(
        config.read_text()
        + f'[remote "{origin}"]\n\treceivepack = sh -c "touch {pwned}; git-receive-pack \\"$@\\"" --\n'
        + f'[url "{decoy.as_uri()}"]\n\tpushInsteadOf = {origin}\n'
        + "[core]\n\tfsmonitor = touch "
        + str(pwned)
        + "\n"
    )
    commit = push_tree(job.ws, origin, "review", job.state.end_trees[2], job.state.workspace_commit or "", "it 2")
    assert git(bare, "rev-parse", "refs/heads/review").strip() == commit
    assert not pwned.exists() and git(decoy, "for-each-ref") == ""


def test_a_failed_push_is_workspace_push_failed(tmp_path, origin):
    job = two_iterations(tmp_path, origin)
    with pytest.raises(LongrunError) as info:
        push_tree(
            job.ws, (tmp_path / "gone.git").as_uri(), "review", job.state.end_trees[2], job.state.workspace_commit or "", "m"
        )
    assert info.value.code == "workspace_push_failed"
