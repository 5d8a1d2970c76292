"""Mutations of seed inputs, driven by a ``random.Random`` (so that a failing input is reproduced
from its seed): byte-level (flip, insert, delete, duplicate, splice in interesting bytes) and,
for JSON inputs, tree-level (replace any value with another JSON value of any type, drop or add a
key, grow or shrink a list): the latter reaches the checks deep inside a parser that byte flips,
which mostly break the JSON syntax, rarely do.
"""

from __future__ import annotations

import json
import random
from typing import Any

__all__ = ["json_value", "mutate", "mutate_bytes", "mutate_json"]

_INTERESTING_INTS = [0, 1, -1, 2**8, 2**16, 2**31 - 1, 2**32, 2**63, 2**64, 2**256, 2**256 - 1, -(2**255),
                     10**400]
_INTERESTING_STRS = ["", "0x", "0x0", "0x" + "00" * 32, "0x" + "ff" * 20, "0x" + "zz" * 32, "1.0.0", "65536.0.0",
                     "\x00", "\u202e", "\ud800", "a" * 300, "0X" + "11" * 32, "-1", "NaN", "1e400"]


def json_value(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value (any type), with a bias to edge cases."""
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice(_INTERESTING_INTS) if rng.random() < 0.6 else rng.randrange(-(2**70), 2**70)
    if kind == 3:
        return rng.choice([0.0, -0.0, 1.5, 1e308, -1e-308, float("inf"), float("nan")])
    if kind in (4, 5):
        if rng.random() < 0.6:
            return rng.choice(_INTERESTING_STRS)
        return "".join(chr(rng.randrange(0x20, 0x7F)) for _ in range(rng.randrange(0, 80)))
    if kind == 6:
        return [json_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    if kind == 7:
        return {rng.choice(["", "key", "proof", "record", "0x"]): json_value(rng, depth + 1)
                for _ in range(rng.randrange(0, 3))}
    return "0x" + bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 20, 31, 32, 33, 65]))).hex()


def _containers(obj: Any, out: list[Any]) -> None:
    if isinstance(obj, dict | list):
        out.append(obj)
        for v in obj.values() if isinstance(obj, dict) else obj:
            _containers(v, out)


def mutate_json(obj: Any, rng: random.Random) -> Any:
    """One tree-level mutation of a parsed JSON value (in place when possible); returns the result."""
    found: list[Any] = []
    _containers(obj, found)
    if not found or rng.random() < 0.03:
        return json_value(rng)
    box = rng.choice(found)
    if isinstance(box, dict):
        op = rng.randrange(4)
        if box and op <= 1:
            box[rng.choice(list(box))] = json_value(rng)
        elif box and op == 2:
            del box[rng.choice(list(box))]
        else:
            box[rng.choice([*list(box)[:3], "extra", ""])] = json_value(rng)
    else:
        op = rng.randrange(4)
        if box and op <= 1:
            box[rng.randrange(len(box))] = json_value(rng)
        elif box and op == 2:
            del box[rng.randrange(len(box))]
        elif box and op == 3:
            box.extend(box[: rng.randrange(1, 3)] * rng.randrange(1, 40))  # grow: repeat entries
        else:
            box.append(json_value(rng))
    return obj


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """One byte-level mutation."""
    buf = bytearray(data)
    op = rng.randrange(6)
    pos = rng.randrange(len(buf) + 1)
    if op == 0 and buf:
        buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
    elif op == 1:
        buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
    elif op == 2 and buf:
        del buf[pos : pos + rng.randrange(1, 33)]
    elif op == 3 and buf:
        end = min(len(buf), pos + rng.randrange(1, 65))
        buf[pos:pos] = buf[pos:end]
    elif op == 4:
        buf[pos:pos] = rng.choice([b"\x00", b"\xff" * 4, b"\x80", b'"', b"{", b"]", b"0x", b"-1", b"\xed\xa0\x80"])
    elif buf:
        del buf[pos:]  # truncate
    return bytes(buf)


def mutate(data: bytes, rng: random.Random, rounds: int = 1) -> bytes:
    """``rounds`` mutations: tree-level when ``data`` is JSON (most of the time), else byte-level."""
    for _ in range(rounds):
        obj: Any = None
        is_json = False
        if rng.random() < 0.8:
            try:
                obj, is_json = json.loads(data), True
            except (ValueError, RecursionError):
                pass
        if is_json:
            data = json.dumps(mutate_json(obj, rng), separators=(",", ":"), sort_keys=rng.random() < 0.5).encode()
        else:
            data = mutate_bytes(data, rng)
    return data
