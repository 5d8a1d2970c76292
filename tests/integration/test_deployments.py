"""The three deployments of the status tracker (X.1368 clause 8: D8.2.1-D8.2.3) as real processes,
and killing / restarting its modules in the middle of a rollout.

One anvil node for the module, mining a block every second (so the devices' headers never go
stale), and per test a fresh registry: vendor ``acme``, two hardware classes (``cls-a``, and
``cls-b`` whose policy caps ``acme/main-fw`` at 1.0.x), and devices running two components:
``main-fw`` 1.0.0 and ``addon`` (product ``addon-fw``) 0.9.0. The author publishes main-fw
1.1.0 and addon-fw 1.0.0, which depends on main-fw >= 1.1.0. Every class-A device must end on
main-fw 1.1.0 + addon-fw 1.0.0; class-B devices stay on main-fw 1.0.0 (policy) and addon-fw
0.9.0 (its dependency cannot be had), which the tracker explains.

Everything but the ledger set-up and the author's build/publish (in this process, against the
same anvil) is a real ``fwledger`` process on 127.0.0.1: firmware server, tracker modules
(``tracker run --role server|intermediate``) and device agents (``device run --follow
commands`` or ``--intra-device``), started, killed and stopped by PID (:mod:`.procs`). Waits
poll with deadlines; on a failure each process's log tail is printed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account
from eth_account.signers.local import LocalAccount

from entities import stack
from entities.author.publish import publish_bundle
from entities.firmware_consumer import read_status
from entities.firmware_consumer.intra import tracker_account
from entities.firmware_consumer.provision import (
    ComponentBinding,
    anchors_from_deployment,
    load_provisioning,
    provision_device,
)
from entities.status_tracker.rollout import TRANSIENT_CODES
from ledger_node.compiler import registry_contract
from ledger_node.devnet import AnvilProcess
from ledger_node.record import Dependency, Version
from ledger_node.registry import Registry, save_deployment
from tests.conftest import Chain, require_anvil
from tests.integration.procs import Proc, Procs, TLSClient, wait_for
from tests.security.world import factory_image
from tests.world import LedgerWorld

pytestmark = pytest.mark.devnet

REPO = Path(__file__).resolve().parents[2]
HW_A, HW_B = "cls-a", "cls-b"
MAIN, ADDON = "main-fw", "addon-fw"
ADMIN = Account.from_key(b"\x5a" * 32)
BLOCK_TIME = 1.0
UPDATE_WAIT = 120.0  # every device of a test updated (two releases, a handful of agents on 2 cores)


@pytest.fixture(scope="module")
def anvil_rpc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One anvil for the module, interval mining (``fwledger up``'s devnet does the same)."""
    require_anvil()
    node = AnvilProcess(block_time=BLOCK_TIME, log_path=tmp_path_factory.mktemp("anvil") / "anvil.log")
    node.start()
    try:
        yield node.url
    finally:
        node.stop()


# ----------------------------------------------------------------------------- the world


@dataclass
class Release:
    product: str
    version: str
    header_hash: str


@dataclass
class World:
    """The shared ledger world (``tests/world.py``: a fresh registry on the module's anvil, vendor
    acme, classes cls-a and cls-b with real X25519 keys), and this test's home and processes."""

    ledger: LedgerWorld
    tmp: Path
    procs: Procs
    home: Path
    admin_key_file: Path

    @property
    def rpc(self) -> str:
        return self.ledger.chain.rpc

    @property
    def w3(self) -> Any:
        return self.ledger.chain.w3

    @property
    def registry(self) -> Registry:
        return self.ledger.registry

    @property
    def vendor(self) -> LocalAccount:
        return self.ledger.vendor

    @property
    def class_keys(self) -> dict[str, X25519PrivateKey]:
        return self.ledger.private_keys

    # -- services ------------------------------------------------------------------------------

    def firmware_server(self, rpc: str | None = None) -> Proc:
        """The firmware server; ``rpc``: its node's URL when not the test's anvil (a relay to it)."""
        return self.procs.service("server", ["server", "run", "--host", "127.0.0.1", "--port", "{port}", "--data",
                                             str(self.tmp / "server"), "--poll-interval", "0.2"], rpc=rpc)

    def module_args(self, modules: tuple[str, ...]) -> list[str]:
        """``--module-key`` for the intermediates named ``modules`` (their keys made now): a module
        hears module heartbeats from configured keys only."""
        return [a for name in modules for a in ("--module-key", stack._service_key(self.tmp / name / "tracker.key"))]

    def server_module(self, *, tls: dict[str, Path] | None = None, client: TLSClient | None = None,
                      modules: tuple[str, ...] = ()) -> Proc:
        """The tracker's server module (full node); its key made first so devices can pin it;
        ``modules``: the intermediates directly below it."""
        data = self.tmp / "tracker"
        address = stack._service_key(data / "tracker.key")
        return self.procs.service("tracker", ["tracker", "run", "--role", "server", "--listen", "127.0.0.1:{port}",
                                              "--data", str(data), "--poll-interval", "0.2",
                                              "--admin-key", ADMIN.address, *_tls_args(tls),
                                              *self.module_args(modules)],
                                  scheme="https" if tls else "http", address=address, tls=client)

    def intermediate(self, name: str, upstream: Proc, *, tls: dict[str, Path] | None = None,
                     serve_tls: bool = False, client: TLSClient | None = None, modules: tuple[str, ...] = ()) -> Proc:
        data = self.tmp / name
        address = stack._service_key(data / "tracker.key")
        return self.procs.service(name, ["tracker", "run", "--role", "intermediate", "--upstream", str(upstream.url),
                                         "--upstream-key", upstream.address, "--listen", "127.0.0.1:{port}",
                                         "--data", str(data), "--identity", str(data / "tracker.key"),
                                         "--poll-interval", "0.5", "--admin-key", ADMIN.address, *_tls_args(tls),
                                         *self.module_args(modules),
                                         *([] if serve_tls or not tls else ["--serve-http"])],
                                  scheme="https" if serve_tls else "http", address=address, tls=client)

    def fwledger(self, *args: str, timeout: float = 60, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "entities.cli", "--home", str(self.home), "--rpc", self.rpc,
                "--key-file", str(self.admin_key_file), *args]
        return subprocess.run(argv, cwd=REPO, env={**stack._child_env(self.home, self.rpc), **(env or {})},
                              capture_output=True, text=True, timeout=timeout, check=False)

    # -- devices -------------------------------------------------------------------------------

    def provision(self, name: str, hardware: str, *, trackers: list[str], relays: tuple[str, ...] = (),
                  intra: bool = False, health: tuple[str, ...] = ("true",)) -> Path:
        """A device folder: main-fw 1.0.0 and addon-fw 0.9.0 confirmed in slot a, anchors k = 1."""
        root = self.tmp / "devices" / name
        anchors = anchors_from_deployment(self.registry.deployment, registry_contract(), trackers=trackers, quorum=1,
                                          max_header_age=600, relays=relays)
        provision_device(root, device_id=name, hardware=hardware,
                         components={MAIN: ComponentBinding(MAIN, "acme"), "addon": ComponentBinding(ADDON, "acme")},
                         anchors=anchors, class_private_key=self.class_keys[hardware].private_bytes_raw(),
                         factory={MAIN: factory_image(MAIN, "1.0.0"), "addon": factory_image("addon", "0.9.0")},
                         health_command=list(health), intra_device=intra)
        return root

    # -- the author (P1) -----------------------------------------------------------------------

    def publish(self, server: Proc, product: str, version: str, depends: tuple[Dependency, ...] = (), *,
                size: int = 60_000, hardware: tuple[str, ...] = (HW_A, HW_B)) -> Release:
        out, _, _ = self.ledger.bundle(self.tmp, version, product=product, hardware=hardware, deps=depends,
                                       data=os.urandom(size), link=f"{server.url}/v1/images")
        res = publish_bundle(out, [str(server.url)], self.ledger.as_vendor())
        self.ledger.heads[("acme", product)] = res.header_hash
        hh = "0x" + res.header_hash.hex()

        def served() -> bool:  # its follower saw the record: a device asking now is not told unknown_image
            with requests.Session() as s:
                s.trust_env = False
                rows = s.get(f"{server.url}/v1/images", params={"state": "published"}, timeout=5,
                             **server._http()).json()
            return any(r.get("header_hash") == hh for r in rows)

        wait_for(served, 30, f"the firmware server serves {product} {version}", procs=self.procs)
        return Release(product, version, hh)

    def publish_both(self, server: Proc) -> tuple[Release, Release]:
        main = self.publish(server, MAIN, "1.1.0")
        addon = self.publish(server, ADDON, "1.0.0", (Dependency(MAIN, Version(1, 1, 0)),))
        return main, addon


def _tls_args(tls: dict[str, Path] | None) -> list[str]:
    if not tls:
        return []
    return ["--tls-cert", str(tls["cert"]), "--tls-key", str(tls["key"]), "--tls-ca", str(tls["ca"])]


@pytest.fixture
def world(anvil_rpc: str, tmp_path: Path) -> Iterator[World]:
    chain = Chain.connect(anvil_rpc, accounts=2)
    ledger = LedgerWorld.create(chain, vendors={"acme": chain.vendor}, hardware={HW_A: 1, HW_B: 2})
    reg = ledger.registry
    reg.set_policy(HW_A, "acme", MAIN, allowed=True)
    reg.set_policy(HW_A, "acme", ADDON, allowed=True)
    reg.set_policy(HW_B, "acme", MAIN, allowed=True, max_version=Version(1, 0, 0xFFFF))  # 1.0.x only
    reg.set_policy(HW_B, "acme", ADDON, allowed=True)
    home = tmp_path / "home"
    save_deployment(home, reg.deployment)
    key_file = home / "keys" / "admin.key"
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text("0x" + ADMIN.key.hex() + "\n")
    key_file.chmod(0o600)
    procs = Procs(home, anvil_rpc, tmp_path / "logs")
    try:
        yield World(ledger, tmp_path, procs, home, key_file)
    finally:
        errors = procs.stop_all()
        print(procs.report())  # shown by pytest when the test failed
        assert not errors, errors


def set_waves(world: World, waves: list[float]) -> None:
    """The tracker config (``[tracker]`` of ``<home>/config.toml``) every module of the test reads."""
    (world.home / "config.toml").write_text(f"[tracker]\nwaves = {json.dumps(waves)}\n")


# ----------------------------------------------------------------------------- reading devices and trackers


def versions(root: Path) -> dict[str, str | None]:
    """Each component's confirmed (running) version."""
    out: dict[str, str | None] = {}
    for c in read_status(root)["components"]:
        confirmed = c.get("confirmed")
        out[c["name"]] = c["slots"][confirmed]["version"] if confirmed else None
    return out


def agent_state(root: Path) -> dict[str, Any]:
    """The agent's own state (its command log...); empty before it ever had something to remember."""
    path = root / "agent" / "agent.json"
    return json.loads(path.read_text()) if path.exists() else {}  # type: ignore[no-any-return]


UPDATED = {MAIN: "1.1.0", "addon": "1.0.0"}
KEPT = {MAIN: "1.0.0", "addon": "0.9.0"}


def wait_fleet(world: World, devices: dict[str, Path], want: dict[str, dict[str, str]],
               timeout: float = UPDATE_WAIT) -> None:
    """Every device runs the versions ``want[name]`` says."""
    try:
        wait_for(lambda: {n: versions(r) for n, r in devices.items()} == want, timeout, f"the fleet runs {want}",
                 procs=world.procs)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it runs {({n: versions(r) for n, r in devices.items()})}") from None


def settled(world: World, roots: list[Path]) -> None:
    """Wait until each device reported every command it accepted (the install is confirmed in the
    device state a moment before the agent records and reports it)."""
    def done(root: Path) -> bool:
        log, state = agent_state(root).get("command_log", []), agent_state(root)
        return not state.get("pending_results") and all(
            any(e["event"] == "reported" and e["command_id"] == cid for e in log)
            for cid in {e["command_id"] for e in log if e["event"] == "accepted"})

    def unreported() -> dict[str, Any]:
        """Per device not done: its kept results and the log of each command accepted, not reported."""
        out: dict[str, Any] = {}
        for root in roots:
            state = agent_state(root)
            log = state.get("command_log", [])
            open_ids = {e["command_id"] for e in log if e["event"] == "accepted"} - {
                e["command_id"] for e in log if e["event"] == "reported"}
            if open_ids or state.get("pending_results"):
                out[root.name] = {"pending": [p["command_id"] for p in state.get("pending_results", [])],
                                  "log": [(e["event"], e["command_id"][:10], e.get("code")) for e in log
                                          if e["command_id"] in open_ids]}
        return out

    try:
        wait_for(lambda: all(done(r) for r in roots), 30, "every accepted command reported", procs=world.procs)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; not reported: {unreported()}") from None


def first_success(world: World, trk: Proc, header_hash: str, timeout: float = UPDATE_WAIT) -> dict[str, Any]:
    """The rollout of ``header_hash`` (its list row) once it has its first success (polled every
    0.1 s, so a module can be killed right after)."""
    def row() -> dict[str, Any] | None:
        rows = [r for r in trk.signed("GET", "/v1/rollouts", ADMIN) if r["header_hash"] == header_hash]
        return rows[0] if rows and rows[0]["succeeded"] >= 1 else None

    return wait_for(row, timeout, f"the rollout of {header_hash} has a success", procs=world.procs,  # type: ignore[no-any-return]
                    poll=0.1)


def assert_commands_explained(root: Path, releases: int = 2) -> list[str]:
    """:func:`assert_commands_once`, and no command beyond one per release plus one per try that
    could not be made (a transient result: a module, the server or the node did not answer, and
    the tracker commands the device again). Returns the command ids."""
    ids = assert_commands_once(root)
    log = agent_state(root)["command_log"]
    retried = [e for e in log if e["event"] == "done" and e["code"] in TRANSIENT_CODES]
    assert 1 <= len(ids) <= releases + len(retried), (root.name, ids, retried)
    return ids


def assert_commands_once(root: Path) -> list[str]:
    """The device executed each command it accepted once: one ``accepted`` and one ``done`` per
    command id, each reported; returns the command ids in order."""
    log = agent_state(root)["command_log"]
    ids = list(dict.fromkeys(e["command_id"] for e in log))
    for cid in ids:
        events = [e["event"] for e in log if e["command_id"] == cid]
        assert events.count("accepted") == 1 and events.count("done") == 1, (root.name, cid, events)
        assert "reported" in events, (root.name, cid, events)
    accepted = json.loads((root / "agent" / "commands.json").read_text())["accepted"]
    assert sorted(accepted) == sorted(ids), (root.name, accepted, ids)
    assert agent_state(root)["pending_results"] == []
    return ids


def outdated_reasons(out: dict[str, Any]) -> dict[str, str]:
    return {d["device_id"]: " | ".join(d["reasons"]) for d in out["outdated"]}


def check_class_b_explained(out: dict[str, Any], b_devices: list[str], a_devices: list[str]) -> None:
    """``/v1/outdated``: class-B devices are listed outdated with the policy and the dependency as
    reasons; class-A devices are up to date."""
    reasons = outdated_reasons(out)
    for name in b_devices:
        assert name in reasons, out
        assert "policy" in reasons[name] and "1.1.0" in reasons[name], reasons[name]
        assert "depend" in reasons[name] and ADDON in reasons[name], reasons[name]
    up = {d if isinstance(d, str) else d["device_id"] for d in out["up_to_date"]}
    assert set(a_devices) <= up, out


# ============================================================================= D8.2.2 client-server


def test_client_server_devices_follow_the_server_modules_commands(world: World) -> None:
    """D8.2.2, P2-P5, R10.e.i: one server-module tracker, four device agents talking to it directly
    (``device run --follow commands``). After main-fw 1.1.0 and the dependent addon-fw 1.0.0
    are published, the three class-A devices run both; the class-B device stays on 1.0.0 / 0.9.0
    and ``fwledger tracker outdated --json`` lists it with the policy and dependency reasons."""
    set_waves(world, [1.0])
    procs = world.procs
    server, trk = world.firmware_server(), world.server_module()
    a_names, b_names = ["a-0", "a-1", "a-2"], ["b-0"]
    roots = {n: world.provision(n, HW_A if n.startswith("a") else HW_B, trackers=[trk.address])
             for n in a_names + b_names}
    procs.wait_healthy(server, trk, check=lambda h: h.get("ledger_block") is not None)
    agents = [procs.device(n, r, "--tracker", str(trk.url), "--follow", "commands") for n, r in roots.items()]
    procs.wait_passes(*agents)

    main, addon = world.publish_both(server)
    wait_fleet(world, roots, {n: UPDATED if n in a_names else KEPT for n in roots})
    settled(world, [roots[n] for n in a_names])

    for n in a_names:
        # one command with both upgrades, or one per release (plus retries of tries not made)
        assert_commands_explained(roots[n])
    for n in b_names:
        assert agent_state(roots[n]).get("command_log", []) == [], "a class-B device got a command"
    res = world.fwledger("tracker", "outdated", "--tracker", str(trk.url), "--tracker-key", trk.address, "--json")
    assert res.returncode == 0, res.stderr
    check_class_b_explained(json.loads(res.stdout), b_names, a_names)
    rollouts = {r["header_hash"]: r for r in trk.signed("GET", "/v1/rollouts", ADMIN)}
    assert {h: (r["state"], r["succeeded"], r["failed"]) for h, r in rollouts.items()} == {
        main.header_hash: ("completed", 3, 0), addon.header_hash: ("completed", 3, 0)}
    # no spurious command while a device was running one (it heartbeats between upgrades): every
    # command the tracker issued was reported, none replaced
    with sqlite3.connect(world.tmp / "tracker" / "inventory.sqlite") as db:
        rows = db.execute("SELECT device_id, reported, superseded FROM commands").fetchall()
    assert rows and all((rep, sup) == (1, 0) for _dev, rep, sup in rows), rows


# ============================================================================= D8.2.3 hierarchical


def fleet_certs(world: World) -> dict[str, dict[str, Path]]:
    """``fwledger fleet ca-init`` and ``fleet issue`` (in parallel) for the modules and the admin."""
    ca = world.tmp / "fleet-ca"
    res = world.fwledger("fleet", "ca-init", "--dir", str(ca), "--json")
    assert res.returncode == 0, res.stderr
    out = world.tmp / "certs"
    roles = {"server": "server", "l1": "intermediate", "l2": "intermediate", "admin": "client"}
    env = stack._child_env(world.home, world.rpc)
    running = [subprocess.Popen([sys.executable, "-m", "entities.cli", "--home", str(world.home), "fleet", "issue",
                                 "--name", name, "--role", role, "--host", "127.0.0.1", "--out", str(out),
                                 "--ca-dir", str(ca), "--json"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
               for name, role in roles.items()]
    for p in running:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    return {name: {"cert": out / f"{name}.crt", "key": out / f"{name}.key", "ca": ca / "ca.crt"} for name in roles}


def test_hierarchical_server_two_intermediates_and_devices_over_mutual_tls(world: World) -> None:
    """D8.2.3, R10.e.ii, C11.2 module rules: server module <- intermediate L1 <- intermediate L2 <-
    devices. The modules talk mutual TLS with fleet-CA certificates (``fleet ca-init``/``issue``);
    the devices talk plain HTTP to L2 and are provisioned with the server module's key as their
    only tracker and L2's as a relay. Same outcome as client-server; the server module's
    ``/v1/modules`` lists L1 reachable with every device below it and each device's route
    [L2, L1], and L1's lists L2 reachable."""
    set_waves(world, [1.0])
    procs = world.procs
    certs = fleet_certs(world)
    admin = TLSClient(certs["admin"]["ca"], certs["admin"]["cert"], certs["admin"]["key"])
    server = world.firmware_server()
    trk = world.server_module(tls=certs["server"], client=admin, modules=("l1",))
    l1 = world.intermediate("l1", trk, tls=certs["l1"], serve_tls=True, client=admin, modules=("l2",))
    l2 = world.intermediate("l2", l1, tls=certs["l2"])
    assert str(trk.url).startswith("https://") and str(l1.url).startswith("https://")
    assert str(l2.url).startswith("http://")
    a_names, b_names = ["a-0", "a-1", "a-2"], ["b-0"]
    roots = {n: world.provision(n, HW_A if n.startswith("a") else HW_B, trackers=[trk.address],
                                relays=(l2.address,)) for n in a_names + b_names}
    procs.wait_healthy(server, trk, check=lambda h: h.get("ledger_block") is not None)
    procs.wait_healthy(l1, l2)
    agents = [procs.device(n, r, "--tracker", str(l2.url), "--follow", "commands") for n, r in roots.items()]
    procs.wait_passes(*agents)

    main, addon = world.publish_both(server)
    wait_fleet(world, roots, {n: UPDATED if n in a_names else KEPT for n in roots})
    settled(world, [roots[n] for n in a_names])
    for n in a_names:
        assert_commands_explained(roots[n])

    # the outcome at the server module: `fwledger tracker outdated` over HTTPS with the
    # administrator's fleet certificate (FWLEDGER_TLS_*), its request admin-signed
    tls_env = {"FWLEDGER_TLS_CA": str(certs["admin"]["ca"]), "FWLEDGER_TLS_CERT": str(certs["admin"]["cert"]),
               "FWLEDGER_TLS_KEY": str(certs["admin"]["key"])}
    res = world.fwledger("tracker", "outdated", "--tracker", str(trk.url), "--tracker-key", trk.address, "--json",
                         env=tls_env)
    assert res.returncode == 0, res.stderr
    check_class_b_explained(json.loads(res.stdout), b_names, a_names)
    res = world.fwledger("tracker", "outdated", "--tracker", str(trk.url), "--json",
                         env={"FWLEDGER_TLS_CA": str(certs["admin"]["ca"])})
    assert res.returncode == 1 and res.stderr.startswith("error: cannot reach the tracker"), res.stderr
    rollouts = {r["header_hash"]: (r["state"], r["succeeded"]) for r in trk.signed("GET", "/v1/rollouts", ADMIN)}
    assert rollouts == {main.header_hash: ("completed", 3), addon.header_hash: ("completed", 3)}

    def modules_ok() -> bool:
        top = trk.signed("GET", "/v1/modules", ADMIN)
        mid = l1.signed("GET", "/v1/modules", ADMIN)
        (m1,) = [m for m in top["modules"] if m["address"] == l1.address]
        (m2,) = [m for m in mid["modules"] if m["address"] == l2.address]
        assert all(top["routes"][n]["via"] == [l2.address, l1.address] for n in roots), top["routes"]
        return (m1["reachability"] == m2["reachability"] == "reachable" and m1["url"] == l1.url
                and m2["url"] == l2.url and set(m1["devices"]) == set(m2["devices"]) == set(roots))

    wait_for(modules_ok, 30, "the server module sees L1 and L1 sees L2, both reachable, with every device",
             procs=procs)
    for mod, up in ((l1, trk), (l2, l1)):
        (state,) = mod.health()["upstreams"]
        assert state["reachable"] is True and state["url"] == up.url, state
    # mutual TLS: a client without a fleet certificate gets no answer from the server module or L1
    for mod in (trk, l1):
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"{mod.url}/health", verify=str(certs["admin"]["ca"]), timeout=10)


# ============================================================================= D8.2.1 intra-device


def test_intra_device_updates_from_the_chain_alone(world: World) -> None:
    """D8.2.1, docs/MODULES.md 7: each device process runs its own server-module tracker (its own
    full node on the chain, its own key the anchors' only tracker) and no other tracker exists;
    the class-A device installs main-fw 1.1.0 then the dependent addon-fw 1.0.0 through its own
    commands, the class-B device keeps 1.0.0 / 0.9.0."""
    set_waves(world, [1.0])
    procs = world.procs
    server = world.firmware_server()
    roots = {"a-0": world.provision("a-0", HW_A, trackers=[ADMIN.address], intra=True),
             "b-0": world.provision("b-0", HW_B, trackers=[ADMIN.address], intra=True)}
    for root in roots.values():  # the in-device tracker's key is the anchors' only tracker
        anchors = load_provisioning(root).anchors
        assert anchors.trackers == (tracker_account(root).address,) and anchors.quorum == 1
    procs.wait_healthy(server)
    agents = [procs.device(n, r, "--intra-device", "--ledger-poll", "0.2", "--follow", "commands")
              for n, r in roots.items()]
    procs.wait_passes(*agents)
    for agent in agents:
        assert any('"intra_tracker"' in line for line in agent.log_lines()), agent.tail()

    world.publish_both(server)
    wait_fleet(world, roots, {"a-0": UPDATED, "b-0": KEPT})
    settled(world, [roots["a-0"]])
    assert_commands_explained(roots["a-0"])
    # the class-B device kept passing after both releases were on chain, and was never commanded
    before = len(procs.passes(agents[1]))
    procs.wait_passes(agents[1], n=before + 2)
    assert versions(roots["b-0"]) == KEPT and agent_state(roots["b-0"]).get("command_log", []) == []


# ============================================================================= restarts mid-rollout


def test_server_module_and_intermediate_killed_mid_rollout_then_restarted(world: World) -> None:
    """Waves 0.34, 0.67, 1.0 (the tracker config); devices behind one intermediate. When main-fw
    1.1.0's rollout has its first success, SIGKILL the server module and the intermediate; while
    they are down the author publishes addon-fw 1.0.0; restart both on the same data folders and
    ports. Both rollouts complete; the inventory lists every device with its last result; each
    device executed each command once and the tracker counted each result once; the tracker's
    index has both releases (no chain event lost)."""
    set_waves(world, [0.34, 0.67, 1.0])
    procs = world.procs
    server, trk = world.firmware_server(), world.server_module(modules=("mid",))
    mid = world.intermediate("mid", trk)
    a_names, b_names = ["a-0", "a-1", "a-2"], ["b-0"]
    # trial boots of different lengths spread the devices' installs over time
    health = {"a-0": ("true",), "a-1": ("sleep", "1"), "a-2": ("sleep", "2"), "b-0": ("true",)}
    roots = {n: world.provision(n, HW_A if n.startswith("a") else HW_B, trackers=[trk.address],
                                relays=(mid.address,), health=health[n]) for n in a_names + b_names}
    procs.wait_healthy(server, trk, check=lambda h: h.get("ledger_block") is not None)
    procs.wait_healthy(mid)
    agents = [procs.device(n, r, "--tracker", str(mid.url), "--follow", "commands") for n, r in roots.items()]
    procs.wait_passes(*agents)

    main = world.publish(server, MAIN, "1.1.0")
    at_kill = first_success(world, trk, main.header_hash)
    procs.kill(trk)
    procs.kill(mid)
    assert at_kill["state"] != "completed" and at_kill["succeeded"] < len(a_names), at_kill
    addon = world.publish(server, ADDON, "1.0.0", (Dependency(MAIN, Version(1, 1, 0)),))
    # the devices keep running without their modules (their passes fail as unreachable)
    wait_for(lambda: any(p.get("ok") is False for a in agents for p in procs.passes(a)[-3:]), 30,
             "a device pass failed while the modules were down", procs=procs)
    procs.restart(trk)
    procs.restart(mid)
    procs.wait_healthy(trk, check=lambda h: (h.get("ledger_block") or 0) >= int(world.w3.eth.block_number) - 1)
    procs.wait_healthy(mid)

    wait_fleet(world, roots, {n: UPDATED if n in a_names else KEPT for n in roots})
    settled(world, [roots[n] for n in a_names])

    rollouts = {r["header_hash"]: r for r in trk.signed("GET", "/v1/rollouts", ADMIN)}
    assert set(rollouts) == {main.header_hash, addon.header_hash}
    for hh in (main.header_hash, addon.header_hash):
        def completed(path: str = f"/v1/rollouts/{rollouts[hh]['id']}") -> dict[str, Any] | None:
            ro: dict[str, Any] = trk.signed("GET", path, ADMIN)
            return ro if ro["state"] == "completed" else None

        ro = wait_for(completed, 30, f"rollout of {hh} completed", procs=procs)
        assert (ro["succeeded"], ro["failed"]) == (3, 0), ro
        assert [w["share"] for w in ro["waves"]] == [0.34, 0.67, 1.0], ro  # the tracker config's waves
        states = {m["device_id"]: m["state"] for m in ro["members"]}
        assert {n: states[n] for n in a_names} == dict.fromkeys(a_names, "succeeded"), states
    # each device executed each command once and reported it; the tracker recorded each report once
    with sqlite3.connect(f"file:{world.tmp / 'tracker' / 'inventory.sqlite'}?mode=ro", uri=True) as db:
        reports = [(dev, json.loads(detail)["command_id"]) for dev, detail in
                   db.execute("SELECT device_id, detail FROM log WHERE kind = 'results'")]
    for n in a_names:
        ids = assert_commands_once(roots[n])
        mine = [cid for dev, cid in reports if dev == n]
        assert sorted(mine) == sorted(ids), (n, mine, ids)
        recorded = {m["command_id"] for hh in rollouts
                    for m in trk.signed("GET", f"/v1/rollouts/{rollouts[hh]['id']}", ADMIN)["members"]
                    if m["device_id"] == n}
        assert recorded <= set(ids), (n, recorded, ids)
    # no device state lost: every device in the inventory with its components, class-A ones with
    # their last result
    inventory = {d["device_id"]: d for d in trk.signed("GET", "/v1/devices", ADMIN)}
    assert set(inventory) == set(roots)
    for n in roots:
        running = {p: c["version"] for p, c in inventory[n]["components"].items()}
        assert running == ({MAIN: "1.1.0", ADDON: "1.0.0"} if n in a_names else {MAIN: "1.0.0", ADDON: "0.9.0"})
    for n in a_names:
        last = inventory[n]["last_result"]
        assert last is not None and last["ok"] is True, inventory[n]
    # no chain event lost: the restarted tracker's index has both releases
    with sqlite3.connect(f"file:{world.tmp / 'tracker' / 'ledger.sqlite'}?mode=ro", uri=True) as db:
        indexed = {row[0] for row in db.execute("SELECT header_hash FROM releases")}
    assert {main.header_hash.removeprefix("0x"), addon.header_hash.removeprefix("0x")} <= \
        {h.removeprefix("0x") for h in indexed}, indexed
    res = world.fwledger("tracker", "outdated", "--tracker", str(trk.url), "--tracker-key", trk.address, "--json")
    assert res.returncode == 0, res.stderr
    check_class_b_explained(json.loads(res.stdout), b_names, a_names)
    assert trk.starts == mid.starts == 2
