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
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from longrun import atomicio
from longrun.errors import EvidenceMismatch, EvidenceMissing, JournalCorrupt, LongrunError, PathEscape
from longrun.journal.events import Event, format_ts, parse_event
from longrun.journal.fold import replay
from longrun.journal.payloads import GateEvaluated
from longrun.journal.state import RunState
from longrun.storage.paths import MAESTRO, JobPaths, check_job_id, safe_join

__all__ = [
    "MANIFEST_TYPE",
    "PREDICATE_TYPE",
    "BundleResult",
    "Mismatch",
    "VerifyReport",
    "build_bundle",
    "bundle_paths",
    "load_bundle",
    "manifest_markdown",
    "verify",
]

MANIFEST_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://longrun.dev/evidence/v1"

#: The governed waiver (SPEC G2), relative to the root, and its member name.
WAIVER_FILE = PurePosixPath(MAESTRO, "waivers", "longrun.json")
WAIVER_MEMBER = "waivers/longrun.json"
EVENTS_MEMBER = "events.jsonl"
SPEC_MEMBER = "spec.json"
CHECKPOINTS_MEMBER = "checkpoints"

#: Directories under ``checkpoints/<iter>/`` that hold only transient files.
TRANSIENT_DIRS = frozenset({"running"})

_CHUNK = 1 << 20
#: zlib level: 6 is zlib's own default, a fair trade of speed for size.
_GZIP_LEVEL = 6
_FILE_MODE = 0o644
#: Gate evidence keys copied into the manifest (the journal has the rest).
_GATE_SUMMARY_KEYS = (
    "exit_code",
    "timed_out",
    "tests",
    "passed",
    "failed",
    "errors",
    "skipped",
    "pass_rate",
    "matched",
    "path",
    "reason",
)


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


@dataclass(frozen=True)
class Mismatch:
    """One thing that does not match: a member name (or the bundle) and what is wrong."""

    name: str
    problem: str
    where: str = "bundle"  # bundle | disk | manifest

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "problem": self.problem, "where": self.where}

    def __str__(self) -> str:
        return f"{self.name}: {self.problem}"


@dataclass(frozen=True)
class VerifyReport:
    manifest_path: Path
    tar_path: Path | None
    mismatches: tuple[Mismatch, ...] = ()
    #: Subjects in the manifest.
    files: int = 0
    #: True when the job's files on disk were re-hashed too.
    checked_disk: bool = False
    #: Files of iterations ``longrun prune`` removed: checked in the bundle only.
    bundle_only: int = 0

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "manifest": str(self.manifest_path),
            "bundle": str(self.tar_path) if self.tar_path else None,
            "files": self.files,
            "checked_disk": self.checked_disk,
            "bundle_only": self.bundle_only,
            "mismatches": [m.to_dict() for m in self.mismatches],
        }

    def raise_for_mismatch(self) -> None:
        """Raise :class:`EvidenceMismatch` (naming every mismatch) unless ok."""
        if not self.ok:
            lines = "; ".join(str(m) for m in self.mismatches)
            raise EvidenceMismatch(f"{self.manifest_path}: {len(self.mismatches)} mismatch(es): {lines}")


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
    journal_bytes = _journal_snapshot(paths.events_file)
    events = _parse_journal(journal_bytes, paths.events_file)
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
    if _is_regular(waiver):
        sources.append(_Source(WAIVER_MEMBER, path=waiver))
    sources.sort(key=lambda s: s.name)

    tar_path, manifest_path = bundle_paths(root, job_id)
    subjects: list[dict[str, Any]] = []
    with atomicio.atomic_writer(tar_path) as raw:
        out = _HashingWriter(raw)
        with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="", compresslevel=_GZIP_LEVEL) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
                for src in sources:
                    subjects.append(_add_member(tar, src))
    bundle = {"name": tar_path.name, "sha256": out.hexdigest(), "size": out.size}

    created = events[-1].ts if now_from_journal else clock()
    manifest = {
        "_type": MANIFEST_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": _predicate(
            job_id=job_id,
            state=state,
            events=events,
            spec_bytes=spec_bytes,
            waiver=waiver if _is_regular(waiver) else None,
            created_at=format_ts(created),
            bundle=bundle,
        ),
    }
    atomicio.write_atomic(manifest_path, _manifest_text(manifest))
    return BundleResult.from_manifest(job_id, tar_path, manifest_path, manifest)


def load_bundle(root: Path, job_id: str) -> BundleResult:
    """The bundle already built for a job, read back from its manifest.

    Raises :class:`EvidenceMissing` when the manifest or the tar.gz is absent
    and :class:`EvidenceMismatch` when the manifest cannot be read.
    """
    tar_path, manifest_path = bundle_paths(Path(root), check_job_id(job_id))
    if not manifest_path.is_file() or not tar_path.is_file():
        raise EvidenceMissing(
            f"no evidence bundle for job {job_id} under {manifest_path.parent}; build it with: longrun evidence {job_id}"
        )
    manifest, problems = _load_manifest(manifest_path)
    if problems:
        raise EvidenceMismatch(f"{manifest_path}: " + "; ".join(m.problem for m in problems))
    return BundleResult.from_manifest(job_id, tar_path, manifest_path, manifest)


def bundle_members(root: Path, job_id: str) -> dict[str, str]:
    """Member name → sha256 of the job's bundle, once the bundle verifies against its manifest.

    Raises :class:`EvidenceMissing` without a bundle and
    :class:`EvidenceMismatch` when it does not verify.
    """
    bundle = load_bundle(root, job_id)
    verify(bundle.manifest_path, bundle.tar_path).raise_for_mismatch()
    return {s["name"]: s["digest"]["sha256"] for s in bundle.manifest["subject"]}


def checkpoint_members(root: Path, job_id: str, iterations: Iterable[int]) -> list[tuple[str, Path]]:
    """``(bundle member name, file)`` of the checkpoint files of ``iterations``, as a bundle would hold them."""
    wanted = {str(i) for i in iterations}
    sources = _checkpoint_sources(JobPaths(Path(root), check_job_id(job_id)).checkpoints)
    return [(src.name, src.path) for src in sources if src.path is not None and src.name.split("/")[1] in wanted]


def _manifest_text(manifest: Mapping[str, Any]) -> str:
    return json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def _journal_snapshot(path: Path) -> bytes:
    """The journal up to its last complete line (a line being appended is left out)."""
    data = path.read_bytes()
    return data[: data.rfind(b"\n") + 1]


def _parse_journal(data: bytes, path: Path) -> list[Event]:
    events: list[Event] = []
    for lineno, line in enumerate(data.splitlines(), 1):
        try:
            events.append(parse_event(json.loads(line)))
        except ValueError as exc:
            raise JournalCorrupt(f"{path}:{lineno}: not valid JSON ({exc})") from exc
        except JournalCorrupt as exc:
            raise JournalCorrupt(f"{path}:{lineno}: {exc.message}") from exc
    return events


def _is_regular(path: Path) -> bool:
    """A regular file and not a symlink (links are never followed into a bundle)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


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
            if _is_transient_file(name) or not _is_regular(path):
                continue
            out.append(_Source(str(PurePosixPath(CHECKPOINTS_MEMBER, *rel_dir.parts, name)), path=path))
    return out


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = _FILE_MODE
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
        with open(src.path, "rb") as fh:
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


# ------------------------------------------------------------------ predicate


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _gate_summary(gate: GateEvaluated) -> dict[str, Any]:
    evidence = gate.evidence
    out: dict[str, Any] = {"kind": gate.kind, "required": gate.required, "passed": gate.passed}
    summary = {k: evidence[k] for k in _GATE_SUMMARY_KEYS if k in evidence}
    if summary:
        out["evidence"] = summary
    return out


def _approvals(events: Iterable[Event]) -> list[dict[str, Any]]:
    """APPROVED/REJECTED decisions in journal order (none when the journal has no such events)."""
    out = []
    for e in events:
        if e.type not in ("approved", "rejected"):
            continue
        p = e.payload.model_dump(mode="json")
        out.append(
            {
                "decision": e.type.upper(),
                "step": p.get("step"),
                "approver": p.get("approver"),
                "comment": p.get("comment"),
                "iteration": p.get("iteration"),
                "seq": e.seq,
                "ts": format_ts(e.ts),
            }
        )
    return out


def _waiver_summary(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        doc = json.loads(path.read_bytes())
    except ValueError:
        return {"member": WAIVER_MEMBER, "valid_json": False}
    fields = {k: doc.get(k) for k in ("reason", "expires_at", "approved_by")} if isinstance(doc, dict) else {}
    return {"member": WAIVER_MEMBER, "valid_json": isinstance(doc, dict), **fields}


def _predicate(
    *,
    job_id: str,
    state: RunState,
    events: list[Event],
    spec_bytes: bytes,
    waiver: Path | None,
    created_at: str,
    bundle: dict[str, Any],
) -> dict[str, Any]:
    # spec.json is the canonical JSON plus one newline; the job id is its hash's first 12 digits.
    canonical = spec_bytes[:-1] if spec_bytes.endswith(b"\n") else spec_bytes
    try:
        spec = json.loads(canonical)
    except ValueError:
        spec = {}
    per_iteration = {
        str(it): {name: _gate_summary(g) for name, g in sorted(gates.items())} for it, gates in sorted(state.gate_results.items())
    }
    last_it = max(state.gate_results) if state.gate_results else None
    last = per_iteration.get(str(last_it), {}) if last_it is not None else {}
    required = [g["passed"] for g in last.values() if g["required"]]
    skips = getattr(state, "gate_skips", None) or {}
    return {
        "job_id": job_id,
        "name": state.name or spec.get("name"),
        "spec_sha256": hashlib.sha256(canonical).hexdigest(),
        "mode": spec.get("mode"),
        "status": str(state.status),
        "stop_reason": state.stop_reason,
        "iterations": state.iterations_finished,
        "gates": {
            "last_iteration": last_it,
            "last": last,
            "required_passed": all(required) if required else None,
            "per_iteration": per_iteration,
            "skipped": {str(it): dict(g) for it, g in sorted(skips.items())},
        },
        "budget": {
            "usd": round(state.usd_total, 6),
            "tokens": state.tokens_total,
            "limits": spec.get("budgets") or {},
        },
        "approvals": _approvals(events),
        "waiver": _waiver_summary(waiver),
        "versions": {"longrun": _version("longrun"), "prefect": _version("prefect")},
        "runs": list(state.runs),
        "flow_run_ids": list(state.flow_run_ids),
        "built_from_seq": events[-1].seq,
        "created_at": created_at,
        "bundle": bundle,
    }


# ------------------------------------------------------------------ verify


def _load_manifest(path: Path) -> tuple[dict[str, Any], list[Mismatch]]:
    """The manifest and every problem with its shape (empty when usable)."""
    name = path.name
    try:
        doc = json.loads(path.read_bytes())
    except ValueError as exc:
        return {}, [Mismatch(name, f"not valid JSON ({exc})", "manifest")]
    problems: list[Mismatch] = []
    if not isinstance(doc, dict):
        return {}, [Mismatch(name, "not a JSON object", "manifest")]
    if doc.get("_type") != MANIFEST_TYPE:
        problems.append(Mismatch(name, f"_type is {doc.get('_type')!r}, not {MANIFEST_TYPE!r}", "manifest"))
    if doc.get("predicateType") != PREDICATE_TYPE:
        problems.append(Mismatch(name, f"predicateType is {doc.get('predicateType')!r}, not {PREDICATE_TYPE!r}", "manifest"))
    subjects = doc.get("subject")
    if not isinstance(subjects, list):
        problems.append(Mismatch(name, "subject is not a list", "manifest"))
    else:
        seen: set[str] = set()
        for i, s in enumerate(subjects):
            ok = (
                isinstance(s, dict)
                and isinstance(s.get("name"), str)
                and isinstance(s.get("digest"), dict)
                and isinstance(s["digest"].get("sha256"), str)
                and isinstance((s.get("annotations") or {}).get("size"), int)
            )
            if not ok:
                problems.append(Mismatch(name, f"subject[{i}] lacks name, digest.sha256 or annotations.size", "manifest"))
            elif s["name"] in seen:
                problems.append(Mismatch(s["name"], "listed twice in the manifest", "manifest"))
            else:
                seen.add(s["name"])
    pred = doc.get("predicate")
    bundle = pred.get("bundle") if isinstance(pred, dict) else None
    if not (
        isinstance(bundle, dict)
        and isinstance(bundle.get("name"), str)
        and isinstance(bundle.get("sha256"), str)
        and isinstance(bundle.get("size"), int)
    ):
        problems.append(Mismatch(name, "predicate.bundle lacks name, sha256 or size", "manifest"))
    elif not _plain_name(bundle["name"]):
        problems.append(Mismatch(name, f"predicate.bundle.name {bundle['name']!r} is not a plain file name", "manifest"))
    if not isinstance(pred, dict) or not isinstance(pred.get("job_id"), str):
        problems.append(Mismatch(name, "predicate.job_id is missing", "manifest"))
    return doc, problems


def _plain_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def _unsafe_name(name: str) -> str | None:
    """Why a member name is refused, or None."""
    if not name:
        return "empty member name refused"
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute member name refused"
    if ".." in p.parts or ".." in name.split("\\"):
        return "member name climbs out with '..'; refused"
    return None


_TYPE_NAMES = {
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "fifo",
    tarfile.DIRTYPE: "directory",
}


def _member_kind_problem(member: tarfile.TarInfo) -> str | None:
    if member.issym():
        return f"symlink member (-> {member.linkname}) refused"
    if member.islnk():
        return f"hard link member (-> {member.linkname}) refused"
    if member.issparse():
        return "sparse member refused"
    if not member.isreg():
        return f"{_TYPE_NAMES.get(member.type, repr(member.type))} member refused"
    return None


def _hash_stream(fh: BinaryIO, limit: int | None = None) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    while True:
        want = _CHUNK if limit is None else min(_CHUNK, limit - size)
        if want <= 0:
            break
        block = fh.read(want)
        if not block:
            break
        h.update(block)
        size += len(block)
    return h.hexdigest(), size


def verify(
    manifest_path: Path,
    tar_path: Path | None = None,
    *,
    job_files_root: Path | None = None,
) -> VerifyReport:
    """Re-check a bundle against its manifest; report every mismatch.

    Checks the bundle's own sha256 and size against ``predicate.bundle``, then
    streams every member: its name must be relative without ``..``, its type a
    regular file (links, devices, fifos, directories are refused), it must be
    listed once in the manifest with the same sha256 and size, and every
    subject must be in the bundle. With ``job_files_root`` the job's files on
    disk are re-hashed too (the journal is append-only, so only its first
    ``size`` bytes must match).

    ``tar_path`` defaults to ``predicate.bundle.name`` beside the manifest.
    Raises :class:`EvidenceMissing` when the manifest or the bundle is absent.
    """
    manifest_path = Path(manifest_path)
    if not manifest_path.is_file():
        raise EvidenceMissing(f"no manifest at {manifest_path}")
    manifest, problems = _load_manifest(manifest_path)
    if problems:
        return VerifyReport(manifest_path, tar_path, tuple(problems))
    subjects = {s["name"]: s for s in manifest["subject"]}
    bundle = manifest["predicate"]["bundle"]
    tar_path = Path(tar_path) if tar_path is not None else manifest_path.parent / bundle["name"]
    if not tar_path.is_file():
        raise EvidenceMissing(f"no bundle at {tar_path} (named by {manifest_path})")

    mismatches: list[Mismatch] = []
    with open(tar_path, "rb") as fh:
        sha, size = _hash_stream(fh)
    if sha != bundle["sha256"]:
        mismatches.append(Mismatch(bundle["name"], "sha256 differs from the manifest's bundle digest"))
    if size != bundle["size"]:
        mismatches.append(Mismatch(bundle["name"], f"size {size} differs from the manifest's {bundle['size']}"))
    mismatches += _check_members(tar_path, bundle["name"], subjects)
    bundle_only = 0
    if job_files_root is not None:
        on_disk, bundle_only = _check_disk(Path(job_files_root), manifest["predicate"]["job_id"], subjects)
        mismatches += on_disk
    return VerifyReport(
        manifest_path,
        tar_path,
        tuple(mismatches),
        files=len(subjects),
        checked_disk=job_files_root is not None,
        bundle_only=bundle_only,
    )


def _check_members(tar_path: Path, bundle_name: str, subjects: Mapping[str, Mapping[str, Any]]) -> list[Mismatch]:
    out: list[Mismatch] = []
    seen: set[str] = set()
    try:
        with tarfile.open(tar_path, mode="r|gz") as tar:
            for member in tar:
                name = member.name
                refused = _unsafe_name(name) or _member_kind_problem(member)
                if refused:
                    out.append(Mismatch(name, refused))
                    continue
                if name in seen:
                    out.append(Mismatch(name, "appears more than once in the bundle"))
                    continue
                seen.add(name)
                subject = subjects.get(name)
                if subject is None:
                    out.append(Mismatch(name, "in the bundle but not in the manifest"))
                    continue
                reader = tar.extractfile(member)
                sha, size = _hash_stream(reader) if reader is not None else (hashlib.sha256().hexdigest(), 0)
                if sha != subject["digest"]["sha256"]:
                    out.append(Mismatch(name, "sha256 differs in the bundle"))
                if size != subject["annotations"]["size"]:
                    out.append(Mismatch(name, f"size {size} in the bundle, manifest says {subject['annotations']['size']}"))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        out.append(Mismatch(bundle_name, f"not a readable tar.gz ({type(exc).__name__}: {exc})"))
        return out
    for name in sorted(set(subjects) - seen):
        if not any(m.name == name for m in out):
            out.append(Mismatch(name, "listed in the manifest but missing from the bundle"))
    return out


def _disk_path(root: Path, paths: JobPaths, name: str) -> Path | None:
    if name == EVENTS_MEMBER:
        return paths.events_file
    if name == SPEC_MEMBER:
        return paths.spec_file
    if name == WAIVER_MEMBER:
        return root / WAIVER_FILE
    head, _, rest = name.partition("/")
    if head == CHECKPOINTS_MEMBER and rest:
        return safe_join(paths.checkpoints, rest, what="manifest subject")
    return None


def _pruned_iterations(paths: JobPaths) -> tuple[int, ...]:
    """Iterations ``longrun prune`` removed, from the journal on disk (() if it cannot be read)."""
    try:
        return replay(_parse_journal(_journal_snapshot(paths.events_file), paths.events_file)).pruned_iterations
    except (OSError, LongrunError):
        return ()


def _check_disk(root: Path, job_id: str, subjects: Mapping[str, Mapping[str, Any]]) -> tuple[list[Mismatch], int]:
    """Mismatches between the subjects and the job's files; and how many pruned files were skipped."""
    out: list[Mismatch] = []
    skipped = 0
    paths = JobPaths(root, check_job_id(job_id))
    pruned = {f"{CHECKPOINTS_MEMBER}/{it}" for it in _pruned_iterations(paths)}
    for name in sorted(subjects):
        want_sha = subjects[name]["digest"]["sha256"]
        want_size = subjects[name]["annotations"]["size"]
        try:
            path = _disk_path(root, paths, name)
        except PathEscape as exc:
            out.append(Mismatch(name, f"refused: {exc.message}", "disk"))
            continue
        if path is None:
            out.append(Mismatch(name, "has no place among the job's files", "disk"))
            continue
        if not _is_regular(path):
            if "/".join(name.split("/")[:2]) in pruned:  # a pruned iteration lives on in the bundle
                skipped += 1
            else:
                out.append(Mismatch(name, f"missing on disk ({path})", "disk"))
            continue
        # The journal only grows: the bundle holds a prefix of it.
        limit = want_size if name == EVENTS_MEMBER else None
        with open(path, "rb") as fh:
            sha, size = _hash_stream(fh, limit)
        if size < want_size:
            out.append(Mismatch(name, f"shorter on disk ({size} bytes, manifest says {want_size}) ({path})", "disk"))
        elif size != want_size:
            out.append(Mismatch(name, f"size {size} on disk, manifest says {want_size} ({path})", "disk"))
        elif sha != want_sha:
            out.append(Mismatch(name, f"sha256 differs on disk ({path})", "disk"))
    return out, skipped


# ------------------------------------------------------------------ summary


def manifest_markdown(manifest: Mapping[str, Any]) -> str:
    """A short markdown summary of a manifest (for a Prefect markdown artifact)."""
    p = manifest.get("predicate", {})
    bundle = p.get("bundle", {})
    budget = p.get("budget", {})
    gates = p.get("gates", {})
    lines = [
        f"# Evidence — {p.get('name')} (`{p.get('job_id')}`)",
        "",
        f"- status: **{p.get('status')}**"
        + (f" ({p['stop_reason']})" if p.get("stop_reason") else "")
        + f" after {p.get('iterations', 0)} iteration(s)",
        f"- bundle: `{bundle.get('name')}`, {bundle.get('size', 0):,} bytes, sha256 `{bundle.get('sha256')}`",
        f"- files: {len(manifest.get('subject', []))}; spec sha256 `{p.get('spec_sha256')}`",
        f"- spend: ${budget.get('usd', 0):.4f}, {budget.get('tokens', 0):,} tokens",
        f"- built from journal seq {p.get('built_from_seq')} at {p.get('created_at')}",
    ]
    last = gates.get("last") or {}
    if last:
        lines += [
            "",
            f"## Gates (iteration {gates.get('last_iteration')})",
            "",
            "| gate | kind | required | result |",
            "|---|---|---|---|",
        ]
        for name, g in sorted(last.items()):
            lines.append(
                f"| {name} | {g.get('kind')} | {'yes' if g.get('required') else 'no'} | {'PASS' if g.get('passed') else 'FAIL'} |"
            )
    approvals = p.get("approvals") or []
    if approvals:
        lines += ["", "## Approvals", ""]
        lines += [f"- {a.get('decision')} `{a.get('step')}` by {a.get('approver')} at {a.get('ts')}" for a in approvals]
    if p.get("waiver"):
        w = p["waiver"]
        lines += ["", f"Waiver: {w.get('reason')!s} (approved by {w.get('approved_by')}, expires {w.get('expires_at')})"]
    lines += ["", f"Verify: `longrun verify {p.get('job_id')}`"]
    return "\n".join(lines) + "\n"
