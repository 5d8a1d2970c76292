"""The firmware server against the open network (docs/THREATS.md, "Network"): a real
``fwledger server run`` process on an anvil chain (``tests/integration/test_deployments.py``'s
world), with short connection timeouts set through its environment, attacked over raw sockets.

- an unsigned upload, and an upload signed by a key that is not an active vendor, declaring a
  large body: refused from the headers alone, before a byte of the body is read; nothing is
  written to ``<data>/tmp``;
- an upload whose signed intent declares more than the server's limit: ``413 too_large`` at once;
- slowloris: request headers trickled byte by byte: the server closes the connection after its
  header timeout; a request body that stops: closed after the body timeout, its temp file and
  its reservation gone;
- uploads in flight are capped per vendor: a third concurrent upload is ``429 too_many_uploads``;
- a client holding its connection quota gets no more (in-process server, loopback not exempt).
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from entities.firmware_server.config import ServerConfig
from entities.firmware_server.runner import ServerThread, build_app
from entities.http_guard import ConnectionGuard
from entities.protocol.http_auth import HDR_CONTENT_SHA256, sign_request
from entities.service_identity import fetch_identity
from tests.integration import test_deployments as deployments
from tests.integration.procs import Proc, wait_for
from tests.integration.test_deployments import World

anvil_rpc, world = deployments.anvil_rpc, deployments.world  # the deployment tests' fixtures: one test world

HEADER_TIMEOUT, BODY_TIMEOUT = 2.0, 2.0
DEADLINE = 30.0  # a generous bound for "the server closed it"; the timeouts above are what close it
MAX_UPLOAD = 64 << 20


@pytest.fixture
def server(world: World) -> Iterator[Proc]:
    srv = world.procs.service("server", ["server", "run", "--host", "127.0.0.1", "--port", "{port}", "--data",
                                         str(world.tmp / "server"), "--poll-interval", "0.2",
                                         "--max-upload", str(MAX_UPLOAD)],
                              env={"FWLEDGER_SERVER_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
                                   "FWLEDGER_SERVER_BODY_TIMEOUT": str(BODY_TIMEOUT)})
    world.procs.wait_healthy(srv, check=lambda h: h.get("ledger_block") is not None)
    yield srv


def connect(proc: Proc) -> socket.socket:
    assert proc.port is not None
    sock = socket.create_connection(("127.0.0.1", proc.port), timeout=DEADLINE)
    return sock


def upload_head(proc: Proc, signer: LocalAccount | None, length: int, *, digest: str | None = None) -> bytes:
    """The head of a ``POST /v1/bundles`` declaring ``length`` body bytes (signed intent unless no signer)."""
    digest = digest or hashlib.sha256(b"never sent").hexdigest()
    head = f"POST /v1/bundles HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n" \
           "Content-Type: application/octet-stream\r\n"
    if signer is not None:
        hdrs = sign_request(signer, "POST", "/v1/bundles", body_sha256=digest, audience=fetch_identity(str(proc.url)))
        head += "".join(f"{k}: {v}\r\n" for k, v in {**hdrs, HDR_CONTENT_SHA256: digest}.items())
    return (head + "\r\n").encode()


def answer_without_body(proc: Proc, head: bytes) -> tuple[int, dict[str, Any]]:
    """Send only ``head``; the server must answer before any body byte (status, error JSON)."""
    with connect(proc) as sock:
        sock.sendall(head)
        raw = b""
        while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}"):
            piece = sock.recv(65536)
            if not piece:
                break
            raw += piece
    status = int(raw.split(b" ", 2)[1])
    return status, json.loads(raw.split(b"\r\n\r\n", 1)[1])["error"]


def tmp_files(world: World) -> list[Path]:
    return list((world.tmp / "server" / "tmp").iterdir())


def closed_by_server(sock: socket.socket, trickle: bytes = b"") -> bool:
    """Keep sending ``trickle`` (a byte a second) until the server closes the connection."""
    end = time.monotonic() + DEADLINE
    sock.settimeout(1.0)
    while time.monotonic() < end:
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            pass
        except ConnectionResetError:
            return True
        if trickle:
            try:
                sock.sendall(trickle)
            except (BrokenPipeError, ConnectionResetError):
                return True
    return False


def test_unsigned_unknown_and_oversized_uploads_are_refused_before_their_body(world: World, server: Proc) -> None:
    stranger = Account.create()
    cases = [(None, 500 << 20, 401, "unsigned"),
             (stranger, 500 << 20, 403, "not_a_vendor"),
             (world.vendor, MAX_UPLOAD + 1, 413, "too_large")]
    for signer, length, status, code in cases:
        got, err = answer_without_body(server, upload_head(server, signer, length))
        assert (got, err["code"]) == (status, code) and tmp_files(world) == []
    status, err = answer_without_body(server, upload_head(server, world.vendor, 1 << 40))
    assert (status, err["code"]) == (413, "too_large") and tmp_files(world) == []
    # a vendor-signed upload without its intent names nothing to check before the body
    head = upload_head(server, None, 10).replace(b"\r\n\r\n", b"\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in sign_request(world.vendor, "POST", "/v1/bundles", b"x" * 10,
                                                 audience=fetch_identity(str(server.url))).items()).encode()
        + b"\r\n")
    assert answer_without_body(server, head)[1]["code"] == "no_intent"
    assert server.health()["uploads"] == {"uploads": 0, "reserved_bytes": 0}


def test_slow_headers_and_a_stalled_body_are_cut_and_leave_nothing(world: World, server: Proc) -> None:
    with connect(server) as sock:  # slowloris: a header byte a second, never the end
        sock.sendall(b"POST /v1/bundles HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        assert closed_by_server(sock, trickle=b"a")
    with connect(server) as sock:  # connected, says nothing
        assert closed_by_server(sock)
    with connect(server) as sock:  # a signed upload whose body stops after 100 bytes
        sock.sendall(upload_head(server, world.vendor, 1 << 20) + b"\0" * 100)
        wait_for(lambda: server.health()["uploads"]["uploads"] == 1, DEADLINE, "the upload is in flight")
        assert server.health()["uploads"]["reserved_bytes"] == 1 << 20
        assert closed_by_server(sock)
    wait_for(lambda: server.health()["uploads"] == {"uploads": 0, "reserved_bytes": 0}, DEADLINE,
             "the reservation is released")
    wait_for(lambda: tmp_files(world) == [], DEADLINE, "the temp file is removed")


def test_a_vendor_holds_at_most_two_uploads_in_flight(world: World, server: Proc) -> None:
    held = [connect(server) for _ in range(2)]
    try:
        for sock in held:
            sock.sendall(upload_head(server, world.vendor, 1 << 20) + b"\0" * 10)
        wait_for(lambda: server.health()["uploads"]["uploads"] == 2, DEADLINE, "two uploads in flight")
        status, err = answer_without_body(server, upload_head(server, world.vendor, 1 << 20))
        assert (status, err["code"]) == (429, "too_many_uploads")
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: server.health()["uploads"]["uploads"] == 0, DEADLINE, "the held uploads ended")


def test_a_client_over_its_connection_quota_is_turned_away(world: World, tmp_path: Path) -> None:
    config = ServerConfig(data_dir=tmp_path / "srv", poll_interval=0.2, admission="open")
    app = build_app(config, world.w3, world.registry.deployment)
    guard = ConnectionGuard(header_timeout=60, body_timeout=60, max_per_client=3, exempt_loopback=False)
    with ServerThread(app, guard=guard) as thread:
        port = thread.port
        kept = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
                assert closed_by_server(extra)
            for sock in kept:  # the first three are still served
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        finally:
            for sock in kept:
                sock.close()
