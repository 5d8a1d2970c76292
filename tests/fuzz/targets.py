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
from ledger_node.errors import FwledgerError
from ledger_node.proofs import parse_proof_json
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


def _expect_own_errors(fn: Callable[[], object], what: str) -> None:
    try:
        fn()
    except FwledgerError:
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


TARGETS: dict[str, Callable[[bytes], None]] = {
    "bundle_header": bundle_header,
    "proof_json": proof_json,
    "evidence_json": evidence_json,
    "record_codec": record_codec,
}


def seeds(target: str) -> list[bytes]:
    """The target's seed corpus (``tests/fuzz/corpus/<target>/``, made by ``tests/fuzz/make_corpus.py``)."""
    folder = CORPUS / target
    return [p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()] if folder.is_dir() else []


def run_one(target: str, data: bytes) -> None:
    """Run one input through one target (raises :class:`Finding` on a foreign exception)."""
    TARGETS[target](data)
