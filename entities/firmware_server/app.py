"""The firmware server's HTTP API (FastAPI; OpenAPI at ``/openapi.json``): a thin adapter.

Every handler gathers the request's facts and calls :class:`.FirmwareService`, whose decisions
are :mod:`.policy`'s. Every error is JSON ``{"error": {"code", "message", ...}}`` with a 4xx
status for anything a client can cause (``HTTP_STATUS`` maps codes to statuses). One JSON log
line per request goes to stderr (method, path, status, bytes, milliseconds, client, code).

Endpoints (X.1368 clause 11.3; the shared spec is ``docs/SERVER_API.md``):

==========================================  =================  ==========================================
``GET  /health``                            public             ledger block, counts, last sync error
``POST /v1/bundles``                        vendor-signed      upload a bundle (C11.3.a, C11.3.c)
``POST /v1/devices``                        device-signed      register an admitted device (C11.3.d)
``POST /v1/admissions``                     operator records   admit, decommission, re-key devices
``GET  /v1/admissions``                     operator           admissions held
``GET  /v1/images``                         public             images and their ledger status (C11.3.e)
``GET  /v1/images/{hash}``                  device-signed      the payload, ``Range`` for resume (P4)
``GET  /v1/images/{hash}/header``           device-signed      the bundle header JSON
``GET  /v1/vendors``                        public             vendors on the ledger, barred ones (C11.3.d)
``GET  /v1/devices``                        operator           registered devices (C11.3.d)
``GET  /v1/downloads``                      operator           download log, refusals too (C11.3.f);
                                                               ``?device=``, ``?image=``, ``?limit=``
``GET|POST /v1/admin/location-rules``       operator           location rules (C11.3.h)
``GET|POST /v1/admin/known-bad``            operator           known-bad payload hashes (C11.3.c)
``POST /v1/admin/vendors/{name}/unbar``     operator           lift a vendor's bar, with a reason (C11.3.c)
``GET  /v1/admin/bars``                     operator           history of bars and lifts (C11.3.c)
``GET  /v1/admin/concerned/{hash}``         operator           devices a release concerns, trackers told (C11.3.g)
``POST /v1/admin/device-region``            operator           assign a device's region (C11.3.h)
==========================================  =================  ==========================================

``{hash}`` is a published image's header hash, or an upload's digest (then ``not_published``
until the ledger has the record). Operator endpoints take ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import anyio
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from entities.asgi import BodyLimit, json_error, scope_path
from entities.protocol.http_auth import (
    HDR_ADDRESS,
    HDR_CONTENT_SHA256,
    HDR_NONCE,
    HDR_SIGNATURE,
    HDR_TIME,
    IDENTITY_PATH,
    AuthError,
    SignedRequest,
    sign_response,
)
from entities.zerocopy import ZEROCOPY
from ledger_node.errors import FwledgerError

from .app_models import (
    _BINARY,
    _SIGNED,
    HASH_PATTERN,
    HTTP_STATUS,
    AdmissionsIn,
    DeviceIn,
    DeviceOut,
    Health,
    KnownBadIn,
    KnownBadOut,
    RegionIn,
    RulesIn,
    RulesOut,
    UnbarIn,
    UnbarOut,
    UploadOut,
    _errors,
)
from .config import ServerConfig
from .ledger import LedgerView
from .policy import Refusal, normalise_label, parse_rules
from .service import FirmwareService, json_logger
from .store import DeviceTaken
from .transfer import PayloadResponse, parse_range

__all__ = ["HTTP_STATUS", "create_app"]

_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_UPLOAD_BATCH = 1 << 20
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_UPLOAD_PATH = "/v1/bundles"


# ----------------------------------------------------------------------------- helpers


def _error_response(code: str, message: str, details: dict[str, Any] | None = None,
                    status: int | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return json_error(code, message, status or HTTP_STATUS.get(code, 400), details=details, headers=headers)


def _client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def signature_headers(
    x_fwledger_address: Annotated[str | None, Header(description="Signer's Ethereum address")] = None,
    x_fwledger_time: Annotated[str | None, Header(description="Unix time of the request")] = None,
    x_fwledger_nonce: Annotated[str | None, Header(description="32 hex characters, never reused")] = None,
    x_fwledger_signature: Annotated[str | None, Header(description="EIP-191 signature (entities/http_auth.py)")]
    = None,
) -> None:
    """Documents the signed-request headers in OpenAPI; verification reads the raw headers."""


_BEARER = HTTPBearer(auto_error=False, description="Operator token (config admin_token or <data>/admin.token)")


def operator(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
    """Operator endpoints: ``Authorization: Bearer <admin token>``.

    Raises:
        Refusal: ``unauthorized``.
    """
    token: str = request.app.state.admin_token
    if creds is None or not hmac.compare_digest(creds.credentials.encode(), token.encode()):
        raise Refusal("unauthorized", "operator endpoints need Authorization: Bearer <admin token>")


# ----------------------------------------------------------------------------- middleware


class _RequestLog:
    """Pure ASGI middleware: one JSON log line per HTTP request, after its response ended."""

    def __init__(self, app: ASGIApp, log: Callable[[dict[str, Any]], None]) -> None:
        self.app = app
        self.emit = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        info: dict[str, Any] = {"status": None, "bytes": 0}
        scope.setdefault("state", {})

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                info["status"] = message["status"]
            elif message["type"] == "http.response.body":
                info["bytes"] += len(message.get("body", b""))
            await send(message)
            if message["type"] == ZEROCOPY:  # counted once sent (a send the client cut raises)
                info["bytes"] += int(message.get("count", 0))

        try:
            await self.app(scope, receive, send_logged)
        finally:
            state = scope.get("state", {})
            client = scope.get("client")
            self.emit({"method": scope.get("method"), "path": scope.get("path"), "status": info["status"],
                       "bytes": info["bytes"], "ms": round((time.perf_counter() - started) * 1000, 2),
                       "client": client[0] if client else None, "code": state.get("error_code"),
                       "signer": state.get("signer")})


# ----------------------------------------------------------------------------- the app


def create_app(config: ServerConfig, ledger: LedgerView, *, follow: bool = True) -> FastAPI:
    """The firmware server application over ``ledger``, storing in ``config.data_dir``.

    The ledger follower thread runs while the app's lifespan does (``follow=False``: not at
    all; call ``app.state.service.sync_and_reconcile()`` instead).

    Raises:
        ConfigError, IndexCorruption: the data folder cannot be used.
    """
    logger = json_logger()
    service = FirmwareService(config, ledger, logger=logger)
    admin_token = config.resolved_admin_token()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if follow:
            service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="fwledger firmware server", version="1",
                  description=(__doc__ or "").split("\n\n")[0], lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.state.admin_token = admin_token
    app.add_middleware(BodyLimit, limit=config.max_json_bytes, error=_error_response,
                       exempt=lambda scope: scope["path"] == _UPLOAD_PATH and scope["method"] == "POST")
    app.add_middleware(_RequestLog, log=lambda fields: logger.info("request", extra={"fields": fields}))

    # ------------------------------------------------------------------ errors

    def _fail(request: Request, code: str, message: str, details: dict[str, Any] | None = None,
              headers: dict[str, str] | None = None) -> JSONResponse:
        request.state.error_code = code
        return _error_response(code, message, details, headers=headers)

    @app.exception_handler(Refusal)
    async def on_refusal(request: Request, exc: Refusal) -> JSONResponse:
        headers = {"Content-Range": f"bytes */{exc.details['size']}"} if exc.code == "bad_range" else None
        details = {k: v for k, v in exc.details.items() if k != "size"}
        request.state.error_code = exc.code
        return _error_response(exc.code, str(exc), details, status=exc.status, headers=headers)

    @app.exception_handler(AuthError)
    async def on_auth(request: Request, exc: AuthError) -> JSONResponse:
        return _fail(request, exc.code, str(exc))

    @app.exception_handler(DeviceTaken)
    async def on_taken(request: Request, exc: DeviceTaken) -> JSONResponse:
        return _fail(request, "device_id_taken", str(exc))

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errs):
            return _fail(request, "malformed_json", "request body is not valid JSON")
        first = errs[0] if errs else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _fail(request, "invalid_request", f"{where}: {first.get('msg', 'invalid')}"[:300])

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        status = exc.status_code if 400 <= exc.status_code < 500 else 400
        request.state.error_code = code
        return _error_response(code, str(exc.detail), status=status,
                               headers=dict(exc.headers) if exc.headers else None)

    @app.exception_handler(ClientDisconnect)
    async def on_disconnect(request: Request, exc: ClientDisconnect) -> JSONResponse:
        return _fail(request, "client_disconnected", "the client went away before the body ended")

    @app.exception_handler(FwledgerError)
    async def on_fwledger(request: Request, exc: FwledgerError) -> JSONResponse:
        request.state.error_code = "unavailable"
        logger.error("server_error", extra={"fields": {"error": f"{type(exc).__name__}: {exc}"}})
        return _error_response("unavailable", "the server cannot answer now (ledger or storage)", status=503)

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        request.state.error_code = "internal_error"
        logger.error("internal_error", extra={"fields": {"error": f"{type(exc).__name__}: {exc}"}})
        return _error_response("internal_error", "internal error", status=500)

    # ------------------------------------------------------------------ auth helpers

    def run(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        return anyio.to_thread.run_sync(fn, *args)

    async def authenticate(request: Request, body: bytes = b"") -> SignedRequest:
        # signature recovery and the nonce's durable write stay off the event loop
        digest = hashlib.sha256(body).hexdigest() if body else _EMPTY_SHA256
        signed: SignedRequest = await run(service.authenticate, request.headers, request.method,
                                          scope_path(request.scope), digest)
        request.state.signer = signed.address
        return signed

    # ------------------------------------------------------------------ public

    @app.get("/health", response_model=Health, tags=["server"])
    async def health() -> dict[str, Any]:
        """Liveness and the ledger block the server has followed to."""
        return await run(service.health)

    @app.get(IDENTITY_PATH, tags=["server"])
    async def identity(request: Request) -> Response:
        """This server's address, signed over the caller's ``X-Fwledger-Nonce``: the audience a
        client names in its signed requests (:mod:`entities.protocol.http_auth`)."""
        body = json.dumps({"address": service.identity.address, "role": "firmware_server"},
                          separators=(",", ":")).encode()
        headers = sign_response(service.identity, 200, IDENTITY_PATH, body, request.headers)
        return Response(body, media_type="application/json", headers=headers)

    # ------------------------------------------------------------------ C11.3.a, C11.3.c

    @app.post(_UPLOAD_PATH, status_code=201, response_model=UploadOut, tags=["vendors"],
              dependencies=[Depends(signature_headers)],
              responses={200: {"model": UploadOut, "description": "Already stored"},
                         **_errors(*_SIGNED, 403, 410)},
              openapi_extra={"requestBody": {"required": True, "content": _BINARY,
                                             "description": "A bundle (docs/BUNDLE.md), raw bytes"}})
    async def upload_bundle(request: Request) -> JSONResponse:
        """Upload a bundle, signed by an active vendor's key (C11.3.a); checked against itself and
        the ledger (C11.3.c); held unpublished until the ledger has its record."""
        headers = request.headers
        if not all(h in headers for h in (HDR_ADDRESS, HDR_TIME, HDR_NONCE, HDR_SIGNATURE)):
            raise AuthError("unsigned", "request is not signed (X-Fwledger-* headers missing)")
        declared = headers.get("content-length")
        if declared is None:
            raise Refusal("length_required", "an upload declares its Content-Length (no chunked uploads)")
        if not declared.isdigit() or len(declared) > 15:
            raise Refusal("bad_request", "malformed Content-Length")
        digest = headers.get(HDR_CONTENT_SHA256, "").lower()
        if not _SHA256_HEX.match(digest):
            raise AuthError("no_intent", f"an upload names its body's SHA-256 in {HDR_CONTENT_SHA256}, signed "
                                         "with the request, before the body is sent")
        # the intent (signer, audience, size, digest) is authenticated before a byte of the body is
        # read; the nonce is spent here
        signed = await run(lambda: service.authenticate(headers, "POST", scope_path(request.scope), digest))
        request.state.signer = signed.address
        length = int(declared)
        with service.upload_slot(signed, length) as sink:
            batch = bytearray()
            async for piece in request.stream():
                batch += piece
                if len(batch) >= _UPLOAD_BATCH:
                    await run(sink.feed, bytes(batch))
                    batch.clear()
            if batch:
                await run(sink.feed, bytes(batch))
            result = await run(sink.finish)
            if result.body_bytes != length or result.body_sha256 != digest:
                raise Refusal("body_mismatch", "the body is not the one whose size and SHA-256 were signed")
            row, created = await run(service.accept_upload, signed, result)
        body = {"digest": "0x" + row.digest.hex(), "file_hash": "0x" + row.file_hash.hex(),
                "state": row.state if row.state != "withdrawn" else "unpublished",
                "header_hash": "0x" + row.header_hash.hex() if row.header_hash else None}
        if row.state == "withdrawn":
            raise Refusal("vendor_barred", "this image was withdrawn from the server")
        return JSONResponse(body, status_code=201 if created else 200)

    # ------------------------------------------------------------------ C11.3.d

    @app.post("/v1/devices", status_code=201, response_model=DeviceOut, tags=["devices"],
              dependencies=[Depends(signature_headers)], responses=_errors(*_SIGNED, 409))
    async def register_device(request: Request, device: DeviceIn) -> JSONResponse:
        """Register the signing key as a device of a hardware class on the ledger (C11.3.d)."""
        signed = await authenticate(request, await request.body())
        location = normalise_label(device.location) if device.location else None
        dev = await run(service.register_device, signed, device.device_id, device.hardware, location,
                        device.certificate, tuple(device.addons))
        return JSONResponse(dev.__dict__, status_code=201)

    @app.post("/v1/admissions", tags=["operator"], responses=_errors(403, 422))
    async def admissions_in(body: AdmissionsIn) -> dict[str, Any]:
        """Operator admission records (admit, decommission, replace a key), each signed by one of
        the server's ``operator_keys``: all verify or none is applied."""
        return await run(service.receive_admissions, body.records)  # type: ignore[no-any-return]

    @app.get("/v1/admissions", tags=["operator"], dependencies=[Depends(operator)], responses=_errors(401))
    async def admissions_list() -> dict[str, Any]:
        """Every admission this server holds and the admission mode."""
        def rows() -> dict[str, Any]:
            return {"mode": "required" if service.admission_required else "open",
                    "counts": service.admissions.counts(),
                    "admissions": [a.to_json() for a in service.admissions.all()]}
        return await run(rows)  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ P4, C11.3.b

    @app.get("/v1/images/{header_hash}", tags=["devices"], response_class=JSONResponse,
             dependencies=[Depends(signature_headers)],
             responses={200: {"content": _BINARY, "description": "The payload (ciphertext)"},
                        206: {"content": _BINARY, "description": "The requested range of the payload"},
                        **_errors(*_SIGNED, 403, 404, 409, 410, 416)})
    async def download(
        request: Request,
        header_hash: Annotated[str, PathParam(pattern=HASH_PATTERN, description="Header hash (or upload digest)")],
        range_header: Annotated[str | None, Header(alias="Range", description="bytes=START-END")] = None,
    ) -> PayloadResponse:
        """The payload of a published image, to a registered device entitled to it (P4)."""
        signed = await authenticate(request, await request.body())
        target = bytes.fromhex(header_hash[2:])
        image, _device, row_id = await run(lambda: service.authorize(signed, target, what="payload",
                                                                     client_ip=_client_ip(request)))
        try:
            rng = parse_range(range_header, image.size)
        except Refusal as exc:
            await run(service.store.refuse_download, row_id, exc.code)
            raise
        try:
            fd = os.open(service.store.object_path(image.file_hash), os.O_RDONLY)
        except FileNotFoundError:  # withdrawn between the decision and now
            await run(service.store.refuse_download, row_id, "revoked")
            raise Refusal("revoked", "image withdrawn from this server") from None
        start, end = rng if rng is not None else (0, image.size)
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes",
                   "ETag": f'"{image.file_hash.hex()}"'}
        if rng is not None:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{image.size}"

        def done(sent: int, _complete: bool) -> None:
            try:
                service.store.set_download_bytes(row_id, sent, rng)
            except Exception as exc:  # the log is best effort once the bytes are gone
                logger.warning("download_log_failed", extra={"fields": {"error": str(exc)}})

        return PayloadResponse(fd, start, end, status=206 if rng is not None else 200, headers=headers,
                               on_done=done)

    @app.get("/v1/images/{header_hash}/header", tags=["devices"], dependencies=[Depends(signature_headers)],
             responses={200: {"description": "The bundle header (record, signature, encryption)"},
                        **_errors(*_SIGNED, 403, 404, 409, 410)})
    async def image_header(
        request: Request,
        header_hash: Annotated[str, PathParam(pattern=HASH_PATTERN)],
    ) -> JSONResponse:
        """The bundle header of a published image, to an entitled device (P4)."""
        signed = await authenticate(request, await request.body())
        image, _d, _row = await run(lambda: service.authorize(signed, bytes.fromhex(header_hash[2:]), what="header",
                                                              client_ip=_client_ip(request)))
        return JSONResponse(image.header_json)

    # ------------------------------------------------------------------ listings

    @app.get("/v1/images", tags=["server"], responses=_errors(422))
    async def list_images(
        product: Annotated[str | None, Query(max_length=64)] = None,
        state: Annotated[Literal["unpublished", "published", "withdrawn"] | None, Query()] = None,
    ) -> list[dict[str, Any]]:
        """Images per product line with their ledger status (C11.3.e)."""

        def rows() -> list[dict[str, Any]]:
            out = []
            for img in service.store.images(state=state, product=product):
                item = img.to_json()
                rel = ledger.release(img.header_hash) if img.header_hash else None
                item["ledger"] = None if rel is None else {
                    "head": rel.head, "revoked": rel.revoked, "revoke_reason": rel.revoke_reason,
                    "vulnerable": rel.vulnerable, "block": rel.block}
                out.append(item)
            return out

        return await run(rows)

    @app.get("/v1/vendors", tags=["server"])
    async def list_vendors() -> list[dict[str, Any]]:
        """Vendors as the ledger has them, with the server's bars (C11.3.d)."""

        def rows() -> list[dict[str, Any]]:
            barred = service.store.barred()
            counts: dict[str, int] = {}
            for img in service.store.images():
                counts[img.vendor_name] = counts.get(img.vendor_name, 0) + 1
            out = [{**v.to_json(), "barred": v.name in barred, "barred_reason": barred.get(v.name, {}).get("reason"),
                    "images": counts.get(v.name, 0)} for v in ledger.vendors()]
            return out

        return await run(rows)

    @app.get("/v1/devices", tags=["operator"], dependencies=[Depends(operator)], responses=_errors(401))
    async def list_devices() -> list[dict[str, Any]]:
        """Registered devices (C11.3.d)."""
        return [d.__dict__ for d in await run(service.store.devices)]

    @app.get("/v1/downloads", tags=["operator"], dependencies=[Depends(operator)], responses=_errors(401, 422))
    async def list_downloads(
        device: Annotated[str | None, Query(max_length=64, description="Device id or address")] = None,
        image: Annotated[str | None, Query(pattern=r"^0x[0-9a-fA-F]{64}$", description="Header hash")] = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    ) -> list[dict[str, Any]]:
        """The download log, newest first: served and refused, with the refusing rule (C11.3.f, h);
        of one device and/or one image (its header hash)."""
        return [r.to_json() for r in await run(lambda: service.store.downloads(device=device, header_hash=image,
                                                                               limit=limit))]

    # ------------------------------------------------------------------ operator

    @app.get("/v1/admin/location-rules", response_model=RulesOut, tags=["operator"],
             dependencies=[Depends(operator)], responses=_errors(401))
    async def get_rules() -> dict[str, Any]:
        """The location rules in force (first match wins, default allow)."""
        return {"rules": [r.to_json() for r in await run(service.store.rules)]}

    @app.post("/v1/admin/location-rules", response_model=RulesOut, tags=["operator"],
              dependencies=[Depends(operator)], responses=_errors(401, 422))
    async def set_rules(body: RulesIn) -> dict[str, Any]:
        """Replace the location rules (C11.3.h)."""
        try:
            rules = parse_rules(r.model_dump(exclude_none=True) for r in body.rules)
        except ValueError as exc:
            raise Refusal("invalid_request", str(exc)) from None
        await run(service.set_rules, rules)
        return {"rules": [r.to_json() for r in rules]}

    @app.get("/v1/admin/known-bad", tags=["operator"], dependencies=[Depends(operator)], responses=_errors(401))
    async def get_known_bad() -> list[dict[str, Any]]:
        """The known-bad payload hashes."""
        return await run(service.store.known_bad_list)

    @app.post("/v1/admin/known-bad", status_code=201, response_model=KnownBadOut, tags=["operator"],
              dependencies=[Depends(operator)], responses=_errors(401, 422))
    async def add_known_bad(body: KnownBadIn) -> dict[str, Any]:
        """Add a payload hash to the known-bad list; stored copies are withdrawn, their vendors barred."""
        barred = await run(service.add_known_bad, bytes.fromhex(body.file_hash[2:]), body.reason)
        return {"file_hash": body.file_hash.lower(), "barred": barred}

    @app.post("/v1/admin/vendors/{name}/unbar", response_model=UnbarOut, tags=["operator"],
              dependencies=[Depends(operator)], responses=_errors(401, 409, 422))
    async def unbar_vendor(
        name: Annotated[str, PathParam(min_length=1, max_length=64, description="Vendor name")],
        body: UnbarIn,
    ) -> dict[str, Any]:
        """Lift this server's bar of a vendor, for a reason (logged, kept in the bar history); never
        for a vendor revoked on the ledger (409 ``vendor_revoked``)."""
        return await run(service.lift_bar, name, body.reason)

    @app.get("/v1/admin/bars", tags=["operator"], dependencies=[Depends(operator)], responses=_errors(401, 422))
    async def bar_history(vendor: Annotated[str | None, Query(max_length=64)] = None) -> list[dict[str, Any]]:
        """Every bar and lift of one, oldest first, with its reason."""
        return await run(lambda: service.store.bar_history(vendor))

    @app.get("/v1/admin/concerned/{header_hash}", tags=["operator"], dependencies=[Depends(operator)],
             responses=_errors(401, 404, 422))
    async def concerned(header_hash: Annotated[str, PathParam(pattern=r"^0x[0-9a-fA-F]{64}$")]) -> dict[str, Any]:
        """C11.3.g: the devices a release on the ledger concerns (they took an older version of its
        line here; their class is one it supports) and the trackers told of them."""
        return await run(service.concerned, bytes.fromhex(header_hash[2:]))

    @app.post("/v1/admin/device-region", response_model=DeviceOut, tags=["operator"],
              dependencies=[Depends(operator)], responses=_errors(401, 404, 422))
    async def assign_region(body: RegionIn) -> dict[str, Any]:
        """Assign (or clear, with null) the region of a device; it overrides what the device declared."""
        dev = await run(service.store.find_device, body.device)
        if dev is None:
            raise Refusal("unknown_device", f"no registered device {body.device}")
        await run(service.store.assign_region, dev.address, normalise_label(body.region) if body.region else None)
        fresh = await run(service.store.device, dev.address)
        return dict(fresh.__dict__) if fresh is not None else {}

    return app


def openapi_document(app: FastAPI) -> str:
    """The OpenAPI description as canonical JSON."""
    return json.dumps(app.openapi(), sort_keys=True)
