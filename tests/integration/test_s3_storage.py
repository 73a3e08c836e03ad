"""S3 evidence storage against a real S3 API: moto in server mode, as a subprocess.

Faults are injected by a real HTTP proxy (threads, sockets; ``tests/s3_faults.py``) between boto3 and
moto that can answer 503/500, drop the connection or alter a response for
chosen requests. An independent client (s3cmd, a separate program) downloads
what longrun uploaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError
from conftest import free_port, longrun_cli
from evidence_helpers import make_job, members, reg, write_tar
from s3_faults import KEY, REGION, SECRET, FaultProxy, s3_client, s3_env
from tenacity import wait_fixed, wait_none

from longrun.errors import EvidenceMissing, EvidenceStoreError, EvidenceStoreInvalid, EvidenceTransientError
from longrun.evidence.bundle import build_bundle
from longrun.evidence.publish import finalize_evidence
from longrun.evidence.verify import verify
from longrun.journal.local import Journal
from longrun.storage import parse_s3_uri, resolve_store
from longrun.storage.s3 import MB, S3Store, map_s3_errors

# ------------------------------------------------------------------ moto server


@pytest.fixture
def bucket(moto_server) -> str:
    name = f"ev-{uuid.uuid4().hex[:12]}"
    s3_client(moto_server).create_bucket(Bucket=name)
    return name


def store_for(endpoint: str, bucket: str, **kw) -> S3Store:
    kw.setdefault("wait", wait_none())
    return S3Store(
        bucket,
        kw.pop("prefix", "longrun"),
        endpoint_url=endpoint,
        region_name=REGION,
        access_key_id=KEY,
        secret_access_key=SECRET,
        addressing_style="path",
        **kw,
    )


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ fault proxy (tests/s3_faults.py)


@pytest.fixture
def proxy(moto_server):
    p = FaultProxy(moto_server)
    yield p
    p.close()


def dead_endpoint() -> str:
    """A port nothing listens on (connection refused)."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def blob(tmp_path) -> tuple[Path, str]:
    path = tmp_path / "bundle.tar.gz"
    path.write_bytes(os.urandom(256 * 1024))
    return path, sha(path.read_bytes())


def fetch(endpoint: str, bucket: str, key: str) -> bytes:
    return s3_client(endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()


# ------------------------------------------------------------------ the store, direct


def test_put_get_roundtrip_with_metadata(moto_server, bucket, blob, tmp_path):
    path, digest = blob
    store = store_for(moto_server, bucket)
    obj = store.put(path, "abc/abc.tar.gz", sha256=digest)
    assert obj.uri == f"s3://{bucket}/longrun/abc/abc.tar.gz" and obj.size == path.stat().st_size and obj.sha256 == digest
    head = s3_client(moto_server).head_object(Bucket=bucket, Key="longrun/abc/abc.tar.gz")
    assert head["Metadata"] == {"sha256": digest} and head["ContentLength"] == obj.size
    got = store.get("abc/abc.tar.gz", tmp_path / "down")
    assert sha(got.read_bytes()) == digest
    with pytest.raises(EvidenceMissing):
        store.get("abc/nope.tar.gz", tmp_path / "nope")


def test_multipart_upload_for_large_bundles(moto_server, bucket, tmp_path):
    path = tmp_path / "big.tar.gz"
    path.write_bytes(os.urandom(11 * MB))
    store = store_for(moto_server, bucket, multipart_threshold=5 * MB, multipart_chunksize=5 * MB)
    store.put(path, "big/big.tar.gz", sha256=sha(path.read_bytes()))
    head = s3_client(moto_server).head_object(Bucket=bucket, Key="longrun/big/big.tar.gz")
    assert head["ETag"].strip('"').endswith("-3")  # three parts
    assert sha(fetch(moto_server, bucket, "longrun/big/big.tar.gz")) == sha(path.read_bytes())


# ------------------------------------------------------------------ retries through the fault proxy


def test_503_then_success_arrives_intact(proxy, moto_server, bucket, blob):
    path, digest = blob
    proxy.inject("503", times=2, when=lambda m, p: m == "PUT")
    store_for(proxy.url, bucket, max_attempts=5).put(path, "j/j.tar.gz", sha256=digest)
    assert [a for _, _, a in proxy.requests("PUT")] == ["503", "503", "forward"]
    assert sha(fetch(moto_server, bucket, "longrun/j/j.tar.gz")) == digest


def test_dropped_connection_and_500_are_retried(proxy, moto_server, bucket, blob):
    path, digest = blob
    proxy.inject("drop", times=1, when=lambda m, p: m == "PUT")
    proxy.inject("500", times=1, when=lambda m, p: m == "PUT")
    proxy.inject("drop", times=1, when=lambda m, p: m == "HEAD")
    store_for(proxy.url, bucket).put(path, "j/j.tar.gz", sha256=digest)
    assert [a for _, _, a in proxy.requests("PUT")] == ["drop", "500", "forward"]
    assert [a for _, _, a in proxy.requests("HEAD")] == ["drop", "forward"]
    assert sha(fetch(moto_server, bucket, "longrun/j/j.tar.gz")) == digest


def test_failed_part_of_a_multipart_upload_is_retried(proxy, moto_server, bucket, tmp_path):
    path = tmp_path / "big.tar.gz"
    path.write_bytes(os.urandom(11 * MB))
    proxy.inject("503", times=1, when=lambda m, p: m == "PUT" and "partNumber=2" in p)
    store = store_for(proxy.url, bucket, multipart_threshold=5 * MB, multipart_chunksize=5 * MB)
    store.put(path, "big/big.tar.gz", sha256=sha(path.read_bytes()))
    assert ("PUT", next(p for _, p, a in proxy.requests("PUT") if a == "503"), "503") in proxy.requests("PUT")
    assert sha(fetch(moto_server, bucket, "longrun/big/big.tar.gz")) == sha(path.read_bytes())


def test_attempts_are_bounded_and_botocore_does_not_retry_on_its_own(proxy, bucket, blob):
    path, digest = blob
    proxy.inject("503", times=100)
    with pytest.raises(EvidenceTransientError) as info:
        store_for(proxy.url, bucket, max_attempts=3).put(path, "j/j.tar.gz", sha256=digest)
    assert info.value.code == "evidence_upload_failed" and info.value.retryable
    assert "SlowDown" in info.value.message
    assert len(proxy.requests()) == 3  # 3 tenacity attempts x 1 botocore attempt


def test_attempts_are_bounded_by_time(proxy, bucket, blob):
    path, digest = blob
    proxy.inject("503", times=100)
    start = time.monotonic()
    with pytest.raises(EvidenceTransientError):
        store_for(proxy.url, bucket, max_attempts=100, max_seconds=1.0, wait=wait_fixed(0.25)).put(
            path, "j/j.tar.gz", sha256=digest
        )
    # stop_after_delay ends it long before 100 attempts (each waits 0.25 s: at most ~5 fit in 1 s).
    assert time.monotonic() - start < 10
    assert 1 <= len(proxy.requests()) <= 6


def test_terminal_errors_are_not_retried(proxy, blob):
    path, digest = blob
    with pytest.raises(EvidenceStoreError) as info:
        store_for(proxy.url, "no-such-bucket-here", max_attempts=5).put(path, "j/j.tar.gz", sha256=digest)
    assert type(info.value) is EvidenceStoreError and info.value.code == "evidence_store_error"
    assert not info.value.retryable and "NoSuchBucket" in info.value.message
    assert len(proxy.requests("PUT")) == 1


def test_stored_object_that_does_not_match_fails_the_upload(proxy, bucket, blob):
    path, digest = blob
    proxy.inject("tamper_meta", times=1, when=lambda m, p: m == "HEAD")
    with pytest.raises(EvidenceStoreError) as info:
        store_for(proxy.url, bucket).put(path, "j/j.tar.gz", sha256=digest)
    assert info.value.code == "evidence_upload_failed" and not info.value.retryable
    assert "sha256 metadata" in info.value.message


def test_map_s3_errors_classifies_real_botocore_errors():
    def raised(exc: BaseException) -> BaseException:
        try:
            with map_s3_errors("upload s3://b/k"):
                raise exc
        except BaseException as out:
            return out
        raise AssertionError("nothing raised")

    def client_error(code: str, status: int) -> ClientError:
        return ClientError(
            {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
        )

    for exc in (
        client_error("SlowDown", 503),
        client_error("InternalError", 500),
        client_error("RequestTimeout", 400),
        client_error("ThrottlingException", 400),
        EndpointConnectionError(endpoint_url="http://x"),
        ConnectionClosedError(endpoint_url="http://x"),
        ReadTimeoutError(endpoint_url="http://x"),
    ):
        assert type(raised(exc)) is EvidenceTransientError, exc
    for exc in (client_error("NoSuchBucket", 404), client_error("AccessDenied", 403), client_error("InvalidAccessKeyId", 403)):
        out = raised(exc)
        assert type(out) is EvidenceStoreError and out.code == "evidence_store_error", exc
    assert type(raised(client_error("NoSuchKey", 404))) is EvidenceMissing
    # boto3 wraps s3transfer failures: the wrapped cause decides.
    try:
        try:
            raise client_error("SlowDown", 503)
        except ClientError as inner:
            raise S3UploadFailedError(f"Failed to upload: {inner}")  # noqa: B904 - the implicit __context__ is what is tested
    except S3UploadFailedError as wrapped:
        assert type(raised(wrapped)) is EvidenceTransientError
    assert type(raised(ValueError("not ours"))) is ValueError


def test_parse_s3_uri():
    assert parse_s3_uri("s3://bucket/a/b/c.json") == ("bucket", "a/b/c.json")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    for bad in ("http://x/y", "s3:///key"):
        with pytest.raises(EvidenceStoreInvalid):
            parse_s3_uri(bad)


# ------------------------------------------------------------------ the job's evidence, end to end


def test_dead_endpoint_keeps_the_bundle_then_push_succeeds(tmp_path, moto_server, bucket):
    paths = make_job(tmp_path)
    root, job = paths.root, paths.job_id
    store = f"s3://{bucket}/team/evidence"

    r = longrun_cli("evidence", job, "--push", "--store", store, "--root", str(root), cwd=root, env=s3_env(dead_endpoint()))
    assert r.returncode == 7, r.stdout + r.stderr
    assert "evidence_upload_failed" in r.stderr and f"longrun evidence push {job}" in r.stderr
    tar_path = paths.evidence_dir / f"{job}.tar.gz"
    manifest_path = paths.evidence_dir / f"{job}.manifest.json"
    assert tar_path.is_file() and manifest_path.is_file() and verify(manifest_path).ok
    events = Journal(paths.events_file).read()
    assert [e.type for e in events[-2:]] == ["evidence_built", "evidence_upload_failed"]
    failed = events[-1].payload
    assert failed.retryable is True and failed.uri == f"{store}/{job}/{job}.tar.gz"
    state = Journal(paths.events_file).state()
    assert state.status == "COMPLETED" and state.evidence["upload_failed"] is not None

    r = longrun_cli("evidence", "push", job, "--store", store, "--root", str(root), "--json", cwd=root, env=s3_env(moto_server))
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "uploaded" and out["uploaded"]["uri"] == f"{store}/{job}/{job}.tar.gz"
    state = Journal(paths.events_file).state()
    assert state.evidence["uploaded"]["sha256"] == state.evidence["built"]["sha256"]
    assert state.evidence["upload_failed"] is None and state.status == "COMPLETED"

    # An independent client (s3cmd) fetches the bundle: its sha256 is the manifest's.
    s3cmd = shutil.which("s3cmd")
    assert s3cmd, "s3cmd is in the dev extra"
    host = moto_server.removeprefix("http://")
    down = tmp_path / "fetched.tar.gz"
    r = subprocess.run(
        [
            s3cmd,
            "-c",
            os.devnull,
            f"--host={host}",
            f"--host-bucket={host}",
            "--no-ssl",
            f"--access_key={KEY}",
            f"--secret_key={SECRET}",
            "get",
            f"{store}/{job}/{job}.tar.gz",
            str(down),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    manifest = json.loads(manifest_path.read_text())
    assert sha(down.read_bytes()) == manifest["predicate"]["bundle"]["sha256"]


def test_verify_s3_end_to_end(tmp_path, moto_server, bucket):
    paths = make_job(tmp_path)
    root, job = paths.root, paths.job_id
    store = store_for(moto_server, bucket, prefix="p")
    outcome = finalize_evidence(root, job, None, Journal(paths.events_file))
    store.put(outcome.bundle.tar_path, f"{job}/{job}.tar.gz", sha256=outcome.bundle.sha256)
    store.put(outcome.bundle.manifest_path, f"{job}/{job}.manifest.json", sha256=sha(outcome.bundle.manifest_path.read_bytes()))
    uri = f"s3://{bucket}/p/{job}/{job}.manifest.json"
    env = s3_env(dead_endpoint())  # --endpoint-url wins over the environment

    r = longrun_cli("verify", uri, "--endpoint-url", moto_server, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith(f"OK  {uri}")

    # Replace one member remotely (a rebuilt tar): verify names it.
    forged = tmp_path / "forged.tar.gz"
    entries = [
        reg(n, d if n != "spec.json" else d.replace(b"fix-failing-test", b"fix-failing-tesT"))
        for n, (_, d) in members(outcome.bundle.tar_path).items()
    ]
    write_tar(forged, entries)
    s3_client(moto_server).put_object(Bucket=bucket, Key=f"p/{job}/{job}.tar.gz", Body=forged.read_bytes())
    r = longrun_cli("verify", uri, "--json", cwd=tmp_path, env=s3_env(moto_server))
    assert r.returncode == 1, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] is False
    assert {m["name"] for m in doc["mismatches"]} == {f"{job}.tar.gz", "spec.json"}
    r = longrun_cli("verify", uri, cwd=tmp_path, env=s3_env(moto_server))
    assert "MISMATCH spec.json: sha256 differs in the bundle" in r.stdout

    r = longrun_cli("verify", f"s3://{bucket}/p/nope/nope.manifest.json", cwd=tmp_path, env=s3_env(moto_server))
    assert r.returncode == 2 and "evidence_missing" in r.stderr


def test_s3_uri_store_ref_uses_the_aws_environment(tmp_path, moto_server, bucket, monkeypatch):
    for k, v in s3_env(moto_server).items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    paths = make_job(tmp_path)
    store = resolve_store(f"s3://{bucket}/x", tmp_path)
    assert isinstance(store, S3Store) and store.endpoint_url == moto_server and store.prefix == "x"
    outcome = finalize_evidence(tmp_path, paths.job_id, f"s3://{bucket}/x", Journal(paths.events_file))
    assert outcome.status == "uploaded", outcome.error
    assert sha(fetch(moto_server, bucket, f"x/{paths.job_id}/{paths.job_id}.tar.gz")) == outcome.bundle.sha256


# ------------------------------------------------------------------ blocks


@pytest.mark.prefect
def test_block_refs_resolve_through_prefect(prefect_server, tmp_path, moto_server, bucket):
    from longrun.blocks.evidence import LocalEvidenceStore, S3EvidenceStore

    name = f"ev-{uuid.uuid4().hex[:8]}"
    S3EvidenceStore(
        bucket=bucket,
        prefix="blk",
        endpoint_url=moto_server,
        region_name=REGION,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        addressing_style="path",
        max_attempts=2,
        max_seconds=10,
    ).save(name, overwrite=True)
    LocalEvidenceStore(path=str(tmp_path / "share")).save(name, overwrite=True)

    store = resolve_store(f"longrun-s3-evidence-store/{name}", tmp_path)
    assert isinstance(store, S3Store) and store.bucket == bucket and store.prefix == "blk" and store.max_attempts == 2

    paths = make_job(tmp_path)
    outcome = finalize_evidence(tmp_path, paths.job_id, f"longrun-s3-evidence-store/{name}", Journal(paths.events_file))
    assert outcome.status == "uploaded", outcome.error
    key = f"blk/{paths.job_id}/{paths.job_id}.tar.gz"
    assert sha(fetch(moto_server, bucket, key)) == outcome.bundle.sha256

    local = resolve_store(f"longrun-local-evidence-store/{name}", tmp_path)
    assert local.path == tmp_path / "share"
    with pytest.raises(EvidenceStoreInvalid):
        resolve_store("longrun-s3-evidence-store/no-such-block", tmp_path)
    # A store the block cannot reach is journaled, not raised.
    outcome = finalize_evidence(tmp_path, paths.job_id, "longrun-s3-evidence-store/no-such-block", Journal(paths.events_file))
    assert outcome.upload_failed and outcome.error.code == "evidence_store_invalid"
    assert build_bundle(tmp_path, paths.job_id).tar_path.is_file()
