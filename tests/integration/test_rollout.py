"""Signed update commands and rollouts in waves at the server module (docs/MODULES.md sections 2-4).

On the embedded chain, with the tracker app in this process (uvicorn in a thread): a fleet of
ten simulated devices, each a real secp256k1 key signing real heartbeats and results over HTTP.
No device installs anything here; a device's side is its verification of the command
(:func:`entities.protocol.commands.verify_command`) and its signed report. The fleet's ids are chosen so
that each wave of the release has devices (buckets are a pure function of release and id).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from eth_account.signers.local import LocalAccount

from entities.cli import cli
from entities.protocol.commands import CommandError, CommandLog, sign_command, verify_command
from entities.status_tracker.app import TrackerThread, create_app
from entities.status_tracker.config import TrackerConfig
from entities.status_tracker.daemon import Tracker, wave_key_of
from entities.status_tracker.rollout import wave_of
from tests.integration.test_tracker import ADMIN, Running, World, code, heartbeat, key
from tests.world import embedded_world

WAVES = (0.1, 0.5, 1.0)
PER_WAVE = (2, 3, 5)
TRACKER = key(0x70)  # every tracker of this module runs with this identity, so waves are predictable here
WAVE_KEY = wave_key_of(TRACKER)


@pytest.fixture
def world() -> World:
    """A fresh embedded chain and registry: vendor acme, hardware class cam-r1, main-fw 1.0.0."""
    return embedded_world()


@pytest.fixture
def start(world: World) -> Iterator[Callable[[Path], tuple[Running, Tracker]]]:
    """Start a tracker on ``data`` (stopped at the end of the test; stopping closes it); ``clock``:
    the tracker's clock (seconds since the epoch), the other keywords its settings."""
    running: list[Running] = []

    def make(data: Path, clock: Callable[[], float] = time.time, **over: Any) -> tuple[Running, Tracker]:
        data.mkdir(parents=True, exist_ok=True)
        (data / "tracker.key").write_text(TRACKER.key.hex().removeprefix("0x"))  # its wave key: WAVE_KEY
        cfg = TrackerConfig(**{"data_dir": data, "poll_interval": 0.05, "admission": "open", "admin_keys": (ADMIN.address,),
                               "waves": WAVES, "halt_failure_rate": 0.25, "halt_min_failures": 1, "command_ttl": 600,
                               **over})
        tracker = Tracker(cfg, world.chain.w3, world.registry.deployment, clock=clock)
        thread = TrackerThread(create_app(tracker)).start()
        trk = Running(thread.url, data, thread.stop, thread.stop).up()
        running.append(trk)
        return trk, tracker

    yield make
    for trk in running:
        trk.stop()


@dataclass
class Device:
    device_id: str
    account: LocalAccount
    wave: int
    version: str = "1.0.0"

    def beat(self, trk: Running) -> list[dict[str, Any]]:
        answer = trk.ok(heartbeat(trk, self.account, self.device_id, {"main-fw": self.version}))
        return list(answer["commands"])

    def report(self, trk: Running, command_id: str, hh: str, ok: bool = True, *,
               signer: LocalAccount | None = None) -> Any:
        body = {"command_id": command_id, "results": [
            {"header_hash": hh, "product": "main-fw", "to_version": "1.1.0", "ok": ok,
             "code": None if ok else "trial_boot_failed", "message": None if ok else "watchdog reset"}]}
        return trk.post(f"/v1/devices/{self.device_id}/results", body, signer or self.account)


def fleet(hh: str) -> list[Device]:
    """Ten devices: two in the canary wave, three in the second, five in the last."""
    want = list(PER_WAVE)
    out: list[Device] = []
    for i in range(10_000):
        dev_id = f"cam-{i:04d}"
        w = wave_of(hh, dev_id, WAVES, WAVE_KEY)
        if want[w]:
            want[w] -= 1
            out.append(Device(dev_id, key(0x80 + len(out)), w))
        if not any(want):
            return out
    raise AssertionError("no fleet")


def rollout(trk: Running, rid: int = 1) -> dict[str, Any]:
    return trk.ok(trk.get(f"/v1/rollouts/{rid}"))  # type: ignore[no-any-return]


def check(world: World, trk: Running, dev: Device, env: dict[str, Any], **over: Any) -> Any:
    """The device's own checks of a command envelope."""
    kw: dict[str, Any] = {"issuers": [trk.address], "device_id": dev.device_id, "device_address": dev.account.address,
                          "chain_id": world.chain.w3.eth.chain_id, "registry": world.registry.address,
                          "now": time.time()}
    kw.update(over)
    return verify_command(env, **kw)


def enrolled(world: World, start: Callable[[Path], tuple[Running, Tracker]], data: Path
             ) -> tuple[Running, Tracker, list[Device], str, Any, dict[str, list[dict[str, Any]]]]:
    """main-fw 1.1.0 published, a tracker, then the fleet registering on 1.0.0 one device at a
    time (each one's heartbeat enrols it in the rollout: a lone heartbeat never opens a wave).
    Returns the commands each device got in answer to its first heartbeat."""
    rec = world.publish("main-fw", "1.1.0")
    hh = "0x" + rec.header_hash.hex()
    devs = fleet(hh)
    trk, tracker = start(data)
    trk.wait_block(world.block())
    # the first cycle (catalog built, empty fleet assessed) is over before the fleet registers
    trk.wait(lambda: tracker._resolver is not None and tracker._assessed_generation == tracker._generation,
             "first cycle done")
    first = {d.device_id: d.beat(trk) for d in devs}
    assert rollout(trk)["devices"] == 10
    return trk, tracker, devs, hh, rec, first


# ============================================================================= waves to completion


def test_commands_go_to_the_canary_first_and_widen_wave_by_wave_across_a_restart(
        world: World, start: Callable[[Path], tuple[Running, Tracker]], tmp_path: Path) -> None:
    """P2-P5 / R10.e.i / docs/MODULES.md 3-4: only the canary wave gets signed commands; its
    successes open the next wave, and so on until every device got one and the rollout
    completes. Forged, unknown and duplicate results are refused with their codes. A restart
    (close, new instance on the same data folder) keeps the rollout and re-sends the outstanding
    commands as they were."""
    data = tmp_path / "tracker"
    trk, tracker, devs, hh, rec, first = enrolled(world, start, data)
    ro = rollout(trk)
    assert (ro["state"], ro["open_wave"], ro["header_hash"], ro["to_version"]) == ("running", 0, hh, "1.1.0")
    assert [(w["wave"], w["devices"]) for w in ro["waves"]] == [(0, 2), (1, 3), (2, 5)]
    assert tracker.rollouts()[0]["waves"][0] == {"wave": 0, "share": 0.1, "devices": 2, "needed": 0, "commanded": 2,
                                                 "succeeded": 0, "failed": 0, "silent": 0, "open": True,
                                                 "reported": 0, "status": "open"}

    sent: dict[str, dict[str, Any]] = {}
    for d in devs:
        cmds = first[d.device_id]
        assert len(cmds) == (1 if d.wave == 0 else 0), (d.device_id, d.wave)
        if cmds:
            cmd = check(world, trk, d, cmds[0])
            assert cmd.issuer == trk.address and cmd.device_address == d.account.address
            assert (cmd.rollout, cmd.wave) == (1, 0) and cmd.block >= world.block() - 1
            [up] = cmd.upgrades
            assert (up.header_hash, up.from_version, up.to_version, up.link) == (hh, "1.0.0", "1.1.0",
                                                                                  rec.data.file_link)
            sent[d.device_id] = cmds[0]
    canary = [d for d in devs if d.wave == 0]
    assert set(sent) == {d.device_id for d in canary}
    assert canary[0].beat(trk) == [sent[canary[0].device_id]]  # outstanding: re-sent as is
    assert rollout(trk)["waves"][0]["commanded"] == 2

    # refusals, each logged
    cid = sent[canary[0].device_id]["command"]["command_id"]
    forged = canary[0].report(trk, cid, hh, signer=canary[1].account)
    assert (forged.status_code, code(forged)) == (403, "forbidden")
    unknown = canary[0].report(trk, "0" * 32, hh)
    assert (unknown.status_code, code(unknown)) == (404, "unknown_command")
    other = canary[1].report(trk, cid, hh)  # another device's command
    assert (other.status_code, code(other)) == (404, "unknown_command")
    wrong = canary[0].report(trk, cid, "0x" + "cd" * 32)
    assert (wrong.status_code, code(wrong)) == (422, "result_mismatch")

    first = trk.ok(canary[0].report(trk, cid, hh))
    assert first == {"recorded": 1, "rollouts": [{"id": 1, "state": "running", "wave": 0}]}
    dup = canary[0].report(trk, cid, hh)
    assert (dup.status_code, code(dup)) == (409, "already_reported")
    second = trk.ok(canary[1].report(trk, sent[canary[1].device_id]["command"]["command_id"], hh))
    assert second["rollouts"] == [{"id": 1, "state": "running", "wave": 1}]
    detail = trk.ok(trk.get(f"/v1/devices/{canary[0].device_id}"))
    assert detail["last_result"]["ok"] and detail["last_result"]["version"] == "1.1.0"
    kinds = [e["kind"] for e in detail["log"]]
    assert "command_issued" in kinds and "results" in kinds and "results_refused" in kinds

    wave1 = [d for d in devs if d.wave == 1]
    for d in devs:
        cmds = d.beat(trk)
        assert len(cmds) == (1 if d.wave == 1 else 0)  # the canary reported: nothing more for it
        if cmds:
            sent[d.device_id] = cmds[0]

    # restart: close the tracker, a new instance on the same data folder
    trk.stop()
    trk, tracker = start(data)
    trk.wait_block(world.block())
    trk.wait(lambda: trk.get(f"/v1/devices/{devs[0].device_id}/plan").status_code == 200, "catalog rebuilt")
    ro = rollout(trk)
    assert (ro["state"], ro["open_wave"], ro["commanded"], ro["succeeded"]) == ("running", 1, 3, 2)
    for d in wave1:
        assert d.beat(trk) == [sent[d.device_id]]  # the same command id, the same signature
        trk.ok(d.report(trk, sent[d.device_id]["command"]["command_id"], hh))
    assert rollout(trk)["open_wave"] == 2
    last = [d for d in devs if d.wave == 2]
    for d in last:
        [env] = d.beat(trk)
        assert check(world, trk, d, env).wave == 2
        out = trk.ok(d.report(trk, env["command"]["command_id"], hh))
    assert out["rollouts"] == [{"id": 1, "state": "completed", "wave": 2}]
    ro = rollout(trk)
    assert (ro["state"], ro["succeeded"], ro["failed"], ro["devices"], ro["reported"]) == ("completed", 10, 0, 10, 10)
    # a completed rollout reads as done, wave by wave (its waves used to read "open", progress "n/0")
    assert [(w["status"], w["open"], w["reported"], w["devices"]) for w in ro["waves"]] == [
        ("done", False, 2, 2), ("done", False, 3, 3), ("done", False, 5, 5)]
    assert all(m["state"] == "succeeded" for m in ro["members"])
    # the devices now run 1.1.0: up to date, no command
    for d in devs:
        d.version = "1.1.0"
        assert d.beat(trk) == []
    done = trk.ok(trk.get("/v1/rollouts"))
    assert [r["state"] for r in done] == ["completed"]


# ============================================================================= halting


def test_a_failure_above_the_threshold_halts_the_rollout_until_an_administrator_resumes(
        world: World, start: Callable[[Path], tuple[Running, Tracker]], tmp_path: Path) -> None:
    """docs/MODULES.md 4: one failed canary out of one reported is above 25 %: the rollout halts
    and no command is issued or re-sent; only an administrator (T9.c key) resumes it, which
    acknowledges the failure; manual advance and halt work and are refused when they do not
    apply."""
    trk, tracker, devs, hh, _rec, first = enrolled(world, start, tmp_path / "tracker")
    canary = [d for d in devs if d.wave == 0]
    envs = {d.device_id: first[d.device_id][0] for d in canary}
    failed = trk.ok(canary[0].report(trk, envs[canary[0].device_id]["command"]["command_id"], hh, ok=False))
    assert failed["rollouts"] == [{"id": 1, "state": "halted", "wave": 0}]
    assert trk.ok(trk.get(f"/v1/devices/{canary[0].device_id}"))["last_result"]["code"] == "trial_boot_failed"
    for d in devs:
        assert d.beat(trk) == [], d.device_id  # halted: nothing issued, nothing re-sent
    # ... and a device following the plan is held back too (section 4)
    held = trk.ok(trk.get(f"/v1/devices/{canary[1].device_id}/plan", canary[1].account))["held"]
    assert [(h["header_hash"], h["reason"], h["state"]) for h in held] == [(hh, "rollout_halted", "halted")]
    ro = rollout(trk)
    assert (ro["state"], ro["failed"]) == ("halted", 1)
    assert [m["code"] for m in ro["members"] if m["state"] == "failed"] == ["trial_boot_failed"]

    # only an administrator acts on a rollout; each refusal has its code
    path = "/v1/rollouts/1/resume"
    assert code(trk.post(path, {}, canary[1].account)) == "forbidden"
    assert code(trk.get("/v1/rollouts", canary[1].account)) == "forbidden"
    assert trk.post("/v1/rollouts/1/advance", {}, ADMIN).status_code == 409
    assert code(trk.post("/v1/rollouts/7/halt", {}, ADMIN)) == "unknown_rollout"
    assert trk.post("/v1/rollouts/1/explode", {}, ADMIN).status_code == 422
    resumed = trk.ok(trk.post(path, {}, ADMIN))
    assert (resumed["state"], resumed["open_wave"], resumed["acknowledged"]) == ("running", 0,
                                                                                {"failed": 1, "reported": 1})
    assert code(trk.post(path, {}, ADMIN)) == "rollout_not_halted"
    # the other canary still has its command (re-sent as is); its success opens the next wave
    assert canary[1].beat(trk) == [envs[canary[1].device_id]]
    assert canary[0].beat(trk) == []  # a failed device is not commanded again by this rollout
    held = trk.ok(trk.get(f"/v1/devices/{canary[0].device_id}/plan", canary[0].account))["held"]
    assert [(h["reason"], h["device_state"]) for h in held] == [("not_waiting", "failed")]
    assert trk.ok(trk.get(f"/v1/devices/{canary[1].device_id}/plan", canary[1].account))["held"] == []
    ok = trk.ok(canary[1].report(trk, envs[canary[1].device_id]["command"]["command_id"], hh))
    assert ok["rollouts"] == [{"id": 1, "state": "running", "wave": 1}]
    advanced = trk.ok(trk.post("/v1/rollouts/1/advance", {}, ADMIN))
    assert advanced["open_wave"] == 2
    assert all(len(d.beat(trk)) == 1 for d in devs if d.wave == 2)
    # the command line: fwledger tracker rollout list|show|halt|resume|advance --json
    keyfile = tmp_path / "admin.key"
    keyfile.write_text(ADMIN.key.hex())
    base = ["--home", str(tmp_path / "cli-home"), "--key-file", str(keyfile), "tracker", "rollout"]
    tail = ["--tracker", trk.url, "--tracker-key", trk.address, "--json"]
    runner = CliRunner()
    res = runner.invoke(cli, [*base, "list", *tail])
    assert res.exit_code == 0, res.output
    assert [(r["id"], r["open_wave"]) for r in json.loads(res.stdout)] == [(1, 2)]
    res = runner.invoke(cli, [*base, "show", "1", *tail])
    assert res.exit_code == 0 and len(json.loads(res.stdout)["members"]) == 10
    res = runner.invoke(cli, [*base, "advance", "1", *tail])
    assert res.exit_code == 1 and "rollout_fully_open" in res.stderr and res.stderr.count("\n") == 1
    res = runner.invoke(cli, [*base, "halt", "1", *tail])
    assert res.exit_code == 0 and json.loads(res.stdout)["state"] == "halted"
    assert all(d.beat(trk) == [] for d in devs)
    log = [e["detail"] for e in tracker.inventory.communications(kind="rollout")]
    assert [e["action"] for e in reversed(log)] == ["create", "halt", "resume", "advance", "advance", "halt"]
    assert log[0]["by"] == ADMIN.address
    refused = tracker.inventory.communications(kind="rollout_refused")
    assert {e["detail"]["code"] for e in refused} >= {"rollout_halted", "unknown_rollout", "rollout_not_halted",
                                                      "rollout_fully_open"}
    # retry: the failed canary is needed again (commanded anew), its failure acknowledged, the
    # halted rollout runs again; with no failed device left a retry is refused
    res = runner.invoke(cli, [*base, "retry", "1", *tail])
    assert res.exit_code == 0, res.output
    ro = json.loads(res.stdout)
    assert (ro["state"], ro["failed"]) == ("running", 0)
    assert [m["state"] for m in ro["members"] if m["device_id"] == canary[0].device_id] == ["needed"]
    (again,) = canary[0].beat(trk)
    assert again["command"]["command_id"] != envs[canary[0].device_id]["command"]["command_id"]
    assert code(trk.post("/v1/rollouts/1/retry", {}, ADMIN)) == "rollout_no_failures"
    assert code(trk.post("/v1/rollouts/1/retry", {}, canary[0].account)) == "forbidden"


# ============================================================================= the device's checks


def test_a_device_refuses_forged_altered_expired_and_replayed_commands(
        world: World, start: Callable[[Path], tuple[Running, Tracker]], tmp_path: Path) -> None:
    """docs/MODULES.md 1-2 (C11.2.d): end to end, a command is only as good as the server
    module's signature: another key, any altered field, an expired or replayed command are
    refused by the device with the exact code."""
    trk, _tracker, devs, _hh, _rec, first = enrolled(world, start, tmp_path / "tracker")
    dev = next(d for d in devs if d.wave == 0)
    [env] = first[dev.device_id]
    cmd = check(world, trk, dev, env)

    def refused(e: Any, **over: Any) -> str:
        with pytest.raises(CommandError) as exc:
            check(world, trk, dev, e, **over)
        return exc.value.code

    impostor = key(0xEE)
    forged = sign_command(impostor, {**env["command"], "issuer": impostor.address})
    assert refused(forged) == "command_unknown_issuer"
    assert refused({**forged, "command": env["command"]}) == "command_bad_signature"
    for field, value in (("block", 1), ("device_id", "cam-9999"), ("expires_at", cmd.expires_at + 60)):
        assert refused({**env, "command": {**env["command"], field: value}}) == "command_bad_signature"
    link = {**env["command"], "upgrades": [{**env["command"]["upgrades"][0], "link": "http://127.0.0.1:9/evil.bin"}]}
    assert refused({**env, "command": link}) == "command_bad_signature"
    assert refused(env, device_id=devs[-1].device_id) == "command_wrong_device"
    assert refused(env, now=cmd.expires_at + 121) == "command_expired"
    log = CommandLog(tmp_path / "device" / "agent" / "commands.json")
    log.accept(check(world, trk, dev, env, seen=log.seen))
    assert refused(env, seen=CommandLog(log.path).seen) == "command_replayed"


# ============================================================================= two releases, two rollouts


def test_a_plan_of_two_releases_is_commanded_as_far_as_each_rollout_admits(
        world: World, start: Callable[[Path], tuple[Running, Tracker]], tmp_path: Path) -> None:
    """The driver needs main-fw 1.1.0; each release has its own rollout and waves. A device in
    main-fw's canary but in the driver's last wave gets main-fw alone; a device in the driver's
    canary but in main-fw's last wave gets nothing (the driver's dependency is not admitted yet),
    so neither rollout waits on the other's waves (they used to: a whole-plan-or-nothing rule)."""
    world.publish("sensor-drv", "0.9.0")
    main = "0x" + world.publish("main-fw", "1.1.0").header_hash.hex()
    drv = "0x" + world.publish("sensor-drv", "1.0.0", deps=("main-fw>=1.1.0",)).header_hash.hex()
    a = next(f"cam-{i:04d}" for i in range(10_000)
             if wave_of(main, f"cam-{i:04d}", WAVES, WAVE_KEY) == 0 and wave_of(drv, f"cam-{i:04d}", WAVES, WAVE_KEY) == 2)
    b = next(f"cam-{i:04d}" for i in range(10_000)
             if wave_of(main, f"cam-{i:04d}", WAVES, WAVE_KEY) == 2 and wave_of(drv, f"cam-{i:04d}", WAVES, WAVE_KEY) == 0)
    trk, tracker = start(tmp_path / "t")
    trk.wait_block(world.block())
    trk.wait(lambda: tracker._resolver is not None and tracker._assessed_generation == tracker._generation,
             "first cycle done")
    comps = {"main-fw": "1.0.0", "sensor-drv": "0.9.0"}
    got_a = trk.ok(heartbeat(trk, key(0x91), a, comps))["commands"]
    got_b = trk.ok(heartbeat(trk, key(0x92), b, comps))["commands"]
    (env,) = got_a
    assert [u["header_hash"] for u in env["command"]["upgrades"]] == [main]
    assert got_b == []
    # the plan a device follows holds back the same: b's whole plan, a's driver (section 4)
    plan_b = trk.ok(trk.get(f"/v1/devices/{b}/plan", key(0x92)))
    assert [u["header_hash"] for u in plan_b["plan"]["upgrades"]] == [main, drv]
    assert [(h["header_hash"], h["reason"], h.get("wave"), h.get("open_wave")) for h in plan_b["held"]] == [
        (main, "wave_not_open", 2, 0), (drv, "dependency_held", 0, 0)]
    plan_a = trk.ok(trk.get(f"/v1/devices/{a}/plan", key(0x91)))
    assert [(h["header_hash"], h["reason"]) for h in plan_a["held"]] == [(drv, "wave_not_open")]
    keyfile = tmp_path / "admin.key"
    keyfile.write_text(ADMIN.key.hex())
    res = CliRunner().invoke(cli, ["--home", str(tmp_path / "cli-home"), "--key-file", str(keyfile), "tracker", "plan",
                                   b, "--tracker", trk.url, "--tracker-key", trk.address])
    assert res.exit_code == 0, res.output
    assert "main-fw 1.0.0 -> 1.1.0 (held: wave not open, rollout" in res.stdout
    assert "(held: dependency held" in res.stdout
    # a reports main-fw done: it is then in the driver's rollout only, whose wave 2 is not open
    body = {"command_id": env["command"]["command_id"], "results": [
        {"header_hash": main, "product": "main-fw", "to_version": "1.1.0", "ok": True, "code": None,
         "message": None}]}
    trk.ok(trk.post(f"/v1/devices/{a}/results", body, key(0x91)))
    again = trk.ok(heartbeat(trk, key(0x91), a, {"main-fw": "1.1.0", "sensor-drv": "0.9.0"}))["commands"]
    assert again == []
    plan_a = trk.ok(trk.get(f"/v1/devices/{a}/plan", ADMIN))
    assert [u["header_hash"] for u in plan_a["plan"]["upgrades"]] == [drv]
    assert [(h["reason"], h["wave"], h["open_wave"]) for h in plan_a["held"]] == [("wave_not_open", 2, 0)]


def test_an_empty_canary_takes_a_device_once_no_device_joined_for_rollout_settle(
        world: World, start: Callable[..., tuple[Running, Tracker]], tmp_path: Path) -> None:
    """docs/MODULES.md 4: a device registering after the release was assessed creates its rollout
    alone (a lone heartbeat never opens a wave nor picks a canary); the device is in the last
    wave and the canary wave is empty. No device joins for ``rollout_settle`` seconds: the
    tracker's round would open the waves past the empty canary; instead the device moves into
    wave 0 (a non-empty fleet never passes its canary without one: it used to) and its next
    heartbeat brings its command, as the canary."""
    hh = "0x" + world.publish("main-fw", "1.1.0").header_hash.hex()
    dev = next(f"cam-{i:04d}" for i in range(10_000) if wave_of(hh, f"cam-{i:04d}", WAVES, WAVE_KEY) == 2)
    trk, tracker = start(tmp_path / "t", rollout_settle=1)
    trk.wait_block(world.block())
    trk.wait(lambda: tracker._resolver is not None and tracker._assessed_generation == tracker._generation,
             "first cycle done")
    assert trk.ok(heartbeat(trk, key(0x93), dev, {"main-fw": "1.0.0"}))["commands"] == []
    ro = rollout(trk)
    assert (ro["state"], ro["open_wave"], ro["devices"]) == ("running", 0, 1)
    assert [w["status"] for w in ro["waves"]] == ["empty", "empty", "waiting"]
    trk.wait(lambda: rollout(trk)["waves"][0]["devices"] == 1, "the quiet rollout took a canary")
    ro = rollout(trk)
    assert (ro["open_wave"], [m["wave"] for m in ro["members"]]) == (0, [0])
    (env,) = trk.ok(heartbeat(trk, key(0x93), dev, {"main-fw": "1.0.0"}))["commands"]
    assert (env["command"]["wave"], [u["header_hash"] for u in env["command"]["upgrades"]]) == (0, [hh])
    (canary,) = [e["detail"] for e in tracker.inventory.communications(kind="rollout")
                 if e["detail"]["action"] == "canary"]
    assert canary["device_id"] == dev


# ============================================================================= an offline device


def test_a_command_expired_unanswered_lets_the_wave_go_on_and_is_reissued_later(
        world: World, tmp_path: Path) -> None:
    """docs/MODULES.md 4: a canary device takes its command and goes offline. When the command
    expires (TTL 2 s here) the device falls silent: the canary wave counts as settled once the
    other canary reported, the next wave opens, and the silent device, back, gets a new command."""
    rec = world.publish("main-fw", "1.1.0")
    hh = "0x" + rec.header_hash.hex()
    devs = fleet(hh)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "tracker.key").write_text(TRACKER.key.hex().removeprefix("0x"))
    cfg = TrackerConfig(data_dir=tmp_path / "t", poll_interval=0.05, admission="open", admin_keys=(ADMIN.address,),
                        waves=WAVES, halt_failure_rate=0.25, halt_min_failures=1, command_ttl=2)
    tracker = Tracker(cfg, world.chain.w3, world.registry.deployment)
    thread = TrackerThread(create_app(tracker)).start()
    trk = Running(thread.url, tmp_path / "t", thread.stop, thread.stop).up()
    try:
        trk.wait_block(world.block())
        trk.wait(lambda: tracker._resolver is not None and tracker._assessed_generation == tracker._generation,
                 "first cycle done")
        first = {d.device_id: d.beat(trk) for d in devs}
        on, off = [d for d in devs if d.wave == 0]
        (env_on,), (env_off,) = first[on.device_id], first[off.device_id]
        trk.ok(on.report(trk, env_on["command"]["command_id"], hh))
        assert rollout(trk)["open_wave"] == 0  # the offline canary holds wave 0 while its command lives
        trk.wait(lambda: rollout(trk)["open_wave"] == 1, "wave 1 opened after the silent canary's command expired")
        ro = rollout(trk)
        assert (ro["state"], ro["waves"][0]["silent"], ro["waves"][0]["succeeded"], ro["failed"]) == (
            "running", 1, 1, 0)
        again = off.beat(trk)  # back online: a new command, not the expired one
        assert len(again) == 1 and again[0]["command"]["command_id"] != env_off["command"]["command_id"]
        trk.ok(off.report(trk, again[0]["command"]["command_id"], hh))
        assert rollout(trk)["waves"][0]["silent"] == 0
        log = trk.rows("SELECT kind FROM log WHERE device_id = ? AND kind = 'command_expired'", (off.device_id,))
        assert len(log) == 1
    finally:
        trk.stop()
