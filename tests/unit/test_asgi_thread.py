"""``entities.asgi.UvicornThread``: the port it serves on and the sockets it accepts."""

from __future__ import annotations

import socket
from typing import Any

import requests

from entities.asgi import UvicornThread


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def test_port_zero_serves_on_the_socket_it_bound_with_nagle_off() -> None:
    """Port 0: the socket bound when the thread is made is the one uvicorn listens on (no port picked,
    released and bound again), and the connections it accepts have TCP_NODELAY set: an answer written
    in two parts (headers, then body) is not held back for the client's delayed ACK (~40 ms a request)."""
    thread = UvicornThread(_app)
    bound = thread._sock
    assert bound is not None and bound.getsockname()[1] == thread.port and thread.port != 0
    with thread, requests.Session() as session:
        assert session.get(thread.url + "/", timeout=10).text == "ok"
        (conn,) = thread.server.server_state.connections  # the session's kept-alive connection
        sock = conn.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert sock.getsockname()[1] == thread.port
    assert bound.fileno() == -1  # closed with the server
