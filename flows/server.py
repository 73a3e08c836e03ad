"""The local Prefect server: started once, in the background, and reused by every command (like docker's daemon).

::

    <data dir>/                  $LONGRUN_HOME, else $XDG_DATA_HOME/longrun, else ~/.local/share/longrun
      server.json                the live server: {"v": 1, "api_url", "ui_url", "pid", "port", ...}
      server.lock                flock'ed around check-then-start: two commands never start two servers
      server.log                 the server's output, appended at every start
      prefect/                   the server's PREFECT_HOME (its SQLite database, UI bundles)

``ensure`` reuses the server the state file names when its pid is alive and
``/api/health`` answers; otherwise it starts ``python -m prefect server start``
on 127.0.0.1 at a free port, in its own session (it outlives the command), and
waits until it answers. ``stop`` ends it by its process group.

This module spawns Prefect but never imports it: the CLI calls it before
Prefect is imported, and sets ``PREFECT_API_URL`` from what it returns. Every
failure to reach or start a server is ``prefect_unavailable``.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from longrun import atomicio
from longrun.errors import LongrunError

__all__ = [
    "DEFAULT_START_TIMEOUT",
    "LocalServer",
    "ServerPaths",
    "ensure",
    "find",
    "healthy",
    "reachable",
    "start",
    "stop",
    "unavailable",
]

#: Seconds a start may take: a first start migrates a new database (30-80 s on a loaded 2-core machine).
DEFAULT_START_TIMEOUT = 300.0
STATE_VERSION = 1


def unavailable(message: str) -> LongrunError:
    return LongrunError(message, code="prefect_unavailable", retryable=True)


@dataclass(frozen=True)
class ServerPaths:
    """Where the local server keeps its files: under the user's longrun data directory."""

    home: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ServerPaths:
        if env.get("LONGRUN_HOME"):
            return cls(Path(env["LONGRUN_HOME"]).expanduser())
        base = Path(env["XDG_DATA_HOME"]).expanduser() if env.get("XDG_DATA_HOME") else Path.home() / ".local" / "share"
        return cls(base / "longrun")

    @property
    def state(self) -> Path:
        return self.home / "server.json"

    @property
    def lock(self) -> Path:
        return self.home / "server.lock"

    @property
    def log(self) -> Path:
        return self.home / "server.log"

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"


@dataclass(frozen=True)
class LocalServer:
    """A local server as its state file records it."""

    api_url: str
    ui_url: str
    pid: int
    port: int
    prefect_home: str
    log: str
    started_at: str
    v: int = STATE_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------- probes


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    """``GET <api_url>/health`` answers 200."""
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as resp:
            return resp.status == 200
    except (OSError, ValueError):
        return False


def reachable(api_url: str, timeout: float = 10.0) -> str | None:
    """None if a server answers at ``api_url`` (any HTTP status: a cloud API may want a key), else why not."""
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except urllib.error.URLError as exc:
        return str(exc.reason)
    except (OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not a server.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _is_prefect_server(pid: int) -> bool:
    """The pid runs ``prefect server start`` (a recycled pid does not); True where /proc cannot tell."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return _alive(pid)
    return b"prefect" in argv and b"server" in argv and b"start" in argv


def _read_state(paths: ServerPaths) -> LocalServer | None:
    try:
        doc = json.loads(paths.state.read_text())
        if doc.get("v") != STATE_VERSION:
            return None
        return LocalServer(**doc)
    except (OSError, ValueError, TypeError):
        return None


def find(paths: ServerPaths) -> LocalServer | None:
    """The recorded server if its process is alive and it answers its health check."""
    server = _read_state(paths)
    if server is None or not _alive(server.pid) or not healthy(server.api_url):
        return None
    return server


# ----------------------------------------------------------------- start


@contextmanager
def _locked(paths: ServerPaths, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    fd = atomicio.open_for_update(paths.lock)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prepare(paths: ServerPaths) -> None:
    try:
        paths.prefect_home.mkdir(parents=True, exist_ok=True)
        atomicio.touch(paths.lock)
    except OSError as exc:
        raise unavailable(
            f"cannot create the local Prefect server's directory {paths.home} ({exc.strerror or exc}); "
            "set LONGRUN_HOME to a writable directory, or PREFECT_API_URL to a running server"
        ) from None


def _log_tail(paths: ServerPaths, lines: int = 3) -> str:
    try:
        text = paths.log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:] if line.strip())


def _spawn(paths: ServerPaths, port: int) -> subprocess.Popen[bytes]:
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(paths.prefect_home),
        "PREFECT_API_URL": api_url,
        # The UI's browser code calls this URL; it must be the server's own API.
        "PREFECT_UI_API_URL": api_url,
        "PREFECT_UI_ENABLED": "true",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    log = atomicio.open_append(paths.log)
    try:
        log.write(f"== {datetime.now(UTC).isoformat()} longrun starts prefect server on port {port}\n".encode())
        log.flush()
        return subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=str(paths.home),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session: it outlives this command and its terminal's Ctrl-C
        )
    finally:
        log.close()


def _wait_ready(
    proc: subprocess.Popen[bytes],
    api_url: str,
    timeout: float,
    progress: Callable[[float], None] | None,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> int | None:
    """Until the server answers (None) or its process exits (its exit code); raises on timeout."""
    started = clock()
    while True:
        if healthy(api_url, timeout=1.0):
            return None
        if (code := proc.poll()) is not None:
            return code
        elapsed = clock() - started
        if elapsed > timeout:
            _kill_group(proc.pid)
            raise unavailable(
                f"the local Prefect server did not answer at {api_url} within {timeout:.0f}s; "
                "see `longrun server logs`, raise LONGRUN_SERVER_START_TIMEOUT, or set PREFECT_API_URL to a running server"
            )
        if progress is not None:
            progress(elapsed)
        sleep(0.5)


def start(
    paths: ServerPaths,
    *,
    timeout: float = DEFAULT_START_TIMEOUT,
    progress: Callable[[float], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> LocalServer:
    """Start a server (the caller holds the lock and found none) and record it once it answers."""
    for attempt in (1, 2):
        port = _free_port()
        api_url = f"http://127.0.0.1:{port}/api"
        try:
            proc = _spawn(paths, port)
        except OSError as exc:
            raise unavailable(f"cannot start `prefect server start` ({exc}); check the Prefect installation") from None
        code = _wait_ready(proc, api_url, timeout, progress, clock, sleep)
        if code is None:
            server = LocalServer(
                api_url=api_url,
                ui_url=f"http://127.0.0.1:{port}",
                pid=proc.pid,
                port=port,
                prefect_home=str(paths.prefect_home),
                log=str(paths.log),
                started_at=datetime.now(UTC).isoformat(),
            )
            atomicio.write_atomic(paths.state, json.dumps(server.to_dict(), sort_keys=True) + "\n")
            return server
        tail = _log_tail(paths)
        if attempt == 1 and "already in use" in tail:
            continue  # another process took the free port between our probe and the server's bind
        raise unavailable(
            f"the local Prefect server exited with code {code} while starting ({tail or 'no output'}); "
            f"see {paths.log}, or set PREFECT_API_URL to a running server"
        )
    raise AssertionError("unreachable")


def ensure(
    paths: ServerPaths,
    *,
    timeout: float = DEFAULT_START_TIMEOUT,
    on_start: Callable[[], None] | None = None,
    on_wait: Callable[[], None] | None = None,
    progress: Callable[[float], None] | None = None,
) -> tuple[LocalServer, bool]:
    """The live local server, started if there is none; ``(server, started_by_this_call)``."""
    if (server := find(paths)) is not None:
        return server, False
    _prepare(paths)
    with _locked(paths, on_wait):
        recorded = _read_state(paths)
        if recorded is not None and _alive(recorded.pid) and _is_prefect_server(recorded.pid):
            # Recorded and alive: answering now, or still starting (its starter was interrupted).
            if healthy(recorded.api_url) or _wait_recorded(recorded, timeout, progress):
                return recorded, False
            _kill_group(recorded.pid)
        if on_start is not None:
            on_start()
        return start(paths, timeout=timeout, progress=progress), True


def _wait_recorded(server: LocalServer, timeout: float, progress: Callable[[float], None] | None) -> bool:
    started = time.monotonic()
    while _alive(server.pid) and (elapsed := time.monotonic() - started) < timeout:
        if healthy(server.api_url, timeout=1.0):
            return True
        if progress is not None:
            progress(elapsed)
        time.sleep(0.5)
    return False


# ----------------------------------------------------------------- stop


def _kill_group(pid: int, grace: float = 20.0) -> None:
    """SIGTERM the server's process group, then SIGKILL it after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)  # reaps it when this process started it
            except ChildProcessError:
                pass
            if not _alive(pid):
                return
            time.sleep(0.1)


def stop(paths: ServerPaths) -> LocalServer | None:
    """Stop the recorded server (if its process is alive) and forget it; what was stopped, or None."""
    with _locked(paths) if paths.lock.exists() else _nothing():
        server = _read_state(paths)
        if server is None:
            return None
        running = _alive(server.pid) and _is_prefect_server(server.pid)
        if running:
            _kill_group(server.pid)
        atomicio.remove(paths.state)
        return server if running else None


@contextmanager
def _nothing() -> Iterator[None]:
    yield
