"""The local Prefect server that ``longrun run`` starts once and reuses (longrun.flows.server).

Real processes throughout: ``longrun`` subprocesses with no ``PREFECT_API_URL``,
a real ``prefect server start`` they spawn under a throw-away ``LONGRUN_HOME``,
and CPU hogs (``yes``) this module starts and kills. Every server started here
is stopped by its pid at teardown.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import EXAMPLES, free_port, stop_group, stop_local_server, write_job

pytestmark = [pytest.mark.prefect]

SMALL = (
    "name: {name}\ngoal: g\nworkspace: {{path: ws-{name}, template: template}}\nallowed_tools: [python]\n"
    "model_policy: {{default: m}}\nstages: [{{id: a, run: [python, -c, 'pass']}}]\n"
    "quality_gates: {{required: [{{id: ok, kind: command_pass, run: [python, -c, 'pass']}}]}}\n"
)


def clean_env(longrun_home: Path, prefect_home: Path, **extra: str) -> dict:
    """The user's environment without any Prefect configuration: no PREFECT_API_URL, fresh homes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LONGRUN_"))}
    env |= {"LONGRUN_HOME": str(longrun_home), "PREFECT_HOME": str(prefect_home), **extra}
    return env


def longrun(*args: str, cwd: Path, env: dict, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(["longrun", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def server_processes(prefect_home: Path) -> list[int]:
    """Pids of ``prefect server start`` processes whose PREFECT_HOME is ``prefect_home``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[1:5] == [b"-m", b"prefect", b"server", b"start"] and f"PREFECT_HOME={prefect_home}".encode() in environ:
            found.append(int(proc.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"


def assert_unavailable(r: subprocess.CompletedProcess, says: str) -> None:
    assert r.returncode == 8, (r.returncode, r.stdout, r.stderr)
    errors = [line for line in r.stderr.splitlines() if line.startswith("prefect_unavailable: ")]
    assert len(errors) == 1 and says in errors[0], r.stderr
    assert "Traceback" not in r.stderr and r.stdout == "", r.stderr


@pytest.fixture
def cpu_hogs():
    """Two ``yes > /dev/null`` processes for the length of a test (a busy 2-core machine)."""
    hogs = [
        subprocess.Popen(["yes"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True) for _ in range(2)
    ]
    yield hogs
    for hog in hogs:
        stop_group(hog, grace=5)


@pytest.mark.slow
def test_readme_first_command_under_load_then_the_server_is_reused_and_stopped(tmp_path, cpu_hogs):
    """Empty homes, two CPU hogs: the README's first command starts the server and completes; a second run reuses it."""
    home, prefect_home = tmp_path / "longrun-home", tmp_path / "prefect-home"
    env = clean_env(home, prefect_home)
    shutil.copytree(EXAMPLES, tmp_path / "jobspecs" / "examples")
    try:
        r = longrun("run", "jobspecs/examples/fix-failing-test.yaml", cwd=tmp_path, env=env)
        assert all(h.poll() is None for h in cpu_hogs)  # the load lasted the whole run
        assert r.returncode == 0, r.stderr
        assert "fix-failing-test (5ca6a4da52ac): COMPLETED after 2 iteration(s)" in r.stdout
        assert "starting a local Prefect server (first start migrates its database)…" in r.stderr
        assert re.search(r"^local Prefect server ready after \d+s$", r.stderr, flags=re.M), r.stderr
        ui = re.search(r"^Prefect UI: (http://127\.0\.0\.1:(\d+))$", r.stderr, flags=re.M)
        assert ui, r.stderr
        assert "Traceback" not in r.stderr and "ERROR" not in r.stderr and "iteration 2" in r.stderr
        st = json.loads(longrun("status", "fix-failing-test", "--json", cwd=tmp_path, env=env).stdout)
        assert (st["status"], st["iterations_finished"]) == ("COMPLETED", 2)

        state = json.loads((home / "server.json").read_text())
        assert state["ui_url"] == ui.group(1) and state["api_url"] == ui.group(1) + "/api"
        assert state["prefect_home"] == str(home / "prefect") and state["port"] == int(ui.group(2))
        assert server_processes(home / "prefect") == [state["pid"]]
        # The run is in that server's database (not in an embedded one under PREFECT_HOME).
        assert not (prefect_home / "prefect.db").exists() and (home / "prefect" / "prefect.db").exists()
        for hog in cpu_hogs:
            stop_group(hog, grace=5)

        # A second run: same URL, same pid, still one server process, nothing started.
        spec = write_job(tmp_path, SMALL.format(name="second"), name="second.yaml")
        r2 = longrun("run", str(spec), "--json", cwd=tmp_path, env=env)
        assert r2.returncode == 0, r2.stderr
        assert json.loads(r2.stdout)["status"] == "COMPLETED"
        assert "starting a local Prefect server" not in r2.stderr
        assert f"Prefect UI: {state['ui_url']}" in r2.stderr.splitlines()
        assert json.loads((home / "server.json").read_text()) == state
        assert server_processes(home / "prefect") == [state["pid"]]
        status = json.loads(longrun("server", "status", "--json", cwd=tmp_path, env=env).stdout)
        assert status["running"] is True and status["pid"] == state["pid"] and status["ui_url"] == state["ui_url"]
        # The UI answers at the printed URL and is wired to the server's own API.
        with urllib.request.urlopen(f"{state['ui_url']}/ui-settings", timeout=30) as resp:
            settings = json.loads(resp.read())
        assert settings["api_url"] == state["api_url"]

        stop = longrun("server", "stop", cwd=tmp_path, env=env)
        assert stop.returncode == 0 and f"stopped the local Prefect server (pid {state['pid']}" in stop.stdout
        assert not alive(state["pid"]) and server_processes(home / "prefect") == []
        assert not (home / "server.json").exists()
        assert json.loads(longrun("server", "status", "--json", cwd=tmp_path, env=env).stdout)["running"] is False
        assert "no local Prefect server is running" in longrun("server", "stop", cwd=tmp_path, env=env).stdout
    finally:
        stop_local_server(home)


@pytest.mark.slow
def test_two_commands_starting_at_once_start_one_server(tmp_path):
    home = tmp_path / "longrun-home"
    env = clean_env(home, tmp_path / "prefect-home")
    try:
        procs = [
            subprocess.Popen(
                ["longrun", "server", "start", "--json"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            for _ in range(2)
        ]
        outs = [p.communicate(timeout=400) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        docs = [json.loads(out) for out, _ in outs]
        assert docs[0]["pid"] == docs[1]["pid"] and docs[0]["api_url"] == docs[1]["api_url"]
        assert server_processes(home / "prefect") == [docs[0]["pid"]]
        started = [err for _, err in outs if b"starting a local Prefect server" in err]
        assert len(started) == 1, outs  # the other one waited for it, or found it running
        logs = longrun("server", "logs", "-n", "200", cwd=tmp_path, env=env)
        assert logs.stdout.count("longrun starts prefect server on port") == 1
    finally:
        stop_local_server(home)
    assert not alive(docs[0]["pid"])


def test_no_server_to_be_had_is_prefect_unavailable_and_nothing_is_journaled(tmp_path):
    spec = write_job(tmp_path, SMALL.format(name="nowhere"))
    home = tmp_path / "longrun-home"

    # PREFECT_API_URL names a server that is not there.
    closed = f"http://127.0.0.1:{free_port()}/api"
    r = longrun("run", str(spec), cwd=tmp_path, env=clean_env(home, tmp_path / "ph", PREFECT_API_URL=closed))
    assert_unavailable(r, f"cannot reach the Prefect server at {closed} (PREFECT_API_URL)")
    assert "unset PREFECT_API_URL" in r.stderr

    # The local server's home cannot be created (a file is in the way).
    (tmp_path / "a-file").write_text("")
    r = longrun("run", str(spec), cwd=tmp_path, env=clean_env(tmp_path / "a-file" / "home", tmp_path / "ph"))
    assert_unavailable(r, "cannot create the local Prefect server's directory")

    # The local server starts but cannot open its database: it exits, and the command says so.
    bad_db = "sqlite+aiosqlite:////nonexistent-dir/prefect.db"
    r = longrun(
        "run", str(spec), cwd=tmp_path, env=clean_env(home, tmp_path / "ph", PREFECT_SERVER_DATABASE_CONNECTION_URL=bad_db)
    )
    assert_unavailable(r, "the local Prefect server exited with code")
    assert server_processes(home / "prefect") == [] and not (home / "server.json").exists()

    # --ephemeral, and Prefect's embedded server does not start in time.
    r = longrun(
        "run",
        str(spec),
        "--ephemeral",
        cwd=tmp_path,
        env=clean_env(home, tmp_path / "ph", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1"),
    )
    assert_unavailable(r, "Prefect's embedded server did not start within 1s (--ephemeral)")

    # Nothing ran and nothing was journaled.
    assert not (tmp_path / ".maestro" / "jobs").exists() or not any((tmp_path / ".maestro" / "jobs").iterdir())
    assert not (tmp_path / "ws-nowhere").exists()
    with_json = longrun("run", str(spec), "--json", cwd=tmp_path, env=clean_env(home, tmp_path / "ph", PREFECT_API_URL=closed))
    assert with_json.returncode == 8 and json.loads(with_json.stdout)["error"]["code"] == "prefect_unavailable"


def test_server_commands_without_a_server(tmp_path):
    env = clean_env(tmp_path / "home", tmp_path / "ph")
    t0 = time.monotonic()
    status = longrun("server", "status", cwd=tmp_path, env=env)
    assert status.returncode == 0 and "no local Prefect server is running" in status.stdout
    assert time.monotonic() - t0 < 10  # no Prefect import, no server start
    assert json.loads(longrun("server", "stop", "--json", cwd=tmp_path, env=env).stdout) == {"stopped": None}
    logs = longrun("server", "logs", cwd=tmp_path, env=env)
    assert logs.returncode == 0 and "no server log yet" in logs.stderr
    assert not (tmp_path / "home" / "prefect").exists()
