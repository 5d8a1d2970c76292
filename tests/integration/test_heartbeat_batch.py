"""A device heartbeat at the server module is one inventory transaction (one commit, one fsync):
its report, verdict, enrolment, log entries (T9.e included) and command commit together before
the answer, or not at all; and it takes its locks in the tracker's order, so heartbeats beside
the follower thread, a whole-fleet assessment or a trigger holding the observations never
deadlock. Over HTTP the request's nonce joins that transaction: a signed heartbeat costs the
inventory one commit, a replay is refused before anything is written, and a refused heartbeat's
nonce is kept all the same. On the embedded chain, the tracker in this process."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from eth_account import Account

from entities.protocol.http_auth import sign_request
from entities.status_tracker.app import TrackerThread, create_app
from entities.status_tracker.config import TrackerConfig
from entities.status_tracker.daemon import Tracker
from entities.status_tracker.inventory import HeartbeatIn
from ledger_node.errors import IndexCorruption
from tests.world import LedgerWorld, embedded_world

WAIT = 20.0


@pytest.fixture
def world() -> LedgerWorld:
    """A fresh embedded chain and registry: vendor acme, hardware class cam-r1, main-fw 1.0.0."""
    return embedded_world()


def make_tracker(world: LedgerWorld, data: Path) -> Tracker:
    cfg = TrackerConfig(data_dir=data, poll_interval=0.05, observation_retry=0.05, admission="open", waves=(1.0,),
                        command_ttl=600)
    return Tracker(cfg, world.chain.w3, world.registry.deployment)


@pytest.fixture
def tracker(world: LedgerWorld, tmp_path: Path) -> Iterator[Tracker]:
    trk = make_tracker(world, tmp_path / "tracker")
    trk.cycle()
    stuck: list[threading.Thread] = []
    trk.stuck = stuck  # type: ignore[attr-defined]
    yield trk
    if not any(t.is_alive() for t in stuck):  # a deadlocked test leaves its threads and the tracker alone
        trk.close()


def body(device_id: str, version: str) -> bytes:
    return json.dumps({"device_id": device_id, "hardware": "cam-r1", "location": "lab", "addons": {},
                       "components": {"main-fw": {"vendor": "acme", "version": version, "slot": "A"}},
                       "ready": True, "last_result": None}).encode()


def report(device_id: str, version: str) -> HeartbeatIn:
    return HeartbeatIn.model_validate_json(body(device_id, version))


def account(n: int) -> Any:
    return Account.from_key(n.to_bytes(32, "big"))


def key(n: int) -> str:
    return str(account(n).address)


def commits(conn: sqlite3.Connection) -> list[str]:
    seen: list[str] = []
    conn.set_trace_callback(lambda sql: seen.append(sql) if sql.strip().upper() == "COMMIT" else None)
    return seen


def test_a_heartbeat_commits_the_inventory_once(tracker: Tracker) -> None:
    seen = commits(tracker.inventory._conn)
    # new, outdated, on a version the ledger does not have (T9.e): row, verdict, need, rollout,
    # T9.e entry, command
    answer = tracker.heartbeat(key(1), report("cam-1", "0.9.0"))
    assert answer["registered"] and answer["update_needed"] and len(answer["commands"]) == 1
    assert answer["unknown_versions"] == ["main-fw"]
    assert seen == ["COMMIT"]
    kinds = [e["kind"] for e in tracker.inventory.communications("cam-1")]
    assert kinds == ["command_issued", "T9.e", "update_needed", "heartbeat"]
    again = tracker.heartbeat(key(1), report("cam-1", "0.9.0"))  # known: the outstanding command again
    assert again["commands"] == answer["commands"]
    tracker.heartbeat(key(2), report("cam-2", "1.0.0"))  # up to date
    assert seen == ["COMMIT"] * 3


def test_an_exception_mid_heartbeat_leaves_nothing_of_it(tracker: Tracker, monkeypatch: pytest.MonkeyPatch) -> None:
    tracker.heartbeat(key(1), report("cam-1", "1.0.0"))
    before = tracker.inventory.counts()

    def damaged(*_: Any, **__: Any) -> Any:
        raise IndexCorruption("index damaged")

    # the command step reads the release from the index after the report, verdict, enrolment and
    # T9.e entry were written: the damage found there undoes all of them
    monkeypatch.setattr(tracker.index, "release", damaged)
    with pytest.raises(IndexCorruption):
        tracker.heartbeat(key(2), report("cam-2", "0.9.0"))
    assert tracker.inventory.device("cam-2") is None and tracker.inventory.assessment("cam-2") is None
    assert tracker.inventory.needs("cam-2") == [] and tracker.inventory.communications("cam-2") == []
    assert tracker.inventory.counts() == before
    assert not tracker.inventory._conn.in_transaction
    monkeypatch.undo()
    answer = tracker.heartbeat(key(2), report("cam-2", "0.9.0"))  # as if the first had never come
    assert answer["registered"] and len(answer["commands"]) == 1


def test_over_http_the_nonce_commits_with_the_heartbeat(world: LedgerWorld, tmp_path: Path) -> None:
    tracker = make_tracker(world, tmp_path / "tracker")
    thread = TrackerThread(create_app(tracker, follow=False)).start()  # closes the tracker when it stops
    path = "/v1/devices/heartbeat"

    def post(signer: Any, data: bytes, headers: dict[str, str] | None = None) -> tuple[requests.Response, dict[str, str]]:
        headers = headers or {**sign_request(signer, "POST", path, data, audience=tracker.address),
                              "Content-Type": "application/json"}
        return requests.post(thread.url + path, data=data, headers=headers, timeout=WAIT), headers

    try:
        tracker.cycle()
        seen = commits(tracker.inventory._conn)
        resp, headers = post(account(1), body("cam-1", "0.9.0"))  # new, outdated, T9.e: a command
        assert resp.status_code == 200 and len(resp.json()["commands"]) == 1, resp.text
        assert seen == ["COMMIT"]  # nonce, report, verdict, log, command: one commit
        again, _ = post(None, body("cam-1", "0.9.0"), headers)  # the same request again
        assert again.status_code == 401 and again.json()["error"]["code"] == "replayed_request"
        assert tracker.inventory.device("cam-1").heartbeats == 1  # type: ignore[union-attr]
        assert seen == ["COMMIT"]  # refused before anything was written
        # a heartbeat refused after its nonce was stored (the id is bound to another key): the
        # nonce stays, so the same request sent again is a replay, whatever the state is then
        refused, headers = post(account(2), body("cam-1", "0.9.0"))
        assert refused.json()["error"]["code"] == "device_key_mismatch", refused.text
        again, _ = post(None, body("cam-1", "0.9.0"), headers)
        assert again.json()["error"]["code"] == "replayed_request"
        assert tracker.inventory.device("cam-1").address == key(1)  # type: ignore[union-attr]
    finally:
        thread.stop()


def _run(tracker: Tracker, target: Callable[[], Any]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def body() -> None:
        try:
            target()
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    t = threading.Thread(target=body, daemon=True)
    tracker.stuck.append(t)  # type: ignore[attr-defined]
    t.start()
    return t, errors


@pytest.mark.parametrize("holder", ["assess", "observations"])
def test_a_heartbeat_waits_for_a_lock_holder_writing_the_inventory(tracker: Tracker, holder: str) -> None:
    """Another thread holds a lock the heartbeat needs (the whole-fleet assessment holds
    ``_assess_lock``; a trigger or the follower holds the observations' lock) and then writes
    the inventory: the heartbeat must wait for that lock before it takes the inventory's."""
    lock = tracker._assess_lock if holder == "assess" else tracker.observations.held()
    started = threading.Event()

    def hold_then_write() -> None:
        with lock:
            started.set()
            time.sleep(0.3)  # the heartbeat is under way meanwhile
            tracker.inventory.log(time.time(), None, "holder", {})

    holder_thread, holder_errors = _run(tracker, hold_then_write)
    assert started.wait(WAIT)
    # 0.9.0: not on the ledger -> T9.e, the path that takes the observations' lock
    beat, beat_errors = _run(tracker, lambda: tracker.heartbeat(key(3), report("cam-3", "0.9.0")))
    deadline = time.monotonic() + WAIT
    holder_thread.join(WAIT)
    beat.join(max(0.0, deadline - time.monotonic()))
    assert not holder_thread.is_alive() and not beat.is_alive(), "deadlock"
    assert holder_errors == [] and beat_errors == []
    assert tracker.inventory.device("cam-3") is not None


def test_concurrent_heartbeats_beside_the_follower_never_deadlock(world: LedgerWorld, tracker: Tracker) -> None:
    """Heartbeats from many threads (new and known devices, versions the ledger does not have yet)
    while the follower thread syncs, assesses the whole fleet on new releases and settles
    observations, and triggers' observations are held."""
    tracker.start()
    rounds, devices = 6, 4
    stop = threading.Event()

    def device_thread(n: int) -> Callable[[], None]:
        def beat() -> None:
            r = 0
            while r < rounds or not stop.is_set():  # until the releases below are in
                version = ("0.9.0", "1.0.0", f"1.{r % 5 + 1}.0")[r % 3]  # 1.x.0: newer than the ledger (pending)
                tracker.heartbeat(key(100 + n), report(f"cam-{n}", version))
                r += 1
        return beat

    def observations() -> None:
        while not stop.is_set():
            tracker.observations.hold_trigger(key(9), {"version": "9.9.9", "header_hash": "0x" + "cd" * 32,
                                                       "devices": []}, time.time())
            time.sleep(0.01)

    beats = [_run(tracker, device_thread(n)) for n in range(devices)]
    held = _run(tracker, observations)
    for v in ("1.1.0", "1.2.0"):  # new releases: catalog rebuilt, whole fleet assessed, observations settled
        world.publish("main-fw", v)
        time.sleep(0.3)
    stop.set()
    deadline = time.monotonic() + WAIT * 2
    for t, _ in beats:
        t.join(max(0.0, deadline - time.monotonic()))
    held[0].join(max(0.0, deadline - time.monotonic()) + 1)
    assert not any(t.is_alive() for t, _ in [*beats, held]), "deadlock"
    assert [e for _, errs in [*beats, held] for e in errs] == []
    assert len(tracker.inventory.devices()) == devices
    assert tracker.inventory._conn.in_transaction is False
    assert tracker.last_sync_error is None
