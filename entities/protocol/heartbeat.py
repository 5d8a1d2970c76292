"""The device heartbeat's component entry: the wire format device and tracker share (docs/MODULES.md 3a). Pure.

A device reports every provisioned component bound to a product line (keyed by product)::

    {"vendor": str, "version": "X.Y.Z" | null, "slot": "a" | "b" | null,
     "state": "empty" | "unverified" | "trial" | "confirmed",    # absent: "confirmed" (older devices)
     "trial": "X.Y.Z" | null,                                      # the version on trial, if any
     "needs": "safe_mode"}                                         # absent: the device states no need

``state``: ``empty``: no firmware confirmed (``version`` null); ``unverified``: a factory image
placed without ledger evidence (``version`` is what the factory claimed, never trusted);
``trial``: a new image awaits or runs its trial (``version`` is the confirmed one, or null;
``trial`` the one on trial); ``confirmed``: runs a verified, confirmed image.

Only ``confirmed`` can be up to date. The tracker proposes the newest compatible release to an
``empty`` or ``unverified`` component (an install from nothing) and nothing to a component on
trial (it is being updated); all three count as not up to date. A heartbeat from an older
device (string versions, no ``state``) reads as ``confirmed``.

``needs`` is the device's own statement that a component needs an update (X.1368 C11.1.a.iv):
``safe_mode``: no slot boots, the component runs in safe mode and needs a recovery install (its
``state`` is ``empty``, or ``trial`` while a recovery install awaits its trial boot). The tracker
plans the newest compatible release for it, as for ``empty``, and lists the device ``safe-mode``.

Add-on boards (Appendix II): the heartbeat's ``addons`` map each add-on board the device carries
(a hardware class id of its own on the ledger) to the products whose components run on it
(:func:`addons_entry`); ``{}`` for a device without boards, as older devices send. The tracker
plans those components under the board's class (its releases and the administrator's policy for
it), the device checks a release against the class of the board the component runs on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = [
    "COMPONENT_STATES",
    "FIRMWARE_STATUSES",
    "NEEDS",
    "NEEDS_SAFE_MODE",
    "STATE_CONFIRMED",
    "STATE_EMPTY",
    "STATE_TRIAL",
    "STATE_UNVERIFIED",
    "addons_entry",
    "component_entry",
    "entry_problem",
    "firmware_status",
    "needs_of",
    "state_of",
]

STATE_EMPTY: Final = "empty"
STATE_UNVERIFIED: Final = "unverified"
STATE_TRIAL: Final = "trial"
STATE_CONFIRMED: Final = "confirmed"
#: every component state a heartbeat may report
COMPONENT_STATES: Final = (STATE_EMPTY, STATE_UNVERIFIED, STATE_TRIAL, STATE_CONFIRMED)

NEEDS_SAFE_MODE: Final = "safe_mode"
#: every statement of need a heartbeat may carry for a component (C11.1.a.iv)
NEEDS: Final = (NEEDS_SAFE_MODE,)


def component_entry(vendor: str, version: str | None, slot: str | None, state: str,
                    trial: str | None = None, needs: str | None = None) -> dict[str, Any]:
    """One component of a heartbeat (``state``, ``trial`` and ``needs`` left out when they say
    nothing new, so a confirmed component reads exactly as an older device's)."""
    out: dict[str, Any] = {"vendor": vendor, "version": version, "slot": slot}
    if state != STATE_CONFIRMED:
        out["state"] = state
    if trial is not None:
        out["trial"] = trial
    if needs is not None:
        out["needs"] = needs
    return out


def needs_of(entry: Any) -> str | None:
    """The device's statement of need of a stored or received component entry (None when absent)."""
    needs = entry.get("needs") if isinstance(entry, dict) else getattr(entry, "needs", None)
    return str(needs) if needs else None


def addons_entry(boards: Mapping[str, str], reported: Iterable[str]) -> dict[str, list[str]]:
    """The heartbeat's ``addons``: each add-on board to the products of ``reported`` running on it,
    from ``boards`` (product -> board class id). Every declared board with a reported component
    is listed; a board none of whose components is reported is left out (the tracker requires a
    board's products to be among the heartbeat's components)."""
    reported = set(reported)
    out: dict[str, list[str]] = {}
    for product, board in sorted(boards.items()):
        if product in reported:
            out.setdefault(board, []).append(product)
    return out


def state_of(entry: Any) -> str:
    """The state of a stored or received component entry (``confirmed`` when absent)."""
    state = entry.get("state") if isinstance(entry, dict) else getattr(entry, "state", None)
    return str(state) if state else STATE_CONFIRMED


def entry_problem(version: str | None, state: str) -> str | None:
    """Why a (version, state) pair is inconsistent, or None: ``empty`` has no version,
    ``confirmed`` and ``unverified`` have one, ``trial`` may have either."""
    if state not in COMPONENT_STATES:
        return f"state must be one of {', '.join(COMPONENT_STATES)}, not {state!r}"
    if state == STATE_EMPTY and version is not None:
        return "an empty component has no version"
    if state in (STATE_CONFIRMED, STATE_UNVERIFIED) and version is None:
        return f"a {state} component needs its version"
    return None


#: a device's fleet statuses besides the tracker's verdict, from its components' states and needs
FIRMWARE_STATUSES: Final = ("safe-mode", "no-firmware", "unverified", "in-trial")
_STATUS_OF_STATE: Final = {STATE_EMPTY: "no-firmware", STATE_UNVERIFIED: "unverified", STATE_TRIAL: "in-trial"}


def _status_of(entry: Any) -> str | None:
    if needs_of(entry) == NEEDS_SAFE_MODE:
        return "safe-mode"  # says more than the empty (or trial) state it comes with
    return _STATUS_OF_STATE.get(state_of(entry))


def firmware_status(components: Mapping[str, Any]) -> list[str]:
    """``safe-mode`` (a component says it is in safe mode), ``no-firmware``, ``unverified``,
    ``in-trial``: the states of a device's components (stored or received entries, by product)
    that are not confirmed; empty when all are."""
    found = {s for c in components.values() if (s := _status_of(c)) is not None}
    return [s for s in FIRMWARE_STATUSES if s in found]
