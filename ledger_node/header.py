"""Block headers: rebuild the RLP header from block JSON, decode and check it (pure, no I/O).

A light node trusts a block only through its hash. ``header_rlp_from_json`` turns the JSON a node
returns for ``eth_getBlockBy*`` (raw hex strings, or the ints/bytes web3 formats them into) back
into the consensus RLP header, so that ``keccak(rlp) == block hash`` can be checked;
``decode_header`` reads the few fields a light node needs out of that RLP, after checking its hash.

Field order is the consensus order of every fork up to Prague. The fork-specific fields are
trailing and optional; each is included only when present in the JSON, and a later one may not be
present without all the earlier ones (such a header exists in no fork).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from ledger_node.codec import rlp
from ledger_node.codec.hashing import keccak
from ledger_node.errors import ProofError

__all__ = [
    "HEADER_FIELDS",
    "OPTIONAL_HEADER_FIELDS",
    "BlockHeader",
    "decode_header",
    "header_rlp_from_json",
]

#: how a JSON field is turned into an RLP item
_HASH = "hash32"  # exactly 32 bytes
_ADDRESS = "address"  # exactly 20 bytes
_BLOOM = "bloom"  # exactly 256 bytes
_NONCE = "nonce"  # exactly 8 bytes
_BYTES = "bytes"  # any length (extraData)
_INT = "int"  # big-endian integer, minimal encoding

#: the fields every header has since Frontier, in consensus order: (JSON name, kind)
HEADER_FIELDS: Final[tuple[tuple[str, str], ...]] = (
    ("parentHash", _HASH),
    ("sha3Uncles", _HASH),
    ("miner", _ADDRESS),
    ("stateRoot", _HASH),
    ("transactionsRoot", _HASH),
    ("receiptsRoot", _HASH),
    ("logsBloom", _BLOOM),
    ("difficulty", _INT),
    ("number", _INT),
    ("gasLimit", _INT),
    ("gasUsed", _INT),
    ("timestamp", _INT),
    ("extraData", _BYTES),
    ("mixHash", _HASH),
    ("nonce", _NONCE),
)

#: fields added by later forks, in consensus order (London, Shanghai, Cancun x3, Prague)
OPTIONAL_HEADER_FIELDS: Final[tuple[tuple[str, str], ...]] = (
    ("baseFeePerGas", _INT),
    ("withdrawalsRoot", _HASH),
    ("blobGasUsed", _INT),
    ("excessBlobGas", _INT),
    ("parentBeaconBlockRoot", _HASH),
    ("requestsHash", _HASH),
)

_FIXED_SIZES: Final[dict[str, int]] = {_HASH: 32, _ADDRESS: 20, _BLOOM: 256, _NONCE: 8}


@dataclass(frozen=True)
class BlockHeader:
    """The fields of a checked block header that a light node uses.

    Attributes:
        number: block number.
        hash: keccak of ``rlp`` (the block hash).
        parent_hash: hash of the parent block.
        state_root: root of the state trie after this block.
        timestamp: block timestamp, seconds since the epoch.
        rlp: the consensus RLP encoding of the whole header.
    """

    number: int
    hash: bytes
    parent_hash: bytes
    state_root: bytes
    timestamp: int
    rlp: bytes


def _as_bytes(name: str, value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        text = value[2:] if value[:2] in ("0x", "0X") else value
        if len(text) % 2:
            text = "0" + text
        try:
            return bytes.fromhex(text)
        except ValueError as exc:
            raise ProofError(f"block JSON field {name} is not hex: {value!r}") from exc
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        # web3 / eth-tester sometimes hand over e.g. logsBloom as an int
        return value.to_bytes((value.bit_length() + 7) // 8, "big")
    raise ProofError(f"block JSON field {name} has an unusable value: {value!r}")


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ProofError(f"block JSON field {name} has an unusable value: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ProofError(f"block JSON field {name} is negative: {value}")
        return value
    if isinstance(value, str):
        try:
            number = int(value, 16) if value[:2] in ("0x", "0X") else int(value, 10)
        except ValueError as exc:
            raise ProofError(f"block JSON field {name} is not a number: {value!r}") from exc
        if number < 0:
            raise ProofError(f"block JSON field {name} is negative: {value!r}")
        return number
    if isinstance(value, bytes | bytearray | memoryview):
        return int.from_bytes(bytes(value), "big")
    raise ProofError(f"block JSON field {name} has an unusable value: {value!r}")


def _item(name: str, kind: str, value: Any) -> bytes | int:
    if kind == _INT:
        return _as_int(name, value)
    raw = _as_bytes(name, value)
    size = _FIXED_SIZES.get(kind)
    if size is not None:
        if len(raw) > size:
            raise ProofError(f"block JSON field {name} is {len(raw)} bytes, expected {size}")
        if kind in (_BLOOM, _NONCE) and isinstance(value, int):
            # eth-tester reports logsBloom as an int; its leading zero bytes are implied
            raw = raw.rjust(size, b"\x00")
        if len(raw) != size:
            raise ProofError(f"block JSON field {name} is {len(raw)} bytes, expected {size}")
    return raw


def header_rlp_from_json(block: Mapping[str, Any]) -> bytes:
    """Rebuild the consensus RLP encoding of a block header from its JSON-RPC form.

    Accepts both the raw JSON-RPC result (hex strings) and web3's formatted block (ints,
    ``HexBytes``, checksum addresses). Fork-specific trailing fields (``baseFeePerGas`` ...
    ``requestsHash``) are included only when present, in consensus order.

    Args:
        block: an ``eth_getBlockByNumber`` / ``eth_getBlockByHash`` result.

    Returns:
        The RLP-encoded header; its keccak is the block hash when the JSON is faithful.

    Raises:
        ProofError: a required field is missing or unusable, a value has the wrong size, or a
            trailing fork field is present while an earlier one is missing.
    """
    items: list[bytes | int] = []
    for name, kind in HEADER_FIELDS:
        if name not in block or block[name] is None:
            raise ProofError(f"block JSON lacks the header field {name}")
        items.append(_item(name, kind, block[name]))
    missing: str | None = None
    for name, kind in OPTIONAL_HEADER_FIELDS:
        value = block.get(name)
        if value is None:
            missing = missing or name
            continue
        if missing is not None:
            raise ProofError(f"block JSON has {name} but lacks the earlier header field {missing}")
        items.append(_item(name, kind, value))
    return rlp.encode(items)


def decode_header(header_rlp: bytes, expected_hash: bytes | None = None) -> BlockHeader:
    """Decode an RLP block header, checking its hash first when one is expected.

    Args:
        header_rlp: the consensus RLP encoding of a header (any fork up to Prague).
        expected_hash: the 32-byte block hash the header must have, or None to accept any.

    Returns:
        The header's light-node fields.

    Raises:
        ProofError: ``keccak(header_rlp)`` differs from ``expected_hash``, or the RLP is not a
            well-formed block header.
    """
    raw = bytes(header_rlp)
    block_hash = keccak(raw)
    if expected_hash is not None and block_hash != bytes(expected_hash):
        raise ProofError(
            f"header hash mismatch: keccak(header) is 0x{block_hash.hex()}, "
            f"expected 0x{bytes(expected_hash).hex()}"
        )
    try:
        fields = rlp.decode(raw)
    except rlp.RLPError as exc:
        raise ProofError(f"block header is not valid RLP: {exc}") from None
    max_fields = len(HEADER_FIELDS) + len(OPTIONAL_HEADER_FIELDS)
    if not isinstance(fields, list) or not len(HEADER_FIELDS) <= len(fields) <= max_fields:
        raise ProofError("block header is not an RLP list of 15 to 21 fields")
    if not all(isinstance(field, bytes) for field in fields):
        raise ProofError("block header has a nested list where a field belongs")
    items = [field for field in fields if isinstance(field, bytes)]  # all of them (narrowed for the checker)
    for (name, kind), field in zip(HEADER_FIELDS + OPTIONAL_HEADER_FIELDS, items, strict=False):
        size = _FIXED_SIZES.get(kind)
        if size is not None and len(field) != size:
            raise ProofError(f"block header field {name} is {len(field)} bytes, expected {size}")
        if kind == _INT and field[:1] == b"\x00":
            raise ProofError(f"block header field {name} has a leading zero byte")
    return BlockHeader(
        number=int.from_bytes(items[8], "big"),
        hash=block_hash,
        parent_hash=items[0],
        state_root=items[3],
        timestamp=int.from_bytes(items[11], "big"),
        rlp=raw,
    )
