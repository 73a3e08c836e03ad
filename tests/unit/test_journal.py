"""The journal (append, torn-tail repair, concurrency, follow) and event parsing."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from longrun.errors import EventVersionUnsupported, JournalCorrupt
from longrun.journal import events as ev_mod
from longrun.journal.events import EVENT_TYPES, EVENT_VERSION, build_event, parse_event
from longrun.journal.fold import replay
from longrun.journal.local import Journal
from longrun.journal.payloads import RunFailed

StageFinishedEvent = EVENT_TYPES["stage_finished"]

FIXTURES = Path(__file__).parents[1] / "fixtures" / "journals"
JOB = "0123456789ab"
T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def journal(tmp_path) -> Journal:
    return Journal(tmp_path / ".maestro" / "jobs" / JOB / "events.jsonl", clock=FakeClock())


def stop_payload(n: int, by: str = "cli") -> dict:
    return {"by": by, "reason": str(n)}


def lines_of(path: Path) -> list[dict]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


# -- append / read -----------------------------------------------------------------


def test_append_assigns_seq_and_clock_and_writes_canonical_lines(journal):
    e1 = journal.append("run_started", {"run_id": "r1"}, job_id=JOB)
    e2 = journal.append("run_failed", RunFailed(code="stage_failed", message="boom"), job_id=JOB)
    explicit = datetime(2025, 6, 1, 8, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    e3 = journal.append("stop_requested", stop_payload(3), job_id=JOB, ts=explicit)
    assert [e.seq for e in (e1, e2, e3)] == [1, 2, 3]
    assert e1.ts == T0 + timedelta(seconds=1) and e2.ts == T0 + timedelta(seconds=2)
    raw = lines_of(journal.path)
    assert raw[2]["ts"] == "2025-06-01T06:00:00.123456Z"  # normalised to UTC, microseconds, Z
    assert raw[0] == {
        "seq": 1,
        "type": "run_started",
        "version": "job_event_v1",
        "ts": "2025-01-01T12:00:01.000000Z",
        "job_id": JOB,
        "payload": {"run_id": "r1", "flow_run_id": None, "resumed": False},
    }
    assert journal.read() == [e1, e2, e3]
    assert journal.state() == replay([e1, e2, e3])
    assert journal.state().status == "FAILED"


def test_missing_journal_reads_empty(journal):
    assert journal.read() == []
    assert journal.state().status == "PENDING"


def test_invalid_append_writes_nothing(journal):
    journal.append("run_started", {"run_id": "r1"}, job_id=JOB)
    before = journal.path.read_bytes()
    with pytest.raises(ValidationError):
        journal.append("stage_started", {"iteration": 0, "stage": "x", "model": "m"}, job_id=JOB)
    with pytest.raises(ValueError, match="unknown event type"):
        journal.append("made_up", {}, job_id=JOB)
    with pytest.raises(TypeError, match="RunFailed"):
        journal.append("run_started", RunFailed(code="a", message="b"), job_id=JOB)
    with pytest.raises(ValueError, match="belongs to job"):
        journal.append("run_started", {"run_id": "r2"}, job_id="ffffffffffff")
    with pytest.raises(ValidationError):
        journal.append("run_started", {"run_id": "r2"}, job_id=JOB, ts=datetime(2025, 1, 1))  # naive
    assert journal.path.read_bytes() == before


def test_iter_from_is_inclusive(journal):
    for n in range(5):
        journal.append("stop_requested", stop_payload(n), job_id=JOB)
    assert [e.seq for e in journal.iter_from(3)] == [3, 4, 5]
    assert [e.seq for e in journal.iter_from(99)] == []


def test_append_after_a_line_longer_than_the_read_chunk(journal):
    big = {"iteration": 1, "gate": "g", "kind": "command", "required": True, "passed": False, "evidence": {"log": "x" * 200_000}}
    journal.append("stop_requested", stop_payload(0), job_id=JOB)
    journal.append("gate_evaluated", big, job_id=JOB)
    e3 = journal.append("stop_requested", stop_payload(2), job_id=JOB)
    assert e3.seq == 3
    assert [e.seq for e in journal.read()] == [1, 2, 3]


# -- torn tail ---------------------------------------------------------------------


def test_torn_tail_ignored_on_read_and_repaired_on_append(tmp_path):
    path = tmp_path / "events.jsonl"
    shutil.copy(FIXTURES / "torn_tail.jsonl", path)
    assert not path.read_bytes().endswith(b"\n")
    j = Journal(path, clock=FakeClock())
    assert [e.seq for e in j.read()] == [1, 2, 3, 4, 5]

    e = j.append("iteration_finished", {"iteration": 1, "gates_passed": True, "fingerprint": "f"}, job_id="abcdef012345")
    assert e.seq == 6
    raw = lines_of(path)  # every line is whole JSON, file ends in \n
    assert [r["seq"] for r in raw] == [1, 2, 3, 4, 5, 6]
    assert raw[5]["payload"]["fingerprint"] == "f"
    assert b'2025-03-01T12:00:1"' not in path.read_bytes()
    assert [x.seq for x in j.read()] == [1, 2, 3, 4, 5, 6]


def test_torn_first_line_only(journal):
    journal.path.parent.mkdir(parents=True)
    journal.path.write_bytes(b'{"seq":1,"type":"run_st')
    assert journal.read() == []
    assert journal.append("run_started", {"run_id": "r"}, job_id=JOB).seq == 1
    assert [r["seq"] for r in lines_of(journal.path)] == [1]


# -- corruption and versions -------------------------------------------------------


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def _fixture_lines() -> list[str]:
    return (FIXTURES / "completed_two_iterations.jsonl").read_text().splitlines()


def test_corrupt_middle_line_names_line_number(journal):
    lines = _fixture_lines()[:5]
    lines[2] = lines[2][:40]  # truncated JSON, but followed by more lines
    _write_lines(journal.path, lines)
    with pytest.raises(JournalCorrupt, match=r"events\.jsonl:3: not valid JSON") as info:
        journal.read()
    assert info.value.code == "journal_corrupt"


def test_invalid_event_in_middle_names_line(journal):
    lines = _fixture_lines()[:4]
    bad = json.loads(lines[1])
    del bad["payload"]["run_id"]
    lines[1] = json.dumps(bad)
    _write_lines(journal.path, lines)
    with pytest.raises(JournalCorrupt, match=r":2: invalid run_started event: payload\.run_id"):
        journal.read()


def test_non_increasing_seq_is_corrupt(journal):
    lines = _fixture_lines()[:3]
    lines.append(lines[1])  # seq 2 again
    _write_lines(journal.path, lines)
    with pytest.raises(JournalCorrupt, match=r":4: seq 2 does not increase \(previous seq 3\)"):
        journal.read()


def test_unknown_type_is_corrupt(journal):
    lines = _fixture_lines()[:2]
    bad = json.loads(lines[1])
    bad["type"] = "teleported"
    lines[1] = json.dumps(bad)
    _write_lines(journal.path, lines)
    with pytest.raises(JournalCorrupt, match=r":2: unknown event type 'teleported'"):
        journal.read()


def test_unknown_version_is_unsupported_on_read_and_blocks_append(journal):
    lines = _fixture_lines()[:2]
    newer = json.loads(lines[1])
    newer["version"] = "job_event_v2"
    lines[1] = json.dumps(newer)
    _write_lines(journal.path, lines)
    with pytest.raises(EventVersionUnsupported, match=r":2: event version 'job_event_v2'") as info:
        journal.read()
    assert info.value.code == "event_version_unsupported"
    before = journal.path.read_bytes()
    with pytest.raises(EventVersionUnsupported):
        journal.append("stop_requested", stop_payload(1), job_id="a1b2c3d4e5f6")
    assert journal.path.read_bytes() == before


def test_parse_event_unknown_version_and_missing_version():
    raw = json.loads(_fixture_lines()[0])
    with pytest.raises(EventVersionUnsupported):
        parse_event({**raw, "version": "job_event_v0"})
    with pytest.raises(JournalCorrupt, match="no valid version"):
        parse_event({k: v for k, v in raw.items() if k != "version"})


def test_upcaster_registry_lifts_old_versions(monkeypatch):
    """An old version is read through its registered step (here a made-up v0)."""

    def v0_to_v1(raw: dict) -> dict:
        payload = dict(raw["payload"])
        payload["run_id"] = payload.pop("id")
        return {**raw, "payload": payload}

    monkeypatch.setitem(ev_mod._UPCASTERS, "job_event_v0", (EVENT_VERSION, v0_to_v1))
    old = {
        "seq": 1,
        "type": "run_started",
        "version": "job_event_v0",
        "ts": "2024-01-01T00:00:00Z",
        "job_id": JOB,
        "payload": {"id": "r-old"},
    }
    event = parse_event(old)
    assert event.version == EVENT_VERSION and event.payload.run_id == "r-old"
    assert "job_event_v0" in ev_mod.known_versions()


def test_parse_event_types_and_forward_compatible_payloads():
    raw = json.loads(_fixture_lines()[4])
    raw["payload"]["cache_hit"] = True  # a newer writer's extra field
    event = parse_event(raw)
    assert isinstance(event, StageFinishedEvent)
    assert event.payload.usage.usd == 0.25 and event.payload.cache_hit is True
    assert json.loads(event.to_line())["payload"]["cache_hit"] is True


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.jsonl")))
def test_golden_lines_round_trip_byte_for_byte(name):
    """Pins the wire format: re-serialising a golden line gives the same bytes."""
    data = (FIXTURES / name).read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    for line in complete.splitlines(keepends=True):
        assert parse_event(json.loads(line)).to_line() == line


def test_run_stopped_reason_is_closed():
    with pytest.raises(ValidationError):
        build_event("run_stopped", {"reason": "bored"}, seq=1, job_id=JOB, ts=T0)


# -- concurrency -------------------------------------------------------------------

PROCS, PER_PROC = 4, 50


def _appender(path: str, k: int) -> None:
    j = Journal(path)
    for i in range(PER_PROC):
        j.append("stop_requested", {"by": f"proc-{k}", "reason": str(i)}, job_id=JOB)


def test_concurrent_appends_from_processes(tmp_path):
    path = tmp_path / "events.jsonl"
    # spawn, not fork: forking a process that runs Prefect's threads can deadlock the child.
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_appender, args=(str(path), k)) for k in range(PROCS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    events = Journal(path).read()
    assert [e.seq for e in events] == list(range(1, PROCS * PER_PROC + 1))
    assert len(path.read_bytes().splitlines()) == PROCS * PER_PROC
    for k in range(PROCS):
        mine = [int(e.payload.reason) for e in events if e.payload.by == f"proc-{k}"]
        assert mine == list(range(PER_PROC))  # none lost, none duplicated, in order


def test_append_from_a_separate_interpreter(tmp_path):
    """A CLI process and this process share one journal."""
    path = tmp_path / "events.jsonl"
    Journal(path).append("run_started", {"run_id": "flow"}, job_id=JOB)
    code = (
        "import sys; from longrun.journal.local import Journal; "
        f"Journal(sys.argv[1]).append('stop_requested', {{'by': 'cli', 'reason': 'x'}}, job_id='{JOB}')"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    assert [(e.seq, e.type) for e in Journal(path).read()] == [(1, "run_started"), (2, "stop_requested")]


# -- follow ------------------------------------------------------------------------


def test_follow_yields_new_events_including_lines_completed_later(tmp_path):
    path = tmp_path / "events.jsonl"
    writer = Journal(path, clock=FakeClock())
    writer.append("run_started", {"run_id": "r"}, job_id=JOB)
    writer.append("stop_requested", stop_payload(1), job_id=JOB)
    pending = build_event("stop_requested", stop_payload(3), seq=3, job_id=JOB, ts=T0).to_line()

    def raw_write(data: bytes) -> None:
        with path.open("ab") as fh:
            fh.write(data)

    steps = [
        lambda: raw_write(pending[:20]),  # half a line: must not be yielded yet
        lambda: raw_write(pending[20:]),
        lambda: writer.append("run_completed", {"iteration": 0, "reason": "done"}, job_id=JOB),
    ]
    polls: list[float] = []

    def fake_sleep(seconds: float) -> None:
        polls.append(seconds)
        steps[len(polls) - 1]()

    reader = Journal(path, sleep=fake_sleep)
    seen = []
    for event in reader.follow(after_seq=1, poll=0.5, stop=lambda: reader.state().is_terminal):
        seen.append((event.seq, event.type, len(polls)))
    assert seen == [(2, "stop_requested", 0), (3, "stop_requested", 2), (4, "run_completed", 3)]
    assert polls == [0.5, 0.5, 0.5]


def test_follow_waits_for_missing_journal(tmp_path):
    path = tmp_path / "events.jsonl"
    calls = []

    def fake_sleep(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) == 2:
            Journal(path).append("run_started", {"run_id": "r"}, job_id=JOB)

    out = list(Journal(path, sleep=fake_sleep).follow(stop=lambda: len(calls) >= 3))
    assert [e.seq for e in out] == [1]


def test_core_does_not_import_prefect():
    code = "import sys, longrun.journal.local, longrun.journal.state, longrun.atomicio; assert 'prefect' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_event_type_is_documented_with_its_payload_fields():
    """docs/concepts.md has a row per event type naming each payload field."""
    import re

    from longrun.journal.events import PAYLOAD_TYPES

    text = (Path(__file__).resolve().parents[2] / "docs" / "concepts.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([a-z_]+)` \| [^|]+ \| ([^\n]+) \|$", text, flags=re.M)}
    missing = sorted(t for t in PAYLOAD_TYPES if t not in rows)
    assert missing == []
    undocumented = {t: [f for f in cls.model_fields if f"`{f}`" not in rows[t]] for t, cls in PAYLOAD_TYPES.items()}
    assert {t: fs for t, fs in undocumented.items() if fs} == {}


def test_patches_applied_is_folded_without_changing_the_status():
    head, jid, ts = "a" * 40, "0" * 12, datetime(2026, 11, 22, tzinfo=UTC)
    events = [
        build_event(
            "job_registered", {"job_id": jid, "name": "x", "spec_sha256": "0" * 64, "root": "/r"}, seq=1, job_id=jid, ts=ts
        ),
        build_event("patches_applied", {"repo": "/r", "patches": ["0001-a.patch"], "head": head}, seq=2, job_id=jid, ts=ts),
    ]
    state = replay(events)
    assert state.status == "PENDING"
    assert (state.patches_applied["head"], list(state.patches_applied["patches"])) == (head, ["0001-a.patch"])
    with pytest.raises(ValidationError):
        build_event("patches_applied", {"repo": "/r", "patches": [], "head": "not-a-sha"}, seq=3, job_id=jid, ts=ts)
