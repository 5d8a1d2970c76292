"""The evidence a light node (device) needs to trust a release (Appendix II; C11.1.a.v by delegation). Pure.

What a status tracker serves, and what a device takes from k trackers::

    {"format":       1,
     "header_rlp":   "0x..",                     # consensus RLP of the block header
     "attestations": [Attestation.to_json(), ...],   # trackers' EIP-712 signatures of that block
     "proof":        {...},                      # the raw eth_getProof result for the registry
     "record":       ReleaseRecord.to_json(),    # the Table II.1 record as published
     "successors":   [ReleaseRecord.to_json(), ...]}  # the line's newer records up to the head

The proof covers the release's entry word ``releases[line][header_hash]`` and each successor's,
the vendor's address ``vendor_address[keccak(name)]``, its status ``vendor_name_hash[vendor]``
and, when a hardware class is asked, the policy word ``policies[keccak(hw)][line]`` (slots:
:func:`ledger_node.lightnode.release_slots`). The successors let a device that is offered an
older release check that every newer one is unusable for its class.

:class:`Evidence` parses and builds this JSON and nothing more: whoever verifies it (the
tracker's ``verify_evidence``, the firmware consumer's ``check_release``) parses the proof then.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Self

from .attestation import Attestation
from .errors import ProofError
from .record import ReleaseRecord

__all__ = ["EVIDENCE_FORMAT", "MAX_ATTESTATIONS", "MAX_SUCCESSORS", "Evidence"]

#: the evidence JSON format
EVIDENCE_FORMAT = 1
#: at most this many attestations travel with a header
MAX_ATTESTATIONS = 64
#: at most this many successors travel with a record (a device refuses a release further behind)
MAX_SUCCESSORS = 64


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
    def from_json(cls, obj: Any) -> Self:
        """Parse (not verify) evidence JSON; the proof is kept raw (an object), parsed when verified.

        Raises:
            ProofError: a field is missing or malformed.
            AttestationError: an attestation is malformed.
            RecordError: a record is malformed or its header hash does not match its fields.
        """
        if not isinstance(obj, Mapping):
            raise ProofError("evidence must be a JSON object")
        if obj.get("format", EVIDENCE_FORMAT) != EVIDENCE_FORMAT:
            raise ProofError(f"unsupported evidence format {obj.get('format')!r}")
        for key in ("header_rlp", "attestations", "proof", "record"):
            if key not in obj:
                raise ProofError(f"evidence lacks {key}")
        atts, succ, proof = obj["attestations"], obj.get("successors", []), obj["proof"]
        if not isinstance(atts, list) or len(atts) > MAX_ATTESTATIONS:
            raise ProofError(f"evidence attestations must be a list of at most {MAX_ATTESTATIONS}")
        if not isinstance(succ, list) or len(succ) > MAX_SUCCESSORS:
            raise ProofError(f"evidence successors must be a list of at most {MAX_SUCCESSORS}")
        if not isinstance(proof, Mapping):
            raise ProofError("evidence proof must be an eth_getProof result object")
        return cls(header_rlp=_unhex("header_rlp", obj["header_rlp"]),
                   attestations=tuple(Attestation.from_json(a) for a in atts),
                   proof=dict(proof), record=ReleaseRecord.from_json(obj["record"]),
                   successors=tuple(ReleaseRecord.from_json(r) for r in succ))

    def with_attestations(self, more: Iterable[Attestation]) -> Self:
        """The same evidence with more trackers' attestations of the same block."""
        return replace(self, attestations=self.attestations + tuple(more))
