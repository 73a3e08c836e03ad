"""What an evidence bundle holds and how its manifest is typed: names and readers shared by build and verify."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path, PurePosixPath

from longrun.errors import JournalCorrupt
from longrun.journal.events import Event, parse_event
from longrun.storage.paths import MAESTRO

MANIFEST_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://longrun.dev/evidence/v1"

#: The governed waiver (SPEC G2), relative to the root, and its member name.
WAIVER_FILE = PurePosixPath(MAESTRO, "waivers", "longrun.json")
WAIVER_MEMBER = "waivers/longrun.json"
EVENTS_MEMBER = "events.jsonl"
SPEC_MEMBER = "spec.json"
CHECKPOINTS_MEMBER = "checkpoints"

#: Directories under ``checkpoints/<iter>/`` that hold only transient files.
TRANSIENT_DIRS = frozenset({"running"})

CHUNK = 1 << 20
#: zlib level: 6 is zlib's own default, a fair trade of speed for size.
GZIP_LEVEL = 6
FILE_MODE = 0o644
#: Gate evidence keys copied into the manifest (the journal has the rest).
GATE_SUMMARY_KEYS = (
    "exit_code",
    "timed_out",
    "tests",
    "passed",
    "failed",
    "errors",
    "skipped",
    "pass_rate",
    "matched",
    "path",
    "reason",
)


def journal_snapshot(path: Path) -> bytes:
    """The journal up to its last complete line (a line being appended is left out)."""
    data = path.read_bytes()
    return data[: data.rfind(b"\n") + 1]


def parse_journal(data: bytes, path: Path) -> list[Event]:
    events: list[Event] = []
    for lineno, line in enumerate(data.splitlines(), 1):
        try:
            events.append(parse_event(json.loads(line)))
        except ValueError as exc:
            raise JournalCorrupt(f"{path}:{lineno}: not valid JSON ({exc})") from exc
        except JournalCorrupt as exc:
            raise JournalCorrupt(f"{path}:{lineno}: {exc.message}") from exc
    return events


def is_regular(path: Path) -> bool:
    """A regular file and not a symlink (links are never followed into a bundle)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
