"""The device: a folder of components with A/B slots, installs into the inactive slot, trial boots.

This module sequences the I/O around the pure decisions of :mod:`.state` and :mod:`.boot`; it
does no verification of images (the verification pipeline hands it plaintext it has already
checked against the ledger, and this module only checks the written bytes against the SHA-256
it is given).

Install (never writes the active or confirmed slot)::

    session = device.begin_install("main-fw", "1.3.0", header_hash, size)   # journal, state: writing
    for offset, chunk in chunks_from(session.offset):                        # resumable
        session.write_chunk(offset, chunk)                                   # durable every checkpoint
    device_state = session.finish(sha256)                                    # hash check, state: pending

Boot (one call = one power-on; X.1368 R10.c.ii and C11.1.b)::

    outcome = device.boot_component("main-fw")   # trial -> health check -> confirm or revert; or safe mode

Order of durable steps, and what a power cut after each leaves:

========================= ================================================================
step                      state after a cut right after it
========================= ================================================================
journal written           stale journal (state not marked): removed at restart
state: slot ``writing``   resumable from journal offset 0
slot truncated            resumable from 0
chunk written             resumable from the last checkpoint (bytes after it are rewritten)
slot fsynced, journal     resumable from the new checkpoint
state: slot ``pending``   install done; the stale journal is removed at restart
trial state persisted     the attempt is counted; the next boot tries again or reverts
confirm persisted         the new image is confirmed, the counter raised
========================= ================================================================
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger_node import fsutil

from .boot import (
    CODE_HEALTH_ERROR,
    CODE_HEALTH_FAILED,
    CODE_HEALTH_TIMEOUT,
    CODE_STATE_CORRUPT,
    BootKind,
    SlotChecks,
    confirm,
    plan_boot,
    revert,
    slots_to_check,
)
from .errors import (
    BadInstallRequest,
    DeviceError,
    DeviceExists,
    DeviceStorageError,
    ImageHashMismatch,
    InstallNotActive,
    NotADevice,
    StateCorrupt,
    UnknownComponent,
)
from .health import BootContext, CommandHealthCheck, HealthCheck
from .state import (
    SLOTS,
    ComponentState,
    JournalEntry,
    Result,
    Slot,
    abandon_install,
    check_component_name,
    complete_install,
    encode_envelope,
    factory_state,
    fresh_state,
    normalize_header_hash,
    normalize_sha256,
    plan_install,
    reconcile,
    with_result,
)
from .store import (
    DEVICE_KIND,
    JOURNAL_KIND,
    Layout,
    Probe,
    StateCopies,
    atomic_write,
    fsync_dir,
    hash_file,
    lock_device,
    read_envelope,
    read_state_copies,
    remove_file,
    remove_stale_temps,
    write_state_copies,
)

__all__ = [
    "DEFAULT_CHECKPOINT_BYTES",
    "DEFAULT_MAX_BOOT_ATTEMPTS",
    "DEFAULT_SAFE_IMAGE",
    "BootOutcome",
    "Device",
    "DeviceInfo",
    "FactoryImage",
    "InstallSession",
    "init_device",
    "load_device_info",
    "read_status",
]

DEFAULT_MAX_BOOT_ATTEMPTS = 3
#: bytes written between two durable checkpoints (slot fsync + journal update) of an install: what a
#: power cut may cost (a cut download checkpoints what it wrote; a resumed install fetches only the rest)
DEFAULT_CHECKPOINT_BYTES = 8 << 20
WRITEBACK_BYTES = 1 << 20  # an install asks the disk to start writing every this many bytes
DEFAULT_SAFE_IMAGE = b"fwledger safe mode: minimal functions; accepts only a manual recover install\n"

_TEXT_RE = re.compile(r"^[\x21-\x7e]{1,64}$")


def _noprobe(label: str) -> None:
    """The default probe: nothing."""


# ----------------------------------------------------------------------------- device.json


@dataclass(frozen=True)
class DeviceInfo:
    """The contents of ``device.json``: identity, hardware class, components, boot settings."""

    device_id: str
    hardware: str
    components: tuple[str, ...]
    max_boot_attempts: int = DEFAULT_MAX_BOOT_ATTEMPTS
    health_command: tuple[str, ...] | None = None
    safe_image_sha256: str = ""
    safe_image_size: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        body = dict(self.extra)
        body.update({"id": self.device_id, "hardware": self.hardware, "components": list(self.components),
                     "max_boot_attempts": self.max_boot_attempts,
                     "health_command": None if self.health_command is None else list(self.health_command),
                     "safe_image": {"sha256": self.safe_image_sha256, "size": self.safe_image_size}})
        return body

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> DeviceInfo:
        """Parse the body of device.json.

        Raises:
            NotADevice: missing or ill-typed fields.
        """
        try:
            comps = tuple(check_component_name(c) for c in obj["components"])
            hc = obj.get("health_command")
            safe = obj["safe_image"]
            info = cls(device_id=str(obj["id"]), hardware=str(obj["hardware"]), components=comps,
                       max_boot_attempts=int(obj["max_boot_attempts"]),
                       health_command=None if hc is None else tuple(str(a) for a in hc),
                       safe_image_sha256=normalize_sha256(safe["sha256"]), safe_image_size=int(safe["size"]),
                       extra={k: v for k, v in obj.items() if k not in {
                           "id", "hardware", "components", "max_boot_attempts", "health_command", "safe_image"}})
        except (KeyError, TypeError, ValueError, DeviceError) as exc:
            raise NotADevice(f"device.json: {exc}") from exc
        if len(set(comps)) != len(comps) or not comps or info.max_boot_attempts < 1:
            raise NotADevice("device.json: components must be distinct and non-empty; max_boot_attempts >= 1")
        return info


@dataclass(frozen=True)
class FactoryImage:
    """An image placed in slot ``a`` as the confirmed image at ``init`` (its version seeds the counter;
    ``verified`` False: placed without ledger evidence, the counter stays 0.0.0, :func:`.state.unverified_slot`)."""

    version: str
    header_hash: bytes | str
    data: bytes
    verified: bool = True


def load_device_info(root: Path) -> DeviceInfo:
    """Read and check ``device.json``.

    Raises:
        NotADevice: absent or damaged.
        DeviceStorageError: unreadable.
    """
    layout = Layout(Path(root))
    try:
        env = read_envelope(layout.device_file, DEVICE_KIND)
    except StateCorrupt as exc:
        raise NotADevice(f"{layout.device_file} is damaged: {exc}") from exc
    if env is None:
        raise NotADevice(f"{root} is not a device folder (no device.json); run device init")
    return DeviceInfo.from_json(env[1])


def init_device(root: Path, *, device_id: str, hardware: str,
                components: Mapping[str, FactoryImage | None] | Sequence[str],
                safe_image: bytes = DEFAULT_SAFE_IMAGE, max_boot_attempts: int = DEFAULT_MAX_BOOT_ATTEMPTS,
                health_command: Sequence[str] | None = None) -> DeviceInfo:
    """Create a device folder: layout, safe-mode image, per component its slots and state.

    A component given a :class:`FactoryImage` starts with it confirmed in slot ``a``; one given
    None (or named in a plain sequence) starts empty and boots into safe mode until ``recover``.
    ``device.json`` is written last, so a crash during init leaves no half-device.

    Raises:
        DeviceExists: the folder already holds a device.
        BadInstallRequest: a bad id, hardware, component name, version or hash.
        DeviceStorageError: the folder cannot be written.
    """
    layout = Layout(Path(root))
    if layout.device_file.exists():
        raise DeviceExists(f"{root} already holds a device")
    for what, text in (("device id", device_id), ("hardware", hardware)):
        if not isinstance(text, str) or not _TEXT_RE.match(text):
            raise BadInstallRequest(f"bad {what} {text!r}: 1..64 printable characters, no spaces")
    comps: dict[str, FactoryImage | None] = (
        dict(components) if isinstance(components, Mapping) else dict.fromkeys(components))
    if not comps:
        raise BadInstallRequest("a device needs at least one component")
    if max_boot_attempts < 1:
        raise BadInstallRequest("max_boot_attempts must be at least 1")
    states = {}
    for name, image in comps.items():
        check_component_name(name)
        states[name] = fresh_state(name) if image is None else factory_state(
            name, version=image.version, header_hash=image.header_hash,
            sha256=_sha256(image.data), size=len(image.data), verified=image.verified)
    try:
        for d in (layout.root, layout.safe_dir, layout.journal_dir, layout.components_dir):
            fsutil.make_dirs(d)  # each new folder's entry synced in its parent
        atomic_write(layout.safe_image, safe_image)
        for name, image in comps.items():
            fsutil.make_dirs(layout.component_dir(name))
            atomic_write(layout.slot_path(name, "a"), image.data if image is not None else b"")
            atomic_write(layout.slot_path(name, "b"), b"")
            write_state_copies(layout.state_paths(name), 1, states[name].to_json(), current=None)
        info = DeviceInfo(device_id, hardware, tuple(comps), max_boot_attempts,
                          None if health_command is None else tuple(health_command),
                          _sha256(safe_image), len(safe_image))
        atomic_write(layout.device_file, encode_envelope(DEVICE_KIND, 1, info.to_json()))
        fsync_dir(layout.root)
    except OSError as exc:
        raise DeviceStorageError(f"cannot create device in {root}: {exc}") from exc
    return info


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class BootOutcome:
    """What one boot of a component did.

    ``kind`` is what runs now: ``trial`` (an unconfirmed image), ``normal`` or ``safe``.
    ``confirmed`` is True when this boot's trial passed; ``reverted`` when it gave up a trial image;
    ``events`` lists the codes of what happened (e.g. ``too_many_boot_attempts``).
    """

    component: str
    kind: BootKind
    slot: Slot | None
    version: str | None
    sha256: str | None
    attempt: int = 0
    confirmed: bool = False
    reverted: bool = False
    events: tuple[str, ...] = ()
    safe_image_ok: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {"component": self.component, "kind": self.kind.value, "slot": self.slot, "version": self.version,
                "sha256": self.sha256, "attempt": self.attempt, "confirmed": self.confirmed,
                "reverted": self.reverted, "events": list(self.events), "safe_image_ok": self.safe_image_ok}


@dataclass
class _Loaded:
    state: ComponentState
    generation: int
    copies: StateCopies | None
    journal: JournalEntry | None = None


# ----------------------------------------------------------------------------- install session


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
        self._sha: Any = hashlib.sha256()  # of the slot's bytes [0, _hashed); None once out of order
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
        if self._sha is not None and offset == self._hashed:
            self._sha.update(data)
            self._hashed = end
        else:  # a rewrite, or a gap in what was hashed: finish reads the slot back
            self._sha = None
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
                    if self._sha is not None:
                        self._sha.update(data)
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

    def finish(self, sha256: bytes | str | None) -> ComponentState:
        """Check the written image against ``sha256`` and mark the slot ``pending`` (trial at next boot).

        The image's hash is the session's running hash when it covers every byte (see the class),
        else the slot read back. ``sha256`` None: the caller vouches for the bytes it wrote (they
        passed its own checks: the updater's payload pipeline), and the image's hash is recorded
        as it is. On a mismatch the install is abandoned (slot ``empty``, last result ``hash_mismatch``).

        Raises:
            InstallNotActive: the session is over.
            BadInstallRequest: fewer bytes written than announced (the session stays open), or a bad digest.
            ImageHashMismatch: the bytes do not hash to ``sha256``.
            DeviceStorageError: a read or write failed.
        """
        fd = self._require()
        given = None if sha256 is None else normalize_sha256(sha256)
        if self.offset != self.size:
            raise BadInstallRequest(f"{self.component}: {self.offset} of {self.size} bytes written")
        if self.durable != self.size:
            self._checkpoint(fd)
        dev = self._device
        dev._probe(f"hash {self.component} slot={self.slot}")
        if self._sha is not None and self._hashed == self.size:
            actual: str | None = self._sha.hexdigest()
        else:
            actual = hash_file(dev.slot_path(self.component, self.slot), self.size)
        expected = given if given is not None else actual
        if actual is None or actual != expected:
            self.abandon(code=ImageHashMismatch.code,
                         message=f"slot {self.slot} hashes to {actual}, expected {expected}")
            raise ImageHashMismatch(f"{self.component}: written image hashes to {actual}, expected {expected}")
        st = complete_install(dev._load(self.component), slot=self.slot, install_id=self.install_id,
                              sha256=actual, now=dev._now())
        dev._commit(self.component, st, "pending")
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


# ----------------------------------------------------------------------------- the device


class Device:
    """An opened device folder, locked against other writers for the object's lifetime.

    ``health_check`` decides trial boots (default: the ``health_command`` of device.json, else
    none: trials then wait for :meth:`confirm`). ``probe`` is told the label of every durable step
    before it happens (tracing; the power-loss test stops the process there). ``clock`` stamps
    results.
    """

    def __init__(self, root: Path, *, health_check: HealthCheck | None = None,
                 max_boot_attempts: int | None = None, checkpoint_bytes: int = DEFAULT_CHECKPOINT_BYTES,
                 probe: Probe | None = None, clock: Callable[[], float] = time.time) -> None:
        """Open and lock the device.

        Raises:
            NotADevice: the folder holds no (valid) device.
            DeviceBusy: another process has it open.
            DeviceStorageError: it cannot be read.
        """
        self.layout = Layout(Path(root))
        self.info = load_device_info(self.layout.root)
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(lock_device(self.layout))
        self.max_boot_attempts = max_boot_attempts or self.info.max_boot_attempts
        self.checkpoint_bytes = max(0, checkpoint_bytes)
        if health_check is None and self.info.health_command:
            health_check = CommandHealthCheck(self.info.health_command)
        self.health_check = health_check
        self._probe: Probe = probe or _noprobe
        self._clock = clock
        self._cache: dict[str, _Loaded] = {}
        self._sessions: dict[str, InstallSession] = {}
        try:
            remove_stale_temps(self.layout.journal_dir)
            for name in self.info.components:
                remove_stale_temps(self.layout.component_dir(name))
        except DeviceError:
            self.close()
            raise

    # -- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        """Close open install sessions (they stay resumable) and release the lock."""
        for s in list(self._sessions.values()):
            s.close()
        self._stack.close()

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading --------------------------------------------------------------------------------

    @property
    def components(self) -> tuple[str, ...]:
        return self.info.components

    def slot_path(self, component: str, slot: Slot) -> Path:
        """The image file of a slot.

        Raises:
            UnknownComponent: no such component.
        """
        self._check_component(component)
        return self.layout.slot_path(component, slot)

    def state(self, component: str) -> ComponentState:
        """The component's current state (newest valid copy, reconciled with its journal).

        Raises:
            UnknownComponent: no such component.
            StateCorrupt: both copies damaged (a boot resets the component into safe mode).
            DeviceStorageError: unreadable.
        """
        return self._load(component)

    def status(self) -> dict[str, Any]:
        """Everything ``device status --json`` shows: per component mode, versions, slots, last result."""
        comps = []
        for name in self.components:
            try:
                self._load(name)
            except StateCorrupt as exc:
                comps.append({"name": name, "error": {"code": exc.code, "message": str(exc)}})
                continue
            loaded = self._cache[name]
            comps.append(_component_status(loaded.state, loaded.generation,
                                           loaded.copies.valid if loaded.copies else (True, True),
                                           loaded.journal, self.max_boot_attempts))
        return _device_status(self.info, comps)

    # -- install --------------------------------------------------------------------------------

    def begin_install(self, component: str, version: str, header_hash: bytes | str, size: int) -> InstallSession:
        """Start (or resume, if the same install was interrupted) an install into the inactive slot.

        Writes the journal entry, then marks the target slot ``writing``, then truncates it. The
        confirmed and running slots are never chosen (:func:`.state.install_target`). An
        interrupted install of another image is abandoned first (``superseded``).

        Raises:
            UnknownComponent: no such component.
            SafeModeActive: the component is in safe mode (use :meth:`recover`).
            TrialInProgress: an image runs on trial.
            RollbackRefused: ``version`` is below the anti-rollback counter.
            BadInstallRequest: bad version, hash or size.
            DeviceStorageError: a write failed.
        """
        return self._begin(component, version, header_hash, size, recover=False)

    def recover(self, component: str, version: str, header_hash: bytes | str, size: int) -> InstallSession:
        """Safe mode's manual install (C11.1.b): like :meth:`begin_install`, accepted only in safe mode.

        The image must be verified by the caller; it boots on trial like any update and safe mode
        ends when it is confirmed.

        Raises:
            UnknownComponent: no such component.
            NotInSafeMode: the component is not in safe mode.
            RollbackRefused: ``version`` is below the anti-rollback counter.
            BadInstallRequest: bad version, hash or size.
            DeviceStorageError: a write failed.
        """
        return self._begin(component, version, header_hash, size, recover=True)

    def resume_install(self, component: str) -> InstallSession | None:
        """The interrupted install of ``component``, reopened at its durable offset; None if there is none.

        Raises:
            UnknownComponent: no such component.
            SafeModeActive: the component entered safe mode since (abandon it, or ``recover``).
            NotInSafeMode: an interrupted ``recover`` whose component left safe mode.
            DeviceStorageError: the slot cannot be opened.
        """
        st = self._load(component)
        entry = self._cache[component].journal
        if entry is None:
            return None
        # the rules of a new install still hold (e.g. safe mode entered since: only recover may go on)
        plan_install(st, version=entry.version, header_hash=entry.header_hash, size=entry.size,
                     install_id=entry.install_id, recover=entry.recover)
        return self._open_session(entry, resumed=True)

    def abandon_install(self, component: str, code: str = "abandoned", message: str = "install abandoned") -> None:
        """Abandon the component's unfinished install, if any (slot ``empty``, journal removed).

        Raises:
            UnknownComponent: no such component.
            DeviceStorageError: a write failed.
        """
        self._load(component)
        self._abandon(component, code=code, message=message, install_id=None)

    def _begin(self, component: str, version: str, header_hash: bytes | str, size: int, *,
               recover: bool) -> InstallSession:
        st = self._load(component)
        hh = normalize_header_hash(header_hash)
        plan_install(st, version=version, header_hash=hh, size=size, install_id="check", recover=recover)
        entry = self._cache[component].journal
        if entry is not None:
            if (entry.version, entry.header_hash, entry.size, entry.recover) == (version, hh, size, recover):
                return self._open_session(entry, resumed=True)
            self._abandon(component, code="superseded", install_id=None,
                          message=f"install of {entry.version} superseded by {version}")
            st = self._load(component)
        self._close_session(component)
        install_id = secrets.token_hex(8)
        slot, new = plan_install(st, version=version, header_hash=hh, size=size, install_id=install_id,
                                 recover=recover)
        entry = JournalEntry(component, install_id, slot, version, hh, size, 0, recover)
        self._write_journal(entry, label=f"journal {component} begin")
        self._commit(component, new, "writing")
        return self._open_session(entry, resumed=False)

    def _open_session(self, entry: JournalEntry, *, resumed: bool) -> InstallSession:
        self._close_session(entry.component)
        path = self.layout.slot_path(entry.component, entry.slot)
        self._probe(f"truncate {entry.component} slot={entry.slot} to={entry.durable}")
        try:
            fd = fsutil.open_fd(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fsutil.truncate_fd(fd, entry.durable)
                fsutil.fsync_fd(fd)
            except OSError:
                fsutil.close_fd(fd)
                raise
        except OSError as exc:
            raise DeviceStorageError(f"cannot open slot {entry.slot} of {entry.component}: {exc}") from exc
        session = InstallSession(self, entry, fd, resumed=resumed)
        self._sessions[entry.component] = session
        return session

    def _close_session(self, component: str) -> None:
        s = self._sessions.pop(component, None)
        if s is not None:
            s.close()

    def _abandon(self, component: str, *, code: str, message: str, install_id: str | None) -> None:
        self._close_session(component)
        st = self._load(component)
        w = st.writing
        if w is not None and (install_id is None or st.slot(w).install_id == install_id):
            self._commit(component, abandon_install(st, slot=w, code=code, message=message, now=self._now()),
                         "abandon")
            self._drop_journal(component)
            self._truncate_quietly(self.layout.slot_path(component, w))
        elif self._cache[component].journal is not None:
            self._drop_journal(component)

    # -- boot -----------------------------------------------------------------------------------

    def boot(self) -> tuple[BootOutcome, ...]:
        """Boot every component (one power-on). A staged image is not trial-booted: it waits,
        staged, for the agent to prove its release's standing again (R10.a.i, R10.d.ii;
        :meth:`.updater.Updater.boot_staged`), and the confirmed image boots.

        Raises:
            DeviceStorageError: a state write failed.
        """
        return tuple(self.boot_component(name, staged=False) for name in self.components)

    def boot_component(self, component: str, *, staged: bool = True,
                       before_confirm: Callable[[], tuple[str, str] | None] | None = None) -> BootOutcome:
        """Boot one component: trial (then health check: confirm or revert), confirmed image, or safe mode.

        The trial's attempt count is persisted before the health check runs. ``before_confirm`` is
        asked after a passed health check, right before the confirm: None confirms, a ``(code,
        message)`` reverts the trial with that code instead (the updater's re-proof of the
        release's standing, :mod:`.status`). A component whose state copies are both damaged is
        reset into safe mode (``state_corrupt``), its damaged files kept aside as ``*.damaged``.
        ``staged=False``: a staged image is left staged (:meth:`boot`).

        Raises:
            UnknownComponent: no such component.
            DeviceStorageError: a read or write failed.
        """
        try:
            st = self._load(component)
        except StateCorrupt as exc:
            st = self._reset_corrupt(component, exc)
        intact = self._slot_checks(component, st)
        plan = plan_boot(st, intact, max_attempts=self.max_boot_attempts, now=self._now(), staged=staged)
        self._probe(f"boot {component} {plan.kind.value} slot={plan.slot} attempt={plan.state.attempts}")
        if plan.state != st:
            self._commit(component, plan.state, f"boot-{plan.kind.value}")
        if plan.kind is not BootKind.TRIAL or self.health_check is None:
            return self._outcome(component, plan.kind, plan.slot, plan.events, plan.state)
        assert plan.slot is not None
        healthy, code, message = self._run_health(component, plan.slot, plan.state)
        veto = before_confirm() if healthy and before_confirm is not None else None
        if veto is not None:
            healthy, (code, message) = False, veto
        if healthy:
            self._probe(f"confirm {component} slot={plan.slot}")
            done = confirm(plan.state, now=self._now())
            self._commit(component, done, "confirm")
            return self._outcome(component, BootKind.NORMAL, plan.slot, plan.events, done, confirmed=True,
                                 attempt=plan.state.attempts)
        self._probe(f"revert {component} slot={plan.slot} code={code}")
        back = plan_boot(revert(plan.state, code=code, message=message, now=self._now()), intact,
                         max_attempts=self.max_boot_attempts, now=self._now())
        self._commit(component, back.state, "revert")
        return self._outcome(component, back.kind, back.slot, (*plan.events, code, *back.events), back.state,
                             reverted=True, attempt=plan.state.attempts)

    def confirm(self, component: str) -> ComponentState:
        """Confirm the image running on trial (the anti-rollback counter rises now, C11.1.a.i).

        Raises:
            UnknownComponent: no such component.
            NotInTrial: nothing runs on trial.
            DeviceStorageError: the write failed.
        """
        done = confirm(self._load(component), now=self._now())
        self._probe(f"confirm {component}")
        self._commit(component, done, "confirm")
        return done

    def revert(self, component: str, code: str = "manual_revert",
               message: str = "trial reverted by request") -> BootOutcome:
        """Give up the image on trial and boot the confirmed one again (or safe mode) (R10.c.ii).

        Raises:
            UnknownComponent: no such component.
            NotInTrial: nothing awaits or runs its trial.
            DeviceStorageError: a read or write failed.
        """
        st = revert(self._load(component), code=code, message=message, now=self._now())
        intact = self._slot_checks(component, st)
        back = plan_boot(st, intact, max_attempts=self.max_boot_attempts, now=self._now())
        self._probe(f"revert {component}")
        self._commit(component, back.state, "revert")
        return self._outcome(component, back.kind, back.slot, (code, *back.events), back.state, reverted=True)

    def record_result(self, component: str, op: str, code: str | None, message: str = "",
                      version: str | None = None) -> None:
        """Record the outcome of an operation done outside this module (e.g. a refused verification).

        Raises:
            UnknownComponent: no such component.
            DeviceStorageError: the write failed.
        """
        st = self._load(component)
        self._commit(component, with_result(st, Result(op, code is None, code, message, version, self._now())),
                     "result")

    # -- internals ------------------------------------------------------------------------------

    def _now(self) -> float:
        return round(self._clock(), 3)

    def _check_component(self, component: str) -> None:
        if component not in self.info.components:
            raise UnknownComponent(f"{self.info.device_id} has no component {component!r}")

    def _load(self, component: str) -> ComponentState:
        loaded = self._cache.get(component)
        if loaded is not None:
            return loaded.state
        self._check_component(component)
        copies = read_state_copies(self.layout.state_paths(component), ComponentState.from_json)
        _, generation, body = copies.newest()
        st = ComponentState.from_json(body)
        if st.name != component:
            raise StateCorrupt(f"state of {component} names {st.name!r}")
        journal = self._read_journal(component)
        self._cache[component] = _Loaded(st, generation, copies)
        new, keep = reconcile(st, journal, now=self._now())
        if new != st:
            w = st.writing
            self._commit(component, new, "reconcile")
            if w is not None:
                self._truncate_quietly(self.layout.slot_path(component, w))
        if keep:
            self._cache[component].journal = journal
        elif self.layout.journal_path(component).exists():
            self._drop_journal(component)
        return new

    def _read_journal(self, component: str) -> JournalEntry | None:
        try:
            env = read_envelope(self.layout.journal_path(component), JOURNAL_KIND)
            return None if env is None else JournalEntry.from_json(env[1])
        except StateCorrupt:
            return None  # a damaged journal is no journal: its install is abandoned cleanly

    def _write_journal(self, entry: JournalEntry, *, label: str) -> None:
        atomic_write(self.layout.journal_path(entry.component),
                     encode_envelope(JOURNAL_KIND, entry.durable, entry.to_json()), probe=self._probe, label=label)
        if entry.component in self._cache:
            self._cache[entry.component].journal = entry

    def _drop_journal(self, component: str) -> None:
        remove_file(self.layout.journal_path(component), probe=self._probe, label=f"journal {component}")
        if component in self._cache:
            self._cache[component].journal = None

    def _commit(self, component: str, state: ComponentState, why: str) -> None:
        state.validate()
        loaded = self._cache[component]
        generation = loaded.generation + 1
        body = state.to_json()
        write_state_copies(self.layout.state_paths(component), generation, body, current=loaded.copies,
                           probe=self._probe, label=f"state {component} {why}")
        loaded.state, loaded.generation = state, generation
        loaded.copies = StateCopies(((generation, body), (generation, body)), (None, None))

    def _reset_corrupt(self, component: str, exc: StateCorrupt) -> ComponentState:
        for p in self.layout.state_paths(component):
            try:
                fsutil.replace(p, p.with_name(p.name + ".damaged"))
            except FileNotFoundError:
                pass
            except OSError as err:
                raise DeviceStorageError(f"cannot move {p} aside: {err}") from err
        st = ComponentState(name=component, safe_mode=True, last_result=Result(
            "boot", False, CODE_STATE_CORRUPT, f"both state copies damaged ({exc}); reset into safe mode",
            None, self._now()))
        self._cache[component] = _Loaded(st, 0, None)
        self._commit(component, st, "reset")
        if self.layout.journal_path(component).exists():
            self._drop_journal(component)
        return st

    def _slot_checks(self, component: str, st: ComponentState) -> SlotChecks:
        return SlotChecks(lambda slot: self._intact(component, st, slot), slots_to_check(st))

    def _intact(self, component: str, st: ComponentState, slot: Slot) -> bool:
        info = st.slot(slot)
        if info.sha256 is None:
            return False
        self._probe(f"verify {component} slot={slot}")
        return hash_file(self.layout.slot_path(component, slot), info.size) == info.sha256

    def _run_health(self, component: str, slot: Slot, st: ComponentState) -> tuple[bool, str, str]:
        info = st.slot(slot)
        ctx = BootContext(self.info.device_id, component, slot, self.layout.slot_path(component, slot),
                          info.version or "", st.attempts, self.max_boot_attempts)
        self._probe(f"health {component} slot={slot} attempt={st.attempts}")
        assert self.health_check is not None
        try:
            ok = bool(self.health_check(ctx))
        except TimeoutError as exc:
            return False, CODE_HEALTH_TIMEOUT, f"health check of {info.version}: {exc}"
        except Exception as exc:
            return False, CODE_HEALTH_ERROR, f"health check of {info.version} raised: {exc!r}"
        return ok, CODE_HEALTH_FAILED, f"health check of {info.version} in slot {slot} failed (attempt {st.attempts})"

    def _outcome(self, component: str, kind: BootKind, slot: Slot | None, events: tuple[str, ...],
                 st: ComponentState, *, confirmed: bool = False, reverted: bool = False,
                 attempt: int | None = None) -> BootOutcome:
        info = st.slot(slot) if slot is not None else None
        safe_ok = None
        if kind is BootKind.SAFE:
            safe_ok = hash_file(self.layout.safe_image, self.info.safe_image_size) == self.info.safe_image_sha256
        return BootOutcome(component, kind, slot, info.version if info else None, info.sha256 if info else None,
                           st.attempts if attempt is None else attempt, confirmed, reverted, events, safe_ok)

    @staticmethod
    def _truncate_quietly(path: Path) -> None:
        with contextlib.suppress(OSError):
            fsutil.truncate_path(path, 0)


# ----------------------------------------------------------------------------- status


def _component_status(st: ComponentState, generation: int, valid: tuple[bool, bool],
                      journal: JournalEntry | None, max_attempts: int) -> dict[str, Any]:
    active = st.slot(st.active) if st.active is not None else None
    t = st.trial
    trial = None if t is None else {"slot": t, "version": st.slot(t).version, "status": st.slot(t).status.value,
                                    "attempts": st.attempts, "max_attempts": max_attempts}
    install = None if journal is None else {"slot": journal.slot, "version": journal.version,
                                            "header_hash": journal.header_hash, "size": journal.size,
                                            "durable": journal.durable, "recover": journal.recover}
    from .factory import wire_state  # (factory imports this module)

    return {
        "name": st.name,
        "firmware_state": wire_state(st)[0],
        "mode": st.mode,
        "active": st.active,
        "version": active.version if active else None,
        "header_hash": active.header_hash if active else None,
        "confirmed": st.confirmed,
        "counter": st.counter,
        "safe_mode": st.safe_mode,
        "trial": trial,
        "install": install,
        "slots": {s: st.slot(s).to_json() for s in SLOTS},
        "last_result": None if st.last_result is None else st.last_result.to_json(),
        "state": {"generation": generation, "copies_valid": list(valid)},
    }


def _device_status(info: DeviceInfo, comps: list[dict[str, Any]]) -> dict[str, Any]:
    modes = {c.get("mode", "safe") for c in comps}
    mode = next((m for m in ("safe", "trial", "off") if m in modes), "normal")
    return {"device": {"id": info.device_id, "hardware": info.hardware, "mode": mode,
                       "max_boot_attempts": info.max_boot_attempts},
            "components": comps}


def read_status(root: Path) -> dict[str, Any]:
    """The status of a device without locking it (state files are replaced atomically).

    Shows an unfinished install only when its journal agrees with the state.

    Raises:
        NotADevice: not a device folder.
        DeviceStorageError: unreadable.
    """
    layout = Layout(Path(root))
    info = load_device_info(layout.root)
    comps = []
    for name in info.components:
        try:
            copies = read_state_copies(layout.state_paths(name), ComponentState.from_json)
            _, generation, body = copies.newest()
            st = ComponentState.from_json(body)
        except StateCorrupt as exc:
            comps.append({"name": name, "error": {"code": exc.code, "message": str(exc)}})
            continue
        try:
            env = read_envelope(layout.journal_path(name), JOURNAL_KIND)
            journal = None if env is None else JournalEntry.from_json(env[1])
        except StateCorrupt:
            journal = None
        if journal is not None and not journal.matches(st):
            journal = None
        comps.append(_component_status(st, generation, copies.valid, journal, info.max_boot_attempts))
    return _device_status(info, comps)

