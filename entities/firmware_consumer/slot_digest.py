"""The digest a device keeps of each slot's image: its reference for the boot-time slot check.

A slot digest is written ``ALGORITHM:HEX`` (64 lowercase hex digits), so a state says how its
reference was made. The device makes its own references with BLAKE3 (:data:`SLOT_ALGORITHM`):
the install hashes the plaintext as it writes the slot, and every cold boot hashes the slot again,
so this pass is on both paths; BLAKE3 (SIMD, one thread) runs ~4x SHA-256's speed here (SHA-NI).
SHA-256 references still check: states written before (their bare ``sha256`` field), and digests
a caller gives (a bare 64-hex digest is a SHA-256).

The digest is not a trust decision about the image's origin (the payload pipeline checked the
record's SHA-256 and Merkle root over the ciphertext, and its AES-GCM tags, before a byte was
written): it tells the boot check whether the slot still holds those bytes (docs/THREATS.md).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any, Protocol

import blake3

from .errors import BadInstallRequest

__all__ = ["ALGORITHMS", "SLOT_ALGORITHM", "Hasher", "algorithm_of", "digest_of", "hasher", "is_digest", "make",
           "normalize"]


class Hasher(Protocol):
    def update(self, data: Any, /) -> Any: ...

    def hexdigest(self) -> str: ...


#: the algorithms a slot digest may name, by name
ALGORITHMS: dict[str, Callable[[], Hasher]] = {"blake3": blake3.blake3, "sha256": hashlib.sha256}
#: the algorithm of the references the device makes
SLOT_ALGORITHM = "blake3"

_DIGEST_RE = re.compile(rf"^({'|'.join(ALGORITHMS)}):[0-9a-f]{{64}}$")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")


def hasher(algorithm: str = SLOT_ALGORITHM) -> Hasher:
    """A new hash object of ``algorithm``."""
    return ALGORITHMS[algorithm]()


def make(algorithm: str, hexdigest: str) -> str:
    """``ALGORITHM:HEX``."""
    return f"{algorithm}:{hexdigest}"


def digest_of(data: bytes, algorithm: str = SLOT_ALGORITHM) -> str:
    """The slot digest of ``data``."""
    h = hasher(algorithm)
    h.update(data)
    return make(algorithm, h.hexdigest())


def algorithm_of(digest: str) -> str:
    """The algorithm a (normalized) slot digest names."""
    return digest.split(":", 1)[0]


def normalize(value: bytes | str) -> str:
    """A slot digest as ``ALGORITHM:HEX``: given so, or bare (32 bytes or 64 hex digits, ``0x``
    allowed), which is read as a SHA-256 (what states before slot digests recorded).

    Raises:
        BadInstallRequest: another form, or an algorithm the device does not know.
    """
    if isinstance(value, bytes | bytearray):
        if len(value) != 32:
            raise BadInstallRequest(f"a slot digest must be 32 bytes, got {len(value)}")
        return make("sha256", bytes(value).hex())
    if isinstance(value, str):
        text = value.strip().lower()
        if _DIGEST_RE.match(text):
            return text
        hexpart = text[2:] if text.startswith("0x") else text
        if _HEX64_RE.match(hexpart):
            return make("sha256", hexpart)
    raise BadInstallRequest(f"bad slot digest {value!r}: ALGORITHM:HEX ({' or '.join(ALGORITHMS)}, 64 hex "
                            "digits) or a bare SHA-256")


def is_digest(value: object) -> bool:
    """Whether ``value`` is a normalized slot digest."""
    return isinstance(value, str) and _DIGEST_RE.match(value) is not None
