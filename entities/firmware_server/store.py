"""The firmware server's storage: content-addressed payloads and SQLite metadata.

Layout of the data folder:

``objects/<sha256 hex>``
    a stored payload (the bundle's ciphertext), named by its own SHA-256 (the record's file
    hash), written atomically: bytes go to ``tmp/`` (never listed, never served), are fsynced,
    then ``os.replace``d into ``objects/`` and the folder fsynced, and only then is the image row
    committed. A crash at any instant leaves either nothing visible or a complete object; on
    open, everything in ``tmp/`` is deleted and any object no row refers to is removed.
``tmp/``
    uploads in flight.
``server.sqlite``
    WAL, ``synchronous=FULL``. Tables: ``images`` (one per upload digest: state unpublished,
    published or withdrawn, header JSON), ``barred`` (vendor names barred now),
    ``bar_history`` (every bar and every lift of one, with its reason), ``devices``, ``nonces``
    (signed-request replay window), ``downloads`` (served and refused, with the refusing rule),
    ``location_rules``, ``known_bad``, ``notifications``, ``meta``.

All methods are safe to call from several threads (one connection behind a lock).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ledger_node.errors import ConfigError, IndexCorruption
from ledger_node.record import Version
from ledger_node.sqlstore import write_tx

from .policy import DeviceFacts, LocationRule
from .store_rows import (
    _IMAGE_COLS,
    _SCHEMA,
    BAR_WITHDRAW_PREFIX,
    SCHEMA_VERSION,
    DeviceTaken,
    DownloadRow,
    ImageRow,
    _device,
    _hex,
    _image,
    _unhex,
)

__all__ = ["BAR_WITHDRAW_PREFIX", "SCHEMA_VERSION", "DeviceTaken", "DownloadRow", "ImageRow", "Store"]


class Store:
    """The data folder: objects, temp files and ``server.sqlite``.

    Opening cleans up after a crash: temp files are deleted and objects no image row refers
    to (a crash between the rename and the commit) are removed.

    Raises:
        ConfigError: the folder or database cannot be created or opened, or has another schema.
        IndexCorruption: the database is damaged.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.objects_dir = self.data_dir / "objects"
        self.tmp_dir = self.data_dir / "tmp"
        self._lock = threading.RLock()
        try:
            for d in (self.data_dir, self.objects_dir, self.tmp_dir):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the server data folder {self.data_dir}: {exc.strerror or exc}") from exc
        self._lockfile = self._take_lock()
        path = self.data_dir / "server.sqlite"
        try:
            self._conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA busy_timeout = 30000")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            with self._tx() as conn:
                for stmt in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                    conn.execute(stmt)
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if row is None:
                    conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                elif row[0] != str(SCHEMA_VERSION):
                    raise ConfigError(f"{path} has schema version {row[0]}, this server reads {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            os.close(self._lockfile)
            raise IndexCorruption(f"server database {path} is damaged: {exc}") from exc
        except ConfigError:
            os.close(self._lockfile)
            raise
        self.removed_on_open = self._recover()

    # ------------------------------------------------------------------ plumbing

    def _take_lock(self) -> int:
        """One server per data folder: its start-up clean-up would delete another's uploads in flight."""
        path = self.data_dir / "server.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot open {path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError(f"data folder {self.data_dir} is in use by another firmware server") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def close(self) -> None:
        """Close the database and release the data folder (idempotent)."""
        with self._lock:
            self._conn.close()
            if self._lockfile >= 0:
                os.close(self._lockfile)
                self._lockfile = -1

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, write_tx(self._conn) as conn:
            yield conn

    def _q(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _recover(self) -> dict[str, int]:
        """Delete temp files and objects no row refers to; returns how many of each."""
        tmp = orphans = 0
        for p in self.tmp_dir.iterdir():
            try:
                p.unlink()
                tmp += 1
            except IsADirectoryError:
                continue
            except FileNotFoundError:
                continue
        live = {r[0][2:] for r in self._q("SELECT DISTINCT file_hash FROM images WHERE state != 'withdrawn'")}
        for p in self.objects_dir.iterdir():
            if p.name not in live:
                try:
                    p.unlink()
                    orphans += 1
                except (FileNotFoundError, IsADirectoryError):
                    continue
        if tmp or orphans:
            _fsync_dir(self.objects_dir)
        return {"tmp": tmp, "orphans": orphans}

    def _keep_object(self, temp_payload: Path, file_hash: bytes) -> None:
        """Move a verified payload to its content address (durably), or drop it when that object
        is already stored."""
        target = self.object_path(file_hash)
        if target.exists():
            temp_payload.unlink(missing_ok=True)
        else:
            os.replace(temp_payload, target)
            _fsync_dir(self.objects_dir)

    def object_path(self, file_hash: bytes) -> Path:
        return self.objects_dir / bytes(file_hash).hex()

    def new_temp(self) -> tuple[int, Path]:
        """A fresh temp file in ``tmp/`` (fd, path): what an upload streams into.

        Raises:
            OSError: cannot create it.
        """
        import tempfile

        fd, name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=self.tmp_dir)
        return fd, Path(name)

    # ------------------------------------------------------------------ nonces (http_auth.NonceStore)

    def remember(self, address: str, nonce: str, expires_at: float) -> bool:
        """Record a request nonce; False if already recorded (a replay). Purges expired ones."""
        now = time.time()
        with self._tx() as conn:
            conn.execute("DELETE FROM nonces WHERE expires_at < ?", (now - 1,))
            try:
                conn.execute("INSERT INTO nonces VALUES (?, ?, ?)", (address, nonce, expires_at))
            except sqlite3.IntegrityError:
                return False
        return True

    # ------------------------------------------------------------------ images

    def add_image(self, *, digest: bytes, file_hash: bytes, header_json: dict[str, Any], vendor_address: str,
                  vendor_name: str, product: str, version: Version, size: int, temp_payload: Path,
                  header_hash: bytes | None) -> tuple[ImageRow, bool]:
        """Move a verified payload into ``objects/`` and record the image; (row, created).

        The temp file must already be fsynced. An upload of a digest already stored is not
        stored twice (the temp file is dropped, ``created`` False).

        Raises:
            OSError: the rename or folder fsync failed (the temp file is left for the caller).
        """
        with self._lock:
            existing = self.image_by_digest(digest)
            if existing is not None:
                temp_payload.unlink(missing_ok=True)
                return existing, False
            self._keep_object(temp_payload, file_hash)
            now = time.time()
            state = "published" if header_hash is not None else "unpublished"
            with self._tx() as conn:
                conn.execute(
                    f"INSERT INTO images ({_IMAGE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",  # noqa: S608
                    (_hex(digest), _hex(file_hash), json.dumps(header_json, sort_keys=True), vendor_address,
                     vendor_name, product, version.packed, size, state,
                     _hex(header_hash) if header_hash else None, now, now if header_hash else None))
            row = self.image_by_digest(digest)
            assert row is not None
            return row, True

    def image_by_digest(self, digest: bytes) -> ImageRow | None:
        rows = self._q(f"SELECT {_IMAGE_COLS} FROM images WHERE digest = ?", (_hex(digest),))  # noqa: S608
        return _image(rows[0]) if rows else None

    def image_by_header_hash(self, header_hash: bytes) -> ImageRow | None:
        rows = self._q(f"SELECT {_IMAGE_COLS} FROM images WHERE header_hash = ?", (_hex(header_hash),))  # noqa: S608
        return _image(rows[0]) if rows else None

    def images(self, *, state: str | None = None, product: str | None = None,
               vendor_name: str | None = None) -> list[ImageRow]:
        where, params = [], []
        for col, value in (("state", state), ("product", product), ("vendor_name", vendor_name)):
            if value is not None:
                where.append(f"{col} = ?")
                params.append(value)
        sql = f"SELECT {_IMAGE_COLS} FROM images" + (f" WHERE {' AND '.join(where)}" if where else "")  # noqa: S608
        return [_image(r) for r in self._q(sql + " ORDER BY vendor_name, product, version, digest", params)]

    def stored_bytes(self) -> int:
        """Sum of the sizes of the distinct payloads kept (withdrawn ones are deleted)."""
        rows = self._q("SELECT COALESCE(SUM(size), 0) FROM (SELECT DISTINCT file_hash, size FROM images "
                       "WHERE state != 'withdrawn')")
        return int(rows[0][0])

    def mark_published(self, digest: bytes, header_hash: bytes) -> bool:
        """unpublished -> published under ``header_hash``; False if it was not unpublished."""
        with self._tx() as conn:
            cur = conn.execute("UPDATE images SET state = 'published', header_hash = ?, published_at = ? "
                               "WHERE digest = ? AND state = 'unpublished'", (_hex(header_hash), time.time(),
                                                                              _hex(digest)))
            return cur.rowcount == 1

    def mark_unpublished(self, digest: bytes, header_hash: bytes) -> bool:
        """published under ``header_hash`` -> unpublished (its ledger record vanished: the chain
        reorganised or was reset below it); False if it was not so published."""
        with self._tx() as conn:
            cur = conn.execute("UPDATE images SET state = 'unpublished', header_hash = NULL, published_at = NULL "
                               "WHERE digest = ? AND state = 'published' AND header_hash = ?",
                               (_hex(digest), _hex(header_hash)))
            return cur.rowcount == 1

    def withdraw(self, digests: Sequence[bytes], reason: str) -> list[ImageRow]:
        """Withdraw images (state kept, payload deleted unless another live image shares it)."""
        return self._withdraw(digests, reason)

    def _withdraw(self, digests: Sequence[bytes], reason: str, *, bar: tuple[str, str | None, str] | None = None
                  ) -> list[ImageRow]:
        """One transaction: optionally bar a vendor name, withdraw images; then delete their files."""
        done = []
        with self._lock:
            with self._tx() as conn:
                if bar is not None:
                    now = time.time()
                    cur = conn.execute("INSERT INTO barred VALUES (?, ?, ?, ?) ON CONFLICT(vendor_name) DO NOTHING",
                                       (*bar, now))
                    if cur.rowcount:
                        conn.execute("INSERT INTO bar_history (vendor_name, action, address, reason, at) "
                                     "VALUES (?, 'barred', ?, ?, ?)", (*bar, now))
                    digests = [_unhex(r[0]) for r in conn.execute(
                        "SELECT digest FROM images WHERE vendor_name = ? AND state != 'withdrawn'", (bar[0],))]
                for d in digests:
                    cur = conn.execute("UPDATE images SET state = 'withdrawn', withdrawn_at = ?, withdraw_reason = ? "
                                       "WHERE digest = ? AND state != 'withdrawn'", (time.time(), reason, _hex(d)))
                    if cur.rowcount:
                        done.append(d)
            rows = [r for r in (self.image_by_digest(d) for d in done) if r is not None]
            for r in rows:
                live = self._q("SELECT 1 FROM images WHERE file_hash = ? AND state != 'withdrawn'",
                               (_hex(r.file_hash),))
                if not live:
                    self.object_path(r.file_hash).unlink(missing_ok=True)
            if rows:
                _fsync_dir(self.objects_dir)
        return rows

    # ------------------------------------------------------------------ vendors

    def bar_vendor(self, vendor_name: str, address: str | None, reason: str) -> list[ImageRow]:
        """Bar a vendor name and withdraw all its images, in one transaction (C11.3.c); returns
        the images withdrawn."""
        return self._withdraw((), BAR_WITHDRAW_PREFIX + reason, bar=(vendor_name, address, reason))

    def lift_bar(self, vendor_name: str, reason: str) -> dict[str, Any] | None:
        """Lift the bar of a vendor name, recording the lift and its reason in ``bar_history``;
        returns the bar lifted (address, reason, at), None if the name was not barred.

        The images the bar withdrew stay withdrawn (their files are gone); the vendor may upload
        them again (:meth:`reinstate`)."""
        with self._tx() as conn:
            row = conn.execute("SELECT address, reason, at FROM barred WHERE vendor_name = ?",
                               (vendor_name,)).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM barred WHERE vendor_name = ?", (vendor_name,))
            conn.execute("INSERT INTO bar_history (vendor_name, action, address, reason, at) "
                         "VALUES (?, 'lifted', NULL, ?, ?)", (vendor_name, reason, time.time()))
        return {"address": row[0], "reason": row[1], "at": row[2]}

    def bar_history(self, vendor_name: str | None = None) -> list[dict[str, Any]]:
        """Every bar and lift, oldest first (optionally of one vendor name)."""
        sql = "SELECT id, vendor_name, action, address, reason, at FROM bar_history"
        params: tuple[Any, ...] = ()
        if vendor_name is not None:
            sql += " WHERE vendor_name = ?"
            params = (vendor_name,)
        return [{"id": r[0], "vendor_name": r[1], "action": r[2], "address": r[3], "reason": r[4], "at": r[5]}
                for r in self._q(sql + " ORDER BY id", params)]

    def reinstate(self, digest: bytes, temp_payload: Path, header_hash: bytes | None) -> ImageRow | None:
        """Take back an image that was withdrawn only because its vendor was barred, from a fresh
        verified upload of it (the temp file, fsynced), once the vendor is no longer barred.

        Returns the row (published under ``header_hash``, else unpublished), or None (and the
        temp file is left) when the image is not so withdrawn or its vendor is barred again.

        Raises:
            OSError: the rename or folder fsync failed.
        """
        with self._lock:
            row = self.image_by_digest(digest)
            if (row is None or row.state != "withdrawn" or self.is_barred(row.vendor_name)
                    or not (row.withdraw_reason or "").startswith(BAR_WITHDRAW_PREFIX)):
                return None
            self._keep_object(temp_payload, row.file_hash)
            now = time.time()
            with self._tx() as conn:
                conn.execute("UPDATE images SET state = ?, header_hash = ?, published_at = ?, withdrawn_at = NULL, "
                             "withdraw_reason = NULL WHERE digest = ?",
                             ("published" if header_hash else "unpublished",
                              _hex(header_hash) if header_hash else None, now if header_hash else None,
                              _hex(digest)))
            return self.image_by_digest(digest)

    def is_barred(self, vendor_name: str) -> bool:
        return bool(self._q("SELECT 1 FROM barred WHERE vendor_name = ?", (vendor_name,)))

    def barred(self) -> dict[str, dict[str, Any]]:
        return {r[0]: {"address": r[1], "reason": r[2], "at": r[3]}
                for r in self._q("SELECT vendor_name, address, reason, at FROM barred ORDER BY vendor_name")}

    # ------------------------------------------------------------------ devices

    def register_device(self, address: str, device_id: str, hardware: str, location: str | None,
                        addons: Sequence[str] = ()) -> DeviceFacts:
        """Register (or update) the device of a signing address, with its add-on boards (replaced).

        Raises:
            DeviceTaken: the device id belongs to another address.
        """
        with self._tx() as conn:
            row = conn.execute("SELECT address FROM devices WHERE device_id = ?", (device_id,)).fetchone()
            if row is not None and row[0] != address:
                raise DeviceTaken(f"device id {device_id!r} is registered by another key")
            conn.execute(
                "INSERT INTO devices VALUES (?, ?, ?, ?, NULL, ?) ON CONFLICT(address) DO UPDATE SET "
                "device_id = excluded.device_id, hardware = excluded.hardware, location = excluded.location",
                (address, device_id, hardware, location, time.time()))
            conn.execute("DELETE FROM device_addons WHERE address = ?", (address,))
            conn.executemany("INSERT INTO device_addons VALUES (?, ?)", [(address, b) for b in sorted(set(addons))])
        dev = self.device(address)
        assert dev is not None
        return dev

    def release_device_id(self, device_id: str, address: str) -> None:
        """Unbind ``device_id`` from any key but ``address`` (the operator replaced its key)."""
        with self._tx() as conn:
            conn.execute("DELETE FROM device_addons WHERE address IN (SELECT address FROM devices "
                         "WHERE device_id = ? AND address != ?)", (device_id, address))
            conn.execute("DELETE FROM devices WHERE device_id = ? AND address != ?", (device_id, address))

    def device(self, address: str) -> DeviceFacts | None:
        rows = self._q("SELECT address, device_id, hardware, location, assigned_region FROM devices "
                       "WHERE address = ?", (address,))
        return self._with_addons(_device(rows[0])) if rows else None

    def _with_addons(self, dev: DeviceFacts) -> DeviceFacts:
        boards = self._q("SELECT board FROM device_addons WHERE address = ? ORDER BY board", (dev.address,))
        return dataclasses.replace(dev, addons=tuple(r[0] for r in boards)) if boards else dev

    def find_device(self, key: str) -> DeviceFacts | None:
        """By address (any case) or device id."""
        rows = self._q("SELECT address, device_id, hardware, location, assigned_region FROM devices "
                       "WHERE lower(address) = lower(?) OR device_id = ?", (key, key))
        return self._with_addons(_device(rows[0])) if rows else None

    def devices(self) -> list[DeviceFacts]:
        return [_device(r) for r in self._q("SELECT address, device_id, hardware, location, assigned_region "
                                            "FROM devices ORDER BY device_id")]

    def assign_region(self, address: str, region: str | None) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE devices SET assigned_region = ? WHERE address = ?", (region, address))

    # ------------------------------------------------------------------ location rules, known-bad

    def set_rules(self, rules: Sequence[LocationRule]) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM location_rules")
            for i, r in enumerate(rules):
                conn.execute("INSERT INTO location_rules VALUES (?, ?)", (i, json.dumps(r.to_json(), sort_keys=True)))

    def rules(self) -> tuple[LocationRule, ...]:
        return tuple(LocationRule.parse(json.loads(r[0]))
                     for r in self._q("SELECT rule FROM location_rules ORDER BY position"))

    def add_known_bad(self, file_hash: bytes, reason: str) -> None:
        with self._tx() as conn:
            conn.execute("INSERT INTO known_bad VALUES (?, ?, ?) ON CONFLICT(file_hash) DO UPDATE SET "
                         "reason = excluded.reason", (_hex(file_hash), reason, time.time()))

    def known_bad(self) -> frozenset[bytes]:
        return frozenset(_unhex(r[0]) for r in self._q("SELECT file_hash FROM known_bad"))

    def known_bad_list(self) -> list[dict[str, Any]]:
        return [{"file_hash": r[0], "reason": r[1], "at": r[2]}
                for r in self._q("SELECT file_hash, reason, at FROM known_bad ORDER BY at")]

    # ------------------------------------------------------------------ downloads

    def log_download(self, *, address: str, device_id: str | None, target: str, what: str,
                     image: ImageRow | None, outcome: str, code: str | None = None,
                     rule: dict[str, Any] | None = None, range_start: int | None = None,
                     range_end: int | None = None, client_ip: str | None = None) -> int:
        """Append to the download log (C11.3.f); returns the row id."""
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO downloads (at, address, device_id, target, what, header_hash, vendor_name, product, "
                "version, outcome, code, rule, range_start, range_end, client_ip) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), address, device_id, target, what,
                 _hex(image.header_hash) if image is not None and image.header_hash else None,
                 image.vendor_name if image else None, image.product if image else None,
                 image.version.packed if image else None, outcome, code,
                 json.dumps(rule, sort_keys=True) if rule is not None else None, range_start, range_end,
                 client_ip))
            return int(cur.lastrowid or 0)

    def refuse_download(self, row_id: int, code: str) -> None:
        """Turn a logged download into a refusal (the payload vanished after it was authorised)."""
        with self._tx() as conn:
            conn.execute("UPDATE downloads SET outcome = 'refused', code = ?, bytes = 0 WHERE id = ?", (code, row_id))

    def set_download_bytes(self, row_id: int, sent: int, served: tuple[int, int] | None = None) -> None:
        """Record how many bytes a download sent, and the range it served (start, end exclusive) if one."""
        with self._tx() as conn:
            if served is None:
                conn.execute("UPDATE downloads SET bytes = ? WHERE id = ?", (sent, row_id))
            else:
                conn.execute("UPDATE downloads SET bytes = ?, range_start = ?, range_end = ? WHERE id = ?",
                             (sent, served[0], served[1], row_id))

    def downloads(self, *, device: str | None = None, header_hash: str | None = None,
                  limit: int = 1000) -> list[DownloadRow]:
        """The newest downloads first, of one device (id or address) and/or one image (header hash)."""
        sql = ("SELECT id, at, address, device_id, target, what, header_hash, product, version, outcome, code, "
               "rule, range_start, range_end, bytes, client_ip FROM downloads WHERE 1")
        params: list[Any] = []
        if device is not None:
            sql += " AND (device_id = ? OR lower(address) = lower(?))"
            params += [device, device]
        if header_hash is not None:
            sql += " AND header_hash = ?"
            params.append(header_hash.lower())
        rows = self._q(sql + " ORDER BY id DESC LIMIT ?", [*params, limit])
        return [DownloadRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7],
                            str(Version.unpack(r[8])) if r[8] is not None else None, r[9], r[10],
                            json.loads(r[11]) if r[11] else None, r[12], r[13], r[14], r[15]) for r in rows]

    def line_downloads(self, vendor_name: str, product: str) -> list[tuple[str, Version]]:
        """(device id, version) of every payload served for a product line."""
        rows = self._q("SELECT DISTINCT device_id, version FROM downloads WHERE vendor_name = ? AND product = ? "
                       "AND outcome = 'served' AND what = 'payload' AND device_id IS NOT NULL",
                       (vendor_name, product))
        return [(r[0], Version.unpack(int(r[1]))) for r in rows]

    def log_notification(self, url: str, header_hash: str, payload: dict[str, Any], status: str) -> None:
        with self._tx() as conn:
            conn.execute("INSERT INTO notifications (at, url, header_hash, payload, status) VALUES (?, ?, ?, ?, ?)",
                         (time.time(), url, header_hash, json.dumps(payload, sort_keys=True), status))

    def notifications(self) -> list[dict[str, Any]]:
        return [{"at": r[0], "url": r[1], "header_hash": r[2], "payload": json.loads(r[3]), "status": r[4]}
                for r in self._q("SELECT at, url, header_hash, payload, status FROM notifications ORDER BY id")]

    def counts(self) -> dict[str, int]:
        out = {}
        for state in ("unpublished", "published", "withdrawn"):
            out[state] = int(self._q("SELECT COUNT(*) FROM images WHERE state = ?", (state,))[0][0])
        out["devices"] = int(self._q("SELECT COUNT(*) FROM devices")[0][0])
        out["barred"] = int(self._q("SELECT COUNT(*) FROM barred")[0][0])
        return out


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
