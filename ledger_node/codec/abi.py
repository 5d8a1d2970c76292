"""The Solidity ABI for the types the registry's records use, as ``eth_abi`` encodes them.

Types: ``uint<N>``, ``bool``, ``address``, ``bytes<N>``, ``bytes``, ``string``, tuples
``(T1,T2,...)`` and dynamic arrays ``T[]``. :func:`decode` is strict: it accepts only the canonical
encoding (it decodes with bounds checks, then requires that re-encoding gives the same bytes), so
one value has one encoding, as ``eth_abi.decode(..., strict=True)`` plus a round trip would.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Final

__all__ = ["AbiError", "decode", "encode"]

_UINT: Final = re.compile(r"uint(\d{1,3})", re.ASCII)
_FIXED_BYTES: Final = re.compile(r"bytes(\d{1,2})", re.ASCII)
_MAX_DEPTH: Final = 8


class AbiError(ValueError):
    """Bytes that are not the canonical ABI encoding of the given types, or a value that does not fit."""


class _Type:
    __slots__ = ("array", "bits", "kind", "size", "tuple")

    def __init__(self, kind: str, *, bits: int = 0, size: int = 0, items: tuple[_Type, ...] = (),
                 array: _Type | None = None) -> None:
        self.kind, self.bits, self.size, self.tuple, self.array = kind, bits, size, items, array

    @property
    def dynamic(self) -> bool:
        if self.kind == "tuple":
            return any(t.dynamic for t in self.tuple)
        return self.kind in ("bytes", "string", "array")

    @property
    def head_size(self) -> int:
        if self.kind == "tuple" and not self.dynamic:
            return sum(t.head_size for t in self.tuple)
        return 32


def _split_top(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        depth += (c == "(") - (c == ")")
        if depth < 0:
            raise AbiError(f"bad type {text!r}")
        if c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    if depth:
        raise AbiError(f"bad type {text!r}")
    return parts


@lru_cache(maxsize=64)
def _parse(text: str, depth: int = 0) -> _Type:
    if depth > _MAX_DEPTH:
        raise AbiError("type nested too deep")
    if text.endswith("[]"):
        return _Type("array", array=_parse(text[:-2], depth + 1))
    if text.startswith("(") and text.endswith(")"):
        inner = text[1:-1]
        return _Type("tuple", items=tuple(_parse(p, depth + 1) for p in _split_top(inner)) if inner else ())
    if text in ("string", "bytes", "bool", "address"):
        return _Type(text)
    if m := _UINT.fullmatch(text):
        bits = int(m.group(1))
        if bits % 8 == 0 and 8 <= bits <= 256:
            return _Type("uint", bits=bits)
    if m := _FIXED_BYTES.fullmatch(text):
        size = int(m.group(1))
        if 1 <= size <= 32:
            return _Type("fixed", size=size)
    raise AbiError(f"unsupported ABI type {text!r}")


# ----------------------------------------------------------------------------- encode

def _word(n: int) -> bytes:
    return n.to_bytes(32, "big")


def _padded(raw: bytes) -> bytes:
    return raw + b"\x00" * (-len(raw) % 32)


def _encode(t: _Type, value: Any) -> bytes:
    if t.kind == "uint":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << t.bits):
            raise AbiError(f"uint{t.bits} takes an integer in range, got {value!r}")
        return _word(value)
    if t.kind == "bool":
        if not isinstance(value, bool):
            raise AbiError(f"bool takes a bool, got {value!r}")
        return _word(int(value))
    if t.kind == "address":
        raw = bytes.fromhex(value[2:]) if isinstance(value, str) and value.startswith("0x") and len(value) == 42 \
            else value
        if not isinstance(raw, bytes | bytearray) or len(raw) != 20:
            raise AbiError(f"address takes 20 bytes or 0x and 40 hex digits, got {value!r}")
        return bytes(raw).rjust(32, b"\x00")
    if t.kind == "fixed":
        if not isinstance(value, bytes | bytearray) or len(value) != t.size:
            raise AbiError(f"bytes{t.size} takes exactly {t.size} bytes")
        return bytes(value).ljust(32, b"\x00")
    if t.kind in ("bytes", "string"):
        if t.kind == "string":
            if not isinstance(value, str):
                raise AbiError(f"string takes text, got {type(value).__name__}")
            raw = value.encode("utf-8")
        elif isinstance(value, bytes | bytearray):
            raw = bytes(value)
        else:
            raise AbiError(f"bytes takes bytes, got {type(value).__name__}")
        return _word(len(raw)) + _padded(raw)
    if t.kind == "array":
        assert t.array is not None
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise AbiError(f"an array takes a sequence, got {type(value).__name__}")
        return _word(len(value)) + _encode_tuple((t.array,) * len(value), value)
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != len(t.tuple):
        raise AbiError(f"a tuple of {len(t.tuple)} takes a sequence of as many values")
    return _encode_tuple(t.tuple, value)


def _encode_tuple(types: Sequence[_Type], values: Sequence[Any]) -> bytes:
    heads, tails = [], []
    offset = sum(t.head_size for t in types)
    for t, v in zip(types, values, strict=True):
        enc = _encode(t, v)
        if t.dynamic:
            heads.append(_word(offset))
            tails.append(enc)
            offset += len(enc)
        else:
            heads.append(enc)
    return b"".join(heads) + b"".join(tails)


def encode(types: Sequence[str], values: Sequence[Any]) -> bytes:
    """The ABI encoding of ``values`` as the tuple ``types`` (``eth_abi.encode(types, values)``).

    Raises:
        AbiError: an unsupported type, or a value that does not fit its type.
    """
    if len(types) != len(values):
        raise AbiError(f"{len(types)} types for {len(values)} values")
    return _encode_tuple([_parse(t) for t in types], values)


# ----------------------------------------------------------------------------- decode

def _read_word(data: bytes, at: int) -> int:
    if at < 0 or at + 32 > len(data):
        raise AbiError("data too short")
    return int.from_bytes(data[at:at + 32], "big")


def _spend(budget: list[int], size: int) -> None:
    # A canonical encoding holds every length word and content once: more means aliased offsets
    # (a few bytes that would decode to gigabytes).
    budget[0] -= size
    if budget[0] < 0:
        raise AbiError("offsets overlap (not a canonical encoding)")


def _decode(t: _Type, data: bytes, at: int, budget: list[int]) -> Any:
    if t.kind == "uint":
        return _read_word(data, at)  # range checked by the round trip
    if t.kind == "bool":
        return bool(_read_word(data, at))
    if t.kind == "address":
        _read_word(data, at)
        return "0x" + data[at + 12:at + 32].hex()
    if t.kind == "fixed":
        _read_word(data, at)
        return data[at:at + t.size]
    if t.kind in ("bytes", "string"):
        size = _read_word(data, at)
        if size > len(data) - at - 32:
            raise AbiError("length runs past the data")
        _spend(budget, 32 + size)
        raw = data[at + 32:at + 32 + size]
        if t.kind == "bytes":
            return raw
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise AbiError("string is not UTF-8") from None
    if t.kind == "array":
        assert t.array is not None
        count = _read_word(data, at)
        if count * 32 > len(data) - at - 32:  # every element takes at least one word
            raise AbiError("array length runs past the data")
        _spend(budget, 32 * (count + 1))
        return _decode_tuple((t.array,) * count, data, at + 32, budget)
    return _decode_tuple(t.tuple, data, at, budget)


def _decode_tuple(types: Sequence[_Type], data: bytes, at: int, budget: list[int]) -> tuple[Any, ...]:
    out, pos = [], at
    for t in types:
        if t.dynamic:
            offset = _read_word(data, pos)
            if offset >= len(data):
                raise AbiError("offset runs past the data")
            out.append(_decode(t, data, at + offset, budget))
        else:
            out.append(_decode(t, data, pos, budget))
        pos += t.head_size
    return tuple(out)


def decode(types: Sequence[str], data: bytes) -> tuple[Any, ...]:
    """The values of ``types`` in ``data``, which must be their canonical encoding.

    Arrays and tuples come back as tuples, addresses as lowercase ``0x`` text, ``bytes<N>`` as N bytes.

    Raises:
        AbiError: an unsupported type, data that is short, out of range, or not canonical.
    """
    raw = bytes(data)
    parsed = [_parse(t) for t in types]
    values = _decode_tuple(parsed, raw, 0, [len(raw)])
    if _encode_tuple(parsed, values) != raw:
        raise AbiError("not canonically encoded (re-encoding the values differs)")
    return values
