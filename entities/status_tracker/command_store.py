"""Update-command persistence of the tracker's inventory (docs/MODULES.md section 3): the
``commands`` table (schema in :mod:`.inventory`) and what a command does to the rollouts.

:class:`CommandStore` is a mixin of :class:`~.inventory.Inventory` over
:class:`~.rollout_store.RolloutStore`: a command issued marks its devices commanded in their
rollouts and replaces the device's older unreported commands; a command expired unanswered
makes its device silent; a device's results settle it (succeeded, failed, or needed again for a
result that says the update could not be tried now), and each touched rollout decides.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .rollout import result_state
from .rollout_store import RolloutStore, _dumps, _refusal

if TYPE_CHECKING:
    from .inventory import ResultsIn

__all__ = ["CommandStore"]


class CommandStore(RolloutStore):
    """See the module docstring."""

    def outstanding_command(self, device_id: str, now: float) -> dict[str, Any] | None:
        """The device's newest command not reported, not replaced and not expired (its envelope)."""
        with self._read() as conn:
            r = conn.execute("SELECT envelope FROM commands WHERE device_id = ? AND reported = 0 AND superseded = 0 "
                             "AND expires_at > ? ORDER BY issued_at DESC LIMIT 1", (device_id, now)).fetchone()
        return None if r is None else dict(json.loads(r[0]))

    def expire_commands(self, now: float) -> list[int]:
        """Devices whose command expired unanswered fall silent in its rollouts (settled for the
        wave's progress: an offline device never blocks a rollout; commanded again when it is
        back), and each rollout touched takes its decision; in one transaction. Returns the
        rollouts touched."""
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT rd.rollout_id, rd.device_id, rd.command_id FROM rollout_devices rd JOIN commands c "
                "ON c.command_id = rd.command_id WHERE rd.state = 'commanded' AND c.reported = 0 "
                "AND c.expires_at <= ?", (now,)).fetchall()
            touched: set[int] = set()
            for rid, device_id, command_id in rows:
                conn.execute("UPDATE rollout_devices SET state = 'silent', updated_at = ? WHERE rollout_id = ? AND "
                             "device_id = ?", (now, rid, device_id))
                self._log(conn, now, device_id, "command_expired", {"command_id": command_id, "rollout": int(rid)})
                touched.add(int(rid))
            for rid in sorted(touched):
                self._decide(conn, rid, now, advance=True)
        return sorted(touched)

    def issue_command(self, device_id: str, envelope: Mapping[str, Any], rollout_ids: Sequence[int],
                      now: float) -> None:
        """Store a signed command, mark the device commanded in its rollouts, replace its older
        unreported commands, and log it, in one transaction."""
        cmd = envelope["command"]
        with self._tx() as conn:
            conn.execute("UPDATE commands SET superseded = 1 WHERE device_id = ? AND reported = 0", (device_id,))
            conn.execute("INSERT INTO commands VALUES (?, ?, ?, ?, ?, 0, 0)",
                         (cmd["command_id"], device_id, _dumps(envelope), float(cmd["issued_at"]),
                          float(cmd["expires_at"])))
            for rid in rollout_ids:
                conn.execute("UPDATE rollout_devices SET state = 'commanded', command_id = ?, updated_at = ? "
                             "WHERE rollout_id = ? AND device_id = ? AND state IN ('needed', 'commanded', 'silent')",
                             (cmd["command_id"], now, rid, device_id))
            self._log(conn, now, device_id, "command_issued", {
                "command_id": cmd["command_id"], "rollout": cmd["rollout"], "wave": cmd["wave"],
                "block": cmd["block"], "expires_at": cmd["expires_at"],
                "upgrades": [{k: u[k] for k in ("product", "from_version", "to_version", "header_hash")}
                             for u in cmd["upgrades"]]})

    def commands(self, device_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Commands issued, newest first (with their envelopes)."""
        sql = "SELECT command_id, device_id, envelope, issued_at, expires_at, reported, superseded FROM commands"
        params: tuple[Any, ...] = ()
        if device_id is not None:
            sql += " WHERE device_id = ?"
            params = (device_id,)
        with self._read() as conn:
            rows = conn.execute(sql + " ORDER BY issued_at DESC LIMIT ?", (*params, int(limit))).fetchall()
        return [{"command_id": r[0], "device_id": r[1], "envelope": json.loads(r[2]), "issued_at": r[3],
                 "expires_at": r[4], "reported": bool(r[5]), "superseded": bool(r[6])} for r in rows]

    def record_results(self, device_id: str, results: ResultsIn, now: float) -> dict[str, Any]:
        """A device's results for a command issued to it (docs/MODULES.md section 3), in one
        transaction: the rollouts' counts, the command reported, the device's last result, the
        log, then each touched rollout's automatic decision (halt, next wave, complete).

        Raises:
            TrackerRefusal: ``unknown_command`` (not issued to this device), ``already_reported``,
                ``result_mismatch`` (a result for a release the command does not carry).
        """
        with self._tx() as conn:
            r = conn.execute("SELECT device_id, envelope, reported FROM commands WHERE command_id = ?",
                             (results.command_id,)).fetchone()
            if r is None or r[0] != device_id:
                raise _refusal("unknown_command", f"no command {results.command_id} was issued to {device_id}")
            if r[2]:
                raise _refusal("already_reported", f"command {results.command_id} was reported already")
            ups = {u["header_hash"]: u for u in json.loads(r[1])["command"]["upgrades"]}
            seen: set[str] = set()
            for res in results.results:
                hh = res.header_hash.lower()
                u = ups.get(hh)
                if u is None or hh in seen or (u["product"], u["to_version"]) != (res.product, res.to_version):
                    raise _refusal("result_mismatch", f"result for {res.product} {res.to_version} ({hh}) "
                                                            f"does not match command {results.command_id}")
                seen.add(hh)
            touched: list[int] = []
            for res in results.results:
                hh = res.header_hash.lower()
                state = result_state(res.ok, res.code)  # "could not try now" -> needed again
                rid = conn.execute("SELECT id FROM rollouts WHERE header_hash = ?", (hh,)).fetchone()
                if rid is None:
                    continue
                cur = conn.execute("UPDATE rollout_devices SET state = ?, code = ?, command_id = ?, updated_at = ? "
                                   "WHERE rollout_id = ? AND device_id = ?",
                                   (str(state), res.code if not res.ok else None, results.command_id, now, rid[0],
                                    device_id))
                if cur.rowcount:
                    touched.append(int(rid[0]))
            for hh in set(ups) - seen:  # not attempted (a dependency failed first): needed again
                conn.execute("UPDATE rollout_devices SET state = 'needed', updated_at = ? WHERE device_id = ? AND "
                             "command_id = ? AND state IN ('commanded', 'silent') AND rollout_id = "
                             "(SELECT id FROM rollouts WHERE header_hash = ?)",
                             (now, device_id, results.command_id, hh))
            conn.execute("UPDATE commands SET reported = 1 WHERE command_id = ?", (results.command_id,))
            failed = [res for res in results.results if not res.ok]
            last = failed[0] if failed else results.results[-1]
            last_result = {"ok": not failed, "code": last.code if failed else None,
                           "message": last.message if failed else None, "component": last.product,
                           "version": last.to_version, "at": now}
            conn.execute("UPDATE devices SET last_result = ? WHERE device_id = ?", (_dumps(last_result), device_id))
            self._log(conn, now, device_id, "results", {
                "command_id": results.command_id,
                "results": [{"product": x.product, "to_version": x.to_version, "header_hash": x.header_hash.lower(),
                             "ok": x.ok, "code": x.code} for x in results.results]})
            summary = []
            for rid in dict.fromkeys(touched):
                d = self._decide(conn, rid, now)
                summary.append({"id": rid, "state": str(d.state), "wave": d.open_wave})
        return {"recorded": len(results.results), "rollouts": summary}
