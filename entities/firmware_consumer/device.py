"""The device: a folder of components with A/B slots, installs into the inactive slot, trial boots.

This module (with :mod:`.install_session`) sequences the I/O around the pure decisions of
:mod:`.state` and :mod:`.boot`; it does no verification of images (the verification pipeline hands
it plaintext it has already checked against the ledger, and an install session only checks the
written bytes against the SHA-256 it is given).

Install (never writes the active or confirmed slot): :meth:`Device.begin_install` (or ``recover``,
``resume_install``) writes the journal entry, marks the target slot ``writing``, opens it and returns
an :class:`.install_session.InstallSession`, which streams the image in, checkpoints and finishes
(hash check, state: ``pending``) or abandons it.

Boot (one call = one power-on; X.1368 R10.c.ii and C11.1.b)::

    outcome = device.boot_component("main-fw")   # trial -> health check -> confirm or revert; or safe mode

Order of durable steps (an install's chunks, checkpoints and ``pending`` are its session's), and
what a power cut after each leaves:

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

``device.json`` and new device folders: :mod:`.device_info`; the status document: :mod:`.device_status`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger_node import fsutil

from . import slot_digest
from .boot import (
    CODE_HEALTH_ERROR,
    CODE_HEALTH_FAILED,
    CODE_HEALTH_TIMEOUT,
    CODE_STATE_CORRUPT,
    BootKind,
    BootOutcome,
    SlotChecks,
    confirm,
    plan_boot,
    revert,
    slots_to_check,
)
from .device_info import (
    DEFAULT_MAX_BOOT_ATTEMPTS,
    DEFAULT_SAFE_IMAGE,
    DeviceInfo,
    FactoryImage,
    init_device,
    load_device_info,
)
from .device_status import assemble_status, component_status, read_status
from .envelope import encode_envelope
from .errors import DeviceError, DeviceStorageError, StateCorrupt, UnknownComponent
from .health import BootContext, CommandHealthCheck, HealthCheck
from .install_session import DEFAULT_CHECKPOINT_BYTES, InstallSession
from .state import (
    ComponentState,
    JournalEntry,
    Result,
    Slot,
    abandon_install,
    normalize_header_hash,
    plan_install,
    reconcile,
    with_result,
)
from .store import (
    JOURNAL_KIND,
    Layout,
    Probe,
    StateCopies,
    WrittenSlot,
    atomic_write,
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
    "EVENT_AWAITING_REPROOF",
    "BootOutcome",
    "Device",
    "DeviceInfo",
    "FactoryImage",
    "InstallSession",
    "init_device",
    "load_device_info",
    "read_status",
]


#: a power-on's trial whose health check passed, left on trial for the agent's re-proof (:meth:`Device.boot`)
EVENT_AWAITING_REPROOF = "awaiting_reproof"


def _noprobe(label: str) -> None:
    """The default probe: nothing."""


def _resumes(entry: JournalEntry, version: str, header_hash: str, size: int, recover: bool) -> bool:
    """Whether an install of these goes on with the interrupted one ``entry`` journals."""
    return (entry.version, entry.header_hash, entry.size, entry.recover) == (version, header_hash, size, recover)


@dataclass
class _Loaded:
    state: ComponentState
    generation: int
    copies: StateCopies | None
    journal: JournalEntry | None = None


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
        self._written: dict[tuple[str, Slot], WrittenSlot] = {}  # slots installed by this object, not yet booted
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
            comps.append(component_status(loaded.state, loaded.generation,
                                          loaded.copies.valid if loaded.copies else (True, True),
                                          loaded.journal, self.max_boot_attempts))
        return assemble_status(self.info, comps)

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

    def install_offset(self, component: str, version: str, header_hash: bytes | str, size: int, *,
                       recover: bool = False) -> int:
        """Where :meth:`begin_install` (``recover``: :meth:`recover`) would start this install, writing
        nothing: 0 for a new one, the durable offset of the same install interrupted before.

        Raises:
            what :meth:`begin_install` (or :meth:`recover`) raises before its first write.
        """
        st = self._load(component)
        hh = normalize_header_hash(header_hash)
        plan_install(st, version=version, header_hash=hh, size=size, install_id="check", recover=recover)
        entry = self._cache[component].journal
        return entry.durable if entry is not None and _resumes(entry, version, hh, size, recover) else 0

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
            if _resumes(entry, version, hh, size, recover):
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
        self._written.pop((entry.component, entry.slot), None)
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
        """Boot every component (one power-on, without the agent). Nothing is confirmed here: a
        staged image is not trial-booted (it waits, staged, for the agent to prove its release's
        standing again: R10.a.i, R10.d.ii; :meth:`.updater.Updater.boot_staged`) and the confirmed
        image boots; an image already on trial boots on trial once more (its attempt counted) and,
        when its health check passes, stays on trial (event ``awaiting_reproof``) until the agent
        proves its standing again and confirms it (:func:`.reproof.boot_trials`).

        Raises:
            DeviceStorageError: a state write failed.
        """
        return tuple(self.boot_component(name, staged=False, confirm_trial=False) for name in self.components)

    def boot_component(self, component: str, *, staged: bool = True, confirm_trial: bool = True,
                       before_confirm: Callable[[], tuple[str, str] | None] | None = None) -> BootOutcome:
        """Boot one component: trial (then health check: confirm or revert), confirmed image, or safe mode.

        The trial's attempt count is persisted before the health check runs. ``before_confirm`` is
        asked after a passed health check, right before the confirm: None confirms, a ``(code,
        message)`` reverts the trial with that code instead (the updater's re-proof of the
        release's standing, :mod:`.status`). A component whose state copies are both damaged is
        reset into safe mode (``state_corrupt``), its damaged files kept aside as ``*.damaged``.
        ``staged=False``: a staged image is left staged (:meth:`boot`). ``confirm_trial=False``: a
        trial whose health check passes stays on trial, unconfirmed (:meth:`boot`); a failing one
        is reverted all the same.

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
        if healthy and not confirm_trial:  # the agent proves its standing again, then confirms
            return self._outcome(component, BootKind.TRIAL, plan.slot, (*plan.events, EVENT_AWAITING_REPROOF),
                                 plan.state, attempt=plan.state.attempts)
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
        if info.digest is None:
            return False
        self._probe(f"verify {component} slot={slot}")
        path = self.layout.slot_path(component, slot)
        written = self._written.pop((component, slot), None)
        if written is not None and written.unchanged(path, info.digest):
            return True
        return hash_file(path, info.size, slot_digest.algorithm_of(info.digest)) == info.digest

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
            safe_ok = (hash_file(self.layout.safe_image, self.info.safe_image_size, "sha256")
                       == slot_digest.make("sha256", self.info.safe_image_sha256))
        return BootOutcome(component, kind, slot, info.version if info else None, info.digest if info else None,
                           st.attempts if attempt is None else attempt, confirmed, reverted, events, safe_ok)

    @staticmethod
    def _truncate_quietly(path: Path) -> None:
        with contextlib.suppress(OSError):
            fsutil.truncate_path(path, 0)
