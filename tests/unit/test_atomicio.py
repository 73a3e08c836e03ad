"""longrun.atomicio: whole-file replaces, write-once files, single-write line appends."""

from __future__ import annotations

import multiprocessing
import os
import stat

import pytest

from longrun import atomicio
from longrun.errors import SpecImmutable


def _leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# -- write_atomic ------------------------------------------------------------------


def test_write_atomic_creates_parents_and_writes_bytes_and_str(tmp_path):
    target = tmp_path / "a" / "b" / "out.json"
    atomicio.write_atomic(target, b"\x00bytes\n")
    assert target.read_bytes() == b"\x00bytes\n"
    atomicio.write_atomic(target, "é text")
    assert target.read_bytes() == "é text".encode()
    assert _leftovers(target.parent) == []
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_write_atomic_failure_keeps_old_content_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    atomicio.write_atomic(target, "old")

    def boom(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(atomicio.os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        atomicio.write_atomic(target, "new")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


# -- write_once --------------------------------------------------------------------


def test_write_once_creates_then_noop_then_refuses(tmp_path):
    target = tmp_path / "jobs" / "abc" / "spec.json"
    assert atomicio.write_once(target, '{"a": 1}') is True
    assert atomicio.write_once(target, b'{"a": 1}') is False  # identical bytes: no-op
    with pytest.raises(SpecImmutable) as info:
        atomicio.write_once(target, '{"a": 2}')
    assert info.value.code == "job_spec_immutable"
    assert str(target) in info.value.message
    assert target.read_text() == '{"a": 1}'
    assert _leftovers(target.parent) == []


def _write_once_worker(path: str, k: int, results) -> None:
    try:
        results.put((k, atomicio.write_once(path, f"writer {k}")))
    except SpecImmutable:
        results.put((k, "immutable"))


def test_write_once_race_has_exactly_one_winner(tmp_path):
    # spawn, not fork: forking a process that runs Prefect's threads can deadlock the child.
    ctx = multiprocessing.get_context("spawn")
    target = tmp_path / "once.txt"
    results = ctx.Queue()
    procs = [ctx.Process(target=_write_once_worker, args=(str(target), k, results)) for k in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    outcomes = dict(results.get(timeout=5) for _ in procs)
    winners = [k for k, v in outcomes.items() if v is True]
    assert len(winners) == 1
    assert all(v == "immutable" for k, v in outcomes.items() if k != winners[0])
    assert target.read_text() == f"writer {winners[0]}"


# -- append_line / open_append -----------------------------------------------------


def test_append_line_by_path_and_by_fd(tmp_path):
    target = tmp_path / "deep" / "log.jsonl"
    atomicio.append_line(target, b'{"n":1}\n')
    fd = os.open(target, os.O_WRONLY | os.O_APPEND)
    try:
        atomicio.append_line(fd, b'{"n":2}\n')
    finally:
        os.close(fd)
    assert target.read_bytes() == b'{"n":1}\n{"n":2}\n'


@pytest.mark.parametrize("bad", [b"no newline", b"two\nlines\n", b"\n\n"])
def test_append_line_rejects_anything_but_one_line(tmp_path, bad):
    target = tmp_path / "log"
    with pytest.raises(ValueError):
        atomicio.append_line(target, bad)
    assert not target.exists()


def test_append_line_rejects_str(tmp_path):
    with pytest.raises(TypeError):
        atomicio.append_line(tmp_path / "log", "text\n")  # type: ignore[arg-type]


def test_open_append_appends_and_creates_parents(tmp_path):
    target = tmp_path / "run" / "command.log"
    with atomicio.open_append(target) as fh:
        fh.write(b"first\n")
    with atomicio.open_append(target) as fh:
        fh.write(b"second\n")
    assert target.read_bytes() == b"first\nsecond\n"


# -- touch / remove ----------------------------------------------------------------


def test_touch_creates_empty_and_never_truncates(tmp_path):
    target = tmp_path / "x" / "STOP"
    assert atomicio.touch(target) is True
    assert target.read_bytes() == b""
    target.write_bytes(b"keep")
    assert atomicio.touch(target) is False
    assert target.read_bytes() == b"keep"


def test_remove(tmp_path):
    target = tmp_path / "STOP"
    target.write_text("x")
    assert atomicio.remove(target) is True
    assert not target.exists()
    assert atomicio.remove(target) is False
    with pytest.raises(FileNotFoundError):
        atomicio.remove(target, missing_ok=False)


def test_truncate_cuts_back(tmp_path):
    target = tmp_path / "j"
    target.write_bytes(b"line\ntorn")
    fd = atomicio.open_for_update(target)
    try:
        atomicio.truncate(fd, 5)
    finally:
        os.close(fd)
    assert target.read_bytes() == b"line\n"
