"""Agent presets in the spec: validation, the plan that writes them out, the example specs, prompt rendering."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from longrun.cli.jobs import _plan_text, plan_document
from longrun.errors import SpecError
from longrun.execution.prompt import render_prompt
from longrun.execution.stages import expand_argv
from longrun.spec import load_spec
from longrun.spec.agents import PRESETS, preset_env_names
from longrun.spec.compile import compile_spec

AGENT_EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "jobspecs" / "examples" / "agents").glob("*.yaml"))


def spec_file(tmp_path: Path, stages: str, extra: str = "") -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(
        textwrap.dedent(
            """
            name: agents
            goal: fix it
            allowed_tools: [python]
            model_policy: {default: claude-sonnet-4-5}
            """
        )
        + textwrap.dedent(stages)
        + textwrap.dedent(extra)
    )
    return path


def test_there_is_one_example_per_agent():
    assert sorted(p.stem for p in AGENT_EXAMPLES) == sorted(PRESETS)


@pytest.mark.parametrize("path", AGENT_EXAMPLES, ids=lambda p: p.stem)
def test_each_agent_example_validates_and_plans_with_its_preset_written_out(path):
    loaded = load_spec(path)
    assert loaded.spec.name == path.stem
    assert (loaded.base_dir / loaded.spec.workspace.template / "PROMPT.md").is_file()
    doc = plan_document(loaded)
    (stage,) = doc["stages"]
    preset = PRESETS[path.stem]
    assert stage["argv"] == list(preset.argv) and stage["preset"]["argv"] == list(preset.argv)
    assert stage["usage_format"] == preset.usage_format
    assert stage["preset"]["env_names"] == list(preset.env_names)
    assert stage["preset"]["allowed_tool"] == path.stem
    assert stage["prompt_file"] == "PROMPT.md"
    assert doc["prices_version"]
    text = _plan_text(doc)
    assert " ".join(preset.argv) in text
    assert "env passed through: " + ", ".join(preset.env_names) in text
    assert f"usage read as {preset.usage_format}" in text


def test_preset_env_names_is_the_seam_for_the_stage_environment(tmp_path):
    spec = load_spec(spec_file(tmp_path, "stages:\n  - {id: a, agent: codex}\n  - {id: b, run: [python, x.py]}\n")).spec
    assert preset_env_names(spec.stage("a")) == ("OPENAI_API_KEY", "OPENAI_BASE_URL", "CODEX_HOME")
    assert preset_env_names(spec.stage("b")) == ()


def test_run_overrides_the_preset_argv_and_the_agent_executable_is_allowed(tmp_path):
    spec = load_spec(
        spec_file(tmp_path, 'stages:\n  - {id: a, agent: claude, run: [claude, -p, "{prompt}", --output-format, json]}\n')
    ).spec
    (stage,) = compile_spec(spec).stages
    assert stage.argv == ("claude", "-p", "{prompt}", "--output-format", "json")
    assert stage.preset_tool == "claude" and stage.usage_format == "claude-stream-json"
    doc = plan_document(load_spec(tmp_path / "job.yaml"))
    assert doc["stages"][0]["preset"]["argv_overridden"] is True


def test_an_agent_executable_without_its_preset_is_not_allowed(tmp_path):
    with pytest.raises(SpecError) as err:
        load_spec(spec_file(tmp_path, "stages:\n  - {id: a, run: [claude, -p, hi]}\n"))
    assert "'claude' is not in allowed_tools" in str(err.value)


@pytest.mark.parametrize(
    ("stages", "extra", "message"),
    [
        ("stages:\n  - {id: a}\n", "", "set 'run' (an argv) or 'agent' (a preset)"),
        ("stages:\n  - {id: a, run: [python, x.py], usage: {required: true}}\n", "", "usage.required needs a usage.format"),
        ("stages:\n  - {id: a, agent: cursor}\n", "", "agent"),
        ("stages:\n  - {id: a, run: [python, x.py], usage: {format: claude-xml}}\n", "", "format"),
        ("stages:\n  - {id: a, agent: aider}\n", "budgets: {usd: 1, total_usd: 2}\n", "same cap"),
        ("stages:\n  - {id: a, agent: aider}\n", "model_prices: {m: {input: -1, output: 1}}\n", "model_prices"),
    ],
)
def test_invalid_agent_fields_are_refused(tmp_path, stages, extra, message):
    with pytest.raises(SpecError) as err:
        load_spec(spec_file(tmp_path, stages, extra))
    assert message in str(err.value)


def test_usage_format_and_model_prices_validate(tmp_path):
    spec = load_spec(
        spec_file(
            tmp_path,
            "stages:\n  - {id: a, run: [python, wrap.py], usage: {format: gemini-json, required: true}}\n",
            "model_prices: {my-model: {input: 0.5, output: 1.5, cache_read: 0.05}}\n"
            "budgets: {usd: 2.0, input_tokens: 100000, output_tokens: 5000}\n",
        )
    ).spec
    assert spec.stage("a").usage.format == "gemini-json"
    assert spec.model_prices["my-model"].cache_write is None
    assert (spec.budgets.usd, spec.budgets.input_tokens, spec.budgets.output_tokens) == (2.0, 100000, 5000)


# ------------------------------------------------------------------ prompt and argv


def test_render_prompt_replaces_only_the_three_placeholders_once():
    values = {"goal": "fix {iteration}", "iteration": "3", "previous_failures": "- test a failed"}
    template = "{goal} | {iteration} | {previous_failures} | {goal.__class__} | {0} | {model} | {{goal}}"
    assert render_prompt(template, values) == (
        "fix {iteration} | 3 | - test a failed | {goal.__class__} | {0} | {model} | {fix {iteration}}"
    )


def test_expand_argv_is_one_pass():
    values = {"prompt": "use {workspace} as is", "workspace": "/ws", "model": "m"}
    assert expand_argv(["-p", "{prompt}", "--model", "{model}", "{unknown}"], values) == [
        "-p",
        "use {workspace} as is",
        "--model",
        "m",
        "{unknown}",
    ]
