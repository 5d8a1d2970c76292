"""Merkle-Patricia trie proofs, as ``trie.HexaryTrie.get_from_proof`` reads them.

A proof is the list of RLP-encoded nodes on the path from the root to a key (``eth_getProof``'s
``accountProof`` or ``storageProof[i].proof``). Nodes are found by their keccak; nodes shorter
than 32 bytes are embedded in their parent. The walk ends at the key's value, or proves the key
absent (a blank slot, a leaf or extension whose path diverges).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from . import rlp
from .hashing import keccak

__all__ = ["BLANK_ROOT", "ProofError", "value_from_proof"]

#: the root of the empty trie: keccak(rlp(b""))
BLANK_ROOT: Final = keccak(rlp.encode(b""))


class ProofError(ValueError):
    """The proof does not lead from the root to the key (missing, unlinked or malformed nodes)."""


def _nibbles(key: bytes) -> list[int]:
    out: list[int] = []
    for b in key:
        out += (b >> 4, b & 0x0F)
    return out


def _compact(path: bytes) -> tuple[list[int], bool]:
    """Hex-prefix decoding: the nibbles of a leaf or extension path, and whether it is a leaf."""
    if not path:
        raise ProofError("empty node path")
    flag = path[0] >> 4
    if flag > 3:
        raise ProofError(f"bad hex-prefix flag {flag}")
    nibbles = _nibbles(path)[1:] if flag & 1 else _nibbles(path)[2:]
    if not flag & 1 and path[0] & 0x0F:
        raise ProofError("hex-prefix padding nibble is not zero")
    return nibbles, bool(flag & 2)


def value_from_proof(root: bytes, key: bytes, proof: Sequence[bytes]) -> bytes:
    """The value under ``key`` in the trie whose root hash is ``root``; ``b""`` when proven absent.

    Raises:
        ProofError: a node on the path is missing from ``proof``, not canonical RLP, or not a trie
            node, or the path leads to a node instead of a value.
    """
    nodes: dict[bytes, rlp.Item] = {}
    for index, raw in enumerate(proof):
        try:
            nodes[keccak(raw)] = rlp.decode(raw)
        except rlp.RLPError as exc:
            raise ProofError(f"proof node {index} is not valid RLP: {exc}") from None
    if root == BLANK_ROOT:
        return b""
    path = _nibbles(key)
    ref: rlp.Item = root
    for _ in range(2 * len(key) + 2):  # each step consumes a nibble, except at most one extension before each
        if isinstance(ref, bytes):
            if ref == b"":
                return b""
            if len(ref) != 32:
                raise ProofError(f"node reference of {len(ref)} bytes")
            if ref not in nodes:
                raise ProofError(f"missing proof node with hash 0x{ref.hex()}")
            node = nodes[ref]
        else:
            node = ref  # embedded (its RLP is shorter than 32 bytes)
        if not isinstance(node, list):
            raise ProofError("a trie node is a list")
        if len(node) == 17:
            if not path:
                value = node[16]
                if not isinstance(value, bytes):
                    raise ProofError("branch value is not bytes")
                return value
            ref, path = node[path[0]], path[1:]
            continue
        if len(node) != 2 or not isinstance(node[0], bytes):
            raise ProofError(f"a trie node has 2 or 17 items, not {len(node)}")
        node_path, leaf = _compact(node[0])
        if leaf:
            if node_path != path:
                return b""
            if not isinstance(node[1], bytes):
                raise ProofError("proof leads to a node, not to a value")
            return node[1]
        if not node_path:
            raise ProofError("extension with an empty path")
        if path[:len(node_path)] != node_path:
            return b""
        ref, path = node[1], path[len(node_path):]
    raise ProofError("path longer than the key")
