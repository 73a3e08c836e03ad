"""The usage parsers of the agent formats: one incremental class per tool (docs/agents.md).

A parser is fed one JSON record at a time (``feed``) and says what the output
reported (``finish``): tokens normalized to :class:`AgentUsage` (``input``
counts every prompt token, cached or not; ``output`` includes reasoning),
USD only when the tool reports it, the model used, and a rate limit. A usage
field of the wrong type is ``usage_invalid`` naming the line. The driver that
reads the output line by line is :func:`longrun.execution.agent_usage.read_agent_usage`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from longrun.errors import LongrunError

__all__ = [
    "AgentUsage",
    "AiderParser",
    "ClaudeParser",
    "CodexParser",
    "GeminiParser",
    "RateLimitSeen",
    "UsageParser",
    "reset_in",
]

_SHOWN = 200


@dataclass(frozen=True)
class RateLimitSeen:
    """A rate limit the output reported: when it resets (None: not said) and what kind."""

    resets_at: datetime | None
    kind: str | None
    message: str


@dataclass
class AgentUsage:
    """What one stage run's output says it used. ``found`` is False when no usage record was seen."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    usd: float | None = None
    model: str | None = None
    found: bool = False
    rate_limit: RateLimitSeen | None = None
    #: model → (input, output, cache_read, cache_write) when the tool reports several models' tokens
    #: separately (gemini-json), so each is priced at its own price.
    by_model: dict[str, tuple[int, int, int, int]] | None = None

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class UsageParser:
    """Base: ``feed(record, lineno)`` each JSON record, then ``finish()``."""

    #: The format reads pretty-printed JSON objects spanning lines (gemini-json).
    multiline = False

    def __init__(self, source: str, now: datetime) -> None:
        self.source = source
        self.now = now
        self.usage = AgentUsage()

    def feed(self, record: Any, lineno: int, line: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def finish(self) -> AgentUsage:
        return self.usage

    def invalid(self, lineno: int, line: str, why: str) -> LongrunError:
        shown = line if len(line) <= _SHOWN else line[:_SHOWN] + "…"
        return LongrunError(f"{self.source} line {lineno}: {why}: {shown}", code="usage_invalid")

    def int_field(self, obj: Any, key: str, lineno: int, line: str, *, default: int | None = 0) -> int:
        value = obj.get(key, default) if isinstance(obj, dict) else default
        if value is None and default is None:
            return 0
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.invalid(lineno, line, f"{key} must be an integer >= 0, got {value!r}")
        return value

    def usd_field(self, obj: dict, key: str, lineno: int, line: str) -> float:
        value = obj.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise self.invalid(lineno, line, f"{key} must be a finite number >= 0, got {value!r}")
        return float(value)

    def epoch(self, value: Any) -> datetime | None:
        """A reset time given as Unix seconds (or milliseconds) or ISO 8601."""
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
            return datetime.fromtimestamp(value / 1000 if value > 1e11 else value, UTC)
        if isinstance(value, str):
            try:
                ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                return None
            return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
        return None


class ClaudeParser(UsageParser):
    """``claude -p --output-format json|stream-json``.

    The ``result`` message is authoritative: ``total_cost_usd``, ``usage``
    (``input_tokens`` uncached, ``cache_creation_input_tokens``,
    ``cache_read_input_tokens``, ``output_tokens``) and ``modelUsage`` (the
    model with the largest ``costUSD`` is the model used). Without a result (a
    killed run), the ``assistant`` messages' usage is summed, each message id
    once — parallel tool calls repeat a message with the same id and usage.
    ``json`` may print one result object or an array of messages.
    """

    def __init__(self, source: str, now: datetime) -> None:
        super().__init__(source, now)
        self.by_message: dict[str, tuple[int, int, int, int]] = {}
        self.message_model: str | None = None
        self.result_seen = False
        self.result_error = False

    def feed(self, record: Any, lineno: int, line: str) -> None:
        for msg in record if isinstance(record, list) else [record]:
            if isinstance(msg, dict):
                self._message(msg, lineno, line)

    def _tokens(self, usage: Any, lineno: int, line: str) -> tuple[int, int, int, int]:
        if not isinstance(usage, dict):
            raise self.invalid(lineno, line, f"usage must be an object, got {usage!r}")
        f = self.int_field
        cw = f(usage, "cache_creation_input_tokens", lineno, line, default=None)
        cr = f(usage, "cache_read_input_tokens", lineno, line, default=None)
        return (f(usage, "input_tokens", lineno, line) + cw + cr, f(usage, "output_tokens", lineno, line), cr, cw)

    def _message(self, msg: dict, lineno: int, line: str) -> None:
        kind = msg.get("type")
        if kind == "assistant" and isinstance(msg.get("message"), dict) and "usage" in msg["message"]:
            m = msg["message"]
            key = str(m.get("id") or f"line-{lineno}")
            self.by_message[key] = self._tokens(m["usage"], lineno, line)
            if isinstance(m.get("model"), str) and not m["model"].startswith("<"):
                self.message_model = m["model"]
        elif kind == "result":
            self._result(msg, lineno, line)
        elif kind == "rate_limit_event":
            nested = msg.get("rate_limit_info")
            info: dict = nested if isinstance(nested, dict) else msg
            status = info.get("status")
            if status not in ("allowed", "allowed_warning"):
                kind_ = info.get("rateLimitType")
                self.usage.rate_limit = RateLimitSeen(
                    resets_at=self.epoch(info.get("resetsAt")),
                    kind=kind_ if isinstance(kind_, str) else None,
                    message=f"rate_limit_event status={status!r}",
                )

    def _result(self, msg: dict, lineno: int, line: str) -> None:
        u = self.usage
        u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens = self._tokens(
            msg.get("usage", {}), lineno, line
        )
        if "total_cost_usd" in msg:
            u.usd = self.usd_field(msg, "total_cost_usd", lineno, line)
        models = msg.get("modelUsage")
        if isinstance(models, dict) and models:
            costs = {name: v.get("costUSD", 0) if isinstance(v, dict) else 0 for name, v in models.items()}
            u.model = max(costs, key=lambda n: costs[n] if isinstance(costs[n], (int, float)) else 0)
        u.found = self.result_seen = True
        self.result_error = msg.get("is_error") is True

    def finish(self) -> AgentUsage:
        u = self.usage
        if self.result_seen and not self.result_error:
            # A limit reported on the way (another window, overage) that did not stop the run:
            # the work got done, so there is nothing to wait for or redo.
            u.rate_limit = None
        if not self.result_seen and self.by_message:
            parts = list(self.by_message.values())
            u.input_tokens = sum(p[0] for p in parts)
            u.output_tokens = sum(p[1] for p in parts)
            u.cache_read_tokens = sum(p[2] for p in parts)
            u.cache_write_tokens = sum(p[3] for p in parts)
            u.found = True
        if u.model is None:
            u.model = self.message_model
        return u


_CODEX_LIMIT = re.compile(r"usage limit|rate limit", re.IGNORECASE)
_IN_DURATION = re.compile(r"(?:try again|retry|resets?) in\s+((?:\d+(?:\.\d+)?\s*[a-z]+[\s,]*)+)", re.IGNORECASE)
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def reset_in(message: str, now: datetime) -> datetime | None:
    """``now`` plus a duration said in a message ("try again in 3 days 2 hours", "retry in 37.5s")."""
    m = _IN_DURATION.search(message)
    if not m:
        return None
    seconds = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", m.group(1), re.IGNORECASE):
        u = unit.lower()
        key = "m" if u.startswith("min") else ("s" if u.startswith("s") or u == "ms" else u[0])
        if u == "ms":
            seconds += float(amount) / 1000
        elif key in _UNITS:
            seconds += float(amount) * _UNITS[key]
    return now + timedelta(seconds=seconds) if seconds else None


class CodexParser(UsageParser):
    """``codex exec --json``: ``turn.completed`` carries the session's cumulative ``usage``; the last one wins.

    ``input_tokens`` includes ``cached_input_tokens`` and ``output_tokens``
    includes ``reasoning_output_tokens`` (OpenAI's convention; codex's own
    ``blended_total`` is non-cached input + output). No USD, no model: the
    model is the one the stage passed (``--model {model}``).
    """

    def feed(self, record: Any, lineno: int, line: str) -> None:
        if not isinstance(record, dict):
            return
        kind = record.get("type")
        if kind == "turn.completed":
            usage = record.get("usage")
            if not isinstance(usage, dict):
                raise self.invalid(lineno, line, f"turn.completed usage must be an object, got {usage!r}")
            f, u = self.int_field, self.usage
            u.input_tokens = f(usage, "input_tokens", lineno, line)
            u.cache_read_tokens = f(usage, "cached_input_tokens", lineno, line)
            u.output_tokens = f(usage, "output_tokens", lineno, line)
            f(usage, "reasoning_output_tokens", lineno, line)  # a part of output_tokens: checked, not added
            u.found = True
        elif kind in ("error", "turn.failed"):
            nested = record.get("error")
            err: dict = nested if isinstance(nested, dict) else record
            message = err.get("message")
            if isinstance(message, str) and _CODEX_LIMIT.search(message):
                self.usage.rate_limit = RateLimitSeen(reset_in(message, self.now), "usage_limit", message[:_SHOWN])


_GEMINI_LIMIT = re.compile(r"RESOURCE_EXHAUSTED|quota|rate limit|\b429\b", re.IGNORECASE)


class GeminiParser(UsageParser):
    """``gemini --output-format json|stream-json``.

    json: one pretty-printed object whose ``stats.models[name].tokens`` has
    ``prompt`` (all input), ``cached``, ``candidates`` and ``thoughts`` (both
    output). stream-json: the ``init`` event names the model; the ``result``
    event's ``stats`` has ``input_tokens`` (all input), ``cached`` and
    ``output_tokens``. No USD. Quota errors (``RESOURCE_EXHAUSTED``, 429) are
    rate limits; "retry in Ns" in the message gives the reset.
    """

    def __init__(self, source: str, now: datetime, *, multiline: bool) -> None:
        super().__init__(source, now)
        self.multiline = multiline

    def feed(self, record: Any, lineno: int, line: str) -> None:
        if not isinstance(record, dict):
            return
        kind = record.get("type")
        if kind == "init" and isinstance(record.get("model"), str):
            self.usage.model = record["model"]
        stats = record.get("stats")
        if isinstance(stats, dict) and (kind == "result" or kind is None):
            self._stats(stats, lineno, line)
        err = record.get("error") if isinstance(record.get("error"), dict) else (record if kind == "error" else None)
        if isinstance(err, dict) and isinstance(err.get("message"), str) and _GEMINI_LIMIT.search(err["message"]):
            msg = err["message"]
            self.usage.rate_limit = RateLimitSeen(reset_in(msg, self.now), "quota", msg[:_SHOWN])

    def _stats(self, stats: dict, lineno: int, line: str) -> None:
        f, u = self.int_field, self.usage
        models = stats.get("models")
        if isinstance(models, dict) and models:
            totals: dict[str, int] = {}
            u.by_model = {}
            u.input_tokens = u.output_tokens = u.cache_read_tokens = 0
            for name, m in models.items():
                t = m.get("tokens") if isinstance(m, dict) else None
                if not isinstance(t, dict):
                    raise self.invalid(lineno, line, f"stats.models[{name!r}].tokens must be an object")
                prompt, out = f(t, "prompt", lineno, line), f(t, "candidates", lineno, line) + f(t, "thoughts", lineno, line)
                cached = f(t, "cached", lineno, line)
                u.input_tokens += prompt
                u.output_tokens += out
                u.cache_read_tokens += cached
                u.by_model[name] = (prompt, out, cached, 0)
                totals[name] = prompt + out
            u.model = max(totals, key=lambda n: totals[n])
            u.found = True
        elif "input_tokens" in stats or "output_tokens" in stats:
            u.input_tokens = f(stats, "input_tokens", lineno, line)
            u.output_tokens = f(stats, "output_tokens", lineno, line)
            u.cache_read_tokens = f(stats, "cached", lineno, line)
            u.found = True


class AiderParser(UsageParser):
    """aider's ``--analytics-log``: each ``message_send`` event's ``properties`` carry
    ``prompt_tokens``, ``completion_tokens``, ``cost`` (this message) and
    ``main_model``; they are summed. aider itself retries provider rate limits.
    """

    def feed(self, record: Any, lineno: int, line: str) -> None:
        if not isinstance(record, dict) or record.get("event") != "message_send":
            return
        props = record.get("properties")
        if not isinstance(props, dict):
            raise self.invalid(lineno, line, "message_send without properties")
        u, f = self.usage, self.int_field
        u.input_tokens += f(props, "prompt_tokens", lineno, line)
        u.output_tokens += f(props, "completion_tokens", lineno, line)
        if "cost" in props:
            u.usd = round((u.usd or 0.0) + self.usd_field(props, "cost", lineno, line), 12)
        if isinstance(props.get("main_model"), str):
            u.model = props["main_model"]
        u.found = True
