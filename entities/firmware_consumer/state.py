"""A component's boot and install state, its file codec, and the install transitions. Pure.

Nothing here touches the disk or the clock: functions take a :class:`ComponentState` (and the
current time where a result is stamped) and return a new one; :mod:`.store` persists it and
:mod:`.device` and :mod:`.install_session` sequence the I/O. Every decision is therefore a unit test.

A component has two image slots, ``a`` and ``b``. Each slot has a status:

``empty``       nothing installed (or an abandoned install)
``writing``     an install is streaming into it (``install_id`` ties it to the journal)
``pending``     fully written, hash checked, waiting for its first trial boot
``trial``       booted on trial ``attempts`` times, not yet confirmed
``confirmed``   the confirmed image (at most one slot); the normal boot target
``superseded``  a formerly confirmed image (kept; bootable only if not below the counter)
``bad``         failed its trial, or its bytes no longer match the recorded hash

plus, per component: the ``active`` slot (what runs now; None in safe mode), the trial boot
``attempts``, the anti-rollback ``counter`` (a version; rises only on confirm, C11.1.a.i), the
``safe_mode`` flag (C11.1.b) and the ``last_result`` (operation, ok, stable error code; R10.c.i).

State files are checksummed envelopes (:mod:`.envelope`, whose public names this module
re-exports), so a damaged or truncated file is detected and the other copy used (:func:`choose_newest`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal, cast

from . import slot_digest
from .envelope import (
    FORMAT,
    _bool,
    _corrupt_unless,
    _int,
    _num,
    _obj,
    _opt_str,
    _str,
    choose_newest,
    decode_envelope,
    encode_envelope,
)
from .errors import (
    BadInstallRequest,
    InstallNotActive,
    NotInSafeMode,
    RollbackRefused,
    SafeModeActive,
    StateCorrupt,
    TrialInProgress,
)

__all__ = [
    "FORMAT",
    "IMAGE_STATUSES",
    "MAX_IMAGE_SIZE",
    "SLOTS",
    "UNVERIFIED_KEY",
    "ComponentState",
    "JournalEntry",
    "Result",
    "Slot",
    "SlotInfo",
    "SlotStatus",
    "abandon_install",
    "check_component_name",
    "choose_newest",
    "complete_install",
    "decode_envelope",
    "encode_envelope",
    "factory_state",
    "fresh_state",
    "install_target",
    "normalize_header_hash",
    "normalize_sha256",
    "pack_version",
    "plan_install",
    "reconcile",
    "unverified_slot",
    "with_result",
]

#: the state key marking an unverified factory image (``{"slot", "digest"}``)
UNVERIFIED_KEY = "unverified"
#: largest image a slot accepts (1 TiB: a sanity bound, the record's file size is the real one)
MAX_IMAGE_SIZE = 1 << 40

Slot = Literal["a", "b"]
SLOTS: tuple[Slot, Slot] = ("a", "b")

_VERSION_RE = re.compile(r"^(0|[1-9]\d{0,4})\.(0|[1-9]\d{0,4})\.(0|[1-9]\d{0,4})$", re.ASCII)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class SlotStatus(StrEnum):
    """Lifecycle of one image slot (see the module docstring)."""

    EMPTY = "empty"
    WRITING = "writing"
    PENDING = "pending"
    TRIAL = "trial"
    CONFIRMED = "confirmed"
    SUPERSEDED = "superseded"
    BAD = "bad"


#: statuses whose slot holds a complete image with a recorded hash
IMAGE_STATUSES = frozenset({SlotStatus.PENDING, SlotStatus.TRIAL, SlotStatus.CONFIRMED,
                            SlotStatus.SUPERSEDED, SlotStatus.BAD})


# ----------------------------------------------------------------------------- small codecs


def pack_version(text: str) -> int:
    """``"MAJOR.MINOR.PATCH"`` -> ``major << 32 | minor << 16 | patch`` (the ledger's packing).

    Same rule as ``ledger_node.record.Version`` (kept local so a device process does not load the
    ABI stack just to compare versions).

    Raises:
        BadInstallRequest: not three dot-separated numbers 0..65535.
    """
    m = _VERSION_RE.match(text) if isinstance(text, str) else None
    if not m:
        raise BadInstallRequest(f"bad version {text!r}: expected MAJOR.MINOR.PATCH, each 0..65535")
    major, minor, patch = (int(g) for g in m.groups())
    if max(major, minor, patch) > 0xFFFF:
        raise BadInstallRequest(f"bad version {text!r}: parts must be 0..65535")
    return major << 32 | minor << 16 | patch


def normalize_header_hash(value: bytes | str) -> str:
    """A release header hash as ``0x`` + 64 lowercase hex digits.

    Raises:
        BadInstallRequest: not 32 bytes.
    """
    return "0x" + _hex32(value, "header hash")


def normalize_sha256(value: bytes | str) -> str:
    """A SHA-256 digest as 64 lowercase hex digits.

    Raises:
        BadInstallRequest: not 32 bytes.
    """
    return _hex32(value, "sha256")


def _hex32(value: bytes | str, what: str) -> str:
    if isinstance(value, bytes | bytearray):
        if len(value) != 32:
            raise BadInstallRequest(f"{what} must be 32 bytes, got {len(value)}")
        return bytes(value).hex()
    if isinstance(value, str):
        text = value.lower().removeprefix("0x")
        if _HEX64.match(text):
            return text
    raise BadInstallRequest(f"{what} must be 32 bytes (64 hex digits), got {value!r}")


def check_component_name(name: str) -> str:
    """Component names become folder names: lowercase letters, digits, ``.``, ``_``, ``-``.

    Raises:
        BadInstallRequest: the name is not of that form.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise BadInstallRequest(f"bad component name {name!r}: use [a-z0-9][a-z0-9._-]{{0,63}}")
    return name


# ----------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Result:
    """The outcome of the last operation on a component (what the device reports, R10.c.i).

    ``code`` is None on success, else a stable error code (the ``code`` of an error class, or a
    boot reason such as ``health_check_failed``).
    """

    op: str
    ok: bool
    code: str | None = None
    message: str = ""
    version: str | None = None
    at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "ok": self.ok, "code": self.code, "message": self.message,
                "version": self.version, "at": self.at}

    @classmethod
    def from_json(cls, obj: Any) -> Result:
        o = _obj(obj, "last_result")
        return cls(op=_str(o, "op"), ok=_bool(o, "ok"), code=_opt_str(o, "code"),
                   message=_str(o, "message"), version=_opt_str(o, "version"), at=_num(o, "at"))


@dataclass(frozen=True)
class SlotInfo:
    """What the state records about one slot's image."""

    status: SlotStatus = SlotStatus.EMPTY
    version: str | None = None
    header_hash: str | None = None
    #: the image's slot digest (:mod:`.slot_digest`, ``ALGORITHM:HEX``): the boot check's reference
    digest: str | None = None
    size: int = 0
    install_id: str | None = None

    def validate(self) -> None:
        """Check the fields fit the status.

        Raises:
            StateCorrupt: they do not.
        """
        s = self.status
        if s is SlotStatus.EMPTY:
            ok = (self.version, self.header_hash, self.digest, self.install_id) == (None,) * 4 and self.size == 0
        else:
            ok = (self.version is not None and _VERSION_RE.match(self.version) is not None
                  and self.header_hash is not None and self.header_hash.startswith("0x")
                  and _HEX64.match(self.header_hash[2:]) is not None
                  and 0 < self.size <= MAX_IMAGE_SIZE)
            if s is SlotStatus.WRITING:
                ok = ok and self.digest is None and bool(self.install_id)
            else:
                ok = ok and slot_digest.is_digest(self.digest) and self.install_id is None
        if not ok:
            raise StateCorrupt(f"slot fields do not fit status {s.value}: {self}")

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status.value, "version": self.version, "header_hash": self.header_hash,
                "digest": self.digest, "size": self.size, "install_id": self.install_id}

    @classmethod
    def from_json(cls, obj: Any) -> SlotInfo:
        o = _obj(obj, "slot")
        try:
            status = SlotStatus(str(o.get("status")))
        except ValueError as exc:
            raise StateCorrupt(f"unknown slot status {o.get('status')!r}") from exc
        info = cls(status=status, version=_opt_str(o, "version"), header_hash=_opt_str(o, "header_hash"),
                   digest=_slot_digest(o), size=_int(o, "size"), install_id=_opt_str(o, "install_id"))
        info.validate()
        return info


def _slot_digest(o: Mapping[str, Any]) -> str | None:
    """A slot's digest: ``digest``, or the bare SHA-256 that states written before slot digests kept."""
    if "digest" in o:
        return _opt_str(o, "digest")
    legacy = _opt_str(o, "sha256")
    return None if legacy is None else slot_digest.make("sha256", legacy)


@dataclass(frozen=True)
class ComponentState:
    """The boot and install state of one component (one X.1368 firmware consumer)."""

    name: str
    slots: tuple[SlotInfo, SlotInfo] = (SlotInfo(), SlotInfo())
    active: Slot | None = None
    attempts: int = 0
    counter: str = "0.0.0"
    safe_mode: bool = False
    last_result: Result | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    # -- access ---------------------------------------------------------------------------

    def slot(self, slot: Slot) -> SlotInfo:
        return self.slots[SLOTS.index(slot)]

    def with_slot(self, slot: Slot, info: SlotInfo) -> ComponentState:
        slots = list(self.slots)
        slots[SLOTS.index(slot)] = info
        return replace(self, slots=(slots[0], slots[1]))

    def find(self, *statuses: SlotStatus) -> Slot | None:
        """The first slot (a before b) whose status is one of ``statuses``."""
        for s in SLOTS:
            if self.slot(s).status in statuses:
                return s
        return None

    @property
    def confirmed(self) -> Slot | None:
        return self.find(SlotStatus.CONFIRMED)

    @property
    def trial(self) -> Slot | None:
        """The slot awaiting or running its trial (``pending`` or ``trial``)."""
        return self.find(SlotStatus.PENDING, SlotStatus.TRIAL)

    @property
    def writing(self) -> Slot | None:
        return self.find(SlotStatus.WRITING)

    @property
    def mode(self) -> str:
        """``safe``, ``trial`` (running an unconfirmed image), ``normal`` or ``off`` (not booted)."""
        if self.active is not None and self.slot(self.active).status is SlotStatus.TRIAL:
            return "trial"
        if self.safe_mode:
            return "safe"
        return "normal" if self.active is not None else "off"

    # -- checks and codec -------------------------------------------------------------------

    def validate(self) -> None:
        """Check the cross-field invariants.

        Raises:
            StateCorrupt: the state is inconsistent.
        """
        check = _corrupt_unless
        check(isinstance(self.name, str) and _NAME_RE.match(self.name) is not None, f"bad name {self.name!r}")
        for info in self.slots:
            info.validate()
        statuses = [i.status for i in self.slots]
        check(statuses.count(SlotStatus.CONFIRMED) <= 1, "two confirmed slots")
        check(sum(s in (SlotStatus.PENDING, SlotStatus.TRIAL) for s in statuses) <= 1, "two trial slots")
        check(statuses.count(SlotStatus.WRITING) <= 1, "two slots being written")
        check(isinstance(self.attempts, int) and self.attempts >= 0, "bad attempts")
        trial = self.trial
        if trial is not None and self.slot(trial).status is SlotStatus.TRIAL:
            check(self.attempts >= 1 and self.active == trial, "trial slot not active or never attempted")
        else:
            check(self.attempts == 0, "boot attempts without a trial")
        if self.active is not None:
            check(self.active in SLOTS, f"bad active slot {self.active!r}")
            check(self.slot(self.active).status in (SlotStatus.TRIAL, SlotStatus.CONFIRMED, SlotStatus.SUPERSEDED),
                  "active slot holds no bootable image")
        check(not self.safe_mode or self.active is None or self.slot(self.active).status is SlotStatus.TRIAL,
              "safe mode while running a confirmed image")
        check(_VERSION_RE.match(self.counter) is not None, f"bad counter {self.counter!r}")

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = dict(self.extra)
        body.update({
            "name": self.name,
            "slots": {s: self.slot(s).to_json() for s in SLOTS},
            "active": self.active,
            "attempts": self.attempts,
            "counter": self.counter,
            "safe_mode": self.safe_mode,
            "last_result": None if self.last_result is None else self.last_result.to_json(),
        })
        return body

    @classmethod
    def from_json(cls, obj: Any) -> ComponentState:
        """Parse and validate a state body. Unknown keys are kept (``extra``) and written back.

        Raises:
            StateCorrupt: missing or ill-typed fields, or broken invariants.
        """
        o = _obj(obj, "state")
        slots_obj = _obj(o.get("slots"), "slots")
        active = o.get("active")
        _corrupt_unless(active is None or active in SLOTS, f"bad active slot {active!r}")
        known = {"name", "slots", "active", "attempts", "counter", "safe_mode", "last_result"}
        st = cls(
            name=_str(o, "name"),
            slots=(SlotInfo.from_json(slots_obj.get("a")), SlotInfo.from_json(slots_obj.get("b"))),
            active=cast("Slot | None", active),
            attempts=_int(o, "attempts"),
            counter=_str(o, "counter"),
            safe_mode=_bool(o, "safe_mode"),
            last_result=None if o.get("last_result") is None else Result.from_json(o["last_result"]),
            extra={k: v for k, v in o.items() if k not in known},
        )
        st.validate()
        return st


def fresh_state(name: str) -> ComponentState:
    """A component with no image at all (boots into safe mode until ``recover``)."""
    return ComponentState(name=check_component_name(name))


def factory_state(name: str, *, version: str, header_hash: bytes | str, digest: bytes | str,
                  size: int, verified: bool = True) -> ComponentState:
    """A component whose slot ``a`` holds a confirmed factory image; the counter is its version.
    ``digest``: its slot digest (:func:`.slot_digest.normalize`: a bare one is a SHA-256).

    ``verified`` False: an image placed without ledger evidence; the counter stays ``0.0.0`` and
    the state's ``unverified`` entry names the slot and its hash (:func:`unverified_slot`).

    Raises:
        BadInstallRequest: bad name, version, hash or size.
    """
    pack_version(version)
    _check_size(size)
    ref = slot_digest.normalize(digest)
    info = SlotInfo(SlotStatus.CONFIRMED, version, normalize_header_hash(header_hash), ref, size)
    if not verified:
        return ComponentState(name=check_component_name(name), slots=(info, SlotInfo()),
                              extra={UNVERIFIED_KEY: {"slot": "a", "digest": ref}})
    return ComponentState(name=check_component_name(name), slots=(info, SlotInfo()), counter=version)


def unverified_slot(state: ComponentState) -> Slot | None:
    """The confirmed slot when it holds the unverified factory image (same slot, same hash), else None."""
    mark, c = state.extra.get(UNVERIFIED_KEY), state.confirmed
    if not isinstance(mark, dict) or c is None:
        return None
    marked = mark.get("digest", mark.get("sha256"))  # "sha256": a bare SHA-256, as states before slot digests
    try:
        ref = slot_digest.normalize(marked) if isinstance(marked, str) else None
    except BadInstallRequest:
        return None
    return c if mark.get("slot") == c and ref is not None and ref == state.slot(c).digest else None


# ----------------------------------------------------------------------------- install transitions


def install_target(state: ComponentState) -> Slot:
    """The slot an install may write: never the confirmed slot, never the running one.

    Preference: a slot already being written, then a pending (never booted) trial image, then an
    empty, bad, or superseded slot; ``a`` before ``b`` on ties.
    """
    protected = {s for s in (state.confirmed, state.active) if s is not None}
    order = (SlotStatus.WRITING, SlotStatus.PENDING, SlotStatus.EMPTY, SlotStatus.BAD, SlotStatus.SUPERSEDED)
    candidates = [s for s in SLOTS if s not in protected]
    if not candidates:  # pragma: no cover - validate() forbids two protected slots
        raise TrialInProgress("no slot may be written")
    return min(candidates, key=lambda s: (order.index(state.slot(s).status)
                                         if state.slot(s).status in order else len(order), s))


def plan_install(state: ComponentState, *, version: str, header_hash: bytes | str, size: int,
                 install_id: str, recover: bool = False) -> tuple[Slot, ComponentState]:
    """Decide whether an install may start and where; return the slot and the state marking it ``writing``.

    A normal install is refused in safe mode (only ``recover`` is, C11.1.b), while an image runs
    on trial, and below the anti-rollback counter (R10.d.i). ``recover`` is accepted only in safe
    mode and obeys the counter too (a manual install must not reopen known vulnerabilities).

    Raises:
        SafeModeActive: a normal install in safe mode.
        NotInSafeMode: ``recover`` outside safe mode.
        TrialInProgress: an image is running on trial.
        RollbackRefused: ``version`` is below the counter.
        BadInstallRequest: bad version, hash, size or install id.
    """
    packed = pack_version(version)
    hh = normalize_header_hash(header_hash)
    _check_size(size)
    if not install_id or not isinstance(install_id, str):
        raise BadInstallRequest("empty install id")
    if recover and not state.safe_mode:
        raise NotInSafeMode(f"{state.name}: not in safe mode; use a normal install")
    if not recover and state.safe_mode:
        raise SafeModeActive(f"{state.name}: in safe mode; only a manual recover install is accepted")
    trial = state.trial
    if trial is not None and state.slot(trial).status is SlotStatus.TRIAL:
        raise TrialInProgress(f"{state.name}: version {state.slot(trial).version} is on trial in slot {trial};"
                              " confirm or revert it first")
    if packed < pack_version(state.counter):
        raise RollbackRefused(f"{state.name}: version {version} is below the anti-rollback counter {state.counter}")
    slot = install_target(state)
    info = SlotInfo(SlotStatus.WRITING, version, hh, None, size, install_id)
    return slot, replace(state.with_slot(slot, info), attempts=0)


def complete_install(state: ComponentState, *, slot: Slot, install_id: str, digest: bytes | str,
                     now: float) -> ComponentState:
    """Mark a fully written, hash-checked slot ``pending`` (it boots on trial next).

    Raises:
        InstallNotActive: the slot is not being written by this install.
        BadInstallRequest: malformed digest.
    """
    info = state.slot(slot)
    if info.status is not SlotStatus.WRITING or info.install_id != install_id:
        raise InstallNotActive(f"{state.name}: slot {slot} is not being written by install {install_id}")
    done = replace(info, status=SlotStatus.PENDING, digest=slot_digest.normalize(digest), install_id=None)
    op = "recover" if state.safe_mode else "install"
    return with_result(state.with_slot(slot, done), Result(op, True, None, f"slot {slot} ready for trial",
                                                           info.version, now))


def abandon_install(state: ComponentState, *, slot: Slot, code: str, message: str, now: float) -> ComponentState:
    """Drop an install: its slot becomes ``empty`` and the reason is recorded. Idempotent."""
    info = state.slot(slot)
    if info.status is not SlotStatus.WRITING:
        return state
    op = "recover" if state.safe_mode else "install"
    return with_result(state.with_slot(slot, SlotInfo()), Result(op, False, code, message, info.version, now))


def with_result(state: ComponentState, result: Result) -> ComponentState:
    """The state with ``result`` as its last result."""
    return replace(state, last_result=result)


@dataclass(frozen=True)
class JournalEntry:
    """The install journal of one component: which install writes which slot, and how far is durable.

    ``durable`` bytes of the slot were fsynced before this entry was written, so a restarted
    install may resume from there.
    """

    component: str
    install_id: str
    slot: Slot
    version: str
    header_hash: str
    size: int
    durable: int = 0
    recover: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"component": self.component, "install_id": self.install_id, "slot": self.slot,
                "version": self.version, "header_hash": self.header_hash, "size": self.size,
                "durable": self.durable, "recover": self.recover}

    @classmethod
    def from_json(cls, obj: Any) -> JournalEntry:
        """Parse a journal body.

        Raises:
            StateCorrupt: missing or ill-typed fields.
        """
        o = _obj(obj, "journal")
        slot = o.get("slot")
        _corrupt_unless(slot in SLOTS, f"journal: bad slot {slot!r}")
        entry = cls(component=_str(o, "component"), install_id=_str(o, "install_id"), slot=cast(Slot, slot),
                    version=_str(o, "version"), header_hash=_str(o, "header_hash"), size=_int(o, "size"),
                    durable=_int(o, "durable"), recover=_bool(o, "recover"))
        _corrupt_unless(0 <= entry.durable <= entry.size, "journal: durable offset outside the image")
        return entry

    def matches(self, state: ComponentState) -> bool:
        """True when ``state`` has this install's slot in ``writing`` with the same identity."""
        info = state.slot(self.slot)
        return (state.name == self.component and info.status is SlotStatus.WRITING
                and info.install_id == self.install_id and info.version == self.version
                and info.header_hash == self.header_hash and info.size == self.size)


def reconcile(state: ComponentState, journal: JournalEntry | None, *, now: float) -> tuple[ComponentState, bool]:
    """Bring state and journal into agreement after a restart; return (state, keep the journal).

    An install survives only when both agree on it (same install id, slot, version, hash, size):
    it is then resumable from the journal's durable offset. Anything else is cleaned up: a journal
    without its ``writing`` slot is stale (the install finished, was abandoned, or never got as far
    as marking its slot), and a ``writing`` slot without its journal is abandoned
    (``install_interrupted``). Never touches a slot that is not ``writing``.
    """
    if journal is not None and journal.matches(state):
        return state, True
    w = state.writing
    if w is None:
        return state, False
    return abandon_install(state, slot=w, code="install_interrupted",
                           message=f"install into slot {w} interrupted and abandoned", now=now), False


# ----------------------------------------------------------------------------- argument checks


def _check_size(size: int) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_IMAGE_SIZE:
        raise BadInstallRequest(f"bad image size {size!r}: must be 1..{MAX_IMAGE_SIZE}")

