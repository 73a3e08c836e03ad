"""Agent usage formats read from recorded outputs (tests/fixtures/agents), and their prices.

Each recording follows the tool's documented format (see the fixture README and
docs/agents.md for the sources). The expected numbers are worked out by hand
in the comments, to the token and to the cent.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from longrun.errors import LongrunError
from longrun.execution.agent_usage import read_agent_usage, reset_in
from longrun.execution.pricing import TokenCounts, compute_usd, price_for, shipped_prices
from longrun.spec.models import ModelPrice

AGENTS = Path(__file__).resolve().parents[1] / "fixtures" / "agents"
NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def read(fmt: str, rel: str, tmp_path: Path | None = None, text: str | None = None):
    path = AGENTS / rel
    if text is not None and tmp_path is not None:
        path = tmp_path / "out.log"
        path.write_text(text)
    return read_agent_usage(fmt, path, now=NOW, source=f"test ({fmt})")


# ------------------------------------------------------------------ claude


@pytest.mark.parametrize(("fmt", "rel"), [("claude-stream-json", "claude/stream.jsonl"), ("claude-json", "claude/result.json")])
def test_claude_result_is_authoritative(fmt, rel):
    u = read(fmt, rel)
    assert u.found and u.usd == 0.0342445  # total_cost_usd: sonnet 0.0337275 + haiku 0.000517
    # input = input 8 + cache writes 4730 + cache reads 27820
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens) == (32558, 508, 27820, 4730)
    assert u.tokens == 33066
    assert u.model == "claude-sonnet-4-5-20250929", "the model with the largest costUSD in modelUsage"
    assert u.rate_limit is None, "status allowed is no rate limit"


def test_claude_stream_without_a_result_sums_assistant_usage_once_per_message_id(tmp_path):
    lines = (AGENTS / "claude" / "stream.jsonl").read_text().splitlines()
    killed = "\n".join(line for line in lines if '"type":"result"' not in line) + "\n"
    u = read("claude-stream-json", "", tmp_path, killed)
    # msg_01AbCdEf appears twice (parallel tool calls) and counts once: 3+4120+11850 + 5+610+15970.
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens) == (32558, 508, 27820, 4730)
    assert u.usd is None, "no result: no reported USD (the stage prices it)"
    assert u.model == "claude-sonnet-4-5-20250929"
    assert u.found


def test_claude_json_as_an_array_of_messages(tmp_path):
    lines = (AGENTS / "claude" / "stream.jsonl").read_text().splitlines()
    u = read("claude-json", "", tmp_path, "[" + ",".join(lines) + "]\n")
    assert u.usd == 0.0342445 and u.input_tokens == 32558


def test_claude_rate_limit_event_rejected_carries_the_reset(tmp_path):
    text = (AGENTS / "claude" / "rate_limited.jsonl").read_text().replace("__RESETS_AT__", "1795000000")
    u = read("claude-stream-json", "", tmp_path, text)
    assert u.rate_limit is not None
    assert u.rate_limit.resets_at == datetime.fromtimestamp(1795000000, UTC)
    assert u.rate_limit.kind == "five_hour"
    assert u.usd == 0.0 and u.tokens == 0
    assert u.model is None, "the <synthetic> model of the limit message is not a model used"


def test_claude_reset_in_milliseconds_is_read_as_such(tmp_path):
    text = '{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":1795000000000}}\n'
    assert read("claude-stream-json", "", tmp_path, text).rate_limit.resets_at == datetime.fromtimestamp(1795000000, UTC)


def test_allowed_warning_is_not_a_rate_limit(tmp_path):
    text = '{"type":"rate_limit_event","rate_limit_info":{"status":"allowed_warning","utilization":0.9}}\n'
    assert read("claude-stream-json", "", tmp_path, text).rate_limit is None


# ------------------------------------------------------------------ codex


def test_codex_turn_completed():
    u = read("codex-jsonl", "codex/exec.jsonl")
    # input includes the cached part; output includes reasoning (640 of 1240).
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens) == (24763, 1240, 19840, 0)
    assert u.usd is None and u.model is None and u.found


def test_codex_totals_are_cumulative_the_last_turn_wins(tmp_path):
    text = (
        '{"type":"turn.completed","usage":{"input_tokens":100,"cached_input_tokens":0,"output_tokens":10}}\n'
        '{"type":"turn.completed","usage":{"input_tokens":250,"cached_input_tokens":100,"output_tokens":30}}\n'
    )
    u = read("codex-jsonl", "", tmp_path, text)
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens) == (250, 30, 100)


def test_codex_usage_limit_message_is_a_rate_limit():
    u = read("codex-jsonl", "codex/usage_limit.jsonl")
    assert u.rate_limit is not None and u.rate_limit.kind == "usage_limit"
    assert u.rate_limit.resets_at == NOW + timedelta(seconds=2)
    assert not u.found


def test_reset_in_reads_the_durations_the_tools_print():
    assert reset_in("or try again in 3 days 6 hours 57 minutes.", NOW) == NOW + timedelta(days=3, hours=6, minutes=57)
    assert reset_in("Please retry in 37.5s.", NOW) == NOW + timedelta(seconds=37.5)
    assert reset_in("try again at 3:28 PM.", NOW) is None


# ------------------------------------------------------------------ gemini


def test_gemini_stream_result_stats():
    u = read("gemini-stream-json", "gemini/stream.jsonl")
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens) == (20480, 910, 12288)
    assert u.model == "gemini-2.5-pro" and u.usd is None and u.by_model is None


def test_gemini_json_pretty_printed_per_model_stats():
    u = read("gemini-json", "gemini/output.json")
    # pro 20480 + flash 1500 in; out = candidates + thoughts: 910 + 260 + 40.
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens) == (21980, 1210, 12288)
    assert u.model == "gemini-2.5-pro"
    assert u.by_model == {"gemini-2.5-pro": (20480, 1170, 12288, 0), "gemini-2.5-flash": (1500, 40, 0, 0)}


def test_gemini_quota_error_is_a_rate_limit():
    u = read("gemini-stream-json", "gemini/quota.jsonl")
    assert u.rate_limit is not None and u.rate_limit.kind == "quota"
    assert u.rate_limit.resets_at == NOW + timedelta(seconds=37.5)


# ------------------------------------------------------------------ aider


def test_aider_analytics_message_send_events_are_summed():
    u = read("aider-analytics", "aider/analytics.jsonl")
    assert (u.input_tokens, u.output_tokens) == (13244, 600)
    assert u.usd == pytest.approx(0.048732, abs=1e-12)
    assert u.model == "claude-sonnet-4-5-20250929"


# ------------------------------------------------------------------ malformed and missing


@pytest.mark.parametrize(
    ("fmt", "text", "line", "why"),
    [
        ("claude-stream-json", '{"type":"system"}\n{"type":"result","usage":{"input_tokens":\n', 2, "not valid JSON"),
        ("claude-stream-json", '{"type":"result","usage":{"input_tokens":-3}}\n', 1, "input_tokens must be an integer >= 0"),
        ("claude-stream-json", '{"type":"result","total_cost_usd":"0.1","usage":{}}\n', 1, "total_cost_usd must be a finite"),
        ("codex-jsonl", 'noise\n{"type":"turn.completed","usage":{"input_tokens":"12"}}\n', 2, "input_tokens must be"),
        ("gemini-json", '{\n  "stats": {\n', 1, "JSON object not closed"),
        ("aider-analytics", '{"event": "message_send", "properties": {"prompt_tokens": 1.5}}\n', 1, "prompt_tokens"),
    ],
)
def test_a_malformed_line_is_usage_invalid_naming_the_line(tmp_path, fmt, text, line, why):
    with pytest.raises(LongrunError) as err:
        read(fmt, "", tmp_path, text)
    assert err.value.code == "usage_invalid"
    assert f"line {line}:" in err.value.message and why in err.value.message


def test_text_lines_around_the_records_are_skipped(tmp_path):
    text = "Warning: something on stderr\n" + (AGENTS / "codex" / "exec.jsonl").read_text() + "done.\n"
    assert read("codex-jsonl", "", tmp_path, text).input_tokens == 24763


def test_output_without_usage_is_not_found(tmp_path):
    u = read("claude-stream-json", "", tmp_path, "Error: could not connect\n")
    assert not u.found and u.tokens == 0 and u.usd is None


# ------------------------------------------------------------------ prices


def test_the_shipped_price_table_is_versioned_and_valid():
    version, table = shipped_prices()
    assert version and len(table) >= 10
    assert all(isinstance(p, ModelPrice) for p in table.values())


def test_prices_match_the_longest_prefix_and_drop_a_provider():
    p = price_for("claude-sonnet-4-5-20250929")
    assert (p.input, p.output, p.cache_read, p.cache_write) == (3.0, 15.0, 0.3, 3.75)
    assert price_for("gpt-5-codex").input == 1.25 and price_for("openai/gpt-5-mini").input == 0.25
    assert price_for("gemini-2.5-flash-lite").input == 0.1, "longest key wins over gemini-2.5-flash"
    assert price_for("no-such-model") is None


def test_computed_cost_to_the_cent_and_spec_overrides():
    # codex recording: 4923 uncached x 1.25 + 19840 cached x 0.125 + 1240 out x 10 per million
    usd, version = compute_usd("gpt-5-codex", TokenCounts(input=24763, output=1240, cache_read=19840))
    assert usd == 0.02103375 and version == shipped_prices()[0]
    own = {"gpt-5-codex": ModelPrice(input=2.0, output=20.0)}
    usd, version = compute_usd("gpt-5-codex", TokenCounts(input=1_000_000, output=1_000_000, cache_read=500_000), own)
    assert (usd, version) == (22.0, "spec"), "cache_read defaults to the input price"


def test_an_unpriced_model_is_refused_not_counted_as_zero():
    with pytest.raises(LongrunError) as err:
        compute_usd("mystery-model-1", TokenCounts(input=10))
    assert err.value.code == "usage_unpriced" and "model_prices" in err.value.message


def test_a_torn_last_line_of_a_killed_run_is_skipped_but_not_a_torn_line_in_the_middle(tmp_path):
    whole = (AGENTS / "codex" / "exec.jsonl").read_text()
    torn = whole + '{"type":"item.completed","item":{"id":"item_4","ty'
    path = tmp_path / "torn.log"
    path.write_text(torn)
    u = read_agent_usage("codex-jsonl", path, now=NOW, source="t", cut=True)
    assert u.input_tokens == 24763, "the usage before the tear counts"
    with pytest.raises(LongrunError, match="line 9: not valid JSON"):
        read_agent_usage("codex-jsonl", path, now=NOW, source="t", cut=False)
    path.write_text('{"type":"turn.started"\n' + whole)
    with pytest.raises(LongrunError, match="line 1: not valid JSON"):
        read_agent_usage("codex-jsonl", path, now=NOW, source="t", cut=True)


def test_a_claude_limit_that_did_not_stop_the_run_is_not_waited_for(tmp_path):
    lines = (AGENTS / "claude" / "stream.jsonl").read_text().replace('"status":"allowed"', '"status":"rejected"')
    u = read("claude-stream-json", "", tmp_path, lines)
    assert u.rate_limit is None and u.usd == 0.0342445, "is_error false: the work got done"


def test_every_usage_format_of_the_spec_has_a_parser():
    from typing import get_args

    from longrun.execution.agent_usage import PARSERS
    from longrun.spec.models import UsageFormat

    assert sorted(PARSERS) == sorted(get_args(UsageFormat))
