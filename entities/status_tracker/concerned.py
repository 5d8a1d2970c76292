"""C11.3.g on the tracker's side: the devices a firmware server says a new release concerns.

A firmware server's T9.b trigger (``POST /v1/triggers``, ``source: server``) may name the devices
the release concerns (``devices``: id, hardware class, last version of the line the device took
from that server). The trigger is signed by the server's key, and the tracker takes the list only
when that key is one of its ``server_keys`` and the release checks out on its own ledger
(:func:`.inventory.judge_trigger`); a refused trigger records nothing here.

The list is an **attention list**, never an order: each entry is stored as "concerned by release
X (reported by server S)" and shown with the device (``/v1/devices``, ``/v1/outdated``, the
dashboard, ``fwledger tracker devices`` / ``outdated``), with its state as the tracker sees it
now (:func:`concerned_state`):

- ``update_needed``: the tracker's own resolver plans the release for the device, so the device
  is enrolled in the release's rollout and commanded as its waves admit (the trigger assesses
  the whole fleet at once, so the rollout covers every concerned device the tracker plans it for);
- ``updated``: the device runs the release's version of the line, or a newer one;
- ``not_planned``: the tracker does not plan the release for it (another class, a dependency,
  the administrator's policy, or it is not on the line at all): nothing is installed, the entry
  only asks for the operator's attention;
- ``unknown_device``: the tracker has no such device.

What a lying server can do with it is therefore bounded: add entries to the operator's list.
The devices still install only what the tracker's resolver plans and what they verify themselves.

Storage: the ``concerned`` table in the inventory's SQLite file (created on open; an inventory
without it gains it), one row per (device, release, server), the newest ``limit`` rows kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ledger_node.record import RecordError, Version

if TYPE_CHECKING:
    from .inventory import ConcernedIn, DeviceRow, Inventory

__all__ = ["STATES", "ConcernedStore", "concerned_state"]

#: what a concerned device's entry says now (see the module docstring)
STATES = ("update_needed", "updated", "not_planned", "unknown_device")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS concerned (
    device_id TEXT NOT NULL,
    header_hash TEXT NOT NULL,
    server TEXT NOT NULL,
    vendor TEXT NOT NULL,
    product TEXT NOT NULL,
    version TEXT NOT NULL,
    hardware TEXT NOT NULL,
    reported_version TEXT NOT NULL,
    trigger_id INTEGER NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (device_id, header_hash, server)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS concerned_by_at ON concerned (at)
"""

_COLS = "device_id, header_hash, server, vendor, product, version, hardware, reported_version, trigger_id, at"


def _version(text: Any) -> Version | None:
    try:
        return Version.parse(str(text)) if text is not None else None
    except (RecordError, ValueError):
        return None


def concerned_state(entry: Mapping[str, Any], device: DeviceRow | None, needed: Iterable[str]) -> str:
    """What a concerned entry says now (pure): ``needed`` are the header hashes the tracker plans
    for the device (its update-needed rows)."""
    if device is None:
        return "unknown_device"
    comp = device.components.get(str(entry["product"]))
    running = _version(comp.get("version")) if comp is not None and comp.get("vendor") == entry["vendor"] else None
    target = _version(entry["version"])
    if running is not None and target is not None and running >= target:
        return "updated"
    if str(entry["header_hash"]).lower() in {h.lower() for h in needed}:
        return "update_needed"
    return "not_planned"


class ConcernedStore:
    """The ``concerned`` table of a tracker's inventory (see the module docstring).

    Raises (constructor):
        IndexCorruption: the inventory is damaged.
    """

    def __init__(self, inventory: Inventory, *, limit: int = 100_000) -> None:
        self.inventory = inventory
        self.limit = limit
        with inventory._tx() as conn:
            for stmt in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                conn.execute(stmt)

    def record(self, at: float, trigger_id: int, server: str, release: Mapping[str, str],
               devices: Sequence[ConcernedIn]) -> int:
        """Store what server ``server`` said (trigger ``trigger_id``) of ``release`` (``header_hash``,
        ``vendor``, ``product``, ``version``: the ledger's, not the server's word); an entry the
        same server made before for the same device and release is replaced. Returns the entries
        stored. The oldest rows beyond ``limit`` go in the same transaction."""
        rows = [(d.device_id, release["header_hash"].lower(), server, release["vendor"], release["product"],
                 release["version"], d.hardware, d.version, trigger_id, at) for d in devices]
        with self.inventory._tx() as conn:
            conn.executemany(f"INSERT OR REPLACE INTO concerned ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                             rows)
            over = conn.execute("SELECT COUNT(*) FROM concerned").fetchone()[0] - self.limit
            if over > 0:
                conn.execute("DELETE FROM concerned WHERE (device_id, header_hash, server) IN (SELECT device_id, "
                             "header_hash, server FROM concerned ORDER BY at, trigger_id LIMIT ?)", (over,))
        return len(rows)

    def entries(self, *, device_id: str | None = None, header_hash: str | None = None) -> list[dict[str, Any]]:
        """Stored entries (newest first), of one device and/or one release, each with its ``state`` now."""
        where, args = [], []
        if device_id is not None:
            where.append("device_id = ?")
            args.append(device_id)
        if header_hash is not None:
            where.append("header_hash = ?")
            args.append(header_hash.lower())
        sql = f"SELECT {_COLS} FROM concerned" + (" WHERE " + " AND ".join(where) if where else "")  # noqa: S608
        with self.inventory._read() as conn:
            rows = conn.execute(sql + " ORDER BY at DESC, device_id", args).fetchall()
        keys = [c.strip() for c in _COLS.split(",")]
        out = [dict(zip(keys, r, strict=True)) for r in rows]
        if not out:
            return out
        needs: dict[str, list[str]] = {}
        for n in self.inventory.needs(device_id):
            needs.setdefault(n["device_id"], []).append(n["header_hash"])
        devices: dict[str, DeviceRow | None] = {}
        for e in out:
            dev = e["device_id"]
            if dev not in devices:
                devices[dev] = self.inventory.device(dev)
            e["state"] = concerned_state(e, devices[dev], needs.get(dev, ()))
        return out

    def by_device(self) -> dict[str, list[dict[str, Any]]]:
        """Every entry, grouped by device id."""
        out: dict[str, list[dict[str, Any]]] = {}
        for e in self.entries():
            out.setdefault(e["device_id"], []).append(e)
        return out
