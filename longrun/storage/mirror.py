"""A job root on S3-compatible storage, and its mirror on the machine that uses it.

``--root s3://BUCKET/PREFIX`` (or ``LONGRUN_ROOT``) names a job root that any
machine can reach; so does a saved S3 block, ``longrun-s3-evidence-store/<name>``
(its bucket, prefix, endpoint and credentials). The store is the truth; each machine works on a *mirror*,
a local directory under ``$LONGRUN_WORKDIR`` (default ``~/.cache/longrun/roots``)
laid out like any local root, whose ``.maestro/remote.json`` names the URL.
Everything else in longrun is given the mirror's path, as for a local root,
and the layer below decides what the store holds:

* write-once files (a job's ``spec.json``, a run's ``run.json``, run claims)
  are created in the store first, with a conditional write (``If-None-Match:
  *``), and only then on disk: of two machines exactly one creates a claim,
  and both end up with the same bytes (:func:`create_once`, :func:`write_once`);
* checkpoint records and files are written to disk and then put in the store
  before the write returns (:func:`push`), so a record the journal names is
  in the store by the time the journal names it;
* the journal is one object per event with a compare-and-set on its seq
  (:mod:`longrun.journal.remote`); the mirror's ``events.jsonl`` holds only
  events already in the store, so it is always a prefix of the store's journal;
* reads fetch what the mirror lacks (:func:`fetch`, :func:`pull_tree`).

Objects keep the mirror's layout below the prefix: ``jobs/<id>/spec.json``,
``jobs/<job>/runs/<runId>``, ``jobs/<id>/events/<seq>.json``,
``checkpoints/<id>/<iter>/patch.diff``, ``evidence/<id>.tar.gz``, …

A local root has no ``remote.json`` and behaves exactly as before: every
function here then falls through to :mod:`longrun.atomicio` or does nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from longrun import atomicio
from longrun.errors import LongrunError, SpecImmutable
from longrun.storage import S3_BLOCK_SLUG, parse_s3_uri
from longrun.storage.paths import MAESTRO, read_nofollow

if TYPE_CHECKING:
    from longrun.storage.s3 import S3Store

__all__ = [
    "MARKER",
    "Remote",
    "create_once",
    "fetch",
    "is_remote_ref",
    "locate",
    "open_root",
    "pull_tree",
    "push",
    "remote_for",
    "roots_dir",
    "write_once",
]

#: Names the store a mirror belongs to: ``.maestro/remote.json`` (``{"url": "s3://…"}``).
MARKER = "remote.json"
#: What stays on the machine under ``.maestro/``: Prefect's cache metadata, stages' HOMEs, worktrees and
#: workspaces (a workspace travels as its repo plus the checkpointed patches), local bundles (they
#: travel through the evidence store).
LOCAL_ONLY = frozenset({"results", "home", "worktrees", "workspaces", "evidence", MARKER})


def is_remote_ref(ref: str | os.PathLike[str] | None) -> bool:
    """An ``s3://`` URL, or a saved S3 block (``longrun-s3-evidence-store/<name>``)."""
    return isinstance(ref, str) and (ref.startswith("s3://") or is_block_ref(ref))


def is_block_ref(ref: str | os.PathLike[str] | None) -> bool:
    return isinstance(ref, str) and ref.startswith(S3_BLOCK_SLUG + "/")


def _block_store(ref: str) -> S3Store:
    """The S3 store a saved block describes (its bucket, prefix, endpoint and credentials)."""
    from longrun.storage import _load_block
    from longrun.storage.s3 import S3Store

    slug, _, name = ref.partition("/")
    try:
        store = _load_block(slug, name)
    except LongrunError as exc:
        raise LongrunError(f"job root {ref}: {exc.message}", code="root_invalid") from None
    if not isinstance(store, S3Store):
        raise LongrunError(f"job root {ref} is not an S3 block", code="root_invalid")
    store.max_attempts = max(store.max_attempts, STORE_ATTEMPTS)
    return store


def roots_dir() -> Path:
    """Where mirrors of remote roots live: ``$LONGRUN_WORKDIR``, else ``$XDG_CACHE_HOME/longrun/roots``."""
    if base := os.environ.get("LONGRUN_WORKDIR"):
        return Path(base).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser().resolve() / "longrun" / "roots"


def normalize_url(ref: str) -> str:
    """``s3://bucket/a/b/`` → ``s3://bucket/a/b``; refuses ``..``, empty parts and control characters."""
    bucket, prefix = parse_s3_uri(ref)
    prefix = prefix.strip("/")
    parts = prefix.split("/") if prefix else []
    if any(p in ("", ".", "..") for p in parts) or any(ord(c) < 32 for c in ref):
        raise LongrunError(
            f"{ref!r} is not a job root URL (s3://BUCKET/PREFIX, no empty, '.' or '..' parts)", code="root_invalid"
        )
    return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"


@dataclass(frozen=True)
class Remote:
    """A root's store: the URL and the S3 client (boto3's standard configuration)."""

    url: str
    store: S3Store


_lock = threading.Lock()
#: resolved root path → its Remote, or None for a local root. A marker is written once, so this never goes stale.
_remotes: dict[str, Remote | None] = {}
#: Files this process put in the store: path → (mtime_ns, size) when it did (a file changed since goes again).
_pushed: dict[str, tuple[int, int]] = {}


#: Attempts per store request (tenacity, exponential backoff): the journal of a running job rides on them.
STORE_ATTEMPTS = 10


def _store_for(url: str) -> S3Store:
    from longrun.storage.s3 import S3Store

    return S3Store.from_uri(url, max_attempts=STORE_ATTEMPTS)


def open_root(ref: str | os.PathLike[str]) -> Path:
    """The local path to work on for job root ``ref``: a directory as given, or the mirror of an ``s3://`` URL.

    The store is reached once here (one ``ListObjectsV2``), so a wrong bucket
    or missing credentials fail now with ``root_unreachable``, not mid-run.
    """
    if not is_remote_ref(ref):
        return Path(ref).resolve()
    block = str(ref) if is_block_ref(ref) else None
    store = _block_store(block) if block else None
    url = normalize_url(f"s3://{store.bucket}/{store.prefix}" if store else str(ref))
    bucket, _ = parse_s3_uri(url)
    local = roots_dir() / f"{bucket}-{hashlib.sha256((block or url).encode()).hexdigest()[:12]}"
    marker = local / MAESTRO / MARKER
    if store is not None:
        with _lock:
            _remotes[str(local)] = Remote(url, store)
    try:
        atomicio.write_once(marker, json.dumps({"url": url, "block": block} if block else {"url": url}, sort_keys=True) + "\n")
    except SpecImmutable:
        raise LongrunError(f"{local} mirrors another store than {url}; remove it", code="root_invalid") from None
    except OSError as exc:
        raise LongrunError(f"cannot create the local mirror {local} of {url}: {exc}", code="root_invalid") from None
    remote = remote_for(local)
    assert remote is not None
    try:
        remote.store.list_keys("jobs/", limit=1)
    except LongrunError as exc:
        raise LongrunError(f"job root {url} cannot be reached: {exc.message}", code="root_unreachable") from None
    return local


def remote_for(root: Path) -> Remote | None:
    """The store a root mirrors, or None for a local root (read from its marker once per process)."""
    key = str(root)
    with _lock:
        if key in _remotes:
            return _remotes[key]
    try:
        data = json.loads((Path(root) / MAESTRO / MARKER).read_text(encoding="utf-8"))
        url = normalize_url(str(data["url"]))
        block = data.get("block")
        remote: Remote | None = Remote(url, _block_store(block) if isinstance(block, str) else _store_for(url))
    except FileNotFoundError:
        remote = None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LongrunError(f"{root}/{MAESTRO}/{MARKER} is damaged ({exc}); remove the mirror", code="root_invalid") from None
    with _lock:
        _remotes[key] = remote
    return remote


def locate(path: Path) -> tuple[Remote, str] | None:
    """``(remote, key)`` for a path inside a mirror's ``.maestro/``; None on a local root (or outside ``.maestro``)."""
    path = Path(path)
    for i, parent in enumerate(path.parents):
        if parent.name == MAESTRO:
            rel = PurePosixPath(*path.parts[len(path.parts) - i - 1 :])
            if not rel.parts or rel.parts[0] in LOCAL_ONLY:
                return None
            remote = remote_for(parent.parent)
            if remote is None:
                return None
            return remote, rel.as_posix()
    return None


def locate_dir(directory: Path) -> tuple[Remote, str] | None:
    """``(remote, key prefix ending in /)`` for a directory inside a mirror's ``.maestro/``; None on a local root."""
    loc = locate(Path(directory) / "_")
    return (loc[0], loc[1][: -len("_")]) if loc is not None else None


def remote_error(exc: LongrunError, what: str) -> LongrunError:
    """A store failure while doing ``what``: ``store_unavailable`` (retries ran out) or ``store_error``."""
    code = "store_unavailable" if exc.retryable else "store_error"
    return LongrunError(f"{what}: {exc.message}; nothing was lost, try again", code=code, retryable=exc.retryable)


def _put_once(remote: Remote, key: str, data: bytes | str) -> tuple[bool, bytes | None]:
    """A conditional write of ``key``: (created, the bytes the key holds now; None if it vanished meanwhile)."""
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    try:
        created = remote.store.put_bytes(key, payload, if_absent=True)
        return created, payload if created else remote.store.get_bytes(key)
    except LongrunError as exc:
        raise remote_error(exc, f"write {remote.url}/{key}") from None


def create_once(path: Path, data: bytes | str) -> bool:
    """:func:`longrun.atomicio.create_once`, through the store on a mirror: True if this call created it anywhere."""
    loc = locate(path)
    if loc is None:
        return atomicio.create_once(path, data)
    remote, key = loc
    created, held = _put_once(remote, key, data)
    if held is None:  # deleted between the refused write and the read: treat as taken
        return False
    atomicio.create_once(path, held)
    return created


def write_once(path: Path, data: bytes | str) -> bool:
    """:func:`longrun.atomicio.write_once`, through the store on a mirror (``job_spec_immutable`` for other bytes).

    When the store holds other bytes they are copied into the mirror first, so
    a caller that then reads the file sees what the store holds.
    """
    loc = locate(path)
    if loc is None:
        return atomicio.write_once(path, data)
    remote, key = loc
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    created, held = _put_once(remote, key, payload)
    if held is None:
        raise LongrunError(f"{remote.url}/{key} vanished while it was written", code="store_error")
    if held != payload:
        atomicio.create_once(path, held)
        raise SpecImmutable(f"{remote.url}/{key} already exists with different content; it is write-once")
    atomicio.write_once(path, payload)
    return created


def fetch(path: Path) -> bool:
    """Make a write-once file of a mirror present (downloaded if absent); True if it exists now."""
    path = Path(path)
    if path.exists():
        return True
    loc = locate(path)
    if loc is None:
        return False
    remote, key = loc
    try:
        body = remote.store.get_bytes(key)
    except LongrunError as exc:
        raise remote_error(exc, f"read {remote.url}/{key}") from None
    if body is None:
        return False
    atomicio.create_once(path, body)
    return True


def push(path: Path) -> None:
    """Put a mirror file in the store (overwriting: records are rewritten whole). No-op on a local root."""
    loc = locate(path)
    if loc is None:
        return
    remote, key = loc
    st = Path(path).stat()
    data = read_nofollow(Path(path))  # a symlink planted in a checkpoint directory is refused, never followed
    try:
        remote.store.put_bytes(key, data)
    except LongrunError as exc:
        raise remote_error(exc, f"upload {remote.url}/{key}") from None
    _pushed[str(path)] = (st.st_mtime_ns, st.st_size)


def pull_tree(directory: Path) -> int:
    """Download every object under a mirror directory that the mirror lacks; returns how many. No-op locally."""
    loc = locate_dir(directory)
    if loc is None:
        return 0
    remote, prefix = loc
    base = Path(directory)
    try:
        keys = remote.store.list_keys(prefix)
    except LongrunError as exc:
        raise remote_error(exc, f"list {remote.url}/{prefix}") from None
    got = 0
    for k in keys:
        rel = k[len(prefix) :]
        if not rel or any(p in ("", ".", "..") for p in rel.split("/")):
            continue
        target = base / rel
        if not target.exists() and fetch(target):
            got += 1
    return got


def list_names(directory: Path) -> list[str] | None:
    """The names one level below a mirror directory in the store; None on a local root."""
    loc = locate_dir(directory)
    if loc is None:
        return None
    remote, prefix = loc
    try:
        return remote.store.list_dirs(prefix)
    except LongrunError as exc:
        raise remote_error(exc, f"list {remote.url}/{prefix}") from None


def list_files(directory: Path) -> list[str] | None:
    """The object names directly in a mirror directory in the store; None on a local root."""
    loc = locate_dir(directory)
    if loc is None:
        return None
    remote, prefix = loc
    try:
        return [k[len(prefix) :] for k in remote.store.list_keys(prefix) if "/" not in k[len(prefix) :]]
    except LongrunError as exc:
        raise remote_error(exc, f"list {remote.url}/{prefix}") from None


#: How long a lease in the store holds when its holder never releases it (a crashed start).
LEASE_S = 180.0


class Lease:
    """A mutex in the store, made of compare-and-set writes: no lock server.

    ``<dir>/<seq>.json`` objects, each an ``acquire`` or a ``release``; the
    latest one says who holds the lease. Acquiring writes the next seq with
    ``If-None-Match: *``, so of two machines that saw the lease free exactly
    one gets it; the other sees the winner's ``acquire`` and waits. A holder
    that dies without releasing frees it after :data:`LEASE_S` (its
    ``expires``, by the holder's clock).
    """

    def __init__(self, directory: Path, holder: str, *, sleep: float = 0.2) -> None:
        loc = locate_dir(directory)
        if loc is None:
            raise ValueError(f"{directory} is not in a mirror of a remote root")
        self.remote, self.prefix = loc
        self.holder = holder
        self.sleep = sleep
        self.seq: int | None = None
        self._last: tuple[int, dict[str, object] | None] = (0, None)

    def _key(self, seq: int) -> str:
        return f"{self.prefix}{seq:012d}.json"

    def _latest(self) -> tuple[int, dict[str, object] | None]:
        seq, doc = self._last
        keys = self.remote.store.list_keys(self.prefix, start_after=self._key(seq) if seq else None)
        numbers = [int(k[len(self.prefix) : -5]) for k in keys if k.endswith(".json") and k[len(self.prefix) : -5].isdigit()]
        if numbers and max(numbers) > seq:
            seq = max(numbers)
            body = self.remote.store.get_bytes(self._key(seq))
            try:
                doc = json.loads(body) if body else None
            except ValueError:
                doc = None
            self._last = (seq, doc)
        return self._last

    def acquire(self, wait_s: float) -> None:
        """Hold the lease, waiting up to ``wait_s`` for its holder; ``job_already_running`` after that."""
        deadline = time.monotonic() + wait_s
        try:
            while True:
                seq, doc = self._latest()
                now = time.time()
                expires = doc.get("expires") if doc else None
                if doc is None or doc.get("op") != "acquire" or not isinstance(expires, int | float) or expires < now:
                    body = {"op": "acquire", "holder": self.holder, "host": socket.gethostname(), "pid": os.getpid()}
                    body |= {"at": now, "expires": now + LEASE_S}
                    if self.remote.store.put_bytes(self._key(seq + 1), json.dumps(body).encode(), if_absent=True):
                        self.seq = seq + 1
                        self._last = (seq + 1, body)
                        return
                    continue
                if time.monotonic() >= deadline:
                    raise LongrunError(
                        f"another start ({doc.get('host')}, pid {doc.get('pid')}) holds {self.remote.url}/{self.prefix} "
                        f"for {wait_s:g}s",
                        code="job_already_running",
                    )
                time.sleep(self.sleep)
        except LongrunError as exc:
            if exc.code == "job_already_running":
                raise
            raise remote_error(exc, f"take the start lease {self.remote.url}/{self.prefix}") from None

    def release(self) -> None:
        """Let go (idempotent). A release that fails leaves the lease to expire."""
        if self.seq is None:
            return
        seq, self.seq = self.seq, None
        body = {"op": "release", "holder": self.holder}
        try:
            self.remote.store.put_bytes(self._key(seq + 1), json.dumps(body).encode(), if_absent=True)
        except LongrunError:
            pass


def default_evidence_store(root: Path) -> str | None:
    """Where a remote root's bundles go when the spec names no ``evidence.store``: ``<url>/evidence``."""
    remote = remote_for(Path(root))
    return f"{remote.url}/evidence" if remote is not None else None


def remove_tree(directory: Path) -> None:
    """Delete the store's objects under a mirror directory (no-op on a local root)."""
    loc = locate_dir(directory)
    if loc is None:
        return
    remote, prefix = loc
    try:
        remote.store.delete_keys(remote.store.list_keys(prefix))
    except LongrunError as exc:
        raise remote_error(exc, f"delete {remote.url}/{prefix}") from None


def push_tree(directory: Path, *, skip: Path | None = None) -> int:
    """Put every regular file under a mirror directory that changed since this process last put it; how many.

    Symlinks are not followed (a stage cannot smuggle a file from elsewhere into the store). No-op locally.
    """
    directory = Path(directory)
    if locate_dir(directory) is None or not directory.is_dir():
        return 0
    sent = 0
    for path in sorted(directory.rglob("*")):
        if path == skip or path.is_symlink() or not path.is_file():
            continue
        st = path.stat()
        if _pushed.get(str(path)) == (st.st_mtime_ns, st.st_size):
            continue  # put by this process already (by push_tree or push), unchanged since
        push(path)
        sent += 1
    return sent
