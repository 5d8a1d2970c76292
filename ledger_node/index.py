"""The full node's SQLite index, written: :class:`Index`.

:class:`Index` binds to one registry, ingests ranges of registry events together with the cursor
in one transaction, re-verifies every ``Published`` record against what it already holds (see
:mod:`ledger_node.fullnode`), keeps the checkpoints and rolls back to one by replaying its audit
log. Opening, plumbing and every read query come from its base
:class:`~ledger_node.index_queries.IndexQueries`; the schema and value types are in
:mod:`ledger_node.index_types`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from eth_utils import keccak, to_checksum_address

from .errors import ConfigError, IndexCorruption, RecordError
from .index_queries import IndexQueries
from .index_types import (
    ChainEvent,
    Cursor,
    RangeResult,
    Rollback,
    _bytes,
    _canonical_json,
    _header_hash,
    _hex,
    _one_line,
    _unhex,
)
from .record import ZERO_HASH, ReleaseData, ReleaseRecord, Version

__all__ = ["CHECKPOINTS", "Index"]

#: range ends kept as rollback targets (blocks that had registry events are kept besides)
CHECKPOINTS = 256

_INT64_MAX = (1 << 63) - 1
_VERSION_CAP = (1 << 48) - 1  # packed versions use 48 bits (see record.Version)

#: tables rebuilt from the audit log (``events``) by a rollback
_DERIVED_TABLES = ("releases", "heads", "vendors", "hardware", "policies", "admins", "rejected")
#: meta keys set by events (cleared and replayed by a rollback)
_DERIVED_META = ("threshold", "admin_epoch")

# a vendor key (re)activated under a name: VendorAdded, or the new key of VendorRotated
_UPSERT_VENDOR = (
    "INSERT INTO vendors VALUES (?, ?, ?, 1, 0, NULL, ?) ON CONFLICT(address) DO UPDATE SET "
    "name = excluded.name, name_hash = excluded.name_hash, active = 1, revoked = 0, "
    "rotated_to = NULL, block = excluded.block"
)


class Index(IndexQueries):
    """The full node's SQLite index (WAL, ``synchronous=FULL``); safe to share between threads.

    Opening creates the file and schema if needed. An index is bound to one registry (chain id,
    address, deploy block) by the first :meth:`bind` and refuses any other afterwards.
    Several processes may read one index while one writes it (WAL readers never block).
    """

    # -------------------------------------------------------------- binding

    def bind(self, chain_id: int, registry: str, deploy_block: int) -> None:
        """Tie the index to one registry; an index already tied to another is refused.

        Raises:
            ConfigError: the index was made for another chain id, registry address or deployment.
            IndexCorruption: the index is damaged.
        """
        registry = to_checksum_address(registry)
        with self._write() as conn:
            have = {k: self._meta(k) for k in ("chain_id", "registry", "deploy_block")}
            if have["chain_id"] is None:
                self._set_meta(conn, "chain_id", int(chain_id))
                self._set_meta(conn, "registry", registry)
                self._set_meta(conn, "deploy_block", int(deploy_block))
                return
        if (have["chain_id"], have["registry"], have["deploy_block"]) != (
            str(chain_id),
            registry,
            str(deploy_block),
        ):
            raise ConfigError(
                f"index {self.path} was made for registry {have['registry']} "
                f"on chain {have['chain_id']} "
                f"(deployed at block {have['deploy_block']}), not {registry} on chain {chain_id} "
                f"(block {deploy_block}): use another --db"
            )

    def binding(self) -> tuple[int, str, int] | None:
        """(chain id, registry address, deploy block), or None before :meth:`bind`.

        Raises:
            IndexCorruption: the index is damaged.
        """
        with self._read():
            chain, reg, block = (self._meta(k) for k in ("chain_id", "registry", "deploy_block"))
        if chain is None or reg is None or block is None:
            return None
        return int(chain), reg, int(block)

    def cursor(self) -> Cursor | None:
        """The last fully ingested block and its hash; None before the first range.

        Raises:
            IndexCorruption: the index is damaged.
        """
        with self._read():
            block, block_hash = self._meta("cursor_block"), self._meta("cursor_hash")
        if block is None or block_hash is None:
            return None
        return Cursor(int(block), block_hash)

    # -------------------------------------------------------------- ingestion

    def ingest(
        self, from_block: int, to_block: int, to_hash: bytes | str, events: Sequence[ChainEvent]
    ) -> RangeResult:
        """Apply the events of blocks ``from_block..to_block`` and move the cursor, atomically.

        ``from_block`` must be the cursor's next block (the deploy block for the first range).

        Raises:
            ConfigError: the index is not bound, or its cursor is not at ``from_block - 1``
                (another process is syncing the same index).
            IndexCorruption: an event is outside the range or already indexed; the index is damaged.
        """
        if to_block < from_block:
            raise ConfigError(f"empty block range {from_block}-{to_block}")
        to_hash_text = to_hash.lower() if isinstance(to_hash, str) else _hex(to_hash)
        ordered = sorted(events, key=lambda e: (e.block, e.log_index))
        n_releases = n_flagged = 0
        with self._write() as conn:
            deploy = self._meta("deploy_block")
            if deploy is None:
                raise ConfigError(f"index {self.path} is not bound to a registry yet")
            cur = self._meta("cursor_block")
            expected = int(cur) + 1 if cur is not None else int(deploy)
            if from_block != expected:
                raise ConfigError(
                    f"index {self.path} expects block {expected} next, not {from_block}: "
                    "is another process syncing it?"
                )
            for ev in ordered:
                if not from_block <= ev.block <= to_block:
                    raise IndexCorruption(
                        f"event at block {ev.block} is outside range {from_block}-{to_block}"
                    )
                try:
                    conn.execute(
                        "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            ev.block,
                            ev.log_index,
                            ev.tx,
                            ev.block_hash,
                            ev.name,
                            ev.topic0,
                            _canonical_json(ev.args),
                        ),
                    )
                except sqlite3.IntegrityError as exc:
                    raise IndexCorruption(
                        f"event {ev.block}/{ev.log_index} is already indexed"
                    ) from exc
                if ev.name == "Published":
                    accepted = self._apply_published(conn, ev)
                    n_releases += 1
                    n_flagged += 0 if accepted else 1
                elif ev.name is not None:
                    self._apply_other(conn, ev)
            self._set_meta(conn, "cursor_block", to_block)
            self._set_meta(conn, "cursor_hash", to_hash_text)
            self._checkpoint(conn, to_block, to_hash_text)
        return RangeResult(from_block, to_block, len(ordered), n_releases, n_flagged)

    @staticmethod
    def _checkpoint(conn: sqlite3.Connection, block: int, block_hash: str) -> None:
        """Remember a range end as a rollback target; keep the newest :data:`CHECKPOINTS`."""
        conn.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?)", (block, block_hash))
        conn.execute(
            "DELETE FROM checkpoints WHERE block < (SELECT block FROM checkpoints "
            "ORDER BY block DESC LIMIT 1 OFFSET ?)",
            (CHECKPOINTS - 1,),
        )

    # -------------------------------------------------------------- rollback

    def checkpoints(self) -> list[Cursor]:
        """Every block whose hash the index knows, oldest first: the cursor, the recent range ends
        (:data:`CHECKPOINTS`) and every block that had a registry event.

        Raises:
            IndexCorruption: the index is damaged.
        """
        with self._read() as conn:
            rows = conn.execute(
                "SELECT block, hash FROM checkpoints UNION "
                "SELECT block, block_hash FROM events WHERE block_hash != '' "
                "ORDER BY block, 2"
            ).fetchall()
            cur_block, cur_hash = self._meta("cursor_block"), self._meta("cursor_hash")
        points = {(int(b), str(h).lower()) for b, h in rows}
        if cur_block is not None and cur_hash is not None:
            points.add((int(cur_block), cur_hash))
        return [Cursor(b, h) for b, h in sorted(points)]

    def roll_back(self, to: Cursor, *, expect: Cursor | None = None) -> Rollback:
        """Forget every block above ``to.block``: the cursor becomes ``to``, in one transaction.

        The events above it are deleted and, if there were any, every table derived from events
        (releases, heads, vendors, hardware, policies, admins, rejected records and the admin
        meta values) is rebuilt by replaying the remaining audit log, so the index equals one
        synced from scratch up to ``to``. A crash leaves the old index or the new one.

        Args:
            expect: the cursor the caller saw; another one (another writer) is refused.

        Raises:
            ConfigError: ``to`` is not below the cursor, or the cursor is not ``expect``.
            IndexCorruption: the index is damaged (its audit log no longer replays).
        """
        to_hash = to.block_hash.lower()
        with self._write() as conn:
            cur_block, cur_hash = self._meta("cursor_block"), self._meta("cursor_hash")
            if cur_block is None or cur_hash is None:
                raise ConfigError(f"index {self.path} has nothing to roll back")
            if expect is not None and Cursor(int(cur_block), cur_hash) != expect:
                raise ConfigError(
                    f"index {self.path} moved to block {cur_block} meanwhile: "
                    "is another process syncing it?"
                )
            deploy = int(self._meta("deploy_block") or 0)
            if not deploy <= to.block <= int(cur_block):
                raise ConfigError(
                    f"cannot roll index {self.path} back from block {cur_block} to block {to.block}"
                )
            removed, removed_releases = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(name = 'Published'), 0) FROM events WHERE block > ?",
                (to.block,),
            ).fetchone()
            conn.execute("DELETE FROM events WHERE block > ?", (to.block,))
            conn.execute("DELETE FROM checkpoints WHERE block > ?", (to.block,))
            if removed:
                self._replay(conn)
            self._set_meta(conn, "cursor_block", to.block)
            self._set_meta(conn, "cursor_hash", to_hash)
            self._checkpoint(conn, to.block, to_hash)
        return Rollback(int(cur_block), to.block, to_hash, int(removed), int(removed_releases))

    def _replay(self, conn: sqlite3.Connection) -> None:
        """Rebuild every derived table from the audit log (inside the caller's transaction)."""
        for table in _DERIVED_TABLES:
            conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
        conn.execute(
            f"DELETE FROM meta WHERE key IN ({', '.join('?' * len(_DERIVED_META))})",  # noqa: S608
            _DERIVED_META,
        )
        rows = conn.execute(
            "SELECT block, log_index, tx, block_hash, name, topic0, args FROM events "
            "WHERE name IS NOT NULL ORDER BY block, log_index"
        ).fetchall()
        for block, log_index, tx, block_hash, name, topic0, args in rows:
            ev = ChainEvent(block, log_index, tx, name, json.loads(args), block_hash, topic0)
            try:
                if name == "Published":
                    self._apply_published(conn, ev)
                else:
                    self._apply_other(conn, ev)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise IndexCorruption(
                    f"index {self.path}: event {block}/{log_index} ({name}) does not replay: "
                    f"{_one_line(str(exc))}"
                ) from exc

    def _apply_published(self, conn: sqlite3.Connection, ev: ChainEvent) -> bool:
        """Index one ``Published`` event; True if it joined its line, False if flagged/rejected."""
        a = ev.args
        claimed_hash, claimed_line = _bytes(a["header_hash"]), _bytes(a["line"])
        prev_hash, data = _bytes(a["prev_hash"]), _bytes(a["data"])

        def reject(reason: str) -> bool:
            conn.execute(
                "INSERT INTO rejected VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    ev.block,
                    ev.log_index,
                    ev.tx,
                    _hex(claimed_hash),
                    _hex(claimed_line),
                    _hex(prev_hash),
                    data,
                    reason,
                ),
            )
            return False

        try:
            record = ReleaseRecord(prev_hash=prev_hash, data=ReleaseData.decode(data))
        except RecordError as exc:
            return reject(_one_line(str(exc)))
        # decode() proved ``data`` canonical (it equals record.data_bytes), so the header hash
        # can be computed from the event's bytes without encoding the record again
        header_hash = _header_hash(prev_hash, data)
        rec_line = record.line
        dup = conn.execute(
            "SELECT block FROM releases WHERE header_hash = ?", (_hex(header_hash),)
        ).fetchone()
        if dup is not None:
            return reject(
                f"repeats the record {_hex(header_hash)} already published at block {dup[0]}"
            )

        d = record.data
        reasons: list[str] = []
        if header_hash != claimed_hash:
            reasons.append(
                f"event header hash {_hex(claimed_hash)} differs from the recomputed "
                f"{_hex(header_hash)}"
            )
        if rec_line != claimed_line:
            reasons.append(
                f"event product line {_hex(claimed_line)} differs from its vendor and product's"
            )
        if not conn.execute(
            "SELECT 1 FROM vendors WHERE name = ? AND active = 1", (d.vendor_name,)
        ).fetchone():
            reasons.append(f"vendor {d.vendor_name!r} is not an active registered vendor")
        for hw in d.supported_hardware:
            if not conn.execute(
                "SELECT 1 FROM hardware WHERE hw_key = ?", (_hex(keccak(hw.encode())),)
            ).fetchone():
                reasons.append(f"hardware class {hw!r} is not registered")
        head = conn.execute(
            "SELECT header_hash, version, position FROM heads WHERE line = ?", (_hex(rec_line),)
        ).fetchone()
        head_hash = _unhex(head[0]) if head else ZERO_HASH
        if prev_hash != head_hash:
            reasons.append(
                f"previous header hash {_hex(prev_hash)} is not the head of the product line "
                f"({_hex(head_hash)})"
            )
        elif head is not None and d.version.packed <= int(head[1]):
            reasons.append(
                f"version {d.version} is not above the head's {Version.unpack(int(head[1]))}"
            )

        flagged = bool(reasons)
        position = None if flagged else (int(head[2]) + 1 if head else 1)
        conn.execute(
            "INSERT INTO releases (header_hash, line, vendor_name, product, version, version_text, "
            "prev_hash, position, block, tx, log_index, publish_time, data, flagged, flag_reason) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                _hex(header_hash),
                _hex(rec_line),
                d.vendor_name,
                d.product,
                d.version.packed,
                str(d.version),
                _hex(prev_hash),
                position,
                ev.block,
                ev.tx,
                ev.log_index,
                min(d.publish_time, _INT64_MAX),  # the data bytes keep the exact value
                data,
                int(flagged),
                "; ".join(reasons) if flagged else None,
            ),
        )
        if not flagged:
            conn.execute(
                "INSERT INTO heads VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(line) DO UPDATE SET "
                "header_hash = excluded.header_hash, version = excluded.version, "
                "position = excluded.position",
                (
                    _hex(rec_line),
                    d.vendor_name,
                    d.product,
                    _hex(header_hash),
                    d.version.packed,
                    position,
                ),
            )
        return not flagged

    def _apply_other(self, conn: sqlite3.Connection, ev: ChainEvent) -> None:
        a, name, blk = ev.args, ev.name, ev.block
        if name in ("Revoked", "MarkedVulnerable"):
            col, text = (
                ("revoked", "revoke_reason")
                if name == "Revoked"
                else ("vulnerable", "vulnerable_note")
            )
            field = "reason" if name == "Revoked" else "note"
            # only a release of the event's own line (as the contract keys it) is touched
            conn.execute(
                f"UPDATE releases SET {col} = 1, {text} = ? WHERE header_hash = ? AND line = ?",  # noqa: S608
                (str(a[field]), _hex(a["header_hash"]), _hex(a["line"])),
            )
        elif name == "VendorAdded":
            conn.execute(
                _UPSERT_VENDOR,
                (to_checksum_address(a["vendor"]), str(a["name"]), _hex(a["name_hash"]), blk),
            )
        elif name == "VendorRevoked":
            conn.execute(
                "UPDATE vendors SET active = 0, revoked = 1, block = ? WHERE address = ?",
                (blk, to_checksum_address(a["vendor"])),
            )
        elif name == "VendorRotated":
            old, new, name_hash = (
                to_checksum_address(a["old"]),
                to_checksum_address(a["new"]),
                _hex(a["name_hash"]),
            )
            row = conn.execute(
                "SELECT name FROM vendors WHERE name_hash = ? ORDER BY active DESC LIMIT 1",
                (name_hash,),
            ).fetchone()
            vendor_name = str(row[0]) if row else ""
            conn.execute(
                "UPDATE vendors SET active = 0, rotated_to = ?, block = ? WHERE address = ?",
                (new, blk, old),
            )
            conn.execute(
                _UPSERT_VENDOR,
                (new, vendor_name, name_hash, blk),
            )
        elif name == "HardwareAdded":
            conn.execute(
                "INSERT INTO hardware VALUES (?, ?, ?, ?, ?) ON CONFLICT(hw_key) DO UPDATE SET "
                "hw_id = excluded.hw_id, revision = excluded.revision, enc_key = excluded.enc_key, "
                "block = excluded.block",
                (
                    _hex(a["hw_key"]),
                    str(a["hw_id"]),
                    str(int(a["revision"])),
                    _hex(a["enc_key"]),
                    blk,
                ),
            )
        elif name == "PolicySet":
            conn.execute(
                "INSERT INTO policies VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(hw_key, line) DO UPDATE SET hw_id = excluded.hw_id, "
                "vendor_name = excluded.vendor_name, product = excluded.product, "
                "allowed = excluded.allowed, min_version = excluded.min_version, "
                "max_version = excluded.max_version, block = excluded.block",
                (
                    _hex(a["hw_key"]),
                    _hex(a["line"]),
                    str(a["hw_id"]),
                    str(a["vendor_name"]),
                    str(a["product"]),
                    int(bool(a["allowed"])),
                    min(int(a["min_version"]), _VERSION_CAP),
                    min(int(a["max_version"]), _VERSION_CAP),
                    blk,
                ),
            )
        elif name == "AdminAdded":
            conn.execute(
                "INSERT INTO admins VALUES (?, ?, ?) ON CONFLICT(address) DO UPDATE SET "
                "epoch = excluded.epoch, block = excluded.block",
                (to_checksum_address(a["admin"]), int(a["epoch"]), blk),
            )
            self._set_meta(conn, "admin_epoch", int(a["epoch"]))
        elif name == "AdminRemoved":
            conn.execute("DELETE FROM admins WHERE address = ?", (to_checksum_address(a["admin"]),))
            self._set_meta(conn, "admin_epoch", int(a["epoch"]))
        elif name == "ThresholdChanged":
            self._set_meta(conn, "threshold", int(a["threshold"]))
            self._set_meta(conn, "admin_epoch", int(a["epoch"]))
        # Approved and anything else: kept in the audit log only
