"""The git operations longrun needs on a job workspace, and nothing more.

Every call goes through :func:`_git`, which runs the ``git`` binary with an
environment that does not depend on the machine it runs on:

* inherited ``GIT_*`` variables are dropped (a stray ``GIT_DIR`` or
  ``GIT_INDEX_FILE`` from a calling hook would point us at the wrong repo);
* ``GIT_CONFIG_NOSYSTEM=1`` and ``GIT_CONFIG_GLOBAL=/dev/null`` ignore system
  and user configuration (no surprise ``commit.gpgsign``, excludes or hooks);
* commits carry a fixed identity (``longrun <longrun@localhost>``) passed with
  ``-c``, so a fresh machine without ``git config`` works; hooks are disabled.

Failures raise ``LongrunError(code="git_failed")`` with the command and git's
stderr. Output is decoded as UTF-8 with ``surrogateescape``, so patches of
non-UTF-8 files survive a round trip through ``str``
(``text.encode("utf-8", "surrogateescape")``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from longrun.errors import LongrunError

__all__ = ["changed_paths", "diff_trees", "init_from_template", "is_repo", "snapshot_tree"]

_IDENTITY = ("-c", "user.name=longrun", "-c", "user.email=longrun@localhost")
_SAFETY = ("-c", f"core.hooksPath={os.devnull}", "-c", "commit.gpgsign=false")
INITIAL_COMMIT_MESSAGE = "longrun: initial workspace"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_TERMINAL_PROMPT="0",
        LC_ALL="C",
    )
    env.update(extra or {})
    return env


def _git(cwd: Path, *args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``git <args>`` in ``cwd``; raise ``git_failed`` on a non-zero exit if ``check``."""
    cmd = ["git", *_IDENTITY, *_SAFETY, *args]
    try:
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            env=_env(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="surrogateescape",
            check=False,
        )
    except OSError as exc:  # git missing, or cwd gone
        raise LongrunError(f"cannot run git {' '.join(args)} in {cwd}: {exc}", code="git_failed") from exc
    if check and proc.returncode != 0:
        raise LongrunError(
            f"git {' '.join(args)} failed in {cwd} (exit {proc.returncode}): {proc.stderr.strip()}",
            code="git_failed",
        )
    return proc


def is_repo(path: Path) -> bool:
    """True if ``path`` is inside a git work tree."""
    if not Path(path).is_dir():
        return False
    proc = _git(Path(path), "rev-parse", "--is-inside-work-tree", check=False)
    return proc.returncode == 0 and proc.stdout.strip() == "true"


def init_from_template(template: Path, dest: Path) -> str:
    """Copy ``template`` to the new directory ``dest``, make it a repo, commit; return the sha.

    The template's own ``.git`` (if any) is not copied. ``dest`` must not
    exist (``workspace_exists``); the template must be a directory
    (``template_not_found``). If any git step fails, ``dest`` is removed again
    so the call can be retried.
    """
    template, dest = Path(template), Path(dest)
    if not template.is_dir():
        raise LongrunError(f"template directory not found: {template}", code="template_not_found")
    if dest.exists() or dest.is_symlink():
        raise LongrunError(f"workspace already exists: {dest}", code="workspace_exists")
    shutil.copytree(template, dest, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    try:
        _git(dest, "init", "-q", "-b", "main")
        _git(dest, "add", "-A")
        _git(dest, "commit", "-q", "--allow-empty", "--no-verify", "-m", INITIAL_COMMIT_MESSAGE)
        return _git(dest, "rev-parse", "HEAD").stdout.strip()
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def snapshot_tree(workspace: Path, exclude: Iterable[str] = (".maestro",)) -> str:
    """Return the sha of a git tree holding the workspace's files as they are now.

    Includes modified and untracked files (but not ignored ones, and not the
    ``exclude`` paths), without touching the repository's index or HEAD: the
    work happens in a throw-away index (``GIT_INDEX_FILE``) seeded from HEAD,
    so files tracked in HEAD stay in even if they match ``.gitignore``, as
    ``git status`` would see them. Only new blob and tree objects are written.
    Seeding from HEAD carries no stat cache, so every file is hashed once.
    """
    workspace = Path(workspace)
    excluded = [str(p) for p in exclude]
    with tempfile.TemporaryDirectory(prefix="longrun-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp, "index"))}
        if _git(workspace, "rev-parse", "--verify", "-q", "HEAD^{commit}", check=False).returncode == 0:
            _git(workspace, "read-tree", "HEAD", env=env)
        _git(workspace, "add", "-A", "--", ".", *(f":(exclude){p}" for p in excluded), env=env)
        if excluded:  # drop excluded paths that came in with HEAD
            _git(workspace, "rm", "-r", "-q", "--cached", "--ignore-unmatch", "--", *excluded, env=env)
        return _git(workspace, "write-tree", env=env).stdout.strip()


def diff_trees(workspace: Path, a: str, b: str) -> str:
    """The unified patch (binary-safe, no colour, no external diff) from tree/commit ``a`` to ``b``."""
    return _git(Path(workspace), "diff", "--binary", "--no-color", "--no-ext-diff", "--no-textconv", a, b).stdout


def changed_paths(workspace: Path, a: str, b: str) -> list[str]:
    """Sorted paths that differ between ``a`` and ``b`` (exact names, no quoting)."""
    out = _git(Path(workspace), "diff", "--name-only", "--no-renames", "-z", a, b).stdout
    return sorted(p for p in out.split("\0") if p)


class GitTrees:
    """The workspace port on git: tree snapshots (``git write-tree`` of a scratch index) and their diffs."""

    def snapshot(self, path: Path) -> str | None:
        return snapshot_tree(path)

    def diff(self, path: Path, a: str, b: str) -> str:
        return diff_trees(path, a, b)

    def changed(self, path: Path, a: str, b: str) -> list[str]:
        return changed_paths(path, a, b)
