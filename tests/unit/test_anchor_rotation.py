"""Trust anchor statements (entities/anchor_rotation.py): the shape, the signatures, and every
refusal code of the device's decision, each a small scenario (python-tuf's root rotation tests:
a new root needs the old root's threshold and its own).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st

from entities.firmware_consumer.verify import TrustAnchors
from entities.protocol.anchor_rotation import (
    MAX_SIGNATURES,
    AnchorsError,
    check_rotation,
    new_statement,
    parse_statement,
    sign_statement,
    statement_message,
)

A, B, C, D = (Account.from_key(bytes([n]) * 32) for n in (0x31, 0x32, 0x33, 0x34))
CHAIN = 1337
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def anchors_json(trackers: list[Any], quorum: int, *, chain_id: int = CHAIN, relays: tuple[str, ...] = ()
                 ) -> dict[str, Any]:
    return {"format": 1, "chain_id": chain_id, "registry": Account.from_key(b"\x35" * 32).address,
            "registry_block": 3, "code_hash": "0x" + "ab" * 32,
            "slots": {"releases": 1, "vendor_address": 2, "vendor_name_hash": 3, "policies": 4},
            "trackers": [t.address for t in trackers], "quorum": quorum, "max_header_age": 300.0,
            "max_clock_skew": 120.0, "relays": list(relays)}


def statement(serial: int, trackers: list[Any], quorum: int, signers: list[Any], **kw: Any) -> dict[str, Any]:
    stmt = new_statement(anchors_json(trackers, quorum, **kw), serial)
    for s in signers:
        stmt = sign_statement(s, stmt)
    return stmt


def rotate(stmt: Any, *, serial: int = 0, chain_id: int = CHAIN, current: tuple[Any, ...] = (A, B), quorum: int = 2
           ) -> Any:
    """The decision of a device at ``serial`` trusting ``current`` with ``quorum``."""
    return check_rotation(stmt, serial=serial, chain_id=chain_id, trackers=[t.address for t in current],
                          quorum=quorum)


def code_of(stmt: Any, **kw: Any) -> str:
    with pytest.raises(AnchorsError) as exc:
        rotate(stmt, **kw)
    return exc.value.code


def test_the_anchors_json_is_trust_anchors_json() -> None:
    """The statement's anchors are exactly what a device's TrustAnchors reads and writes."""
    doc = anchors_json([B, C], 2)
    assert TrustAnchors.from_json(doc).to_json() == doc


def test_rotation_signed_by_k_current_and_k_new_keys_is_accepted() -> None:
    stmt = statement(1, [B, C], 2, [A, B, C])
    got = rotate(stmt)
    assert got.serial == 1 and got.trackers == (B.address, C.address) and got.signers() == {A.address, B.address,
                                                                                            C.address}
    # B counts for both sets: {A, B} current and {B, C} new
    assert rotate(statement(1, [B, C], 2, [A, B, C])).quorum == 2


def test_one_current_key_is_not_enough() -> None:
    assert code_of(statement(1, [B, C], 2, [B, C])) == "anchors_quorum"   # A missing: 1 of {A, B}
    assert code_of(statement(1, [C, D], 2, [A, C, D])) == "anchors_quorum"


def test_new_keys_alone_cannot_install_themselves() -> None:
    assert code_of(statement(1, [C, D], 2, [C, D])) == "anchors_quorum"


def test_new_keys_must_prove_they_are_held() -> None:
    """The current trackers alone cannot name keys nobody holds (or that an attacker picked)."""
    assert code_of(statement(1, [B, C], 2, [A, B])) == "anchors_quorum"
    assert code_of(statement(1, [C, D], 2, [A, B])) == "anchors_quorum"


def test_replayed_or_older_serial_is_refused() -> None:
    stmt = statement(3, [B, C], 2, [A, B, C])
    assert code_of(stmt, serial=3) == "anchors_not_newer"
    assert code_of(stmt, serial=7) == "anchors_not_newer"
    assert rotate(stmt, serial=2).serial == 3


def test_another_chain_is_refused() -> None:
    stmt = statement(1, [B, C], 2, [A, B, C], chain_id=CHAIN + 1)
    assert code_of(stmt) == "anchors_chain"


def test_tampered_anchors_after_signing_count_no_signature() -> None:
    stmt = statement(1, [B, C], 2, [A, B, C])
    for change in ({"quorum": 1}, {"max_header_age": 1e9}, {"relays": [D.address]},
                   {"registry": D.address}, {"trackers": [B.address, C.address, D.address]}):
        bad = copy.deepcopy(stmt)
        bad["anchors"].update(change)
        assert code_of(bad) == "anchors_quorum", change
    bad = copy.deepcopy(stmt)
    bad["serial"] = 2  # the serial is signed too
    assert code_of(bad) == "anchors_quorum"


def test_a_signature_claimed_for_another_key_counts_for_nobody() -> None:
    stmt = statement(1, [B, C], 2, [A, B, C])
    stmt["signatures"][0]["signer"] = D.address  # A's signature, claimed as D's
    assert code_of(stmt) == "anchors_quorum"


def test_a_malleated_signature_counts_for_nobody() -> None:
    stmt = statement(1, [B, C], 2, [A, B, C])
    raw = bytes.fromhex(stmt["signatures"][0]["signature"][2:])
    r, s, v = raw[:32], int.from_bytes(raw[32:64], "big"), raw[64]
    twin = r + (_SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])
    stmt["signatures"][0]["signature"] = "0x" + twin.hex()
    assert code_of(stmt) == "anchors_quorum"


def test_signing_twice_with_one_key_replaces_its_signature() -> None:
    stmt = statement(1, [B, C], 2, [A, A, B])
    assert [s["signer"] for s in stmt["signatures"]] == [A.address, B.address]


@pytest.mark.parametrize("mutate", [
    lambda s: s.update(extra=1),
    lambda s: s.pop("signatures"),
    lambda s: s.update(kind="fwledger-root"),
    lambda s: s.update(serial=0),
    lambda s: s.update(serial="1"),
    lambda s: s.update(serial=True),
    lambda s: s.update(serial=1 << 63),
    lambda s: s["anchors"].update(extra=1),
    lambda s: s["anchors"].pop("relays"),
    lambda s: s["anchors"].update(chain_id="1337"),
    lambda s: s["anchors"].update(quorum=True),
    lambda s: s["anchors"].update(quorum=3),
    lambda s: s["anchors"].update(quorum=0),
    lambda s: s["anchors"].update(trackers=[]),
    lambda s: s["anchors"].update(trackers=[A.address.lower()]),
    lambda s: s["anchors"].update(trackers=[A.address, A.address]),
    lambda s: s["anchors"].update(relays=[A.address]),
    lambda s: s["anchors"].update(max_header_age=0),
    lambda s: s["anchors"].update(max_header_age=float("nan")),
    lambda s: s["anchors"].update(format=2),
    lambda s: s["anchors"].update(code_hash="0x12"),
    lambda s: s["anchors"].update(slots=[]),
    lambda s: s.update(signatures={}),
    lambda s: s["signatures"].append(dict(s["signatures"][0])),           # a signer twice
    lambda s: s["signatures"][0].update(extra=1),
    lambda s: s["signatures"][0].update(signer=s["signatures"][0]["signer"].lower()),
    lambda s: s["signatures"][0].update(signature="0x00"),
    lambda s: s.update(signatures=[{"signer": A.address, "signature": "0x" + "00" * 65}] * (MAX_SIGNATURES + 1)),
], ids=lambda f: "")
def test_malformed_statements_have_one_code(mutate: Any) -> None:
    stmt = statement(1, [A, B], 1, [A, B])
    mutate(stmt)
    with pytest.raises(AnchorsError) as exc:
        parse_statement(stmt)
    assert exc.value.code == "anchors_malformed"
    assert code_of(stmt) == "anchors_malformed"


@pytest.mark.parametrize("obj", [None, [], "x", 1, {"kind": "fwledger-anchors"}])
def test_not_a_statement(obj: Any) -> None:
    assert code_of(obj) == "anchors_malformed"


@settings(max_examples=40, deadline=None)
@given(serial=st.integers(1, (1 << 63) - 1), quorum=st.integers(1, 3))
def test_the_signed_text_binds_kind_serial_and_chain(serial: int, quorum: int) -> None:
    stmt = statement(serial, [B, C, D], quorum, [A, B, C, D])
    assert parse_statement(stmt).to_json() == stmt
    msg = statement_message(serial, stmt["anchors"])
    assert msg.startswith(b"fwledger-anchors-v1\nfwledger-anchors\n" + f"{serial}\n{CHAIN}\n".encode())
    assert rotate(stmt, serial=serial - 1).serial == serial
