"""Operators steer rollouts (issue 15): the pure decisions of :mod:`entities.status_tracker.rollout`
(targets, maintenance windows and start times, cancel, halt reasons, how a wave reads, the
canary of a small fleet), then the same through the SQLite inventory
(:mod:`entities.status_tracker.rollout_store`): cancel supersedes, re-targeting, a rollout
created before its release is indexed, the schedule in the gate.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from entities.status_tracker.inventory import Inventory, TrackerRefusal
from entities.status_tracker.rollout import (
    RolloutError,
    RolloutSettings,
    Schedule,
    Target,
    WaveCounts,
    Window,
    admits,
    bucket,
    canary_wanted,
    decide,
    manual,
    wave_of,
    wave_status,
)
from tests.unit.test_rollout import HH, S, _assess, _fleet, _hb, _issue, counts

DAY = datetime(2027, 1, 4, tzinfo=UTC).timestamp()


def at(hhmm: str, day: int = 0) -> float:
    h, m = hhmm.split(":")
    return DAY + day * 86400 + int(h) * 3600 + int(m) * 60


# ============================================================================= targets


def test_a_target_selects_by_labels_by_ids_or_takes_everyone() -> None:
    assert Target().kind == "all" and Target().matches("any", {})
    t = Target.parse(["group=pilot", "region=eu-west", "region=eu-north"])
    assert t.kind == "labels" and t.to_json()["labels"] == {"group": ["pilot"], "region": ["eu-north", "eu-west"]}
    assert t.matches("d", {"group": "pilot", "region": "eu-north"})
    assert not t.matches("d", {"group": "pilot"})                       # every name must match
    assert not t.matches("d", {"group": "main", "region": "eu-west"})
    assert t.describe() == "devices labelled group=pilot and region=eu-north|eu-west"
    ids = Target.parse(devices=["dev-02", "dev-01", "dev-02"])
    assert (ids.kind, ids.devices, ids.describe()) == ("devices", ("dev-01", "dev-02"), "2 listed device(s)")
    assert ids.matches("dev-01", {}) and not ids.matches("dev-03", {"group": "pilot"})
    assert Target.from_json(t.to_json()) == t and Target.from_json(None) == Target()
    assert Target.parse({"group": ["pilot", "beta"]}).to_json()["labels"] == {"group": ["beta", "pilot"]}


@pytest.mark.parametrize(("labels", "devices"), [
    (["group"], []), (["Group=pilot"], []), (["group=pi lot"], []), (["group=pilot"], ["dev-01"]),
    ([], ["no/such"]), ([], [""]), ([f"l{i}=v" for i in range(17)], []),
])
def test_a_malformed_target_is_refused_bad_target(labels: list[str], devices: list[str]) -> None:
    with pytest.raises(RolloutError) as exc:
        Target.parse(labels, devices)
    assert exc.value.code == "bad_target"


# ============================================================================= schedules


def test_windows_are_daily_utc_and_may_wrap_midnight() -> None:
    w = Window.parse("02:00-04:00")
    assert [w.contains(at(t)) for t in ("01:59", "02:00", "03:59", "04:00")] == [False, True, True, False]
    night = Window.parse("group=pilot@23:30-00:30")
    assert night.label == ("group", "pilot") and night.text() == "group=pilot@23:30-00:30"
    assert [night.contains(at(t)) for t in ("23:29", "23:30", "00:00", "00:29", "00:30")] == [
        False, True, True, True, False]
    for bad in ("2:00-04:00", "02:00-24:00", "02:00-02:00", "Group=x@01:00-02:00", "x"):
        with pytest.raises(RolloutError) as exc:
            Window.parse(bad)
        assert exc.value.code == "bad_schedule"


def test_a_schedule_blocks_before_its_start_and_outside_the_devices_window() -> None:
    s = Schedule.parse("2027-01-04T01:30:00Z", ["02:00-04:00", "group=pilot@01:00-02:00"])
    assert s.start_at == at("01:30")
    assert s.blocks(at("01:00"), {}) == ("not_started", "the rollout starts at 2027-01-04T01:30:00Z")
    assert s.blocks(at("01:45"), {}) == ("outside_window", "outside the maintenance window 02:00-04:00 UTC")
    assert s.blocks(at("01:45"), {"group": "pilot"}) is None           # the pilots' own window
    assert s.blocks(at("02:30"), {"group": "pilot"})[0] == "outside_window"  # type: ignore[index]
    assert s.blocks(at("02:30"), {"group": "main"}) is None
    assert s.blocks(at("03:00", day=1), {}) is None
    assert Schedule().blocks(0.0, {}) is None
    assert Schedule.from_json(s.to_json()) == s
    assert Schedule.parse("2027-01-04T02:30:00+01:00").start_at == at("01:30")  # an offset is honoured
    assert Schedule.parse("2027-01-04T01:30:00").start_at == at("01:30")        # none: UTC
    only_labelled = Schedule.parse(None, ["group=pilot@01:00-02:00"])
    assert only_labelled.blocks(at("12:00"), {"group": "main"}) is None  # no window for them: any time


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False), st.integers(0, 1439), st.integers(1, 1439))
def test_property_a_window_holds_its_own_minutes_only(now: float, start: int, length: int) -> None:
    end = (start + length) % 1440
    if end == start:
        return
    w = Window(start, end)
    t = datetime.fromtimestamp(now, UTC)
    minute = t.hour * 60 + t.minute
    assert w.contains(now) == ((minute - start) % 1440 < length)


def test_a_malformed_schedule_is_refused_bad_schedule() -> None:
    for start, windows in (("tomorrow", []), (True, []), (None, ["02-04"]), (None, ["01:00-02:00"] * 17)):
        with pytest.raises(RolloutError) as exc:
            Schedule.parse(start, windows)  # type: ignore[arg-type]
        assert exc.value.code == "bad_schedule"


# ============================================================================= cancel, halt reasons, waves


def test_cancel_is_terminal_and_refuses_every_later_action() -> None:
    c = counts((2, 2, 1, 0), (3, 0, 0, 0), (5, 0, 0, 0))
    for state in ("running", "halted", "completed"):
        d, base = manual(S, "cancel", state, 0, c, by="0xop", reason="bad build")
        assert (d.state, d.action, d.reason, base) == ("cancelled", "cancel", "cancelled by 0xop: bad build", (0, 0))
    for action in ("halt", "resume", "advance", "retry", "cancel"):
        with pytest.raises(RolloutError) as exc:
            manual(S, action, "cancelled", 0, c)
        assert exc.value.code == "rollout_cancelled"
    # never revived by the automatic step, even with devices pending (a completed one reopens)
    assert decide(S, "cancelled", 0, counts((2, 0, 0, 0))).state == "cancelled"
    assert decide(S, "completed", 2, counts((2, 0, 0, 0), (0, 0, 0, 0), (1, 0, 0, 0))).action == "reopen"
    assert not admits("cancelled", 2, 0) and admits("running", 2, 0)


def test_a_threshold_halt_says_which_wave_how_many_and_how_to_resume() -> None:
    d = decide(S, "running", 1, counts((2, 0, 2, 0), (3, 1, 0, 2)))
    assert (d.state, d.action) == ("halted", "halt")
    assert d.halt is not None and (d.halt.by, d.halt.wave, d.halt.failed, d.halt.reported) == ("threshold", 1, 2, 4)
    assert d.halt.message.startswith("failure threshold crossed in wave 1: 2 of 4 reported updates failed")
    j = d.halt.to_json(7)
    assert j["resume"] == "fwledger tracker rollout resume 7" and j["wave"] == 1
    h, _ = manual(S, "halt", "running", 0, counts((2, 0, 0, 0)), by="0xop", reason="freeze")
    assert h.halt is not None and (h.halt.by, h.halt.message) == ("0xop", "halted by 0xop: freeze")
    bare, _ = manual(S, "halt", "running", 0, counts((2, 0, 0, 0)))
    assert bare.reason == "halted by an administrator"


def test_a_rollout_with_no_device_yet_holds_instead_of_completing() -> None:
    d = decide(S, "running", 0, counts((0, 0, 0, 0), (0, 0, 0, 0), (0, 0, 0, 0)))
    assert (d.state, d.open_wave, d.action) == ("running", 0, "hold")


def test_how_a_wave_reads() -> None:
    def w(wave: int, devices: int, succeeded: int = 0, failed: int = 0, silent: int = 0) -> WaveCounts:
        return WaveCounts(wave, S.waves[wave], devices, 0, succeeded, failed, silent)

    assert wave_status("running", 0, w(0, 0)) == "empty"
    assert wave_status("running", 0, w(0, 2, 1)) == "open"
    assert wave_status("running", 1, w(0, 2, 1, 1)) == "done"
    assert wave_status("running", 0, w(1, 3)) == "waiting"
    assert wave_status("halted", 0, w(0, 2, 0, 1)) == "halted"
    assert wave_status("cancelled", 0, w(0, 2)) == "cancelled"
    assert wave_status("completed", 2, w(2, 5, 5)) == "done"
    assert wave_status("completed", 2, w(1, 0)) == "empty"


def test_a_canary_is_wanted_only_at_an_empty_wave_0_with_devices_pending_later() -> None:
    empty0 = [WaveCounts(0, 0.1), WaveCounts(1, 0.5, 1), WaveCounts(2, 1.0, 2)]
    assert canary_wanted("running", 0, empty0)
    assert not canary_wanted("running", 1, empty0)        # past the canary already (an operator advanced)
    assert not canary_wanted("halted", 0, empty0)
    assert not canary_wanted("running", 0, [WaveCounts(0, 0.1, 1), *empty0[1:]])
    assert not canary_wanted("running", 0, [WaveCounts(0, 0.1), WaveCounts(1, 0.5, 1, 0, 1)])  # nothing pending


# ============================================================================= through the inventory


def test_the_inventory_promotes_the_lowest_bucket_device_to_an_empty_canary(tmp_path: Path) -> None:
    inv = Inventory(tmp_path / "inv.sqlite")
    try:
        ids = [d for d in (f"dev-{i:03d}" for i in range(200)) if wave_of(HH, d, S.waves) > 0][:3]
        for d in ids:
            inv.record_heartbeat("0x" + "11" * 20, _hb(d), 1.0)
        _assess(inv, ids, advance=False)  # lone heartbeats: no canary picked yet
        assert inv.rollout(1)["waves"][0]["devices"] == 0  # type: ignore[index]
        _assess(inv, ids, advance=True)   # nothing new enrolled: no decision
        inv.settle_rollouts(1000.0, 10.0)  # the quiet rollout decides: a canary first
        ro = inv.rollout(1)
        assert ro is not None and ro["open_wave"] == 0
        canary = min(ids, key=lambda d: bucket(HH, d))
        assert [m["device_id"] for m in ro["members"] if m["wave"] == 0] == [canary]
        assert [g["admits"] for g in (inv.admission(d, [HH])[0] for d in ids)] == [d == canary for d in ids]
    finally:
        inv.close()


def test_cancel_supersedes_unreported_commands_and_keeps_who_when_why(tmp_path: Path) -> None:
    inv = Inventory(tmp_path / "inv.sqlite")
    try:
        ids = _fleet(inv, 30)
        _assess(inv, ids)
        canary = [d for d in ids if wave_of(HH, d, S.waves) == 0]
        for i, d in enumerate(canary):
            _issue(inv, d, f"{i:032x}")
        ro = inv.rollout_action(1, "cancel", 5.0, "0xop", "bad build")
        assert (ro["state"], ro["cancelled"]) == ("cancelled", {"by": "0xop", "at": 5.0, "reason": "bad build"})
        assert all(inv.outstanding_command(d, 10.0) is None for d in canary)
        assert all(c["superseded"] for d in canary for c in inv.commands(d))
        assert all(m["state"] == "needed" for m in ro["members"] if m["device_id"] in canary)
        assert [g["admits"] for g in (inv.admission(d, [HH])[0] for d in canary)] == [False] * len(canary)
        # a whole-fleet pass and a new device: the rollout stays cancelled and nobody joins
        inv.record_heartbeat("0x" + "22" * 20, _hb("late-1"), 6.0)
        _assess(inv, [*ids, "late-1"])
        ro = inv.rollout(1)
        assert ro is not None and (ro["state"], ro["devices"]) == ("cancelled", 30)
        with pytest.raises(TrackerRefusal) as exc:
            inv.steer_rollout(1, 7.0, "0xop", target=Target())
        assert exc.value.code == "rollout_cancelled"
        [entry] = [e["detail"] for e in inv.communications(kind="rollout") if e["detail"]["action"] == "cancel"]
        assert (entry["by"], entry["superseded"], entry["reason"]) == ("0xop", len(canary), "cancelled by 0xop: bad build")
    finally:
        inv.close()


def test_retargeting_drops_waiting_devices_left_out_and_enrols_those_taken_in(tmp_path: Path) -> None:
    inv = Inventory(tmp_path / "inv.sqlite")
    try:
        ids = _fleet(inv, 12)
        _assess(inv, ids)
        canary = [d for d in ids if wave_of(HH, d, S.waves) == 0]
        _issue(inv, canary[0], "a" * 32)
        keep = [ids[-1], ids[-2]]
        ro = inv.steer_rollout(1, 3.0, "0xop", target=Target.parse(devices=keep))
        assert sorted(m["device_id"] for m in ro["members"]) == sorted(keep)
        assert inv.outstanding_command(canary[0], 10.0) is None
        assert inv.admission(canary[0], [HH])[0]["targeted"] is False  # type: ignore[index]
        ro = inv.steer_rollout(1, 4.0, "0xop", target=Target())
        assert ro["devices"] == 12 and ro["target"]["kind"] == "all"
        # an unindexed release: created ahead with no product; the first enrolment names it
        created = inv.create_rollout("0x" + "cd" * 32, "", "", RolloutSettings((1.0,)), Target.parse(["group=x"]),
                                     Schedule.parse(None, ["02:00-03:00"]), 5.0, "0xop")
        assert (created["id"], created["product"], created["state"], created["devices"]) == (2, "", "running", 0)
        with pytest.raises(TrackerRefusal) as exc:
            inv.create_rollout(HH, "main-fw", "1.1.0", S, Target(), Schedule(), 5.0, "0xop")
        assert exc.value.code == "rollout_exists"
        inv.labels_of = lambda d: {"group": "x"} if d == ids[0] else {}
        _assess(inv, ids, hh="0x" + "cd" * 32)
        ro2 = inv.rollout(2)
        assert ro2 is not None and (ro2["product"], ro2["to_version"]) == ("main-fw", "1.1.0")
        assert [m["device_id"] for m in ro2["members"]] == [ids[0]]
        [g] = inv.admission(ids[0], ["0x" + "cd" * 32], at("02:30"))
        assert g is not None and g["admits"] and g["blocked"] is None
        [g] = inv.admission(ids[0], ["0x" + "cd" * 32], at("04:00"))
        assert g is not None and not g["admits"] and g["blocked"][0] == "outside_window"
    finally:
        inv.close()
