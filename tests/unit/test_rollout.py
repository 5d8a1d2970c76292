"""Rollouts in waves (docs/MODULES.md section 4): the pure decisions, then the inventory's bookkeeping.

The canary share, widening wave by wave, halting above the failure threshold once there are
enough failures, an administrator's resume (acknowledging the failures so far) and manual
advance, and completion when every device succeeded. Then the same through the SQLite
inventory: enrolment on assessment, commands, results and their refusals, and a reopen.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entities.status_tracker.inventory import (
    INVENTORY_SCHEMA_VERSION,
    Assessment,
    HeartbeatIn,
    Inventory,
    ResultsIn,
    TrackerRefusal,
)
from entities.status_tracker.rollout import (
    RolloutError,
    RolloutSettings,
    WaveCounts,
    admits,
    bucket,
    decide,
    manual,
    result_state,
    wave_of,
)
from ledger_node.errors import ConfigError

S = RolloutSettings((0.1, 0.5, 1.0), 0.25, 1)
HH = "0x" + "ab" * 32


def counts(*waves: tuple[int, int, int, int]) -> list[WaveCounts]:
    """(devices, commanded, succeeded, failed) per wave."""
    return [WaveCounts(i, S.waves[i], *w) for i, w in enumerate(waves)]


# ============================================================================= buckets and waves


def test_bucket_is_the_contract_formula_and_stable() -> None:
    import hashlib

    expected = int(hashlib.sha256(f"{HH}:cam-1".encode()).hexdigest()[:8], 16) / 2**32
    assert bucket(HH, "cam-1") == expected == bucket(HH.upper().replace("0X", "0x"), "cam-1")
    assert 0 <= expected < 1
    assert wave_of(HH, "cam-1", S.waves) == next(i for i, w in enumerate(S.waves) if expected < w)


def test_canary_share_of_a_large_fleet() -> None:
    ids = [f"dev-{i}" for i in range(20_000)]
    waves = [wave_of(HH, d, S.waves) for d in ids]
    share0 = waves.count(0) / len(ids)
    share01 = (waves.count(0) + waves.count(1)) / len(ids)
    assert 0.09 < share0 < 0.11 and 0.48 < share01 < 0.52 and set(waves) == {0, 1, 2}
    # another release puts other devices in the canary
    other = [wave_of("0x" + "cd" * 32, d, S.waves) for d in ids[:2000]]
    assert other != waves[:2000]


@given(st.text(min_size=1, max_size=64), st.lists(st.floats(min_value=0.01, max_value=0.99), max_size=4))
@settings(max_examples=100, deadline=None)
def test_property_wave_is_the_first_whose_share_exceeds_the_bucket(device: str, cuts: list[float]) -> None:
    waves = (*sorted(set(cuts)), 1.0)
    w = wave_of(HH, device, waves)
    b = bucket(HH, device)
    assert b < waves[w] and (w == 0 or b >= waves[w - 1])


def test_settings_are_checked() -> None:
    for bad in ({"waves": (0.5, 0.4, 1.0)}, {"waves": (0.5,)}, {"waves": ()}, {"halt_failure_rate": 1.0},
                {"halt_min_failures": 0}):
        with pytest.raises(ConfigError):
            RolloutSettings(**{**S.to_json(), **bad})  # type: ignore[arg-type]
    assert RolloutSettings.from_json(S.to_json()) == S
    with pytest.raises(ConfigError):
        RolloutSettings.from_json({"waves": "x"})


# ============================================================================= automatic decisions


def test_the_canary_holds_until_every_device_reported() -> None:
    d = decide(S, "running", 0, counts((2, 1, 1, 0), (5, 0, 0, 0), (10, 0, 0, 0)))
    assert (d.state, d.open_wave, d.action) == ("running", 0, "hold")
    assert admits("running", 0, 0) and not admits("running", 0, 1)


def test_widening_wave_by_wave_then_complete() -> None:
    d = decide(S, "running", 0, counts((2, 0, 2, 0), (5, 0, 0, 0), (10, 0, 0, 0)))
    assert (d.state, d.open_wave, d.action) == ("running", 1, "advance")
    d = decide(S, "running", 1, counts((2, 0, 2, 0), (5, 0, 5, 0), (10, 0, 0, 0)))
    assert (d.state, d.open_wave) == ("running", 2)
    d = decide(S, "running", 2, counts((2, 0, 2, 0), (5, 0, 5, 0), (10, 0, 10, 0)))
    assert (d.state, d.open_wave, d.action) == ("completed", 2, "complete")
    assert admits("completed", 2, 2)


def test_a_rollout_where_every_device_succeeded_completes_even_over_empty_waves() -> None:
    d = decide(S, "running", 0, counts((1, 0, 1, 0), (0, 0, 0, 0), (0, 0, 0, 0)))
    assert (d.state, d.open_wave, d.action) == ("completed", 2, "advance")
    # empty waves are skipped up to the next one with devices waiting
    d = decide(S, "running", 0, counts((1, 0, 1, 0), (0, 0, 0, 0), (3, 0, 0, 0)))
    assert (d.state, d.open_wave) == ("running", 2)


def test_no_wave_opens_when_a_device_merely_joins() -> None:
    d = decide(S, "running", 0, counts((0, 0, 0, 0), (0, 0, 0, 0), (1, 0, 0, 0)), advance=False)
    assert (d.state, d.open_wave, d.action) == ("running", 0, "hold")


def test_halting_above_the_threshold_needs_the_minimum_failures() -> None:
    d = decide(S, "running", 1, counts((2, 0, 1, 1), (5, 3, 1, 0), (10, 0, 0, 0)))
    assert (d.state, d.open_wave, d.action) == ("halted", 1, "halt")  # 1/3 > 0.25
    assert not admits("halted", 1, 0)
    assert decide(S, "running", 1, counts((2, 0, 2, 0), (5, 0, 3, 1), (10, 0, 0, 0))).state == "running"  # 1/6
    three = RolloutSettings(S.waves, 0.25, 3)
    d = decide(three, "running", 0, counts((2, 0, 0, 2), (5, 0, 0, 0), (10, 0, 0, 0)))
    assert (d.state, d.open_wave) == ("running", 1)  # 2 failures < 3: still opens (rate only counts with 3)
    assert decide(three, "running", 1, counts((2, 0, 0, 2), (5, 0, 0, 1), (10, 0, 0, 0))).state == "halted"
    assert decide(S, "halted", 1, counts((2, 0, 2, 0), (5, 0, 5, 0), (10, 0, 0, 0))).action == "hold"


def test_resume_acknowledges_past_failures_and_halts_again_on_new_ones() -> None:
    halted = counts((2, 0, 1, 1), (5, 0, 0, 0), (10, 0, 0, 0))
    d, base = manual(S, "resume", "halted", 0, halted)
    assert base == (1, 2) and d.action == "resume" and (d.state, d.open_wave) == ("running", 1)
    # one more failure after the resume: 1 of 1 reported since then
    d = decide(S, "running", 1, counts((2, 0, 1, 1), (5, 2, 0, 1), (10, 0, 0, 0)), baseline=base)
    assert d.state == "halted"
    d = decide(S, "running", 1, counts((2, 0, 1, 1), (5, 0, 5, 0), (10, 0, 0, 0)), baseline=base)
    assert (d.state, d.open_wave) == ("running", 2)
    with pytest.raises(RolloutError) as exc:
        manual(S, "resume", "running", 0, halted)
    assert exc.value.code == "rollout_not_halted"


def test_manual_halt_and_advance() -> None:
    c = counts((2, 2, 0, 0), (5, 0, 0, 0), (10, 0, 0, 0))
    d, _ = manual(S, "advance", "running", 0, c)
    assert (d.state, d.open_wave, d.action) == ("running", 1, "advance")  # canary still pending: by hand only
    d, _ = manual(S, "halt", "running", 1, c)
    assert (d.state, d.open_wave) == ("halted", 1)
    for action, state, wave, code in (("advance", "halted", 1, "rollout_halted"),
                                      ("advance", "running", 2, "rollout_fully_open"),
                                      ("advance", "completed", 2, "rollout_completed"),
                                      ("halt", "completed", 2, "rollout_completed"),
                                      ("explode", "running", 0, "bad_action")):
        with pytest.raises(RolloutError) as exc:
            manual(S, action, state, wave, c)
        assert exc.value.code == code
    done = counts((2, 0, 2, 0), (5, 0, 5, 0), (0, 0, 0, 0))
    d, _ = manual(S, "advance", "running", 1, done)
    assert (d.state, d.open_wave) == ("completed", 2)


def test_a_completed_rollout_reopens_when_a_device_joins() -> None:
    d = decide(S, "completed", 2, counts((2, 0, 2, 0), (5, 0, 5, 0), (11, 0, 10, 0)), advance=False)
    assert (d.state, d.action) == ("running", "reopen")


# ============================================================================= through the inventory


def _hb(device_id: str, version: str = "1.0.0") -> HeartbeatIn:
    return HeartbeatIn.model_validate({"device_id": device_id, "hardware": "cam-r1", "ready": True,
                                       "components": {"main-fw": {"vendor": "acme", "version": version}}})


def _assess(inv: Inventory, ids: list[str], *, advance: bool = True, hh: str = HH) -> None:
    up = {"product": "main-fw", "vendor": "acme", "hardware_class": "cam-r1", "from_version": "1.0.0",
          "to_version": "1.1.0", "header_hash": hh, "after": []}
    inv.save_assessments([Assessment(d, 7, True, False, False, {"reasons": []}, (up,)) for d in ids], "T9.d", 1.0,
                         rollouts=S, advance=advance)


def _issue(inv: Inventory, device_id: str, command_id: str) -> None:
    env = {"command": {"command_id": command_id, "rollout": 1, "wave": 0, "block": 7, "expires_at": 1000,
                       "issued_at": 400,
                       "upgrades": [{"product": "main-fw", "from_version": "1.0.0", "to_version": "1.1.0",
                                     "header_hash": HH}]}, "signature": "0x"}
    inv.issue_command(device_id, env, [1], 1.0)


def _results(command_id: str, ok: bool, hh: str = HH, **over: Any) -> ResultsIn:
    res = {"header_hash": hh, "product": "main-fw", "to_version": "1.1.0", "ok": ok,
           "code": None if ok else "boot_failed", **over}
    return ResultsIn.model_validate({"command_id": command_id, "results": [res]})


def _fleet(inv: Inventory, n: int) -> list[str]:
    ids = [f"dev-{i:02d}" for i in range(n)]
    for d in ids:
        inv.record_heartbeat("0x" + "11" * 20, _hb(d), 1.0)
    return ids


def test_inventory_enrols_issues_records_and_widens(tmp_path: Path) -> None:
    inv = Inventory(tmp_path / "inv.sqlite")
    try:
        ids = _fleet(inv, 30)
        _assess(inv, ids)
        [ro] = inv.rollouts()
        assert (ro["state"], ro["open_wave"], ro["devices"]) == ("running", 0, 30)
        by_wave = {w["wave"]: w for w in ro["waves"]}
        canary = [d for d in ids if wave_of(HH, d, S.waves) == 0]
        assert by_wave[0]["devices"] == len(canary) > 0 and by_wave[0]["open"] and not by_wave[1]["open"]
        gates = {d: inv.admission(d, [HH])[0] for d in ids}
        assert all(g is not None and g["admits"] == (d in canary) for d, g in gates.items())
        for i, d in enumerate(canary):
            _issue(inv, d, f"{i:032x}")
        assert inv.rollout(1)["commanded"] == len(canary)  # type: ignore[index]
        assert inv.outstanding_command(canary[0], 999.0)["command"]["command_id"] == f"{0:032x}"  # type: ignore[index]
        assert inv.outstanding_command(canary[0], 1000.0) is None  # expired
        out = {}
        for i, d in enumerate(canary):
            out = inv.record_results(d, _results(f"{i:032x}", True), 2.0)
        assert out["recorded"] == 1 and out["rollouts"] == [{"id": 1, "state": "running", "wave": 1}]
        dev = inv.device(canary[0])
        assert dev is not None and dev.last_result is not None and dev.last_result["ok"]
        # refusals: another device's command, twice the same, a result the command does not carry
        with pytest.raises(TrackerRefusal) as exc:
            inv.record_results(ids[-1] if ids[-1] not in canary else ids[0], _results(f"{0:032x}", True), 3.0)
        assert exc.value.code == "unknown_command"
        with pytest.raises(TrackerRefusal) as exc:
            inv.record_results(canary[0], _results(f"{0:032x}", True), 3.0)
        assert exc.value.code == "already_reported"
        wave1 = [d for d in ids if wave_of(HH, d, S.waves) == 1]
        _issue(inv, wave1[0], "f" * 32)
        with pytest.raises(TrackerRefusal) as exc:
            inv.record_results(wave1[0], _results("f" * 32, True, hh="0x" + "cd" * 32), 3.0)
        assert exc.value.code == "result_mismatch"
        # a failure in wave 1: 1 of len(canary)+1 reported; halts only above 25 %
        inv.record_results(wave1[0], _results("f" * 32, False), 3.0)
        ro = inv.rollout(1)
        assert ro is not None
        assert ro["failed"] == 1 and ro["state"] == ("halted" if 1 / (len(canary) + 1) > 0.25 else "running")
        assert any(e["kind"] == "rollout" and e["detail"]["action"] == "advance" for e in inv.communications())
    finally:
        inv.close()


def test_inventory_admin_actions_and_a_device_no_longer_needing_the_release(tmp_path: Path) -> None:
    inv = Inventory(tmp_path / "inv.sqlite")
    try:
        ids = _fleet(inv, 12)
        _assess(inv, ids, advance=False)
        with pytest.raises(TrackerRefusal) as exc:
            inv.rollout_action(1, "resume", 1.0, "admin")
        assert exc.value.code == "rollout_not_halted"
        with pytest.raises(TrackerRefusal) as exc:
            inv.rollout_action(9, "halt", 1.0, "admin")
        assert exc.value.code == "unknown_rollout"
        assert inv.rollout_action(1, "halt", 1.0, "admin")["state"] == "halted"
        assert inv.admission(ids[0], [HH])[0]["admits"] is False  # type: ignore[index]
        assert inv.rollout_action(1, "resume", 1.0, "admin")["state"] == "running"
        assert inv.rollout_action(1, "advance", 1.0, "admin")["open_wave"] == 1
        log = [e["detail"] for e in inv.communications(kind="rollout")]
        assert [d["action"] for d in reversed(log)][1:] == ["halt", "resume", "advance"]
        assert log[0]["by"] == "admin"
        # a device now running the release drops out as a success; one whose plan changed drops out
        inv.record_heartbeat("0x" + "11" * 20, _hb(ids[0], "1.1.0"), 2.0)
        inv.save_assessments([Assessment(d, 8, False, False, False, {"reasons": []}, ()) for d in ids[:2]], "hb", 2.0,
                             rollouts=S)
        members = {m["device_id"]: m for m in inv.rollout(1)["members"]}  # type: ignore[index]
        assert members[ids[0]]["state"] == "succeeded" and members[ids[0]]["code"] == "observed"
        assert ids[1] not in members and len(members) == 11
    finally:
        inv.close()


def test_version_1_and_2_inventories_open_and_gain_the_rollout_tables_and_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    inv = Inventory(path)
    inv.record_heartbeat("0x" + "11" * 20, _hb("cam-1"), 1.0)
    inv.close()
    con = sqlite3.connect(path)
    con.executescript("DROP TABLE rollouts; DROP TABLE rollout_devices; DROP TABLE commands; "
                      "UPDATE meta SET value = '1' WHERE key = 'schema_version';")
    con.close()
    again = Inventory(path)
    try:
        assert again.device("cam-1") is not None and again.rollouts() == []
        _assess(again, ["cam-1"])
        assert len(again.rollouts()) == 1
    finally:
        again.close()
    con = sqlite3.connect(path)
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == \
        str(INVENTORY_SCHEMA_VERSION) == "3"
    # a version-2 file (rollouts without the operator's steering columns) gains them
    con.executescript("CREATE TABLE r2 AS SELECT id, header_hash, product, to_version, created_at, updated_at, state, "
                      "open_wave, settings, base_failed, base_reported FROM rollouts; DROP TABLE rollouts; "
                      "ALTER TABLE r2 RENAME TO rollouts; UPDATE meta SET value = '2' WHERE key = 'schema_version';")
    con.close()
    again = Inventory(path)
    try:
        [ro] = again.rollouts()
        assert (ro["target"]["kind"], ro["schedule"]["windows"], ro["halt"], ro["cancelled"]) == ("all", [], None, None)
    finally:
        again.close()
    con = sqlite3.connect(path)
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "3"
    con.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(ConfigError):
        Inventory(path)


def test_a_silent_device_settles_its_wave_without_counting_as_a_result() -> None:
    """docs/MODULES.md 4: a device whose command expired unanswered (offline) no longer holds its
    wave back; it is neither a success nor a failure, so it cannot halt the rollout either."""
    held = decide(S, "running", 0, counts((2, 1, 1, 0), (5, 0, 0, 0), (10, 0, 0, 0)))
    assert (held.action, held.open_wave) == ("hold", 0)
    silent = [WaveCounts(0, 0.1, 2, 0, 1, 0, 1), WaveCounts(1, 0.5, 5), WaveCounts(2, 1.0, 10)]
    assert silent[0].pending == 0 and silent[0].reported == 1
    opened = decide(S, "running", 0, silent)
    assert (opened.action, opened.open_wave) == ("advance", 1)
    all_silent = [WaveCounts(0, 0.1, 2, 0, 0, 0, 2), WaveCounts(1, 0.5, 0), WaveCounts(2, 1.0, 0)]
    assert decide(S, "running", 0, all_silent).state == "completed"
    assert silent[0].to_json()["silent"] == 1 and silent[0].to_json()["needed"] == 0


def test_a_result_that_could_not_be_tried_sends_the_device_back_to_needed() -> None:
    """An update that failed because a module, the server or the chain node did not answer was
    not tried on the device: it is needed again (a new command later) and cannot halt a rollout;
    a failure on the device counts."""
    assert result_state(True, None) == "succeeded"
    for code in ("unavailable", "tracker_unreachable", "server_unreachable", "download_interrupted", "not_synced",
                 "unknown_image", "not_published",  # the server behind the ledger (CI run 3 after stop 9)
                 "ledger_unproven"):  # the server's node down when the device downloaded (anvil SIGKILLed)
        assert result_state(False, code) == "needed", code
    for code in ("trial_boot_failed", "chunk_auth_failed", "quorum_not_met", "revoked", "ledger_mismatch", None):
        assert result_state(False, code) == "failed", code
