"""The status tracker server module's HTTP API (FastAPI; OpenAPI at ``/openapi.json``): a thin adapter.

Every handler authenticates the request, then calls :class:`~.daemon.Tracker`. Every error is
JSON ``{"error": {"code", "message"}}`` with a 4xx status for anything a client can cause
(:data:`HTTP_STATUS`), 503 when the tracker cannot answer yet (not synced, node down).

Requests are signed with the party's secp256k1 key (:mod:`entities.protocol.http_auth`: EIP-191 over
method, path, body hash, time and nonce; a nonce is accepted once, even across restarts).
Every response is signed by the tracker's key the same way, over ``RESPONSE-<status>``, the
request path, the body's SHA-256 and the request's own nonce when it had one (so a response
cannot be replayed to another request): :func:`verify_response` checks it.

==========================================  ======================  ======================================
``GET  /health``                            public                  ledger block, address, last sync error
``GET  /v1/attestation``                    public                  attestation of the newest indexed block
``GET  /v1/attestation/{block_number}``     public                  attestation of one block (k of n)
``GET  /v1/evidence/{header_hash}``         public                  header, attestation, proof, record
``GET  /v1/anchors?after=S``                public                  trust anchor statements above S (.anchors)
``POST /v1/anchors``                        administrator           keep a signed anchors statement to serve
``POST /v1/devices/heartbeat``              device-signed           register / heartbeat / report (C11.2.b)
``GET  /v1/devices``                        administrator           inventory with verdicts, labels (C11.2.a)
``GET  /v1/devices/{device_id}``            administrator, device   one device, its log
``GET  /v1/devices/{device_id}/plan``       administrator, device   the resolver's plan and reasons
``GET  /v1/devices/{device_id}/history``    administrator           its update history (:mod:`.history`)
``GET  /v1/outdated``                       administrator           outdated / at-risk lists (R10.b)
``POST /v1/triggers``                       author, server, admin   update request (clause 9); 202 pending
``GET  /v1/triggers``                       administrator           triggers, accepted and refused
``POST /v1/devices/{device_id}/results``    device-signed           results of an update command (P5)
``GET  /v1/rollouts``                       administrator           rollouts with per-wave counts
``GET  /v1/rollouts/{rollout_id}``          administrator           one rollout and its devices
``POST /v1/rollouts``                       administrator           a rollout for a release: target, waves, schedule
``POST /v1/rollouts/{id}/target``           administrator           devices it covers: labels, ids or all
``POST /v1/rollouts/{id}/schedule``         administrator           start time, maintenance windows (UTC)
``POST /v1/rollouts/{id}/{action}``         administrator           halt, resume, advance, retry, cancel (T9.c)
``POST /v1/admissions``                     operator-signed records admit, decommission, re-key devices
``GET  /v1/admissions``                     administrator           admissions held, counts, mode
``GET  /v1/admissions/pending``             administrator           unannounced devices (pending queue)
``POST /v1/admissions/pending/{id}/reject`` administrator           reject a pending device
==========================================  ======================  ======================================
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import anyio
from fastapi import FastAPI, Query, Request, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field
from web3 import Web3

from entities.asgi import BodyLimit, ServerTLS, UvicornThread, scope_path
from entities.asgi import check_listen as listen_check
from entities.asgi import serve as serve_app
from entities.protocol.admission import AdmissionError, parse_labels
from entities.protocol.http_auth import IDENTITY_PATH, NonceStore, remember_nonce, verify_request, verify_response
from ledger_node.registry import Deployment

from .admissions import MAX_RECORDS
from .anchors import ANCHORS_STATEMENTS_FILE, AnchorsBoard, anchors_router
from .config import TrackerConfig
from .daemon import Tracker
from .dashboard import dashboard_router
from .history import MAX_LIMIT as HISTORY_MAX
from .history import device_history
from .inventory import DEVICE_ID_PATTERN, HASH_PATTERN, HeartbeatIn, Inventory, ResultsIn, TrackerRefusal, TriggerIn
from .modules import HDR_VIA, audiences, install_modules
from .web import HTTP_STATUS, SignResponses, error_response, install_error_handlers, owned_lifespan

__all__ = ["HTTP_STATUS", "TrackerThread", "build_tracker", "check_listen", "create_app", "serve",
           "verify_response"]

_HW_PATTERN = r"^[\x20-\x7e]{1,64}$"
_MAX_BLOCK = (1 << 63) - 1
DeviceId = Annotated[str, PathParam(pattern=DEVICE_ID_PATTERN, description="Device id")]


class AdmissionsIn(BaseModel):
    """``POST /v1/admissions``: operator records (:mod:`entities.protocol.admission`), checked one by one."""

    model_config = ConfigDict(extra="forbid")
    records: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_RECORDS)


class RejectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str | None = Field(default=None, pattern=r"^0x[0-9a-fA-F]{40}$")
RolloutId = Annotated[int, PathParam(ge=1, le=_MAX_BLOCK, description="Rollout id")]
_REASON = r"^[\x20-\x7e]{0,256}$"


class RolloutActionIn(BaseModel):
    """The body of ``POST /v1/rollouts/{id}/{action}`` (optional): why (kept with a halt or a cancel)."""

    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, pattern=_REASON)


class RolloutTargetIn(BaseModel):
    """Which devices a rollout covers: ``labels`` (``NAME=VALUE``; every name must match, a name
    repeated accepts any of its values) or ``devices`` (ids); neither: every device."""

    model_config = ConfigDict(extra="forbid")
    labels: list[str] = Field(default_factory=list, max_length=64)
    devices: list[str] = Field(default_factory=list, max_length=10_000)


class RolloutScheduleIn(BaseModel):
    """When a rollout may issue commands: ``start`` (ISO 8601, UTC unless it says otherwise) and
    daily ``windows`` (``HH:MM-HH:MM`` or ``NAME=VALUE@HH:MM-HH:MM``, UTC)."""

    model_config = ConfigDict(extra="forbid")
    start: str | None = Field(default=None, max_length=64)
    windows: list[str] = Field(default_factory=list, max_length=16)


class RolloutCreateIn(RolloutTargetIn, RolloutScheduleIn):
    """``POST /v1/rollouts``: a rollout for a release (indexed or not yet), before devices need it."""

    header_hash: str = Field(pattern=HASH_PATTERN)
    waves: list[float] | None = Field(default=None, min_length=1, max_length=16,
                                      description="Cumulative fleet shares ending at 1.0 [tracker's waves]")


# ----------------------------------------------------------------------------- the app


class _HeartbeatNonce:
    """A heartbeat request's nonce, stored in the heartbeat's own inventory transaction (one
    commit, not two): :func:`verify_request` notes it here; :meth:`store`, the heartbeat's
    first step, records it (a replay refused before anything is written) and the heartbeat's
    commit makes it durable before the answer, as the heartbeat's own writes."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self.noted: tuple[str, str, float] | None = None

    def remember(self, address: str, nonce: str, expires_at: float) -> bool:
        self.noted = (address, nonce, expires_at)
        return True

    def store(self) -> None:
        """Raises: AuthError: ``replayed_request``."""
        if self.noted is not None:
            remember_nonce(self.inventory, *self.noted)


def create_app(tracker: Tracker, *, follow: bool = True, listen: tuple[str, int] | None = None) -> FastAPI:
    """The tracker's HTTP API over ``tracker``; its follower thread runs during the app's lifespan
    (``follow=False``: not at all, call ``tracker.cycle()`` instead). The app owns the tracker:
    the end of its lifespan closes it. ``listen``: the host and port it is served on, when known
    (the dashboard's default allowed ``Host`` headers, :class:`.dashboard.HostRule`).

    Raises:
        ConfigError: the dashboard's operator token file or ``dashboard_hosts`` is unusable.
    """
    cfg: TrackerConfig = tracker.config
    log = tracker.log

    lifespan = owned_lifespan(tracker.start if follow else None, tracker.close)

    app = FastAPI(title="fwledger status tracker", version="1", description=(__doc__ or "").split("\n\n")[0],
                  lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.tracker = tracker
    app.add_middleware(BodyLimit, limit=cfg.max_json_bytes, error=error_response)
    app.add_middleware(SignResponses, account=tracker.account)
    # MODULES.md 6: Via, modules
    install_modules(app, cfg, own=tracker.account.address, clock=tracker.clock, attestation=tracker.attestation)
    app.include_router(dashboard_router(tracker, listen=listen))  # fleet dashboard (issue 6): operator, Host
    install_error_handlers(app, log, "tracker")

    # ------------------------------------------------------------------ helpers

    def run(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        return anyio.to_thread.run_sync(fn, *args)

    async def authenticate(request: Request, nonces: NonceStore = tracker.inventory) -> str:
        body = await request.body()
        digest = hashlib.sha256(body).hexdigest()
        accepted = audiences(tracker.account.address, cfg.module_keys, request.headers.get(HDR_VIA))
        signed = await run(lambda: verify_request(dict(request.headers), request.method, scope_path(request.scope),
                                                  digest, audience=accepted, max_skew=cfg.max_skew,
                                                  nonces=nonces))
        return str(signed.address)

    def require_admin(signer: str) -> None:
        if not cfg.admin_keys:
            raise TrackerRefusal("forbidden", "no administrator keys are configured on this tracker (--admin-key)")
        if signer not in cfg.admin_keys:
            raise TrackerRefusal("forbidden", f"{signer} is not an administrator of this tracker")

    def require_admin_or_device(signer: str, device_id: str) -> None:
        if signer in cfg.admin_keys:
            return
        row = tracker.inventory.device(device_id)
        tracker.admissions.check(signer, device_id, addons=tuple(row.addons) if row is not None else None)
        if row is None or row.address != signer:
            raise TrackerRefusal("forbidden", f"{signer} may not read device {device_id}")

    # trust anchor statements (entities/anchor_rotation.py): devices read, administrators push
    board = AnchorsBoard(cfg.data_dir / ANCHORS_STATEMENTS_FILE, tracker.chain_id)
    app.include_router(anchors_router(board, authenticate=authenticate, require_admin=require_admin))

    # ------------------------------------------------------------------ public

    @app.get(IDENTITY_PATH, tags=["tracker"])
    async def identity() -> dict[str, Any]:
        """This module's address (the answer is signed over the caller's nonce, as every answer):
        the audience a client names in its signed requests."""
        return {"address": tracker.account.address, "role": "tracker"}

    @app.get("/health", tags=["tracker"])
    async def health() -> dict[str, Any]:
        """Liveness, the tracker's address and the ledger block it has indexed."""
        return await run(tracker.health)  # type: ignore[no-any-return]

    @app.get("/v1/attestation", tags=["light nodes"])
    async def attestation_head() -> dict[str, Any]:
        """This tracker's attestation of the newest block it indexed (head minus confirmations)."""
        return await run(tracker.attestation)  # type: ignore[no-any-return]

    @app.get("/v1/attestation/{block_number}", tags=["light nodes"])
    async def attestation_at(block_number: Annotated[int, PathParam(ge=0, le=_MAX_BLOCK)]) -> dict[str, Any]:
        """This tracker's attestation of one block: a device collects k of them for the same block."""
        return await run(tracker.attestation, block_number)  # type: ignore[no-any-return]

    @app.get("/v1/evidence/{header_hash}", tags=["light nodes"])
    async def evidence(
        header_hash: Annotated[str, PathParam(pattern=HASH_PATTERN, description="Release header hash")],
        hardware: Annotated[str | None, Query(pattern=_HW_PATTERN, description="Hardware class to prove the "
                                                                              "policy of")] = None,
        block: Annotated[int | None, Query(ge=0, le=_MAX_BLOCK, description="Block to prove at "
                                                                           "[newest indexed]")] = None,
    ) -> dict[str, Any]:
        """Header, this tracker's attestation, the registry proof and the record of one release."""
        return await run(tracker.evidence, header_hash.lower(), hardware, block)  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ devices (C11.2.b)

    @app.post("/v1/devices/heartbeat", tags=["devices"])
    async def heartbeat(request: Request, hb: HeartbeatIn) -> dict[str, Any]:
        """Register (first time), heartbeat and report status, signed by the device's key."""
        nonce = _HeartbeatNonce(tracker.inventory)
        signer = await authenticate(request, nonce)
        return await run(lambda: tracker.heartbeat(signer, hb, first=nonce.store))  # type: ignore[no-any-return]

    @app.get("/v1/devices", tags=["operator"])
    async def devices(
        request: Request,
        status: Annotated[Literal["outdated", "up-to-date", "at-risk", "unknown", "unreachable", "update-needed",
                                  "safe-mode", "no-firmware", "unverified", "in-trial", "concerned"] | None,
                       Query()] = None,
        label: Annotated[list[str] | None, Query(description="NAME=VALUE: only devices "
                                                 "whose admission carries this label (repeat: all of them)")] = None,
    ) -> list[dict[str, Any]]:
        """The inventory: every device's report, readiness, verdict, updates needed (C11.2.a-b) and
        the labels of its admission."""
        require_admin(await authenticate(request))
        try:
            wanted = parse_labels(list(label or []))
        except AdmissionError as exc:
            raise TrackerRefusal(exc.code, str(exc)) from None
        rows = await run(tracker.devices, status)
        return await run(tracker.admissions.with_labels, rows, wanted)  # type: ignore[no-any-return]

    @app.get("/v1/devices/{device_id}", tags=["operator"])
    async def device(request: Request, device_id: DeviceId) -> dict[str, Any]:
        """One device with its verdict, updates needed, labels and communication log."""
        signer = await authenticate(request)
        await run(require_admin_or_device, signer, device_id)
        return (await run(tracker.admissions.with_labels, [await run(tracker.device_detail, device_id)]))[0]

    @app.get("/v1/devices/{device_id}/history", tags=["operator"])
    async def history_of(
        request: Request, device_id: DeviceId,
        limit: Annotated[int, Query(ge=1, le=HISTORY_MAX, description="Entries, newest first")] = 100,
    ) -> dict[str, Any]:
        """What happened to one device, newest first: admission, registration, updates needed,
        commands (product, versions, rollout), results (installed, failed with code), trial
        confirmed or rolled back, heartbeats summarised; and its standing in each rollout."""
        require_admin(await authenticate(request))
        out = await run(lambda: device_history(tracker.inventory.path, device_id, limit=limit))
        if not out["entries"] and not out["rollouts"] and await run(tracker.inventory.device, device_id) is None:
            raise TrackerRefusal("unknown_device", f"no device {device_id} in this tracker's inventory or log")
        return out  # type: ignore[no-any-return]

    @app.get("/v1/devices/{device_id}/plan", tags=["operator"])
    async def device_plan(request: Request, device_id: DeviceId) -> dict[str, Any]:
        """The device's update plan now, dependencies first, with why each newer release is not in it."""
        signer = await authenticate(request)
        await run(require_admin_or_device, signer, device_id)
        return await run(tracker.plan, device_id)  # type: ignore[no-any-return]

    @app.get("/v1/outdated", tags=["operator"])
    async def outdated(request: Request) -> dict[str, Any]:
        """Up-to-date and outdated devices (R10.b.i), revoked or vulnerable ones (R10.b.ii)."""
        require_admin(await authenticate(request))
        return await run(tracker.outdated_lists)  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ admission (entities/admission.py)

    @app.post("/v1/admissions", tags=["operator"])
    async def admissions_in(body: AdmissionsIn) -> dict[str, Any]:
        """Operator admission records (admit, decommission, replace a key), each signed by an
        operator key; all verify or none is applied. ``{"applied", "stale", "results"}``."""
        return await run(tracker.admissions.receive, body.records)  # type: ignore[no-any-return]

    @app.get("/v1/admissions", tags=["operator"])
    async def admissions_list(request: Request) -> dict[str, Any]:
        """Every admission this tracker holds, the counts and the admission mode."""
        require_admin(await authenticate(request))
        return await run(tracker.admissions.listing)  # type: ignore[no-any-return]

    @app.get("/v1/admissions/pending", tags=["operator"])
    async def admissions_pending(request: Request) -> list[dict[str, Any]]:
        """Devices that showed up signed but unannounced: the operator accepts (an admission
        record) or rejects them."""
        require_admin(await authenticate(request))
        return await run(tracker.admissions.pending)  # type: ignore[no-any-return]

    @app.post("/v1/admissions/pending/{device_id}/reject", tags=["operator"])
    async def admissions_reject(request: Request, device_id: DeviceId, body: RejectIn) -> dict[str, Any]:
        """Reject a pending device (every key queued for the id, or ``address``'s only)."""
        signer = await authenticate(request)
        require_admin(signer)
        return await run(tracker.admissions.reject, device_id, body.address, signer)  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ triggers (clause 9)

    @app.post("/v1/triggers", tags=["triggers"])
    async def trigger(request: Request, response: Response, body: TriggerIn) -> dict[str, Any]:
        """An update request from an author (T9.a), a firmware server (T9.b) or an administrator (T9.c).
        202 with ``pending: true``: a server's trigger for a release not indexed yet, acted on once it is."""
        signer = await authenticate(request)
        out: dict[str, Any] = await run(tracker.trigger, signer, body)
        if out.get("pending"):
            response.status_code = 202
        return out

    @app.get("/v1/triggers", tags=["operator"])
    async def triggers(request: Request, limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> list[dict[str, Any]]:
        """Triggers received, newest first, with the refusal code of the refused ones."""
        require_admin(await authenticate(request))
        return [t.to_json() for t in await run(tracker.inventory.triggers, limit)]

    # ------------------------------------------------------------------ commands and rollouts (MODULES.md 3-4)

    @app.post("/v1/devices/{device_id}/results", tags=["devices"])
    async def results(request: Request, device_id: DeviceId, body: ResultsIn) -> dict[str, Any]:
        """What became of an update command issued to this device, signed by the device's key:
        ``{"recorded", "rollouts": [{"id", "state", "wave"}]}``."""
        signer = await authenticate(request)
        return await run(tracker.results, signer, device_id, body)  # type: ignore[no-any-return]

    @app.get("/v1/rollouts", tags=["operator"])
    async def rollouts(request: Request) -> list[dict[str, Any]]:
        """Rollouts, newest first, with per-wave counts (devices, commanded, succeeded, failed)."""
        require_admin(await authenticate(request))
        return await run(tracker.rollouts)  # type: ignore[no-any-return]

    @app.get("/v1/rollouts/{rollout_id}", tags=["operator"])
    async def rollout(request: Request, rollout_id: RolloutId) -> dict[str, Any]:
        """One rollout with per-wave counts and each device's wave and state."""
        require_admin(await authenticate(request))
        return await run(tracker.rollout, rollout_id)  # type: ignore[no-any-return]

    @app.post("/v1/rollouts", tags=["operator"])
    async def rollout_create(request: Request, body: RolloutCreateIn) -> dict[str, Any]:
        """An administrator creates the rollout of a release before devices need it: its target,
        waves and schedule (refused ``rollout_exists`` when the release has one)."""
        signer = await authenticate(request)
        require_admin(signer)
        return await run(lambda: tracker.rollout_create(  # type: ignore[no-any-return]
            body.header_hash, signer, labels=body.labels, devices=body.devices, waves=body.waves, start=body.start,
            windows=body.windows))

    @app.post("/v1/rollouts/{rollout_id}/target", tags=["operator"])
    async def rollout_target(request: Request, rollout_id: RolloutId, body: RolloutTargetIn) -> dict[str, Any]:
        """An administrator sets which devices a rollout covers; devices left out are not offered
        the release by it (their unreported commands for it are superseded)."""
        signer = await authenticate(request)
        require_admin(signer)
        return await run(lambda: tracker.rollout_steer(rollout_id, signer,  # type: ignore[no-any-return]
                                                       target=body.model_dump()))

    @app.post("/v1/rollouts/{rollout_id}/schedule", tags=["operator"])
    async def rollout_schedule(request: Request, rollout_id: RolloutId, body: RolloutScheduleIn) -> dict[str, Any]:
        """An administrator sets when a rollout may issue commands (start, maintenance windows)."""
        signer = await authenticate(request)
        require_admin(signer)
        return await run(lambda: tracker.rollout_steer(rollout_id, signer,  # type: ignore[no-any-return]
                                                       schedule=body.model_dump()))

    @app.post("/v1/rollouts/{rollout_id}/{action}", tags=["operator"])
    async def rollout_action(request: Request, rollout_id: RolloutId,
                             action: Annotated[Literal["halt", "resume", "advance", "retry", "cancel"], PathParam()],
                             body: RolloutActionIn | None = None) -> dict[str, Any]:
        """An administrator halts, resumes, opens the next wave of a rollout, has its failed
        devices tried again, or cancels it (T9.c; terminal); the rollout after it."""
        signer = await authenticate(request)
        require_admin(signer)
        reason = body.reason if body is not None else None
        return await run(tracker.rollout_action, rollout_id, action, signer, reason)  # type: ignore[no-any-return]

    return app


# ----------------------------------------------------------------------------- running it


def build_tracker(config: TrackerConfig, w3: Web3, deployment: Deployment, *, confirmations: int = 0,
                  batch_blocks: int = 500) -> Tracker:
    """A tracker logging JSON lines to stderr.

    Raises:
        ConfigError, ChainError, IndexCorruption: as :class:`~.daemon.Tracker`.
    """
    logger = logging.getLogger("fwledger.tracker")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return Tracker(config, w3, deployment, confirmations=confirmations, batch_blocks=batch_blocks, logger=logger)


def check_listen(host: str, port: int, tls: ServerTLS | None = None) -> None:
    """Fail early, in one line, when ``host:port`` cannot be listened on, or would serve plain
    HTTP beyond loopback.

    Raises:
        ConfigError: plain HTTP on a non-loopback address, unusable TLS files, or the address is taken.
    """
    listen_check(host, port, "tracker", tls=tls)


def serve(app: FastAPI, host: str, port: int, *, tls: ServerTLS | None = None) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn's handlers) in this thread; HTTPS with ``tls``.

    Raises:
        ConfigError: the tracker could not start.
    """
    check_listen(host, port, tls)
    serve_app(app, host, port, "tracker", tls=tls)


class TrackerThread(UvicornThread):
    """uvicorn serving a tracker app on loopback in a daemon thread (tests, the demo); a context manager."""

    what = "tracker"
