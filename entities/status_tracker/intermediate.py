"""The status tracker's intermediate module (X.1368 clause 8 D8.2.3, R10.e.ii, C11.2 module rules).

An intermediate sits between devices (or lower intermediates) and an upstream module (the server
module or another intermediate). It has no chain connection and no full node; it serves the
device-facing API so that a device cannot tell the difference except by the answer's signing
key (``anchors.relays``). See ``docs/MODULES.md`` section 6.

:class:`Intermediate` is the orchestrator; each device-facing request is one short sequence:

- **Relay** (``POST /v1/devices/heartbeat``, ``POST /v1/devices/{id}/results``, device-signed
  reads): the device's body and ``X-Fwledger-*`` headers are forwarded unchanged, with this
  module appended to ``X-Fwledger-Via``; the upstream's answer must be signed by the pinned
  upstream key over the device's own nonce (C11.2.d), else ``upstream_untrusted``. The answer's
  bytes, commands included, pass unchanged; :mod:`.app`'s response signer re-signs it for the
  device. Commands are signed end to end by the server module, so a relay cannot alter them.
- **Cache** (``GET /v1/attestation[/{block}]``, ``GET /v1/attestations/{block}``,
  ``GET /v1/evidence/{hash}?hardware=&block=``): answers of a fixed block never change, so they
  are fetched upstream once (signature verified first) and kept in ``<data>/cache.sqlite``, at
  most ``cache_entries`` of them (the least recently used evicted in the insert's transaction);
  only the upstream's 200 answers are kept, never a refusal (an unknown release or ``hardware``
  is asked upstream again and refused there). Concurrent misses for the same answer wait for one
  fetch (a lock per answer in flight, dropped when its last waiter leaves). Without a block, the
  upstream's newest block is asked at most once per ``poll_interval``.
- **Reachability** (C11.2 c): every ``poll_interval`` a signed ``POST /v1/modules/heartbeat``
  upstream (role, URL, devices seen below); lower modules' heartbeats are kept here
  (:class:`~.modules.ModuleTable`), from the configured ``module_keys`` only, so intermediates
  cascade.

Between modules the channel is mutual TLS with fleet-CA certificates (:mod:`entities.fleet_ca`):
an upstream whose certificate does not chain to the fleet CA or does not name its host fails the
handshake, is logged, and is reported as ``upstream_untrusted``.

Counters in ``/health`` (for the flat vs hierarchical benchmark): ``upstream_requests``,
``upstream_bytes`` (bodies fetched), ``served_bytes`` (bodies answered downstream),
``relayed``, ``fetched`` (cache misses), ``cache_hits``, ``head_refreshes``, ``module_heartbeats``.

One upstream (:class:`Upstream`, its pinned key, :class:`UpstreamError`) and the answer cache
live in :mod:`.intermediate_upstream`; this module holds the orchestrator, its app and its thread.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import anyio
from eth_account.signers.local import LocalAccount
from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response

from entities.asgi import BodyLimit, UvicornThread, scope_path
from entities.fleet_ca import client_ssl_context
from entities.protocol.http_auth import HDR_AUDIENCE, HDR_NONCE, IDENTITY_PATH, sign_request
from entities.settings import load_or_create_key
from ledger_node.errors import ConfigError, FwledgerError

from .anchors import AnchorsRelay, relay_router
from .config import TrackerConfig
from .intermediate_upstream import Answer, AnswerCache, Upstream, UpstreamError
from .inventory import DEVICE_ID_PATTERN, HASH_PATTERN, TrackerRefusal
from .modules import HDR_VIA, MAX_VIA, ModuleTable, audiences, modules_router, parse_via
from .web import SignResponses, error_response, install_error_handlers, owned_lifespan

__all__ = ["Answer", "Intermediate", "IntermediateThread", "Upstream", "UpstreamError", "create_intermediate_app"]

_HW_PATTERN = r"^[\x20-\x7e]{1,64}$"
_MAX_BLOCK = (1 << 63) - 1
_MAX_REPORTED_DEVICES = 1000  # device ids listed in one module heartbeat (the count is always sent)
_HEARTBEAT = "/v1/devices/heartbeat"


# ----------------------------------------------------------------------------- the module


@dataclass
class _Counters:
    upstream_requests: int = 0
    upstream_bytes: int = 0
    served_bytes: int = 0
    relayed: int = 0
    fetched: int = 0
    cache_hits: int = 0
    head_refreshes: int = 0
    module_heartbeats: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **deltas: int) -> None:
        with self.lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def to_json(self) -> dict[str, int]:
        with self.lock:
            return {k: v for k, v in self.__dict__.items() if k != "lock"}


class Intermediate:
    """The intermediate module of a status tracker.

    Args:
        config: role ``intermediate``, ``upstreams`` with one pinned ``upstream_keys`` each, and
            the TLS files (``tls_cert``, ``tls_key``, ``tls_ca``) for mutual TLS upstream.
        url: the URL this module is reached at (reported in its module heartbeats).
        clock: seconds since the epoch (tests may pass their own).

    Raises:
        ConfigError: wrong role, no pinned upstream key, unusable TLS files or data folder.
        IndexCorruption: the cache or the module table is damaged.
    """

    def __init__(self, config: TrackerConfig, *, url: str = "", clock: Callable[[], float] = time.time,
                 logger: logging.Logger | None = None, timeout: float = 30.0) -> None:
        if config.role != "intermediate":
            raise ConfigError(f"an intermediate module needs role 'intermediate', not {config.role!r}")
        if not config.upstreams or len(config.upstream_keys) != len(config.upstreams):
            raise ConfigError("an intermediate needs each upstream's signing key pinned (--upstream-key), C11.2.d")
        try:
            Path(config.data_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create tracker data folder {config.data_dir}: {exc.strerror or exc}") from exc
        self.config = config
        self.url = url
        self.clock = clock
        self.log = logger or logging.getLogger("fwledger.intermediate")
        self.account: LocalAccount = load_or_create_key(config.identity_path)
        ctx = client_ssl_context(config.tls_cert, config.tls_key, config.tls_ca) if config.tls_ca else None
        pinned = zip(config.upstreams, config.upstream_keys, strict=True)
        self.upstreams = [Upstream(u, k, ssl_context=ctx, timeout=timeout, max_skew=config.max_skew, clock=clock,
                                   logger=self.log) for u, k in pinned]
        self.cache = AnswerCache(Path(config.data_dir) / "cache.sqlite", config.cache_entries, clock)
        try:
            self.modules = ModuleTable(Path(config.data_dir) / "modules.sqlite")
        except BaseException:
            self.cache.close()
            raise
        self.counters = _Counters()
        self._flights: dict[str, tuple[threading.Lock, int]] = {}  # answers in flight: lock, waiters
        self._flights_lock = threading.Lock()
        self._head: tuple[int, float] | None = None
        self._head_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """This module's signing address (devices below list it in ``anchors.relays``)."""
        return str(self.account.address)

    def _event(self, name: str, **fields: Any) -> None:
        self.log.info(json.dumps({"event": name, **fields}, default=str, sort_keys=True))

    # ================================================================ talking upstream

    def _each_upstream(self, send: Callable[[Upstream], Answer]) -> Answer:
        """The first upstream's verified answer, failing over to the next one on an error."""
        error: UpstreamError | None = None
        for up in self.upstreams:
            try:
                return send(up)
            except UpstreamError as exc:
                error = exc
        assert error is not None
        raise error

    def _fetch_from(self, up: Upstream, path: str) -> Answer:
        """One GET signed with this module's key; the upstream's answer verified."""
        nonce = secrets.token_hex(16)
        headers = sign_request(self.account, "GET", path, b"", audience=up.key, nonce=nonce, now=self.clock())
        self.counters.add(upstream_requests=1)
        answer = up.exchange("GET", path, headers, request_nonce=nonce)
        self.counters.add(upstream_bytes=len(answer.body))
        return answer

    # ================================================================ relaying (device requests)

    def relay(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Answer:
        """Forward a device's signed request upstream unchanged, plus ``X-Fwledger-Via``; return
        the upstream's verified answer (bytes unchanged). A relayed heartbeat the upstream
        accepted records the device as seen below this module.

        Raises:
            TrackerRefusal: ``wrong_audience`` (signed for another service), ``bad_request``
                (malformed Via), ``module_loop`` (this module is already in the Via chain, or too
                many hops).
            UpstreamError: no upstream answered with the pinned key's signature.
        """
        h = {k.lower(): v for k, v in headers.items()}
        below = parse_via(h.get(HDR_VIA.lower()))
        # the device names the first module it talks to; a lower module it talked to checked that
        named = h.get(HDR_AUDIENCE.lower(), "")
        if named.lower() not in {a.lower() for a in audiences(self.address, (), h.get(HDR_VIA.lower()),
                                                              delivered_by=self.config.module_keys)}:
            # the upstream checks the signature over this name; here, only that it is ours
            raise TrackerRefusal("wrong_audience", f"the request is signed for the service {named[:42] or '(none)'}, "
                                                   "not this module")
        if self.address in below or len(below) >= MAX_VIA:
            raise TrackerRefusal("module_loop", f"the request already crossed {len(below)} modules, this one included"
                                 if self.address in below else f"the request crossed {len(below)} modules")
        forward = {k: v for k, v in headers.items() if k.lower().startswith("x-fwledger-")
                   and k.lower() != HDR_VIA.lower()}
        forward[HDR_VIA] = ",".join([*below, self.address])
        if body:
            forward["Content-Type"] = h.get("content-type", "application/json")
        nonce = h.get(HDR_NONCE.lower())

        def send(up: Upstream) -> Answer:
            self.counters.add(upstream_requests=1, relayed=1)
            answer = up.exchange(method, path, forward, body, request_nonce=nonce)
            self.counters.add(upstream_bytes=len(answer.body))
            return answer

        answer = self._each_upstream(send)
        if method == "POST" and path == _HEARTBEAT and 200 <= answer.status < 300:
            try:
                device_id = json.loads(body).get("device_id")
            except (ValueError, AttributeError):
                device_id = None
            if isinstance(device_id, str):
                self.modules.record_route(device_id, below, self.clock())
        return answer

    # ================================================================ the cache (fixed blocks)

    @contextmanager
    def _flight(self, key: str) -> Iterator[None]:
        """Hold the lock of one answer in flight; the lock is dropped when its last waiter leaves,
        so the map holds only answers being fetched now (bounded by the concurrent requests)."""
        with self._flights_lock:
            lock, waiters = self._flights.get(key, (threading.Lock(), 0))
            self._flights[key] = (lock, waiters + 1)
        try:
            with lock:
                yield
        finally:
            with self._flights_lock:
                lock, waiters = self._flights[key]
                if waiters <= 1:
                    del self._flights[key]
                else:
                    self._flights[key] = (lock, waiters - 1)

    def cached(self, key: str, fetch: Callable[[], tuple[Answer, bool]] | None = None) -> Answer:
        """The answer to ``key`` (a canonical request path) from the cache, or fetched upstream
        once (``fetch`` returns the answer and whether it may be cached; default: one GET of
        ``key`` from the first upstream that answers, cached when 200).

        Raises:
            UpstreamError: not cached and no upstream answered with the pinned key's signature.
        """
        hit = self.cache.get(key)
        if hit is None:
            with self._flight(key):  # concurrent misses wait for one fetch
                hit = self.cache.get(key)
                if hit is None:
                    answer, keep = fetch() if fetch else self._fetch_one(key)
                    self.counters.add(fetched=1)
                    if keep:
                        self.cache.put(key, answer, self.clock())
                        self._event("cached", key=key, bytes=len(answer.body), signer=answer.signer)
                    return answer
        self.counters.add(cache_hits=1)
        return hit

    def _fetch_one(self, key: str) -> tuple[Answer, bool]:
        answer = self._each_upstream(lambda up: self._fetch_from(up, key))
        return answer, answer.status == 200

    def head_block(self) -> int | Answer:
        """The upstream's newest attested block, asked at most once per ``poll_interval``; an
        upstream refusal (e.g. ``not_synced``) is returned as the answer to pass on.

        Raises:
            UpstreamError: no upstream answered with the pinned key's signature.
        """
        with self._head_lock:
            now = self.clock()
            if self._head is not None and now - self._head[1] < self.config.poll_interval:
                return self._head[0]
            answer = self._each_upstream(lambda up: self._fetch_from(up, "/v1/attestation"))
            self.counters.add(head_refreshes=1)
            if answer.status != 200:
                return answer
            try:
                block = int(json.loads(answer.body)["attestation"]["block_number"])
            except (ValueError, KeyError, TypeError) as exc:
                raise UpstreamError("upstream_untrusted", f"the upstream's attestation is malformed: {exc}") from exc
            if self.cache.get(f"/v1/attestation/{block}") is None:  # the same answer as for that block
                self.cache.put(f"/v1/attestation/{block}", answer, now)
            self._head = (block, now)
            return block

    def attestation(self, block: int | None) -> Answer:
        """``GET /v1/attestation[/{block}]``: the upstream's attestation of one block (cached)."""
        if block is None:
            head = self.head_block()
            if isinstance(head, Answer):
                return head
            block = head
        return self.cached(f"/v1/attestation/{block}")

    def attestations(self, block: int) -> Answer:
        """``GET /v1/attestations/{block}``: the attestations of all upstreams merged (by
        signature), cached once every upstream answered."""
        key = f"/v1/attestations/{block}"

        def fetch() -> tuple[Answer, bool]:
            merged: dict[str, Any] | None = None
            seen: set[str] = set()
            first_refusal: Answer | None = None
            complete = True
            last_error: UpstreamError | None = None
            for up in self.upstreams:
                try:
                    answer = self._fetch_from(up, key)
                    got = json.loads(answer.body) if answer.status == 200 else None
                    if not isinstance(got, dict) or not isinstance(got.get("attestations"), list) \
                            or not isinstance(got.get("header_rlp"), str):
                        raise ValueError("no attestations list")
                    atts: list[Any] = got["attestations"]
                except UpstreamError as exc:
                    complete, last_error = False, exc
                    continue
                except ValueError:
                    complete = False
                    first_refusal = first_refusal or answer
                    continue
                if merged is None:
                    merged = {"header_rlp": got["header_rlp"], "attestations": []}
                elif got["header_rlp"] != merged["header_rlp"]:
                    complete = False  # another fork's header: the device would not count it anyway
                    continue
                for att in atts:
                    sig = str(att.get("signature")) if isinstance(att, dict) else ""
                    if sig and sig not in seen:
                        seen.add(sig)
                        merged["attestations"].append(att)
            if merged is None:
                if first_refusal is not None:
                    return first_refusal, False
                assert last_error is not None
                raise last_error
            body = json.dumps(merged, separators=(",", ":")).encode()
            return Answer(200, body, self.address), complete

        return self.cached(key, fetch)

    def evidence(self, header_hash: str, hardware: str | None, block: int | None) -> Answer:
        """``GET /v1/evidence/{hash}?hardware=&block=`` at ``block`` (default: the upstream's newest)."""
        if block is None:
            head = self.head_block()
            if isinstance(head, Answer):
                return head
            block = head
        query = ([f"hardware={quote(hardware, safe='')}"] if hardware is not None else []) + [f"block={block}"]
        return self.cached(f"/v1/evidence/{header_hash.lower()}?" + "&".join(query))

    # ================================================================ reachability (C11.2 c)

    def heartbeat_upstreams(self) -> None:
        """One signed module heartbeat to every upstream; failures are recorded on the upstream."""
        ids = self.modules.device_ids()
        body = json.dumps({"role": "intermediate", "url": self.url or "http://unknown.invalid",
                           "devices": ids[:_MAX_REPORTED_DEVICES],
                           "upstreams": [{"url": u.url, "reachable": u.state()["reachable"]} for u in self.upstreams]},
                          separators=(",", ":")).encode()
        path = "/v1/modules/heartbeat"
        for up in self.upstreams:
            nonce = secrets.token_hex(16)
            headers = {**sign_request(self.account, "POST", path, body, audience=up.key, nonce=nonce, now=self.clock()),
                       "Content-Type": "application/json"}
            try:
                self.counters.add(upstream_requests=1, module_heartbeats=1)
                answer = up.exchange("POST", path, headers, body, request_nonce=nonce)
                self.counters.add(upstream_bytes=len(answer.body))
                if answer.status != 200:
                    up.last_error, up.last_error_code = f"module heartbeat refused: {answer.status}", "refused"
                    up.last_error_at = self.clock()
            except UpstreamError:
                pass  # recorded and logged by the upstream object

    def start(self) -> None:
        """Send module heartbeats every ``poll_interval`` seconds in a daemon thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True, name="fwledger-intermediate")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.heartbeat_upstreams()
            except FwledgerError as exc:
                self._event("module_heartbeat_failed", error=f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # a bug must not kill the thread silently
                self._event("module_heartbeat_crashed", error=f"{type(exc).__name__}: {exc}")
            self._stop.wait(self.config.poll_interval)

    def stop(self, timeout: float = 20.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        """Stop the thread and close the cache and the module table."""
        self.stop()
        self.cache.close()
        self.modules.close()

    def health(self) -> dict[str, Any]:
        ups = [u.state() for u in self.upstreams]
        untrusted = any(u["last_error_code"] == "upstream_untrusted" for u in ups)
        return {"status": "ok" if all(u["reachable"] for u in ups) else "degraded", "role": "intermediate",
                "address": self.address, "url": self.url, "upstreams": ups, "upstream_untrusted": untrusted,
                "head_block": None if self._head is None else self._head[0], "cached_answers": self.cache.size(),
                "devices_below": len(self.modules.device_ids()), "counters": self.counters.to_json()}


# ----------------------------------------------------------------------------- the app


def create_intermediate_app(module: Intermediate, *, follow: bool = True) -> FastAPI:
    """The intermediate's HTTP API; its heartbeat thread runs during the app's lifespan
    (``follow=False``: call :meth:`Intermediate.heartbeat_upstreams` instead). The app owns the
    module: the end of its lifespan closes it. Every answer is signed by the module's key."""
    cfg = module.config
    log = module.log

    lifespan = owned_lifespan(module.start if follow else None, module.close)

    app = FastAPI(title="fwledger status tracker (intermediate)", version="1", lifespan=lifespan, docs_url=None,
                  redoc_url=None, description=(__doc__ or "").split("\n\n")[0])
    app.state.module = module
    app.add_middleware(BodyLimit, limit=cfg.max_json_bytes, error=error_response)
    app.add_middleware(SignResponses, account=module.account)
    app.include_router(modules_router(module.modules, own=module.address, admin_keys=lambda: cfg.admin_keys,
                                      module_keys=lambda: cfg.module_keys, max_skew=cfg.max_skew,
                                      stale_after=cfg.stale_after, clock=module.clock))

    @app.exception_handler(UpstreamError)
    async def on_upstream(request: Request, exc: UpstreamError) -> JSONResponse:
        return error_response(exc.code, str(exc), status=502)

    install_error_handlers(app, log, "intermediate")

    def upstream_get(path: str) -> tuple[int, bytes]:
        got = module._each_upstream(lambda up: module._fetch_from(up, path))
        return got.status, got.body

    app.include_router(relay_router(AnchorsRelay(upstream_get, cfg.poll_interval)))  # GET /v1/anchors (.anchors)

    async def answer(fn: Callable[..., Answer], *args: Any) -> Response:
        got: Answer = await anyio.to_thread.run_sync(fn, *args)
        module.counters.add(served_bytes=len(got.body))
        return Response(content=got.body, status_code=got.status, media_type="application/json")

    async def relay(request: Request) -> Response:
        body = await request.body()
        return await answer(module.relay, request.method, scope_path(request.scope), dict(request.headers), body)

    @app.get(IDENTITY_PATH, tags=["tracker"])
    async def identity() -> dict[str, Any]:
        """This module's address, signed over the caller's nonce: the audience devices below name."""
        return {"address": module.address, "role": "intermediate"}

    @app.get("/health", tags=["tracker"])
    async def health() -> dict[str, Any]:
        """Liveness, the module's address, its upstreams' reachability and its counters."""
        return await anyio.to_thread.run_sync(module.health)  # type: ignore[no-any-return]

    @app.post("/v1/devices/heartbeat", tags=["devices"])
    async def heartbeat(request: Request) -> Response:
        """A device's signed heartbeat, relayed upstream; the answer (commands included) passes unchanged."""
        return await relay(request)

    @app.post("/v1/devices/{device_id}/results", tags=["devices"])
    async def results(request: Request,
                      device_id: Annotated[str, PathParam(pattern=DEVICE_ID_PATTERN)]) -> Response:
        """A device's signed update results, relayed upstream."""
        return await relay(request)

    @app.get("/v1/devices/{device_id}/plan", tags=["devices"])
    async def plan(request: Request, device_id: Annotated[str, PathParam(pattern=DEVICE_ID_PATTERN)]) -> Response:
        """A device's signed read of its plan, relayed upstream (never cached)."""
        return await relay(request)

    @app.get("/v1/attestation", tags=["light nodes"])
    async def attestation_head() -> Response:
        """The upstream's attestation of its newest block (asked at most once per poll interval)."""
        return await answer(module.attestation, None)

    @app.get("/v1/attestation/{block_number}", tags=["light nodes"])
    async def attestation_at(block_number: Annotated[int, PathParam(ge=0, le=_MAX_BLOCK)]) -> Response:
        """The upstream's attestation of one block (cached)."""
        return await answer(module.attestation, block_number)

    @app.get("/v1/attestations/{block_number}", tags=["light nodes"])
    async def attestations_at(block_number: Annotated[int, PathParam(ge=0, le=_MAX_BLOCK)]) -> Response:
        """Every server-module attestation of one block the upstreams know (cached)."""
        return await answer(module.attestations, block_number)

    @app.get("/v1/evidence/{header_hash}", tags=["light nodes"])
    async def evidence(
        header_hash: Annotated[str, PathParam(pattern=HASH_PATTERN)],
        hardware: Annotated[str | None, Query(pattern=_HW_PATTERN)] = None,
        block: Annotated[int | None, Query(ge=0, le=_MAX_BLOCK)] = None,
    ) -> Response:
        """The upstream's evidence of one release at one block (cached)."""
        return await answer(module.evidence, header_hash, hardware, block)

    return app


# ----------------------------------------------------------------------------- running it


def build_intermediate(config: TrackerConfig, *, url: str = "") -> Intermediate:
    """An intermediate logging JSON lines to stderr.

    Raises:
        ConfigError, IndexCorruption: as :class:`Intermediate`.
    """
    logger = logging.getLogger("fwledger.intermediate")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return Intermediate(config, url=url, logger=logger)


class IntermediateThread(UvicornThread):
    """uvicorn serving an intermediate's app in a daemon thread (tests, the demo); a context manager."""

    what = "intermediate"
