"""The author as a light node (X.1368 Figure II.2) against a LYING JSON-RPC node.

A real HTTP proxy on 127.0.0.1 (:class:`tests.integration.lying_rpc.LyingRpc`) stands in front of
the embedded chain or anvil and rewrites answers: the hardware class's X25519 key in ``eth_call``
(an attacker's key), the claimed values of ``eth_getProof``, the events, the vendor lookup, the
header's state root. The author proves what it builds on with storage proofs at a trusted header
(its own node's, a second node's, or k of n tracker attestations) and refuses, with one line naming
what could not be proven, before any bundle is written; through an honest proxy it builds as before.
Reuses the world of tests/integration/test_author.py (its fixture, both backends).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account

from entities.author.publish import publish_bundle
from entities.author.trust import (
    AuthorAnchors,
    OwnNode,
    SecondNode,
    TrackerHeaders,
    UnprovenLedger,
    prove_build_inputs,
)
from ledger_node.compiler import registry_contract
from ledger_node.fullnode import FullNode, Index
from ledger_node.lightnode import HARDWARE_ENC_KEY, author_slots
from ledger_node.providers import connect
from ledger_node.record import ZERO_HASH, Version
from ledger_node.registry import Registry
from tests.integration.lying_rpc import LyingRpc
from tests.integration.test_author import World, decrypt_file, env, fund, ok_json, run, world  # noqa: F401

ATTACKER = X25519PrivateKey.generate().public_key().public_bytes_raw()
HW = ("cam-x1", "cam-x2")


def through(world: World, proxy: LyingRpc, tmp: Path, name: str = "proxied") -> tuple[Registry, FullNode]:  # noqa: F811
    """The vendor's registry client and a fresh full node, both reading the chain through ``proxy``."""
    w3 = connect(proxy.url)
    index = Index(tmp / f"{name}.sqlite")
    return (Registry(w3, world.admin.deployment, world.chain.vendor),
            FullNode(w3, world.admin.deployment, index))


def prove(world: World, reg: Registry, node: FullNode, source: Any = None, *, version: str = "1.0.0",  # noqa: F811
          vendor_name: str | None = None, address: str | None = None, sync: bool = True,
          hardware: tuple[str, ...] = HW) -> Any:
    if sync:
        node.sync_once()
    return prove_build_inputs(reg, node.index, address or world.chain.vendor.address, source or OwnNode(),
                              vendor_name=vendor_name, product="main-fw", version=Version.parse(version),
                              hardware=hardware)


def enc_key_slot(hw: str) -> int:
    slots = author_slots(registry_contract(), vendor_name="acme", product="main-fw", hardware=[hw], head=None)
    return slots.hardware[hw] + HARDWARE_ENC_KEY


def upstream(world: World) -> Any:  # noqa: F811
    return world.chain.w3 if world.chain.backend == "embedded" else world.chain.rpc


# ------------------------------------------------------------------------------ library level, both backends


def test_honest_node_proves_and_the_bundle_is_built_as_before(world: World, tmp_path: Path) -> None:  # noqa: F811
    """Through an honest proxy the proven view equals what the node said; the build goes on."""
    with LyingRpc(upstream(world)) as proxy:
        reg, node = through(world, proxy, tmp_path)
        inputs, view, trusted = prove(world, reg, node)
        assert proxy.calls.get("eth_getProof", 0) >= 1
    assert inputs.class_keys == {hw: k.public_key().public_bytes_raw() for hw, k in world.class_keys.items()}
    assert {hw: c.enc_key for hw, c in view.classes.items()} == inputs.class_keys
    assert view.vendor_address == world.chain.vendor.address and view.vendor_active and not view.line_started
    assert trusted.number == view.block.number and inputs.prev_hash == ZERO_HASH


def test_a_node_lying_about_a_class_key_is_refused(world: World, tmp_path: Path) -> None:  # noqa: F811
    """The node answers an attacker's key for cam-x2: gather_inputs takes it, the proof refuses it."""
    with LyingRpc(upstream(world)) as proxy:
        proxy.fake_keys = {"cam-x2": ATTACKER}
        reg, node = through(world, proxy, tmp_path)
        assert reg.hardware("cam-x2").enc_key == ATTACKER  # the lie reaches the plain eth_call
        with pytest.raises(UnprovenLedger, match=r"hardware class cam-x2: the node's encryption key 0x[0-9a-f]{16}"
                                                 r"\.\.\. is not the one the ledger proves"):
            prove(world, reg, node)


def test_a_forged_storage_proof_is_refused(world: World, tmp_path: Path) -> None:  # noqa: F811
    """The node also claims the attacker's key in eth_getProof: the proof nodes do not show it."""
    with LyingRpc(upstream(world)) as proxy:
        proxy.fake_keys = {"cam-x1": ATTACKER}
        proxy.forge_slots = {enc_key_slot("cam-x1"): int.from_bytes(ATTACKER, "big")}
        reg, node = through(world, proxy, tmp_path)
        with pytest.raises(UnprovenLedger, match=r"^cannot prove the ledger at block \d+ .*claims slot .* but its "
                                                 r"proof shows"):
            prove(world, reg, node)


def test_a_node_hiding_the_head_is_refused(world: World, tmp_path: Path) -> None:  # noqa: F811
    """After 1.0.0 is published, a node hiding every event makes the line look empty: proven otherwise."""
    bundle, _, _ = world.build(tmp_path)
    with world.server() as server:
        publish_bundle(bundle, [server.url], world.vendor)
    with LyingRpc(upstream(world)) as proxy:
        proxy.hide_logs = True
        reg, node = through(world, proxy, tmp_path)
        with pytest.raises(UnprovenLedger, match=r"^acme/main-fw has releases at block \d+ \(proven\) that the node "
                                                 r"hid"):
            prove(world, reg, node, version="1.0.1", vendor_name="acme")
    with LyingRpc(upstream(world)) as honest:  # the honest node: built on the proven head
        reg, node = through(world, honest, tmp_path, "honest")
        inputs, view, _ = prove(world, reg, node, version="1.0.1")
    assert inputs.prev_hash != ZERO_HASH and view.head_entry is not None and view.head_entry.head


def test_a_node_lying_about_the_vendor_standing_is_refused(world: World, tmp_path: Path) -> None:  # noqa: F811
    """A stranger's key, which the node says is vendor "acme": the proven address of acme is another."""
    with LyingRpc(upstream(world)) as proxy:
        proxy.fake_vendor_name = "acme"
        reg, node = through(world, proxy, tmp_path)
        assert reg.is_vendor(world.chain.stranger.address, "acme")
        with pytest.raises(UnprovenLedger, match=rf"^vendor standing not proven: .* is "
                                                 rf"{world.chain.vendor.address}, not the signing key "
                                                 rf"{world.chain.stranger.address}"):
            prove(world, reg, node, vendor_name="acme", address=world.chain.stranger.address)


def test_publish_proves_the_standing_before_any_upload(world: World, tmp_path: Path) -> None:  # noqa: F811
    """A stranger's bundle for "acme", published through a node that says the stranger is acme: the
    eth_call preflight passes, the proof refuses before any upload; the real vendor publishes."""
    stranger = world.chain.stranger
    bundle, _, _ = world.build(tmp_path, account=stranger)
    with LyingRpc(upstream(world)) as proxy, world.server() as server:
        proxy.fake_vendor_name = "acme"
        reg, node = through(world, proxy, tmp_path)
        with pytest.raises(UnprovenLedger, match=rf"^vendor standing not proven: .* not the signing key "
                                                 rf"{stranger.address}"):
            publish_bundle(bundle, [server.url], reg.with_account(stranger), source=OwnNode())
        assert server.received == []
        good, _, _ = world.build(tmp_path, "1.0.1")
        world.node.sync_once()  # (transactions go to the node directly: the proxy serves reads only)
        out = publish_bundle(good, [server.url], world.vendor, source=OwnNode(), index=world.node.index)
    assert out.header_hash and out.proven is not None and out.to_json()["proven"]["block"] == out.proven.number
    assert [body for _, body in server.received] == [good.read_bytes()]


def test_a_forged_header_is_refused_by_a_second_node(world: World, tmp_path: Path) -> None:  # noqa: F811
    """The node forges its headers' state root (hashes recomputed): the author's own-node header would
    not match its proofs, and a second, honest node disagrees on the block hash."""
    with LyingRpc(upstream(world)) as proxy, LyingRpc(upstream(world)) as honest:
        reg, node = through(world, proxy, tmp_path)
        node.sync_once()  # the index as it was; the forged headers come after (they would stop its sync)
        proxy.forge_state_root = True
        with pytest.raises(UnprovenLedger, match=r"^cannot prove the ledger at block \d+"):
            prove(world, reg, node, sync=False)
        second = SecondNode(honest.url, connect(honest.url))
        with pytest.raises(UnprovenLedger, match=rf"^untrusted header: the RPC node and the verifying node "
                                                 rf"{honest.url} disagree on block \d+"):
            prove(world, reg, node, second, sync=False)
        proxy.forge_state_root = False
        _, _, trusted = prove(world, reg, node, second)
    assert trusted.source == f"agreed by {honest.url}"


# ------------------------------------------------------------------------------ tracker attestations


def test_header_attested_by_k_of_n_trackers(world: World, tmp_path: Path) -> None:  # noqa: F811
    """k of n tracker attestations (anchors as from ``fwledger device anchors``) give the header;
    the lying node's key is refused at it; a quorum the trackers cannot meet is an untrusted header."""
    import requests

    from tests.integration.test_device_network import tracker_key
    from tests.integration.test_tracker import Tracker, TrackerConfig, TrackerThread, create_app

    key = tracker_key(0)
    data = tmp_path / "tracker"
    data.mkdir()
    (data / "tracker.key").write_text(key.key.hex())
    cfg = TrackerConfig(data_dir=data, poll_interval=0.05, admission="open")
    thread = TrackerThread(create_app(Tracker(cfg, world.chain.w3, world.admin.deployment))).start()
    dep = world.admin.deployment
    anchors = AuthorAnchors(dep.chain_id, dep.address, bytes.fromhex(dep.code_hash[2:]), (key.address,), 1)
    try:
        with requests.Session() as session, LyingRpc(upstream(world)) as proxy:
            reg, node = through(world, proxy, tmp_path)
            source = TrackerHeaders(anchors, [thread.url], session, wait=30.0)
            _, view, trusted = prove(world, reg, node, source)
            assert trusted.source == "attested by 1 of 1 trackers" and view.vendor_active
            proxy.fake_keys = {"cam-x1": ATTACKER}
            with pytest.raises(UnprovenLedger, match=r"hardware class cam-x1: the node's encryption key"):
                prove(world, reg, node, source)
            other = Account.create().address
            two = AuthorAnchors(dep.chain_id, dep.address, anchors.code_hash, (key.address, other), 2)
            with pytest.raises(UnprovenLedger, match=r"^untrusted header: no block is attested by 2 of the anchors' "
                                                     r"trackers \(block \d+ is attested by 1 of the provisioned"):
                prove(world, reg, node, TrackerHeaders(two, [thread.url], session, wait=0.0))
    finally:
        thread.stop()


def test_a_class_registered_after_the_attested_block_is_waited_for(world: World, tmp_path: Path) -> None:  # noqa: F811
    """Trackers attest blocks ``confirmations`` behind the head: a class registered since is not yet
    provable. Without time to wait the author refuses; given time, it proves it at a newer header."""
    import threading

    import requests

    from tests.integration.test_device_network import tracker_key
    from tests.integration.test_tracker import Tracker, TrackerConfig, TrackerThread, create_app

    key = tracker_key(1)
    data = tmp_path / "tracker"
    data.mkdir()
    (data / "tracker.key").write_text(key.key.hex())
    cfg = TrackerConfig(data_dir=data, poll_interval=0.05, admission="open")
    thread = TrackerThread(create_app(Tracker(cfg, world.chain.w3, world.admin.deployment, confirmations=2))).start()
    dep = world.admin.deployment
    anchors = AuthorAnchors(dep.chain_id, dep.address, bytes.fromhex(dep.code_hash[2:]), (key.address,), 1)
    later = X25519PrivateKey.generate().public_key().public_bytes_raw()
    try:
        with requests.Session() as session, LyingRpc(upstream(world)) as proxy:
            reg, node = through(world, proxy, tmp_path)
            for i in range(2):  # the world's classes: two blocks deep (an idle chain makes no blocks)
                world.admin.add_hardware(f"pad-{i}", 1, b"\x01" * 32)
            prove(world, reg, node, TrackerHeaders(anchors, [thread.url], session, wait=30.0))  # the tracker is up
            world.admin.add_hardware("cam-x3", 3, later)
            with pytest.raises(UnprovenLedger, match=r"^hardware class cam-x3 is not registered at block \d+ "
                                                     r"\(proven\), whatever the node said$"):
                prove(world, reg, node, TrackerHeaders(anchors, [thread.url], session, wait=0.0),
                      hardware=("cam-x1", "cam-x3"))
            more = threading.Timer(0.5, lambda: [world.admin.add_hardware(f"pad-{i}", 1, b"\x01" * 32)
                                                 for i in range(2, 4)])
            more.start()
            try:
                _, view, _ = prove(world, reg, node, TrackerHeaders(anchors, [thread.url], session, wait=30.0),
                                   hardware=("cam-x1", "cam-x3"))
            finally:
                more.join()
        assert view.classes["cam-x3"].enc_key == later and view.classes["cam-x3"].revision == 3
    finally:
        thread.stop()


# ------------------------------------------------------------------------------ the command line on anvil


def anvil_world(env: dict[str, str], tmp_path: Path) -> tuple[dict[str, Any], Path, X25519PrivateKey, Path]:  # noqa: F811
    """Deploy, a vendor key (plain hex file), a class cam-x1; returns (deployment, key file, class key, image)."""
    dep = ok_json(env, "chain", "deploy")
    vendor = Account.create()
    keyfile = tmp_path / "vendor.key"
    keyfile.write_text(vendor.key.hex())
    ok_json(env, "admin", "add-vendor", "--name", "acme", "--address", vendor.address)
    cls = X25519PrivateKey.generate()
    ok_json(env, "admin", "add-hardware", "--id", "cam-x1", "--revision", "1",
            "--enc-key", cls.public_key().public_bytes_raw().hex())
    fund(env["FWLEDGER_RPC"], vendor.address)
    image = tmp_path / "fw.bin"
    image.write_bytes(os.urandom(70_000))
    return dep, keyfile, cls, image


@pytest.mark.devnet
def test_cli_build_refuses_a_lying_node_and_writes_no_bundle(env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    """fwledger author build through a lying proxy in front of anvil: exit 1, one line naming the class,
    no bundle; through the same proxy made honest: the bundle, proven at the node's header."""
    dep, keyfile, cls, image = anvil_world(env, tmp_path)
    bundle = tmp_path / "fw.fwb"
    args = ["--key-file", str(keyfile), "author", "build", str(image), "--product", "main-fw", "--version", "1.0.0",
            "--hardware", "cam-x1", "--link", "http://fw.local/fw.fwb", "-o", str(bundle)]
    with LyingRpc(env["FWLEDGER_RPC"]) as proxy:
        lying = {**env, "FWLEDGER_RPC": proxy.url}
        proxy.fake_keys = {"cam-x1": ATTACKER}
        res = run(lying, *args)
        assert res.exit_code == 1 and res.stdout == ""
        assert res.stderr.startswith("error: hardware class cam-x1: the node's encryption key 0x")
        assert res.stderr.endswith("the RPC node lies; nothing built\n") and res.stderr.count("\n") == 1
        assert not bundle.exists() and sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".fwb") == []
        # a second node that is honest does not help the lying one: its eth_call is still refused
        res = run(lying, *args, "--verify-rpc", env["FWLEDGER_RPC"])
        assert res.exit_code == 1 and "hardware class cam-x1" in res.stderr and not bundle.exists()

        proxy.fake_keys = {}
        built = ok_json(lying, *args, "--verify-rpc", env["FWLEDGER_RPC"])
    assert built["proven"]["header_source"] == f"agreed by {env['FWLEDGER_RPC']}"
    assert built["chain_id"] == dep["chain_id"] and decrypt_file(bundle, "cam-x1", cls) == image.read_bytes()

    plain = ok_json(env, *args[:-1], str(tmp_path / "again.fwb"))  # the default: the author's own (loopback) node
    assert plain["proven"]["header_source"] == f"the author's own node {env['FWLEDGER_RPC']}"


@pytest.mark.devnet
def test_cli_trusted_header_sources(env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    """A node that is not the author's own needs --anchors/--tracker or --verify-rpc; --tracker alone,
    --verify-rpc naming the same node and bad anchors are usage refusals; nothing is written."""
    _, keyfile, _, image = anvil_world(env, tmp_path)
    bundle = tmp_path / "fw.fwb"
    args = ["--key-file", str(keyfile), "author", "build", str(image), "--product", "main-fw", "--version", "1.0.0",
            "--hardware", "cam-x1", "--link", "x", "-o", str(bundle)]
    remote = run({**env, "FWLEDGER_RPC": "http://192.0.2.1:8545"}, *args)  # refused before any connection
    assert remote.exit_code == 1 and remote.stderr.startswith(
        "error: the node http://192.0.2.1:8545 is not the author's own (embedded or on loopback): name where a "
        "trusted header comes from: --anchors FILE --tracker URL")
    alone = run(env, *args, "--tracker", "http://127.0.0.1:9")
    assert alone.exit_code == 1 and alone.stderr == ("error: --tracker needs --anchors FILE (the tracker keys and "
                                                     "quorum k to trust)\n")
    same = run(env, *args, "--verify-rpc", env["FWLEDGER_RPC"])
    assert same.exit_code == 1 and same.stderr == "error: --verify-rpc must name another node than --rpc\n"
    junk = tmp_path / "anchors.json"
    junk.write_text(json.dumps({"format": 1, "chain_id": 1}))
    bad = run(env, *args, "--anchors", str(junk), "--tracker", "http://127.0.0.1:9")
    assert bad.exit_code == 1 and bad.stderr.startswith(f"error: bad trust anchors {junk}:")
    assert not bundle.exists()
