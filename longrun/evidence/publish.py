"""Finish a job's evidence: build the bundle, journal it, upload it.

The flow calls :func:`finalize_evidence` once a run ends; ``longrun evidence``
calls it too, and ``longrun evidence push`` calls :func:`push_evidence` to
retry an upload that failed. Upload failures never delete the local bundle and
never raise: they are journaled (``evidence_upload_failed``) and returned in
the :class:`EvidenceOutcome`, which the CLI maps to exit code 7.

Remote keys: ``<store prefix>/<jobId>/<jobId>.tar.gz`` and
``<store prefix>/<jobId>/<jobId>.manifest.json`` (the tar first, so a manifest
in the store always has its bundle beside it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from longrun import faults
from longrun.errors import EvidenceStoreInvalid, LongrunError
from longrun.evidence.bundle import BundleResult, build_bundle
from longrun.evidence.signing import envelope_path, load_private_key, sign_manifest
from longrun.evidence.verify import load_bundle, verify
from longrun.storage import EvidenceStore, StoredObject, mirror, resolve_store
from longrun.storage.paths import check_job_id, sha256_file

__all__ = ["EvidenceOutcome", "finalize_evidence", "push_evidence", "remote_keys"]

OutcomeStatus = Literal["local", "uploaded", "upload_failed"]


class EventSink(Protocol):
    """Where evidence events go: the local :class:`~longrun.journal.local.Journal` or the engine's journal port."""

    def append(self, type: str, payload: Mapping[str, Any], *, job_id: str) -> object:
        """Append one event."""
        ...


@dataclass(frozen=True)
class EvidenceOutcome:
    """What happened to a job's evidence.

    ``status``: ``local`` (built, no store configured), ``uploaded`` or
    ``upload_failed`` (the local bundle is kept; ``error`` says why).
    """

    bundle: BundleResult
    status: OutcomeStatus
    store_uri: str | None = None
    uploaded: StoredObject | None = None
    manifest_uploaded: StoredObject | None = None
    error: LongrunError | None = None

    @property
    def upload_failed(self) -> bool:
        return self.status == "upload_failed"

    def to_dict(self) -> dict[str, Any]:
        b = self.bundle
        return {
            "job_id": b.job_id,
            "status": self.status,
            "bundle": {"path": str(b.tar_path), "sha256": b.sha256, "size": b.size, "files": b.files},
            "manifest": str(b.manifest_path),
            "built_from_seq": b.built_from_seq,
            "store": self.store_uri,
            "uploaded": self.uploaded.to_dict() if self.uploaded else None,
            "manifest_uploaded": self.manifest_uploaded.to_dict() if self.manifest_uploaded else None,
            "error": self.error.to_dict() | {"retryable": self.error.retryable} if self.error else None,
        }


def remote_keys(job_id: str) -> tuple[str, str]:
    """Store keys ``(<jobId>/<jobId>.tar.gz, <jobId>/<jobId>.manifest.json)`` (the store adds its prefix)."""
    return f"{job_id}/{job_id}.tar.gz", f"{job_id}/{job_id}.manifest.json"


def _rel(path: Path, root: Path) -> str:
    try:
        return os.path.relpath(path, root)
    except ValueError:
        return str(path)


def finalize_evidence(
    root: Path, job_id: str, store_ref: str | None, journal: EventSink, *, signing_key: str | None = None
) -> EvidenceOutcome:
    """Build the bundle, journal ``evidence_built``, and upload it when a store is configured.

    ``store_ref`` is the spec's ``evidence.store`` (None: local only). Build
    problems raise (:class:`~longrun.errors.EvidenceMissing`,
    :class:`~longrun.errors.JournalCorrupt`); store problems do not — they are
    journaled as ``evidence_upload_failed`` and returned.
    """
    root = Path(root)
    bundle = build_bundle(root, check_job_id(job_id))
    signature = sign_manifest(bundle.manifest_path, load_private_key(signing_key)) if signing_key else None
    journal.append(
        "evidence_built",
        {
            "manifest": _rel(bundle.manifest_path, root),
            "bundle": _rel(bundle.tar_path, root),
            "sha256": bundle.sha256,
            "size": bundle.size,
            "files": bundle.files,
            "built_from_seq": bundle.built_from_seq,
            "signature": _rel(signature, root) if signature is not None else None,
        },
        job_id=job_id,
    )
    faults.point("evidence.built")
    store_ref = store_ref or mirror.default_evidence_store(root)
    if store_ref is None:
        return EvidenceOutcome(bundle, "local")
    return _upload(root, bundle, store_ref, journal)


def push_evidence(root: Path, job_id: str, store_ref: str | None, journal: EventSink) -> EvidenceOutcome:
    """Upload the bundle already built for ``job_id`` (``longrun evidence push JOB``).

    The local bundle is verified against its manifest first; a bundle that does
    not match raises :class:`~longrun.errors.EvidenceMismatch` and nothing is
    uploaded. Raises :class:`~longrun.errors.EvidenceMissing` when there is no
    bundle and :class:`EvidenceStoreInvalid` when no store is configured.
    Upload failures are journaled and returned, as in :func:`finalize_evidence`.
    """
    root = Path(root)
    bundle = load_bundle(root, check_job_id(job_id))
    store_ref = store_ref or mirror.default_evidence_store(root)
    if store_ref is None:
        raise EvidenceStoreInvalid(f"job {job_id} has no evidence store: set evidence.store in its spec or pass --store")
    verify(bundle.manifest_path, bundle.tar_path).raise_for_mismatch()
    return _upload(root, bundle, store_ref, journal)


def _upload(root: Path, bundle: BundleResult, store_ref: str, journal: EventSink) -> EvidenceOutcome:
    tar_key, manifest_key = remote_keys(bundle.job_id)
    store_uri = store_ref
    try:
        store: EvidenceStore = resolve_store(store_ref, root)
        store_uri = store.uri_for(tar_key)
        uploaded = store.put(bundle.tar_path, tar_key, sha256=bundle.sha256)
        manifest_sha = sha256_file(bundle.manifest_path)
        manifest_uploaded = store.put(bundle.manifest_path, manifest_key, sha256=manifest_sha)
        signature = envelope_path(bundle.manifest_path)
        if signature.is_file():
            store.put(signature, manifest_key + ".dsse.json", sha256=sha256_file(signature))
    except LongrunError as exc:
        journal.append(
            "evidence_upload_failed",
            {"uri": store_uri, "error": str(exc), "retryable": exc.retryable, "sha256": bundle.sha256},
            job_id=bundle.job_id,
        )
        return EvidenceOutcome(bundle, "upload_failed", store_uri=store_uri, error=exc)
    journal.append(
        "evidence_uploaded",
        {"uri": uploaded.uri, "sha256": uploaded.sha256, "size": uploaded.size, "manifest_uri": manifest_uploaded.uri},
        job_id=bundle.job_id,
    )
    return EvidenceOutcome(bundle, "uploaded", store_uri=uploaded.uri, uploaded=uploaded, manifest_uploaded=manifest_uploaded)


def fetch_uploaded_bundle(root: Path, job_id: str, state: Any, *, endpoint_url: str | None = None) -> bool:
    """No bundle on this machine (it was built on another): download the one the journal says was uploaded.

    True when a bundle and its manifest are here now. Only ``s3://`` uploads are fetched.
    """
    from longrun.evidence.bundle import bundle_paths
    from longrun.storage import parse_s3_uri
    from longrun.storage.s3 import S3Store

    tar_path, manifest_path = bundle_paths(root, check_job_id(job_id))
    if manifest_path.is_file():
        return True
    uploaded = ((state.evidence or {}).get("uploaded")) or {}
    uri, manifest_uri = uploaded.get("uri"), uploaded.get("manifest_uri")
    if not (isinstance(uri, str) and isinstance(manifest_uri, str) and uri.startswith("s3://")):
        return False
    for src, dest in ((uri, tar_path), (manifest_uri, manifest_path)):
        bucket, key = parse_s3_uri(src)
        S3Store.from_uri(f"s3://{bucket}", endpoint_url=endpoint_url).get(key, dest)
    return True
