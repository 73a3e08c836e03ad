"""The git operations longrun needs on a job workspace, and nothing more.

A workspace is written by the stage, which is untrusted: its ``.git/config``,
``.gitattributes`` and hooks are the stage's. Every call goes through
:func:`_git`, which runs the ``git`` binary so that nothing the repository
configures is executed in the engine's process:

* inherited ``GIT_*`` variables are dropped (a stray ``GIT_DIR`` or
  ``GIT_INDEX_FILE`` from a calling hook would point us at the wrong repo);
* ``GIT_CONFIG_NOSYSTEM=1`` and ``GIT_CONFIG_GLOBAL=/dev/null`` ignore system
  and user configuration;
* command-scope overrides (``GIT_CONFIG_COUNT``/``GIT_CONFIG_KEY_n``, which win
  over the repository's own config, and take keys and values apart so no
  name needs quoting) switch off every setting that names a program:
  ``core.fsmonitor``, ``core.hooksPath`` (to ``/dev/null``),
  ``core.attributesFile``, ``core.sshCommand``, ``core.pager``,
  ``core.editor``, ``sequence.editor``, ``credential.helper``, ``gpg.program``,
  ``diff.external``, auto gc and maintenance, submodule recursion and every
  transport (``protocol.allow=never``);
* attributes cannot be switched off in git < 2.40 (the worktree's
  ``.gitattributes`` and ``.git/info/attributes`` are always read), so the
  drivers they name are neutralised instead: every ``filter.<name>`` in the
  repository's config gets an empty ``clean``, ``smudge`` and ``process`` (git
  skips an empty filter command) and ``required=false``; every
  ``diff.<name>`` an empty ``textconv`` and ``command``; every
  ``merge.<name>`` the driver ``false`` (a conflict, never a program). The
  names are read with ``git config --get-regexp`` (which itself runs
  nothing) before each call. Diffs also pass ``--no-ext-diff --no-textconv``;
* commits carry a fixed identity (``longrun <longrun@localhost>``), so a fresh
  machine without ``git config`` works;
* every call has a timeout (:data:`GIT_TIMEOUT_S`, 600 s): git is killed and
  ``git_timeout`` raised.

Failures raise ``LongrunError(code="git_failed")`` with the command and git's
stderr. Output is decoded as UTF-8 with ``surrogateescape``, so patches of
non-UTF-8 files survive a round trip through ``str``
(``text.encode("utf-8", "surrogateescape")``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from longrun.errors import LongrunError

__all__ = ["changed_paths", "diff_trees", "init_from_template", "is_repo", "snapshot_tree"]

_IDENTITY = {"user.name": "longrun", "user.email": "longrun@localhost"}
#: Settings that would make git run a program or reach out, switched off for every call.
_HARDENED = {
    "core.fsmonitor": "false",
    "core.hooksPath": os.devnull,
    "core.attributesFile": os.devnull,
    "core.sshCommand": "false",
    "core.pager": "cat",
    "core.editor": "false",
    "sequence.editor": "false",
    "core.askPass": "false",
    "credential.helper": "",
    "gpg.program": "false",
    "commit.gpgSign": "false",
    "diff.external": "",
    "gc.auto": "0",
    "maintenance.auto": "false",
    "submodule.recurse": "false",
    "protocol.allow": "never",
    "core.untrackedCache": "false",
}
#: Per-driver keys neutralised for every driver name the repository's config defines.
_DRIVER_KEYS = {
    "filter": {"clean": "", "smudge": "", "process": "", "required": "false"},
    "diff": {"textconv": "", "command": ""},
    "merge": {"driver": "false"},
}
_DRIVER_RE = re.compile(r"^(filter|diff|merge)\.(.+)\.([^.]+)$", re.DOTALL)
#: Seconds any one git call may take before it is killed (``git_timeout``).
GIT_TIMEOUT_S = 600.0
INITIAL_COMMIT_MESSAGE = "longrun: initial workspace"


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_TERMINAL_PROMPT="0",
        GIT_PAGER="cat",
        GIT_EDITOR="false",
        LC_ALL="C",
    )
    return env


def _with_config(env: dict[str, str], config: dict[str, str]) -> dict[str, str]:
    """``env`` plus ``config`` as command-scope settings (``GIT_CONFIG_COUNT``/``KEY_n``/``VALUE_n``)."""
    out = dict(env)
    for i, (key, value) in enumerate(config.items()):
        out[f"GIT_CONFIG_KEY_{i}"] = key
        out[f"GIT_CONFIG_VALUE_{i}"] = value
    out["GIT_CONFIG_COUNT"] = str(len(config))
    return out


def _driver_overrides(cwd: Path, timeout: float) -> dict[str, str]:
    """Empty commands for every filter/diff/merge driver the repository's config defines."""
    env = _with_config(_base_env(), _HARDENED)
    try:
        proc = subprocess.run(
            ["git", "config", "-z", "--get-regexp", r"^(filter|diff|merge)\."],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise LongrunError(f"git config timed out after {timeout:g}s in {cwd}", code="git_timeout") from None
    except OSError:
        return {}  # git missing or cwd gone: the real call reports it
    overrides: dict[str, str] = {}
    for entry in proc.stdout.decode("utf-8", "surrogateescape").split("\0"):
        m = _DRIVER_RE.match(entry.split("\n", 1)[0])
        if m is None:
            continue
        section, name = m.group(1), m.group(2)
        for key, value in _DRIVER_KEYS[section].items():
            overrides[f"{section}.{name}.{key}"] = value
    return overrides


def _git(
    cwd: Path,
    *args: str,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float = GIT_TIMEOUT_S,
    config: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``git <args>`` in ``cwd``, hardened (see the module docstring).

    ``config`` adds command-scope settings after the hardened ones (the
    transports a clone or push may use). Raises ``git_failed`` on a non-zero
    exit if ``check``, and ``git_timeout`` (whatever ``check`` says) when git
    runs longer than ``timeout`` seconds.
    """
    config = {**_HARDENED, **_driver_overrides(cwd, timeout), **_IDENTITY, **(config or {})}
    full_env = _with_config(_base_env(), config)
    full_env.update(env or {})
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="surrogateescape",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise LongrunError(
            f"git {' '.join(args)} in {cwd} timed out after {timeout:g}s and was killed", code="git_timeout"
        ) from None
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
    """The unified patch (binary-safe, no colour, no external diff) from tree/commit ``a`` to ``b``.

    ``git apply`` on tree ``a`` reproduces tree ``b`` exactly (binary files,
    renames, modes, symlinks, missing final newlines): the prefixes and paths
    are set here, so the repository's ``diff.noprefix``, ``diff.mnemonicPrefix``
    or ``diff.relative`` cannot change the format.
    """
    return _git(
        Path(workspace),
        "diff",
        "--binary",
        "--full-index",
        "--no-color",
        "--no-ext-diff",
        "--no-textconv",
        "--no-relative",
        "--src-prefix=a/",
        "--dst-prefix=b/",
        a,
        b,
    ).stdout


def changed_paths(workspace: Path, a: str, b: str) -> list[str]:
    """Sorted paths that differ between ``a`` and ``b`` (exact names, no quoting)."""
    out = _git(Path(workspace), "diff", "--name-only", "--no-renames", "--no-ext-diff", "--no-textconv", "-z", a, b).stdout
    return sorted(p for p in out.split("\0") if p)


class GitTrees:
    """The workspace port on git: tree snapshots (``git write-tree`` of a scratch index) and their diffs."""

    def snapshot(self, path: Path) -> str | None:
        return snapshot_tree(path)

    def diff(self, path: Path, a: str, b: str) -> str:
        return diff_trees(path, a, b)

    def changed(self, path: Path, a: str, b: str) -> list[str]:
        return changed_paths(path, a, b)
