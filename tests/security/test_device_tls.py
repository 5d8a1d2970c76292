"""Devices on a real network: HTTPS to every tracker module and firmware server, the CA pinned at
provisioning, plain HTTP for loopback only (X.1368 C11.1 a.ii, C11.2 module rules a-b, D8.2.2).

Real processes on an anvil chain (``tests/integration/test_deployments.py``'s world): a firmware
server (``server run --tls-*``) and a tracker server module (``tracker run --tls-* --tls-client
optional``) serve HTTPS with certificates from a fleet CA (``fwledger fleet ca-init|issue``);
device agents (``device run``) pin that CA (``device init --tls-ca`` / ``device tls``).

- a device that pins the fleet CA updates over HTTPS, from the tracker and the firmware server;
- a device that pins another CA refuses the tracker at the handshake: it sends no status (the
  tracker never hears of it), downloads nothing and keeps running what it ran;
- a module that requires client certificates (``--tls-client required``) serves a device that
  was given one (``fleet issue --role device``) and refuses one that was not;
- nothing serves or speaks plain HTTP beyond loopback: ``server run`` and ``tracker run`` on a
  non-loopback address without TLS exit with one line, a device told ``http://`` to a
  non-loopback host refuses to start, and a tracker refuses a chain node reached in clear.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from entities import stack
from entities.firmware_consumer.provision import set_device_tls
from tests.integration import test_deployments as deployments
from tests.integration.procs import Proc, TLSClient, wait_for
from tests.integration.test_deployments import ADMIN, HW_A, KEPT, MAIN, REPO, UPDATED, World, set_waves, versions

anvil_rpc, world = deployments.anvil_rpc, deployments.world  # the deployment tests' fixtures: one test world


def issue(world: World, ca: Path, name: str, role: str) -> dict[str, Path]:
    out = world.tmp / "certs"
    res = world.fwledger("fleet", "issue", "--name", name, "--role", role, "--host", "127.0.0.1", "--out", str(out),
                         "--ca-dir", str(ca), "--json")
    assert res.returncode == 0, res.stderr
    return {"cert": out / f"{name}.crt", "key": out / f"{name}.key", "ca": ca / "ca.crt"}


def new_ca(world: World, name: str) -> Path:
    ca = world.tmp / name
    res = world.fwledger("fleet", "ca-init", "--dir", str(ca), "--json")
    assert res.returncode == 0, res.stderr
    return ca


def tls_args(files: dict[str, Path]) -> list[str]:
    return ["--tls-cert", str(files["cert"]), "--tls-key", str(files["key"]), "--tls-ca", str(files["ca"])]


def https_services(world: World, ca: Path, *, tls_client: str = "optional") -> tuple[Proc, Proc]:
    """The firmware server and the server module, both HTTPS with fleet certificates."""
    operator = issue(world, ca, "operator", "client")
    client = TLSClient(operator["ca"], operator["cert"], operator["key"])
    srv = world.procs.service("server", ["server", "run", "--host", "127.0.0.1", "--port", "{port}", "--data",
                                         str(world.tmp / "server"), "--poll-interval", "0.2",
                                         *tls_args(issue(world, ca, "fw-server", "firmware-server"))],
                              scheme="https", tls=client)
    data = world.tmp / "tracker"
    trk = world.procs.service("tracker", ["tracker", "run", "--role", "server", "--listen", "127.0.0.1:{port}",
                                          "--data", str(data), "--poll-interval", "0.2", "--admin-key",
                                          ADMIN.address, "--tls-client", tls_client,
                                          *tls_args(issue(world, ca, "tracker", "server"))],
                              scheme="https", address=stack._service_key(data / "tracker.key"), tls=client)
    world.procs.wait_healthy(srv, trk, check=lambda h: h.get("ledger_block") is not None)
    return srv, trk


def test_devices_pin_the_fleet_ca_and_refuse_any_other(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    set_waves(world, [1.0])
    ca, rogue = new_ca(world, "fleet-ca"), new_ca(world, "rogue-ca")
    srv, trk = https_services(world, ca)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca / "ca.crt"))  # the author uploads over HTTPS too
    good = world.provision("tls-good", HW_A, trackers=[trk.address])
    set_device_tls(good, ca=(ca / "ca.crt").read_bytes())
    bad = world.provision("tls-rogue", HW_A, trackers=[trk.address])
    set_device_tls(bad, ca=(rogue / "ca.crt").read_bytes())
    agents = [world.procs.device(n, r, "--tracker", str(trk.url)) for n, r in (("tls-good", good), ("tls-rogue", bad))]
    world.procs.wait_passes(agents[0])

    world.publish_both(srv)
    wait_for(lambda: versions(good) == UPDATED, deployments.UPDATE_WAIT, "the pinned device updated over HTTPS",
             procs=world.procs)
    assert versions(bad) == KEPT
    rogue_log = agents[1].log.read_text()
    assert "TLS refused" in rogue_log and "did not prove a certificate of the pinned CA" in rogue_log
    # it sent no status: the tracker never heard of it
    assert [d["device_id"] for d in trk.signed("GET", "/v1/devices", ADMIN)] == ["tls-good"]
    token = (world.tmp / "server" / "admin.token").read_text().strip()
    served = requests.get(f"{srv.url}/v1/downloads", headers={"Authorization": f"Bearer {token}"},
                          verify=str(ca / "ca.crt"), timeout=30)
    assert served.status_code == 200, served.text
    assert {d["device_id"] for d in served.json()} == {"tls-good"}


def test_a_module_requiring_client_certificates_serves_only_devices_given_one(world: World) -> None:
    set_waves(world, [1.0])
    ca = new_ca(world, "fleet-ca")
    _srv, trk = https_services(world, ca, tls_client="required")
    with_cert = world.provision("tls-cert", HW_A, trackers=[trk.address])
    device_cert = issue(world, ca, "tls-cert", "device")
    set_device_tls(with_cert, ca=(ca / "ca.crt").read_bytes(), cert=device_cert["cert"].read_bytes(),
                   key=device_cert["key"].read_bytes())
    without = world.provision("tls-nocert", HW_A, trackers=[trk.address])
    res = world.fwledger("device", "tls", "--dir", str(without), "--tls-ca", str(ca / "ca.crt"), "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["tls_cert"] is None, res.stderr
    ok = world.fwledger("device", "update", "--dir", str(with_cert), "--tracker", str(trk.url), "--json")
    assert ok.returncode == 0, ok.stderr
    refused = world.fwledger("device", "update", "--dir", str(without), "--tracker", str(trk.url), "--json")
    assert refused.returncode == 1 and "cannot reach the tracker" in refused.stderr, refused.stderr
    assert [d["device_id"] for d in trk.signed("GET", "/v1/devices", ADMIN)] == ["tls-cert"]


def test_nothing_serves_or_speaks_plain_http_beyond_loopback(world: World) -> None:
    env = stack._child_env(world.home, world.rpc)

    def fwledger(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "entities.cli", "--home", str(world.home), "--rpc", world.rpc,
                               *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)

    res = fwledger("server", "run", "--host", "0.0.0.0", "--port", "1", "--data", str(world.tmp / "s"))
    assert res.returncode == 1 and res.stderr.strip().count("\n") == 0
    assert "plain HTTP on loopback only" in res.stderr and "--tls-cert" in res.stderr
    res = fwledger("tracker", "run", "--listen", "0.0.0.0:1", "--data", str(world.tmp / "t"))
    assert res.returncode == 1 and "plain HTTP on loopback only" in res.stderr, res.stderr
    # a tracker attests what its node says: the node is inside its trust boundary, never in clear
    res = subprocess.run([sys.executable, "-m", "entities.cli", "--home", str(world.home), "--rpc",
                          "http://192.0.2.10:8545", "tracker", "run", "--data", str(world.tmp / "t2")], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 1 and "reached in clear over the network" in res.stderr, res.stderr
    root = world.provision("plain", HW_A, trackers=[ADMIN.address])
    res = fwledger("device", "update", "--dir", str(root), "--tracker", "http://192.0.2.10:8470")
    assert res.returncode != 0 and "plain HTTP is for loopback only" in res.stderr, res.stderr
    res = fwledger("device", "update", "--dir", str(root), "--tracker", "https://192.0.2.10:8470")
    assert res.returncode != 0 and "HTTPS needs the CA this device pins" in res.stderr, res.stderr
    assert versions(root) == KEPT and MAIN in versions(root)
