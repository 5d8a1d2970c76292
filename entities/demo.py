"""`fwledger demo`: X.1368 Figure 1 end to end, in one process, with the real components.

Runs on the embedded chain (the Vyper registry compiled from ``contracts/``): 2 of 3
administrators register a vendor, two hardware classes (two revisions, real X25519 keys) and a
policy; the author builds, encrypts, signs, uploads and publishes releases (``build_bundle``,
``publish_bundle``) to a firmware server listening on a loopback port in a thread; a status
tracker (server module) in another thread indexes the ledger, plans and attests; N provisioned
device folders (the tracker's key in their anchors, quorum 1) each run ``Agent.check_and_update``
over real HTTP: verify from ledger proofs, download, decrypt, install in the inactive slot, trial
boot, confirm. Each step states the outcome it expects; the demo succeeds only if every one
happened. Attacks shown: a tampered copy served by the server (a byte of its stored object
flipped), a location-denied device, a release the other class's policy forbids, a revoked release.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from entities.author.bundle import build_bundle
from entities.author.publish import publish_bundle
from entities.firmware_consumer import FactoryImage, read_status
from entities.firmware_consumer.agent import Agent, AgentConfig, PassReport
from entities.firmware_consumer.provision import ComponentBinding, anchors_from_deployment, provision_device
from entities.firmware_server.app import create_app as create_server_app
from entities.firmware_server.config import ServerConfig
from entities.firmware_server.ledger import LedgerView
from entities.firmware_server.runner import ServerThread
from entities.status_tracker.app import TrackerThread
from entities.status_tracker.app import create_app as create_tracker_app
from entities.status_tracker.config import TrackerConfig
from entities.status_tracker.daemon import Tracker
from ledger_node.compiler import registry_contract
from ledger_node.errors import ContractRevert, FwledgerError
from ledger_node.providers import connect, dev_accounts
from ledger_node.record import ZERO_HASH, Dependency, ReleaseData, ReleaseRecord, Version, line_id
from ledger_node.registry import Registry, deploy

__all__ = ["run_demo"]

R1, R2 = "cam-r1", "cam-r2"
FACTORY, DRV_FACTORY = "0.9.0", "0.1.0"
IMAGE_SIZE = 256 * 1024
DENIED_REGION = "embargo-zone"
WAIT = 30.0


def _bare_record(version: str, prev: bytes) -> ReleaseRecord:
    """A record published without a bundle (only to show what the chain refuses)."""
    image = f"main-fw {version}".encode() * 512
    return ReleaseRecord(prev_hash=prev, data=ReleaseData(
        merkle_root=hashlib.sha256(b"merkle" + image).digest(), vendor_name="acme", publish_time=0,
        product="main-fw", version=Version.parse(version), file_hash=hashlib.sha256(image).digest(),
        file_link="http://127.0.0.1/fw/acme/main-fw.bin", file_name=f"main-fw-{version}.bin",
        file_size=len(image), supported_hardware=(R1, R2), dependencies=()))


def _factory(component: str, version: str) -> FactoryImage:
    data = f"factory image of {component} {version}\n".encode() * 64
    return FactoryImage(version, hashlib.sha256(b"factory:" + data).digest(), data)


def _main_fw(root: Path) -> dict[str, Any]:
    return next(c for c in read_status(root)["components"] if c["name"] == "main-fw")


def _running(root: Path) -> tuple[str, str]:
    """The confirmed slot and the version in it."""
    st = _main_fw(root)
    return st["confirmed"], st["slots"][st["confirmed"]]["version"]


def _installed(root: Path) -> str:
    """What the device runs: ``main-fw/sensor-drv`` confirmed versions (``-`` for none)."""
    comps = {c["name"]: c for c in read_status(root)["components"]}
    out = []
    for name in ("main-fw", "sensor-drv"):
        c = comps[name]
        out.append((c["slots"][c["confirmed"]]["version"] if c.get("confirmed") else None) or "-")
    return "/".join(out)


def _slot_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "components").glob("*/slot_*"))}


@contextmanager
def _flipped(path: Path, offset: int) -> Iterator[None]:
    """One byte of a file changed for the duration of the block (the server's disk, tampered)."""
    os.chmod(path, 0o644)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))
    try:
        yield
    finally:
        with open(path, "r+b") as fh:
            fh.seek(offset)
            fh.write(byte)


def run_demo(*, devices: int = 12, quiet: bool = False, console: Console | None = None) -> dict[str, Any]:
    """Run the demo; returns the report (``ok`` true only if every expected outcome happened)."""
    console = console or Console(stderr=True)
    devices = max(devices, 3)  # one tampered, one of the other class, one location-denied
    steps: list[dict[str, Any]] = []
    figures: dict[str, Any] = {"gas": {}}
    t0 = time.monotonic()
    tmpdir = tempfile.TemporaryDirectory(prefix="fwledger-demo-")
    tmp = Path(tmpdir.name)
    stoppers: list[Callable[[], None]] = []
    quieted: list[tuple[logging.Logger, int]] = []

    def step(name: str, fn: Callable[[], str]) -> None:
        started = time.monotonic()
        try:
            detail, ok = fn(), True
        except AssertionError as exc:
            detail, ok = f"unexpected: {exc}", False
        except (FwledgerError, requests.RequestException) as exc:
            detail, ok = f"unexpected error: {exc}", False
        steps.append({"step": name, "ok": ok, "detail": detail, "seconds": round(time.monotonic() - started, 3)})
        if not quiet:
            mark = "[green]ok[/]  " if ok else "[red]FAIL[/]"
            console.print(f"{mark} {name}: {detail}")

    w3 = connect("embedded")
    a1, vendor, a2, a3, stranger = dev_accounts(w3, 5)
    compiled = registry_contract()
    class_keys = {hw: X25519PrivateKey.generate() for hw in (R1, R2)}
    state: dict[str, Any] = {"heads": {}, "rels": {}}
    fleet: list[dict[str, Any]] = []

    def gas(tx: Any) -> int:
        return int(w3.eth.get_transaction_receipt(tx)["gasUsed"])

    # -- the ledger and its administration -------------------------------------------------------

    def s_deploy() -> str:
        dep = deploy(w3, a1, [a1.address, a2.address, a3.address], threshold=2, compiled=compiled)
        state["dep"] = dep
        state["r1"], state["r2"] = Registry(w3, dep, a1), Registry(w3, dep, a2, check_code=False)
        return f"registry at {dep.address}, 2 of 3 administrators"

    def s_one_key() -> str:
        res = state["r1"].add_vendor(vendor.address, "acme")
        assert not res.executed and not state["r1"].is_vendor(vendor.address), "one key registered a vendor"
        return f"one administrator's approval is not enough ({res.approvals} of {res.threshold})"

    def s_admin() -> str:
        r1, r2 = state["r1"], state["r2"]
        assert r2.add_vendor(vendor.address, "acme").executed
        for rev, hw in enumerate((R1, R2), start=1):
            key = class_keys[hw].public_key().public_bytes_raw()
            r1.add_hardware(hw, rev, key)
            assert r2.add_hardware(hw, rev, key).executed
        cap = Version(1, 0, 65535)
        r1.set_policy(R2, "acme", "main-fw", max_version=cap)
        assert r2.set_policy(R2, "acme", "main-fw", max_version=cap).executed
        return (f"vendor acme; hardware {R1} (rev 1) and {R2} (rev 2) with X25519 keys; "
                f"policy: {R2} runs main-fw <= 1.0.x")

    # -- the firmware server and the tracker on loopback ----------------------------------------

    def s_services() -> str:
        dep = state["dep"]
        config = ServerConfig(data_dir=tmp / "server", poll_interval=0.05)
        srv = ServerThread(create_server_app(config, LedgerView(w3, dep, config.ledger_index_path))).start()
        stoppers.append(srv.stop)
        tracker = Tracker(TrackerConfig(data_dir=tmp / "tracker", poll_interval=0.05), w3, dep)
        trk = TrackerThread(create_tracker_app(tracker)).start()
        stoppers.append(trk.stop)
        for name in ("fwledger.server", "fwledger.tracker"):  # their JSON logs would drown the steps
            logger = logging.getLogger(name)
            quieted.append((logger, logger.level))
            logger.setLevel(logging.ERROR)
        state.update(srv=srv.url, srv_data=config.data_dir, trk=trk.url, trk_addr=tracker.address,
                     token=(config.data_dir / "admin.token").read_text().strip())
        rules = [{"action": "deny", "region": "embargo-*"}]
        resp = requests.post(srv.url + "/v1/admin/location-rules", json={"rules": rules}, timeout=WAIT,
                             headers={"Authorization": f"Bearer {state['token']}"})
        assert resp.status_code == 200, resp.text
        return f"firmware server {srv.url} (location rule: deny embargo-*), tracker {trk.url} ({tracker.address})"

    # -- the author ------------------------------------------------------------------------------

    def release(version: str, hardware: tuple[str, ...], product: str = "main-fw",
                deps: tuple[Dependency, ...] = ()) -> Any:
        image = os.urandom(IMAGE_SIZE)
        src, out = tmp / f"{product}-{version}.bin", tmp / f"{product}-{version}.fwb"
        src.write_bytes(image)
        line = line_id("acme", product)
        header = build_bundle(src, out, vendor_name="acme", product=product, version=Version.parse(version),
                              link=f"{state['srv']}/v1/images", hardware=list(hardware), dependencies=deps,
                              class_keys={hw: class_keys[hw].public_key().public_bytes_raw() for hw in hardware},
                              prev_hash=state["heads"].get(line, ZERO_HASH), account=vendor,
                              chain_id=state["dep"].chain_id, registry=state["dep"].address)
        res = publish_bundle(out, [state["srv"]], state["r1"].with_account(vendor))
        state["heads"][line] = res.header_hash
        rel = {"version": version, "hh": res.header_hash, "file_hash": header.record.data.file_hash,
               "image": image, "gas": gas(res.tx), "payload_offset": header.payload_offset}
        state["rels"][version if product == "main-fw" else f"{product} {version}"] = rel
        return rel

    def s_publish() -> str:
        m1 = release("1.0.0", (R1, R2))
        m2 = release("1.1.0", (R1, R2))
        needs = Dependency("main-fw", Version(1, 1, 0), Version(1, 65535, 65535))
        d1 = release("1.0.0", (R1, R2), "sensor-drv", (needs,))
        figures["gas"].update(publish_first_of_line=m1["gas"], publish_next=m2["gas"], publish_dependent=d1["gas"])
        return (f"main-fw 1.0.0 then 1.1.0, and sensor-drv 1.0.0 (needs main-fw >= 1.1.0), built "
                f"({IMAGE_SIZE // 1024} KiB each, encrypted for {R1} and {R2}), signed, uploaded to the server, "
                f"published ({m1['gas']}, {m2['gas']} and {d1['gas']} gas)")

    def s_stranger() -> str:
        try:
            state["r1"].with_account(stranger).publish(_bare_record("9.0.0", state["rels"]["1.1.0"]["hh"]))
        except ContractRevert as exc:
            return f"refused on chain: {exc.reason}"
        raise AssertionError("a non-vendor published")

    def s_rollback() -> str:
        try:
            state["r1"].with_account(vendor).publish(_bare_record("1.0.5", state["rels"]["1.1.0"]["hh"]))
        except ContractRevert as exc:
            return f"refused on chain: {exc.reason}"
        raise AssertionError("a lower version was accepted")

    def synced(*versions: str) -> None:
        """Wait until the tracker indexed the chain's head and the server offers ``versions``."""
        block = int(w3.eth.block_number)
        end = time.monotonic() + WAIT
        while (requests.get(state["trk"] + "/health", timeout=WAIT).json().get("ledger_block") or -1) < block:
            assert time.monotonic() < end, f"the tracker never reached block {block}"
            time.sleep(0.05)
        want = {"0x" + state["rels"][v]["hh"].hex() for v in versions}
        while want:
            rows = requests.get(state["srv"] + "/v1/images", timeout=WAIT).json()
            want -= {r.get("header_hash") for r in rows if r.get("state") == "published"}
            assert time.monotonic() < end, f"the server never offered {sorted(want)}"
            time.sleep(0.05)

    def s_provision() -> str:
        anchors = anchors_from_deployment(state["dep"], compiled, trackers=[state["trk_addr"]], quorum=1,
                                          max_header_age=3600)
        for i in range(devices):
            hw = R1 if i % 2 == 0 else R2
            name = f"dev-{i:03d}"
            root = tmp / "devices" / name
            provision_device(root, device_id=name, hardware=hw,
                             components={"main-fw": ComponentBinding("main-fw", "acme"),
                                         "sensor-drv": ComponentBinding("sensor-drv", "acme")}, anchors=anchors,
                             class_private_key=class_keys[hw].private_bytes_raw(),
                             factory={"main-fw": _factory("main-fw", FACTORY),
                                      "sensor-drv": _factory("sensor-drv", DRV_FACTORY)}, health_command=["true"])
            now = _installed(root)
            fleet.append({"device": name, "class": hw, "root": root, "before": now, "after": now,
                          "result": "", "location": DENIED_REGION if i == 2 else None})
        synced("1.0.0", "1.1.0", "sensor-drv 1.0.0")
        return (f"{devices} devices running main-fw {FACTORY} and sensor-drv {DRV_FACTORY}, "
                f"classes {R1}/{R2} alternating, "
                f"trust anchors: registry code hash + the tracker's key, quorum 1; tracker and server in sync")

    # -- the devices -----------------------------------------------------------------------------

    def one_pass(dev: dict[str, Any], release_hash: bytes | None = None) -> PassReport:
        cfg = AgentConfig(trackers=(state["trk"],), location=dev["location"])
        with Agent(dev["root"], cfg) as agent:
            return agent.check_and_update(release=release_hash)

    def s_tampered() -> str:
        dev = fleet[0]
        rel = state["rels"]["1.1.0"]
        obj = state["srv_data"] / "objects" / rel["file_hash"].hex()
        before = (_running(dev["root"]), _slot_bytes(dev["root"]))
        with _flipped(obj, rel["payload_offset"] + IMAGE_SIZE // 2):
            report = one_pass(dev)
        codes = [(r.product, r.version, r.code) for r in report.results]
        assert codes[0] == ("main-fw", "1.1.0", "chunk_auth_failed"), f"results {codes}"
        assert not any(r.ok for r in report.results), f"results {codes}"
        assert (_running(dev["root"]), _slot_bytes(dev["root"])) == before, "the device's slots changed"
        dev["result"] = "rejected tampered copy (chunk_auth_failed)"
        return (f"{dev['device']} downloaded 1.1.0 with one byte flipped on the server's disk: refused "
                f"chunk_auth_failed, still running slot {before[0][0]} ({before[0][1]}), slots byte-identical")

    def s_location() -> str:
        dev = fleet[2]
        before = (_running(dev["root"]), _slot_bytes(dev["root"]))
        report = one_pass(dev)
        codes = [(r.product, r.version, r.code) for r in report.results]
        assert codes[0] == ("main-fw", "1.1.0", "location_denied"), f"results {codes}"
        assert not any(r.ok for r in report.results), f"results {codes}"
        assert (_running(dev["root"]), _slot_bytes(dev["root"])) == before, "the device's slots changed"
        dev["result"] = "refused: location_denied"
        return (f"{dev['device']} declaring region {DENIED_REGION}: the server refused it (location_denied), "
                "nothing installed")

    def s_fleet() -> str:
        todo = [d for d in fleet if not d["result"]]
        progress = Progress(TextColumn("devices updating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=console, transient=True, disable=quiet)
        with progress:
            task = progress.add_task("fleet", total=len(todo))
            for dev in todo:
                report = one_pass(dev)
                outcomes = [(("drv " if r.product == "sensor-drv" else "") + r.version, r.outcome, r.code)
                            for r in report.results]
                dev["after"] = _installed(dev["root"])
                text = ", ".join(f"{v} {o}" + (f" ({c})" if c else "") for v, o, c in outcomes)
                dev["result"] = text or "nothing to do"
                progress.advance(task)
        wrong = [(d["device"], d["after"]) for d in todo
                 if d["after"] != ("1.1.0/1.0.0" if d["class"] == R1 else f"1.0.0/{DRV_FACTORY}")]
        assert not wrong, f"devices not on the expected version: {wrong}"
        return (f"{len(todo)} devices verified, installed, trial-booted and confirmed: "
                f"{R1} -> main-fw 1.1.0 then sensor-drv 1.0.0 (dependency order), {R2} -> main-fw 1.0.0")

    def s_other_class() -> str:
        dev = fleet[1]
        before = (_running(dev["root"]), _slot_bytes(dev["root"]))
        report = one_pass(dev, state["rels"]["1.1.0"]["hh"])
        (r,) = report.results
        assert (r.ok, r.code, r.download) == (False, "policy_denied", None), f"{r.ok} {r.code} {r.download}"
        assert (_running(dev["root"]), _slot_bytes(dev["root"])) == before, "the device's slots changed"
        r2s = {d["after"] for d in fleet if d["class"] == R2}
        assert r2s == {f"1.0.0/{DRV_FACTORY}"}, f"{R2} devices run {r2s}"
        report = one_pass(dev, state["rels"]["sensor-drv 1.0.0"]["hh"])
        (r,) = report.results
        assert (r.ok, r.code) == (False, "dependency_unmet"), f"{r.ok} {r.code}"
        assert r.download is None or r.download["bytes"] == 0, r.download
        assert (_running(dev["root"]), _slot_bytes(dev["root"])) == before, "the device's slots changed"
        return (f"every {R2} device runs main-fw 1.0.0 (its policy's cap) and keeps sensor-drv {DRV_FACTORY} "
                f"(1.0.0 needs main-fw >= 1.1.0); {dev['device']} asked explicitly refuses main-fw 1.1.0 "
                "(policy_denied, from the ledger proofs) and sensor-drv 1.0.0 (dependency_unmet), "
                "before any payload byte")

    def s_recovers() -> str:
        dev = fleet[0]
        report = one_pass(dev)
        got = [(r.product, r.version, r.outcome) for r in report.results]
        assert got == [("main-fw", "1.1.0", "confirmed"), ("sensor-drv", "1.0.0", "confirmed")], got
        dev["after"] = _installed(dev["root"])
        assert dev["after"] == "1.1.0/1.0.0"
        assert (dev["root"] / "components/main-fw" / f"slot_{_running(dev['root'])[0]}").read_bytes() \
            == state["rels"]["1.1.0"]["image"]
        dev["result"] += ", then 1.1.0 and drv 1.0.0 confirmed"
        return f"the server's copy restored, {dev['device']}'s next pass installs and confirms 1.1.0 and the driver"

    def s_revoke() -> str:
        bad = release("1.2.0", (R1,))
        res = state["r1"].with_account(vendor).revoke("acme", "main-fw", bad["hh"], "demo: signing mistake")
        assert res.executed
        synced()
        probe = next(d for d in fleet if d["class"] == R1 and d["location"] is None)
        before = _slot_bytes(probe["root"])
        report = one_pass(probe, bad["hh"])
        (r,) = report.results
        assert (r.ok, r.code, r.download) == (False, "revoked", None), f"{r.ok} {r.code} {r.download}"
        assert _slot_bytes(probe["root"]) == before
        planned = 0
        for dev in fleet:
            if dev["location"] is not None:
                continue
            rep = one_pass(dev)
            planned += len(rep.results)
            assert all(x.version != "1.2.0" or not x.ok for x in rep.results)
        running = [d["device"] for d in fleet if _running(d["root"])[1] == "1.2.0"]
        assert not running, f"running the revoked release: {running}"
        assert planned == 0, f"{planned} upgrades planned after the revocation"
        return (f"main-fw 1.2.0 published for {R1}, then revoked by its vendor: the tracker plans it for no one, "
                f"{probe['device']} asked for it explicitly refuses it (revoked) before any download; "
                "installed nowhere")

    plan = (("deploy", s_deploy), ("k-of-n", s_one_key), ("administration", s_admin),
            ("server and tracker", s_services), ("publish", s_publish), ("non-vendor refused", s_stranger),
            ("rollback refused", s_rollback), ("provision", s_provision), ("tampered copy", s_tampered),
            ("location denied", s_location), ("fleet update", s_fleet), ("other class", s_other_class),
            ("tampered device recovers", s_recovers), ("revocation", s_revoke))
    try:
        for name, fn in plan:
            if steps and not steps[-1]["ok"]:
                steps.append({"step": name, "ok": False, "detail": "skipped after a failure", "seconds": 0})
                continue
            step(name, fn)
        if "srv" in state:
            served = requests.get(state["srv"] + "/v1/downloads", params={"limit": 10_000}, timeout=WAIT,
                                  headers={"Authorization": f"Bearer {state['token']}"}).json()
            figures["bytes_served"] = sum(int(d["bytes"]) for d in served if d["outcome"] == "served")
            figures["downloads_refused"] = sum(1 for d in served if d["outcome"] != "served")
    finally:
        for stop in reversed(stoppers):
            stop()
        for logger, level in quieted:
            logger.setLevel(level)
        tmpdir.cleanup()

    figures["blocks"] = int(w3.eth.block_number)
    figures["seconds"] = round(time.monotonic() - t0, 2)
    figures["devices"] = [{k: d[k] for k in ("device", "class", "before", "after", "result")} for d in fleet]
    ok = all(s["ok"] for s in steps)
    if not quiet:
        table = Table(title="fwledger demo: the fleet")
        for col in ("device", "class", "before -> after (main-fw/sensor-drv)", "result"):
            table.add_column(col)
        for d in fleet:
            table.add_row(d["device"], d["class"], f"{d['before']} -> {d['after']}", d["result"])
        console.print(table)
        console.print(f"gas: {figures['gas']}; bytes served: {figures.get('bytes_served', 0):,}; "
                      f"blocks: {figures['blocks']}; time: {figures['seconds']} s; "
                      f"{'[green]all expected outcomes happened[/]' if ok else '[red]FAILED[/]'}")
    return {"ok": ok, "steps": steps, "figures": figures}
