"""Faults of the infrastructure mid-update, as real processes (issue 7): the firmware server
SIGKILLed mid-download, and the anvil node SIGKILLed mid-rollout.

Same world as :mod:`.test_deployments` (imported: a fresh registry per test, vendor ``acme``,
classes ``cls-a``/``cls-b``, devices running main-fw 1.0.0 and addon-fw 0.9.0), but each test
runs its own anvil as the devnet daemon of the test's home (:func:`ledger_node.devnet.start`:
``<home>/devnet/state.json`` dumped every second, the last-good copy, interval mining), so that
a test may SIGKILL it and start it again from what it saved.

What anvil keeps over a SIGKILL: its state file is dumped every ``--state-interval`` seconds (1 s
here; :data:`ledger_node.devnet.DEFAULT_STATE_INTERVAL` is 2) and on a clean exit, not per block.
Restarted from it (``--state`` loads it), the chain is back at the dumped block with the same
block hashes; every block mined after the last dump, with its transactions, is gone, and new
blocks are then mined at those numbers with other hashes. A kill *during* a dump (the file is
written in place) leaves it truncated, and :func:`ledger_node.devnet.start` then restores the
last-good copy, which is refreshed only at a start or a stop: everything since the last start
is lost. The full nodes (trackers, firmware server) compare each block they ingest with the
hash of the block their cursor holds, so a lost block they had indexed is never kept silently:
each rolls its index back to the newest block it shares with the chain and follows it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from entities.bundle import read_header
from entities.firmware_consumer.provision import load_provisioning
from entities.firmware_consumer.store import JOURNAL_KIND, Layout, read_envelope
from entities.protocol.http_auth import sign_request
from entities.service_identity import fetch_identity
from ledger_node import devnet
from ledger_node.record import Dependency, Version, line_id
from tests.conftest import require_anvil
from tests.integration import test_deployments as deployments
from tests.integration.procs import ThrottledProxy, wait_for
from tests.integration.test_deployments import (
    ADDON,
    ADMIN,
    BLOCK_TIME,
    HW_A,
    HW_B,
    KEPT,
    MAIN,
    UPDATED,
    World,
    assert_commands_explained,
    first_success,
    set_waves,
    settled,
    versions,
    wait_fleet,
)

pytestmark = pytest.mark.devnet

world = deployments.world  # the fixture, on this module's anvil_rpc below

MIB = 1 << 20
IMAGE = 24 * MIB           # larger than the socket buffers, and three 8 MiB install checkpoints
RATE = 3 * MIB             # bytes/s through the slow link: the download lasts ~8 s
STATE_INTERVAL = 1         # seconds between anvil's state dumps


@pytest.fixture
def anvil_rpc(tmp_path: Path) -> Iterator[str]:
    """This test's anvil: the devnet daemon of the test's home (``World.home``), state saved."""
    require_anvil()
    home = tmp_path / "home"
    info = devnet.start(home, devnet.free_port(), state_interval=STATE_INTERVAL, block_time=BLOCK_TIME)
    try:
        yield info.url
    finally:
        devnet.stop(home)


# ----------------------------------------------------------------------------- helpers


def durable(root: Path, component: str = MAIN) -> int:
    """How far the component's unfinished install is durably written (its journal); -1: none."""
    env = read_envelope(Layout(root).journal_path(component), JOURNAL_KIND)
    return -1 if env is None else int(env[1]["durable"])


def results(world: World, agent: Any) -> list[dict[str, Any]]:
    """Every upgrade result of the agent's passes since its start, in order."""
    return [r for p in world.procs.passes(agent) for r in p.get("results", [])]


def payload_of(bundle: Path) -> bytes:
    with bundle.open("rb") as fh:
        _, offset = read_header(fh)
    return bundle.read_bytes()[offset:]


def server_get(world: World, server: Any, path: str, root: Path) -> requests.Response:
    """``GET path`` on the firmware server, signed by the device's identity key."""
    identity = load_provisioning(root).identity
    with requests.Session() as s:
        s.trust_env = False
        return s.get(f"{server.url}{path}", headers=sign_request(identity, "GET", path, audience=fetch_identity(server.url)),
                     timeout=30)


def image_state(server: Any) -> str | None:
    """The state of the firmware server's only image (None: none, or several)."""
    with requests.Session() as s:
        s.trust_env = False
        listed = s.get(f"{server.url}/v1/images", timeout=10).json()
    return str(listed[0]["state"]) if len(listed) == 1 else None


def indexed_releases(db: Path) -> list[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return [str(r[0]).removeprefix("0x").lower() for r in conn.execute("SELECT header_hash FROM releases")]


# ============================================================================= firmware server


def test_firmware_server_sigkilled_mid_download_then_restarted(world: World) -> None:
    """A device downloads a 24 MiB image through a slow link (3 MiB/s). When its install journal
    shows at least 1 MiB durably written, the firmware server is SIGKILLed: the download is cut,
    the device retries with ``Range`` and gives up the pass (``download_interrupted``), its
    install journaled and the running version untouched. The server restarted on the same port
    and data folder: the device's next pass resumes the install from the journal and confirms
    it; the slot is the published image; the server lost nothing (no temp file, the object
    intact and served whole, the image listed once as published). One wave: the device registers
    after the release, alone (the waves are test_rollout's)."""
    set_waves(world, [1.0])
    procs = world.procs
    server, trk = world.firmware_server(), world.server_module()
    root = world.provision("a-0", HW_A, trackers=[trk.address])
    procs.wait_healthy(server)
    procs.wait_healthy(trk, check=lambda h: h.get("ledger_block") is not None)
    proxy = ThrottledProxy(int(server.port or 0), rate=RATE)
    try:
        main = world.publish(server, MAIN, "1.1.0", size=IMAGE)
        image = (world.tmp / "acme-main-fw-1.1.0.img").read_bytes()  # the plaintext LedgerWorld.bundle wrote
        agent = procs.device("a-0", root, "--tracker", str(trk.url), "--server", proxy.url)
        wait_for(lambda: durable(root) >= MIB, 60, "the device's journal shows 1 MiB written", procs=procs,
                 poll=0.05)
        procs.kill(server)  # SIGKILL, mid-stream
        at_kill = durable(root)
        assert 0 < at_kill < IMAGE, at_kill

        failed = wait_for(lambda: [r for r in results(world, agent) if not r["ok"]], 60,
                          "the device's pass failed while the server was down", procs=procs)
        assert failed[0]["code"] == "download_interrupted", failed[0]
        assert failed[0]["download"]["resumed_at"], failed[0]["download"]  # it tried Range first
        assert versions(root) == KEPT  # nothing of the running version touched
        assert durable(root) >= at_kill  # the install stays journaled for a resume

        proxy.rate = None  # the rest of the test need not crawl
        procs.restart(server)
        procs.wait_healthy(server)
        wait_fleet(world, {"a-0": root}, {"a-0": {**KEPT, MAIN: "1.1.0"}}, timeout=90)
    finally:
        proxy.close()

    # the slot is confirmed a moment before the agent's pass ends and logs its results
    done = wait_for(lambda: [r for r in results(world, agent) if r["ok"]], 30, "the pass that confirmed 1.1.0 logged",
                    procs=procs)
    assert [(r["version"], r["outcome"]) for r in done] == [("1.1.0", "confirmed")], done
    assert done[0]["report"]["resumed_from"] >= at_kill, done[0]["report"]  # resumed, not restarted
    slot = done[0]["report"]["slot"]
    assert (root / "components" / MAIN / f"slot_{slot}").read_bytes() == image
    assert durable(root) == -1  # the journal is gone with the finished install

    # the server's store is intact: no temp file, one object that hashes to its name, listed once
    # as published, served whole (to the registered device)
    data = world.tmp / "server"
    assert list((data / "tmp").iterdir()) == []
    payload = payload_of(world.tmp / "acme-main-fw-1.1.0.fwb")
    objects = list((data / "objects").iterdir())
    assert [p.name for p in objects] == [hashlib.sha256(payload).hexdigest()]
    assert objects[0].read_bytes() == payload
    with requests.Session() as s:
        s.trust_env = False
        listed = s.get(f"{server.url}/v1/images", timeout=10).json()
    assert [(i["header_hash"], i["state"]) for i in listed] == [(main.header_hash, "published")], listed
    resp = server_get(world, server, f"/v1/images/{main.header_hash}", root)
    assert resp.status_code == 200 and resp.content == payload
    assert server.starts == 2


# ============================================================================= anvil


def dumped_block(home: Path) -> int:
    """The block number anvil's state file holds (-1 while it is being written or absent)."""
    try:
        return int(json.loads((home / "devnet" / "state.json").read_text())["block"]["number"], 16)
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def kill_anvil_after_a_dump(world: World) -> tuple[int, devnet.DevnetInfo]:
    """SIGKILL the home's anvil right after a state dump that holds the head; returns the head."""
    info = devnet.status(world.home)
    assert info is not None
    head = wait_for(lambda: (n := int(world.w3.eth.block_number)) == dumped_block(world.home) and n + 1, 30,
                    "anvil dumped its state at the head") - 1
    os.kill(info.pid, signal.SIGKILL)
    wait_for(lambda: devnet.status(world.home) is None, 10, "anvil gone after SIGKILL")
    return head, info


def start_anvil(world: World, port: int, state_interval: int = STATE_INTERVAL) -> devnet.DevnetInfo:
    """The home's devnet daemon on ``port`` (once the dead one's socket is released), from its state."""
    wait_for(lambda: not devnet._port_in_use(port), 15, f"port {port} released by the old anvil")
    return devnet.start(world.home, port, state_interval=state_interval, block_time=BLOCK_TIME)


def restart_anvil(world: World, info: devnet.DevnetInfo) -> devnet.DevnetInfo:
    """The devnet daemon started again on the same port, from its state file."""
    again = start_anvil(world, info.port)
    assert again.pid != info.pid and again.url == world.rpc
    return again


def test_anvil_sigkilled_mid_rollout_restarts_from_its_state(world: World) -> None:
    """Waves 0.5, 1.0; two class-A devices and one class-B device following the server module's
    commands. When main-fw 1.1.0's rollout has its first success, anvil is SIGKILLed right after a
    state dump and started again from ``<home>/devnet/state.json`` on the same port (the
    chain resumes at the dumped head, same block hashes). The server module and the firmware
    server ride over the outage (unreachable node: waited for); addon-fw 1.0.0 is then
    published; both rollouts complete, every class-A device ends on both new versions, each
    command executed once, and the indexes of the tracker and the server hold each release
    exactly once (no event lost or doubled)."""
    set_waves(world, [0.5, 1.0])
    procs = world.procs
    server, trk = world.firmware_server(), world.server_module()
    a_names, b_names = ["a-0", "a-1"], ["b-0"]
    health = {"a-0": ("true",), "a-1": ("sleep", "2"), "b-0": ("true",)}
    roots = {n: world.provision(n, HW_A if n.startswith("a") else HW_B, trackers=[trk.address], health=health[n])
             for n in a_names + b_names}
    procs.wait_healthy(server, trk, check=lambda h: h.get("ledger_block") is not None)
    agents = [procs.device(n, r, "--tracker", str(trk.url), "--follow", "commands") for n, r in roots.items()]
    procs.wait_passes(*agents)
    main = world.publish(server, MAIN, "1.1.0")
    at_kill = first_success(world, trk, main.header_hash, timeout=90)
    assert at_kill["state"] != "completed", at_kill
    head, info = kill_anvil_after_a_dump(world)
    # while the node is down the modules keep running and say so
    wait_for(lambda: trk.health().get("last_sync_error"), 20, "the tracker notices the node is gone", procs=procs)
    again = restart_anvil(world, info)
    assert int(world.w3.eth.block_number) >= head  # nothing the modules had seen was lost
    procs.wait_healthy(trk, server, check=lambda h: h.get("last_sync_error") is None
                       and (h.get("ledger_block") or 0) > head)
    addon = world.publish(server, ADDON, "1.0.0", (Dependency(MAIN, Version(1, 1, 0)),))

    wait_fleet(world, roots, {n: UPDATED if n in a_names else KEPT for n in roots})
    settled(world, [roots[n] for n in a_names])
    rollouts = {r["header_hash"]: r for r in trk.signed("GET", "/v1/rollouts", ADMIN)}
    assert set(rollouts) == {main.header_hash, addon.header_hash}
    for hh in rollouts:
        def completed(path: str = f"/v1/rollouts/{rollouts[hh]['id']}") -> dict[str, Any] | None:
            ro: dict[str, Any] = trk.signed("GET", path, ADMIN)
            return ro if ro["state"] == "completed" else None

        ro = wait_for(completed, 30, f"rollout of {hh} completed", procs=procs)
        assert (ro["succeeded"], ro["failed"]) == (len(a_names), 0), ro
    for n in a_names:
        # one command per try: a try the node's outage made impossible (``unavailable``) is
        # commanded again, each command run once
        assert_commands_explained(roots[n])
    want = sorted(h.removeprefix("0x") for h in (main.header_hash, addon.header_hash))
    for db in (world.tmp / "tracker" / "ledger.sqlite", world.tmp / "server" / "ledger.sqlite"):
        assert sorted(indexed_releases(db)) == want, db  # each release exactly once
    assert trk.health()["status"] == "ok" and devnet.status(world.home) is not None
    assert again.notes == ()  # the state file was whole: no last-good copy needed


def test_firmware_server_node_down_when_a_commanded_device_downloads(world: World) -> None:
    """The race CI hit once in the test above, made deterministic: the firmware server reaches its
    node through a relay, a device is commanded main-fw 1.1.0 (one wave) and, with the relay closed
    (the server's node refuses connections; the tracker's node answers), its download is refused
    ``503 ledger_unproven`` (the server cannot prove the release now). That is no failure of the
    update: the rollout keeps running, the device is commanded again and, the relay open again on
    its port, installs 1.1.0; the rollout completes with no failure."""
    set_waves(world, [1.0])
    procs = world.procs
    anvil_port = int(world.rpc.rsplit(":", 1)[1])
    node = ThrottledProxy(anvil_port)
    try:
        server, trk = world.firmware_server(rpc=node.url), world.server_module()
        root = world.provision("a-0", HW_A, trackers=[trk.address])
        procs.wait_healthy(server, trk, check=lambda h: h.get("ledger_block") is not None)
        early = procs.device("a-0", root, "--tracker", str(trk.url), "--follow", "commands")
        procs.wait_passes(early)  # the server module knows the device
        procs.stop(early)
        main = world.publish(server, MAIN, "1.1.0")
        for db in (world.tmp / "tracker" / "ledger.sqlite", world.tmp / "server" / "ledger.sqlite"):
            wait_for(lambda db=db: main.header_hash.removeprefix("0x") in indexed_releases(db), 30,
                     f"{db} indexed the release", procs=procs)
        wait_for(lambda: image_state(server) == "published", 30, "the server publishes the image", procs=procs)

        node.close()  # the server's node is gone; the tracker's is not
        wait_for(lambda: server.health().get("last_sync_error"), 20, "the server notices its node is gone",
                 procs=procs)
        agent = procs.device("a-0-again", root, "--tracker", str(trk.url), "--follow", "commands")
        failed = wait_for(lambda: [r for r in results(world, agent) if not r["ok"]], 60,
                          "the device's download was refused", procs=procs)
        assert failed[0]["code"] == "ledger_unproven", failed[0]
        rows = [r for r in trk.signed("GET", "/v1/rollouts", ADMIN) if r["header_hash"] == main.header_hash]
        assert [(r["state"], r["failed"]) for r in rows] == [("running", 0)], rows  # not halted
        assert versions(root) == KEPT

        node = ThrottledProxy(anvil_port, port=node.port)  # the server's node answers again
        wait_fleet(world, {"a-0": root}, {"a-0": {**KEPT, MAIN: "1.1.0"}})
    finally:
        node.close()
    path = f"/v1/rollouts/{rows[0]['id']}"
    wait_for(lambda: trk.signed("GET", path, ADMIN)["state"] == "completed", 30, "the rollout completed", procs=procs)
    rollout = trk.signed("GET", path, ADMIN)
    assert (rollout["succeeded"], rollout["failed"]) == (1, 0), rollout


def test_release_published_after_anvil_last_dump_is_lost_and_rolled_back(world: World) -> None:
    """What a SIGKILL of anvil loses, made deterministic: anvil restarted with a state dump every
    hour (the window between two dumps, 1-2 s in practice, made wide), a device known to the
    server module, main-fw 1.1.0 published and indexed by the server module and the firmware
    server (the device's plan has it), then anvil SIGKILLed and restarted from its state file:
    the release is gone from the chain. Both full nodes notice that the block they indexed is no
    longer the chain's, roll their indexes back to the newest block they share with it and follow
    the chain again: ``/health`` stays (or returns to) ok, the release is gone from both indexes,
    from the device's plan and from the outdated lists, the firmware server holds the upload as
    unpublished again, and the device installs nothing."""
    procs = world.procs
    assert devnet.stop(world.home)  # a clean stop dumps the state: the registry is in it
    info = start_anvil(world, int(world.rpc.rsplit(":", 1)[1]), state_interval=3600)
    server, trk = world.firmware_server(), world.server_module()
    root = world.provision("a-0", HW_A, trackers=[trk.address])
    procs.wait_healthy(server, trk, check=lambda h: h.get("ledger_block") is not None)
    early = procs.device("a-0", root, "--tracker", str(trk.url))
    procs.wait_passes(early)  # the server module knows the device
    procs.stop(early)
    main = world.publish(server, MAIN, "1.1.0")
    hh = main.header_hash.removeprefix("0x")
    dbs = (world.tmp / "tracker" / "ledger.sqlite", world.tmp / "server" / "ledger.sqlite")
    for db in dbs:
        wait_for(lambda db=db: hh in indexed_releases(db), 30, f"{db} indexed the release", procs=procs)

    def planned() -> list[str]:
        plan = trk.signed("GET", "/v1/devices/a-0/plan", ADMIN)
        return [u["header_hash"] for u in plan["plan"]["upgrades"]]

    wait_for(lambda: main.header_hash in planned(), 30, "the device's plan has main-fw 1.1.0", procs=procs)
    published_at = int(world.w3.eth.block_number)
    os.kill(info.pid, signal.SIGKILL)
    wait_for(lambda: devnet.status(world.home) is None, 10, "anvil gone after SIGKILL")
    again = start_anvil(world, info.port)
    assert again.notes == ()  # the state file was whole: it is simply older than the release
    assert int(world.w3.eth.block_number) < published_at
    assert not world.registry.release_entry(line_id("acme", MAIN), bytes.fromhex(hh)).exists  # gone

    for db in dbs:
        wait_for(lambda db=db: hh not in indexed_releases(db), 30, f"{db} rolled the release back", procs=procs)
    procs.wait_healthy(trk, server, check=lambda h: h["status"] == "ok" and h.get("last_sync_error") is None)
    wait_for(lambda: main.header_hash not in planned(), 30, "the plan lost main-fw 1.1.0", procs=procs)

    def up_to_date() -> dict[str, Any] | None:
        out: dict[str, Any] = trk.signed("GET", "/v1/outdated", ADMIN)
        return out if out["up_to_date"] == ["a-0"] and out["outdated"] == [] else None

    wait_for(up_to_date, 30, "the device is up to date again", procs=procs)

    def upload_state() -> str | None:
        with requests.Session() as s:
            s.trust_env = False
            listed = s.get(f"{server.url}/v1/images", timeout=10).json()
        states = [i["state"] for i in listed]
        return states[0] if states == ["unpublished"] else None

    wait_for(upload_state, 30, "the firmware server holds the upload as unpublished", procs=procs)

    agent = procs.device("a-0-again", root, "--tracker", str(trk.url))
    procs.wait_passes(agent, n=2)
    assert results(world, agent) == []  # nothing to install, nothing tried
    assert versions(root) == KEPT
    for mod in (trk, server):
        assert mod.health()["status"] == "ok", mod.health()
