"""Ask an Ethereum node for what :func:`ledger_node.lightnode.verify_release` checks: a block
header and the registry's account and storage proofs (``eth_getBlockByNumber`` + ``eth_getProof``).

Full nodes and trackers use it to gather evidence; devices never do (they verify what they are
given), so this web3 adapter lives apart from the pure light node.
"""

from __future__ import annotations

import requests
from eth_utils import to_checksum_address
from web3 import Web3
from web3.exceptions import Web3Exception

from .compiler import CompiledContract
from .errors import ChainError, ProofError
from .header import header_rlp_from_json
from .lightnode import RegistryLayout, author_slots, release_slots
from .proofs import AccountProof, parse_proof_json
from .record import ReleaseRecord

__all__ = ["fetch_author_proof", "fetch_header", "fetch_release_proof"]


def fetch_release_proof(w3: Web3, compiled: CompiledContract | RegistryLayout, registry_address: str,
                        record: ReleaseRecord,
                        *, block: int | str = "latest", hw_id: str | None = None) -> tuple[bytes, bytes, AccountProof]:
    """Ask a node for the header and proofs :func:`verify_release` needs.

    Returns ``(header_rlp, block_hash, proof)``. The block hash returned here is what the node
    claims; a device must take it from its trackers' attestation instead.

    Raises:
        ChainError: the node failed or answered something unusable.
    """
    header_rlp, block_hash, number = fetch_header(w3, block)
    try:
        slots = release_slots(compiled, record, hw_id)
        wanted = [slots.entry, slots.vendor_address] + ([slots.policy] if slots.policy is not None else [])
        first = _get_proof(w3, registry_address, wanted, number)
        # the vendor's status slot depends on the vendor address proven above
        vendor_word = {s.key: s.value for s in first.storage_proofs}.get(slots.vendor_address, 0)
        if vendor_word:
            vendor = vendor_word.to_bytes(32, "big")[12:]
            wanted.append(slots.vendor_active(vendor))
            first = _get_proof(w3, registry_address, wanted, number)
    except (Web3Exception, requests.exceptions.RequestException, KeyError, ValueError, TypeError) as exc:
        raise ChainError(f"cannot fetch proofs: {exc}") from exc
    except ProofError as exc:
        raise ChainError(f"node answered an unusable proof: {exc}") from exc
    return header_rlp, block_hash, first


def _get_proof(w3: Web3, address: str, slots: list[int], number: int) -> AccountProof:
    resp = w3.provider.make_request("eth_getProof",  # type: ignore[arg-type]
                                    [to_checksum_address(address), ["0x" + s.to_bytes(32, "big").hex() for s in slots],
                                     hex(number)])
    if "error" in resp:
        raise ChainError(f"eth_getProof failed: {resp['error']}")
    return parse_proof_json(resp["result"])


def fetch_header(w3: Web3, block: int | str = "latest") -> tuple[bytes, bytes, int]:
    """Ask a node for a block header: ``(header_rlp, block_hash, number)`` as the node claims them.

    Raises:
        ChainError: the node failed or answered something unusable.
    """
    try:
        blk = w3.provider.make_request("eth_getBlockByNumber",  # type: ignore[arg-type]
                                       [hex(block) if isinstance(block, int) else block, False])
        if "error" in blk or not blk.get("result"):
            raise ChainError(f"node has no block {block}")
        raw = blk["result"]
        number = int(str(raw["number"]), 16) if isinstance(raw["number"], str) else int(raw["number"])
        return header_rlp_from_json(raw), bytes.fromhex(str(raw["hash"]).removeprefix("0x")), number
    except (Web3Exception, requests.exceptions.RequestException, KeyError, ValueError, TypeError) as exc:
        raise ChainError(f"cannot fetch block {block}: {exc}") from exc
    except ProofError as exc:
        raise ChainError(f"node answered an unusable header: {exc}") from exc


def fetch_author_proof(w3: Web3, compiled: CompiledContract | RegistryLayout, registry_address: str, *,
                       block: int, vendor_name: str, product: str, hardware: list[str] | tuple[str, ...],
                       head: bytes | None) -> AccountProof:
    """Ask a node for the proofs :func:`ledger_node.lightnode.verify_author_view` needs at ``block``.

    Raises:
        ChainError: the node failed or answered something unusable.
    """
    slots = author_slots(compiled, vendor_name=vendor_name, product=product, hardware=hardware, head=head)
    wanted = slots.first_round()
    try:
        proof = _get_proof(w3, registry_address, wanted, block)
        vendor_word = {s.key: s.value for s in proof.storage_proofs}.get(slots.vendor_address, 0)
        if vendor_word:  # the vendor's status slot depends on the vendor address
            wanted.append(slots.vendor_active(vendor_word.to_bytes(32, "big")[12:]))
            proof = _get_proof(w3, registry_address, wanted, block)
    except (Web3Exception, requests.exceptions.RequestException, KeyError, ValueError, TypeError) as exc:
        raise ChainError(f"cannot fetch proofs: {exc}") from exc
    except ProofError as exc:
        raise ChainError(f"node answered an unusable proof: {exc}") from exc
    return proof
