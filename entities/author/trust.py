"""The author as a light node (X.1368 Figure II.2): what it builds on is proven, not taken on a node's word.

The author encrypts bundles to the hardware classes' X25519 keys, signs for its vendor name and
chains its record to the head of the product line. It reads those with plain ``eth_call``s and its
full-node index, both from its RPC node; a lying node would make it encrypt for an attacker's key.
So before it encrypts (``author build``) and before it uploads (``author publish``) it proves them
against a block header it trusts, with the registry's Merkle-Patricia storage proofs
(``eth_getProof``, :func:`ledger_node.lightnode.verify_author_view`):

- each hardware class is registered and its key is the one the node said;
- the signing key is the vendor name's current, active address;
- the product line's head is the release the index named (proven ``EXISTS | HEAD``, same
  version), or the line is proven empty (``line_vendor[line] == 0``).

Where the trusted header comes from (:class:`HeaderSource`):

- :class:`TrackerHeaders`: k of the n tracker keys of an anchors file (``fwledger device anchors``)
  attest it, exactly as devices trust headers (:func:`ledger_node.attestation.trusted_header`);
- :class:`SecondNode`: an independent second node has the same block hash at that height;
- :class:`OwnNode`: the author's own node (the embedded chain, or a node on loopback): the same
  boundary a tracker's node sits in (docs/THREATS.md). Proofs still catch a node, or a proxy in
  front of it, whose ``eth_call`` or ``eth_getProof`` answers disagree with its own state root.

No header age limit applies: every fact proven is immutable (a class key is written once) or
enforced again by the chain at publish time (vendor standing, head, versions), so a frozen view
costs a refused transaction, never a bundle for the wrong key. The pure judgement is
:func:`check_build` / :func:`check_publish`; the rest is I/O.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests
from eth_utils import to_checksum_address
from web3 import Web3

from ledger_node.attestation import Attestation, AttestationError, trusted_header
from ledger_node.compiler import CompiledContract, registry_contract
from ledger_node.errors import ChainError, ConfigError, ProofError
from ledger_node.lightnode import ProvenAuthorView, verify_author_view
from ledger_node.proof_fetch import fetch_author_proof, fetch_header
from ledger_node.record import ZERO_HASH, ReleaseRecord, Version
from ledger_node.registry import Registry

from .ledger import LedgerInputs, PreflightError, gather_inputs

__all__ = [
    "AuthorAnchors",
    "HeaderSource",
    "NotYetVisible",
    "OwnNode",
    "SecondNode",
    "TrackerHeaders",
    "TrustedHeader",
    "UnprovenLedger",
    "check_build",
    "check_publish",
    "is_own_node",
    "prove_build_inputs",
    "prove_publish",
    "prove_view",
]

MAX_ANSWER = 64 * 1024


class UnprovenLedger(PreflightError):
    """What the author relies on could not be proven at a trusted header (or the proofs contradict
    what the node said): nothing is built or uploaded."""


class NotYetVisible(UnprovenLedger):
    """Not proven at this header, but a newer trusted header might show it (the trackers attest
    blocks ``confirmations`` behind the head: a class, a vendor or a release added since)."""


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
            UnprovenLedger: no header can be trusted.
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
        raise UnprovenLedger(f"cannot read a block header from {what}: {exc}") from None


class OwnNode:
    """The newest header of the author's own node (embedded, or on loopback)."""

    def __init__(self, label: str = "the author's own node") -> None:
        self.label, self.retry_for = label, 0.0

    def header(self, w3: Web3, *, chain_id: int, registry: str, at_least: int,
               wait: float | None = None) -> TrustedHeader:
        rlp, block_hash, number = _header_from(w3, "latest", self.label)
        if number < at_least:
            raise UnprovenLedger(f"{self.label} is at block {number}, below block {at_least} it indexed")
        return TrustedHeader(rlp, block_hash, number, self.label)


class SecondNode:
    """The primary node's newest header (or ``base``'s), trusted only if an independent node has the
    same block hash at that height."""

    def __init__(self, url: str, w3: Web3, base: HeaderSource | None = None) -> None:
        self.url, self.w3, self.base = url, w3, base
        self.retry_for = base.retry_for if base is not None else 0.0

    def header(self, w3: Web3, *, chain_id: int, registry: str, at_least: int,
               wait: float | None = None) -> TrustedHeader:
        try:
            other_chain = int(self.w3.eth.chain_id)
        except Exception as exc:  # web3 and transport errors alike
            raise UnprovenLedger(f"the verifying node {self.url} does not answer: {type(exc).__name__}") from None
        if other_chain != chain_id:
            raise UnprovenLedger(f"the verifying node {self.url} is on chain {other_chain}, not {chain_id}")
        if self.base is not None:
            first = self.base.header(w3, chain_id=chain_id, registry=registry, at_least=at_least, wait=wait)
            rlp, block_hash, number, why = first.header_rlp, first.block_hash, first.number, first.source + " and "
        else:
            rlp, block_hash, number = _header_from(w3, "latest", "the RPC node")
            why = ""
            if number < at_least:
                raise UnprovenLedger(f"the RPC node is at block {number}, below block {at_least} it indexed")
        _, other_hash, _ = _header_from(self.w3, number, f"the verifying node {self.url}")
        if other_hash != block_hash:
            raise UnprovenLedger(f"untrusted header: the RPC node and the verifying node {self.url} disagree on "
                                 f"block {number} (0x{block_hash.hex()[:16]}... vs 0x{other_hash.hex()[:16]}...)")
        return TrustedHeader(rlp, block_hash, number, f"{why}agreed by {self.url}")


@dataclass(frozen=True)
class AuthorAnchors:
    """The part of a device's trust anchors (``fwledger device anchors``) an author uses."""

    chain_id: int
    registry: str
    code_hash: bytes
    trackers: tuple[str, ...]
    quorum: int

    @classmethod
    def load(cls, path: Path) -> AuthorAnchors:
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

    def __init__(self, anchors: AuthorAnchors, urls: Sequence[str], session: requests.Session, *,
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
            raise UnprovenLedger(f"the anchors are for registry {self.anchors.registry} on chain "
                                 f"{self.anchors.chain_id}, not this one")
        deadline = self.clock() + (self.wait if wait is None else wait)
        while True:
            got, why = self._attested(chain_id, registry, at_least)
            if got is not None:
                return got
            if self.clock() >= deadline:
                raise UnprovenLedger(f"untrusted header: no block is attested by {self.anchors.quorum} of the "
                                     f"anchors' trackers ({why})")
            self.sleep(0.5)


def prove_view(w3: Web3, source: HeaderSource, compiled: CompiledContract, *, registry: str, chain_id: int,
               code_hash: bytes, vendor_name: str, product: str, hardware: Sequence[str], head: bytes | None,
               at_least: int = 0, wait: float | None = None) -> tuple[ProvenAuthorView, TrustedHeader]:
    """Take a trusted header from ``source`` and prove the author's view at it with the node's proofs.
    ``wait``: how long the source may wait for a header at or above ``at_least`` [its own default].

    Raises:
        UnprovenLedger: no trusted header, no usable proof, or a proof that does not verify.
    """
    if compiled.runtime_code_hash != code_hash:
        raise UnprovenLedger("the registry's storage layout is unknown: its deployed code is not the code compiled "
                             "from contracts/ (update this checkout)")
    trusted = source.header(w3, chain_id=chain_id, registry=registry, at_least=at_least, wait=wait)
    try:
        proof = fetch_author_proof(w3, compiled, registry, block=trusted.number, vendor_name=vendor_name,
                                   product=product, hardware=tuple(hardware), head=head)
        view = verify_author_view(header_rlp=trusted.header_rlp, block_hash=trusted.block_hash,
                                  registry_address=registry, code_hash=code_hash, compiled=compiled, proof=proof,
                                  vendor_name=vendor_name, product=product, hardware=hardware, head=head)
    except (ChainError, ProofError) as exc:
        raise UnprovenLedger(f"cannot prove the ledger at block {trusted.number} ({trusted.source}): {exc}") from None
    return view, trusted


def _short(b: bytes) -> str:
    return "0x" + b.hex()[:16] + "..."


def _check_vendor(view: ProvenAuthorView, address: str, vendor_name: str) -> None:
    if view.vendor_address != to_checksum_address(address) or not view.vendor_active:
        raise NotYetVisible(f"vendor standing not proven: at block {view.block.number} the ledger's address of "
                             f"{vendor_name!r} is {view.vendor_address or 'none'}"
                             f"{'' if view.vendor_active else ' (not active)'}, not the signing key {address}")


def _check_class(view: ProvenAuthorView, hw: str, claimed: bytes | None) -> None:
    got = view.classes[hw]
    if not got.registered:
        raise NotYetVisible(f"hardware class {hw} is not registered at block {view.block.number} "
                             "(proven), whatever the node said")
    if claimed is not None and claimed != got.enc_key:
        raise UnprovenLedger(f"hardware class {hw}: the node's encryption key {_short(claimed)} is not the one "
                             f"the ledger proves ({_short(got.enc_key)}): the RPC node lies; nothing built")


def _check_head(view: ProvenAuthorView, line: str, prev: bytes, version: Version | None) -> None:
    if prev == ZERO_HASH:
        if view.line_started:
            raise UnprovenLedger(f"{line} has releases at block {view.block.number} (proven) that the node hid: "
                                 "the head could not be proven")
        return
    e = view.head_entry
    if e is None or not e.exists:
        raise NotYetVisible(f"the head of {line} (0x{prev.hex()[:16]}...) is not on the ledger at block "
                             f"{view.block.number} (proven): the node lies or the header lags behind")
    if not e.head:
        raise UnprovenLedger(f"0x{prev.hex()[:16]}... is not the head of {line} at block {view.block.number} "
                             "(proven): a newer release exists; rebuild on the current head")
    if version is not None and e.version != version:
        raise UnprovenLedger(f"the head of {line} is version {e.version} (proven), not {version} as the node said")


def check_build(view: ProvenAuthorView, inputs: LedgerInputs, address: str, product: str) -> None:
    """Judge the build inputs (from the node) against the proven view. Pure.

    Raises:
        UnprovenLedger: a class key, the vendor standing or the head differs from what is proven.
    """
    _check_vendor(view, address, inputs.vendor_name)
    for hw in view.classes:
        _check_class(view, hw, inputs.class_keys.get(hw))
    _check_head(view, f"{inputs.vendor_name}/{product}", inputs.prev_hash, inputs.head_version)


def check_publish(view: ProvenAuthorView, record: ReleaseRecord, address: str) -> None:
    """Judge, before uploading, that the registry would accept ``record`` from ``address``. Pure.

    Raises:
        UnprovenLedger: not the proven active vendor, a class not registered, ``prev_hash`` not the
            proven head, or a version not above the head's.
    """
    d = record.data
    _check_vendor(view, address, d.vendor_name)
    for hw in view.classes:
        _check_class(view, hw, None)
    _check_head(view, f"{d.vendor_name}/{d.product}", record.prev_hash, None)
    e = view.head_entry
    if e is not None and e.version is not None and d.version <= e.version:
        raise UnprovenLedger(f"version {d.version} is not above the proven head's version {e.version}")



def _judged(source: HeaderSource, prove: Callable[[int, float | None], tuple[ProvenAuthorView, TrustedHeader]],
            check: Callable[[ProvenAuthorView], None], at_least: int, *, clock: Callable[[], float] = time.monotonic,
            sleep: Callable[[float], None] = time.sleep) -> tuple[ProvenAuthorView, TrustedHeader]:
    """Prove and judge; while what the node said is :class:`NotYetVisible` at the trusted header and
    the source can give newer ones (``retry_for``), judge again at a newer one, then refuse."""
    view, trusted = prove(at_least, None)
    deadline = clock() + source.retry_for
    while True:
        try:
            check(view)
            return view, trusted
        except NotYetVisible:
            if clock() >= deadline:
                raise
        sleep(0.5)
        with contextlib.suppress(UnprovenLedger):  # no newer trusted header yet: judge the last one again
            view, trusted = prove(trusted.number + 1, max(0.0, deadline - clock()))


def _code_hash(registry: Registry) -> bytes:
    return bytes.fromhex(registry.deployment.code_hash.removeprefix("0x"))


def prove_build_inputs(registry: Registry, index: Any, address: str, source: HeaderSource, *,
                       vendor_name: str | None, product: str, version: Version, hardware: Sequence[str],
                       compiled: CompiledContract | None = None
                       ) -> tuple[LedgerInputs, ProvenAuthorView, TrustedHeader]:
    """:func:`.ledger.gather_inputs`, then prove them at a header from ``source`` (the author as a light node).

    Raises:
        UnprovenLedger: no trusted header, no valid proof, or the node's answers differ from the proofs.
        PreflightError, ChainError, IndexCorruption: as :func:`.ledger.gather_inputs`.
    """
    inputs = gather_inputs(registry, index, address, vendor_name=vendor_name, product=product, version=version,
                           hardware=hardware)
    head = index.head(inputs.vendor_name, product)
    contract = compiled or registry_contract()

    def prove(at_least: int, wait: float | None) -> tuple[ProvenAuthorView, TrustedHeader]:
        return prove_view(registry.w3, source, contract, registry=inputs.registry, chain_id=inputs.chain_id,
                          code_hash=_code_hash(registry), vendor_name=inputs.vendor_name, product=product,
                          hardware=hardware, head=None if inputs.prev_hash == ZERO_HASH else inputs.prev_hash,
                          at_least=at_least, wait=wait)

    view, trusted = _judged(source, prove, lambda v: check_build(v, inputs, address, product),
                            head.block if head is not None else 0)
    return inputs, view, trusted


def prove_publish(registry: Registry, record: ReleaseRecord, address: str, source: HeaderSource, *,
                  index: Any = None, compiled: CompiledContract | None = None) -> TrustedHeader:
    """Prove, at a header from ``source``, that the registry would accept ``record`` from ``address``.

    ``index``: a synced full-node index, to wait for a header that covers the record's predecessor.

    Raises:
        UnprovenLedger: as :func:`check_publish`, or nothing could be proven.
    """
    d = record.data
    prev = None if record.prev_hash == ZERO_HASH else record.prev_hash
    known = index.release(record.prev_hash) if (index is not None and prev is not None) else None
    contract = compiled or registry_contract()

    def prove(at_least: int, wait: float | None) -> tuple[ProvenAuthorView, TrustedHeader]:
        return prove_view(registry.w3, source, contract, registry=registry.address,
                          chain_id=registry.deployment.chain_id, code_hash=_code_hash(registry),
                          vendor_name=d.vendor_name, product=d.product, hardware=d.supported_hardware,
                          head=prev, at_least=at_least, wait=wait)

    _, trusted = _judged(source, prove, lambda v: check_publish(v, record, address),
                         known.block if known is not None else 0)
    return trusted
