"""Evidence bundles (SPEC C3): a deterministic tar.gz of a job's files and an
in-toto manifest that hashes every one of them.

For a job ``<jobId>`` under a root, :func:`build_bundle` writes::

    .maestro/evidence/<jobId>.tar.gz         the bundle
    .maestro/evidence/<jobId>.manifest.json  an in-toto Statement v1 about it

The bundle holds, in sorted order and nothing else::

    checkpoints/<iter>/...   every file under .maestro/checkpoints/<jobId>/
                             (not the transient running/ pid files)
    events.jsonl             the journal, up to its last complete line
    spec.json                the canonical spec
    waivers/longrun.json     the governed waiver, when the root has one

Determinism: members are sorted by name; every header has mtime 0, uid/gid 0,
empty user/group names, mode 0644, PAX format; no directory members; the gzip
header has mtime 0 and no file name. The manifest's ``created_at`` is the time
of the last journal event, so the same files give byte-identical bundles and
manifests (with the same Python and zlib).

Streaming: files are copied into the tar in chunks and hashed as they are
read; the compressed stream is hashed as it is written. Memory does not grow
with file size. :func:`verify` reads bundles the same way.

This module is pure: no Prefect, no boto3. Uploading lives in
:mod:`longrun.evidence.publish` and :mod:`longrun.storage`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from longrun import atomicio, faults
from longrun.errors import EvidenceMissing, LongrunError
from longrun.evidence.layout import (
    CHECKPOINTS_MEMBER,
    EVENTS_MEMBER,
    FILE_MODE,
    GZIP_LEVEL,
    MANIFEST_TYPE,
    PREDICATE_TYPE,
    SPEC_MEMBER,
    TRANSIENT_DIRS,
    WAIVER_FILE,
    WAIVER_MEMBER,
    is_regular,
    journal_snapshot,
    parse_journal,
)
from longrun.evidence.manifest import predicate
from longrun.journal.chain import check_chain
from longrun.journal.events import format_ts
from longrun.journal.fold import replay
from longrun.storage.paths import JobPaths, check_job_id, open_nofollow

# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class BundleResult:
    """What :func:`build_bundle` wrote (or :func:`load_bundle` found)."""

    job_id: str
    tar_path: Path
    manifest_path: Path
    sha256: str
    size: int
    files: int
    built_from_seq: int
    manifest: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_manifest(cls, job_id: str, tar_path: Path, manifest_path: Path, manifest: Mapping[str, Any]) -> BundleResult:
        predicate = manifest["predicate"]
        return cls(
            job_id=job_id,
            tar_path=tar_path,
            manifest_path=manifest_path,
            sha256=predicate["bundle"]["sha256"],
            size=predicate["bundle"]["size"],
            files=len(manifest["subject"]),
            built_from_seq=int(predicate.get("built_from_seq") or 0),
            manifest=manifest,
        )


# ------------------------------------------------------------------ build


def bundle_paths(root: Path, job_id: str) -> tuple[Path, Path]:
    """``(tar_path, manifest_path)`` of a job's bundle under ``root``."""
    evidence = JobPaths(Path(root), job_id).evidence_dir
    return evidence / f"{job_id}.tar.gz", evidence / f"{job_id}.manifest.json"


@dataclass(frozen=True)
class _Source:
    """One member to be: a file on disk, or bytes already read (the journal snapshot)."""

    name: str
    path: Path | None = None
    data: bytes | None = None


def build_bundle(
    root: Path,
    job_id: str,
    *,
    now_from_journal: bool = True,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> BundleResult:
    """Write ``.maestro/evidence/<jobId>.tar.gz`` and its manifest; return what was written.

    ``created_at`` is the time of the last journal event (``now_from_journal``,
    the default, which keeps rebuilds byte-identical) or ``clock()``.

    Raises :class:`EvidenceMissing` when the job has no spec or journal, and
    :class:`JournalCorrupt` for a journal that cannot be replayed.
    """
    root = Path(root)
    paths = JobPaths(root, check_job_id(job_id))
    if not paths.spec_file.is_file():
        raise EvidenceMissing(f"job {job_id} has no spec at {paths.spec_file}")
    if not paths.events_file.is_file():
        raise EvidenceMissing(f"job {job_id} has no journal at {paths.events_file}")
    journal_bytes = journal_snapshot(paths.events_file)
    events = parse_journal(journal_bytes, paths.events_file)
    if not events:
        raise EvidenceMissing(f"job {job_id} has an empty journal at {paths.events_file}")
    state = replay(events)
    if state.pruned_iterations:
        # The files are gone from disk: a new bundle would silently lack them.
        raise LongrunError(
            f"job {job_id}: the checkpoints of iteration(s) {', '.join(map(str, state.pruned_iterations))} were pruned; "
            f"the bundle built before (verify it with: longrun verify {job_id}) is the job's evidence and is not rebuilt",
            code="evidence_pruned",
        )
    spec_bytes = paths.spec_file.read_bytes()

    sources = [_Source(EVENTS_MEMBER, data=journal_bytes), _Source(SPEC_MEMBER, path=paths.spec_file)]
    sources += _checkpoint_sources(paths.checkpoints)
    waiver = root / WAIVER_FILE
    if is_regular(waiver):
        sources.append(_Source(WAIVER_MEMBER, path=waiver))
    sources.sort(key=lambda s: s.name)

    tar_path, manifest_path = bundle_paths(root, job_id)
    subjects: list[dict[str, Any]] = []
    with atomicio.atomic_writer(tar_path) as raw:
        out = _HashingWriter(raw)
        with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="", compresslevel=GZIP_LEVEL) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
                for src in sources:
                    subjects.append(_add_member(tar, src))
    bundle = {"name": tar_path.name, "sha256": out.hexdigest(), "size": out.size}
    faults.point("evidence.tar")

    created = events[-1].ts if now_from_journal else clock()
    # The journal's chain head, outside the journal: a deleted tail no longer matches it.
    chain = check_chain(journal_bytes)
    pred = predicate(
        job_id=job_id,
        state=state,
        events=events,
        spec_bytes=spec_bytes,
        waiver=waiver if is_regular(waiver) else None,
        created_at=format_ts(created),
        bundle=bundle,
    )
    pred["journal_chain"] = {
        "head": chain.head,
        "events": chain.events,
        "chained": chain.chained,
        "ok": chain.ok,
        "broken_seq": chain.broken_seq,
    }
    manifest = {
        "_type": MANIFEST_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": pred,
    }
    atomicio.write_atomic(manifest_path, _manifest_text(manifest))
    return BundleResult.from_manifest(job_id, tar_path, manifest_path, manifest)


def checkpoint_members(root: Path, job_id: str, iterations: Iterable[int]) -> list[tuple[str, Path]]:
    """``(bundle member name, file)`` of the checkpoint files of ``iterations``, as a bundle would hold them."""
    wanted = {str(i) for i in iterations}
    sources = _checkpoint_sources(JobPaths(Path(root), check_job_id(job_id)).checkpoints)
    return [(src.name, src.path) for src in sources if src.path is not None and src.name.split("/")[1] in wanted]


def _manifest_text(manifest: Mapping[str, Any]) -> str:
    return json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def _is_transient_file(name: str) -> bool:
    """Temp files of :mod:`longrun.atomicio` left by a crash mid-write."""
    return name.startswith(".") and name.endswith(".tmp")


def _checkpoint_sources(base: Path) -> list[_Source]:
    """Every regular file under ``checkpoints/<jobId>/`` (no symlinks, no running/)."""
    if not base.is_dir():
        return []
    out: list[_Source] = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        rel_dir = Path(dirpath).relative_to(base)
        if len(rel_dir.parts) == 1:  # checkpoints/<jobId>/<iter>/
            dirnames[:] = [d for d in dirnames if d not in TRANSIENT_DIRS]
        for name in filenames:
            path = Path(dirpath) / name
            if _is_transient_file(name) or not is_regular(path):
                continue
            out.append(_Source(str(PurePosixPath(CHECKPOINTS_MEMBER, *rel_dir.parts, name)), path=path))
    return out


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = FILE_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def _add_member(tar: tarfile.TarFile, src: _Source) -> dict[str, Any]:
    """Stream one member into ``tar``, hashing what is read; return its subject entry."""
    if src.path is None:
        reader = _HashingReader(io.BytesIO(src.data or b""))
        tar.addfile(_tarinfo(src.name, len(src.data or b"")), reader)
    else:
        with os.fdopen(open_nofollow(Path(src.path)), "rb") as fh:  # never a symlink a stage planted
            # The size is fixed when the header is written; tarfile reads exactly that much.
            reader = _HashingReader(fh)
            tar.addfile(_tarinfo(src.name, os.fstat(fh.fileno()).st_size), reader)
    return {"name": src.name, "digest": {"sha256": reader.hexdigest()}, "annotations": {"size": reader.size}}


class _HashingReader:
    """A read-only file wrapper that hashes everything read through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        block = self._raw.read(n)
        self._hash.update(block)
        self.size += len(block)
        return block

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class _HashingWriter:
    """A write-only file wrapper that hashes and counts everything written through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._raw.write(data)
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self._raw.flush()

    def hexdigest(self) -> str:
        return self._hash.hexdigest()
