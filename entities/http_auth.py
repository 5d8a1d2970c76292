"""Signed HTTP requests between fwledger parties (vendors and devices to the firmware server).

The signer's secp256k1 (Ethereum) key signs, with EIP-191 ``personal_sign``, the text::

    fwledger-request-v1
    {METHOD}
    {PATH with query string}
    {sha256 of the body, hex}
    {unix time, seconds}
    {nonce, 32 hex characters}

and sends it in four headers. The verifier checks the signature recovers to the claimed address,
the time is within ``max_skew`` seconds of its clock, and (with a :class:`NonceStore`) that the
nonce was never seen from that address within the window: a captured request cannot be replayed.
Pure except for the clock, which callers may pass in.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_utils import is_checksum_address, to_checksum_address

from ledger_node.errors import VerificationError

__all__ = [
    "HDR_ADDRESS",
    "HDR_NONCE",
    "HDR_SIGNATURE",
    "HDR_TIME",
    "AuthError",
    "NonceStore",
    "SignedRequest",
    "canonical_text",
    "response_method",
    "sign_request",
    "verify_request",
    "verify_response",
]

HDR_ADDRESS = "X-Fwledger-Address"
HDR_TIME = "X-Fwledger-Time"
HDR_NONCE = "X-Fwledger-Nonce"
HDR_SIGNATURE = "X-Fwledger-Signature"
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


def canonical_text(method: str, path: str, body_sha256: str, timestamp: int, nonce: str) -> str:
    return f"fwledger-request-v1\n{method.upper()}\n{path}\n{body_sha256}\n{timestamp}\n{nonce}"


def sign_request(account: LocalAccount, method: str, path: str, body: bytes = b"", *,
                 now: float | None = None, nonce: str | None = None, body_sha256: str | None = None) -> dict[str, str]:
    """Headers authenticating one request by ``account``.

    ``body_sha256`` may be given instead of hashing ``body`` (for streamed uploads).
    """
    ts = int(time.time() if now is None else now)
    nonce = nonce or secrets.token_hex(16)
    digest = body_sha256 or hashlib.sha256(body).hexdigest()
    sig = account.sign_message(encode_defunct(text=canonical_text(method, path, digest, ts, nonce)))
    return {HDR_ADDRESS: account.address, HDR_TIME: str(ts), HDR_NONCE: nonce,
            HDR_SIGNATURE: "0x" + bytes(sig.signature).hex()}


@dataclass(frozen=True)
class SignedRequest:
    address: str
    timestamp: int
    nonce: str


def verify_request(headers: dict[str, str], method: str, path: str, body_sha256: str, *,
                   now: float | None = None, max_skew: int = 300, nonces: NonceStore | None = None) -> SignedRequest:
    """Check a request's signature headers (names are case-insensitive).

    Raises:
        AuthError: with code ``unsigned`` (headers missing), ``bad_signature_format``,
            ``bad_signature`` (does not recover to the address), ``stale_request`` (time outside
            the window) or ``replayed_request`` (nonce seen before).
    """
    h = {k.lower(): v for k, v in headers.items()}
    try:
        address, ts_text, nonce, sig = (h[x.lower()] for x in (HDR_ADDRESS, HDR_TIME, HDR_NONCE, HDR_SIGNATURE))
    except KeyError:
        raise AuthError("unsigned", "request is not signed (X-Fwledger-* headers missing)") from None
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
    text = canonical_text(method, path, body_sha256, ts, nonce)
    try:
        signer = Account.recover_message(encode_defunct(text=text), signature=sig)
    except Exception:  # eth-keys raises several types for an unusable signature
        raise AuthError("bad_signature", "signature does not verify") from None
    if signer != address:
        raise AuthError("bad_signature", "signature is not by the claimed address")
    if nonces is not None and not nonces.remember(address, nonce, ts + max_skew):
        raise AuthError("replayed_request", "request nonce already used: replay refused")
    return SignedRequest(address, ts, nonce)


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
    signed = verify_request(dict(headers), response_method(status), path, hashlib.sha256(body).hexdigest(),
                            now=now, max_skew=max_skew)
    if request_nonce is not None and signed.nonce != request_nonce:
        raise AuthError("nonce_mismatch", "the response answers another request")
    if tracker is not None and signed.address.lower() != tracker.lower():
        raise AuthError("wrong_tracker", f"the response is signed by {signed.address}, not {tracker}")
    return signed.address
