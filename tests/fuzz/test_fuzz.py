"""Every parser of untrusted input, briefly fuzzed in the default test run: the seed corpus, then
JSON-aware and byte-level mutations of it and plain random bytes (hypothesis draws the RNG seeds,
so a failure names its reproducer). Each input must parse or raise the project's own errors.
Longer, coverage-guided runs: ``scripts/fuzz`` (atheris).
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entities.bundle import BundleFormatError, BundleHeader, read_header
from entities.firmware_consumer.verify import Evidence
from ledger_node.proofs import parse_proof_json
from ledger_node.record import ReleaseData, ReleaseRecord
from tests.fuzz import run
from tests.fuzz.mutate import mutate
from tests.fuzz.targets import CORPUS, TARGETS, Finding, run_one, seeds

FAST = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("target", list(TARGETS))
def test_seed_corpus_is_there_and_passes(target: str) -> None:
    corpus = seeds(target)
    assert len(corpus) >= 5, f"seed corpus {CORPUS / target} missing: python -m tests.fuzz.make_corpus"
    for data in corpus:
        run_one(target, data)


def test_real_seeds_parse() -> None:
    """The corpus holds valid artefacts (so mutations start from inputs that reach deep checks)."""
    header, offset = read_header(io.BytesIO((CORPUS / "bundle_header" / "bundle-0.fwb").read_bytes()))
    assert offset > 10 and header.record.data.product == "main-fw"
    assert BundleHeader.from_json(json.loads((CORPUS / "bundle_header" / "header-1.json").read_bytes()))
    ev = Evidence.from_json(json.loads((CORPUS / "evidence_json" / "evidence-0.json").read_bytes()))
    assert len(ev.attestations) >= 1 and ev.record.data.product == "main-fw"
    proof = parse_proof_json(json.loads((CORPUS / "proof_json" / "proof-1.json").read_bytes()))
    assert proof.storage_proofs and len(proof.address) == 20
    assert ReleaseData.decode((CORPUS / "record_codec" / "data-1.bin").read_bytes()).dependencies
    assert ReleaseRecord.from_json(json.loads((CORPUS / "record_codec" / "record-0.json").read_bytes()))


@pytest.mark.parametrize("target", list(TARGETS))
@FAST
@given(seed=st.integers(0, 2**64 - 1), rounds=st.integers(1, 4))
def test_mutated_seeds(target: str, seed: int, rounds: int) -> None:
    rng = random.Random(seed)
    run_one(target, mutate(rng.choice(seeds(target)), rng, rounds))


@pytest.mark.parametrize("target", list(TARGETS))
@FAST
@given(data=st.binary(max_size=1024))
def test_random_bytes(target: str, data: bytes) -> None:
    run_one(target, data)


def test_found_crashes_stay_fixed() -> None:
    """Findings of the first fuzz runs (JSON ``Infinity`` where an integer belongs raised
    OverflowError from ``int()``), kept as regression inputs."""
    ev = json.loads((CORPUS / "evidence_json" / "evidence-0.json").read_bytes())
    ev["attestations"][0]["chain_id"] = float("inf")
    run_one("evidence_json", json.dumps(ev).encode())
    rec = json.loads((CORPUS / "record_codec" / "record-0.json").read_bytes())
    rec["publish_time"] = float("inf")
    run_one("record_codec", json.dumps(rec).encode())


def test_a_foreign_exception_is_a_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(obj: object) -> None:
        raise KeyError("boom")

    monkeypatch.setattr("tests.fuzz.targets.parse_proof_json", broken)
    with pytest.raises(Finding, match="KeyError"):
        run_one("proof_json", b"{}")


def test_random_engine_runs_and_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``scripts/fuzz --engine random`` for a moment: no finding on the real parsers; a broken one
    leaves a reproducer that ``--repro`` replays."""
    crashes = tmp_path / "crashes"
    assert run.main(["--engine", "random", "--seconds", "1", "--seed", "7", "--crashes", str(crashes),
                     "record_codec"]) == 0

    def broken(data: bytes) -> None:
        if len(data) > 3:
            raise Finding("fake finding")

    monkeypatch.setitem(TARGETS, "record_codec", broken)
    assert run.main(["--engine", "random", "--seconds", "2", "--seed", "7", "--crashes", str(crashes),
                     "record_codec"]) == 1
    (found,) = crashes.iterdir()
    assert run.main(["--repro", str(found), "record_codec"]) == 1


def test_a_lone_surrogate_in_a_header_is_a_bundle_error() -> None:
    """A header whose JSON escapes a lone surrogate (``\\ud800``, valid JSON, not valid Unicode)
    is refused ``bad_bundle``, not a ``UnicodeEncodeError`` (found by atheris in CI)."""
    body = (CORPUS / "bundle_header" / "regress-lone-surrogate.json").read_bytes()
    assert b"\\ud800" in body
    with pytest.raises(BundleFormatError) as err:
        BundleHeader.from_json(json.loads(body))
    assert err.value.code == "bad_bundle" and "lone surrogate" in str(err.value)
