"""Durable file writes, and the few primitives every change a device makes to its disk goes through.

Atomic writes: temporary file in the same folder, write, fsync, ``os.replace``, fsync the folder
(python-tuf's ``_persist_metadata``). Folders made on the way are durable too: each new folder's
entry in its parent is fsynced, so a file whose write returned cannot vanish with its folder.

The primitives below (:func:`open_fd`, :func:`write_all`, :func:`fsync_fd`, :func:`truncate_fd`,
:func:`make_temp`, :func:`replace`, :func:`unlink`, :func:`make_dirs`, :func:`sync_dir`, ...) are
thin wrappers of ``os`` with the same behaviour and the same ``OSError``s. The firmware consumer
(``entities/firmware_consumer/``: ``store.py``, ``device.py``, ``install_session.py``,
``device_info.py``) and :func:`atomic_write_bytes` change files only through them, so one hook
sees every change: :func:`observe` hands each completed operation to a recorder (the crash-state
tests, ``tests/crashfs.py``, replay them to build every disk a power cut may leave). Production
code never installs an observer; with none installed the hook costs one empty-list check.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "Observer",
    "atomic_write_bytes",
    "atomic_write_json",
    "chmod_fd",
    "close_fd",
    "fsync_fd",
    "make_dirs",
    "make_temp",
    "observe",
    "open_fd",
    "read_json",
    "replace",
    "start_writeback",
    "sync_dir",
    "truncate_fd",
    "truncate_path",
    "unlink",
    "write_all",
]

#: told ``(operation, arguments)`` after each completed change (see :func:`observe`)
Observer = Callable[[str, tuple[Any, ...]], None]

# test-support hook only (tests/crashfs.py); empty in production
_observers: list[Observer] = []


@contextlib.contextmanager
def observe(observer: Observer) -> Iterator[None]:
    """Tell ``observer`` every operation made through this module's primitives while the block runs.

    Operations and their arguments, each reported after it succeeded: ``open (path, fd)``,
    ``create (path, fd)`` (a new temporary file), ``write (fd, offset, data)``, ``truncate_fd (fd,
    size)``, ``truncate (path, size)``, ``fsync (fd)``, ``close (fd)``, ``replace (src, dst)``,
    ``unlink (path)``, ``mkdir (path)``, ``sync_dir (path)``. An observer only records: it must not
    change files or raise.
    """
    _observers.append(observer)
    try:
        yield
    finally:
        _observers.remove(observer)


def _tell(op: str, *args: Any) -> None:
    for observer in _observers:
        observer(op, args)


# ----------------------------------------------------------------------------- primitives (raise OSError)


def open_fd(path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open``."""
    fd = os.open(path, flags, mode)
    _tell("open", Path(path), fd)
    return fd


def close_fd(fd: int) -> None:
    """``os.close``."""
    os.close(fd)
    _tell("close", fd)


def make_temp(folder: Path, prefix: str, suffix: str) -> tuple[int, Path]:
    """A new temporary file in ``folder`` (``tempfile.mkstemp``): its descriptor and path."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    _tell("create", Path(name), fd)
    return fd, Path(name)


def write_all(fd: int, data: bytes | memoryview, offset: int | None = None) -> None:
    """Write all of ``data`` at the file position (``os.write``) or at ``offset`` (``os.pwrite``)."""
    at = offset if offset is not None or not _observers else os.lseek(fd, 0, os.SEEK_CUR)
    view = memoryview(data)
    pos = offset
    while view:
        if pos is None:
            n = os.write(fd, view)
        else:
            n = os.pwrite(fd, view, pos)
            pos += n
        view = view[n:]
    if _observers:
        _tell("write", fd, at, bytes(data))


def fsync_fd(fd: int) -> None:
    """``os.fsync`` of a file: its data (not its name) is durable once this returns."""
    os.fsync(fd)
    _tell("fsync", fd)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``[offset, offset + length)`` of a file to disk, without waiting.

    ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` on Linux: the disk writes while the caller goes on
    (decrypting, hashing), so a later :func:`fsync_fd` waits only for what is left. It promises
    nothing: only :func:`fsync_fd` makes data durable, so the crash-state tests are not told of it.
    Elsewhere, or when the call fails, it does nothing.
    """
    call = _libc_sync_file_range()
    if call is not None and length > 0:
        call(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # a failure only means no early start


@functools.cache
def _libc_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # only where it is used: the device's imports stay small
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>


def truncate_fd(fd: int, size: int) -> None:
    """``os.ftruncate``."""
    os.ftruncate(fd, size)
    _tell("truncate_fd", fd, size)


def truncate_path(path: Path, size: int) -> None:
    """``os.truncate``."""
    os.truncate(path, size)
    _tell("truncate", Path(path), size)


def chmod_fd(fd: int, mode: int) -> None:
    """``os.fchmod`` (permissions are not modelled by the crash-state tests: not reported)."""
    os.fchmod(fd, mode)


def replace(src: Path, dst: Path) -> None:
    """``os.replace``: durable once the folder is synced (:func:`sync_dir`)."""
    os.replace(src, dst)
    _tell("replace", Path(src), Path(dst))


def unlink(path: Path) -> None:
    """``os.unlink``: durable once the folder is synced (:func:`sync_dir`)."""
    os.unlink(path)
    _tell("unlink", Path(path))


def sync_dir(path: Path) -> None:
    """fsync a folder: the creations, renames and unlinks in it are durable once this returns."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _tell("sync_dir", Path(path))


def make_dirs(path: Path) -> None:
    """``mkdir -p`` that is durable: the folders it creates, then each new folder's entry synced in its parent."""
    path = Path(path)
    missing = []
    p = path
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:
            if not d.is_dir():
                raise
            continue
        _tell("mkdir", d)
    for d in reversed(missing):
        sync_dir(d.parent)


# ----------------------------------------------------------------------------- atomic writes


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a part; durable on return.

    Raises:
        ConfigError: the folder cannot be written.
    """
    path = Path(path)
    try:
        make_dirs(path.parent)
        fd, tmp = make_temp(path.parent, f".{path.name}.", ".tmp")
        try:
            try:
                write_all(fd, data)
                fsync_fd(fd)
            finally:
                close_fd(fd)
            os.chmod(tmp, mode)
            replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                unlink(tmp)
            raise
        sync_dir(path.parent)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc


def atomic_write_json(path: Path, obj: Any, *, mode: int = 0o644) -> None:
    """Atomically write ``obj`` as indented JSON.

    Raises:
        ConfigError: the folder cannot be written.
    """
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), mode=mode)


def read_json(path: Path) -> Any:
    """Read a JSON file.

    Raises:
        ConfigError: missing, unreadable or not JSON.
    """
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} does not exist") from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
