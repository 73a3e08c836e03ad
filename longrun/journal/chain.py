"""The journal's hash chain: each line names the sha256 of the line before it.

Every event carries ``prev``: the sha256 of the previous line exactly as it is
written (its UTF-8 bytes including the final ``\\n``), and for the first event
the spec's sha256 (``job_registered.spec_sha256``). So an edited, inserted,
deleted or reordered line breaks the chain at the first line after it, and a
third party checks it with ``sed -n 'Np' events.jsonl | sha256sum`` and ``jq``.
A deleted *tail* leaves a valid chain: it is caught by comparing the chain
head with one recorded outside the journal (the evidence manifest, the Prefect
events of the run).

Lines written before the chain have no ``prev``; :func:`check_chain` reports
such a journal (or its unchained beginning) as unchained, not as broken.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from hashlib import sha256
from typing import Any


def line_hash(line: bytes) -> str:
    """sha256 of one journal line as written (with its ``\\n``)."""
    return sha256(line).hexdigest()


def chain_link(previous_line: bytes | None, type_: str, payload: Any) -> str | None:
    """``prev`` of the event to append after ``previous_line`` (None: the journal is empty)."""
    if previous_line is not None:
        return line_hash(previous_line)
    if type_ == "job_registered":
        spec = payload.get("spec_sha256") if isinstance(payload, Mapping) else getattr(payload, "spec_sha256", None)
        return spec if isinstance(spec, str) else None
    return None


@dataclass(frozen=True)
class ChainReport:
    """What :func:`check_chain` found.

    ``ok``: nothing broken (an unchained journal is ok, and says so in
    ``chained``). ``broken_seq`` is the first line whose ``prev`` or ``seq`` does not
    follow from the line before it, with the ``reason``. ``head`` is the hash of
    the last line (what an outside record of the chain holds), ``heads`` the hash
    of every line by seq.
    """

    events: int
    chained: bool
    first_chained_seq: int | None
    broken_seq: int | None
    reason: str | None
    head: str | None
    heads: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.broken_seq is None

    def head_at(self, seq: int) -> str | None:
        """The hash of line ``seq`` (1-based), or None if the journal is shorter."""
        return self.heads[seq - 1] if 1 <= seq <= len(self.heads) else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "chained": self.chained,
            "first_chained_seq": self.first_chained_seq,
            "ok": self.ok,
            "broken_seq": self.broken_seq,
            "reason": self.reason,
            "head": self.head,
        }


def check_chain(data: bytes) -> ChainReport:
    """Check the chain and the ``seq`` order of a journal's complete lines (a torn last line is left out)."""
    lines = data.splitlines(keepends=True)
    if lines and not lines[-1].endswith(b"\n"):
        lines.pop()
    heads: list[str] = []
    first_chained: int | None = None
    broken: tuple[int, str] | None = None
    spec_sha: str | None = None
    previous: bytes | None = None
    for number, line in enumerate(lines, 1):
        heads.append(line_hash(line))
        if broken is not None:
            previous = line
            continue
        try:
            event = json.loads(line)
            seq, prev = event.get("seq"), event.get("prev")
        except (ValueError, AttributeError):
            broken = (number, f"line {number} is not a JSON event")
            continue
        if number == 1 and event.get("type") == "job_registered":
            spec_sha = (event.get("payload") or {}).get("spec_sha256")
        if seq != number:
            broken = (number, f"line {number} has seq {seq!r}: an event was deleted, inserted or moved")
        elif prev is None:
            if first_chained is not None:
                broken = (seq, f"seq {seq} has no prev although the chain started at seq {first_chained}")
        else:
            expected = line_hash(previous) if previous is not None else spec_sha
            if prev != expected:
                what = "the previous line" if previous is not None else "the spec (job_registered.spec_sha256)"
                broken = (seq, f"seq {seq}: prev does not match {what}: an event before it was edited, deleted or inserted")
            elif first_chained is None:
                first_chained = seq
        previous = line
    return ChainReport(
        events=len(lines),
        chained=bool(lines) and first_chained == 1,
        first_chained_seq=first_chained,
        broken_seq=broken[0] if broken else None,
        reason=broken[1] if broken else None,
        head=heads[-1] if heads else None,
        heads=tuple(heads),
    )
