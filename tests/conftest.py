"""Shared fixtures.

``prefect_server`` starts a real ``prefect server start`` on 127.0.0.1 (a free
port, a throw-away PREFECT_HOME) once per test session. ``LONGRUN_HOME`` points
at a throw-away directory for the whole session, so a command that starts the
local server (``longrun.flows.server``) never touches the user's; any server
left there is stopped, by its pid, when the session ends. In-process flows reach
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

# PostgreSQL, a Prefect server on it and process workers, for scale-out tests (started only when asked for).
pytest_plugins = ["scaleout"]

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "jobspecs" / "examples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrefectServer:
    """A real ``prefect server start`` on 127.0.0.1 and a free port, with a throw-away PREFECT_HOME.

    Its database is SQLite in that home, or ``database_url`` (``postgresql+asyncpg://...``).
    """

    def __init__(self, home: Path, *, ui: bool = False, database_url: str | None = None) -> None:
        self.home = home
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base}/api"
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_URL": self.url,
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(self.port),
            "PREFECT_UI_ENABLED": "true" if ui else "false",
            # A 503 says "retry" but hides its cause; log it so a failing test can show why.
            "PREFECT_SERVER_LOG_RETRYABLE_ERRORS": "true",
            "PREFECT_UI_API_URL": self.url,
            **({"PREFECT_API_DATABASE_CONNECTION_URL": database_url} if database_url else {}),
        }
        self.log_path = home / "server.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait(self, ready=None, timeout: float = 120) -> None:
        """Until ``/api/health`` answers (and ``ready()``, if given, is true)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                    if r.status == 200 and (ready is None or ready()):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("prefect server did not start:\n" + self.log_path.read_text()[-3000:])
            time.sleep(0.3)

    def stop(self, grace: float = 20) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture(scope="session", autouse=True)
def longrun_home(tmp_path_factory):
    """The session's ``LONGRUN_HOME`` (the local Prefect server's home); its server is stopped at the end."""
    from longrun.flows.server import ServerPaths, stop

    home = tmp_path_factory.mktemp("longrun-home")
    before = os.environ.get("LONGRUN_HOME")
    os.environ["LONGRUN_HOME"] = str(home)
    try:
        yield home
    finally:
        stop(ServerPaths(home))
        if before is None:
            os.environ.pop("LONGRUN_HOME", None)
        else:
            os.environ["LONGRUN_HOME"] = before


def stop_local_server(home: Path) -> None:
    """Stop the local server of ``home`` (by the pid its state file records), if one runs."""
    from longrun.flows.server import ServerPaths, stop

    stop(ServerPaths(home))


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    server = PrefectServer(tmp_path_factory.mktemp("prefect-home"))
    server.wait(timeout=90)

    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    try:
        with temporary_settings(updates={PREFECT_API_URL: server.url, PREFECT_HOME: str(server.home)}):
            yield {
                "url": server.url,
                "home": str(server.home),
                "env": {"PREFECT_API_URL": server.url, "PREFECT_HOME": str(server.home)},
            }
            from prefect.logging.handlers import APILogHandler

            APILogHandler().flush()  # ship buffered run logs while the server is still up
    finally:
        server.stop()


@pytest.fixture
def cli_env(prefect_server):
    """Environment for a ``longrun`` subprocess talking to the session's server."""
    return {**os.environ, **prefect_server["env"], "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def longrun_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "longrun.cli.main", *args],
        cwd=cwd,
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def stop_group(proc: subprocess.Popen, grace: float = 15) -> None:
    """End a process started with ``start_new_session=True``, and its whole group: TERM, then KILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)


@pytest.fixture
def background():
    """``start(root, env, *args)``: ``longrun <args> --json --root ROOT`` in the background, in ROOT.

    Whatever is still running at teardown is ended with its process group (a
    run paused for a human would otherwise wait up to its approval timeout).
    """
    procs: list[subprocess.Popen] = []

    def start(root: Path, env: dict, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "longrun.cli.main", *args, "--json", "--root", str(root)],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        stop_group(proc)


def api(method: str, url: str, body: dict | None = None, attempts: int = 8):
    """A Prefect REST call, retried like Prefect's own client does when the server answers 503.

    The server says 503 for errors worth retrying (SQLite busy under load);
    anything else is returned as it is. Returns the ``httpx.Response``.
    """
    import httpx

    for attempt in range(attempts):
        resp = httpx.request(method, url, json=body, timeout=60)
        if resp.status_code != 503 or attempt == attempts - 1:
            return resp
        time.sleep(min(0.5 * 2**attempt, 8))
    raise AssertionError("unreachable")


def wait_for(journal, proc: subprocess.Popen, found, what: str, deadline_s: float = 90):
    """Poll until ``found(events)`` returns something, and return it; fails if ``proc`` exits first."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if journal.path.exists() and (result := found(journal.read())) is not None:
            return result
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the process exited {proc.returncode} before {what}:\n{out}\n{err}")
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {deadline_s}s")


def sigkill_engine_once(proc: subprocess.Popen, started: Path, what: str, deadline_s: float = 120) -> None:
    """Once the file ``started`` exists (a stage is running), SIGKILL the engine alone, leaving its stage orphaned."""
    deadline = time.monotonic() + deadline_s
    while not started.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{what} never started"
        time.sleep(0.1)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def wait_paused(journal, step: str, proc: subprocess.Popen, deadline_s: float = 90):
    """The last ``approval_requested`` event of ``step``, once Prefect shows its flow run PAUSED."""

    def paused(events):
        reqs = [e for e in events if e.type == "approval_requested" and e.payload.step == step]
        if not reqs:
            return None
        extra = reqs[-1].payload.model_dump()
        resp = api("GET", f"{extra['api_url']}/flow_runs/{extra['flow_run_id']}")
        resp.raise_for_status()
        return reqs[-1] if resp.json()["state"]["type"] == "PAUSED" else None

    return wait_for(journal, proc, paused, f"a pause for {step!r}", deadline_s)


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
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
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
