"""Workspaces that travel: a workspace cloned from ``workspace.repo`` and rebuilt from the journal.

A job whose spec names ``workspace.repo`` can start or resume on a machine
that has only its ``.maestro/`` directory (journal and checkpoints). Before
the run, :func:`materialize` makes the workspace what the journal says it is:

* **absent**: clone ``repo`` and check out the base commit (the one the job's
  first clone journaled in ``workspace_materialized``, else ``ref``, else the
  remote's default branch); then, for every finished iteration in order,
  check that the tree is the iteration's journaled ``start_tree``, check
  ``patch.diff`` against the sha256 its ``checkpoint_written`` journaled,
  ``git apply`` it and check the tree against the journaled ``end_tree``.
  The clone is built beside the workspace and renamed into place only when
  every check passed, so a failure leaves nothing that looks like a workspace;
* **present** (the same machine): its tree must be the journaled end tree of
  the last finished iteration;
* an **interrupted iteration** (started, not finished) goes on after its last
  finished stage: each finished stage journals the workspace's tree after it
  (``stage_finished.tree``) and checkpoints the iteration's changes up to it
  (``<iter>/stages/<stage>.patch``, sha256 journaled), so a fresh clone applies
  that patch and checks the tree; an existing workspace with partial changes
  of the interrupted stage is put back to that tree (or to the iteration's
  start tree when no stage finished). A journal from before stages travelled
  (finished stages without a tree) cannot be rebuilt elsewhere:
  ``workspace_unrecoverable``. An interrupted iteration whose checkpoint was
  written is replayed like a finished one.

Failures are ``LongrunError`` codes, never a silent continue:
``workspace_repo_unreachable``, ``workspace_ref_not_found``,
``workspace_diverged``, ``workspace_unrecoverable``.

The checkpoint store may be remote and its files altered: a patch is applied
only if its sha256 is the journaled one, and the tree after it must be the
journaled tree. ``git apply`` refuses paths with ``..``, paths in ``.git`` and
paths beyond a symbolic link; paths under ``.maestro`` are refused here.
Every git call goes through :func:`longrun.workspace.gitutil._git` (no
hooks, no filters, no configured programs); a clone allows only the
transports ``file``, ``https``, ``http``, ``ssh`` and ``git`` and runs
outside any repository, and :func:`push_tree` pushes from a throw-away
repository that borrows the workspace's objects, so nothing the stage wrote
into the workspace's ``.git/config`` takes part.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from longrun import atomicio
from longrun.errors import LongrunError
from longrun.journal.payloads import StageFinished
from longrun.journal.state import RunState
from longrun.storage.paths import MAESTRO, JobPaths, sha256_file
from longrun.workspace.gitutil import _git, diff_trees, snapshot_tree

__all__ = ["TRANSPORTS", "Materialized", "apply_patch", "clone", "materialize", "patch_paths", "push_tree"]

#: Command-scope settings for a clone or push: these transports only (never ``ext``, ``fd`` or a remote helper).
TRANSPORTS = {
    "protocol.allow": "never",
    "protocol.file.allow": "always",
    "protocol.https.allow": "always",
    "protocol.http.allow": "always",
    "protocol.ssh.allow": "always",
    "protocol.git.allow": "always",
    "core.sshCommand": "ssh",
}
_HEX = re.compile(r"^[0-9a-f]{4,40}$")


@dataclass(frozen=True)
class Materialized:
    """What :func:`materialize` did (journaled as ``workspace_materialized``)."""

    commit: str
    tree: str
    cloned: bool
    iterations: tuple[int, ...] = ()
    reset: bool = False


def _diverged(message: str) -> LongrunError:
    return LongrunError(message, code="workspace_diverged")


def clone(repo: str, dest: Path, ref: str | None, pinned: str | None = None) -> str:
    """Clone ``repo`` into the new directory ``dest`` and check out the base commit; return its sha.

    The base is ``pinned`` if given (it must be in the repository), else
    ``ref`` (a branch, tag or commit), else the remote's default branch.
    ``workspace_repo_unreachable`` when the clone fails,
    ``workspace_ref_not_found`` when the base is not there; ``dest`` is removed
    again on any failure.
    """
    dest = Path(dest)
    if dest.exists() or dest.is_symlink():
        raise LongrunError(f"workspace already exists: {dest}", code="workspace_exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Outside any repository: no repository's config takes part in the clone.
        with tempfile.TemporaryDirectory(prefix="longrun-clone-") as tmp:
            proc = _git(Path(tmp), "clone", "-q", "--no-checkout", "--", repo, str(dest), config=TRANSPORTS, check=False)
        if proc.returncode != 0:
            raise LongrunError(
                f"cannot clone workspace.repo {repo} (git clone exit {proc.returncode}): {proc.stderr.strip()}",
                code="workspace_repo_unreachable",
            )
        commit = _resolve(dest, repo, ref, pinned)
        _git(dest, "checkout", "-q", "--detach", commit)
        return commit
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _resolve(repo_dir: Path, repo: str, ref: str | None, pinned: str | None) -> str:
    def commit_of(rev: str) -> str | None:
        proc = _git(repo_dir, "rev-parse", "--verify", "-q", f"{rev}^{{commit}}", check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    if pinned is not None:
        found = commit_of(pinned)
        if found is None:
            raise LongrunError(
                f"the job's base commit {pinned} (journaled at its first clone) is not in {repo} any more "
                "(was its history rewritten?)",
                code="workspace_ref_not_found",
            )
        return found
    if ref is None:
        found = commit_of("HEAD")
        if found is None:
            raise LongrunError(f"{repo} has no default branch to clone (an empty repository?)", code="workspace_ref_not_found")
        return found
    candidates = [f"refs/remotes/origin/{ref}", f"refs/tags/{ref}"] + ([ref] if _HEX.match(ref) else [])
    for rev in candidates:
        if (found := commit_of(rev)) is not None:
            return found
    raise LongrunError(f"workspace.ref {ref!r} is not a branch, tag or commit of {repo}", code="workspace_ref_not_found")


def patch_paths(workspace: Path, patch: Path) -> list[str]:
    """Every path ``patch`` touches (both sides of a rename), as ``git apply --numstat`` reads them.

    ``workspace_diverged`` when git cannot parse it.
    """
    proc = _git(Path(workspace), "apply", "--numstat", "-z", str(Path(patch).resolve()), check=False)
    if proc.returncode != 0:
        raise _diverged(f"{patch} is not a patch git can read: {proc.stderr.strip()}")
    fields = proc.stdout.split("\0")
    paths: list[str] = []
    i = 0
    while i < len(fields):
        entry = fields[i]
        i += 1
        if not entry:
            continue
        _added, _deleted, path = (entry.split("\t", 2) + ["", ""])[:3]
        if path:
            paths.append(path)
        else:  # a rename or copy: the old and the new path follow
            paths.extend(fields[i : i + 2])
            i += 2
    return paths


def apply_patch(workspace: Path, patch: Path) -> None:
    """``git apply`` ``patch`` to the work tree of ``workspace`` (not the index, not HEAD).

    Refused (``workspace_diverged``), before anything is written: a path under
    ``.maestro``; and, by git, a path with ``..``, in ``.git`` or beyond a
    symbolic link. A patch that does not apply changes nothing
    (``git apply`` is atomic) and raises ``workspace_diverged``.
    """
    workspace, patch = Path(workspace), Path(patch).resolve()
    for path in patch_paths(workspace, patch):
        if path.split("/", 1)[0] == MAESTRO:
            raise _diverged(f"{patch} writes {path!r}, under {MAESTRO}/ (longrun's own files are never in a patch)")
    proc = _git(workspace, "apply", "--whitespace=nowarn", str(patch), check=False)
    if proc.returncode != 0:
        raise _diverged(f"{patch} does not apply to {workspace}: {proc.stderr.strip()}")


def _replayed(state: RunState) -> list[int]:
    """The iterations whose patch the workspace holds: every finished one, and an open one whose checkpoint was written."""
    return [i for i in range(1, state.iteration + 1) if i != state.open_iteration or i in state.checkpoints]


def _replay(workspace: Path, tree: str, state: RunState, paths: JobPaths, iterations: Sequence[int]) -> str:
    """Apply the checkpointed patch of each of ``iterations``, checking every tree on the way; the tree at the end."""
    for i in iterations:
        start, end = state.start_trees.get(i), state.end_trees.get(i)
        if start is not None and start != tree:
            raise _diverged(
                f"before iteration {i} the workspace's tree is {tree}, but the journal says iteration {i} started from {start} "
                "(a different base commit, or the workspace changed between iterations)"
            )
        if start is None or end is None:
            raise _diverged(f"the journal records no start and end tree for iteration {i}: its patch cannot be checked")
        patch = paths.iteration_dir(i) / "patch.diff"
        if not patch.is_file():
            raise _diverged(f"the patch of iteration {i} ({patch}) is missing (pruned, or not fetched)")
        digest = state.checkpoints.get(i, {}).get("patch.diff")
        if digest is not None and sha256_file(patch) != digest:
            raise _diverged(f"{patch} is not the patch the journal recorded (sha256 differs): it was altered")
        if patch.stat().st_size:
            apply_patch(workspace, patch)
        tree = snapshot_tree(workspace)
        if tree != end:
            raise _diverged(f"after the patch of iteration {i} the workspace's tree is {tree}, not the journaled {end}")
    return tree


def materialize(workspace: Path, repo: str, ref: str | None, state: RunState, paths: JobPaths) -> Materialized:
    """Make ``workspace`` what the journal says (see the module docstring); what was done."""
    workspace = Path(workspace)
    if workspace.exists() or workspace.is_symlink():
        return _check_existing(workspace, state, paths)
    workspace.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{workspace.name}.clone-", dir=workspace.parent))
    try:
        ws = build / "ws"
        commit = clone(repo, ws, ref, state.workspace_commit)
        iterations = _replayed(state)
        tree = _replay(ws, snapshot_tree(ws), state, paths, iterations)
        tree = _open_iteration(ws, state, tree, paths)
        os.rename(ws, workspace)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return Materialized(commit=commit, tree=tree, cloned=True, iterations=tuple(iterations))


def stage_patch_path(paths: JobPaths, iteration: int, stage: str) -> Path:
    """``<iter>/stages/<stage>.patch``: the iteration's changes from its start tree up to and with ``stage``."""
    return paths.iteration_dir(iteration) / "stages" / f"{stage}.patch"


def _last_stage(state: RunState, it: int) -> StageFinished | None:
    """The last stage of open iteration ``it`` that finished (its tree covers the ones before it)."""
    finished = list(state.stage_results.get(it, {}).values())
    return finished[-1] if finished else None


def _open_iteration(workspace: Path, state: RunState, tree: str, paths: JobPaths) -> str:
    """On a fresh clone: an open iteration goes on after its last finished stage (from that stage's patch).

    With no finished stage it starts again from its start tree. A finished stage whose tree was not
    journaled (a journal from before stages travelled) cannot be rebuilt here: ``workspace_unrecoverable``.
    """
    it = state.open_iteration
    if it is None or it in state.checkpoints:
        return tree
    start = state.start_trees.get(it)
    if start is not None and start != tree:
        raise _diverged(f"the workspace's tree is {tree}, but the journal says iteration {it} started from {start}")
    last = _last_stage(state, it)
    if last is None:
        return tree
    if last.tree is None:
        raise LongrunError(
            f"iteration {it} was interrupted after stage(s) {', '.join(state.stage_results[it])} finished, and the "
            "journal holds no tree for them (written by an older longrun): resume the job where it ran",
            code="workspace_unrecoverable",
        )
    patch = stage_patch_path(paths, it, last.stage)
    if not patch.is_file():
        raise _diverged(f"the patch of stage {last.stage} of iteration {it} ({patch}) is missing (not fetched)")
    if last.patch_sha256 is not None and sha256_file(patch) != last.patch_sha256:
        raise _diverged(f"{patch} is not the patch the journal recorded (sha256 differs): it was altered")
    if patch.stat().st_size:
        apply_patch(workspace, patch)
    tree = snapshot_tree(workspace)
    if tree != last.tree:
        raise _diverged(
            f"after the patch of stage {last.stage} of iteration {it} the tree is {tree}, not the journaled {last.tree}"
        )
    return tree


def _check_existing(workspace: Path, state: RunState, paths: JobPaths) -> Materialized:
    if not workspace.is_dir() or workspace.is_symlink():
        raise _diverged(f"workspace {workspace} exists but is not a directory")
    proc = _git(workspace, "rev-parse", "--show-toplevel", check=False)
    if proc.returncode != 0 or Path(proc.stdout.strip()).resolve() != workspace.resolve():
        raise _diverged(f"workspace {workspace} exists but is not the top of a git repository (not a clone of workspace.repo)")
    commit = state.workspace_commit or _git(workspace, "rev-parse", "--verify", "HEAD^{commit}").stdout.strip()
    tree = snapshot_tree(workspace)
    it = state.open_iteration
    last = _last_stage(state, it) if it is not None else None
    if it is not None and it not in state.checkpoints and (last is None or last.tree is not None):
        # The iteration goes on from its last finished stage's tree, or from its start tree.
        start = last.tree if last is not None else state.start_trees.get(it)
        if start is not None and tree != start:
            # An attempt was interrupted: undo its partial changes, the iteration restarts from its start tree.
            _reset(workspace, tree, start, paths)
            return Materialized(commit=commit, tree=start, cloned=False, reset=True)
        return Materialized(commit=commit, tree=tree, cloned=False)
    if it is not None and it not in state.checkpoints:
        return Materialized(commit=commit, tree=tree, cloned=False)  # its finished stages' changes are here: go on
    done = _replayed(state)
    if done:
        expected = state.end_trees.get(done[-1])
        what = f"the end tree of iteration {done[-1]}"
    else:
        expected = _git(workspace, "rev-parse", "--verify", f"{commit}^{{tree}}", check=False).stdout.strip() or None
        what = f"the tree of the base commit {commit}"
    if expected is None or tree != expected:
        raise _diverged(
            f"workspace {workspace} has tree {tree}, not {what} ({expected or 'not journaled'}): it was changed outside "
            "the job's iterations; restore it, or move it away so it is cloned again"
        )
    return Materialized(commit=commit, tree=tree, cloned=False)


def _reset(workspace: Path, tree: str, start: str, paths: JobPaths) -> None:
    """Put the work tree of ``workspace`` (now at ``tree``) back to the tree ``start``, by a patch between the two."""
    try:
        patch = diff_trees(workspace, tree, start)
    except LongrunError as exc:
        raise _diverged(f"cannot undo the interrupted iteration's changes in {workspace}: {exc.message}") from None
    with tempfile.TemporaryDirectory(prefix="longrun-reset-") as tmp:
        file = Path(tmp, "reset.diff")
        atomicio.write_atomic(file, patch.encode("utf-8", "surrogateescape"))
        apply_patch(workspace, file)
    after = snapshot_tree(workspace)
    if after != start:
        raise _diverged(f"undoing the interrupted iteration left tree {after} in {workspace}, not its start tree {start}")


def push_tree(workspace: Path, repo: str, branch: str, tree: str, parent: str, message: str) -> str:
    """Commit ``tree`` on ``parent`` and force-push it to ``refs/heads/<branch>`` of ``repo``; return the commit.

    The commit is written into the workspace's object store (so the next
    iteration can build on it); the push runs from a throw-away repository
    that borrows those objects, so the workspace's own config takes no part.
    ``workspace_push_failed`` when the push fails.
    """
    workspace = Path(workspace)
    commit = _git(workspace, "commit-tree", tree, "-p", parent, "-m", message).stdout.strip()
    objects = Path(_git(workspace, "rev-parse", "--path-format=absolute", "--git-path", "objects").stdout.strip())
    with tempfile.TemporaryDirectory(prefix="longrun-push-") as tmp:
        scratch = Path(tmp)
        _git(scratch, "init", "-q", "--bare")
        atomicio.write_atomic(scratch / "objects" / "info" / "alternates", f"{objects}\n")
        proc = _git(scratch, "push", "-q", "--no-verify", repo, f"+{commit}:refs/heads/{branch}", config=TRANSPORTS, check=False)
    if proc.returncode != 0:
        raise LongrunError(
            f"cannot push iteration commit {commit} to {branch} of {repo} (exit {proc.returncode}): {proc.stderr.strip()}",
            code="workspace_push_failed",
        )
    return commit


def push_parent(workspace: Path, state: RunState, iteration: int, base: str) -> str:
    """The commit an iteration's push builds on: the last one pushed before it that is here, else ``base``."""
    for i in sorted((i for i in state.pushed_commits if i < iteration), reverse=True):
        sha = state.pushed_commits[i]
        if _git(Path(workspace), "cat-file", "-e", f"{sha}^{{commit}}", check=False).returncode == 0:
            return sha
    return base
