"""Which Prefect server a command talks to, decided before Prefect is imported.

* ``PREFECT_API_URL`` set (in the environment or the active Prefect profile):
  that server, as before; it must answer, else ``prefect_unavailable``.
* ``--ephemeral`` or ``LONGRUN_EPHEMERAL=1``: Prefect's embedded server, started
  by this command and gone with it (no UI).
* otherwise: the local server (``longrun.flows.server``), reused when it is
  live, else started in the background; ``PREFECT_API_URL`` is set to it for
  this process and its children.

``run``, ``resume``, ``approve`` (to resume a paused run) and ``deploy --serve``
call :func:`connect`; read-only commands never do.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from longrun.errors import LongrunError

__all__ = ["EPHEMERAL_ENV", "add_ephemeral", "configured_api_url", "connect", "ensure_local", "wants_ephemeral"]

EPHEMERAL_ENV = "LONGRUN_EPHEMERAL"
START_TIMEOUT_ENV = "LONGRUN_SERVER_START_TIMEOUT"


def add_ephemeral(parser: Any) -> None:
    parser.add_argument(
        "--ephemeral",
        action="store_true",
        help=f"use Prefect's embedded per-command server instead of the local one (also {EPHEMERAL_ENV}=1)",
    )


def wants_ephemeral(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> bool:
    return bool(getattr(args, "ephemeral", False)) or env.get(EPHEMERAL_ENV, "").strip().lower() in ("1", "true", "yes")


def configured_api_url(env: Mapping[str, str] = os.environ) -> str | None:
    """``PREFECT_API_URL`` from the environment, else from the active profile of ``$PREFECT_HOME/profiles.toml``."""
    if env.get("PREFECT_API_URL"):
        return env["PREFECT_API_URL"]
    home = Path(env.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    profiles = Path(env.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        doc = tomllib.loads(profiles.read_text())
    except (OSError, ValueError):
        return None
    active = env.get("PREFECT_PROFILE") or doc.get("active") or "ephemeral"
    value = doc.get("profiles", {}).get(active, {}).get("PREFECT_API_URL")
    return str(value) if value else None


def connect(args: argparse.Namespace) -> str | None:
    """Point this process at its Prefect server; the API URL, or None for the embedded server."""
    configured = configured_api_url()
    if configured:
        from longrun.flows.server import reachable

        if (problem := reachable(configured)) is not None:
            raise LongrunError(
                f"cannot reach the Prefect server at {configured} (PREFECT_API_URL): {problem}; "
                "start that server, or unset PREFECT_API_URL to use a local one",
                code="prefect_unavailable",
                retryable=True,
            )
        return configured
    if wants_ephemeral(args):
        print("using Prefect's embedded server for this command (--ephemeral; no UI)", file=sys.stderr)
        return None
    server = ensure_local()
    os.environ["PREFECT_API_URL"] = server.api_url
    print(f"Prefect UI: {server.ui_url}", file=sys.stderr, flush=True)
    return server.api_url


def ensure_local() -> Any:
    """The local server, started (with progress on stderr) if none is live."""
    from longrun.flows.server import DEFAULT_START_TIMEOUT, ServerPaths, ensure

    paths = ServerPaths.from_env()
    try:
        timeout = float(os.environ.get(START_TIMEOUT_ENV) or DEFAULT_START_TIMEOUT)
    except ValueError:
        raise LongrunError(f"{START_TIMEOUT_ENV} is not a number of seconds", code="usage_error") from None
    progress = _Progress()
    server, started = ensure(
        paths,
        timeout=timeout,
        on_start=progress.starting,
        on_wait=progress.waiting,
        progress=progress.tick,
    )
    progress.done(started)
    return server


class _Progress:
    """Lines on stderr while a server starts: elapsed seconds in place on a terminal, a line every 10 s otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.t0 = time.monotonic()
        self.shown = False
        self.last = 0

    def starting(self) -> None:
        self.t0 = time.monotonic()
        print("starting a local Prefect server (first start migrates its database)…", file=sys.stderr, flush=True)
        self.shown = True

    def waiting(self) -> None:
        print("waiting for another longrun command that is starting the local Prefect server…", file=sys.stderr, flush=True)
        self.shown = True

    def tick(self, elapsed: float) -> None:
        seconds = int(elapsed)
        if self.tty:
            print(f"\r  {seconds}s", end="", file=sys.stderr, flush=True)
        elif seconds >= self.last + 10:
            self.last = seconds - seconds % 10
            print(f"  still starting after {self.last}s", file=sys.stderr, flush=True)

    def done(self, started: bool) -> None:
        if self.shown:
            end = "\r" if self.tty else ""
            print(f"{end}local Prefect server ready after {time.monotonic() - self.t0:.0f}s", file=sys.stderr, flush=True)
