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
- :class:`ServerClient` and :class:`PayloadStream` (:mod:`.server_client`, re-exported here):
  registration, the bundle header, and the payload streamed with ``Range`` resume, never more
  than the record's ``file_size`` plus one probe byte. The server is not trusted: its answers
  are not signed; the bytes are checked against the signed record.

The errors, :class:`Transport`, :func:`base_url` and :func:`learn_identity` live in
:mod:`.transport`; this module re-exports them.

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
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from entities.protocol.http_auth import HDR_NONCE, AuthError, sign_request, verify_response
from ledger_node.attestation import Attestation, AttestationError
from ledger_node.codec.ecdsa import KeyHolder
from ledger_node.codec.hashing import to_checksum_address

from .errors import UpdateRefused
from .server_client import PayloadStream, ServerClient
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
    _error_of,
    _read_bounded,
    _signed_path,
    base_url,
    learn_identity,
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

_HEX32_RE = re.compile(r"^0x[0-9a-f]{64}$")
#: most update commands one heartbeat answer may carry (the rest are ignored)
MAX_COMMANDS = 16
#: most attestations of one block taken from one answer
MAX_ATTESTATIONS = 64


# ----------------------------------------------------------------------------- URLs


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
