"""The agent's side of proving a release's standing again (R10.a.i, R10.d.ii; :mod:`.status`):
what a start-up and a pass do with the images left staged or on trial.

- At start-up (a power-on) each image on trial boots once more; its standing is proven again
  before a confirm (:func:`boot_trials`). A staged image (downloaded, never booted) is not booted
  then: it waits for a pass.
- In a pass, the trial of a device without a health check is confirmed once its standing is
  proven again, reverted when it changed (:func:`confirm_trials`).
- In a pass, an image staged at an earlier pass (its standing unproven then) is taken up again
  (:func:`staged_upgrades`): its release is proven at the pass's block and the image booted with
  no new download (:meth:`.updater.Updater.boot_staged`). Its tracker sees the device in trial
  and does not plan the release again, so the device resumes it itself, unless the tracker's
  rollouts hold the release back.
- A staged image whose release's standing changed (``revoked``, ``not_newest``...) is dropped,
  never booted (:func:`drop_staged`), so it does not hold the component's next install back.

Pure device-side logic over an :class:`.updater.Updater` and a source of fresh evidence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .device import BootOutcome
from .errors import UpdateRefused
from .state import SlotStatus
from .status import STANDING_CODES, FreshEvidence
from .updater import Updater

__all__ = ["boot_trials", "confirm_trials", "drop_staged", "staged_upgrades"]


def boot_trials(up: Updater, fresh: FreshEvidence,
                on_boot: Callable[[BootOutcome], None] | None = None) -> list[BootOutcome]:
    """A power-on of every component whose image runs its trial: one more trial boot each, its
    standing proven again from ``fresh`` before a confirm (:meth:`.updater.Updater.boot_trial`)."""
    out: list[BootOutcome] = []
    for name in up.device.components:
        st = up.device.state(name)
        if st.trial is not None and st.slot(st.trial).status is SlotStatus.TRIAL:
            outcome = up.boot_trial(name, fresh)
            out.append(outcome)
            if on_boot is not None:
                on_boot(outcome)
    return out


def confirm_trials(up: Updater, fresh: FreshEvidence, confirmed: list[str],
                   reverted: list[dict[str, Any]]) -> list[str]:
    """Confirm each image running on trial (a device without a health check) once its standing is
    proven again from ``fresh``: a changed standing reverts it (``reverted`` gets component,
    version, code, message), no verdict leaves it on trial. Returns the components whose trial
    ended (the confirmed ones also appended to ``confirmed``)."""
    dev = up.device
    if dev.health_check is not None:
        return []
    done: list[str] = []
    for name in dev.components:
        st = dev.state(name)
        t = st.trial
        if t is not None and st.active == t and st.slot(t).status is SlotStatus.TRIAL:
            standing = up.confirm_trial(name, fresh)
            if standing.ok:
                confirmed.append(name)
            elif standing.final:
                reverted.append({"component": name, "version": st.slot(t).version,
                                 "code": standing.code, "message": standing.message[:256]})
            if standing.ok or standing.final:
                done.append(name)
    return done


def staged_upgrades(up: Updater, tried: Iterable[str], held: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The releases of the images staged on the device (``pending``, never booted) to take up in
    this pass: neither ``tried`` already (header hashes) nor held back by the rollouts (``held``:
    the plan's held upgrades). Each as an upgrade of the plan's shape (its header hash)."""
    skip = {h.lower() for h in tried} | {str(h.get("header_hash", "")).lower() for h in held}
    out: list[dict[str, Any]] = []
    for name in up.device.components:
        st = up.device.state(name)
        t = st.trial
        if t is None or st.slot(t).status is not SlotStatus.PENDING:
            continue
        hh = st.slot(t).header_hash
        if hh is not None and hh.lower() not in skip:
            out.append({"header_hash": hh.lower()})
    return out


def drop_staged(up: Updater, component: str | None, header_hash: str, exc: UpdateRefused) -> bool:
    """Drop the image of release ``header_hash`` staged for ``component`` when ``exc`` says the
    release's standing changed (a code of :data:`.status.STANDING_CODES`): its slot marked bad,
    never booted, the running slot untouched. Returns whether one was dropped."""
    if component is None or exc.code not in STANDING_CODES:
        return False
    if up.staged(component, bytes.fromhex(header_hash.removeprefix("0x"))) is None:
        return False
    up.device.revert(component, str(exc.code), f"{exc} (the staged image is dropped, never booted)"[:500])
    return True
