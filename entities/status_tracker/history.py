"""A device's update history for the operator (``GET /v1/devices/{id}/history``, ``fwledger
tracker history``, the dashboard's device page): what happened to it, newest first.

Built from what the inventory already keeps (:mod:`.inventory`), read through its own read-only
SQLite connection (the inventory's file is WAL: readers never block its writer):

* the communication ``log`` of the device (its newest :data:`SCAN_ROWS` rows, through the
  ``log_by_device`` index): registration, admission records, version changes seen in
  heartbeats, updates needed, commands issued and expired, results reported or refused, the
  device's own last result (a trial confirmed, a rollback);
* ``rollout_devices`` joined with ``rollouts``: the device's standing in each rollout now.

Pure part: :func:`summarise` turns those rows into entries; heartbeats that carry nothing new
(no registration, key, version or last result the previous one did not carry) are folded into
one ``heartbeats`` entry per run (``count``, ``at`` the first, ``until`` the last), so a device
that heartbeats every few seconds still has a readable history.

Bounded: the log itself is pruned to ``log_limit`` rows (config), one request reads at most
:data:`SCAN_ROWS` rows of it and returns at most ``limit`` (<= :data:`MAX_LIMIT`) entries;
``complete`` is False when older history was pruned or not read. A download the device started
is the firmware server's knowledge, not the tracker's (``fwledger server downloads --device``).

Entry: ``{"at", "until", "event", "product", "from_version", "to_version", "rollout", "wave",
"command_id", "code", "count", "detail"}`` (``detail`` a one-line text; absent facts are null).
Events: ``admitted``, ``relabelled``, ``rekeyed``, ``decommissioned``, ``registered``,
``version_changed``, ``unknown_version``, ``update_needed``, ``command_issued``,
``command_expired``, ``installed``, ``failed``, ``results_refused``, ``trial_confirmed``,
``rolled_back``, ``device_result``, ``heartbeats``, ``admission_refused`` (a heartbeat of the
admitted device refused: it declares an add-on board its admission does not list, ``code``
``board_not_admitted``; or an admission dropped a board it reported).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ledger_node.sqlstore import db_errors

__all__ = ["EVENTS", "MAX_LIMIT", "REVERT_CODES", "SCAN_ROWS", "device_history", "summarise"]

#: entries one request may ask for
MAX_LIMIT = 1000
#: newest log rows of one device read per request
SCAN_ROWS = 5000
#: the device's result codes of a trial image given up (entities/firmware_consumer/boot.py)
REVERT_CODES = frozenset({"image_corrupt", "too_many_boot_attempts", "health_check_failed", "health_check_error",
                          "health_check_timeout"})
EVENTS = ("admitted", "relabelled", "rekeyed", "decommissioned", "registered", "version_changed", "unknown_version",
          "update_needed", "command_issued", "command_expired", "installed", "failed", "results_refused",
          "trial_confirmed", "rolled_back", "device_result", "heartbeats", "admission_refused")


def _entry(at: float, event: str, detail: str, **facts: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"at": at, "until": None, "event": event, "product": None, "from_version": None,
                           "to_version": None, "rollout": None, "wave": None, "command_id": None, "code": None,
                           "count": 1, "detail": detail}
    out.update(facts)
    return out


def _labels_text(labels: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "no labels"


def _items(detail: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    """The objects in ``detail[key]`` when it is a list (anything else: none)."""
    items = detail.get(key)
    return [u for u in items if isinstance(u, Mapping)] if isinstance(items, list) else []


def _upgrades(detail: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return _items(detail, "upgrades")


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _last_result_entry(at: float, last: Mapping[str, Any]) -> dict[str, Any]:
    product, version, code = last.get("component"), last.get("version"), last.get("code")
    message = str(last.get("message") or "")
    what = f"{product} {version}" if product and version else "the device"
    if last.get("ok") and "confirmed" in message:
        return _entry(at, "trial_confirmed", f"{what}: trial passed, confirmed", product=product, to_version=version)
    if not last.get("ok") and code in REVERT_CODES:
        return _entry(at, "rolled_back", f"{what}: trial image given up ({code}), back on the previous one",
                      product=product, to_version=version, code=code)
    state = "ok" if last.get("ok") else f"failed ({code or 'error'})"
    return _entry(at, "device_result", f"{what}: the device reports its last update {state}"
                  + (f": {message}" if message and not last.get("ok") else ""),
                  product=product, to_version=version, code=None if last.get("ok") else code)


def _from_heartbeat(at: float, d: Mapping[str, Any], last_seen: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if d.get("registered"):
        out.append(_entry(at, "registered", f"first heartbeat (hardware {d.get('hardware')})"))
    rekeyed = d.get("rekeyed")
    if isinstance(rekeyed, Mapping):
        out.append(_entry(at, "rekeyed", f"now signs with {rekeyed.get('to')} (was {rekeyed.get('from')})"))
    versions = d.get("versions")
    if isinstance(versions, Mapping):
        for product, pair in sorted(versions.items()):
            old, new = [*pair, None, None][:2] if isinstance(pair, list) else (None, None)
            out.append(_entry(at, "version_changed", f"{product} {old or 'none'} -> {new}", product=product,
                              from_version=old, to_version=new))
    last = d.get("last_result")
    key = None if not isinstance(last, Mapping) else (last.get("at"), last.get("ok"), last.get("code"),
                                                      last.get("version"))
    # news: a last result other than the one the previous heartbeat read carried, or one sent with
    # the very first heartbeat (a heartbeat whose predecessor was pruned is only the baseline)
    news = key != last_seen[0] if last_seen else bool(d.get("registered"))
    if isinstance(last, Mapping) and news:
        out.append(_last_result_entry(float(last.get("at") or at), last))
    last_seen[:] = [key]
    return out


def _from_row(kind: str, at: float, d: Mapping[str, Any], state: dict[str, Any]) -> list[dict[str, Any]]:
    """The entries of one log row (oldest rows first: ``state`` carries what was seen before)."""
    if kind == "heartbeat":
        return _from_heartbeat(at, d, state["last_result"])
    if kind == "admission_record":
        labels = _map(d.get("labels"))
        prev = state.get("admission")
        state["admission"] = d
        if prev is None or prev.get("status") != "admitted":
            boards = f" (add-on boards {' '.join(d['addons'])})" if d.get("addons") else ""
            return [_entry(at, "admitted", f"admitted by {d.get('issuer')}: hardware {d.get('hardware')}{boards}, "
                                           f"{_labels_text(labels)}")]
        if prev.get("address") != d.get("address"):
            return [_entry(at, "rekeyed", f"admission names key {d.get('address')} (was {prev.get('address')})")]
        boards = f", add-on boards {' '.join(d.get('addons') or []) or 'none'}" if d.get("addons") or \
            prev.get("addons") else ""
        return [_entry(at, "relabelled", f"labels {_labels_text(labels)}, hardware {d.get('hardware')}{boards} "
                                         f"(were {_labels_text(_map(prev.get('labels')))})")]
    if kind == "admission_refused":
        return [_entry(at, "admission_refused", f"refused ({d.get('code')}): {d.get('message')}", code=d.get("code"))]
    if kind == "admission" and d.get("status") == "board_not_admitted":
        return [_entry(at, "admission_refused", f"its admission no longer lists a board it reported: left "
                                                f"{d.get('rollouts_left', 0)} rollout(s)", code="board_not_admitted")]
    if kind == "admission":
        state["admission"] = {"status": d.get("status")}
        return [_entry(at, "decommissioned" if d.get("status") == "decommissioned" else "admitted",
                       f"{d.get('status')}: left {d.get('rollouts_left', 0)} rollout(s)")]
    if kind == "T9.e":
        return [_entry(at, "unknown_version", f"runs {v.get('product')} {v.get('version')}, not on the ledger (T9.e)",
                       product=v.get("product"), to_version=v.get("version")) for v in _items(d, "unknown_versions")]
    if kind == "update_needed":
        return [_entry(at, "update_needed", f"needs {u.get('product')} {u.get('from_version')} -> "
                                            f"{u.get('to_version')} ({d.get('cause')}, block {d.get('block')})",
                       product=u.get("product"), from_version=u.get("from_version"), to_version=u.get("to_version"))
                for u in _upgrades(d)]
    if kind == "command_issued":
        ups = _upgrades(d)
        what = ", ".join(f"{u.get('product')} {u.get('from_version')} -> {u.get('to_version')}" for u in ups)
        first = ups[0] if ups else {}
        state["commands"][str(d.get("command_id"))] = (d.get("rollout"), d.get("wave"))
        return [_entry(at, "command_issued", f"command for {what or 'nothing'} (rollout {d.get('rollout')}, "
                                             f"wave {d.get('wave')})",
                       product=first.get("product"), from_version=first.get("from_version"),
                       to_version=first.get("to_version"), rollout=d.get("rollout"), wave=d.get("wave"),
                       command_id=d.get("command_id"))]
    if kind == "command_expired":
        return [_entry(at, "command_expired", f"command {d.get('command_id')} expired unanswered",
                       rollout=d.get("rollout"), command_id=d.get("command_id"))]
    if kind == "results":
        rollout, wave = state["commands"].get(str(d.get("command_id")), (None, None))
        return [_entry(at, "installed" if r.get("ok") else "failed",
                       f"{r.get('product')} {r.get('to_version')} "
                       + ("installed" if r.get("ok") else f"failed ({r.get('code') or 'error'})"),
                       product=r.get("product"), to_version=r.get("to_version"), rollout=rollout, wave=wave,
                       command_id=d.get("command_id"), code=None if r.get("ok") else r.get("code"))
                for r in _items(d, "results")]
    if kind == "results_refused":
        return [_entry(at, "results_refused", f"results refused ({d.get('code')}): {d.get('message')}",
                       command_id=d.get("command_id"), code=d.get("code"))]
    return []


def summarise(rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """History entries, newest first, from log rows ``(id, at, kind, detail)`` given oldest first
    (``detail`` parsed JSON). Heartbeats with nothing new fold into runs."""
    state: dict[str, Any] = {"last_result": [], "commands": {}, "admission": None}
    entries: list[dict[str, Any]] = []
    run: dict[str, Any] | None = None
    for _id, at, kind, detail in rows:
        d = detail if isinstance(detail, Mapping) else {}
        new = _from_row(str(kind), float(at), d, state)
        if new:  # a heartbeat with news is told by its entries, not counted in a run
            entries.extend(new)
            run = None
        elif kind == "heartbeat":
            if run is None:
                run = _entry(float(at), "heartbeats", "", count=0)
                entries.append(run)
            run["count"] += 1
            run["until"] = float(at)
            run["ready"] = bool(d.get("ready"))
    for e in entries:
        if e["event"] == "heartbeats":
            e["detail"] = (f"{e['count']} heartbeat(s), the last one "
                           + ("ready for updates" if e.pop("ready", False) else "busy"))
    return entries[::-1]


def _memberships(conn: sqlite3.Connection, device_id: str) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT r.id, r.product, r.to_version, r.header_hash, r.state, rd.wave, rd.state, rd.code, "
                        "rd.command_id, rd.updated_at FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id "
                        "WHERE rd.device_id = ? ORDER BY r.id DESC", (device_id,)).fetchall()
    return [{"rollout": int(r[0]), "product": r[1], "to_version": r[2], "header_hash": r[3], "rollout_state": r[4],
             "wave": int(r[5]), "state": r[6], "code": r[7], "command_id": r[8], "updated_at": r[9]} for r in rows]


def device_history(inventory_path: Path, device_id: str, *, limit: int = 100,
                   scan: int = SCAN_ROWS) -> dict[str, Any]:
    """The history of ``device_id`` from the inventory file (read-only): ``{"device_id",
    "entries", "rollouts", "complete", "scanned", "limit"}``; ``entries`` empty for a device the
    inventory never logged.

    Raises:
        ConfigError, IndexCorruption: the inventory cannot be read.
    """
    limit = max(1, min(int(limit), MAX_LIMIT))
    path = Path(inventory_path)
    with db_errors(path, "inventory"):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
        try:
            conn.execute("PRAGMA busy_timeout = 30000")
            raw = conn.execute("SELECT id, at, kind, detail FROM log WHERE device_id = ? ORDER BY id DESC LIMIT ?",
                               (device_id, int(scan))).fetchall()
            members = _memberships(conn, device_id)
        finally:
            conn.close()
    rows = [(r[0], r[1], r[2], json.loads(r[3])) for r in reversed(raw)]
    entries = summarise(rows)
    # complete: nothing was pruned or left unread (the oldest row read starts the device's story)
    # and every entry is returned
    starts = bool(rows) and (rows[0][2] == "admission_record" or bool(rows[0][3].get("registered")))
    complete = starts and len(raw) < scan and len(entries) <= limit
    return {"device_id": device_id, "entries": entries[:limit], "rollouts": members, "complete": complete,
            "scanned": len(raw), "limit": limit}
