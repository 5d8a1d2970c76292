"""Merkle root over an image's fixed-size chunks (Table II.1 "Merkle root"). Pure.

Leaves are SHA-256(0x00 || chunk) over consecutive ``CHUNK_SIZE`` chunks (the last may be
shorter); an inner node is SHA-256(0x01 || left || right); a node without a sibling is promoted
unchanged to the next level (RFC 6962 style domain separation, so a leaf can never pose as a
node). A device can check each chunk as it streams against a proof path to this root.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import RecordError

__all__ = ["CHUNK_SIZE", "leaf_hash", "merkle_root", "merkle_root_of_file", "node_hash"]

CHUNK_SIZE = 64 * 1024


def leaf_hash(chunk: bytes | bytearray | memoryview) -> bytes:
    """SHA-256(0x00 || chunk), without copying the chunk (a view of a received buffer hashes in place)."""
    h = hashlib.sha256(b"\x00")
    h.update(chunk)
    return h.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _root(leaves: Sequence[bytes]) -> bytes:
    if not leaves:
        raise RecordError("an empty image has no Merkle root")
    level = list(leaves)
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def merkle_root(chunks: Iterable[bytes]) -> bytes:
    """Root over already-cut chunks.

    Raises:
        RecordError: no chunks.
    """
    return _root([leaf_hash(c) for c in chunks])


def merkle_root_of_file(path: Path, chunk_size: int = CHUNK_SIZE) -> bytes:
    """Root over a file's chunks, read with constant memory per chunk.

    Raises:
        RecordError: the file is empty.
        OSError: the file cannot be read.
    """
    leaves = []
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            leaves.append(leaf_hash(chunk))
    return _root(leaves)
