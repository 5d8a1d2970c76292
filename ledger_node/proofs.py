"""Merkle-Patricia proofs of accounts and storage slots (pure, no I/O).

A light node holds a block's state root (from a checked header) and an ``eth_getProof`` answer
from an untrusted node. ``verify_account_proof`` walks the account proof from the state root to
``keccak(address)``; ``verify_storage_proof`` walks a storage proof from the account's storage
root to ``keccak(slot as 32 bytes)``. Both walk the trie with :mod:`ledger_node.codec.mpt` (the
device's light equivalent of ``trie``'s ``HexaryTrie.get_from_proof``, tested against it);
a proof of absence (the walk ends on an empty branch or a diverging leaf/extension) is a valid
answer, and anything else that does not verify (a node missing, tampered with, not canonical RLP,
not hash-linked to the root) raises :class:`~ledger_node.errors.ProofError`.

``vyper_hashmap_slot`` tells where Vyper 0.4.3 keeps ``HashMap`` values: the value of
``m[k1][k2]...`` declared at storage slot ``s`` lives at ``keccak(s ++ k1)``, then
``keccak(that ++ k2)`` and so on: slot first, then key, each a 32-byte word (the reverse of
Solidity's ``keccak(key ++ slot)``). This was checked against ``eth_getStorageAt`` on a compiled
contract; see tests/integration/test_providers.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ledger_node.codec import mpt, rlp
from ledger_node.codec.hashing import keccak
from ledger_node.errors import ProofError

__all__ = [
    "EMPTY_CODE_HASH",
    "EMPTY_TRIE_ROOT",
    "Account",
    "AccountProof",
    "StorageProof",
    "parse_proof_json",
    "storage_key",
    "verify_account_proof",
    "verify_proof_result",
    "verify_storage_proof",
    "vyper_hashmap_slot",
]

#: root hash of an empty Merkle-Patricia trie: keccak(rlp(b""))
EMPTY_TRIE_ROOT: Final[bytes] = keccak(rlp.encode(b""))
#: code hash of an account without code: keccak(b"")
EMPTY_CODE_HASH: Final[bytes] = keccak(b"")

_WORD: Final[int] = 2**256


@dataclass(frozen=True)
class Account:
    """An account as the state trie stores it.

    Attributes:
        nonce: transaction count (or contract creations, for a contract).
        balance: balance in wei.
        storage_root: root of the account's storage trie.
        code_hash: keccak of the account's code.
    """

    nonce: int
    balance: int
    storage_root: bytes
    code_hash: bytes


@dataclass(frozen=True)
class StorageProof:
    """One entry of an ``eth_getProof`` answer's ``storageProof`` list, as bytes.

    Attributes:
        key: the storage slot.
        value: the value the node claims for it (not yet verified).
        proof: RLP-encoded trie nodes from the storage root down.
    """

    key: int
    value: int
    proof: tuple[bytes, ...]


@dataclass(frozen=True)
class AccountProof:
    """An ``eth_getProof`` answer, as bytes and ints; nothing in it is verified yet.

    Attributes:
        address: the 20-byte account address.
        nonce: claimed nonce.
        balance: claimed balance.
        storage_hash: claimed storage root.
        code_hash: claimed code hash.
        account_proof: RLP-encoded trie nodes from the state root down.
        storage_proofs: one entry per requested slot.
    """

    address: bytes
    nonce: int
    balance: int
    storage_hash: bytes
    code_hash: bytes
    account_proof: tuple[bytes, ...]
    storage_proofs: tuple[StorageProof, ...]


def _root(name: str, root: bytes) -> bytes:
    raw = bytes(root)
    if len(raw) != 32:
        raise ProofError(f"{name} must be 32 bytes, got {len(raw)}")
    return raw


def _walk(root: bytes, key: bytes, proof: Sequence[bytes]) -> bytes:
    """Return the value stored under ``key`` in the trie with ``root`` (b"" when proven absent).

    Raises:
        ProofError: the proof is incomplete, not hash-linked to ``root``, or has a node that is
            not canonical RLP or not a trie node.
    """
    try:
        return mpt.value_from_proof(root, key, [bytes(item) for item in proof])
    except mpt.ProofError as exc:
        raise ProofError(f"proof does not lead from root 0x{root.hex()} to the key: {exc}") from None


def verify_account_proof(
    state_root: bytes, address: bytes, proof: Sequence[bytes]
) -> Account | None:
    """Verify an account proof against a state root.

    Args:
        state_root: the 32-byte state root of a trusted block header.
        address: the 20-byte account address.
        proof: RLP-encoded trie nodes (``accountProof``), root first.

    Returns:
        The proven account, or None when the proof shows the account does not exist.

    Raises:
        ValueError: ``address`` is not 20 bytes.
        ProofError: ``state_root`` is not 32 bytes, the proof is invalid or incomplete or does
            not match the root, or the proven value is not an account.
    """
    raw_address = bytes(address)
    if len(raw_address) != 20:
        raise ValueError(f"address must be 20 bytes, got {len(raw_address)}")
    value = _walk(_root("state root", state_root), keccak(raw_address), proof)
    if value == b"":
        return None
    try:
        fields = rlp.decode(value)
        if not isinstance(fields, list) or len(fields) != 4 or not all(isinstance(f, bytes) for f in fields):
            raise rlp.RLPError("not a list of 4 strings")
        raw_nonce, raw_balance, storage_root, code_hash = (f for f in fields if isinstance(f, bytes))
        nonce, balance = rlp.decode_uint(raw_nonce), rlp.decode_uint(raw_balance)
        if len(storage_root) != 32 or len(code_hash) != 32:
            raise rlp.RLPError("roots are 32 bytes")
    except rlp.RLPError as exc:
        raise ProofError(f"the proven state entry is not an account: {exc}") from None
    return Account(nonce=nonce, balance=balance, storage_root=bytes(storage_root), code_hash=bytes(code_hash))


def storage_key(slot: int) -> bytes:
    """Return the storage-trie key of a slot: keccak of the slot as a 32-byte word.

    Raises:
        ValueError: ``slot`` is not in [0, 2**256).
    """
    if not 0 <= slot < _WORD:
        raise ValueError(f"storage slot out of range: {slot}")
    return keccak(slot.to_bytes(32, "big"))


def verify_storage_proof(storage_root: bytes, slot: int, proof: Sequence[bytes]) -> int:
    """Verify a storage proof against an account's storage root.

    Args:
        storage_root: the 32-byte storage root of a verified account.
        slot: the storage slot.
        proof: RLP-encoded trie nodes (a ``storageProof[i].proof``), root first.

    Returns:
        The value in the slot; 0 when the proof shows the slot is empty.

    Raises:
        ValueError: ``slot`` is not in [0, 2**256).
        ProofError: ``storage_root`` is not 32 bytes, the proof is invalid or incomplete or does
            not match the root, or the proven value is not a canonical 32-byte integer.
    """
    value = _walk(_root("storage root", storage_root), storage_key(slot), proof)
    if value == b"":
        return 0
    try:
        raw = rlp.decode(value)
        if not isinstance(raw, bytes):
            raise rlp.RLPError("a list, not an integer")
        number = rlp.decode_uint(raw)
    except rlp.RLPError as exc:
        raise ProofError(f"the proven storage entry is not a canonical integer: {exc}") from None
    if number >= _WORD:
        raise ProofError(f"the proven storage entry is not a storable word: {number}")
    return int(number)


def _word(key: bytes | int) -> bytes:
    if isinstance(key, int):
        if not 0 <= key < _WORD:
            raise ValueError(f"HashMap key out of the uint256 range: {key}")
        return key.to_bytes(32, "big")
    if isinstance(key, bytes | bytearray | memoryview):
        raw = bytes(key)
        if len(raw) == 32:
            return raw
        if len(raw) == 20:
            return raw.rjust(32, b"\x00")  # an address is a uint160: left-padded
        raise ValueError(f"HashMap key must be 32 bytes (bytes32) or 20 (address), got {len(raw)}")
    raise TypeError(f"HashMap key must be bytes or int, got {type(key).__name__}")


def vyper_hashmap_slot(base_slot: int, *keys: bytes | int) -> int:
    """Return the storage slot of ``m[k1][k2]...`` for a Vyper 0.4.3 ``HashMap`` at ``base_slot``.

    Each level is ``keccak(slot ++ key)`` with both as 32-byte words: ``bytes32`` keys as they
    are, ``address`` keys (20 bytes) left-padded, ``uint256`` keys (ints) big-endian.

    Args:
        base_slot: the HashMap's slot, from the compiler's storage layout output.
        keys: the keys, outermost first.

    Returns:
        The slot holding the value (for a struct value: the slot of its first member).

    Raises:
        ValueError: a slot or key is out of range, or a bytes key is neither 32 nor 20 bytes.
        TypeError: a key is neither bytes nor int.
    """
    if not 0 <= base_slot < _WORD:
        raise ValueError(f"storage slot out of range: {base_slot}")
    slot = base_slot
    for key in keys:
        slot = int.from_bytes(keccak(slot.to_bytes(32, "big") + _word(key)), "big")
    return slot


def _field(result: Mapping[str, Any], name: str) -> Any:
    if name not in result or result[name] is None:
        raise ProofError(f"eth_getProof answer lacks {name}")
    return result[name]


def _bytes(name: str, value: Any, size: int | None = None) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
    elif isinstance(value, str):
        text = value[2:] if value[:2] in ("0x", "0X") else value
        if len(text) % 2:
            text = "0" + text
        try:
            raw = bytes.fromhex(text)
        except ValueError as exc:
            raise ProofError(f"eth_getProof field {name} is not hex: {value!r}") from exc
    else:
        raise ProofError(f"eth_getProof field {name} has an unusable value: {value!r}")
    if size is not None and len(raw) != size:
        raise ProofError(f"eth_getProof field {name} is {len(raw)} bytes, expected {size}")
    return raw


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ProofError(f"eth_getProof field {name} has an unusable value: {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        try:
            number = int(value, 16)
        except ValueError as exc:
            raise ProofError(f"eth_getProof field {name} is not a hex number: {value!r}") from exc
    elif isinstance(value, bytes | bytearray | memoryview):
        number = int.from_bytes(bytes(value), "big")
    else:
        raise ProofError(f"eth_getProof field {name} has an unusable value: {value!r}")
    if not 0 <= number < _WORD:
        raise ProofError(f"eth_getProof field {name} is out of range: {number}")
    return number


def _nodes(name: str, value: Any) -> tuple[bytes, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ProofError(f"eth_getProof field {name} is not a list of nodes")
    return tuple(_bytes(name, node) for node in value)


def parse_proof_json(result: Mapping[str, Any]) -> AccountProof:
    """Turn an ``eth_getProof`` result into bytes and ints, without verifying anything.

    Accepts the raw JSON-RPC result (hex strings) as well as web3's formatted one (``HexBytes``,
    ints, checksum address).

    Args:
        result: the ``eth_getProof`` result object.

    Returns:
        The parsed answer.

    Raises:
        ProofError: a field is missing or has an unusable value.
    """
    if not isinstance(result, Mapping):
        raise ProofError("eth_getProof answer is not an object")
    storage = _field(result, "storageProof")
    if isinstance(storage, str | bytes) or not isinstance(storage, Sequence):
        raise ProofError("eth_getProof field storageProof is not a list")
    entries = []
    for entry in storage:
        if not isinstance(entry, Mapping):
            raise ProofError("eth_getProof storageProof entry is not an object")
        entries.append(
            StorageProof(
                key=_int("storageProof.key", _field(entry, "key")),
                value=_int("storageProof.value", _field(entry, "value")),
                proof=_nodes("storageProof.proof", _field(entry, "proof")),
            )
        )
    return AccountProof(
        address=_bytes("address", _field(result, "address"), 20),
        nonce=_int("nonce", _field(result, "nonce")),
        balance=_int("balance", _field(result, "balance")),
        storage_hash=_bytes("storageHash", _field(result, "storageHash"), 32),
        code_hash=_bytes("codeHash", _field(result, "codeHash"), 32),
        account_proof=_nodes("accountProof", _field(result, "accountProof")),
        storage_proofs=tuple(entries),
    )


def verify_proof_result(
    state_root: bytes, proof: AccountProof
) -> tuple[Account | None, dict[int, int]]:
    """Verify a whole parsed ``eth_getProof`` answer against a state root.

    The account proof is verified, the answer's summary fields (nonce, balance, storage hash,
    code hash) must equal the proven account (or the empty account when it is proven absent),
    and each storage proof is verified against the proven storage root and must prove the value
    the answer claims.

    Args:
        state_root: the 32-byte state root of a trusted block header.
        proof: the parsed answer (see :func:`parse_proof_json`).

    Returns:
        The proven account (None when absent) and the proven value of each requested slot.

    Raises:
        ProofError: any proof fails, or the answer claims something its proofs do not show.
    """
    account = verify_account_proof(state_root, proof.address, proof.account_proof)
    proven = account or Account(
        nonce=0, balance=0, storage_root=EMPTY_TRIE_ROOT, code_hash=EMPTY_CODE_HASH
    )
    claimed = Account(
        nonce=proof.nonce,
        balance=proof.balance,
        storage_root=proof.storage_hash,
        code_hash=proof.code_hash,
    )
    if claimed != proven:
        raise ProofError(f"eth_getProof answer claims {claimed} but its proof shows {proven}")
    values: dict[int, int] = {}
    for entry in proof.storage_proofs:
        value = verify_storage_proof(proven.storage_root, entry.key, entry.proof)
        if value != entry.value:
            raise ProofError(
                f"eth_getProof answer claims slot {entry.key:#x} holds {entry.value} "
                f"but its proof shows {value}"
            )
        values[entry.key] = value
    return account, values
