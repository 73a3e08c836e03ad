"""Agent presets: ``agent: claude | codex | gemini | aider`` on a stage (pure data, no I/O).

A preset fills in what a user would otherwise write by hand for a coding agent
run without a terminal:

* ``argv`` — the non-interactive command line. Placeholders are expanded when
  the stage runs: ``{prompt}`` (the stage's ``prompt_file`` rendered with
  ``{goal}``, ``{iteration}``, ``{previous_failures}``), ``{model}`` (the model
  routed to the stage's phase) and ``{analytics_log}`` (a per-attempt file for
  aider's analytics). A stage's own ``run`` overrides the argv;
* ``usage_format`` — how longrun reads the agent's usage (docs/agents.md);
* ``executable`` — argv[0], allowed for that stage without listing it in
  ``allowed_tools`` (choosing the preset is the permission);
* ``env_names`` — the environment variables the agent needs (API keys, config
  homes). Only names live here, never values; :func:`preset_env_names` is the
  seam the scrubbed stage environment reads them through.

``longrun plan`` writes every preset out (:func:`describe`), so nothing is hidden.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from longrun.spec.models import Stage

__all__ = ["AGENT_EXECUTABLES", "DEFAULT_PROMPT_FILE", "PRESETS", "AgentPreset", "describe", "preset_env_names"]

DEFAULT_PROMPT_FILE = "PROMPT.md"


@dataclass(frozen=True)
class AgentPreset:
    name: str
    executable: str
    argv: tuple[str, ...]
    usage_format: str
    env_names: tuple[str, ...]


PRESETS: dict[str, AgentPreset] = {
    "claude": AgentPreset(
        name="claude",
        executable="claude",
        # stream-json needs --verbose with -p; acceptEdits lets it edit files without a prompt.
        argv=(
            "claude",
            "-p",
            "{prompt}",
            "--output-format",
            "stream-json",
            "--verbose",
            "--model",
            "{model}",
            "--permission-mode",
            "acceptEdits",
        ),
        usage_format="claude-stream-json",
        env_names=(
            "ANTHROPIC_API_KEY",
            "ANTHROPIC_AUTH_TOKEN",
            "ANTHROPIC_BASE_URL",
            "CLAUDE_CODE_OAUTH_TOKEN",
            "CLAUDE_CONFIG_DIR",
            "CLAUDE_CODE_USE_BEDROCK",
            "CLAUDE_CODE_USE_VERTEX",
        ),
    ),
    "codex": AgentPreset(
        name="codex",
        executable="codex",
        # --full-auto: workspace-write sandbox, no approval prompts.
        argv=("codex", "exec", "--json", "--full-auto", "--model", "{model}", "{prompt}"),
        usage_format="codex-jsonl",
        env_names=("OPENAI_API_KEY", "OPENAI_BASE_URL", "CODEX_HOME"),
    ),
    "gemini": AgentPreset(
        name="gemini",
        executable="gemini",
        argv=(
            "gemini",
            "--output-format",
            "stream-json",
            "--model",
            "{model}",
            "--approval-mode",
            "auto_edit",
            "--prompt",
            "{prompt}",
        ),
        usage_format="gemini-stream-json",
        env_names=(
            "GEMINI_API_KEY",
            "GOOGLE_API_KEY",
            "GOOGLE_CLOUD_PROJECT",
            "GOOGLE_CLOUD_LOCATION",
            "GOOGLE_GENAI_USE_VERTEXAI",
            "GOOGLE_APPLICATION_CREDENTIALS",
        ),
    ),
    "aider": AgentPreset(
        name="aider",
        executable="aider",
        # aider prints no JSON; its analytics log (one JSON event per line) carries the usage.
        # --no-analytics: nothing is sent anywhere (the local log is written all the same).
        # The chat and input histories go to the checkpoint directory, not into the workspace;
        # --no-gitignore keeps aider from editing .gitignore; longrun commits, not aider.
        argv=(
            "aider",
            "--yes-always",
            "--no-auto-commits",
            "--no-gitignore",
            "--no-check-update",
            "--no-show-release-notes",
            "--no-analytics",
            "--analytics-log",
            "{analytics_log}",
            "--chat-history-file",
            "{checkpoint_dir}/aider.chat.history.md",
            "--input-history-file",
            "{checkpoint_dir}/aider.input.history",
            "--model",
            "{model}",
            "--message",
            "{prompt}",
        ),
        usage_format="aider-analytics",
        env_names=(
            "OPENAI_API_KEY",
            "ANTHROPIC_API_KEY",
            "GEMINI_API_KEY",
            "OPENROUTER_API_KEY",
            "DEEPSEEK_API_KEY",
            "AIDER_MODEL",
        ),
    ),
}

#: agent → its executable (argv[0]); the spec's cross checks allow it for stages with that agent.
AGENT_EXECUTABLES: dict[str, str] = {name: p.executable for name, p in PRESETS.items()}


def preset_env_names(stage: Stage) -> tuple[str, ...]:
    """Names of the environment variables ``stage``'s agent preset needs passed through (empty without one).

    Pure: names only, never values. The scrubbed stage environment adds these
    to its allowlist (its ``extra_names``).
    """
    if stage.agent is None:
        return ()
    return PRESETS[stage.agent].env_names


def stage_argv(stage: Stage) -> tuple[str, ...]:
    """The stage's argv: its own ``run``, else its preset's."""
    if stage.run is not None:
        return tuple(stage.run)
    if stage.agent is None:  # pragma: no cover - the model refuses a stage with neither
        raise ValueError(f"stage {stage.id!r} has neither run nor agent")
    return PRESETS[stage.agent].argv


def stage_usage_format(stage: Stage) -> str | None:
    """The usage format: the stage's ``usage.format``, else its preset's."""
    if stage.usage is not None and stage.usage.format is not None:
        return stage.usage.format
    return PRESETS[stage.agent].usage_format if stage.agent is not None else None


def stage_prompt_file(stage: Stage) -> str | None:
    """The prompt template: ``prompt_file``, else PROMPT.md for a stage with an agent."""
    if stage.prompt_file is not None:
        return stage.prompt_file
    return DEFAULT_PROMPT_FILE if stage.agent is not None else None


def describe(stage: Stage) -> dict[str, Any] | None:
    """What the stage's preset fills in, for ``longrun plan`` (None without a preset)."""
    if stage.agent is None:
        return None
    p = PRESETS[stage.agent]
    return {
        "agent": p.name,
        "argv": list(p.argv),
        "argv_overridden": stage.run is not None,
        "usage_format": stage_usage_format(stage),
        "allowed_tool": p.executable,
        "env_names": list(p.env_names),
        "prompt_file": stage_prompt_file(stage),
    }
