"""Where a light node on a host takes the block header it proves the ledger at (X.1368 Figure II.2).

The author and the firmware server are light nodes: what they rely on from the chain is proven
with the registry's storage proofs (``eth_getProof``) against a block header they trust. This module
says where that header comes from (:class:`HeaderSource`); the proofs are
:mod:`ledger_node.lightnode`'s.

- :class:`TrackerHeaders`: k of the n tracker keys of an anchors file (``fwledger device anchors``)
  attest it, exactly as devices trust headers (:func:`ledger_node.attestation.trusted_header`);
- :class:`SecondNode`: an independent second node has the same block hash at that height;
- :class:`OwnNode`: the host's own node (the embedded chain, or a node on loopback): the same
  boundary a tracker's node sits in (docs/THREATS.md). Proofs still catch a node, or a proxy in
  front of it, whose ``eth_call``, events or ``eth_getProof`` answers disagree with its own state root.

:func:`header_source` builds one from the command line's ``--anchors/--tracker/--verify-rpc``.
Every failure to trust a header is an :class:`UntrustedHeader`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests
from eth_utils import to_checksum_address
from web3 import Web3

from ledger_node.attestation import Attestation, AttestationError, trusted_header
from ledger_node.errors import ChainError, ConfigError, ProofError, VerificationError
from ledger_node.proof_fetch import fetch_header

__all__ = [
    "HeaderAnchors",
    "HeaderSource",
    "OwnNode",
    "SecondNode",
    "TrackerHeaders",
    "TrustedHeader",
    "UntrustedHeader",
    "describe_source",
    "header_source",
    "is_own_node",
]

MAX_ANSWER = 64 * 1024


class UntrustedHeader(VerificationError):
    """No block header can be trusted (no quorum of attestations, nodes disagree, no answer)."""


@dataclass(frozen=True)
class TrustedHeader:
    """A header the author trusts, and why."""

    header_rlp: bytes
    block_hash: bytes
    number: int
    source: str


class HeaderSource(Protocol):
    """Where a trusted header comes from. ``retry_for``: seconds to keep asking for newer headers
    while what the node said is not yet visible at the trusted one (0: the header is the newest)."""

    retry_for: float

    def header(self, w3: Web3, *, chain_id: int, registry: str, at_least: int,
               wait: float | None = None) -> TrustedHeader:
        """A trusted header at or above block ``at_least``.

        Raises:
            UntrustedHeader: no header can be trusted.
        """
        ...


def is_own_node(rpc: str) -> bool:
    """True for the embedded chain or a node on loopback: the author's own node."""
    if rpc == "embedded":
        return True
    host = (urlsplit(rpc).hostname or "").lower()
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _header_from(w3: Web3, block: int | str, what: str) -> tuple[bytes, bytes, int]:
    try:
        return fetch_header(w3, block)
    except ChainError as exc:
        raise UntrustedHeader(f"cannot read a block header from {what}: {exc}") from None


class OwnNode:
    """The newest header of the author's own node (embedded, or on loopback)."""

    def __init__(self, label: str = "the author's own node") -> None:
        self.label, self.retry_for = label, 0.0

    def header(self, w3: Web3, *, chain_id: int, registry: str, at_least: int,
               wait: float | None = None) -> TrustedHeader:
        rlp, block_hash, number = _header_from(w3, "latest", self.label)
        if number < at_least:
            raise UntrustedHeader(f"{self.label} is at block {number}, below block {at_least} it indexed")
        return TrustedHeader(rlp, block_hash, number, self.label)


class SecondNode:
    """The primary node's newest header (or ``base``'s), trusted only if an independent node has the
    same block hash at that height. ``max_lag``: without ``base``, the primary's newest block may be
    at most that many blocks behind the second node's (a primary freezing its head to hide what
    came since); None: no limit."""

    def __init__(self, url: str, w3: Web3, base: HeaderSource | None = None, *, max_lag: int | None = None) -> None:
        self.url, self.w3, self.base, self.max_lag = url, w3, base, max_lag
        self.retry_for = base.retry_for if base is not None else 0.0

    def header(self, w3: Web3, *, chain_id: int, registry: str, at_least: int,
               wait: float | None = None) -> TrustedHeader:
        try:
            other_chain = int(self.w3.eth.chain_id)
        except Exception as exc:  # web3 and transport errors alike
            raise UntrustedHeader(f"the verifying node {self.url} does not answer: {type(exc).__name__}") from None
        if other_chain != chain_id:
            raise UntrustedHeader(f"the verifying node {self.url} is on chain {other_chain}, not {chain_id}")
        if self.base is not None:
            first = self.base.header(w3, chain_id=chain_id, registry=registry, at_least=at_least, wait=wait)
            rlp, block_hash, number, why = first.header_rlp, first.block_hash, first.number, first.source + " and "
        else:
            rlp, block_hash, number = _header_from(w3, "latest", "the RPC node")
            why = ""
            if number < at_least:
                raise UntrustedHeader(f"the RPC node is at block {number}, below block {at_least} it indexed")
            if self.max_lag is not None:
                _, _, other_number = _header_from(self.w3, "latest", f"the verifying node {self.url}")
                if other_number - number > self.max_lag:
                    raise UntrustedHeader(f"untrusted header: the RPC node's newest block {number} is "
                                          f"{other_number - number} blocks behind the verifying node {self.url}'s")
        _, other_hash, _ = _header_from(self.w3, number, f"the verifying node {self.url}")
        if other_hash != block_hash:
            raise UntrustedHeader(f"untrusted header: the RPC node and the verifying node {self.url} disagree on "
                                 f"block {number} (0x{block_hash.hex()[:16]}... vs 0x{other_hash.hex()[:16]}...)")
        return TrustedHeader(rlp, block_hash, number, f"{why}agreed by {self.url}")


@dataclass(frozen=True)
class HeaderAnchors:
    """The part of a device's trust anchors (``fwledger device anchors``) an author or a firmware
    server uses: whose attestations make a header trusted."""

    chain_id: int
    registry: str
    code_hash: bytes
    trackers: tuple[str, ...]
    quorum: int

    @classmethod
    def load(cls, path: Path) -> HeaderAnchors:
        """Raises:
            ConfigError: unreadable, not anchors, or an impossible quorum.
        """
        try:
            raw = Path(path).read_bytes()[:1 << 20]
            obj = json.loads(raw)
            if obj.get("format") != 1:
                raise ValueError(f"unsupported anchors format {obj.get('format')!r}")
            trackers = tuple(to_checksum_address(t) for t in obj["trackers"])
            anchors = cls(int(obj["chain_id"]), to_checksum_address(obj["registry"]),
                          bytes.fromhex(str(obj["code_hash"]).removeprefix("0x")), trackers, int(obj["quorum"]))
        except OSError as exc:
            raise ConfigError(f"cannot read anchors {path}: {exc.strerror or exc}") from None
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"bad trust anchors {path}: {exc}") from None
        if not 1 <= anchors.quorum <= len(set(trackers)):
            raise ConfigError(f"bad trust anchors {path}: quorum {anchors.quorum} of {len(set(trackers))} trackers")
        return anchors


class TrackerHeaders:
    """A header attested by k of the anchors' n trackers (asked at ``urls``: ``GET /v1/attestation``).

    ``wait`` seconds: how long to wait for the trackers to attest a block at or above ``at_least``
    (they index behind the chain's head).
    """

    def __init__(self, anchors: HeaderAnchors, urls: Sequence[str], session: requests.Session, *,
                 timeout: float = 10.0, wait: float = 30.0, clock: Any = time.time, sleep: Any = time.sleep) -> None:
        if not urls:
            raise ConfigError("--anchors needs the trackers to ask: --tracker URL (repeat)")
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(f"bad tracker URL {url!r}: expected http(s)://host[:port]")
        self.anchors, self.urls, self.session = anchors, list(dict.fromkeys(urls)), session
        self.timeout, self.wait, self.clock, self.sleep = timeout, wait, clock, sleep
        self.retry_for = wait

    def _get(self, url: str, block: int | None) -> tuple[bytes, Attestation] | None:
        path = "/v1/attestation" + ("" if block is None else f"/{int(block)}")
        try:
            with self.session.get(url.rstrip("/") + path, timeout=self.timeout, stream=True,
                                  allow_redirects=False) as resp:
                body = resp.raw.read(MAX_ANSWER + 1, decode_content=True)
                if resp.status_code != 200 or len(body) > MAX_ANSWER:
                    return None
            out = json.loads(body)
            att = Attestation.from_json(out["attestation"])
            return bytes.fromhex(str(out["header_rlp"]).removeprefix("0x")), att
        except (requests.exceptions.RequestException, OSError, ValueError, KeyError, TypeError, AttestationError):
            return None  # an unreachable or unusable tracker counts for nobody

    def _attested(self, chain_id: int, registry: str, at_least: int) -> tuple[TrustedHeader | None, str]:
        newest = {url: got for url in self.urls if (got := self._get(url, None)) is not None}
        if not newest:
            return None, "no tracker answered"
        why = ""
        for number in sorted({att.block_number for _, att in newest.values()}, reverse=True):
            if number < at_least:
                why = f"the trackers attest up to block {number}, block {at_least} or newer is needed"
                break
            answers = [got if got[1].block_number == number else self._get(url, number)
                       for url, got in newest.items()]
            found = [a for a in answers if a is not None]
            atts = [att for _, att in found]
            for rlp in dict.fromkeys(r for r, _ in found):
                try:
                    header = trusted_header(rlp, atts, chain_id=chain_id, registry=registry,
                                            trackers=self.anchors.trackers, quorum=self.anchors.quorum,
                                            now=self.clock(), max_age=float("inf"))
                except (AttestationError, ProofError) as exc:
                    why = str(exc)
                    continue
                return TrustedHeader(header.rlp, header.hash, header.number,
                                     f"attested by {self.anchors.quorum} of {len(self.anchors.trackers)} "
                                     "trackers"), ""
        return None, why

    def header(self, w3: Web3, *, chain_id: int, registry: str, at_least: int,
               wait: float | None = None) -> TrustedHeader:
        if (self.anchors.chain_id, self.anchors.registry) != (chain_id, to_checksum_address(registry)):
            raise UntrustedHeader(f"the anchors are for registry {self.anchors.registry} on chain "
                                 f"{self.anchors.chain_id}, not this one")
        deadline = self.clock() + (self.wait if wait is None else wait)
        while True:
            got, why = self._attested(chain_id, registry, at_least)
            if got is not None:
                return got
            if self.clock() >= deadline:
                raise UntrustedHeader(f"untrusted header: no block is attested by {self.anchors.quorum} of the "
                                     f"anchors' trackers ({why})")
            self.sleep(0.5)


def describe_source(source: HeaderSource) -> str:
    """One line naming where a source's headers come from (for start-up logs)."""
    if isinstance(source, OwnNode):
        return source.label
    if isinstance(source, SecondNode):
        base = f"{describe_source(source.base)}, " if source.base is not None else "the RPC node's newest, "
        return f"{base}agreed by the second node {source.url}"
    if isinstance(source, TrackerHeaders):
        a = source.anchors
        return f"attested by {a.quorum} of {len(a.trackers)} trackers ({', '.join(source.urls)})"
    return type(source).__name__


def header_source(rpc: str, *, anchors: Path | None, trackers: Sequence[str], verify_rpc: str | None,
                  session: requests.Session, timeout: float, who: str, max_lag: int | None = None) -> HeaderSource:
    """The header source the command line names: k of n tracker attestations (``anchors`` and
    ``trackers``), a second node agreeing (``verify_rpc``; on top of the trackers when both are
    given), else the host's own node (``rpc`` embedded or on loopback). ``who``: "author",
    "server", for the messages. ``max_lag`` of a second node: the primary node may be at most that
    many blocks behind it (a node freezing its head).

    Raises:
        ConfigError: trackers without anchors, unusable anchors or URLs, ``verify_rpc`` equal to
            ``rpc``, or a node that is not the host's own with neither anchors nor a second node.
    """
    from ledger_node.providers import connect

    if trackers and anchors is None:
        raise ConfigError("--tracker needs --anchors FILE (the tracker keys and quorum k to trust)")
    source: HeaderSource | None = None
    if anchors is not None:
        source = TrackerHeaders(HeaderAnchors.load(anchors), trackers, session, timeout=min(timeout, 10.0),
                                wait=timeout)  # trackers attest `confirmations` behind the head
    if verify_rpc is not None:
        if verify_rpc == rpc:
            raise ConfigError("--verify-rpc must name another node than --rpc")
        source = SecondNode(verify_rpc, connect(verify_rpc, timeout=min(timeout, 30.0)), source, max_lag=max_lag)
    if source is not None:
        return source
    if not is_own_node(rpc):
        raise ConfigError(f"the node {rpc} is not the {who}'s own (embedded or on loopback): name where a "
                          "trusted header comes from: --anchors FILE --tracker URL (k of n tracker attestations) "
                          "or --verify-rpc URL (a second, independent node)")
    return OwnNode(f"the {who}'s own node {rpc}")
