"""The device heartbeat's component entry: the wire format device and tracker share (docs/MODULES.md 3a). Pure.

A device reports every provisioned component bound to a product line (keyed by product)::

    {"vendor": str, "version": "X.Y.Z" | null, "slot": "a" | "b" | null,
     "state": "empty" | "unverified" | "trial" | "confirmed",    # absent: "confirmed" (older devices)
     "trial": "X.Y.Z" | null}                                      # the version on trial, if any

``state``: ``empty``: no firmware confirmed (``version`` null); ``unverified``: a factory image
placed without ledger evidence (``version`` is what the factory claimed, never trusted);
``trial``: a new image awaits or runs its trial (``version`` is the confirmed one, or null;
``trial`` the one on trial); ``confirmed``: runs a verified, confirmed image.

Only ``confirmed`` can be up to date. The tracker proposes the newest compatible release to an
``empty`` or ``unverified`` component (an install from nothing) and nothing to a component on
trial (it is being updated); all three count as not up to date. A heartbeat from an older
device (string versions, no ``state``) reads as ``confirmed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "COMPONENT_STATES",
    "FIRMWARE_STATUSES",
    "STATE_CONFIRMED",
    "STATE_EMPTY",
    "STATE_TRIAL",
    "STATE_UNVERIFIED",
    "component_entry",
    "entry_problem",
    "firmware_status",
    "state_of",
]

STATE_EMPTY: Final = "empty"
STATE_UNVERIFIED: Final = "unverified"
STATE_TRIAL: Final = "trial"
STATE_CONFIRMED: Final = "confirmed"
#: every component state a heartbeat may report
COMPONENT_STATES: Final = (STATE_EMPTY, STATE_UNVERIFIED, STATE_TRIAL, STATE_CONFIRMED)


def component_entry(vendor: str, version: str | None, slot: str | None, state: str,
                    trial: str | None = None) -> dict[str, Any]:
    """One component of a heartbeat (``state`` and ``trial`` left out when they say nothing new,
    so a confirmed component reads exactly as an older device's)."""
    out: dict[str, Any] = {"vendor": vendor, "version": version, "slot": slot}
    if state != STATE_CONFIRMED:
        out["state"] = state
    if trial is not None:
        out["trial"] = trial
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


#: a device's fleet statuses besides the tracker's verdict, from its components' states
FIRMWARE_STATUSES: Final = ("no-firmware", "unverified", "in-trial")
_STATUS_OF_STATE: Final = {STATE_EMPTY: "no-firmware", STATE_UNVERIFIED: "unverified", STATE_TRIAL: "in-trial"}


def firmware_status(components: Mapping[str, Any]) -> list[str]:
    """``no-firmware``, ``unverified``, ``in-trial``: the states of a device's components (stored
    or received entries, by product) that are not confirmed; empty when all are."""
    found = {_STATUS_OF_STATE[s] for c in components.values() if (s := state_of(c)) in _STATUS_OF_STATE}
    return [s for s in FIRMWARE_STATUSES if s in found]
