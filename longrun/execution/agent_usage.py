"""Usage read from a coding agent's own output, one line at a time (docs/agents.md).

One incremental parser per ``usage.format``. :func:`read_agent_usage` feeds a
parser the stage's own output — the bytes between the header and the footer
of ``command.log``, or for ``aider-analytics`` the analytics log — line by
line, so memory holds one line (or, for the pretty-printed ``gemini-json``,
one object), never the whole output.

Rules shared by every format:

* stdout and stderr share the log, so a line that does not start with ``{``
  or ``[`` is text, not a record, and is skipped;
* a line that starts like JSON but does not parse, or a record whose usage
  fields have the wrong type, is ``usage_invalid`` naming the line (number
  and text); a wrong number is never read as zero;
* a killed attempt (timeout, signal: ``cut``) may have torn its last line
  mid-write; that one line is skipped, and only that one;
* what a format reports is kept as reported: ``usd`` only when the tool
  reports USD (Claude, aider); tokens normalized to :class:`AgentUsage`.

The parsers themselves are in :mod:`longrun.execution.usage_parsers`.

Rate limits (``rate_limit``) are read as documented by each tool: Claude's
``rate_limit_event`` with a status other than ``allowed``/``allowed_warning``
(unless a successful result follows),
Codex's "You've hit your usage limit" error, Gemini's quota errors
(``RESOURCE_EXHAUSTED`` / 429).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from longrun.errors import LongrunError
from longrun.execution.usage_parsers import (
    AgentUsage,
    AiderParser,
    ClaudeParser,
    CodexParser,
    GeminiParser,
    RateLimitSeen,
    UsageParser,
    reset_in,
)

__all__ = ["PARSERS", "AgentUsage", "RateLimitSeen", "UsageParser", "iter_lines", "read_agent_usage", "reset_in"]

#: Longest line read as one record; a longer JSON-looking line is usage_invalid.
MAX_LINE = 16 << 20


#: usage format → how to make its parser (one entry per ``UsageCapture.format``).
PARSERS: dict[str, Callable[[str, datetime], UsageParser]] = {
    "claude-json": ClaudeParser,
    "claude-stream-json": ClaudeParser,
    "codex-jsonl": CodexParser,
    "gemini-json": lambda source, now: GeminiParser(source, now, multiline=True),
    "gemini-stream-json": lambda source, now: GeminiParser(source, now, multiline=False),
    "aider-analytics": AiderParser,
}


def iter_lines(path: Path, start: int = 0, end: int | None = None) -> Iterator[tuple[int, str, bool]]:
    """``(line number, text, whole)`` of bytes ``[start, end)``; ``whole`` is False for a line cut at MAX_LINE."""
    with open(path, "rb") as fh:
        fh.seek(start)
        pos, lineno = start, 0
        while end is None or pos < end:
            limit = MAX_LINE if end is None else min(MAX_LINE, end - pos)
            chunk = fh.readline(limit)
            if not chunk:
                return
            pos += len(chunk)
            whole = chunk.endswith(b"\n") or len(chunk) < limit or (end is not None and pos >= end)
            lineno += 1
            yield lineno, chunk.decode("utf-8", "replace").rstrip("\r\n"), whole
            if not whole:  # skip the rest of an overlong line
                while chunk and not chunk.endswith(b"\n") and (end is None or pos < end):
                    chunk = fh.readline(MAX_LINE if end is None else min(MAX_LINE, end - pos))
                    pos += len(chunk)


def read_agent_usage(
    fmt: str,
    path: Path,
    start: int = 0,
    end: int | None = None,
    *,
    now: datetime,
    source: str,
    cut: bool = False,
) -> AgentUsage:
    """Feed the lines of ``path`` (bytes ``[start, end)``) to the ``fmt`` parser; return what it found.

    ``cut``: the process was killed (timeout, signal), so its last line may be
    torn; a last line that does not parse is then skipped instead of failing.
    """
    parser = PARSERS[fmt](source, now)
    torn: LongrunError | None = None  # a line that did not parse; fatal unless it turns out to be the last
    pending: list[str] = []  # gemini-json: the lines of one pretty-printed object
    first = 0
    for lineno, text, whole in iter_lines(path, start, end):
        stripped = text.strip()
        if parser.multiline and (pending or text.startswith("{")):
            if not whole:
                raise parser.invalid(lineno, text, f"record longer than {MAX_LINE} bytes")
            first = first or lineno
            pending.append(text)
            if text.rstrip() == "}" or (len(pending) == 1 and stripped.endswith("}")):
                _feed(parser, "\n".join(pending), first)
                pending, first = [], 0
            elif sum(len(p) for p in pending) > MAX_LINE:
                raise parser.invalid(first, pending[0], f"record longer than {MAX_LINE} bytes")
            continue
        if not stripped:
            continue
        if torn is not None:
            raise torn
        if not stripped.startswith(("{", "[")):
            continue
        if not whole:
            raise parser.invalid(lineno, text, f"line longer than {MAX_LINE} bytes")
        try:
            record = json.loads(stripped)
        except json.JSONDecodeError as exc:
            torn = parser.invalid(lineno, stripped, f"not valid JSON ({exc.msg})")
            continue
        parser.feed(record, lineno, stripped)
    if torn is not None and not cut:
        raise torn
    if pending and not cut:
        raise parser.invalid(first, pending[0], "JSON object not closed before the output ended")
    return parser.finish()


def _feed(parser: UsageParser, text: str, lineno: int) -> None:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise parser.invalid(lineno, text.splitlines()[0] if text else text, f"not valid JSON ({exc.msg})") from None
    parser.feed(record, lineno, text if "\n" not in text else text.splitlines()[0])
