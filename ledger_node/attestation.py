"""Header attestations: how a light node (device) comes to trust a block header. Pure.

A device holds no chain. It is provisioned with the keys of n status trackers (full nodes) and a
quorum k. A tracker that has the block attests it by signing, with EIP-712 typed data::

    HeaderAttestation(uint256 blockNumber, bytes32 blockHash, bytes32 stateRoot, uint64 timestamp,
                      address registry)
    domain {name: "fwledger-attestation", version: "1", chainId}

A header is trusted only when k distinct provisioned trackers attest exactly its hash, and only
while it is younger than a maximum age (a freeze attack replays an old, once-true header to hide
newer releases and revocations). Everything the device proves afterwards (release entry,
revocation, head) hangs off the state root of this header.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ledger_node.codec.ecdsa import KeyHolder, SignatureError, recover_hash, sign_hash
from ledger_node.codec.eip712 import typed_data_digest
from ledger_node.codec.hashing import to_checksum_address

from .errors import ProofError
from .header import BlockHeader, decode_header

__all__ = [
    "Attestation",
    "AttestationError",
    "attest",
    "attestation_digest",
    "attestation_signer",
    "trusted_header",
]


class AttestationError(ProofError):
    """A header could not be trusted; ``code`` is stable: ``quorum_not_met``, ``stale_header``,
    ``future_header``, ``attestation_mismatch``, ``bad_attestation``."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True)
class Attestation:
    """One tracker's signed statement about one block."""

    chain_id: int
    registry: str
    block_number: int
    block_hash: bytes
    state_root: bytes
    timestamp: int
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        return {"chain_id": self.chain_id, "registry": self.registry, "block_number": self.block_number,
                "block_hash": "0x" + self.block_hash.hex(), "state_root": "0x" + self.state_root.hex(),
                "timestamp": self.timestamp, "signature": "0x" + self.signature.hex()}

    @classmethod
    def from_json(cls, obj: Any) -> Attestation:
        """Raises:
            AttestationError: ``bad_attestation`` for missing or malformed fields.
        """
        try:
            att = cls(chain_id=int(obj["chain_id"]), registry=to_checksum_address(obj["registry"]),
                      block_number=int(obj["block_number"]),
                      block_hash=bytes.fromhex(str(obj["block_hash"]).removeprefix("0x")),
                      state_root=bytes.fromhex(str(obj["state_root"]).removeprefix("0x")),
                      timestamp=int(obj["timestamp"]),
                      signature=bytes.fromhex(str(obj["signature"]).removeprefix("0x")))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:  # OverflowError: int(Infinity)
            raise AttestationError("bad_attestation", f"malformed attestation: {exc!r}") from exc
        if len(att.block_hash) != 32 or len(att.state_root) != 32 or len(att.signature) != 65:
            raise AttestationError("bad_attestation", "malformed attestation: wrong field length")
        return att


def _typed(chain_id: int, registry: str, number: int, block_hash: bytes, state_root: bytes,
           timestamp: int) -> bytes:
    return typed_data_digest({
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                             {"name": "chainId", "type": "uint256"}],
            "HeaderAttestation": [{"name": "blockNumber", "type": "uint256"},
                                  {"name": "blockHash", "type": "bytes32"},
                                  {"name": "stateRoot", "type": "bytes32"},
                                  {"name": "timestamp", "type": "uint64"},
                                  {"name": "registry", "type": "address"}],
        },
        "primaryType": "HeaderAttestation",
        "domain": {"name": "fwledger-attestation", "version": "1", "chainId": chain_id},
        "message": {"blockNumber": number, "blockHash": block_hash, "stateRoot": state_root,
                    "timestamp": timestamp, "registry": to_checksum_address(registry)},
    })


def attestation_digest(att: Attestation) -> bytes:
    """The EIP-712 digest a tracker signs for ``att`` (signature field ignored)."""
    return _typed(att.chain_id, att.registry, att.block_number, att.block_hash, att.state_root, att.timestamp)


def attest(account: KeyHolder, header: BlockHeader, *, chain_id: int, registry: str) -> Attestation:
    """A tracker's attestation of ``header`` (which it took from its own node)."""
    sig = sign_hash(account, _typed(chain_id, registry, header.number, header.hash, header.state_root,
                                    header.timestamp))
    return Attestation(chain_id, to_checksum_address(registry), header.number, header.hash, header.state_root,
                       header.timestamp, bytes(sig))


def attestation_signer(att: Attestation) -> str | None:
    """The checksum address whose key signed ``att``, or None when the signature is unusable.

    Recovery alone trusts nothing: :func:`trusted_header` also requires a provisioned tracker and
    an attestation of exactly the header it judges.
    """
    try:
        return recover_hash(attestation_digest(att), att.signature)
    except (SignatureError, ValueError):  # unusable signature, or fields that do not fit their types
        return None


def trusted_header(header_rlp: bytes, attestations: Iterable[Attestation], *, chain_id: int, registry: str,
                   trackers: Sequence[str], quorum: int, now: float, max_age: float,
                   max_skew: float = 120.0) -> BlockHeader:
    """Trust ``header_rlp`` if ``quorum`` of the provisioned ``trackers`` attest it and it is fresh.

    Attestations by unknown keys, for another chain, registry or block, or with bad signatures are
    ignored (they do not count); each tracker counts once.

    Raises:
        ProofError: the header RLP is malformed.
        AttestationError: ``quorum_not_met`` (fewer than ``quorum`` valid attestations of this
            header), ``stale_header`` (older than ``max_age``: freeze attack), ``future_header``
            (more than ``max_skew`` ahead of ``now``).
    """
    if quorum < 1 or quorum > len(set(trackers)):
        raise AttestationError("quorum_not_met", f"quorum {quorum} cannot be met by {len(set(trackers))} trackers")
    header = decode_header(header_rlp)
    allowed = {to_checksum_address(t) for t in trackers}
    registry = to_checksum_address(registry)
    signers: set[str] = set()
    for att in attestations:
        if (att.chain_id, att.registry, att.block_hash, att.block_number, att.state_root, att.timestamp) != (
                chain_id, registry, header.hash, header.number, header.state_root, header.timestamp):
            continue
        who = attestation_signer(att)
        if who is not None and who in allowed:
            signers.add(who)
    if len(signers) < quorum:
        raise AttestationError("quorum_not_met",
                               f"block {header.number} is attested by {len(signers)} of the provisioned trackers; "
                               f"{quorum} needed")
    if header.timestamp < now - max_age:
        raise AttestationError("stale_header", f"block {header.number} is {int(now - header.timestamp)} s old; "
                                               f"the maximum is {int(max_age)} s: a freeze attack, or, if the "
                                               "chain is live, raise --max-age in the anchors (fwledger device "
                                               "anchors) or lower the trackers' confirmations")
    if header.timestamp > now + max_skew:
        raise AttestationError("future_header", f"block {header.number} is dated in the future")
    return header
