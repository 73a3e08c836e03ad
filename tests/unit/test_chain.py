"""The journal's hash chain: every tampering class is caught and named; old journals read as unchained."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from longrun.journal.chain import check_chain
from longrun.journal.local import Journal

JOB = "0123456789ab"
SPEC_SHA = hashlib.sha256(b"the canonical spec").hexdigest()


def _journal(path: Path, n: int = 6) -> list[bytes]:
    j = Journal(path)
    j.append("job_registered", {"job_id": JOB, "name": "chained", "spec_sha256": SPEC_SHA, "root": "/r"}, job_id=JOB)
    j.append("run_started", {"run_id": "r1"}, job_id=JOB)
    for it in range(1, n - 1):
        j.append("iteration_started", {"iteration": it}, job_id=JOB)
    return path.read_bytes().splitlines(keepends=True)


def test_every_line_names_the_hash_of_the_one_before(tmp_path):
    lines = _journal(tmp_path / "events.jsonl")
    events = [json.loads(line) for line in lines]
    # What a third party computes with `sed -n 'Np' events.jsonl | sha256sum` and jq.
    assert events[0]["prev"] == SPEC_SHA
    for before, event in zip(lines, events[1:], strict=False):
        assert event["prev"] == hashlib.sha256(before).hexdigest()
    report = check_chain(b"".join(lines))
    assert (report.ok, report.chained, report.events, report.head) == (True, True, 6, hashlib.sha256(lines[-1]).hexdigest())


def _tampered(lines: list[bytes], how: str) -> bytes:
    out = list(lines)
    if how == "edited":
        event = json.loads(out[2])
        event["payload"]["iteration"] = 99
        out[2] = (json.dumps(event, separators=(",", ":")) + "\n").encode()
    elif how == "inserted":
        event = json.loads(out[2])
        out.insert(3, out[2])  # a copied line: its seq repeats
    elif how == "deleted":
        del out[2]
    elif how == "reordered":
        out[2], out[3] = out[3], out[2]
    elif how == "prev_removed":
        event = json.loads(out[3])
        del event["prev"]
        out[3] = (json.dumps(event, separators=(",", ":")) + "\n").encode()
    return b"".join(out)


@pytest.mark.parametrize(("how", "seq"), [("edited", 4), ("inserted", 4), ("deleted", 3), ("reordered", 3), ("prev_removed", 4)])
def test_each_tampering_class_breaks_the_chain_at_the_first_line_after_it(tmp_path, how, seq):
    lines = _journal(tmp_path / "events.jsonl")
    report = check_chain(_tampered(lines, how))
    assert not report.ok and report.broken_seq == seq, report


def test_a_deleted_tail_keeps_the_chain_but_not_the_recorded_head(tmp_path):
    lines = _journal(tmp_path / "events.jsonl")
    full = check_chain(b"".join(lines))
    cut = check_chain(b"".join(lines[:-2]))
    assert cut.ok  # a prefix of a chain is a chain: only a head recorded elsewhere catches it
    assert cut.head_at(full.events) is None and full.head_at(full.events) == full.head


def test_an_old_journal_reads_as_unchained_and_chains_from_the_next_event(tmp_path):
    path = tmp_path / "events.jsonl"
    lines = _journal(path)
    old = [json.loads(line) for line in lines]
    for event in old:
        del event["prev"]
    path.write_bytes(b"".join((json.dumps(e, separators=(",", ":")) + "\n").encode() for e in old))
    report = check_chain(path.read_bytes())
    assert (report.ok, report.chained, report.first_chained_seq) == (True, False, None)
    assert Journal(path).state().last_seq == 6  # replays as before
    Journal(path).append("iteration_started", {"iteration": 9}, job_id=JOB)
    after = check_chain(path.read_bytes())
    assert (after.ok, after.chained, after.first_chained_seq) == (True, False, 7)
