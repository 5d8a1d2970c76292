"""Signed HTTP requests between fwledger parties (vendors and devices to the firmware server).

The signer's secp256k1 (Ethereum) key signs, with EIP-191 ``personal_sign``, the text::

    fwledger-request-v2
    {audience: the address of the service the request is for}
    {METHOD}
    {PATH with query string}
    {sha256 of the body, hex}
    {unix time, seconds}
    {nonce, 32 hex characters}

and sends it in five headers. The verifier checks the signature recovers to the claimed address,
the audience is one of its own names (its identity address; a server module also answers for its
configured intermediates, which relay device requests byte for byte), the time is within
``max_skew`` seconds of its clock, and (with a :class:`NonceStore`) that the nonce was never seen
from that address within the window: a captured request cannot be replayed, on this service or
on another.

A client learns a service's address from ``GET /v1/identity`` (:data:`IDENTITY_PATH`), whose
answer the service signs over the client's fresh nonce (:func:`identity_request`,
:func:`identity_of`): whoever answers, the requests that follow are bound to the key that
answered, so a service that captures them cannot spend them elsewhere. Signed responses use the
same text with the method line ``RESPONSE-<status>``, the request's nonce, and as audience the
requester's address (empty for an unsigned request).

Pure except for the clock, which callers may pass in.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

from ledger_node.codec.ecdsa import KeyHolder, SignatureError, recover_personal, sign_personal
from ledger_node.codec.hashing import is_checksum_address, to_checksum_address
from ledger_node.errors import VerificationError

__all__ = [
    "HDR_ADDRESS",
    "HDR_AUDIENCE",
    "HDR_CONTENT_SHA256",
    "HDR_NONCE",
    "HDR_SIGNATURE",
    "HDR_TIME",
    "IDENTITY_PATH",
    "AuthError",
    "NonceStore",
    "SignedRequest",
    "canonical_text",
    "identity_of",
    "identity_request",
    "remember_nonce",
    "response_method",
    "sign_request",
    "sign_response",
    "verify_request",
    "verify_response",
]

HDR_ADDRESS = "X-Fwledger-Address"
HDR_TIME = "X-Fwledger-Time"
HDR_NONCE = "X-Fwledger-Nonce"
HDR_SIGNATURE = "X-Fwledger-Signature"
HDR_AUDIENCE = "X-Fwledger-Audience"
#: an upload's signed intent: the body's SHA-256, named (and signed) before the body is sent
HDR_CONTENT_SHA256 = "X-Fwledger-Content-SHA256"
#: ``GET`` here answers the service's address, signed over the caller's nonce.
IDENTITY_PATH = "/v1/identity"
_NONCE_RE = re.compile(r"^[0-9a-f]{32}$")
_SIG_RE = re.compile(r"^0x[0-9a-fA-F]{130}$")


class AuthError(VerificationError):
    """A request's signature, time or nonce does not verify; ``code`` is a stable error code."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class NonceStore(Protocol):
    def remember(self, address: str, nonce: str, expires_at: float) -> bool:
        """Record a nonce; False if it was already recorded (a replay)."""


def canonical_text(audience: str, method: str, path: str, body_sha256: str, timestamp: int, nonce: str) -> str:
    return f"fwledger-request-v2\n{audience}\n{method.upper()}\n{path}\n{body_sha256}\n{timestamp}\n{nonce}"


def _audience(text: str) -> str:
    """A checksummed address, or ``""`` (the audience of an answer to an unsigned request)."""
    if text == "":
        return ""
    if not (text.startswith("0x") and len(text) == 42):
        raise AuthError("bad_audience", f"the audience must be an Ethereum address, not {text[:60]!r}")
    try:
        return to_checksum_address(text)
    except ValueError:
        raise AuthError("bad_audience", f"the audience must be an Ethereum address, not {text[:60]!r}") from None


def sign_request(account: KeyHolder, method: str, path: str, body: bytes = b"", *, audience: str,
                 now: float | None = None, nonce: str | None = None, body_sha256: str | None = None) -> dict[str, str]:
    """Headers authenticating one request by ``account`` to the service whose address is ``audience``.

    ``body_sha256`` may be given instead of hashing ``body`` (for streamed uploads).
    """
    ts = int(time.time() if now is None else now)
    nonce = nonce or secrets.token_hex(16)
    audience = _audience(audience)
    digest = body_sha256 or hashlib.sha256(body).hexdigest()
    sig = sign_personal(account, canonical_text(audience, method, path, digest, ts, nonce))
    return {HDR_ADDRESS: account.address, HDR_AUDIENCE: audience, HDR_TIME: str(ts), HDR_NONCE: nonce,
            HDR_SIGNATURE: "0x" + sig.hex()}


@dataclass(frozen=True)
class SignedRequest:
    address: str
    timestamp: int
    nonce: str
    audience: str = ""


def verify_request(headers: Mapping[str, str], method: str, path: str, body_sha256: str, *,
                   audience: Collection[str] | None, now: float | None = None, max_skew: int = 300,
                   nonces: NonceStore | None = None) -> SignedRequest:
    """Check a request's signature headers (names are case-insensitive).

    ``audience``: the addresses this verifier answers for; the request must name one of them
    (``None``: not checked, for answers whose nonce binds them to a request instead).

    Raises:
        AuthError: with code ``unsigned`` (headers missing), ``no_audience`` (a request signed
            without naming its audience), ``bad_signature_format``, ``bad_audience``,
            ``bad_signature`` (does not recover to the address), ``wrong_audience`` (signed for
            another service), ``stale_request`` (time outside the window) or
            ``replayed_request`` (nonce seen before).
    """
    h = {k.lower(): v for k, v in headers.items()}
    try:
        address, ts_text, nonce, sig = (h[x.lower()] for x in (HDR_ADDRESS, HDR_TIME, HDR_NONCE, HDR_SIGNATURE))
    except KeyError:
        raise AuthError("unsigned", "request is not signed (X-Fwledger-* headers missing)") from None
    if HDR_AUDIENCE.lower() not in h:
        raise AuthError("no_audience", "the request does not name the service it is for (X-Fwledger-Audience); "
                                       "it was signed by a client older than this service")
    named = _audience(h[HDR_AUDIENCE.lower()])
    if not ts_text.isdigit() or len(ts_text) > 12 or not _NONCE_RE.match(nonce) or not _SIG_RE.match(sig):
        raise AuthError("bad_signature_format", "malformed X-Fwledger-* headers")
    if not is_checksum_address(address) and not (address.startswith("0x") and len(address) == 42):
        raise AuthError("bad_signature_format", "malformed X-Fwledger-Address")
    try:
        address = to_checksum_address(address)
    except ValueError:
        raise AuthError("bad_signature_format", "malformed X-Fwledger-Address") from None
    ts = int(ts_text)
    clock = time.time() if now is None else now
    if abs(clock - ts) > max_skew:
        raise AuthError("stale_request", f"request time is more than {max_skew} s away from the server's clock")
    text = canonical_text(named, method, path, body_sha256, ts, nonce)
    try:
        signer = recover_personal(text, bytes.fromhex(sig[2:]))
    except SignatureError:
        raise AuthError("bad_signature", "signature does not verify") from None
    if signer != address:
        raise AuthError("bad_signature", "signature is not by the claimed address")
    if audience is not None and named not in {to_checksum_address(a) for a in audience}:
        raise AuthError("wrong_audience", f"the request is signed for the service {named or '(none)'}, not this one")
    if nonces is not None:
        remember_nonce(nonces, address, nonce, ts + max_skew)
    return SignedRequest(address, ts, nonce, named)


def remember_nonce(nonces: NonceStore, address: str, nonce: str, expires_at: float) -> None:
    """Record a signed request's nonce in ``nonces`` (kept until ``expires_at``).

    Raises:
        AuthError: ``replayed_request`` (seen before).
    """
    if not nonces.remember(address, nonce, expires_at):
        raise AuthError("replayed_request", "request nonce already used: replay refused")


def response_method(status: int) -> str:
    """The "method" line a signed response uses: ``RESPONSE-<status>``."""
    return f"RESPONSE-{int(status)}"


def verify_response(headers: Mapping[str, str], status: int, path: str, body: bytes, *,
                    request_nonce: str | None = None, tracker: str | None = None, now: float | None = None,
                    max_skew: int = 300) -> str:
    """Check a signed response (trackers sign theirs); returns the signer's address.

    The signer signs like a request, with the method line ``RESPONSE-<status>``, the request's path
    with its query string, and the request's own nonce. ``request_nonce`` makes sure the response
    answers this request; ``tracker`` pins the expected signer.

    Raises:
        AuthError: unsigned, bad signature, stale, answering another request (``nonce_mismatch``)
            or signed by another key (``wrong_tracker``).
    """
    signed = verify_request(headers, response_method(status), path, hashlib.sha256(body).hexdigest(),
                            audience=None, now=now, max_skew=max_skew)
    if request_nonce is not None and signed.nonce != request_nonce:
        raise AuthError("nonce_mismatch", "the response answers another request")
    if tracker is not None and signed.address.lower() != tracker.lower():
        raise AuthError("wrong_tracker", f"the response is signed by {signed.address}, not {tracker}")
    return signed.address


def sign_response(account: KeyHolder, status: int, path: str, body: bytes,
                  request_headers: Mapping[str, str]) -> dict[str, str]:
    """Headers signing an answer to the request whose headers are ``request_headers``: over its
    nonce (a fresh one if it sent none) and for its signer (``""`` if unsigned)."""
    h = {k.lower(): v for k, v in request_headers.items()}
    nonce = h.get(HDR_NONCE.lower(), "")
    requester = h.get(HDR_ADDRESS.lower(), "")
    try:
        requester = _audience(requester)
    except AuthError:
        requester = ""
    return sign_request(account, response_method(status), path, body, audience=requester,
                        nonce=nonce if _NONCE_RE.match(nonce) else None)


def identity_request() -> tuple[dict[str, str], str]:
    """Headers for ``GET /v1/identity`` (a fresh nonce, nothing signed) and that nonce."""
    nonce = secrets.token_hex(16)
    return {HDR_NONCE: nonce}, nonce


def identity_of(headers: Mapping[str, str], status: int, body: bytes, nonce: str, *,
                accept: Collection[str] | None = None) -> str:
    """The address that signed a ``GET /v1/identity`` answer over ``nonce`` (and named itself in
    the body); with ``accept``, it must be one of those.

    Raises:
        AuthError: ``no_identity`` (not a signed identity answer), the codes of
            :func:`verify_response`, or ``wrong_tracker`` (a key outside ``accept``).
    """
    if status != 200:
        raise AuthError("no_identity", f"the service answered {status} to {IDENTITY_PATH}")
    signer = verify_response(headers, status, IDENTITY_PATH, body, request_nonce=nonce)
    try:
        named = json.loads(body.decode("utf-8")).get("address")
    except (UnicodeDecodeError, ValueError, AttributeError):
        named = None
    if not isinstance(named, str) or named.lower() != signer.lower():
        raise AuthError("no_identity", "the identity answer does not name its signer")
    if accept is not None and signer not in {to_checksum_address(a) for a in accept}:
        raise AuthError("wrong_tracker", f"the service signs with {signer}, which is not a provisioned key")
    return signer
