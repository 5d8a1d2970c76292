"""Add-on boards (X.1368 Appendix II) and a device telling its tracker it needs an update (C11.1.a.iv),
end to end against a real tracker and firmware server, on the embedded chain and on anvil.

Reuses the network world of :mod:`tests.integration.test_device_network` (tracker and server on
loopback, devices provisioned with the tracker's key). Add-on boards are hardware classes of their
own on the ledger (``sens-b1``, ``sens-b2``), each with its X25519 class key and the
administrator's policies; a device declares the boards it carries at provisioning
(``fwledger device init --addon ... --addon-class-key ... --component NAME=VENDOR/PRODUCT@BOARD``),
reports them in its heartbeat, and the tracker plans each board's firmware under the board's
policy. Safe mode is caused for real: the running slot's bytes change on disk and the component
boots (no slot passes its hash check). Nothing is mocked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from entities.cli import cli
from entities.firmware_consumer import Device, read_status
from entities.firmware_consumer.agent import Agent, AgentConfig
from entities.firmware_consumer.errors import UpdateRefused
from entities.firmware_consumer.factory import verified_factory_image
from entities.firmware_consumer.provision import ComponentBinding
from ledger_node.record import Version
from ledger_node.registry import Registry
from tests.conftest import Chain
from tests.integration.test_device_network import (  # noqa: F401 - net: the world's fixture
    ADMIN,
    HW,
    Net,
    device,
    net,
    running,
    update,
)
from tests.security.world import OTHER_HW, DeviceWorld

BOARD, OTHER_BOARD = "sens-b1", "sens-b2"


def _component(root: Path, name: str) -> dict[str, object]:
    return next(c for c in read_status(root)["components"] if c["name"] == name)


def _image(root: Path, name: str) -> bytes:
    """The bytes of the component's confirmed slot."""
    return (root / "components" / name / f"slot_{_component(root, name)['confirmed']}").read_bytes()


def _boards(world: Net) -> None:
    """Register the two add-on board classes with real X25519 keys (revision 1 each, in the ledger world)."""
    for board in (BOARD, OTHER_BOARD):
        world.ledger.add_hardware(board, 1)


def _key_file(world: Net, hw: str) -> Path:
    path = world.tmp / f"{hw}.x25519"
    path.write_text(world.class_keys[hw].private_bytes_raw().hex())
    return path


def test_a_board_reports_itself_and_gets_its_firmware_under_its_policy(net: Net) -> None:  # noqa: F811
    """Appendix II, R10.d.i, R10.d.ii: a device provisioned with ``--addon sens-b1@1`` and a component on
    it reports the board; the tracker plans main-fw for the device's class and sensor-fw under the
    board's policy (1.x only: 2.0.0 is not planned, 1.2.0 is for sens-b2 only), although the device
    class's own policy forbids sensor-fw; the device installs both, decrypting sensor-fw with the
    board's class key. Forced by an administrator, 2.0.0 is refused (``policy_denied``) and 1.2.0,
    for a board the device lacks, is refused (``wrong_hardware``); nothing changes on the device."""
    _boards(net)
    trk, srv = net.tracker(0, wait=False), net.server(wait=False)
    net.up(trk, srv)
    net.registry.set_policy(BOARD, "acme", "sensor-fw", max_version=Version(1, 0xFFFF, 0xFFFF))
    net.registry.set_policy(HW, "acme", "sensor-fw", allowed=False)  # the device's class: never the board's firmware
    anchors = net.tmp / "anchors.json"
    anchors.write_text(json.dumps(net.anchors([trk], 1).to_json()))
    root = net.tmp / "devices" / "cam-board"
    base = ["init", "--dir", str(root), "--id", "cam-board", "--hardware", HW, "--anchors", str(anchors),
            "--class-key", str(_key_file(net, HW)), "--health-cmd", "true", "--component", "main-fw=acme/main-fw",
            "--component", f"sensor=acme/sensor-fw@{BOARD}", "--json"]
    # bad input: a component on a board not declared, a board without its key: one line, no device folder
    res = device(*base)
    assert res.exit_code == 1 and "not a declared add-on board" in res.stderr and res.stderr.count("\n") == 1
    res = device(*base, "--addon", f"{BOARD}@1")
    assert res.exit_code == 1 and "needs its class key" in res.stderr and not (root / "device.json").exists()
    res = device(*base, "--addon", f"{BOARD}@x")
    assert res.exit_code == 1 and "BOARD[@REVISION]" in res.stderr
    res = device(*base, "--addon", f"{BOARD}@1", "--addon-class-key", f"{BOARD}={_key_file(net, BOARD)}")
    assert res.exit_code == 0, res.output + res.stderr
    out = json.loads(res.stdout)
    assert out["addons"] == {BOARD: {"revision": 1}}
    assert out["components"]["sensor"] == {"product": "sensor-fw", "vendor": "acme", "board": BOARD}

    main = net.release(srv, "main-fw", "1.1.0")
    net.release(srv, "sensor-fw", "1.0.0", hardware=(BOARD,), size=20_000)
    good = net.release(srv, "sensor-fw", "1.1.0", hardware=(BOARD,), size=30_000)
    lacking = net.release(srv, "sensor-fw", "1.2.0", hardware=(OTHER_BOARD,), size=20_000)
    over = net.release(srv, "sensor-fw", "2.0.0", hardware=(BOARD,), size=20_000)
    net.synced(srv, trk, rel=over)

    res = update(root, trk)
    assert res.exit_code == 0, res.output + res.stderr
    out = json.loads(res.stdout)
    assert sorted((u["product"], u["to_version"]) for u in out["plan"]) == [("main-fw", "1.1.0"), ("sensor-fw", "1.1.0")]
    assert sorted((r["component"], r["version"], r["outcome"]) for r in out["results"]) == [
        ("main-fw", "1.1.0", "confirmed"), ("sensor", "1.1.0", "confirmed")]
    assert _image(root, "sensor") == good.image  # decrypted with the board's class key
    assert _image(root, "main-fw") == main.image
    row = next(d for d in trk.get("/v1/devices") if d["device_id"] == "cam-board")
    assert row["addons"] == {BOARD: ["sensor-fw"]}
    assert row["components"]["sensor-fw"] == {"vendor": "acme", "version": "1.1.0", "slot": "a"}
    plan = trk.get("/v1/devices/cam-board/plan")
    assert plan["plan"]["upgrades"] == []
    (blocked,) = [b for b in plan["plan"]["blocked"] if b["product"] == "sensor-fw"]
    why = {v["version"]: [r["kind"] for r in v["reasons"]] for v in blocked["verdicts"]}
    assert blocked["hardware_class"] == BOARD
    assert "policy-range" in why["2.0.0"] and "hardware" in why["1.2.0"], why
    again = update(root, trk)  # nothing more is planned (R10.e.i)
    assert again.exit_code == 0 and json.loads(again.stdout)["results"] == []

    before = (_component(root, "sensor"), _image(root, "sensor"))
    with Agent(root, AgentConfig(trackers=(trk.url,))) as agent:  # an administrator forces each release
        over_report = agent.check_and_update(release=over.header_hash)
        lacking_report = agent.check_and_update(release=lacking.header_hash)
    (r,) = over_report.results
    assert (r.component, r.code, r.download) == ("sensor", "policy_denied", None)  # before any download
    assert BOARD in r.message
    (r,) = lacking_report.results
    assert (r.component, r.code) == ("sensor", "wrong_hardware") and OTHER_BOARD in r.message, r.message
    st = _component(root, "sensor")
    assert (st["version"], st["confirmed"], st["counter"]) == ("1.1.0", "a", "1.1.0")
    assert st["slots"] == before[0]["slots"] and _image(root, "sensor") == before[1]


def test_a_component_in_safe_mode_says_it_needs_an_update_and_recovers(net: Net) -> None:  # noqa: F811
    """C11.1.a.iv, C11.1.b, C11.2.a-c, R10.c.ii: the running image's bytes change on disk and the device
    boots: no slot boots, the component is in safe mode. Its heartbeat no longer drops it but says it
    needs an update (``needs: safe_mode``); the tracker records it, lists the device ``safe-mode``
    (``/v1/devices?status=safe-mode``, ``/v1/outdated``, ``fwledger tracker devices``) and plans the
    newest compatible release, a recovery install. With no firmware server reachable the install fails
    and the device stays in safe mode; once the server is reachable the agent recovers it through the
    plan (verified like any update, trial boot, confirm) and the device is back to normal and up to date."""
    trk, srv = net.tracker(0, wait=False), net.server(wait=False)
    net.up(trk, srv)
    cam = net.device("cam-safe", [trk])
    rel = net.release(srv, "main-fw", "1.1.0", link="http://firmware.invalid/v1/images")
    net.synced(srv, trk, rel=rel)
    res = update(cam, trk, servers=(srv.url,))
    assert res.exit_code == 0 and running(cam) == ("b", "1.1.0"), res.output + res.stderr

    for slot in ("a", "b"):  # both images change on the device's storage
        path = cam / "components" / "main-fw" / f"slot_{slot}"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.chmod(0o644)
        path.write_bytes(bytes(data))
    with Device(cam) as dev:
        assert dev.boot_component("main-fw").kind.value == "safe"
    st = _component(cam, "main-fw")
    assert (st["safe_mode"], st["mode"], st["counter"]) == (True, "safe", "1.1.0")

    res = update(cam, trk)  # the heartbeat reaches the tracker, the plan comes; no server to download from
    assert res.exit_code == 1, res.output + res.stderr
    report = json.loads(res.stdout)["report"]
    assert [(u["product"], u["to_version"]) for u in report["plan"]] == [("main-fw", "1.1.0")]
    planned = trk.get("/v1/devices/cam-safe/plan")["plan"]["upgrades"]  # the newest compatible, from nothing
    assert [(u["product"], u["from_version"], u["to_version"]) for u in planned] == [("main-fw", "0.0.0", "1.1.0")]
    (r,) = report["results"]
    assert r["ok"] is False and _component(cam, "main-fw")["safe_mode"] is True
    row = next(d for d in trk.get("/v1/devices?status=safe-mode"))
    assert row["device_id"] == "cam-safe" and row["firmware"] == ["safe-mode"] and row["ready"] is True
    assert row["components"]["main-fw"] == {"vendor": "acme", "version": None, "slot": None, "state": "empty",
                                            "needs": "safe_mode"}
    lists = trk.get("/v1/outdated")
    assert lists["safe_mode"] == ["cam-safe"] and "cam-safe" not in lists["up_to_date"]
    (mine,) = [d for d in lists["outdated"] if d["device_id"] == "cam-safe"]
    assert any("safe-mode" in x and "recovery install" in x for x in mine["reasons"]), mine
    keyfile = net.tmp / "admin.key"
    keyfile.write_text(ADMIN.key.hex())
    operator = ["--home", str(net.tmp / "operator"), "--key-file", str(keyfile), "tracker", "devices",
                "--tracker", trk.url, "--tracker-key", trk.address]
    listed = CliRunner().invoke(cli, [*operator, "--status", "safe-mode", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [d["device_id"] for d in json.loads(listed.stdout)] == ["cam-safe"]
    human = CliRunner().invoke(cli, operator, env={"COLUMNS": "300"})
    assert human.exit_code == 0 and "needs: safe mode" in human.stdout and "safe mode" in human.stdout
    token = (trk.data / "dashboard.token").read_text().strip()
    board = requests.get(trk.url + "/v1/dashboard/overview", headers={"Authorization": f"Bearer {token}"},
                         timeout=30).json()
    (shown,) = [d for d in board["devices"] if d["device_id"] == "cam-safe"]
    assert board["counts"]["safe_mode"] == 1 and board["counts"]["no_firmware"] == 0
    assert "safe_mode" in shown["status"] and shown["components"][0]["needs"] == "safe_mode"
    if any(ro["header_hash"] == rel.hh and ro["state"] == "halted" for ro in trk.get("/v1/rollouts")):
        trk.retry(rel.hh)  # the failed download halted the rollout: an administrator resumes it

    res = update(cam, trk, servers=(srv.url,))
    assert res.exit_code == 0, res.output + res.stderr
    (r,) = json.loads(res.stdout)["results"]
    assert (r["component"], r["version"], r["outcome"]) == ("main-fw", "1.1.0", "confirmed")
    st = _component(cam, "main-fw")
    assert (st["safe_mode"], st["mode"], st["version"]) == (False, "normal", "1.1.0")
    assert _image(cam, "main-fw") == rel.image
    row = next(d for d in trk.get("/v1/devices") if d["device_id"] == "cam-safe")
    assert row["components"]["main-fw"]["version"] == "1.1.0" and "needs" not in row["components"]["main-fw"]
    assert row["firmware"] == []
    lists = trk.get("/v1/outdated")
    assert lists["safe_mode"] == [] and "cam-safe" in lists["up_to_date"]


def test_a_factory_image_for_a_board_is_verified_for_the_board(chain: Chain, registry: Registry,
                                                             tmp_path: Path) -> None:
    """Appendix II at provisioning: a verified factory image (``device init --factory``) of a component
    on an add-on board is proven for the board's class and decrypted with the board's key; the same
    bundle for a component of the device's own class is ``wrong_hardware``."""
    world = DeviceWorld.create(chain.w3, registry, {"acme": chain.vendor}, tmp_path / "world")
    rel = world.release("sensor-fw", "1.0.0", hardware=(OTHER_HW,), size=5_000)
    board = {"sensor": ComponentBinding("sensor-fw", "acme", OTHER_HW)}
    img = verified_factory_image(world.anchors, HW, world.class_keys[HW].private_bytes_raw(), board, "sensor",
                                 rel.path, world.evidence(rel.record, hw=OTHER_HW),
                                 board_keys={OTHER_HW: world.class_keys[OTHER_HW].private_bytes_raw()})
    assert (img.data, img.version, img.verified) == (rel.image, "1.0.0", True)
    with pytest.raises(UpdateRefused) as err:
        verified_factory_image(world.anchors, HW, world.class_keys[HW].private_bytes_raw(),
                               {"sensor": ComponentBinding("sensor-fw", "acme")}, "sensor", rel.path,
                               world.evidence(rel.record))
    assert err.value.code == "wrong_hardware"
