"""The tracker's proof side (X.1368 Appendix II; docs/MODULES.md section 6): what a device asks
for to check the ledger itself. A mixin of :class:`~.daemon.Tracker`.

- :meth:`TrackerProofs.attestation` / :meth:`TrackerProofs.attestations`: the tracker's EIP-712
  attestation of a block it indexed, with the header RLP (a small LRU cache per block number;
  the newest block's entry is dropped when the chain reorganises under it);
- :meth:`TrackerProofs.evidence`: everything a device needs to prove a release at one block
  (:mod:`.evidence`), checked with the light node's own verifier before it is served, then kept
  in a small LRU cache keyed by the release, the class and the block's number *and hash*: a fleet
  asking for the same release at the same head costs one proof, and a reorganised block is a new key.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ledger_node.attestation import Attestation, attest
from ledger_node.errors import ChainError, ProofError
from ledger_node.header import BlockHeader
from ledger_node.lightnode import verify_release
from ledger_node.lru import LRU
from ledger_node.proofs import parse_proof_json

from .evidence import MAX_SUCCESSORS, ChainReader, Evidence
from .inventory import TrackerRefusal

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from ledger_node.compiler import CompiledContract
    from ledger_node.fullnode import Index

__all__ = ["ATTESTATION_CACHE", "EVIDENCE_CACHE", "TrackerProofs"]

ATTESTATION_CACHE = 256
EVIDENCE_CACHE = 256  # entries of ~5-10 KB


class TrackerProofs:
    """See the module docstring (needs the tracker's ``index``, ``chain``, ``account``, chain and
    registry identity, and its attestation cache)."""

    index: Index
    chain: ChainReader
    account: LocalAccount
    chain_id: int
    registry: str
    code_hash: bytes
    compiled: CompiledContract
    _attestations: LRU[int, tuple[BlockHeader, Attestation]]
    _attest_lock: threading.Lock
    _evidence_cache: LRU[tuple[str, str | None, int, bytes], Evidence]

    # ================================================================ attestations and evidence

    def _cursor_block(self) -> tuple[int, str]:
        cursor = self.index.cursor()
        if cursor is None:
            raise TrackerRefusal("not_synced", "the tracker has not synced the ledger yet")
        return cursor.block, cursor.block_hash

    def _attested(self, number: int) -> tuple[BlockHeader, Attestation]:
        """A header the tracker has indexed up to, and its own attestation of it (cached)."""
        top, top_hash = self._cursor_block()
        if number > top:
            raise TrackerRefusal("block_not_synced", f"the tracker has indexed up to block {top}, not {number}",
                                 synced=top)
        with self._attest_lock:
            hit = self._attestations.get(number)
            if hit is not None and (number != top or "0x" + hit[0].hash.hex() == top_hash):
                return hit
        header = self.chain.header(number)
        if number == top and "0x" + header.hash.hex() != top_hash:
            raise ChainError(f"block {number} is no longer the one indexed: the chain reorganised")
        att = attest(self.account, header, chain_id=self.chain_id, registry=self.registry)
        with self._attest_lock:
            self._attestations.put(number, (header, att))
        return header, att

    def attestation(self, number: int | None = None) -> dict[str, Any]:
        """This tracker's EIP-712 attestation of block ``number`` (default: the newest block it
        indexed, i.e. head minus confirmations) and the block's header RLP.

        Raises:
            TrackerRefusal: ``not_synced``, ``block_not_synced`` (``number`` above the index).
            ChainError: the node failed, or the indexed block was reorganised away.
        """
        header, att = self._attested(self._cursor_block()[0] if number is None else number)
        return {"header_rlp": "0x" + header.rlp.hex(), "attestation": att.to_json()}

    def attestations(self, number: int) -> dict[str, Any]:
        """Every server-module attestation of block ``number`` this module knows: its own
        (docs/MODULES.md section 6), with the header RLP.

        Raises:
            TrackerRefusal: ``not_synced``, ``block_not_synced``.
            ChainError: the node failed, or the indexed block was reorganised away.
        """
        header, att = self._attested(number)
        return {"header_rlp": "0x" + header.rlp.hex(), "attestations": [att.to_json()]}

    def evidence(self, header_hash: str, hw_id: str | None = None, number: int | None = None) -> dict[str, Any]:
        """Everything a device needs to prove a release at one block (:mod:`.evidence`), with
        this tracker's attestation and the line's newer records up to that block's head; the
        tracker checks the release's proof verifies before serving it. A device asks with its
        hardware class to have the class's policy proven too.

        Raises:
            TrackerRefusal: ``unknown_release``, ``unknown_hardware`` (not a class registered on the
                ledger: refused, so an intermediate never caches an answer per junk class),
                ``flagged_release``, ``not_synced``, ``block_not_synced``, ``release_not_at_block``
                (the block predates the release).
            ChainError: the node failed or served proofs that do not verify.
        """
        release = self.index.release(header_hash)
        if release is None:
            raise TrackerRefusal("unknown_release", f"release {header_hash} is not in the tracker's index")
        if hw_id is not None and hw_id not in {h.hw_id for h in self.index.hardware()}:
            raise TrackerRefusal("unknown_hardware", f"hardware class {hw_id!r} is not registered on the ledger")
        if release.flagged:
            raise TrackerRefusal("flagged_release", f"release {header_hash} failed the full node's checks: "
                                                    f"{release.flag_reason}")
        number = self._cursor_block()[0] if number is None else number
        if number < release.block:
            raise TrackerRefusal("release_not_at_block",
                                 f"release {header_hash} was published at block {release.block}, after {number}")
        header, att = self._attested(number)
        key = (header_hash, hw_id, number, header.hash)
        with self._attest_lock:
            cached = self._evidence_cache.get(key)
            if cached is not None:
                return cached.to_json()
        successors = [r.record for r in self.index.releases(product=release.product, vendor=release.vendor_name)
                      if release.position is not None and r.position is not None and r.position > release.position
                      and r.block <= number][:MAX_SUCCESSORS]
        proof = self.chain.registry_proof(release.record, number, hw_id, successors, block_hash=header.hash,
                                          state_root=header.state_root)
        try:  # never serve evidence that a device would refuse
            verify_release(header_rlp=header.rlp, block_hash=header.hash, registry_address=self.registry,
                           code_hash=self.code_hash, compiled=self.compiled, record=release.record,
                           proof=parse_proof_json(proof), hw_id=hw_id)
        except ProofError as exc:
            raise ChainError(f"the node's proofs for {header_hash} do not verify: {exc}") from exc
        evidence = Evidence(header.rlp, (att,), proof, release.record, tuple(successors))
        with self._attest_lock:
            self._evidence_cache.put(key, evidence)
        return evidence.to_json()
