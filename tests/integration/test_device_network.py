"""A device updates over the network: X.1368 clause 7 P1-P5 end to end, on the embedded chain and on anvil.

The author builds, uploads and publishes (P1, the real ``publish_bundle``); the status trackers
index the ledger and plan (P2); a provisioned device (the trackers' keys and k in its anchors)
runs ``fwledger device update --tracker ...`` or the ``device run`` loop: heartbeat, plan,
evidence attested by k trackers, bundle header and payload from the firmware server (P3, P4),
verify, install, trial boot, report (P5). On the embedded chain the tracker and server apps run in
threads of this process (the chain cannot leave it); on anvil they are real ``fwledger tracker run``
and ``fwledger server run`` processes, stopped by PID. Every device is a real folder and every
party a real key over real HTTP on loopback; a cut connection is a real TCP relay that closes
its sockets mid-payload; a tampering server is the real server serving a stored object whose
bytes were changed on its disk. Nothing is mocked.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account
from eth_account.signers.local import LocalAccount

from entities.author.publish import publish_bundle
from entities.bundle import CIPHER_CHUNK, PLAIN_CHUNK, BundleHeader
from entities.cli import cli
from entities.firmware_consumer import read_status
from entities.firmware_consumer.agent import Agent, AgentConfig
from entities.firmware_consumer.provision import (
    ComponentBinding,
    anchors_from_deployment,
    load_provisioning,
    provision_device,
)
from entities.firmware_consumer.verify import TrustAnchors
from entities.firmware_server.app import create_app as create_server_app
from entities.firmware_server.config import ServerConfig
from entities.firmware_server.ledger import LedgerView
from entities.firmware_server.runner import ServerThread
from entities.protocol.http_auth import IDENTITY_PATH, sign_request, sign_response
from entities.service_identity import fetch_identity
from entities.status_tracker.app import TrackerThread, verify_response
from entities.status_tracker.app import create_app as create_tracker_app
from entities.status_tracker.config import TrackerConfig
from entities.status_tracker.daemon import Tracker
from ledger_node.compiler import registry_contract
from ledger_node.devnet import free_port
from ledger_node.registry import Registry, save_deployment
from tests.conftest import Chain
from tests.helpers import stop_process, wait_healthy
from tests.integration.procs import hang_up
from tests.security.world import boot_state, factory_image
from tests.world import LedgerWorld

REPO = Path(__file__).resolve().parents[2]
WAIT = 30.0
HW, OTHER_HW = "cls-a", "cls-b"
ADMIN = Account.from_key(b"\x51" * 32)


# ----------------------------------------------------------------------------- parties on loopback


@dataclass
class Service:
    """A running tracker or firmware server: a thread here (embedded chain) or a real process (anvil)."""

    url: str
    data: Path
    stop: Callable[[], None]
    proc: subprocess.Popen[bytes] | None = None
    address: str = ""
    log: Path | None = None  # a process's output

    def get(self, path: str, signer: LocalAccount | None = ADMIN) -> Any:
        """A signed GET to a tracker; its answer's signature checked."""
        resp = requests.get(self.url + path, headers=sign_request(signer, "GET", path, audience=self.address) if signer else {}, timeout=WAIT)
        assert resp.status_code == 200, resp.text
        assert verify_response(resp.headers, resp.status_code, path, resp.content, tracker=self.address)
        return resp.json()

    def health(self) -> dict[str, Any]:
        return requests.get(self.url + "/health", timeout=WAIT).json()  # type: ignore[no-any-return]

    def post(self, path: str, body: Any = None, signer: LocalAccount = ADMIN) -> Any:
        """A signed POST to a tracker (an administrator's, by default); its answer's signature checked."""
        data = json.dumps({} if body is None else body).encode()
        resp = requests.post(self.url + path, data=data, timeout=WAIT,
                             headers={**sign_request(signer, "POST", path, data, audience=self.address),
                                      "Content-Type": "application/json"})
        assert resp.status_code == 200, resp.text
        assert verify_response(resp.headers, resp.status_code, path, resp.content, tracker=self.address)
        return resp.json()

    def retry(self, header_hash: str) -> dict[str, Any]:
        """An administrator has the failed devices of ``header_hash``'s rollout tried again."""
        (row,) = [r for r in self.get("/v1/rollouts") if r["header_hash"] == header_hash]
        return self.post(f"/v1/rollouts/{row['id']}/retry")  # type: ignore[no-any-return]


def _spawn(chain: Chain, home: Path, log: Path, *args: str, env: dict[str, str] | None = None
           ) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "entities.cli", "--rpc", chain.rpc, "--home", str(home), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "FWLEDGER_KEY_FILE": "", **(env or {})}
    with open(log, "ab") as err:
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)


# ----------------------------------------------------------------------------- the world


@dataclass
class Release:
    path: Path
    header: BundleHeader
    image: bytes
    header_hash: bytes

    @property
    def hh(self) -> str:
        return "0x" + self.header_hash.hex()


@dataclass
class Net:
    """The shared ledger world (:class:`tests.world.LedgerWorld`: vendor acme, classes cls-a and
    cls-b with real X25519 keys), trackers and firmware servers on the chain's backend, and devices
    provisioned with the trackers' keys."""

    chain: Chain
    ledger: LedgerWorld
    tmp: Path
    home: Path
    started: list[Service] = field(default_factory=list)

    @property
    def registry(self) -> Registry:
        return self.ledger.registry

    @property
    def class_keys(self) -> dict[str, X25519PrivateKey]:
        """Each hardware class's X25519 private key (register a class with ``ledger.add_hardware``)."""
        return self.ledger.private_keys

    @property
    def vendor(self) -> LocalAccount:
        return self.ledger.vendor

    # -- parties ---------------------------------------------------------------------------------

    def tracker(self, n: int, *, port: int | None = None, wait: bool = True,
                waves: tuple[float, ...] = (1.0,), module_keys: tuple[str, ...] = (), poll_interval: float = 0.05,
                server_keys: tuple[str, ...] = (), confirmations: int = 0) -> Service:
        """Tracker ``n`` (its key is fixed by ``n``, so devices can be provisioned before it starts);
        ``waves``: its rollouts' waves, by default one (every device in the first: these tests are
        about the device's side; waves and halts hold a plan-following device back as they hold
        commands, tests/integration/test_rollout.py); ``module_keys``: the relays in front of it;
        ``server_keys``: the firmware servers whose T9.b triggers it takes; ``confirmations``: its
        full node's (it indexes up to head minus that many blocks)."""
        data = self.tmp / f"tracker-{n}"
        data.mkdir(exist_ok=True)
        (data / "tracker.key").write_text(tracker_key(n).key.hex())
        port = port or free_port()
        if self.chain.backend == "embedded":
            cfg = TrackerConfig(data_dir=data, poll_interval=poll_interval, admission="open",
                                admin_keys=(ADMIN.address,), module_keys=module_keys, server_keys=server_keys,
                                **({"waves": waves} if waves else {}))
            thread = TrackerThread(create_tracker_app(Tracker(cfg, self.chain.w3, self.registry.deployment,
                                                              confirmations=confirmations)), port=port).start()
            svc = Service(thread.url, data, thread.stop)
        else:
            proc = _spawn(self.chain, self.home, self.tmp / "tracker.log", "tracker", "run", "--role", "server",
                          "--listen", f"127.0.0.1:{port}", "--data", str(data), "--poll-interval", str(poll_interval),
                          "--admin-key", ADMIN.address, *(a for k in module_keys for a in ("--module-key", k)),
                          *(a for k in server_keys for a in ("--server-key", k)),
                          env={**({"FWLEDGER_TRACKER_WAVES": ",".join(map(str, waves))} if waves else {}),
                               "FWLEDGER_CONFIRMATIONS": str(confirmations)})
            svc = Service(f"http://127.0.0.1:{port}", data, lambda: stop_process(proc), proc, log=self.tmp / "tracker.log")
        svc.address = tracker_key(n).address
        self.started.append(svc)
        if wait:
            wait_healthy(svc.url, svc.proc, svc.log)
        return svc

    def server(self, *, wait: bool = True, notify: tuple[str, ...] = (), key: LocalAccount | None = None) -> Service:
        """A firmware server; ``notify``: the tracker URLs it sends T9.b triggers to; ``key``: its identity."""
        data = self.tmp / f"server-{len(self.started)}"
        if key is not None:
            data.mkdir(parents=True, exist_ok=True)
            (data / "server.key").write_text(key.key.hex())
        if self.chain.backend == "embedded":
            config = ServerConfig(data_dir=data, poll_interval=0.1, admission="open", tracker_notify_urls=notify)
            ledger = LedgerView(self.chain.w3, self.registry.deployment, config.ledger_index_path)
            thread = ServerThread(create_server_app(config, ledger)).start()
            svc = Service(thread.url, data, thread.stop)
        else:
            port = free_port()
            proc = _spawn(self.chain, self.home, self.tmp / "server.log", "server", "run", "--host", "127.0.0.1",
                          "--port", str(port), "--data", str(data), "--poll-interval", "0.1",
                          env={"FWLEDGER_SERVER_NOTIFY": ",".join(notify)} if notify else None)
            svc = Service(f"http://127.0.0.1:{port}", data, lambda: stop_process(proc), proc, log=self.tmp / "server.log")
        self.started.append(svc)
        if wait:
            wait_healthy(svc.url, svc.proc, svc.log)
        return svc

    def up(self, *services: Service) -> None:
        for s in services:
            wait_healthy(s.url, s.proc, s.log)

    def stop_all(self) -> None:
        for s in reversed(self.started):
            s.stop()

    # -- the author (P1) ------------------------------------------------------------------------

    def release(self, server: Service, product: str, version: str, *, hardware: tuple[str, ...] = (HW,),
                size: int = 200_000, link: str | None = None) -> Release:
        """Build a bundle, upload it to ``server`` and publish its record (``publish_bundle``)."""
        out, header, image = self.ledger.bundle(self.tmp, version, product=product, hardware=hardware,
                                                data=os.urandom(size), link=link or f"{server.url}/v1/images")
        res = publish_bundle(out, [server.url], self.ledger.as_vendor())
        self.ledger.heads[("acme", product)] = res.header_hash
        return Release(out, header, image, res.header_hash)

    def synced(self, server: Service | None, *trackers: Service, rel: Release | None = None) -> None:
        """Wait until every tracker indexed the chain's head and the server offers ``rel``."""
        block = int(self.chain.w3.eth.block_number)
        end = time.monotonic() + WAIT
        for t in trackers:
            while (t.health().get("ledger_block") or -1) < block:
                assert time.monotonic() < end, f"tracker {t.url} never reached block {block}"
                time.sleep(0.05)
        while server is not None and rel is not None:
            rows = requests.get(server.url + "/v1/images", timeout=WAIT).json()
            if any(r.get("header_hash") == rel.hh and r.get("state") == "published" for r in rows):
                break
            assert time.monotonic() < end, f"server never published {rel.hh}: {rows}"
            time.sleep(0.05)

    def mine(self, blocks: int) -> int:
        """Add ``blocks`` empty blocks to the chain; the new head's number."""
        for _ in range(blocks):
            self.chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        return int(self.chain.w3.eth.block_number)

    # -- devices --------------------------------------------------------------------------------

    def anchors(self, trackers: list[Service], quorum: int, relays: tuple[str, ...] = ()) -> TrustAnchors:
        return anchors_from_deployment(self.registry.deployment, registry_contract(),
                                       trackers=[t.address for t in trackers], quorum=quorum, max_header_age=3600,
                                       relays=relays)

    def device(self, name: str, trackers: list[Service], *, quorum: int = 1, hardware: str = HW,
               version: str = "1.0.0", relays: tuple[str, ...] = (), intra: bool = False) -> Path:
        """A device running acme/main-fw ``version`` (factory image in slot a), health check ``true``;
        ``relays``: intermediate modules' keys it accepts answers from; ``intra``: provisioned to run
        its own tracker (whose key then replaces ``trackers`` in its anchors)."""
        root = self.tmp / "devices" / name
        provision_device(root, device_id=name, hardware=hardware,
                         components={"main-fw": ComponentBinding("main-fw", "acme")},
                         anchors=self.anchors(trackers, quorum, relays),
                         class_private_key=self.class_keys[hardware].private_bytes_raw(),
                         factory={"main-fw": factory_image("main-fw", version)}, health_command=["true"],
                         intra_device=intra)
        return root


def tracker_key(n: int) -> LocalAccount:
    return Account.from_key(bytes([0x70 + n]) * 32)


@pytest.fixture
def net(chain: Chain, tmp_path: Path) -> Iterator[Net]:
    ledger = LedgerWorld.create(chain, hardware={HW: 1, OTHER_HW: 2}, vendors={"acme": chain.vendor})
    home = tmp_path / "home"
    save_deployment(home, ledger.registry.deployment)
    world = Net(chain, ledger, tmp_path, home)
    try:
        yield world
    finally:
        world.stop_all()


# ----------------------------------------------------------------------------- the device's side


def device(*args: str) -> Result:
    return CliRunner().invoke(cli, ["device", *args], catch_exceptions=False)


def update(root: Path, *trackers: Service, servers: tuple[str, ...] = (), urls: tuple[str, ...] = (),
           location: str | None = None) -> Result:
    args = ["update", "--dir", str(root), "--json"] + (["--location", location] if location else [])
    for url in (*[t.url for t in trackers], *urls):
        args += ["--tracker", url]
    for s in servers:
        args += ["--server", s]
    return device(*args)


def main_fw(root: Path) -> dict[str, Any]:
    return next(c for c in read_status(root)["components"] if c["name"] == "main-fw")


def running(root: Path) -> tuple[str, str]:
    """The confirmed slot and its version (a device just provisioned has not booted yet)."""
    st = main_fw(root)
    return st["confirmed"], st["slots"][st["confirmed"]]["version"]


def slots(root: Path) -> dict[str, Any]:
    """What a refused update must leave unchanged: the slot files and boot state, byte for byte
    (the agent's own memory of the servers it registered with aside)."""
    return {k: v for k, v in boot_state(root).items() if not k.startswith("agent/")}


# ============================================================================= P1-P5 over the network


def test_published_release_reaches_the_device_through_tracker_and_server(net: Net) -> None:
    """P1-P5, C11.1.a.i-ii, C11.2.a, C11.3.d/h, R10.b.i, R10.e.i: the author publishes 1.1.0 for cls-a; a
    cls-a device runs ``device update --tracker``: heartbeat, plan, evidence, registration (class,
    location), header and payload from the server the record's file_link names (a server given first
    but down is passed over), verify, install in slot b, trial boot, confirm, report; the tracker then
    lists it up to date. A cls-b device gets nothing (no download at all) and is listed outdated with
    the reason. A second pass installs nothing (R10.e.i). A revoked release is installed nowhere."""
    trk, srv = net.tracker(0, wait=False), net.server(wait=False)
    net.up(trk, srv)
    cam = net.device("cam-1", [trk])
    other = net.device("cam-2", [trk], hardware=OTHER_HW)
    rel = net.release(srv, "main-fw", "1.1.0")
    net.synced(srv, trk, rel=rel)

    res = update(cam, trk, location="lab-1", servers=("http://127.0.0.1:9",))  # down: then the file_link's server
    assert res.exit_code == 0, res.output + res.stderr
    out = json.loads(res.stdout)
    assert out["ok"] and out["plan"] and out["plan"][0]["header_hash"] == rel.hh and out["outdated"] is False, out
    (r,) = out["results"]
    assert (r["component"], r["version"], r["outcome"], r["code"]) == ("main-fw", "1.1.0", "confirmed", None)
    assert r["download"] == {"server": srv.url, "bytes": rel.header.record.data.file_size, "connections": 1,
                             "resumed_at": [], "skipped": 0}
    assert (cam / "components/main-fw/slot_b").read_bytes() == rel.image
    st = main_fw(cam)
    assert (st["version"], st["active"], st["counter"], st["header_hash"]) == ("1.1.0", "b", "1.1.0", rel.hh)
    assert out["trackers"] == [{"url": trk.url, "address": trk.address, "ok": True, "error": None}]
    # the pass's time until the image was installed (slot pending), then its trial boot, confirm and report
    assert 0 < out["installed_seconds"] < out["seconds"]

    lists = trk.get("/v1/outdated")
    assert "cam-1" in lists["up_to_date"]
    row = next(d for d in trk.get("/v1/devices") if d["device_id"] == "cam-1")
    assert row["components"]["main-fw"] == {"vendor": "acme", "version": "1.1.0", "slot": "b"}
    assert row["last_result"]["ok"] and row["last_result"]["version"] == "1.1.0"

    res = update(other, trk)
    assert res.exit_code == 0, res.output + res.stderr
    out = json.loads(res.stdout)
    assert out["plan"] == [] and out["results"] == [] and out["outdated"] is True
    assert any("does not support hardware class cls-b" in r for r in out["reasons"])
    assert running(other) == ("a", "1.0.0")
    (mine,) = [d for d in trk.get("/v1/outdated")["outdated"] if d["device_id"] == "cam-2"]
    assert mine["upgrades"] == [] and any("cls-b" in r for r in mine["reasons"])
    human = device("update", "--dir", str(other), "--tracker", trk.url)
    assert human.exit_code == 0 and "nothing to install; outdated" in human.stdout

    again = update(cam, trk)  # R10.e.i: nothing needed, nothing downloaded
    assert again.exit_code == 0 and json.loads(again.stdout)["results"] == []
    assert json.loads(again.stdout)["installed_seconds"] is None
    operator = {"Authorization": f"Bearer {(srv.data / 'admin.token').read_text().strip()}"}
    served = requests.get(srv.url + "/v1/downloads", timeout=WAIT, headers=operator).json()
    assert sorted((d["device_id"], d["what"]) for d in served if d["outcome"] == "served") == [
        ("cam-1", "header"), ("cam-1", "payload")]
    registered = requests.get(srv.url + "/v1/devices", timeout=WAIT, headers=operator).json()  # C11.3.d, C11.3.h
    assert [(d["device_id"], d["hardware"], d["location"]) for d in registered] == [("cam-1", HW, "lab-1")]
    # R10.d.ii, R10.b.ii: a revoked release is installed nowhere. The tracker does not plan it; asked for it
    # explicitly (an administrator's request), the device refuses it from the ledger proofs before any
    # download; the server refuses to serve it.
    bad = net.release(srv, "main-fw", "1.2.0")
    net.registry.revoke("acme", "main-fw", bad.header_hash, "bad build")
    net.synced(None, trk)
    res = update(cam, trk)
    assert res.exit_code == 0 and json.loads(res.stdout)["results"] == []
    with Agent(cam, AgentConfig(trackers=(trk.url,))) as agent:
        report = agent.check_and_update(release=bad.header_hash)
    (r2,) = report.results
    assert (r2.ok, r2.code, r2.version, r2.download) == (False, "revoked", "1.2.0", None)
    assert running(cam) == ("b", "1.1.0") and main_fw(cam)["last_result"]["code"] == "revoked"
    path = f"/v1/images/{bad.hh}/header"

    def ask() -> requests.Response:
        return requests.get(srv.url + path, headers=sign_request(load_provisioning(cam).identity, "GET", path,
                                                            audience=fetch_identity(srv.url)), timeout=WAIT)

    def undecided(resp: requests.Response) -> bool:  # served, or the server has not indexed the release yet
        return resp.status_code == 200 or (resp.status_code == 404 and resp.json()["error"]["code"] == "unknown_image")

    refused, end = ask(), time.monotonic() + WAIT
    while undecided(refused) and time.monotonic() < end:  # the server follows the chain on its own
        time.sleep(0.1)
        refused = ask()
    # withdrawn with its vendor (the server bars a vendor whose release is revoked): not served at all
    assert (refused.status_code, refused.json()["error"]["code"]) == (410, "revoked")
    row = next(d for d in trk.get("/v1/devices") if d["device_id"] == "cam-1")
    assert (row["last_result"]["ok"], row["last_result"]["code"]) == (False, "revoked")


def test_quorum_of_two_trackers_and_a_tracker_down(net: Net) -> None:
    """Appendix II (k of n full nodes), C11.2.b: a device provisioned with two trackers and k=2 takes
    the plan and evidence from one and the other's attestation of the same block, reports to both,
    and both list it up to date. Given one tracker only, or with one of them down, it refuses with
    ``quorum_not_met`` before any download, its slots and boot state unchanged; every tracker down:
    one line ``tracker_unreachable``, nothing written."""
    t0, t1, srv = net.tracker(0, wait=False), net.tracker(1, wait=False), net.server(wait=False)
    net.up(t0, t1, srv)
    cam = net.device("cam-k2", [t0, t1], quorum=2)
    rel = net.release(srv, "main-fw", "1.1.0", link="http://firmware.invalid/v1/images")
    net.synced(srv, t0, t1, rel=rel)

    before = slots(cam)
    res = update(cam, t0)
    assert res.exit_code == 1 and res.stderr.startswith("error: quorum_not_met: ") and res.stderr.count("\n") == 1
    assert slots(cam) == before and main_fw(cam)["last_result"]["code"] == "quorum_not_met"

    res = update(cam, t0, t1, servers=(srv.url,))
    assert res.exit_code == 0, res.output + res.stderr
    out = json.loads(res.stdout)
    assert [(r["version"], r["outcome"]) for r in out["results"]] == [("1.1.0", "confirmed")]
    assert [t["address"] for t in out["trackers"]] == [t0.address, t1.address]
    assert (cam / "components/main-fw/slot_b").read_bytes() == rel.image
    for t in (t0, t1):
        assert "cam-k2" in t.get("/v1/outdated")["up_to_date"]

    t1.stop()  # one of the two trackers goes down: no quorum, nothing installed
    nxt = net.release(srv, "main-fw", "1.2.0")
    net.synced(srv, t0, rel=nxt)
    before = slots(cam)
    res = update(cam, t0, t1)
    assert res.exit_code == 1 and res.stderr.startswith("error: quorum_not_met: ") and res.stderr.count("\n") == 1
    out = json.loads(res.stdout)["report"]
    assert out["trackers"][1]["error"]["code"] == "tracker_unreachable"
    assert slots(cam) == before and running(cam) == ("b", "1.1.0")

    t0.stop()
    before = boot_state(cam)
    res = device("update", "--dir", str(cam), "--tracker", t0.url, "--tracker", t1.url)
    assert res.exit_code == 1 and res.stderr.startswith("error: tracker_unreachable: cannot reach the tracker at ")
    assert res.stderr.count("\n") == 1 and boot_state(cam) == before


class CuttingRelay:
    """A TCP relay on loopback to ``port`` that cuts its first connection (both sockets closed) once
    ``cut_after`` bytes came back from the server; later connections pass untouched (``every``: cut
    every connection so)."""

    def __init__(self, port: int, cut_after: int, *, every: bool = False) -> None:
        self.target, self.cut_after, self.every = port, cut_after, every
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            limit = self.cut_after if self.connections == 0 or self.every else None
            self.connections += 1
            threading.Thread(target=self._pump, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, limit), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if limit is not None and sent + len(data) >= limit:
                    dst.sendall(data[: limit - sent])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            hang_up(src, dst)

    def close(self) -> None:
        self.listener.close()


class EndlessServer:
    """A hostile firmware server (http.server on loopback): registers anyone, serves the real bundle
    header, then the real payload followed by endless bytes, with no length announced."""

    def __init__(self, header: BundleHeader, payload: bytes) -> None:
        body = json.dumps(header.to_json()).encode()
        key = Account.create()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._send(201, b"{}")

            def do_GET(self) -> None:
                if self.path == IDENTITY_PATH:  # any key: it proves only who answers
                    me = json.dumps({"address": key.address}).encode()
                    self._send(200, me, sign_response(key, 200, self.path, me, dict(self.headers.items())))
                    return
                if self.path.endswith("/header"):
                    self._send(200, body)
                    return
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(payload)
                    for _ in range(1024):  # 64 MiB more unless the device hangs up first
                        self.wfile.write(b"\0" * 65536)

            def _send(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_cut_download_resumes_and_tampered_payload_is_refused(net: Net) -> None:
    """P4, R10.a.ii, R10.c.i-ii: a server sending endless bytes after the payload: the device reads the
    record's file size plus one probe byte, refuses ``trailing_bytes``. A line cut again and again: after
    5 resumes the device gives up (``download_interrupted``), its install journaled. The payload's
    connection cut once mid-way (a relay closes its sockets): the device reconnects with
    ``Range: bytes=N-`` and completes, reading exactly the record's file size, the slot resumed at the
    journal's checkpoint. Then the server serves bytes changed on its disk: the device
    refuses with ``chunk_auth_failed``, the running slot and its boot state stay as they were, and the
    code reaches the tracker."""
    trk, srv = net.tracker(0, wait=False), net.server(wait=False)
    net.up(trk, srv)
    cam = net.device("cam-cut", [trk])
    rel = net.release(srv, "main-fw", "1.1.0", size=3 << 20)
    net.synced(srv, trk, rel=rel)
    size = rel.header.record.data.file_size
    endless = EndlessServer(rel.header, rel.path.read_bytes()[rel.header.payload_offset:])
    try:
        res = update(cam, trk, servers=(endless.url,))
    finally:
        endless.close()
    assert res.exit_code == 1 and res.stderr.startswith("error: trailing_bytes: ") and res.stderr.count("\n") == 1
    (r,) = json.loads(res.stdout)["report"]["results"]
    assert (r["code"], r["download"]["bytes"], r["download"]["server"]) == ("trailing_bytes", size + 1, endless.url)
    assert running(cam) == ("a", "1.0.0") and main_fw(cam)["last_result"]["code"] == "trailing_bytes"
    # the failure (a command's) halted the release's rollout: an administrator has the device try again
    assert trk.retry(rel.hh)["state"] == "running"

    port = int(srv.url.rsplit(":", 1)[1])
    relay = CuttingRelay(port, cut_after=300_000, every=True)  # a line that keeps breaking: give up for now
    try:
        res = update(cam, trk, servers=(relay.url,))
    finally:
        relay.close()
    assert res.exit_code == 1 and res.stderr.startswith("error: download_interrupted: "), res.stderr
    (r,) = json.loads(res.stdout)["report"]["results"]
    assert r["download"]["connections"] == 6 and len(r["download"]["resumed_at"]) == 5 and relay.connections == 6
    st = main_fw(cam)
    assert running(cam) == ("a", "1.0.0") and st["last_result"]["code"] == "download_interrupted"
    # the install is journaled: what was written when the line broke is durable (no 8 MiB
    # checkpoint was reached: the cut made it), in whole chunks; the next pass resumes there
    durable = st["install"]["durable"]
    assert durable > 1 << 20 and durable % PLAIN_CHUNK == 0
    skipped = durable // PLAIN_CHUNK * CIPHER_CHUNK  # the sealed bytes the device already holds

    relay = CuttingRelay(port, cut_after=(1 << 20) + 12_345)
    try:
        res = update(cam, trk, servers=(relay.url,))
    finally:
        relay.close()
    assert res.exit_code == 0, res.output + res.stderr
    (r,) = json.loads(res.stdout)["results"]
    dl = r["download"]
    # nothing durable is downloaded again: the pass asks for the rest only (Range: bytes=skipped-)
    assert (r["outcome"], dl["server"], dl["skipped"], dl["connections"]) == ("confirmed", relay.url, skipped, 2)
    assert dl["bytes"] == size - skipped
    assert len(dl["resumed_at"]) == 1 and 0 < dl["resumed_at"][0] - skipped < (1 << 20) + 12_345
    assert relay.connections == 2 and r["report"]["resumed_from"] == durable
    assert (cam / "components/main-fw/slot_b").read_bytes() == rel.image
    operator = {"Authorization": f"Bearer {(srv.data / 'admin.token').read_text().strip()}"}

    def payload_ranges(hh: str) -> list[tuple[int | None, int | None]]:
        rows = requests.get(srv.url + "/v1/downloads", timeout=WAIT, headers=operator,
                            params={"device": "cam-cut", "image": hh}).json()
        return [(d["range_start"], d["range_end"]) for d in reversed(rows) if d["what"] == "payload"]

    assert payload_ranges(rel.hh)[-2:] == [(skipped, size), (dl["resumed_at"][0], size)]

    # a lie in the resumed range: the line to 1.2.0 breaks, then the server's stored ciphertext
    # changes past what the device holds; the resumed pass refuses it and 1.1.0 keeps running
    bad = net.release(srv, "main-fw", "1.2.0", size=3 << 20)
    net.synced(srv, trk, rel=bad)
    relay = CuttingRelay(port, cut_after=300_000, every=True)
    try:
        res = update(cam, trk, servers=(relay.url,))
    finally:
        relay.close()
    assert res.stderr.startswith("error: download_interrupted: "), res.stderr
    durable = main_fw(cam)["install"]["durable"]
    assert durable > 0
    obj = srv.data / "objects" / bad.header.record.data.file_hash.hex()
    os.chmod(obj, 0o644)
    with open(obj, "r+b") as fh:  # the server's stored ciphertext changes under it
        fh.seek(size - 100_000)
        byte = fh.read(1)
        fh.seek(size - 100_000)
        fh.write(bytes([byte[0] ^ 0x01]))
    active_before = (main_fw(cam)["slots"]["b"], (cam / "components/main-fw/slot_b").read_bytes())
    res = update(cam, trk)
    assert res.exit_code == 1 and res.stderr.startswith("error: chunk_auth_failed: ") and res.stderr.count("\n") == 1
    assert payload_ranges(bad.hh)[-1] == (durable // PLAIN_CHUNK * CIPHER_CHUNK, size)  # the resumed range
    st = main_fw(cam)
    assert (st["confirmed"], st["counter"], st["last_result"]["code"]) == ("b", "1.1.0", "chunk_auth_failed")
    assert (st["slots"]["b"], (cam / "components/main-fw/slot_b").read_bytes()) == active_before
    assert st["install"] is None and st["slots"]["a"]["status"] == "empty"  # the resumed install abandoned
    row = next(d for d in trk.get("/v1/devices") if d["device_id"] == "cam-cut")
    assert row["last_result"]["code"] == "chunk_auth_failed" and row["components"]["main-fw"]["version"] == "1.1.0"


def test_agent_loop_waits_for_its_tracker_then_updates(net: Net) -> None:
    """C11.1.a.iv, R10.c.i: ``fwledger device run`` (a real process) starts while its tracker is down:
    each pass fails in one line and the device keeps running; once the tracker is up, the next pass
    installs the planned release; SIGTERM ends the loop with a summary."""
    srv = net.server()
    port = free_port()
    future = Service(f"http://127.0.0.1:{port}", net.tmp / "tracker-0", lambda: None)
    future.address = tracker_key(0).address
    cam = net.device("cam-loop", [future])
    rel = net.release(srv, "main-fw", "1.1.0")
    argv = [sys.executable, "-m", "entities.cli", "device", "run", "--dir", str(cam), "--tracker", future.url,
            "--interval", "0.2", "--json"]
    err = net.tmp / "agent.err"
    with open(err, "wb") as fh:
        proc = subprocess.Popen(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                                stderr=fh)
    try:
        end = time.monotonic() + WAIT
        while "tracker_unreachable" not in err.read_text():
            assert proc.poll() is None and time.monotonic() < end, err.read_text()
            time.sleep(0.05)
        trk = net.tracker(0, port=port)
        net.synced(srv, trk, rel=rel)
        while running(cam) != ("b", "1.1.0"):
            assert proc.poll() is None and time.monotonic() < end, err.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err.read_text()
    summary = json.loads(out)
    assert summary["unreachable"] >= 1 and summary["failed"] == []
    assert [(i["component"], i["version"], i["outcome"]) for i in summary["installed"]] == [
        ("main-fw", "1.1.0", "confirmed")]
    lines = [json.loads(line) for line in err.read_text().splitlines() if line.startswith("{\"pass\"")]
    assert lines[0]["code"] == "tracker_unreachable" and any(line.get("results") for line in lines)
    assert "cam-loop" in trk.get("/v1/outdated")["up_to_date"]
