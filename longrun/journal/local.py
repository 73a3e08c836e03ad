"""The append-only job journal: ``.maestro/jobs/<jobId>/events.jsonl``.

One event per line (see :mod:`longrun.journal.events`), ``seq`` strictly increasing.
Several processes append (the CLI and the flow), so :meth:`Journal.append`
holds an exclusive ``flock`` on the file while it

1. repairs a torn tail — a final line with no ``\\n``, left by a crash
   mid-write — by truncating back to the last ``\\n``;
2. reads the last complete line, seeking back from the end, to get its seq;
3. validates the new event and writes it as ONE ``os.write`` + fsync
   (:func:`longrun.atomicio.append_line`).

Readers take no lock: appends are whole-line writes, and a final line without
``\\n`` is ignored as not yet (or never) written.

On a remote job root (:mod:`longrun.storage.mirror`) the file is the mirror of
the store's journal (:mod:`longrun.journal.remote`): every read first fetches
the events the store has beyond it, and an append is a compare-and-set of the
next seq's object in the store, written to the file only once it won. A lost
race fetches the winner's events and tries again, unless the winner started
the run in another flow run (``run_started``): then this writer, the run's
former owner, stops with ``job_already_running`` and writes nothing more.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from longrun import atomicio
from longrun.errors import EventVersionUnsupported, JournalCorrupt, LongrunError
from longrun.journal.chain import chain_link
from longrun.journal.events import Event, build_event, parse_event
from longrun.journal.fold import replay
from longrun.journal.payloads import Payload
from longrun.journal.remote import SEGMENT, RemoteLog
from longrun.journal.state import RunState
from longrun.storage import mirror

__all__ = ["JOURNAL_NAME", "Journal", "utc_now"]

JOURNAL_NAME = "events.jsonl"

_CHUNK = 64 * 1024
#: Compare-and-set attempts of one append on a remote root before ``journal_contended``.
APPEND_TRIES = 50


def utc_now() -> datetime:
    """The real clock (tz-aware UTC); tests inject a fake instead."""
    return datetime.now(UTC)


class Journal:
    """One job's ``events.jsonl``. Cheap to construct; opens the file per call."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], None] = time.sleep,
        owner: str | None = None,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._sleep = sleep
        #: The flow run that runs this run (the engine's journal): once it has started the run, a
        #: ``run_started`` of another flow run is a takeover.
        self.owner = owner
        self._owning = False
        loc = mirror.locate(self.path)
        self._remote = RemoteLog(*loc) if loc is not None else None
        #: (byte offset, line number, last seq) after the last complete line read.
        self._cursor = (0, 0, 0)

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r})"

    # -- writing -----------------------------------------------------------------

    def append(
        self,
        type: str,
        payload: Mapping[str, Any] | Payload,
        *,
        job_id: str,
        ts: datetime | None = None,
        unless: Callable[[RunState], LongrunError | None] | None = None,
    ) -> Event:
        """Append one event with the next seq and return it.

        ``unless`` makes the append conditional: it is called, under the
        journal's lock, with the state of every event before this one; an
        error it returns refuses the append and is raised.

        Raises ``ValueError``/``TypeError`` for an invalid event (nothing is
        written), :class:`JournalCorrupt` when the last complete line cannot be
        read, and :class:`EventVersionUnsupported` when it is from a newer
        longrun (an old writer never appends to a newer journal).
        """
        try:
            fd = atomicio.open_for_update(self.path)
        except OSError as exc:
            raise LongrunError(
                f"{self.path}: the journal cannot be opened for appending ({exc.strerror or exc}); "
                "nothing was written (see: longrun doctor)",
                code="journal_unwritable",
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            for _ in range(APPEND_TRIES):
                pulled = self._pull_locked(fd)
                self._check_owner(pulled)
                end = os.fstat(fd).st_size
                last, last_line = self._last_event(fd, end)
                if last is not None and last.job_id != job_id:
                    raise ValueError(f"{self.path} belongs to job {last.job_id}, not {job_id}")
                if unless is not None and (refusal := unless(replay(self._read_local()))) is not None:
                    # A compare-and-set: the check sees every event appended before ours, under the lock.
                    raise refusal
                event = build_event(
                    type,
                    payload,
                    seq=(last.seq if last else 0) + 1,
                    job_id=job_id,
                    ts=ts if ts is not None else self._clock(),
                    prev=chain_link(last_line, type, payload),
                )
                line = event.to_line()
                if self._remote is not None and not self._remote.put(event.seq, line):
                    continue  # another writer appended this seq first: fetch it and decide again
                atomicio.append_line(fd, line)
                if type == "run_started" and self.owner is not None:
                    self._owning = self._owning or getattr(event.payload, "flow_run_id", None) == self.owner
                if self._remote is not None and event.seq % SEGMENT == 0:
                    self._remote.compact(event.seq, self._last_lines(fd, SEGMENT))
                return event
            raise LongrunError(
                f"{self.path}: {APPEND_TRIES} appends in a row lost their race to other writers; nothing was written",
                code="journal_contended",
                retryable=True,
            )
        finally:
            os.close(fd)  # also releases the flock

    # -- the store (a remote root) -------------------------------------------------

    def _pull_locked(self, fd: int, fetched: list[bytes] | None = None) -> list[Event]:
        """Repair a torn tail, then append the events the store has beyond the file (the file's lock is held).

        ``fetched``: the store's lines from seq 1 on, already read (used only if the file is still empty).
        """
        size = os.fstat(fd).st_size
        end = _last_newline(fd, size) + 1
        if end != size:
            atomicio.truncate(fd, end)  # torn tail from a crash: drop it
        if self._remote is None:
            return []
        last, _ = self._last_event(fd, end)
        lines = fetched if last is None and fetched is not None else self._remote.lines_after(last.seq if last else 0)
        if not lines:
            return []
        events = [_parse_line(line[:-1], f"{self._remote!r}") for line in lines]
        data = b"".join(lines)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        return events

    def sync(self) -> None:
        """Bring the mirror up to the store's journal (no-op on a local root)."""
        if self._remote is None:
            return
        fetched = None
        if not self.path.exists():
            fetched = self._remote.lines_after(0)
            if not fetched:
                return  # nothing in the store either: create no file
        try:
            fd = atomicio.open_for_update(self.path)
        except OSError:
            return  # a read-only mirror: read what it has
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._pull_locked(fd, fetched)
        finally:
            os.close(fd)

    def _check_owner(self, pulled: list[Event]) -> None:
        """Stop an engine whose run another flow run has started meanwhile (a takeover)."""
        if not self._owning:
            return
        for event in pulled:
            other = getattr(event.payload, "flow_run_id", None) if event.type == "run_started" else None
            if other is not None and other != self.owner:
                host = getattr(event.payload, "host", None)
                raise LongrunError(
                    f"{self.path}: flow run {other}{f' on {host}' if host else ''} started this run (event {event.seq}); "
                    "this one stops and writes nothing more",
                    code="job_already_running",
                )

    def _last_lines(self, fd: int, n: int) -> list[bytes]:
        """The last ``n`` complete lines, read backwards from the end (not the whole journal)."""
        end = os.fstat(fd).st_size
        start, data = end, b""
        while start > 0 and data.count(b"\n") <= n:
            start = max(0, start - _CHUNK)
            data = os.pread(fd, end - start, start)
        return data.splitlines(keepends=True)[-n:]

    def _read_local(self) -> list[Event]:
        events, _, _, _ = self._scan(0, 0, 0)
        return events

    def _last_event(self, fd: int, end: int) -> tuple[Event | None, bytes | None]:
        """The event on the last complete line of a file whose lines end at ``end``, and that line's bytes."""
        if end == 0:
            return None, None
        start = _last_newline(fd, end - 1) + 1
        line = os.pread(fd, end - start, start)
        return _parse_line(line[:-1], f"{self.path}: last line"), line

    # -- reading -----------------------------------------------------------------

    def read(self) -> list[Event]:
        """Every event on a complete line; a torn final line is ignored.

        Raises :class:`JournalCorrupt` (naming the line) for a malformed line
        or a seq that does not increase.
        """
        self._cursor = (0, 0, 0)
        return self.tail()

    def tail(self) -> list[Event]:
        """Events appended since the last :meth:`read` or :meth:`tail` of this object.

        Reads only the bytes after the last complete line seen, so following
        a journal costs what it gained, not its length.
        """
        self.sync()
        events, *cursor = self._scan(*self._cursor)
        self._cursor = (cursor[0], cursor[1], cursor[2])
        return events

    def iter_from(self, seq: int) -> Iterator[Event]:
        """Events with ``event.seq >= seq``, in order (the whole file is validated)."""
        self.sync()
        return (e for e in self._read_local() if e.seq >= seq)

    def follow(
        self,
        after_seq: int = 0,
        poll: float = 0.2,
        stop: Callable[[], bool] | None = None,
    ) -> Iterator[Event]:
        """Yield events with ``seq > after_seq`` as they are appended.

        Polls every ``poll`` seconds (with the injected ``sleep``); after each
        poll's events are yielded, ends once ``stop()`` returns True. Without
        ``stop`` it follows forever. A missing journal is waited for.
        """
        cursor = Journal(self.path)  # its own read cursor: a read() by ``stop`` cannot skip events here
        while True:
            for event in cursor.tail():
                if event.seq > after_seq:
                    yield event
            if stop is not None and stop():
                return
            self._sleep(poll)

    def is_empty(self) -> bool:
        """No complete event yet: a missing file, or only a torn first line. Reads no further than the first newline."""
        self.sync()
        try:
            with open(self.path, "rb") as fh:
                while chunk := fh.read(1 << 16):
                    if b"\n" in chunk:
                        return False
        except FileNotFoundError:
            pass
        return True

    def state(self) -> RunState:
        """``replay(self.read())``."""
        return replay(self.read())

    def _scan(self, offset: int, lineno: int, last_seq: int) -> tuple[list[Event], int, int, int]:
        """Parse the complete lines after byte ``offset``.

        Returns ``(events, new_offset, new_lineno, new_last_seq)``; the new
        offset stops after the last ``\\n`` so a torn line is read again later.
        """
        try:
            with open(self.path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except FileNotFoundError:
            return [], offset, lineno, last_seq
        complete = data[: data.rfind(b"\n") + 1]
        events: list[Event] = []
        for line in complete.splitlines():
            lineno += 1
            event = _parse_line(line, f"{self.path}:{lineno}")
            if event.seq <= last_seq:
                raise JournalCorrupt(f"{self.path}:{lineno}: seq {event.seq} does not increase (previous seq {last_seq})")
            last_seq = event.seq
            events.append(event)
        return events, offset + len(complete), lineno, last_seq


def _parse_line(line: bytes, where: str) -> Event:
    """One journal line → Event; errors name ``where`` (path and line)."""
    try:
        raw = json.loads(line)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise JournalCorrupt(f"{where}: not valid JSON ({exc})") from exc
    try:
        return parse_event(raw)
    except JournalCorrupt as exc:
        raise JournalCorrupt(f"{where}: {exc.message}") from exc
    except EventVersionUnsupported as exc:
        raise EventVersionUnsupported(f"{where}: {exc.message}") from exc


def _last_newline(fd: int, before: int) -> int:
    """Offset of the last ``\\n`` in ``fd[:before]``, or -1; reads backwards in chunks."""
    pos = before
    while pos > 0:
        start = max(0, pos - _CHUNK)
        idx = os.pread(fd, pos - start, start).rfind(b"\n")
        if idx != -1:
            return start + idx
        pos = start
    return -1
