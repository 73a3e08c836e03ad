"""The ``longrun`` command: exit codes, error envelopes, output, and import hygiene."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import EXAMPLES, REPO, longrun_cli, wait_for, write_job

from longrun.journal.local import Journal
from longrun.journal.registry import register
from longrun.spec import load_spec

BROKEN = {
    "yaml-syntax": ("name: x\ngoal: [unclosed\n", ["$"]),
    "wrong-type": (
        "name: x\ngoal: g\nallowed_tools: [python]\nmodel_policy: {default: m}\n"
        "stages: [{id: a, run: [python]}]\nstop_conditions: {max_iterations: ten}\n",
        ["stop_conditions.max_iterations"],
    ),
    "many": (
        "name: x\ngoal: ''\nallowed_tools: [python]\nmodel_policy: {default: m}\nbogus: 1\n"
        "schedule: {cron: '0 2 * * *', timezone: Mars/Olympus}\nbudgets: {total_usd: -1}\n"
        "workspace: {path: ../outside}\n"
        "stages:\n  - {id: a, run: [bash, x.sh]}\n  - {id: a, run: [python], depends_on: [nope]}\n",
        [
            "goal",
            "bogus",
            "schedule.timezone",
            "budgets.total_usd",
            "workspace.path",
            "stages[1].id",
            "stages[0].run[0]",
            "stages[1].depends_on[0]",
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_validate_broken_spec_exit_2_with_paths_and_no_traceback(tmp_path, case):
    text, paths = BROKEN[case]
    f = tmp_path / f"{case}.yaml"
    f.write_text(text)
    r = longrun_cli("validate", str(f), cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith("job_invalid_spec")
    assert "Traceback" not in r.stderr + r.stdout
    for p in paths:
        assert f"{f}: {p}: " in r.stderr, (p, r.stderr)

    j = longrun_cli("validate", str(f), "--json", cwd=tmp_path)
    assert j.returncode == 2
    err = json.loads(j.stdout)["error"]
    assert err["code"] == "job_invalid_spec"
    assert [p["path"] for p in err["problems"]] == [p["path"] for p in err["problems"]]  # ordered list
    assert set(paths) <= {p["path"] for p in err["problems"]}
    assert all(p["message"] and p["file"] == str(f) for p in err["problems"])


def test_validate_examples_ok():
    specs = sorted(str(p) for p in EXAMPLES.glob("*.yaml"))
    r = longrun_cli("validate", *specs, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("ok  ") == len(specs) >= 2


def test_missing_spec_and_job_are_job_not_found(tmp_path):
    for args in (
        ["validate", "nope.yaml"],
        ["run", "nope.yaml"],
        ["status", "abcdef123456"],
        ["status", "no-such-job"],
        ["tail", "x"],
    ):
        r = longrun_cli(*args, "--root", str(tmp_path), cwd=tmp_path)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("job_not_found"), (args, r.stderr)
        assert "Traceback" not in r.stderr
    j = longrun_cli("status", "no-such-job", "--json", "--root", str(tmp_path), cwd=tmp_path)
    assert json.loads(j.stdout)["error"]["code"] == "job_not_found"


def test_core_imports_do_not_import_prefect():
    code = (
        "import sys, longrun, longrun.cli.main, longrun.journal.local, longrun.journal.state, longrun.execution.gates, longrun.execution.stages, "
        "longrun.execution.checkpoint, longrun.governance.stop, longrun.spec.compile, longrun.journal.registry\n"
        "assert 'prefect' not in sys.modules, sorted(m for m in sys.modules if m.startswith('prefect'))\n"
        "sys.argv = ['longrun', 'validate', sys.argv[1]]\n"
        "import contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    rc = longrun.cli.main.main(sys.argv[1:])\n"
        "assert rc == 0 and 'prefect' not in sys.modules\n"
        "print('clean')"
    )
    r = subprocess.run([sys.executable, "-c", code, str(EXAMPLES / "hello-loop.yaml")], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "clean", r.stderr


def _registered_job(tmp_path: Path):
    spec = write_job(
        tmp_path,
        "name: journaled\ngoal: g\nworkspace: {path: ws, template: template}\nallowed_tools: [python]\n"
        "model_policy: {default: m}\nstages: [{id: a, run: [python, -c, 'pass']}]\n",
    )
    loaded = load_spec(spec)
    return loaded, register(loaded, tmp_path)


def test_status_list_tail_stop_from_the_journal(tmp_path):
    loaded, record = _registered_job(tmp_path)
    j = record.journal
    jid = loaded.job_id
    j.append("run_started", {"run_id": "r1", "flow_run_id": None, "resumed": False}, job_id=jid)
    j.append("iteration_started", {"iteration": 1, "start_tree": None}, job_id=jid)
    j.append("stage_started", {"iteration": 1, "stage": "a", "attempt": 1, "model": "m"}, job_id=jid)
    j.append(
        "stage_finished",
        {
            "iteration": 1,
            "stage": "a",
            "exit_code": 0,
            "duration_s": 1.0,
            "model": "m",
            "attempts": 1,
            "usage": {"usd": 0.5, "tokens": 40},
        },
        job_id=jid,
    )

    st = json.loads(longrun_cli("status", "journaled", "--json", "--root", str(tmp_path), cwd=tmp_path).stdout)
    assert (st["job_id"], st["status"], st["open_iteration"], st["usd"], st["tokens"]) == (jid, "RUNNING", 1, 0.5, 40)
    human = longrun_cli("status", jid, "--root", str(tmp_path), cwd=tmp_path)
    assert human.returncode == 0 and "status      RUNNING" in human.stdout and "$0.5000, 40 tokens" in human.stdout

    lst = longrun_cli("list", "--root", str(tmp_path), cwd=tmp_path)
    assert jid in lst.stdout and "journaled" in lst.stdout and "#5 stage_finished" in lst.stdout
    lj = json.loads(longrun_cli("list", "--json", "--root", str(tmp_path), cwd=tmp_path).stdout)
    assert [(r["job_id"], r["status"], r["iterations_finished"]) for r in lj["jobs"]] == [(jid, "RUNNING", 0)]

    tail = longrun_cli("tail", jid, "--json", "--root", str(tmp_path), cwd=tmp_path)
    lines = [json.loads(l) for l in tail.stdout.splitlines()]
    assert [l["seq"] for l in lines] == [1, 2, 3, 4, 5]
    assert [l["type"] for l in lines] == ["job_registered", "run_started", "iteration_started", "stage_started", "stage_finished"]
    assert all(l["version"] == "job_event_v1" for l in lines)

    stop = longrun_cli("stop", jid, "--by", "alice", "--root", str(tmp_path), cwd=tmp_path)
    assert stop.returncode == 0 and record.paths.job_stop_file.exists()
    last = record.journal.read()[-1]
    assert (last.type, last.payload.by) == ("stop_requested", "alice")
    assert record.state().stop_requested is True


def test_tail_follow_streams_until_the_run_ends(tmp_path):
    loaded, record = _registered_job(tmp_path)
    jid = loaded.job_id
    record.journal.append("run_started", {"run_id": "r1", "resumed": False}, job_id=jid)
    proc = subprocess.Popen(
        [sys.executable, "-m", "longrun.cli.main", "tail", jid, "--follow", "--json", "--root", str(tmp_path)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    for i in (1, 2, 3):
        record.journal.append("iteration_started", {"iteration": i}, job_id=jid)
        record.journal.append("iteration_finished", {"iteration": i, "gates_passed": i == 3, "fingerprint": f"f{i}"}, job_id=jid)
        time.sleep(0.2)
    record.journal.append("run_completed", {"iteration": 3, "reason": "all required gates passed"}, job_id=jid)
    # The run is over, but its bundle is not journaled yet (an engine with no pid here: elsewhere): keep following.
    time.sleep(1.0)
    assert proc.poll() is None
    record.journal.append(
        "evidence_built",
        {"manifest": "m.json", "bundle": "b.tar.gz", "sha256": "0" * 64, "size": 1, "files": 1, "built_from_seq": 9},
        job_id=jid,
    )
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    seqs = [json.loads(l)["seq"] for l in out.splitlines()]
    assert seqs == list(range(1, 11))
    assert [json.loads(l)["type"] for l in out.splitlines()[-2:]] == ["run_completed", "evidence_built"]


@pytest.mark.prefect
def test_run_exit_code_for_stopped_job(cli_env, tmp_path):
    spec = write_job(
        tmp_path,
        "name: gives-up\ngoal: g\nworkspace: {path: ws, template: template}\nallowed_tools: [python]\n"
        "model_policy: {default: m}\nstages: [{id: a, run: [python, -c, 'pass']}]\n"
        "quality_gates: {required: [{id: no, kind: command_pass, run: [python, -c, 'raise SystemExit(1)']}]}\n"
        "stop_conditions: {max_iterations: 1}\n",
    )
    r = longrun_cli("run", str(spec), "--json", "--root", str(tmp_path), cwd=tmp_path, env=cli_env)
    assert r.returncode == 3, r.stderr
    out = json.loads(r.stdout)
    assert (out["status"], out["reason"], out["iterations"]) == ("STOPPED", "max_iterations", 1)


@pytest.mark.prefect
@pytest.mark.slow
def test_readme_example_on_the_ephemeral_server(tmp_path):
    """The README's first command with ``--ephemeral``, on a fresh PREFECT_HOME: no local server is started."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    env["LONGRUN_HOME"] = str(tmp_path / "longrun-home")
    shutil.copytree(EXAMPLES, tmp_path / "jobspecs" / "examples")
    r = subprocess.run(
        ["longrun", "run", "jobspecs/examples/fix-failing-test.yaml", "--ephemeral"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "COMPLETED after 2 iteration(s)" in r.stdout
    # A calm terminal: progress lines, no tracebacks, no telemetry noise.
    assert "Traceback" not in r.stderr and "ERROR" not in r.stderr and "analytics" not in r.stderr.lower()
    assert "iteration 1" in r.stderr and "iteration 2" in r.stderr and "gate tests" in r.stderr
    assert "Prefect UI" not in r.stderr and not (tmp_path / "longrun-home").exists()
    assert (tmp_path / "prefect-home" / "prefect.db").exists()  # the embedded server's database
    st = json.loads(
        subprocess.run(
            ["longrun", "status", "fix-failing-test", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True
        ).stdout
    )
    assert st["status"] == "COMPLETED" and st["iterations_finished"] == 2


def test_disallowed_tool_is_refused_before_anything_runs(tmp_path):
    spec = write_job(
        tmp_path,
        "name: sneaky\ngoal: g\nworkspace: {path: ws, template: template}\nallowed_tools: [python]\n"
        "model_policy: {default: m}\nstages: [{id: a, run: [curl, 'http://example.invalid']}]\n",
    )
    r = longrun_cli("run", str(spec), "--root", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("job_invalid_spec")
    assert "stages[0].run[0]: 'curl' is not in allowed_tools ['python']" in r.stderr
    assert not (tmp_path / "ws").exists() and not (tmp_path / ".maestro").exists()


def test_runtime_tool_check_refuses_with_a_clear_error(tmp_path):
    """The runtime guard, independent of validation (a spec built in code)."""
    from longrun.errors import ToolNotAllowed
    from longrun.execution.runtime import JobRuntime
    from longrun.execution.stages import check_tool

    loaded, _ = _registered_job(tmp_path)
    rt = JobRuntime(loaded=loaded, root=tmp_path, run_id="r")
    check_tool(rt, ["python", "-c", "pass"], False, "stage 'a'")
    with pytest.raises(ToolNotAllowed, match=r"stage 'a': 'rm' is not in allowed_tools \['python'\]; nothing was run"):
        check_tool(rt, ["rm", "-rf", "/"], False, "stage 'a'")
    with pytest.raises(ToolNotAllowed):
        check_tool(rt, ["sh", "-c", "true"], True, "stage 'a'")  # shell needs 'sh' in allowed_tools


def test_plan_prints_the_compiled_plan_and_runs_nothing(tmp_path):
    marker = tmp_path / "would-be-created"
    spec = write_job(
        tmp_path,
        f"name: planned\ngoal: show me\nmode: advisory\nworkspace: {{path: ws, template: template}}\nallowed_tools: [python]\n"
        "model_policy: {default: cheap, execute: strong}\n"
        f"stages:\n  - {{id: execute, run: [python, -c, \"open('{marker}', 'w')\"]}}\n"
        "quality_gates: {required: [{id: t, kind: test_pass, run: [python, -m, pytest]}], optional: [{id: a, kind: artifact_exists, path: out.txt}]}\n"
        "budgets: {total_usd: 2.5, tokens: 1000}\nstop_conditions: {max_iterations: 7}\n"
        "approvals: [{before: execute, timeout: 60}, {after: gates, step: release, mode: suspend}]\n",
    )
    r = longrun_cli("plan", str(spec), "--root", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # Approvals are part of what a run would do.
    assert "approval: before-execute   before stage execute, timeout 60s, pause" in r.stdout
    assert "approval: release          after the gates, timeout 3600s, suspend" in r.stdout
    assert "execute      phase=execute  model=strong" in r.stdout
    assert f"$ python -c open('{marker}', 'w')" in r.stdout
    assert "t            test_pass        required" in r.stdout and "a            artifact_exists  optional" in r.stdout
    assert "total_usd=2.5" in r.stdout and "max_iterations=7" in r.stdout
    doc = json.loads(longrun_cli("plan", str(spec), "--json", cwd=tmp_path).stdout)
    assert doc["stages"][0]["argv"] == ["python", "-c", f"open('{marker}', 'w')"]
    assert doc["models"]["execute"] == "strong" and doc["models"]["search"] == "cheap"
    assert doc["budgets"]["tokens"] == 1000
    # Nothing ran and nothing was written.
    assert not marker.exists() and not (tmp_path / "ws").exists() and not (tmp_path / ".maestro").exists()


def test_bad_workspace_input_is_refused_before_prefect_starts(tmp_path):
    spec = write_job(
        tmp_path,
        "name: no-template\ngoal: g\nworkspace: {path: ws, template: missing-dir}\nallowed_tools: [python]\n"
        "model_policy: {default: m}\nstages: [{id: a, run: [python, -c, 'pass']}]\n",
    )
    r = longrun_cli("run", str(spec), "--root", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("template_not_found"), r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / ".maestro").exists()

    (tmp_path / "ws").mkdir()  # exists, but is not a git repository
    r = longrun_cli("run", str(spec), "--json", "--root", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and json.loads(r.stdout)["error"]["code"] == "workspace_missing"

    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (tmp_path / "link").symlink_to(outside)
    spec2 = write_job(
        tmp_path,
        "name: escapes\ngoal: g\nworkspace: {path: link}\nallowed_tools: [python]\n"
        "model_policy: {default: m}\nstages: [{id: a, run: [python, -c, 'pass']}]\n",
        name="escape.yaml",
    )
    r = longrun_cli("run", str(spec2), "--root", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("path_escape") and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("store", "code", "says"),
    [
        ("../elsewhere", "path_escape", "evidence.store"),
        ("longrun-s3-evidence-store/", "evidence_store_invalid", "'<block-type-slug>/<block-name>'"),
        ("s3:///runs", "evidence_store_invalid", "names no bucket"),
        ("'  '", "evidence_store_invalid", "evidence.store is empty"),
    ],
)
def test_bad_evidence_store_is_refused_before_anything_runs(tmp_path, store, code, says):
    spec = write_job(
        tmp_path,
        "name: bad-store\ngoal: g\nworkspace: {path: ws, template: template}\nallowed_tools: [python]\n"
        f'model_policy: {{default: m}}\nstages: [{{id: a, run: [python, -c, \'open("ran", "w")\']}}]\n'
        f"evidence: {{store: {store}}}\n",
    )
    for command in ("run", "deploy"):
        r = longrun_cli(command, str(spec), "--json", "--root", str(tmp_path), cwd=tmp_path)
        assert r.returncode == 2, r.stdout + r.stderr
        err = json.loads(r.stdout)["error"]
        assert err["code"] == code and says in err["message"], err
        assert "Traceback" not in r.stderr
    assert not (tmp_path / ".maestro").exists() and not (tmp_path / "ws").exists()


def test_main_sets_the_offline_prefect_defaults_for_every_command(tmp_path, monkeypatch, capsys):
    """``longrun evidence`` and the rest load Prefect only after these are set; the user's values win."""
    from longrun.cli import main as cli

    monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED", raising=False)
    monkeypatch.setenv("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "DEBUG")
    assert cli.main(["list", "--root", str(tmp_path)]) == 0
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] == "DEBUG"


def test_options_before_the_command_and_tail_n(tmp_path):
    loaded, record = _registered_job(tmp_path)
    r = longrun_cli("--json", "--root", str(tmp_path), "status", loaded.job_id, cwd=tmp_path.parent)
    st = json.loads(r.stdout)
    assert st["status"] == "PENDING" and st["last_event"]["ts"].endswith("Z")
    assert longrun_cli("tail", loaded.job_id, "-n", "0", "--root", str(tmp_path), cwd=tmp_path).stdout == ""
    one = longrun_cli("tail", loaded.job_id, "-n", "1", "--json", "--root", str(tmp_path), cwd=tmp_path).stdout
    assert [json.loads(l)["type"] for l in one.splitlines()] == ["job_registered"]
    bad = longrun_cli("tail", loaded.job_id, "-n", "-3", "--root", str(tmp_path), cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("usage_error")


def test_stored_job_keeps_its_id_when_the_spec_would_hash_differently(tmp_path):
    """A newer longrun may add defaulted fields; the stored job must keep its id."""
    from longrun.journal.registry import find_job

    loaded, record = _registered_job(tmp_path)
    doc = json.loads(record.paths.spec_file.read_text())
    # Simulate an older canonical form: same content, different bytes (hash differs).
    text = json.dumps(doc, indent=1)
    record.paths.spec_file.chmod(0o644)
    record.paths.spec_file.write_text(text + "\n")
    again = find_job(tmp_path, loaded.job_id).load()
    assert again.job_id == loaded.job_id and again.canonical == text
    assert again.spec == loaded.spec


@pytest.mark.prefect
def test_prefect_cli_can_list_runs_on_the_pinned_server(cli_env, tmp_path):
    """Guards the fastapi pin: from 0.151 on, Prefect 3.8.8's server rejects its own client's filters (422)."""
    r = subprocess.run(
        [sys.executable, "-m", "prefect", "flow-run", "ls"], env=cli_env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Unprocessable Entity" not in r.stdout + r.stderr


@pytest.mark.prefect
def test_a_running_job_is_not_started_twice(background, cli_env, tmp_path):
    spec = write_job(
        tmp_path,
        "name: busy\ngoal: g\nworkspace: {path: ws, template: template}\nallowed_tools: [python]\n"
        "model_policy: {default: m}\nstages: [{id: slow, run: [python, -c, 'import time; time.sleep(60)']}]\n"
        "quality_gates: {required: [{id: ok, kind: command_pass, run: [python, -c, 'pass']}]}\n",
    )
    job_id = load_spec(spec).job_id
    first = background(tmp_path, cli_env, "run", str(spec))
    journal = Journal(tmp_path / ".maestro" / "jobs" / job_id / "events.jsonl")
    wait_for(journal, first, lambda events: any(e.type == "stage_started" for e in events) or None, "stage_started")
    second = longrun_cli("run", str(spec), "--json", "--root", str(tmp_path), cwd=tmp_path, env=cli_env)
    assert second.returncode == 2, second.stdout + second.stderr
    err = json.loads(second.stdout)["error"]
    assert err["code"] == "job_already_running" and f"pid {first.pid}" in err["message"]
    assert journal.state().status == "RUNNING"  # the live run's journal is untouched
    assert [e.type for e in journal.read()].count("run_started") == 1  # the refused run journaled no start


def test_every_stable_error_code_is_documented_with_its_exit_code():
    from longrun.errors import EXIT_CODES

    text = (REPO / "docs" / "cli.md").read_text()
    table = text[text.index("## Error codes") :]
    documented = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([a-z_]+)` \| ([0-9]+|–) \|", table, flags=re.M)}
    assert documented == {code: "–" if exit is None else str(exit) for code, exit in EXIT_CODES.items()}


@pytest.mark.parametrize(
    ("code", "exit"),
    [
        ("job_invalid_spec", 2),
        ("deployment_ambiguous", 2),
        ("evidence_store_invalid", 2),
        ("gate_failed", 1),
        ("evidence_upload_failed", 7),
        ("stage_failed", 1),
        ("no_such_code", 1),
    ],
)
def test_main_exits_with_the_code_s_exit(code, exit, monkeypatch, capsys):
    """``main`` maps a LongrunError through the one table (codes that never end a command, and unknown ones: 1)."""
    from longrun.cli import jobs
    from longrun.cli.main import main
    from longrun.errors import LongrunError

    def boom(args, out):
        raise LongrunError("boom", code=code)

    monkeypatch.setattr(jobs, "cmd_status", boom)  # main() builds its parser, and binds fn, when called
    assert main(["status", "x"]) == exit
    assert capsys.readouterr().err == f"{code}: boom\n"
