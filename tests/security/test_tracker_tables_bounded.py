"""Tracker state an attacker on the network can make grow stays bounded (triggers, the intermediate's
cache, pending T9.e observations), and module heartbeats
come from configured modules only (docs/THREATS.md "Junk from the network").

The world is :mod:`tests.integration.test_intermediate`'s: an embedded chain with one release, the
server module and intermediates as uvicorn threads on 127.0.0.1, every module configured with the
fleet's intermediates' keys (``module_keys``). Strangers are fresh secp256k1 keys sending real
signed requests over HTTP; each refusal's code is asserted, and what it could have changed is
read back from the modules' own SQLite files.

``FWLEDGER_JUNK`` (default 2000: each bound is overrun several times over; set it higher for a
longer flood) is the number of junk requests, half junk ``hardware`` values at the intermediate's
evidence route and half junk triggers from fresh keys; a twentieth of it (at least 100) is the
number of fresh keys reporting versions no ledger has.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from eth_account import Account

from entities.protocol.http_auth import sign_request
from entities.status_tracker.observations import OBSERVATION_RATE, OBSERVATION_TTL, PendingObservations
from entities.status_tracker.ratelimit import RateLimiter
from tests.integration import test_intermediate as world
from tests.integration.test_intermediate import ADMIN, RELAY_KEYS, Fleet, Node, code, key, report, wait

fleet = world.fleet  # the ``fleet`` fixture of that world, reused here

JUNK = int(os.environ.get("FWLEDGER_JUNK", "2000"))
BODY_TIMEOUT = 30.0
CLIENTS = 4  # concurrent junk senders (one HTTP session each)


def flood(n: int, send: Callable[[requests.Session, int], None]) -> None:
    """``send(session, i)`` for i in range(n), from CLIENTS threads with one session each."""
    local = threading.local()

    def one(i: int) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        send(local.session, i)

    with ThreadPoolExecutor(CLIENTS) as pool:
        for _ in pool.map(one, range(n)):
            pass


def rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute(sql, args).fetchall()


def files_size(db: Path) -> int:
    """The database file with its WAL and shared-memory files."""
    return sum(p.stat().st_size for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists())


def modules_of(node: Node) -> list[dict[str, Any]]:
    return node.ok(node.request("GET", "/v1/modules", ADMIN))["modules"]  # type: ignore[no-any-return]


def signed_post(session: requests.Session, node: Node, signer: Any, path: str, body: Any) -> requests.Response:
    data = json.dumps(body).encode()
    headers = {**sign_request(signer, "POST", path, data, audience=node.address), "Content-Type": "application/json"}
    return session.post(node.url + path, data=data, headers=headers, timeout=BODY_TIMEOUT)


# ============================================================================= module heartbeats


def test_a_strangers_module_heartbeat_is_refused_and_changes_nothing(fleet: Fleet) -> None:
    """C11.2 c: only the configured ``module_keys`` may write the reachability table. A stranger's
    module heartbeat (naming a URL of its choice) is refused ``unknown_module`` (403), at the server
    module and at an intermediate (cascades), and stores nothing, not even its nonce; a configured
    intermediate's heartbeat is heard, and a configured lower module's at the intermediate too."""
    server = fleet.server()
    relay = fleet.intermediate(server)
    assert relay.address == RELAY_KEYS[0].address
    relay.impl.heartbeat_upstreams()
    before = modules_of(server)
    assert [(m["address"], m["url"]) for m in before] == [(relay.address, relay.url)]

    stranger = key(0x5A)
    evil = {"role": "intermediate", "url": "http://evil.example:80", "devices": ["dev-x"]}
    for node in (server, relay):
        resp = node.request("POST", "/v1/modules/heartbeat", stranger, evil)
        assert node.ok(resp, 403)["error"]["code"] == "unknown_module"
        data = node.impl.config.data_dir / "modules.sqlite"
        assert rows(data, "SELECT COUNT(*) FROM nonces WHERE address = ?", stranger.address) == [(0,)]
        assert rows(data, "SELECT COUNT(*) FROM modules WHERE url = ?", evil["url"]) == [(0,)]
    after = modules_of(server)
    assert [(m["address"], m["url"], m["heartbeats"]) for m in after] == \
        [(m["address"], m["url"], m["heartbeats"]) for m in before]
    assert modules_of(relay) == []
    # a stranger claiming a configured module's address does not get past the signature
    data = json.dumps(evil).encode()
    headers = {**sign_request(stranger, "POST", "/v1/modules/heartbeat", data, audience=relay.address),
               "Content-Type": "application/json",
               "X-Fwledger-Address": RELAY_KEYS[1].address}
    forged = requests.post(relay.url + "/v1/modules/heartbeat", data=data, headers=headers, timeout=BODY_TIMEOUT)
    assert (forged.status_code, code(forged)) == (401, "bad_signature")

    # configured modules are heard: the relay again at the server, a lower one at the relay
    relay.impl.heartbeat_upstreams()
    assert next(m for m in modules_of(server) if m["address"] == relay.address)["heartbeats"] == 2
    assert relay.health()["upstreams"][0]["reachable"] is True
    lower = fleet.intermediate(relay)
    lower.impl.heartbeat_upstreams()
    assert [(m["address"], m["url"]) for m in modules_of(relay)] == [(lower.address, lower.url)]


# ============================================================================= the intermediate's cache


def test_junk_hardware_is_never_cached_and_the_cache_stays_at_its_bound(fleet: Fleet) -> None:
    """R10.e.ii cache: evidence for a ``hardware`` no ledger class has is the upstream's refusal
    (``unknown_hardware``, 404), relayed and not cached, however many distinct values are asked;
    valid answers of more blocks than ``cache_entries`` evict the least recently used (many
    times over) and the file stays small; the per-answer flight locks are all released."""
    for _ in range(40):  # blocks to attest: more distinct cacheable answers than the bound
        fleet.w3.provider.make_request("evm_mine", [])
    server = fleet.server()
    server.wait_synced(int(fleet.w3.eth.block_number))
    bound = 8
    relay = fleet.intermediate(server, cache_entries=bound)
    head = int(server.impl.ledger_block())
    hh = fleet.release_hash
    cache = relay.impl.config.data_dir / "cache.sqlite"
    session = requests.Session()

    # valid, cacheable answers: attestations of every block, evidence at every block since the release
    cacheable = [f"/v1/attestation/{b}" for b in range(head + 1)] + \
        [f"/v1/evidence/{hh}?hardware=cam-r1&block={b}" for b in range(head - 30, head + 1)]
    for path in cacheable:
        assert session.get(relay.url + path, timeout=BODY_TIMEOUT).status_code == 200, path
        assert relay.impl.cache.size() <= bound
    assert relay.impl.cache.size() == bound
    assert relay.counters()["fetched"] == len(cacheable)  # each fetched once, most of them evicted since
    hot = cacheable[-1]
    assert session.get(relay.url + hot, timeout=BODY_TIMEOUT).status_code == 200
    assert relay.counters()["cache_hits"] == 1  # the newest answer is still cached

    def junk_hardware(session: requests.Session, n: int) -> None:
        resp = session.get(relay.url + f"/v1/evidence/{hh}?hardware=junk-{n:05d}-{'x' * 40}&block={head}",
                           timeout=BODY_TIMEOUT)
        assert (resp.status_code, code(resp)) == (404, "unknown_hardware"), resp.text

    flood(JUNK // 2, junk_hardware)
    assert relay.impl.cache.size() == bound
    assert rows(cache, "SELECT COUNT(*) FROM answers") == [(bound,)]
    assert rows(cache, "SELECT COUNT(*) FROM answers WHERE key LIKE '%junk-%'") == [(0,)]
    assert relay.impl._flights == {}  # no lock left behind per junk key
    # roughly bounded on disk: the bound's answers plus SQLite's pages and WAL, not one row per request
    assert files_size(cache) < 6 << 20, files_size(cache)
    assert relay.health()["cached_answers"] == bound


# ============================================================================= triggers


def test_junk_triggers_from_fresh_keys_leave_the_triggers_table_at_its_bound(fleet: Fleet) -> None:
    """Clause 9: anyone may sign a trigger (an author's key is only known on the ledger), and every
    verified one is logged; the triggers table keeps the newest ``trigger_limit`` rows however
    many fresh keys send junk, and the rate limiter's per-key map is bounded too."""
    junk = JUNK - JUNK // 2
    limit = max(10, min(200, junk // 5))  # pruned many times over
    server = fleet.server(trigger_limit=limit)
    inventory = server.impl.config.data_dir / "inventory.sqlite"
    trig = {"source": "author", "header_hash": "0x" + "cd" * 32, "link": "http://x.example/fw.bin",
            "version": "1.0.0"}
    sources = ("author", "server", "admin")  # an author's is judged after a ledger poll, the others before

    def junk_trigger(session: requests.Session, n: int) -> None:
        resp = signed_post(session, server, Account.create(), "/v1/triggers", {**trig, "source": sources[n % 3]})
        assert (resp.status_code, code(resp)) == (403, "unknown_party"), resp.text

    flood(junk, junk_trigger)
    assert rows(inventory, "SELECT COUNT(*), MAX(id) - MIN(id) + 1 FROM triggers") == [(limit, limit)]
    assert rows(inventory, "SELECT MAX(id) FROM triggers") == [(junk,)]  # the newest kept
    assert files_size(inventory) < 8 << 20, files_size(inventory)
    assert len(server.impl.trigger_limiter) <= 10_000
    newest = server.ok(server.request("GET", "/v1/triggers?limit=10000", ADMIN))
    assert len(newest) == limit and newest[0]["id"] == junk

    # the limiter keeps at most max_keys signers (least recently seen dropped), whoever signs
    limiter = RateLimiter(60, max_keys=100)
    for n in range(1000):
        limiter.take(f"0x{n:040x}")
    assert len(limiter) == 100


def test_triggers_over_the_rate_are_refused_rate_limited_and_not_stored(fleet: Fleet) -> None:
    """One signer gets ``trigger_rate`` triggers a minute (bursts of that many); the next one is
    refused ``rate_limited`` (429) before any ledger work, and nothing is stored for it. Other
    signers are not held back."""
    server = fleet.server(trigger_rate=5)
    inventory = server.impl.config.data_dir / "inventory.sqlite"
    session = requests.Session()
    trig = {"source": "admin", "header_hash": "0x" + "cd" * 32, "link": "http://x.example/fw.bin",
            "version": "1.0.0"}
    for _ in range(5):
        resp = signed_post(session, server, ADMIN, "/v1/triggers", trig)
        assert (resp.status_code, code(resp)) == (422, "not_on_ledger")
    stored = rows(inventory, "SELECT COUNT(*) FROM triggers")
    assert stored == [(5,)]
    for _ in range(3):
        resp = signed_post(session, server, ADMIN, "/v1/triggers", trig)
        body = server.ok(resp, 429)
        assert body["error"]["code"] == "rate_limited" and body["error"]["retry_after"] > 0
    assert rows(inventory, "SELECT COUNT(*) FROM triggers") == stored
    other = signed_post(session, server, key(0x5B), "/v1/triggers", {**trig, "source": "author"})
    assert (other.status_code, code(other)) == (403, "unknown_party")
    assert rows(inventory, "SELECT COUNT(*) FROM triggers") == [(6,)]


@pytest.mark.parametrize("rate", [0, -1.0])
def test_a_rate_limit_needs_a_positive_rate(rate: float) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate)


# ============================================================================= T9.e observations


def test_a_flood_of_bogus_observed_versions_keeps_the_pending_table_at_its_bound(fleet: Fleet) -> None:
    """T9.e under junk: in open admission any key is a device and may report a version the ledger
    does not have. Fresh keys each reporting a new version of acme/main-fw: every heartbeat is
    answered, and the tracker keeps at most ``max_observations`` pending (the least recently
    reported dropped). Reports that cannot be a release to follow are never kept, each logged with
    why (an unknown vendor, a line with no release, a version not newer than the ledger's). One key
    reporting version after version is kept ``OBSERVATION_RATE`` times (the tracker's clock is
    frozen so its bucket does not refill), then ``rate_limited``. Once ``observation_margin``
    blocks pass, every junk observation is given up: nothing is left pending to poll for (on a
    chain that stopped, an hour after it was first reported)."""
    t0 = time.time()  # frozen: the per-key bucket does not refill during the test
    bound, margin = 8, 3
    server = fleet.server(max_observations=bound, observation_margin=margin, clock=lambda: t0)
    pending = server.impl.observations
    junk = max(100, JUNK // 20)

    def junk_version(session: requests.Session, n: int) -> None:
        resp = signed_post(session, server, Account.create(), "/v1/devices/heartbeat", report(f"junk-{n}", f"9.{n}.0"))
        assert resp.status_code == 200 and resp.json()["unknown_versions"] == ["main-fw"], resp.text

    flood(junk, junk_version)
    assert len(pending) == bound and pending.evicted == junk - bound
    inventory = server.impl.config.data_dir / "inventory.sqlite"
    assert rows(inventory, "SELECT COUNT(*) FROM observations") == [(bound,)]  # persisted, same bound
    assert server.impl.health()["observations_pending"] == bound
    listed = server.ok(server.request("GET", "/v1/outdated", ADMIN))["observations_pending"]
    assert len(listed) == bound and all(o["vendor"] == "acme" and o["devices"][0].startswith("junk-") for o in listed)

    def kept(device_id: str) -> dict[str, str]:
        log = server.ok(server.request("GET", f"/v1/devices/{device_id}", ADMIN))["log"]
        (entry,) = [e for e in log if e["kind"] == "T9.e"]
        return entry["detail"]["pending"]  # type: ignore[no-any-return]

    def entries() -> list[dict[str, object]]:  # until_block aside: the follower sets it on its own time
        return [{k: v for k, v in e.items() if k != "until_block"} for e in pending.entries()]

    before = entries()
    session = requests.Session()
    odd = {"odd-vendor": {"main-fw": {"vendor": "evil", "version": "9.0.0", "slot": "A"}},
           "odd-line": {"other-fw": {"vendor": "acme", "version": "9.0.0", "slot": "A"}},
           "odd-old": {"main-fw": {"vendor": "acme", "version": "0.9.0", "slot": "A"}}}
    for device_id, components in odd.items():
        body = {**report(device_id), "components": components}
        assert signed_post(session, server, Account.create(), "/v1/devices/heartbeat", body).status_code == 200
    assert (kept("odd-vendor"), kept("odd-line"), kept("odd-old")) == (
        {"main-fw": "unknown_vendor"}, {"other-fw": "unknown_line"}, {"main-fw": "not_newer"})
    assert entries() == before

    one = Account.create()
    states = []
    for n in range(20):  # one key, a new version each time: each report is a fresh observation
        resp = signed_post(session, server, one, "/v1/devices/heartbeat", report("one", f"8.{n}.0"))
        assert resp.status_code == 200, resp.text
        log = server.ok(server.request("GET", "/v1/devices/one", ADMIN))["log"]
        states.append(next(e for e in log if e["kind"] == "T9.e")["detail"]["pending"]["main-fw"])
    assert states == ["pending"] * int(OBSERVATION_RATE) + ["rate_limited"] * (20 - int(OBSERVATION_RATE))
    assert len(pending) == bound

    for _ in range(margin + 1):  # the junk releases never appear: given up after the margin
        fleet.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    wait(lambda: len(pending) == 0, "the junk observations are given up")
    assert server.impl.health()["observations_pending"] == 0
    assert rows(inventory, "SELECT COUNT(*) FROM observations") == [(0,)]

    # a chain that stops: an observation is given up an hour after it was first reported
    table = PendingObservations(4, confirmations=0, margin=margin, clock=lambda: t0)
    index, cursor = server.impl.index, int(server.impl.ledger_block())
    assert table.observe(index, "0xabc", "dev", "acme", "main-fw", "9.9.9", t0) == "pending"
    assert table.settle(index, cursor, t0) == ([], []) and len(table) == 1  # its last block is set
    assert table.settle(index, cursor, t0 + OBSERVATION_TTL - 1) == ([], [])
    found, expired = table.settle(index, cursor, t0 + OBSERVATION_TTL)
    assert found == [] and [o.version for o in expired] == ["9.9.9"] and len(table) == 0


def test_a_server_flooding_triggers_for_releases_not_indexed_keeps_the_pending_table_at_its_bound(fleet: Fleet) -> None:
    """T9.b kept pending under the T9.e bounds: a configured firmware server's triggers for
    releases the tracker has not indexed are kept ``OBSERVATION_RATE`` times a minute per key (the
    tracker's clock is frozen), then refused ``not_on_ledger`` as before and nothing kept; at most
    ``max_observations`` are pending, in memory and in the inventory's table (the least recently
    received dropped); the same trigger again takes no new place."""
    t0 = time.time()
    srv, bound = key(0x5C), 4
    server = fleet.server(max_observations=bound, server_keys=(srv.address,), clock=lambda: t0)
    inventory = server.impl.config.data_dir / "inventory.sqlite"
    session = requests.Session()

    def trig(n: int) -> dict[str, Any]:
        return {"source": "server", "header_hash": f"0x{n + 1:064x}", "link": "http://x.example/fw.bin",
                "version": "9.0.0"}

    answers = [signed_post(session, server, srv, "/v1/triggers", trig(n)) for n in range(10)]
    rate = int(OBSERVATION_RATE)
    assert [r.status_code for r in answers] == [202] * rate + [422] * (10 - rate)
    assert all(r.json()["pending"] for r in answers[:rate])
    assert all(code(r) == "not_on_ledger" for r in answers[rate:])
    held = [trig(n)["header_hash"] for n in range(rate - bound, rate)]
    assert [o["header_hash"] for o in server.impl.observations.entries()] == held
    assert rows(inventory, "SELECT COUNT(*) FROM observations") == [(bound,)]
    again = signed_post(session, server, srv, "/v1/triggers", trig(rate - 1))
    assert again.status_code == 202 and len(server.impl.observations) == bound
    assert rows(inventory, "SELECT COUNT(*) FROM observations") == [(bound,)]
    assert [t[0] for t in rows(inventory, "SELECT code FROM triggers ORDER BY id")] == (
        ["pending"] * rate + ["not_on_ledger"] * (10 - rate) + ["pending"])
