"""The tracker's side of the evidence a device needs to trust a release (Appendix II light node;
C11.1.a.v by delegation).

The JSON and its parser are :class:`ledger_node.evidence.Evidence` (re-exported here), the one
source for the tracker that builds it and the firmware consumer that reads it.

Pure: :func:`verify_evidence` (k-of-n attested header, then
:func:`ledger_node.lightnode.verify_release`). The one I/O adapter is :class:`ChainReader`,
which asks the tracker's own node for headers and proofs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import requests
from eth_utils import to_checksum_address
from web3 import Web3
from web3.exceptions import Web3Exception

from ledger_node.attestation import trusted_header
from ledger_node.compiler import CompiledContract
from ledger_node.errors import ChainError, ProofError
from ledger_node.evidence import EVIDENCE_FORMAT, MAX_SUCCESSORS, Evidence
from ledger_node.header import BlockHeader, decode_header, header_rlp_from_json
from ledger_node.lightnode import VerifiedRelease, release_slots, verify_release
from ledger_node.proof_fetch import ask_proof, block_param
from ledger_node.proofs import parse_proof_json
from ledger_node.record import ReleaseRecord

__all__ = ["EVIDENCE_FORMAT", "MAX_SUCCESSORS", "ChainReader", "Evidence", "verify_evidence"]


def verify_evidence(ev: Evidence, *, chain_id: int, registry: str, code_hash: bytes, compiled: CompiledContract,
                    trackers: Sequence[str], quorum: int, now: float, max_age: float,
                    hw_id: str | None = None) -> VerifiedRelease:
    """Trust the header through k of the provisioned trackers, then prove the release at it
    (its standing among its successors is the device's decision: the firmware consumer's).

    Raises:
        AttestationError: fewer than ``quorum`` trackers attest the header, or it is stale.
        ProofError: the header or a proof does not verify, or the proof lacks a slot.
        RecordError: the record is malformed.
    """
    header = trusted_header(ev.header_rlp, ev.attestations, chain_id=chain_id, registry=registry,
                            trackers=trackers, quorum=quorum, now=now, max_age=max_age)
    return verify_release(header_rlp=ev.header_rlp, block_hash=header.hash, registry_address=registry,
                          code_hash=code_hash, compiled=compiled, record=ev.record,
                          proof=parse_proof_json(ev.proof), hw_id=hw_id)


class ChainReader:
    """The tracker's thin adapter to its node: block headers and raw registry proofs."""

    def __init__(self, w3: Web3, compiled: CompiledContract, registry: str) -> None:
        self.w3 = w3
        self.compiled = compiled
        self.registry = to_checksum_address(registry)

    def _request(self, method: str, params: list[Any]) -> Any:
        try:
            resp = self.w3.provider.make_request(method, params)  # type: ignore[arg-type]
        except (Web3Exception, requests.exceptions.RequestException, OSError, ValueError) as exc:
            raise ChainError(f"{method} failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(resp, Mapping) or "error" in resp:
            err = resp.get("error") if isinstance(resp, Mapping) else resp
            raise ChainError(f"{method} failed: {err}")
        return resp.get("result")

    def header(self, number: int) -> BlockHeader:
        """The header of block ``number``, its RLP rebuilt and checked against the node's block hash.

        Raises:
            ChainError: the node has no such block, failed, or sent a header that does not hash
                to the block hash it claims.
        """
        raw = self._request("eth_getBlockByNumber", [hex(number), False])
        if not isinstance(raw, Mapping):
            raise ChainError(f"the node has no block {number}")
        claimed = raw.get("hash")
        try:
            if not isinstance(claimed, str) or not claimed.startswith("0x"):
                raise ProofError(f"block hash {claimed!r} is not 0x-hex text")
            header = decode_header(header_rlp_from_json(raw), bytes.fromhex(claimed[2:]))
        except (ProofError, ValueError) as exc:
            raise ChainError(f"the node's block {number} is unusable: {exc}") from exc
        if header.number != number:
            raise ChainError(f"the node answered block {header.number} for block {number}")
        return header

    def registry_proof(self, record: ReleaseRecord, number: int, hw_id: str | None = None,
                       successors: Sequence[ReleaseRecord] = (), *, block_hash: bytes | None = None,
                       state_root: bytes | None = None) -> dict[str, Any]:
        """The raw ``eth_getProof`` result covering ``record``'s slots (and its successors'
        entries) at block ``number``: asked at ``block_hash``, that block's hash, when given, and
        again while it does not lead from ``state_root``, that block's (a mining node answers its
        newest block from the next one's state now and then: ``ledger_node.proof_fetch``).

        Two rounds: the vendor's status slot is keyed by the vendor address the first proves.

        Raises:
            ChainError: the node failed or answered something unusable.
        """
        slots = release_slots(self.compiled, record, hw_id)
        wanted = [slots.entry, slots.vendor_address] + ([slots.policy] if slots.policy is not None else [])
        wanted += [release_slots(self.compiled, s).entry for s in successors]
        at: int | bytes = number if block_hash is None else block_hash
        result = self._proof(wanted, at, state_root)
        try:
            values = {s.key: s.value for s in parse_proof_json(result).storage_proofs}
        except ProofError as exc:
            raise ChainError(f"the node's eth_getProof answer is unusable: {exc}") from exc
        vendor_word = values.get(slots.vendor_address, 0)
        if vendor_word:
            wanted.append(slots.vendor_active(vendor_word.to_bytes(32, "big")[12:]))
            result = self._proof(wanted, at, state_root)
        return result

    def _proof(self, slots: list[int], block: int | bytes, state_root: bytes | None = None) -> dict[str, Any]:
        def ask() -> Mapping[str, Any]:
            result = self._request("eth_getProof", [self.registry,
                                                    ["0x" + s.to_bytes(32, "big").hex() for s in slots],
                                                    block_param(block)])
            if not isinstance(result, Mapping):
                raise ChainError("eth_getProof answered no object")
            return result

        return dict(ask_proof(ask, self.registry, state_root))
