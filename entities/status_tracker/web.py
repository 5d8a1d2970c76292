"""HTTP plumbing shared by the status tracker's server module (:mod:`.app`) and its intermediate
modules (:mod:`.intermediate`): the error codes and their statuses, the JSON error answer, the
exception handlers that produce it, and the middleware that signs every response.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
from eth_account.signers.local import LocalAccount
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from entities.asgi import json_error, scope_path
from entities.protocol.http_auth import AuthError, sign_response
from ledger_node.errors import FwledgerError

from .inventory import TrackerRefusal

__all__ = ["HTTP_STATUS", "SignResponses", "error_response", "install_error_handlers", "owned_lifespan"]

#: stable error code -> HTTP status
HTTP_STATUS: dict[str, int] = {
    "malformed_json": 400, "bad_request": 400,
    "unsigned": 401, "bad_signature_format": 401, "bad_signature": 401, "stale_request": 401,
    "replayed_request": 401, "operator_required": 401, "no_audience": 401, "bad_audience": 401,
    "wrong_audience": 401,
    "not_admitted": 403, "decommissioned": 403, "rejected": 403, "bad_certificate": 403,
    "unknown_operator": 403, "bad_admission": 422, "bad_labels": 422, "bad_addons": 422, "board_not_admitted": 403,
    "forbidden": 403, "unknown_party": 403, "not_vendor_release": 403, "device_key_mismatch": 403,
    "unknown_module": 403, "devices_not_allowed": 403,
    "not_found": 404, "unknown_device": 404, "unknown_release": 404, "unknown_command": 404, "unknown_rollout": 404,
    "unknown_hardware": 404,
    "method_not_allowed": 405,
    "block_not_synced": 409, "release_not_at_block": 409, "flagged_release": 409, "release_revoked": 409,
    "release_vulnerable": 409, "already_reported": 409, "rollout_completed": 409, "rollout_not_halted": 409,
    "rollout_halted": 409, "rollout_fully_open": 409, "rollout_no_failures": 409, "rollout_cancelled": 409,
    "rollout_exists": 409, "bad_target": 422, "bad_schedule": 422, "bad_settings": 422,
    "too_large": 413,
    "bad_host": 421,
    "rate_limited": 429,
    "invalid_request": 422, "not_on_ledger": 422, "version_mismatch": 422, "result_mismatch": 422,
    "bad_action": 422,
    "anchors_malformed": 422, "anchors_chain": 422, "anchors_quorum": 422, "anchors_not_newer": 409,
    "internal_error": 500,
    "not_synced": 503, "unavailable": 503,
}


def error_response(code: str, message: str, status: int | None = None, details: Mapping[str, Any] | None = None
                   ) -> JSONResponse:
    """``{"error": {"code", "message", **details}}`` with ``status`` (default: the code's, else 400)."""
    return json_error(code, message, status or HTTP_STATUS.get(code, 400), details=details, max_message=500)


def install_error_handlers(app: FastAPI, log: logging.Logger, what: str) -> None:
    """Every exception becomes a JSON error: refusals and bad input a 4xx, ledger trouble a 503
    ("the ``what`` cannot answer now"), anything else a 500 (logged)."""

    @app.exception_handler(TrackerRefusal)
    async def on_refusal(request: Request, exc: TrackerRefusal) -> JSONResponse:
        return error_response(exc.code, str(exc), details=exc.details)

    @app.exception_handler(AuthError)
    async def on_auth(request: Request, exc: AuthError) -> JSONResponse:
        return error_response(exc.code, str(exc), status=401)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errs):
            return error_response("malformed_json", "request body is not valid JSON")
        first = errs[0] if errs else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response("invalid_request", f"{where}: {first.get('msg', 'invalid')}"[:300])

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return error_response(code, str(exc.detail), status=exc.status_code if 400 <= exc.status_code < 500 else 400)

    @app.exception_handler(FwledgerError)
    async def on_fwledger(request: Request, exc: FwledgerError) -> JSONResponse:
        log.warning(f"unavailable: {type(exc).__name__}: {exc}")
        return error_response("unavailable", f"the {what} cannot answer now: {exc}", status=503)

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        log.error(f"internal error: {type(exc).__name__}: {exc}")
        return error_response("internal_error", "internal error", status=500)


class SignResponses:
    """Pure ASGI middleware: buffers each (small, JSON) response and signs it with ``account``
    over its status, the request path, its body and the request's nonce (a fresh one if none)."""

    def __init__(self, app: ASGIApp, account: LocalAccount) -> None:
        self.app = app
        self.account = account

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope_path(scope)
        request_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        start: dict[str, Any] = {}
        body = bytearray()

        async def signed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            body.extend(message.get("body", b""))
            if message.get("more_body", False):
                return
            hdrs = sign_response(self.account, int(start["status"]), path, bytes(body), request_headers)
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers += [(k.lower().encode(), v.encode()) for k, v in hdrs.items()]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": bytes(body)})

        await self.app(scope, receive, signed_send)



def owned_lifespan(start: Callable[[], None] | None, close: Callable[[], None]
                   ) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """An app's lifespan for a module the app owns: ``start`` its background thread (None: no
    thread), and ``close`` it (in a worker thread: it joins threads and closes databases) when
    the app ends."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if start is not None:
            start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(close)

    return lifespan
