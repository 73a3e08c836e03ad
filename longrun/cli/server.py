"""``longrun server status|start|stop|logs``: the local Prefect server that ``run`` starts and reuses.

None of these import Prefect: ``longrun.flows.server`` spawns it and probes
it over HTTP.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from longrun.cli.common import EXIT_OK, Out

__all__ = ["PARSERS", "cmd_server"]


def _paths() -> Any:
    from longrun.flows.server import ServerPaths

    return ServerPaths.from_env()


def _status(args: argparse.Namespace, out: Out) -> int:
    from longrun.flows.server import find

    paths = _paths()
    server = find(paths)
    doc: dict[str, Any] = {"running": server is not None, "home": str(paths.home), "log": str(paths.log)}
    if server is None:
        out.emit(f"no local Prefect server is running (its home: {paths.home})", doc)
        return EXIT_OK
    doc |= server.to_dict()
    out.emit(
        f"local Prefect server running (pid {server.pid}) since {server.started_at}\n"
        f"  UI         {server.ui_url}\n"
        f"  API        {server.api_url}\n"
        f"  home       {server.prefect_home}\n"
        f"  log        {server.log}",
        doc,
    )
    return EXIT_OK


def _start(args: argparse.Namespace, out: Out) -> int:
    from longrun.cli.connect import ensure_local

    server = ensure_local()
    out.emit(
        f"local Prefect server running (pid {server.pid})\n  UI   {server.ui_url}\n  API  {server.api_url}",
        {"running": True} | server.to_dict(),
    )
    return EXIT_OK


def _stop(args: argparse.Namespace, out: Out) -> int:
    from longrun.flows.server import stop

    server = stop(_paths())
    if server is None:
        out.emit("no local Prefect server is running", {"stopped": None})
    else:
        out.emit(f"stopped the local Prefect server (pid {server.pid}, {server.ui_url})", {"stopped": server.to_dict()})
    return EXIT_OK


def _logs(args: argparse.Namespace, out: Out) -> int:
    """The last ``-n`` lines of the server's log; ``--follow`` keeps printing new ones until Ctrl-C."""
    log = _paths().log
    if args.lines < 0:
        from longrun.errors import LongrunError

        raise LongrunError(f"-n must be 0 or more, got {args.lines}", code="usage_error")
    try:
        f = open(log, "rb")  # read-only
    except FileNotFoundError:
        print(f"no server log yet ({log})", file=sys.stderr)
        return EXIT_OK
    with f:
        lines = f.read().decode(errors="replace").splitlines()
        for line in lines[len(lines) - args.lines :] if args.lines else []:
            print(line)
        sys.stdout.flush()
        while args.follow:
            chunk = f.read()
            if chunk:
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
            else:
                time.sleep(0.5)
    return EXIT_OK


_ACTIONS = {"status": _status, "start": _start, "stop": _stop, "logs": _logs}


def cmd_server(args: argparse.Namespace, out: Out) -> int:
    return _ACTIONS[args.action](args, out)


def _add_server(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "server",
        parents=[common],
        help="the local Prefect server (with its UI) that run, resume, approve and deploy --serve use",
        description="The local Prefect server: started in the background by the first command that needs it "
        "(when PREFECT_API_URL is not set), reused by the next ones, kept until `longrun server stop`. "
        "Its home is $LONGRUN_HOME, else $XDG_DATA_HOME/longrun, else ~/.local/share/longrun.",
    )
    actions = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("status", "is it running; its URLs, pid and files"),
        ("start", "start it now (a no-op when it runs)"),
        ("stop", "stop it (jobs are unaffected; the next run starts it again)"),
    ):
        actions.add_parser(name, parents=[common], help=text)
    logs = actions.add_parser("logs", parents=[common], help="print its log")
    logs.add_argument("-n", "--lines", type=int, default=50, help="print the last N lines (default 50)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until Ctrl-C")
    s.set_defaults(fn=cmd_server)


#: Command name → the function that adds its subparser (``longrun.cli.main`` orders them).
PARSERS = {"server": _add_server}
