"""The operator's path at the status tracker: a device's update history and device labels.

The world is :mod:`tests.integration.test_rollout`'s (embedded chain, main-fw 1.0.0 then 1.1.0,
its ten devices placed in the three waves; the tracker app in this process, uvicorn in a
thread), here with device admission required and the administrator as the operator. Devices are
real secp256k1 keys signing real heartbeats and results; the operator uses the real CLI
(``fleet admit|label``, ``tracker devices|history``) against the tracker over HTTP, and the
dashboard's JSON with its token. Nothing is mocked.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import requests

from entities.status_tracker.daemon import Tracker
from tests.integration import test_rollout as rollout_world
from tests.integration.test_rollout import Device, fleet, rollout
from tests.integration.test_tracker import ADMIN, Operator, Running, World, code, heartbeat, key

world, start = rollout_world.world, rollout_world.start  # the fixtures of that world, reused here

CONFIRM = {"ok": True, "code": None, "message": "version 1.1.0 confirmed in slot B", "component": "main-fw",
           "version": "1.1.0"}
REVERT = {"ok": False, "code": "too_many_boot_attempts", "message": "version 1.1.0 used 3 of 3 trial boots",
          "component": "main-fw", "version": "1.1.0"}


def log_rows(trk: Running) -> int:
    return int(trk.rows("SELECT COUNT(*) FROM log")[0][0])


def setup(world: World, start: Callable[..., tuple[Running, Tracker]], tmp: Path
          ) -> tuple[Running, Tracker, Operator, list[Device], str]:
    """main-fw 1.1.0 published; a tracker requiring admission (the administrator operates it);
    the ten devices admitted by the CLI (the canary group=pilot, the others group=main, all
    region=eu-west), then registering on 1.0.0."""
    hh = "0x" + world.publish("main-fw", "1.1.0").header_hash.hex()
    devs = fleet(hh)
    trk, tracker = start(tmp / "tracker", admission="required", operator_keys=(ADMIN.address,))
    trk.wait_block(world.block())
    trk.wait(lambda: tracker._resolver is not None and tracker._assessed_generation == tracker._generation,
             "first cycle done")
    op = Operator(tmp, trk)
    for d in devs:
        group = "pilot" if d.wave == 0 else "main"
        out = op.ok("fleet", "admit", d.device_id, "--key", d.account.address, "--hardware", "cam-r1",
                    "--label", "region=eu-west", "--label", f"group={group}", "--service", trk.url, tracker=False)
        assert out["services"][trk.url]["applied"] == 1
    return trk, tracker, op, devs, hh


def test_a_devices_history_tells_its_update_from_admission_to_trial(
        world: World, start: Callable[..., tuple[Running, Tracker]], tmp_path: Path) -> None:
    """History: admitted, registered, update needed, the command (product, versions, rollout,
    wave), installed, the version change and the trial confirmed; the heartbeats after it summed
    up in one entry; its standing in the rollout. A failed canary shows failed and rolled back
    with the device's code. The same through the CLI and the dashboard's JSON."""
    trk, tracker, op, devs, hh = setup(world, start, tmp_path)
    good, bad = [d for d in devs if d.wave == 0]
    envs = {d.device_id: d.beat(trk) for d in devs}
    for d in (good, bad):
        cid = envs[d.device_id][0]["command"]["command_id"]
        trk.ok(d.report(trk, cid, hh, ok=d is good))
    good.version = "1.1.0"
    for _ in range(4):  # the device runs 1.1.0 and confirmed it, then heartbeats as usual
        trk.ok(heartbeat(trk, good.account, good.device_id, {"main-fw": "1.1.0"},
                         last_result={**CONFIRM, "at": 1000.0}))
    trk.ok(heartbeat(trk, bad.account, bad.device_id, {"main-fw": "1.0.0"}, last_result={**REVERT, "at": 1001.0}))

    h = trk.ok(trk.get(f"/v1/devices/{good.device_id}/history"))
    events = [e["event"] for e in h["entries"]]
    assert events == ["heartbeats", "trial_confirmed", "version_changed", "installed", "command_issued",
                      "update_needed", "registered", "admitted"], events
    assert h["entries"][0]["count"] == 3 and h["entries"][0]["until"] >= h["entries"][0]["at"]
    by = {e["event"]: e for e in h["entries"]}
    cid = envs[good.device_id][0]["command"]["command_id"]
    assert {k: by["command_issued"][k] for k in ("product", "from_version", "to_version", "rollout", "wave",
                                                   "command_id")} == {
        "product": "main-fw", "from_version": "1.0.0", "to_version": "1.1.0", "rollout": 1, "wave": 0,
        "command_id": cid}
    assert (by["installed"]["to_version"], by["installed"]["rollout"], by["installed"]["code"]) == ("1.1.0", 1, None)
    assert (by["version_changed"]["from_version"], by["version_changed"]["to_version"]) == ("1.0.0", "1.1.0")
    assert "group=pilot" in by["admitted"]["detail"] and "region=eu-west" in by["admitted"]["detail"]
    assert h["complete"] is True
    assert [(r["rollout"], r["header_hash"], r["wave"], r["state"]) for r in h["rollouts"]] == [
        (1, hh, 0, "succeeded")]
    assert [e["event"] for e in trk.ok(trk.get(f"/v1/devices/{good.device_id}/history?limit=2"))["entries"]] == \
        ["heartbeats", "trial_confirmed"]

    hb = trk.ok(trk.get(f"/v1/devices/{bad.device_id}/history"))
    failed = [(e["event"], e["code"]) for e in hb["entries"] if e["event"] in ("failed", "rolled_back")]
    assert failed == [("rolled_back", "too_many_boot_attempts"), ("failed", "trial_boot_failed")]
    assert [(r["state"], r["code"]) for r in hb["rollouts"]] == [("failed", "trial_boot_failed")]

    # the CLI: JSON is the route's answer; the table names the events and versions
    assert op.ok("tracker", "history", good.device_id)["entries"] == h["entries"]
    res = op.run("tracker", "history", bad.device_id, "--limit", "20")
    assert res.exit_code == 0, res.output
    assert "rolled_back" in res.stdout and "too_many_boot_attempts" in res.stdout and "rollout #1" in res.stdout
    # the dashboard's device page JSON (the operator's token) carries the history and labels
    token = (trk.data / "dashboard.token").read_text().strip()
    page = requests.get(f"{trk.url}/v1/dashboard/devices/{good.device_id}", timeout=30,
                        headers={"Authorization": f"Bearer {token}"})
    assert page.status_code == 200, page.text
    assert [e["event"] for e in page.json()["history"]["entries"]] == events
    assert page.json()["labels"] == {"group": "pilot", "region": "eu-west"}


def test_history_is_for_the_operator_only_and_reading_it_records_nothing(
        world: World, start: Callable[..., tuple[Running, Tracker]], tmp_path: Path) -> None:
    """Unsigned: 401; signed by the device itself or a stranger: 403; no log row is added by any
    of them; an unknown device is 404 and the CLI says so in one line (exit 1)."""
    trk, _tracker, op, devs, _hh = setup(world, start, tmp_path)
    dev = devs[0]
    dev.beat(trk)
    path = f"/v1/devices/{dev.device_id}/history"
    before = log_rows(trk)
    unsigned = trk.get(path, None)
    assert (unsigned.status_code, code(unsigned)) == (401, "unsigned")
    for signer in (dev.account, key(0x99)):
        resp = trk.get(path, signer)
        assert (resp.status_code, code(resp)) == (403, "forbidden"), resp.text
    assert log_rows(trk) == before
    missing = trk.get("/v1/devices/no-such-device/history")
    assert (missing.status_code, code(missing)) == (404, "unknown_device")
    assert trk.get(path + "?limit=0").status_code == 422
    res = op.run("tracker", "history", "no-such-device")
    assert res.exit_code == 1 and "unknown_device" in res.stderr and res.stderr.count("\n") == 1
    assert log_rows(trk) == before


def test_labels_are_changed_by_a_new_signed_admission_and_filter_the_devices(
        world: World, start: Callable[..., tuple[Running, Tracker]], tmp_path: Path) -> None:
    """``fleet label --set/--unset`` signs the device's admission again (a higher serial that
    supersedes the old record at the tracker), keeping the other labels; ``tracker devices``
    shows labels and filters on them; the dashboard's overview rows carry them. Bad label input
    is refused in one line and changes nothing."""
    trk, _tracker, op, devs, _hh = setup(world, start, tmp_path)
    for d in devs:
        d.beat(trk)
    pilots = sorted(d.device_id for d in devs if d.wave == 0)
    rows = op.ok("tracker", "devices", "--label", "group=pilot")
    assert sorted(r["device_id"] for r in rows) == pilots
    assert all(r["labels"] == {"group": "pilot", "region": "eu-west"} for r in rows)
    assert len(op.ok("tracker", "devices", "--label", "region=eu-west")) == 10

    moved = next(d for d in devs if d.wave == 2)
    old_serial = op.ok("fleet", "list", tracker=False)
    old = {r["device_id"]: r["serial"] for r in old_serial}[moved.device_id]
    out = op.ok("fleet", "label", moved.device_id, "--set", "group=pilot", "--set", "site=lab-2", "--unset", "region",
                "--service", trk.url, tracker=False)
    (rec,) = out["records"]
    assert rec["labels"] == {"group": "pilot", "site": "lab-2"} and rec["serial"] > old
    assert out["services"][trk.url]["applied"] == 1
    held = {a["device_id"]: a for a in trk.ok(trk.get("/v1/admissions"))["admissions"]}
    assert held[moved.device_id]["labels"] == {"group": "pilot", "site": "lab-2"}
    rows = op.ok("tracker", "devices", "--label", "group=pilot")
    assert sorted(r["device_id"] for r in rows) == sorted([*pilots, moved.device_id])
    assert op.ok("tracker", "devices", "--label", "group=pilot", "--label", "site=lab-2")[0]["device_id"] == \
        moved.device_id
    table = op.run("tracker", "devices", "--label", "site=lab-2")
    assert table.exit_code == 0 and "site=lab" in table.stdout and moved.device_id in table.stdout
    # the history tells the relabelling
    hist = trk.ok(trk.get(f"/v1/devices/{moved.device_id}/history"))["entries"]
    relabel = next(e for e in hist if e["event"] == "relabelled")
    assert "site=lab-2" in relabel["detail"] and "region=eu-west" in relabel["detail"]
    # the same labels again: nothing signed, exit 0
    same = op.ok("fleet", "label", moved.device_id, "--set", "site=lab-2", "--service", trk.url, tracker=False)
    assert same["changed"] is False and same["records"] == []
    # bad input: usage errors exit 2, refusals exit 1, one line; the copy and the tracker unchanged
    copy_before = (op.home / "fleet" / "admissions.json").read_text()
    for args, exit_code in ((["fleet", "label", moved.device_id], 2),
                            (["fleet", "label", moved.device_id, "--set", "Bad Name=x"], 2),
                            (["fleet", "label", moved.device_id, "--set", "a=1", "--unset", "a"], 2),
                            (["fleet", "label", "not-admitted", "--set", "a=1"], 1)):
        res = op.run(*args, "--service", trk.url, tracker=False)
        assert res.exit_code == exit_code, (args, res.output)
        if exit_code == 1:
            assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1
    assert (op.home / "fleet" / "admissions.json").read_text() == copy_before
    res = op.run("tracker", "devices", "--label", "nope")
    assert res.exit_code == 2
    bad = trk.get("/v1/devices?label=nope")
    assert (bad.status_code, code(bad)) == (422, "bad_labels")
    # the dashboard's device rows carry the labels
    token = (trk.data / "dashboard.token").read_text().strip()
    overview = requests.get(f"{trk.url}/v1/dashboard/overview", timeout=30,
                            headers={"Authorization": f"Bearer {token}"}).json()
    shown = {r["device_id"]: r["labels"] for r in overview["devices"]}
    assert shown[moved.device_id] == {"group": "pilot", "site": "lab-2"} and len(shown) == 10
    assert rollout(trk)["devices"] == 10  # relabelling left the device in its rollout
