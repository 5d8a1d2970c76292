"""The status tracker's pure decisions and its SQLite inventory (X.1368 C11.2.a-b, clause 9).

Messages devices and triggering parties send are validated before anything is stored; the
trigger decision (which party may ask, and whether the ledger has the release with that
version) is a pure function tested case by case; the inventory keeps everything across a
reopen (a restart loses no device state) and refuses a device id claimed by another key.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from pydantic import ValidationError

from entities.protocol.http_auth import AuthError, sign_request
from entities.status_tracker.app import verify_response
from entities.status_tracker.config import TrackerConfig, load_tracker_config, parse_listen
from entities.status_tracker.daemon import load_identity
from entities.status_tracker.evidence import Evidence
from entities.status_tracker.inventory import (
    Assessment,
    HeartbeatIn,
    Inventory,
    LedgerFacts,
    Readiness,
    TrackerRefusal,
    TriggerIn,
    check_party,
    judge_trigger,
    readiness,
)
from ledger_node.attestation import AttestationError, attest
from ledger_node.errors import ConfigError, IndexCorruption, ProofError, RecordError
from ledger_node.header import BlockHeader
from ledger_node.record import Version
from tests.helpers import make_record

DEV, OTHER = Account.from_key(b"\x01" * 32), Account.from_key(b"\x02" * 32)
VENDOR, SERVER, ADMIN = (Account.from_key(bytes([n]) * 32).address for n in (3, 4, 5))
HH = "0x" + "ab" * 32


def hb(**over: Any) -> HeartbeatIn:
    body: dict[str, Any] = {"device_id": "cam-1", "hardware": "cam-r1", "location": "lab 1/rack-2",
                            "addons": {"therm-b1": ["sensor-fw"]},
                            "components": {"main-fw": {"vendor": "acme", "version": "1.0.0", "slot": "A"},
                                           "sensor-fw": {"vendor": "acme", "version": "2.1.0", "slot": "B"}},
                            "ready": True, "last_result": {"ok": False, "code": "hash_mismatch"}}
    body.update(over)
    return HeartbeatIn.model_validate_json(__import__("json").dumps(body))


# ============================================================================= messages


def test_heartbeat_builds_the_resolvers_device_profile() -> None:
    """C11.2.b.iii / Appendix II: the report names hardware class, add-on boards and versions."""
    p = hb().profile()
    assert p.hardware_class == "cam-r1" and p.addons == ("therm-b1",)
    assert {c.product: (str(c.version), c.board) for c in p.components} == {
        "main-fw": ("1.0.0", None), "sensor-fw": ("2.1.0", "therm-b1")}


@pytest.mark.parametrize("over", [
    {"device_id": "a/b"}, {"device_id": "x" * 65}, {"device_id": ""}, {"hardware": ""},
    {"addons": {"therm-b1": ["not-installed"]}},
    {"addons": {"therm-b1": ["sensor-fw"], "therm-b2": ["sensor-fw"]}},
    {"components": {"main-fw": {"vendor": "acme", "version": "1.0"}}},
    {"components": {"main-fw": {"vendor": "acme", "version": "65536.0.0"}}},
    {"components": {"main-fw": {"vendor": "acme", "version": "01.0.0"}}},
    {"components": {"main-fw": {"vendor": "", "version": "1.0.0"}}},
    {"components": {"m\u00e9": {"vendor": "acme", "version": "1.0.0"}}, "addons": {}},
    {"components": {"main-fw": {"vendor": "acme", "version": "1.0.0", "extra": 1}}, "addons": {}},
    {"ready": "yes"}, {"ready": 1}, {"unexpected": True}, {"location": "../etc"},
    {"last_result": {"ok": "no"}}, {"last_result": {"ok": False, "code": "two words"}},
])
def test_malformed_heartbeats_are_refused(over: dict[str, Any]) -> None:
    """C11.2 module rule b: nothing malformed reaches the inventory."""
    with pytest.raises(ValidationError):
        hb(**over)


def test_a_component_in_safe_mode_says_so_and_reads_from_nothing() -> None:
    """C11.1.a.iv: ``needs: safe_mode`` is kept as received (and stored), counts as nothing installed
    for the resolver, and makes the device ``safe-mode`` rather than ``no-firmware``; an unknown need
    is refused; a heartbeat without ``needs`` (an older device) reads as before."""
    from entities.protocol.heartbeat import firmware_status

    comps: dict[str, dict[str, Any]] = {
        "main-fw": {"vendor": "acme", "version": None, "slot": None, "state": "empty", "needs": "safe_mode"},
        "sensor-fw": {"vendor": "acme", "version": "2.1.0", "slot": "B"}}
    h = hb(components=comps)
    assert h.components_json()["main-fw"] == comps["main-fw"]
    main = next(c for c in h.profile().components if c.product == "main-fw")
    assert (main.needs, main.version) == ("safe_mode", Version(0, 0, 0))
    assert firmware_status(h.components_json()) == ["safe-mode"]
    assert firmware_status(hb().components_json()) == [] and "needs" not in hb().components_json()["main-fw"]
    with pytest.raises(ValidationError):
        hb(components={**comps, "main-fw": {**comps["main-fw"], "needs": "reboot"}})


def test_trigger_must_give_a_url_and_a_version() -> None:
    """Clause 9: every request gives the image URL and version."""
    ok = TriggerIn.model_validate({"source": "admin", "header_hash": HH, "link": "https://fw.example/x.bin",
                                   "version": "1.2.3"})
    assert ok.source == "admin"
    for bad in ({"link": "ftp://fw/x"}, {"link": "https://a b"}, {"version": "1.2"}, {"source": "device"},
                {"header_hash": "0x12"}):
        with pytest.raises(ValidationError):
            TriggerIn.model_validate({"source": "admin", "header_hash": HH, "link": "https://fw/x", "version": "1.2.3",
                                      **bad})
    with pytest.raises(ValidationError):
        TriggerIn.model_validate({"source": "admin", "header_hash": HH, "version": "1.2.3"})


def test_readiness_from_report_and_communication_log() -> None:
    """C11.2.b.i: readiness by talking to the devices and checking the communication log."""
    assert readiness(True, 100.0, 150.0, 60) is Readiness.READY
    assert readiness(False, 100.0, 160.0, 60) is Readiness.BUSY
    assert readiness(True, 100.0, 160.1, 60) is Readiness.UNREACHABLE


# ============================================================================= triggers (clause 9)


def trig(source: str = "admin", version: str = "1.1.0") -> TriggerIn:
    return TriggerIn(source=source, header_hash=HH, link="https://fw.example/main-1.1.0.bin",  # type: ignore[arg-type]
                     version=version)


FOUND = LedgerFacts(found=True, version="1.1.0", vendor_name="acme", file_link="https://fw.example/main-1.1.0.bin")
VENDORS = {VENDOR: "acme", OTHER.address: "globex"}


def judge(t: TriggerIn, signer: str, facts: LedgerFacts = FOUND) -> None:
    judge_trigger(t, signer, facts, vendors=VENDORS, server_keys=[SERVER], admin_keys=[ADMIN])


@pytest.mark.parametrize(("source", "signer"), [("author", VENDOR), ("server", SERVER), ("admin", ADMIN)])
def test_trigger_from_an_allowed_party_for_a_release_on_the_ledger_is_accepted(source: str, signer: str) -> None:
    """T9.a / T9.b / T9.c: each party, signed with its key, for a release the ledger has."""
    judge(trig(source), signer)


@pytest.mark.parametrize(("t", "signer", "facts", "code"), [
    (trig("author"), SERVER, FOUND, "unknown_party"),
    (trig("server"), ADMIN, FOUND, "unknown_party"),
    (trig("admin"), VENDOR, FOUND, "unknown_party"),
    (trig("admin"), ADMIN, LedgerFacts(found=False), "not_on_ledger"),
    (trig("author"), OTHER.address, FOUND, "not_vendor_release"),
    (trig("admin", "1.2.0"), ADMIN, FOUND, "version_mismatch"),
    (trig("admin"), ADMIN, LedgerFacts(True, "1.1.0", "acme", revoked=True), "release_revoked"),
    (trig("admin"), ADMIN, LedgerFacts(True, "1.1.0", "acme", vulnerable=True), "release_vulnerable"),
    (trig("admin"), ADMIN, LedgerFacts(True, "1.1.0", "acme", flagged=True), "flagged_release"),
])
def test_trigger_refusals(t: TriggerIn, signer: str, facts: LedgerFacts, code: str) -> None:
    """Clause 9: the tracker starts clause 7 only when the request is reliable: a party that may
    not ask, a release not on the ledger (or another version, revoked, flagged) is refused."""
    with pytest.raises(TrackerRefusal) as exc:
        judge(t, signer, facts)
    assert exc.value.code == code


def test_party_check_before_chain_work() -> None:
    """Configured parties are checked before any ledger poll; author triggers wait for the ledger."""
    check_party(trig("author"), DEV.address, vendors=None, server_keys=[], admin_keys=[])
    with pytest.raises(TrackerRefusal):
        check_party(trig("admin"), DEV.address, vendors=None, server_keys=[], admin_keys=[ADMIN])


# ============================================================================= the inventory


def assessment(device_id: str, upgrades: list[tuple[str, str]], block: int = 7) -> Assessment:
    ups = tuple({"product": "main-fw", "from_version": "1.0.0", "to_version": v, "header_hash": h} for v, h in upgrades)
    return Assessment(device_id, block, bool(ups), False, False, {"reasons": [], "plan": {"upgrades": list(ups)}}, ups)


def test_inventory_keeps_devices_logs_triggers_needs_and_nonces_across_a_reopen(tmp_path: Path) -> None:
    """C11.2.a-b and issue 5 "restarting loses no device state": every table survives a reopen."""
    path = tmp_path / "inventory.sqlite"
    inv = Inventory(path)
    row, change = inv.record_heartbeat(DEV.address, hb(), 100.0)
    assert change == {"new": True, "versions": {}} and row.heartbeats == 1
    row, change = inv.record_heartbeat(DEV.address, hb(components={
        "main-fw": {"vendor": "acme", "version": "1.1.0"}, "sensor-fw": {"vendor": "acme", "version": "2.1.0"}}),
        160.0)
    assert change == {"new": False, "versions": {"main-fw": ["1.0.0", "1.1.0"]}}
    assert (row.first_seen, row.last_seen, row.heartbeats) == (100.0, 160.0, 2)
    assert row.components["main-fw"] == {"vendor": "acme", "version": "1.1.0", "slot": None}
    with pytest.raises(TrackerRefusal) as exc:
        inv.record_heartbeat(OTHER.address, hb(), 170.0)
    assert exc.value.code == "device_key_mismatch"
    assert inv.remember(DEV.address, "a" * 32, 1e12)
    assert inv.log_trigger(1.0, trig(), ADMIN, accepted=False, code="not_on_ledger", message="no") == 1
    added = inv.save_assessments([assessment("cam-1", [("1.2.0", "0x01")])], "T9.c#1", 200.0)
    assert added == {"cam-1": ["0x01"]}
    inv.close()

    inv = Inventory(path)
    try:
        row2 = inv.device("cam-1")
        assert row2 == row
        assert row2 is not None and row2.to_json(1000.0, 600)["readiness"] == "unreachable"
        assert not inv.remember(DEV.address, "a" * 32, 1e12)  # replay refused after a restart
        assert [(t.code, t.accepted, t.clause) for t in inv.triggers()] == [("not_on_ledger", False, "T9.c")]
        assert [n["cause"] for n in inv.needs("cam-1")] == ["T9.c#1"]
        kinds = [e["kind"] for e in inv.communications("cam-1")]
        assert kinds == ["update_needed", "heartbeat", "heartbeat"]
        assert inv.communications("cam-1", kind="heartbeat")[0]["detail"]["versions"] == {
            "main-fw": ["1.0.0", "1.1.0"]}
        assert inv.assessment("cam-1") is not None and inv.counts()["devices"] == 1
    finally:
        inv.close()


def test_update_needed_keeps_its_first_cause_and_follows_the_plan(tmp_path: Path) -> None:
    """C11.2.c / R10.e.i: a release stays needed (with what first caused it) while the plan has
    it, and is dropped once the device no longer needs it (updated, or revoked)."""
    inv = Inventory(tmp_path / "inv.sqlite")
    try:
        assert inv.save_assessments([assessment("d1", [("1.1.0", "0xaa")])], "T9.d", 1.0) == {"d1": ["0xaa"]}
        assert inv.save_assessments([assessment("d1", [("1.1.0", "0xaa")])], "T9.a#3", 2.0) == {}
        assert [(n["cause"], n["since"]) for n in inv.needs()] == [("T9.d", 1.0)]
        assert inv.save_assessments([assessment("d1", [("1.2.0", "0xbb")])], "T9.c#4", 3.0) == {"d1": ["0xbb"]}
        assert [(n["to_version"], n["cause"]) for n in inv.needs()] == [("1.2.0", "T9.c#4")]
        inv.save_assessments([assessment("d1", [])], "heartbeat", 4.0)
        assert inv.needs() == []
        assert inv.assessments()["d1"]["outdated"] is False
    finally:
        inv.close()


def test_communication_log_is_bounded(tmp_path: Path) -> None:
    inv = Inventory(tmp_path / "inv.sqlite", log_limit=100)
    try:
        for i in range(1200):
            inv.log(float(i), "d1", "heartbeat", {"i": i})
        assert inv.counts()["log"] <= 100 + 500
        assert inv.communications("d1", limit=1)[0]["detail"] == {"i": 1199}
    finally:
        inv.close()


def test_a_file_that_is_not_an_inventory_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    with pytest.raises(IndexCorruption):
        Inventory(other)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises((IndexCorruption, ConfigError)):
        Inventory(garbage)


# ============================================================================= evidence JSON


def _header() -> BlockHeader:
    return BlockHeader(number=9, hash=b"\x09" * 32, parent_hash=b"\x08" * 32, state_root=b"\x07" * 32,
                       timestamp=1_700_000_000, rlp=b"\xc0")


PROOF = {"address": "0x" + "11" * 20, "nonce": "0x0", "balance": "0x0", "storageHash": "0x" + "00" * 32,
         "codeHash": "0x" + "00" * 32, "accountProof": [], "storageProof": []}


def test_evidence_json_round_trip() -> None:
    """The evidence shape devices consume: header_rlp, attestations, raw proof, record."""
    att = attest(DEV, _header(), chain_id=31337, registry="0x" + "42" * 20)
    rec = make_record("1.0.0")
    ev = Evidence(b"\xc0", (att,), PROOF, rec)
    js = ev.to_json()
    assert set(js) == {"format", "header_rlp", "attestations", "proof", "record", "successors"}
    assert js["header_rlp"] == "0xc0" and js["format"] == 1
    back = Evidence.from_json(js)
    assert back == ev and back.with_attestations([att]).attestations == (att, att)
    succ = make_record("1.1.0", prev=rec.header_hash)
    assert Evidence.from_json({**js, "successors": [succ.to_json()]}).successors == (succ,)


@pytest.mark.parametrize(("mutate", "error"), [
    (lambda js: js.pop("proof"), ProofError),
    (lambda js: js.update(header_rlp="c0"), ProofError),
    (lambda js: js.update(header_rlp="0xzz"), ProofError),
    (lambda js: js.update(attestations={}), ProofError),
    (lambda js: js.update(attestations=[{"chain_id": 1}]), AttestationError),
    (lambda js: js.update(proof=[]), ProofError),  # its shape is checked where it is verified
    (lambda js: js["record"].update(version="9.9.9"), RecordError),
    (lambda js: js.update(format=2), ProofError),
    (lambda js: js.update(successors=[{}] * 65), ProofError),
])
def test_malformed_evidence_is_refused(mutate: Any, error: type[Exception]) -> None:
    att = attest(DEV, _header(), chain_id=31337, registry="0x" + "42" * 20)
    js = Evidence(b"\xc0", (att,), dict(PROOF), make_record("1.0.0")).to_json()
    js["proof"] = dict(js["proof"])
    mutate(js)
    with pytest.raises(error):
        Evidence.from_json(js)


# ============================================================================= response signatures


def test_response_signature_binds_status_path_body_and_request() -> None:
    """C11.2 module rules a-b: a device verifies the tracker's answers, and that each answers its
    own request (the request's nonce is echoed)."""
    tracker = Account.from_key(b"\x07" * 32)
    nonce = "ab" * 16
    hdrs = sign_request(tracker, "RESPONSE-200", "/v1/devices/cam-1/plan", b'{"x":1}', nonce=nonce, audience="")
    assert verify_response(hdrs, 200, "/v1/devices/cam-1/plan", b'{"x":1}', request_nonce=nonce,
                           tracker=tracker.address) == tracker.address
    for status, path, body, req_nonce, who, code in [
        (404, "/v1/devices/cam-1/plan", b'{"x":1}', nonce, tracker.address, "bad_signature"),
        (200, "/v1/devices/cam-2/plan", b'{"x":1}', nonce, tracker.address, "bad_signature"),
        (200, "/v1/devices/cam-1/plan", b'{"x":2}', nonce, tracker.address, "bad_signature"),
        (200, "/v1/devices/cam-1/plan", b'{"x":1}', "cd" * 16, tracker.address, "nonce_mismatch"),
        (200, "/v1/devices/cam-1/plan", b'{"x":1}', nonce, DEV.address, "wrong_tracker"),
    ]:
        with pytest.raises(AuthError) as exc:
            verify_response(hdrs, status, path, body, request_nonce=req_nonce, tracker=who)
        assert exc.value.code == code


# ============================================================================= configuration and identity


def test_config_precedence_flag_env_file_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(f'[tracker]\npoll_interval = 2.5\nadmin_keys = ["{ADMIN.lower()}"]\n'
                                      "stale_after = 30\n")
    monkeypatch.delenv("FWLEDGER_CONFIG", raising=False)
    monkeypatch.setenv("FWLEDGER_TRACKER_STALE", "45")
    cfg = load_tracker_config(home)
    assert cfg.data_dir == home / "tracker" and cfg.identity_path == home / "tracker" / "tracker.key"
    assert (cfg.poll_interval, cfg.stale_after, cfg.admin_keys) == (2.5, 45.0, (ADMIN,))
    cfg = load_tracker_config(home, poll_interval=0.1, server_keys=(SERVER.lower(),), data_dir=tmp_path / "d")
    assert (cfg.poll_interval, cfg.server_keys, cfg.data_dir) == (0.1, (SERVER,), tmp_path / "d")
    for bad in ({"admin_keys": ("0x12",)}, {"poll_interval": -1.0}):
        with pytest.raises(ConfigError):
            load_tracker_config(home, **bad)
    with pytest.raises(ConfigError):
        load_tracker_config(home, role="gateway")
    monkeypatch.setenv("FWLEDGER_TRACKER_LOG_LIMIT", "many")
    with pytest.raises(ConfigError):
        load_tracker_config(home)
    assert TrackerConfig(data_dir=tmp_path, role="intermediate", upstreams=("http://127.0.0.1:1",)).validate().role == "intermediate"


def test_listen_address() -> None:
    assert parse_listen("127.0.0.1:8470") == ("127.0.0.1", 8470)
    assert parse_listen("[::1]:9") == ("::1", 9)
    for bad in ("8470", "127.0.0.1:", ":80", "127.0.0.1:70000", "127.0.0.1:http"):
        with pytest.raises(ConfigError):
            parse_listen(bad)


def test_identity_key_is_created_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "data" / "tracker.key"
    first = load_identity(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_identity(path).address == first.address
    path.write_text("not a key")
    with pytest.raises(ConfigError):
        load_identity(path)


def test_pending_observations_persist_in_the_inventory_and_an_older_inventory_gains_the_table(tmp_path: Path) -> None:
    """T9.e / T9.b pending entries are rows of the inventory's ``observations`` table: an inventory
    made before it (no such table) gains it on open; a new table reloads what the last one kept,
    least recently reported first, with its last block; a smaller capacity trims on load; a row that
    no longer parses is dropped."""
    from entities.status_tracker.observations import ObservationStore, PendingObservations
    from ledger_node.fullnode import Index

    path = tmp_path / "inventory.sqlite"
    inv = Inventory(path)
    with inv._tx() as conn:
        conn.execute("DROP TABLE IF EXISTS observations")  # an inventory from before the table
    server = Account.from_key(b"\x63" * 32).address

    def trig(n: int) -> dict[str, Any]:
        return {"source": "server", "header_hash": f"0x{n:064x}", "link": "http://x.example/f.bin",
                "version": f"1.{n}.0", "devices": [{"device_id": "d1", "hardware": "hw", "version": "1.0.0"}]}

    table = PendingObservations(8, confirmations=2, margin=3, clock=lambda: 0.0, store=ObservationStore(inv))
    assert [table.hold_trigger(server, trig(n), float(n)) for n in (1, 2, 3)] == ["pending"] * 3
    assert table.hold_trigger(server, trig(1), 9.0) == "again"  # now the most recent
    index = Index(tmp_path / "ledger.sqlite")  # a real, empty full-node index: no release found
    table.settle(index, 40, 10.0)  # not found: each gets its last block
    index.close()
    before = table.entries()
    inv.close()

    inv = Inventory(path)
    again = PendingObservations(8, confirmations=2, margin=3, clock=lambda: 0.0, store=ObservationStore(inv))
    assert again.entries() == before
    assert [(o["header_hash"], o["until_block"], o["signer"], o["devices"]) for o in again.entries()] == [
        (f"0x{n:064x}", 45, server, ["d1"]) for n in (2, 3, 1)]
    with inv._tx() as conn:
        conn.execute("UPDATE observations SET body = '{\"version\": \"junk\"}' WHERE body LIKE ?", (f"%0x{3:064x}%",))
    small = PendingObservations(1, confirmations=2, margin=3, clock=lambda: 0.0, store=ObservationStore(inv))
    assert [o["header_hash"] for o in small.entries()] == [f"0x{1:064x}"]
    assert [r[0] for r in inv._conn.execute("SELECT COUNT(*) FROM observations")] == [1]
    inv.close()
