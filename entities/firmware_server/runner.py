"""Run the firmware server with uvicorn: in this thread (``fwledger server run``) or a background one.

A background :class:`ServerThread` is how a process that holds the embedded chain (tests, the
demo) serves real HTTP on loopback: the chain cannot leave the process, the server can share it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from web3 import Web3

from entities.asgi import ServerTLS, UvicornThread
from entities.asgi import check_listen as listen_check
from entities.asgi import serve as serve_app
from entities.header_sources import HeaderSource
from entities.http_guard import ConnectionGuard
from ledger_node.registry import Deployment

from .app import create_app
from .config import ServerConfig
from .ledger import LedgerView

__all__ = ["ServerThread", "build_app", "check_listen", "connection_guard", "serve"]


def build_app(config: ServerConfig, w3: Web3, deployment: Deployment, *, confirmations: int = 0,
              batch_blocks: int = 500, source: HeaderSource | None = None) -> FastAPI:
    """The app over a full node of ``deployment`` indexed in ``<data>/ledger.sqlite``, whose answers
    are proven at headers from ``source`` (None: the node's own; :func:`entities.header_sources.header_source`).

    Raises:
        ConfigError: bad configuration, the index belongs to another registry, data folder unusable.
        ChainError: the node failed to answer.
        IndexCorruption: an index or the server database is damaged.
    """
    Path(config.data_dir).mkdir(parents=True, exist_ok=True)
    ledger = LedgerView(w3, deployment, config.ledger_index_path, confirmations=confirmations,
                        batch_blocks=batch_blocks, source=source, proof_max_age=config.proof_max_age)
    return create_app(config, ledger)


def check_listen(host: str, port: int, tls: ServerTLS | None = None) -> None:
    """Fail early, in one line, when ``host:port`` cannot be listened on, or would serve plain
    HTTP beyond loopback.

    Raises:
        ConfigError: plain HTTP on a non-loopback address, unusable TLS files, or the address is taken.
    """
    listen_check(host, port, "firmware server", tls=tls)


def serve(app: FastAPI, host: str, port: int, *, tls: ServerTLS | None = None) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn's handlers) in this thread; HTTPS with ``tls``.

    Raises:
        ConfigError: the server could not start (port taken...).
    """
    check_listen(host, port, tls)
    serve_app(app, host, port, "firmware server", tls=tls, guard=connection_guard(app.state.service.config))


def connection_guard(config: ServerConfig) -> ConnectionGuard:
    """The server's connection limits (:mod:`entities.http_guard`) from its settings."""
    return ConnectionGuard(header_timeout=config.header_timeout, body_timeout=config.body_timeout,
                           max_per_client=config.max_connections_per_client)


class ServerThread(UvicornThread):
    """uvicorn serving ``app`` on ``host:port`` in a daemon thread; a context manager.

    Raises (from :meth:`start`):
        ConfigError: not listening within ``timeout`` seconds.
    """

    what = "firmware server"

    def stop(self, timeout: float = 20.0) -> None:
        super().stop(timeout)
        svc: Any = getattr(self.app.state, "service", None)
        if svc is not None:
            svc.close()
            svc.ledger.close()
