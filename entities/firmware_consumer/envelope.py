"""The checksummed envelope of the device's state files, and the readers of their JSON fields. Pure.

Every state file of a device folder (the mirrored component state copies, the install journal,
``device.json``) is an envelope ``{"format", "kind", "generation", "body", "sha256"}``; ``sha256``
is over the canonical JSON of the rest, so a damaged or truncated file is detected and the other
copy used (:func:`choose_newest`). The field readers raise :class:`~.errors.StateCorrupt` on a
missing or ill-typed field; :mod:`.state` parses its bodies with them and re-exports the codec's
public names. :mod:`.store`, :mod:`.device` and :mod:`.device_info` read and write the envelopes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

from .errors import StateCorrupt

__all__ = ["FORMAT", "choose_newest", "decode_envelope", "encode_envelope"]

#: version of the state-file envelope; a file with another format is not trusted
FORMAT = 1


# ----------------------------------------------------------------------------- envelope codec


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def encode_envelope(kind: str, generation: int, body: Mapping[str, Any]) -> bytes:
    """The bytes of a state file: format, kind, generation, body and a SHA-256 over them."""
    inner = {"format": FORMAT, "kind": kind, "generation": generation, "body": dict(body)}
    digest = hashlib.sha256(_canonical(inner)).hexdigest()
    return (json.dumps({**inner, "sha256": digest}, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()


def decode_envelope(data: bytes, kind: str) -> tuple[int, dict[str, Any]]:
    """Check and open a state file; return (generation, body).

    Raises:
        StateCorrupt: not JSON, another format or kind, or the checksum does not match.
    """
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StateCorrupt(f"{kind}: not JSON ({exc})") from exc
    o = _obj(obj, kind)
    digest = o.pop("sha256", None)
    _corrupt_unless(o.get("format") == FORMAT, f"{kind}: unsupported format {o.get('format')!r}")
    _corrupt_unless(o.get("kind") == kind, f"{kind}: file is a {o.get('kind')!r}")
    _corrupt_unless(set(o) == {"format", "kind", "generation", "body"}, f"{kind}: unexpected fields")
    _corrupt_unless(digest == hashlib.sha256(_canonical(o)).hexdigest(), f"{kind}: checksum mismatch")
    gen = o["generation"]
    _corrupt_unless(isinstance(gen, int) and not isinstance(gen, bool) and gen >= 0, f"{kind}: bad generation")
    return gen, _obj(o["body"], f"{kind} body")


def choose_newest(copies: Sequence[tuple[int, Any] | None]) -> tuple[int, int, Any]:
    """Pick the valid copy with the highest generation; return (index, generation, value).

    ``copies`` holds one entry per file: ``(generation, value)``, or None when that copy failed
    its checks. On a tie the first copy wins (tied copies are written with the same content).

    Raises:
        StateCorrupt: no copy is valid.
    """
    best: tuple[int, int, Any] | None = None
    for i, c in enumerate(copies):
        if c is not None and (best is None or c[0] > best[1]):
            best = (i, c[0], c[1])
    if best is None:
        raise StateCorrupt("no valid copy")
    return best


# ----------------------------------------------------------------------------- field readers


def _corrupt_unless(cond: bool, message: str) -> None:
    if not cond:
        raise StateCorrupt(message)




def _obj(value: Any, what: str) -> dict[str, Any]:
    _corrupt_unless(isinstance(value, dict), f"{what}: expected an object")
    return dict(value)


def _str(o: Mapping[str, Any], key: str) -> str:
    v = o.get(key)
    _corrupt_unless(isinstance(v, str), f"{key}: expected a string")
    return cast(str, v)


def _opt_str(o: Mapping[str, Any], key: str) -> str | None:
    v = o.get(key)
    _corrupt_unless(v is None or isinstance(v, str), f"{key}: expected a string or null")
    return cast("str | None", v)


def _int(o: Mapping[str, Any], key: str) -> int:
    v = o.get(key)
    _corrupt_unless(isinstance(v, int) and not isinstance(v, bool), f"{key}: expected an integer")
    return cast(int, v)


def _num(o: Mapping[str, Any], key: str) -> float:
    v = o.get(key)
    _corrupt_unless(isinstance(v, int | float) and not isinstance(v, bool), f"{key}: expected a number")
    return float(cast(float, v))


def _bool(o: Mapping[str, Any], key: str) -> bool:
    v = o.get(key)
    _corrupt_unless(isinstance(v, bool), f"{key}: expected true or false")
    return cast(bool, v)
