"""Verifying a bundle against its manifest, and the files on disk against both (``longrun verify``).

Bundles are read as streams: members are hashed as they are read, so memory
does not grow with their size.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from longrun.errors import EvidenceMismatch, EvidenceMissing, LongrunError, PathEscape
from longrun.evidence.bundle import BundleResult, bundle_paths
from longrun.evidence.layout import (
    CHECKPOINTS_MEMBER,
    CHUNK,
    EVENTS_MEMBER,
    MANIFEST_TYPE,
    PREDICATE_TYPE,
    SPEC_MEMBER,
    WAIVER_FILE,
    WAIVER_MEMBER,
    is_regular,
    journal_snapshot,
    parse_journal,
)
from longrun.journal.chain import check_chain
from longrun.journal.fold import replay
from longrun.storage.paths import JobPaths, check_job_id, safe_join


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


def _hash_stream(fh: IO[bytes], limit: int | None = None) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    while True:
        want = CHUNK if limit is None else min(CHUNK, limit - size)
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
    members, journal = _check_members(tar_path, bundle["name"], subjects)
    mismatches += members
    recorded = manifest["predicate"].get("journal_chain")
    if not mismatches and journal is not None:
        mismatches += _check_bundled_chain(journal, recorded)
    bundle_only = 0
    if job_files_root is not None:
        on_disk, bundle_only = _check_disk(Path(job_files_root), manifest["predicate"]["job_id"], subjects)
        mismatches += on_disk
        mismatches += _check_disk_chain(Path(job_files_root), manifest["predicate"]["job_id"], recorded)
    return VerifyReport(
        manifest_path,
        tar_path,
        tuple(mismatches),
        files=len(subjects),
        checked_disk=job_files_root is not None,
        bundle_only=bundle_only,
    )


def _check_bundled_chain(data: bytes, recorded: Mapping[str, Any] | None) -> list[Mismatch]:
    """The bundled journal's hash chain holds, and its head is the one the manifest recorded."""
    chain = check_chain(data)
    out: list[Mismatch] = []
    if not chain.ok:
        out.append(Mismatch(EVENTS_MEMBER, f"hash chain broken at seq {chain.broken_seq}: {chain.reason}"))
    if recorded is not None and recorded.get("head") != chain.head:
        out.append(Mismatch(EVENTS_MEMBER, "the journal's chain head differs from the one the manifest recorded"))
    return out


def _check_disk_chain(root: Path, job_id: str, recorded: Mapping[str, Any] | None) -> list[Mismatch]:
    """The journal on disk: its chain holds, and it still holds the line the manifest's head names."""
    path = JobPaths(root, check_job_id(job_id)).events_file
    try:
        data = path.read_bytes()
    except OSError:
        return []  # reported by the disk check
    chain = check_chain(data)
    out: list[Mismatch] = []
    if not chain.ok:
        out.append(Mismatch(EVENTS_MEMBER, f"hash chain broken at seq {chain.broken_seq}: {chain.reason}", "disk"))
    if recorded and recorded.get("head") and chain.head_at(int(recorded.get("events") or 0)) != recorded["head"]:
        out.append(
            Mismatch(
                EVENTS_MEMBER,
                f"the journal no longer holds the event {recorded.get('events')} the manifest's chain head names "
                f"(it has {chain.events}): its tail was deleted or rewritten",
                "disk",
            )
        )
    return out


def _check_members(
    tar_path: Path, bundle_name: str, subjects: Mapping[str, Mapping[str, Any]]
) -> tuple[list[Mismatch], bytes | None]:
    """Mismatches of the members, and the bundled journal's bytes (kept as it streams by, for the chain check)."""
    out: list[Mismatch] = []
    seen: set[str] = set()
    journal: bytes | None = None
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
                if reader is not None and name == EVENTS_MEMBER:
                    journal = reader.read()
                    sha, size = hashlib.sha256(journal).hexdigest(), len(journal)
                else:
                    sha, size = _hash_stream(reader) if reader is not None else (hashlib.sha256().hexdigest(), 0)
                if sha != subject["digest"]["sha256"]:
                    out.append(Mismatch(name, "sha256 differs in the bundle"))
                if size != subject["annotations"]["size"]:
                    out.append(Mismatch(name, f"size {size} in the bundle, manifest says {subject['annotations']['size']}"))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        out.append(Mismatch(bundle_name, f"not a readable tar.gz ({type(exc).__name__}: {exc})"))
        return out, None
    for name in sorted(set(subjects) - seen):
        if not any(m.name == name for m in out):
            out.append(Mismatch(name, "listed in the manifest but missing from the bundle"))
    return out, journal


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
        return replay(parse_journal(journal_snapshot(paths.events_file), paths.events_file)).pruned_iterations
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
        if not is_regular(path):
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
