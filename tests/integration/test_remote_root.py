"""A job root on S3: the mirror, the journal's compare-and-set appends, claims, the start lease.

Against moto's S3 server over HTTP on 127.0.0.1 (the ``moto_server`` fixture),
through boto3. Two "machines" are two mirrors of one URL: two
``LONGRUN_WORKDIR`` directories, so two local copies that share nothing but
the store.
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import pytest
from s3_faults import s3_client, s3_env

from longrun.errors import LongrunError
from longrun.journal import local as journal_local
from longrun.journal import remote as journal_remote
from longrun.journal.chain import check_chain
from longrun.journal.local import Journal
from longrun.journal.runs import JobLock, claim_run, list_runs
from longrun.storage import mirror
from longrun.storage.paths import JobPaths

JOB = "0123456789ab"


@pytest.fixture
def s3(moto_server, monkeypatch):
    """A fresh bucket; boto3's standard configuration pointed at moto through the environment."""
    for name, value in s3_env(moto_server).items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    bucket = f"root-{uuid.uuid4().hex[:12]}"
    client = s3_client(moto_server)
    client.create_bucket(Bucket=bucket)
    return client, f"s3://{bucket}/team/a"


def machine(tmp_path: Path, name: str, url: str, monkeypatch) -> Path:
    """The mirror of ``url`` on a machine whose LONGRUN_WORKDIR is ``tmp_path/name``."""
    monkeypatch.setenv("LONGRUN_WORKDIR", str(tmp_path / name))
    return mirror.open_root(url)


def keys(client, url: str, prefix: str) -> list[str]:
    bucket, base = url.removeprefix("s3://").split("/", 1)
    resp = client.list_objects_v2(Bucket=bucket, Prefix=f"{base}/{prefix}")
    return [o["Key"][len(base) + 1 :] for o in resp.get("Contents", [])]


def test_two_mirrors_of_one_url_share_the_journal_and_its_chain(s3, tmp_path, monkeypatch):
    client, url = s3
    a, b = machine(tmp_path, "a", url, monkeypatch), machine(tmp_path, "b", url, monkeypatch)
    assert a != b and (a / ".maestro" / "remote.json").is_file()
    ja, jb = Journal(JobPaths(a, JOB).events_file), Journal(JobPaths(b, JOB).events_file)
    assert jb.read() == [] and not JobPaths(b, JOB).events_file.exists()  # nothing in the store: no file made
    ja.append("stop_requested", {"by": "a", "reason": "t"}, job_id=JOB)
    jb.append("stop_requested", {"by": "b", "reason": "t"}, job_id=JOB)  # b first fetches a's event, then appends seq 2
    ja.append("stop_requested", {"by": "a2", "reason": "t"}, job_id=JOB)
    for j in (ja, jb):
        assert [(e.seq, e.payload.by) for e in j.read()] == [(1, "a"), (2, "b"), (3, "a2")]
    # The mirrors hold the same bytes, which are the store's objects, one per event.
    lines_a = JobPaths(a, JOB).events_file.read_bytes()
    assert lines_a == JobPaths(b, JOB).events_file.read_bytes()
    assert keys(client, url, f"jobs/{JOB}/events/") == [f"jobs/{JOB}/events/{n:012d}.json" for n in (1, 2, 3)]
    bucket, base = url.removeprefix("s3://").split("/", 1)
    body = client.get_object(Bucket=bucket, Key=f"{base}/jobs/{JOB}/events/000000000002.json")["Body"].read()
    assert body == lines_a.splitlines(keepends=True)[1]
    report = check_chain(lines_a)
    assert report.ok and report.events == 3 and report.broken_seq is None


def test_concurrent_appends_from_four_machines_lose_and_duplicate_nothing(s3, tmp_path, monkeypatch):
    _, url = s3
    roots = [machine(tmp_path, f"m{i}", url, monkeypatch) for i in range(4)]
    per_thread = 8
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        journal = Journal(JobPaths(roots[i % 4], JOB).events_file)
        try:
            for n in range(per_thread):
                journal.append("stop_requested", {"by": f"w{i}-{n}", "reason": "t"}, job_id=JOB)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    events = Journal(JobPaths(machine(tmp_path, "fresh", url, monkeypatch), JOB).events_file).read()
    assert [e.seq for e in events] == list(range(1, 8 * per_thread + 1))
    written = sorted(e.payload.by for e in events)
    assert written == sorted(f"w{i}-{n}" for i in range(8) for n in range(per_thread))  # each once, none lost
    # Each writer's own events are in its order.
    for i in range(8):
        mine = [e.payload.by for e in events if e.payload.by.startswith(f"w{i}-")]
        assert mine == [f"w{i}-{n}" for n in range(per_thread)]


def test_a_run_started_elsewhere_stops_the_former_owner_before_it_writes(s3, tmp_path, monkeypatch):
    _, url = s3
    a, b = machine(tmp_path, "a", url, monkeypatch), machine(tmp_path, "b", url, monkeypatch)
    owner_a = Journal(JobPaths(a, JOB).events_file, owner="flow-a")
    owner_a.append("run_started", {"run_id": "flow-a", "flow_run_id": "flow-a"}, job_id=JOB)
    owner_a.append("iteration_started", {"iteration": 1}, job_id=JOB)
    # Machine b takes the run over (a was presumed dead): its history names flow-a, which is no takeover.
    Journal(JobPaths(b, JOB).events_file, owner="flow-b").append(
        "run_started", {"run_id": "flow-b", "flow_run_id": "flow-b", "resumed": True}, job_id=JOB
    )
    with pytest.raises(LongrunError) as err:
        owner_a.append("stage_started", {"iteration": 1, "stage": "s", "model": "m"}, job_id=JOB)
    assert err.value.code == "job_already_running" and "flow-b" in err.value.message
    events = Journal(JobPaths(b, JOB).events_file).read()
    assert [e.type for e in events] == ["run_started", "iteration_started", "run_started"]
    # A writer that is not an engine (the CLI) is not stopped by it: it appends after the takeover.
    Journal(JobPaths(a, JOB).events_file).append("stop_requested", {"by": "cli", "reason": "t"}, job_id=JOB)
    assert [e.seq for e in Journal(JobPaths(b, JOB).events_file).read()] == [1, 2, 3, 4]


def test_a_compare_and_set_append_sees_the_other_machines_events(s3, tmp_path, monkeypatch):
    _, url = s3
    a, b = machine(tmp_path, "a", url, monkeypatch), machine(tmp_path, "b", url, monkeypatch)
    ja, jb = Journal(JobPaths(a, JOB).events_file), Journal(JobPaths(b, JOB).events_file)
    ja.read()
    jb.append("stop_requested", {"by": "b", "reason": "t"}, job_id=JOB)

    def refuse_if_stop_requested(state):
        return LongrunError("a stop was requested", code="usage_error") if state.stop_requested else None

    with pytest.raises(LongrunError, match="a stop was requested"):
        ja.append("stop_requested", {"by": "a", "reason": "t"}, job_id=JOB, unless=refuse_if_stop_requested)
    assert len(jb.read()) == 1


def test_segments_let_a_fresh_machine_catch_up_in_few_reads(s3, tmp_path, monkeypatch):
    client, url = s3
    monkeypatch.setattr(journal_local, "SEGMENT", 8)
    monkeypatch.setattr(journal_remote, "SEGMENT", 8)
    monkeypatch.setattr(journal_local, "_CHUNK", 64)  # a segment's lines are read back from the end, chunk by chunk
    a = machine(tmp_path, "a", url, monkeypatch)
    writer = Journal(JobPaths(a, JOB).events_file)
    for n in range(20):
        writer.append("stop_requested", {"by": f"e{n}", "reason": "t"}, job_id=JOB)
    assert keys(client, url, f"jobs/{JOB}/segments/") == [
        f"jobs/{JOB}/segments/000000000001-000000000008.jsonl",
        f"jobs/{JOB}/segments/000000000009-000000000016.jsonl",
    ]
    fresh = machine(tmp_path, "fresh", url, monkeypatch)
    store = mirror.remote_for(fresh).store
    gets: list[str] = []
    real_get = store.get_bytes
    monkeypatch.setattr(store, "get_bytes", lambda key: gets.append(key) or real_get(key))
    events = Journal(JobPaths(fresh, JOB).events_file).read()
    assert [e.payload.by for e in events] == [f"e{n}" for n in range(20)]
    assert JobPaths(fresh, JOB).events_file.read_bytes() == JobPaths(a, JOB).events_file.read_bytes()
    # 2 segments + the 4 events after them, not 20 event reads.
    assert len(gets) == 6 and sum("/segments/" in k for k in gets) == 2


def test_an_event_object_that_disagrees_with_its_key_is_refused(s3, tmp_path, monkeypatch):
    client, url = s3
    a = machine(tmp_path, "a", url, monkeypatch)
    Journal(JobPaths(a, JOB).events_file).append("stop_requested", {"by": "a", "reason": "t"}, job_id=JOB)
    bucket, base = url.removeprefix("s3://").split("/", 1)
    line = client.get_object(Bucket=bucket, Key=f"{base}/jobs/{JOB}/events/000000000001.json")["Body"].read()
    client.put_object(Bucket=bucket, Key=f"{base}/jobs/{JOB}/events/000000000003.json", Body=line)  # a gap, and seq 1 again
    fresh = machine(tmp_path, "fresh", url, monkeypatch)
    with pytest.raises(LongrunError) as err:
        Journal(JobPaths(fresh, JOB).events_file).read()
    assert err.value.code == "journal_corrupt" and "event 2 is missing" in err.value.message


def test_one_claim_of_an_intended_run_across_machines(s3, tmp_path, monkeypatch):
    _, url = s3
    roots = [machine(tmp_path, f"m{i}", url, monkeypatch) for i in range(6)]
    results: list[tuple[bool, str]] = []
    barrier = threading.Barrier(6)

    def claim(root: Path) -> None:
        barrier.wait()
        c, created = claim_run(root, JOB, "nightly", trigger="key")
        results.append((created, c.opened_at))

    threads = [threading.Thread(target=claim, args=(r,)) for r in roots]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(created for created, _ in results) == [False] * 5 + [True]
    assert len({opened for _, opened in results}) == 1  # everyone holds the winner's claim
    # A third machine lists it.
    claims = list_runs(machine(tmp_path, "third", url, monkeypatch), JOB)
    assert [(c.key, c.opened_at) for c in claims] == [("nightly", results[0][1])]


def test_the_start_lease_is_one_holder_at_a_time_and_expires(s3, tmp_path, monkeypatch):
    client, url = s3
    a, b = machine(tmp_path, "a", url, monkeypatch), machine(tmp_path, "b", url, monkeypatch)
    held = JobLock(a, JOB, wait_s=5).acquire()
    with pytest.raises(LongrunError) as err:
        JobLock(b, JOB, wait_s=0.5).acquire()
    assert err.value.code == "job_already_running"
    held.release()
    JobLock(b, JOB, wait_s=0.5).acquire()  # free again (b never releases: a crashed start)
    bucket, base = url.removeprefix("s3://").split("/", 1)
    lease = keys(client, url, f"jobs/{JOB}/lock/")
    assert [json.loads(client.get_object(Bucket=bucket, Key=f"{base}/{k}")["Body"].read())["op"] for k in lease] == [
        "acquire",
        "release",
        "acquire",
    ]
    with pytest.raises(LongrunError):
        JobLock(a, JOB, wait_s=0.3).acquire()
    monkeypatch.setattr(mirror, "LEASE_S", 0.0)  # b's lease, taken with LEASE_S=180, is still held ...
    with pytest.raises(LongrunError):
        JobLock(a, JOB, wait_s=0.3).acquire()
    # ... until its expiry passes (here: rewritten as expired, as time would do).
    last = lease[-1]
    doc = json.loads(client.get_object(Bucket=bucket, Key=f"{base}/{last}")["Body"].read())
    doc["expires"] = doc["at"] - 1
    client.put_object(Bucket=bucket, Key=f"{base}/{last}", Body=json.dumps(doc).encode())
    JobLock(a, JOB, wait_s=0.5).acquire()


def test_write_once_files_go_to_the_store_first(s3, tmp_path, monkeypatch):
    _, url = s3
    a, b = machine(tmp_path, "a", url, monkeypatch), machine(tmp_path, "b", url, monkeypatch)
    spec_a, spec_b = JobPaths(a, JOB).spec_file, JobPaths(b, JOB).spec_file
    assert mirror.write_once(spec_a, "one\n") is True
    mirror.write_once(spec_b, "one\n")  # the same bytes: fine, and now in b's mirror
    assert spec_b.read_text() == "one\n"
    with pytest.raises(LongrunError) as err:
        mirror.write_once(spec_b, "two\n")
    assert err.value.code == "job_spec_immutable" and spec_b.read_text() == "one\n"
    # What stays local never reaches the store.
    assert mirror.locate(a / ".maestro" / "results" / JOB / "x.json") is None
    assert mirror.locate(a / ".maestro" / "jobs" / JOB / "spec.json") is not None


def test_a_bad_or_unreachable_root_is_a_clear_error(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("LONGRUN_WORKDIR", str(tmp_path / "w"))
    with pytest.raises(LongrunError) as err:
        mirror.open_root("s3://bucket/a/../b")
    assert err.value.code == "root_invalid"
    monkeypatch.setattr(mirror, "STORE_ATTEMPTS", 1)
    with pytest.raises(LongrunError) as err:
        mirror.open_root(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x")
    assert err.value.code == "root_unreachable" and "NoSuchBucket" in err.value.message


def test_only_regular_files_of_a_checkpoint_go_to_the_store(s3, tmp_path, monkeypatch):
    """A stage can write its usage directory: a symlink it plants there is not followed into the store."""
    client, url = s3
    a = machine(tmp_path, "a", url, monkeypatch)
    secret = tmp_path / "secret.txt"
    secret.write_text("worker credentials\n")
    it = JobPaths(a, JOB).iteration_dir(1)
    (it / "usage").mkdir(parents=True)
    (it / "usage" / "plan.json").write_text('{"usd": 0.01}\n')
    (it / "usage" / "leak.json").symlink_to(secret)
    (it / "linked-dir").symlink_to(tmp_path)
    assert mirror.push_tree(it) == 1
    assert mirror.push_tree(it) == 0  # unchanged files are not sent again
    assert keys(client, url, "checkpoints/") == [f"checkpoints/{JOB}/1/usage/plan.json"]
    with pytest.raises(LongrunError) as err:
        mirror.push(it / "usage" / "leak.json")
    assert err.value.code == "path_escape"
