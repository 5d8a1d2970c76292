"""Payload downloads sent from file to socket by the kernel (``entities/zerocopy.py``): the bytes, the
ranges and the download log are what they were, a client leaving mid-way is logged with what it got,
and a stored payload shorter than its record aborts the transfer instead of padding it.

The world is :mod:`tests.integration.server_world`'s: on the embedded chain the server runs
in this process (uvicorn in a thread), on anvil it is the real ``fwledger server run`` process.
Downloads are real signed requests over loopback TCP; the truncated payload is a real file cut short
on the server's disk.
"""

from __future__ import annotations

import asyncio
import http.client
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from entities.firmware_server.transfer import ZEROCOPY_SLICE
from entities.protocol.http_auth import sign_request
from entities.service_identity import fetch_identity
from tests.integration.server_world import (  # noqa: F401 (make_server, world: fixtures)
    Server,
    World,
    fetch,
    make_server,
    new_device,
    published,
    register,
    world,
)

SIZE = 2 * ZEROCOPY_SLICE + 12_345  # three slices, the last one short


@pytest.fixture
def sendfile_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, int]]]:
    """Every ``loop.sendfile`` of this process as (offset, count): an observer; the real call runs."""
    calls: list[tuple[int, int]] = []
    real = asyncio.base_events.BaseEventLoop.sendfile

    async def observed(self: Any, transport: Any, file: Any, offset: int = 0, count: int | None = None,
                       **kw: Any) -> int:
        calls.append((offset, int(count or 0)))
        return await real(self, transport, file, offset, count, **kw)

    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "sendfile", observed)
    yield calls


def _serving(world: World, srv: Server, tmp: Path, device_id: str) -> tuple[str, Path, bytes, Any]:  # noqa: F811
    """A published release of SIZE bytes and a registered device: (header hash, the payload's file on
    the server's disk, its bytes, the device's key)."""
    hh, header, _body = published(world, srv, tmp, size=SIZE)
    path = srv.data / "objects" / header.record.data.file_hash.hex()
    device = new_device()
    assert register(srv, device, device_id).status_code == 201
    return hh, path, path.read_bytes(), device


def _log(srv: Server, hh: str) -> list[tuple[str, int, int | None, int | None]]:
    rows = srv.admin("GET", f"/v1/downloads?header_hash={hh}").json()
    return [(r["what"], r["bytes"], r["range_start"], r["range_end"]) for r in reversed(rows)
            if r["what"] == "payload" and r["outcome"] == "served"]


def test_payloads_and_ranges_go_file_to_socket_byte_identical(
        world: World, make_server: Callable[..., Server], tmp_path: Path,  # noqa: F811
        sendfile_calls: list[tuple[int, int]]) -> None:
    """C11.3.f: the whole payload and a range arrive byte-identical, sent by the kernel in slices
    (observed on the in-process server), and the log counts every byte of each."""
    if world.chain.backend != "embedded":
        pytest.skip("observes the server's event loop: the in-process server of the embedded chain")
    srv = make_server()
    hh, _path, stored, device = _serving(world, srv, tmp_path, "cam-zc")

    whole = fetch(srv, device, f"/v1/images/{hh}")
    assert whole.status_code == 200 and whole.content == stored
    size = len(stored)
    assert sendfile_calls == [(0, ZEROCOPY_SLICE), (ZEROCOPY_SLICE, ZEROCOPY_SLICE),
                              (2 * ZEROCOPY_SLICE, size - 2 * ZEROCOPY_SLICE)]
    sendfile_calls.clear()
    part = fetch(srv, device, f"/v1/images/{hh}", headers={"Range": "bytes=1000-"})
    assert part.status_code == 206 and part.content == stored[1000:]
    assert sendfile_calls[0] == (1000, ZEROCOPY_SLICE)
    assert sum(n for _, n in sendfile_calls) == size - 1000
    assert _log(srv, hh) == [("payload", size, None, None), ("payload", size - 1000, 1000, size)]


def _raw_get(srv: Server, device: Any, path: str) -> http.client.HTTPResponse:
    url = urlsplit(srv.url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    conn.request("GET", path, headers=sign_request(device, "GET", path, audience=fetch_identity(srv.url)))
    return conn.getresponse()


def test_a_client_leaving_mid_transfer_is_logged_with_less_than_the_whole(
        world: World, make_server: Callable[..., Server], tmp_path: Path) -> None:  # noqa: F811
    """A device that reads 1 MiB and hangs up: the server stops, logs less than the whole payload,
    and serves the next request (on another connection) in full."""
    srv = make_server()
    hh, _path, stored, device = _serving(world, srv, tmp_path, "cam-zc-cut")

    resp = _raw_get(srv, device, f"/v1/images/{hh}")
    assert resp.status == 200 and int(resp.headers["content-length"]) == len(stored)
    assert resp.read(1 << 20) == stored[: 1 << 20]
    resp.close()
    again = fetch(srv, device, f"/v1/images/{hh}")
    assert again.status_code == 200 and again.content == stored
    logged = _log(srv, hh)
    assert len(logged) == 2 and logged[0][1] < len(stored) and logged[1][1] == len(stored)


def test_a_stored_payload_shorter_than_its_record_aborts_the_transfer(
        world: World, make_server: Callable[..., Server], tmp_path: Path) -> None:  # noqa: F811
    """A payload cut short on the server's disk is never padded: the device gets fewer bytes than
    the Content-Length and a broken connection (its checks then refuse the image), and the server
    goes on serving."""
    srv = make_server()
    hh, path, stored, device = _serving(world, srv, tmp_path, "cam-zc-short")
    os.truncate(path, len(stored) - 5000)

    resp = _raw_get(srv, device, f"/v1/images/{hh}")
    assert resp.status == 200 and int(resp.headers["content-length"]) == len(stored)
    with pytest.raises(http.client.IncompleteRead) as cut:
        resp.read()
    assert cut.value.partial == stored[: len(stored) - 5000]
    health = requests.get(srv.url + "/health", timeout=10)
    assert health.status_code == 200
