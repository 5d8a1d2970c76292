"""Rollout persistence of the tracker's inventory (docs/MODULES.md section 4): thin, over the
pure decisions of :mod:`.rollout`.

:class:`RolloutStore` is a mixin of :class:`~.inventory.Inventory`: it shares its SQLite
connection, its transactions and its communication log, and keeps the ``rollouts`` and
``rollout_devices`` tables (schema in :mod:`.inventory`). Each method is one transaction.

- Enrolment (:meth:`RolloutStore._sync_rollout_devices`, called by the whole-fleet and
  per-heartbeat assessments): a device needing a release joins its rollout (created on first
  need, or beforehand by an operator: :meth:`RolloutStore.create_rollout`) in its stable wave,
  unless the rollout is cancelled or its :class:`~.rollout.Target` leaves the device out.
- Decisions (:meth:`RolloutStore._decide`): the automatic step; before opening waves past an
  empty canary wave, the lowest-bucket device pending in a later wave moves into wave 0.
- Operator actions: halt (with a reason), resume, advance, retry, cancel (terminal: outstanding
  unreported commands carrying the release are superseded), target, schedule.
- :meth:`RolloutStore.admission`: what governs a device's release now (wave, state, target,
  schedule), for the command gate and the plan's ``held`` list.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from entities.protocol.heartbeat import NEEDS_SAFE_MODE, needs_of

from .rollout import (
    Decision,
    DeviceState,
    HaltReason,
    RolloutError,
    RolloutSettings,
    RolloutState,
    Schedule,
    Target,
    WaveCounts,
    admits,
    bucket,
    canary_wanted,
    decide,
    manual,
    wave_of,
    wave_status,
)

__all__ = ["WAITING", "RolloutStore"]

#: a member still waiting for the release (not settled by a result)
WAITING = ("needed", "commanded", "silent")
_COLS = ("id, header_hash, product, to_version, created_at, updated_at, state, open_wave, settings, base_failed, "
         "base_reported, target, schedule, halt, cancel")
_ID, _HH, _PRODUCT, _VERSION, _CREATED, _UPDATED, _STATE, _OPEN, _SETTINGS, _BF, _BR, _TARGET, _SCHEDULE, _HALT, \
    _CANCEL = range(15)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _refusal(code: str, message: str, **details: Any) -> Exception:
    from .inventory import TrackerRefusal  # the inventory imports this module

    return TrackerRefusal(code, message, **details)


class RolloutStore:
    """See the module docstring. ``labels_of`` (set by the tracker): a device's admission labels
    (a device without admission labels has ``region`` from its reported location)."""

    wave_key: bytes
    labels_of: Callable[[str], Mapping[str, str]] | None = None

    if TYPE_CHECKING:
        def _tx(self) -> AbstractContextManager[sqlite3.Connection]: ...
        def _read(self) -> AbstractContextManager[sqlite3.Connection]: ...
        def _log(self, conn: sqlite3.Connection, at: float, device_id: str | None, kind: str,
                 detail: Mapping[str, Any]) -> None: ...

    # -------------------------------------------------------------- rows

    def _labels(self, conn: sqlite3.Connection, device_id: str) -> dict[str, str]:
        labels = dict(self.labels_of(device_id)) if self.labels_of is not None else {}
        if "region" not in labels:
            r = conn.execute("SELECT location FROM devices WHERE device_id = ?", (device_id,)).fetchone()
            if r is not None and r[0]:
                labels["region"] = str(r[0])
        return labels

    def _rollout_row(self, conn: sqlite3.Connection, rollout_id: int) -> tuple[Any, ...]:
        r = self._row_or_none(conn, rollout_id)
        if r is None:
            raise _refusal("unknown_rollout", f"no rollout {rollout_id}")
        return r

    @staticmethod
    def _row_or_none(conn: sqlite3.Connection, rollout_id: int) -> tuple[Any, ...] | None:
        r = conn.execute(f"SELECT {_COLS} FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()  # noqa: S608
        return None if r is None else tuple(r)

    @staticmethod
    def _parts(row: Sequence[Any]) -> tuple[RolloutSettings, Target, Schedule]:
        return (RolloutSettings.from_json(json.loads(row[_SETTINGS])),
                Target.from_json(json.loads(row[_TARGET]) if row[_TARGET] else None),
                Schedule.from_json(json.loads(row[_SCHEDULE]) if row[_SCHEDULE] else None))

    def _wave_counts(self, conn: sqlite3.Connection, rollout_id: int, settings: RolloutSettings) -> list[WaveCounts]:
        tally: dict[int, dict[str, int]] = {w: {} for w in range(len(settings.waves))}
        for wave, state, n in conn.execute("SELECT wave, state, COUNT(*) FROM rollout_devices WHERE rollout_id = ? "
                                           "GROUP BY wave, state", (rollout_id,)):
            tally.setdefault(int(wave), {})[str(state)] = int(n)
        return [WaveCounts(w, settings.waves[min(w, settings.last_wave)], sum(t.values()),
                           t.get("commanded", 0), t.get("succeeded", 0), t.get("failed", 0), t.get("silent", 0))
                for w, t in sorted(tally.items())]

    # -------------------------------------------------------------- enrolment

    def _ensure_rollout(self, conn: sqlite3.Connection, header_hash: str, product: str, to_version: str,
                        settings: RolloutSettings, now: float) -> tuple[int, RolloutSettings, Target, str]:
        r = conn.execute("SELECT id, settings, target, state, product FROM rollouts WHERE header_hash = ?",
                         (header_hash,)).fetchone()
        if r is not None:
            if not r[4]:  # created by an operator before the release was indexed
                conn.execute("UPDATE rollouts SET product = ?, to_version = ? WHERE id = ?",
                             (product, to_version, r[0]))
            return (int(r[0]), RolloutSettings.from_json(json.loads(r[1])),
                    Target.from_json(json.loads(r[2]) if r[2] else None), str(r[3]))
        rid = self._insert_rollout(conn, header_hash, product, to_version, settings, Target(), Schedule(), now, None)
        return rid, settings, Target(), str(RolloutState.RUNNING)

    def _insert_rollout(self, conn: sqlite3.Connection, header_hash: str, product: str, to_version: str,
                        settings: RolloutSettings, target: Target, schedule: Schedule, now: float,
                        by: str | None) -> int:
        cur = conn.execute("INSERT INTO rollouts (header_hash, product, to_version, created_at, updated_at, state, "
                           "open_wave, settings, target, schedule) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
                           (header_hash, product, to_version, now, now, str(RolloutState.RUNNING),
                            _dumps(settings.to_json()), _dumps(target.to_json()), _dumps(schedule.to_json())))
        rid = int(cur.lastrowid or 0)
        detail = {"rollout": rid, "action": "create", "header_hash": header_hash, "product": product,
                  "to_version": to_version, "state": "running", "open_wave": 0, "settings": settings.to_json(),
                  "target": target.to_json(), "schedule": schedule.to_json()}
        self._log(conn, now, None, "rollout", {**detail, "by": by} if by else detail)
        return rid

    def _sync_rollout_devices(self, conn: sqlite3.Connection, device_id: str, want: Mapping[str, Mapping[str, Any]],
                              settings: RolloutSettings, now: float) -> tuple[set[int], set[int]]:
        """Enrol the device in the rollout of every release it needs (unless the rollout is
        cancelled or does not target it); drop it from those it no longer needs (counted a
        success when it runs the release now) or that no longer target it. A device that
        succeeded in a rollout and says its component is in safe mode (C11.1.a.iv: it lost the
        release) is needed again: a recovery install. Returns the rollouts touched and, among
        them, those where the device was seen running the release."""
        touched: set[int] = set()
        observed: set[int] = set()
        labels: dict[str, str] | None = None
        comps_row = conn.execute("SELECT components FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        comps = json.loads(comps_row[0]) if comps_row is not None else {}
        for hh, u in want.items():
            rid, rs, target, state = self._ensure_rollout(conn, hh, u["product"], u["to_version"], settings, now)
            if state == RolloutState.CANCELLED:
                continue  # frozen: nobody joins a cancelled rollout
            if target.kind != "all":
                labels = self._labels(conn, device_id) if labels is None else labels
                if not target.matches(device_id, labels):
                    if conn.execute("DELETE FROM rollout_devices WHERE rollout_id = ? AND device_id = ? AND state IN "
                                    "('needed', 'commanded', 'silent')", (rid, device_id)).rowcount:
                        touched.add(rid)
                    continue
            cur = conn.execute("INSERT OR IGNORE INTO rollout_devices VALUES (?, ?, ?, ?, NULL, NULL, ?)",
                               (rid, device_id, wave_of(hh, device_id, rs.waves, self.wave_key),
                                str(DeviceState.NEEDED), now))
            if not cur.rowcount and needs_of(comps.get(u["product"], {})) == NEEDS_SAFE_MODE:
                cur = conn.execute("UPDATE rollout_devices SET state = ?, command_id = NULL, code = NULL, "
                                   "updated_at = ? WHERE rollout_id = ? AND device_id = ? AND state = 'succeeded'",
                                   (str(DeviceState.NEEDED), now, rid, device_id))
            if cur.rowcount:
                touched.add(rid)
        stale = conn.execute(
            "SELECT rd.rollout_id, r.header_hash, r.product, r.to_version FROM rollout_devices rd JOIN rollouts r "
            "ON r.id = rd.rollout_id WHERE rd.device_id = ? AND rd.state IN ('needed', 'commanded', 'silent') "
            "AND r.state != 'cancelled'", (device_id,)).fetchall()
        for rid, hh, product, to_version in stale:
            if hh in want:
                continue
            if comps.get(product, {}).get("version") == to_version:
                conn.execute("UPDATE rollout_devices SET state = 'succeeded', code = 'observed', updated_at = ? "
                             "WHERE rollout_id = ? AND device_id = ?", (now, rid, device_id))
                observed.add(int(rid))
            else:  # superseded, revoked, or the device changed: it no longer waits for this release
                conn.execute("DELETE FROM rollout_devices WHERE rollout_id = ? AND device_id = ?", (rid, device_id))
            touched.add(int(rid))
        return touched, observed

    def _supersede(self, conn: sqlite3.Connection, rollout_id: int, device_ids: Sequence[str] | None,
                   now: float) -> int:
        """Supersede the unreported commands of the rollout's waiting members (all, or those in
        ``device_ids``): those devices are sent nothing more for them; members of other rollouts
        waiting on the same commands are needed again (a new command without this release)."""
        rows = conn.execute("SELECT rd.device_id, rd.command_id FROM rollout_devices rd JOIN commands c ON "
                            "c.command_id = rd.command_id WHERE rd.rollout_id = ? AND c.reported = 0 AND "
                            "c.superseded = 0", (rollout_id,)).fetchall()
        n = 0
        for device_id, command_id in rows:
            if device_ids is not None and device_id not in device_ids:
                continue
            conn.execute("UPDATE commands SET superseded = 1 WHERE command_id = ?", (command_id,))
            conn.execute("UPDATE rollout_devices SET state = 'needed', updated_at = ? WHERE command_id = ? AND "
                         "state IN ('commanded', 'silent')", (now, command_id))
            self._log(conn, now, device_id, "command_superseded", {"command_id": command_id, "rollout": rollout_id})
            n += 1
        return n

    # -------------------------------------------------------------- decisions

    def _apply(self, conn: sqlite3.Connection, row: tuple[Any, ...], decision: Decision, now: float,
               base: tuple[int, int], by: str | None = None, extra: Mapping[str, Any] | None = None) -> None:
        rid, state, open_wave = int(row[_ID]), str(row[_STATE]), int(row[_OPEN])
        manual_action = by is not None
        if not manual_action and not decision.changed(state, open_wave):
            return
        halt = row[_HALT] if decision.state is RolloutState.HALTED else None
        if decision.halt is not None:
            codes = dict(conn.execute("SELECT COALESCE(code, '?'), COUNT(*) FROM rollout_devices WHERE rollout_id = ? "
                                      "AND state = 'failed' AND wave <= ? GROUP BY code ORDER BY code",
                                      (rid, decision.open_wave)).fetchall())
            h = decision.halt
            halt = _dumps(HaltReason(h.by, h.message, h.wave, h.failed, h.reported, codes, now).to_json(rid))
        conn.execute("UPDATE rollouts SET state = ?, open_wave = ?, base_failed = ?, base_reported = ?, "
                     "updated_at = ?, halt = ? WHERE id = ?",
                     (str(decision.state), decision.open_wave, base[0], base[1], now, halt, rid))
        detail: dict[str, Any] = {"rollout": rid, "action": decision.action, "header_hash": row[_HH],
                                  "from": {"state": state, "open_wave": open_wave},
                                  "state": str(decision.state), "open_wave": decision.open_wave,
                                  "reason": decision.reason, **(extra or {})}
        if halt is not None and decision.halt is not None:
            detail["halt"] = json.loads(halt)
        if by is not None:
            detail["by"] = by
        self._log(conn, now, None, "rollout", detail)

    def _promote_canary(self, conn: sqlite3.Connection, row: tuple[Any, ...], counts: Sequence[WaveCounts],
                        now: float) -> bool:
        if not canary_wanted(str(row[_STATE]), int(row[_OPEN]), counts):
            return False
        rid, hh = int(row[_ID]), str(row[_HH])
        pending = [str(r[0]) for r in conn.execute("SELECT device_id FROM rollout_devices WHERE rollout_id = ? AND "
                                                   "wave > 0 AND state = 'needed'", (rid,))]
        if not pending:
            return False
        canary = min(pending, key=lambda d: (bucket(hh, d, self.wave_key), d))
        conn.execute("UPDATE rollout_devices SET wave = 0, updated_at = ? WHERE rollout_id = ? AND device_id = ?",
                     (now, rid, canary))
        self._log(conn, now, canary, "rollout", {"rollout": rid, "action": "canary", "header_hash": hh,
                                                 "device_id": canary, "reason": "wave 0 held no device"})
        return True

    def _decide(self, conn: sqlite3.Connection, rollout_id: int, now: float, *, advance: bool = True) -> Decision:
        row = self._rollout_row(conn, rollout_id)
        settings = RolloutSettings.from_json(json.loads(row[_SETTINGS]))
        base = (int(row[_BF]), int(row[_BR]))
        counts = self._wave_counts(conn, rollout_id, settings)
        if advance and self._promote_canary(conn, row, counts, now):
            counts = self._wave_counts(conn, rollout_id, settings)
        decision = decide(settings, str(row[_STATE]), int(row[_OPEN]), counts, baseline=base, advance=advance)
        self._apply(conn, row, decision, now, base)
        return decision

    def settle_rollouts(self, now: float, quiet: float) -> list[int]:
        """Running rollouts no device joined or moved in for ``quiet`` seconds, with devices in
        waves not open yet, take their automatic decision as after a whole-fleet assessment (they
        open the next waves when the open ones have nothing pending; an empty canary wave first
        takes a device), in one transaction. Returns the rollouts whose state or open wave changed."""
        sql = ("SELECT r.id FROM rollouts r WHERE r.state = 'running' AND r.updated_at <= ? AND NOT EXISTS "
               "(SELECT 1 FROM rollout_devices rd WHERE rd.rollout_id = r.id AND rd.updated_at > ?) AND EXISTS "
               "(SELECT 1 FROM rollout_devices rd WHERE rd.rollout_id = r.id AND rd.wave > r.open_wave)")
        with self._read() as conn:  # most rounds find none: no write transaction then
            if not conn.execute(sql, (now - quiet, now - quiet)).fetchall():
                return []
        changed: list[int] = []
        with self._tx() as conn:
            for (rid,) in conn.execute(sql, (now - quiet, now - quiet)).fetchall():
                row = self._rollout_row(conn, int(rid))
                if self._decide(conn, int(rid), now, advance=True).changed(str(row[_STATE]), int(row[_OPEN])):
                    changed.append(int(rid))
        return changed

    # -------------------------------------------------------------- operator actions (T9.c)

    def rollout_action(self, rollout_id: int, action: str, now: float, by: str, reason: str | None = None
                       ) -> dict[str, Any]:
        """An administrator's ``halt``, ``resume``, ``advance``, ``retry`` or ``cancel`` (T9.c),
        logged with ``by`` and ``reason``; ``retry`` first sends the rollout's failed devices back
        to "needed"; ``cancel`` supersedes the rollout's outstanding unreported commands; in the
        same transaction.

        Raises:
            TrackerRefusal: ``unknown_rollout``, ``rollout_no_failures`` (retry with no failed
                device); the codes of :func:`.rollout.manual`.
        """
        with self._tx() as conn:
            row = self._rollout_row(conn, rollout_id)
            settings = RolloutSettings.from_json(json.loads(row[_SETTINGS]))
            if action == "retry" and row[_STATE] != RolloutState.CANCELLED:
                cur = conn.execute("UPDATE rollout_devices SET state = 'needed', code = NULL, updated_at = ? "
                                   "WHERE rollout_id = ? AND state = 'failed'", (now, rollout_id))
                if not cur.rowcount:
                    raise _refusal("rollout_no_failures", f"rollout {rollout_id} has no failed device",
                                   rollout=rollout_id, state=str(row[_STATE]))
            try:
                decision, base = manual(settings, action, str(row[_STATE]), int(row[_OPEN]),
                                        self._wave_counts(conn, rollout_id, settings),
                                        baseline=(int(row[_BF]), int(row[_BR])), by=by, reason=reason)
            except RolloutError as exc:
                raise _refusal(exc.code, str(exc), rollout=rollout_id, state=str(row[_STATE])) from None
            extra: dict[str, Any] = {}
            if action == "cancel":
                extra["superseded"] = self._supersede(conn, rollout_id, None, now)
                conn.execute("UPDATE rollouts SET cancel = ? WHERE id = ?",
                             (_dumps({"by": by, "at": now, "reason": reason}), rollout_id))
            self._apply(conn, row, decision, now, base, by=by, extra=extra)
        return self._one(rollout_id)

    def create_rollout(self, header_hash: str, product: str, to_version: str, settings: RolloutSettings,
                       target: Target, schedule: Schedule, now: float, by: str) -> dict[str, Any]:
        """An operator's rollout for a release before (or without) the tracker creating it:
        ``product``/``to_version`` empty when the release is not indexed yet (filled at the first
        enrolment). Devices already needing the release and in the target are enrolled.

        Raises:
            TrackerRefusal: ``rollout_exists``.
        """
        with self._tx() as conn:
            r = conn.execute("SELECT id FROM rollouts WHERE header_hash = ?", (header_hash,)).fetchone()
            if r is not None:
                raise _refusal("rollout_exists", f"release {header_hash} has rollout {r[0]} already: "
                                                 f"use 'fwledger tracker rollout target|schedule {r[0]}'")
            rid = self._insert_rollout(conn, header_hash, product, to_version, settings, target, schedule, now, by)
            self._enrol_needing(conn, rid, header_hash, settings, target, now)
            self._decide(conn, rid, now, advance=False)
        return self._one(rollout_id=rid)

    def _enrol_needing(self, conn: sqlite3.Connection, rid: int, hh: str, settings: RolloutSettings, target: Target,
                       now: float) -> int:
        n = 0
        for (device_id,) in conn.execute("SELECT device_id FROM needs WHERE header_hash = ?", (hh,)).fetchall():
            if target.kind == "all" or target.matches(device_id, self._labels(conn, device_id)):
                n += conn.execute("INSERT OR IGNORE INTO rollout_devices VALUES (?, ?, ?, 'needed', NULL, NULL, ?)",
                                  (rid, device_id, wave_of(hh, device_id, settings.waves, self.wave_key),
                                   now)).rowcount
        return n

    def steer_rollout(self, rollout_id: int, now: float, by: str, *, target: Target | None = None,
                      schedule: Schedule | None = None) -> dict[str, Any]:
        """An operator re-targets or re-schedules a rollout. A new target drops the waiting
        members it leaves out (their unreported commands superseded) and enrols the devices
        needing the release that it takes in; the rollout then decides (never opening a wave).

        Raises:
            TrackerRefusal: ``unknown_rollout``, ``rollout_cancelled``.
        """
        with self._tx() as conn:
            row = self._rollout_row(conn, rollout_id)
            if row[_STATE] == RolloutState.CANCELLED:
                raise _refusal("rollout_cancelled", f"rollout {rollout_id} is cancelled: nothing more happens to it",
                               rollout=rollout_id, state=str(row[_STATE]))
            settings, old_target, old_schedule = self._parts(row)
            detail: dict[str, Any] = {"rollout": rollout_id, "header_hash": row[_HH], "by": by}
            if schedule is not None:
                conn.execute("UPDATE rollouts SET schedule = ?, updated_at = ? WHERE id = ?",
                             (_dumps(schedule.to_json()), now, rollout_id))
                detail.update(action="schedule", schedule=schedule.to_json(), previous=old_schedule.to_json())
            if target is not None:
                conn.execute("UPDATE rollouts SET target = ?, updated_at = ? WHERE id = ?",
                             (_dumps(target.to_json()), now, rollout_id))
                out = [str(d) for (d,) in conn.execute("SELECT device_id FROM rollout_devices WHERE rollout_id = ? "
                                                       "AND state IN ('needed', 'commanded', 'silent')", (rollout_id,))
                       if not target.matches(str(d), self._labels(conn, str(d)))]
                superseded = self._supersede(conn, rollout_id, out, now)
                for d in out:
                    conn.execute("DELETE FROM rollout_devices WHERE rollout_id = ? AND device_id = ?", (rollout_id, d))
                added = self._enrol_needing(conn, rollout_id, str(row[_HH]), settings, target, now)
                detail.update(action="target", target=target.to_json(), previous=old_target.to_json(),
                              dropped=len(out), enrolled=added, superseded=superseded)
            self._log(conn, now, None, "rollout", detail)
            self._decide(conn, rollout_id, now, advance=False)
        return self._one(rollout_id)

    # -------------------------------------------------------------- reading

    def _rollout_json(self, conn: sqlite3.Connection, row: tuple[Any, ...]) -> dict[str, Any]:
        settings, target, schedule = self._parts(row)
        rid, state, open_wave = int(row[_ID]), str(row[_STATE]), int(row[_OPEN])
        waves = self._wave_counts(conn, rid, settings)
        per_wave = [{**w.to_json(), "open": w.wave <= open_wave and state != RolloutState.COMPLETED,
                     "status": wave_status(state, open_wave, w), "reported": w.reported} for w in waves]
        totals = {k: sum(int(w[k]) for w in per_wave) for k in ("devices", "needed", "commanded", "succeeded",
                                                                 "failed", "silent")}
        halt = json.loads(row[_HALT]) if row[_HALT] else None
        return {"id": rid, "header_hash": row[_HH], "product": row[_PRODUCT], "to_version": row[_VERSION],
                "created_at": row[_CREATED], "updated_at": row[_UPDATED], "state": state, "open_wave": open_wave,
                "settings": settings.to_json(), "acknowledged": {"failed": int(row[_BF]), "reported": int(row[_BR])},
                "target": target.to_json(), "schedule": schedule.to_json(), "halt": halt,
                "cancelled": json.loads(row[_CANCEL]) if row[_CANCEL] else None,
                **totals, "reported": totals["succeeded"] + totals["failed"], "waves": per_wave}

    def rollouts(self) -> list[dict[str, Any]]:
        """Every rollout, newest first, with per-wave counts, target, schedule, halt and
        cancellation (JSON-ready)."""
        with self._read() as conn:
            ids = [int(r[0]) for r in conn.execute("SELECT id FROM rollouts ORDER BY id DESC")]
            return [self._rollout_json(conn, self._rollout_row(conn, i)) for i in ids]

    def _one(self, rollout_id: int) -> dict[str, Any]:
        out = self.rollout(rollout_id)
        if out is None:
            raise _refusal("unknown_rollout", f"no rollout {rollout_id}")
        return out

    def rollout(self, rollout_id: int) -> dict[str, Any] | None:
        """One rollout as in :meth:`rollouts`, with its devices (JSON-ready); None if there is none."""
        with self._read() as conn:
            row = self._row_or_none(conn, rollout_id)
            if row is None:
                return None
            out = self._rollout_json(conn, row)
            out["members"] = [{"device_id": r[0], "wave": r[1], "state": r[2], "command_id": r[3], "code": r[4],
                               "updated_at": r[5]} for r in conn.execute(
                "SELECT device_id, wave, state, command_id, code, updated_at FROM rollout_devices "
                "WHERE rollout_id = ? ORDER BY wave, device_id", (rollout_id,))]
        return out

    def admission(self, device_id: str, header_hashes: Sequence[str], now: float | None = None
                  ) -> list[dict[str, Any] | None]:
        """Per release: the rollout governing it for this device, None when there is no rollout.

        ``{"rollout", "state", "open_wave", "enrolled", "targeted", "target", "halt", "cancelled",
        "wave", "device_state", "blocked": [code, message] | None, "admits"}``: ``admits`` when the
        device is enrolled, the rollout is not halted or cancelled, its wave is open and (with
        ``now``) the schedule lets a command go now."""
        out: list[dict[str, Any] | None] = []
        with self._read() as conn:
            labels: dict[str, str] | None = None
            for hh in header_hashes:
                r = conn.execute(f"SELECT {_COLS} FROM rollouts WHERE header_hash = ?", (hh,)).fetchone()  # noqa: S608
                if r is None:
                    out.append(None)
                    continue
                _settings, target, schedule = self._parts(r)
                rid, state, open_wave = int(r[_ID]), str(r[_STATE]), int(r[_OPEN])
                if labels is None:
                    labels = self._labels(conn, device_id)
                m = conn.execute("SELECT wave, state FROM rollout_devices WHERE rollout_id = ? AND device_id = ?",
                                 (rid, device_id)).fetchone()
                blocked = schedule.blocks(now, labels) if now is not None else None
                g: dict[str, Any] = {
                    "rollout": rid, "state": state, "open_wave": open_wave, "enrolled": m is not None,
                    "targeted": target.matches(device_id, labels), "target": target.describe(),
                    "halt": json.loads(r[_HALT]) if r[_HALT] else None,
                    "cancelled": json.loads(r[_CANCEL]) if r[_CANCEL] else None,
                    "blocked": list(blocked) if blocked else None,
                    "wave": None if m is None else int(m[0]), "device_state": None if m is None else str(m[1])}
                g["admits"] = m is not None and admits(state, open_wave, int(m[0])) and blocked is None
                out.append(g)
        return out
