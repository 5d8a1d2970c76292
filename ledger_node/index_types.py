"""The full node index's on-disk schema and the value types its queries return.

The SQLite schema (:data:`SCHEMA_VERSION`, the tables, the order of the canonical dump), the
frozen dataclasses the index takes and gives (:class:`ChainEvent` in; :class:`Cursor`,
:class:`RangeResult`, :class:`SyncProgress`, :class:`Rollback`, :class:`SyncReport`,
:class:`IndexedRelease`, :class:`VendorInfo`, :class:`HardwareInfo`, :class:`PolicyInfo`,
:class:`AdminInfo`, :class:`RejectedRecord` out) and the small helpers the index and the node
share (0x-hex, canonical JSON of event arguments, the Table II.1 header hash, one-line texts).
``ledger_node.fullnode`` re-exports the public names.

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
    the ends of the last :data:`~ledger_node.index.CHECKPOINTS` ingested ranges (rollback targets; not part of the
    canonical dump, which does not depend on how the ranges were cut).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import eth_abi
from eth_utils import keccak

from .record import FORMAT_VERSION, HEADER_TYPES, ReleaseRecord, Version

__all__ = [
    "SCHEMA_VERSION",
    "AdminInfo",
    "ChainEvent",
    "Cursor",
    "HardwareInfo",
    "IndexedRelease",
    "PolicyInfo",
    "RangeResult",
    "RejectedRecord",
    "Rollback",
    "SyncProgress",
    "SyncReport",
    "VendorInfo",
]

#: version of the index layout; an index of another version is refused
SCHEMA_VERSION = 1

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
