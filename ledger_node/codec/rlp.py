"""RLP (Ethereum's recursive length prefix), strict, as ``rlp.encode`` / ``rlp.decode(strict=True)``.

Items are ``bytes`` or lists of items. :func:`decode` accepts only canonical encodings: the
shortest length form, no leading zeros in lengths, a single byte below 0x80 as itself, no
trailing bytes, and a bounded nesting depth.
"""

from __future__ import annotations

from typing import Final, TypeAlias

__all__ = ["Item", "RLPError", "decode", "decode_uint", "encode", "encode_uint"]

Item: TypeAlias = bytes | list["Item"]

_MAX_DEPTH: Final = 64


class RLPError(ValueError):
    """Bytes that are not one canonical RLP item."""


def _length_prefix(size: int, short: int) -> bytes:
    if size < 56:
        return bytes([short + size])
    raw = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([short + 55 + len(raw)]) + raw


def encode(item: object) -> bytes:
    """The RLP encoding of ``item`` (integers as their minimal big-endian bytes).

    Raises:
        TypeError: neither bytes, a non-negative int, nor a list of those.
    """
    if isinstance(item, bool):
        raise TypeError("RLP does not encode bools")
    if isinstance(item, int):
        return encode(encode_uint(item))
    if isinstance(item, bytes | bytearray):
        raw = bytes(item)
        if len(raw) == 1 and raw[0] < 0x80:
            return raw
        return _length_prefix(len(raw), 0x80) + raw
    if isinstance(item, list | tuple):
        body = b"".join(encode(x) for x in item)
        return _length_prefix(len(body), 0xC0) + body
    raise TypeError(f"RLP does not encode {type(item).__name__}")


def encode_uint(value: int) -> bytes:
    """A non-negative integer as RLP's minimal big-endian bytes (0 is empty)."""
    if value < 0:
        raise TypeError("RLP encodes only non-negative integers")
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def decode_uint(raw: bytes) -> int:
    """The integer of minimal big-endian bytes.

    Raises:
        RLPError: a leading zero byte (not canonical).
    """
    if raw[:1] == b"\x00":
        raise RLPError("integer with a leading zero")
    return int.from_bytes(raw, "big")


def _long_length(data: bytes, at: int, size_of_size: int) -> int:
    raw = data[at:at + size_of_size]
    if len(raw) != size_of_size:
        raise RLPError("length runs past the data")
    if raw[0] == 0:
        raise RLPError("length with a leading zero")
    size = int.from_bytes(raw, "big")
    if size < 56:
        raise RLPError("long form for a short length")
    return size


def _item(data: bytes, at: int, end: int, depth: int) -> tuple[Item, int]:
    if at >= end:
        raise RLPError("data ends inside an item")
    lead = data[at]
    if lead < 0x80:
        return data[at:at + 1], at + 1
    if lead < 0xC0:
        if lead <= 0xB7:
            size, start = lead - 0x80, at + 1
        else:
            size = _long_length(data, at + 1, lead - 0xB7)
            start = at + 1 + lead - 0xB7
        if start + size > end:
            raise RLPError("string runs past the data")
        raw = data[start:start + size]
        if size == 1 and raw[0] < 0x80:
            raise RLPError("single byte below 0x80 with a prefix")
        return raw, start + size
    if depth >= _MAX_DEPTH:
        raise RLPError("lists nested too deep")
    if lead <= 0xF7:
        size, start = lead - 0xC0, at + 1
    else:
        size = _long_length(data, at + 1, lead - 0xF7)
        start = at + 1 + lead - 0xF7
    stop = start + size
    if stop > end:
        raise RLPError("list runs past the data")
    items: list[Item] = []
    pos = start
    while pos < stop:
        child, pos = _item(data, pos, stop, depth + 1)
        items.append(child)
    return items, stop


def decode(data: bytes | bytearray | memoryview) -> Item:
    """The one RLP item that ``data`` encodes.

    Raises:
        RLPError: empty, truncated, non-canonical, too deep, or with trailing bytes.
    """
    raw = bytes(data)
    item, end = _item(raw, 0, len(raw), 0)
    if end != len(raw):
        raise RLPError("trailing bytes after the item")
    return item
