"""Web plumbing shared by fwledger's HTTP services (firmware server, status tracker).

The JSON error shape and the signed request target every service shares, a request-body cap as
pure ASGI middleware, the uvicorn settings, a listen check that fails in one line, serving in the
foreground, and a background-thread server for tests and the demo.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import uvicorn
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from entities.http_guard import ConnectionGuard, guarded_protocol
from entities.netaddr import is_loopback
from ledger_node.errors import ConfigError

__all__ = ["BodyLimit", "ServerTLS", "UvicornThread", "bind_check", "check_listen", "json_error", "scope_path", "serve",
           "uvicorn_config"]


def json_error(code: str, message: str, status: int, *, details: Mapping[str, Any] | None = None,
               headers: Mapping[str, str] | None = None, max_message: int | None = None) -> JSONResponse:
    """The error answer of every service: ``{"error": {"code", "message", **details}}`` with
    ``status``; the message on one line (whitespace collapsed), at most ``max_message`` characters."""
    text = " ".join(str(message).split())
    body = {"code": code, "message": text if max_message is None else text[:max_message], **(details or {})}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def scope_path(scope: Scope) -> str:
    """The request target as sent, raw path and query string: what a request signature covers
    (:mod:`entities.protocol.http_auth`)."""
    raw = scope.get("raw_path") or scope["path"].encode()
    qs = scope.get("query_string", b"")
    return bytes(raw).decode("latin-1") + ("?" + bytes(qs).decode("latin-1") if qs else "")


@dataclass(frozen=True)
class ServerTLS:
    """HTTPS for a service: its certificate and key, and the CA its clients' certificates must
    chain to (the fleet CA, :mod:`entities.fleet_ca`); ``require_client`` refuses clients
    without one (mutual TLS), else a client certificate is optional."""

    certfile: Path
    keyfile: Path
    ca_certs: Path
    require_client: bool = True

    def check(self) -> None:
        """Fail early, in one line, on a missing or corrupt file.

        Raises:
            ConfigError: as :func:`entities.fleet_ca.server_ssl_context`.
        """
        from entities.fleet_ca import server_ssl_context

        server_ssl_context(self.certfile, self.keyfile, self.ca_certs, self.require_client)

    def uvicorn_options(self) -> dict[str, Any]:
        """The ``ssl_*`` options of :func:`uvicorn_config`."""
        return {"ssl_certfile": str(self.certfile), "ssl_keyfile": str(self.keyfile),
                "ssl_ca_certs": str(self.ca_certs),
                "ssl_cert_reqs": ssl.CERT_REQUIRED if self.require_client else ssl.CERT_OPTIONAL}


class BodyLimit:
    """Pure ASGI middleware: request bodies are read whole and capped at ``limit`` bytes.

    ``error(code, message)`` builds the service's error response (``too_large`` or
    ``bad_request``); ``exempt(scope)`` names requests that stream their own bodies (uploads).
    The refusing code is left in ``scope["state"]["error_code"]`` for the access log.
    """

    def __init__(self, app: ASGIApp, limit: int, error: Callable[[str, str], Response],
                 exempt: Callable[[Scope], bool] | None = None) -> None:
        self.app = app
        self.limit = limit
        self.error = error
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.exempt is not None and self.exempt(scope)):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(scope, receive, send, declared.isdigit())
            return
        messages: list[Message] = []
        size = 0
        while True:
            msg = await receive()
            messages.append(msg)
            if msg["type"] != "http.request":
                break
            size += len(msg.get("body", b""))
            if size > self.limit:
                await self._refuse(scope, receive, send, True)
                return
            if not msg.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, too_large: bool) -> None:
        code = "too_large" if too_large else "bad_request"
        scope.setdefault("state", {})["error_code"] = code
        resp = self.error(code, f"request body larger than {self.limit} bytes" if too_large
                          else "malformed Content-Length")
        resp.headers["connection"] = "close"
        await resp(scope, receive, send)


def uvicorn_config(app: ASGIApp, host: str, port: int, *, ssl_certfile: str | None = None,
                   ssl_keyfile: str | None = None, ssl_ca_certs: str | None = None,
                   ssl_cert_reqs: int = ssl.CERT_NONE, guard: ConnectionGuard | None = None) -> uvicorn.Config:
    """uvicorn's settings; with ``ssl_certfile`` and ``ssl_keyfile`` it serves HTTPS, and with
    ``ssl_cert_reqs=ssl.CERT_REQUIRED`` refuses clients without a certificate from ``ssl_ca_certs``.
    Connections are held to ``guard`` (:mod:`entities.http_guard`; its defaults when None)."""
    return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
                          timeout_keep_alive=30, server_header=False, ssl_certfile=ssl_certfile,
                          ssl_keyfile=ssl_keyfile, ssl_ca_certs=ssl_ca_certs, ssl_cert_reqs=ssl_cert_reqs,
                          http=guarded_protocol(guard or ConnectionGuard()))


def _config(app: ASGIApp, host: str, port: int, tls: ServerTLS | None,
            guard: ConnectionGuard | None = None) -> uvicorn.Config:
    if tls is None:
        return uvicorn_config(app, host, port, guard=guard)
    tls.check()
    return uvicorn_config(app, host, port, guard=guard, **tls.uvicorn_options())


def bind_check(host: str, port: int) -> None:
    """Fail early, in one line, when ``host:port`` cannot be listened on.

    Raises:
        ConfigError: the address is taken or not local.
    """
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def check_listen(host: str, port: int, what: str, *, tls: ServerTLS | None) -> None:
    """Fail early, in one line, when ``host:port`` cannot be listened on, or would serve plain
    HTTP beyond loopback (:mod:`entities.netaddr`).

    Raises:
        ConfigError: plain HTTP on an address that is not loopback, unusable TLS files, or the
            address is taken.
    """
    if tls is None and not is_loopback(host):
        raise ConfigError(f"the {what} serves plain HTTP on loopback only: to listen on {host}, give it TLS "
                          "(--tls-cert, --tls-key, --tls-ca)")
    if tls is not None:
        tls.check()
    bind_check(host, port)


def serve(app: ASGIApp, host: str, port: int, what: str, *, tls: ServerTLS | None = None,
          guard: ConnectionGuard | None = None) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn's handlers) in this thread; HTTPS with ``tls``.

    Raises:
        ConfigError: ``what`` could not start (port taken, unusable TLS files...).
    """
    server = uvicorn.Server(_config(app, host, port, tls, guard))
    server.run()
    if not server.started:
        raise ConfigError(f"the {what} could not listen on {host}:{port}")


class UvicornThread:
    """uvicorn serving ``app`` on ``host:port`` in a daemon thread; a context manager.

    ``port`` 0: a port the OS picks, on a socket bound here and handed to uvicorn as it is (a port
    picked, released and bound again could meanwhile be taken by another socket).
    """

    what = "service"

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *, tls: ServerTLS | None = None,
                 guard: ConnectionGuard | None = None) -> None:
        self._sock: socket.socket | None = None
        if port == 0:
            # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on accepted sockets whose proto says TCP
            # (with proto 0, Nagle holds each answer's body for the client's delayed ACK: ~40 ms)
            self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM,
                                       socket.IPPROTO_TCP)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((host, 0))
            port = int(self._sock.getsockname()[1])
        self.app = app
        self.host = host
        self.port = port
        self.tls = tls
        self.server = uvicorn.Server(_config(app, host, port, tls, guard))
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"fwledger-{self.what}-{port}")

    def _run(self) -> None:
        self.server.run(sockets=None if self._sock is None else [self._sock])

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> Self:
        """Raises:
            ConfigError: not listening within ``timeout`` seconds.
        """
        self.thread.start()
        end = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > end:
                raise ConfigError(f"the {self.what} did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 20.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
