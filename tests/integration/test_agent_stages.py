"""Agent stages run for real (``longrun.execution.stages.run_stage``): fake agents on PATH, real subprocesses.

No Prefect: a job is registered and its workspace created from a template, as
in test_gates.py; each stage attempt is a real process of the fake agent
(tests/fixtures/agents/bin), which replays a recorded output in its tool's
documented format. What is checked is what the stage record says it used.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_job

from longrun.engine.preflight import ensure_workspace
from longrun.errors import LongrunError
from longrun.execution.runtime import JobRuntime
from longrun.execution.stages import run_stage
from longrun.journal.registry import register
from longrun.spec import load_spec
from longrun.spec.compile import compile_spec

FAKE_BIN = Path(__file__).resolve().parents[1] / "fixtures" / "agents" / "bin"

PROMPT = "Goal: {goal}\nIteration {iteration}\nFailures:\n{previous_failures}\nKeep {braces} and {goal.__class__}.\n"


@pytest.fixture(autouse=True)
def fake_agents_on_path(monkeypatch):
    monkeypatch.setenv("PATH", f"{FAKE_BIN}:{__import__('os').environ['PATH']}")


def job(
    tmp_path: Path, stages: str, extra: str = "", policy: str = "{default: claude-sonnet-4-5, execute: gpt-5-codex}"
) -> JobRuntime:
    tmp_path.mkdir(parents=True, exist_ok=True)
    spec = write_job(
        tmp_path,
        f"""
name: agent-stages
goal: make the tests pass
workspace: {{path: ws, template: template}}
allowed_tools: [python]
model_policy: {policy}
# The fake agents count their calls in FAKE_AGENT_DIR, outside the workspace (read-only in the sandbox).
sandbox: none
{stages}
{extra}
""",
        {"PROMPT.md": PROMPT},
    )
    loaded = load_spec(spec)
    register(loaded, tmp_path)
    ensure_workspace(loaded, tmp_path, spec.parent)
    return JobRuntime(loaded=loaded, root=tmp_path, run_id="agent-stage-test")


def stage(rt: JobRuntime, stage_id: str, iteration: int = 1):
    planned = next(s for s in compile_spec(rt.spec).stages if s.id == stage_id)
    rt.paths.iteration_dir(iteration).mkdir(parents=True, exist_ok=True)
    record, _ = run_stage(rt, planned, iteration, 1)
    return record


def test_each_format_is_read_from_the_stage_output(tmp_path):
    state = tmp_path / "agent-state"
    env = f'env: {{FAKE_AGENT_DIR: "{state}"}}'
    rt = job(
        tmp_path,
        f"""
stages:
  - {{id: claude, agent: claude, {env}}}
  - {{id: claude-json, agent: claude, run: [claude, -p, "{{prompt}}", --output-format, json], {env}}}
  - {{id: codex, phase: execute, agent: codex, {env}}}
  - {{id: gemini, agent: gemini, {env}}}
  - {{id: gemini-json, agent: gemini, run: [gemini, -o, json, -p, "{{prompt}}"], usage: {{format: gemini-json}}, {env}}}
  - {{id: aider, agent: aider, {env}}}
""",
    )
    claude = stage(rt, "claude")
    assert claude.ok and claude.rate_limit is None
    u = claude.usage
    assert (u.usd, u.usd_source, u.prices_version, u.format) == (0.0342445, "reported", None, "claude-stream-json")
    assert (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens, u.tokens) == (
        32558,
        508,
        27820,
        4730,
        33066,
    )
    assert u.model == "claude-sonnet-4-5-20250929"
    assert stage(rt, "claude-json").usage.usd == 0.0342445

    codex = stage(rt, "codex").usage
    assert (codex.usd, codex.usd_source, codex.model) == (0.02103375, "computed", "gpt-5-codex")
    assert codex.prices_version and codex.prices_version != "spec"
    assert (codex.input_tokens, codex.output_tokens, codex.cache_read_tokens, codex.tokens) == (24763, 1240, 19840, 26003)

    gemini = stage(rt, "gemini").usage
    # 8192 uncached x 1.25 + 12288 cached x 0.125 + 910 out x 10, per million
    assert (gemini.usd, gemini.model, gemini.tokens) == (0.020876, "gemini-2.5-pro", 21390)
    gemini_json = stage(rt, "gemini-json").usage
    # pro: 8192 x 1.25 + 12288 x 0.125 + 1170 x 10; flash: 1500 x 0.30 + 40 x 2.50 — each at its own price
    assert (gemini_json.usd, gemini_json.tokens, gemini_json.format) == (0.024026, 23190, "gemini-json")

    aider = stage(rt, "aider").usage
    assert (aider.usd, aider.usd_source, aider.input_tokens, aider.output_tokens) == (0.048732, "reported", 13244, 600)

    # What the agents were given: the preset argv with the prompt rendered from PROMPT.md.
    argv = json.loads((state / "codex-1.argv.json").read_text())
    assert argv[:5] == ["exec", "--json", "--full-auto", "--model", "gpt-5-codex"]
    assert argv[-1] == (
        "Goal: make the tests pass\nIteration 1\nFailures:\nnone (first iteration)\nKeep {braces} and {goal.__class__}.\n"
    )
    aider_argv = json.loads((state / "aider-1.argv.json").read_text())
    log = aider_argv[aider_argv.index("--analytics-log") + 1]
    assert log.endswith("/1/usage/aider.analytics.jsonl")


def test_a_rate_limited_run_carries_the_reset(tmp_path):
    rt = job(tmp_path, "stages:\n  - {id: claude, agent: claude, env: {FAKE_AGENT_RATE_LIMIT_FIRST: '120'}}\n")
    record = stage(rt, "claude")
    assert record.exit_code == 1
    assert record.rate_limit is not None and record.rate_limit.kind == "five_hour"
    assert record.rate_limit.resets_at is not None
    assert record.usage.usd == 0.0 and record.usage.model == "claude-sonnet-4-5"


def test_a_malformed_line_fails_with_usage_invalid_naming_it(tmp_path):
    rt = job(tmp_path, "stages:\n  - {id: claude, agent: claude, env: {FAKE_AGENT_MALFORMED: '1'}}\n")
    with pytest.raises(LongrunError) as err:
        stage(rt, "claude")
    assert err.value.code == "usage_invalid"
    assert "line 9: not valid JSON" in err.value.message and '{"type":"result"' in err.value.message


def test_missing_usage_is_usage_missing_when_required_and_journaled_as_none_otherwise(tmp_path):
    rt = job(
        tmp_path,
        """
stages:
  - {id: quiet, run: [python, -c, "print('no json here')"], usage: {format: codex-jsonl, required: true}}
  - {id: lenient, run: [python, -c, "print('no json here')"], usage: {format: codex-jsonl}}
""",
    )
    with pytest.raises(LongrunError) as err:
        stage(rt, "quiet")
    assert err.value.code == "usage_missing"
    u = stage(rt, "lenient").usage
    assert (u.usd, u.tokens, u.usd_source, u.format) == (0.0, 0, "none", "codex-jsonl")


def test_a_token_only_tool_on_an_unpriced_model_is_usage_unpriced_unless_the_spec_prices_it(tmp_path):
    stages = "stages:\n  - {id: codex, agent: codex}\n"
    rt = job(tmp_path / "a", stages, policy="{default: house-model}")
    with pytest.raises(LongrunError) as err:
        stage(rt, "codex")
    assert err.value.code == "usage_unpriced"
    rt = job(
        tmp_path / "b",
        stages,
        "model_prices: {house-model: {input: 1.0, output: 2.0, cache_read: 0.5}}",
        policy="{default: house-model}",
    )
    u = stage(rt, "codex").usage
    # 4923 x 1.0 + 19840 x 0.5 + 1240 x 2.0, per million; the model is the stage's routed model
    assert (u.usd, u.prices_version) == (0.017323, "spec")


def test_a_missing_prompt_file_is_prompt_missing(tmp_path):
    rt = job(tmp_path, "stages:\n  - {id: claude, agent: claude, prompt_file: NOPE.md}\n")
    with pytest.raises(LongrunError) as err:
        stage(rt, "claude")
    assert err.value.code == "prompt_missing"
