"""Real agents' output through real flows (issue 14) on the session's Prefect server.

The agents are the fake ``claude``, ``codex``, ``gemini`` and ``aider`` of
tests/fixtures/agents/bin, put first on PATH: real processes replaying outputs
recorded in each tool's documented format. Flows run through the ``longrun``
CLI in a subprocess (the usage of every format) and in-process (``job_flow``,
as in test_governance_flow.py). Workspaces are real git repositories; nothing
is mocked. Checked: the journaled USD and tokens to the cent and to the token,
the budget stop on a computed cost, the rate-limit wait that uses up no
iteration, and a false completion claim that does not end the run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import longrun_cli, write_job

from longrun.journal.local import Journal
from longrun.spec import load_spec
from longrun.storage.paths import JobPaths

pytestmark = pytest.mark.prefect

FAKE_BIN = Path(__file__).resolve().parents[1] / "fixtures" / "agents" / "bin"
PROMPT = "{goal}\niteration {iteration}\nwhat failed:\n{previous_failures}\n"
FIXED = "import pathlib, sys; sys.exit(0 if pathlib.Path('src/fixed.txt').exists() else 1)"


def spec(tmp_path: Path, name: str, body: str, policy: str = "{default: claude-sonnet-4-5, execute: gpt-5-codex}") -> Path:
    text = f"""
name: {name}
goal: make the tests pass
workspace: {{path: ws, template: template}}
allowed_tools: [python]
model_policy: {policy}
# The fake agents count their calls in FAKE_AGENT_DIR, outside the workspace, which the
# sandbox makes read-only; what these tests check is usage and rate limits, not the sandbox.
sandbox: none
{body}
"""
    return write_job(tmp_path, text, {"PROMPT.md": PROMPT, "src/app.py": "x = 1\n"}, name=f"{name}.yaml")


def finished(root: Path, job_id: str) -> dict[str, dict]:
    """stage → the usage of its stage_finished in iteration 1, as the journal line holds it."""
    lines = JobPaths(root, job_id).events_file.read_text().splitlines()
    out = {}
    for line in lines:
        event = json.loads(line)
        if event["type"] == "stage_finished" and event["payload"]["iteration"] == 1:
            out[event["payload"]["stage"]] = event["payload"]["usage"]
    return out


def run_flow(spec_path: Path, root: Path) -> dict:
    """Run the job's flow in-process; its outcome (the flow run ends Failed on a budget stop: read its data)."""
    from longrun.flows.job import job_flow

    loaded = load_spec(spec_path)
    state = job_flow(loaded)(spec=json.loads(loaded.canonical), root=str(root), source=str(loaded.source), return_state=True)
    outcome = state.result(raise_on_failure=False)
    assert isinstance(outcome, dict), state
    return outcome


@pytest.fixture
def fake_agents(monkeypatch):
    monkeypatch.setenv("PATH", f"{FAKE_BIN}{os.pathsep}{os.environ['PATH']}")


def test_every_format_is_journaled_to_the_cent_and_the_token(cli_env, tmp_path):
    state = tmp_path / "agent-state"
    env = f'env: {{FAKE_AGENT_DIR: "{state}"}}'
    path = spec(
        tmp_path,
        "all-agents",
        f"""
stages:
  - {{id: claude, agent: claude, {env}}}
  - {{id: claude-json, agent: claude, run: [claude, -p, "{{prompt}}", --output-format, json], {env}}}
  - {{id: codex, phase: execute, agent: codex, {env}}}
  - {{id: gemini, agent: gemini, {env}}}
  - {{id: gemini-json, agent: gemini, run: [gemini, -o, json, -p, "{{prompt}}"], usage: {{format: gemini-json}}, {env}}}
  - {{id: aider, agent: aider, {env}}}
quality_gates: {{required: [{{id: ok, kind: command_pass, run: [python, -c, pass]}}]}}
""",
    )
    env_vars = {**cli_env, "PATH": f"{FAKE_BIN}{os.pathsep}{cli_env['PATH']}"}
    r = longrun_cli("run", str(path), "--json", "--root", str(tmp_path), cwd=tmp_path, env=env_vars)
    assert r.returncode == 0, (r.stdout, r.stderr)
    outcome = json.loads(r.stdout)
    assert (outcome["status"], outcome["iterations"]) == ("COMPLETED", 1)

    usage = finished(tmp_path, outcome["job_id"])
    version = next(u["prices_version"] for u in usage.values() if u.get("usd_source") == "computed")
    assert usage["claude"] == {
        "usd": 0.0342445,  # total_cost_usd, as reported
        "tokens": 33066,
        "model": "claude-sonnet-4-5-20250929",
        "input_tokens": 32558,  # 8 + 4730 cache writes + 27820 cache reads
        "output_tokens": 508,
        "cache_read_tokens": 27820,
        "cache_write_tokens": 4730,
        "usd_source": "reported",
        "format": "claude-stream-json",
    }
    assert usage["claude-json"] == {**usage["claude"], "format": "claude-stream-json"}
    assert usage["codex"] == {
        "usd": 0.02103375,  # (4923 x 1.25 + 19840 x 0.125 + 1240 x 10) / 1e6
        "tokens": 26003,
        "model": "gpt-5-codex",
        "input_tokens": 24763,
        "output_tokens": 1240,
        "cache_read_tokens": 19840,
        "cache_write_tokens": 0,
        "usd_source": "computed",
        "prices_version": version,
        "format": "codex-jsonl",
    }
    assert (usage["gemini"]["usd"], usage["gemini"]["tokens"], usage["gemini"]["model"]) == (0.020876, 21390, "gemini-2.5-pro")
    assert (usage["gemini"]["input_tokens"], usage["gemini"]["output_tokens"]) == (20480, 910)
    assert (usage["gemini-json"]["usd"], usage["gemini-json"]["tokens"]) == (0.024026, 23190)
    assert usage["gemini-json"]["prices_version"] == version
    assert usage["aider"] == {
        "usd": 0.048732,
        "tokens": 13844,
        "model": "claude-sonnet-4-5-20250929",
        "input_tokens": 13244,
        "output_tokens": 600,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "usd_source": "reported",
        "format": "aider-analytics",
    }
    assert outcome["usd"] == 0.183157 and outcome["tokens"] == 150559  # the CLI rounds USD to 6 places
    st = Journal(JobPaths(tmp_path, outcome["job_id"]).events_file).state()
    assert st.usd_total == pytest.approx(0.18315675, abs=1e-12)
    assert st.input_tokens_total == 32558 * 2 + 24763 + 20480 + 21980 + 13244
    assert st.output_tokens_total == 508 * 2 + 1240 + 910 + 1210 + 600


def test_a_rate_limit_is_waited_out_and_a_false_completion_claim_does_not_end_the_run(prefect_server, fake_agents, tmp_path):
    state = tmp_path / "agent-state"
    path = spec(
        tmp_path,
        "rate-limited",
        f"""
stages:
  - id: claude
    agent: claude
    env:
      FAKE_AGENT_DIR: "{state}"
      FAKE_AGENT_RATE_LIMIT_FIRST: "2"
      FAKE_AGENT_FIX_AT: "3"
      FAKE_AGENT_FIX: "src/fixed.txt=fixed"
quality_gates: {{required: [{{id: fixed, kind: command_pass, run: [python, -c, "{FIXED}"]}}]}}
stop_conditions: {{max_iterations: 2, max_wall_time: 300}}
""",
    )
    out = run_flow(path, tmp_path)
    # call 1: rate limited (reset 2 s on); call 2 (iteration 1) says "The task is COMPLETE" but fixes
    # nothing, so the gate fails and the run goes on; call 3 (iteration 2) fixes it. Two iterations
    # are enough only because the rate-limited attempt used none.
    assert (out["status"], out["iterations"]) == ("COMPLETED", 2)
    events = Journal(JobPaths(tmp_path, out["job_id"]).events_file).read()
    (limited,) = [e for e in events if e.type == "rate_limited"]
    assert (limited.payload.iteration, limited.payload.attempt, limited.payload.kind) == (1, 1, "five_hour")
    assert limited.payload.resets_at_reported
    after = next(e for e in events if e.type == "stage_started" and e.seq > limited.seq)
    assert after.ts >= limited.payload.until, "the next attempt waited for the reset"
    assert (limited.payload.until - limited.ts).total_seconds() > 0.5
    finished_ = [e.payload for e in events if e.type == "stage_finished"]
    assert [(p.iteration, p.attempts) for p in finished_] == [(1, 2), (2, 1)]
    gates = [(e.payload.iteration, e.payload.passed) for e in events if e.type == "gate_evaluated"]
    assert gates == [(1, False), (2, True)]
    log = (JobPaths(tmp_path, out["job_id"]).iteration_dir(1) / "command.log").read_text()
    assert "The task is COMPLETE" in log, "the agent did claim completion in iteration 1"
    # Iteration 2's prompt told the agent what failed.
    prompt = json.loads((state / "claude-3.argv.json").read_text())[1]
    assert "iteration 2" in prompt and "- gate fixed (command_pass) failed" in prompt


def test_a_budget_stops_on_the_computed_cost_of_a_token_only_tool(prefect_server, fake_agents, tmp_path):
    path = spec(
        tmp_path,
        "codex-budget",
        """
budgets: {usd: 0.05}
stages:
  - {id: codex, agent: codex}
quality_gates: {required: [{id: never, kind: command_pass, run: [python, -c, "raise SystemExit(1)"]}]}
stop_conditions: {max_iterations: 10}
""",
        policy="{default: gpt-5-codex}",
    )
    out = run_flow(path, tmp_path)
    # codex reports tokens only; each run is priced at 0.02103375 USD. Iteration 3 would reach
    # 0.0631 > 0.05, so it never starts.
    assert (out["status"], out["reason"], out["iterations"]) == ("STOPPED_BUDGET", "usd", 2)
    events = Journal(JobPaths(tmp_path, out["job_id"]).events_file).read()
    (stop,) = [e.payload for e in events if e.type == "stopped_budget"]
    assert stop.limit == 0.05
    assert stop.counters["usd_total"] == 0.0420675 and stop.counters["expected_usd"] == 0.02103375
    assert stop.counters["input_tokens_total"] == 2 * 24763 and stop.counters["output_tokens_total"] == 2 * 1240
