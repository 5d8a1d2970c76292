"""Learning the address of the service a client is about to sign requests for.

``GET {base}/v1/identity`` with a fresh nonce; the answer is signed over that nonce by the
service's key (:func:`entities.protocol.http_auth.identity_of`). The client then names that address as the
audience of its signed requests, so nothing it sends can be spent at another service.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import requests

from ledger_node.errors import FwledgerError

from .protocol.http_auth import IDENTITY_PATH, AuthError, identity_of, identity_request

__all__ = ["IdentityError", "fetch_identity"]

_MAX_ANSWER = 64 * 1024


class IdentityError(FwledgerError):
    """The service did not prove an identity: ``unreachable`` (no answer), or it answered
    unsigned, malformed, or with another key than expected."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


def fetch_identity(base_url: str, *, session: requests.Session | None = None, timeout: float = 30.0,
                   accept: Collection[str] | None = None, **kwargs: Any) -> str:
    """The checksummed address the service at ``base_url`` signs with; ``accept`` pins the
    possible keys. ``kwargs`` go to ``requests`` (``verify``, ``cert``).

    Raises:
        IdentityError: with a one-line reason.
    """
    url = base_url.rstrip("/") + IDENTITY_PATH
    headers, nonce = identity_request()
    http = session or requests.Session()
    try:
        # the session's own CA, not REQUESTS_CA_BUNDLE from the environment (which requests would prefer)
        kwargs.setdefault("verify", http.verify)
        resp = http.get(url, headers=headers, timeout=timeout, stream=True, allow_redirects=False, **kwargs)
        try:
            body = resp.raw.read(_MAX_ANSWER + 1, decode_content=True)
        finally:
            resp.close()
    except requests.RequestException as exc:
        raise IdentityError(f"cannot reach {base_url} to learn its identity ({type(exc).__name__})",
                            unreachable=True) from None
    finally:
        if session is None:
            http.close()
    if len(body) > _MAX_ANSWER:
        raise IdentityError(f"{base_url} answered {IDENTITY_PATH} with more than {_MAX_ANSWER} bytes")
    try:
        return identity_of(resp.headers, resp.status_code, body, nonce, accept=accept)
    except AuthError as exc:
        raise IdentityError(f"{base_url} did not prove its identity ({exc.code}: {exc})") from None
