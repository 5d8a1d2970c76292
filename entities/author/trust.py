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

Where the trusted header comes from (:class:`HeaderSource`, shared with the firmware server in
:mod:`entities.header_sources`):

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
import time
from collections.abc import Callable, Sequence
from typing import Any

from eth_utils import to_checksum_address
from web3 import Web3

from entities.header_sources import (
    HeaderAnchors,
    HeaderSource,
    OwnNode,
    SecondNode,
    TrackerHeaders,
    TrustedHeader,
    UntrustedHeader,
    is_own_node,
)
from ledger_node.compiler import CompiledContract, registry_contract
from ledger_node.errors import ChainError, ProofError
from ledger_node.header import decode_header
from ledger_node.lightnode import ProvenAuthorView, verify_author_view
from ledger_node.proof_fetch import fetch_author_proof
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

#: the anchors an author takes headers from (entities/header_sources.py)
AuthorAnchors = HeaderAnchors


class UnprovenLedger(PreflightError):
    """What the author relies on could not be proven at a trusted header (or the proofs contradict
    what the node said): nothing is built or uploaded."""


class NotYetVisible(UnprovenLedger):
    """Not proven at this header, but a newer trusted header might show it (the trackers attest
    blocks ``confirmations`` behind the head: a class, a vendor or a release added since)."""


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
    try:
        trusted = source.header(w3, chain_id=chain_id, registry=registry, at_least=at_least, wait=wait)
    except UntrustedHeader as exc:
        raise UnprovenLedger(str(exc)) from None
    try:
        proof = fetch_author_proof(w3, compiled, registry, block=trusted.block_hash, vendor_name=vendor_name,
                                   product=product, hardware=tuple(hardware), head=head,
                                   state_root=decode_header(trusted.header_rlp).state_root)
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
