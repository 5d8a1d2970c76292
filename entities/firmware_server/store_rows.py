"""The firmware server's database schema and the rows it reads back (:mod:`.store` keeps the data
folder: objects, temp files and the queries)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from ledger_node.errors import ConfigError
from ledger_node.record import Version

from .policy import DeviceFacts, ImageFacts

__all__ = ["BAR_WITHDRAW_PREFIX", "SCHEMA_VERSION", "DeviceTaken", "DownloadRow", "ImageRow"]

#: ``bar_history`` was added without a version bump: ``CREATE TABLE IF NOT EXISTS`` adds it to an
#: older data folder on open (bars made before it have no history row)
SCHEMA_VERSION = 1

#: the withdraw reason of an image withdrawn because its vendor was barred (not for itself)
BAR_WITHDRAW_PREFIX = "vendor barred: "

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS images (
    digest TEXT PRIMARY KEY,
    file_hash TEXT NOT NULL,
    header_json TEXT NOT NULL,
    vendor_address TEXT NOT NULL,
    vendor_name TEXT NOT NULL,
    product TEXT NOT NULL,
    version INTEGER NOT NULL,
    size INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('unpublished', 'published', 'withdrawn')),
    header_hash TEXT UNIQUE,
    uploaded_at REAL NOT NULL,
    published_at REAL,
    withdrawn_at REAL,
    withdraw_reason TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS images_by_file ON images (file_hash);
CREATE INDEX IF NOT EXISTS images_by_line ON images (vendor_name, product, version);
CREATE TABLE IF NOT EXISTS barred (
    vendor_name TEXT PRIMARY KEY,
    address TEXT,
    reason TEXT NOT NULL,
    at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bar_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    vendor_name TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('barred', 'lifted')),
    address TEXT,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    address TEXT PRIMARY KEY,
    device_id TEXT NOT NULL UNIQUE,
    hardware TEXT NOT NULL,
    location TEXT,
    assigned_region TEXT,
    registered_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS device_addons (
    address TEXT NOT NULL,
    board TEXT NOT NULL,
    PRIMARY KEY (address, board)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nonces (
    address TEXT NOT NULL,
    nonce TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (address, nonce)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS nonces_by_expiry ON nonces (expires_at);
CREATE TABLE IF NOT EXISTS downloads (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    address TEXT NOT NULL,
    device_id TEXT,
    target TEXT NOT NULL,
    what TEXT NOT NULL,
    header_hash TEXT,
    vendor_name TEXT,
    product TEXT,
    version INTEGER,
    outcome TEXT NOT NULL,
    code TEXT,
    rule TEXT,
    range_start INTEGER,
    range_end INTEGER,
    bytes INTEGER NOT NULL DEFAULT 0,
    client_ip TEXT
);
CREATE INDEX IF NOT EXISTS downloads_by_line ON downloads (vendor_name, product, outcome);
CREATE TABLE IF NOT EXISTS location_rules (
    position INTEGER PRIMARY KEY,
    rule TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS known_bad (
    file_hash TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    url TEXT NOT NULL,
    header_hash TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL
);
"""

_IMAGE_COLS = ("digest, file_hash, header_json, vendor_address, vendor_name, product, version, size, state, "
               "header_hash, uploaded_at, published_at, withdrawn_at, withdraw_reason")


def _hex(b: bytes) -> str:
    return "0x" + bytes(b).hex()


def _unhex(text: str) -> bytes:
    return bytes.fromhex(text.removeprefix("0x"))


class DeviceTaken(ConfigError):
    """The device id is already registered by another key."""


@dataclass(frozen=True)
class ImageRow:
    """One upload, by its record digest."""

    digest: bytes
    file_hash: bytes
    header_json: dict[str, Any]
    vendor_address: str
    vendor_name: str
    product: str
    version: Version
    size: int
    state: Literal["unpublished", "published", "withdrawn"]
    header_hash: bytes | None
    uploaded_at: float
    published_at: float | None
    withdrawn_at: float | None
    withdraw_reason: str | None

    def facts(self) -> ImageFacts:
        return ImageFacts(self.digest, self.file_hash, self.state, self.vendor_name, self.product, self.version,
                          self.header_hash, self.withdraw_reason)

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": _hex(self.digest), "file_hash": _hex(self.file_hash),
            "header_hash": _hex(self.header_hash) if self.header_hash else None,
            "vendor_name": self.vendor_name, "vendor_address": self.vendor_address, "product": self.product,
            "version": str(self.version), "size": self.size, "state": self.state,
            "uploaded_at": self.uploaded_at, "published_at": self.published_at,
            "withdrawn_at": self.withdrawn_at, "withdraw_reason": self.withdraw_reason,
        }


@dataclass(frozen=True)
class DownloadRow:
    id: int
    at: float
    address: str
    device_id: str | None
    target: str
    what: str
    header_hash: str | None
    product: str | None
    version: str | None
    outcome: str
    code: str | None
    rule: dict[str, Any] | None
    range_start: int | None
    range_end: int | None
    bytes: int
    client_ip: str | None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _image(row: Sequence[Any]) -> ImageRow:
    return ImageRow(
        digest=_unhex(row[0]), file_hash=_unhex(row[1]), header_json=json.loads(row[2]), vendor_address=row[3],
        vendor_name=row[4], product=row[5], version=Version.unpack(int(row[6])), size=int(row[7]),
        state=cast(Literal["unpublished", "published", "withdrawn"], row[8]),
        header_hash=_unhex(row[9]) if row[9] else None, uploaded_at=row[10], published_at=row[11],
        withdrawn_at=row[12], withdraw_reason=row[13])


def _device(row: Sequence[Any]) -> DeviceFacts:
    return DeviceFacts(address=row[0], device_id=row[1], hardware=row[2], location=row[3], assigned_region=row[4])
