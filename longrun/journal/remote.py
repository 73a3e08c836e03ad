"""The journal of a run on a remote job root: one object per event, appended by compare-and-set.

Layout below the root's prefix, for the journal ``jobs/<id>/events.jsonl`` of the mirror::

    jobs/<id>/events/000000000001.json   event seq 1: the exact bytes of its journal line
    jobs/<id>/events/000000000002.json   …
    jobs/<id>/segments/000000000001-000000000256.jsonl   events 1–256, concatenated

* **Append** is a conditional write of the next seq's object (``If-None-Match:
  *``). Two writers can never both write event N: the second gets ``412
  Precondition Failed`` and learns what was appended instead
  (:meth:`longrun.journal.local.Journal.append` decides whether to try again).
* **Read** lists from the mirror's last seq on (``StartAfter``), so following a
  journal or resuming a run costs what the journal gained, not its length.
* **Compaction**: every :data:`SEGMENT` events the appender also writes the
  block as one segment object. A reader that is far behind (a fresh machine)
  reads the segments and then the tail, one GET per segment instead of per
  event. Event objects are never deleted: they are what the compare-and-set
  of a slow writer collides with.

The bytes of each object are the journal line, so the hash chain
(:mod:`longrun.journal.chain`) is the same on disk, in the store and in a bundle.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from longrun.errors import JournalCorrupt, LongrunError
from longrun.storage.mirror import Remote, remote_error

__all__ = ["SEGMENT", "RemoteLog"]

#: Events per segment object.
SEGMENT = 256
_WIDTH = 12


def _seq_of(line: bytes, where: str) -> int:
    try:
        seq = json.loads(line)["seq"]
    except (ValueError, KeyError, TypeError):
        raise JournalCorrupt(f"{where}: not a journal event") from None
    if not isinstance(seq, int) or seq < 1:
        raise JournalCorrupt(f"{where}: seq {seq!r} is not a positive integer")
    return seq


class RemoteLog:
    """The store's copy of one journal (``rel``: the journal's path relative to ``.maestro/``)."""

    def __init__(self, remote: Remote, rel: str) -> None:
        self.remote = remote
        base = rel.rsplit("/", 1)[0]
        self.events = f"{base}/events/"
        self.segments = f"{base}/segments/"

    def __repr__(self) -> str:
        return f"RemoteLog({self.remote.url}/{self.events})"

    def key(self, seq: int) -> str:
        return f"{self.events}{seq:0{_WIDTH}d}.json"

    def put(self, seq: int, line: bytes) -> bool:
        """Write event ``seq`` unless it exists: True if this line is now event ``seq``."""
        try:
            return self.remote.store.put_bytes(self.key(seq), line, if_absent=True)
        except LongrunError as exc:
            raise remote_error(exc, f"append event {seq} to {self.remote.url}/{self.events}") from None

    def lines_after(self, seq: int) -> list[bytes]:
        """The lines of every event after ``seq``, in order and without gaps (each ending in ``\\n``)."""
        store = self.remote.store
        try:
            keys = store.list_keys(self.events, start_after=self.key(seq))
        except LongrunError as exc:
            raise remote_error(exc, f"list {self.remote.url}/{self.events}") from None
        wanted: list[int] = []
        for k in keys:
            name = k[len(self.events) :]
            if name.endswith(".json") and name[:-5].isdigit():
                wanted.append(int(name[:-5]))
        if not wanted:
            return []
        got: dict[int, bytes] = {}
        if len(wanted) > SEGMENT:
            got.update(self._from_segments(seq, wanted[-1]))
        missing = [n for n in wanted if n not in got]
        try:
            if len(missing) > 4:
                with ThreadPoolExecutor(max_workers=8) as pool:
                    bodies = list(pool.map(lambda n: store.get_bytes(self.key(n)), missing))
            else:
                bodies = [store.get_bytes(self.key(n)) for n in missing]
        except LongrunError as exc:
            raise remote_error(exc, f"read {self.remote.url}/{self.events}") from None
        for n, body in zip(missing, bodies, strict=True):
            if body is None:
                raise JournalCorrupt(f"{self.remote.url}/{self.key(n)} was listed but cannot be read")
            got[n] = body
        out: list[bytes] = []
        expect = seq + 1
        for n in sorted(got):
            if n < expect:
                continue
            if n != expect:
                raise JournalCorrupt(f"{self.remote.url}/{self.events}: event {expect} is missing (next is {n})")
            line = got[n]
            where = f"{self.remote.url}/{self.key(n)}"
            if not line.endswith(b"\n") or b"\n" in line[:-1]:
                raise JournalCorrupt(f"{where}: not one journal line")
            if _seq_of(line, where) != n:
                raise JournalCorrupt(f"{where}: holds event {_seq_of(line, where)}, not {n}")
            out.append(line)
            expect += 1
        return out

    def _from_segments(self, after: int, upto: int) -> dict[int, bytes]:
        """Lines ``after < seq <= upto`` that segment objects hold."""
        out: dict[int, bytes] = {}
        try:
            for k in self.remote.store.list_keys(self.segments):
                first, _, last = k[len(self.segments) :].removesuffix(".jsonl").partition("-")
                if not (first.isdigit() and last.isdigit()) or int(last) <= after or int(first) > upto:
                    continue
                body = self.remote.store.get_bytes(k) or b""
                for line in body.splitlines(keepends=True):
                    n = _seq_of(line, f"{self.remote.url}/{k}")
                    if after < n <= upto:
                        out[n] = line
        except LongrunError as exc:
            raise remote_error(exc, f"read {self.remote.url}/{self.segments}") from None
        return out

    def compact(self, last: int, lines: list[bytes]) -> None:
        """Write the segment ending at ``last`` (a multiple of :data:`SEGMENT`) from its ``lines``. Best effort."""
        first = last - SEGMENT + 1
        key = f"{self.segments}{first:0{_WIDTH}d}-{last:0{_WIDTH}d}.jsonl"
        try:
            self.remote.store.put_bytes(key, b"".join(lines), if_absent=True)
        except LongrunError:
            pass  # segments only save reads; the event objects are the journal
