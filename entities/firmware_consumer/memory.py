"""The device agent's own memory, ``DIR/agent/agent.json`` (written atomically): the firmware
servers it registered with, the vendor of each component it installed (the heartbeat names the
vendor of every component), the command log (accepted, resumed, refused, done, reported: the last
200 events), the last refused command, and the command results not yet taken by their tracker.
``DIR/agent/commands.json`` holds the accepted command ids
(:class:`entities.protocol.commands.CommandLog`).

A missing, unreadable or malformed file reads as empty memory: the agent then registers with its
servers again and has no results to post; nothing it holds is a trust decision.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import DeviceStorageError
from .store import atomic_write, make_folder, read_bounded

__all__ = ["COMMAND_LOG_FILE", "STATE_FILE", "AgentMemory", "done_ids", "pending_results"]

#: the agent's own memory in the device folder
STATE_FILE = Path("agent") / "agent.json"
#: the ids of the commands the device accepted (entities.protocol.commands.CommandLog)
COMMAND_LOG_FILE = Path("agent") / "commands.json"
_LOG_KEEP = 200
PENDING_KEEP = 32


class AgentMemory:
    """``root``'s agent memory; ``clock`` stamps the command log's events."""

    def __init__(self, root: Path, clock: Callable[[], float]) -> None:
        self.root, self.clock = Path(root), clock

    def read(self) -> dict[str, Any]:
        """The memory as a dict (empty when the file is missing, unreadable or not an object)."""
        try:
            data = read_bounded(self.root / STATE_FILE)
            obj = json.loads(data) if data else {}
        except (ValueError, DeviceStorageError):
            return {}
        return obj if isinstance(obj, dict) else {}

    def save(self, state: Mapping[str, Any]) -> None:
        """Replace the memory with ``state`` atomically.

        Raises:
            DeviceStorageError: the device folder cannot be written.
        """
        path = self.root / STATE_FILE
        make_folder(path.parent)  # durable: its entry in the device folder synced
        atomic_write(path, (json.dumps(dict(state), sort_keys=True, indent=1) + "\n").encode())

    def log_command(self, state: dict[str, Any], event: str, command_id: str | None, tracker: str, *,
                    code: str | None = None, message: str | None = None, now: float | None = None,
                    resent: bool = False) -> None:
        """One event of the command log in ``state``: accepted, resumed (accepted before a stop,
        not done), refused (``resent``: a command already acted on, sent again), done, reported,
        report_refused, report_failed."""
        log = state.get("command_log")
        entries = log if isinstance(log, list) else []
        entries.append({"at": self.clock() if now is None else now, "event": event, "command_id": command_id,
                        "tracker": tracker, "code": code, "message": message, **({"resent": True} if resent else {})})
        state["command_log"] = entries[-_LOG_KEEP:]


def done_ids(state: Mapping[str, Any]) -> set[str]:
    """The ids of the commands the agent acted on (their results exist)."""
    log = state.get("command_log")
    return {str(e.get("command_id")) for e in (log if isinstance(log, list) else [])
            if isinstance(e, dict) and e.get("event") == "done"}


def pending_results(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The command results not yet taken by their tracker, well-formed ones only."""
    items = state.get("pending_results")
    return [p for p in (items if isinstance(items, list) else [])
            if isinstance(p, dict) and isinstance(p.get("tracker"), str) and isinstance(p.get("command_id"), str)
            and isinstance(p.get("device_id"), str) and isinstance(p.get("results"), list)]
