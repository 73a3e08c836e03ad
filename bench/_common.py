"""Helpers shared by the bench scripts: servers started (and stopped by pid) from the script, medians, machine details.

Not a bench itself. Servers run as child processes on 127.0.0.1 at a free
port, each in its own session so that stopping one ends its whole process
group and nothing else:

* :class:`PrefectServer`: ``prefect server start`` with a throw-away
  ``PREFECT_HOME``, analytics and UI off; :meth:`PrefectServer.wait` polls
  ``/api/health`` with a long timeout (a first migration takes 30-80 s on a
  loaded 2-core machine);
* :class:`MotoServer`: ``python -m moto.server``, an S3 API.
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

PY = sys.executable
REPO = Path(__file__).resolve().parents[1]

#: Environment for every child: no telemetry, quiet Prefect logs, no bytecode-writing surprises left as they are.
BASE_ENV = {
    **os.environ,
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
}
BASE_ENV.pop("PREFECT_API_URL", None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_group(proc: subprocess.Popen, grace: float = 20) -> None:
    """TERM the process group of a child started with ``start_new_session=True`` (by its pid), then KILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class PrefectServer:
    """``prefect server start --host 127.0.0.1 --port P`` with its own ``PREFECT_HOME``; a context manager."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.env = {
            **BASE_ENV,
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": self.url,
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(self.port),
            "PREFECT_UI_ENABLED": "false",
        }
        self.log_path = self.home / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> PrefectServer:
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [PY, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    def wait(self, timeout: float = 300) -> float:
        """Seconds until ``/api/health`` answers."""
        t0 = time.monotonic()
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except OSError:
                pass
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() - t0 > timeout:
                self.stop()
                raise RuntimeError("prefect server did not start:\n" + self.log_path.read_text()[-3000:])
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc)

    def __enter__(self) -> PrefectServer:
        self.start()
        self.wait()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MotoServer:
    """``python -m moto.server -H 127.0.0.1 -p P``; a context manager whose value is the endpoint URL."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_dir) / "moto.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> str:
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [PY, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.url + "/", timeout=1):
                    return self.url
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                _stop_group(self.proc)
                raise RuntimeError("moto server did not start:\n" + self.log_path.read_text()[-3000:])
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            _stop_group(self.proc)


def git_root(path: Path) -> Path:
    """A fresh directory that is a git repository (a job's root and workspace)."""
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    return path


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def row(label: str, longrun: Sequence[float], base: Sequence[float], base_label: str, unit: str = "s") -> str:
    """``label  longrun-median  baseline-median  ratio  (n, n)  baseline-label``."""
    a, b = med(longrun), med(base)
    scale, fmt = (1000, "{:>9.1f} ms") if unit == "ms" else (1, "{:>9.2f} s ")
    return (
        f"{label:<28}" + fmt.format(a * scale) + fmt.format(b * scale) + f" {a / b:>6.2f}x"
        f"  n={len(longrun)}/{len(base)}  {base_label}"
    )


def header() -> str:
    return f"{'':<28}{'longrun':>12}{'baseline':>12} {'ratio':>7}  samples  baseline"


def machine() -> str:
    """CPU model, cores, Python, Prefect and the date (no paths)."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0]
    return (
        f"{cpu}, {os.cpu_count()} cores, load {load:.1f}; Python {platform.python_version()}, "
        f"Prefect {version('prefect')}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
