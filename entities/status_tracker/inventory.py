"""What the status tracker knows of the fleet (X.1368 C11.2.a-b) and of update requests (clause 9).

Pure part (no I/O), in :mod:`.inventory_types` and re-exported here: the messages devices and
triggering parties send (:class:`HeartbeatIn`, :class:`TriggerIn`, validated by pydantic and then
by the resolver's own rules), a device's readiness from its report and the communication log
(:func:`readiness`, C11.2.b.i), and the trust decision on a trigger (:func:`judge_trigger`,
clause 9: which party may ask, and whether the release it names is on the ledger with that
version).

Store (thin): :class:`Inventory`, one SQLite file (WAL, ``synchronous=FULL``; every change is one
transaction), safe to share between threads. :meth:`Inventory.batch` makes the changes one caller
makes in a row (a heartbeat's: its report, verdict, log entries and command) one transaction,
committed (and fsynced) once. Schema:

``devices(device_id, address, hardware, addons, location, components, ready, last_result,
first_seen, last_seen, heartbeats)``
    the latest report of each device; ``address`` is the key that signed its first heartbeat
    (the id stays bound to it); ``addons`` and ``components`` are canonical JSON.
``log(id, at, device_id, kind, detail)``
    the communication log (C11.2.b.i): heartbeats, version changes, unknown versions (T9.e),
    update decisions; pruned to the newest ``log_limit`` rows.
``triggers(id, at, source, clause, signer, header_hash, link, version, accepted, code, message,
devices)``
    every trigger whose signature verified, accepted or refused, with the refusal's code; pruned
    to the newest ``trigger_limit`` rows at each insert (anyone can sign a trigger).
``assessments(device_id, block, outdated, at_risk, unknown, report, at)``
    the resolver's latest verdict per device (R10.b.i outdated, R10.b.ii revoked/vulnerable).
``needs(device_id, header_hash, product, from_version, to_version, cause, since)``
    "update needed" per device and release (C11.2.c), with what first caused it.
``nonces(address, nonce, expires_at)``
    signed-request nonces seen (replay refusal survives a restart).
``rollouts(id, header_hash, product, to_version, created_at, updated_at, state, open_wave, settings,
base_failed, base_reported, target, schedule, halt, cancel)``
    one rollout per target release (docs/MODULES.md section 4): ``running``, ``halted``,
    ``completed`` or ``cancelled``, the highest open wave, its settings (JSON, fixed at
    creation), the failures and reports an administrator acknowledged by resuming it, and the
    operator's steering (JSON): which devices it covers, when it may issue commands, why it
    halted (while halted), who cancelled it, when and why (:mod:`.rollout_store`).
``rollout_devices(rollout_id, device_id, wave, state, command_id, code, updated_at)``
    each device needing the release: its stable wave and ``needed``, ``commanded``,
    ``succeeded`` or ``failed`` (with the device's error code).
``commands(command_id, device_id, envelope, issued_at, expires_at, reported, superseded)``
    every signed update command issued (the envelope as sent), whether its result came back,
    and whether a newer command replaced it.

Schema version 3; a version-1 or version-2 file opens and gains the new tables and columns.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from ledger_node.errors import ConfigError, IndexCorruption
from ledger_node.sqlstore import db_errors, savepoint, write_tx

from .command_store import CommandStore
from .inventory_types import (
    CLAUSE,
    DEVICE_ID_PATTERN,
    HASH_PATTERN,
    Assessment,
    ComponentIn,
    ConcernedIn,
    DeviceRow,
    HeartbeatIn,
    LastResultIn,
    LedgerFacts,
    Readiness,
    ResultIn,
    ResultsIn,
    Source,
    TrackerRefusal,
    TriggerIn,
    TriggerRow,
    check_party,
    judge_trigger,
    readiness,
)
from .rollout import RolloutSettings

__all__ = [
    "CLAUSE",
    "DEVICE_ID_PATTERN",
    "HASH_PATTERN",
    "INVENTORY_SCHEMA_VERSION",
    "Assessment",
    "ComponentIn",
    "ConcernedIn",
    "DeviceRow",
    "HeartbeatIn",
    "Inventory",
    "LastResultIn",
    "LedgerFacts",
    "Readiness",
    "ResultIn",
    "ResultsIn",
    "Source",
    "TrackerRefusal",
    "TriggerIn",
    "TriggerRow",
    "check_party",
    "judge_trigger",
    "readiness",
]

INVENTORY_SCHEMA_VERSION = 3  # 2: rollouts, rollout_devices, commands (issue 5); 3: rollout target, schedule,
#                               halt and cancel (issue 15); 1 and 2 open and are migrated


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    hardware TEXT NOT NULL,
    addons TEXT NOT NULL,
    location TEXT,
    components TEXT NOT NULL,
    ready INTEGER NOT NULL,
    last_result TEXT,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    heartbeats INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    device_id TEXT,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS log_by_device ON log (device_id, id);
CREATE TABLE IF NOT EXISTS triggers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    source TEXT NOT NULL,
    clause TEXT NOT NULL,
    signer TEXT NOT NULL,
    header_hash TEXT NOT NULL,
    link TEXT NOT NULL,
    version TEXT NOT NULL,
    accepted INTEGER NOT NULL,
    code TEXT,
    message TEXT,
    devices INTEGER
);
CREATE TABLE IF NOT EXISTS assessments (
    device_id TEXT PRIMARY KEY,
    block INTEGER NOT NULL,
    outdated INTEGER NOT NULL,
    at_risk INTEGER NOT NULL,
    unknown INTEGER NOT NULL,
    report TEXT NOT NULL,
    at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS needs (
    device_id TEXT NOT NULL,
    header_hash TEXT NOT NULL,
    product TEXT NOT NULL,
    from_version TEXT NOT NULL,
    to_version TEXT NOT NULL,
    cause TEXT NOT NULL,
    since REAL NOT NULL,
    PRIMARY KEY (device_id, header_hash)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nonces (
    address TEXT NOT NULL,
    nonce TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (address, nonce)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    header_hash TEXT NOT NULL UNIQUE,
    product TEXT NOT NULL,
    to_version TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    state TEXT NOT NULL,
    open_wave INTEGER NOT NULL,
    settings TEXT NOT NULL,
    base_failed INTEGER NOT NULL DEFAULT 0,
    base_reported INTEGER NOT NULL DEFAULT 0,
    target TEXT,
    schedule TEXT,
    halt TEXT,
    cancel TEXT
);
CREATE TABLE IF NOT EXISTS rollout_devices (
    rollout_id INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    wave INTEGER NOT NULL,
    state TEXT NOT NULL,
    command_id TEXT,
    code TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rollout_devices_by_device ON rollout_devices (device_id);
CREATE TABLE IF NOT EXISTS commands (
    command_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    envelope TEXT NOT NULL,
    issued_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    reported INTEGER NOT NULL DEFAULT 0,
    superseded INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS commands_by_device ON commands (device_id, issued_at);
"""

_PRUNE_EVERY = 500  # log inserts between two prunes


class Inventory(CommandStore):
    """The tracker's SQLite inventory; see the module docstring for the schema (rollouts:
    :class:`~.rollout_store.RolloutStore`; commands: :class:`~.command_store.CommandStore`).

    Raises (constructor):
        ConfigError: the file cannot be opened or has another schema version.
        IndexCorruption: the file is damaged or not an inventory.
    """

    def __init__(self, path: Path | str, *, log_limit: int = 100_000, trigger_limit: int = 10_000,
                 wave_key: bytes = b"") -> None:
        self.path = Path(path)
        self.log_limit = log_limit
        self.wave_key = wave_key
        self.trigger_limit = trigger_limit
        self._lock = threading.RLock()
        self._batch = 0  # depth of the batch() open in the thread holding the lock (only it reads this)
        self._inserts = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open inventory {self.path}: {exc}") from exc
        try:
            with self._errors():
                self._open()
        except BaseException:
            self._conn.close()
            raise

    def _errors(self) -> AbstractContextManager[None]:
        return db_errors(self.path, "inventory")

    def _open(self) -> None:
        conn = self._conn
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "devices" not in tables:
            raise IndexCorruption(f"{self.path} is an SQLite database but not a tracker inventory")
        with write_tx(conn):
            for stmt in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                conn.execute(stmt)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(INVENTORY_SCHEMA_VERSION),))
            # version 1 (before rollouts) gained only new tables, created above; version 2 (before
            # operator steering) gains the rollouts' new columns: migrate in place
            have = {r[1] for r in conn.execute("PRAGMA table_info(rollouts)")}
            for col in ("target", "schedule", "halt", "cancel"):
                if col not in have:
                    conn.execute(f"ALTER TABLE rollouts ADD COLUMN {col} TEXT")
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version' AND value IN ('1', '2')",
                         (str(INVENTORY_SCHEMA_VERSION),))
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        if version != str(INVENTORY_SCHEMA_VERSION):
            raise ConfigError(f"inventory {self.path} has schema version {version}, this fwledger reads "
                              f"{INVENTORY_SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; inside :meth:`batch`, a savepoint of the batch's transaction."""
        with self._lock, self._errors(), (savepoint if self._batch else write_tx)(self._conn) as conn:
            yield conn

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every write this thread makes inside is part of one transaction, committed once at the
        end (one fsync), rolled back whole if an exception leaves it; each method's own
        transaction becomes a savepoint of it (rolled back alone when the method raises, as
        before). Reads inside see the batch's writes. Nested batches join the outer one.

        Holds the inventory's lock until the end: every other thread waits for the inventory
        meanwhile. Lock order: a caller takes every other lock it will need inside (the
        tracker's ``_assess_lock``, ``_command_lock``, the pending observations' lock) *before*
        the batch, never inside it, since other threads take those locks and then the
        inventory's. Only leaf locks (the index's, the admissions store's) may be taken inside.
        """
        with self._tx():
            self._batch += 1
            try:
                yield
            finally:
                self._batch -= 1

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors():
            yield self._conn

    # -------------------------------------------------------------- nonces (http_auth.NonceStore)

    def remember(self, address: str, nonce: str, expires_at: float) -> bool:
        """Record a request nonce; False if already recorded (a replay). Purges expired ones."""
        with self._tx() as conn:
            conn.execute("DELETE FROM nonces WHERE expires_at < ?", (time.time() - 1,))
            try:
                conn.execute("INSERT INTO nonces VALUES (?, ?, ?)", (address, nonce, expires_at))
            except sqlite3.IntegrityError:
                return False
        return True

    # -------------------------------------------------------------- devices

    def record_heartbeat(self, address: str, hb: HeartbeatIn, now: float, *, rebind: bool = False,
                         declared: Mapping[str, Any] | None = None) -> tuple[DeviceRow, dict[str, Any]]:
        """Store a device's report and log it (C11.2.b), in one transaction.

        ``rebind``: the operator's admission names ``address`` as the id's key now (a key
        replacement): the row follows it instead of refusing. ``declared``: what the device said
        of itself where the admission overrides it (logged, never used).

        Returns the stored row and what changed: ``{"new": bool, "versions": {product: [old, new]}}``.

        Raises:
            TrackerRefusal: ``device_key_mismatch`` (the id is bound to another key).
        """
        comps = hb.components_json()
        last = hb.last_result.model_dump() if hb.last_result is not None else None
        with self._tx() as conn:
            row = conn.execute("SELECT address, components, first_seen, heartbeats FROM devices WHERE device_id = ?",
                               (hb.device_id,)).fetchone()
            rekeyed = row is not None and row[0] != address
            if rekeyed and not rebind:
                raise TrackerRefusal("device_key_mismatch",
                                     f"device {hb.device_id} is registered with another key")
            if rekeyed:
                conn.execute("UPDATE devices SET address = ? WHERE device_id = ?", (address, hb.device_id))
            old = json.loads(row[1]) if row is not None else {}
            changes = {p: [old.get(p, {}).get("version"), c["version"]] for p, c in comps.items()
                       if old.get(p, {}).get("version") != c["version"]}
            first_seen = float(row[2]) if row is not None else now
            count = int(row[3]) + 1 if row is not None else 1
            conn.execute(
                "INSERT INTO devices VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(device_id) DO UPDATE SET "
                "hardware = excluded.hardware, addons = excluded.addons, location = excluded.location, "
                "components = excluded.components, ready = excluded.ready, last_result = excluded.last_result, "
                "last_seen = excluded.last_seen, heartbeats = excluded.heartbeats",
                (hb.device_id, address, hb.hardware, _dumps(hb.addons), hb.location, _dumps(comps), int(hb.ready),
                 None if last is None else _dumps(last), first_seen, now, count))
            detail: dict[str, Any] = {"ready": hb.ready, "hardware": hb.hardware}
            if row is None:
                detail["registered"] = True
            if rekeyed:
                detail["rekeyed"] = {"from": row[0], "to": address}
            if declared:
                detail["declared"] = dict(declared)
            if changes and row is not None:
                detail["versions"] = changes
            if last is not None:
                detail["last_result"] = last
            self._log(conn, now, hb.device_id, "heartbeat", detail)
        stored = self.device(hb.device_id)
        assert stored is not None  # just written
        return stored, {"new": row is None, "versions": changes if row is not None else {}}

    @staticmethod
    def _row(r: Sequence[Any]) -> DeviceRow:
        return DeviceRow(device_id=r[0], address=r[1], hardware=r[2], addons=json.loads(r[3]), location=r[4],
                         components=json.loads(r[5]), ready=bool(r[6]),
                         last_result=None if r[7] is None else json.loads(r[7]), first_seen=float(r[8]),
                         last_seen=float(r[9]), heartbeats=int(r[10]))

    def forget_device(self, device_id: str, now: float, why: str) -> int:
        """A decommissioned device leaves every rollout it still waits in, its needs, its verdict
        and its outstanding commands (its row and log stay for the record); returns the rollouts
        it left."""
        with self._tx() as conn:
            left = conn.execute("DELETE FROM rollout_devices WHERE device_id = ? AND state IN "
                                "('needed', 'commanded', 'silent')", (device_id,)).rowcount
            conn.execute("DELETE FROM needs WHERE device_id = ?", (device_id,))
            conn.execute("DELETE FROM assessments WHERE device_id = ?", (device_id,))
            conn.execute("UPDATE commands SET superseded = 1 WHERE device_id = ? AND reported = 0", (device_id,))
            if conn.execute("SELECT 1 FROM devices WHERE device_id = ?", (device_id,)).fetchone():
                self._log(conn, now, device_id, "admission", {"status": why, "rollouts_left": left})
        return int(left)

    def device(self, device_id: str) -> DeviceRow | None:
        with self._read() as conn:
            r = conn.execute("SELECT * FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        return None if r is None else self._row(r)

    def devices(self) -> list[DeviceRow]:
        """Every device, by id."""
        with self._read() as conn:
            rows = conn.execute("SELECT * FROM devices ORDER BY device_id").fetchall()
        return [self._row(r) for r in rows]

    # -------------------------------------------------------------- communication log

    def _log(self, conn: sqlite3.Connection, at: float, device_id: str | None, kind: str,
             detail: Mapping[str, Any]) -> None:
        conn.execute("INSERT INTO log (at, device_id, kind, detail) VALUES (?, ?, ?, ?)",
                     (at, device_id, kind, _dumps(detail)))
        self._inserts += 1
        if self._inserts % _PRUNE_EVERY == 0:
            conn.execute("DELETE FROM log WHERE id <= (SELECT MAX(id) FROM log) - ?", (self.log_limit,))

    def log(self, at: float, device_id: str | None, kind: str, detail: Mapping[str, Any]) -> None:
        """Append one entry to the communication log."""
        with self._tx() as conn:
            self._log(conn, at, device_id, kind, detail)

    def communications(self, device_id: str | None = None, *, kind: str | None = None,
                       limit: int = 100) -> list[dict[str, Any]]:
        """The newest log entries first (of one device, of one kind)."""
        where, params = [], []
        if device_id is not None:
            where.append("device_id = ?")
            params.append(device_id)
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        sql = ("SELECT id, at, device_id, kind, detail FROM log "  # noqa: S608 - fixed clauses, bound values
               + (f"WHERE {' AND '.join(where)} " if where else "") + "ORDER BY id DESC LIMIT ?")
        with self._read() as conn:
            rows = conn.execute(sql, (*params, int(limit))).fetchall()
        return [{"id": r[0], "at": r[1], "device_id": r[2], "kind": r[3], "detail": json.loads(r[4])} for r in rows]

    # -------------------------------------------------------------- triggers

    def log_trigger(self, at: float, trigger: TriggerIn, signer: str, *, accepted: bool, code: str | None = None,
                    message: str | None = None, devices: int | None = None) -> int:
        """Record a trigger (its signature verified), accepted or refused; returns its id. The
        oldest rows beyond ``trigger_limit`` go in the same transaction."""
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO triggers (at, source, clause, signer, header_hash, link, version, accepted, code, "
                "message, devices) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (at, trigger.source, CLAUSE[Source(trigger.source)], signer, trigger.header_hash.lower(),
                 trigger.link, trigger.version, int(accepted), code, message, devices))
            trigger_id = int(cur.lastrowid or 0)
            conn.execute("DELETE FROM triggers WHERE id <= ?", (trigger_id - self.trigger_limit,))
            return trigger_id

    def set_trigger_devices(self, trigger_id: int, devices: int) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE triggers SET devices = ? WHERE id = ?", (devices, trigger_id))

    def triggers(self, limit: int = 100) -> list[TriggerRow]:
        """The newest triggers first."""
        with self._read() as conn:
            rows = conn.execute("SELECT id, at, source, clause, signer, header_hash, link, version, accepted, code, "
                                "message, devices FROM triggers ORDER BY id DESC LIMIT ?", (int(limit),)).fetchall()
        return [TriggerRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], bool(r[8]), r[9], r[10], r[11])
                for r in rows]

    # -------------------------------------------------------------- assessments and needs

    def save_assessments(self, items: Sequence[Assessment], cause: str, now: float, *,
                         rollouts: RolloutSettings | None = None, advance: bool = False) -> dict[str, list[str]]:
        """Store verdicts and bring "update needed" in line with them (C11.2.c), in one transaction.

        A release stays needed since the first assessment that needed it (with that cause);
        releases no longer in a device's plan are dropped. With ``rollouts`` (the settings of
        rollouts created now), each device is also enrolled in the rollout of every release it
        needs (created on first need) and dropped from those it no longer needs; each touched
        rollout then takes its automatic decision (``advance``: may open waves; pass it only
        when the whole fleet was assessed, so the canary is never skipped). Returns, per device,
        the header hashes newly recorded as needed.
        """
        added: dict[str, list[str]] = {}
        touched: set[int] = set()
        seen_done: set[int] = set()
        with self._tx() as conn:
            for a in items:
                conn.execute("INSERT OR REPLACE INTO assessments VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (a.device_id, a.block, int(a.outdated), int(a.at_risk), int(a.unknown),
                              _dumps(a.report), now))
                have = {r[0] for r in conn.execute("SELECT header_hash FROM needs WHERE device_id = ?",
                                                   (a.device_id,))}
                want = {u["header_hash"]: u for u in a.upgrades}
                for hh in have - set(want):
                    conn.execute("DELETE FROM needs WHERE device_id = ? AND header_hash = ?", (a.device_id, hh))
                new = [hh for hh in want if hh not in have]
                for hh in new:
                    u = want[hh]
                    conn.execute("INSERT INTO needs VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 (a.device_id, hh, u["product"], u["from_version"], u["to_version"], cause, now))
                if new:
                    added[a.device_id] = new
                    self._log(conn, now, a.device_id, "update_needed",
                              {"cause": cause, "block": a.block,
                               "upgrades": [{k: want[h][k] for k in ("product", "from_version", "to_version",
                                                                     "header_hash")} for h in new]})
                if rollouts is not None:
                    enrolled, observed = self._sync_rollout_devices(conn, a.device_id, want, rollouts, now)
                    touched |= enrolled
                    seen_done |= observed
            for rid in sorted(touched | seen_done):
                # a device seen running the release counts as a result: its wave may then open the
                # next one even on a single heartbeat (only new enrolments wait for a whole-fleet pass)
                self._decide(conn, rid, now, advance=advance or rid in seen_done)
        return added

    def assessment(self, device_id: str) -> dict[str, Any] | None:
        with self._read() as conn:
            r = conn.execute("SELECT block, outdated, at_risk, unknown, report, at FROM assessments "
                             "WHERE device_id = ?", (device_id,)).fetchone()
        if r is None:
            return None
        return {"block": r[0], "outdated": bool(r[1]), "at_risk": bool(r[2]), "unknown": bool(r[3]),
                "report": json.loads(r[4]), "at": r[5]}

    def assessments(self) -> dict[str, dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute("SELECT device_id, block, outdated, at_risk, unknown, report, at FROM assessments "
                                "ORDER BY device_id").fetchall()
        return {r[0]: {"block": r[1], "outdated": bool(r[2]), "at_risk": bool(r[3]), "unknown": bool(r[4]),
                       "report": json.loads(r[5]), "at": r[6]} for r in rows}

    def needs(self, device_id: str | None = None) -> list[dict[str, Any]]:
        """Updates needed, by device then product."""
        sql = "SELECT device_id, header_hash, product, from_version, to_version, cause, since FROM needs"
        params: tuple[Any, ...] = ()
        if device_id is not None:
            sql += " WHERE device_id = ?"
            params = (device_id,)
        with self._read() as conn:
            rows = conn.execute(sql + " ORDER BY device_id, product", params).fetchall()
        return [{"device_id": r[0], "header_hash": r[1], "product": r[2], "from_version": r[3], "to_version": r[4],
                 "cause": r[5], "since": r[6]} for r in rows]

    def counts(self) -> dict[str, int]:
        with self._read() as conn:
            return {t: int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])  # noqa: S608 - fixed names
                    for t in ("devices", "log", "triggers", "needs", "rollouts", "commands")}

    # -------------------------------------------------------------- rollouts: rollout_store.RolloutStore
