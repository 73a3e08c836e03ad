"""The environment a stage or command gate gets: an allowlist, never the engine's whole environment.

The engine holds credentials a stage must not see (``AWS_*`` for the evidence
store, ``PREFECT_API_KEY``, anything else its caller exported). A command gets:

1. from the engine's environment, only ``PATH``, ``LANG``, ``LC_*``, ``TZ``
   and ``LONGRUN_*`` (:data:`ALLOWED_NAMES`, :data:`ALLOWED_PREFIXES`);
2. the names it passes through by name: the command's ``env_passthrough``,
   the spec's ``defaults.env_passthrough`` and ``extra_names`` (the seam for
   names contributed by other sources, such as an agent preset); a listed
   name the engine does not have is skipped;
3. ``HOME`` (a per-job directory the engine creates) and ``TMPDIR`` (a
   per-command directory), set by the engine;
4. the spec's ``env`` (it may override any of the above);
5. then the ``LONGRUN_*`` variables (added by the caller; nothing overrides them).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

__all__ = ["ALLOWED_NAMES", "ALLOWED_PREFIXES", "stage_environment"]

#: Names every command gets from the engine's environment, when the engine has them.
ALLOWED_NAMES: tuple[str, ...] = ("PATH", "LANG", "TZ")
#: Prefixes of names every command gets from the engine's environment.
ALLOWED_PREFIXES: tuple[str, ...] = ("LC_", "LONGRUN_")


def stage_environment(
    spec_env: Mapping[str, str],
    passthrough: Iterable[str],
    extra_names: Iterable[str] = (),
    *,
    home: str,
    tmpdir: str,
    source: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of one stage or command gate, before the ``LONGRUN_*`` variables.

    ``source`` is the engine's environment (default ``os.environ``);
    ``passthrough`` and ``extra_names`` name variables taken from it on top of
    the allowlist. ``extra_names`` is where names from outside the spec come
    in (an agent preset's API key names, for example). ``PATH`` falls back to
    ``os.defpath`` so a command can always be looked up.
    """
    src = os.environ if source is None else source
    wanted = set(passthrough) | set(extra_names)
    env = {k: v for k, v in src.items() if k in ALLOWED_NAMES or k.startswith(ALLOWED_PREFIXES) or k in wanted}
    env.setdefault("PATH", os.defpath)
    env["HOME"] = home
    env["TMPDIR"] = tmpdir
    env.update(spec_env)
    return env
