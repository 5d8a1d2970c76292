"""The full node index opened and read: :class:`IndexQueries`, the base of :class:`~ledger_node.index.Index`.

Opening creates the SQLite file and schema (:mod:`ledger_node.index_types`) if needed and checks
them; the plumbing gives one write transaction or one consistent read snapshot. The queries
(releases, heads, vendors, hardware, policies, admins, rejected records, the audit log, stats,
the canonical dump) only read; everything that writes (binding, ingestion, rollback, applying
events) is :class:`~ledger_node.index.Index`'s.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Self

from .errors import ConfigError, IndexCorruption, RecordError
from .index_types import (
    _CANONICAL_ORDER,
    _SCHEMA,
    SCHEMA_VERSION,
    AdminInfo,
    HardwareInfo,
    IndexedRelease,
    PolicyInfo,
    RejectedRecord,
    VendorInfo,
    _header_hash,
    _hex,
    _one_line,
    _unhex,
)
from .lru import LRU
from .record import ReleaseData, ReleaseRecord, Version, line_id
from .sqlstore import db_errors, write_tx

__all__ = ["IndexQueries"]

_RECORD_CACHE = 4096  # decoded records kept by an Index for its queries


def _db_errors(path: Path) -> AbstractContextManager[None]:
    """Map sqlite3 errors to the project's: damage -> IndexCorruption, the rest -> ConfigError."""
    return db_errors(path, "index")


class IndexQueries:
    """An open index, read side: the connection, its plumbing and every query.

    :class:`~ledger_node.index.Index` adds the writes; open that one.
    """

    def __init__(self, path: Path | str, *, check: bool = True) -> None:
        """Open (or create) the index at ``path``.

        Args:
            check: run SQLite's ``quick_check`` on open.

        Raises:
            IndexCorruption: the file is not an fwledger index or is damaged.
            ConfigError: the file cannot be opened or created, or has another schema version.
        """
        self.path = Path(path)
        self._lock = threading.RLock()
        self._records: LRU[str, ReleaseRecord] = LRU(_RECORD_CACHE)  # decoded rows
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the folder of index {self.path}: {exc.strerror or exc}"
            ) from exc
        with _db_errors(self.path):
            try:
                self._conn = sqlite3.connect(
                    self.path, timeout=30.0, isolation_level=None, check_same_thread=False
                )
            except sqlite3.Error as exc:
                raise ConfigError(f"cannot open index {self.path}: {_one_line(str(exc))}") from exc
            try:
                self._open(check)
            except BaseException:
                self._conn.close()
                raise

    def _open(self, check: bool) -> None:
        conn = self._conn
        conn.execute("PRAGMA busy_timeout = 30000")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise ConfigError(f"index {self.path}: cannot switch to WAL journaling (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        if check:
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
            if result != "ok":
                raise IndexCorruption(f"index {self.path} is damaged: {_one_line(str(result))}")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "meta" not in tables:
            raise IndexCorruption(f"{self.path} is an SQLite database but not an fwledger index")
        if not tables:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # re-check inside the write lock: another process may have created it meanwhile
                if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
                    for stmt in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                        conn.execute(stmt)
                    conn.execute(
                        "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        version = self._meta("schema_version")
        if version is None:
            raise IndexCorruption(f"index {self.path} has no schema version")
        if version != str(SCHEMA_VERSION):
            raise ConfigError(
                f"index {self.path} has schema version {version}, this fwledger "
                f"reads {SCHEMA_VERSION}: delete it and sync again"
            )
        # added within schema version 1: an index made before it gets the (empty) table
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'checkpoints'").fetchone():
            conn.execute(
                "CREATE TABLE IF NOT EXISTS checkpoints "
                "(block INTEGER PRIMARY KEY, hash TEXT NOT NULL) WITHOUT ROWID"
            )

    # -------------------------------------------------------------- plumbing

    def close(self) -> None:
        """Close the database connection (idempotent)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT), rolled back on any exception."""
        with self._lock, _db_errors(self.path), write_tx(self._conn) as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several SELECTs."""
        with self._lock, _db_errors(self.path):
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                if self._conn.in_transaction:
                    self._conn.execute("COMMIT")

    def _meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def _set_meta(conn: sqlite3.Connection, key: str, value: object) -> None:
        conn.execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, str(value)),
        )

    # -------------------------------------------------------------- queries

    _RELEASE_COLS = (
        "header_hash, line, prev_hash, position, block, tx, log_index, data, revoked, "
        "revoke_reason, vulnerable, vulnerable_note, flagged, flag_reason"
    )

    def _release_from_row(self, conn: sqlite3.Connection, row: Sequence[Any]) -> IndexedRelease:
        (
            hh,
            line,
            prev,
            position,
            block,
            tx,
            log_index,
            data,
            revoked,
            revoke_reason,
            vulnerable,
            vulnerable_note,
            flagged,
            flag_reason,
        ) = row
        record = self._records.get(hh)
        if record is None:
            try:
                record = ReleaseRecord(prev_hash=_unhex(prev), data=ReleaseData.decode(bytes(data)))
            except (RecordError, ValueError) as exc:
                raise IndexCorruption(
                    f"index {self.path}: stored release {hh} does not decode"
                ) from exc
            if (
                _hex(_header_hash(record.prev_hash, bytes(data))) != hh
            ):  # decode() proved data canonical
                raise IndexCorruption(
                    f"index {self.path}: stored release {hh} does not match its data"
                )
            self._records.put(hh, record)
        is_head = (
            not flagged
            and conn.execute(
                "SELECT 1 FROM heads WHERE line = ? AND header_hash = ?", (line, hh)
            ).fetchone()
            is not None
        )
        return IndexedRelease(
            record=record,
            header_hash=_unhex(hh),
            line=_unhex(line),
            position=position,
            block=block,
            tx=tx,
            log_index=log_index,
            head=is_head,
            revoked=bool(revoked),
            revoke_reason=revoke_reason,
            vulnerable=bool(vulnerable),
            vulnerable_note=vulnerable_note,
            flagged=bool(flagged),
            flag_reason=flag_reason,
        )

    def releases(
        self, product: str | None = None, vendor: str | None = None, include_flagged: bool = False
    ) -> list[IndexedRelease]:
        """Releases, ordered by line (vendor name, product) then position; flagged ones (only
        with ``include_flagged``) after their line's, in chain order.

        Raises:
            IndexCorruption: the index is damaged.
        """
        where, params = [], []
        if product is not None:
            where.append("product = ?")
            params.append(product)
        if vendor is not None:
            where.append("vendor_name = ?")
            params.append(vendor)
        if not include_flagged:
            where.append("flagged = 0")
        sql = (
            f"SELECT {self._RELEASE_COLS} FROM releases "  # noqa: S608 - fixed column list
            + (f"WHERE {' AND '.join(where)} " if where else "")
            + "ORDER BY vendor_name, product, flagged, position, block, log_index"
        )
        with self._read() as conn:
            return [
                self._release_from_row(conn, row) for row in conn.execute(sql, params).fetchall()
            ]

    def release(self, header_hash: bytes | str) -> IndexedRelease | None:
        """One release by header hash (flagged ones included, with their flag), or None.

        Raises:
            IndexCorruption: the index is damaged.
        """
        key = header_hash.lower() if isinstance(header_hash, str) else _hex(header_hash)
        if not key.startswith("0x"):
            key = "0x" + key
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {self._RELEASE_COLS} FROM releases WHERE header_hash = ?",  # noqa: S608
                (key,),
            ).fetchone()
            return None if row is None else self._release_from_row(conn, row)

    def header_hashes_with_prefix(self, prefix: str, limit: int = 10) -> list[bytes]:
        """Header hashes of indexed releases (flagged ones included) that start with ``prefix``
        (hex digits, ``0x`` optional, any case), in order; at most ``limit``.

        Raises:
            ValueError: ``prefix`` is not 1 to 64 hex digits.
            IndexCorruption: the index is damaged.
        """
        digits = prefix.lower().removeprefix("0x")
        if not 0 < len(digits) <= 64 or any(c not in "0123456789abcdef" for c in digits):
            raise ValueError(f"{prefix!r} is not a prefix of hex digits")
        low = "0x" + digits  # stored as 0x + 64 lowercase hex digits: the prefix's range ends before 'g'
        with self._read() as conn:
            rows = conn.execute(
                "SELECT header_hash FROM releases WHERE header_hash >= ? AND header_hash < ? "
                "ORDER BY header_hash LIMIT ?",
                (low, low + "g", int(limit)),
            ).fetchall()
        return [_unhex(r[0]) for r in rows]

    def head(self, vendor: str, product: str) -> IndexedRelease | None:
        """The newest unflagged release of a product line (revoked or not), or None.

        Raises:
            IndexCorruption: the index is damaged.
        """
        with self._read() as conn:
            row = conn.execute(
                "SELECT header_hash FROM heads WHERE line = ?", (_hex(line_id(vendor, product)),)
            ).fetchone()
        return None if row is None else self.release(row[0])

    def heads(self) -> list[IndexedRelease]:
        """The head of every product line, ordered by vendor name and product.

        Raises:
            IndexCorruption: the index is damaged.
        """
        with self._read() as conn:
            rows = conn.execute(
                "SELECT header_hash FROM heads ORDER BY vendor_name, product"
            ).fetchall()
        out = [self.release(r[0]) for r in rows]
        return [r for r in out if r is not None]

    def vendors(self) -> list[VendorInfo]:
        """Every vendor key seen, ordered by name then address.

        Raises:
            IndexCorruption: the index is damaged.
        """
        with self._read() as conn:
            rows = conn.execute(
                "SELECT address, name, name_hash, active, revoked, rotated_to, block "
                "FROM vendors ORDER BY name, address"
            ).fetchall()
        return [
            VendorInfo(r[0], r[1], _unhex(r[2]), bool(r[3]), bool(r[4]), r[5], r[6]) for r in rows
        ]

    def hardware(self) -> list[HardwareInfo]:
        """Registered hardware classes, ordered by id.

        Raises:
            IndexCorruption: the index is damaged.
        """
        with self._read() as conn:
            rows = conn.execute(
                "SELECT hw_id, hw_key, revision, enc_key, block FROM hardware ORDER BY hw_id"
            ).fetchall()
        return [HardwareInfo(r[0], _unhex(r[1]), int(r[2]), _unhex(r[3]), r[4]) for r in rows]

    def policies(self) -> list[PolicyInfo]:
        """Update policies, ordered by hardware id, vendor name and product.

        Raises:
            IndexCorruption: the index is damaged.
        """
        with self._read() as conn:
            rows = conn.execute(
                "SELECT hw_id, vendor_name, product, line, allowed, min_version, max_version, "
                "block FROM policies ORDER BY hw_id, vendor_name, product"
            ).fetchall()
        return [
            PolicyInfo(
                r[0],
                r[1],
                r[2],
                _unhex(r[3]),
                bool(r[4]),
                Version.unpack(r[5]),
                Version.unpack(r[6]),
                r[7],
            )
            for r in rows
        ]

    def admins(self) -> tuple[list[AdminInfo], int | None]:
        """The current administrators (by address) and the approval threshold k.

        Raises:
            IndexCorruption: the index is damaged.
        """
        with self._read() as conn:
            rows = conn.execute(
                "SELECT address, epoch, block FROM admins ORDER BY address"
            ).fetchall()
            k = self._meta("threshold")
        return [AdminInfo(*r) for r in rows], (None if k is None else int(k))

    def rejected(self) -> list[RejectedRecord]:
        """``Published`` events that could not be indexed as releases, in chain order.

        Raises:
            IndexCorruption: the index is damaged.
        """
        with self._read() as conn:
            rows = conn.execute(
                "SELECT block, log_index, tx, header_hash, line, reason FROM rejected "
                "ORDER BY block, log_index"
            ).fetchall()
        return [RejectedRecord(r[0], r[1], r[2], _unhex(r[3]), _unhex(r[4]), r[5]) for r in rows]

    def events(
        self, name: str | None = None
    ) -> list[tuple[int, int, str, str | None, dict[str, Any]]]:
        """The audit log: (block, log_index, tx, name, args) in chain order; optionally one name.

        Raises:
            IndexCorruption: the index is damaged.
        """
        sql = "SELECT block, log_index, tx, name, args FROM events"
        params: tuple[Any, ...] = ()
        if name is not None:
            sql += " WHERE name = ?"
            params = (name,)
        with self._read() as conn:
            rows = conn.execute(sql + " ORDER BY block, log_index", params).fetchall()
        return [(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    def stats(self) -> dict[str, Any]:
        """Counts and binding, for ``fwledger node status``.

        Raises:
            IndexCorruption: the index is damaged.
        """

        def count(conn: sqlite3.Connection, sql: str) -> int:
            return int(conn.execute(sql).fetchone()[0])

        with self._read() as conn:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            out: dict[str, Any] = {
                "chain_id": int(meta["chain_id"]) if "chain_id" in meta else None,
                "registry": meta.get("registry"),
                "deploy_block": int(meta["deploy_block"]) if "deploy_block" in meta else None,
                "cursor_block": int(meta["cursor_block"]) if "cursor_block" in meta else None,
                "cursor_hash": meta.get("cursor_hash"),
                "events": count(conn, "SELECT COUNT(*) FROM events"),
                "unknown_events": count(conn, "SELECT COUNT(*) FROM events WHERE name IS NULL"),
                "releases": count(conn, "SELECT COUNT(*) FROM releases WHERE flagged = 0"),
                "flagged": count(conn, "SELECT COUNT(*) FROM releases WHERE flagged = 1"),
                "rejected": count(conn, "SELECT COUNT(*) FROM rejected"),
                "revoked": count(conn, "SELECT COUNT(*) FROM releases WHERE revoked = 1"),
                "vulnerable": count(conn, "SELECT COUNT(*) FROM releases WHERE vulnerable = 1"),
                "lines": count(conn, "SELECT COUNT(*) FROM heads"),
                "vendors": count(conn, "SELECT COUNT(*) FROM vendors WHERE active = 1"),
                "hardware": count(conn, "SELECT COUNT(*) FROM hardware"),
                "policies": count(conn, "SELECT COUNT(*) FROM policies"),
                "admins": count(conn, "SELECT COUNT(*) FROM admins"),
                "threshold": int(meta["threshold"]) if "threshold" in meta else None,
                "schema_version": int(meta.get("schema_version", 0)),
            }
        return out

    def dump_canonical(self) -> list[tuple[Any, ...]]:
        """Every row of every table, prefixed by the table name, in a deterministic order.

        Two indexes of the same chain compare equal whatever way they were built.

        Raises:
            IndexCorruption: the index is damaged.
        """
        out: list[tuple[Any, ...]] = []
        with self._read() as conn:
            for table, order in _CANONICAL_ORDER.items():
                for row in conn.execute(f"SELECT * FROM {table} ORDER BY {order}"):  # noqa: S608
                    out.append(
                        (
                            table,
                            *(bytes(v) if isinstance(v, bytes | memoryview) else v for v in row),
                        )
                    )
        return out
