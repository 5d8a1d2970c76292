"""EIP-712 typed-data digests, as ``eth_account.messages.encode_typed_data`` computes them.

Input is the ``full_message`` form: ``{"types": {...}, "primaryType": ..., "domain": {...},
"message": {...}}``. Supported field types: ``uint<N>``, ``int<N>``, ``bool``, ``address``,
``bytes<N>``, ``bytes``, ``string``, struct types named in ``types``, and arrays ``T[]`` of these.
Values are strict: ``bytes<N>`` takes exactly N bytes, integers must fit their type.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from .hashing import is_address, keccak, to_checksum_address

__all__ = ["hash_struct", "typed_data_digest"]

_INT: Final = re.compile(r"(u?)int(\d{1,3})", re.ASCII)
_FIXED_BYTES: Final = re.compile(r"bytes(\d{1,2})", re.ASCII)

Types = Mapping[str, Sequence[Mapping[str, str]]]


def _base(type_name: str) -> str:
    return type_name.split("[", 1)[0]


def _dependencies(primary: str, types: Types, found: set[str]) -> None:
    if primary in found or primary not in types:
        return
    found.add(primary)
    for field in types[primary]:
        _dependencies(_base(field["type"]), types, found)


def encode_type(primary: str, types: Types) -> str:
    """``Name(type field,...)`` for the primary type, then its dependencies sorted by name."""
    found: set[str] = set()
    _dependencies(primary, types, found)
    found.discard(primary)
    return "".join(f"{name}(" + ",".join(f"{f['type']} {f['name']}" for f in types[name]) + ")"
                   for name in [primary, *sorted(found)])


def _encode_value(type_name: str, value: Any, types: Types) -> bytes:
    if type_name.endswith("[]"):
        inner = type_name[:-2]
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise ValueError(f"{type_name} takes a list, got {type(value).__name__}")
        return keccak(b"".join(_encode_value(inner, item, types) for item in value))
    if type_name in types:
        if not isinstance(value, Mapping):
            raise ValueError(f"{type_name} takes a mapping")
        return hash_struct(type_name, types, value)
    if type_name == "string":
        if not isinstance(value, str):
            raise ValueError("string takes text")
        return keccak(value.encode("utf-8"))
    if type_name == "bytes":
        if not isinstance(value, bytes | bytearray):
            raise ValueError("bytes takes bytes")
        return keccak(bytes(value))
    if type_name == "bool":
        if not isinstance(value, bool):
            raise ValueError("bool takes a bool")
        return int(value).to_bytes(32, "big")
    if type_name == "address":
        if not is_address(value):
            raise ValueError(f"not an address: {value!r}")
        return bytes.fromhex(to_checksum_address(value)[2:]).rjust(32, b"\x00")
    if m := _FIXED_BYTES.fullmatch(type_name):
        size = int(m.group(1))
        if not 1 <= size <= 32 or not isinstance(value, bytes | bytearray) or len(value) != size:
            raise ValueError(f"{type_name} takes exactly {size} bytes")
        return bytes(value).ljust(32, b"\x00")
    if m := _INT.fullmatch(type_name):
        bits = int(m.group(2))
        if bits % 8 or not 8 <= bits <= 256 or isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{type_name} takes an integer")
        lo, hi = (0, 1 << bits) if m.group(1) else (-(1 << (bits - 1)), 1 << (bits - 1))
        if not lo <= value < hi:
            raise ValueError(f"{value} does not fit {type_name}")
        return (value % (1 << 256)).to_bytes(32, "big")
    raise ValueError(f"unsupported EIP-712 type {type_name!r}")


def hash_struct(primary: str, types: Types, data: Mapping[str, Any]) -> bytes:
    """``keccak(typeHash || encodeData(data))`` for a struct of type ``primary``.

    Raises:
        ValueError: a field is missing, of an unsupported type, or its value does not fit.
    """
    parts = [keccak(encode_type(primary, types).encode())]
    for field in types[primary]:
        if field["name"] not in data:
            raise ValueError(f"{primary}.{field['name']} is missing")
        parts.append(_encode_value(field["type"], data[field["name"]], types))
    return keccak(b"".join(parts))


def typed_data_digest(full_message: Mapping[str, Any]) -> bytes:
    """The 32-byte digest a signer signs: ``keccak(0x1901 || domainSeparator || hashStruct(message))``.

    Raises:
        ValueError: the message does not match its types.
    """
    types = full_message["types"]
    domain = hash_struct("EIP712Domain", types, full_message["domain"])
    return keccak(b"\x19\x01" + domain + hash_struct(full_message["primaryType"], types, full_message["message"]))
