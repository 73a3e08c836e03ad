"""The S3 fault proxy itself (tests/s3_faults.py): pass-through, seeded random faults, use from another process."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError
from s3_faults import AFTER, BEFORE, CHAOS_ACTIONS, FaultProxy, s3_client, s3_env

NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=10)


@pytest.fixture
def proxy(moto_server):
    p = FaultProxy(moto_server)
    yield p
    p.close()


@pytest.fixture
def bucket(moto_server) -> str:
    name = f"fault-{uuid.uuid4().hex[:12]}"
    s3_client(moto_server).create_bucket(Bucket=name)
    return name


def _keys(endpoint: str, bucket: str) -> set[str]:
    pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {obj["Key"] for page in pages for obj in page.get("Contents", [])}


def test_a_conditional_put_passes_through_and_the_second_is_refused(proxy, bucket):
    client = s3_client(proxy.url, config=NO_RETRIES)
    client.put_object(Bucket=bucket, Key="log/0001", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as info:
        client.put_object(Bucket=bucket, Key="log/0001", Body=b"second", IfNoneMatch="*")
    assert info.value.response["Error"]["Code"] == "PreconditionFailed"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert client.get_object(Bucket=bucket, Key="log/0001")["Body"].read() == b"first"
    puts = [d for d in proxy.details if d.method == "PUT"]
    assert [(d.action, d.upstream_status, d.conditional) for d in puts] == [("forward", 200, "*"), ("forward", 412, "*")]


def test_a_write_that_happened_but_was_answered_500_is_refused_on_retry(proxy, moto_server, bucket):
    """The compare-and-set case: moto stored the object, the client saw a 500, its retry gets 412."""
    client = s3_client(proxy.url, config=NO_RETRIES)
    proxy.inject("forward_500", when=lambda m, p: m == "PUT")
    with pytest.raises(ClientError) as info:
        client.put_object(Bucket=bucket, Key="log/0002", Body=b"mine", IfNoneMatch="*")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert s3_client(moto_server).get_object(Bucket=bucket, Key="log/0002")["Body"].read() == b"mine"
    with pytest.raises(ClientError) as info:
        client.put_object(Bucket=bucket, Key="log/0002", Body=b"mine", IfNoneMatch="*")
    assert info.value.response["Error"]["Code"] == "PreconditionFailed"

    proxy.inject("forward_drop", when=lambda m, p: m == "PUT")
    with pytest.raises(ConnectionClosedError):
        client.put_object(Bucket=bucket, Key="log/0003", Body=b"mine too", IfNoneMatch="*")
    assert s3_client(moto_server).get_object(Bucket=bucket, Key="log/0003")["Body"].read() == b"mine too"
    assert [(d.action, d.upstream_status) for d in proxy.injected()] == [("forward_500", 200), ("forward_drop", 200)]


def _put_many(url: str, bucket: str, n: int) -> dict[str, str]:
    """PUT n keys one after another without retries; what each client call saw."""
    client = s3_client(url, config=NO_RETRIES)
    seen = {}
    for i in range(n):
        key = f"k/{i:04d}"
        try:
            client.put_object(Bucket=bucket, Key=key, Body=b"x")
            seen[key] = "ok"
        except ClientError as e:
            seen[key] = str(e.response["ResponseMetadata"]["HTTPStatusCode"])
        except ConnectionClosedError:
            seen[key] = "closed"
    return seen


def test_random_mode_faults_a_fraction_and_records_what_it_did(proxy, moto_server, bucket):
    proxy.chaos(0.3, seed=7, when=lambda m, p: m == "PUT")
    seen = _put_many(proxy.url, bucket, 120)
    actions = {d.path.split("/", 2)[2]: d for d in proxy.details if d.method == "PUT"}
    assert len(actions) == 120
    faults = [d for d in actions.values() if d.action != "forward"]
    assert 20 <= len(faults) <= 55, len(faults)  # 30% of 120 is 36
    assert {d.action for d in faults} == set(CHAOS_ACTIONS)  # every kind, with this seed
    assert proxy.injected() == faults and proxy.seed == 7

    stored = _keys(moto_server, bucket)
    for key, d in actions.items():
        # What the client saw, and whether moto has the object, follow from the recorded action.
        assert seen[key] == {"forward": "ok", "503": "503", "500": "500", "forward_500": "500"}.get(d.action, "closed")
        assert (key in stored) == (d.action not in BEFORE), d
        assert (d.upstream_status is None) == (d.action in BEFORE) and (d.action not in AFTER or d.upstream_status == 200)

    # The same seed and request sequence: the same faults.
    again = FaultProxy(moto_server)
    try:
        again.chaos(0.3, seed=7, when=lambda m, p: m == "PUT")
        _put_many(again.url, bucket, 120)
        assert [d.action for d in again.details] == [d.action for d in proxy.details if d.method == "PUT"]
        again.chaos(0)
        _put_many(again.url, bucket, 5)
        assert [d.action for d in again.details[-5:]] == ["forward"] * 5
    finally:
        again.close()
    with pytest.raises(ValueError):
        proxy.chaos(1.5)


def test_another_process_reaches_moto_through_the_proxy(proxy, moto_server, bucket):
    """A worker-like subprocess gets the proxy as AWS_ENDPOINT_URL and nothing else."""
    proxy.inject("503", when=lambda m, p: m == "PUT")  # botocore's own retry gets past it
    code = (
        "import boto3; c = boto3.client('s3'); "
        f"c.put_object(Bucket={bucket!r}, Key='from-child', Body=b'hi'); "
        f"print(c.get_object(Bucket={bucket!r}, Key='from-child')['Body'].read().decode())"
    )
    r = subprocess.run([sys.executable, "-c", code], env=s3_env(proxy.url), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "hi", r.stderr
    assert [a for _, _, a in proxy.requests("PUT")] == ["503", "forward"]
    assert "from-child" in _keys(moto_server, bucket)
