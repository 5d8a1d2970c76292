"""One install streaming into the inactive slot of one component: chunks, checkpoints, finish or abandon.

:meth:`.device.Device.begin_install` (or ``recover``, ``resume_install``) writes the journal entry,
marks the slot ``writing`` and opens the slot; the :class:`InstallSession` it returns does the
rest (it never writes the active or confirmed slot)::

    session = device.begin_install("main-fw", "1.3.0", header_hash, size)   # journal, state: writing
    for offset, chunk in chunks_from(session.offset):                        # resumable
        session.write_chunk(offset, chunk)                                   # durable every checkpoint
    device_state = session.finish(digest)                                    # hash check, state: pending

A checkpoint (every ``checkpoint_bytes``, at the end, or on :meth:`InstallSession.checkpoint`)
fsyncs the slot, then records the durable offset in the journal: a power cut loses at most the
bytes written since, and a restart resumes there. :meth:`InstallSession.finish` records the
image's slot digest (:mod:`.slot_digest`; checked against the caller's, if given) and marks the
slot ``pending`` (trial at the next boot); :meth:`InstallSession.abandon` gives the install up
cleanly (slot ``empty``, journal removed, reason recorded). The session changes state and
journal only through its device (:mod:`.device` sequences the durable steps).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ledger_node import fsutil

from . import slot_digest
from .errors import BadInstallRequest, DeviceStorageError, ImageHashMismatch, InstallNotActive
from .state import ComponentState, JournalEntry, Slot, complete_install
from .store import WrittenSlot, hash_file

if TYPE_CHECKING:
    from .device import Device

__all__ = ["DEFAULT_CHECKPOINT_BYTES", "WRITEBACK_BYTES", "InstallSession"]

#: bytes written between two durable checkpoints (slot fsync + journal update) of an install: what a
#: power cut may cost (a cut download checkpoints what it wrote; a resumed install fetches only the rest)
DEFAULT_CHECKPOINT_BYTES = 8 << 20
WRITEBACK_BYTES = 1 << 20  # an install asks the disk to start writing every this many bytes


class InstallSession:
    """One install streaming into the inactive slot of one component.

    ``offset`` is how far the slot is written (contiguously from 0); ``durable`` how far is fsynced
    and recorded in the journal (a restart resumes there: ``resumed_from``).

    The session hashes the slot's bytes as they go through it: what :meth:`read_durable` reads
    back of a resumed slot, then what :meth:`write_chunk` writes after it, in order. When that
    running hash covers the whole image, :meth:`finish` uses it instead of reading the slot back;
    a session whose writes left that order (a rewrite, a resumed prefix not read) reads it back.
    """

    def __init__(self, device: Device, entry: JournalEntry, fd: int, *, resumed: bool) -> None:
        self._device = device
        self._entry = entry
        self._fd: int | None = fd
        self.offset = entry.durable
        self.durable = entry.durable
        self.resumed = resumed
        self.resumed_from = entry.durable
        self._hash: Any = slot_digest.hasher()  # of the slot's bytes [0, _hashed); None once out of order
        self._hashed = 0
        self._flushing = entry.durable  # disk writes started up to here (fsutil.start_writeback)

    @property
    def component(self) -> str:
        return self._entry.component

    @property
    def slot(self) -> Slot:
        return self._entry.slot

    @property
    def version(self) -> str:
        return self._entry.version

    @property
    def header_hash(self) -> str:
        return self._entry.header_hash

    @property
    def size(self) -> int:
        return self._entry.size

    @property
    def install_id(self) -> str:
        return self._entry.install_id

    @property
    def recover(self) -> bool:
        return self._entry.recover

    @property
    def active(self) -> bool:
        """True until finished, abandoned, closed, or superseded."""
        return self._fd is not None

    def _require(self) -> int:
        if self._fd is None:
            raise InstallNotActive(f"{self.component}: install {self.install_id} is no longer active")
        return self._fd

    def write_chunk(self, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset`` of the slot; return how far the slot is written.

        Idempotent: a range already written may be written again (e.g. after a resume). Offsets
        must not leave a gap and the image must not grow past its announced size. Every
        ``checkpoint_bytes`` (and at the end) the slot is fsynced and the journal records the
        durable offset.

        Raises:
            InstallNotActive: the session is over.
            BadInstallRequest: a gap, or bytes beyond the announced size.
            DeviceStorageError: the write failed.
        """
        fd = self._require()
        if not isinstance(offset, int) or offset < 0 or offset > self.offset:
            raise BadInstallRequest(f"{self.component}: chunk at {offset} leaves a gap (written up to {self.offset})")
        end = offset + len(data)
        if end > self.size:
            raise BadInstallRequest(f"{self.component}: chunk ends at {end}, beyond the image size {self.size}")
        if not data:
            return self.offset
        dev = self._device
        dev._probe(f"chunk {self.component} offset={offset} len={len(data)}")
        try:
            fsutil.write_all(fd, data, offset)
        except OSError as exc:
            raise DeviceStorageError(f"cannot write slot {self.slot} of {self.component}: {exc}") from exc
        if self._hash is not None and offset == self._hashed:
            self._hash.update(data)
            self._hashed = end
        else:  # a rewrite, or a gap in what was hashed: finish reads the slot back
            self._hash = None
        self.offset = max(self.offset, end)
        if self.offset - self.durable >= dev.checkpoint_bytes or self.offset == self.size:
            self._checkpoint(fd)
        elif self.offset - self._flushing >= WRITEBACK_BYTES:
            # the disk starts writing now, while the next chunks are decrypted: the checkpoint's
            # fsync then waits only for the rest (durability still comes from the fsync alone)
            fsutil.start_writeback(fd, self._flushing, self.offset - self._flushing)
            self._flushing = self.offset
        return self.offset

    def read_durable(self, block: int = 1 << 20) -> Iterator[bytes]:
        """The slot's durable bytes ``[0, durable)`` of a resumed install, in blocks, hashed on the way.

        Raises:
            InstallNotActive: the session is over.
            BadInstallRequest: bytes were already written or read in this session.
            DeviceStorageError: the slot cannot be read, or is shorter than its journal says.
        """
        self._require()
        if self._hashed or self.offset != self.durable:
            raise BadInstallRequest(f"{self.component}: the durable bytes are read before anything is written")
        path = self._device.slot_path(self.component, self.slot)
        try:
            with open(path, "rb", buffering=0) as fh:
                while self._hashed < self.durable:
                    data = fh.read(min(block, self.durable - self._hashed))
                    if not data:
                        raise DeviceStorageError(f"slot {self.slot} of {self.component} ends at {self._hashed}, "
                                                 f"before its durable offset {self.durable}")
                    if self._hash is not None:
                        self._hash.update(data)
                    self._hashed += len(data)
                    yield data
        except OSError as exc:
            raise DeviceStorageError(f"cannot read slot {self.slot} of {self.component}: {exc}") from exc

    def checkpoint(self) -> None:
        """Make what is written durable now (slot fsync, journal offset): e.g. when a download is cut.

        Raises:
            InstallNotActive: the session is over.
            DeviceStorageError: the sync or the journal write failed.
        """
        fd = self._require()
        if self.offset != self.durable:
            self._checkpoint(fd)

    def _checkpoint(self, fd: int) -> None:
        dev = self._device
        dev._probe(f"fsync {self.component} slot={self.slot} offset={self.offset}")
        try:
            fsutil.fsync_fd(fd)
        except OSError as exc:
            raise DeviceStorageError(f"cannot sync slot {self.slot} of {self.component}: {exc}") from exc
        entry = JournalEntry(**{**self._entry.to_json(), "durable": self.offset})
        dev._write_journal(entry, label=f"journal {self.component} durable={self.offset}")
        self._entry = entry
        self.durable = self._flushing = self.offset

    def finish(self, digest: bytes | str | None) -> ComponentState:
        """Check the written image against ``digest`` and mark the slot ``pending`` (trial at next boot).

        ``digest``: a slot digest (:func:`.slot_digest.normalize`; a bare one is a SHA-256), or
        None: the caller vouches for the bytes it wrote (they passed its own checks: the updater's
        payload pipeline), and the image's BLAKE3 digest is recorded as it is. The image's digest is
        the session's running hash when it covers every byte (see the class) in that algorithm,
        else the slot read back. The state records the digest checked. On a mismatch the install
        is abandoned (slot ``empty``, last result ``hash_mismatch``).

        Raises:
            InstallNotActive: the session is over.
            BadInstallRequest: fewer bytes written than announced (the session stays open), or a bad digest.
            ImageHashMismatch: the bytes do not hash to ``digest``.
            DeviceStorageError: a read or write failed.
        """
        fd = self._require()
        given = None if digest is None else slot_digest.normalize(digest)
        algorithm = slot_digest.SLOT_ALGORITHM if given is None else slot_digest.algorithm_of(given)
        if self.offset != self.size:
            raise BadInstallRequest(f"{self.component}: {self.offset} of {self.size} bytes written")
        if self.durable != self.size:
            self._checkpoint(fd)
        dev = self._device
        dev._probe(f"hash {self.component} slot={self.slot}")
        if self._hash is not None and self._hashed == self.size and algorithm == slot_digest.SLOT_ALGORITHM:
            actual: str | None = slot_digest.make(algorithm, self._hash.hexdigest())
        else:
            actual = hash_file(dev.slot_path(self.component, self.slot), self.size, algorithm)
        expected = given if given is not None else actual
        if actual is None or actual != expected:
            self.abandon(code=ImageHashMismatch.code,
                         message=f"slot {self.slot} hashes to {actual}, expected {expected}")
            raise ImageHashMismatch(f"{self.component}: written image hashes to {actual}, expected {expected}")
        try:  # the slot is written, synced and hashed: its first boot check here needs no re-read
            written = WrittenSlot(WrittenSlot.identity_of(os.fstat(fd)), actual)
        except OSError:
            written = None
        st = complete_install(dev._load(self.component), slot=self.slot, install_id=self.install_id,
                              digest=actual, now=dev._now())
        dev._commit(self.component, st, "pending")
        if written is not None:
            dev._written[(self.component, self.slot)] = written
        dev._drop_journal(self.component)
        self.close()
        return st

    def abandon(self, code: str = "abandoned", message: str = "install abandoned") -> None:
        """Give the install up cleanly: slot ``empty``, journal removed, reason recorded.

        Raises:
            DeviceStorageError: a write failed.
        """
        if self._fd is None:
            return
        self.close()
        self._device._abandon(self.component, code=code, message=message, install_id=self.install_id)

    def close(self) -> None:
        """Release the slot file; an unfinished install stays resumable (``Device.resume_install``)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                fsutil.close_fd(fd)
            if self._device._sessions.get(self.component) is self:
                del self._device._sessions[self.component]

    def __enter__(self) -> InstallSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
