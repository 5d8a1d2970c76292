"""The device's HTTP transport and the network errors every adapter raises (no trust decisions).

:class:`HttpTransport` speaks HTTP/1.1 with the standard library's ``http.client``: one kept-alive
connection per host (dropped when an answer was not read to its end, or the server closed it), no
redirects, no retries, no compression, no proxy and no CA bundle from the environment. HTTPS
trusts the CA pinned at provisioning only, checks host names, and presents the device's client
certificate when it has one. Plain HTTP goes to loopback hosts only (:mod:`entities.netaddr`).
The device keeps to the standard library here for its footprint: an HTTP client library costs it
more memory than the whole job needs (docs/PERFORMANCE.md).

It also holds what the tracker's and the firmware server's clients (:mod:`.client`,
:mod:`.server_client`) share: :func:`base_url`, :func:`learn_identity`, bounded reads of an answer.
"""

from __future__ import annotations

import http.client
import json
import re
import select
import ssl
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from entities.netaddr import plain_http_refusal
from entities.protocol.http_auth import IDENTITY_PATH, AuthError, identity_of, identity_request
from ledger_node.errors import VerificationError

from .errors import DeviceError

__all__ = ["ConnectionLost", "DownloadInterrupted", "HttpTransport", "NetConfig", "NetworkError", "Reply",
           "ServerRefused", "ServerUnreachable", "TrackerRefused", "TrackerUnreachable", "Transport",
           "UntrustedAnswer", "base_url", "learn_identity", "printable", "url_refusal"]

_CODE_RE = re.compile(r"^[a-z0-9_]{1,64}$")
_READ = 1 << 20


# ----------------------------------------------------------------------------- errors


class NetworkError(DeviceError):
    """A tracker or firmware server could not be reached, refused, or answered something unusable.

    ``code`` is stable (see the module docstring); ``url`` is the party's base URL and ``status``
    the HTTP status when there was one.
    """

    code = "network_error"

    def __init__(self, message: str, *, url: str = "", code: str | None = None, status: int | None = None) -> None:
        if code is not None:
            self.code = code
        self.url = url
        self.status = status
        super().__init__(message)


class TrackerUnreachable(NetworkError):
    """No answer from a tracker (connection refused, timeout, answer cut)."""

    code = "tracker_unreachable"


class TrackerRefused(NetworkError):
    """A tracker answered with an error; ``code`` is the tracker's own (sanitised)."""

    code = "tracker_refused"


class ServerUnreachable(NetworkError):
    """No answer from a firmware server."""

    code = "server_unreachable"


class ServerRefused(NetworkError):
    """A firmware server refused (P4: "answers with an error code"); ``code`` is the server's own (sanitised)."""

    code = "server_refused"


class DownloadInterrupted(NetworkError):
    """The payload's connection was cut more times than :attr:`NetConfig.max_resumes` allows."""

    code = "download_interrupted"


class UntrustedAnswer(NetworkError, VerificationError):
    """An answer that cannot be used: unsigned or wrongly signed (trackers), oversized, malformed."""

    code = "untrusted_answer"


class ConnectionLost(NetworkError):
    """A :class:`Transport` lost its connection, or never had one; the clients turn it into the
    party's own error (:class:`TrackerUnreachable`, :class:`ServerUnreachable`) or resume."""

    code = "connection_lost"


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class NetConfig:
    """Timeouts and bounds of the device's network adapters (safe defaults; passed in, never global).

    - ``connect_timeout`` / ``read_timeout``: seconds to connect, and between two received bytes;
    - ``max_json_bytes``: largest JSON answer read (a plan, evidence with 64 successors...);
    - ``max_resumes``: how many times one payload download reconnects after a cut connection;
    - ``resume_backoff``: seconds before the n-th reconnection (times n);
    - ``tls_ca``: the CA file HTTPS servers must chain to (pinned at provisioning); without it the
      device speaks HTTPS to nobody;
    - ``tls_cert`` / ``tls_key``: the device's TLS client certificate, for modules that require one.

    Plain HTTP goes to loopback hosts only (:mod:`entities.netaddr`).
    """

    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_json_bytes: int = 4 << 20
    max_resumes: int = 5
    resume_backoff: float = 0.2
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None


# ----------------------------------------------------------------------------- transport


class Reply(Protocol):
    """An HTTP answer whose body is read in bounded pieces."""

    status: int
    headers: Mapping[str, str]

    def read(self, n: int) -> bytes:
        """Up to ``n`` body bytes; b"" at the end. Raises ``ConnectionLost`` if the connection broke."""

    def close(self) -> None: ...


class Transport(Protocol):
    """One HTTP exchange; raises ``ConnectionLost`` when no answer arrives."""

    def send(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> Reply: ...

    def close(self) -> None: ...


def printable(text: Any, limit: int = 200) -> str:
    """``text`` as one line of printable ASCII, at most ``limit`` characters (for messages from afar)."""
    clean = " ".join("".join(c if 0x20 <= ord(c) < 0x7F else " " for c in str(text)).split())
    return clean[:limit] + ("..." if len(clean) > limit else "")


def url_refusal(url: str, config: NetConfig) -> str | None:
    """Why this device may not speak to ``url`` (None: it may): plain HTTP beyond loopback, or
    HTTPS with no CA pinned to authenticate the server."""
    refusal = plain_http_refusal(url)
    if refusal is None and url.startswith("https:") and not config.tls_ca:
        refusal = (f"{url}: HTTPS needs the CA this device pins (device init --tls-ca, or device tls --tls-ca), "
                   "else no server can be authenticated")
    return refusal


# ----------------------------------------------------------------------------- shared by the clients


def _read_bounded(reply: Reply, limit: int) -> bytes:
    """The body, read up to ``limit`` + 1 bytes (more than ``limit``: the answer was too large)."""
    parts: list[bytes] = []
    got = 0
    while got <= limit:
        piece = reply.read(min(_READ, limit + 1 - got))
        if not piece:
            break
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


def base_url(url: str, what: str) -> str:
    """``url`` checked as an http(s) base URL (no query, no fragment), without its trailing slash.

    Raises:
        NetworkError: ``bad_url``.
    """
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise NetworkError(f"bad {what} URL {url!r}: expected http(s)://host[:port][/prefix]", url=str(url),
                           code="bad_url")
    return url.rstrip("/")


def _error_of(raw: bytes, status: int) -> tuple[str, str]:
    """(code, message) of a ``{"error": {"code", "message"}}`` answer; generic ones otherwise."""
    try:
        err = json.loads(raw.decode("utf-8"))["error"]
        code = err["code"] if isinstance(err["code"], str) and _CODE_RE.match(err["code"]) else f"http_{status}"
        return code, printable(err.get("message", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"http_{status}", printable(raw[:200].decode("utf-8", "replace"))


def _signed_path(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def learn_identity(transport: Transport, url: str, what: str, limit: int, *,
                   accept: Collection[str] | None = None) -> str:
    """``GET {url}/v1/identity``: the address the service signs with, proven over a fresh nonce
    (:func:`entities.protocol.http_auth.identity_of`); the audience of the signed requests that follow.

    Raises:
        ConnectionLost (from the transport), UntrustedAnswer: no signed identity (or a key
            outside ``accept``).
    """
    headers, nonce = identity_request()
    reply = transport.send("GET", url + IDENTITY_PATH, headers, b"")
    try:
        raw = _read_bounded(reply, limit)
    finally:
        reply.close()
    try:
        return identity_of(reply.headers, reply.status, raw[:limit], nonce, accept=accept)
    except AuthError as exc:
        raise UntrustedAnswer(f"the {what} at {url} did not prove its identity ({exc.code}: {exc})",
                              url=url, status=reply.status) from exc


# ----------------------------------------------------------------------------- HttpTransport


_TLS_ERRORS = (ssl.SSLError, ssl.CertificateError)


class _HttpReply:
    def __init__(self, transport: HttpTransport, key: tuple[str, str, int], conn: http.client.HTTPConnection,
                 resp: http.client.HTTPResponse) -> None:
        self._transport, self._key, self._conn, self._resp = transport, key, conn, resp
        self.status = int(resp.status)
        self.headers: Mapping[str, str] = resp.headers  # type: ignore[assignment]  # case-insensitive, has get/items

    def read(self, n: int) -> bytes:
        try:
            data = self._resp.read(n)
        except (http.client.HTTPException, OSError, ValueError) as exc:
            raise ConnectionLost(f"{type(exc).__name__}: {exc}") from exc
        if not data and n and (self._resp.length or 0) > 0:
            # http.client answers a connection closed before Content-Length with b"": that is a cut, not the end
            raise ConnectionLost(f"IncompleteRead: the connection closed {self._resp.length} bytes before the end")
        return data

    def close(self) -> None:
        # an answer read to its end leaves the connection ready for the next request; else it goes
        if self._resp.isclosed() and not self._resp.will_close:
            self._transport._idle[self._key] = self._conn
        else:
            self._conn.close()


class HttpTransport:
    """:class:`Transport` over ``http.client``: keep-alive per host; no redirects (a 3xx is returned
    as it is), retries, compression, environment proxies or CA bundles; the pinned CA only."""

    def __init__(self, config: NetConfig | None = None) -> None:
        self.config = config or NetConfig()
        self._idle: dict[tuple[str, str, int], http.client.HTTPConnection] = {}
        self._tls: ssl.SSLContext | None = None

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:
            ctx = ssl.create_default_context(cafile=self.config.tls_ca)  # host names checked, CERT_REQUIRED
            if self.config.tls_cert and self.config.tls_key:
                ctx.load_cert_chain(self.config.tls_cert, self.config.tls_key)
            self._tls = ctx
        return self._tls

    def _connection(self, key: tuple[str, str, int]) -> http.client.HTTPConnection:
        idle = self._idle.pop(key, None)
        if idle is not None and idle.sock is not None and not select.select([idle.sock], [], [], 0)[0]:
            return idle  # still open, and nothing unread (readable here means closed by the server)
        if idle is not None:
            idle.close()
        scheme, host, port = key
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=self.config.connect_timeout,
                                               context=self._context())
        return http.client.HTTPConnection(host, port, timeout=self.config.connect_timeout)

    def send(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> Reply:
        refusal = url_refusal(url, self.config)
        if refusal is not None:
            raise ConnectionLost(refusal)
        try:
            parts = urlsplit(url)
            scheme, host = parts.scheme, parts.hostname
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError as exc:
            raise ConnectionLost(f"bad URL: {exc}") from exc
        if scheme not in ("http", "https") or not host:
            raise ConnectionLost(f"bad URL {printable(url, 120)}")
        key = (scheme, host, port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn = self._connection(key)
        try:
            if conn.sock is None:
                conn.connect()
                if conn.sock is not None:
                    conn.sock.settimeout(self.config.read_timeout)  # connect_timeout was for connecting
            conn.request(method, target, body=body or None,
                         headers={"Accept-Encoding": "identity", **headers})
            resp = conn.getresponse()
        except _TLS_ERRORS as exc:
            conn.close()
            raise ConnectionLost(f"TLS refused: {url} did not prove a certificate of the pinned CA "
                                 f"({printable(exc, 160)})") from exc
        except (http.client.HTTPException, OSError, ValueError) as exc:
            conn.close()
            raise ConnectionLost(type(exc).__name__) from exc
        return _HttpReply(self, key, conn, resp)

    def close(self) -> None:
        for conn in self._idle.values():
            conn.close()
        self._idle.clear()
