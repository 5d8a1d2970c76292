"""Fuzz targets: each parser of untrusted bytes must either parse or raise the project's own
errors (:class:`ledger_node.errors.FwledgerError` and its subclasses: ``BundleError``,
``ProofError``, ``RecordError``, ``UpdateRefused``...), never anything else: no ``KeyError``,
``TypeError``, ``RecursionError``, ``OverflowError`` or a library's exception reaching a caller.

A target is a function of one ``bytes``; it raises :class:`Finding` when the parser raised a
foreign exception (chained as ``__cause__``) and returns otherwise. Inputs that are not JSON at all
are skipped by the JSON targets (decoding JSON is the transport's job, not the parser's), but
every JSON value reaches the parser: objects, lists, numbers, deep nesting.

Run them with ``scripts/fuzz`` (atheris, coverage guided) or through ``tests/fuzz/test_fuzz.py``
(seed corpus + mutations, hypothesis; part of the default test run).
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from entities.bundle import BUNDLE_MAGIC, BUNDLE_VERSION, BundleHeader, read_header
from entities.firmware_consumer.verify import Evidence
from ledger_node.codec import abi, rlp
from ledger_node.codec.hashing import keccak
from ledger_node.errors import FwledgerError
from ledger_node.proofs import parse_proof_json, verify_account_proof, verify_storage_proof
from ledger_node.record import ReleaseData, ReleaseRecord

__all__ = ["CORPUS", "TARGETS", "Finding", "run_one", "seeds"]

CORPUS = Path(__file__).resolve().parent / "corpus"

#: JSON nested deeper than this is refused by the callers' JSON decoding; the parsers are fed
#: what json.loads returns
_MAX_JSON = 1 << 20


class Finding(AssertionError):
    """A parser raised something other than the project's own errors."""


def _json(data: bytes) -> tuple[bool, Any]:
    if len(data) > _MAX_JSON:
        return False, None
    try:
        return True, json.loads(data)
    except (ValueError, RecursionError):
        return False, None


def _expect_own_errors(fn: Callable[[], object], what: str,
                       own: tuple[type[Exception], ...] = (FwledgerError,)) -> None:
    try:
        fn()
    except own:
        pass
    except Exception as exc:
        raise Finding(f"{what} raised {type(exc).__name__}: {exc!r}"[:500]) from exc


# ----------------------------------------------------------------------------- the targets


def bundle_header(data: bytes) -> None:
    """``read_header`` on the bytes as a whole bundle, then on them as the header body behind a
    valid prefix (so mutations reach the JSON checks), then ``BundleHeader.from_json`` on the JSON."""
    _expect_own_errors(lambda: read_header(io.BytesIO(data)), "read_header(bundle bytes)")
    framed = struct.pack(">4sHI", BUNDLE_MAGIC, BUNDLE_VERSION, len(data)) + data
    _expect_own_errors(lambda: read_header(io.BytesIO(framed)), "read_header(framed header body)")
    ok, obj = _json(data)
    if ok:
        _expect_own_errors(lambda: BundleHeader.from_json(obj), "BundleHeader.from_json")


def proof_json(data: bytes) -> None:
    """``parse_proof_json`` on any JSON value (an ``eth_getProof`` answer from an untrusted node)."""
    ok, obj = _json(data)
    if ok:
        _expect_own_errors(lambda: parse_proof_json(obj), "parse_proof_json")


def evidence_json(data: bytes) -> None:
    """``Evidence.from_json`` on any JSON value (what an untrusted tracker hands a device)."""
    ok, obj = _json(data)
    if ok:
        _expect_own_errors(lambda: Evidence.from_json(obj), "Evidence.from_json")


def record_codec(data: bytes) -> None:
    """``ReleaseData.decode`` on the bytes (a ``Published`` event's data section), and
    ``ReleaseRecord.from_json`` when they are JSON."""
    _expect_own_errors(lambda: ReleaseData.decode(data), "ReleaseData.decode")
    ok, obj = _json(data)
    if ok:
        _expect_own_errors(lambda: ReleaseRecord.from_json(obj), "ReleaseRecord.from_json")


def _walk_proof(data: bytes) -> None:
    nodes = rlp.decode(data)
    if not isinstance(nodes, list) or not nodes or not all(isinstance(n, bytes) for n in nodes):
        return
    proof = [n for n in nodes if isinstance(n, bytes)]
    root = keccak(proof[0])  # rooted at the first node, so the walk goes into the mutated nodes
    verify_account_proof(root, keccak(proof[-1])[:20], proof)
    verify_storage_proof(root, int.from_bytes(keccak(proof[-1]), "big"), proof)


def light_codecs(data: bytes) -> None:
    """The device's own decoders (``ledger_node.codec``) on untrusted bytes: RLP, the record's
    ABI, and trie proofs (the bytes as an RLP list of nodes, rooted at the first) walked for an
    account and a slot. Each refuses with its own error (``RLPError``, ``AbiError``, ``ProofError``)."""
    _expect_own_errors(lambda: rlp.decode(data), "rlp.decode", (rlp.RLPError,))
    _expect_own_errors(lambda: abi.decode(["string[]", "(string,uint64,uint64)[]"], data), "abi.decode",
                       (abi.AbiError,))
    _expect_own_errors(lambda: _walk_proof(data), "trie proof walk", (FwledgerError, rlp.RLPError))


TARGETS: dict[str, Callable[[bytes], None]] = {
    "bundle_header": bundle_header,
    "proof_json": proof_json,
    "evidence_json": evidence_json,
    "record_codec": record_codec,
    "light_codecs": light_codecs,
}


def seeds(target: str) -> list[bytes]:
    """The target's seed corpus (``tests/fuzz/corpus/<target>/``, made by ``tests/fuzz/make_corpus.py``)."""
    folder = CORPUS / target
    return [p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()] if folder.is_dir() else []


def run_one(target: str, data: bytes) -> None:
    """Run one input through one target (raises :class:`Finding` on a foreign exception)."""
    TARGETS[target](data)
