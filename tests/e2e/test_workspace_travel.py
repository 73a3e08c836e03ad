"""A workspace that travels: run two iterations, then resume on a "fresh machine" that has only .maestro/.

Real CLI, real Prefect server, real git: the workspace is cloned from a
``file://`` repository; the second root gets a copy of ``.maestro/`` only, and
its resume clones the repository again and replays the checkpointed patches.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import longrun_cli

from longrun.journal.local import Journal
from longrun.spec import load_spec
from longrun.storage.paths import JobPaths
from longrun.workspace.gitutil import snapshot_tree

pytestmark = [pytest.mark.prefect, pytest.mark.slow]

# The agent: each iteration adds a file and a line; iteration 1 also adds a binary
# file, deletes one and makes one executable. The gate passes from iteration 3 on;
# in iteration 2 it drops the stop file (outside the workspace), so the first
# machine stops after two finished iterations (a stop file dropped by a stage
# would stop the run inside the iteration, before its checkpoint).
GATE = """
import os, sys
it = int(os.environ["LONGRUN_ITERATION"])
if it == 2:
    open(os.environ["STOP_AT_2"], "w").close()
sys.exit(0 if it >= 3 else 1)
"""

AGENT = """
import os, pathlib, stat
it = int(os.environ["LONGRUN_ITERATION"])
pathlib.Path(f"iter-{it}.txt").write_text(f"iteration {it}")
with open("log.txt", "a") as f:
    f.write(f"{it}\\n")
if it == 1:
    pathlib.Path("blob.bin").write_bytes(bytes(range(256)) * 4)
    os.remove("old.txt")
    os.chmod("tool.sh", 0o755)
"""

SPEC = """
name: travel
goal: changes that travel with the job
workspace: {{path: ws, repo: "{repo}", ref: main, push_branch: longrun/review}}
allowed_tools: [python]
model_policy: {{default: m}}
plan_file: null
# The agent drops a stop file outside the workspace: not a sandbox test.
sandbox: none
stages:
  - {{id: agent, run: [python, agent.py]}}
quality_gates:
  required:
    - {{id: third-iteration, kind: command_pass, run: [python, gate.py], env: {{STOP_AT_2: "{stop}"}}}}
stop_conditions: {{max_iterations: 5, stop_file: STOP}}
"""


def git(cwd: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1")
    ident = ["-c", "user.name=t", "-c", "user.email=t@t"]
    return subprocess.run(["git", *ident, *args], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout


def test_a_job_resumes_on_a_machine_with_only_its_maestro_directory(cli_env, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    git(src, "init", "-q", "-b", "main")
    (src / "agent.py").write_text(AGENT)
    (src / "gate.py").write_text(GATE)
    (src / "old.txt").write_text("deleted in iteration 1\n")
    (src / "tool.sh").write_text("#!/bin/sh\n")
    git(src, "add", "-A")
    git(src, "commit", "-q", "-m", "base")
    bare = tmp_path / "origin.git"
    git(tmp_path, "clone", "-q", "--bare", str(src), str(bare))

    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    spec = tmp_path / "job.yaml"
    spec.write_text(SPEC.format(repo=bare.as_uri(), stop=first / "STOP"))
    job_id = load_spec(spec).job_id

    ran = longrun_cli("run", str(spec), "--root", str(first), "--json", cwd=first, env=cli_env)
    assert ran.returncode == 3, ran.stderr  # STOPPED by the stop file after iteration 2
    state = Journal(JobPaths(first, job_id).events_file).state()
    assert (state.status, state.iterations_finished, state.stop_reason) == ("STOPPED", 2, "stop_file")
    assert sorted(state.end_trees) == [1, 2] and state.workspace_commit == git(bare, "rev-parse", "main").strip()
    assert snapshot_tree(first / "ws") == state.end_trees[2]

    # A fresh machine: the job's .maestro/ only (journal, spec, checkpoints); no workspace, no stop file.
    second.mkdir()
    shutil.copytree(first / ".maestro", second / ".maestro")
    done = longrun_cli("resume", job_id, "--root", str(second), "--json", cwd=second, env=cli_env)
    assert done.returncode == 0, done.stderr + done.stdout
    outcome = json.loads(done.stdout)
    assert outcome["status"] == "COMPLETED" and outcome["iterations"] == 3

    ws = second / "ws"
    assert (ws / "iter-1.txt").read_text() == "iteration 1" and (ws / "iter-2.txt").read_text() == "iteration 2"
    assert (ws / "iter-3.txt").read_text() == "iteration 3" and (ws / "log.txt").read_text() == "1\n2\n3\n"
    assert (ws / "blob.bin").read_bytes() == bytes(range(256)) * 4 and not (ws / "old.txt").exists()
    assert os.access(ws / "tool.sh", os.X_OK)

    events = Journal(JobPaths(second, job_id).events_file).read()
    materialized = [e.payload for e in events if e.type == "workspace_materialized"]
    assert [(m.cloned, m.iterations) for m in materialized] == [(True, ()), (True, (1, 2))]
    assert materialized[1].commit == materialized[0].commit
    final = Journal(JobPaths(second, job_id).events_file).state()
    assert snapshot_tree(ws) == final.end_trees[3]

    # push_branch: every iteration was pushed; the branch holds the last iteration's tree.
    pushed = [e.payload for e in events if e.type == "workspace_pushed"]
    assert [p.iteration for p in pushed] == [1, 2, 3]
    assert git(bare, "rev-parse", "refs/heads/longrun/review").strip() == pushed[-1].commit
    assert git(bare, "rev-parse", "refs/heads/longrun/review^{tree}").strip() == final.end_trees[3]
    assert git(bare, "rev-parse", "main").strip() == materialized[0].commit  # main untouched
