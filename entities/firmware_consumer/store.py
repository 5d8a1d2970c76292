"""The device folder on disk: layout, atomic writes, mirrored state files, journal, slot files, lock.

Thin I/O around the pure model of :mod:`.state`; every ``OSError`` leaves as
:class:`~.errors.DeviceStorageError`. Layout of a device folder::

    DIR/device.json                     identity, hardware class, components, boot settings
    DIR/device.lock                     flock held by the process changing the device
    DIR/safe/image                      the safe-mode image (its SHA-256 is in device.json)
    DIR/components/<name>/slot_a        image bytes of slot a
    DIR/components/<name>/slot_b        image bytes of slot b
    DIR/components/<name>/state.0.json  component state, copy 0 } same envelope; the valid copy
    DIR/components/<name>/state.1.json  component state, copy 1 } with the highest generation wins
    DIR/journal/<name>.json             the install in progress (slot, identity, durable offset)

Every metadata file is replaced atomically (python-tuf's ``_persist_metadata``): temporary file in
the same folder, write, fsync, ``os.replace``, fsync the folder. A reader sees the old file or the
new one. Every change to the disk goes through the primitives of :mod:`ledger_node.fsutil` (the
crash-state tests record them there). A state commit writes *both* copies, the stale or damaged
one first: a power cut between the two leaves the new state in one copy and the previous one in
the other, and after a complete commit either copy alone holds the current state, so one damaged
file loses nothing.

``probe`` callbacks receive a label before every durable step (and before the ``os.replace`` of
every atomic write); the power-loss test stops the process at each of them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger_node import fsutil

from . import slot_digest
from .envelope import choose_newest, decode_envelope, encode_envelope
from .errors import DeviceBusy, DeviceStorageError, StateCorrupt
from .state import Slot

__all__ = [
    "DEVICE_KIND",
    "JOURNAL_KIND",
    "STATE_KIND",
    "Layout",
    "Probe",
    "StateCopies",
    "atomic_write",
    "fsync_dir",
    "hash_file",
    "lock_device",
    "make_folder",
    "read_bounded",
    "read_envelope",
    "read_state_copies",
    "remove_file",
    "remove_stale_temps",
    "write_state_copies",
]

STATE_KIND = "component-state"
JOURNAL_KIND = "install-journal"
DEVICE_KIND = "device"

#: a callback told the label of each durable step just before it happens
Probe = Callable[[str], None]

_READ_BLOCK = 1 << 20
#: metadata files are small; a bigger one is damaged (bounded read)
MAX_META_BYTES = 1 << 20


def _noprobe(label: str) -> None:
    """The default probe: nothing."""


@dataclass(frozen=True)
class Layout:
    """Paths inside a device folder."""

    root: Path

    @property
    def device_file(self) -> Path:
        return self.root / "device.json"

    @property
    def lock_file(self) -> Path:
        return self.root / "device.lock"

    @property
    def safe_dir(self) -> Path:
        return self.root / "safe"

    @property
    def safe_image(self) -> Path:
        return self.safe_dir / "image"

    @property
    def journal_dir(self) -> Path:
        return self.root / "journal"

    @property
    def components_dir(self) -> Path:
        return self.root / "components"

    def component_dir(self, name: str) -> Path:
        return self.components_dir / name

    def slot_path(self, name: str, slot: Slot) -> Path:
        return self.component_dir(name) / f"slot_{slot}"

    def state_paths(self, name: str) -> tuple[Path, Path]:
        d = self.component_dir(name)
        return d / "state.0.json", d / "state.1.json"

    def journal_path(self, name: str) -> Path:
        return self.journal_dir / f"{name}.json"


def _storage_error(what: str, path: Path, exc: OSError) -> DeviceStorageError:
    return DeviceStorageError(f"cannot {what} {path}: {exc.strerror or exc}")


def fsync_dir(path: Path) -> None:
    """fsync a folder so a rename or unlink in it is durable.

    Raises:
        DeviceStorageError: the folder cannot be opened or synced.
    """
    try:
        fsutil.sync_dir(path)
    except OSError as exc:
        raise _storage_error("sync folder", path, exc) from exc


def make_folder(path: Path) -> None:
    """Create ``path`` and its missing parents durably (each new folder's entry synced in its parent).

    Raises:
        DeviceStorageError: a folder cannot be created or synced.
    """
    try:
        fsutil.make_dirs(path)
    except OSError as exc:
        raise _storage_error("create", path, exc) from exc


def atomic_write(path: Path, data: bytes, *, probe: Probe = _noprobe, label: str = "") -> None:
    """Replace ``path`` with ``data`` atomically: temp file in the same folder, fsync, replace, fsync folder.

    ``probe`` is told ``"<label> write"`` before the temporary file is created and
    ``"<label> replace"`` before the ``os.replace``.

    Raises:
        DeviceStorageError: the write failed (the old file is left as it was).
    """
    label = label or path.name
    probe(f"{label} write")
    tmp: Path | None = None
    try:
        fd, tmp = fsutil.make_temp(path.parent, f".{path.name}.", ".tmp")
        try:
            fsutil.chmod_fd(fd, 0o644)
            fsutil.write_all(fd, data)
            fsutil.fsync_fd(fd)
        finally:
            fsutil.close_fd(fd)
        probe(f"{label} replace")
        fsutil.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise _storage_error("write", path, exc) from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                fsutil.unlink(tmp)
    fsync_dir(path.parent)


def remove_file(path: Path, *, probe: Probe = _noprobe, label: str = "") -> None:
    """Unlink ``path`` (if present) and fsync its folder.

    Raises:
        DeviceStorageError: the unlink failed for another reason than absence.
    """
    probe(f"{label or path.name} remove")
    try:
        fsutil.unlink(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _storage_error("remove", path, exc) from exc
    fsync_dir(path.parent)


def remove_stale_temps(folder: Path) -> None:
    """Delete temporary files a killed writer left behind (call with the device lock held).

    Raises:
        DeviceStorageError: the folder cannot be listed or a file removed.
    """
    try:
        for p in folder.glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                fsutil.unlink(p)
    except OSError as exc:
        raise _storage_error("clean", folder, exc) from exc


def read_bounded(path: Path, limit: int = MAX_META_BYTES) -> bytes | None:
    """The bytes of a small file, or None if it does not exist.

    Raises:
        DeviceStorageError: unreadable for another reason.
        StateCorrupt: larger than ``limit``.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _storage_error("read", path, exc) from exc
    if len(data) > limit:
        raise StateCorrupt(f"{path}: larger than {limit} bytes")
    return data


def read_envelope(path: Path, kind: str) -> tuple[int, dict[str, Any]] | None:
    """Read and check one envelope file; None if absent.

    Raises:
        StateCorrupt: present but damaged (not JSON, wrong kind/format, checksum mismatch, too big).
        DeviceStorageError: unreadable.
    """
    data = read_bounded(path)
    if data is None:
        return None
    return decode_envelope(data, kind)


@dataclass(frozen=True)
class StateCopies:
    """The two copies of a state file as read: per copy ``(generation, body)`` or None, and why not."""

    copies: tuple[tuple[int, dict[str, Any]] | None, tuple[int, dict[str, Any]] | None]
    problems: tuple[str | None, str | None]

    @property
    def valid(self) -> tuple[bool, bool]:
        return self.copies[0] is not None, self.copies[1] is not None

    def newest(self) -> tuple[int, int, dict[str, Any]]:
        """(index, generation, body) of the newest valid copy.

        Raises:
            StateCorrupt: neither copy is valid.
        """
        try:
            return choose_newest(self.copies)
        except StateCorrupt as exc:
            raise StateCorrupt(f"both state copies unusable: {self.problems[0]}; {self.problems[1]}") from exc


def read_state_copies(paths: tuple[Path, Path], parse: Callable[[dict[str, Any]], Any] | None = None) -> StateCopies:
    """Read both copies; a copy that is missing, damaged, or rejected by ``parse`` counts as invalid.

    Raises:
        DeviceStorageError: a copy exists but cannot be read.
    """
    copies: list[tuple[int, dict[str, Any]] | None] = []
    problems: list[str | None] = []
    for p in paths:
        try:
            env = read_envelope(p, STATE_KIND)
            if env is None:
                copies.append(None)
                problems.append(f"{p.name} missing")
                continue
            if parse is not None:
                parse(env[1])
            copies.append(env)
            problems.append(None)
        except StateCorrupt as exc:
            copies.append(None)
            problems.append(f"{p.name}: {exc}")
    return StateCopies((copies[0], copies[1]), (problems[0], problems[1]))


def write_state_copies(paths: tuple[Path, Path], generation: int, body: dict[str, Any], *,
                       current: StateCopies | None, probe: Probe = _noprobe, label: str = "state") -> None:
    """Commit ``body`` as ``generation`` to both copies, the damaged or older copy first.

    Raises:
        DeviceStorageError: a write failed.
    """
    data = encode_envelope(STATE_KIND, generation, body)
    if current is None:
        order = [0, 1]
    else:
        gens = [c[0] if c is not None else -1 for c in current.copies]
        order = sorted((0, 1), key=lambda i: (gens[i], i))
    for i in order:
        atomic_write(paths[i], data, probe=probe, label=f"{label} copy{i}")


@dataclass(frozen=True)
class WrittenSlot:
    """What an install session knows of the slot it has just written, hashed and fsynced: the
    file's identity then (device, inode, size, modification and change times in ns) and the
    slot digest of the bytes it wrote.

    The first boot check of that slot in the same process takes it instead of a second read
    (:meth:`unchanged`): a re-read so soon comes from the page cache, so it could only see a change
    made through the file system since, and every such change moves the change time (set by the
    kernel only; fine-grained once observed, Linux 6.13+ multigrain timestamps) or the inode.
    """

    identity: tuple[int, int, int, int, int]
    digest: str

    @staticmethod
    def identity_of(st: os.stat_result) -> tuple[int, int, int, int, int]:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def unchanged(self, path: Path, digest: str | None) -> bool:
        """Whether ``path`` is still that file, untouched, and ``digest`` the digest recorded for it."""
        if digest != self.digest:
            return False
        try:
            return self.identity_of(os.stat(path)) == self.identity
        except OSError:
            return False


def hash_file(path: Path, size: int, algorithm: str = slot_digest.SLOT_ALGORITHM) -> str | None:
    """The slot digest (``ALGORITHM:HEX``, :mod:`.slot_digest`) of a file that must be exactly
    ``size`` bytes; None if absent or of another size.

    Raises:
        DeviceStorageError: present but unreadable.
    """
    h = slot_digest.hasher(algorithm)
    try:
        with open(path, "rb", buffering=0) as fh:
            if os.fstat(fh.fileno()).st_size != size:
                return None
            buf = bytearray(min(_READ_BLOCK, max(size, 1)))
            view = memoryview(buf)
            left = size
            while left:
                n = fh.readinto(view[: min(left, len(buf))])
                if not n:
                    return None
                h.update(view[:n])
                left -= n
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _storage_error("read", path, exc) from exc
    return slot_digest.make(algorithm, h.hexdigest())


@contextlib.contextmanager
def lock_device(layout: Layout) -> Iterator[int]:
    """Hold the device's exclusive lock (released by the kernel if the process dies).

    Raises:
        DeviceBusy: another process holds it.
        DeviceStorageError: the lock file cannot be opened.
    """
    try:
        fd = os.open(layout.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _storage_error("open", layout.lock_file, exc) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise DeviceBusy(f"{layout.root} is in use by another process") from exc
            raise _storage_error("lock", layout.lock_file, exc) from exc
        yield fd
    finally:
        os.close(fd)
