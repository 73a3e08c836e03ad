"""Where a job's files live, and safe resolution of every path a spec names.

Layout under the job root (``--root``, default: the current directory)::

    .maestro/
      jobs/<jobId>/spec.json        canonical spec, written once, immutable
      jobs/<jobId>/events.jsonl     append-only journal
      jobs/<jobId>/STOP             per-job stop file (``longrun stop JOB``)
      checkpoints/<jobId>/<iter>/   plan-diff.md, patch.diff, command.log,
                                    test-report.json, summary.md (+ records)
      results/                      Prefect result-record metadata (cache keys)
      home/<jobId>/                 HOME of the job's stages and command gates
      STOP                          root-wide stop file (stops every job)

No path from a spec may escape its base: ``..``, absolute paths and symlinks
that lead outside are refused with ``path_escape`` (SPEC G4).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from longrun.errors import JobIdInvalid, PathEscape

JOB_ID_RE = re.compile(r"^[0-9a-f]{12}$")
MAESTRO = ".maestro"


def check_job_id(job_id: str) -> str:
    """Job ids are allowlisted: exactly 12 lowercase hex digits."""
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise JobIdInvalid(f"{job_id!r} is not a job id (12 lowercase hex digits)")
    return job_id


def safe_join(base: Path, relative: str, *, what: str = "path") -> Path:
    """Resolve ``relative`` under ``base``; refuse anything that leaves ``base``.

    Symlinks are followed before the check, so a link pointing outside is
    refused just like ``..``.
    """
    rel = Path(relative)
    if rel.is_absolute():
        raise PathEscape(f"{what} {relative!r} is absolute; it must be relative to {base}")
    if ".." in rel.parts:
        raise PathEscape(f"{what} {relative!r} climbs out with '..'")
    base_resolved = base.resolve()
    target = (base_resolved / rel).resolve()
    if target != base_resolved and base_resolved not in target.parents:
        raise PathEscape(f"{what} {relative!r} resolves to {target}, outside {base_resolved}")
    return target


@dataclass(frozen=True)
class JobPaths:
    root: Path
    job_id: str

    def __post_init__(self) -> None:
        check_job_id(self.job_id)

    @property
    def maestro(self) -> Path:
        return self.root / MAESTRO

    @property
    def job_dir(self) -> Path:
        return self.maestro / "jobs" / self.job_id

    @property
    def spec_file(self) -> Path:
        return self.job_dir / "spec.json"

    @property
    def events_file(self) -> Path:
        return self.job_dir / "events.jsonl"

    @property
    def job_stop_file(self) -> Path:
        return self.job_dir / "STOP"

    @property
    def checkpoints_root(self) -> Path:
        """Base of the checkpoint result storage (keys start with the job id)."""
        return self.maestro / "checkpoints"

    @property
    def checkpoints(self) -> Path:
        return self.checkpoints_root / self.job_id

    def iteration_dir(self, iteration: int) -> Path:
        return self.checkpoints / str(iteration)

    @property
    def results_meta(self) -> Path:
        return self.maestro / "results"

    @property
    def evidence_dir(self) -> Path:
        return self.maestro / "evidence"

    @property
    def home_dir(self) -> Path:
        """``HOME`` of the job's stages and command gates (writable inside the sandbox)."""
        return self.maestro / "home" / self.job_id

    @property
    def worktree_dir(self) -> Path:
        """Where an ``isolation: worktree`` job's git worktree lives."""
        return self.maestro / "worktrees" / self.job_id


def jobs_dir(root: Path) -> Path:
    return root / MAESTRO / "jobs"


def open_nofollow(path: Path, *, base: Path | None = None) -> int:
    """Open ``path`` read-only without following symlinks; return the fd of a regular file.

    The last component is opened with ``O_NOFOLLOW``; with ``base`` every
    component below ``base`` is (each directory opened relative to the one
    before, so a directory swapped for a symlink after a path check is not
    followed either). The file is checked *after* opening, with ``fstat``: a
    symlink, a FIFO, a device or a directory is refused with ``path_escape``.
    A missing file raises ``FileNotFoundError`` as ``open`` would.
    """
    path = Path(path)
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    if base is None:
        parts: tuple[str, ...] = (str(path),)
        dir_fd = None
    else:
        try:
            parts = path.relative_to(base).parts
        except ValueError:
            raise PathEscape(f"{path} is not below {base}; refused") from None
        dir_fd = os.open(base, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                fd = os.open(part, flags if last else flags | getattr(os, "O_DIRECTORY", 0), dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
                    raise PathEscape(f"{path}: a symlink or special file; refused ({exc.strerror})") from None
                raise
            if dir_fd is not None:
                os.close(dir_fd)
            dir_fd = fd
    except BaseException:
        if dir_fd is not None:
            os.close(dir_fd)
        raise
    if dir_fd is None:  # an empty relative path: base itself
        raise PathEscape(f"{path} is not a regular file; refused")
    st = os.fstat(dir_fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(dir_fd)
        raise PathEscape(f"{path} is not a regular file; refused")
    os.set_blocking(dir_fd, True)
    return dir_fd


def read_nofollow(path: Path, *, base: Path | None = None) -> bytes:
    """The bytes of ``path``, opened as :func:`open_nofollow` does."""
    with os.fdopen(open_nofollow(path, base=base), "rb") as fh:
        return fh.read()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a regular file, opened without following a symlink (``path_escape``)."""
    h = hashlib.sha256()
    with os.fdopen(open_nofollow(Path(path)), "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
