"""Header attestations (k of n trackers, maximum age): the light node's root of trust.

Covers the freeze attack (stale header) and headers attested by fewer than k trackers, which
issue 4's device will build on. Uses real keys and real block headers of the embedded chain.
"""

from __future__ import annotations

import dataclasses

import pytest
from eth_account import Account

from ledger_node.attestation import (
    Attestation,
    AttestationError,
    attest,
    attestation_digest,
    attestation_signer,
    trusted_header,
)
from ledger_node.errors import ProofError
from ledger_node.header import decode_header, header_rlp_from_json
from ledger_node.providers import connect

REGISTRY = "0x" + "42" * 20
CHAIN_ID = 131277322940537  # eth-tester's chain id (any id works: attestations are bound to it)
TRACKERS = [Account.from_key(bytes([i]) * 32) for i in range(1, 4)]


@pytest.fixture(scope="module")
def headers() -> list[bytes]:
    w3 = connect("embedded")
    w3.testing.mine(3)  # type: ignore[attr-defined]
    out = []
    for n in (2, 3):
        raw = w3.provider.make_request("eth_getBlockByNumber", [hex(n), False])["result"]  # type: ignore[arg-type]
        out.append(header_rlp_from_json(raw))
    return out


def atts(rlp: bytes, signers=TRACKERS, chain_id: int = CHAIN_ID) -> list[Attestation]:  # type: ignore[no-untyped-def]
    h = decode_header(rlp)
    return [attest(a, h, chain_id=chain_id, registry=REGISTRY) for a in signers]


def trust(rlp: bytes, attestations, *, quorum: int = 2, age: float = 0.0, max_age: float = 600):  # type: ignore[no-untyped-def]
    now = decode_header(rlp).timestamp + age
    return trusted_header(rlp, attestations, chain_id=CHAIN_ID, registry=REGISTRY,
                          trackers=[t.address for t in TRACKERS], quorum=quorum, now=now, max_age=max_age)


def test_k_of_n_attested_fresh_header_is_trusted(headers: list[bytes]) -> None:
    h = trust(headers[0], atts(headers[0])[:2])
    assert h.hash == decode_header(headers[0]).hash and h.state_root == decode_header(headers[0]).state_root


def test_fewer_than_k_trackers_refused(headers: list[bytes]) -> None:
    with pytest.raises(AttestationError) as exc:
        trust(headers[0], atts(headers[0])[:1])
    assert exc.value.code == "quorum_not_met"


def test_one_tracker_counted_once(headers: list[bytes]) -> None:
    one = atts(headers[0])[0]
    with pytest.raises(AttestationError, match="attested by 1 of"):
        trust(headers[0], [one, one, dataclasses.replace(one)])


def test_unknown_keys_do_not_count(headers: list[bytes]) -> None:
    strangers = [Account.create(), Account.create()]
    with pytest.raises(AttestationError) as exc:
        trust(headers[0], atts(headers[0], strangers) + atts(headers[0])[:1])
    assert exc.value.code == "quorum_not_met"


def test_attestation_of_another_block_does_not_count(headers: list[bytes]) -> None:
    """Mix-and-match: attestations of block 3 do not make block 2 trusted."""
    with pytest.raises(AttestationError) as exc:
        trust(headers[0], atts(headers[1]))
    assert exc.value.code == "quorum_not_met"


def test_forged_fields_break_the_signature(headers: list[bytes]) -> None:
    good = atts(headers[0])
    forged = [dataclasses.replace(a, state_root=b"\x66" * 32) for a in good]
    with pytest.raises(AttestationError) as exc:
        trust(headers[0], forged)
    assert exc.value.code == "quorum_not_met"
    other_chain = atts(headers[0], chain_id=1)
    with pytest.raises(AttestationError):
        trust(headers[0], other_chain)
    assert attestation_digest(good[0]) != attestation_digest(forged[0])


def test_signer_recovered_or_none_for_an_unusable_signature(headers: list[bytes]) -> None:
    att = atts(headers[0])[0]
    assert attestation_signer(att) == TRACKERS[0].address
    assert attestation_signer(dataclasses.replace(att, block_number=att.block_number + 1)) != TRACKERS[0].address
    for sig in (b"", att.signature[:64], att.signature[:64] + b"\x05", b"\x00" * 65):
        assert attestation_signer(dataclasses.replace(att, signature=sig)) is None


def test_stale_header_refused_freeze_attack(headers: list[bytes]) -> None:
    with pytest.raises(AttestationError) as exc:
        trust(headers[0], atts(headers[0]), age=601, max_age=600)
    assert exc.value.code == "stale_header"
    assert trust(headers[0], atts(headers[0]), age=599, max_age=600)


def test_future_header_refused(headers: list[bytes]) -> None:
    with pytest.raises(AttestationError) as exc:
        trust(headers[0], atts(headers[0]), age=-3600)
    assert exc.value.code == "future_header"


def test_header_rlp_must_be_well_formed(headers: list[bytes]) -> None:
    with pytest.raises(ProofError):
        trust(headers[0][:-3], atts(headers[0]))


def test_json_round_trip_and_malformed(headers: list[bytes]) -> None:
    a = atts(headers[0])[0]
    assert Attestation.from_json(a.to_json()) == a
    bad = a.to_json() | {"signature": "0x1234"}
    with pytest.raises(AttestationError) as exc:
        Attestation.from_json(bad)
    assert exc.value.code == "bad_attestation"
    with pytest.raises(AttestationError):
        Attestation.from_json({"chain_id": 1})


def test_impossible_quorum_refused(headers: list[bytes]) -> None:
    with pytest.raises(AttestationError, match="cannot be met"):
        trust(headers[0], atts(headers[0]), quorum=4)
