"""The device's pure decisions: release-to-device fit, decline policy, anchors and evidence parsing.

The ledger half of :mod:`entities.firmware_consumer.verify` (attested header, proofs) is exercised
against real chains in tests/security and tests/integration; here is everything that needs no chain.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account

from entities.bundle import BundleHeader, build_bundle
from entities.firmware_consumer import UnknownComponent, UpdateRefused
from entities.firmware_consumer import verify as verify_module
from entities.firmware_consumer.errors import BadInstallRequest
from entities.firmware_consumer.provision import (
    AddonBoard,
    ComponentBinding,
    parse_addon_spec,
    parse_component_spec,
)
from entities.firmware_consumer.updater import CommandVeto, UpdatePolicy
from entities.firmware_consumer.verify import (
    REFUSAL_CODES,
    ComponentFacts,
    DeviceFacts,
    Evidence,
    ProvenRelease,
    TrustAnchors,
    VerifiedUpdate,
    check_fit,
    check_hardware,
)
from ledger_node.compiler import registry_contract
from ledger_node.errors import ConfigError
from ledger_node.header import BlockHeader
from ledger_node.lightnode import RegistryLayout, VerifiedRelease
from ledger_node.record import ZERO_HASH, Dependency, Version
from ledger_node.registry import ReleaseEntry
from tests.helpers import make_record

V = Version.parse
REGISTRY = "0x" + "ab" * 20


def facts(main: str | None = "1.0.0", counter: str = "1.0.0", *, hw: str = "cam-r1", boot: str | None = "1.2.0",
          vendor: str | None = "acme") -> DeviceFacts:
    return DeviceFacts(hw, (
        ComponentFacts("main", "main-fw", vendor, V(main) if main else None, V(counter)),
        ComponentFacts("boot", "bootloader", None, V(boot) if boot else None, V(boot or "0.0.0")),
    ))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> BundleHeader:
    """A real bundle header (for cam-r1 and cam-r2) built without any chain."""
    tmp = Path(tmp_path_factory.mktemp("bundle"))
    (tmp / "img").write_bytes(b"x" * 1000)
    keys = {hw: X25519PrivateKey.generate().public_key().public_bytes_raw() for hw in ("cam-r1", "cam-r2")}
    return build_bundle(tmp / "img", tmp / "b.fwb", vendor_name="acme", product="main-fw", version=V("1.1.0"),
                        link="x", hardware=["cam-r1", "cam-r2"], class_keys=keys, prev_hash=ZERO_HASH,
                        account=Account.create(), chain_id=1, registry=REGISTRY)


def code_of(fn: object, *args: object, **kw: object) -> str:
    with pytest.raises(UpdateRefused) as err:
        fn(*args, **kw)  # type: ignore[operator]
    return err.value.code


# ----------------------------------------------------------------------------- check_fit


def test_a_release_that_fits_passes(bundle: BundleHeader) -> None:
    """Steps 11-15 pass for the right product, class, key, dependencies and a higher version."""
    check_fit(facts(), "main", make_record("1.1.0", deps=(Dependency("bootloader", V("1.0.0"), V("1.9.9")),)),
              bundle=bundle)
    check_fit(facts(main=None, counter="0.0.0"), "main", make_record("0.0.1"))  # an empty component


def test_product_and_vendor_must_be_the_components_line() -> None:
    """A release of another product, or of the right product from another vendor, is not for this component."""
    assert code_of(check_fit, facts(), "main", make_record("2.0.0", product="other-fw")) == "wrong_product"
    assert code_of(check_fit, facts(), "main", make_record("2.0.0", vendor="evil")) == "wrong_product"
    check_fit(facts(vendor=None), "main", make_record("2.0.0", vendor="evil"))  # vendor not pinned: any vendor
    with pytest.raises(UnknownComponent):
        check_fit(facts(), "nope", make_record("2.0.0"))


def test_hardware_class_and_its_content_key(bundle: BundleHeader) -> None:
    """Appendix II: the device's class must be supported, and the bundle must carry a key for it."""
    assert code_of(check_fit, facts(hw="cam-r3"), "main", make_record("2.0.0")) == "wrong_hardware"
    rec = make_record("2.0.0", hardware=("cam-r1", "cam-r9"))
    assert code_of(check_fit, facts(hw="cam-r9"), "main", rec, bundle=bundle) == "no_key_for_hardware"



def test_a_component_on_an_add_on_board_is_checked_against_the_board() -> None:
    """Appendix II: a component running on an add-on board takes releases for the board's class only:
    one for the device's own class, or for another board, is ``wrong_hardware`` naming the board."""
    dev = DeviceFacts("cam-r1", (ComponentFacts("sensor", "sensor-fw", "acme", None, V("0.0.0"), "sens-b1"),
                                 ComponentFacts("main", "main-fw", "acme", V("1.0.0"), V("1.0.0"))))
    assert dev.class_of("sensor") == "sens-b1" and dev.class_of("main") == "cam-r1"
    assert check_hardware(dev, "sensor", make_record("1.0.0", product="sensor-fw", hardware=("sens-b1",))) == "sens-b1"
    for hardware in (("cam-r1",), ("sens-b2",)):
        with pytest.raises(UpdateRefused) as err:
            check_fit(dev, "sensor", make_record("1.0.0", product="sensor-fw", hardware=hardware))
        assert err.value.code == "wrong_hardware" and "add-on board sens-b1" in str(err.value)
    assert code_of(check_fit, dev, "main", make_record("2.0.0", hardware=("sens-b1",))) == "wrong_hardware"


def test_component_and_addon_specs() -> None:
    """``--component NAME=VENDOR/PRODUCT@BOARD`` and ``--addon BOARD[@REVISION]``; bad ones one line."""
    assert parse_component_spec("sensor=acme/sensor-fw@sens-b1") == (
        "sensor", ComponentBinding("sensor-fw", "acme", "sens-b1"))
    assert parse_component_spec("sensor=sensor-fw@sens-b1")[1] == ComponentBinding("sensor-fw", None, "sens-b1")
    assert ComponentBinding.from_json(ComponentBinding("p", "v", "b").to_json()) == ComponentBinding("p", "v", "b")
    assert ComponentBinding("p", "v").to_json() == {"product": "p", "vendor": "v"}  # as before boards
    assert parse_addon_spec("sens-b1@2") == AddonBoard("sens-b1", 2)
    assert parse_addon_spec("sens-b1") == AddonBoard("sens-b1", None)
    for bad in ("sensor=acme/sensor-fw@", "sensor=@b1", "sensor=acme/sensor-fw@b 1"):
        with pytest.raises(BadInstallRequest):
            parse_component_spec(bad)
    for bad in ("", "b1@", "b1@x", "b/1", "b1@99999999999"):
        with pytest.raises(BadInstallRequest):
            parse_addon_spec(bad)


def test_dependencies_hold_after_the_planned_installs() -> None:
    """Appendix II: dependencies are checked against the other components as they will be after the
    installs planned together (the tracker's plan), not only as they are now."""
    rec = make_record("2.0.0", deps=(Dependency("bootloader", V("2.0.0"), V("2.9.9")),))
    assert code_of(check_fit, facts(), "main", rec) == "dependency_unmet"
    check_fit(facts(), "main", rec, planned={"boot": V("2.1.0")})
    assert code_of(check_fit, facts(), "main", rec, planned={"boot": V("3.0.0")}) == "dependency_unmet"
    assert code_of(check_fit, facts(boot=None), "main", rec) == "dependency_unmet"  # not installed
    absent = make_record("2.0.0", deps=(Dependency("radio-fw"),))
    assert "absent" in str(pytest.raises(UpdateRefused, check_fit, facts(), "main", absent).value)


def test_versions_only_go_up() -> None:
    """R10.d.i: equal or older than installed, or below the anti-rollback counter, is a rollback."""
    assert code_of(check_fit, facts(), "main", make_record("1.0.0")) == "rollback"
    assert code_of(check_fit, facts(), "main", make_record("0.9.0")) == "rollback"
    # the installed image is gone (safe mode) but the counter still holds
    assert code_of(check_fit, facts(main=None, counter="1.5.0"), "main", make_record("1.4.9")) == "rollback"
    check_fit(facts(main=None, counter="1.5.0"), "main", make_record("1.5.0"))  # reinstall at the counter


def test_fit_checks_run_in_the_documented_order() -> None:
    """A release wrong in every way is refused for the first check of the table."""
    rec = make_record("0.1.0", product="x", hardware=("cam-r9",), deps=(Dependency("nothing"),))
    assert code_of(check_fit, facts(), "main", rec) == "wrong_product"


def test_the_docstring_table_lists_every_code_in_order() -> None:
    """The module docstring is the reference for the codes: it names them in the order they are checked."""
    doc = verify_module.__doc__ or ""
    table = doc[doc.index("=="):doc.index("How the bundle")]
    found = [c for c in re.findall(r"``([a-z_]+)``", table)]
    assert found == [c for c in REFUSAL_CODES]


# ----------------------------------------------------------------------------- decline policy (C11.1.a.vi)


def _at(hour: int, minute: int = 0) -> float:
    return datetime(2030, 1, 1, hour, minute, tzinfo=UTC).timestamp()


def _update(bundle: BundleHeader) -> VerifiedUpdate:
    """A verified update as verify_update returns it (the chain facts made up: the policy does not read them)."""
    block = BlockHeader(7, b"\x07" * 32, b"\x06" * 32, b"\x05" * 32, 1_900_000_000, b"")
    entry = ReleaseEntry(True, False, False, True, bundle.record.data.version)
    vendor = Account.create().address
    proven = ProvenRelease(block, bundle.record, VerifiedRelease(block, entry, vendor, True, None), vendor)
    return VerifiedUpdate("main", "cam-r1", bundle, proven)


def test_maintenance_window_defers_up_to_the_limit(bundle: BundleHeader) -> None:
    """C11.1.a.vi: outside its window the device declines and says why; after max_deferrals it installs
    anyway (a policy cannot keep a device outdated for ever)."""
    pol = UpdatePolicy.from_json({"maintenance_window": "02:00-04:00", "max_deferrals": 2})
    u = _update(bundle)
    assert pol.decide(u, now=_at(3), deferred=0).install
    d = pol.decide(u, now=_at(12), deferred=0)
    assert (d.install, d.code) == (False, "outside_maintenance_window") and "1 of at most 2" in d.reason
    assert not pol.decide(u, now=_at(4), deferred=1).install  # the end is exclusive
    forced = pol.decide(u, now=_at(12), deferred=2)
    assert forced.install and "limit" in forced.reason
    wraps = UpdatePolicy.from_json({"maintenance_window": "23:00-01:00"})
    assert wraps.in_window(_at(23, 30)) and wraps.in_window(_at(0, 59)) and not wraps.in_window(_at(1))
    assert UpdatePolicy().decide(u, now=_at(12), deferred=0).install


def test_a_veto_is_final_and_a_broken_hook_vetoes(bundle: BundleHeader) -> None:
    u = _update(bundle)
    d = UpdatePolicy(veto=lambda upd: "the owner said no").decide(u, now=_at(3), deferred=99)
    assert (d.install, d.code) == (False, "vetoed") and "the owner said no" in d.reason

    def broken(upd: VerifiedUpdate) -> str | None:
        raise RuntimeError("hook crashed")

    assert UpdatePolicy(veto=broken).decide(u, now=_at(3), deferred=0).code == "vetoed"
    assert UpdatePolicy(veto=lambda upd: None).decide(u, now=_at(3), deferred=0).install


def test_policy_config_is_checked() -> None:
    for bad in ({"maintenance_window": "25:00-01:00"}, {"maintenance_window": "2-4"}, {"max_deferrals": -1},
                {"max_deferrals": "many"}):
        with pytest.raises(ConfigError):
            UpdatePolicy.from_json(bad)
    assert isinstance(UpdatePolicy.from_json({"veto_command": ["true"]}).veto, CommandVeto)
    with pytest.raises(ConfigError):
        CommandVeto([])


# ----------------------------------------------------------------------------- anchors, evidence, bindings


def anchors(**kw: object) -> TrustAnchors:
    args: dict[str, object] = {"chain_id": 31337, "registry": Account.create().address,
                               "layout": RegistryLayout.from_compiled(registry_contract()),
                               "trackers": tuple(Account.create().address for _ in range(3)), "quorum": 2,
                               "max_header_age": 600.0}
    args.update(kw)
    return TrustAnchors(**args)  # type: ignore[arg-type]


def test_anchors_round_trip_and_validation() -> None:
    a = anchors()
    a.validate()
    assert TrustAnchors.from_json(a.to_json()) == a
    compiled = registry_contract()
    assert a.layout.runtime_code_hash == compiled.runtime_code_hash
    assert a.layout.slot("releases") == compiled.slot("releases")
    for bad in (anchors(quorum=4), anchors(quorum=0), anchors(max_header_age=0),
                anchors(trackers=(a.trackers[0], a.trackers[0])),
                anchors(layout=RegistryLayout(b"\x00" * 32, {"releases": 1}))):
        with pytest.raises(ConfigError):
            bad.validate()
    for obj in ({}, {**a.to_json(), "format": 2}, {**a.to_json(), "code_hash": "0x12"}, "x"):
        with pytest.raises(ConfigError):
            TrustAnchors.from_json(obj)


@pytest.mark.parametrize("mutate", [
    lambda e: "not an object",
    lambda e: {**e, "format": 9},
    lambda e: {k: v for k, v in e.items() if k != "proof"},
    lambda e: {**e, "header_rlp": "0xzz"},
    lambda e: {**e, "attestations": "x"},
    lambda e: {**e, "attestations": [{"chain_id": 1}]},
    lambda e: {**e, "record": {"version": "1.0.0"}},
    lambda e: {**e, "record": {**e["record"], "header_hash": "0x" + "00" * 32}},
    lambda e: {**e, "successors": [{}]},
    lambda e: {**e, "proof": []},
], ids=["type", "format", "no-proof", "rlp", "atts-type", "att", "record", "record-hash", "successor", "proof"])
def test_malformed_evidence_is_bad_evidence(mutate: object) -> None:
    good = Evidence(b"\xc0", (), {"address": "0x00"}, make_record("1.0.0")).to_json()
    assert Evidence.from_json(good).record == make_record("1.0.0")
    with pytest.raises(UpdateRefused) as err:
        Evidence.from_json(mutate(good))  # type: ignore[operator]
    assert err.value.code == "bad_evidence"


def test_component_specs() -> None:
    assert parse_component_spec("main") == ("main", ComponentBinding("main"))
    assert parse_component_spec("main=cam-fw") == ("main", ComponentBinding("cam-fw"))
    assert parse_component_spec("main=acme/cam/fw") == ("main", ComponentBinding("cam/fw", "acme"))
    for bad in ("Main", "main=", "main=/x", "main=acme/", ""):
        with pytest.raises(BadInstallRequest):
            parse_component_spec(bad)
