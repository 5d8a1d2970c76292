"""Ask an Ethereum node for what :func:`ledger_node.lightnode.verify_release` checks: a block
header and the registry's account and storage proofs (``eth_getBlockByNumber`` + ``eth_getProof``).

Proofs are asked at the block's *hash* (an EIP-1898 block parameter: a node on another fork fails
instead of answering another block), and asked again while their account proof does not lead from
that header's state root (:func:`ask_proof`): a node that is mining answers a query at its newest
block from the next block's state now and then (anvil with a block time: ~1-10% of the
``eth_getProof`` calls at the newest block, measured, by number or by hash alike; a moment later
it answers right). The verifier still judges every answer; this only spares it a transient one.

Full nodes and trackers use it to gather evidence; devices never do (they verify what they are
given), so this web3 adapter lives apart from the pure light node.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import requests
from eth_utils import to_checksum_address
from web3 import Web3
from web3.exceptions import Web3Exception

from .compiler import CompiledContract
from .errors import ChainError, ProofError
from .header import decode_header, header_rlp_from_json
from .lightnode import RegistryLayout, author_slots, release_slots
from .proofs import AccountProof, parse_proof_json, verify_account_proof
from .record import ReleaseRecord

__all__ = ["ask_proof", "block_param", "fetch_author_proof", "fetch_header", "fetch_release_proof"]

#: answers asked for in all when one does not lead from the header's state root, and the pause
#: before the n-th new ask (n x this)
_TRIES = 4
_RETRY_PAUSE = 0.05


def _leads_from(state_root: bytes, address: str, result: Mapping[str, Any]) -> bool:
    try:
        proof = [bytes.fromhex(str(node).removeprefix("0x")) for node in result["accountProof"]]
        verify_account_proof(state_root, bytes.fromhex(address.removeprefix("0x")), proof)
    except (ProofError, KeyError, ValueError, TypeError, AttributeError):
        return False
    return True


def ask_proof(ask: Callable[[], Mapping[str, Any]], address: str, state_root: bytes | None) -> Mapping[str, Any]:
    """``ask()`` for an ``eth_getProof`` answer about ``address``, again (up to ``_TRIES`` in all,
    50-150 ms apart) while its account proof does not lead from ``state_root`` (the header's):
    the node answered from another state (see the module docstring). The last answer is returned
    whatever it is: the verifier refuses it, saying why."""
    result = ask()
    for attempt in range(1, _TRIES):
        if state_root is None or _leads_from(state_root, address, result):
            break
        time.sleep(_RETRY_PAUSE * attempt)
        result = ask()
    return result


def block_param(block: int | str | bytes) -> str | dict[str, str]:
    """The JSON-RPC block parameter for a state query: a 32-byte block hash as an EIP-1898 object
    (the state of exactly that block), a number as a quantity, a tag as it is."""
    if isinstance(block, bytes | bytearray):
        if len(block) != 32:
            raise ValueError(f"a block hash is 32 bytes, got {len(block)}")
        return {"blockHash": "0x" + bytes(block).hex()}
    return hex(block) if isinstance(block, int) else block


def fetch_release_proof(w3: Web3, compiled: CompiledContract | RegistryLayout, registry_address: str,
                        record: ReleaseRecord, *, block: int | str | bytes = "latest",
                        hw_id: str | None = None) -> tuple[bytes, bytes, AccountProof]:
    """Ask a node for the header and proofs :func:`verify_release` needs, at ``block`` (a number,
    a tag, or the 32-byte hash of a header the caller trusts); the proofs at that header's hash.

    Returns ``(header_rlp, block_hash, proof)``. The block hash returned here is what the node
    claims; a device must take it from its trackers' attestation instead.

    Raises:
        ChainError: the node failed or answered something unusable.
    """
    header_rlp, block_hash, _number = fetch_header(w3, block)
    try:
        root = decode_header(header_rlp).state_root
    except ProofError as exc:
        raise ChainError(f"node answered an unusable header: {exc}") from exc
    try:
        slots = release_slots(compiled, record, hw_id)
        wanted = [slots.entry, slots.vendor_address] + ([slots.policy] if slots.policy is not None else [])
        first = _get_proof(w3, registry_address, wanted, block_hash, root)
        # the vendor's status slot depends on the vendor address proven above
        vendor_word = {s.key: s.value for s in first.storage_proofs}.get(slots.vendor_address, 0)
        if vendor_word:
            vendor = vendor_word.to_bytes(32, "big")[12:]
            wanted.append(slots.vendor_active(vendor))
            first = _get_proof(w3, registry_address, wanted, block_hash, root)
    except (Web3Exception, requests.exceptions.RequestException, KeyError, ValueError, TypeError) as exc:
        raise ChainError(f"cannot fetch proofs: {exc}") from exc
    except ProofError as exc:
        raise ChainError(f"node answered an unusable proof: {exc}") from exc
    return header_rlp, block_hash, first


def _get_proof(w3: Web3, address: str, slots: list[int], block: int | bytes,
               state_root: bytes | None = None) -> AccountProof:
    def ask() -> Mapping[str, Any]:
        resp = w3.provider.make_request("eth_getProof",  # type: ignore[arg-type]
                                        [to_checksum_address(address),
                                         ["0x" + s.to_bytes(32, "big").hex() for s in slots], block_param(block)])
        if "error" in resp:
            raise ChainError(f"eth_getProof failed: {resp['error']}")
        return resp["result"]  # type: ignore[no-any-return]

    return parse_proof_json(ask_proof(ask, address, state_root))


def fetch_header(w3: Web3, block: int | str | bytes = "latest") -> tuple[bytes, bytes, int]:
    """Ask a node for a block header (by number, tag or 32-byte hash): ``(header_rlp, block_hash,
    number)`` as the node claims them; a header asked by hash must have that hash.

    Raises:
        ChainError: the node failed or answered something unusable.
    """
    by_hash = isinstance(block, bytes | bytearray)
    what = "0x" + bytes(block).hex() if isinstance(block, bytes | bytearray) else block
    try:
        blk = w3.provider.make_request("eth_getBlockByHash" if by_hash else "eth_getBlockByNumber",  # type: ignore[arg-type]
                                       [what if by_hash else block_param(block), False])
        if "error" in blk or not blk.get("result"):
            raise ChainError(f"node has no block {what}")
        raw = blk["result"]
        if by_hash and str(raw.get("hash", "")).lower() != what:
            raise ChainError(f"the node answered block {raw.get('hash')} for block {what}")
        number = int(str(raw["number"]), 16) if isinstance(raw["number"], str) else int(raw["number"])
        return header_rlp_from_json(raw), bytes.fromhex(str(raw["hash"]).removeprefix("0x")), number
    except (Web3Exception, requests.exceptions.RequestException, KeyError, ValueError, TypeError) as exc:
        raise ChainError(f"cannot fetch block {what}: {exc}") from exc
    except ProofError as exc:
        raise ChainError(f"node answered an unusable header: {exc}") from exc


def fetch_author_proof(w3: Web3, compiled: CompiledContract | RegistryLayout, registry_address: str, *,
                       block: int | bytes, vendor_name: str, product: str, hardware: list[str] | tuple[str, ...],
                       head: bytes | None, state_root: bytes | None = None) -> AccountProof:
    """Ask a node for the proofs :func:`ledger_node.lightnode.verify_author_view` needs at ``block``
    (the 32-byte hash of the header the caller trusts; a number only where it holds none), asked
    again while they do not lead from ``state_root`` (that header's, when given: :func:`ask_proof`).

    Raises:
        ChainError: the node failed or answered something unusable.
    """
    slots = author_slots(compiled, vendor_name=vendor_name, product=product, hardware=hardware, head=head)
    wanted = slots.first_round()
    try:
        proof = _get_proof(w3, registry_address, wanted, block, state_root)
        vendor_word = {s.key: s.value for s in proof.storage_proofs}.get(slots.vendor_address, 0)
        if vendor_word:  # the vendor's status slot depends on the vendor address
            wanted.append(slots.vendor_active(vendor_word.to_bytes(32, "big")[12:]))
            proof = _get_proof(w3, registry_address, wanted, block, state_root)
    except (Web3Exception, requests.exceptions.RequestException, KeyError, ValueError, TypeError) as exc:
        raise ChainError(f"cannot fetch proofs: {exc}") from exc
    except ProofError as exc:
        raise ChainError(f"node answered an unusable proof: {exc}") from exc
    return proof
