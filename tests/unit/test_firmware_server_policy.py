"""The firmware server's trust decisions, pure: every refusal is a small scenario (STYLE.md).

Covers C11.3.a (active vendors only), C11.3.c / R10.a.i (malicious bundles refused, malice bars),
R10.a.iii (the provider verifiable), P4 (entitlement), C11.3.h (location rules), C11.3.g / T9.b
(notifications), and the single-range parser used to resume downloads.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from eth_account import Account
from eth_account.signers.local import LocalAccount

from entities.bundle import BundleHeader, PayloadError, build_bundle, release_digest, sign_release
from entities.firmware_server.policy import (
    DeviceFacts,
    ImageFacts,
    LocationRule,
    Refusal,
    check_bundle_header,
    check_known_bad,
    check_unbar,
    check_uploader,
    concerned_devices,
    decide_download,
    device_labels,
    ledger_state_for_upload,
    location_decision,
    new_release_notification,
    normalise_label,
    parse_rules,
    payload_refusal,
    revocation_outcome,
    server_trigger,
    serving_class,
)
from entities.firmware_server.transfer import parse_range
from ledger_node.fullnode import IndexedRelease, PolicyInfo, VendorInfo
from ledger_node.record import ZERO_HASH, Version

CHAIN_ID = 31337
REGISTRY = "0x" + "11" * 20
VENDOR: LocalAccount = Account.from_key(b"\x01" * 32)
OTHER: LocalAccount = Account.from_key(b"\x02" * 32)
HW = {"cam-r1", "cam-r2"}


def _pub(seed: bytes) -> bytes:
    key = X25519PrivateKey.from_private_bytes(hashlib.sha256(seed).digest())
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@pytest.fixture(scope="module")
def header(tmp_path_factory: pytest.TempPathFactory) -> BundleHeader:
    tmp = tmp_path_factory.mktemp("bundle")
    image = tmp / "fw.img"
    image.write_bytes(b"\x5a" * 100_000)
    return build_bundle(image, tmp / "fw.fwb", vendor_name="acme", product="cam-fw", version=Version(1, 2, 0),
                        link="http://127.0.0.1/fw", hardware=("cam-r1",), class_keys={"cam-r1": _pub(b"r1")},
                        account=VENDOR, chain_id=CHAIN_ID, registry=REGISTRY)


def vendor_info(name: str = "acme", active: bool = True, account: LocalAccount = VENDOR) -> VendorInfo:
    return VendorInfo(account.address, name, b"\x00" * 32, active, not active, None, 1)


def indexed(header: BundleHeader, *, revoked: bool = False, flagged: bool = False, version: Version | None = None,
            publish_time: int = 1_700_000_000) -> IndexedRelease:
    data = replace(header.record.data, publish_time=publish_time, version=version or header.record.data.version)
    record = replace(header.record, data=data)
    return IndexedRelease(record=record, header_hash=record.header_hash, line=record.line, position=1, block=5,
                          tx="0x", log_index=0, head=True, revoked=revoked, revoke_reason="bad" if revoked else None,
                          vulnerable=False, vulnerable_note=None, flagged=flagged, flag_reason=None)


# ----------------------------------------------------------------------------- revocation vs barring

OTHER: LocalAccount = Account.from_key(b"\x02" * 32)


@pytest.mark.parametrize(("revoker", "known_bad", "outcome"), [
    (vendor_info(), False, ("vendor", False)),
    (vendor_info(), True, ("vendor", False)),  # a vendor recalling its build never proves malice
    (vendor_info(active=False), False, ("vendor", False)),  # revoked by a key since rotated away
    (None, False, ("administration", False)),
    (vendor_info("globex", account=OTHER), False, ("administration", False)),
    (None, True, ("administration", True)),  # the administration's revocation of a known-bad payload
])
def test_revocation_outcome(revoker: VendorInfo | None, known_bad: bool, outcome: tuple[str, bool]) -> None:
    """C11.3.c/d, R10.a.i: a revoked release is withdrawn; its vendor is barred only when the
    administration revoked it and the payload is on the known-bad list."""
    file_hash = b"\x07" * 32
    assert revocation_outcome("acme", revoker, file_hash, {file_hash} if known_bad else set()) == outcome


def test_unbar_refused_for_a_vendor_revoked_on_the_ledger_or_not_barred() -> None:
    """C11.3.c/d: the operator lifts a bar, never one the ledger stands behind."""
    check_unbar("acme", [vendor_info(), vendor_info("globex", active=False, account=OTHER)], barred=True)
    for entries, barred, code in (([vendor_info(active=False)], True, "vendor_revoked"),
                                  ([vendor_info(active=False)], False, "vendor_revoked"),
                                  ([vendor_info()], False, "not_barred"), ([], False, "not_barred")):
        with pytest.raises(Refusal) as err:
            check_unbar("acme", entries, barred)
        assert err.value.code == code


# ----------------------------------------------------------------------------- C11.3.a uploaders


def test_active_vendor_may_upload() -> None:
    """C11.3.a."""
    assert check_uploader(VENDOR.address, vendor_info(), barred=False).name == "acme"


@pytest.mark.parametrize(("vendor", "barred", "code"), [
    (None, False, "not_a_vendor"),
    (vendor_info(active=False), False, "not_a_vendor"),
    (vendor_info(), True, "vendor_barred"),
    (None, True, "vendor_barred"),
])
def test_uploader_refused(vendor: VendorInfo | None, barred: bool, code: str) -> None:
    """C11.3.a, C11.3.c: strangers, revoked keys and barred vendors may not submit."""
    with pytest.raises(Refusal) as err:
        check_uploader(VENDOR.address, vendor, barred)
    assert err.value.code == code and not err.value.malicious


# ----------------------------------------------------------------------------- C11.3.c bundles


def test_good_bundle_header_gives_the_record_digest(header: BundleHeader) -> None:
    """R10.a.iii: signed by the uploader, for its own name, for registered hardware."""
    digest = check_bundle_header(header, signer=VENDOR.address, vendor_name="acme", chain_id=CHAIN_ID,
                                 registry=REGISTRY, registered_hardware=HW)
    assert digest == release_digest(header, CHAIN_ID, REGISTRY)


def test_unusable_bundle_signature_is_malicious(header: BundleHeader) -> None:
    """R10.a.i, C11.3.c: a vendor that sends a bundle whose signature cannot verify is barred."""
    forged = BundleHeader(header.record, b"\x00" * 64 + b"\x1b", header.encryption)
    with pytest.raises(Refusal) as err:
        check_bundle_header(forged, signer=VENDOR.address, vendor_name="acme", chain_id=CHAIN_ID,
                            registry=REGISTRY, registered_hardware=HW)
    assert (err.value.code, err.value.malicious, err.value.status) == ("bad_signature", True, 422)


def test_bundle_signed_for_another_registry_is_a_signer_mismatch(header: BundleHeader) -> None:
    """EIP-712 binds the signature to the registry: the same bytes for another one recover a stranger."""
    with pytest.raises(Refusal) as err:
        check_bundle_header(header, signer=VENDOR.address, vendor_name="acme", chain_id=CHAIN_ID,
                            registry="0x" + "22" * 20, registered_hardware=HW)
    assert err.value.code == "signer_mismatch" and not err.value.malicious


def test_bundle_signed_by_another_key(header: BundleHeader) -> None:
    other = BundleHeader(header.record, sign_release(header.record, OTHER, CHAIN_ID, REGISTRY), header.encryption)
    with pytest.raises(Refusal) as err:
        check_bundle_header(other, signer=VENDOR.address, vendor_name="acme", chain_id=CHAIN_ID,
                            registry=REGISTRY, registered_hardware=HW)
    assert err.value.code == "signer_mismatch"


def test_record_in_another_vendors_name(header: BundleHeader) -> None:
    """A vendor key may only sign records of its own name (product lines are keyed by name)."""
    with pytest.raises(Refusal) as err:
        check_bundle_header(header, signer=VENDOR.address, vendor_name="globex", chain_id=CHAIN_ID,
                            registry=REGISTRY, registered_hardware=HW)
    assert err.value.code == "vendor_name_mismatch"


def test_unregistered_hardware(header: BundleHeader) -> None:
    with pytest.raises(Refusal) as err:
        check_bundle_header(header, signer=VENDOR.address, vendor_name="acme", chain_id=CHAIN_ID,
                            registry=REGISTRY, registered_hardware={"cam-r2"})
    assert err.value.code == "unknown_hardware" and "cam-r1" in str(err.value)


@pytest.mark.parametrize(("code", "verified", "malicious"), [
    ("hash_mismatch", True, True), ("merkle_mismatch", True, True), ("size_mismatch", True, True),
    ("trailing_bytes", True, True), ("truncated", True, True),
    ("hash_mismatch", False, False),  # without a verified header it proves nothing about the vendor
])
def test_payload_refusals(code: str, verified: bool, malicious: bool) -> None:
    """C11.3.c: a payload not matching the vendor's own signed record proves malice."""
    ref = payload_refusal(PayloadError(code, "x"), header_verified=verified)
    assert (ref.code, ref.malicious) == (code, malicious)


def test_known_bad_hash_is_malicious() -> None:
    """R10.a.i: identified before anyone downloads it."""
    check_known_bad(b"\x01" * 32, frozenset({b"\x02" * 32}))
    with pytest.raises(Refusal) as err:
        check_known_bad(b"\x01" * 32, frozenset({b"\x01" * 32}))
    assert err.value.code == "known_bad" and err.value.malicious


def test_upload_matched_to_its_ledger_record(header: BundleHeader) -> None:
    """The publish time is not signed: the chain's record and the bundle share the digest."""
    digest = release_digest(header, CHAIN_ID, REGISTRY)
    rel = indexed(header)
    assert ledger_state_for_upload(digest, [rel], CHAIN_ID, REGISTRY) == rel
    assert ledger_state_for_upload(digest, [], CHAIN_ID, REGISTRY) is None
    assert ledger_state_for_upload(digest, [indexed(header, flagged=True)], CHAIN_ID, REGISTRY) is None
    other = indexed(header, version=Version(9, 0, 0))
    assert ledger_state_for_upload(digest, [other], CHAIN_ID, REGISTRY) is None
    with pytest.raises(Refusal) as err:
        ledger_state_for_upload(digest, [indexed(header, revoked=True)], CHAIN_ID, REGISTRY)
    assert err.value.code == "revoked"


# ----------------------------------------------------------------------------- P4 downloads


DEVICE = DeviceFacts("0xabc", "dev-1", "cam-r1", "eu-west", None)


def image_facts(state: str = "published", header_hash: bytes | None = b"\x07" * 32) -> ImageFacts:
    return ImageFacts(b"\x01" * 32, b"\x02" * 32, state, "acme", "cam-fw", Version(1, 2, 0),  # type: ignore[arg-type]
                      header_hash, "vendor barred" if state == "withdrawn" else None)


LOWEST, HIGH = Version(0, 0, 0), Version(9, 9, 9)


def policy(allowed: bool = True, lo: Version = LOWEST, hi: Version = HIGH) -> PolicyInfo:
    return PolicyInfo("cam-r1", "acme", "cam-fw", b"\x00" * 32, allowed, lo, hi, 1)


def test_entitled_device_is_served(header: BundleHeader) -> None:
    """P4: registered, published, not revoked, supported class, policy and location allow."""
    decide_download(device=DEVICE, image=image_facts(), release=indexed(header), policy=policy(), rules=(),
                    client_ip="127.0.0.1")


@pytest.mark.parametrize(("kw", "code"), [
    ({"device": None}, "unregistered_device"),
    ({"image": None}, "unknown_image"),
    ({"image": image_facts("unpublished", None), "release": None}, "not_published"),
    ({"release": None}, "not_published"),
    ({"image": image_facts("withdrawn")}, "revoked"),
    ({"revoked": True}, "revoked"),
    ({"flagged": True}, "not_published"),
    ({"device": replace(DEVICE, hardware="cam-r2")}, "hardware_not_supported"),
    ({"policy": policy(allowed=False)}, "policy_denied"),
    ({"policy": policy(lo=Version(2, 0, 0))}, "policy_denied"),
    ({"policy": policy(hi=Version(1, 1, 9))}, "policy_denied"),
    ({"rules": (LocationRule("deny", region="eu-*"),)}, "location_denied"),
])
def test_download_refusals(header: BundleHeader, kw: dict[str, object], code: str) -> None:
    """P4: every way a device can lack the right to an image, each with its code."""
    args: dict[str, object] = {"device": DEVICE, "image": image_facts(), "policy": None, "rules": (),
                               "client_ip": "127.0.0.1",
                               "release": indexed(header, revoked=bool(kw.pop("revoked", False)),
                                                  flagged=bool(kw.pop("flagged", False)))}
    args.update(kw)
    with pytest.raises(Refusal) as err:
        decide_download(**args)  # type: ignore[arg-type]
    assert err.value.code == code


def test_a_release_for_one_of_the_devices_add_on_boards_is_served(header: BundleHeader) -> None:
    """Appendix II, P4: a device registered with add-on boards has the right to a release for its own
    class or for one of its boards (the policy checked is that class's); for neither it is refused."""
    supported = indexed(header).record.data.supported_hardware
    board = replace(DEVICE, hardware="gw-r1", addons=("x-b1", supported[0]))
    assert serving_class(board, supported) == supported[0] and serving_class(DEVICE, supported) == "cam-r1"
    decide_download(device=board, image=image_facts(), release=indexed(header), policy=policy(), rules=(),
                    client_ip="127.0.0.1")
    with pytest.raises(Refusal) as err:
        decide_download(device=replace(board, addons=("x-b1",)), image=image_facts(), release=indexed(header),
                        policy=None, rules=(), client_ip="127.0.0.1")
    assert err.value.code == "hardware_not_supported" and "gw-r1, x-b1" in str(err.value)


# ----------------------------------------------------------------------------- C11.3.h location


def test_first_matching_rule_wins_default_allow() -> None:
    rules = parse_rules([{"action": "allow", "region": "eu-west"}, {"action": "deny", "region": "eu-*"},
                         {"action": "deny", "cidr": "10.0.0.0/8"}])
    assert location_decision(rules, ("eu-west",), "10.1.2.3")[:2] == (True, 0)
    assert location_decision(rules, ("eu-central",), "192.0.2.1")[:2] == (False, 1)
    assert location_decision(rules, ("us-east",), "10.1.2.3")[:2] == (False, 2)
    assert location_decision(rules, ("us-east",), "192.0.2.1") == (True, None, None)
    assert location_decision(rules, (), None) == (True, None, None)


def test_rule_conditions_all_hold_and_catch_all() -> None:
    both = LocationRule.parse({"action": "deny", "region": "cn-*", "cidr": "192.0.2.0/24"})
    assert both.matches(("cn-north",), "192.0.2.9")
    assert not both.matches(("cn-north",), "198.51.100.1") and not both.matches(("eu-west",), "192.0.2.9")
    assert LocationRule.parse({"action": "deny"}).matches((), None)  # a final catch-all


def test_cidr_matching_ipv4_mapped_and_families() -> None:
    rule = LocationRule.parse({"action": "deny", "cidr": "127.0.0.0/8"})
    assert rule.matches((), "127.0.0.1") and rule.matches((), "::ffff:127.0.0.1")
    assert not rule.matches((), "::1") and not rule.matches((), "not-an-ip") and not rule.matches((), None)
    v6 = LocationRule.parse({"action": "deny", "cidr": "2001:db8::/32"})
    assert v6.matches((), "2001:db8::1") and not v6.matches((), "10.0.0.1")


def test_operator_region_overrides_the_devices_claim() -> None:
    """C11.3.h: a device cannot dodge a deny rule by declaring another region once assigned."""
    assert device_labels(DEVICE) == ("eu-west",)
    assert device_labels(replace(DEVICE, assigned_region="cn-north")) == ("cn-north",)
    assert device_labels(replace(DEVICE, location=None)) == ()


@pytest.mark.parametrize("bad", [
    {"action": "maybe"}, {"action": "deny", "cidr": "10.0.0.0/33"}, {"action": "deny", "region": "../x"},
    {"action": "deny", "region": ""}, {"action": "deny", "extra": 1}, {"action": "deny", "cidr": 5}, "deny",
])
def test_bad_rules_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="rule 0"):
        parse_rules([bad])  # type: ignore[list-item]


def test_labels_normalised() -> None:
    assert normalise_label("EU-West") == "eu-west"
    for bad in ("", "-x", "a/b", "x" * 65, "é"):
        with pytest.raises(ValueError):
            normalise_label(bad)


def test_refusal_names_the_rule(header: BundleHeader) -> None:
    rules = parse_rules([{"action": "allow", "region": "us-*"}, {"action": "deny", "cidr": "127.0.0.0/8"}])
    with pytest.raises(Refusal) as err:
        decide_download(device=DEVICE, image=image_facts(), release=indexed(header), policy=None, rules=rules,
                        client_ip="127.0.0.1")
    assert err.value.details == {"rule": {"index": 1, "action": "deny", "cidr": "127.0.0.0/8"}}
    assert "rule #1 (deny network 127.0.0.0/8)" in str(err.value)


# ----------------------------------------------------------------------------- C11.3.g notifications


def test_notification_lists_devices_with_older_versions(header: BundleHeader) -> None:
    """T9.b, C11.3.g: a device is concerned when the newest version of the line it took here is older
    than the release's and its hardware class is one the release supports; it is named with both."""
    rel = indexed(header)  # 1.2.0
    hardware = {"a": rel.record.data.supported_hardware[0], "c": rel.record.data.supported_hardware[0],
                "d": rel.record.data.supported_hardware[0], "e": "other-class"}
    took = [("a", Version(1, 0, 0)), ("b", Version(1, 0, 0)), ("a", Version(1, 1, 0)), ("c", Version(1, 0, 0)),
            ("c", Version(2, 0, 0)), ("d", Version(1, 1, 9)), ("e", Version(1, 0, 0))]
    concerned = concerned_devices(rel, took, hardware.get)  # b: no longer a device of the server
    hw = rel.record.data.supported_hardware[0]
    assert concerned == [{"device_id": "a", "hardware": hw, "version": "1.1.0"},
                         {"device_id": "d", "hardware": hw, "version": "1.1.9"}]
    note = new_release_notification(rel, concerned)
    assert note == {"event": "new_release", "header_hash": "0x" + rel.header_hash.hex(), "product": "cam-fw",
                    "version": "1.2.0", "devices": concerned}
    trig = server_trigger(rel, concerned)
    assert trig["devices"] == concerned and trig["source"] == "server" and trig["version"] == "1.2.0"
    assert "devices" not in server_trigger(rel)


# ----------------------------------------------------------------------------- ranges


@pytest.mark.parametrize(("header", "expected"), [
    (None, None), ("bytes=0-99", (0, 100)), ("bytes=100-", (100, 1000)), ("bytes=-10", (990, 1000)),
    ("bytes=990-5000", (990, 1000)), ("bytes=-5000", (0, 1000)), (" bytes = 5 - 5 ", (5, 6)),
])
def test_single_range(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5-4", "bytes=-0", "bytes=0-1,5-9", "lines=1-2", "bytes=-",
                                    "bytes=abc", "bytes=" + "9" * 200])
def test_bad_ranges(header: str) -> None:
    with pytest.raises(Refusal) as err:
        parse_range(header, 1000)
    assert err.value.code == "bad_range" and err.value.details == {"size": 1000}


def test_digest_ignores_publish_time_only(header: BundleHeader) -> None:
    """Why uploads match Published events: the digest is blind to publish time, not to anything else."""
    a = release_digest(indexed(header, publish_time=1).record, CHAIN_ID, REGISTRY)
    b = release_digest(indexed(header, publish_time=2).record, CHAIN_ID, REGISTRY)
    c = release_digest(replace(header.record, prev_hash=b"\x01" * 32), CHAIN_ID, REGISTRY)
    assert a == b == release_digest(header, CHAIN_ID, REGISTRY) != c
    assert header.record.prev_hash == ZERO_HASH

