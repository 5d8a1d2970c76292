"""Operators steer rollouts (issue 15; docs/MODULES.md section 4): cancel, target, schedule, and a
halted rollout that says why and how to resume.

The world is :mod:`tests.integration.test_rollout`'s (embedded chain, main-fw 1.0.0 then 1.1.0,
ten devices placed in the three waves, the tracker app in this process on a free port). Devices
are real secp256k1 keys signing real heartbeats and results over HTTP; the operator uses the
real CLI (``fwledger tracker rollout ...``, ``fleet admit``) against the tracker. The schedule
test injects the tracker's clock (``Tracker(clock=...)``) instead of waiting for hours.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from entities.status_tracker.daemon import Tracker
from entities.status_tracker.rollout import bucket, wave_of
from tests.integration import test_rollout as rollout_world
from tests.integration.test_rollout import WAVE_KEY, WAVES, Device, enrolled, fleet, rollout
from tests.integration.test_tracker import ADMIN, Operator, Running, World, code, key

world, start = rollout_world.world, rollout_world.start  # the fixtures of that world, reused here


def flat(text: str) -> str:
    """CLI text with its line wrapping undone."""
    return " ".join(text.split())


def held(trk: Running, dev: Device) -> list[tuple[str, str]]:
    return [(h["reason"], h["message"]) for h in trk.ok(trk.get(f"/v1/devices/{dev.device_id}/plan", dev.account))["held"]]


def first_cycle(trk: Running, tracker: Tracker, world: World) -> None:
    trk.wait_block(world.block())
    trk.wait(lambda: tracker._resolver is not None and tracker._assessed_generation == tracker._generation,
             "first cycle done")


# ============================================================================= cancel


def test_a_cancelled_rollout_issues_no_further_command_and_is_never_revived(
        world: World, start: Callable[..., tuple[Running, Tracker]], tmp_path: Path) -> None:
    """Cancel: terminal. The canary still holding its command has it superseded (not re-sent,
    not to act on), no device gets a command for the release, a plan-following device is held
    back with who cancelled and why; every later action is refused ``rollout_cancelled``; a
    device needing the release later and a whole-fleet assessment do not revive it (a completed
    rollout would run again). It stays listed with who cancelled it, when and why."""
    trk, tracker, devs, hh, _rec, first = enrolled(world, start, tmp_path / "tracker")
    done, waiting = [d for d in devs if d.wave == 0]
    trk.ok(done.report(trk, first[done.device_id][0]["command"]["command_id"], hh))
    pending_cmd = first[waiting.device_id][0]["command"]["command_id"]
    op = Operator(tmp_path, trk)

    ro = op.ok("tracker", "rollout", "cancel", "1", "--reason", "sensor regression in 1.1.0")
    assert ro["state"] == "cancelled"
    assert {k: ro["cancelled"][k] for k in ("by", "reason")} == {"by": ADMIN.address,
                                                                   "reason": "sensor regression in 1.1.0"}
    assert ro["cancelled"]["at"] > 0
    cmds = {c["command_id"]: c for c in tracker.inventory.commands(waiting.device_id)}
    assert cmds[pending_cmd]["superseded"] and not cmds[pending_cmd]["reported"]
    for d in devs:
        assert d.beat(trk) == [], d.device_id  # nothing issued, nothing re-sent
    [(reason, message)] = held(trk, waiting)
    assert reason == "rollout_cancelled"
    assert message == f"rollout 1 was cancelled by {ADMIN.address}: sensor regression in 1.1.0"

    for action in ("resume", "advance", "halt", "retry", "cancel"):
        resp = trk.post(f"/v1/rollouts/1/{action}", {}, ADMIN)
        assert (resp.status_code, code(resp)) == (409, "rollout_cancelled"), action
    assert "rollout_cancelled" in op.refused("tracker", "rollout", "target", "1", "--all")

    # never revived: a new device needing the release, then a whole-fleet assessment
    late = Device("cam-late", key(0xA1), 0)
    assert late.beat(trk) == []
    assert [r for r, _ in held(trk, late)] == ["rollout_cancelled"]
    tracker.assess(tracker.inventory.devices(), "T9.d", whole_fleet=True)
    ro = rollout(trk)
    assert (ro["state"], ro["devices"], ro["succeeded"]) == ("cancelled", 10, 1)
    assert "cam-late" not in {m["device_id"] for m in ro["members"]}
    assert all(d.beat(trk) == [] for d in devs)

    listed = op.run("tracker", "rollout", "list")
    assert listed.exit_code == 0, listed.output
    assert f"cancelled by {ADMIN.address}: sensor regression in 1.1.0" in flat(listed.stdout)
    log = [e["detail"] for e in tracker.inventory.communications(kind="rollout")]
    assert log[0]["action"] == "cancel" and log[0]["superseded"] == 1 and log[0]["by"] == ADMIN.address


# ============================================================================= target


def test_a_targeted_rollout_updates_only_the_devices_it_covers(
        world: World, start: Callable[..., tuple[Running, Tracker]], tmp_path: Path) -> None:
    """Target by admission labels (``fleet admit --label group=pilot``), created before any
    device needs the release: only the pilot group gets commands; the others are held "not
    targeted by rollout 1". Re-targeting to a device list drops a pilot still waiting (its
    command superseded) and enrols the listed device; ``--all`` takes everyone in."""
    hh = "0x" + world.publish("main-fw", "1.1.0").header_hash.hex()
    devs = fleet(hh)
    trk, tracker = start(tmp_path / "tracker", admission="required", operator_keys=(ADMIN.address,))
    first_cycle(trk, tracker, world)
    op = Operator(tmp_path, trk)
    pilots = {devs[0].device_id, devs[3].device_id, devs[7].device_id}  # one per wave
    for d in devs:
        group = "pilot" if d.device_id in pilots else "main"
        out = op.ok("fleet", "admit", d.device_id, "--key", d.account.address, "--hardware", "cam-r1",
                    "--label", f"group={group}", "--service", trk.url, tracker=False)
        assert out["services"][trk.url]["applied"] == 1

    ro = op.ok("tracker", "rollout", "create", hh, "--label", "group=pilot", "--waves", "1")
    assert (ro["id"], ro["product"], ro["to_version"], ro["state"]) == (1, "main-fw", "1.1.0", "running")
    assert (ro["target"]["kind"], ro["target"]["labels"], ro["settings"]["waves"]) == ("labels", {"group": ["pilot"]},
                                                                                        [1.0])
    assert "rollout_exists" in op.refused("tracker", "rollout", "create", hh)

    got = {d.device_id: d.beat(trk) for d in devs}
    assert {i for i, cmds in got.items() if cmds} == pilots
    main = [d for d in devs if d.device_id not in pilots]
    assert held(trk, main[0]) == [("not_targeted", "not targeted by rollout 1 (devices labelled group=pilot)")]
    ro = rollout(trk)
    assert (ro["devices"], ro["commanded"]) == (3, 3)

    p_done, p_wait = (d for d in devs if d.device_id in pilots and d.device_id != devs[7].device_id)
    trk.ok(p_done.report(trk, got[p_done.device_id][0]["command"]["command_id"], hh))
    ro = op.ok("tracker", "rollout", "target", "1", "--device", main[0].device_id, "--device", p_done.device_id)
    assert ro["target"]["devices"] == sorted([main[0].device_id, p_done.device_id])
    members = {m["device_id"]: m["state"] for m in ro["members"]}
    assert members == {p_done.device_id: "succeeded", main[0].device_id: "needed"}
    assert p_wait.beat(trk) == [] and [r for r, _ in held(trk, p_wait)] == ["not_targeted"]
    superseded = {c["command_id"]: c["superseded"] for c in tracker.inventory.commands(p_wait.device_id)}
    assert superseded[got[p_wait.device_id][0]["command"]["command_id"]]
    (env,) = main[0].beat(trk)
    assert [u["header_hash"] for u in env["command"]["upgrades"]] == [hh]
    assert main[1].beat(trk) == []

    ro = op.ok("tracker", "rollout", "target", "1", "--all")
    assert (ro["target"]["kind"], ro["devices"]) == ("all", 10)
    assert all(len(d.beat(trk)) == 1 for d in devs if d is not p_done)

    # bad input: a usage error, or a one-line refusal; the target stays
    assert op.run("tracker", "rollout", "target", "1", "--all", "--device", "x", "--json").exit_code == 2
    assert op.run("tracker", "rollout", "target", "1", "--json").exit_code == 2
    assert "bad_target" in op.refused("tracker", "rollout", "target", "1", "--label", "Group")
    assert "bad_target" in op.refused("tracker", "rollout", "target", "1", "--device", "no/such")
    assert rollout(trk)["target"]["kind"] == "all"


# ============================================================================= schedule (injected clock)


def test_a_scheduled_rollout_issues_nothing_before_its_start_or_outside_its_window(
        world: World, start: Callable[..., tuple[Running, Tracker]], tmp_path: Path) -> None:
    """Start 01:30 UTC, window 02:00-04:00 UTC, on the tracker's injected clock: nothing at
    01:00 (held "not started"), nothing at 01:45 (outside the window), a command at 02:30;
    nothing at 05:00, not even the outstanding command again; the next day at 02:10 the other
    canary gets its command. Clearing the schedule lets commands go at any time."""
    day = datetime(2027, 1, 4, tzinfo=UTC).timestamp()
    now = [day + 3600]
    hh = "0x" + world.publish("main-fw", "1.1.0").header_hash.hex()
    devs = fleet(hh)
    trk, tracker = start(tmp_path / "tracker", clock=lambda: now[0], command_ttl=86400)
    first_cycle(trk, tracker, world)
    op = Operator(tmp_path, trk)
    ro = op.ok("tracker", "rollout", "create", hh, "--start", "2027-01-04T01:30:00Z", "--window", "02:00-04:00")
    assert ro["schedule"] == {"start_at": day + 5400, "start": "2027-01-04T01:30:00Z", "windows": ["02:00-04:00"]}
    a, b = (d for d in devs if d.wave == 0)

    assert [d.beat(trk) for d in devs] == [[]] * 10
    assert held(trk, a) == [("not_started", "rollout 1: the rollout starts at 2027-01-04T01:30:00Z")]
    now[0] = day + 6300  # 01:45
    assert a.beat(trk) == []
    assert held(trk, a) == [("outside_window", "rollout 1: outside the maintenance window 02:00-04:00 UTC")]
    now[0] = day + 9000  # 02:30
    (env,) = a.beat(trk)
    assert (env["command"]["wave"], env["command"]["issued_at"]) == (0, int(day + 9000))
    assert held(trk, a) == []
    now[0] = day + 5 * 3600  # 05:00
    assert a.beat(trk) == [] and b.beat(trk) == []
    now[0] = day + 86400 + 2 * 3600 + 600  # the next day, 02:10
    (env_b,) = b.beat(trk)

    shown = op.run("tracker", "rollout", "show", "1")
    assert "schedule: starts 2027-01-04T01:30:00Z; windows 02:00-04:00 UTC" in flat(shown.stdout), shown.output
    assert op.run("tracker", "rollout", "schedule", "1", "--window", "25:00-26:00", "--json").exit_code == 2
    now[0] = day + 86400 + 5 * 3600  # 05:00 again: outside; then the schedule is cleared
    assert b.beat(trk) == []
    ro = op.ok("tracker", "rollout", "schedule", "1")
    assert ro["schedule"]["windows"] == [] and ro["schedule"]["start"] is None
    assert b.beat(trk) == [env_b]  # its outstanding command is sent again now
    trk.wait(lambda: rollout(trk)["waves"][0]["silent"] == 1, "a's command (a day's TTL) expired on the clock")
    (again,) = a.beat(trk)
    assert again["command"]["command_id"] != env["command"]["command_id"]


# ============================================================================= halt reasons


def test_a_halted_rollout_says_why_and_how_to_resume(
        world: World, start: Callable[..., tuple[Running, Tracker]], tmp_path: Path) -> None:
    """A failed canary crosses the threshold: the rollout keeps which wave, how many failed of
    how many, the codes and the exact resume command, in the API, ``rollout show`` and the
    plan's ``held`` message; an operator's halt keeps who and why; resuming clears it."""
    trk, _tracker, devs, hh, _rec, first = enrolled(world, start, tmp_path / "tracker")
    bad, other = (d for d in devs if d.wave == 0)
    trk.ok(bad.report(trk, first[bad.device_id][0]["command"]["command_id"], hh, ok=False))
    halt = rollout(trk)["halt"]
    assert {k: halt[k] for k in ("by", "wave", "failed", "reported", "codes", "resume")} == {
        "by": "threshold", "wave": 0, "failed": 1, "reported": 1, "codes": {"trial_boot_failed": 1},
        "resume": "fwledger tracker rollout resume 1"}
    assert halt["message"].startswith("failure threshold crossed in wave 0: 1 of 1 reported updates failed")
    [(reason, message)] = held(trk, other)
    assert reason == "rollout_halted" and message.endswith("resume: fwledger tracker rollout resume 1")

    op = Operator(tmp_path, trk)
    shown = op.run("tracker", "rollout", "show", "1")
    assert shown.exit_code == 0, shown.output
    assert "halted: failure threshold crossed in wave 0" in flat(shown.stdout)
    assert "(codes: trial_boot_failed x1)" in flat(shown.stdout)
    assert "to resume: fwledger tracker rollout resume 1" in flat(shown.stdout)
    assert op.ok("tracker", "rollout", "list")[0]["halt"]["codes"] == {"trial_boot_failed": 1}

    assert op.ok("tracker", "rollout", "resume", "1")["halt"] is None
    ro = op.ok("tracker", "rollout", "halt", "1", "--reason", "maintenance freeze")
    assert (ro["halt"]["by"], ro["halt"]["message"]) == (ADMIN.address, f"halted by {ADMIN.address}: maintenance freeze")
    assert ro["halt"]["resume"] == "fwledger tracker rollout resume 1"


# ============================================================================= the canary of a small fleet


def test_three_devices_none_in_the_ten_percent_canary_still_get_a_canary(
        world: World, start: Callable[..., tuple[Running, Tracker]], tmp_path: Path) -> None:
    """With three devices a 10 % first wave usually holds none; it used to open the next waves at
    once, as if a canary had passed. Now the rollout's next automatic decision (here: no device
    joined for ``rollout_settle``) moves the device of the lowest bucket into wave 0: it alone
    gets a command; the others wait for its result."""
    hh = "0x" + world.publish("main-fw", "1.1.0").header_hash.hex()
    ids = [f"cam-{i:04d}" for i in range(10_000) if wave_of(hh, f"cam-{i:04d}", WAVES, WAVE_KEY) > 0][:3]
    devs = [Device(d, key(0xB0 + i), 1) for i, d in enumerate(ids)]
    trk, tracker = start(tmp_path / "tracker", rollout_settle=1)
    first_cycle(trk, tracker, world)
    assert all(d.beat(trk) == [] for d in devs)  # lone heartbeats: no wave opens, no canary picked
    trk.wait(lambda: rollout(trk)["waves"][0]["devices"] == 1, "the rollout took a canary")
    canary = min(ids, key=lambda d: bucket(hh, d, WAVE_KEY))
    ro = rollout(trk)
    assert (ro["open_wave"], ro["waves"][0]["devices"], ro["waves"][0]["status"]) == (0, 1, "open")
    assert {m["device_id"] for m in ro["members"] if m["wave"] == 0} == {canary}
    got = {d.device_id: d.beat(trk) for d in devs}
    assert {i for i, c in got.items() if c} == {canary}
    dev = next(d for d in devs if d.device_id == canary)
    out = trk.ok(dev.report(trk, got[canary][0]["command"]["command_id"], hh))
    nxt = min(m["wave"] for m in ro["members"] if m["device_id"] != canary)
    assert out["rollouts"] == [{"id": 1, "state": "running", "wave": nxt}]  # its success opens the next wave
