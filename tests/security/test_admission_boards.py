"""Add-on boards under required admission (X.1368 Appendix II, P4, C11.3 d), against real processes.

The firmware server (``fwledger server run``) and the tracker's server module (``fwledger tracker
run``) require admission (the world of :mod:`tests.security.test_admission`, on anvil). A board is a
hardware class of its own on the ledger (``sens-b1``, with its X25519 class key); the device class's
policy forbids ``sensor-fw``, the board's allows 1.x only. Two devices carry the board (provisioned
with it and a component on it, as ``fwledger device init --addon`` makes them) and update with
``fwledger device update --tracker --server`` (a real process). The one whose admission lists the
board (``fleet admit --addon``) installs the board's firmware under the board's policy; the one that
only declares it is refused ``board_not_admitted`` by both services, and nothing is served to it
or installed, until the operator lists the board (``fleet relabel --addon``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from entities.firmware_consumer import read_status
from entities.firmware_consumer.provision import (
    AddonBoard,
    ComponentBinding,
    anchors_from_deployment,
    load_provisioning,
    provision_device,
)
from ledger_node.compiler import registry_contract
from ledger_node.record import Version
from tests.integration import test_deployments as deployments
from tests.integration.procs import Proc, wait_for
from tests.integration.test_deployments import ADMIN, HW_A, MAIN, World, set_waves
from tests.security.test_admission import code, fleet, operator_get, services
from tests.security.world import factory_image

anvil_rpc, world = deployments.anvil_rpc, deployments.world  # the deployment tests' fixtures: one test world

BOARD, SENSOR = "sens-b1", "sensor-fw"


def _board(world: World) -> None:
    """The board's class on the ledger, and the policies: the device class never gets sensor-fw,
    the board gets 1.x."""
    world.ledger.add_hardware(BOARD, 1)  # its name-derived key, kept by the shared world
    world.registry.set_policy(BOARD, "acme", SENSOR, allowed=True, max_version=Version(1, 0xFFFF, 0xFFFF))
    world.registry.set_policy(HW_A, "acme", SENSOR, allowed=False)


def _provision(world: World, name: str, tracker: str) -> tuple[Path, Any]:
    """A class-A device with main-fw 1.0.0 and an empty ``sensor`` component on the board."""
    root = world.tmp / "devices" / name
    anchors = anchors_from_deployment(world.registry.deployment, registry_contract(), trackers=[tracker], quorum=1,
                                      max_header_age=600)
    provision_device(root, device_id=name, hardware=HW_A,
                     components={MAIN: ComponentBinding(MAIN, "acme"), "sensor": ComponentBinding(SENSOR, "acme", BOARD)},
                     anchors=anchors, class_private_key=world.class_keys[HW_A].private_bytes_raw(),
                     factory={MAIN: factory_image(MAIN, "1.0.0")}, health_command=["true"],
                     addons=[AddonBoard(BOARD, 1)], addon_keys={BOARD: world.class_keys[BOARD].private_bytes_raw()})
    return root, load_provisioning(root).identity


def _sensor(root: Path) -> dict[str, Any]:
    return next(c for c in read_status(root)["components"] if c["name"] == "sensor")


def _update(world: World, root: Path, srv: Proc, trk: Proc) -> Any:
    return world.fwledger("device", "update", "--dir", str(root), "--tracker", str(trk.url), "--server", str(srv.url),
                          "--json", timeout=120)


def test_a_board_is_served_only_when_the_admission_lists_it(world: World) -> None:
    _board(world)
    set_waves(world, [1.0])  # one wave: every device is planned at once
    srv, trk = services(world)
    urls = ("--service", str(srv.url), "--service", str(trk.url))
    listed, listed_key = _provision(world, "dev-listed", trk.address)
    declared, declared_key = _provision(world, "dev-declared", trk.address)

    # bad --addon input: one line, exit 2, nothing signed
    bad = world.fwledger("fleet", "admit", "dev-x", "--key", listed_key.address, "--hardware", HW_A,
                         "--addon", "sens b1", *urls)
    assert bad.returncode == 2 and "--addon" in bad.stderr and "not a hardware class id" in bad.stderr, bad.stderr
    assert not (world.home / "fleet" / "admissions.json").exists()
    out = fleet(world, "admit", "dev-listed", "--key", listed_key.address, "--hardware", HW_A, "--addon", BOARD, *urls)
    assert out["records"][0]["addons"] == [BOARD] and all(r["applied"] == 1 for r in out["services"].values()), out
    out = fleet(world, "admit", "dev-declared", "--key", declared_key.address, "--hardware", HW_A, *urls)
    assert "addons" not in out["records"][0]
    assert [(r["device_id"], r["addons"]) for r in fleet(world, "list")] == [("dev-declared", []),
                                                                              ("dev-listed", [BOARD])]

    good = world.publish(srv, SENSOR, "1.1.0", hardware=(BOARD,), size=30_000)
    over = world.publish(srv, SENSOR, "2.0.0", hardware=(BOARD,), size=20_000)  # above the board's policy
    block = int(world.w3.eth.block_number)
    wait_for(lambda: min(trk.health().get("ledger_block") or -1, srv.health().get("ledger_block") or -1) >= block,
             60, "both services indexed the releases")

    # the admitted board: planned, served and installed under the board's policy (1.1.0, not 2.0.0)
    res = _update(world, listed, srv, trk)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert [(u["product"], u["to_version"]) for u in report["plan"]] == [(SENSOR, "1.1.0")], res.stdout
    sensor = _sensor(listed)
    assert sensor["version"] == "1.1.0"
    slot = listed / "components" / "sensor" / f"slot_{sensor['confirmed']}"
    assert slot.read_bytes() == (world.tmp / f"acme-{SENSOR}-1.1.0.img").read_bytes()  # decrypted with the board's key
    row = trk.signed("GET", "/v1/devices/dev-listed", ADMIN)
    assert row["addons"] == {BOARD: [SENSOR]}
    plan = trk.signed("GET", "/v1/devices/dev-listed/plan", ADMIN)["plan"]
    (blocked,) = [b for b in plan["blocked"] if b["product"] == SENSOR]
    why = {v["version"]: [r["kind"] for r in v["reasons"]] for v in blocked["verdicts"]}
    assert blocked["hardware_class"] == BOARD and "policy-range" in why["2.0.0"], why
    listed_header = srv.request("GET", f"/v1/images/{over.header_hash}/header", listed_key)
    assert (listed_header.status_code, code(listed_header)) == (403, "policy_denied")

    # the self-declared board: refused by the tracker and the server, nothing served or installed
    before = _sensor(declared)
    res = _update(world, declared, srv, trk)
    assert res.returncode == 1 and "board_not_admitted" in res.stderr, res.stdout + res.stderr
    assert res.stderr.strip().count("\n") == 0
    reg = srv.request("POST", "/v1/devices", declared_key, {"device_id": "dev-declared", "hardware": HW_A,
                                                            "addons": [BOARD]})
    assert (reg.status_code, code(reg)) == (403, "board_not_admitted"), reg.text
    assert BOARD in reg.json()["error"]["message"]
    header = srv.request("GET", f"/v1/images/{good.header_hash}/header", declared_key)
    assert (header.status_code, code(header)) == (403, "hardware_not_supported"), header.text
    payload = srv.request("GET", f"/v1/images/{good.header_hash}", declared_key)
    assert (payload.status_code, code(payload)) == (403, "hardware_not_supported"), payload.text
    assert _sensor(declared) == before and before["version"] is None
    assert "dev-declared" not in [d["device_id"] for d in trk.signed("GET", "/v1/devices", ADMIN)]
    history = trk.signed("GET", "/v1/devices/dev-declared/history", ADMIN)["entries"]
    assert any(e["event"] == "admission_refused" and e["code"] == "board_not_admitted" and BOARD in e["detail"]
               for e in history), history
    assert [d["device_id"] for d in operator_get(srv, world, "/v1/devices")] == ["dev-listed"]
    downloads = operator_get(srv, world, "/v1/downloads")
    assert {(d["outcome"], d["code"]) for d in downloads if d["address"] == declared_key.address} == \
        {("refused", "hardware_not_supported")}
    assert {(d["outcome"], d["code"]) for d in downloads if d["address"] == listed_key.address} >= \
        {("served", None), ("refused", "policy_denied")}

    # the operator lists the board: the same device now gets it
    out = fleet(world, "relabel", "dev-declared", "--addon", BOARD, *urls)
    assert out["records"][0]["addons"] == [BOARD]
    res = _update(world, declared, srv, trk)
    assert res.returncode == 0, res.stdout + res.stderr
    assert _sensor(declared)["version"] == "1.1.0"
