"""The device's status document (``device status --json``), from an opened device or read unlocked.

:func:`component_status` renders one component's state (with its unfinished install, when its
journal agrees with the state), :func:`assemble_status` the device around them; :func:`read_status`
reads a device folder without locking it (state files are replaced atomically).
:meth:`.device.Device.status` renders the same document from the opened device's cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .device_info import DeviceInfo, load_device_info
from .errors import StateCorrupt
from .state import SLOTS, ComponentState, JournalEntry
from .store import JOURNAL_KIND, Layout, read_envelope, read_state_copies

__all__ = ["assemble_status", "component_status", "read_status"]


def component_status(st: ComponentState, generation: int, valid: tuple[bool, bool],
                     journal: JournalEntry | None, max_attempts: int) -> dict[str, Any]:
    active = st.slot(st.active) if st.active is not None else None
    t = st.trial
    trial = None if t is None else {"slot": t, "version": st.slot(t).version, "status": st.slot(t).status.value,
                                    "attempts": st.attempts, "max_attempts": max_attempts}
    install = None if journal is None else {"slot": journal.slot, "version": journal.version,
                                            "header_hash": journal.header_hash, "size": journal.size,
                                            "durable": journal.durable, "recover": journal.recover}
    from .factory import wire_state  # (factory imports .device, which imports this module)

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


def assemble_status(info: DeviceInfo, comps: list[dict[str, Any]]) -> dict[str, Any]:
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
        comps.append(component_status(st, generation, copies.valid, journal, info.max_boot_attempts))
    return assemble_status(info, comps)

