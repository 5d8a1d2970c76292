"""The device's firmware server adapter (X.1368 P4 seen from the device): thin I/O, no trust decisions.

- :class:`ServerClient`: registration (hardware class, location: C11.3.d, C11.3.h), the bundle
  header, and the payload as a stream (:class:`PayloadStream`) that reconnects with ``Range``
  after a cut connection and never reads more than the record's ``file_size`` plus one probe
  byte (trailing data is then refused by the payload check). The server is not trusted: its
  answers are not signed; the bytes are checked against the signed record.

Its errors and the helpers it shares with the tracker's client (:func:`.transport.base_url`,
:func:`.transport.learn_identity`, bounded reads) are in :mod:`.transport`; :mod:`.client`
re-exports both classes and lists every error's ``code``.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from entities.bundle import MAX_HEADER, BundleError, BundleHeader
from entities.protocol.http_auth import sign_request
from ledger_node.codec.ecdsa import KeyHolder

from .errors import UpdateRefused
from .transport import (
    _READ,
    ConnectionLost,
    DownloadInterrupted,
    HttpTransport,
    NetConfig,
    Reply,
    ServerRefused,
    ServerUnreachable,
    Transport,
    UntrustedAnswer,
    _error_of,
    _read_bounded,
    _signed_path,
    base_url,
    learn_identity,
)

__all__ = ["PayloadStream", "ServerClient"]

_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


class ServerClient:
    """One firmware server (untrusted), spoken to with requests signed by the device's identity key."""

    def __init__(self, url: str, identity: KeyHolder, *, transport: Transport | None = None,
                 config: NetConfig | None = None) -> None:
        self.url = base_url(url, "firmware server")
        self.identity = identity
        self.config = config or NetConfig()
        self.transport = transport or HttpTransport(self.config)
        self.address: str | None = None

    def close(self) -> None:
        self.transport.close()

    def audience(self) -> str:
        """The server's address, learnt once from ``GET /v1/identity`` (signed over a fresh nonce)."""
        if self.address is None:
            try:
                self.address = learn_identity(self.transport, self.url, "firmware server", 64 * 1024)
            except ConnectionLost as exc:
                raise ServerUnreachable(f"cannot reach the firmware server at {self.url} ({exc})",
                                        url=self.url) from exc
        return self.address

    def register(self, device_id: str, hardware: str, location: str | None = None, *,
                 certificate: str | None = None, addons: Sequence[str] = ()) -> dict[str, Any]:
        """``POST /v1/devices``: this identity key is device ``device_id`` of ``hardware`` at ``location``
        (C11.3.d, C11.3.h), carrying the add-on boards ``addons`` (hardware class ids; sent only when
        there are some, so older servers see the same body). Idempotent on the server.

        Raises:
            ServerUnreachable, ServerRefused (``device_id_taken``, ``unknown_hardware``...), UntrustedAnswer.
        """
        body: dict[str, Any] = {"device_id": device_id, "hardware": hardware}
        if location is not None:
            body["location"] = location
        if certificate is not None:
            body["certificate"] = certificate
        if addons:
            body["addons"] = list(addons)
        reply, raw = self._exchange("POST", "/v1/devices", json.dumps(body, separators=(",", ":")).encode(),
                                    self.config.max_json_bytes)
        try:
            out = json.loads(raw)
        except ValueError:
            out = None
        if not isinstance(out, dict):
            raise UntrustedAnswer(f"the firmware server at {self.url} answered {reply.status} without a JSON object",
                                  url=self.url)
        return out

    def header(self, header_hash: bytes) -> BundleHeader:
        """``GET /v1/images/{hash}/header``: the bundle header (record, vendor signature, encryption),
        parsed strictly; trusted only once :mod:`.verify` ties it to the ledger.

        Raises:
            ServerUnreachable, ServerRefused, UntrustedAnswer (too large), UpdateRefused (``bad_bundle``).
        """
        _, raw = self._exchange("GET", f"/v1/images/0x{header_hash.hex()}/header", b"", 2 * MAX_HEADER)
        try:
            return BundleHeader.from_json(json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise UpdateRefused("bad_bundle", f"the firmware server at {self.url} answered a header that is not "
                                              "JSON") from exc
        except BundleError as exc:
            raise UpdateRefused(exc.code, f"the firmware server at {self.url} answered a bad bundle header: "
                                          f"{exc}") from exc

    def payload(self, header_hash: bytes, file_size: int) -> PayloadStream:
        """The payload of an image as a stream of at most ``file_size`` + 1 bytes (no request sent yet)."""
        return PayloadStream(self, header_hash, file_size)

    def bundle(self, header_hash: bytes, header: BundleHeader) -> PayloadStream:
        """The whole bundle as the updater reads it: ``header``'s bytes, then the payload streamed
        (requested when the updater reads past the header, or sent ahead by it (:meth:`PayloadStream.prefetch`)
        while it makes the slot ready: either way after it verified everything and the device accepted the install)."""
        return PayloadStream(self, header_hash, header.record.data.file_size, prefix=header.to_bytes())

    # -- one exchange --------------------------------------------------------------------------

    def open(self, method: str, path: str, body: bytes = b"", headers: Mapping[str, str] | None = None) -> Reply:
        """Send one signed request; the answer's body is left to the caller.

        Raises:
            ServerUnreachable: no answer.
        """
        url = self.url + path
        hdrs = {**sign_request(self.identity, method, _signed_path(url), body, audience=self.audience()),
                **(headers or {})}
        if body:
            hdrs["Content-Type"] = "application/json"
        try:
            return self.transport.send(method, url, hdrs, body)
        except ConnectionLost as exc:
            raise ServerUnreachable(f"cannot reach the firmware server at {self.url} ({exc})", url=self.url) from exc

    def refusal(self, reply: Reply) -> ServerRefused:
        """The error answer's code and message (its body read, bounded)."""
        try:
            raw = _read_bounded(reply, 64 * 1024)
        except ConnectionLost:
            raw = b""
        code, message = _error_of(raw, reply.status)
        return ServerRefused(f"the firmware server at {self.url} refused ({reply.status} {code})"
                             + (f": {message}" if message else ""), url=self.url, code=code, status=reply.status)

    def _exchange(self, method: str, path: str, body: bytes, limit: int) -> tuple[Reply, bytes]:
        reply = self.open(method, path, body)
        try:
            if reply.status >= 400:
                raise self.refusal(reply)
            try:
                raw = _read_bounded(reply, limit)
            except ConnectionLost as exc:
                raise ServerUnreachable(f"the firmware server at {self.url} cut its answer ({exc})",
                                        url=self.url) from exc
        finally:
            reply.close()
        if len(raw) > limit:
            raise UntrustedAnswer(f"the firmware server at {self.url} answered more than {limit} bytes", url=self.url)
        return reply, raw


class PayloadStream:
    """A bundle's bytes for :meth:`.updater.Updater.update`: an optional ``prefix`` (the header), then
    the payload fetched from the server, resumed with ``Range: bytes=N-`` after a cut connection.

    Never reads more than ``file_size`` + 1 payload bytes in all (the signed record's size, and one
    probe byte that lets the payload check refuse trailing data); a server that ignores ``Range``
    on a resume, or answers another range, is refused (``bad_range_answer``). A resumed install
    that already holds the start of the payload skips past it (:meth:`seek`) before the first payload
    request, which then asks for the rest only (``Range: bytes=N-``). :meth:`prefetch` sends the
    first payload request ahead, from a thread, while the caller prepares its slot. ``received``
    (the position in the payload), ``skipped``, ``connections`` and ``resumed_at`` say what happened.
    """

    def __init__(self, client: ServerClient, header_hash: bytes, file_size: int, *, prefix: bytes = b"") -> None:
        self.client = client
        self.header_hash = header_hash
        self.file_size = int(file_size)
        self.limit = self.file_size + 1
        self._prefix = memoryview(prefix)
        self._ppos = 0
        self.received = 0
        self.connections = 0
        self.resumed_at: list[int] = []
        self.skipped = 0
        self._reply: Reply | None = None
        self._request: _Ahead | None = None  # the first payload request, sent ahead (prefetch)
        self._ended = False

    # file-like
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 1) -> int:
        """Skip ``offset`` payload bytes forward (``whence`` 1 only), before the payload is requested.

        Raises:
            ValueError: another ``whence``, a backward or oversized skip, or one after the payload
                was requested or while the header is still being read.
        """
        if whence != 1 or offset < 0 or self._ppos < len(self._prefix) or self.connections or self._ended \
                or self._request is not None or self.received + offset > self.file_size:
            raise ValueError("a payload stream only skips forward, once, before its payload is requested")
        self.received += offset
        self.skipped += offset
        return len(self._prefix) + self.received

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (``n`` < 0: up to 1 MiB); b"" at the end of the payload.

        Raises:
            ServerUnreachable, ServerRefused, DownloadInterrupted, UntrustedAnswer.
        """
        n = _READ if n is None or n < 0 else n
        if self._ppos < len(self._prefix):
            piece = bytes(self._prefix[self._ppos:self._ppos + n])
            self._ppos += len(piece)
            return piece
        want = min(n, self.limit - self.received)
        if want <= 0 or self._ended:
            return b""
        while True:
            piece, cut = b"", "the answer ended early"
            if self._reply is None:
                if self.received >= self.file_size:  # everything arrived on an earlier connection
                    self._ended = True
                    return b""
                try:
                    ahead, self._request = self._request, None
                    self._reply = ahead.take() if ahead is not None else self._connect()
                except ServerUnreachable as exc:
                    if not self.resumed_at:  # the first connection: nothing to resume
                        raise
                    cut = str(exc)  # a reconnection that failed counts as one more cut
            if self._reply is not None:
                try:
                    piece = self._reply.read(want)
                except ConnectionLost as exc:
                    cut = str(exc)
            if piece:
                self.received += len(piece)
                return piece
            self._drop()
            if self.received >= self.file_size:
                self._ended = True
                return b""
            if len(self.resumed_at) >= self.client.config.max_resumes:
                raise DownloadInterrupted(f"the download from {self.client.url} was cut {len(self.resumed_at) + 1} "
                                          f"times ({cut}); {self.received} of {self.file_size} bytes received",
                                          url=self.client.url)
            self.resumed_at.append(self.received)
            time.sleep(self.client.config.resume_backoff * len(self.resumed_at))

    def prefetch(self) -> None:
        """Send the first payload request now, from a thread: its answer is taken by the first
        :meth:`read` of the payload (or dropped by :meth:`close`). For a caller that has verified
        the bundle's header and whose device accepted the install, and now makes its slot ready
        (journal, state, truncation: a few fsyncs) while the request travels. Nothing happens once
        the payload was requested or skipped into (a resumed install seeks first)."""
        if self._request is None and not self.connections and not self.skipped and not self._ended:
            self._request = _Ahead(self._connect)

    def _connect(self) -> Reply:
        start = self.received
        headers = {"Range": f"bytes={start}-"} if start else {}
        reply = self.client.open("GET", f"/v1/images/0x{self.header_hash.hex()}", headers=headers)
        self.connections += 1
        try:
            if reply.status >= 400:
                raise self.client.refusal(reply)
            if start and reply.status != 206:
                raise UntrustedAnswer(f"the firmware server at {self.client.url} ignored the Range of a resumed "
                                      f"download (answered {reply.status})", url=self.client.url,
                                      code="bad_range_answer")
            if reply.status == 206:
                m = _CONTENT_RANGE_RE.match(str(reply.headers.get("Content-Range", "")).strip())
                if m is None or int(m.group(1)) != start:
                    raise UntrustedAnswer(f"the firmware server at {self.client.url} answered another range than "
                                          f"bytes={start}-", url=self.client.url, code="bad_range_answer")
            elif reply.status != 200:
                raise UntrustedAnswer(f"the firmware server at {self.client.url} answered {reply.status} for a "
                                      "payload", url=self.client.url)
        except BaseException:
            reply.close()
            raise
        return reply

    def _drop(self) -> None:
        if self._reply is not None:
            self._reply.close()
            self._reply = None

    def close(self) -> None:
        ahead, self._request = self._request, None
        if ahead is not None:  # sent ahead, never read: its connection is closed, its error moot
            with contextlib.suppress(Exception):
                ahead.take().close()
        self._drop()
        self._ended = True

    def to_json(self) -> dict[str, Any]:
        return {"server": self.client.url, "bytes": self.received - self.skipped, "connections": self.connections,
                "resumed_at": list(self.resumed_at), "skipped": self.skipped}


class _Ahead:
    """One call started in a thread now; :meth:`take` waits for its result or raises its error."""

    def __init__(self, call: Callable[[], Reply]) -> None:
        self._call = call
        self._reply: Reply | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="payload-request", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._reply = self._call()
        except BaseException as exc:  # handed to the reader by take()
            self._error = exc

    def take(self) -> Reply:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._reply is not None
        return self._reply
