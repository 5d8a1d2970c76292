"""A service's admissions (tracker server module, firmware server): one SQLite file, thread-safe.

Schema (``<data>/admissions.sqlite``, WAL, ``synchronous=FULL``, every change one transaction):

``admissions(device_id, address, hardware, labels, status, serial, issued_at, issuer, source, record, updated_at)``
    the newest admission of each device id (:mod:`entities.protocol.admission`): an operator record, or a
    manufacture certificate's admission (serial 0) recorded on the device's first contact.
``pending(device_id, address, hardware, declared, first_seen, last_seen, requests)``
    devices that showed up signed but unannounced, one row per (id, key), at most ``max_pending``
    rows (the least recently seen are dropped): the operator's queue to accept or reject.
``rejected(device_id, address, at, by)``
    (id, key) pairs the operator rejected: refused with ``rejected``, never queued again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509

from ledger_node.sqlstore import SqliteStore

from .protocol.admission import Admission, AdmissionError, decide, parse_admission, verify_admission

__all__ = ["MAX_RECORDS", "AdmissionStore"]

#: operator records accepted in one ``POST /v1/admissions`` (the CLI sends batches of 50)
MAX_RECORDS = 200

_SCHEMA = """
CREATE TABLE IF NOT EXISTS admissions (
    device_id TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    hardware TEXT NOT NULL,
    labels TEXT NOT NULL,
    status TEXT NOT NULL,
    serial INTEGER NOT NULL,
    issued_at INTEGER NOT NULL,
    issuer TEXT NOT NULL,
    source TEXT NOT NULL,
    record TEXT NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS admissions_by_address ON admissions (address);
CREATE TABLE IF NOT EXISTS pending (
    device_id TEXT NOT NULL,
    address TEXT NOT NULL,
    hardware TEXT NOT NULL,
    declared TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    requests INTEGER NOT NULL,
    PRIMARY KEY (device_id, address)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pending_by_seen ON pending (last_seen);
CREATE TABLE IF NOT EXISTS rejected (
    device_id TEXT NOT NULL,
    address TEXT NOT NULL,
    at REAL NOT NULL,
    by TEXT NOT NULL,
    PRIMARY KEY (device_id, address)
) WITHOUT ROWID;
"""

_COLS = "device_id, address, hardware, labels, status, serial, issued_at, issuer, source, record"


def _admission(r: Sequence[Any]) -> Admission:
    record = json.loads(r[9])
    return Admission(str(r[0]), str(r[1]), str(r[2]), json.loads(r[3]), str(r[4]), int(r[5]), int(r[6]), str(r[7]),
                     str(record.get("signature", "")), str(r[8]), record.get("certificate"),
                     tuple(record.get("addons") or ()))


class AdmissionStore(SqliteStore):
    """See the module docstring.

    Raises (constructor):
        ConfigError: the file cannot be opened.
        IndexCorruption: the file is damaged or holds something else.
    """

    schema = _SCHEMA
    kind = "admissions store"
    marker = "admissions"
    durable = True

    def __init__(self, path: Path | str, *, max_pending: int = 1000) -> None:
        self.max_pending = max_pending
        super().__init__(path)

    def _q(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._read() as conn:
            return conn.execute(sql, args).fetchall()

    # ------------------------------------------------------------------ admissions

    def apply(self, records: Sequence[Admission], now: float) -> list[dict[str, Any]]:
        """Keep each record whose serial is above the one held for its device id (verified by the
        caller), in one transaction; an applied admission clears the id's pending rows.

        Returns ``[{"device_id", "serial", "outcome": "applied"|"stale"}]`` in input order.
        """
        out = []
        with self._tx() as conn:
            for adm in records:
                row = conn.execute("SELECT serial FROM admissions WHERE device_id = ?", (adm.device_id,)).fetchone()
                if row is not None and int(row[0]) >= adm.serial:
                    out.append({"device_id": adm.device_id, "serial": adm.serial, "outcome": "stale"})
                    continue
                conn.execute(f"INSERT OR REPLACE INTO admissions ({_COLS}, updated_at) VALUES "  # noqa: S608
                             "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (adm.device_id, adm.address, adm.hardware, json.dumps(dict(adm.labels), sort_keys=True),
                              adm.status, adm.serial, adm.issued_at, adm.issuer, adm.source,
                              json.dumps(adm.to_json(), sort_keys=True), now))
                conn.execute("DELETE FROM pending WHERE device_id = ?", (adm.device_id,))
                out.append({"device_id": adm.device_id, "serial": adm.serial, "outcome": "applied"})
        return out

    def receive(self, records: Sequence[Any], operators: Sequence[str], now: float
                ) -> tuple[list[Admission], dict[str, Any]]:
        """Verify and apply operator records as received from the network: every record verifies
        (signed by one of ``operators``) or none is applied.

        Returns the admissions applied and ``{"applied", "stale", "results": [...]}``.

        Raises:
            AdmissionError: ``too_large``, ``unknown_operator`` (none configured, or another
                signer), ``bad_admission``/``bad_labels``, ``bad_signature``; ``record N:`` in the
                message names the first bad one.
        """
        if len(records) > MAX_RECORDS:
            raise AdmissionError("too_large", f"at most {MAX_RECORDS} admission records per request")
        if not operators:
            raise AdmissionError("unknown_operator", "this service has no operator keys to verify admission "
                                                     "records with")
        checked = []
        for i, obj in enumerate(records):
            try:
                checked.append(verify_admission(parse_admission(obj), operators))
            except AdmissionError as exc:
                raise AdmissionError(exc.code, f"record {i}: {exc}") from None
        results = self.apply(checked, now)
        applied = [a for a, r in zip(checked, results, strict=True) if r["outcome"] == "applied"]
        return applied, {"applied": len(applied), "stale": len(results) - len(applied), "results": results}

    def check(self, device_id: str, address: str, *, certificate: str | None, cas: Collection[x509.Certificate],
              hardware_known: Callable[[str], bool], now: float, addons: Collection[str] | None = None
              ) -> Admission:
        """:func:`~entities.protocol.admission.decide` over this store (``addons``: the add-on boards
        the request declares); a device a manufacture certificate admits for the first time is
        recorded (serial 0: any operator record outranks it).

        Raises:
            NotAdmitted: as :func:`~entities.protocol.admission.decide`.
        """
        adm = decide(self, device_id, address, certificate=certificate, cas=cas, hardware_known=hardware_known,
                     now=now, addons=addons)
        if adm.source == "certificate" and self.get(device_id) is None:
            self.apply([adm], now)
        return adm

    def get(self, device_id: str) -> Admission | None:
        rows = self._q(f"SELECT {_COLS} FROM admissions WHERE device_id = ?", (device_id,))  # noqa: S608
        return _admission(rows[0]) if rows else None

    def by_address(self, address: str) -> Admission | None:
        """The admitted device whose key is ``address`` (None when none is admitted now)."""
        rows = self._q(f"SELECT {_COLS} FROM admissions WHERE address = ? AND status = 'admitted' "  # noqa: S608
                       "ORDER BY serial DESC LIMIT 1", (address,))
        return _admission(rows[0]) if rows else None

    def all(self, *, since: int = -1, status: str | None = None) -> list[Admission]:
        sql = f"SELECT {_COLS} FROM admissions WHERE serial > ?"  # noqa: S608
        args: list[Any] = [since]
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        return [_admission(r) for r in self._q(sql + " ORDER BY device_id", args)]

    def admitted_ids(self) -> set[str]:
        return {str(r[0]) for r in self._q("SELECT device_id FROM admissions WHERE status = 'admitted'")}

    def counts(self) -> dict[str, int]:
        rows = dict(self._q("SELECT status, count(*) FROM admissions GROUP BY status"))
        pending = self._q("SELECT count(*) FROM pending")[0][0]
        rejected = self._q("SELECT count(*) FROM rejected")[0][0]
        return {"admitted": int(rows.get("admitted", 0)), "decommissioned": int(rows.get("decommissioned", 0)),
                "pending": int(pending), "rejected": int(rejected)}

    # ------------------------------------------------------------------ the pending queue

    def note_pending(self, device_id: str, address: str, hardware: str, declared: Mapping[str, Any],
                     now: float) -> None:
        """Queue (or refresh) an unannounced device; the queue keeps the ``max_pending`` most
        recently seen (id, key) pairs."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO pending VALUES (?, ?, ?, ?, ?, ?, 1) ON CONFLICT(device_id, address) DO UPDATE SET "
                "hardware = excluded.hardware, declared = excluded.declared, last_seen = excluded.last_seen, "
                "requests = requests + 1",
                (device_id, address, hardware, json.dumps(dict(declared), sort_keys=True), now, now))
            over = conn.execute("SELECT count(*) FROM pending").fetchone()[0] - self.max_pending
            if over > 0:
                conn.execute("DELETE FROM pending WHERE (device_id, address) IN (SELECT device_id, address FROM "
                             "pending ORDER BY last_seen, device_id LIMIT ?)", (over,))

    def pending(self, limit: int = 1000) -> list[dict[str, Any]]:
        rows = self._q("SELECT device_id, address, hardware, declared, first_seen, last_seen, requests FROM pending "
                       "ORDER BY first_seen, device_id LIMIT ?", (limit,))
        return [{"device_id": r[0], "address": r[1], "hardware": r[2], "declared": json.loads(r[3]),
                 "first_seen": r[4], "last_seen": r[5], "requests": r[6]} for r in rows]

    def reject(self, device_id: str, address: str | None, by: str, now: float) -> int:
        """Reject the pending (id, key) pairs of ``device_id`` (only ``address``'s when given);
        returns how many."""
        with self._tx() as conn:
            rows = conn.execute("SELECT address FROM pending WHERE device_id = ? AND (? IS NULL OR address = ?)",
                                (device_id, address, address)).fetchall()
            keys = [str(r[0]) for r in rows] or ([address] if address else [])
            for key in keys:
                conn.execute("INSERT OR REPLACE INTO rejected VALUES (?, ?, ?, ?)", (device_id, key, now, by))
                conn.execute("DELETE FROM pending WHERE device_id = ? AND address = ?", (device_id, key))
        return len(keys)

    def is_rejected(self, device_id: str, address: str) -> bool:
        return bool(self._q("SELECT 1 FROM rejected WHERE device_id = ? AND address = ?", (device_id, address)))
