"""Run the firmware server with uvicorn: in this thread (``fwledger server run``) or a background one.

A background :class:`ServerThread` is how a process that holds the embedded chain (tests, the
demo) serves real HTTP on loopback: the chain cannot leave the process, the server can share it.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn
from fastapi import FastAPI
from web3 import Web3

from ledger_node.errors import ConfigError
from ledger_node.registry import Deployment

from .app import create_app
from .config import ServerConfig
from .ledger import LedgerView

__all__ = ["ServerThread", "build_app", "check_listen", "serve"]


def build_app(config: ServerConfig, w3: Web3, deployment: Deployment, *, confirmations: int = 0,
              batch_blocks: int = 500) -> FastAPI:
    """The app over a full node of ``deployment`` indexed in ``<data>/ledger.sqlite``.

    Raises:
        ConfigError: bad configuration, the index belongs to another registry, data folder unusable.
        ChainError: the node failed to answer.
        IndexCorruption: an index or the server database is damaged.
    """
    Path(config.data_dir).mkdir(parents=True, exist_ok=True)
    ledger = LedgerView(w3, deployment, config.ledger_index_path, confirmations=confirmations,
                        batch_blocks=batch_blocks)
    return create_app(config, ledger)


def _uvicorn_config(app: FastAPI, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
                          timeout_keep_alive=30, server_header=False)


def check_listen(host: str, port: int) -> None:
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


def serve(app: FastAPI, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn's handlers) in this thread.

    Raises:
        ConfigError: the server could not start (port taken...).
    """
    check_listen(host, port)
    server = uvicorn.Server(_uvicorn_config(app, host, port))
    server.run()
    if not server.started:
        raise ConfigError(f"the firmware server could not listen on {host}:{port}")


class ServerThread:
    """uvicorn serving ``app`` on ``host:port`` in a daemon thread; a context manager.

    Raises (from :meth:`start`):
        ConfigError: not listening within ``timeout`` seconds.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = int(s.getsockname()[1])
        self.app = app
        self.host = host
        self.port = port
        self.server = uvicorn.Server(_uvicorn_config(app, host, port))
        self.thread = threading.Thread(target=self.server.run, daemon=True, name=f"fwledger-server-{port}")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> ServerThread:
        self.thread.start()
        end = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > end:
                raise ConfigError(f"the firmware server did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 20.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        svc: Any = getattr(self.app.state, "service", None)
        if svc is not None:
            svc.close()
            svc.ledger.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
