"""Boot decisions: which slot runs, trial accounting, confirm, revert, safe mode. Pure.

The device's boot (:meth:`.device.Device.boot_component`) asks :func:`plan_boot` what to do,
with a :class:`SlotChecks` that hashes a slot only when the plan needs to know whether it is
intact (a trial that boots leaves its fallback unhashed until a revert needs it, so a trial
image cannot damage its fallback before it is checked), persists the returned state *before*
running anything (so a power cut during a trial still counts the attempt), runs the health
check of a trial, and applies :func:`confirm` or :func:`revert`. The rules:

1. A slot awaiting or on trial boots on trial with ``attempts + 1``, unless its bytes no longer
   hash to the recorded value (``image_corrupt``) or it already used ``max_attempts`` trial boots
   (``too_many_boot_attempts``): then it is reverted, marked ``bad`` (R10.c.ii). A staged image
   (``pending``, never booted) is left staged when ``staged=False`` (a power-on: its release's
   standing is proven again before its first trial boot, R10.a.i), and rule 2 applies.
2. Otherwise the confirmed slot boots, if intact and not below the anti-rollback counter; then a
   superseded (formerly confirmed) slot under the same conditions. A confirmed slot whose bytes do
   not match is marked ``bad`` and never booted.
3. If nothing boots, the component enters safe mode (C11.1.b): no slot runs and only a manual
   ``recover`` install is accepted (:func:`.state.plan_install`).

The anti-rollback counter rises only in :func:`confirm` (C11.1.a.i: the previous update is
known to have succeeded only once its trial passed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from .errors import NotInTrial
from .state import SLOTS, ComponentState, Result, Slot, SlotStatus, pack_version, with_result

__all__ = [
    "CODE_HEALTH_ERROR",
    "CODE_HEALTH_FAILED",
    "CODE_HEALTH_TIMEOUT",
    "CODE_IMAGE_CORRUPT",
    "CODE_NO_BOOTABLE_SLOT",
    "CODE_STATE_CORRUPT",
    "CODE_TOO_MANY_ATTEMPTS",
    "BootKind",
    "BootOutcome",
    "BootPlan",
    "SlotChecks",
    "confirm",
    "plan_boot",
    "revert",
    "slots_to_check",
]

# stable result codes of boot decisions (reported like the error classes' codes)
CODE_IMAGE_CORRUPT = "image_corrupt"
CODE_TOO_MANY_ATTEMPTS = "too_many_boot_attempts"
CODE_HEALTH_FAILED = "health_check_failed"
CODE_HEALTH_ERROR = "health_check_error"
CODE_HEALTH_TIMEOUT = "health_check_timeout"
CODE_NO_BOOTABLE_SLOT = "no_bootable_slot"
CODE_STATE_CORRUPT = "state_corrupt"


class BootKind(StrEnum):
    """What a boot runs: a trial image, a confirmed image, or nothing (safe mode)."""

    TRIAL = "trial"
    NORMAL = "normal"
    SAFE = "safe"


@dataclass(frozen=True)
class BootPlan:
    """The decision of one boot: what runs, and the state to persist before running it."""

    kind: BootKind
    slot: Slot | None
    state: ComponentState
    events: tuple[str, ...] = ()


def _bootable_fallbacks(state: ComponentState) -> list[Slot]:
    """Confirmed slot first, then superseded ones, each only if not below the counter."""
    counter = pack_version(state.counter)
    order = [s for s in SLOTS if state.slot(s).status is SlotStatus.CONFIRMED]
    order += [s for s in SLOTS if state.slot(s).status is SlotStatus.SUPERSEDED]
    return [s for s in order if pack_version(state.slot(s).version or "0.0.0") >= counter]


class SlotChecks(Mapping[Slot, bool]):
    """``slot -> intact`` for ``slots``, each answered by ``check(slot)`` on first use, then kept.

    The mapping :func:`plan_boot` reads: hashing a slot costs a pass over its bytes, so only the
    slots a decision reaches are hashed, and no later than that decision needs them.
    """

    def __init__(self, check: Callable[[Slot], bool], slots: tuple[Slot, ...]) -> None:
        self._check = check
        self._slots = slots
        self._known: dict[Slot, bool] = {}

    def __getitem__(self, slot: Slot) -> bool:
        if slot not in self._slots:
            raise KeyError(slot)
        if slot not in self._known:
            self._known[slot] = self._check(slot)
        return self._known[slot]

    def __iter__(self) -> Iterator[Slot]:
        return iter(self._slots)

    def __len__(self) -> int:
        return len(self._slots)


def slots_to_check(state: ComponentState) -> tuple[Slot, ...]:
    """The slots whose bytes :func:`plan_boot` may need hashed (trial and bootable fallbacks)."""
    t = state.trial
    wanted = ([t] if t is not None else []) + _bootable_fallbacks(state)
    return tuple(s for s in SLOTS if s in wanted)


def plan_boot(state: ComponentState, intact: Mapping[Slot, bool], *, max_attempts: int, now: float,
              staged: bool = True) -> BootPlan:
    """Decide the next boot of a component (rules in the module docstring; ``staged``: whether a
    staged image may start its trial now).

    ``intact[slot]`` says whether the slot's bytes hash to the state's record; a slot missing
    from the mapping counts as not intact (it is never booted unchecked).
    """
    s = state
    events: list[str] = []
    t = s.trial
    if t is not None and (staged or s.slot(t).status is not SlotStatus.PENDING):
        info = s.slot(t)
        if not intact.get(t, False):
            s = revert(s, code=CODE_IMAGE_CORRUPT, now=now,
                       message=f"slot {t} no longer matches its recorded hash; not booted")
            events.append(CODE_IMAGE_CORRUPT)
        elif s.attempts >= max_attempts:
            s = revert(s, code=CODE_TOO_MANY_ATTEMPTS, now=now,
                       message=f"version {info.version} used {s.attempts} of {max_attempts} trial boots")
            events.append(CODE_TOO_MANY_ATTEMPTS)
        else:
            trial_info = replace(info, status=SlotStatus.TRIAL)
            return BootPlan(BootKind.TRIAL, t, replace(s.with_slot(t, trial_info), attempts=s.attempts + 1,
                                                       active=t), tuple(events))
    for slot in _bootable_fallbacks(s):
        info = s.slot(slot)
        if intact.get(slot, False):
            return BootPlan(BootKind.NORMAL, slot, replace(s, active=slot, safe_mode=False), tuple(events))
        s = with_result(s.with_slot(slot, replace(info, status=SlotStatus.BAD)),
                        Result("boot", False, CODE_IMAGE_CORRUPT,
                               f"slot {slot} (version {info.version}) no longer matches its recorded hash",
                               info.version, now))
        if s.active == slot:
            s = replace(s, active=None)
        events.append(CODE_IMAGE_CORRUPT)
    if not s.safe_mode:
        why = ", ".join(events) if events else "no image installed"
        s = with_result(s, Result("boot", False, CODE_NO_BOOTABLE_SLOT, f"no slot boots ({why}); safe mode",
                                  None, now))
    events.append(CODE_NO_BOOTABLE_SLOT)
    return BootPlan(BootKind.SAFE, None, replace(s, active=None, safe_mode=True), tuple(events))


def confirm(state: ComponentState, *, now: float) -> ComponentState:
    """The running trial image passed: it becomes the confirmed image and the counter rises to it.

    The previously confirmed slot becomes ``superseded``; safe mode ends.

    Raises:
        NotInTrial: no image is running on trial (a ``pending`` image must boot first).
    """
    t = state.trial
    if t is None or state.slot(t).status is not SlotStatus.TRIAL:
        raise NotInTrial(f"{state.name}: no image is running on trial")
    s = state
    for other in SLOTS:
        if other != t and s.slot(other).status is SlotStatus.CONFIRMED:
            s = s.with_slot(other, replace(s.slot(other), status=SlotStatus.SUPERSEDED))
    info = s.slot(t)
    version = info.version or "0.0.0"
    counter = version if pack_version(version) > pack_version(s.counter) else s.counter
    s = replace(s.with_slot(t, replace(info, status=SlotStatus.CONFIRMED)), attempts=0, active=t,
                counter=counter, safe_mode=False)
    return with_result(s, Result("confirm", True, None, f"version {version} confirmed in slot {t}", version, now))


def revert(state: ComponentState, *, code: str, message: str, now: float) -> ComponentState:
    """Give up the trial image: its slot becomes ``bad`` and stops being active (R10.c.ii).

    The caller then plans a boot again, which picks the previous confirmed slot (or safe mode).

    Raises:
        NotInTrial: no image is awaiting or running its trial.
    """
    t = state.trial
    if t is None:
        raise NotInTrial(f"{state.name}: no image is on trial")
    info = state.slot(t)
    s = replace(state.with_slot(t, replace(info, status=SlotStatus.BAD)), attempts=0,
                active=None if state.active == t else state.active)
    return with_result(s, Result("revert", False, code, message, info.version, now))


# ----------------------------------------------------------------------------- a boot's outcome


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
    digest: str | None
    attempt: int = 0
    confirmed: bool = False
    reverted: bool = False
    events: tuple[str, ...] = ()
    safe_image_ok: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return {"component": self.component, "kind": self.kind.value, "slot": self.slot, "version": self.version,
                "digest": self.digest, "attempt": self.attempt, "confirmed": self.confirmed,
                "reverted": self.reverted, "events": list(self.events), "safe_image_ok": self.safe_image_ok}
