"""The release registry on chain, run on the embedded chain and on anvil (same suite).

Each on-chain refusal is tested one by one against the contract itself (raw transactions that
skip the client's own validation), asserting the contract's reason and that nothing changed.
"""

from __future__ import annotations

import pytest
from eth_utils import keccak

from ledger_node.errors import ContractRevert
from ledger_node.record import ZERO_HASH, Dependency, Version, line_id
from ledger_node.registry import Registry
from tests.conftest import Chain
from tests.helpers import make_record

NOT_HEAD = "previous header hash is not the head of the product line"


def raw_publish_args(record, **override):  # type: ignore[no-untyped-def]
    d = record.data
    args = dict(format_version=record.format_version, prev=record.prev_hash, merkle=d.merkle_root,
                vendor=d.vendor_name, product=d.product, version=d.version.packed, file_hash=d.file_hash,
                link=d.file_link, name=d.file_name, size=d.file_size, hw=list(d.supported_hardware),
                deps=[(x.product, x.min_version.packed, x.max_version.packed) for x in d.dependencies])
    args.update(override)
    return list(args.values())


def refused(reg: Registry, fn: str, *args: object) -> str:
    with pytest.raises(ContractRevert) as exc:
        reg.transact(fn, *args)
    return exc.value.reason


# ----------------------------------------------------------------------------- publish (Table II.1)

def test_publish_builds_the_record_on_chain_and_chains_it(chain: Chain, registry: Registry) -> None:
    """Appendix II Table II.1: the chain's header hash is the codec's; publish time from the block."""
    vendor = registry.with_account(chain.vendor)
    r1 = vendor.publish(make_record("1.0.0", hardware=("cam-r1", "cam-r2")))
    block = chain.w3.eth.get_block(r1.block)
    assert r1.record.data.publish_time == block["timestamp"]
    assert r1.header_hash == r1.record.header_hash
    r2 = vendor.publish(make_record("1.1.0", prev=r1.header_hash))
    assert r2.record.prev_hash == r1.header_hash
    line = line_id("acme", "main-fw")
    first, second = registry.release_entry(line, r1.header_hash), registry.release_entry(line, r2.header_hash)
    assert first.exists and not first.head and first.version == Version(1, 0, 0)
    assert second.exists and second.head and second.version == Version(1, 1, 0)
    assert not registry.release_entry(line, b"\x01" * 32).exists


def test_publish_gas_under_80k_per_release(chain: Chain, registry: Registry) -> None:
    """Storage kept small: one word per release; a typical record costs under 80,000 gas."""
    vendor = registry.with_account(chain.vendor)
    r1 = vendor.publish(make_record("1.0.0", hardware=("cam-r1", "cam-r2"),
                                    deps=(Dependency("bootloader", Version(1, 0, 0), Version(1, 9, 0)),)))
    r2 = vendor.publish(make_record("1.1.0", prev=r1.header_hash, hardware=("cam-r1", "cam-r2"),
                                    deps=(Dependency("bootloader", Version(1, 0, 0), Version(1, 9, 0)),)))
    assert r2.gas_used < 80_000, r2.gas_used


def test_non_vendor_cannot_publish(chain: Chain, registry: Registry) -> None:
    reason = refused(registry.with_account(chain.stranger), "publish", *raw_publish_args(make_record()))
    assert reason == "sender is not an active vendor"


def test_vendor_name_must_match_sender(chain: Chain, registry: Registry) -> None:
    reason = refused(registry.with_account(chain.vendor), "publish", *raw_publish_args(make_record(vendor="globex")))
    assert reason == "vendor name does not match the sender"


def test_revoked_vendor_cannot_publish(chain: Chain, registry: Registry) -> None:
    vendor = registry.with_account(chain.vendor)
    r1 = vendor.publish(make_record("1.0.0"))
    res = registry.revoke_vendor(chain.vendor.address)
    assert res.executed
    reason = refused(vendor, "publish", *raw_publish_args(make_record("1.1.0", prev=r1.header_hash)))
    assert reason == "sender is not an active vendor"
    assert not registry.is_vendor(chain.vendor.address)


def test_wrong_previous_hash_refused(chain: Chain, registry: Registry) -> None:
    vendor = registry.with_account(chain.vendor)
    # a first release must chain to zero ...
    assert refused(vendor, "publish", *raw_publish_args(make_record(prev=b"\x07" * 32))) == NOT_HEAD
    r1 = vendor.publish(make_record("1.0.0"))
    r2 = vendor.publish(make_record("1.1.0", prev=r1.header_hash))
    # ... later ones to the current head: not zero, not an older release, not garbage
    for prev in (ZERO_HASH, r1.header_hash, b"\x07" * 32):
        assert refused(vendor, "publish", *raw_publish_args(make_record("1.2.0", prev=prev))) == NOT_HEAD
    assert registry.release_entry(r2.record.line, r2.header_hash).head


@pytest.mark.parametrize("version", ["1.1.0", "1.0.9", "0.9.0"])
def test_equal_or_lower_version_refused(chain: Chain, registry: Registry, version: str) -> None:
    """R10.d.i on chain: versions strictly increase along a product line."""
    vendor = registry.with_account(chain.vendor)
    r1 = vendor.publish(make_record("1.1.0"))
    reason = refused(vendor, "publish", *raw_publish_args(make_record(version, prev=r1.header_hash)))
    assert reason == "version not above the head's version"


def test_unknown_hardware_refused(chain: Chain, registry: Registry) -> None:
    reason = refused(registry.with_account(chain.vendor), "publish",
                     *raw_publish_args(make_record(hardware=("cam-r1", "toaster"))))
    assert reason == "unknown hardware class"


def test_zero_size_refused(chain: Chain, registry: Registry) -> None:
    reason = refused(registry.with_account(chain.vendor), "publish", *raw_publish_args(make_record(), size=0))
    assert reason == "file size is zero"


def test_other_record_format_refused(chain: Chain, registry: Registry) -> None:
    reason = refused(registry.with_account(chain.vendor), "publish", *raw_publish_args(make_record(), format_version=2))
    assert reason == "unsupported record format version"


def test_no_hardware_and_bad_dependency_refused(chain: Chain, registry: Registry) -> None:
    vendor = registry.with_account(chain.vendor)
    assert refused(vendor, "publish", *raw_publish_args(make_record(), hw=[])) == "no supported hardware"
    assert refused(vendor, "publish", *raw_publish_args(make_record(), deps=[("boot", 5, 4)])) == "bad dependency range"


def test_product_lines_are_independent(chain: Chain, registry: Registry) -> None:
    vendor = registry.with_account(chain.vendor)
    vendor.publish(make_record("2.0.0", product="main-fw"))
    r = vendor.publish(make_record("1.0.0", product="sensor-drv"))  # lower version, other line: fine
    assert registry.release_entry(line_id("acme", "sensor-drv"), r.header_hash).head


# ----------------------------------------------------------------------------- revocation, vulnerability

def test_vendor_revokes_its_release_with_reason(chain: Chain, registry: Registry) -> None:
    """R10.a.i / R10.b.ii: revocation and vulnerable flags are on chain, with who and why."""
    vendor = registry.with_account(chain.vendor)
    r1 = vendor.publish(make_record("1.0.0"))
    res = vendor.revoke("acme", "main-fw", r1.header_hash, "signing key leaked")
    assert res.executed
    entry = registry.release_entry(r1.record.line, r1.header_hash)
    assert entry.revoked and entry.head and not entry.vulnerable
    assert refused(vendor, "revoke", "acme", "main-fw", r1.header_hash, "again") == "release already revoked"
    # the revoked head still anchors the line; the next release chains to it
    r2 = vendor.publish(make_record("1.0.1", prev=r1.header_hash))
    assert registry.release_entry(r1.record.line, r2.header_hash).head


def test_admin_marks_vulnerable_stranger_cannot(chain: Chain, registry: Registry) -> None:
    r1 = registry.with_account(chain.vendor).publish(make_record("1.0.0"))
    stranger = registry.with_account(chain.stranger)
    assert refused(stranger, "mark_vulnerable", "acme", "main-fw", r1.header_hash, "CVE") == \
        "caller is neither the release's vendor nor an administrator"
    assert refused(stranger, "revoke", "acme", "main-fw", r1.header_hash, "x") == \
        "caller is neither the release's vendor nor an administrator"
    assert registry.mark_vulnerable("acme", "main-fw", r1.header_hash, "CVE-2026-0001").executed
    entry = registry.release_entry(r1.record.line, r1.header_hash)
    assert entry.vulnerable and not entry.revoked


def test_another_vendor_cannot_revoke(chain: Chain, registry: Registry) -> None:
    registry.add_vendor(chain.vendor2.address, "globex")
    r1 = registry.with_account(chain.vendor).publish(make_record("1.0.0"))
    reason = refused(registry.with_account(chain.vendor2), "revoke", "acme", "main-fw", r1.header_hash, "x")
    assert reason == "caller is neither the release's vendor nor an administrator"
    assert refused(registry, "revoke", "acme", "main-fw", b"\x05" * 32, "x") == "unknown release"


# ----------------------------------------------------------------------------- vendors

def test_vendor_rotation_refuses_the_old_key(chain: Chain, registry: Registry) -> None:
    old = registry.with_account(chain.vendor)
    r1 = old.publish(make_record("1.0.0"))
    assert registry.rotate_vendor(chain.vendor.address, chain.vendor2.address).executed
    assert refused(old, "publish", *raw_publish_args(make_record("1.1.0", prev=r1.header_hash))) == \
        "sender is not an active vendor"
    r2 = registry.with_account(chain.vendor2).publish(make_record("1.1.0", prev=r1.header_hash))
    assert registry.release_entry(r1.record.line, r2.header_hash).head


def test_vendor_names_and_addresses_are_unique(chain: Chain, registry: Registry) -> None:
    assert refused(registry, "add_vendor", chain.vendor2.address, "acme") == "vendor name already registered"
    assert refused(registry, "add_vendor", chain.vendor.address, "globex") == "address is already a vendor"
    assert refused(registry, "add_vendor", chain.vendor2.address, "") == "empty vendor name"


# ----------------------------------------------------------------------------- administration

ADMIN_CALLS = [
    ("add_vendor", lambda c: (c.vendor2.address, "globex")),
    ("revoke_vendor", lambda c: (c.vendor.address,)),
    ("rotate_vendor", lambda c: (c.vendor.address, c.vendor2.address)),
    ("add_hardware", lambda c: ("cam-r9", 9, b"\x13" * 32)),
    ("set_policy", lambda c: ("cam-r1", "acme", "main-fw", True, 0, 10)),
    ("add_admin", lambda c: (c.stranger.address,)),
    ("remove_admin", lambda c: (c.admin.address,)),
    ("set_threshold", lambda c: (1,)),
]


@pytest.mark.parametrize("fn,args", ADMIN_CALLS, ids=[c[0] for c in ADMIN_CALLS])
def test_every_admin_function_refuses_a_non_admin(chain: Chain, registry: Registry, fn, args) -> None:  # type: ignore[no-untyped-def]
    reason = refused(registry.with_account(chain.stranger), fn, *args(chain))
    # remove_admin of the only admin is refused earlier, by the threshold rule
    assert reason in ("caller is not an administrator", "would leave fewer administrators than the threshold")
    if fn != "remove_admin":
        assert reason == "caller is not an administrator"
    assert registry.is_vendor(chain.vendor.address, "acme") and not registry.is_admin(chain.stranger.address)


def test_k_of_n_needs_k_approvals(chain: Chain) -> None:
    """2 of 3: one stolen key cannot register a vendor, a hardware class or a policy."""
    a1, a2, a3 = chain.accounts[0], chain.accounts[4], chain.accounts[5]
    dep = chain.deploy([a1.address, a2.address, a3.address], threshold=2)
    r1, r2 = Registry(chain.w3, dep, a1), Registry(chain.w3, dep, a2, check_code=False)

    res = r1.add_vendor(chain.vendor.address, "acme")
    assert (res.executed, res.approvals, res.threshold) == (False, 1, 2)
    assert not r1.is_vendor(chain.vendor.address)
    assert refused(r1, "add_vendor", chain.vendor.address, "acme") == "already approved by this administrator"
    assert not r1.add_hardware("cam-r1", 1, b"\x11" * 32).executed
    assert not r1.hardware("cam-r1").registered
    # a different change does not count towards the first one
    assert not r2.add_vendor(chain.vendor.address, "acme-evil").executed
    assert not r1.is_vendor(chain.vendor.address)
    # the second approval of the same change executes it
    assert r2.add_vendor(chain.vendor.address, "acme").executed
    assert r1.is_vendor(chain.vendor.address, "acme")
    assert r2.add_hardware("cam-r1", 1, b"\x11" * 32).executed
    hw = r1.hardware("cam-r1")
    assert hw.registered and hw.revision == 1 and hw.enc_key == b"\x11" * 32
    assert not r1.set_policy("cam-r1", "acme", "main-fw", max_version=Version(1, 9, 0)).executed
    assert not r1.policy("cam-r1", "acme", "main-fw").set
    assert r2.set_policy("cam-r1", "acme", "main-fw", max_version=Version(1, 9, 0)).executed
    pol = r1.policy("cam-r1", "acme", "main-fw")
    assert pol.set and pol.allowed and pol.max_version == Version(1, 9, 0)
    assert pol.permits(Version(1, 2, 0)) and not pol.permits(Version(2, 0, 0))


def test_admin_set_changes_cancel_pending_approvals(chain: Chain) -> None:
    a1, a2, a3 = chain.accounts[0], chain.accounts[4], chain.accounts[5]
    dep = chain.deploy([a1.address, a2.address], threshold=2)
    r1, r2 = Registry(chain.w3, dep, a1), Registry(chain.w3, dep, a2, check_code=False)
    assert not r1.add_vendor(chain.vendor.address, "acme").executed  # pending
    assert not r1.add_admin(a3.address).executed
    assert r2.add_admin(a3.address).executed
    assert r1.is_admin(a3.address) and r1.admin_count() == 3
    # the pending vendor approval was cancelled by the admin-set change: one more is not enough
    assert not r2.add_vendor(chain.vendor.address, "acme").executed
    assert not r1.is_vendor(chain.vendor.address)
    r3 = Registry(chain.w3, dep, a3, check_code=False)
    assert r3.add_vendor(chain.vendor.address, "acme").executed
    # threshold rules
    assert refused(r1, "set_threshold", 4) == "threshold out of range"
    assert refused(r1, "set_threshold", 0) == "threshold out of range"
    assert not r1.remove_admin(a3.address).executed
    assert r2.remove_admin(a3.address).executed
    assert not r1.is_admin(a3.address)
    assert refused(r1, "remove_admin", a2.address) == "would leave fewer administrators than the threshold"


def test_hardware_and_policy_rules(chain: Chain, registry: Registry) -> None:
    assert refused(registry, "add_hardware", "cam-r1", 1, b"\x11" * 32) == "hardware class already registered"
    assert refused(registry, "add_hardware", "cam-r3", 3, b"\x00" * 32) == "zero encryption key"
    assert refused(registry, "set_policy", "toaster", "acme", "main-fw", True, 0, 1) == "unknown hardware class"
    assert refused(registry, "set_policy", "cam-r1", "acme", "main-fw", True, 5, 1) == "min version above max version"
    assert registry.set_policy("cam-r2", "acme", "main-fw", allowed=False).executed
    pol = registry.policy("cam-r2", "acme", "main-fw")
    assert pol.set and not pol.allowed and not pol.permits(Version(1, 0, 0))
    assert registry.hardware("cam-r2").revision == 2
    assert keccak(b"cam-r2") != keccak(b"cam-r1")


def test_deploy_refuses_bad_admin_sets(chain: Chain) -> None:
    with pytest.raises(ContractRevert, match="threshold out of range"):
        chain.deploy([chain.admin.address], threshold=2)
    with pytest.raises(ContractRevert, match="duplicate administrator"):
        chain.deploy([chain.admin.address, chain.admin.address], threshold=1)
