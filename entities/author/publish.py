"""Upload a bundle to firmware servers, then publish its record on the ledger (X.1368 P1, C11.4.c).

Order matters: a server keeps an upload *unpublished* (never offered to devices) until the
ledger has the matching record, so the record is published only after every server holds the
bundle. A failure before that leaves at most unpublished uploads; nothing a device could be offered.

The transport is :mod:`requests` with timeouts behind :func:`upload_bundle`, which reads a bounded
answer and turns every foreign error into :class:`UploadError`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from eth_account.signers.local import LocalAccount

from entities.bundle import BundleHeader, check_bundle, recover_signer, release_digest
from ledger_node.errors import ChainError, ConfigError, FwledgerError
from ledger_node.registry import Registry

from ..protocol.http_auth import HDR_CONTENT_SHA256, sign_request
from ..service_identity import IdentityError, fetch_identity
from .ledger import preflight
from .trust import HeaderSource, TrustedHeader, prove_publish

__all__ = [
    "BUNDLES_PATH",
    "PublishError",
    "PublishOutcome",
    "UploadError",
    "UploadReceipt",
    "publish_bundle",
    "upload_bundle",
]

BUNDLES_PATH = "/v1/bundles"
MAX_ANSWER = 64 * 1024
CONNECT_TIMEOUT = 10.0
_CODE_RE = re.compile(r"^[a-z0-9_]{1,64}$")
_HEX32_RE = re.compile(r"^0x[0-9a-fA-F]{64}$")
_STATES = ("unpublished", "published")


class PublishError(FwledgerError):
    """The bundle cannot be published as it is (signed by another key, ledger answer inconsistent)."""


class UploadError(PublishError):
    """A firmware server refused the upload or could not be reached; ``code`` is the server's error code."""

    def __init__(self, server: str, code: str, message: str, status: int | None = None) -> None:
        self.server = server
        self.code = code
        self.status = status
        super().__init__(message)


@dataclass(frozen=True)
class UploadReceipt:
    """A server's acceptance of an upload."""

    server: str
    status: int
    state: str
    digest: str | None
    file_hash: str | None

    def to_json(self) -> dict[str, Any]:
        return {"url": self.server, "status": self.status, "state": self.state, "digest": self.digest,
                "file_hash": self.file_hash}


@dataclass(frozen=True)
class PublishOutcome:
    header_hash: bytes
    tx: str
    block: int
    servers: tuple[UploadReceipt, ...]
    digest: bytes
    proven: TrustedHeader | None = None  # the header the preflight was proven at

    def to_json(self) -> dict[str, Any]:
        out = {"header_hash": "0x" + self.header_hash.hex(), "tx": self.tx, "block": self.block,
               "servers": [s.to_json() for s in self.servers]}
        if self.proven is not None:
            out["proven"] = {"block": self.proven.number, "block_hash": "0x" + self.proven.block_hash.hex(),
                             "header_source": self.proven.source}
        return out


def _printable(text: Any, limit: int = 200) -> str:
    """Untrusted text made safe for one terminal line."""
    clean = "".join(c if 0x20 <= ord(c) < 0x7F else " " for c in str(text))
    clean = " ".join(clean.split())
    return clean[:limit] + ("..." if len(clean) > limit else "")


def _endpoint(server: str) -> tuple[str, str]:
    """(URL to POST, path to sign) for a server base URL.

    Raises:
        ConfigError: not an http(s) URL without query or fragment.
    """
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"bad firmware server URL {server!r}: expected http(s)://host[:port][/prefix]")
    url = server.rstrip("/") + BUNDLES_PATH
    return url, urlsplit(url).path


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for piece in iter(lambda: fh.read(1 << 20), b""):
                h.update(piece)
    except OSError as exc:
        raise ConfigError(f"cannot read bundle {path}: {exc.strerror or exc}") from exc
    return h.hexdigest()


def _bounded_body(resp: requests.Response) -> bytes:
    parts, got = [], 0
    for piece in resp.iter_content(8192):
        parts.append(piece)
        got += len(piece)
        if got > MAX_ANSWER:
            break
    return b"".join(parts)[:MAX_ANSWER + 1]


def _error_of(body: bytes, status: int) -> tuple[str, str]:
    """(code, message) from a server's ``{"error": {"code", "message"}}`` answer, or generic ones."""
    try:
        err = json.loads(body.decode("utf-8"))["error"]
        code = err["code"] if isinstance(err["code"], str) and _CODE_RE.match(err["code"]) else f"http_{status}"
        return code, _printable(err.get("message", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"http_{status}", _printable(body[:200].decode("utf-8", "replace"))


def upload_bundle(server: str, bundle: Path, account: LocalAccount, *, timeout: float = 120.0,
                  expect_digest: bytes | None = None, expect_file_hash: bytes | None = None,
                  session: requests.Session | None = None) -> UploadReceipt:
    """``POST {server}/v1/bundles`` with the bundle as the body, signed by the vendor key.

    The body is streamed from the file; the signature covers its SHA-256 (``entities.protocol.http_auth``).

    Args:
        timeout: seconds to wait for the server's answer after the upload.
        expect_digest, expect_file_hash: when given, the server's answer must name these.

    Raises:
        UploadError: unreachable server, timeout, a non-2xx answer (with the server's error code),
            or an answer that is not the expected JSON.
        ConfigError: bad URL, unreadable bundle.
    """
    url, signed_path = _endpoint(server)
    body_sha256 = _file_sha256(bundle)
    http = session or requests.Session()
    try:
        audience = fetch_identity(server, session=http, timeout=min(timeout, CONNECT_TIMEOUT * 3))
    except IdentityError as exc:
        if session is None:
            http.close()
        raise UploadError(server, "unreachable", f"upload to {server}: {exc}") from None
    headers = sign_request(account, "POST", signed_path, body_sha256=body_sha256, audience=audience)
    headers["Content-Type"] = "application/octet-stream"
    headers[HDR_CONTENT_SHA256] = body_sha256  # the signed intent: checked before the body is read
    try:
        headers["Content-Length"] = str(Path(bundle).stat().st_size)
    except OSError as exc:
        raise ConfigError(f"cannot read bundle {bundle}: {exc.strerror or exc}") from exc
    try:
        with open(bundle, "rb") as fh:
            resp = http.post(url, data=fh, headers=headers, timeout=(CONNECT_TIMEOUT, timeout), stream=True,
                             allow_redirects=False, verify=http.verify)  # the session's CA over the environment's
        try:
            body = _bounded_body(resp)
        finally:
            resp.close()
    except requests.exceptions.Timeout:
        raise UploadError(server, "timeout", f"upload to {server}: no answer within {timeout:.0f} s") from None
    except requests.exceptions.ConnectionError as exc:
        raise UploadError(server, "unreachable", f"upload to {server} failed: cannot reach the server or the "
                          f"connection broke ({_printable(type(exc).__name__)})") from None
    except requests.exceptions.RequestException as exc:
        raise UploadError(server, "transport", f"upload to {server} failed: {_printable(exc)}") from None
    except OSError as exc:  # after requests' errors, which derive from OSError
        raise ConfigError(f"cannot read bundle {bundle}: {exc.strerror or exc}") from exc
    finally:
        if session is None:
            http.close()
    status = resp.status_code
    if not 200 <= status < 300:
        code, message = _error_of(body, status)
        raise UploadError(server, code, f"upload to {server} refused: HTTP {status} {code}"
                          + (f": {message}" if message else ""), status)
    try:
        answer = json.loads(body.decode("utf-8"))
        if not isinstance(answer, dict):
            raise ValueError("not an object")
    except ValueError:
        raise UploadError(server, "bad_answer", f"upload to {server}: HTTP {status} but not a JSON object", status) \
            from None
    state, digest, file_hash = answer.get("state"), answer.get("digest"), answer.get("file_hash")
    if state not in _STATES:
        raise UploadError(server, "bad_answer", f"upload to {server}: answer has no valid state", status)
    for name, value, expected in (("digest", digest, expect_digest), ("file_hash", file_hash, expect_file_hash)):
        if value is not None and (not isinstance(value, str) or not _HEX32_RE.match(value)):
            raise UploadError(server, "bad_answer", f"upload to {server}: answer's {name} is not 32 bytes of hex",
                              status)
        if expected is not None and value is not None and value.lower() != "0x" + expected.hex():
            raise UploadError(server, "bad_answer", f"upload to {server}: the server names another {name} "
                              f"({value}) than the bundle's", status)
    return UploadReceipt(server, status, state, digest, file_hash)


def publish_bundle(bundle: Path, servers: Sequence[str], registry: Registry, *, timeout: float = 120.0,
                   session: requests.Session | None = None, source: HeaderSource | None = None,
                   index: Any = None) -> PublishOutcome:
    """P1: check the bundle, upload it to every server, then publish its record on the ledger.

    ``registry`` carries the vendor's key (``Registry.with_account``); it signs the uploads and the
    transaction. Nothing is published unless every upload succeeded. With ``source`` (a trusted
    header source, :mod:`.trust`) the author also proves, before any upload, what the registry's
    ``eth_call`` answers claimed (vendor standing, classes, head) at a trusted header; ``index`` (a
    synced full-node index) lets it wait for a header that covers the record's predecessor.

    Raises:
        BundleError: the bundle is damaged (format, signature or payload).
        PublishError: signed by another key than the registry client's, or the chain answered a
            record that does not match the bundle.
        PreflightError: the registry would refuse the record (checked before any upload);
            ``UnprovenLedger`` when it cannot be proven at a trusted header.
        UploadError: a server refused the upload or could not be reached (nothing published).
        ContractRevert, ChainError: the registry refused the record or could not be reached.
        ConfigError: no signing key, no server, bad URL, unreadable file.
    """
    account = registry.account
    if account is None:
        raise ConfigError("publishing needs the vendor's signing key (--key-file)")
    urls = list(dict.fromkeys(servers))
    if not urls:
        raise ConfigError("name at least one firmware server (--server URL)")
    for url in urls:
        _endpoint(url)
    chain_id, address = registry.deployment.chain_id, registry.address
    header = check_bundle(Path(bundle), chain_id=chain_id, registry=address)          # whole and signed
    _check_signer(header, account, chain_id, address)                                  # by this vendor key
    preflight(registry, header.record, account.address)                                # the ledger would accept it
    proven = None
    if source is not None:                                                             # ... proven, not just said
        proven = prove_publish(registry, header.record, account.address, source, index=index)
    digest = release_digest(header, chain_id, address)
    receipts = tuple(upload_bundle(url, Path(bundle), account, timeout=timeout, expect_digest=digest,
                                   expect_file_hash=header.record.data.file_hash, session=session)
                     for url in urls)                                                  # every server holds it
    res = registry.publish(header.record)                                              # then the ledger (P1)
    if release_digest(res.record, chain_id, address) != digest:
        raise ChainError("the registry published a record that differs from the bundle's")
    return PublishOutcome(res.header_hash, res.tx, res.block, receipts, digest, proven)


def _check_signer(header: BundleHeader, account: LocalAccount, chain_id: int, registry: str) -> None:
    signer = recover_signer(header, header.signature, chain_id, registry)
    if signer != account.address:
        raise PublishError(f"the bundle is signed by {signer}, not by the signing key {account.address} "
                           "(or for another registry)")
