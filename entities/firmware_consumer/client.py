"""The device's network adapters (X.1368 P2-P5 seen from the device): thin I/O, no trust decisions.

Like python-tuf's ``fetcher``: one small transport interface (:class:`Transport`, implemented
with ``http.client`` by :class:`.transport.HttpTransport`), public wrappers that bound every answer and
turn every foreign error into a :class:`NetworkError` (a :class:`~.errors.DeviceError` branch)
with a stable ``code``, which the device records as a component's last result and reports to
its tracker (R10.c.i). What the answers *mean* is decided elsewhere: the evidence by
:mod:`.verify` (pure), the bundle by :mod:`.updater` and ``entities.bundle``.

- :class:`TrackerClient`: requests signed with the device's identity key
  (:mod:`entities.protocol.http_auth`); every tracker answer is signed by the tracker's key over the
  request's path and nonce, and is accepted only from one of the module keys the device was
  provisioned with (``anchors.trackers``, the server modules, or ``anchors.relays``, the
  intermediate modules that re-sign what they forward), the same key for one URL throughout.
  Heartbeat (C11.1.a.ii, a.iv, C11.2.b; its answer may carry signed update commands, kept as
  received for :mod:`entities.protocol.commands` to judge), plan, command results, evidence of a release
  at a block, attestations of a block (one module's, or every server module's it knows).
- :class:`ServerClient`: registration (hardware class, location: C11.3.d, C11.3.h), the bundle
  header, and the payload as a stream (:class:`PayloadStream`) that reconnects with ``Range``
  after a cut connection and never reads more than the record's ``file_size`` plus one probe
  byte (trailing data is then refused by the payload check). The server is not trusted: its
  answers are not signed; the bytes are checked against the signed record.

Errors (``code``)::

    NetworkError              network_error
      TrackerUnreachable      tracker_unreachable    connection refused, timeout, cut answer
      TrackerRefused          (the tracker's code)   e.g. unknown_device, not_synced, release_not_at_block
      ServerUnreachable       server_unreachable
      ServerRefused           (the server's code)    P4: unregistered_device, hardware_not_supported,
                                                     policy_denied, location_denied, revoked, unknown_image...
      DownloadInterrupted     download_interrupted   the payload connection was cut more often than allowed
      ConnectionLost          connection_lost        a transport's own signal (wrapped into the above)
      UntrustedAnswer         untrusted_answer       unsigned, signed by a key not provisioned, answering
                                                     another request, too large, or not the JSON expected
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

from entities.bundle import MAX_HEADER, BundleError, BundleHeader
from entities.protocol.http_auth import (
    HDR_NONCE,
    IDENTITY_PATH,
    AuthError,
    identity_of,
    identity_request,
    sign_request,
    verify_response,
)
from ledger_node.attestation import Attestation, AttestationError
from ledger_node.codec.ecdsa import KeyHolder
from ledger_node.codec.hashing import to_checksum_address

from .errors import UpdateRefused
from .transport import (
    ConnectionLost,
    DownloadInterrupted,
    HttpTransport,
    NetConfig,
    NetworkError,
    Reply,
    ServerRefused,
    ServerUnreachable,
    TrackerRefused,
    TrackerUnreachable,
    Transport,
    UntrustedAnswer,
    printable,
    url_refusal,
)
from .verify import Evidence

__all__ = [
    "MAX_ATTESTATIONS",
    "MAX_COMMANDS",
    "ConnectionLost",
    "DownloadInterrupted",
    "HttpTransport",
    "NetConfig",
    "NetworkError",
    "PayloadStream",
    "Reply",
    "ServerClient",
    "ServerRefused",
    "ServerUnreachable",
    "TrackerClient",
    "TrackerRefused",
    "TrackerUnreachable",
    "Transport",
    "UntrustedAnswer",
    "base_url",
    "server_from_link",
    "url_refusal",
]

_CODE_RE = re.compile(r"^[a-z0-9_]{1,64}$")
_HEX32_RE = re.compile(r"^0x[0-9a-f]{64}$")
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
_READ = 1 << 20
#: most update commands one heartbeat answer may carry (the rest are ignored)
MAX_COMMANDS = 16
#: most attestations of one block taken from one answer
MAX_ATTESTATIONS = 64


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


# ----------------------------------------------------------------------------- URLs


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


def server_from_link(link: str) -> str | None:
    """The firmware server a record's ``file_link`` names (its base URL), or None if it names none.

    ``http://host:8080/v1/images`` (the README's convention), ``.../v1/images/<hash>`` and
    ``http://host/prefix/...`` all name ``http://host[:port]`` (plus a prefix before ``/v1/images``).
    """
    parts = urlsplit(link) if isinstance(link, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    cut = parts.path.find("/v1/images")
    prefix = parts.path[:cut] if cut >= 0 else ""
    return f"{parts.scheme}://{parts.netloc}{prefix}".rstrip("/")


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


# ----------------------------------------------------------------------------- the tracker


class TrackerClient:
    """One status tracker, spoken to with signed requests; its signed answers checked (C11.2 a-b).

    ``trackers`` are the provisioned server-module addresses (``anchors.trackers``) and ``relays``
    the intermediate modules' (``anchors.relays``): an answer signed by any other key is refused,
    and the first verified answer pins this URL to its signer. Whose answers these are does not
    make them attestations: attestations and commands carry their own signatures, checked
    against ``anchors.trackers`` only.
    """

    def __init__(self, url: str, identity: KeyHolder, trackers: tuple[str, ...] | list[str], *,
                 relays: tuple[str, ...] | list[str] = (), transport: Transport | None = None,
                 config: NetConfig | None = None) -> None:
        self.url = base_url(url, "tracker")
        self.identity = identity
        self.config = config or NetConfig()
        self.transport = transport or HttpTransport(self.config)
        self.provisioned = {to_checksum_address(t) for t in trackers} | {to_checksum_address(r) for r in relays}
        self.relays = frozenset(to_checksum_address(r) for r in relays)
        self.address: str | None = None

    def audience(self) -> str:
        """The key this URL answers with: known after an answer, the only provisioned key, or
        learnt from ``GET /v1/identity``."""
        if self.address is None and len(self.provisioned) == 1:
            return next(iter(self.provisioned))
        if self.address is None:
            try:
                self.address = learn_identity(self.transport, self.url, "tracker", self.config.max_json_bytes,
                                              accept=self.provisioned)
            except ConnectionLost as exc:
                raise TrackerUnreachable(f"cannot reach the tracker at {self.url} ({exc})", url=self.url) from exc
        return self.address

    @property
    def relay(self) -> bool:
        """This URL's answers are signed by an intermediate module (known after the first answer)."""
        return self.address is not None and self.address in self.relays

    def close(self) -> None:
        self.transport.close()

    # -- the endpoints -------------------------------------------------------------------------

    def heartbeat(self, report: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /v1/devices/heartbeat``: register, report versions, readiness, last result (C11.1.a.ii, iv).

        The answer's ``commands`` is always a list (empty when absent) of at most
        :data:`MAX_COMMANDS` envelopes, each as received (nothing in them is trusted yet).

        Raises:
            TrackerUnreachable, TrackerRefused, UntrustedAnswer (also when ``commands`` is not a list).
        """
        out = self._object(self.call("POST", "/v1/devices/heartbeat", report))
        commands = out.get("commands")
        if commands is None:
            commands = []
        if not isinstance(commands, list):
            raise UntrustedAnswer(f"the tracker at {self.url} answered a heartbeat whose commands are not a list",
                                  url=self.url)
        out["commands"] = commands[:MAX_COMMANDS]
        return out

    def results(self, device_id: str, command_id: str, results: list[Mapping[str, Any]]) -> dict[str, Any]:
        """``POST /v1/devices/{id}/results``: what became of each upgrade of a command (P5, R10.c.i).

        Raises:
            TrackerUnreachable, UntrustedAnswer, TrackerRefused (``unknown_command``,
            ``already_reported``...).
        """
        body = {"command_id": command_id, "results": [dict(r) for r in results]}
        return self._object(self.call("POST", f"/v1/devices/{quote(device_id, safe='')}/results", body))

    def plan(self, device_id: str) -> dict[str, Any]:
        """``GET /v1/devices/{id}/plan``: the resolver's upgrades, dependencies first (P2, C11.2.c),
        and ``held``: those the tracker's rollouts hold back now (each with a ``reason``).

        Raises:
            TrackerUnreachable, TrackerRefused, UntrustedAnswer (also when ``plan.upgrades`` is malformed).
        """
        out = self._object(self.call("GET", f"/v1/devices/{quote(device_id, safe='')}/plan"))
        plan = out.get("plan")
        ups = plan.get("upgrades") if isinstance(plan, dict) else None
        if not isinstance(ups, list) or not all(
                isinstance(u, dict) and isinstance(u.get("product"), str) and isinstance(u.get("vendor"), str)
                and isinstance(u.get("to_version"), str) and isinstance(u.get("header_hash"), str)
                and _HEX32_RE.match(u["header_hash"].lower()) for u in ups):
            raise UntrustedAnswer(f"the tracker at {self.url} answered a malformed plan", url=self.url)
        held = out.setdefault("held", [])  # upgrades its rollouts hold back (a tracker without rollouts: none)
        if not isinstance(held, list) or not all(
                isinstance(h, dict) and isinstance(h.get("header_hash"), str)
                and _HEX32_RE.match(h["header_hash"].lower()) and isinstance(h.get("reason"), str) for h in held):
            raise UntrustedAnswer(f"the tracker at {self.url} answered a malformed plan (held)", url=self.url)
        return out

    def attestation(self, block: int | None = None) -> tuple[bytes, Attestation]:
        """``GET /v1/attestation[/{block}]``: the tracker's EIP-712 attestation of a block and its header RLP.

        Raises:
            TrackerUnreachable, TrackerRefused (``block_not_synced``...), UntrustedAnswer.
        """
        out = self._object(self.call("GET", "/v1/attestation" + ("" if block is None else f"/{int(block)}")))
        try:
            rlp = bytes.fromhex(str(out["header_rlp"]).removeprefix("0x"))
            att = Attestation.from_json(out["attestation"])
        except (KeyError, ValueError, AttestationError) as exc:
            raise UntrustedAnswer(f"the tracker at {self.url} answered a malformed attestation: {exc}",
                                  url=self.url) from exc
        if block is not None and att.block_number != block:
            raise UntrustedAnswer(f"the tracker at {self.url} attested block {att.block_number}, not {block}",
                                  url=self.url)
        return rlp, att

    def attestations(self, block: int) -> tuple[bytes, list[Attestation]]:
        """``GET /v1/attestations/{block}``: every server module's attestation of a block that this
        module knows (an intermediate gathers its upstreams'), with the header RLP; those of other
        blocks dropped, at most :data:`MAX_ATTESTATIONS`. Not verified (who signed is judged by
        :func:`ledger_node.attestation.trusted_header`).

        Raises:
            TrackerUnreachable, TrackerRefused, UntrustedAnswer (malformed).
        """
        out = self._object(self.call("GET", f"/v1/attestations/{int(block)}"))
        raw = out.get("attestations")
        try:
            rlp = bytes.fromhex(str(out["header_rlp"]).removeprefix("0x"))
            if not isinstance(raw, list):
                raise ValueError("attestations is not a list")
            atts = [Attestation.from_json(a) for a in raw[:MAX_ATTESTATIONS]]
        except (KeyError, ValueError, AttestationError) as exc:
            raise UntrustedAnswer(f"the tracker at {self.url} answered malformed attestations: {exc}",
                                  url=self.url) from exc
        return rlp, [a for a in atts if a.block_number == block]

    def evidence(self, header_hash: bytes, hardware: str, block: int | None = None) -> Evidence:
        """``GET /v1/evidence/{hash}?hardware=&block=``: header, attestation, proofs, record, successors.

        Parsed, not verified (:func:`.verify.check_release` does that).

        Raises:
            TrackerUnreachable, TrackerRefused (``unknown_release``, ``release_not_at_block``...),
            UntrustedAnswer, UpdateRefused (``bad_evidence``: well signed but malformed).
        """
        query = f"?hardware={quote(hardware, safe='')}" + ("" if block is None else f"&block={int(block)}")
        ev = Evidence.from_json(self._object(self.call("GET", f"/v1/evidence/0x{header_hash.hex()}{query}")))
        if ev.record.header_hash != header_hash:
            raise UpdateRefused("bad_evidence", f"the tracker at {self.url} sent evidence of another release")
        return ev

    # -- one signed exchange -------------------------------------------------------------------

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One signed request; the answer's signature is checked before anything of it is used.

        Raises:
            TrackerUnreachable: no (complete) answer.
            UntrustedAnswer: unsigned, signed by an unprovisioned key or another key than before
                for this URL, answering another request, larger than the limit, not JSON.
            TrackerRefused: a verified error answer, with the tracker's code.
        """
        url = self.url + path
        data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        signed = _signed_path(url)
        headers = sign_request(self.identity, method, signed, data, audience=self.audience())
        if data:
            headers["Content-Type"] = "application/json"
        limit = self.config.max_json_bytes
        try:
            reply = self.transport.send(method, url, headers, data)
            try:
                raw = _read_bounded(reply, limit)
            finally:
                reply.close()
        except ConnectionLost as exc:
            raise TrackerUnreachable(f"cannot reach the tracker at {self.url} ({exc})", url=self.url) from exc
        if len(raw) > limit:
            raise UntrustedAnswer(f"the tracker at {self.url} answered more than {limit} bytes", url=self.url)
        try:
            signer = verify_response(reply.headers, reply.status, signed, raw, request_nonce=headers[HDR_NONCE],
                                     tracker=self.address)
        except AuthError as exc:
            raise UntrustedAnswer(f"the tracker at {self.url} answered without a valid signature "
                                  f"({exc.code}: {exc})", url=self.url, status=reply.status) from exc
        if signer not in self.provisioned:
            raise UntrustedAnswer(f"the tracker at {self.url} signs with {signer}, which is not one of the "
                                  "device's provisioned trackers", url=self.url, status=reply.status)
        self.address = signer
        if reply.status >= 400:
            code, message = _error_of(raw, reply.status)
            raise TrackerRefused(f"the tracker at {self.url} refused ({reply.status} {code}): {message}",
                                 url=self.url, code=code, status=reply.status)
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise UntrustedAnswer(f"the tracker at {self.url} answered {reply.status} without JSON",
                                  url=self.url) from exc

    def _object(self, obj: Any) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise UntrustedAnswer(f"the tracker at {self.url} answered something else than a JSON object",
                                  url=self.url)
        return obj


# ----------------------------------------------------------------------------- the firmware server


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
        (requested only when the updater reads past the header, i.e. after it verified everything)."""
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
    request, which then asks for the rest only (``Range: bytes=N-``). ``received`` (the position in
    the payload), ``skipped``, ``connections`` and ``resumed_at`` say what happened.
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
                or self.received + offset > self.file_size:
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
                    self._reply = self._connect()
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
        self._drop()
        self._ended = True

    def to_json(self) -> dict[str, Any]:
        return {"server": self.client.url, "bytes": self.received - self.skipped, "connections": self.connections,
                "resumed_at": list(self.resumed_at), "skipped": self.skipped}
