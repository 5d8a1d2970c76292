"""Tracker modules' reachability (C11.2 c, D8.2.3): which modules are below this one, and which
module each device talks through. See ``docs/MODULES.md`` section 6.

- :class:`ModuleTable`: SQLite (``<data>/modules.sqlite``), transactional, survives restarts.
  ``modules``: every lower module that sent a module heartbeat (``address`` = its signing key,
  role, URL, the device ids it has seen below it, first and last seen). ``routes``: per device,
  the chain of intermediates its last heartbeat came through (``X-Fwledger-Via``, nearest to the
  device first; empty when the device talks to this module directly) and when it was last seen on
  it, to within ``ROUTE_REFRESH`` seconds (an unchanged route is rewritten only that often: not a
  commit per heartbeat). ``nonces``: the module heartbeats' request nonces (replays refused).
- :func:`modules_router`: ``POST /v1/modules/heartbeat`` (signed by a configured module key,
  ``module_keys``; any other signer is refused ``unknown_module`` before anything, its nonce
  included, is stored), ``GET /v1/modules`` (administrator), and for a server module
  ``GET /v1/attestations/{block}``.
- :class:`ViaRecorder`: ASGI middleware recording, for every device heartbeat this module
  accepted (2xx), the ``X-Fwledger-Via`` chain it came through.
- :func:`install_modules`: all of the above on the server module's app.

``X-Fwledger-Via`` is not covered by the device's signature: it is what the delivering modules
say, authenticated hop by hop by mutual TLS between modules. It informs the inventory; no trust
decision rests on it.

Pure helpers (:func:`parse_via`, :func:`reachability`) take values, not I/O.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from eth_utils import is_address, to_checksum_address
from fastapi import APIRouter, FastAPI, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from entities.asgi import ServerTLS, scope_path
from entities.protocol.http_auth import verify_request
from ledger_node.sqlstore import SqliteStore

from .config import TrackerConfig
from .inventory import DEVICE_ID_PATTERN, TrackerRefusal

__all__ = ["HDR_VIA", "MAX_VIA", "ROUTE_REFRESH", "ModuleHeartbeatIn", "ModuleTable", "ViaRecorder", "audiences",
           "install_modules", "modules_router", "parse_via", "reachability", "server_tls"]

HDR_VIA = "X-Fwledger-Via"
MAX_VIA = 16  # hops of intermediates a request may have crossed
ROUTE_REFRESH = 60.0  # seconds: a route's last_seen is refreshed at most this often while the route is unchanged
_MAX_BLOCK = (1 << 63) - 1


# ----------------------------------------------------------------------------- pure helpers


def parse_via(text: str | None) -> tuple[str, ...]:
    """The ``X-Fwledger-Via`` chain (nearest to the device first), checksummed.

    Raises:
        TrackerRefusal: ``bad_request`` (not comma-separated addresses, or more than MAX_VIA).
    """
    if text is None or not text.strip():
        return ()
    hops = [h.strip() for h in text.split(",")]
    if len(hops) > MAX_VIA or not all(is_address(h) for h in hops):
        raise TrackerRefusal("bad_request", f"{HDR_VIA} must be at most {MAX_VIA} comma-separated addresses")
    return tuple(to_checksum_address(h) for h in hops)


def audiences(own: str, module_keys: Sequence[str], via_text: str | None, *,
              delivered_by: Sequence[str] | None = None) -> tuple[str, ...]:
    """The audiences a module accepts in a signed request: its own address, the configured
    intermediates' ``module_keys`` (they relay device requests byte for byte), and, for a request
    that one of ``delivered_by`` (default ``module_keys``) delivers, the first module of its
    ``X-Fwledger-Via`` chain (the one the device talked to, in a cascade; each module on the
    way checked the name before relaying)."""
    keys = tuple(to_checksum_address(k) for k in module_keys)
    delivering = keys if delivered_by is None else tuple(to_checksum_address(k) for k in delivered_by)
    try:
        via = parse_via(via_text)
    except TrackerRefusal:
        via = ()
    return (to_checksum_address(own), *keys, *(via[:1] if via and via[-1] in delivering else ()))


def reachability(last_seen: float, now: float, stale_after: float) -> str:
    """``reachable`` when the module was heard from within ``stale_after`` seconds."""
    return "reachable" if now - last_seen <= stale_after else "unreachable"


def server_tls(cfg: TrackerConfig) -> ServerTLS | None:
    """The HTTPS settings of a module (None: plain HTTP)."""
    if cfg.tls_cert is None or cfg.tls_key is None or cfg.tls_ca is None:
        return None
    return ServerTLS(cfg.tls_cert, cfg.tls_key, cfg.tls_ca, cfg.tls_require_client)


class ModuleHeartbeatIn(BaseModel):
    """A lower module's heartbeat: what it is, where it listens, which devices it has seen."""

    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["intermediate", "client"]
    url: str = Field(pattern=r"^https?://[\x21-\x7e]{1,250}$")
    devices: list[Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]] = Field(default_factory=list, max_length=4096)
    upstreams: list[dict[str, Any]] = Field(default_factory=list, max_length=16)


_MODULES_SCHEMA = """
CREATE TABLE IF NOT EXISTS modules (
    address TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    url TEXT NOT NULL,
    devices TEXT NOT NULL,
    upstreams TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    heartbeats INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS routes (
    device_id TEXT PRIMARY KEY,
    via TEXT NOT NULL,
    last_seen REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nonces (
    address TEXT NOT NULL,
    nonce TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (address, nonce)
) WITHOUT ROWID
"""


@dataclass(frozen=True)
class ModuleRow:
    address: str
    role: str
    url: str
    devices: tuple[str, ...]
    upstreams: tuple[dict[str, Any], ...]
    first_seen: float
    last_seen: float
    heartbeats: int

    def to_json(self, now: float, stale_after: float) -> dict[str, Any]:
        return {"address": self.address, "role": self.role, "url": self.url, "devices": list(self.devices),
                "upstreams": list(self.upstreams), "first_seen": self.first_seen, "last_seen": self.last_seen,
                "heartbeats": self.heartbeats, "reachability": reachability(self.last_seen, now, stale_after)}


class ModuleTable(SqliteStore):
    """The reachability table (``<data>/modules.sqlite``); also an :class:`~entities.protocol.http_auth.NonceStore`."""

    schema = _MODULES_SCHEMA
    kind = "module table"
    marker = "modules"

    def remember(self, address: str, nonce: str, expires_at: float) -> bool:
        """Record a request nonce; False if already recorded (a replay). Purges expired ones."""
        with self._tx() as conn:
            conn.execute("DELETE FROM nonces WHERE expires_at < ?", (time.time() - 1,))
            try:
                conn.execute("INSERT INTO nonces VALUES (?, ?, ?)", (address, nonce, expires_at))
            except sqlite3.IntegrityError:
                return False
        return True

    def record_module(self, address: str, hb: ModuleHeartbeatIn, now: float) -> bool:
        """Store a module heartbeat; True when the module is new."""
        with self._tx() as conn:
            old = conn.execute("SELECT first_seen, heartbeats FROM modules WHERE address = ?", (address,)).fetchone()
            first, count = (now, 0) if old is None else (float(old[0]), int(old[1]))
            conn.execute("INSERT OR REPLACE INTO modules VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (address, hb.role, hb.url, json.dumps(sorted(set(hb.devices))),
                          json.dumps(hb.upstreams, sort_keys=True, default=str), first, now, count + 1))
        return old is None

    def modules(self) -> list[ModuleRow]:
        with self._read() as conn:
            rows = conn.execute("SELECT address, role, url, devices, upstreams, first_seen, last_seen, heartbeats "
                                "FROM modules ORDER BY address").fetchall()
        return [ModuleRow(r[0], r[1], r[2], tuple(json.loads(r[3])), tuple(json.loads(r[4])), float(r[5]),
                          float(r[6]), int(r[7])) for r in rows]

    def record_route(self, device_id: str, via: Sequence[str], now: float) -> bool:
        """The device's last accepted heartbeat came through ``via`` (nearest first; () = direct).
        Written only when the route changed or its ``last_seen`` is ``ROUTE_REFRESH`` seconds old
        (a heartbeat otherwise costs no commit here); returns whether it was written."""
        text = ",".join(via)
        with self._lock:
            with self._read() as conn:
                old = conn.execute("SELECT via, last_seen FROM routes WHERE device_id = ?", (device_id,)).fetchone()
            if old is not None and old[0] == text and 0 <= now - float(old[1]) < ROUTE_REFRESH:
                return False
            with self._tx() as conn:
                conn.execute("INSERT OR REPLACE INTO routes VALUES (?, ?, ?)", (device_id, text, now))
        return True

    def routes(self) -> dict[str, dict[str, Any]]:
        """device id -> {"via": [...], "upstream": the module the device talks to (None: this one), "last_seen"}."""
        with self._read() as conn:
            rows = conn.execute("SELECT device_id, via, last_seen FROM routes ORDER BY device_id").fetchall()
        out = {}
        for dev, via_text, seen in rows:
            via = [v for v in str(via_text).split(",") if v]
            out[str(dev)] = {"via": via, "upstream": via[0] if via else None, "last_seen": float(seen)}
        return out

    def device_ids(self) -> list[str]:
        with self._read() as conn:
            return [str(r[0]) for r in conn.execute("SELECT device_id FROM routes ORDER BY device_id")]


# ----------------------------------------------------------------------------- Via recording


class ViaRecorder:
    """Pure ASGI middleware: after a device heartbeat is accepted (2xx), records the chain of
    intermediates it came through (``X-Fwledger-Via``) in the :class:`ModuleTable`."""

    path = "/v1/devices/heartbeat"

    def __init__(self, app: ASGIApp, table: ModuleTable, clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.table = table
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") != self.path:
            await self.app(scope, receive, send)
            return
        body = bytearray()
        status: list[int] = []

        async def tap_receive() -> Message:
            msg = await receive()
            if msg["type"] == "http.request" and len(body) <= 1 << 20:
                body.extend(msg.get("body", b""))
            return msg

        async def tap_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        await self.app(scope, tap_receive, tap_send)
        if not status or not 200 <= status[0] < 300:
            return
        wanted = HDR_VIA.lower().encode()
        given = [v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == wanted]
        try:
            via = parse_via(given[0] if given else None)
            device_id = json.loads(bytes(body)).get("device_id")
        except (TrackerRefusal, ValueError, AttributeError):
            return
        if isinstance(device_id, str):
            await anyio.to_thread.run_sync(self.table.record_route, device_id, via, self.clock())


# ----------------------------------------------------------------------------- the API


class _OnlyKeys:
    """A nonce store that refuses a signer outside ``allowed()`` before storing anything."""

    def __init__(self, store: ModuleTable, allowed: Callable[[], Sequence[str]], code: str, what: str) -> None:
        self.store, self.allowed, self.code, self.what = store, allowed, code, what

    def remember(self, address: str, nonce: str, expires_at: float) -> bool:
        if address not in self.allowed():
            raise TrackerRefusal(self.code, f"{address} is not {self.what} of this module")
        return self.store.remember(address, nonce, expires_at)


def modules_router(table: ModuleTable, *, own: str, admin_keys: Callable[[], Sequence[str]],
                   module_keys: Callable[[], Sequence[str]], max_skew: int, stale_after: float,
                   clock: Callable[[], float] = time.time,
                   attestations: Callable[[int], Mapping[str, Any]] | None = None) -> APIRouter:
    """``POST /v1/modules/heartbeat`` (from ``module_keys()`` only), ``GET /v1/modules`` and, given
    ``attestations`` (block -> ``{"header_rlp", "attestations"}``), ``GET /v1/attestations/{block}``.
    Refusals are raised as :class:`TrackerRefusal` / :class:`~entities.protocol.http_auth.AuthError` for the
    app's handlers."""
    router = APIRouter()
    modules_only = _OnlyKeys(table, module_keys, "unknown_module", "a configured module key (module_keys)")

    async def authenticate(request: Request, nonces: ModuleTable | _OnlyKeys = table) -> str:
        body = await request.body()
        digest = hashlib.sha256(body).hexdigest()
        signed = await anyio.to_thread.run_sync(
            lambda: verify_request(dict(request.headers), request.method, scope_path(request.scope), digest,
                                   audience=(own,), max_skew=max_skew, nonces=nonces))
        return str(signed.address)

    @router.post("/v1/modules/heartbeat", tags=["modules"])
    async def module_heartbeat(request: Request, hb: ModuleHeartbeatIn) -> dict[str, Any]:
        """A lower module (intermediate) reports itself and the devices below it (C11.2 c); only
        the modules configured in ``module_keys`` are heard, any other signer gets ``unknown_module``."""
        signer = await authenticate(request, modules_only)
        new = await anyio.to_thread.run_sync(table.record_module, signer, hb, clock())
        return {"address": signer, "registered": new, "stale_after": stale_after}

    @router.get("/v1/modules", tags=["operator"])
    async def modules(request: Request) -> dict[str, Any]:
        """Lower modules with their reachability, and each device's route (administrator)."""
        signer = await authenticate(request)
        admins = admin_keys()
        if signer not in admins:
            raise TrackerRefusal("forbidden", f"{signer} is not an administrator of this tracker")
        now = clock()
        rows = await anyio.to_thread.run_sync(table.modules)
        routes = await anyio.to_thread.run_sync(table.routes)
        return {"now": now, "stale_after": stale_after, "modules": [r.to_json(now, stale_after) for r in rows],
                "routes": routes}

    if attestations is not None:
        attest = attestations

        @router.get("/v1/attestations/{block_number}", tags=["light nodes"])
        async def attestations_at(block_number: Annotated[int, PathParam(ge=0, le=_MAX_BLOCK)]) -> dict[str, Any]:
            """Every server-module attestation of one block this module knows (k of n behind an intermediate)."""
            return dict(await anyio.to_thread.run_sync(attest, block_number))

    return router


def install_modules(app: FastAPI, config: TrackerConfig, *, own: str, clock: Callable[[], float] = time.time,
                    attestation: Callable[[int], Mapping[str, Any]] | None = None) -> ModuleTable:
    """Mount the modules API on a server module's ``app`` and record devices' routes.

    ``attestation(block)`` is the module's own ``{"header_rlp", "attestation"}`` of a block.
    The table is closed at the end of the app's lifespan.

    Raises:
        ConfigError, IndexCorruption: as :class:`ModuleTable`.
    """
    table = ModuleTable(Path(config.data_dir) / "modules.sqlite")
    attestations = None
    if attestation is not None:
        attest_one = attestation

        def attestations(block: int) -> dict[str, Any]:
            one = attest_one(block)
            return {"header_rlp": one["header_rlp"], "attestations": [one["attestation"]]}

    app.include_router(modules_router(table, own=own, admin_keys=lambda: config.admin_keys,
                                      module_keys=lambda: config.module_keys, max_skew=config.max_skew,
                                      stale_after=config.stale_after, clock=clock, attestations=attestations))
    app.add_middleware(ViaRecorder, table=table, clock=clock)
    app.state.modules = table
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        try:
            async with inner(a) as state:
                yield state
        finally:
            table.close()

    app.router.lifespan_context = lifespan
    return table
