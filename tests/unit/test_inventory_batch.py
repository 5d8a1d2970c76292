"""One transaction for several inventory writes (:meth:`Inventory.batch`): one commit (one
fsync) instead of one per write, with the same all-or-nothing and durability as before."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest
from eth_account import Account

from entities.status_tracker.inventory import Assessment, HeartbeatIn, Inventory, TrackerRefusal
from ledger_node.errors import ConfigError

DEV, OTHER = Account.from_key(b"\x01" * 32), Account.from_key(b"\x02" * 32)


def hb(device_id: str = "cam-1", version: str = "1.0.0") -> HeartbeatIn:
    return HeartbeatIn.model_validate_json(json.dumps({
        "device_id": device_id, "hardware": "cam-r1", "location": "lab", "addons": {},
        "components": {"main-fw": {"vendor": "acme", "version": version, "slot": "A"}},
        "ready": True, "last_result": None}))


def verdict(device_id: str = "cam-1") -> Assessment:
    return Assessment(device_id, 7, True, False, False, {"findings": []},
                      ({"header_hash": "0x" + "ab" * 32, "product": "main-fw", "from_version": "1.0.0",
                        "to_version": "1.1.0"},))


def commits(conn: sqlite3.Connection) -> list[str]:
    """COMMITs run on ``conn`` from now on."""
    seen: list[str] = []
    conn.set_trace_callback(lambda sql: seen.append(sql) if sql.strip().upper() == "COMMIT" else None)
    return seen


def test_batch_commits_once_and_reads_its_own_writes(tmp_path: Path) -> None:
    inv = Inventory(tmp_path / "inv.sqlite")
    seen = commits(inv._conn)
    with inv.batch():
        row, change = inv.record_heartbeat(DEV.address, hb(), 10.0)
        assert change["new"] and row.heartbeats == 1
        assert inv.device("cam-1") is not None  # read inside: sees the batch's write
        inv.save_assessments([verdict()], "heartbeat", 10.0)
        inv.log(10.0, "cam-1", "T9.e", {"x": 1})
        with inv.batch():  # a nested batch joins the outer one
            inv.log(10.0, "cam-1", "note", {})
        assert seen == []  # nothing committed yet
    assert seen == ["COMMIT"]
    inv.close()
    inv = Inventory(tmp_path / "inv.sqlite")  # durable: a reopen sees all of it
    assert inv.device("cam-1") is not None and inv.needs("cam-1")
    assert [e["kind"] for e in inv.communications("cam-1")] == ["note", "T9.e", "update_needed", "heartbeat"]
    inv.close()


def test_an_exception_leaves_no_part_of_the_batch(tmp_path: Path) -> None:
    inv = Inventory(tmp_path / "inv.sqlite")
    inv.record_heartbeat(DEV.address, hb("cam-0"), 1.0)  # before: kept
    with pytest.raises(RuntimeError, match="crash"), inv.batch():
        inv.record_heartbeat(DEV.address, hb(), 10.0)
        inv.save_assessments([verdict()], "heartbeat", 10.0)
        raise RuntimeError("crash mid-heartbeat")
    assert inv.device("cam-1") is None and inv.needs() == [] and inv.assessment("cam-1") is None
    assert [e["device_id"] for e in inv.communications()] == ["cam-0"]
    assert not inv._conn.in_transaction
    inv.log(11.0, "cam-0", "after", {})  # the inventory goes on as usual
    assert inv.communications("cam-0")[0]["kind"] == "after"
    inv.close()


def test_a_refused_method_inside_a_batch_undoes_only_itself(tmp_path: Path) -> None:
    """A method that raises inside a batch rolls back its own writes (its savepoint), as it
    did in its own transaction; the caller may go on and the rest commits."""
    inv = Inventory(tmp_path / "inv.sqlite")
    inv.record_heartbeat(DEV.address, hb(), 1.0)
    with inv.batch():
        inv.log(5.0, "cam-1", "kept", {})
        with pytest.raises(TrackerRefusal) as refused:
            inv.record_heartbeat(OTHER.address, hb(), 5.0)  # another key: refused before it writes
        assert refused.value.code == "device_key_mismatch"
        assert inv.remember(DEV.address, "n-1", 1e12)
        assert not inv.remember(DEV.address, "n-1", 1e12)  # its IntegrityError stays inside its savepoint
    assert inv.communications("cam-1")[0]["kind"] == "kept"
    assert not inv.remember(DEV.address, "n-1", 1e12)  # committed with the batch
    inv.close()


def test_other_threads_wait_for_the_batch(tmp_path: Path) -> None:
    """The batch holds the inventory: another thread's write goes after it, never into it."""
    inv = Inventory(tmp_path / "inv.sqlite")
    inside, done = threading.Event(), threading.Event()

    def other() -> None:
        inside.wait(10)
        inv.log(2.0, None, "other", {})
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with pytest.raises(RuntimeError), inv.batch():
        inv.log(1.0, None, "mine", {})
        inside.set()
        assert not done.wait(0.3)  # blocked on the batch
        raise RuntimeError("roll back")
    t.join(10)
    assert done.is_set()
    assert [e["kind"] for e in inv.communications()] == ["other"]  # not rolled back with the batch
    inv.close()


def test_no_write_goes_on_once_sqlite_rolled_the_batch_back(tmp_path: Path) -> None:
    """SQLite rolls a transaction back by itself after some I/O errors: a later write in the
    batch must fail, not begin a new transaction that would commit part of the batch."""
    inv = Inventory(tmp_path / "inv.sqlite")
    with pytest.raises(ConfigError), inv.batch():
        inv.log(1.0, None, "lost", {})
        inv._conn.execute("ROLLBACK")  # as SQLite does on SQLITE_FULL or SQLITE_IOERR
        inv.log(2.0, None, "must not commit alone", {})
    assert inv.communications() == [] and not inv._conn.in_transaction
    inv.close()
