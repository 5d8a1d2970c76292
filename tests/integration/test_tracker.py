"""The status tracker's server module (X.1368 D8.2.2, C11.2, clause 9), over HTTP on loopback.

Every scenario runs twice (conftest's ``chain``): on the embedded chain, with the tracker app in
this process (uvicorn in a thread, sharing the chain), and on anvil, with the real
``fwledger tracker run`` process, stopped by its PID. Devices, authors, servers and
administrators are real secp256k1 keys signing real requests; what a device would verify
(attestations, evidence) is verified with the light node's own functions, layout from the
compiled contract. Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from click.testing import CliRunner, Result
from eth_account import Account
from eth_account.signers.local import LocalAccount
from hypothesis import HealthCheck, settings

from entities.cli import cli
from entities.protocol.http_auth import sign_request
from entities.status_tracker.app import TrackerThread, create_app, verify_response
from entities.status_tracker.config import TrackerConfig
from entities.status_tracker.daemon import Tracker
from entities.status_tracker.evidence import Evidence, verify_evidence
from ledger_node.attestation import Attestation, AttestationError, trusted_header
from ledger_node.compiler import CompiledContract, registry_contract
from ledger_node.devnet import free_port
from ledger_node.errors import FwledgerError
from ledger_node.fullnode import FullNode, Index
from ledger_node.lightnode import verify_release
from ledger_node.proofs import parse_proof_json
from ledger_node.record import ReleaseRecord, Version
from ledger_node.registry import save_deployment
from tests.conftest import Chain
from tests.world import LedgerWorld

try:  # the firmware consumer's verifier (issue 4) reads the same evidence JSON
    from entities.firmware_consumer import verify as consumer_verify
except ImportError:  # pragma: no cover - built in parallel; the shape check then rests on our own parser
    consumer_verify = None

REPO = Path(__file__).resolve().parents[2]
WAIT = 30.0
MAX_AGE = 3600.0


@pytest.fixture(scope="module")
def compiled() -> CompiledContract:
    return registry_contract()


def key(n: int) -> LocalAccount:
    """Deterministic keys for devices and parties that need no funds."""
    return Account.from_key(bytes([n]) * 32)


ADMIN, SERVER = key(0x51), key(0x52)


# ----------------------------------------------------------------------------- the ledger


World = LedgerWorld  # the shared world (tests/world.py)


@pytest.fixture
def world(chain: Chain) -> World:
    """Vendor acme, hardware classes cam-r1, cam-r2 and the add-on board therm-b1."""
    return LedgerWorld.create(chain, vendors={"acme": chain.vendor})


# ----------------------------------------------------------------------------- the tracker under test


@dataclass
class Running:
    """A running tracker: a thread in this process (embedded chain) or a real process (anvil)."""

    url: str
    data: Path
    stop: Callable[[], None]
    kill: Callable[[], None]
    proc: subprocess.Popen[bytes] | None = None
    address: str = ""
    log: Path | None = None

    def up(self) -> Running:
        """Wait until it answers; learn its address."""
        self.address = _wait_up(self.url, self.proc, self.log)
        return self

    def get(self, path: str, signer: LocalAccount | None = ADMIN) -> requests.Response:
        headers = sign_request(signer, "GET", path, audience=self.address) if signer is not None else {}
        return requests.get(self.url + path, headers=headers, timeout=WAIT)

    def post(self, path: str, body: Any, signer: LocalAccount, *, sign_body: bytes | None = None,
             headers: dict[str, str] | None = None) -> requests.Response:
        data = json.dumps(body).encode()
        hdrs = {**sign_request(signer, "POST", path, data if sign_body is None else sign_body, audience=self.address),
                "Content-Type": "application/json", **(headers or {})}
        return requests.post(self.url + path, data=data, headers=hdrs, timeout=WAIT)

    def ok(self, resp: requests.Response) -> Any:
        assert resp.status_code == 200, resp.text
        # every response is signed by the tracker's key, over the request it answers
        path = resp.request.path_url
        assert verify_response(resp.headers, resp.status_code, path, resp.content, tracker=self.address) == self.address
        return resp.json()

    def health(self) -> dict[str, Any]:
        return requests.get(self.url + "/health", timeout=WAIT).json()  # type: ignore[no-any-return]

    def wait_block(self, block: int) -> None:
        end = time.monotonic() + WAIT
        while (self.health().get("ledger_block") or -1) < block:
            assert time.monotonic() < end, f"tracker never reached block {block}: {self.health()}"
            time.sleep(0.05)

    def wait(self, pred: Callable[[], bool], what: str) -> None:
        end = time.monotonic() + WAIT
        while not pred():
            assert time.monotonic() < end, f"never: {what}"
            time.sleep(0.05)

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        con = sqlite3.connect(f"file:{self.data / 'inventory.sqlite'}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()


class Operator:
    """The administrator's CLI against a running tracker (its key in a file, its own home with the
    admission copy); shared by the tracker's operator tests."""

    def __init__(self, tmp: Path, trk: Running) -> None:
        self.keyfile = tmp / "admin.key"
        self.keyfile.write_text(ADMIN.key.hex())
        self.home = tmp / "operator-home"
        self.trk = trk

    def run(self, *args: str, tracker: bool = True) -> Result:
        tail = ["--tracker", self.trk.url, "--tracker-key", self.trk.address] if tracker else []
        return CliRunner().invoke(cli, ["--home", str(self.home), "--key-file", str(self.keyfile), *args, *tail],
                                  env={"COLUMNS": "300"})  # wide tables: no cell wraps

    def ok(self, *args: str, tracker: bool = True) -> Any:
        res = self.run(*args, "--json", tracker=tracker)
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)

    def refused(self, *args: str) -> str:
        """A refusal: exit 1, one line on stderr, ``{"ok": false}`` on stdout."""
        res = self.run(*args, "--json")
        assert res.exit_code == 1 and res.stderr.count("\n") == 1 and not json.loads(res.stdout)["ok"], res.output
        return res.stderr


def _wait_up(url: str, proc: subprocess.Popen[bytes] | None, log: Path | None) -> str:
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"tracker exited {proc.returncode}: {log.read_text() if log else ''}")
        try:
            resp = requests.get(url + "/health", timeout=2)
            if resp.status_code == 200:
                return str(resp.json()["address"])
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise AssertionError("tracker never answered /health")


def start_process(world: World, home: Path, data: Path, log: Path, *, wait: bool = True) -> Running:
    """``fwledger tracker run --role server --listen ...`` as a real process (``wait=False``: call
    :meth:`Running.up` before use, so that several processes start in parallel)."""
    port = free_port()
    argv = [sys.executable, "-m", "entities.cli", "--rpc", world.chain.rpc, "--home", str(home), "tracker", "run",
            "--role", "server", "--listen", f"127.0.0.1:{port}", "--data", str(data), "--poll-interval", "0.05",
            "--admin-key", ADMIN.address, "--server-key", SERVER.address, "--json"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "FWLEDGER_KEY_FILE": ""}
    with open(log, "ab") as err, open(data.parent / f"{data.name}.out", "ab") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=err)
    url = f"http://127.0.0.1:{port}"

    def stop() -> None:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def kill() -> None:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    trk = Running(url, data, stop, kill, proc, log=log)
    return trk.up() if wait else trk


def start_thread(world: World, data: Path) -> Running:
    """The tracker app in this process (uvicorn in a thread), sharing the embedded chain."""
    cfg = TrackerConfig(data_dir=data, poll_interval=0.05, admission="open", admin_keys=(ADMIN.address,),
                        server_keys=(SERVER.address,))
    tracker = Tracker(cfg, world.chain.w3, world.registry.deployment)
    thread = TrackerThread(create_app(tracker)).start()

    def stop() -> None:
        thread.stop()  # the app's lifespan closes the tracker (index and inventory)

    return Running(thread.url, data, stop, stop).up()


@pytest.fixture
def make_tracker(world: World, tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Start trackers on ``world``'s backend; every one is stopped at the end of the test."""
    started: list[Running] = []
    home = tmp_path / "tracker-home"
    save_deployment(home, world.registry.deployment)

    def make(data: Path | None = None, *, wait: bool = True) -> Running:
        data = data or tmp_path / f"tracker-{len(started)}"
        data.mkdir(exist_ok=True)
        if world.chain.backend == "embedded":
            trk = start_thread(world, data)
        else:
            trk = start_process(world, home, data, tmp_path / "tracker.log", wait=wait)
        started.append(trk)
        return trk

    yield make
    for trk in started:
        trk.stop()


@pytest.fixture
def tracker(make_tracker: Callable[..., Running]) -> Running:
    return make_tracker()


# ----------------------------------------------------------------------------- devices


def heartbeat(trk: Running, device: LocalAccount, device_id: str, components: dict[str, str], *,
              hardware: str = "cam-r1", addons: dict[str, list[str]] | None = None, ready: bool = True,
              last_result: dict[str, Any] | None = None) -> requests.Response:
    body = {"device_id": device_id, "hardware": hardware, "addons": addons or {}, "location": "lab-1",
            "components": {p: {"vendor": "acme", "version": v, "slot": "A"} for p, v in components.items()},
            "ready": ready, "last_result": last_result}
    return trk.post("/v1/devices/heartbeat", body, device)


def code(resp: requests.Response) -> str:
    return str(resp.json()["error"]["code"])


def consumer_check(world: World, trackers: list[str], quorum: int, ev_json: dict[str, Any], hw: str) -> Any:
    """The firmware consumer's own checks 1-8 (attested header, proofs, standing among successors,
    policy, vendor) over the tracker's evidence JSON; None when that module is not there."""
    if consumer_verify is None:
        return None
    from ledger_node.lightnode import RegistryLayout

    anchors = consumer_verify.TrustAnchors(
        chain_id=int(world.chain.w3.eth.chain_id), registry=world.registry.address,
        layout=RegistryLayout.from_compiled(registry_contract()), trackers=tuple(trackers), quorum=quorum,
        max_header_age=MAX_AGE)
    return consumer_verify.check_release(anchors, hw, consumer_verify.Evidence.from_json(ev_json), now=time.time())


def trusted(world: World, header_rlp: str, atts: list[dict[str, Any]], trackers: list[str], quorum: int) -> Any:
    return trusted_header(bytes.fromhex(header_rlp[2:]), [Attestation.from_json(a) for a in atts],
                          chain_id=world.chain.w3.eth.chain_id, registry=world.registry.address, trackers=trackers,
                          quorum=quorum, now=time.time(), max_age=MAX_AGE)


# ============================================================================= attestations and evidence


def test_attestation_and_evidence_verify_on_a_device(world: World, tracker: Running,
                                                     compiled: CompiledContract) -> None:
    """D8.2.2 / Appendix II Figure II.2 / R10.a.ii / R10.a.iii / C11.1.a.v: the tracker (full node)
    attests its newest indexed block; a device trusts the header with quorum 1 of its one
    provisioned tracker, then proves from the evidence that the release exists, is the head, its
    vendor is active and the policy of its hardware class allows it."""
    world.registry.set_policy("cam-r1", "acme", "main-fw", allowed=True, min_version=Version(1, 0, 0))
    rec = world.publish("main-fw", "1.0.0", hardware=("cam-r1", "cam-r2"))
    tracker.wait_block(world.block())

    att = tracker.ok(tracker.get("/v1/attestation", None))
    header = trusted(world, att["header_rlp"], [att["attestation"]], [tracker.address], 1)
    assert header.number == world.block()
    assert att["attestation"]["block_hash"] == "0x" + bytes(world.chain.w3.eth.get_block(header.number)["hash"]).hex()
    with pytest.raises(AttestationError) as exc:  # another tracker's key does not count
        trusted(world, att["header_rlp"], [att["attestation"]], [key(0x99).address], 1)
    assert exc.value.code == "quorum_not_met"

    hh = "0x" + rec.header_hash.hex()
    ev_json = tracker.ok(tracker.get(f"/v1/evidence/{hh}?hardware=cam-r1", None))
    assert set(ev_json) == {"format", "header_rlp", "attestations", "proof", "record", "successors"}
    assert ev_json["record"] == rec.to_json() and ev_json["successors"] == []
    consumer_check(world, [tracker.address], 1, ev_json, "cam-r1")
    ev = Evidence.from_json(ev_json)
    dep = world.registry.deployment
    proven = verify_evidence(ev, chain_id=world.chain.w3.eth.chain_id, registry=dep.address,
                             code_hash=compiled.runtime_code_hash, compiled=compiled, trackers=[tracker.address],
                             quorum=1, now=time.time(), max_age=MAX_AGE, hw_id="cam-r1")
    assert (proven.entry.exists, proven.entry.head, proven.entry.revoked) == (True, True, False)
    assert proven.entry.version == Version(1, 0, 0) and proven.vendor_active
    assert proven.vendor_address == world.chain.vendor.address
    assert proven.policy is not None and proven.policy.permits(Version(1, 0, 0))
    # the same with the light node's function directly, from the raw JSON
    direct = verify_release(header_rlp=bytes.fromhex(ev_json["header_rlp"][2:]), block_hash=header.hash,
                            registry_address=dep.address, code_hash=compiled.runtime_code_hash, compiled=compiled,
                            record=ReleaseRecord.from_json(ev_json["record"]),
                            proof=parse_proof_json(ev_json["proof"]), hw_id="cam-r1")
    assert direct.entry == proven.entry

    # after a newer release (for cam-r1 only), evidence at the newest block proves 1.0.0 is no
    # longer the head, and carries the successor so a device can tell whether it is for it
    newer = world.publish("main-fw", "1.1.0")
    tracker.wait_block(world.block())
    later_json = tracker.ok(tracker.get(f"/v1/evidence/{hh}?hardware=cam-r2", None))
    assert later_json["successors"] == [newer.to_json()]
    later = Evidence.from_json(later_json)
    again = verify_evidence(later, chain_id=world.chain.w3.eth.chain_id, registry=dep.address,
                            code_hash=compiled.runtime_code_hash, compiled=compiled, trackers=[tracker.address],
                            quorum=1, now=time.time(), max_age=MAX_AGE, hw_id="cam-r2")
    assert again.entry.exists and not again.entry.head and again.policy is not None
    if consumer_verify is not None:  # R10.d.i on the device: 1.0.0 is still the newest for cam-r2 only
        assert consumer_check(world, [tracker.address], 1, later_json, "cam-r2").skipped == (
            ("1.1.0", "not for this hardware class"),)
        on_r1 = tracker.ok(tracker.get(f"/v1/evidence/{hh}?hardware=cam-r1", None))
        with pytest.raises(FwledgerError) as refused:
            consumer_check(world, [tracker.address], 1, on_r1, "cam-r1")
        assert getattr(refused.value, "code", None) == "not_newest"

    # a record the tracker does not know, a block before the release, a block not indexed yet
    assert code(tracker.get("/v1/evidence/0x" + "ab" * 32, None)) == "unknown_release"
    assert code(tracker.get(f"/v1/evidence/{hh}?block=1", None)) == "release_not_at_block"
    ahead = tracker.get(f"/v1/attestation/{world.block() + 1000}", None)
    assert ahead.status_code == 409 and code(ahead) == "block_not_synced"


def test_evidence_is_proven_once_per_release_class_and_block(world: World, tmp_path: Path) -> None:
    """A fleet asking for the same release at the same head costs the tracker one storage proof:
    evidence is kept per (release, class, block number, block hash); another class or another
    block is never answered from it (a flagged release is refused before the cache is read)."""
    world.publish("main-fw", "1.0.0", hardware=("cam-r1", "cam-r2"))
    rec = world.publish("main-fw", "1.1.0", hardware=("cam-r1", "cam-r2"))
    hh = "0x" + rec.header_hash.hex()
    tracker = Tracker(TrackerConfig(data_dir=tmp_path / "t", admission="open"), world.chain.w3,
                      world.registry.deployment)
    proofs: list[tuple[int, str | None]] = []
    real_proof = tracker.chain.registry_proof

    def counting(record: ReleaseRecord, number: int, hw_id: str | None = None, successors: Any = (),
                 **kw: Any) -> Any:
        proofs.append((number, hw_id))
        return real_proof(record, number, hw_id, successors, **kw)

    tracker.chain.registry_proof = counting  # type: ignore[method-assign]
    try:
        tracker.follow_ledger()
        first = tracker.evidence(hh, "cam-r1")
        assert tracker.evidence(hh, "cam-r1") == first and len(proofs) == 1
        assert tracker.evidence(hh, "cam-r2") != first and len(proofs) == 2  # another class: its own proof
        world.publish("other-fw", "1.0.0")  # a new block
        tracker.follow_ledger()
        later = tracker.evidence(hh, "cam-r1")
        assert later["header_rlp"] != first["header_rlp"] and len(proofs) == 3
        assert proofs[0][0] < proofs[2][0]
        assert tracker.evidence(hh, "cam-r1", proofs[0][0]) == first and len(proofs) == 3  # the older block: kept
    finally:
        tracker.close()


def test_two_trackers_attest_the_same_block_for_a_quorum_of_two(world: World, make_tracker: Callable[..., Running],
                                                                compiled: CompiledContract) -> None:
    """D8.2.2 / Appendix II (k of n full nodes): a device provisioned with two trackers and k=2
    takes evidence from one and the other's attestation of the same block; one alone is not
    enough, and a third key does not count."""
    a, b = make_tracker(wait=False), make_tracker(wait=False)
    a.up(), b.up()
    assert a.address != b.address
    rec = world.publish("main-fw", "1.0.0")
    n = world.block()
    a.wait_block(n)
    b.wait_block(n)
    hh = "0x" + rec.header_hash.hex()
    ev_json = a.ok(a.get(f"/v1/evidence/{hh}?hardware=cam-r1&block={n}", None))
    from_b = b.ok(b.get(f"/v1/attestation/{n}", None))
    assert from_b["header_rlp"] == ev_json["header_rlp"]
    both = [a.address, b.address]

    with pytest.raises(AttestationError) as exc:
        trusted(world, ev_json["header_rlp"], ev_json["attestations"], both, 2)
    assert exc.value.code == "quorum_not_met"
    ev = Evidence.from_json(ev_json).with_attestations([Attestation.from_json(from_b["attestation"])])
    dep = world.registry.deployment
    proven = verify_evidence(ev, chain_id=world.chain.w3.eth.chain_id, registry=dep.address,
                             code_hash=compiled.runtime_code_hash, compiled=compiled, trackers=both, quorum=2,
                             now=time.time(), max_age=MAX_AGE, hw_id="cam-r1")
    assert proven.entry.exists and proven.block.number == n
    consumer_check(world, both, 2, ev.to_json(), "cam-r1")
    # the same attestation twice is one tracker; an unprovisioned tracker's is ignored
    with pytest.raises(AttestationError):
        trusted(world, ev_json["header_rlp"], ev_json["attestations"] * 2, both, 2)
    stranger = key(0x77)
    with pytest.raises(AttestationError):
        trusted(world, ev_json["header_rlp"], ev_json["attestations"] + [from_b["attestation"]],
                [a.address, stranger.address], 2)
    # any indexed block can be attested on request (a device's maximum age rejects old ones)
    old = b.ok(b.get("/v1/attestation/1", None))
    assert old["attestation"]["block_number"] == 1


# ============================================================================= inventory and outdated lists


def test_heartbeats_build_the_inventory_and_the_outdated_lists_with_reasons(world: World, tracker: Running,
                                                                           tmp_path: Path) -> None:
    """C11.2.a / C11.2.b / R10.b.i / R10.b.ii / R10.e.i / T9.e: devices report their status; the
    tracker lists them up to date or outdated by id, with the reason when no update fits
    (another hardware class, an unmet dependency), records "update needed" only where a plan
    exists, lists devices on a revoked release, and logs versions it has never seen (T9.e)."""
    old_main = world.publish("main-fw", "1.0.0", hardware=("cam-r1", "cam-r2"))
    new_main = world.publish("main-fw", "1.1.0", hardware=("cam-r1",))
    world.publish("sensor-fw", "1.0.0", hardware=("therm-b1",))
    world.publish("sensor-fw", "2.0.0", hardware=("therm-b1",), deps=("main-fw>=2.0.0",))
    tracker.wait_block(world.block())

    devs = {n: key(0x10 + i) for i, n in enumerate(("cam-a", "cam-b", "cam-c", "cam-d", "cam-e"))}
    first = tracker.ok(heartbeat(tracker, devs["cam-a"], "cam-a", {"main-fw": "1.0.0"}))
    assert first["registered"] and first["outdated"] and first["update_needed"]
    assert tracker.ok(heartbeat(tracker, devs["cam-b"], "cam-b", {"main-fw": "1.0.0"}, hardware="cam-r2"))["outdated"]
    tracker.ok(heartbeat(tracker, devs["cam-c"], "cam-c", {"main-fw": "1.1.0", "sensor-fw": "1.0.0"},
                         addons={"therm-b1": ["sensor-fw"]}, ready=False,
                         last_result={"ok": False, "code": "hash_mismatch", "component": "sensor-fw"}))
    assert not tracker.ok(heartbeat(tracker, devs["cam-d"], "cam-d", {"main-fw": "1.1.0"}))["outdated"]
    unknown = tracker.ok(heartbeat(tracker, devs["cam-e"], "cam-e", {"main-fw": "9.9.9"}))
    assert unknown["unknown_versions"] == ["main-fw"]
    again = tracker.ok(heartbeat(tracker, devs["cam-a"], "cam-a", {"main-fw": "1.0.0"}))
    assert not again["registered"]

    lists = tracker.ok(tracker.get("/v1/outdated"))
    assert lists["devices"] == 5 and lists["up_to_date"] == ["cam-d", "cam-e"]
    outdated = {d["device_id"]: d for d in lists["outdated"]}
    assert set(outdated) == {"cam-a", "cam-b", "cam-c"}
    assert [u["to_version"] for u in outdated["cam-a"]["upgrades"]] == ["1.1.0"]
    assert outdated["cam-b"]["upgrades"] == []
    assert any("does not support hardware class cam-r2" in r for r in outdated["cam-b"]["reasons"])
    assert outdated["cam-c"]["upgrades"] == []
    assert any("requires main-fw>=2.0.0" in r for r in outdated["cam-c"]["reasons"])
    assert [d["device_id"] for d in lists["unknown_versions"]] == ["cam-e"]
    assert lists["revoked_or_vulnerable"] == []

    # the inventory: readiness, last result, components with slots; update needed only for cam-a
    rows = {d["device_id"]: d for d in tracker.ok(tracker.get("/v1/devices"))}
    assert rows["cam-a"]["heartbeats"] == 2 and rows["cam-a"]["readiness"] == "ready"
    assert rows["cam-c"]["readiness"] == "busy" and rows["cam-c"]["last_result"]["code"] == "hash_mismatch"
    assert rows["cam-c"]["components"]["sensor-fw"] == {"vendor": "acme", "version": "1.0.0", "slot": "A"}
    assert rows["cam-c"]["addons"] == {"therm-b1": ["sensor-fw"]}
    assert [(n["product"], n["to_version"]) for n in rows["cam-a"]["update_needed"]] == [("main-fw", "1.1.0")]
    assert all(not rows[d]["update_needed"] for d in ("cam-b", "cam-c", "cam-d", "cam-e"))
    needed = tracker.ok(tracker.get("/v1/devices?status=update-needed"))
    assert [d["device_id"] for d in needed] == ["cam-a"]
    detail = tracker.ok(tracker.get("/v1/devices/cam-e"))
    assert any(e["kind"] == "T9.e" and e["detail"]["unknown_versions"] == [{"product": "main-fw", "version": "9.9.9"}]
               for e in detail["log"])
    plan = tracker.ok(tracker.get("/v1/devices/cam-c/plan"))
    blocked = {b["product"]: b for b in plan["plan"]["blocked"]}
    assert blocked["sensor-fw"]["verdicts"][0]["reasons"][0]["kind"] in ("dependency-unmet", "dependency-missing")
    assert tracker.ok(tracker.get("/v1/devices/cam-a/plan"))["plan"]["upgrades"][0]["header_hash"] == \
        "0x" + new_main.header_hash.hex()

    # R10.b.ii: revoking 1.0.0 puts the devices running it on the at-risk list at the next poll
    world.registry.revoke("acme", "main-fw", old_main.header_hash, "CVE-2026-0001")
    tracker.wait_block(world.block())
    tracker.wait(lambda: len(tracker.ok(tracker.get("/v1/outdated"))["revoked_or_vulnerable"]) == 2,
                 "revoked release listed")
    risky = tracker.ok(tracker.get("/v1/outdated"))["revoked_or_vulnerable"]
    assert [d["device_id"] for d in risky] == ["cam-a", "cam-b"]
    assert "CVE-2026-0001" in risky[0]["findings"][0]["detail"]

    # the CLI queries the running tracker (signed with the administrator's key, response checked)
    keyfile = tmp_path / "admin.key"
    keyfile.write_text(ADMIN.key.hex())
    base = ["--home", str(tmp_path / "cli-home"), "--key-file", str(keyfile), "tracker"]
    runner = CliRunner()
    res = runner.invoke(cli, [*base, "devices", "--tracker", tracker.url, "--tracker-key", tracker.address, "--json"])
    assert res.exit_code == 0, res.output
    assert [d["device_id"] for d in json.loads(res.stdout)] == ["cam-a", "cam-b", "cam-c", "cam-d", "cam-e"]
    res = runner.invoke(cli, [*base, "outdated", "--tracker", tracker.url, "--json"])
    assert res.exit_code == 0 and {d["device_id"] for d in json.loads(res.stdout)["outdated"]} == {
        "cam-a", "cam-b", "cam-c"}
    res = runner.invoke(cli, [*base, "plan", "cam-c", "--tracker", tracker.url, "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["device_id"] == "cam-c"
    res = runner.invoke(cli, [*base, "plan", "nobody", "--tracker", tracker.url, "--json"])
    assert res.exit_code == 1 and "unknown_device" in res.stderr and res.stderr.count("\n") == 1
    res = runner.invoke(cli, [*base, "devices", "--tracker", tracker.url, "--tracker-key", key(0x99).address])
    assert res.exit_code == 1 and "not trustworthy" in res.stderr and key(0x99).address in res.stderr
    stranger = tmp_path / "stranger.key"
    stranger.write_text(key(0x98).key.hex())
    res = runner.invoke(cli, [*base[:2], "--key-file", str(stranger), "tracker", "devices", "--tracker", tracker.url])
    assert res.exit_code == 1 and "forbidden" in res.stderr


# ============================================================================= signed requests


def test_forged_replayed_and_expired_requests_are_refused(world: World, tracker: Running) -> None:
    """C11.2 module rules a-b (verify the authenticity of each other's signals): a heartbeat whose
    body differs from what was signed, a replayed one, an expired one, an unsigned one, one for a
    device id bound to another key: each refused (401/403) and none changes the inventory. A
    device may read its own plan, not another's; only administrators list the fleet."""
    world.publish("main-fw", "1.0.0")
    tracker.wait_block(world.block())
    dev, other = key(0x21), key(0x22)
    path = "/v1/devices/heartbeat"
    body = {"device_id": "cam-1", "hardware": "cam-r1", "components": {"main-fw": {"vendor": "acme",
                                                                                  "version": "1.0.0"}}, "ready": True}
    data = json.dumps(body).encode()
    signed = {**sign_request(dev, "POST", path, data, audience=tracker.address), "Content-Type": "application/json"}
    assert requests.post(tracker.url + path, data=data, headers=signed, timeout=WAIT).status_code == 200

    replay = requests.post(tracker.url + path, data=data, headers=signed, timeout=WAIT)
    assert replay.status_code == 401 and code(replay) == "replayed_request"
    forged = tracker.post(path, {**body, "hardware": "cam-r2"}, dev, sign_body=data)
    assert forged.status_code == 401 and code(forged) == "bad_signature"
    stale = {**sign_request(dev, "POST", path, data, now=time.time() - 3600, audience=tracker.address),
             "Content-Type": "application/json"}
    expired = requests.post(tracker.url + path, data=data, headers=stale, timeout=WAIT)
    assert expired.status_code == 401 and code(expired) == "stale_request"
    unsigned = requests.post(tracker.url + path, json=body, timeout=WAIT)
    assert unsigned.status_code == 401 and code(unsigned) == "unsigned"
    wrong_path = {**sign_request(dev, "POST", "/v1/triggers", data, audience=tracker.address),
                  "Content-Type": "application/json"}
    assert code(requests.post(tracker.url + path, data=data, headers=wrong_path, timeout=WAIT)) == "bad_signature"
    hijack = heartbeat(tracker, other, "cam-1", {"main-fw": "0.1.0"})
    assert hijack.status_code == 403 and code(hijack) == "device_key_mismatch"
    assert tracker.rows("SELECT hardware, heartbeats, components FROM devices") == [
        ("cam-r1", 1, '{"main-fw":{"slot":null,"vendor":"acme","version":"1.0.0"}}')]

    # reads: the device its own record, administrators everything, nobody else
    assert tracker.ok(tracker.get("/v1/devices/cam-1/plan", dev))["device_id"] == "cam-1"
    assert code(tracker.get("/v1/devices/cam-1/plan", other)) == "forbidden"
    assert code(tracker.get("/v1/devices", dev)) == "forbidden"
    assert code(tracker.get("/v1/devices/nobody", dev)) == "forbidden"  # no probing for ids
    assert code(tracker.get("/v1/devices/nobody")) == "unknown_device"
    assert tracker.get("/v1/outdated", None).status_code == 401

    # a response cannot be replayed to another request or altered
    resp = tracker.get("/v1/devices/cam-1", dev)
    nonce = resp.request.headers["X-Fwledger-Nonce"]
    assert verify_response(resp.headers, 200, resp.request.path_url, resp.content, request_nonce=nonce,
                           tracker=tracker.address)
    with pytest.raises(FwledgerError):
        verify_response(resp.headers, 200, resp.request.path_url, resp.content.replace(b"cam-r1", b"cam-r2"))
    with pytest.raises(FwledgerError):
        verify_response(resp.headers, 200, resp.request.path_url, resp.content, request_nonce="0" * 32)


# ============================================================================= triggers (clause 9)


def test_triggers_are_checked_against_the_ledger_and_logged(world: World, tracker: Running) -> None:
    """Clause 9 (T9.a author, T9.b firmware server, T9.c administrator): a trigger naming a release
    not on the ledger, the wrong version, or signed by a party that may not send it is refused
    and logged; a valid one makes the tracker re-assess the fleet and record the devices that
    need the release (P2: commands to devices come with the next slice)."""
    world.publish("main-fw", "1.0.0")
    tracker.wait_block(world.block())
    tracker.ok(heartbeat(tracker, key(0x31), "cam-1", {"main-fw": "1.0.0"}))
    tracker.ok(heartbeat(tracker, key(0x32), "cam-2", {"main-fw": "1.0.0"}, hardware="cam-r2"))
    new = world.publish("main-fw", "1.1.0")
    hh = "0x" + new.header_hash.hex()
    trig = {"source": "author", "header_hash": hh, "link": new.data.file_link, "version": "1.1.0"}

    # an author trigger may arrive before the tracker polled: it syncs once before judging
    ok = tracker.ok(tracker.post("/v1/triggers", trig, world.chain.vendor))
    assert ok["accepted"] and ok["clause"] == "T9.a" and ok["devices"] == ["cam-1"] and ok["link_on_ledger"]
    cause = tracker.rows("SELECT cause FROM needs WHERE device_id = 'cam-1'")
    assert cause[0][0] in ("T9.a#1", "T9.d", "heartbeat")  # the poll may have seen it first
    assert tracker.ok(tracker.post("/v1/triggers", {**trig, "source": "server"}, SERVER))["clause"] == "T9.b"
    mirror = tracker.ok(tracker.post("/v1/triggers", {**trig, "source": "admin", "link": "http://127.0.0.1:9/m.bin"},
                                     ADMIN))
    assert mirror["devices"] == ["cam-1"] and not mirror["link_on_ledger"]

    refusals = [
        (tracker.post("/v1/triggers", {**trig, "source": "admin", "header_hash": "0x" + "cd" * 32}, ADMIN),
         422, "not_on_ledger"),
        (tracker.post("/v1/triggers", {**trig, "source": "admin", "version": "1.2.0"}, ADMIN), 422, "version_mismatch"),
        (tracker.post("/v1/triggers", {**trig, "source": "admin"}, SERVER), 403, "unknown_party"),
        (tracker.post("/v1/triggers", {**trig, "source": "server"}, ADMIN), 403, "unknown_party"),
        (tracker.post("/v1/triggers", trig, world.chain.stranger), 403, "unknown_party"),
    ]
    for resp, status, what in refusals:
        assert (resp.status_code, code(resp)) == (status, what), resp.text
    world.registry.revoke("acme", "main-fw", new.header_hash, "bad build")
    revoked = tracker.post("/v1/triggers", {**trig, "source": "admin"}, ADMIN)
    assert (revoked.status_code, code(revoked)) == (409, "release_revoked")

    log = tracker.ok(tracker.get("/v1/triggers"))
    assert [(t["clause"], t["accepted"], t["code"]) for t in reversed(log)] == [
        ("T9.a", True, None), ("T9.b", True, None), ("T9.c", True, None), ("T9.c", False, "not_on_ledger"),
        ("T9.c", False, "version_mismatch"), ("T9.c", False, "unknown_party"), ("T9.b", False, "unknown_party"),
        ("T9.a", False, "unknown_party"), ("T9.c", False, "release_revoked")]
    assert log[-1]["devices"] == 1 and log[5]["header_hash"] == "0x" + "cd" * 32
    # refused triggers changed nothing: cam-2 (another hardware class) never needed the release
    assert tracker.rows("SELECT device_id FROM needs") in ([], [("cam-1",)])


# ============================================================================= bad input


def test_bad_input_gets_a_4xx_json_error_never_a_500(world: World, tracker: Running) -> None:
    """C11.2 module rule b: every malformed request is answered with a 4xx and a JSON error code."""
    tracker.wait_block(world.block())
    dev = key(0x41)
    good = {"device_id": "cam-1", "hardware": "cam-r1", "components": {"m": {"vendor": "acme", "version": "1.0.0"}},
            "ready": True}
    bad_bodies: list[Any] = [
        {**good, "device_id": "a/b"}, {**good, "device_id": ""}, {**good, "hardware": "x" * 65},
        {**good, "components": {"m": {"vendor": "acme", "version": "1.0"}}},
        {**good, "components": {"m": {"vendor": "acme", "version": "99999.0.0"}}},
        {**good, "components": {"m": {"vendor": "acme", "version": 1}}},
        {**good, "addons": {"therm-b1": ["not-installed"]}}, {**good, "ready": "yes"}, {**good, "extra": 1},
        {**good, "last_result": {"ok": False, "code": "bad code!"}}, [], "text", None, 12,
        {**good, "components": {f"p{i}": {"vendor": "acme", "version": "1.0.0"} for i in range(65)}},
    ]
    seen = []
    for body in bad_bodies:
        resp = tracker.post("/v1/devices/heartbeat", body, dev)
        seen.append((resp.status_code, code(resp)))
    assert all(s == 422 for s, _ in seen), seen
    raw = [
        requests.post(tracker.url + "/v1/devices/heartbeat", data=b"{", headers={"Content-Type": "application/json"},
                      timeout=WAIT),
        requests.post(tracker.url + "/v1/triggers", data=b"x" * 70_000, timeout=WAIT),
        requests.get(tracker.url + "/v1/evidence/0x1234", timeout=WAIT),
        requests.get(tracker.url + "/v1/evidence/" + "0x" + "ab" * 32 + "?hardware=" + "x" * 65, timeout=WAIT),
        requests.get(tracker.url + "/v1/evidence/" + "0x" + "ab" * 32 + "?block=-1", timeout=WAIT),
        requests.get(tracker.url + "/v1/attestation/-5", timeout=WAIT),
        requests.get(tracker.url + "/v1/attestation/" + "9" * 30, timeout=WAIT),
        requests.get(tracker.url + "/v1/attestation/abc", timeout=WAIT),
        requests.get(tracker.url + "/v1/devices?status=bogus", headers=sign_request(ADMIN, "GET",
                                                                                  "/v1/devices?status=bogus",
                                                                                  audience=tracker.address),
                     timeout=WAIT),
        requests.get(tracker.url + "/v1/nothing", timeout=WAIT),
        requests.delete(tracker.url + "/v1/attestation", timeout=WAIT),
        requests.post(tracker.url + "/v1/triggers", json={"source": "admin"}, timeout=WAIT),
        requests.post(tracker.url + "/v1/triggers", json={"source": "x", "header_hash": "0x" + "00" * 32,
                                                          "link": "ftp://x", "version": "1.0.0"}, timeout=WAIT),
        requests.get(tracker.url + "/v1/triggers?limit=0", timeout=WAIT),
        requests.post(tracker.url + "/v1/devices/heartbeat", json=good,
                      headers={"X-Fwledger-Address": "0x12", "X-Fwledger-Time": "x", "X-Fwledger-Nonce": "n",
                               "X-Fwledger-Signature": "s"}, timeout=WAIT),
    ]
    statuses = [(r.request.method, r.request.path_url[:40], r.status_code, code(r)) for r in raw]
    assert all(400 <= s < 500 for _m, _p, s, _c in statuses), statuses
    assert [c for *_x, c in statuses[:3]] == ["malformed_json", "too_large", "invalid_request"]
    assert statuses[9][3] == "not_found" and statuses[10][3] == "method_not_allowed"
    assert tracker.rows("SELECT COUNT(*) FROM devices") == [(0,)]


# ============================================================================= restart


def test_restart_loses_no_device_state_and_no_chain_event(world: World, make_tracker: Callable[..., Running],
                                                          tmp_path: Path) -> None:
    """C11.2.b / C11.2 module rule c / issue 5 "restarting any module loses no device state and no
    chain event": the tracker is killed (SIGKILL on anvil), the ledger moves meanwhile (a new
    release, a revocation), and the restarted tracker on the same data folder still knows every
    device, refuses a request replayed from before, and has every registry event, as a fresh full
    node syncing from scratch has them."""
    data = tmp_path / "tracker-data"
    first = make_tracker(data)
    r0 = world.publish("main-fw", "1.0.0")
    first.wait_block(world.block())
    dev = key(0x61)
    body = {"device_id": "cam-1", "hardware": "cam-r1", "location": "lab-1",
            "components": {"main-fw": {"vendor": "acme", "version": "1.0.0", "slot": "B"}}, "ready": True,
            "last_result": {"ok": True}}
    data_bytes = json.dumps(body).encode()
    old_headers = {**sign_request(dev, "POST", "/v1/devices/heartbeat", data_bytes, audience=first.address),
                   "Content-Type": "application/json"}
    assert requests.post(first.url + "/v1/devices/heartbeat", data=data_bytes, headers=old_headers,
                         timeout=WAIT).status_code == 200
    first.ok(heartbeat(first, key(0x62), "cam-2", {"main-fw": "1.0.0"}, hardware="cam-r2"))
    before = {d["device_id"]: d for d in first.ok(first.get("/v1/devices"))}
    address = first.address
    first.kill()

    r1 = world.publish("main-fw", "1.1.0")
    world.registry.revoke("acme", "main-fw", r0.header_hash, "recalled")
    second = make_tracker(data)
    assert second.address == address  # the same identity key
    second.wait_block(world.block())
    second.wait(lambda: bool(second.ok(second.get("/v1/devices/cam-1"))["update_needed"]), "re-assessed after restart")

    after = {d["device_id"]: d for d in second.ok(second.get("/v1/devices"))}
    for dev_id in ("cam-1", "cam-2"):
        for k in ("address", "hardware", "location", "components", "first_seen", "last_seen", "heartbeats",
                  "last_result"):
            assert after[dev_id][k] == before[dev_id][k], (dev_id, k)
    assert [n["header_hash"] for n in after["cam-1"]["update_needed"]] == ["0x" + r1.header_hash.hex()]
    assert after["cam-1"]["assessment"]["at_risk"]  # the revocation arrived while it was down
    replay = requests.post(second.url + "/v1/devices/heartbeat", data=data_bytes, headers=old_headers, timeout=WAIT)
    assert code(replay) == "replayed_request"

    second.stop()
    fresh = Index(tmp_path / "fresh.sqlite")
    kept = Index(data / "ledger.sqlite")
    try:
        FullNode(world.chain.w3, world.registry.deployment, fresh).sync_once()
        cursor = kept.cursor()
        assert cursor is not None
        assert [r for r in kept.dump_canonical() if r[0] != "meta"] == \
            [r for r in fresh.dump_canonical() if r[0] != "meta" and (r[0] != "events" or r[1] <= cursor.block)]
    finally:
        fresh.close()
        kept.close()


# ============================================================================= fuzzing


class _SignEverything(requests.auth.AuthBase):
    """Signs every fuzzed request (the administrator's key; a device key for heartbeats), so that
    generated inputs reach the handlers' logic instead of stopping at authentication."""

    def __init__(self, audience: str) -> None:
        self.audience = audience

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        body = r.body if isinstance(r.body, bytes) else (r.body or "").encode() if isinstance(r.body, str) else b""
        signer = key(0x71) if r.path_url.startswith("/v1/devices/heartbeat") else ADMIN
        r.headers.update(sign_request(signer, str(r.method), r.path_url, body, audience=self.audience))
        return r


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, requests.Session]]:
    """A tracker on its own embedded chain with a release and a registered device."""
    from ledger_node.providers import connect, dev_accounts

    w3 = connect("embedded")
    chain = Chain("embedded", w3, dev_accounts(w3, 4), "embedded")
    w = LedgerWorld.create(chain, hardware={"cam-r1": 1}, vendors={"acme": chain.vendor})
    w.publish("main-fw", "1.0.0")
    trk = start_thread(w, tmp_path_factory.mktemp("fuzz"))
    try:
        trk.wait_block(w.block())
        trk.ok(heartbeat(trk, key(0x71), "fuzz-dev", {"main-fw": "1.0.0"}))
        session = requests.Session()
        session.auth = _SignEverything(trk.address)
        yield trk.url, session
    finally:
        trk.stop()


@pytest.fixture(scope="module")
def api_schema(fuzz_target: tuple[str, requests.Session]) -> Any:
    return schemathesis.openapi.from_url(fuzz_target[0] + "/openapi.json")


fuzz_schema = schemathesis.pytest.from_fixture("api_schema")


@fuzz_schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_openapi_fuzz_never_a_server_error(case: Any, fuzz_target: tuple[str, requests.Session]) -> None:
    """C11.2 module rule b: every endpoint of /openapi.json fuzzed with signed requests (15 examples
    each): never a 5xx other than 503 (not synced), and every error is the JSON error shape."""
    resp = case.call(session=fuzz_target[1])
    assert resp.status_code < 500, resp.text
    if resp.status_code >= 400:
        assert set(resp.json()["error"]) >= {"code", "message"}
