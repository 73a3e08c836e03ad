"""Workspace isolation with git worktrees (SPEC E7).

With ``isolation: worktree`` the stages that change code run in a separate
worktree of the job's repository, on the branch ``longrun/<jobId>`` started
from the main tree's HEAD. The main tree is not touched while the job runs.
Changes come back only through git, never by a silent merge:

1. :func:`commit_all` commits each iteration's changes on the job branch;
2. :func:`export_patches` writes them as ``git format-patch`` mail files;
3. :func:`apply_patches` applies them to the main tree with ``git am --3way``
   — refused (``workspace_dirty``) when the main tree has local changes, and
   rolled back with ``git am --abort`` (``patch_apply_failed``) when a patch
   does not apply. There is no automatic merge.

Fail closed: creating a worktree from a dirty main tree is refused, because
the job would silently work without the uncommitted changes.

Every command goes through ``gitutil._git`` (isolated from the machine's git
configuration, fixed identity, hooks off). Paths under ``.maestro/`` (where
longrun keeps its journal, checkpoints and, by convention, the worktrees
themselves: ``.maestro/worktrees/<jobId>``) never count as changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from longrun.errors import LongrunError
from longrun.storage.paths import MAESTRO, check_job_id
from longrun.workspace.gitutil import _git

__all__ = [
    "apply_patches",
    "branch_name",
    "commit_all",
    "ensure_worktree",
    "export_patches",
    "fork_point",
    "head",
    "is_dirty",
    "remove_worktree",
    "worktrees",
]

_EXCLUDE = (MAESTRO,)


def branch_name(job_id: str) -> str:
    """The job's branch: ``longrun/<jobId>``."""
    return f"longrun/{check_job_id(job_id)}"


def _pathspec(exclude: Iterable[str]) -> list[str]:
    return ["--", ".", *(f":(exclude){p}" for p in exclude)]


def head(repo: Path) -> str:
    """The commit sha of ``HEAD``."""
    return _git(Path(repo), "rev-parse", "--verify", "HEAD^{commit}").stdout.strip()


def fork_point(repo: Path, job_id: str) -> str:
    """Where the job branch left the main tree's ``HEAD`` (``git merge-base HEAD longrun/<jobId>``).

    The ``base`` for :func:`export_patches`. Remove the branch once its
    patches are applied (``remove_worktree(..., branch_too=True)``): ``git am``
    makes new commits, so the old fork point would export them again.
    """
    return _git(Path(repo), "merge-base", "HEAD", f"refs/heads/{branch_name(job_id)}").stdout.strip()


def is_dirty(repo: Path, exclude: Iterable[str] = _EXCLUDE) -> bool:
    """True when the tree has tracked changes (staged or not) or untracked, non-ignored files.

    Paths under ``exclude`` (``.maestro`` by default) are not looked at.
    """
    out = _git(
        Path(repo), "status", "--porcelain=v1", "-z", "--untracked-files=all", "--ignore-submodules=all", *_pathspec(exclude)
    ).stdout
    return bool(out.strip("\0"))


def worktrees(repo: Path) -> list[dict[str, str]]:
    """``git worktree list --porcelain`` as dicts: ``worktree`` (path), ``HEAD``, ``branch`` (short name)."""
    out = _git(Path(repo), "worktree", "list", "--porcelain").stdout
    entries: list[dict[str, str]] = []
    for block in out.strip().split("\n\n"):
        entry: dict[str, str] = {}
        for line in block.splitlines():
            key, _, value = line.partition(" ")
            if key == "branch":
                value = value.removeprefix("refs/heads/")
            entry[key] = value
        if "worktree" in entry:
            entries.append(entry)
    return entries


def _find(repo: Path, path: Path) -> dict[str, str] | None:
    target = Path(path).resolve()
    for entry in worktrees(repo):
        if Path(entry["worktree"]).resolve() == target:
            return entry
    return None


def ensure_worktree(repo: Path, job_id: str, path: Path, *, require_clean: bool = True) -> Path:
    """The job's worktree at ``path`` on branch ``longrun/<jobId>``; created if absent.

    Idempotent: an existing worktree of ``repo`` at ``path`` on the job branch
    is returned as it is (a resumed job keeps its work). A new one starts the
    branch from ``HEAD`` (or checks out the branch if it already exists).
    Raises ``workspace_dirty`` when a new worktree would be created from a
    main tree with local changes (unless ``require_clean=False``), and
    ``workspace_exists`` when ``path`` is taken by something else.
    """
    repo, path = Path(repo), Path(path)
    branch = branch_name(job_id)
    entry = _find(repo, path)
    if entry is not None and path.exists():
        if entry.get("branch") != branch:
            raise LongrunError(
                f"{path} is a worktree on {entry.get('branch') or 'a detached HEAD'}, not {branch}",
                code="workspace_exists",
            )
        return path.resolve()
    if path.exists() and any(path.iterdir()):
        raise LongrunError(f"cannot create the worktree: {path} exists and is not empty", code="workspace_exists")
    if require_clean and is_dirty(repo):
        raise LongrunError(
            f"{repo} has uncommitted changes; commit or stash them before an isolated job starts",
            code="workspace_dirty",
        )
    _git(repo, "worktree", "prune")  # forget worktrees whose directory was deleted by hand
    path.parent.mkdir(parents=True, exist_ok=True)
    has_branch = _git(repo, "rev-parse", "--verify", "-q", f"refs/heads/{branch}", check=False).returncode == 0
    if has_branch:
        _git(repo, "worktree", "add", "-q", str(path), branch)
    else:
        _git(repo, "worktree", "add", "-q", "-b", branch, str(path), "HEAD")
    return path.resolve()


def commit_all(worktree: Path, message: str, exclude: Iterable[str] = _EXCLUDE) -> str | None:
    """Commit every change in ``worktree`` (untracked files too); return the sha, or None if nothing changed."""
    worktree = Path(worktree)
    _git(worktree, "add", "-A", *_pathspec(exclude))
    if _git(worktree, "diff", "--cached", "--quiet", "--no-ext-diff", "--no-textconv", check=False).returncode == 0:
        return None
    _git(worktree, "commit", "-q", "--no-verify", "-m", message)
    return head(worktree)


def export_patches(worktree: Path, base: str, out_dir: Path) -> list[Path]:
    """``git format-patch base..HEAD -o out_dir``: one mail file per commit, in order."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    out = _git(
        Path(worktree),
        "format-patch",
        "--no-signature",
        "--binary",
        "--no-ext-diff",
        "--no-textconv",
        "-o",
        str(out_dir),
        f"{base}..HEAD",
    ).stdout
    return [Path(line) for line in out.splitlines() if line.strip()]


def apply_patches(repo: Path, patches: Sequence[Path]) -> str:
    """Apply ``patches`` (from :func:`export_patches`) to ``repo`` with ``git am --3way``; return the new HEAD.

    Refuses with ``workspace_dirty`` when ``repo`` has local changes. When a
    patch does not apply, ``git am --abort`` restores the tree and HEAD as they
    were and ``patch_apply_failed`` is raised. Never merges.
    """
    repo = Path(repo)
    if is_dirty(repo):
        raise LongrunError(f"refusing to apply patches: {repo} has uncommitted changes", code="workspace_dirty")
    if not patches:
        return head(repo)
    proc = _git(repo, "am", "--3way", "--keep-cr", *(str(Path(p).resolve()) for p in patches), check=False)
    if proc.returncode != 0:
        _git(repo, "am", "--abort", check=False)
        detail = (proc.stderr or proc.stdout).strip()
        raise LongrunError(
            f"patches do not apply to {repo} (git am --3way exit {proc.returncode}); nothing was changed: {detail}",
            code="patch_apply_failed",
        )
    return head(repo)


def remove_worktree(repo: Path, path: Path, branch_too: bool = False, *, force: bool = False) -> None:
    """Remove the worktree at ``path`` (and, with ``branch_too``, its branch).

    Without ``force`` git refuses to remove a worktree with uncommitted
    changes (``git_failed``), so no work is lost by accident. A path that is
    not a worktree is ignored.
    """
    repo, path = Path(repo), Path(path)
    entry = _find(repo, path)
    if entry is None:
        _git(repo, "worktree", "prune")
        return
    _git(repo, "worktree", "remove", *(["--force"] if force else []), str(path))
    _git(repo, "worktree", "prune")
    branch = entry.get("branch")
    if branch_too and branch:
        _git(repo, "branch", "-D", branch)


def delete_branch(repo: Path, job_id: str) -> bool:
    """Delete the job's ``longrun/<jobId>`` branch if it exists (after its patches were applied)."""
    name = branch_name(job_id)
    if _git(Path(repo), "rev-parse", "--verify", "-q", f"refs/heads/{name}", check=False).returncode != 0:
        return False
    _git(Path(repo), "branch", "-D", name)
    return True
