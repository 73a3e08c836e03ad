"""Where evidence bundles go: a small store protocol and its implementations.

* :class:`LocalDirStore` (``longrun.storage.local``) copies into a directory,
  atomically;
* :class:`S3Store` (``longrun.storage.s3``) uploads to S3-compatible storage
  (AWS S3, MinIO, Cloudflare R2, …) with boto3, retried by tenacity.

:func:`resolve_store` turns a spec's ``evidence.store`` into a store. Neither
boto3 nor Prefect is imported until a store needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from longrun.errors import EvidenceStoreError, EvidenceStoreInvalid, PathEscape
from longrun.storage.paths import MAESTRO, safe_join

if TYPE_CHECKING:
    from longrun.storage.local import LocalDirStore
    from longrun.storage.s3 import S3Store

__all__ = [
    "BLOCK_SLUGS",
    "EvidenceStore",
    "LocalDirStore",
    "S3Store",
    "StoredObject",
    "check_key",
    "check_store_ref",
    "parse_s3_uri",
    "resolve_store",
]

#: Block type slugs of longrun's evidence-store blocks (``longrun.blocks.evidence``).
#: They never change: spec files name blocks as ``<slug>/<block name>``.
S3_BLOCK_SLUG = "longrun-s3-evidence-store"
LOCAL_BLOCK_SLUG = "longrun-local-evidence-store"
BLOCK_SLUGS = frozenset({S3_BLOCK_SLUG, LOCAL_BLOCK_SLUG})


@dataclass(frozen=True)
class StoredObject:
    """An object a store holds: where, how big, and its sha256 (as verified after the put)."""

    uri: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, object]:
        return {"uri": self.uri, "size": self.size, "sha256": self.sha256}


@runtime_checkable
class EvidenceStore(Protocol):
    """What :mod:`longrun.evidence.publish` needs from a store. Keys are relative POSIX paths."""

    def put(self, local: Path, key: str, *, sha256: str) -> StoredObject:
        """Store the file ``local`` under ``key``; check it arrived with ``sha256``."""
        ...

    def get(self, key: str, dest: Path) -> Path:
        """Fetch ``key`` to ``dest`` (a file path, or a directory to put it in); return the file."""
        ...

    def uri_for(self, key: str) -> str:
        """The URI ``key`` has (or would have) in this store."""
        ...


def check_key(key: str) -> str:
    """A store key: relative, ``/``-separated, no ``..``, no empty parts."""
    p = PurePosixPath(key)
    if not key or p.is_absolute() or key.startswith("/") or "\\" in key:
        raise PathEscape(f"store key {key!r} must be a relative POSIX path")
    if any(part in ("..", ".", "") for part in key.split("/")):
        raise PathEscape(f"store key {key!r} has an empty, '.' or '..' part")
    return key


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key/parts`` → ``("bucket", "key/parts")`` (the key may be empty)."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise EvidenceStoreInvalid(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise EvidenceStoreInvalid(f"{uri!r} names no bucket")
    return bucket, key


def check_store_ref(spec_store: str | None, root: Path) -> None:
    """Refuse a malformed ``evidence.store`` before a run starts, without loading anything.

    Raises what :func:`resolve_store` would for the reference's form (an empty
    reference, an ``s3://`` URI without a bucket, a block reference without a
    name, a path that leaves ``root``); whether a named block exists is only
    known once Prefect is asked.
    """
    _parse_ref(spec_store, root)


def resolve_store(spec_store: str | None, root: Path) -> EvidenceStore:
    """The store a spec's ``evidence.store`` names.

    * ``None`` → ``LocalDirStore(<root>/.maestro/evidence)``: local only, the
      caller uploads nothing;
    * ``<block-type-slug>/<block-name>`` with one of :data:`BLOCK_SLUGS` → the
      saved Prefect block's ``store()`` (Prefect is imported only here);
    * ``s3://bucket/prefix`` → an :class:`S3Store` configured from the AWS
      environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, …);
    * anything else → a directory, relative to ``root`` (no escape).

    Raises :class:`EvidenceStoreInvalid` for a block that cannot be loaded and
    :class:`~longrun.errors.PathEscape` for a path that leaves ``root``.
    """
    kind, where = _parse_ref(spec_store, root)
    if kind == "s3":
        from longrun.storage import mirror
        from longrun.storage.s3 import S3Store

        remote = mirror.remote_for(root)
        if remote is not None and (where == remote.url or where.startswith(remote.url + "/")):
            # The job root's own store: its endpoint and credentials (a block's, too), as patient as its journal.
            return remote.store.with_prefix(parse_s3_uri(where)[1])
        return S3Store.from_uri(where)
    if kind == "block":
        return _load_block(*where.split("/", 1))
    from longrun.storage.local import LocalDirStore

    return LocalDirStore(Path(where))


def _parse_ref(spec_store: str | None, root: Path) -> tuple[str, str]:
    """``("local", directory)``, ``("s3", uri)`` or ``("block", "<slug>/<name>")``."""
    root = Path(root)
    if spec_store is None:
        return "local", str(root / MAESTRO / "evidence")
    ref = spec_store.strip()
    if not ref:
        raise EvidenceStoreInvalid("evidence.store is empty")
    if ref.startswith("s3://"):
        parse_s3_uri(ref)
        return "s3", ref
    slug, sep, name = ref.partition("/")
    if sep and slug in BLOCK_SLUGS:
        if not name or "/" in name:
            raise EvidenceStoreInvalid(f"'{slug}/{name}' is not '<block-type-slug>/<block-name>'")
        return "block", ref
    return "local", str(safe_join(root, ref, what="evidence.store"))


BlockLoader = Callable[[str, str], EvidenceStore]

#: Loads a saved evidence block (``<slug>``, ``<name>``) and returns its core
#: store. The Prefect adapter (``longrun.blocks.evidence``) installs it when it
#: is imported; the core never imports Prefect itself.
_block_loader: BlockLoader | None = None


def set_block_loader(loader: BlockLoader) -> None:
    global _block_loader
    _block_loader = loader


def _load_block(slug: str, name: str) -> EvidenceStore:
    if _block_loader is None:
        raise EvidenceStoreError(
            f"evidence store {slug}/{name} is a Prefect block, and the Prefect adapter (longrun.blocks.evidence) is not loaded"
        )
    return _block_loader(slug, name)


def __getattr__(name: str):  # lazy re-exports keep `import longrun.storage` light
    if name == "LocalDirStore":
        from longrun.storage.local import LocalDirStore

        return LocalDirStore
    if name == "S3Store":
        from longrun.storage.s3 import S3Store

        return S3Store
    raise AttributeError(name)
