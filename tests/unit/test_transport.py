"""The device's HTTP transport (``entities/firmware_consumer/transport.py``) against real sockets on
127.0.0.1: a body cut before its Content-Length is a lost connection, never a short answer; an
answer read to its end keeps its connection for the next request; redirects are returned, not
followed."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from entities.firmware_consumer.transport import ConnectionLost, HttpTransport


@pytest.fixture
def raw_server() -> Iterator[tuple[str, list[bytes], list[int]]]:
    """A one-thread server answering each connection's requests with the next canned answer;
    ``answers`` is filled by the test, ``accepted`` counts connections."""
    answers: list[bytes] = []
    accepted: list[int] = []
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(5)

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            accepted.append(1)
            with conn:
                while answers:
                    if not conn.recv(65536):
                        break
                    answer = answers.pop(0)
                    conn.sendall(answer)
                    if b"Connection: close" in answer or b"cut" in answer:
                        break

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", answers, accepted
    sock.close()


def test_a_body_cut_before_its_length_is_a_lost_connection(raw_server: tuple[str, list[bytes], list[int]]) -> None:
    url, answers, _ = raw_server
    answers.append(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"cut" * 3)
    t = HttpTransport()
    reply = t.send("GET", url + "/v1/images/x", {}, b"")
    assert reply.status == 200
    got = b""
    with pytest.raises(ConnectionLost, match="IncompleteRead"):
        while True:
            piece = reply.read(64)
            assert piece, "a cut body must not read as its end"
            got += piece
    assert got == b"cutcutcut"
    t.close()


def test_an_answer_read_to_its_end_keeps_the_connection(raw_server: tuple[str, list[bytes], list[int]]) -> None:
    url, answers, accepted = raw_server
    answers += [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"HTTP/1.1 302 Found\r\nLocation: http://x/\r\n"
                b"Content-Length: 0\r\n\r\n"]
    t = HttpTransport()
    first = t.send("GET", url + "/a", {}, b"")
    assert (first.status, first.read(10), first.read(10)) == (200, b"ok", b"")
    first.close()
    second = t.send("GET", url + "/b", {}, b"")
    assert second.status == 302 and second.headers.get("location") == "http://x/"  # returned, not followed
    second.close()
    assert len(accepted) == 1  # one kept-alive connection for both
    t.close()


def test_plain_http_beyond_loopback_is_refused_before_connecting() -> None:
    with pytest.raises(ConnectionLost, match="loopback|plain"):
        HttpTransport().send("GET", "http://192.0.2.1:9/x", {}, b"")
