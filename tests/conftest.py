"""Shared fixtures.

``prefect_server`` starts a real ``prefect server start`` on 127.0.0.1 (a free
port, a throw-away PREFECT_HOME) once per test session. In-process flows reach
it through ``temporary_settings``; CLI subprocesses through the environment
that ``cli_env`` returns. Nothing is mocked: flows, tasks, results, git and
subprocesses are all real.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

# Before anything imports prefect: no telemetry calls on a machine without network.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "jobspecs" / "examples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": url,
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_ENABLED": "false",
    }
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise RuntimeError("prefect server did not start:\n" + (home / "server.log").read_text()[-3000:])
        time.sleep(0.3)

    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_HOME: str(home)}):
        yield {"url": url, "home": str(home), "env": {"PREFECT_API_URL": url, "PREFECT_HOME": str(home)}}
        from prefect.logging.handlers import APILogHandler

        APILogHandler().flush()  # ship buffered run logs while the server is still up
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


@pytest.fixture
def cli_env(prefect_server):
    """Environment for a ``longrun`` subprocess talking to the session's server."""
    return {**os.environ, **prefect_server["env"], "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def longrun_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "longrun.cli", *args],
        cwd=cwd, env=env or dict(os.environ), capture_output=True, text=True, timeout=timeout,
    )


def write_job(tmp_path: Path, spec_text: str, files: dict[str, str] | None = None, name: str = "job.yaml") -> Path:
    """A spec file plus a workspace template ``template/`` beside it."""
    template = tmp_path / "template"
    template.mkdir(exist_ok=True)
    (template / "README.md").write_text("test workspace\n")
    for rel, text in (files or {}).items():
        p = template / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    spec = tmp_path / name
    spec.write_text(spec_text)
    return spec


@pytest.fixture
def example_copy(tmp_path):
    """The shipped examples copied into tmp_path (so their workspaces land there)."""
    dest = tmp_path / "examples"
    shutil.copytree(EXAMPLES, dest)
    return dest


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """``python -m moto.server`` on 127.0.0.1 and a free port, for the whole session."""
    log_dir = tmp_path_factory.mktemp("moto")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(log_dir / "moto.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url + "/", timeout=1):
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise RuntimeError("moto server did not start:\n" + (log_dir / "moto.log").read_text()[-3000:])
        time.sleep(0.1)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()
