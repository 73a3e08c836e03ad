"""Atomic file I/O: the only module in ``longrun`` that opens files for writing.

Two shapes of durable write live here:

* whole files — :func:`write_atomic` writes a temp file in the same directory,
  flushes and fsyncs it, ``os.replace``-s it over the target and fsyncs the
  directory, so a reader sees either the old bytes or the new ones, never half;
* journal lines — :func:`append_line` issues ONE ``os.write`` of a whole line
  opened with ``O_APPEND`` and fsyncs it, so concurrent appenders never
  interleave inside a line and a crash tears at most the final line.

Everything else (:func:`write_once`, :func:`touch`, :func:`remove`,
:func:`open_append`) is built on the same primitives.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from longrun.errors import PathEscape, SpecImmutable

__all__ = [
    "append_line",
    "atomic_writer",
    "copy_atomic",
    "fsync_dir",
    "open_append",
    "open_for_update",
    "remove",
    "touch",
    "truncate",
    "write_atomic",
    "write_once",
]

PathLike = str | os.PathLike[str]

#: Mode of files created here (mkstemp alone would give 0600).
_FILE_MODE = 0o644


def _as_bytes(data: bytes | str) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def fsync_dir(path: PathLike) -> None:
    """fsync a directory so a rename or create inside it survives a crash.

    Platforms that cannot open a directory (Windows) are skipped silently.
    """
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename still happened
    finally:
        os.close(fd)


def _write_temp(directory: Path, name: str, data: bytes) -> Path:
    """Write ``data`` durably to a fresh temp file in ``directory``; return its path."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return Path(tmp)


def _unlink_quietly(path: PathLike) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_atomic(path: PathLike, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` atomically (creating parent directories).

    str data is encoded as UTF-8; the file mode is 0644.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_temp(target.parent, target.name, _as_bytes(data))
    try:
        os.replace(tmp, target)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(target.parent)


@contextmanager
def atomic_writer(path: PathLike) -> Iterator[BinaryIO]:
    """Stream a whole file: yield a binary file on a temp file beside ``path``.

    When the ``with`` block ends normally the temp file is flushed, fsynced and
    ``os.replace``-d over ``path`` (then the directory is fsynced); when it
    raises, the temp file is removed and ``path`` is left as it was. For
    writes too large to hold in memory (evidence bundles, downloads).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(target.parent)


def copy_atomic(src: PathLike, dst: PathLike, *, chunk: int = 1 << 20, on_chunk: Callable[[bytes], None] | None = None) -> int:
    """Copy ``src`` over ``dst`` atomically, in chunks; return the bytes copied.

    ``on_chunk`` sees every chunk (to hash while copying).
    """
    copied = 0
    with open(src, "rb") as fin, atomic_writer(dst) as fout:
        while block := fin.read(chunk):
            if on_chunk is not None:
                on_chunk(block)
            fout.write(block)
            copied += len(block)
    return copied


def write_once(path: PathLike, data: bytes | str) -> bool:
    """Create ``path`` with ``data`` if absent; the file is then immutable.

    Returns True when this call created the file, False when it already held
    exactly ``data``. Raises :class:`SpecImmutable` when it holds other bytes.
    Creation is atomic and race-free: the temp file is hard-linked into place,
    which fails if another writer got there first.
    """
    target = Path(path)
    payload = _as_bytes(data)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _write_temp(target.parent, target.name, payload)
        try:
            os.link(tmp, target)
            fsync_dir(target.parent)
            return True
        except FileExistsError:
            pass  # lost a race: compare with the winner below
        finally:
            _unlink_quietly(tmp)
    if target.read_bytes() == payload:
        return False
    raise SpecImmutable(f"{target} already exists with different content; it is write-once")


def create_once(path: PathLike, data: bytes | str) -> bool:
    """Create ``path`` with ``data`` unless it exists (with any content); True if this call created it.

    The compare-and-set of a claim: of concurrent callers exactly one gets
    True, whatever they write (the temp file is hard-linked into place).
    """
    target = Path(path)
    if target.exists():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_temp(target.parent, target.name, _as_bytes(data))
    try:
        os.link(tmp, target)
    except FileExistsError:
        return False
    finally:
        _unlink_quietly(tmp)
    fsync_dir(target.parent)
    return True


def append_line(fd_or_path: int | PathLike, line: bytes) -> None:
    """Append one whole line with a single ``os.write``, then fsync.

    ``line`` must end with ``b"\\n"`` and contain no other newline. Given an
    int it is used as an already open descriptor (it should have been opened
    with ``O_APPEND``); given a path the file is opened with ``O_APPEND`` and
    created if needed.
    """
    if not isinstance(line, (bytes, bytearray)):
        raise TypeError(f"append_line takes bytes, not {type(line).__name__}")
    if not line.endswith(b"\n") or b"\n" in line[:-1]:
        raise ValueError("append_line takes exactly one line ending in b'\\n'")
    if isinstance(fd_or_path, int):
        _write_all_once(fd_or_path, bytes(line))
        os.fsync(fd_or_path)
        return
    target = Path(fd_or_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_nofollow(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        _write_all_once(fd, bytes(line))
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all_once(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    if written != len(data):
        # A short write on a regular file means the disk is full or similar;
        # the journal's torn-tail repair removes the partial line next time.
        raise OSError(f"short write: {written} of {len(data)} bytes")


def open_append(path: PathLike) -> BinaryIO:
    """Open ``path`` for binary append (creating it and its parents); a symlink is refused (``path_escape``)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return os.fdopen(_open_nofollow(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab")


def _open_nofollow(target: Path, flags: int) -> int:
    """``os.open`` with ``O_NOFOLLOW``: appends and updates never write through a planted symlink."""
    try:
        return os.open(target, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), _FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PathEscape(f"{target} is a symlink; longrun does not write through symlinks") from None
        raise


def open_for_update(path: PathLike) -> int:
    """Open (creating if needed) ``path`` read/write + ``O_APPEND``; return the fd.

    Used by the journal, which must lock, inspect the tail, truncate a torn
    line and append through one descriptor.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return _open_nofollow(target, os.O_RDWR | os.O_APPEND | os.O_CREAT)


def truncate(fd: int, size: int) -> None:
    """Cut an open file back to ``size`` bytes and fsync (torn-tail repair)."""
    os.ftruncate(fd, size)
    os.fsync(fd)


def touch(path: PathLike) -> bool:
    """Create an empty file atomically if absent; return True if created."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
    except FileExistsError:
        return False
    os.close(fd)
    fsync_dir(target.parent)
    return True


def remove(path: PathLike, missing_ok: bool = True) -> bool:
    """Delete a file; return True if it existed. Missing files raise only if asked."""
    target = Path(path)
    try:
        target.unlink()
    except FileNotFoundError:
        if not missing_ok:
            raise
        return False
    fsync_dir(target.parent)
    return True
