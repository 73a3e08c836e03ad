"""Evidence in S3-compatible storage (AWS S3, MinIO, Cloudflare R2, …).

One retry layer per failure kind (house style): tenacity retries S3 calls
here, so botocore's own retries are switched off explicitly with
``retries={"total_max_attempts": 1, "mode": "standard"}`` and so are
s3transfer's download retries (``num_download_attempts=1``). Otherwise the
layers multiply: 5 tenacity attempts × botocore's default 3 would be 15
requests, and ``max_seconds`` would no longer bound the wait.

Note ``total_max_attempts``, not ``max_attempts``: in a botocore ``Config``
``max_attempts`` counts *retries* after the first request, so
``{"max_attempts": 1}`` still sends every failing request twice (a test
counts the requests that reach the server). ``total_max_attempts`` counts the
first request, so 1 means exactly one.

Every botocore/boto3/s3transfer exception is translated in ONE place,
:func:`map_s3_errors`, into :class:`~longrun.errors.EvidenceTransientError`
(5xx, throttling, timeouts, dropped connections: retried) or
:class:`~longrun.errors.EvidenceStoreError` (4xx such as NoSuchBucket or
AccessDenied, bad credentials: not retried), or
:class:`~longrun.errors.EvidenceMissing` (no such key). Nothing else in
longrun catches botocore types.

Integrity: botocore's default request checksums (validated by the server)
protect the bytes in transit; after an upload ``head_object`` must report the
local size and the ``sha256`` metadata that was sent, else the upload fails
with code ``evidence_upload_failed`` (not retried: a store that alters an
object will do it again; ``longrun evidence push`` tries again later).
End to end, ``longrun verify s3://…`` downloads and re-hashes everything.
"""

from __future__ import annotations

import copy
import logging
import os
import posixpath
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, Literal, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random,
)
from tenacity.wait import wait_base

from longrun import atomicio
from longrun.errors import EvidenceMissing, EvidenceStoreError, EvidenceTransientError, LongrunError
from longrun.storage import StoredObject, check_key, parse_s3_uri

__all__ = ["MB", "ObjectExists", "S3Store", "map_s3_errors", "parse_s3_uri"]

log = logging.getLogger(__name__)

MB = 1024 * 1024
T = TypeVar("T")

AddressingStyle = Literal["auto", "path", "virtual"]

#: S3 error codes worth retrying (besides any HTTP 5xx, 408 and 429).
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        # Two conditional writes of one key in flight at once (AWS answers 409): try again, one then wins.
        "ConditionalRequestConflict",
        "PriorRequestNotComplete",
    }
)
#: Codes that mean "no such object" (head_object answers a bare 404).
MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


# ------------------------------------------------------------------ errors


class ObjectExists(LongrunError):
    """A conditional write (``If-None-Match: *``) found the key taken: ``412 Precondition Failed``."""

    code = "store_object_exists"


@contextmanager
def map_s3_errors(what: str) -> Iterator[None]:
    """Translate botocore/boto3/s3transfer errors raised inside into longrun errors.

    The one place that knows botocore's exception types. ``what`` says what was
    being done (``upload s3://b/k``) and prefixes the message.
    """
    try:
        yield
    except LongrunError:
        raise
    except Exception as exc:
        mapped = _translate(exc, what)
        if mapped is None:
            raise
        raise mapped from exc


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes (boto3 wraps s3transfer failures without ``from``)."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out and len(out) < 8:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _translate(exc: Exception, what: str) -> LongrunError | None:
    from boto3.exceptions import Boto3Error
    from botocore import exceptions as bce

    chain = _chain(exc)
    known = [e for e in chain if isinstance(e, (bce.ClientError, bce.BotoCoreError, Boto3Error))]
    if not known:
        return None
    # The innermost botocore error says most; boto3's S3UploadFailedError only wraps it.
    root = next((e for e in known if isinstance(e, (bce.ClientError, bce.BotoCoreError))), known[0])
    message = f"{what}: {_describe(root)}"
    if isinstance(root, bce.ClientError) and _client_error_code(root) in MISSING_CODES:
        return EvidenceMissing(message)
    if isinstance(root, bce.ClientError) and _client_error_code(root) == "PreconditionFailed":
        return ObjectExists(message)
    if any(_transient(e, bce) for e in chain):
        return EvidenceTransientError(message)
    return EvidenceStoreError(message)


def _client_error_code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _describe(exc: BaseException) -> str:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        msg = exc.response.get("Error", {}).get("Message", "")
        return f"{_client_error_code(exc)} (HTTP {status})" + (f": {msg}" if msg else "")
    return f"{type(exc).__name__}: {exc}"


def _transient(exc: BaseException, bce: Any) -> bool:
    if isinstance(exc, bce.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or status in (408, 429) or _client_error_code(exc) in TRANSIENT_CODES
    if isinstance(exc, bce.SSLError):  # a certificate problem does not heal by retrying
        return False
    transient_types = (bce.ConnectionError, bce.HTTPClientError, bce.ResponseStreamingError, bce.IncompleteReadError)
    if isinstance(exc, transient_types):
        return True  # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError, …
    from boto3.exceptions import RetriesExceededError

    return isinstance(exc, RetriesExceededError)


# ------------------------------------------------------------------ store


def _default_wait() -> wait_base:
    """Exponential backoff from 0.2 s, capped at 5 s, with up to 0.2 s jitter."""
    return wait_exponential(multiplier=0.2, max=5.0) + wait_random(0, 0.2)


class S3Store:
    """An evidence store in one bucket, under an optional key prefix.

    ``max_attempts`` and ``max_seconds`` bound tenacity's retries of each call
    (upload, head, download), whichever is reached first; one attempt can
    itself take up to ``connect_timeout`` + ``read_timeout`` (5 s + 30 s).
    ``wait`` and ``sleep`` are injectable (tests pass fast ones).
    Credentials left ``None`` come from boto3's usual chain (environment,
    shared config, instance role).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region_name: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        addressing_style: AddressingStyle = "auto",
        max_attempts: int = 5,
        max_seconds: float = 120.0,
        multipart_threshold: int = 8 * MB,
        multipart_chunksize: int = 8 * MB,
        *,
        wait: wait_base | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not bucket:
            raise EvidenceStoreError("S3Store needs a bucket")
        if addressing_style not in ("auto", "path", "virtual"):
            raise EvidenceStoreError(f"addressing_style must be auto, path or virtual, not {addressing_style!r}")
        if max_attempts < 1 or max_seconds <= 0:
            raise EvidenceStoreError("max_attempts must be >= 1 and max_seconds > 0")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url or None
        self.region_name = region_name or None
        self._credentials = {
            "aws_access_key_id": access_key_id,
            "aws_secret_access_key": secret_access_key,
            "aws_session_token": session_token,
        }
        self.addressing_style = addressing_style
        self.max_attempts = max_attempts
        self.max_seconds = max_seconds
        self.multipart_threshold = multipart_threshold
        self.multipart_chunksize = multipart_chunksize
        self._wait = wait if wait is not None else _default_wait()
        self._sleep = sleep
        self._client: Any = None

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint_url={self.endpoint_url!r})"

    @classmethod
    def from_uri(cls, uri: str, *, endpoint_url: str | None = None, **kwargs: Any) -> S3Store:
        """``s3://bucket/prefix``; the endpoint defaults to ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``."""
        bucket, prefix = parse_s3_uri(uri)
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return cls(bucket, prefix, endpoint_url=endpoint, **kwargs)

    def with_prefix(self, prefix: str) -> S3Store:
        """The same bucket, endpoint, credentials and retries, under another key prefix."""
        other = copy.copy(self)
        other.prefix = prefix.strip("/")
        return other

    # -- boto3 ---------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The boto3 S3 client (created on first use; boto3 clients are thread-safe)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                # Exactly one request per call: tenacity is the retry layer (see the module docstring).
                retries={"total_max_attempts": 1, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
                s3={"addressing_style": self.addressing_style},
            )
            session = boto3.session.Session(**self._credentials, region_name=self.region_name)
            self._client = session.client("s3", endpoint_url=self.endpoint_url, config=config)
        return self._client

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.multipart_chunksize,
            max_concurrency=4,
            num_download_attempts=1,  # tenacity is the retry layer
        )

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning("%s: attempt %d failed (%s); retrying", what, state.attempt_number, exc)

        retrying = Retrying(
            retry=retry_if_exception_type(EvidenceTransientError),
            stop=stop_after_attempt(self.max_attempts) | stop_after_delay(self.max_seconds),
            wait=self._wait,
            sleep=self._sleep,
            before_sleep=log_retry,
            reraise=True,
        )
        return retrying(fn)

    # -- the store protocol -------------------------------------------------------------

    def key(self, key: str) -> str:
        """The full object key: ``<prefix>/<key>``."""
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.key(key)}"

    def put(self, local: Path, key: str, *, sha256: str) -> StoredObject:
        """Upload ``local`` (multipart above ``multipart_threshold``) with ``sha256`` metadata.

        Then ``head_object`` must report the same size and sha256, else
        :class:`EvidenceStoreError` with code ``evidence_upload_failed``.
        """
        local = Path(local)
        size = local.stat().st_size
        full, uri = self.key(key), self.uri_for(key)
        transfer = self._transfer_config()

        def upload() -> None:
            with map_s3_errors(f"upload {uri}"):
                self.client.upload_file(
                    str(local), self.bucket, full, ExtraArgs={"Metadata": {"sha256": sha256}}, Config=transfer
                )

        self._retry(f"upload {uri}", upload)
        try:
            head = self._retry(f"head {uri}", lambda: self._head(full, uri))
        except EvidenceMissing as exc:
            raise EvidenceStoreError(
                f"{uri} is missing right after its upload ({exc.message})", code="evidence_upload_failed"
            ) from exc
        got_size = head.get("ContentLength")
        got_sha = (head.get("Metadata") or {}).get("sha256")
        if got_size != size or got_sha != sha256:
            raise EvidenceStoreError(
                f"{uri}: the stored object does not match: size {got_size} (expected {size}), "
                f"sha256 metadata {got_sha!r} (expected {sha256!r})",
                code="evidence_upload_failed",
            )
        return StoredObject(uri, size, sha256)

    def _head(self, full: str, uri: str) -> dict[str, Any]:
        with map_s3_errors(f"head {uri}"):
            return self.client.head_object(Bucket=self.bucket, Key=full)

    def head(self, key: str) -> dict[str, Any]:
        """``head_object`` of ``key`` (retried); :class:`EvidenceMissing` when absent."""
        return self._retry(f"head {self.uri_for(key)}", lambda: self._head(self.key(key), self.uri_for(key)))

    def get(self, key: str, dest: Path) -> Path:
        """Download ``key`` to ``dest`` atomically (a directory gets the key's base name)."""
        full, uri = self.key(key), self.uri_for(key)
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / PurePosixPath(key).name
        transfer = self._transfer_config()

        def download() -> None:
            with map_s3_errors(f"download {uri}"), atomicio.atomic_writer(dest) as fh:
                self.client.download_fileobj(self.bucket, full, fh, Config=transfer)

        self._retry(f"download {uri}", download)
        return dest

    def sibling_key(self, key: str, name: str) -> str:
        """The key of ``name`` in the same "directory" as ``key``."""
        return posixpath.join(posixpath.dirname(key), name)

    # -- small objects: the job root's journal, claims and records (longrun.storage.mirror) ----------

    def put_bytes(self, key: str, body: bytes, *, if_absent: bool = False) -> bool:
        """Store ``body`` at ``key``; with ``if_absent`` a compare-and-set (``If-None-Match: *``).

        Returns True when the key now holds ``body``, False when ``if_absent``
        and it already holds *other* bytes. A write retried after its answer
        was lost finds its own bytes under the key (its 412 is its own first
        attempt): that is True, so a flaky network never turns a landed write
        into a lost race. (Two writers of identical bytes both get True; every
        compare-and-set in longrun writes bytes unique to its writer: a
        timestamp, a pid, a chain link.)
        """
        full, uri = self.key(key), self.uri_for(key)
        extra = {"IfNoneMatch": "*"} if if_absent else {}

        def put() -> bool:
            try:
                with map_s3_errors(f"put {uri}"):
                    self.client.put_object(Bucket=self.bucket, Key=full, Body=body, **extra)
            except ObjectExists:
                return False
            return True

        return self._retry(f"put {uri}", put) or self.get_bytes(key) == body

    def get_bytes(self, key: str) -> bytes | None:
        """The bytes at ``key``, or None when there is no such key."""
        full, uri = self.key(key), self.uri_for(key)

        def get() -> bytes | None:
            try:
                with map_s3_errors(f"get {uri}"):
                    return bytes(self.client.get_object(Bucket=self.bucket, Key=full)["Body"].read())
            except EvidenceMissing:
                return None

        return self._retry(f"get {uri}", get)

    def _list_pages(
        self, full_prefix: str, *, delimiter: str | None = None, start_after: str | None = None, max_keys: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """``ListObjectsV2`` responses for ``full_prefix``, page by page, each retried."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full_prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if start_after:
            kwargs["StartAfter"] = start_after
        if max_keys:
            kwargs["MaxKeys"] = max_keys
        what = f"list s3://{self.bucket}/{full_prefix}"

        def page() -> dict[str, Any]:
            with map_s3_errors(what):
                return dict(self.client.list_objects_v2(**kwargs))

        while True:
            resp = self._retry(what, page)
            yield resp
            if not resp.get("IsTruncated") or not resp.get("NextContinuationToken"):
                return
            kwargs["ContinuationToken"] = resp["NextContinuationToken"]

    def list_keys(self, prefix: str, *, start_after: str | None = None, limit: int | None = None) -> list[str]:
        """Keys under ``prefix`` (relative to the store's prefix), in order; after ``start_after`` when given."""
        base = f"{self.prefix}/" if self.prefix else ""
        out: list[str] = []
        after = base + start_after if start_after else None
        for resp in self._list_pages(base + prefix, start_after=after, max_keys=min(1000, limit) if limit else None):
            out.extend(obj["Key"][len(base) :] for obj in resp.get("Contents", []))
            if limit is not None and len(out) >= limit:
                return out[:limit]
        return out

    def list_dirs(self, prefix: str) -> list[str]:
        """The names one level below ``prefix`` (``prefix`` ends with ``/``): S3's common prefixes."""
        full_prefix = (f"{self.prefix}/" if self.prefix else "") + prefix
        return [
            p["Prefix"][len(full_prefix) :].rstrip("/")
            for resp in self._list_pages(full_prefix, delimiter="/")
            for p in resp.get("CommonPrefixes", [])
        ]

    def delete_keys(self, keys: list[str]) -> None:
        """Delete ``keys`` (relative), 1000 per request; absent keys are fine."""
        for i in range(0, len(keys), 1000):
            batch = {"Objects": [{"Key": self.key(k)} for k in keys[i : i + 1000]], "Quiet": True}

            def delete(b: dict[str, Any] = batch) -> None:
                with map_s3_errors(f"delete in s3://{self.bucket}/{self.prefix}"):
                    self.client.delete_objects(Bucket=self.bucket, Delete=b)

            self._retry(f"delete in s3://{self.bucket}/{self.prefix}", delete)
