"""The full node against real chains: the embedded eth-tester chain and an anvil node.

Every behaviour test runs on both (``fresh_chain``: a fresh chain per test, anvil included, so
snapshots, reverts and mined blocks stay private); the SIGKILL test runs on anvil, with the node as
a separate process (``python -m ledger_node.fullnode``) killed mid-ingest.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import EthereumTesterProvider, HTTPProvider, Web3

from ledger_node import devnet
from ledger_node.compiler import compile_contract
from ledger_node.errors import ChainError, ChainUnreachable, ConfigError
from ledger_node.fullnode import FullNode, Index, _range_refused, main
from ledger_node.providers import connect
from ledger_node.record import ZERO_HASH, ReleaseData, ReleaseRecord, Version, line_id
from ledger_node.registry import Deployment, Registry, deploy, save_deployment
from tests.conftest import Chain, require_anvil
from tests.world import LedgerWorld

REPO = Path(__file__).resolve().parents[2]
HOSTILE_SOURCE = REPO / "tests" / "fixtures" / "HostileRegistry.vy"
PUBLISH_GAS = 400_000


# ----------------------------------------------------------------------------- chains


@pytest.fixture
def fresh_anvil() -> Iterator[devnet.AnvilProcess]:
    with devnet.AnvilProcess(anvil=require_anvil()) as node:
        yield node


@pytest.fixture(params=["embedded", "anvil"])
def fresh_chain(request: pytest.FixtureRequest) -> Iterator[Web3]:
    """A fresh chain: the in-process one, or an anvil node owned by the test."""
    if request.param == "embedded":
        yield connect("embedded")
        return
    node = request.getfixturevalue("fresh_anvil")
    yield connect(node.url)


def mine(w3: Web3, blocks: int) -> None:
    """Add empty blocks."""
    if isinstance(w3.provider, EthereumTesterProvider):
        w3.testing.mine(blocks)
    else:
        w3.provider.make_request("anvil_mine", [hex(blocks)])


def digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def make_record(
    vendor: str, product: str, version: Version, prev: bytes, hardware: tuple[str, ...] = ("hw-a",)
) -> ReleaseRecord:
    tag = f"{vendor}/{product}/{version}"
    return ReleaseRecord(
        prev_hash=prev,
        data=ReleaseData(
            merkle_root=digest("merkle " + tag),
            vendor_name=vendor,
            publish_time=0,
            product=product,
            version=version,
            file_hash=digest("file " + tag),
            file_link=f"https://fw.example.com/{tag}.bin",
            file_name=f"{product}-{version}.bin",
            file_size=4096 + version.packed % 1000,
            supported_hardware=hardware,
        ),
    )


@dataclass
class World:
    """The shared ledger world (``tests/world.py``: a fresh registry, vendors, hardware classes hw-a
    and hw-b) on the test's fresh chain; this layer publishes synthetic records with a fixed gas limit
    and keeps each line's head and version (a reorg test restores them with the chain)."""

    ledger: LedgerWorld
    vendors: dict[str, Registry] = field(default_factory=dict)
    heads: dict[tuple[str, str], tuple[bytes, Version]] = field(default_factory=dict)
    published: list[bytes] = field(default_factory=list)

    @classmethod
    def create(cls, w3: Web3, vendors: tuple[str, ...] = ("acme", "globex")) -> World:
        chain = Chain.over(w3)
        named = {name: chain.accounts[i] for i, name in enumerate(vendors, start=1)}
        ledger = LedgerWorld.create(chain, vendors=named, hardware={"hw-a": 1, "hw-b": 2})
        return cls(ledger, {name: ledger.as_vendor(name) for name in named})

    @property
    def w3(self) -> Web3:
        return self.ledger.chain.w3

    @property
    def accounts(self) -> list[LocalAccount]:
        return self.ledger.chain.accounts

    @property
    def admin(self) -> Registry:
        return self.ledger.registry

    @property
    def dep(self) -> Deployment:
        return self.ledger.registry.deployment

    def publish(self, vendor: str, product: str, version: str) -> bytes:
        prev, _ = self.heads.get((vendor, product), (ZERO_HASH, None))
        v = Version.parse(version)
        res = self.vendors[vendor].publish(make_record(vendor, product, v, prev), gas=PUBLISH_GAS)
        self.heads[(vendor, product)] = (res.header_hash, v)
        self.published.append(res.header_hash)
        return res.header_hash

    def head_block(self) -> int:
        return int(self.w3.eth.block_number)


def node_for(world: World, path: Path, **kw: Any) -> FullNode:
    return FullNode(world.w3, world.dep, Index(path), **kw)


def all_logs(w3: Web3, address: str, first: int, last: int) -> list[tuple[int, int]]:
    if last < first:
        return []
    logs = w3.eth.get_logs({"address": address, "fromBlock": first, "toBlock": last})
    return [(int(x["blockNumber"]), int(x["logIndex"])) for x in logs]


def indexed_logs(index: Index) -> list[tuple[int, int]]:
    return [(b, i) for b, i, *_ in index.events()]


# ----------------------------------------------------------------------------- behaviour


def test_ingests_releases_flags_and_vendor_rotation(fresh_chain: Web3, tmp_path: Path) -> None:
    world = World.create(fresh_chain)
    world.admin.set_policy("hw-b", "acme", "cam-fw", min_version=Version(1, 1, 0))
    cam = [world.publish("acme", "cam-fw", v) for v in ("1.0.0", "1.1.0", "1.2.0")]
    boot = [world.publish("acme", "boot", v) for v in ("0.1.0", "0.2.0")]
    sensor = [world.publish("globex", "sensor", v) for v in ("2.0.0", "2.0.1")]
    world.vendors["acme"].revoke("acme", "cam-fw", cam[1], "bricks hw-b")
    world.admin.mark_vulnerable("globex", "sensor", sensor[0], "CVE-2026-0001")
    # rotate acme to a new key; the line continues under it
    new_acme = world.accounts[4]
    world.admin.rotate_vendor(world.accounts[1].address, new_acme.address)
    world.vendors["acme"] = world.admin.with_account(new_acme)
    cam.append(world.publish("acme", "cam-fw", "1.3.0"))

    node = node_for(world, tmp_path / "index.db", batch_blocks=4)
    seen: list[Any] = []
    report = node.sync_once(seen.append)
    index = node.index
    assert report.releases == 8 and report.flagged == 0
    assert report.to_block == world.head_block()
    assert report.ranges == len(seen) > 1  # several bounded ranges, one progress line each
    assert [p.to_block for p in seen] == sorted(p.to_block for p in seen)

    listed = index.releases()
    assert [(r.vendor_name, r.product, str(r.version), r.position) for r in listed] == [
        ("acme", "boot", "0.1.0", 1),
        ("acme", "boot", "0.2.0", 2),
        ("acme", "cam-fw", "1.0.0", 1),
        ("acme", "cam-fw", "1.1.0", 2),
        ("acme", "cam-fw", "1.2.0", 3),
        ("acme", "cam-fw", "1.3.0", 4),
        ("globex", "sensor", "2.0.0", 1),
        ("globex", "sensor", "2.0.1", 2),
    ]
    assert [r.header_hash for r in index.releases(product="cam-fw")] == cam
    assert [r.header_hash for r in index.releases(vendor="globex")] == sensor
    assert index.head("acme", "cam-fw").header_hash == cam[-1]
    assert index.head("acme", "boot").header_hash == boot[-1]
    assert index.head("acme", "nothing") is None
    # the node answers the same queries from its index
    assert node.releases() == listed and node.head("acme", "cam-fw") == index.head("acme", "cam-fw")
    assert node.release(cam[0]) == index.release(cam[0]) and node.cursor() == index.cursor()
    assert node.stats()["behind"] == 0 and node.dump_canonical() == index.dump_canonical()

    revoked = index.release(cam[1])
    assert revoked is not None and revoked.revoked and revoked.revoke_reason == "bricks hw-b"
    vuln = index.release(sensor[0])
    assert vuln is not None and vuln.vulnerable and vuln.vulnerable_note == "CVE-2026-0001"
    assert not index.release(cam[0]).revoked and not index.release(sensor[1]).vulnerable

    # the index agrees with the chain's own storage word for every release
    for rel in index.releases():
        entry = world.admin.release_entry(rel.line, rel.header_hash)
        assert (entry.exists, entry.revoked, entry.vulnerable, entry.head, entry.version) == (
            True,
            rel.revoked,
            rel.vulnerable,
            rel.head,
            rel.version,
        )

    vendors = {v.address: v for v in index.vendors()}
    old = vendors[world.accounts[1].address]
    assert (old.name, old.active, old.rotated_to) == ("acme", False, new_acme.address)
    assert vendors[new_acme.address].active and vendors[new_acme.address].name == "acme"
    assert vendors[world.accounts[2].address].name == "globex"
    keys = world.ledger.class_keys
    assert [(h.hw_id, h.revision, h.enc_key) for h in index.hardware()] == [
        ("hw-a", 1, keys["hw-a"]),
        ("hw-b", 2, keys["hw-b"]),
    ]
    (policy,) = index.policies()
    assert (
        policy.hw_id,
        policy.vendor_name,
        policy.product,
        policy.allowed,
        str(policy.min_version),
    ) == ("hw-b", "acme", "cam-fw", True, "1.1.0")
    assert policy.line == line_id("acme", "cam-fw")
    admins, k = index.admins()
    assert [a.address for a in admins] == [world.accounts[0].address] and k == 1

    js = index.release(cam[-1]).to_json()
    assert js["header_hash"] == "0x" + cam[-1].hex() and js["position"] == 4 and js["head"] is True
    assert js["prev_hash"] == "0x" + cam[-2].hex() and js["flagged"] is False
    stats = index.stats()
    assert (stats["releases"], stats["flagged"], stats["lines"], stats["vendors"]) == (8, 0, 3, 2)
    assert stats["events"] == len(
        all_logs(fresh_chain, world.dep.address, world.dep.block, world.head_block())
    )
    index.close()


def test_confirmations_respected(fresh_chain: Web3, tmp_path: Path) -> None:
    world = World.create(fresh_chain, vendors=("acme",))
    first = world.publish("acme", "fw", "1.0.0")
    second = world.publish("acme", "fw", "1.1.0")  # in the head block
    node = node_for(world, tmp_path / "index.db", confirmations=1)
    report = node.sync_once()
    head = world.head_block()
    assert report.to_block == head - 1 and node.index.cursor().block == head - 1
    assert [r.header_hash for r in node.index.releases()] == [first]
    assert max(b for b, _ in indexed_logs(node.index)) <= head - 1
    assert node.stats()["behind"] == 1

    node.confirmations = 3
    assert node.sync_once().events == 0  # already past head - 3: nothing to do
    mine(fresh_chain, 2)
    report = node.sync_once()
    assert node.index.cursor().block == world.head_block() - 3 == head - 1
    mine(fresh_chain, 1)
    node.sync_once()
    assert [r.header_hash for r in node.index.releases()] == [first, second]
    assert node.index.cursor().block == world.head_block() - 3
    node.index.close()


def test_resume_after_restart_misses_and_doubles_nothing(fresh_chain: Web3, tmp_path: Path) -> None:
    world = World.create(fresh_chain)
    for v in ("1.0.0", "1.1.0", "1.2.0"):
        world.publish("acme", "fw", v)
        world.publish("globex", "fw", v)
    db = tmp_path / "index.db"

    class Interrupted(Exception):
        pass

    ranges = 0

    def stop_after_two(_: Any) -> None:
        nonlocal ranges
        ranges += 1
        if ranges == 2:
            raise Interrupted

    node = node_for(world, db, batch_blocks=2)
    with pytest.raises(Interrupted):
        node.sync_once(stop_after_two)
    cursor = node.index.cursor()
    assert cursor is not None and cursor.block == world.dep.block + 3  # two ranges of two blocks
    node.index.close()

    # the chain grows while the node is down
    world.publish("acme", "fw", "1.3.0")
    world.vendors["globex"].mark_vulnerable(
        "globex", "fw", world.heads[("globex", "fw")][0], "leaks keys"
    )

    node = node_for(world, db, batch_blocks=2)
    report = node.sync_once()
    assert report.from_block == cursor.block + 1 and report.to_block == world.head_block()
    index = node.index
    expected = all_logs(fresh_chain, world.dep.address, world.dep.block, world.head_block())
    assert indexed_logs(index) == expected  # every log once, none missing
    assert sorted(r.header_hash for r in index.releases()) == sorted(world.published)
    assert index.release(world.heads[("globex", "fw")][0]).vulnerable

    fresh = node_for(world, tmp_path / "fresh.db", batch_blocks=1000)
    fresh.sync_once()
    assert fresh.index.dump_canonical() == index.dump_canonical()
    index.close()
    fresh.index.close()


def deploy_hostile(world: World) -> tuple[Any, Deployment]:
    """Deploy the hostile fixture; a deployment record with the registry's ABI points at it."""
    compiled = compile_contract(HOSTILE_SOURCE)
    w3, acct = world.w3, world.accounts[5]
    factory = w3.eth.contract(abi=compiled.abi, bytecode=compiled.bytecode)
    tx = factory.constructor().build_transaction(
        {
            "from": acct.address,
            "gas": 1_000_000,
            "nonce": w3.eth.get_transaction_count(acct.address, "pending"),
        }
    )
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(acct.sign_transaction(tx).raw_transaction)
    )
    address = receipt["contractAddress"]
    dep = Deployment(
        address=address,
        chain_id=w3.eth.chain_id,
        block=receipt["blockNumber"],
        tx="0x" + bytes(receipt["transactionHash"]).hex(),
        code_hash="0x" + keccak(bytes(w3.eth.get_code(address))).hex(),
        source_sha256=compiled.source_sha256,
        abi=world.dep.abi,
    )
    return w3.eth.contract(address=address, abi=compiled.abi), dep


def hostile_send(world: World, contract: Any, fn: str, *args: Any) -> None:
    w3, acct = world.w3, world.accounts[5]
    tx = contract.functions[fn](*args).build_transaction(
        {
            "from": acct.address,
            "gas": 300_000,
            "nonce": w3.eth.get_transaction_count(acct.address, "pending"),
        }
    )
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(acct.sign_transaction(tx).raw_transaction)
    )
    assert receipt["status"] == 1


def test_records_breaking_the_chain_are_flagged_not_served(
    fresh_chain: Web3, tmp_path: Path
) -> None:
    world = World.create(fresh_chain, vendors=())
    hostile, dep = deploy_hostile(world)

    def emit(rec: ReleaseRecord, *, header_hash: bytes | None = None) -> None:
        hostile_send(
            world,
            hostile,
            "emit_published",
            rec.line,
            header_hash or rec.header_hash,
            rec.prev_hash,
            rec.data_bytes,
        )

    hostile_send(world, hostile, "emit_vendor", world.accounts[1].address, "evil")
    hostile_send(world, hostile, "emit_hardware", "hw-a", 1, b"\xaa" * 32)
    r1 = make_record("evil", "fw", Version(1, 0, 0), ZERO_HASH)
    emit(r1)
    forked = make_record("evil", "fw", Version(1, 1, 0), digest("not the head"))
    emit(forked)  # prev_hash is not the head
    older = make_record("evil", "fw", Version(0, 9, 0), r1.header_hash)
    emit(older)  # version not above the head's
    lying = make_record("evil", "fw", Version(1, 2, 0), r1.header_hash)
    emit(lying, header_hash=digest("forged"))  # header hash does not match the data
    hostile_send(world, hostile, "emit_published", r1.line, digest("junk"), ZERO_HASH, b"\x01\x02")
    hostile_send(world, hostile, "noise", 7)  # a topic the registry ABI does not know
    r2 = make_record("evil", "fw", Version(1, 3, 0), r1.header_hash)
    emit(r2)

    node = FullNode(fresh_chain, dep, Index(tmp_path / "hostile.db"), batch_blocks=3)
    report = node.sync_once()
    index = node.index
    assert (report.releases, report.flagged) == (6, 4)
    assert [r.header_hash for r in index.releases()] == [r1.header_hash, r2.header_hash]
    assert [r.position for r in index.releases()] == [1, 2]
    assert index.head("evil", "fw").header_hash == r2.header_hash
    flagged = {r.header_hash: r for r in index.releases(include_flagged=True) if r.flagged}
    assert set(flagged) == {forked.header_hash, older.header_hash, lying.header_hash}
    assert "is not the head of the product line" in flagged[forked.header_hash].flag_reason
    assert "is not above the head's 1.0.0" in flagged[older.header_hash].flag_reason
    assert "differs from the recomputed" in flagged[lying.header_hash].flag_reason
    assert all(r.position is None and not r.head for r in flagged.values())
    (rejected,) = index.rejected()
    assert "undecodable" in rejected.reason
    unknown = [e for e in index.events() if e[3] is None]
    assert (
        len(unknown) == 1 and unknown[0][4]["topics"][0] == "0x" + keccak(b"Noise(uint256)").hex()
    )
    index.close()


def test_index_for_another_registry_refused(fresh_chain: Web3, tmp_path: Path) -> None:
    world = World.create(fresh_chain, vendors=("acme",))
    world.publish("acme", "fw", "1.0.0")
    db = tmp_path / "index.db"
    node = node_for(world, db)
    node.sync_once()
    node.index.close()

    other = deploy(fresh_chain, world.accounts[0])
    with pytest.raises(ConfigError, match="was made for registry") as exc:
        FullNode(fresh_chain, other, Index(db))
    assert "\n" not in str(exc.value)
    stale = replace(world.dep, chain_id=world.dep.chain_id + 1)
    with pytest.raises(ConfigError, match="chain"):
        FullNode(fresh_chain, stale, Index(db))
    wrong_code = replace(world.dep, code_hash="0x" + "11" * 32)
    with pytest.raises(ConfigError, match="no release registry"):
        FullNode(fresh_chain, wrong_code, Index(tmp_path / "other.db"))
    # the refused attempts changed nothing
    index = Index(db)
    assert index.binding() == (world.dep.chain_id, world.dep.address, world.dep.block)
    assert len(index.releases()) == 1
    index.close()


@pytest.mark.parametrize("extra", [0, 5], ids=["shorter-branch", "longer-branch"])
def test_reorg_below_the_cursor_rolls_back_and_resyncs(
    fresh_chain: Web3, tmp_path: Path, extra: int
) -> None:
    """Published, revoked, a class added and a policy set after a snapshot; synced; the chain
    reverted to the snapshot (a shorter branch, or one longer than the indexed chain) and another
    release published: the node rolls its index back to the newest block it shares with the
    chain, syncs forward, and ends equal to an index synced from scratch."""
    world = World.create(fresh_chain, vendors=("acme",))
    first = world.publish("acme", "fw", "1.0.0")
    snapshot = fresh_chain.testing.snapshot()
    kept_heads = dict(world.heads)
    shared = world.head_block()
    lost = world.publish("acme", "fw", "1.1.0")
    world.admin.mark_vulnerable("acme", "fw", first, "CVE-0")
    world.admin.add_hardware("hw-c", 3, b"\xcc" * 32)
    world.admin.set_policy("hw-a", "acme", "fw", allowed=False)
    node = node_for(world, tmp_path / "index.db", batch_blocks=3)
    node.sync_once()
    old_cursor = node.index.cursor()
    assert node.index.release(lost) is not None and node.index.release(first).vulnerable
    assert len(node.index.events()) > 0

    fresh_chain.testing.revert(snapshot)
    world.heads = kept_heads
    mine(fresh_chain, extra)
    other = world.publish("acme", "fw", "2.0.0")
    seen: list[Any] = []
    report = node.sync_once(on_rollback=seen.append)

    assert report.rolled_back and report.rolled_back_from == old_cursor.block
    assert report.rolled_back_to is not None and report.rolled_back_to <= shared
    assert report.events_removed >= 4 and report.releases_removed == 1
    assert [(r.from_block, r.to_block, r.events) for r in seen] == [
        (report.rolled_back_from, report.rolled_back_to, report.events_removed)
    ]
    assert report.to_json()["rolled_back_to"] == report.rolled_back_to
    assert node.index.cursor().block == world.head_block()
    assert node.index.release(lost) is None
    head = node.index.head("acme", "fw")
    assert head is not None and head.header_hash == other and head.position == 2
    assert not node.index.release(first).vulnerable
    assert [h.hw_id for h in node.index.hardware()] == ["hw-a", "hw-b"]
    assert node.index.policies() == []

    fresh = node_for(world, tmp_path / "fresh.db")
    fresh.sync_once()
    assert node.index.dump_canonical() == fresh.index.dump_canonical()
    again = node.sync_once()  # and the next round is an ordinary one
    assert not again.rolled_back and again.events == 0
    node.index.close()
    fresh.index.close()


def test_reset_below_every_checkpoint_is_an_error_not_a_divergence(
    fresh_chain: Web3, tmp_path: Path
) -> None:
    """The chain reverted to before the registry existed: no block the index remembers is on it
    any more, so the node stops with a clear error and leaves the index as it was."""
    snapshot = fresh_chain.testing.snapshot()
    world = World.create(fresh_chain, vendors=("acme",))
    world.publish("acme", "fw", "1.0.0")
    world.publish("acme", "fw", "1.1.0")
    node = node_for(world, tmp_path / "index.db")
    node.sync_once()
    before = node.index.dump_canonical()
    fresh_chain.testing.revert(snapshot)
    mine(fresh_chain, world.head_block() + 5)  # another branch, longer than the indexed one
    with pytest.raises(ChainError, match=r"reset or reorganised below the index cursor.*resync"):
        node.sync_once()
    assert node.index.dump_canonical() == before
    node.index.close()


def test_unreachable_node(tmp_path: Path) -> None:
    w3 = Web3(HTTPProvider(f"http://127.0.0.1:{devnet.free_port()}", request_kwargs={"timeout": 2}))
    w3.provider.exception_retry_configuration = None
    dep = Deployment(
        address="0x" + "12" * 20,
        chain_id=1,
        block=1,
        tx="0x",
        code_hash="0x",
        source_sha256="",
        abi=[],
    )
    with pytest.raises(ChainUnreachable):
        FullNode(w3, dep, Index(tmp_path / "index.db"))


class CappedRPC:
    """A JSON-RPC proxy on loopback in front of a node that, like public RPC providers, refuses
    an ``eth_getLogs`` spanning more than ``limit`` blocks with ``error`` (code, message);
    ``spans`` lists the ranges it let through, ``refused`` counts the others."""

    def __init__(self, upstream: str, limit: int, error: tuple[int, str]) -> None:
        self.upstream, self.limit, self.error = upstream, limit, error
        self.spans: list[int] = []
        self.refused = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                call = json.loads(body)
                if isinstance(call, dict) and call.get("method") == "eth_getLogs":
                    flt = call["params"][0]
                    span = int(flt["toBlock"], 16) - int(flt["fromBlock"], 16) + 1
                    if span > proxy.limit:
                        proxy.refused += 1
                        code, message = proxy.error
                        out = json.dumps({"jsonrpc": "2.0", "id": call.get("id"),
                                          "error": {"code": code, "message": message}}).encode()
                        return self.answer(out)
                    proxy.spans.append(span)
                resp = requests.post(proxy.upstream, data=body, headers={"Content-Type": "application/json"},
                                     timeout=30)
                self.answer(resp.content)

            def answer(self, data: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# what providers answer (Infura, a geth-like node, Alchemy): each splits the range, none is an outage
PROVIDER_ERRORS = [
    (-32005, "query returned more than 10000 results. Try with this block range [0x1, 0x3]."),
    (-32000, "block range is too wide"),
    (-32602, "Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range"),
]


@pytest.mark.parametrize("error", PROVIDER_ERRORS, ids=["infura", "geth", "alchemy"])
def test_provider_capping_get_logs_ranges_is_followed_by_splitting(
    fresh_anvil: devnet.AnvilProcess, tmp_path: Path, error: tuple[int, str]
) -> None:
    """Production networks (deployment on any JSON-RPC network): an RPC provider refuses
    ``eth_getLogs`` over more than 3 blocks. The full node (500 blocks per call configured)
    halves its range while refused and grows it back after accepted ranges: its index is the
    same as a node's reading the chain directly, no range it read spanned more than 3 blocks.
    A provider refusing even one block is a one-line ChainError, the cursor unmoved."""
    world = World.create(connect(fresh_anvil.url))
    for v in ("1.0.0", "1.1.0", "1.2.0", "1.3.0"):
        world.publish("acme", "fw", v)
        mine(world.w3, 3)
        world.publish("globex", "fw", v)
    direct = node_for(world, tmp_path / "direct.db")
    direct.sync_once()
    capped = CappedRPC(fresh_anvil.url, 3, error)
    try:
        w3 = Web3(HTTPProvider(capped.url, request_kwargs={"timeout": 30}))
        node = FullNode(w3, world.dep, Index(tmp_path / "capped.db"), batch_blocks=500)
        report = node.sync_once()
        assert report.to_block == world.head_block() and report.releases == 8
        assert node.index.dump_canonical() == direct.index.dump_canonical()
        assert capped.refused >= 1 and capped.spans and max(capped.spans) <= 3, (capped.refused, capped.spans)
        assert node.span < 500  # it keeps what it learned for the next rounds (grown back gradually)

        mine(world.w3, 2)
        capped.limit = 0  # now not even one block
        stuck = FullNode(w3, world.dep, Index(tmp_path / "stuck.db"), batch_blocks=500)
        with pytest.raises(ChainError) as exc:
            stuck.sync_once()
        assert "refuses the logs of block" in str(exc.value) and "\n" not in str(exc.value)
        assert stuck.index.cursor() is None
    finally:
        capped.close()


def test_range_refusals_are_told_from_node_failures() -> None:
    """Only a node's "too much" splits a range; any other error stays an error."""
    class RPCError(Exception):
        def __init__(self, code: int, message: str) -> None:
            super().__init__(message)
            self.rpc_response = {"error": {"code": code, "message": message}}

    for code, message in PROVIDER_ERRORS:
        assert _range_refused(RPCError(code, message)), message
    assert _range_refused(RPCError(-32005, "limit exceeded"))
    assert _range_refused(ValueError("exceed maximum block range: 50000"))
    for message in ("execution reverted", "header not found", "invalid params", "unknown block"):
        assert not _range_refused(RPCError(-32000, message)), message
    assert not _range_refused(ConnectionError("connection refused"))


def test_follow_and_cli_errors(
    fresh_anvil: devnet.AnvilProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = fresh_anvil.url
    w3 = connect(url)
    world = World.create(w3, vendors=("acme",))
    # no deployment record in this home: one-line error, exit code 1
    code = main(["--rpc", url, "--home", str(tmp_path / "empty"), "--db", str(tmp_path / "x.db")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "no registry deployed on chain" in err

    node = node_for(world, tmp_path / "index.db")
    stop = threading.Event()
    thread = threading.Thread(target=node.follow, args=(stop, 0.05))
    thread.start()
    reader = Index(tmp_path / "index.db")  # another connection reads while the node writes
    try:
        header = world.publish("acme", "fw", "1.0.0")
        deadline = time.monotonic() + 10
        while reader.release(header) is None:
            assert time.monotonic() < deadline, "follow did not pick the release up"
            time.sleep(0.05)
        assert node.index.head("acme", "fw").header_hash == header  # shared with the follow thread
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    reader.close()

    # the node goes away: sync_once says so; follow keeps waiting for it and reports each failure
    fresh_anvil.stop()
    w3.provider.exception_retry_configuration = None  # fail fast instead of web3's back-off
    with pytest.raises(ChainUnreachable):
        node.sync_once()
    errors: list[ChainUnreachable] = []
    stop = threading.Event()
    thread = threading.Thread(
        target=node.follow, args=(stop, 0.01), kwargs={"on_error": errors.append}
    )
    thread.start()
    deadline = time.monotonic() + 10
    while len(errors) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(10)
    assert len(errors) >= 2 and not thread.is_alive()
    node.index.close()


# ----------------------------------------------------------------------------- SIGKILL


def read_cursor(db: Path) -> int | None:
    """The cursor as another process sees it (None before the first commit)."""
    if not db.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'cursor_block'").fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return None  # schema not created yet
    return None if row is None else int(row[0])


def test_sigkill_mid_ingest_loses_and_doubles_nothing(
    fresh_anvil: devnet.AnvilProcess, tmp_path: Path
) -> None:
    w3 = connect(fresh_anvil.url)
    world = World.create(w3, vendors=("acme", "globex", "initech"))
    lines = [(v, p) for v in ("acme", "globex", "initech") for p in ("fw", "boot")]
    for i in range(25):
        for vendor, product in lines:
            world.publish(vendor, product, f"1.{i}.0")
    world.vendors["acme"].revoke("acme", "fw", world.heads[("acme", "fw")][0], "recalled")
    assert len(world.published) == 150
    home = tmp_path / "home"
    save_deployment(home, world.dep)
    start, end = world.dep.block, world.head_block()

    # reference: one uninterrupted run
    ref = node_for(world, tmp_path / "ref.db", batch_blocks=1)
    ref.sync_once()
    reference = ref.index.dump_canonical()
    ref.index.close()

    db = tmp_path / "killed.db"
    argv = [
        sys.executable,
        "-m",
        "ledger_node.fullnode",
        "--rpc",
        fresh_anvil.url,
        "--home",
        str(home),
        "--db",
        str(db),
        "--batch",
        "1",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rng = random.Random(1368)
    kills = mid_ingest = runs = 0
    for fraction in (0.1, 0.25, 0.4, 0.55, 0.7, 0.85, None):
        runs += 1
        with open(tmp_path / f"run{runs}.err", "wb") as err:
            proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            if fraction is None:
                assert proc.wait(120) == 0, (tmp_path / f"run{runs}.err").read_text()
                break
            mark = start + int(fraction * (end - start))
            while proc.poll() is None:
                cursor = read_cursor(db)
                if cursor is not None and mark <= cursor < end:
                    time.sleep(rng.uniform(0, 0.01))  # land anywhere inside the next range
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGKILL)
                        proc.wait(10)
                        kills += 1
                        after = read_cursor(db)
                        mid_ingest += int(after is not None and start < after < end)
                    break
                time.sleep(0.002)
            else:
                assert proc.returncode == 0, (tmp_path / f"run{runs}.err").read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        # after every stop the index holds exactly the logs up to its cursor
        cursor = read_cursor(db)
        if cursor is not None:
            index = Index(db)
            assert indexed_logs(index) == all_logs(w3, world.dep.address, start, cursor)
            index.close()
    print(
        f"\nSIGKILL test: {runs} runs, {kills} kills, {mid_ingest} mid-ingest, blocks {start}-{end}"
    )
    assert mid_ingest >= 1, "no kill landed mid-ingest"
    index = Index(db)
    assert index.cursor().block == end
    assert index.dump_canonical() == reference
    assert len(index.releases()) == 150
    index.close()
