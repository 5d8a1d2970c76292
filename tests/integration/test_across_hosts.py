"""Devices on a real network across hosts (D8.2.3 hierarchical; docs/THREATS.md, "Network"):
network namespaces joined by veth links, every fwledger service a real process in its namespace.

    host (the test: operator and author) -- 10.231.0.0/24 -- core: anvil, tracker server module
    host                                 -- 10.231.1.0/24 -- edge: intermediate, firmware server
    edge                                 -- 10.231.2.0/24 -- core  (the intermediate's upstream; the server's chain)
    devices                              -- 10.231.3.0/24 -- edge  (the devices' only link)

No namespace forwards, so the devices reach the edge and nothing else; the firmware server they
download from sits at the edge (untrusted storage, next to its devices). Every fwledger service
listens beyond loopback, so over TLS: certificates from a fleet CA made here; the intermediate
and the server module speak mutual TLS; the devices pin the fleet CA. The tracker's node is on
its own loopback.

Needs root and iproute2 (CI runs as root): skipped with the reason elsewhere. The namespaces,
and with them the links and every process in them, are removed afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account

from entities import stack
from entities.author.publish import publish_bundle
from entities.bundle import build_bundle
from entities.firmware_consumer.provision import (
    ComponentBinding,
    anchors_from_deployment,
    provision_device,
    set_device_tls,
)
from entities.fleet_ca import init_ca, issue_certificate
from entities.protocol.http_auth import sign_request
from ledger_node.compiler import registry_contract
from ledger_node.devnet import find_anvil
from ledger_node.errors import FwledgerError
from ledger_node.providers import connect, dev_accounts
from ledger_node.record import ZERO_HASH, Version
from ledger_node.registry import Registry, deploy, save_deployment
from tests.conftest import require_anvil
from tests.integration.test_deployments import versions
from tests.security.world import factory_image

pytestmark = pytest.mark.devnet

REPO = Path(__file__).resolve().parents[2]
HW, MAIN = "cls-a", "main-fw"
ADMIN = Account.from_key(b"\x5b" * 32)
WAIT = 180.0
CHAIN_PORT, TRACKER_PORT, EDGE_PORT, SERVER_PORT = 8545, 8470, 8471, 8443
#: (namespace a, address, namespace b, address); "" is the test's own namespace
LINKS = [("", "10.231.0.1", "core", "10.231.0.2"), ("", "10.231.1.1", "edge", "10.231.1.2"),
         ("edge", "10.231.2.1", "core", "10.231.2.2"), ("dev", "10.231.3.1", "edge", "10.231.3.2")]
CORE_FROM_HOST, EDGE_FROM_HOST, CORE_FROM_EDGE, EDGE_FROM_DEVICES = "10.231.0.2", "10.231.1.2", "10.231.2.2", "10.231.3.2"


def ip(*args: str) -> None:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip()}")


@dataclass
class Net:
    tag: str
    tmp: Path
    procs: list[tuple[str, subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def ns(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def spawn(self, ns: str, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.tmp / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", self.ns(ns), *argv], cwd=REPO, env=env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append((name, proc, log))
        return proc

    def report(self) -> str:
        out = []
        for name, proc, log in self.procs:
            tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
            out.append(f"--- {name} (exit {proc.poll()})\n" + "\n".join(tail))
        return "\n".join(out)

    def stop_all(self) -> None:
        for _name, proc, _log in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _name, proc, _log in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (CI runs as root)")
    require_anvil()
    n = Net(f"fw{os.getpid() % 100000}", tmp_path)
    made: list[str] = []
    try:
        for name in ("core", "edge", "dev"):
            ip("netns", "add", n.ns(name))
            made.append(n.ns(name))
            ip("-n", n.ns(name), "link", "set", "lo", "up")
        for i, (a, addr_a, b, addr_b) in enumerate(LINKS):
            left, right = f"{n.tag}l{i}", f"{n.tag}r{i}"
            ip("link", "add", left, "type", "veth", "peer", "name", right)
            for dev, ns, addr in ((left, a, addr_a), (right, b, addr_b)):
                if ns:
                    ip("link", "set", dev, "netns", n.ns(ns))
                target = ["-n", n.ns(ns)] if ns else []
                ip(*target, "addr", "add", f"{addr}/24", "dev", dev)
                ip(*target, "link", "set", dev, "up")
        yield n
    except RuntimeError as exc:
        pytest.skip(f"cannot build network namespaces here: {exc}")
    finally:
        n.stop_all()
        print(n.report())
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        for i in range(len(LINKS)):
            subprocess.run(["ip", "link", "del", f"{n.tag}l{i}"], capture_output=True, check=False)


def wait_for(what: str, check: Any, net: Net, timeout: float = WAIT) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if check():
                return
        except (requests.RequestException, OSError, ValueError, FwledgerError):
            pass
        for name, proc, _log in net.procs:
            assert proc.poll() is None, f"{name} exited ({proc.returncode}) while waiting for {what}\n{net.report()}"
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n{net.report()}")


@dataclass
class Fleet:
    net: Net
    reg: Registry
    vendor: Any
    class_key: X25519PrivateKey
    ca: Path
    devices: dict[str, Path]
    tracker_url: str
    tracker_key: str
    edge_key: str
    operator: dict[str, Any]

    def publish(self, version: str, size: int = 80_000) -> None:
        """The author, on the host: upload to the edge server over HTTPS, then the record on chain."""
        tmp = self.net.tmp
        (tmp / "fw.bin").write_bytes(os.urandom(size))
        build_bundle(tmp / "fw.bin", tmp / "fw.fwb", vendor_name="acme", product=MAIN,
                     version=Version.parse(version), link=f"https://{EDGE_FROM_DEVICES}:{SERVER_PORT}/v1/images",
                     hardware=[HW], class_keys={HW: self.class_key.public_key().public_bytes_raw()},
                     dependencies=(), prev_hash=ZERO_HASH, account=self.vendor,
                     chain_id=self.reg.deployment.chain_id, registry=self.reg.address)
        with requests.Session() as session:
            session.verify = str(self.ca)
            publish_bundle(tmp / "fw.fwb", [f"https://{EDGE_FROM_HOST}:{SERVER_PORT}"],
                           self.reg.with_account(self.vendor), session=session)

    def signed_get(self, path: str) -> Any:
        """An administrator's read of the server module (HTTPS with the operator's certificate)."""
        signed = sign_request(ADMIN, "GET", path, audience=self.tracker_key)
        resp = requests.get(self.tracker_url + path, headers=signed, timeout=10, **self.operator)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def running(self, version: str) -> bool:
        return all(versions(r)[MAIN] == version for r in self.devices.values())


def build_fleet(net: Net) -> Fleet:
    """The chain and the server module in the core, the intermediate and a firmware server at the
    edge, two devices (main-fw 1.0.0) in their namespace; every service healthy."""
    tmp = net.tmp
    # the chain, in the core, reached by the host over its link and by the tracker on loopback
    net.spawn("core", "anvil", [str(find_anvil()), "--host", "0.0.0.0", "--port", str(CHAIN_PORT),
                                "--block-time", "1", "--silent"], dict(os.environ))
    rpc_host = f"http://{CORE_FROM_HOST}:{CHAIN_PORT}"
    wait_for("the chain", lambda: connect(rpc_host).eth.block_number >= 0, net, 60)
    w3 = connect(rpc_host)
    admin, vendor = dev_accounts(w3, 2)
    reg = Registry(w3, deploy(w3, admin), admin)
    reg.add_vendor(vendor.address, "acme")
    class_key = X25519PrivateKey.generate()
    reg.add_hardware(HW, 1, class_key.public_key().public_bytes_raw())
    reg.set_policy(HW, "acme", MAIN, allowed=True)
    home = tmp / "home"
    save_deployment(home, reg.deployment)
    (home / "config.toml").write_text('[tracker]\nwaves = [1.0]\n')

    ca_dir, certs = tmp / "fleet-ca", tmp / "certs"
    ca = init_ca(ca_dir).cert
    issued = {name: issue_certificate(ca_dir, name, role, hosts, certs) for name, role, hosts in (
        ("tracker", "server", (CORE_FROM_EDGE, CORE_FROM_HOST)), ("edge", "intermediate", (EDGE_FROM_DEVICES,
                                                                                           EDGE_FROM_HOST)),
        ("fw", "firmware-server", (EDGE_FROM_DEVICES, EDGE_FROM_HOST)), ("operator", "client", ("127.0.0.1",)))}

    def tls(name: str) -> list[str]:
        return ["--tls-cert", str(issued[name].cert), "--tls-key", str(issued[name].key), "--tls-ca", str(ca)]

    def fwledger_env(rpc: str) -> dict[str, str]:
        env = stack._child_env(home, rpc)
        env.update({k: os.environ[k] for k in ("FWLEDGER_TRACKER_ADMISSION", "FWLEDGER_SERVER_ADMISSION")
                    if k in os.environ})
        return env

    def fwledger(ns: str, name: str, rpc: str, *args: str) -> None:
        net.spawn(ns, name, stack._fwledger_argv(home, rpc, *args), fwledger_env(rpc))

    tracker_data, edge_data = tmp / "tracker", tmp / "edge"
    tracker_key, edge_key = stack._service_key(tracker_data / "tracker.key"), stack._service_key(edge_data / "tracker.key")
    fwledger("core", "tracker", f"http://127.0.0.1:{CHAIN_PORT}", "tracker", "run", "--role", "server",
             "--listen", f"0.0.0.0:{TRACKER_PORT}", "--data", str(tracker_data), "--poll-interval", "0.5",
             "--admin-key", ADMIN.address, "--module-key", edge_key, "--tls-client", "required", *tls("tracker"))
    fwledger("edge", "edge", f"http://{CORE_FROM_EDGE}:{CHAIN_PORT}", "tracker", "run", "--role", "intermediate",
             "--listen", f"0.0.0.0:{EDGE_PORT}", "--data", str(edge_data), "--identity",
             str(edge_data / "tracker.key"), "--upstream", f"https://{CORE_FROM_EDGE}:{TRACKER_PORT}",
             "--upstream-key", tracker_key, "--public-url", f"https://{EDGE_FROM_DEVICES}:{EDGE_PORT}",
             "--poll-interval", "2", "--admin-key", ADMIN.address, "--tls-client", "optional", *tls("edge"))
    anchors = anchors_from_deployment(reg.deployment, registry_contract(), trackers=[tracker_key], quorum=1,
                                      max_header_age=600, relays=[edge_key])
    (tmp / "anchors.json").write_text(json.dumps(anchors.to_json()))
    # the server's node is in another namespace: it proves its answers at headers the tracker attests
    fwledger("edge", "fw-server", f"http://{CORE_FROM_EDGE}:{CHAIN_PORT}", "server", "run", "--host", "0.0.0.0",
             "--port", str(SERVER_PORT), "--data", str(tmp / "server"), "--poll-interval", "0.5", *tls("fw"),
             "--anchors", str(tmp / "anchors.json"), "--tracker", f"https://{CORE_FROM_EDGE}:{TRACKER_PORT}")
    operator = {"verify": str(ca), "cert": (str(issued["operator"].cert), str(issued["operator"].key))}
    tracker_url = f"https://{CORE_FROM_HOST}:{TRACKER_PORT}"
    for url in (tracker_url, f"https://{EDGE_FROM_HOST}:{EDGE_PORT}", f"https://{EDGE_FROM_HOST}:{SERVER_PORT}"):
        wait_for(f"{url} healthy", lambda u=url: requests.get(u + "/health", timeout=5, **operator).ok, net)

    devices = {}
    for name in ("cam-1", "cam-2"):
        root = tmp / "devices" / name
        provision_device(root, device_id=name, hardware=HW, components={MAIN: ComponentBinding(MAIN, "acme")},
                         anchors=anchors, class_private_key=class_key.private_bytes_raw(),
                         factory={MAIN: factory_image(MAIN, "1.0.0")}, health_command=["true"])
        set_device_tls(root, ca=ca.read_bytes())
        devices[name] = root
        net.spawn("dev", name, stack._fwledger_argv(home, "embedded", "device", "run", "--dir", str(root),
                                                    "--tracker", f"https://{EDGE_FROM_DEVICES}:{EDGE_PORT}",
                                                    "--interval", "1", "--json"), fwledger_env("embedded"))

    return Fleet(net, reg, vendor, class_key, ca, devices, tracker_url, tracker_key, edge_key, operator)


def test_devices_behind_an_intermediate_update_over_tls_across_namespaces(net: Net) -> None:
    """D8.2.3 over a real network: the chain and the server module in one namespace, the
    intermediate and an edge firmware server in a second, two devices in a third that can reach
    only the edge. A release published from the host reaches both devices over HTTPS, through
    the intermediate (mutual TLS upstream), and the server module's inventory lists them with the
    route through the intermediate. A device cannot reach the core at all."""
    fleet = build_fleet(net)
    fleet.publish("1.1.0")
    wait_for("both devices run 1.1.0", lambda: fleet.running("1.1.0"), net)
    # the server module saw them through the intermediate
    routes = fleet.signed_get("/v1/modules")["routes"]
    assert {d: r["via"] for d, r in routes.items()} == {"cam-1": [fleet.edge_key], "cam-2": [fleet.edge_key]}
    # and the devices' namespace reaches the edge only
    probe = subprocess.run(["ip", "netns", "exec", net.ns("dev"), sys.executable, "-c",
                            f"import socket; socket.create_connection(('{CORE_FROM_EDGE}', {TRACKER_PORT}), "
                            "timeout=3)"],
                           capture_output=True, text=True, check=False)
    assert probe.returncode != 0 and ("unreachable" in probe.stderr.lower() or "timed out" in probe.stderr)


def test_a_link_cut_mid_rollout_for_30_s_ends_with_every_device_updated_once(net: Net) -> None:
    """The devices' link to the edge goes down (``ip link set ... down``) as the release is
    published and comes back 30 s later: the devices, which found their module unreachable
    meanwhile, then update, each exactly once: the rollout completes with two successes, no
    failure, and the firmware server served each device its image."""
    fleet = build_fleet(net)
    wait_for("the devices reported", lambda: len(fleet.signed_get("/v1/devices")) == 2, net)
    link = f"{net.tag}l3"  # devices -- edge, the devices' end
    ip("-n", net.ns("dev"), "link", "set", link, "down")
    cut_at = time.monotonic()
    fleet.publish("1.1.0", size=2_000_000)
    time.sleep(max(0.0, 30.0 - (time.monotonic() - cut_at)))
    assert fleet.running("1.0.0")  # nothing got through the cut
    ip("-n", net.ns("dev"), "link", "set", link, "up")
    wait_for("both devices run 1.1.0 after the link came back", lambda: fleet.running("1.1.0"), net)
    wait_for("the rollout completed", lambda: [r["state"] for r in fleet.signed_get("/v1/rollouts")] ==
             ["completed"], net)
    (rollout,) = fleet.signed_get("/v1/rollouts")
    assert (rollout["succeeded"], rollout["failed"]) == (2, 0)
