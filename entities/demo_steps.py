"""The steps of ``fwledger demo`` (:mod:`entities.demo`), in :data:`PLAN` order: each takes the
run's shared state (:class:`~entities.demo_world.DemoRun`), does one thing X.1368 Figure 1 or a
refusal needs, asserts the outcome it expects and returns one line saying what happened.
"""

from __future__ import annotations

import logging
from typing import Any

import requests
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from entities.admission_client import push_records
from entities.demo_world import (
    DENIED,
    DENIED_REGION,
    DRV_FACTORY,
    FACTORY,
    HALT_MIN_FAILURES,
    IMAGE_SIZE,
    OTHER_CLASS,
    POWER_CUT,
    R1,
    R2,
    RELAYED_EVERY,
    TAMPERED,
    WAIT,
    WAVES,
    DemoRun,
    PowerCut,
    _bare_record,
    _counted_view,
    _factory,
    _flipped,
    _installed,
    _main_fw,
    _names,
    _running,
    _slot_bytes,
)
from entities.firmware_consumer import Device
from entities.firmware_consumer.client import NetworkError, ServerRefused
from entities.firmware_consumer.provision import (
    ComponentBinding,
    anchors_from_deployment,
    load_provisioning,
    provision_device,
)
from entities.firmware_consumer.server_client import ServerClient
from entities.firmware_server.app import create_app as create_server_app
from entities.firmware_server.config import ServerConfig
from entities.firmware_server.ledger import LedgerView
from entities.firmware_server.runner import ServerThread
from entities.protocol.admission import sign_admission
from entities.settings import load_or_create_key
from entities.status_tracker.app import TrackerThread
from entities.status_tracker.app import create_app as create_tracker_app
from entities.status_tracker.config import TrackerConfig
from entities.status_tracker.daemon import Tracker
from entities.status_tracker.intermediate import Intermediate, IntermediateThread, create_intermediate_app
from ledger_node.errors import ContractRevert
from ledger_node.record import Dependency, Version
from ledger_node.registry import Registry, deploy

__all__ = ["PLAN"]


# -- the ledger and its administration -------------------------------------------------------


def s_deploy(run: DemoRun) -> str:
    w3, a1, a2, a3, compiled, state = run.w3, run.a1, run.a2, run.a3, run.compiled, run.state
    dep = deploy(w3, a1, [a1.address, a2.address, a3.address], threshold=2, compiled=compiled)
    state["dep"] = dep
    state["r1"], state["r2"] = Registry(w3, dep, a1), Registry(w3, dep, a2, check_code=False)
    return f"registry at {dep.address}, 2 of 3 administrators"


def s_one_key(run: DemoRun) -> str:
    vendor, state = run.vendor, run.state
    res = state["r1"].add_vendor(vendor.address, "acme")
    assert not res.executed and not state["r1"].is_vendor(vendor.address), "one key registered a vendor"
    return f"one administrator's approval is not enough ({res.approvals} of {res.threshold})"


def s_admin(run: DemoRun) -> str:
    vendor, class_keys, state = run.vendor, run.class_keys, run.state
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


# -- the firmware server and the trackers on loopback ----------------------------------------


def s_services(run: DemoRun) -> str:
    tmp, stoppers, quieted, w3, a1, state, chain_calls = (
        run.tmp, run.stoppers, run.quieted, run.w3, run.a1, run.state, run.chain_calls)
    dep = state["dep"]
    server_w3, chain_calls["firmware_server"] = _counted_view(w3)
    tracker_w3, chain_calls["tracker"] = _counted_view(w3)
    # device admission required (entities/admission.py): the fleet operator (a1) admits the devices
    config = ServerConfig(data_dir=tmp / "server", poll_interval=0.05, admission="required",
                          operator_keys=(a1.address,))
    srv = ServerThread(create_server_app(config, LedgerView(server_w3, dep, config.ledger_index_path))).start()
    stoppers.append(srv.stop)
    # the intermediate's key first: the server module hears module heartbeats from configured keys only
    inter_key = load_or_create_key(tmp / "intermediate" / "tracker.key")
    tracker = Tracker(TrackerConfig(data_dir=tmp / "tracker", poll_interval=0.05, waves=WAVES,
                                    halt_min_failures=HALT_MIN_FAILURES, module_keys=(inter_key.address,),
                                    admission="required", operator_keys=(a1.address,)).validate(),
                      tracker_w3, dep)
    tracker_app = create_tracker_app(tracker)
    trk = TrackerThread(tracker_app).start()
    stoppers.append(trk.stop)
    inter_cfg = TrackerConfig(data_dir=tmp / "intermediate", role="intermediate", poll_interval=0.2,
                              upstreams=(trk.url,), upstream_keys=(tracker.address,)).validate()
    inter = Intermediate(inter_cfg)
    inter_thread = IntermediateThread(create_intermediate_app(inter))
    inter.url = inter_thread.url
    inter_thread.start()
    stoppers.append(inter_thread.stop)
    for name in ("fwledger.server", "fwledger.tracker", "fwledger.intermediate"):  # JSON logs would drown the steps
        logger = logging.getLogger(name)
        quieted.append((logger, logger.level))
        logger.setLevel(logging.ERROR)
    state.update(srv=srv.url, srv_data=config.data_dir, trk=trk.url, trk_addr=tracker.address, tracker=tracker,
                 tracker_app=tracker_app, inter=inter, inter_url=inter_thread.url, inter_addr=inter.address,
                 token=(config.data_dir / "admin.token").read_text().strip())
    rules = [{"action": "deny", "region": "embargo-*"}]
    resp = requests.post(srv.url + "/v1/admin/location-rules", json={"rules": rules}, timeout=WAIT,
                         headers={"Authorization": f"Bearer {state['token']}"})
    assert resp.status_code == 200, resp.text
    return (f"firmware server {srv.url} (location rule: deny embargo-*); status tracker server module "
            f"{trk.url} ({tracker.address}; rollouts in waves {int(WAVES[0] * 100)}% then the rest, halted "
            f"above 25% failures once {HALT_MIN_FAILURES} failed); intermediate module {inter.url} "
            f"({inter.address}), upstream: the server module, its key pinned")


# -- the devices -----------------------------------------------------------------------------


def s_provision(run: DemoRun) -> str:
    console, bars_off, devices, tmp, a1, compiled, class_keys, state, fleet, synced, one_pass = (
        run.console, run.bars_off, run.devices, run.tmp, run.a1, run.compiled, run.class_keys, run.state, run.fleet,
        run.synced, run.one_pass)
    plain = anchors_from_deployment(state["dep"], compiled, trackers=[state["trk_addr"]], quorum=1,
                                    max_header_age=3600)
    for i in range(devices):
        hw = R1 if i % 2 == 0 else R2
        name = f"dev-{i:03d}"
        root = tmp / "devices" / name
        relayed = i % RELAYED_EVERY == 0
        prov = provision_device(root, device_id=name, hardware=hw,
                         components={"main-fw": ComponentBinding("main-fw", "acme"),
                                     "sensor-drv": ComponentBinding("sensor-drv", "acme")}, anchors=plain,
                         class_private_key=class_keys[hw].private_bytes_raw(),
                         factory={"main-fw": _factory("main-fw", FACTORY),
                                  "sensor-drv": _factory("sensor-drv", DRV_FACTORY)}, health_command=["true"],
                         relays=[state["inter_addr"]] if relayed else ())
        now = _installed(root)
        fleet.append({"device": name, "class": hw, "root": root, "before": now, "after": now, "result": "",
                      "address": prov.identity.address,
                      "via": "intermediate" if relayed else "server module",
                      "tracker": state["inter_url"] if relayed else state["trk"],
                      "location": DENIED_REGION if i == DENIED else None})
    synced()
    # the operator admits every device (key, class, region label) on the firmware server and the tracker
    admitted = [sign_admission(a1, d["device"], d["address"], d["class"],
                               {"region": DENIED_REGION if d["location"] else "lab"}).to_json() for d in fleet]
    pushed = push_records([state["srv"], state["trk"]], admitted)
    assert all("error" not in r for r in pushed.values()), f"admission refused: {pushed}"
    progress = Progress(TextColumn("devices registering"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, transient=True, disable=bars_off)
    with progress:
        task = progress.add_task("register", total=len(fleet))
        for dev in fleet:
            report = one_pass(dev)
            assert not report.results and not report.commands, f"{dev['device']}: {report.to_json()}"
            progress.advance(task)
    known = {row.device_id for row in state["tracker"].inventory.devices()}
    missing = [d["device"] for d in fleet if d["device"] not in known]
    assert not missing, f"the tracker does not know {missing}"
    relayed_devs = [d["device"] for d in fleet if d["via"] == "intermediate"]
    return (f"{devices} devices running main-fw {FACTORY} and sensor-drv {DRV_FACTORY}, classes {R1}/{R2} "
            f"alternating, trust anchors: registry code hash + the server module's key, quorum 1; "
            f"{_names(relayed_devs)} talk to the intermediate (its key a relay in their anchors), the others to "
            "the server module; the operator admitted each (key, class, region) on the server and the tracker; "
            "each reported its status (heartbeat): the tracker knows the fleet, nothing to install yet")


def s_unadmitted(run: DemoRun) -> str:
    """A device nobody admitted (a fresh key that claims a fleet device's id, then its own id) is
    refused by the tracker and the firmware server, stored nowhere but the pending queue."""
    tmp, compiled, class_keys, state, one_pass = run.tmp, run.compiled, run.class_keys, run.state, run.one_pass
    plain = anchors_from_deployment(state["dep"], compiled, trackers=[state["trk_addr"]], quorum=1,
                                    max_header_age=3600)
    root = tmp / "intruder"
    provision_device(root, device_id="dev-999", hardware=R1, anchors=plain,
                     components={"main-fw": ComponentBinding("main-fw", "acme")},
                     class_private_key=class_keys[R1].private_bytes_raw(),
                     factory={"main-fw": _factory("main-fw", FACTORY)}, health_command=["true"])
    intruder = {"root": root, "tracker": state["trk"], "location": None}
    try:
        one_pass(intruder)
        raise AssertionError("an unadmitted device was served")
    except NetworkError as exc:
        assert exc.code == "not_admitted", f"refused with {exc.code}: {exc}"
    client = ServerClient(state["srv"], load_provisioning(root).identity)
    try:
        client.register("dev-999", R1)
        raise AssertionError("the firmware server registered an unadmitted device")
    except ServerRefused as exc:
        assert exc.code == "not_admitted", f"server refused with {exc.code}"
    finally:
        client.close()
    tracker = state["tracker"]
    assert tracker.inventory.device("dev-999") is None, "the tracker stored the unadmitted device"
    pending = [p["device_id"] for p in tracker.admissions.pending()]
    assert pending == ["dev-999"], f"pending queue {pending}"
    return ("dev-999, a fresh key nobody admitted: refused not_admitted by the tracker (held in the operator's "
            "pending queue, not in the inventory, never commanded) and by the firmware server")


# -- the author ------------------------------------------------------------------------------


def s_publish(run: DemoRun) -> str:
    figures, fleet, synced, release, await_rollouts = (
        run.figures, run.fleet, run.synced, run.release, run.await_rollouts)
    m1 = release("1.0.0", (R1, R2))
    m2 = release("1.1.0", (R1, R2))
    figures["gas"].update(publish_first_of_line=m1["gas"], publish_next=m2["gas"])
    synced("1.0.0", "1.1.0")
    n1 = sum(d["class"] == R1 for d in fleet)
    got = await_rollouts({"1.1.0": n1, "1.0.0": len(fleet) - n1})
    return (f"main-fw 1.0.0 then 1.1.0 built ({IMAGE_SIZE // 1024} KiB each, encrypted for {R1} and {R2}), "
            f"signed, uploaded to the server, published ({m1['gas']} and {m2['gas']} gas); the tracker planned "
            f"rollout #{got['1.1.0']['id']} (main-fw 1.1.0) for the {n1} {R1} devices and rollout "
            f"#{got['1.0.0']['id']} (main-fw 1.0.0, the {R2} policy's cap) for the {len(fleet) - n1} {R2} "
            "devices, wave 0 open")


def s_stranger(run: DemoRun) -> str:
    stranger, state = run.stranger, run.state
    try:
        state["r1"].with_account(stranger).publish(_bare_record("9.0.0", state["rels"]["1.1.0"]["hh"]))
    except ContractRevert as exc:
        return f"refused on chain: {exc.reason}"
    raise AssertionError("a non-vendor published")


def s_rollback(run: DemoRun) -> str:
    vendor, state = run.vendor, run.state
    try:
        state["r1"].with_account(vendor).publish(_bare_record("1.0.5", state["rels"]["1.1.0"]["hh"]))
    except ContractRevert as exc:
        return f"refused on chain: {exc.reason}"
    raise AssertionError("a lower version was accepted")


def s_tampered(run: DemoRun) -> str:
    state, fleet, note, refused_pass = run.state, run.fleet, run.note, run.refused_pass
    dev = fleet[TAMPERED]
    rel = state["rels"]["1.1.0"]
    obj = state["srv_data"] / "objects" / rel["file_hash"].hex()
    with _flipped(obj, rel["payload_offset"] + IMAGE_SIZE // 2):
        report, running = refused_pass(dev, rel["hh"])
    codes = [(r.product, r.version, r.code) for r in report.results]
    assert codes == [("main-fw", "1.1.0", "chunk_auth_failed")], f"results {codes}"
    note(dev, "tampered copy refused (chunk_auth_failed)")
    return (f"{dev['device']}, asked for 1.1.0 by an administrator, downloaded it with one byte flipped on the "
            f"server's disk: refused chunk_auth_failed, still running slot {running[0]} ({running[1]}), "
            "slots byte-identical; the server's copy is then restored")


def s_location(run: DemoRun) -> str:
    state, fleet, note, refused_pass = run.state, run.fleet, run.note, run.refused_pass
    dev = fleet[DENIED]
    report, _ = refused_pass(dev, state["rels"]["1.0.0"]["hh"])
    codes = [(r.product, r.version, r.code) for r in report.results]
    assert codes == [("main-fw", "1.0.0", "location_denied")], f"results {codes}"
    note(dev, "refused: location_denied")
    return (f"{dev['device']} admitted in region {DENIED_REGION}, asked for 1.0.0: the server refused it "
            "(location_denied), nothing installed (its rollout will count it as one failure)")


def s_power_cut(run: DemoRun) -> str:
    state, fleet, note, one_pass = run.state, run.fleet, run.note, run.one_pass
    dev = fleet[POWER_CUT]
    rel = state["rels"]["1.1.0"]
    slot, version = _running(dev["root"])
    before = _slot_bytes(dev["root"])
    labels: list[str] = []

    def probe(label: str) -> None:
        labels.append(label)
        if label.startswith("chunk main-fw ") and int(label.split("offset=")[1].split()[0]) >= IMAGE_SIZE // 2:
            raise PowerCut(label)

    try:
        one_pass(dev, rel["hh"], probe=probe)
    except PowerCut as cut:
        where = str(cut)
    else:
        raise AssertionError("the install ran to the end: no power cut")
    with Device(dev["root"]) as device:  # power on again: the boot
        booted = {b.component: b for b in device.boot()}
    b = booted["main-fw"]
    assert (b.kind.value, b.slot, b.version) == ("normal", slot, version), f"booted {b.to_json()}"
    assert _running(dev["root"]) == (slot, version), f"running {_running(dev['root'])}"
    after = _slot_bytes(dev["root"])
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert all(k.startswith("components/main-fw/") and not k.endswith(f"slot_{slot}") for k in changed), \
        f"slots changed: {changed}"
    pending = _main_fw(dev["root"])["install"]
    assert pending is not None and pending["version"] == "1.1.0", f"no interrupted install recorded: {pending}"
    dev["interrupted"] = pending
    note(dev, f"power cut mid-install, rebooted on {version}")
    written = int(where.split("offset=")[1].split()[0])
    return (f"{dev['device']}, asked for 1.1.0, lost power after {written // 1024} of {IMAGE_SIZE // 1024} KiB "
            f"were written to slot {pending['slot']} (at durable step {len(labels)}: '{where}'); it rebooted "
            f"on slot {slot} ({version}), byte-identical, its journal keeping the interrupted install (durable "
            f"offset {pending['durable']}) for its next update. Power cut simulated by stopping the install at a "
            "durable-write boundary in process; the SIGKILL suite in tests/integration/test_power_loss.py does "
            "it with real processes")


def s_fleet(run: DemoRun) -> str:
    fleet, fleet_passes, waves_text = run.fleet, run.fleet_passes, run.waves_text

    def done(d: dict[str, Any]) -> bool:
        return d["after"].startswith("1.1.0/" if d["class"] == R1 else "1.0.0/") or d["location"] is not None

    passes = fleet_passes("fleet updating (signed commands)", done)
    want = {d["device"]: (f"1.1.0/{DRV_FACTORY}" if d["class"] == R1 else
                          f"{FACTORY}/{DRV_FACTORY}" if d["location"] else f"1.0.0/{DRV_FACTORY}") for d in fleet}
    wrong = [(d["device"], d["after"]) for d in fleet if d["after"] != want[d["device"]]]
    assert not wrong, f"devices not on the expected version: {wrong}"
    return (f"{passes} passes of the fleet, every device acting only on the server module's signed commands "
            f"(verified, installed, trial-booted, confirmed, reported): {waves_text('1.1.0')}. "
            f"{waves_text('1.0.0')}. Every canary device reported before the next wave got a command")


def s_power_done(run: DemoRun) -> str:
    state, fleet = run.state, run.fleet
    dev = fleet[POWER_CUT]
    rel = state["rels"]["1.1.0"]
    got = dev.get("installs", {}).get(rel["key"])
    assert got is not None and got[2], f"{dev['device']} did not install 1.1.0 by command: {got}"
    assert _main_fw(dev["root"])["install"] is None, "the interrupted install is still pending"
    slot, version = _running(dev["root"])
    assert version == "1.1.0" and (dev["root"] / "components/main-fw" / f"slot_{slot}").read_bytes() \
        == rel["image"], "the confirmed slot is not the published image"
    start = dev.get("resumed_from")
    how = ("nothing of it was durable yet, so the slot was rewritten from byte 0" if not start
           else f"resumed at its last durable checkpoint, byte {start}")
    return (f"{dev['device']} took up its interrupted install (the same journal entry) when the rollout's "
            f"command reached it in pass {got[1]} ({how}), trial-booted and confirmed 1.1.0: slot {slot} holds "
            "exactly the published image, the journal is gone")


def s_driver(run: DemoRun) -> str:
    figures, fleet, synced, release, await_rollouts, fleet_passes, waves_text = (
        run.figures, run.fleet, run.synced, run.release, run.await_rollouts, run.fleet_passes, run.waves_text)
    needs = Dependency("main-fw", Version(1, 1, 0), Version(1, 65535, 65535))
    d1 = release("1.0.0", (R1, R2), "sensor-drv", (needs,))
    figures["gas"]["publish_dependent"] = d1["gas"]
    synced("sensor-drv 1.0.0")
    r1s = [d for d in fleet if d["class"] == R1]
    await_rollouts({"sensor-drv 1.0.0": len(r1s)})

    def done(d: dict[str, Any]) -> bool:
        return d["class"] != R1 or d["after"].endswith("/1.0.0")

    passes = fleet_passes("drivers updating (signed commands)", done)
    wrong = [(d["device"], d["after"]) for d in r1s if d["after"] != "1.1.0/1.0.0"]
    assert not wrong, f"{R1} devices without the driver: {wrong}"
    return (f"sensor-drv 1.0.0 (needs main-fw >= 1.1.0) published ({d1['gas']} gas) for both classes; "
            f"{passes} passes: {waves_text('sensor-drv 1.0.0')}; no {R2} device was enrolled (they run main-fw "
            "1.0.0)")


def s_other_class(run: DemoRun) -> str:
    state, fleet, refused_pass = run.state, run.fleet, run.refused_pass
    dev = fleet[OTHER_CLASS]
    report, _ = refused_pass(dev, state["rels"]["1.1.0"]["hh"])
    (r,) = report.results
    assert (r.ok, r.code, r.download) == (False, "policy_denied", None), f"{r.ok} {r.code} {r.download}"
    r2s = {d["after"] for d in fleet if d["class"] == R2 and d["location"] is None}
    assert r2s == {f"1.0.0/{DRV_FACTORY}"}, f"{R2} devices run {r2s}"
    report, _ = refused_pass(dev, state["rels"]["sensor-drv 1.0.0"]["hh"])
    (r,) = report.results
    assert (r.ok, r.code) == (False, "dependency_unmet"), f"{r.ok} {r.code}"
    assert r.download is None or r.download["bytes"] == 0, r.download
    return (f"every {R2} device runs main-fw 1.0.0 (its policy's cap) and keeps sensor-drv {DRV_FACTORY} "
            f"(1.0.0 needs main-fw >= 1.1.0); {dev['device']} asked explicitly refuses main-fw 1.1.0 "
            "(policy_denied, from the ledger proofs) and sensor-drv 1.0.0 (dependency_unmet), "
            "before any payload byte")


def s_recovers(run: DemoRun) -> str:
    state, fleet = run.state, run.fleet
    dev = fleet[TAMPERED]
    assert dev["after"] == "1.1.0/1.0.0", dev["after"]
    slot, _ = _running(dev["root"])
    assert (dev["root"] / "components/main-fw" / f"slot_{slot}").read_bytes() == state["rels"]["1.1.0"]["image"]
    return (f"the server's copy restored, {dev['device']} took part in the rollouts like the others: 1.1.0 "
            f"and the driver confirmed, slot {slot} holds exactly the published image")


def s_hierarchy(run: DemoRun) -> str:
    figures, state, fleet = run.figures, run.state, run.fleet
    health = requests.get(state["inter_url"] + "/health", timeout=WAIT).json()
    c = health["counters"]
    below = sorted(state["inter"].modules.device_ids())
    expected = sorted(d["device"] for d in fleet if d["via"] == "intermediate")
    assert below == expected, f"the intermediate saw {below}, expected {expected}"
    routes = state["tracker_app"].state.modules.routes()
    via = sorted(dev for dev, r in routes.items() if r["upstream"] == state["inter_addr"])
    direct = sorted(dev for dev, r in routes.items() if r["upstream"] is None)
    assert via == expected, f"the server module routes {via} through the intermediate, expected {expected}"
    assert direct == sorted(d["device"] for d in fleet if d["via"] != "intermediate"), f"direct: {direct}"
    mods = {m.address: m for m in state["tracker_app"].state.modules.modules()}
    assert state["inter_addr"] in mods, "the server module never heard the intermediate's module heartbeat"
    reads = c["cache_hits"] + c["fetched"]
    assert c["cache_hits"] > 0 and c["fetched"] < reads, f"counters {c}"
    figures["intermediate"] = {**c, "cached_answers": health["cached_answers"], "devices_below": below}
    return (f"{_names(below)} went through the intermediate (its route table and the server module's agree; "
            f"the other {len(direct)} devices talked to the server module directly: client-server). It relayed "
            f"{c['relayed']} heartbeats and result reports unchanged, answered {reads} attestation and evidence "
            f"requests of which {c['cache_hits']} from its cache ({c['fetched']} fetched upstream once, "
            f"{health['cached_answers']} answers cached); {c['upstream_requests']} requests upstream in all "
            f"({c['module_heartbeats']} of them its reachability heartbeats, {c['head_refreshes']} head "
            f"refreshes), {c['served_bytes']:,} bytes served below for {c['upstream_bytes']:,} bytes fetched; no "
            "chain query (it has no chain connection)")


def s_revoke(run: DemoRun) -> str:
    figures, vendor, state, fleet, synced, one_pass, release, rollout_of = (
        run.figures, run.vendor, run.state, run.fleet, run.synced, run.one_pass, run.release, run.rollout_of)
    bad = release("1.2.0", (R1,))
    res = state["r1"].with_account(vendor).revoke("acme", "main-fw", bad["hh"], "demo: signing mistake")
    assert res.executed
    figures["gas"]["revoke"] = res.gas_used
    synced()
    probe = fleet[TAMPERED]
    before = _slot_bytes(probe["root"])
    report = one_pass(probe, bad["hh"])
    (r,) = report.results
    assert (r.ok, r.code, r.download) == (False, "revoked", None), f"{r.ok} {r.code} {r.download}"
    assert _slot_bytes(probe["root"]) == before
    planned = 0
    for dev in fleet:
        rep = one_pass(dev)
        planned += len(rep.results) + len(rep.commands)
    running = [d["device"] for d in fleet if _running(d["root"])[1] == "1.2.0"]
    assert not running, f"running the revoked release: {running}"
    assert planned == 0, f"{planned} commands or upgrades after the revocation"
    named = [c["command_id"] for c in state["tracker"].inventory.commands(limit=100_000)
             if any(str(u["header_hash"]).lower() == bad["key"] for u in c["envelope"]["command"]["upgrades"])]
    assert not named, f"commands named the revoked release: {named}"
    gone = rollout_of(bad)
    assert gone is None or gone["devices"] == 0, f"devices still in the revoked release's rollout: {gone}"
    early = "" if gone is None else (f" (the tracker had opened rollout #{gone['id']} for it in the moment "
                                     "before the revocation: it holds no device now)")
    return (f"main-fw 1.2.0 published for {R1}, then revoked by its vendor: no command ever named it{early}, "
            f"the next pass of every device brought nothing; {probe['device']} asked for it explicitly refuses "
            "it (revoked) before any download; installed nowhere")


#: the demo's steps in order: (name, step)
PLAN = (("deploy", s_deploy), ("k-of-n", s_one_key), ("administration", s_admin),
        ("server and trackers", s_services), ("provision", s_provision),
        ("unadmitted device refused", s_unadmitted), ("publish", s_publish),
        ("non-vendor refused", s_stranger), ("rollback refused", s_rollback), ("tampered copy", s_tampered),
        ("location denied", s_location), ("power cut mid-install", s_power_cut), ("fleet update", s_fleet),
        ("power-cut device completes", s_power_done), ("dependent release", s_driver),
        ("other class", s_other_class), ("tampered device recovers", s_recovers),
        ("hierarchical trackers", s_hierarchy), ("revocation", s_revoke))
