"""Retention (SPEC C5): free disk from finished jobs without touching active runs or losing evidence.

``longrun prune`` calls :func:`prune_job` for each job. What it removes:

* **checkpoint iterations** ``.maestro/checkpoints/<jobId>/<iter>/`` (and their
  result records under ``.maestro/results/<jobId>/<iter>/``) of a job that is
  over — ``COMPLETED`` or ``REJECTED`` — except the last ``keep_last``
  iterations, and only when every file to be removed is in the job's evidence
  bundle with the same sha256 and the bundle verifies against its manifest.
  The bundle then is the record of those iterations; it is never rebuilt
  (``evidence_pruned``), and ``verify --strict`` checks pruned iterations
  against it;
* **the job's worktree** ``.maestro/worktrees/<jobId>`` (``isolation:
  worktree``) of any job that is not active, unless it has uncommitted
  changes. The branch ``longrun/<jobId>`` is kept, so a resumed job checks
  it out again and nothing committed is lost.

It never touches: a job that is ``PENDING``, ``RUNNING`` (live or crashed:
resume or stop it first), waiting for an approval or just approved; the checkpoints of a ``STOPPED``/``STOPPED_BUDGET``/``FAILED`` job (it
can still be resumed); the journal, the canonical spec, the evidence bundle,
exported patches. What was removed is journaled as ``pruned``.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from longrun import faults
from longrun.errors import LongrunError
from longrun.storage import mirror

__all__ = ["PruneResult", "parse_age", "prune_job"]

#: Over for good: nothing will write their checkpoints or rebuild their bundle again.
FINAL = frozenset({"COMPLETED", "REJECTED"})
#: Ended, but ``longrun resume`` continues them: their checkpoints stay.
RESUMABLE = frozenset({"STOPPED", "STOPPED_BUDGET", "FAILED"})

_AGE_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_age(text: str) -> timedelta:
    """``"7d"``, ``"12h"``, ``"30m"``, ``"45s"`` or ``"0"`` (seconds without a unit)."""
    m = _AGE_RE.match(text.strip())
    if m is None:
        raise LongrunError(
            f"--older-than {text!r}: give a number with an optional unit s, m, h or d (e.g. 7d)", code="usage_error"
        )
    return timedelta(seconds=float(m.group(1)) * _UNIT[m.group(2)])


@dataclass
class PruneResult:
    """What :func:`prune_job` removed (or, with ``dry_run``, would remove) for one job."""

    job_id: str
    name: str
    status: str
    dry_run: bool
    iterations: list[int] = field(default_factory=list)
    worktree: str | None = None
    freed_bytes: int = 0
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)
    #: Directories to remove once the prune is journaled.
    remove: list[Path] = field(default_factory=list)

    @property
    def leftovers(self) -> bool:
        """Only files of iterations an interrupted prune already journaled are left to remove."""
        return bool(self.remove) and not self.iterations

    @property
    def changed(self) -> bool:
        return bool(self.iterations or self.worktree)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "name": self.name,
            "status": self.status,
            "dry_run": self.dry_run,
            "iterations": self.iterations,
            "worktree": self.worktree,
            "freed_bytes": self.freed_bytes,
            "skipped": self.skipped,
            "notes": self.notes,
        }

    def line(self) -> str:
        head = f"{self.name} ({self.job_id}) {self.status}:"
        if self.skipped:
            return f"{head} skipped: {self.skipped}"
        verb = "would remove" if self.dry_run else "removed"
        parts = []
        if self.iterations:
            parts.append(f"{verb} checkpoints of iteration(s) {_ranges(self.iterations)}")
        if self.worktree:
            parts.append(f"{verb} worktree {self.worktree} (its branch is kept)")
        what = "; ".join(parts) if parts else "nothing to remove"
        freed = f"; {'would free' if self.dry_run else 'freed'} {_size(self.freed_bytes)}" if self.freed_bytes else ""
        notes = "".join(f"\n  {n}" for n in self.notes)
        return f"{head} {what}{freed}{notes}"


def prune_job(
    record: Any,
    root: Path,
    *,
    older_than: timedelta,
    keep_last: int,
    now: datetime,
    dry_run: bool = False,
    by: str | None = None,
) -> PruneResult:
    """Prune one job (a :class:`~longrun.journal.registry.JobRecord`); see the module docstring."""
    if keep_last < 0:
        raise LongrunError("--keep-last must be 0 or more", code="usage_error")
    state = record.state()
    status = str(state.status)
    result = PruneResult(record.job_id, record.name, status, dry_run)
    if status not in FINAL | RESUMABLE:
        result.skipped = {
            "PENDING": "no run has ended yet",
            "RUNNING": "a run is active, or crashed (resume or stop it first)",
            "APPROVED": "it was approved and goes on",
        }.get(status, "it waits for an approval")
        return result
    if state.last_event_ts is not None and now - state.last_event_ts < older_than:
        result.skipped = f"its last event is {_age(now - state.last_event_ts)} old (--older-than {_age(older_than)})"
        return result

    loaded = record.load()
    if mirror.remote_for(root) is not None:
        # A remote root: prune what the store holds (the checkpoints and the bundle that keeps them).
        from longrun.evidence.publish import fetch_uploaded_bundle

        mirror.pull_tree(record.paths.checkpoints)
        fetch_uploaded_bundle(root, record.job_id, state)
    _prune_worktree(result, root, loaded, dry_run)
    if status in FINAL:
        _prune_checkpoints(result, root, state, keep_last, dry_run)
    elif any(p.name.isdigit() for p in record.paths.checkpoints.glob("*")):
        result.notes.append(f"checkpoints kept: a {status} job can still be resumed")
    if result.changed and not dry_run and not result.leftovers:
        # Journaled first (write-ahead): a crash while removing leaves the journal saying what is gone,
        # so verify checks those iterations in the bundle only, and the next prune removes what is left.
        record.journal.append(
            "pruned", {"iterations": result.iterations, "worktree": result.worktree, "by": by}, job_id=record.job_id
        )
    if not dry_run:
        _remove(result.remove)
    return result


def _prune_worktree(result: PruneResult, root: Path, loaded: Any, dry_run: bool) -> None:
    from longrun.storage.paths import JobPaths, safe_join
    from longrun.workspace import worktree

    path = JobPaths(root, result.job_id).worktree_dir
    if not path.exists():
        return
    try:
        if worktree.is_dirty(path):
            result.notes.append(f"worktree kept: {path} has uncommitted changes")
            return
        size = _du(path)
        if not dry_run:
            repo = safe_join(root, loaded.spec.workspace.path, what="workspace.path")
            worktree.remove_worktree(repo, path)
    except LongrunError as exc:
        result.notes.append(f"worktree kept: {exc}")
        return
    result.worktree = str(path)
    result.freed_bytes += size


def _prune_checkpoints(result: PruneResult, root: Path, state: Any, keep_last: int, dry_run: bool) -> None:
    from longrun.evidence.bundle import checkpoint_members
    from longrun.evidence.verify import bundle_members
    from longrun.storage.paths import JobPaths, sha256_file

    paths = JobPaths(root, result.job_id)
    last = state.iteration - keep_last
    candidates = sorted(
        int(p.name)
        for p in paths.checkpoints.glob("*")
        if p.name.isdigit() and p.is_dir() and int(p.name) <= last and int(p.name) != state.open_iteration
    )
    if not candidates:
        return
    # Everything removed must be in a bundle that verifies: then the bundle is the record.
    try:
        in_bundle = bundle_members(root, result.job_id)
    except LongrunError as exc:
        result.notes.append(f"checkpoints kept: {exc}")
        return
    on_disk = checkpoint_members(root, result.job_id, candidates)
    missing = [name for name, file in on_disk if in_bundle.get(name) != sha256_file(file)]
    if missing:
        result.notes.append(
            f"checkpoints kept: {len(missing)} file(s) are not in the evidence bundle as they are on disk "
            f"(first: {missing[0]}); rebuild it with: longrun evidence {result.job_id}"
        )
        return
    for it in candidates:
        for target in (paths.iteration_dir(it), paths.results_meta / result.job_id / str(it)):
            if target.exists():
                result.freed_bytes += _du(target)
                result.remove.append(target)
    # Iterations a crashed prune already journaled are only cleaned up, not journaled again.
    result.iterations = [it for it in candidates if it not in set(state.pruned_iterations)]


def _remove(targets: list[Path]) -> None:
    for i, target in enumerate(targets):
        mirror.remove_tree(target)  # a remote root: the store's copy first, so it never outlives the journal's word
        if target.exists():
            shutil.rmtree(target)
        if i == 0:
            faults.point("prune.removing")


def _du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _ranges(numbers: list[int]) -> str:
    out: list[str] = []
    start = prev = numbers[0]
    following: list[int | None] = [*numbers[1:], None]
    for n in following:
        if n is not None and n == prev + 1:
            prev = n
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ", ".join(out)


def _size(size: int) -> str:
    n = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _age(delta: timedelta) -> str:
    s = delta.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.1f}{unit}"
    return f"{s:.0f}s"
