"""Run one stage command: streamed to a log, in its own process group, bounded in time.

:func:`run_command` is the only way longrun starts a stage or gate command:

* the child gets ``stdin`` from ``/dev/null`` and the open log file as both
  ``stdout`` and ``stderr``, so output goes straight to disk and is never held
  in memory; a header line is written before and a footer line after;
* the child leads a new session (``start_new_session=True``), so its pid is
  also its process-group id and the whole tree it spawns can be signalled at
  once. On timeout the group gets SIGTERM, ``kill_grace`` seconds to exit,
  then SIGKILL. Members left behind by a command that exited normally (a
  forgotten ``sleep &``) get the same treatment: a stage does not outlive its
  command;
* an optional pid file holds the group id while the command runs, so that
  after the engine itself was SIGKILLed, :func:`kill_stale_group` can find and
  kill the orphaned stage before it is run again.

:func:`scan_log` and :func:`read_usage_file` read what the command left
behind (usage numbers printed to stdout, or written to a JSON file).
"""

from __future__ import annotations

import json
import math
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from longrun import atomicio
from longrun.errors import LongrunError
from longrun.execution.sandbox import SandboxPlan, bwrap_argv

__all__ = [
    "CommandResult",
    "Usage",
    "build_argv",
    "kill_stale_group",
    "read_usage_file",
    "run_command",
    "scan_log",
]

#: Shell names that, as argv[0] of a ``shell=True`` command, mean "argv[1] is the script".
_SHELLS = {"sh": "/bin/sh", "bash": "bash"}
_POLL_S = 0.05
#: After SIGKILL, how long to wait for the kernel to tear the group down.
_KILL_SETTLE_S = 2.0
#: scan_log reads lines in pieces of at most this many bytes.
_SCAN_CHUNK = 1 << 20


@dataclass(frozen=True)
class CommandResult:
    """What happened to one command.

    ``exit_code`` is the child's exit status; a negative value ``-N`` means it
    died from signal N (Python's convention). It is None when the command
    timed out (``timed_out`` is then True) or could not be started for a reason
    other than a missing or unexecutable program. Start failures follow the
    shell's convention: 127 = executable not found, 126 = cannot execute.
    ``log_offset_start``/``log_offset_end`` delimit the command's own output
    in the log (between header and footer), for :func:`scan_log`.
    """

    exit_code: int | None
    timed_out: bool
    duration_s: float
    error: str | None
    log_offset_start: int
    log_offset_end: int

    @property
    def ok(self) -> bool:
        """True when the command ran to completion with exit status 0."""
        return self.exit_code == 0 and not self.timed_out and self.error is None


@dataclass(frozen=True)
class Usage:
    """Cost a command reports for itself (see :func:`read_usage_file`)."""

    usd: float = 0.0
    tokens: int = 0
    model: str | None = None


def build_argv(argv: list[str], *, shell: bool = False) -> list[str]:
    """Return the argv actually executed for ``argv`` (and ``shell``).

    Without ``shell`` the argv is used as given. With ``shell=True``:

    * ``argv[0]`` is ``sh`` or ``bash`` (as in the spec, ``run: [sh, "script"]``):
      ``argv[1]`` is the script and the rest become ``$0 $1 ...`` —
      ``["/bin/sh", "-c", argv[1], *argv[2:]]`` (``bash`` from PATH for ``bash``);
    * otherwise the whole argv, each element quoted (``shlex.join``), is the
      script: ``["/bin/sh", "-c", shlex.join(argv)]``, so an element is always
      one word and never shell syntax.
    """
    if not argv:
        raise ValueError("argv must not be empty")
    if not shell:
        return list(argv)
    shell_bin = _SHELLS.get(argv[0])
    if shell_bin is not None:
        if len(argv) < 2:
            raise ValueError(f"shell command {argv[0]!r} needs the script as argv[1]")
        return [shell_bin, "-c", argv[1], *argv[2:]]
    return ["/bin/sh", "-c", shlex.join(argv)]


def run_command(
    argv: list[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    log_path: Path,
    shell: bool = False,
    header: str | None = None,
    pid_file: Path | None = None,
    kill_grace: float = 3.0,
    sandbox: SandboxPlan | None = None,
) -> CommandResult:
    """Run ``argv`` in ``cwd`` with exactly ``env``, appending its output to ``log_path``.

    ``env`` is the child's whole environment (it is not merged with ours; PATH
    in it is used to find the executable). See :func:`build_argv` for what
    ``shell=True`` runs. Never raises for a failing command: failures to start,
    non-zero exits and timeouts all come back as a :class:`CommandResult`.
    If this call itself is interrupted (KeyboardInterrupt, cancellation) the
    group is killed before the exception propagates.

    With ``sandbox`` the command runs inside ``bwrap`` (see
    :mod:`longrun.execution.sandbox`); the log header shows the command
    itself. A program that cannot be found or executed is reported as 127/126
    before the sandbox starts, as without one.
    """
    real_argv = build_argv(argv, shell=shell)
    label = f"{header} $ " if header else "$ "
    with atomicio.open_append(log_path) as log:
        _write(log, f"=== {label}{shlex.join(real_argv)} ===\n")
        start_offset = _size(log)
        started = time.monotonic()
        try:
            if sandbox is not None:
                _check_executable(real_argv[0], env, cwd)
            proc = subprocess.Popen(
                bwrap_argv(real_argv, sandbox) if sandbox is not None else real_argv,
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        except OSError as exc:
            exit_code, error = _start_failure(exc, real_argv[0], cwd)
            _write(log, f"longrun: {error}\n")
            end_offset = _size(log)
            duration = time.monotonic() - started
            _write(log, f"=== exit {exit_code} in {duration:.2f}s: {error} ===\n")
            return CommandResult(exit_code, False, duration, error, start_offset, end_offset)

        timed_out = _supervise(proc, timeout=timeout, kill_grace=kill_grace, pid_file=pid_file)
        duration = time.monotonic() - started
        end_offset = _size(log)
        exit_code = None if timed_out else proc.returncode
        error = f"timed out after {timeout:g}s" if timed_out else None
        if end_offset > start_offset and _last_byte(log_path, end_offset) != b"\n":
            _write(log, "\n")  # keep the footer on its own line; offsets stay on the output
        outcome = f"timed out after {timeout:g}s; process group killed" if timed_out else f"exit {exit_code}"
        _write(log, f"=== {outcome} in {duration:.2f}s ===\n")
    return CommandResult(exit_code, timed_out, duration, error, start_offset, end_offset)


def _supervise(proc: subprocess.Popen, *, timeout: float, kill_grace: float, pid_file: Path | None) -> bool:
    """Wait for ``proc``; kill its group on timeout or leftovers. Return True if it timed out."""
    pgid = proc.pid  # start_new_session: the child leads its own group
    timed_out = settled = False
    try:
        if pid_file is not None:
            atomicio.write_atomic(pid_file, f"{pgid}\n")
        timed_out = not _wait(proc, timeout)
        if timed_out or _group_alive(pgid):
            _terminate_group(proc, pgid, kill_grace)  # returns only once the group is gone
        settled = True
    finally:
        if not settled and (proc.poll() is None or _group_alive(pgid)):
            _kill_group(proc, pgid)  # interrupted while waiting: leave nothing behind
        if pid_file is not None:
            atomicio.remove(pid_file)
    return timed_out


def _wait(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``proc`` to exit; True if it did.

    Where the kernel has pidfds (Linux 5.3+) the wait wakes the moment the
    child exits; ``Popen.wait(timeout=...)`` polls with sleeps of up to 50 ms,
    which a short command (a sandboxed one in particular) pays on every run.
    """
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
        finally:
            os.close(fd)
        if not ready:
            return False
    try:
        proc.wait(timeout=timeout if fd is None else _KILL_SETTLE_S)
    except subprocess.TimeoutExpired:
        return False
    return True


def _terminate_group(proc: subprocess.Popen, pgid: int, grace: float) -> None:
    """SIGTERM the group, wait up to ``grace`` seconds for it to empty, then SIGKILL it."""
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader so it does not linger as a zombie member
        if not _group_alive(pgid):
            return
        time.sleep(_POLL_S)
    _kill_group(proc, pgid)


def _kill_group(proc: subprocess.Popen, pgid: int) -> None:
    """SIGKILL the group, reap the leader and wait briefly for the rest to vanish."""
    _signal_group(pgid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + _KILL_SETTLE_S
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(_POLL_S / 5)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # already gone


def _group_members(pgid: int) -> list[int] | None:
    """Pids of live (non-zombie) processes in group ``pgid``; None without /proc."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    members = []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:  # os.open/os.read: this runs after every command, over every process of the machine
            fd = os.open(f"/proc/{entry}/stat", os.O_RDONLY)
            try:
                stat = os.read(fd, 4096).decode("utf-8", "replace")
            finally:
                os.close(fd)
        except OSError:
            continue  # exited while we looked
        # "pid (comm) state ppid pgrp ..."; comm may contain spaces and parens.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def _group_alive(pgid: int) -> bool:
    """True while any non-zombie process remains in group ``pgid``."""
    try:  # the common case, a group already empty, needs no scan of /proc
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    members = _group_members(pgid)
    if members is not None:
        return bool(members)
    try:  # no /proc (not Linux): zombies count as alive here, which only costs grace time
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_executable(program: str, env: Mapping[str, str], cwd: Path) -> None:
    """Raise what Popen would for ``program`` (looked up on ``env``'s PATH), before a sandbox hides it."""
    if "/" in program:
        candidate: str | None = str(Path(cwd, program))
    else:
        candidate = shutil.which(program, mode=os.F_OK, path=env.get("PATH", os.defpath))
    if candidate is None or not os.path.exists(candidate):
        raise FileNotFoundError(2, "No such file or directory", program)
    if os.path.isdir(candidate) or not os.access(candidate, os.X_OK):
        raise PermissionError(13, "Permission denied", program)


def _start_failure(exc: OSError, executable: str, cwd: Path) -> tuple[int | None, str | None]:
    """Map an exception from Popen to (exit_code, error) in the shell's convention."""
    if not Path(cwd).is_dir():
        return None, f"working directory not found: {cwd}"
    if isinstance(exc, FileNotFoundError):
        return 127, f"executable not found: {executable}"
    if isinstance(exc, PermissionError):
        return 126, f"permission denied: {executable}"
    return 126, f"cannot execute {executable}: {exc.strerror or exc}"


def _write(log, text: str) -> None:
    log.write(text.encode("utf-8", "replace"))
    log.flush()


def _size(log) -> int:
    """Current end of the log (the child writes through its own copy of the fd)."""
    return os.fstat(log.fileno()).st_size


def _last_byte(path: Path, end: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(end - 1)
        return fh.read(1)


def kill_stale_group(pid_file: Path, *, match_env: Mapping[str, str]) -> bool:
    """Kill the process group recorded in ``pid_file`` if it is still ours; remove the file.

    Used on resume after the engine was SIGKILLed and left a stage running.
    The group is killed (SIGKILL) only if a live member — normally the leader
    — has every ``match_env`` pair in its ``/proc/<pid>/environ``; that guards
    against the pid having been reused by an unrelated process. Returns True
    if a group was killed. ``match_env`` must not be empty.
    """
    if not match_env:
        raise ValueError("match_env must name at least one variable, or any process would match")
    try:
        text = Path(pid_file).read_text().strip()
    except FileNotFoundError:
        return False
    try:
        return _kill_if_ours(text, match_env)
    finally:
        atomicio.remove(pid_file)


def _kill_if_ours(pid_text: str, match_env: Mapping[str, str]) -> bool:
    if not pid_text.isdigit():
        return False  # not a pid: nothing we could safely kill
    pgid = int(pid_text)
    if pgid <= 1 or pgid == os.getpgrp():
        return False  # never our own group, whatever its environment says
    members = _group_members(pgid)
    if members is None:  # no /proc: only the leader can be checked
        members = [pgid]
    wanted = {f"{k}={v}".encode() for k, v in match_env.items()}
    if not any(wanted <= _environ(pid) for pid in members):
        return False
    _signal_group(pgid, signal.SIGKILL)
    return True


def _environ(pid: int) -> set[bytes]:
    """The ``KEY=value`` entries of a process's initial environment (empty if unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return set()
    return set(raw.split(b"\0"))


def scan_log(log_path: Path, start: int, end: int, pattern: re.Pattern[str]) -> str | None:
    """Return group 1 of the LAST match of ``pattern`` in bytes ``[start, end)`` of the log.

    The segment is streamed line by line (decoded as UTF-8, bad bytes
    replaced), so memory stays bounded however large the log is. Lines longer
    than 1 MiB are searched in 1 MiB pieces; a match straddling a piece is
    missed. Patterns without a group yield the whole match. Returns None if
    nothing matched.
    """
    found: str | None = None
    with open(log_path, "rb") as fh:
        fh.seek(start)
        pos = start
        while pos < end:
            chunk = fh.readline(min(_SCAN_CHUNK, end - pos))
            if not chunk:
                break
            pos += len(chunk)
            line = chunk.decode("utf-8", "replace")
            for match in pattern.finditer(line):
                found = match.group(1) if pattern.groups else match.group(0)
    return found


def read_usage_file(path: Path) -> Usage:
    """Read ``{"usd": .., "tokens": .., "model": ..}`` written by a command.

    A missing file means the command reported nothing: zero usage. Any key may
    be absent (it defaults); unknown keys are ignored so tools may add detail.
    Anything malformed — not JSON, not an object, a non-numeric, negative or
    non-finite ``usd``, a non-integer or negative ``tokens``, a non-string
    ``model`` — raises ``LongrunError(code="usage_invalid")``.
    """
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return Usage()
    except (OSError, UnicodeDecodeError) as exc:
        raise _usage_error(path, f"cannot read: {exc}") from exc
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _usage_error(path, f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise _usage_error(path, f"expected a JSON object, got {type(data).__name__}")

    usd = data.get("usd", 0.0)
    if isinstance(usd, bool) or not isinstance(usd, (int, float)) or not math.isfinite(usd) or usd < 0:
        raise _usage_error(path, f"usd must be a finite number >= 0, got {usd!r}")
    tokens = data.get("tokens", 0)
    if isinstance(tokens, float) and tokens.is_integer():
        tokens = int(tokens)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise _usage_error(path, f"tokens must be an integer >= 0, got {tokens!r}")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise _usage_error(path, f"model must be a string or null, got {model!r}")
    return Usage(usd=float(usd), tokens=tokens, model=model)


def _usage_error(path: Path, why: str) -> LongrunError:
    return LongrunError(f"usage file {path}: {why}", code="usage_invalid")
