"""Cron expressions and time zones, checked as Prefect's scheduler checks them.

A ``schedule`` becomes a Prefect ``CronSchedule`` at deploy time; anything
Prefect would refuse there must already be refused by ``longrun validate``.
Prefect 3 validates cron strings with the croniter it vendors
(``prefect/_vendor/croniter``) and time zones against
``zoneinfo.available_timezones()``. The spec layer must not import
``prefect`` (``validate`` and ``plan`` stay light), so the vendored module is
loaded from its file, on its own, the first time a spec has a schedule:
the same code, without the package around it.
"""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from zoneinfo import available_timezones

__all__ = ["check_cron", "check_timezone"]

_MODULE = "longrun._prefect_croniter"


@cache
def _croniter() -> ModuleType:
    spec = importlib.util.find_spec("prefect")
    if spec is None or spec.origin is None:
        raise RuntimeError("prefect is not installed; cron expressions cannot be checked")
    path = Path(spec.origin).parent / "_vendor" / "croniter" / "croniter.py"
    loader_spec = importlib.util.spec_from_file_location(_MODULE, path)
    if loader_spec is None or loader_spec.loader is None:
        raise RuntimeError(f"cannot load Prefect's croniter from {path}")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[_MODULE] = module
    loader_spec.loader.exec_module(module)
    return module


def check_cron(value: str) -> str:
    """``value`` if Prefect's ``CronSchedule`` accepts it and it has the 5 classic fields; else ValueError."""
    fields = value.split()
    if len(fields) != 5:
        raise ValueError("cron needs 5 fields: minute hour day-of-month month day-of-week")
    try:
        valid = bool(_croniter().croniter.is_valid(value))
    except Exception:
        valid = False
    if not valid:
        raise ValueError(f"{value!r} is not a valid cron expression")
    if any(f.casefold() in ("r", "h") for f in fields):
        raise ValueError(f"{value!r}: random (R) and hashed (H) expressions are not supported by Prefect")
    return value


@cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def check_timezone(value: str) -> str:
    """``value`` if it is an IANA time zone name (what Prefect accepts); POSIX TZ strings are refused."""
    if value not in _zones():
        raise ValueError(f"{value!r} is not an IANA time zone name (for example Europe/Berlin)")
    return value
