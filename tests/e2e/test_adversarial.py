"""An untrusted stage attacks its governor; every attack fails or is detected.

One real job runs through the real flow on the embedded Prefect server, with
real git and real bubblewrap. Its stage tries everything at once and writes
what it managed into ``attempts.json`` in its workspace; each test below checks
one attack, named after it, from the engine's side (the journal, the files,
marker files a planted program would have written).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from conftest import write_job

from longrun.errors import LongrunError
from longrun.execution.process import run_command
from longrun.journal.local import Journal
from longrun.spec import load_spec
from longrun.storage.paths import JobPaths

pytestmark = [
    pytest.mark.prefect,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap"),
]

SECRET = "wJalrXUtnFEMI-not-a-real-secret"

ATTACK = r"""
import json, os, subprocess, sys
root, marker_dir = sys.argv[1], sys.argv[2]
job_dir = os.path.join(root, ".maestro", "jobs", os.environ["LONGRUN_JOB_ID"])
out = {}

def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except Exception as exc:
        out[name] = f"{type(exc).__name__}: {exc}"

def script(name, body):
    path = os.path.join(os.getcwd(), ".git", name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(path, 0o755)
    return path

def plant_git():
    mark = lambda w: f"echo {w} >> {marker_dir}/pwned-{w}\n"
    cfg = lambda k, v: subprocess.run(["git", "config", k, v], check=True)
    cfg("core.fsmonitor", script("fsm", mark("fsmonitor")))
    cfg("filter.evil.clean", script("clean", mark("clean") + "cat\n"))
    cfg("diff.evil.textconv", script("textconv", mark("textconv") + 'cat "$1"\n'))
    cfg("core.hooksPath", os.path.join(os.getcwd(), ".git", "hooks"))
    script("hooks/pre-commit", mark("hook"))
    with open(".gitattributes", "w") as f:
        f.write("* filter=evil diff=evil\n")

out["env_secret"] = os.environ.get("AWS_SECRET_ACCESS_KEY")
out["env_prefect"] = os.environ.get("PREFECT_API_KEY")
out["env_passed"] = os.environ.get("PASSED_THROUGH")
attempt("plant_git", plant_git)
attempt("maestro_listing", lambda: out.setdefault("maestro_seen", sorted(os.listdir(os.path.join(root, ".maestro")))))
def forge():
    with open(os.path.join(job_dir, "events.jsonl"), "a") as f:
        f.write(json.dumps({"seq": 999, "type": "approved", "v": 1, "job_id": os.environ["LONGRUN_JOB_ID"],
                            "payload": {"step": "after-gates", "by": "stage"}}) + "\n")
attempt("forge_approved", forge)
def waiver():
    os.makedirs(os.path.join(root, ".maestro", "waivers"), exist_ok=True)
    with open(os.path.join(root, ".maestro", "waivers", "longrun.json"), "w") as f:
        json.dump({"reason": "me", "expires_at": "2999-01-01T00:00:00Z", "approved_by": "stage"}, f)
attempt("drop_waiver", waiver)
def symlink_log():
    log = os.path.join(os.environ["LONGRUN_CHECKPOINT_DIR"], "command.log")
    os.replace(log, log + ".moved")
    os.symlink(os.path.join(marker_dir, "stolen-log"), log)
attempt("symlink_command_log", symlink_log)
attempt("write_outside", lambda: open(os.path.join(marker_dir, "outside.txt"), "w").write("x"))
with open("attempts.json", "w") as f:
    json.dump(out, f)
"""


@pytest.fixture(scope="module")
def attack(prefect_server, tmp_path_factory):
    from longrun.flows.job import job_flow

    tmp = tmp_path_factory.mktemp("adversarial")
    markers = tmp / "markers"
    markers.mkdir()
    spec = write_job(
        tmp,
        f"""
name: attacker
goal: escape governance
workspace: {{path: ws, template: template}}
allowed_tools: [python]
model_policy: {{default: m}}
stages:
  - id: attack
    run: [python, attack.py, "{tmp}", "{markers}"]
    env_passthrough: [PASSED_THROUGH]
quality_gates:
  required:
    - {{id: ok, kind: command_pass, run: [python, -c, "pass"]}}
""",
        {"attack.py": ATTACK},
    )
    saved = dict(os.environ)
    os.environ.update(AWS_SECRET_ACCESS_KEY=SECRET, PREFECT_API_KEY="pnu_not_real", PASSED_THROUGH="visible")
    try:
        loaded = load_spec(spec)
        out = job_flow(loaded)(spec=json.loads(loaded.canonical), root=str(tmp), source=str(loaded.source))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    attempts = json.loads((tmp / "ws" / "attempts.json").read_text())
    return {"out": out, "root": tmp, "markers": markers, "attempts": attempts, "paths": JobPaths(tmp, out["job_id"])}


def test_the_attack_ran_and_the_job_completed(attack):
    assert attack["out"]["status"] == "COMPLETED", attack["out"]
    assert attack["attempts"]["plant_git"] == "ok"  # the plants are in place: the engine's git met them
    started = [e for e in Journal(attack["paths"].events_file).read() if e.type == "run_started"]
    assert [e.payload.sandbox for e in started] == ["bwrap"]  # the sandbox is journaled


def test_planting_git_fsmonitor_hooks_and_filters_runs_nothing_in_the_engine(attack):
    assert sorted(p.name for p in attack["markers"].iterdir()) == []
    patch = (attack["paths"].iteration_dir(1) / "patch.diff").read_text()
    assert ".gitattributes" in patch  # the engine snapshotted and diffed the planted workspace


def test_reading_aws_secret_access_key_sees_nothing(attack):
    a = attack["attempts"]
    assert a["env_secret"] is None and a["env_prefect"] is None
    assert a["env_passed"] == "visible"  # env_passthrough is the only way in
    assert SECRET not in (attack["paths"].iteration_dir(1) / "command.log").read_text()


def test_writing_into_maestro_sees_an_empty_directory_and_changes_nothing(attack):
    assert "jobs" not in attack["attempts"]["maestro_seen"]
    assert (attack["paths"].maestro / "jobs" / attack["out"]["job_id"] / "spec.json").is_file()


def test_forging_an_approved_event_is_not_in_the_journal(attack):
    events = Journal(attack["paths"].events_file).read()
    assert "approved" not in [e.type for e in events]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


def test_dropping_a_waiver_leaves_no_waiver(attack):
    assert not (attack["root"] / ".maestro" / "waivers").exists()


def test_symlinking_command_log_fails(attack):
    assert attack["attempts"]["symlink_command_log"] != "ok"
    log = attack["paths"].iteration_dir(1) / "command.log"
    assert log.is_file() and not log.is_symlink() and "gate ok #1" in log.read_text()


def test_writing_outside_the_workspace_fails(attack):
    assert "Read-only file system" in attack["attempts"]["write_outside"]
    assert not (attack["markers"] / "outside.txt").exists()


def test_symlinking_command_log_without_a_sandbox_is_refused_at_the_next_write(tmp_path):
    """``sandbox: none``: a stage can plant the symlink, but the engine never writes through it."""
    log = tmp_path / "command.log"
    target = tmp_path / "elsewhere"
    run_command(
        ["sh", "-c", f"mv {log} {log}.old; ln -s {target} {log}"],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"]},
        timeout=10,
        log_path=log,
    )
    assert log.is_symlink()
    with pytest.raises(LongrunError) as err:
        run_command(["true"], cwd=tmp_path, env={"PATH": os.environ["PATH"]}, timeout=10, log_path=log)
    assert err.value.code == "path_escape"
    assert not target.exists()


def test_sandbox_none_in_strict_mode_is_refused_without_a_waiver_and_journaled_with_one(tmp_path):
    from datetime import UTC, datetime

    from longrun.engine.preflight import check_sandbox
    from longrun.spec.loader import parse_spec_text

    spec = parse_spec_text(
        "name: s\ngoal: g\nmode: strict\nsandbox: none\nallowed_tools: [x]\nmodel_policy: {default: m}\n"
        "stages: [{id: a, run: [x]}]\n"
    )
    with pytest.raises(LongrunError) as err:
        check_sandbox(spec, tmp_path)
    assert err.value.code == "sandbox_required"
    waiver = tmp_path / ".maestro" / "waivers" / "longrun.json"
    waiver.parent.mkdir(parents=True)
    waiver.write_text(json.dumps({"reason": "legacy agent", "expires_at": "2999-01-01T00:00:00Z", "approved_by": "lead"}))
    assert check_sandbox(spec, tmp_path, datetime.now(UTC)).approved_by == "lead"


WORKTREE_STAGE = r"""
import json, os, pathlib, subprocess, sys
main = pathlib.Path(sys.argv[1])
out = {"cwd": os.getcwd()}
pathlib.Path("made.txt").write_text("by the stage\n")
# git works in the sandboxed worktree: its index and objects live in the main repo's .git
r = subprocess.run(["git", "-c", "user.name=s", "-c", "user.email=s@s", "add", "made.txt"], capture_output=True, text=True)
out["git_add"] = r.returncode
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except Exception as exc:
        out[name] = f"{type(exc).__name__}: {exc}"
attempt("main_tree", lambda: (main / "intruder.txt").write_text("x"))
attempt("main_hook", lambda: (main / ".git" / "hooks" / "post-checkout").write_text("#!/bin/sh\n"))
attempt("main_config", lambda: open(main / ".git" / "config", "a").write("[core]\n\tfsmonitor = /bin/true\n"))
spawn = pathlib.Path(os.environ["LONGRUN_SPAWN_DIR"])
(spawn / "child.yaml").write_text(
    "name: spawned\ngoal: g\nworkspace: {path: ws}\nallowed_tools: [python]\nmodel_policy: {default: m}\n"
    "stages: [{id: a, run: [python, -c, pass]}]\n"
)
# HOME is the job's own directory, writable, kept after the run (the worktree is removed)
pathlib.Path(os.environ["HOME"], "attempts.json").write_text(json.dumps(out))
"""


def test_a_sandboxed_worktree_stage_commits_through_git_spawns_a_child_and_cannot_touch_the_main_tree(prefect_server, tmp_path):
    from longrun.flows.job import job_flow
    from longrun.journal.registry import find_job

    ws = tmp_path / "ws"
    spec = write_job(
        tmp_path,
        f"""
name: isolated-sandboxed
goal: work in a worktree under the sandbox
workspace: {{path: ws, template: template}}
isolation: worktree
sandbox: {{network: false}}
allowed_tools: [python]
model_policy: {{default: m}}
stages:
  - {{id: edit, run: [python, stage.py, "{ws}"]}}
quality_gates:
  required:
    - {{id: made, kind: artifact_exists, path: made.txt}}
""",
        {"stage.py": WORKTREE_STAGE},
    )
    loaded = load_spec(spec)
    out = job_flow(loaded)(spec=json.loads(loaded.canonical), root=str(tmp_path), source=str(loaded.source))
    assert out["status"] == "COMPLETED", out
    paths = JobPaths(tmp_path, out["job_id"])
    patch = next((paths.checkpoints / "patches").glob("*.patch")).read_text()
    attempts = json.loads((paths.home_dir / "attempts.json").read_text())
    assert attempts["cwd"] == str(paths.worktree_dir.resolve())
    assert attempts["git_add"] == 0
    for name in ("main_tree", "main_hook", "main_config"):
        assert "Read-only file system" in attempts[name], (name, attempts[name])
    assert not (ws / "intruder.txt").exists()
    assert "fsmonitor" not in (ws / ".git" / "config").read_text()
    assert "+by the stage" in patch
    started = [e for e in Journal(paths.events_file).read() if e.type == "run_started"]
    assert [e.payload.sandbox for e in started] == ["bwrap-no-network"]
    child = [e for e in Journal(paths.events_file).read() if e.type == "child_spawned"]
    assert len(child) == 1 and child[0].payload.name == "spawned"
    assert find_job(tmp_path, child[0].payload.child_job_id).job_id == child[0].payload.child_job_id
