"""The full node (X.1368 Appendix II): follows the registry's events into a local SQLite index.

Status trackers are built on it. The node reads the registry's logs in bounded block ranges
(``eth_getLogs``), decodes them with the deployment's ABI and applies each range to the
:class:`Index` in **one** SQLite transaction that also moves the cursor (the last fully ingested
block and its hash). A process killed at any instant therefore leaves the index at the end of
some range: nothing is lost (the next run starts at cursor + 1) and nothing is doubled.

The node does not take the chain's word for release records. For every ``Published`` event it
rebuilds the Table II.1 record from the event's data (:meth:`ReleaseRecord.from_event` rules:
canonical data, header hash recomputed, product line recomputed) and re-verifies, against its own
index, what the registry contract enforces: an active vendor, registered hardware classes, a
previous header hash equal to the head of the product line (zero for a line's first record) and
a version strictly above the head's. A record failing any check is stored *flagged* with the
reasons: it is never served by default and never becomes a head. A data section that cannot be
decoded at all, or repeats a header hash already indexed, is kept in the ``rejected`` table.

Reorganisations: before a range is ingested, the chain's block above the cursor must name the
stored cursor hash as its parent (and the cursor block must still be the chain's when nothing is
new). When it does not (a reorganisation, or a node restarted from an older state), the node
rolls the index back to the newest block whose hash it knows and the chain still has at that
height -- the *checkpoints*: the last :data:`CHECKPOINTS` range ends plus every block that had a
registry event -- and syncs forward from there; the rollback (events above that block removed,
every table derived from events rebuilt from the remaining audit log, cursor moved) is one
transaction. When no checkpoint is on the chain any more, :class:`ChainError` is raised (the
index never silently diverges from the chain). ``confirmations`` keeps the node that many blocks
behind the head so that shallow reorganisations never reach the index.

Schema (``SCHEMA_VERSION`` 1; hashes and addresses as 0x-hex text, addresses checksummed):

``meta(key, value)``
    schema_version, chain_id, registry, deploy_block, cursor_block, cursor_hash, threshold,
    admin_epoch.
``events(block, log_index, tx, block_hash, name, topic0, args)``
    every log the registry emitted, the audit log; ``name`` is NULL for an unknown topic (its
    raw topics and data are kept in ``args``), ``args`` is canonical JSON.
``releases(header_hash, line, vendor_name, product, version, version_text, prev_hash, position,
block, tx, log_index, publish_time, data, revoked, revoke_reason, vulnerable, vulnerable_note,
flagged, flag_reason)``
    ``header_hash`` is the hash recomputed from the record; ``position`` counts the record's
    place in its line from 1 (NULL for a flagged record); ``data`` is the record's data section.
``heads(line, vendor_name, product, header_hash, version, position)``
    the newest unflagged release of each line.
``vendors(address, name, name_hash, active, revoked, rotated_to, block)``
``hardware(hw_key, hw_id, revision, enc_key, block)``
``policies(hw_key, line, hw_id, vendor_name, product, allowed, min_version, max_version, block)``
``admins(address, epoch, block)``
``rejected(block, log_index, tx, header_hash, line, prev_hash, data, reason)``
``checkpoints(block, hash)``
    the ends of the last :data:`CHECKPOINTS` ingested ranges (rollback targets; not part of the
    canonical dump, which does not depend on how the ranges were cut).

Run it as ``python -m ledger_node.fullnode --rpc URL --home DIR --db PATH``.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sqlite3
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import eth_abi
import requests
from eth_abi.exceptions import DecodingError
from eth_utils import event_abi_to_log_topic, keccak, to_checksum_address
from web3 import Web3
from web3.exceptions import Web3Exception

from .errors import (
    ChainError,
    ChainUnreachable,
    ConfigError,
    FwledgerError,
    IndexCorruption,
    RecordError,
)
from .sqlstore import db_errors, write_tx

if TYPE_CHECKING:
    from eth_typing import ABIEvent

    from .registry import Deployment

from .record import (
    FORMAT_VERSION,
    HEADER_TYPES,
    ZERO_HASH,
    ReleaseData,
    ReleaseRecord,
    Version,
    line_id,
)

__all__ = [
    "CHECKPOINTS",
    "SCHEMA_VERSION",
    "AdminInfo",
    "ChainEvent",
    "Cursor",
    "EventDecoder",
    "FullNode",
    "HardwareInfo",
    "Index",
    "IndexedRelease",
    "PolicyInfo",
    "RangeResult",
    "RejectedRecord",
    "Rollback",
    "SyncProgress",
    "SyncReport",
    "VendorInfo",
    "main",
]

#: version of the index layout; an index of another version is refused
SCHEMA_VERSION = 1

#: range ends kept as rollback targets (blocks that had registry events are kept besides)
CHECKPOINTS = 256
#: rollbacks one :meth:`FullNode.sync_once` may make before it gives up (a chain still moving)
_MAX_ROLLBACKS = 3

_INT64_MAX = (1 << 63) - 1
_VERSION_CAP = (1 << 48) - 1  # packed versions use 48 bits (see record.Version)
_RECORD_CACHE = 4096  # decoded records kept by an Index for its queries

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    block INTEGER NOT NULL,
    log_index INTEGER NOT NULL,
    tx TEXT NOT NULL,
    block_hash TEXT NOT NULL,
    name TEXT,
    topic0 TEXT,
    args TEXT NOT NULL,
    PRIMARY KEY (block, log_index)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS releases (
    header_hash TEXT PRIMARY KEY,
    line TEXT NOT NULL,
    vendor_name TEXT NOT NULL,
    product TEXT NOT NULL,
    version INTEGER NOT NULL,
    version_text TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    position INTEGER,
    block INTEGER NOT NULL,
    tx TEXT NOT NULL,
    log_index INTEGER NOT NULL,
    publish_time INTEGER NOT NULL,
    data BLOB NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    revoke_reason TEXT,
    vulnerable INTEGER NOT NULL DEFAULT 0,
    vulnerable_note TEXT,
    flagged INTEGER NOT NULL DEFAULT 0,
    flag_reason TEXT,
    UNIQUE (block, log_index)
);
CREATE INDEX IF NOT EXISTS releases_by_line
    ON releases (vendor_name, product, flagged, position, block, log_index);
CREATE TABLE IF NOT EXISTS heads (
    line TEXT PRIMARY KEY,
    vendor_name TEXT NOT NULL,
    product TEXT NOT NULL,
    header_hash TEXT NOT NULL,
    version INTEGER NOT NULL,
    position INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS vendors (
    address TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    name_hash TEXT NOT NULL,
    active INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    rotated_to TEXT,
    block INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hardware (
    hw_key TEXT PRIMARY KEY,
    hw_id TEXT NOT NULL,
    revision TEXT NOT NULL,
    enc_key TEXT NOT NULL,
    block INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS policies (
    hw_key TEXT NOT NULL,
    line TEXT NOT NULL,
    hw_id TEXT NOT NULL,
    vendor_name TEXT NOT NULL,
    product TEXT NOT NULL,
    allowed INTEGER NOT NULL,
    min_version INTEGER NOT NULL,
    max_version INTEGER NOT NULL,
    block INTEGER NOT NULL,
    PRIMARY KEY (hw_key, line)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS admins (
    address TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL,
    block INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rejected (
    block INTEGER NOT NULL,
    log_index INTEGER NOT NULL,
    tx TEXT NOT NULL,
    header_hash TEXT NOT NULL,
    line TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    data BLOB NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (block, log_index)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    block INTEGER PRIMARY KEY,
    hash TEXT NOT NULL
) WITHOUT ROWID;
"""

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

#: table -> ORDER BY of its canonical dump (every primary key, so the order is total)
_CANONICAL_ORDER: dict[str, str] = {
    "meta": "key",
    "events": "block, log_index",
    "releases": "header_hash",
    "heads": "line",
    "vendors": "address",
    "hardware": "hw_key",
    "policies": "hw_key, line",
    "admins": "address",
    "rejected": "block, log_index",
}


# ----------------------------------------------------------------------------- value types


def _hex(value: bytes | str) -> str:
    """0x-hex of bytes; a 0x-hex text (an event argument replayed from the audit log) as is."""
    if isinstance(value, str):
        return "0x" + _unhex(value).hex()
    return "0x" + bytes(value).hex()


def _bytes(value: bytes | str) -> bytes:
    """A ``bytes`` event argument: as decoded from a log, or as 0x-hex from the audit log."""
    return _unhex(value) if isinstance(value, str) else bytes(value)


def _unhex(text: str) -> bytes:
    return bytes.fromhex(text.removeprefix("0x"))


def _jsonable(value: Any) -> Any:
    """Decoded event arguments -> JSON values (bytes as 0x-hex, tuples as lists)."""
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return _hex(bytes(value))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


def _header_hash(prev_hash: bytes, data: bytes) -> bytes:
    """Table II.1 header hash of a record whose data section is ``data`` (canonical bytes)."""
    return keccak(
        eth_abi.encode(list(HEADER_TYPES), [len(data), FORMAT_VERSION, prev_hash, keccak(data)])
    )


def _canonical_json(value: Any) -> str:
    return json.dumps(_jsonable(value), sort_keys=True, separators=(",", ":"))


def _one_line(text: str, limit: int = 240) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


@dataclass(frozen=True)
class ChainEvent:
    """One registry log, decoded: what :meth:`Index.ingest` applies.

    ``name`` is None for a log whose topic the ABI does not know (or that does not decode);
    ``args`` then holds its raw ``topics`` and ``data``.
    """

    block: int
    log_index: int
    tx: str
    name: str | None
    args: Mapping[str, Any]
    block_hash: str = ""
    topic0: str | None = None


@dataclass(frozen=True)
class Cursor:
    """The last fully ingested block and its hash."""

    block: int
    block_hash: str


@dataclass(frozen=True)
class RangeResult:
    """What one committed range added to the index."""

    from_block: int
    to_block: int
    events: int
    releases: int
    flagged: int


@dataclass(frozen=True)
class SyncProgress:
    """Reported after each committed range; ``target`` is the block the sync runs up to."""

    from_block: int
    to_block: int
    target: int
    events: int
    releases: int
    flagged: int

    def line(self) -> str:
        """One human-readable line."""
        return (
            f"fullnode: blocks {self.from_block}-{self.to_block} of {self.target}: "
            f"{self.events} events, {self.releases} releases, {self.flagged} flagged"
        )


@dataclass(frozen=True)
class Rollback:
    """One rollback of the index: the cursor moved from ``from_block`` back to ``to_block``.

    ``events`` registry events (``releases`` of them ``Published``) above ``to_block`` were
    removed with everything derived from them.
    """

    from_block: int
    to_block: int
    to_hash: str
    events: int
    releases: int

    def line(self) -> str:
        """One human-readable line."""
        return (
            f"fullnode: chain reorganised or reset below the cursor: index rolled back from block "
            f"{self.from_block} to block {self.to_block} ({self.events} events, "
            f"{self.releases} releases removed)"
        )


@dataclass(frozen=True)
class SyncReport:
    """Totals of one :meth:`FullNode.sync_once`; ``to_block < from_block`` when nothing was new.

    After a rollback, ``rolled_back_from`` / ``rolled_back_to`` are the cursor blocks before and
    after it (the first and last, when a sync had to roll back more than once) and
    ``events_removed`` / ``releases_removed`` what it took away; ``from_block`` is then the first
    block synced again.
    """

    from_block: int
    to_block: int
    events: int
    releases: int
    flagged: int
    ranges: int = 0
    rolled_back_from: int | None = None
    rolled_back_to: int | None = None
    events_removed: int = 0
    releases_removed: int = 0

    @property
    def rolled_back(self) -> bool:
        """Whether the index was rolled back (its content may have lost events)."""
        return self.rolled_back_to is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "from_block": self.from_block,
            "to_block": self.to_block,
            "events": self.events,
            "releases": self.releases,
            "flagged": self.flagged,
            "ranges": self.ranges,
            "rolled_back_from": self.rolled_back_from,
            "rolled_back_to": self.rolled_back_to,
            "events_removed": self.events_removed,
            "releases_removed": self.releases_removed,
        }


@dataclass(frozen=True)
class IndexedRelease:
    """A release record as the full node indexed it, with where and how it stands.

    ``header_hash`` is the record's own (recomputed) header hash; ``position`` counts from 1 in
    its product line and is None for a flagged record, which never joins the line.
    """

    record: ReleaseRecord
    header_hash: bytes
    line: bytes
    position: int | None
    block: int
    tx: str
    log_index: int
    head: bool
    revoked: bool
    revoke_reason: str | None
    vulnerable: bool
    vulnerable_note: str | None
    flagged: bool
    flag_reason: str | None

    @property
    def vendor_name(self) -> str:
        return self.record.data.vendor_name

    @property
    def product(self) -> str:
        return self.record.data.product

    @property
    def version(self) -> Version:
        return self.record.data.version

    def to_json(self) -> dict[str, Any]:
        """The record's Table II.1 fields (:meth:`ReleaseRecord.to_json`) plus its status."""
        return {
            **self.record.to_json(),
            "position": self.position,
            "block": self.block,
            "tx": self.tx,
            "log_index": self.log_index,
            "head": self.head,
            "revoked": self.revoked,
            "revoke_reason": self.revoke_reason,
            "vulnerable": self.vulnerable,
            "vulnerable_note": self.vulnerable_note,
            "flagged": self.flagged,
            "flag_reason": self.flag_reason,
        }


@dataclass(frozen=True)
class VendorInfo:
    """A vendor key as the registry's events left it."""

    address: str
    name: str
    name_hash: bytes
    active: bool
    revoked: bool
    rotated_to: str | None
    block: int

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "name": self.name,
            "name_hash": _hex(self.name_hash),
            "active": self.active,
            "revoked": self.revoked,
            "rotated_to": self.rotated_to,
            "block": self.block,
        }


@dataclass(frozen=True)
class HardwareInfo:
    """A registered hardware class."""

    hw_id: str
    hw_key: bytes
    revision: int
    enc_key: bytes
    block: int

    def to_json(self) -> dict[str, Any]:
        return {
            "hw_id": self.hw_id,
            "hw_key": _hex(self.hw_key),
            "revision": self.revision,
            "enc_key": _hex(self.enc_key),
            "block": self.block,
        }


@dataclass(frozen=True)
class PolicyInfo:
    """An administrator's update policy for one hardware class and product line.

    Versions are capped at the 48 bits a packed version has, as :class:`registry.Policy` does.
    """

    hw_id: str
    vendor_name: str
    product: str
    line: bytes
    allowed: bool
    min_version: Version
    max_version: Version
    block: int

    def permits(self, version: Version) -> bool:
        return self.allowed and self.min_version <= version <= self.max_version

    def to_json(self) -> dict[str, Any]:
        return {
            "hw_id": self.hw_id,
            "vendor_name": self.vendor_name,
            "product": self.product,
            "line": _hex(self.line),
            "allowed": self.allowed,
            "min_version": str(self.min_version),
            "max_version": str(self.max_version),
            "block": self.block,
        }


@dataclass(frozen=True)
class AdminInfo:
    """An administrator and the admin epoch in which it was added."""

    address: str
    epoch: int
    block: int


@dataclass(frozen=True)
class RejectedRecord:
    """A ``Published`` event that could not become a release row at all."""

    block: int
    log_index: int
    tx: str
    header_hash: bytes
    line: bytes
    reason: str


# ----------------------------------------------------------------------------- the index


def _db_errors(path: Path) -> AbstractContextManager[None]:
    """Map sqlite3 errors to the project's: damage -> IndexCorruption, the rest -> ConfigError."""
    return db_errors(path, "index")


class Index:
    """The full node's SQLite index (WAL, ``synchronous=FULL``); safe to share between threads.

    Opening creates the file and schema if needed. An index is bound to one registry (chain id,
    address, deploy block) by the first :meth:`bind` and refuses any other afterwards.
    Several processes may read one index while one writes it (WAL readers never block).
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
        self._records: OrderedDict[str, ReleaseRecord] = OrderedDict()  # decoded rows, bounded LRU
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

    def __enter__(self) -> Index:
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
        if record is not None:
            self._records.move_to_end(hh)
        else:
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
            self._records[hh] = record
            if len(self._records) > _RECORD_CACHE:
                self._records.popitem(last=False)
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


# ----------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class _EventLayout:
    """How to decode one event: indexed inputs from the topics, the rest from the data."""

    name: str
    indexed: tuple[tuple[str, str], ...]  # (name, type)
    data_names: tuple[str, ...]
    data_types: tuple[str, ...]


_DYNAMIC_TOPIC_TYPES = ("string", "bytes")


class EventDecoder:
    """Decode raw logs with an ABI's events, straight with ``eth_abi`` (strict).

    web3's ``process_log`` costs about 0.9 ms a log here; decoding the ABI directly gives the
    same arguments (addresses checksummed, ``bytesN`` as bytes) at a fraction of that.
    """

    def __init__(self, w3: Web3, address: str, abi: Sequence[Mapping[str, Any]]) -> None:
        """Index the ABI's events by topic.

        Raises:
            ConfigError: the ABI cannot be used (malformed event entries).
        """
        del w3  # kept for the signature; decoding needs only the ABI
        self.address = to_checksum_address(address)
        self._events: dict[bytes, _EventLayout] = {}
        try:
            for entry in abi:
                if entry.get("type") != "event" or entry.get("anonymous", False):
                    continue
                inputs = list(entry.get("inputs", ()))
                for i in inputs:
                    if str(i["type"]).startswith("tuple"):
                        raise ValueError(f"event {entry['name']}: tuple inputs are not supported")
                topic = bytes(event_abi_to_log_topic(cast("ABIEvent", dict(entry))))
                self._events[topic] = _EventLayout(
                    name=str(entry["name"]),
                    indexed=tuple((str(i["name"]), str(i["type"])) for i in inputs if i.get("indexed")),
                    data_names=tuple(str(i["name"]) for i in inputs if not i.get("indexed")),
                    data_types=tuple(str(i["type"]) for i in inputs if not i.get("indexed")),
                )
        except (KeyError, TypeError, ValueError, Web3Exception) as exc:
            raise ConfigError(f"deployment ABI is unusable: {_one_line(str(exc))}") from exc

    @staticmethod
    def _value(typ: str, value: Any) -> Any:
        if typ == "address":
            return to_checksum_address(value)
        if typ.startswith("address["):
            return [to_checksum_address(v) for v in value]
        return value

    def _decode_known(self, layout: _EventLayout, topics: Sequence[bytes], data: bytes) -> dict[str, Any]:
        if len(topics) != 1 + len(layout.indexed):
            raise ValueError("topic count does not match the event")
        args: dict[str, Any] = {}
        for (name, typ), topic in zip(layout.indexed, topics[1:], strict=True):
            if typ in _DYNAMIC_TOPIC_TYPES or typ.endswith("]"):
                args[name] = topic  # a dynamic indexed value is only its hash
            else:
                args[name] = self._value(typ, eth_abi.decode([typ], topic, strict=True)[0])
        values = eth_abi.decode(list(layout.data_types), data, strict=True)
        for name, typ, value in zip(layout.data_names, layout.data_types, values, strict=True):
            args[name] = self._value(typ, value)
        return args

    def decode(self, log: Mapping[str, Any]) -> ChainEvent:
        """One ``eth_getLogs`` entry (as web3 returns it) -> :class:`ChainEvent`.

        Unknown topics, logs of another address and logs that do not decode get ``name=None``
        and keep their raw content.
        """
        topics = [bytes(t) for t in log.get("topics", ())]
        topic0 = topics[0] if topics else None
        block, log_index = int(log["blockNumber"]), int(log["logIndex"])
        tx, block_hash = _hex(bytes(log["transactionHash"])), _hex(bytes(log["blockHash"]))
        data = bytes(log.get("data", b""))
        layout = self._events.get(topic0) if topic0 is not None else None
        same_address = to_checksum_address(log.get("address", self.address)) == self.address
        if layout is not None and topic0 is not None and same_address:
            try:
                args = self._decode_known(layout, topics, data)
                return ChainEvent(block, log_index, tx, layout.name, args, block_hash, _hex(topic0))
            except (DecodingError, ValueError, TypeError, UnicodeDecodeError, OverflowError):
                pass  # recorded raw below, like an unknown topic
        raw = {"topics": [_hex(t) for t in topics], "data": _hex(data)}
        return ChainEvent(
            block, log_index, tx, None, raw, block_hash, None if topic0 is None else _hex(topic0)
        )


# ----------------------------------------------------------------------------- the node


class _Reorganised(Exception):  # an internal signal: never escapes sync_once
    """The chain's block above the cursor does not follow the cursor block."""


#: ranges accepted in a row before the ``eth_getLogs`` span doubles again
_GROW_AFTER = 4


class _RangeRefused(Exception):  # an internal signal: never escapes sync_once
    """The node refused an ``eth_getLogs`` range as too wide or too large an answer."""


#: what nodes and RPC providers answer when an ``eth_getLogs`` range spans too many blocks or
#: would return too many logs (geth, Infura, Alchemy, QuickNode, Erigon, anvil's forks...)
_TOO_MUCH = re.compile(
    r"more than \d+ (results|logs)|too many (results|logs|blocks)|range (is )?too (large|wide|big)"
    r"|exceed(s|ed)? (the )?(max(imum)?|limit)|limit exceeded|response size|response is too big"
    r"|block range|query timeout|10,?000 range",
    re.IGNORECASE,
)


def _range_refused(exc: BaseException) -> bool:
    """Whether ``exc`` is a node's "this ``eth_getLogs`` range is too much" (JSON-RPC -32005
    "limit exceeded", or a message saying so), not a failure of the node."""
    response = getattr(exc, "rpc_response", None)
    error = response.get("error") if isinstance(response, dict) else None
    if isinstance(error, dict) and error.get("code") == -32005:
        return True
    text = str(error.get("message", "")) if isinstance(error, dict) else str(exc)
    return bool(_TOO_MUCH.search(text))


def _transport(exc: BaseException, what: str) -> ChainError:
    if isinstance(
        exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout | ConnectionError
    ):
        return ChainUnreachable(f"cannot reach the Ethereum node while {what}")
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ChainError(_one_line(f"chain error while {what}: {text}"))


class FullNode:
    """Follows one registry into an :class:`Index`.

    Args:
        w3: a connected ``Web3`` (:func:`ledger_node.providers.connect`).
        deployment: the registry's deployment record (address, chain id, deploy block, ABI,
            code hash).
        index: the local index; bound to the deployment on construction.
        confirmations: stay this many blocks behind the head (reorganisations shallower than
            this never reach the index).
        batch_blocks: at most this many blocks per ``eth_getLogs`` call and per transaction.
        check_code: require the code at the registry address to hash to the deployment's code hash.

    Raises:
        ConfigError: bad arguments, the node is on another chain, no registry code at the
            address, or the index belongs to another registry.
        ChainError: the node failed to answer (ChainUnreachable: could not be reached).
        IndexCorruption: the index is damaged.
    """

    def __init__(
        self,
        w3: Web3,
        deployment: Deployment,
        index: Index,
        *,
        confirmations: int = 0,
        batch_blocks: int = 500,
        check_code: bool = True,
    ) -> None:
        if not isinstance(confirmations, int) or confirmations < 0:
            raise ConfigError(
                f"confirmations must be a non-negative integer, not {confirmations!r}"
            )
        if not isinstance(batch_blocks, int) or batch_blocks < 1:
            raise ConfigError(
                f"batch size must be a positive number of blocks, not {batch_blocks!r}"
            )
        self.w3 = w3
        self.deployment = deployment
        self.index = index
        self.confirmations = confirmations
        self.batch_blocks = batch_blocks
        #: the blocks per ``eth_getLogs`` call now: halved while the node refuses a range as
        #: too much (public RPC providers cap ranges and answer sizes), doubled back towards
        #: ``batch_blocks`` after every _GROW_AFTER ranges accepted in a row
        self.span = batch_blocks
        self._accepted = 0
        self.address = to_checksum_address(deployment.address)
        self.decoder = EventDecoder(w3, self.address, deployment.abi)
        chain_id = int(self._rpc("reading the chain id", lambda: w3.eth.chain_id))
        if chain_id != int(deployment.chain_id):
            raise ConfigError(
                f"the node is on chain {chain_id}, the deployment record is for chain "
                f"{deployment.chain_id}"
            )
        if check_code:
            code = bytes(
                self._rpc("reading the registry's code", lambda: w3.eth.get_code(self.address))
            )
            if _hex(keccak(code)) != str(deployment.code_hash).lower():
                raise ConfigError(
                    f"no release registry with the recorded code at {self.address} on chain "
                    f"{chain_id} (chain reset, or the deployment record is stale)"
                )
        index.bind(chain_id, self.address, int(deployment.block))

    # -------------------------------------------------------------- chain access

    def _rpc(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except FwledgerError:
            raise
        except (Web3Exception, requests.exceptions.RequestException, ValueError, OSError) as exc:
            raise _transport(exc, what) from exc

    def _block(self, number: int) -> Mapping[str, Any]:
        block = self._rpc(f"reading block {number}", lambda: self.w3.eth.get_block(number))
        if block is None:
            raise ChainError(f"the node has no block {number}")
        return block  # type: ignore[no-any-return]

    def chain_head(self) -> int:
        """The node's newest block number.

        Raises:
            ChainError: the node failed to answer.
        """
        return int(self._rpc("reading the block number", lambda: self.w3.eth.block_number))

    def _block_hash(self, number: int) -> str:
        return _hex(bytes(self._block(number)["hash"]))

    def _agreement(self, points: Sequence[Cursor], head: int) -> int:
        """The position in ``points`` (oldest first) of the newest one the chain still has, or -1.

        A block the chain has at its height vouches for every older one (each block names its
        parent's hash), so the search gallops down from the newest and then bisects.
        """
        seen: dict[int, bool] = {}

        def on_chain(i: int) -> bool:
            if i not in seen:
                p = points[i]
                seen[i] = p.block <= head and self._block_hash(p.block) == p.block_hash
            return seen[i]

        hi, step, lo = len(points), 1, -1  # points[hi:] are off the chain
        while hi > 0:
            i = max(hi - step, 0)
            if on_chain(i):
                lo = i
                break
            hi, step = i, step * 2
        if lo < 0:
            return -1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if on_chain(mid):
                lo = mid
            else:
                hi = mid
        return lo

    def _roll_back(self, cursor: Cursor, head: int) -> Rollback:
        """Roll the index back to the newest checkpoint still on the chain.

        Raises:
            ChainError: no checkpoint is on the chain any more (history deeper than kept).
        """
        points = self.index.checkpoints()
        i = self._agreement(points, head)
        if i < 0:
            raise ChainError(
                f"the chain was reset or reorganised below the index cursor {cursor.block} "
                f"(head {head}) and none of the {len(points)} blocks the index remembers is on it "
                f"any more: resync into a new index (confirmations now {self.confirmations})"
            )
        return self.index.roll_back(points[i], expect=cursor)

    # -------------------------------------------------------------- syncing

    def sync_once(
        self,
        progress: Callable[[SyncProgress], None] | None = None,
        *,
        stop: threading.Event | None = None,
        on_rollback: Callable[[Rollback], None] | None = None,
    ) -> SyncReport:
        """Ingest every block from the cursor + 1 up to head - confirmations, range by range.

        Each range is committed with the cursor in one transaction; ``progress`` is called after
        each commit. A ``stop`` event set meanwhile ends the sync after the current range.

        When the chain no longer holds the cursor block (a reorganisation, or a node restarted
        from an older state), the index is first rolled back to the newest block it shares with
        the chain (:meth:`Index.roll_back`; ``on_rollback`` hears of it) and the sync goes on
        from there; the report says so (``rolled_back_from``, ``rolled_back_to``,
        ``events_removed``).

        Raises:
            ChainError: the chain was reorganised below every block the index remembers, kept
                reorganising, or answered something unusable.
            ChainUnreachable: the node could not be reached.
            ConfigError: another process moved the index's cursor.
            IndexCorruption: the index is damaged.
        """
        head = self.chain_head()
        target = head - self.confirmations
        cursor = self.index.cursor()
        rollbacks: list[Rollback] = []

        def roll_back(at: Cursor) -> Cursor:
            if len(rollbacks) >= _MAX_ROLLBACKS:
                raise ChainError(
                    f"the chain kept reorganising below the cursor ({len(rollbacks)} rollbacks "
                    f"in one sync): raise confirmations (now {self.confirmations})"
                )
            rb = self._roll_back(at, head)
            rollbacks.append(rb)
            if on_rollback is not None:
                on_rollback(rb)
            return Cursor(rb.to_block, rb.to_hash)

        if cursor is not None and (
            cursor.block > head
            # nothing new: still make sure the indexed block is on the chain
            or (cursor.block >= target and self._block_hash(cursor.block) != cursor.block_hash)
        ):
            cursor = roll_back(cursor)
        start = cursor.block + 1 if cursor is not None else int(self.deployment.block)
        events = releases = flagged = ranges = 0
        first = start
        while first <= target and not (stop is not None and stop.is_set()):
            last = min(first + self.span - 1, target)
            try:
                result, cursor = self._ingest_range(first, last, cursor)
            except _Reorganised:
                assert cursor is not None  # only a range after the cursor can be reorganised
                cursor = roll_back(cursor)
                first = cursor.block + 1
                start = min(start, first)
                continue
            except _RangeRefused as refused:
                if last == first:
                    raise ChainError(_one_line(
                        f"the node refuses the logs of block {first} alone as too much: {refused}")) from None
                self.span, self._accepted = max(1, (last - first + 1) // 2), 0
                continue
            self._accepted += 1
            if self._accepted >= _GROW_AFTER and self.span < self.batch_blocks:
                self.span, self._accepted = min(self.batch_blocks, self.span * 2), 0
            events += result.events
            releases += result.releases
            flagged += result.flagged
            ranges += 1
            if progress is not None:
                progress(
                    SyncProgress(
                        first, last, target, result.events, result.releases, result.flagged
                    )
                )
            first = last + 1
        return SyncReport(
            start,
            first - 1,
            events,
            releases,
            flagged,
            ranges,
            rolled_back_from=rollbacks[0].from_block if rollbacks else None,
            rolled_back_to=rollbacks[-1].to_block if rollbacks else None,
            events_removed=sum(rb.events for rb in rollbacks),
            releases_removed=sum(rb.releases for rb in rollbacks),
        )

    def _ingest_range(
        self, first: int, last: int, cursor: Cursor | None
    ) -> tuple[RangeResult, Cursor]:
        last_block = self._block(last)
        last_hash = _hex(bytes(last_block["hash"]))
        first_block = last_block if first == last else self._block(first)
        if cursor is not None and _hex(bytes(first_block["parentHash"])) != cursor.block_hash:
            raise _Reorganised(cursor.block)
        try:
            logs = self.w3.eth.get_logs({"address": self.address, "fromBlock": first, "toBlock": last})
        except FwledgerError:
            raise
        except (Web3Exception, requests.exceptions.RequestException, ValueError, OSError) as exc:
            if _range_refused(exc):
                raise _RangeRefused(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
            raise _transport(exc, f"reading logs of blocks {first}-{last}") from exc
        known = {first: _hex(bytes(first_block["hash"])), last: last_hash}
        events: list[ChainEvent] = []
        for log in logs:
            if log.get("removed"):
                raise ChainError(
                    f"the node returned a removed log in blocks {first}-{last}: chain reorganising"
                )
            ev = self.decoder.decode(log)
            if not first <= ev.block <= last:
                raise ChainError(
                    f"the node returned a log of block {ev.block} for blocks {first}-{last}"
                )
            if ev.block in known and ev.block_hash != known[ev.block]:
                raise ChainError(
                    f"block {ev.block} changed while it was read: chain reorganising, "
                    f"raise confirmations (now {self.confirmations})"
                )
            events.append(ev)
        return self.index.ingest(first, last, last_hash, events), Cursor(last, last_hash)

    def follow(
        self,
        stop: threading.Event,
        interval: float = 1.0,
        progress: Callable[[SyncProgress], None] | None = None,
        on_error: Callable[[ChainUnreachable], None] | None = None,
        on_rollback: Callable[[Rollback], None] | None = None,
    ) -> int:
        """Call :meth:`sync_once` every ``interval`` seconds until ``stop`` is set.

        An unreachable node is waited for (``on_error`` hears about each failure); a rollback is
        reported to ``on_rollback``; every other error ends the loop. Returns the number of
        rounds run.

        Raises:
            ChainError: as :meth:`sync_once` (a reorganisation below every checkpoint included).
            ConfigError, IndexCorruption: as :meth:`sync_once`.
        """
        rounds = 0
        while not stop.is_set():
            try:
                self.sync_once(progress, stop=stop, on_rollback=on_rollback)
            except ChainUnreachable as exc:
                if on_error is not None:
                    on_error(exc)
            rounds += 1
            stop.wait(interval)
        return rounds

    # -------------------------------------------------------------- queries (the index's)

    def releases(
        self, product: str | None = None, vendor: str | None = None, include_flagged: bool = False
    ) -> list[IndexedRelease]:
        """:meth:`Index.releases`.

        Raises:
            IndexCorruption: the index is damaged.
        """
        return self.index.releases(product, vendor, include_flagged)

    def release(self, header_hash: bytes | str) -> IndexedRelease | None:
        """:meth:`Index.release`.

        Raises:
            IndexCorruption: the index is damaged.
        """
        return self.index.release(header_hash)

    def head(self, vendor: str, product: str) -> IndexedRelease | None:
        """:meth:`Index.head`.

        Raises:
            IndexCorruption: the index is damaged.
        """
        return self.index.head(vendor, product)

    def vendors(self) -> list[VendorInfo]:
        """:meth:`Index.vendors`.

        Raises:
            IndexCorruption: the index is damaged.
        """
        return self.index.vendors()

    def hardware(self) -> list[HardwareInfo]:
        """:meth:`Index.hardware`.

        Raises:
            IndexCorruption: the index is damaged.
        """
        return self.index.hardware()

    def policies(self) -> list[PolicyInfo]:
        """:meth:`Index.policies`.

        Raises:
            IndexCorruption: the index is damaged.
        """
        return self.index.policies()

    def cursor(self) -> Cursor | None:
        """:meth:`Index.cursor`.

        Raises:
            IndexCorruption: the index is damaged.
        """
        return self.index.cursor()

    def stats(self) -> dict[str, Any]:
        """:meth:`Index.stats` plus the chain head and how far behind it the cursor is.

        Raises:
            IndexCorruption: the index is damaged.
            ChainError: the node failed to answer.
        """
        out = self.index.stats()
        head = self.chain_head()
        out["chain_head"] = head
        out["confirmations"] = self.confirmations
        out["behind"] = head - out["cursor_block"] if out["cursor_block"] is not None else None
        return out

    def dump_canonical(self) -> list[tuple[Any, ...]]:
        """:meth:`Index.dump_canonical`.

        Raises:
            IndexCorruption: the index is damaged.
        """
        return self.index.dump_canonical()


# ----------------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ledger_node.fullnode",
        description="Follow the release registry into a local SQLite index.",
    )
    p.add_argument("--rpc", required=True, help="node URL (http://...) or 'embedded'")
    p.add_argument(
        "--home", required=True, type=Path, help="fwledger home holding deployments/<chain>.json"
    )
    p.add_argument("--db", required=True, type=Path, help="the index file (created if missing)")
    p.add_argument(
        "--batch", type=int, default=500, help="blocks per range and transaction (default 500)"
    )
    p.add_argument(
        "--confirmations", type=int, default=0, help="stay N blocks behind the head (default 0)"
    )
    p.add_argument("--follow", action="store_true", help="keep following until SIGINT/SIGTERM")
    p.add_argument(
        "--interval", type=float, default=1.0, help="seconds between rounds with --follow"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Sync (or follow) an index; progress lines go to stderr, a JSON summary to stdout.

    Returns the exit code: 0, or the failing error's ``exit_code``.
    """
    args = _parser().parse_args(argv)

    def say(p: SyncProgress | Rollback) -> None:
        print(p.line(), file=sys.stderr, flush=True)

    from .providers import connect
    from .registry import load_deployment

    index: Index | None = None
    try:
        w3 = connect(args.rpc)
        chain_id = int(w3.eth.chain_id)
        dep = load_deployment(args.home, chain_id)
        index = Index(args.db)
        node = FullNode(w3, dep, index, confirmations=args.confirmations, batch_blocks=args.batch)
        if args.follow:
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            node.follow(
                stop,
                args.interval,
                say,
                on_error=lambda e: print(f"fullnode: {e} (retrying)", file=sys.stderr, flush=True),
                on_rollback=say,
            )
        else:
            report = node.sync_once(say, on_rollback=say)
            print(json.dumps(report.to_json()))
        return 0
    except FwledgerError as exc:
        print(f"fullnode: error: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        if index is not None:
            index.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
