"""Device admission records, manufacture certificates and the one decision every service takes
(entities/admission.py, entities/admission_store.py): X.1368 P4, C11.3 d and h.

Attacks on the records themselves: a forged or tampered record, one signed by a key that is no
operator of the service, an old record replayed after a decommissioning, a certificate from an
unpinned CA, for another key, or expired. Each is refused with its code and changes nothing.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from eth_account import Account

from entities.admission_store import MAX_RECORDS, AdmissionStore
from entities.fleet_ca import init_ca
from entities.protocol.admission import (
    AdmissionError,
    NotAdmitted,
    certificate_admission,
    decide,
    issue_device_certificate,
    load_certificate_authorities,
    parse_admission,
    parse_labels,
    sign_admission,
    verify_admission,
)
from entities.status_tracker.rollout import bucket, wave_of

OPERATOR = Account.from_key(b"\x11" * 32)
STRANGER = Account.from_key(b"\x22" * 32)
DEVICE = Account.from_key(b"\x33" * 32)
NEW_KEY = Account.from_key(b"\x44" * 32)


@pytest.fixture
def store(tmp_path: Path) -> AdmissionStore:
    s = AdmissionStore(tmp_path / "admissions.sqlite", max_pending=5)
    yield s
    s.close()


def test_a_record_round_trips_and_verifies_against_the_operator_keys_only() -> None:
    rec = sign_admission(OPERATOR, "dev-01", DEVICE.address, "cam-r1", {"region": "eu-west", "group": "pilot"})
    back = verify_admission(parse_admission(rec.to_json()), [OPERATOR.address.lower()])
    assert (back.device_id, back.address, back.hardware, back.region, back.status) == \
        ("dev-01", DEVICE.address, "cam-r1", "eu-west", "admitted")
    with pytest.raises(AdmissionError) as exc:
        verify_admission(back, [STRANGER.address])
    assert exc.value.code == "unknown_operator"
    stranger_rec = sign_admission(STRANGER, "dev-01", STRANGER.address, "cam-r1")
    with pytest.raises(AdmissionError) as exc:
        verify_admission(parse_admission(stranger_rec.to_json()), [OPERATOR.address])
    assert exc.value.code == "unknown_operator"


@pytest.mark.parametrize(("field", "value"), [("address", NEW_KEY.address), ("hardware", "cam-r2"),
                                               ("labels", {"region": "us-east"}), ("status", "decommissioned"),
                                               ("serial", 1), ("issuer", STRANGER.address)])
def test_a_tampered_record_is_refused(field: str, value: object) -> None:
    rec = sign_admission(OPERATOR, "dev-01", DEVICE.address, "cam-r1", {"region": "eu-west"}).to_json()
    rec[field] = value
    with pytest.raises(AdmissionError) as exc:
        verify_admission(parse_admission(rec), [OPERATOR.address, STRANGER.address])
    assert exc.value.code == "bad_signature"


@pytest.mark.parametrize("bad", [
    None, [], {"device_id": "dev-01"},
    {"device_id": "a/b", "address": DEVICE.address, "hardware": "hw", "status": "admitted", "serial": 1,
     "issued_at": 1, "issuer": OPERATOR.address, "signature": "0x" + "00" * 65},
    {"device_id": "d", "address": "0x12", "hardware": "hw", "status": "admitted", "serial": 1, "issued_at": 1,
     "issuer": OPERATOR.address, "signature": "0x" + "00" * 65},
    {"device_id": "d", "address": DEVICE.address, "hardware": "hw", "status": "banished", "serial": 1,
     "issued_at": 1, "issuer": OPERATOR.address, "signature": "0x" + "00" * 65},
    {"device_id": "d", "address": DEVICE.address, "hardware": "hw", "status": "admitted", "serial": True,
     "issued_at": 1, "issuer": OPERATOR.address, "signature": "0x" + "00" * 65},
    {"device_id": "d", "address": DEVICE.address, "hardware": "hw", "status": "admitted", "serial": 1,
     "issued_at": 1, "issuer": OPERATOR.address, "signature": "0x00", "extra": 1},
    {"device_id": "d", "address": DEVICE.address, "hardware": "hw", "labels": {"Region": "x"}, "status": "admitted",
     "serial": 1, "issued_at": 1, "issuer": OPERATOR.address, "signature": "0x" + "00" * 65},
])
def test_malformed_records_are_refused_with_a_code(bad: object) -> None:
    with pytest.raises(AdmissionError) as exc:
        parse_admission(bad)
    assert exc.value.code in ("bad_admission", "bad_labels")


def test_labels_parse_from_pairs_and_refuse_junk() -> None:
    assert parse_labels(["region=eu-west", "group = pilot"]) == {"group": "pilot", "region": "eu-west"}
    for junk in (["region"], {"x" * 40: "v"}, {"region": "<script>"}, {f"k{i}": "v" for i in range(17)}):
        with pytest.raises(AdmissionError):
            parse_labels(junk)


def test_the_newest_serial_wins_and_an_old_record_replayed_changes_nothing(store: AdmissionStore) -> None:
    t = time.time()
    first = sign_admission(OPERATOR, "dev-01", DEVICE.address, "cam-r1", now=t)
    gone = sign_admission(OPERATOR, "dev-01", DEVICE.address, "cam-r1", status="decommissioned", now=t + 1)
    applied, out = store.receive([first.to_json(), gone.to_json()], [OPERATOR.address], t)
    assert [a.status for a in applied] == ["admitted", "decommissioned"] and out["applied"] == 2
    applied, out = store.receive([first.to_json()], [OPERATOR.address], t + 2)  # a replay of the admission
    assert applied == [] and out == {"applied": 0, "stale": 1, "results": [
        {"device_id": "dev-01", "serial": first.serial, "outcome": "stale"}]}
    with pytest.raises(NotAdmitted) as exc:
        decide(store, "dev-01", DEVICE.address)
    assert exc.value.code == "decommissioned"


def test_one_bad_record_in_a_batch_applies_none(store: AdmissionStore) -> None:
    good = sign_admission(OPERATOR, "dev-01", DEVICE.address, "cam-r1").to_json()
    forged = sign_admission(STRANGER, "dev-02", STRANGER.address, "cam-r1").to_json()
    with pytest.raises(AdmissionError) as exc:
        store.receive([good, forged], [OPERATOR.address], time.time())
    assert exc.value.code == "unknown_operator" and "record 1" in str(exc.value)
    assert store.all() == []
    with pytest.raises(AdmissionError) as exc:
        store.receive([good] * (MAX_RECORDS + 1), [OPERATOR.address], time.time())
    assert exc.value.code == "too_large"
    with pytest.raises(AdmissionError) as exc:
        store.receive([good], [], time.time())
    assert exc.value.code == "unknown_operator"


def test_decide_squatting_rekey_pending_and_rejection(store: AdmissionStore) -> None:
    t = time.time()
    store.apply([sign_admission(OPERATOR, "dev-01", DEVICE.address, "cam-r1", now=t)], t)
    assert decide(store, "dev-01", DEVICE.address).hardware == "cam-r1"
    with pytest.raises(NotAdmitted) as exc:  # squatting: another key claims the admitted id
        decide(store, "dev-01", STRANGER.address)
    assert exc.value.code == "device_key_mismatch"
    store.apply([sign_admission(OPERATOR, "dev-01", NEW_KEY.address, "cam-r1", now=t + 1)], t + 1)  # key replaced
    assert decide(store, "dev-01", NEW_KEY.address).address == NEW_KEY.address
    with pytest.raises(NotAdmitted) as exc:
        decide(store, "dev-01", DEVICE.address)
    assert exc.value.code == "device_key_mismatch"
    assert store.by_address(DEVICE.address) is None and store.by_address(NEW_KEY.address) is not None
    with pytest.raises(NotAdmitted) as exc:
        decide(store, "dev-02", STRANGER.address)
    assert exc.value.code == "not_admitted"
    store.note_pending("dev-02", STRANGER.address, "cam-r1", {}, t)
    assert store.reject("dev-02", None, OPERATOR.address, t) == 1
    assert store.pending() == []
    with pytest.raises(NotAdmitted) as exc:
        decide(store, "dev-02", STRANGER.address)
    assert exc.value.code == "rejected"


def test_the_pending_queue_is_bounded(store: AdmissionStore) -> None:
    for i in range(50):
        store.note_pending(f"junk-{i:02d}", Account.create().address, "hw", {"location": "x"}, 1000.0 + i)
    rows = store.pending()
    assert len(rows) == 5 and [r["device_id"] for r in rows] == [f"junk-{i}" for i in range(45, 50)]
    store.note_pending("junk-49", rows[-1]["address"], "hw", {}, 2000.0)  # the same (id, key) again: one row
    assert len(store.pending()) == 5 and store.pending()[-1]["requests"] == 2


# ----------------------------------------------------------------------------- manufacture certificates


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    init_ca(tmp_path / "mca", name="acme manufacturing CA")
    return tmp_path / "mca"


def test_a_manufacture_certificate_admits_its_device_only(ca: Path, tmp_path: Path, store: AdmissionStore) -> None:
    cert = issue_device_certificate(ca, "dev-07", bytes(DEVICE.key), "cam-r1", tmp_path / "d.crt",
                                    labels={"region": "eu-west"}).read_text()
    cas = load_certificate_authorities([ca / "ca.crt"])
    adm = certificate_admission(cert, cas)
    assert (adm.device_id, adm.address, adm.hardware, adm.region, adm.source, adm.serial) == \
        ("dev-07", DEVICE.address, "cam-r1", "eu-west", "certificate", 0)
    assert decide(store, "dev-07", DEVICE.address, certificate=cert, cas=cas, hardware_known=lambda h: True) == adm
    for device_id, key, code in (("dev-07", STRANGER.address, "bad_certificate"),   # someone else's certificate
                                 ("dev-08", DEVICE.address, "bad_certificate")):    # another id
        with pytest.raises(NotAdmitted) as exc:
            decide(store, device_id, key, certificate=cert, cas=cas, hardware_known=lambda h: True)
        assert exc.value.code == code
    with pytest.raises(NotAdmitted) as exc:
        decide(store, "dev-07", DEVICE.address, certificate=cert, cas=cas, hardware_known=lambda h: False)
    assert exc.value.code == "unknown_hardware"
    # an operator's decommissioning outranks the certificate (serial 0)
    store.apply([adm], time.time())
    store.apply([sign_admission(OPERATOR, "dev-07", DEVICE.address, "cam-r1", status="decommissioned")], time.time())
    with pytest.raises(NotAdmitted) as exc:
        decide(store, "dev-07", DEVICE.address, certificate=cert, cas=cas, hardware_known=lambda h: True)
    assert exc.value.code == "decommissioned"


def test_certificates_from_an_unpinned_ca_expired_or_junk_are_refused(ca: Path, tmp_path: Path) -> None:
    init_ca(tmp_path / "other", name="acme manufacturing CA")  # same name, another key
    rogue = issue_device_certificate(tmp_path / "other", "dev-07", bytes(DEVICE.key), "cam-r1",
                                     tmp_path / "r.crt").read_text()
    cas = load_certificate_authorities([ca / "ca.crt"])
    for pem in (rogue, "junk", "x" * 9000):
        with pytest.raises(NotAdmitted) as exc:
            certificate_admission(pem, cas)
        assert exc.value.code == "bad_certificate"
    good = issue_device_certificate(ca, "dev-07", bytes(DEVICE.key), "cam-r1", tmp_path / "g.crt").read_text()
    with pytest.raises(NotAdmitted) as exc:
        certificate_admission(good, cas, now=time.time() + 20 * 365 * 86400)
    assert exc.value.code == "bad_certificate" and "validity" in str(exc.value)
    # a P-256 subject key (not a device's secp256k1 identity key) is refused
    key = serialization.load_pem_private_key((ca / "ca.key").read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate((ca / "ca.crt").read_bytes())
    now = dt.datetime.now(dt.UTC)
    p256 = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-07")]))
            .issuer_name(ca_cert.subject).public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier("urn:fwledger:hardware:x")]),
                           critical=False)
            .sign(key, hashes.SHA256()))  # type: ignore[arg-type]
    with pytest.raises(NotAdmitted) as exc:
        certificate_admission(p256.public_bytes(serialization.Encoding.PEM).decode(), cas)
    assert exc.value.code == "bad_certificate" and "secp256k1" in str(exc.value)


# ----------------------------------------------------------------------------- rollout waves


def test_waves_are_keyed_by_the_tracker_secret() -> None:
    """An attacker who knows the release and the public bucket function cannot pick canary ids:
    with the tracker's key the buckets are unrelated to the public SHA-256 ones."""
    hh, ids = "0x" + "ab" * 32, [f"dev-{i:04d}" for i in range(2000)]
    key = b"k" * 32
    public = [bucket(hh, d) for d in ids]
    keyed = [bucket(hh, d, key) for d in ids]
    assert keyed == [bucket(hh, d, key) for d in ids]  # stable
    canary_guess = {d for d, b in zip(ids, public, strict=True) if b < 0.1}
    canary = {d for d in ids if wave_of(hh, d, (0.1, 1.0), key) == 0}
    assert len(canary_guess & canary) < len(canary_guess) // 3  # about 10 % overlap by chance, not 100 %
    assert canary != {d for d in ids if wave_of(hh, d, (0.1, 1.0), b"other") == 0}
