"""Add-on boards in admission records and manufacture certificates (X.1368 Appendix II, P4, C11.3 d):
entities/protocol/admission.py, entities/admission_store.py.

A record lists the device's add-on boards (hardware class ids) in its optional signed field
``addons``; a record signed before boards existed (no such field) still parses and verifies. A
board added to, removed from or swapped in a record breaks its signature; a malformed board list
is refused with ``bad_addons``; a board a device declares that its admission does not list is
refused with ``board_not_admitted``, and nothing is recorded.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from entities.admission_store import AdmissionStore
from entities.fleet_ca import init_ca
from entities.protocol.admission import (
    AdmissionError,
    NotAdmitted,
    certificate_admission,
    decide,
    issue_device_certificate,
    load_certificate_authorities,
    parse_addons,
    parse_admission,
    sign_admission,
    verify_admission,
)
from ledger_node.errors import ConfigError

OPERATOR = Account.from_key(b"\x11" * 32)
DEVICE = Account.from_key(b"\x33" * 32)

#: a record signed by the admission code as it was before add-on boards (serial and time fixed)
OLD_RECORD: dict[str, Any] = {
    "device_id": "dev-old", "address": "0x5CbDd86a2FA8Dc4bDdd8a8f69dBa48572EeC07FB", "hardware": "cam-r1",
    "labels": {"region": "eu-west"}, "status": "admitted", "serial": 1700000000000000, "issued_at": 1700000000,
    "issuer": "0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A",
    "signature": "0xe1b18e3f69f1482116a5a70d6cfe3577bcd348d8a772212c9803ad38bbd72aff7607d4d36468def08bf3363465729a"
                 "c7bf9e18f04e9bb05dd0d65b5e1d700f5c1c",
    "source": "operator"}


@pytest.fixture
def store(tmp_path: Path) -> AdmissionStore:
    s = AdmissionStore(tmp_path / "admissions.sqlite")
    yield s
    s.close()


def test_a_record_signed_before_boards_existed_still_verifies_and_has_no_boards(store: AdmissionStore) -> None:
    adm = verify_admission(parse_admission(OLD_RECORD), [OPERATOR.address])
    assert (adm.device_id, adm.address, adm.addons) == ("dev-old", DEVICE.address, ())
    assert "addons" not in adm.to_json()  # the same record goes back on the wire
    assert verify_admission(parse_admission({**OLD_RECORD, "addons": []}), [OPERATOR.address]).addons == ()
    applied, _ = store.receive([OLD_RECORD], [OPERATOR.address], time.time())
    assert [a.device_id for a in applied] == ["dev-old"]
    assert store.get("dev-old") == adm and decide(store, "dev-old", DEVICE.address).addons == ()


def test_a_record_with_boards_round_trips_through_a_store(store: AdmissionStore) -> None:
    rec = sign_admission(OPERATOR, "dev-01", DEVICE.address, "cam-r1", {"region": "eu-west"},
                         addons=["sens-b2", "sens-b1"])
    assert rec.addons == ("sens-b1", "sens-b2") and rec.to_json()["addons"] == ["sens-b1", "sens-b2"]
    back = verify_admission(parse_admission(rec.to_json()), [OPERATOR.address])
    assert back == rec
    store.receive([rec.to_json()], [OPERATOR.address], time.time())
    assert store.get("dev-01") == rec and store.by_address(DEVICE.address) == rec
    assert decide(store, "dev-01", DEVICE.address, addons=["sens-b1"]).addons == ("sens-b1", "sens-b2")


@pytest.mark.parametrize("change", ["add", "remove", "swap", "drop_field"])
def test_tampered_boards_break_the_signature(change: str, store: AdmissionStore) -> None:
    rec = sign_admission(OPERATOR, "dev-01", DEVICE.address, "cam-r1", addons=["sens-b1"]).to_json()
    old = sign_admission(OPERATOR, "dev-02", DEVICE.address, "cam-r1").to_json()
    tampered = {"add": {**rec, "addons": ["sens-b1", "sens-b2"]}, "remove": {**rec, "addons": []},
                "swap": {**rec, "addons": ["sens-b2"]},
                "drop_field": {k: v for k, v in rec.items() if k != "addons"}}[change]
    with pytest.raises(AdmissionError) as exc:
        verify_admission(parse_admission(tampered), [OPERATOR.address])
    assert exc.value.code == "bad_signature"
    # a board grafted onto a record signed without any: refused too, and the batch applies nothing
    with pytest.raises(AdmissionError) as exc:
        store.receive([old, {**old, "addons": ["sens-b1"]}], [OPERATOR.address], time.time())
    assert exc.value.code == "bad_signature" and "record 1" in str(exc.value)
    assert store.all() == []


@pytest.mark.parametrize("addons", ["sens-b1", {"sens-b1": "x"}, [1], [""], ["sens b1"], ["sens-b1@1"],
                                    ["a/b"], ["x" * 65], ["sens-b1", "sens-b1"], ["cam-r1"],
                                    [f"b{i}" for i in range(17)]])
def test_bad_board_entries_are_refused_with_bad_addons(addons: object) -> None:
    rec = sign_admission(OPERATOR, "dev-01", DEVICE.address, "cam-r1").to_json()
    with pytest.raises(AdmissionError) as exc:
        parse_admission({**rec, "addons": addons})
    assert exc.value.code == "bad_addons"
    with pytest.raises(AdmissionError) as exc:
        sign_admission(OPERATOR, "dev-01", DEVICE.address, "cam-r1", addons=addons)  # type: ignore[arg-type]
    assert exc.value.code == "bad_addons"
    assert parse_addons(["b", "a"], "cam-r1") == ("a", "b")


def test_a_declared_board_the_admission_does_not_list_is_refused(store: AdmissionStore) -> None:
    t = time.time()
    store.apply([sign_admission(OPERATOR, "dev-01", DEVICE.address, "cam-r1", addons=["sens-b1"], now=t)], t)
    store.apply([sign_admission(OPERATOR, "dev-02", Account.from_key(b"\x34" * 32).address, "cam-r1", now=t)], t)
    assert decide(store, "dev-01", DEVICE.address, addons=[]).device_id == "dev-01"
    for device_id, key, declared in (("dev-01", DEVICE.address, ["sens-b1", "sens-b2"]),
                                     ("dev-02", Account.from_key(b"\x34" * 32).address, ["sens-b1"])):
        with pytest.raises(NotAdmitted) as exc:
            decide(store, device_id, key, addons=declared)
        assert exc.value.code == "board_not_admitted" and "sens-b" in str(exc.value)


# ----------------------------------------------------------------------------- manufacture certificates


def test_a_certificate_carries_the_boards_fitted_at_manufacture(tmp_path: Path, store: AdmissionStore) -> None:
    init_ca(tmp_path / "mca", name="acme manufacturing CA")
    cas = load_certificate_authorities([tmp_path / "mca" / "ca.crt"])
    cert = issue_device_certificate(tmp_path / "mca", "dev-07", bytes(DEVICE.key), "cam-r1", tmp_path / "d.crt",
                                    addons=["sens-b1"]).read_text()
    adm = certificate_admission(cert, cas)
    assert (adm.addons, adm.source) == (("sens-b1",), "certificate")
    known = {"cam-r1", "sens-b1"}
    assert store.check("dev-07", DEVICE.address, certificate=cert, cas=cas, hardware_known=known.__contains__,
                       now=time.time(), addons=["sens-b1"]).addons == ("sens-b1",)
    assert store.get("dev-07") is not None and store.get("dev-07").addons == ("sens-b1",)  # type: ignore[union-attr]
    with pytest.raises(NotAdmitted) as exc:  # a board the certificate does not name
        store.check("dev-07", DEVICE.address, certificate=cert, cas=cas, hardware_known=known.__contains__,
                    now=time.time(), addons=["sens-b2"])
    assert exc.value.code == "board_not_admitted"
    fresh = AdmissionStore(tmp_path / "fresh.sqlite")
    try:
        with pytest.raises(NotAdmitted) as exc:  # the board's class is not on the ledger
            fresh.check("dev-07", DEVICE.address, certificate=cert, cas=cas, hardware_known={"cam-r1"}.__contains__,
                        now=time.time())
        assert exc.value.code == "unknown_hardware" and "sens-b1" in str(exc.value)
        assert fresh.all() == []
    finally:
        fresh.close()
    with pytest.raises(ConfigError):
        issue_device_certificate(tmp_path / "mca", "dev-08", bytes(DEVICE.key), "cam-r1", tmp_path / "e.crt",
                                 addons=["cam-r1"])
    assert not (tmp_path / "e.crt").exists()
