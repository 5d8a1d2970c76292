"""A device's update history from its log rows (entities/status_tracker/history.py, pure part)."""

from __future__ import annotations

from typing import Any

from entities.status_tracker.history import summarise


def hb(at: float, **detail: Any) -> tuple[int, float, str, dict[str, Any]]:
    return (int(at), at, "heartbeat", {"ready": True, "hardware": "cam-r1", **detail})


def events(rows: list[tuple[int, float, str, dict[str, Any]]]) -> list[tuple[str, int]]:
    return [(e["event"], e["count"]) for e in summarise(rows)]


def test_plain_heartbeats_fold_into_runs_between_events() -> None:
    rows = [(1, 1.0, "admission_record", {"status": "admitted", "address": "0xA", "hardware": "cam-r1",
                                          "labels": {"group": "pilot"}, "issuer": "0xOP"}),
            hb(2, registered=True), hb(3), hb(4), hb(5),
            (6, 6.0, "update_needed", {"cause": "ledger", "block": 9, "upgrades": [
                {"product": "fw", "from_version": "1.0.0", "to_version": "1.1.0", "header_hash": "0x1"}]}),
            hb(7), hb(8)]
    out = summarise(rows)
    assert [(e["event"], e["count"]) for e in out] == [("heartbeats", 2), ("update_needed", 1), ("heartbeats", 3),
                                                        ("registered", 1), ("admitted", 1)]
    assert (out[0]["at"], out[0]["until"]) == (7.0, 8.0)
    assert (out[1]["product"], out[1]["from_version"], out[1]["to_version"]) == ("fw", "1.0.0", "1.1.0")
    assert "group=pilot" in out[-1]["detail"]


def test_a_last_result_is_news_once_then_part_of_the_heartbeats() -> None:
    confirm = {"ok": True, "code": None, "message": "version 1.1.0 confirmed in slot B", "component": "fw",
               "version": "1.1.0", "at": 10.0}
    revert = {"ok": False, "code": "too_many_boot_attempts", "message": "3 of 3", "component": "fw",
              "version": "1.2.0", "at": 20.0}
    rows = [hb(1, registered=True), hb(11, last_result=confirm, versions={"fw": ["1.0.0", "1.1.0"]}),
            hb(12, last_result=confirm), hb(21, last_result=revert), hb(22, last_result=revert)]
    out = summarise(rows)
    assert [e["event"] for e in out] == ["heartbeats", "rolled_back", "heartbeats", "trial_confirmed",
                                         "version_changed", "registered"]
    assert out[1]["code"] == "too_many_boot_attempts" and out[1]["to_version"] == "1.2.0"
    assert (out[4]["from_version"], out[4]["to_version"]) == ("1.0.0", "1.1.0")


def test_a_pruned_start_takes_the_first_last_result_as_known() -> None:
    """The registration was pruned: the oldest heartbeat read only sets what is known."""
    old = {"ok": False, "code": "download_failed", "message": "cut", "component": "fw", "version": "1.1.0", "at": 1.0}
    assert events([hb(5, last_result=old), hb(6, last_result=old)]) == [("heartbeats", 2)]


def test_commands_and_results_carry_rollout_and_codes() -> None:
    rows = [(1, 1.0, "command_issued", {"command_id": "c1", "rollout": 3, "wave": 1, "block": 7, "expires_at": 9,
                                        "upgrades": [{"product": "fw", "from_version": "1.0.0",
                                                      "to_version": "1.1.0", "header_hash": "0x1"}]}),
            (2, 2.0, "results", {"command_id": "c1", "results": [
                {"product": "fw", "to_version": "1.1.0", "header_hash": "0x1", "ok": False,
                 "code": "health_check_failed"}]}),
            (3, 3.0, "results_refused", {"command_id": "c1", "code": "already_reported", "message": "again"}),
            (4, 4.0, "command_expired", {"command_id": "c2", "rollout": 3})]
    out = summarise(rows)
    assert [e["event"] for e in out] == ["command_expired", "results_refused", "failed", "command_issued"]
    assert (out[2]["rollout"], out[2]["wave"], out[2]["code"]) == (3, 1, "health_check_failed")
    assert (out[3]["rollout"], out[3]["command_id"], out[3]["to_version"]) == (3, "c1", "1.1.0")
    assert out[1]["code"] == "already_reported"


def test_admission_records_after_the_first_are_relabels_or_rekeys() -> None:
    base = {"status": "admitted", "address": "0xA", "hardware": "cam-r1", "labels": {"group": "main"}, "issuer": "0xO"}
    rows = [(1, 1.0, "admission_record", base),
            (2, 2.0, "admission_record", {**base, "labels": {"group": "pilot"}}),
            (3, 3.0, "admission_record", {**base, "labels": {"group": "pilot"}, "address": "0xB"}),
            (4, 4.0, "admission", {"status": "decommissioned", "rollouts_left": 1})]
    out = summarise(rows)
    assert [e["event"] for e in out] == ["decommissioned", "rekeyed", "relabelled", "admitted"]
    assert "group=pilot" in out[2]["detail"] and "group=main" in out[2]["detail"]
