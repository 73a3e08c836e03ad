"""The bubblewrap sandbox a stage or command gate runs in (Linux).

:func:`bwrap_argv` wraps a command's argv in ``bwrap`` with this view of the
filesystem, mounted in order of depth so a nested mount lands on its parent:

* ``/`` read-only (``--ro-bind / /``), a fresh ``/dev`` and, in a new PID
  namespace, a fresh ``/proc`` that shows only the sandbox's processes;
* the ``hidden`` directories (the job root's ``.maestro/``: journal,
  checkpoints, evidence, waivers, other jobs) covered by an empty tmpfs, so
  they are not visible at all;
* the ``read_only`` directories bound back read-only (the iteration's
  checkpoint directory and the previous one, which the stage contract lets a
  stage read);
* the ``writable`` directories bound read-write: the workspace (or worktree),
  the per-command ``TMPDIR``, the per-job ``HOME``, the usage and spawn
  directories, the JUnit directory of a test gate.

Every capability is dropped (``--cap-drop ALL``: a stage run by root cannot
unmount the tmpfs to see what it covers), the sandbox dies with its parent
(``--die-with-parent``) and, being PID 1's children in their own namespace,
every process the command started dies with it. The command stays in the
process group the engine created, so a timeout's ``killpg`` reaches every
process inside (no ``--new-session``: the engine already gives the command
a new session without a terminal). ``network=False`` adds ``--unshare-net``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from longrun.errors import LongrunError

__all__ = ["BWRAP_PACKAGE", "SandboxPlan", "bwrap_argv", "check_bwrap", "find_bwrap"]

#: The Debian/Ubuntu package that provides ``bwrap``.
BWRAP_PACKAGE = "bubblewrap"
_PROBE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class SandboxPlan:
    """What one sandboxed command may see and write."""

    writable: tuple[Path, ...]
    hidden: tuple[Path, ...] = ()
    read_only: tuple[Path, ...] = ()
    network: bool = True
    bwrap: str = field(default="bwrap")


def _depth(path: Path) -> int:
    return len(path.parts)


def bwrap_argv(argv: Sequence[str], plan: SandboxPlan) -> list[str]:
    """``bwrap <mounts and namespaces> -- argv``; missing ``hidden``/``read_only`` directories are skipped."""
    mounts: list[tuple[int, int, str, Path]] = []
    for p in plan.hidden:
        if p.is_dir():
            mounts.append((_depth(p), 0, "--tmpfs", p))
    for p in plan.read_only:
        if p.is_dir():
            mounts.append((_depth(p), 1, "--ro-bind", p))
    for p in plan.writable:
        mounts.append((_depth(p), 2, "--bind", p))
    out = [plan.bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    seen: set[tuple[str, Path]] = set()
    for _, _, flag, path in sorted(mounts, key=lambda m: (m[0], m[1], str(m[3]))):
        if (flag, path) in seen:
            continue
        seen.add((flag, path))
        out += [flag, str(path)] if flag == "--tmpfs" else [flag, str(path), str(path)]
    out += ["--unshare-pid", "--unshare-ipc", "--die-with-parent", "--cap-drop", "ALL"]
    if not plan.network:
        out.append("--unshare-net")
    return [*out, "--", *argv]


def find_bwrap() -> str | None:
    """The path of ``bwrap`` on ``PATH``, or None."""
    return shutil.which("bwrap")


def check_bwrap() -> str:
    """The path of a ``bwrap`` that can build a sandbox here; ``sandbox_unavailable`` otherwise.

    Runs ``bwrap`` once with the same namespaces a stage gets, so a kernel
    that refuses them (user namespaces disabled, a container without the
    rights) is found before anything runs, not at the first stage.
    """
    path = find_bwrap()
    if path is None:
        raise _unavailable(f"bwrap was not found on PATH (install the {BWRAP_PACKAGE} package)")
    probe = bwrap_argv(["true"], SandboxPlan(writable=(), bwrap=path))
    try:
        proc = subprocess.run(probe, stdin=subprocess.DEVNULL, capture_output=True, timeout=_PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _unavailable(f"{path} could not be run: {exc}") from None
    if proc.returncode != 0:
        why = proc.stderr.decode("utf-8", "replace").strip() or f"exit {proc.returncode}"
        raise _unavailable(f"{path} cannot create a sandbox here: {why}")
    return path


def _unavailable(why: str) -> LongrunError:
    return LongrunError(
        f"stages run sandboxed by default, but {why}. Install bubblewrap (Debian/Ubuntu: apt-get install "
        f"{BWRAP_PACKAGE}), or opt out in the spec with `sandbox: none`",
        code="sandbox_unavailable",
    )
