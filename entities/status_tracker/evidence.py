"""Evidence a device needs to trust a release (Appendix II light node; C11.1.a.v by delegation).

What a tracker serves, and what a device takes from k trackers::

    {"format":       1,
     "header_rlp":   "0x..",                     # consensus RLP of the block header
     "attestations": [Attestation.to_json(), ...],   # trackers' EIP-712 signatures of that block
     "proof":        {...},                      # the raw eth_getProof result for the registry
     "record":       ReleaseRecord.to_json(),    # the Table II.1 record as published
     "successors":   [ReleaseRecord.to_json(), ...]}  # the line's newer records up to the head

The proof covers the release's entry word ``releases[line][header_hash]`` and each successor's,
the vendor's address ``vendor_address[keccak(name)]``, its status ``vendor_name_hash[vendor]``
and, when a hardware class is asked, the policy word ``policies[keccak(hw)][line]`` (slots from
the compiled contract's layout, :func:`ledger_node.lightnode.release_slots`). The successors let
a device that is offered an older release check that every newer one is unusable for its class
(revoked, vulnerable, another class, above the policy): the firmware consumer's
``entities.firmware_consumer.verify.Evidence`` reads the same JSON.

Pure: :class:`Evidence` (JSON both ways) and :func:`verify_evidence` (k-of-n attested header,
then :func:`ledger_node.lightnode.verify_release`). The one I/O adapter is :class:`ChainReader`,
which asks the tracker's own node for headers and proofs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import requests
from eth_utils import to_checksum_address
from web3 import Web3
from web3.exceptions import Web3Exception

from ledger_node.attestation import Attestation, trusted_header
from ledger_node.compiler import CompiledContract
from ledger_node.errors import ChainError, ProofError
from ledger_node.header import BlockHeader, decode_header, header_rlp_from_json
from ledger_node.lightnode import VerifiedRelease, release_slots, verify_release
from ledger_node.proofs import parse_proof_json
from ledger_node.record import ReleaseRecord

__all__ = ["EVIDENCE_FORMAT", "MAX_SUCCESSORS", "ChainReader", "Evidence", "verify_evidence"]

_MAX_ATTESTATIONS = 64
#: at most this many successors travel with a record (a device refuses a release further behind)
MAX_SUCCESSORS = 64
#: the evidence JSON format (shared with entities.firmware_consumer.verify)
EVIDENCE_FORMAT = 1


def _unhex(name: str, value: Any) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ProofError(f"evidence field {name} must be 0x-hex text")
    try:
        return bytes.fromhex(value[2:])
    except ValueError as exc:
        raise ProofError(f"evidence field {name} is not hex") from exc


@dataclass(frozen=True)
class Evidence:
    """A header, attestations of it, a registry proof at it, the record proven and its successors."""

    header_rlp: bytes
    attestations: tuple[Attestation, ...]
    proof: Mapping[str, Any]
    record: ReleaseRecord
    successors: tuple[ReleaseRecord, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"format": EVIDENCE_FORMAT, "header_rlp": "0x" + self.header_rlp.hex(),
                "attestations": [a.to_json() for a in self.attestations],
                "proof": dict(self.proof), "record": self.record.to_json(),
                "successors": [s.to_json() for s in self.successors]}

    @classmethod
    def from_json(cls, obj: Any) -> Evidence:
        """Parse (not verify) evidence JSON.

        Raises:
            ProofError: a field is missing or malformed (the proof is parsed to check its shape).
            AttestationError: an attestation is malformed.
            RecordError: the record is malformed or its header hash does not match its fields.
        """
        if not isinstance(obj, Mapping):
            raise ProofError("evidence must be a JSON object")
        if obj.get("format", EVIDENCE_FORMAT) != EVIDENCE_FORMAT:
            raise ProofError(f"unsupported evidence format {obj.get('format')!r}")
        for key in ("header_rlp", "attestations", "proof", "record"):
            if key not in obj:
                raise ProofError(f"evidence lacks {key}")
        atts, succ = obj["attestations"], obj.get("successors", [])
        if not isinstance(atts, list) or len(atts) > _MAX_ATTESTATIONS:
            raise ProofError(f"evidence attestations must be a list of at most {_MAX_ATTESTATIONS}")
        if not isinstance(succ, list) or len(succ) > MAX_SUCCESSORS:
            raise ProofError(f"evidence successors must be a list of at most {MAX_SUCCESSORS}")
        proof = obj["proof"]
        parse_proof_json(proof)  # shape only; verify_evidence proves it
        return cls(header_rlp=_unhex("header_rlp", obj["header_rlp"]),
                   attestations=tuple(Attestation.from_json(a) for a in atts),
                   proof=dict(proof), record=ReleaseRecord.from_json(obj["record"]),
                   successors=tuple(ReleaseRecord.from_json(r) for r in succ))

    def with_attestations(self, more: Iterable[Attestation]) -> Evidence:
        """The same evidence with more trackers' attestations of the same block."""
        return replace(self, attestations=self.attestations + tuple(more))


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
        try:
            claimed = _unhex("hash", raw.get("hash"))
            header = decode_header(header_rlp_from_json(raw), claimed)
        except ProofError as exc:
            raise ChainError(f"the node's block {number} is unusable: {exc}") from exc
        if header.number != number:
            raise ChainError(f"the node answered block {header.number} for block {number}")
        return header

    def registry_proof(self, record: ReleaseRecord, number: int, hw_id: str | None = None,
                       successors: Sequence[ReleaseRecord] = ()) -> dict[str, Any]:
        """The raw ``eth_getProof`` result covering ``record``'s slots (and its successors'
        entries) at block ``number``.

        Two rounds: the vendor's status slot is keyed by the vendor address the first proves.

        Raises:
            ChainError: the node failed or answered something unusable.
        """
        slots = release_slots(self.compiled, record, hw_id)
        wanted = [slots.entry, slots.vendor_address] + ([slots.policy] if slots.policy is not None else [])
        wanted += [release_slots(self.compiled, s).entry for s in successors]
        result = self._proof(wanted, number)
        try:
            values = {s.key: s.value for s in parse_proof_json(result).storage_proofs}
        except ProofError as exc:
            raise ChainError(f"the node's eth_getProof answer is unusable: {exc}") from exc
        vendor_word = values.get(slots.vendor_address, 0)
        if vendor_word:
            wanted.append(slots.vendor_active(vendor_word.to_bytes(32, "big")[12:]))
            result = self._proof(wanted, number)
        return result

    def _proof(self, slots: list[int], number: int) -> dict[str, Any]:
        result = self._request("eth_getProof", [self.registry, ["0x" + s.to_bytes(32, "big").hex() for s in slots],
                                                hex(number)])
        if not isinstance(result, Mapping):
            raise ChainError("eth_getProof answered no object")
        return dict(result)
