"""Rotating a device's trust anchors (the I/O around :mod:`entities.protocol.anchor_rotation`).

``DIR/anchors.json`` is the device's trust anchors (``TrustAnchors`` JSON) with, once rotated or
when provisioning gave one, two more keys: ``serial`` (the anchors' serial; absent: 0) and
``statement`` (the signed statement that installed them: the device's proof of why it trusts
these keys). The whole file is replaced in one atomic write (temporary file, fsync, rename,
fsync of the folder), so a crash leaves the old anchors or the new ones with their statement,
never a mix; every refusal leaves the file untouched.

:func:`apply_statement` is the one way in, by hand (``fwledger device anchors-update``) or over
the air (:func:`refresh_from_trackers`, step 0 of every agent pass: each tracker is asked for the
statements newer than the device's serial, ``GET /v1/anchors?after=S``, and they are applied in
serial order). Both hold the device's lock while they read, judge and write.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from entities.protocol.anchor_rotation import (
    MAX_SERIAL,
    MAX_STATEMENT_BYTES,
    AnchorsError,
    check_rotation,
    parse_statement,
)
from entities.protocol.commands import canonical
from ledger_node.errors import ConfigError

from .client import NetworkError, TrackerClient
from .errors import NotADevice
from .store import Layout, Probe, atomic_write, lock_device, read_bounded
from .verify import TrustAnchors

__all__ = ["ANCHORS_FILE", "MAX_FETCHED", "anchors_document", "apply_statement", "current_anchors",
           "refresh_from_trackers", "serial_of"]

ANCHORS_FILE = "anchors.json"
#: statements taken from all trackers in one refresh (each answer holds at most 16)
MAX_FETCHED = 64


def anchors_document(anchors: TrustAnchors, serial: int = 0, statement: Mapping[str, Any] | None = None
                     ) -> dict[str, Any]:
    """What ``DIR/anchors.json`` holds: the anchors, and their serial and statement when there are."""
    doc = anchors.to_json()
    if serial:
        doc["serial"] = serial
    if statement is not None:
        doc["statement"] = dict(statement)
    return doc


def serial_of(doc: Mapping[str, Any], where: str = "anchors") -> int:
    """The ``serial`` of an anchors document (absent: 0).

    Raises:
        ConfigError: not an integer in 0..2^63-1.
    """
    serial = doc.get("serial", 0)
    if not isinstance(serial, int) or isinstance(serial, bool) or not 0 <= serial <= MAX_SERIAL:
        raise ConfigError(f"{where}: serial must be an integer in 0..{MAX_SERIAL}")
    return serial


def current_anchors(root: Path) -> tuple[TrustAnchors, int]:
    """The device's anchors and their serial.

    Raises:
        NotADevice: no anchors file. ConfigError: a malformed one. DeviceStorageError: unreadable.
    """
    path = Path(root) / ANCHORS_FILE
    data = read_bounded(path)
    if data is None:
        raise NotADevice(f"{path} is missing: the device is not provisioned (run fwledger device init)")
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ConfigError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} is not a trust anchors object")
    return TrustAnchors.from_json(doc), serial_of(doc, str(path))


def apply_statement(root: Path, statement: Any, *, probe: Probe | None = None) -> dict[str, Any]:
    """Judge an anchors statement (decoded JSON) against the device's anchors and, if it is
    accepted, make its anchors the device's (one atomic write, the statement kept as proof).

    ``probe`` is told ``"anchors write"`` and ``"anchors replace"`` (:func:`.store.atomic_write`).
    Returns ``{"serial", "previous", "trackers", "quorum", "relays", "signers"}``.

    Raises:
        AnchorsError: ``anchors_malformed``, ``anchors_chain``, ``anchors_not_newer``,
            ``anchors_quorum`` (the device's anchors untouched).
        DeviceBusy: another process has the device open.
        NotADevice, ConfigError, DeviceStorageError: the device folder is unusable.
    """
    root = Path(root)
    stmt = parse_statement(statement)
    try:
        new = TrustAnchors.from_json(stmt.anchors)
    except ConfigError as exc:
        raise AnchorsError("anchors_malformed", f"the statement's anchors are unusable: {exc}") from None
    with lock_device(Layout(root)):
        anchors, serial = current_anchors(root)
        check_rotation(statement, serial=serial, chain_id=anchors.chain_id, trackers=anchors.trackers,
                       quorum=anchors.quorum)
        doc = anchors_document(new, stmt.serial, stmt.to_json())
        data = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
        if probe is None:
            atomic_write(root / ANCHORS_FILE, data, label="anchors")
        else:
            atomic_write(root / ANCHORS_FILE, data, probe=probe, label="anchors")
    return {"serial": stmt.serial, "previous": serial, "trackers": list(new.trackers), "quorum": new.quorum,
            "relays": list(new.relays), "signers": sorted(stmt.signers())}


def refresh_from_trackers(root: Path, clients: Sequence[TrackerClient], *, probe: Probe | None = None
                          ) -> dict[str, Any]:
    """Ask each tracker for the statements newer than the device's serial and apply them in serial
    order (each judged against the anchors the previous one installed). A tracker that cannot be
    asked is skipped (the pass's heartbeat reports it); a refused statement is recorded and the
    next one tried. Returns ``{"serial", "applied": [...], "refused": [...], "unreachable": [...]}``.

    Raises:
        DeviceBusy, NotADevice, ConfigError, DeviceStorageError: as :func:`apply_statement`.
    """
    _, serial = current_anchors(root)
    out: dict[str, Any] = {"serial": serial, "applied": [], "refused": [], "unreachable": []}
    found: dict[bytes, tuple[int, str, Any]] = {}
    for client in clients:
        try:
            answer = client.call("GET", f"/v1/anchors?after={serial}")
        except NetworkError as exc:
            out["unreachable"].append({"tracker": client.url, "code": exc.code})
            continue
        got = answer.get("statements") if isinstance(answer, dict) else None
        for item in (got if isinstance(got, list) else [])[:16]:
            s = item.get("serial") if isinstance(item, dict) else None
            try:
                key = canonical(item)
            except (TypeError, ValueError):
                continue
            if isinstance(s, int) and not isinstance(s, bool) and s > serial and len(key) <= MAX_STATEMENT_BYTES \
                    and len(found) < MAX_FETCHED:
                found.setdefault(key, (s, client.url, item))
    for s, url, item in sorted(found.values(), key=lambda f: f[0]):
        if s <= out["serial"]:
            continue
        try:
            done = apply_statement(root, item, probe=probe)
        except AnchorsError as exc:
            out["refused"].append({"serial": s, "tracker": url, "code": exc.code, "message": str(exc)[:256]})
            continue
        out["applied"].append({"serial": done["serial"], "tracker": url, "trackers": done["trackers"],
                               "quorum": done["quorum"]})
        out["serial"] = done["serial"]
    return out
