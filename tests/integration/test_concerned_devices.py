"""Who is concerned by a new release, and updates observed elsewhere (C11.3.g, T9.b, T9.e), end to end.

The world is tests/integration/test_device_network.py's ``Net`` (on the embedded chain and on
anvil): real trackers and a real firmware server over loopback HTTP, devices as real folders
updated by the real ``device update`` command or by real agent loops (:class:`Agent` in threads).

- C11.3.g / T9.b: the firmware server works out which of its devices a new release concerns
  (they took an older version of the line from it and their class is one the release supports)
  and names them in its signed trigger; the tracker records "concerned by release X (reported by
  server S)", shows it in its API and dashboard JSON, enrols them in the release's rollout, and
  the devices update. A server's list can only add to the operator's attention list: a device the
  tracker does not plan the release for installs nothing, and a list signed by an unknown server
  (or by anyone but a server) is refused and records nothing.
- T9.e: a device reports a version its tracker never indexed (it installed it through another
  tracker); the tracker, polling the ledger only once an hour, syncs at once, finds the release
  and the other devices of the line and class install it.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from eth_account import Account
from eth_account.signers.local import LocalAccount

from entities.cli import cli
from entities.firmware_consumer.agent import Agent, AgentConfig
from entities.protocol.http_auth import sign_request
from tests.integration.test_device_network import (  # noqa: F401 - net: the world's fixture
    ADMIN,
    HW,
    OTHER_HW,
    Net,
    Service,
    net,
    running,
    update,
)

WAIT = 60.0
SERVER_KEY = Account.from_key(b"\x61" * 32)
STRANGER = Account.from_key(b"\x62" * 32)


def post_trigger(trk: Service, body: dict[str, Any], signer: LocalAccount) -> requests.Response:
    data = json.dumps(body).encode()
    return requests.post(trk.url + "/v1/triggers", data=data, timeout=WAIT, headers={
        **sign_request(signer, "POST", "/v1/triggers", data, audience=trk.address), "Content-Type": "application/json"})


def device_row(trk: Service, device_id: str) -> dict[str, Any]:
    return next(d for d in trk.get("/v1/devices") if d["device_id"] == device_id)  # type: ignore[no-any-return]


def until(what: str, check: Any, timeout: float = WAIT) -> Any:
    end = time.monotonic() + timeout
    while not (out := check()):
        assert time.monotonic() < end, f"never: {what}"
        time.sleep(0.1)
    return out


@contextmanager
def agents(trk: Service, *roots: Path) -> Iterator[None]:
    """Real device agent loops (one pass every 0.2 s) against ``trk``, stopped on exit."""
    stop = threading.Event()
    threads = []
    for root in roots:
        agent = Agent(root, AgentConfig(trackers=(trk.url,)))
        t = threading.Thread(target=agent.run, args=(0.2, stop), daemon=True)
        t.start()
        threads.append((agent, t))
    try:
        yield
    finally:
        stop.set()
        for agent, t in threads:
            t.join(WAIT)
            agent.close()


def dashboard(trk: Service, path: str) -> Any:
    token = (trk.data / "dashboard.token").read_text().strip()
    resp = requests.get(trk.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=WAIT)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_server_names_the_devices_a_release_concerns_and_the_tracker_updates_them(net: Net) -> None:  # noqa: F811
    """C11.3.g, T9.b, C11.2.a/c: cam-1 and cam-2 (class cls-a) and oth (cls-b) took 1.1.0 from the
    server; 1.2.0 is published for cls-a only. The server's signed trigger names cam-1 and cam-2
    (not oth); the tracker lists them "concerned by main-fw 1.2.0 (reported by server S)" in
    /v1/devices, /v1/outdated and the dashboard JSON, plans and commands the release to them, and
    their agents install it (the entries then read updated). The server's operator sees the same list
    (/v1/admin/concerned, ``fwledger server concerned``). A server naming oth for 1.2.0 only adds oth
    to the attention list (not_planned): nothing is installed on it. A list signed by a key not
    in server_keys, or in an administrator's trigger, is refused and records nothing."""
    trk = net.tracker(0, server_keys=(SERVER_KEY.address,), wait=False)
    srv = net.server(notify=(trk.url + "/v1/triggers",), key=SERVER_KEY, wait=False)
    net.up(trk, srv)
    cams = [net.device(f"cam-{n}", [trk]) for n in (1, 2)]
    oth = net.device("oth", [trk], hardware=OTHER_HW)
    r1 = net.release(srv, "main-fw", "1.1.0", hardware=(HW, OTHER_HW))
    net.synced(srv, trk, rel=r1)
    for root in (*cams, oth):  # each takes 1.1.0 from the server: the server knows their line and version
        res = update(root, trk)
        assert res.exit_code == 0 and running(root)[1] == "1.1.0", res.output + res.stderr
    assert all(not d["concerned"] for d in trk.get("/v1/devices"))

    r2 = net.release(srv, "main-fw", "1.2.0")  # cls-a only
    rows = until("the tracker records the devices the server named",
                 lambda: [d for d in trk.get("/v1/devices") if d["concerned"]])
    assert sorted(d["device_id"] for d in rows) == ["cam-1", "cam-2"]
    for d in rows:
        (e,) = d["concerned"]
        assert (e["header_hash"], e["product"], e["version"], e["server"], e["hardware"], e["reported_version"],
                e["state"]) == (r2.hh, "main-fw", "1.2.0", SERVER_KEY.address, HW, "1.1.0", "update_needed")
        assert [(n["header_hash"], n["to_version"]) for n in d["update_needed"]] == [(r2.hh, "1.2.0")]
    listed = trk.get("/v1/outdated")["concerned"]
    assert sorted((e["device_id"], e["header_hash"], e["server"]) for e in listed) == [
        ("cam-1", r2.hh, SERVER_KEY.address), ("cam-2", r2.hh, SERVER_KEY.address)]
    assert sorted(d["device_id"] for d in trk.get("/v1/devices?status=concerned")) == ["cam-1", "cam-2"]
    board = dashboard(trk, "/v1/dashboard/overview")
    assert board["counts"]["concerned"] == 2
    assert sorted(r["device_id"] for r in board["devices"] if "concerned" in r["status"]) == ["cam-1", "cam-2"]
    page = dashboard(trk, "/v1/dashboard/devices/cam-1")
    assert [(e["version"], e["server"]) for e in page["concerned"]] == [("1.2.0", SERVER_KEY.address)]
    (ro,) = [r for r in trk.get("/v1/rollouts") if r["header_hash"] == r2.hh]  # its rollout covers them

    # the server's operator sees the same list, and which trackers were told
    token = (srv.data / "admin.token").read_text().strip()
    view = requests.get(f"{srv.url}/v1/admin/concerned/{r2.hh}", headers={"Authorization": f"Bearer {token}"},
                        timeout=WAIT).json()
    assert [(d["device_id"], d["version"]) for d in view["devices"]] == [("cam-1", "1.1.0"), ("cam-2", "1.1.0")]
    assert [(n["url"], n["status"], n["devices"]) for n in view["notified"]] == [(trk.url + "/v1/triggers", "200", 2)]
    res = CliRunner().invoke(cli, ["server", "concerned", r2.hh, "--server", srv.url, "--token", token, "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["devices"] == view["devices"], res.output
    res = CliRunner().invoke(cli, ["server", "concerned", "0x12", "--server", srv.url, "--token", token])
    assert res.exit_code == 2

    # a lying server names oth (cls-b) for 1.2.0: on the attention list, never an install
    lie = {"source": "server", "header_hash": r2.hh, "link": r2.header.record.data.file_link, "version": "1.2.0",
           "devices": [{"device_id": "oth", "hardware": HW, "version": "1.1.0"}]}
    resp = post_trigger(trk, lie, SERVER_KEY)
    assert resp.status_code == 200 and resp.json()["concerned"] == [{"device_id": "oth", "state": "not_planned"}]
    assert device_row(trk, "oth")["update_needed"] == []
    res = update(oth, trk)
    assert res.exit_code == 0 and json.loads(res.stdout)["results"] == [] and running(oth)[1] == "1.1.0"

    # signed by a key that is no configured server, or in an administrator's trigger: refused, nothing recorded
    before = trk.get("/v1/outdated")["concerned"]
    forged = {**lie, "devices": [{"device_id": "cam-9", "hardware": HW, "version": "1.0.0"}]}
    resp = post_trigger(trk, forged, STRANGER)
    assert (resp.status_code, resp.json()["error"]["code"]) == (403, "unknown_party")
    resp = post_trigger(trk, {**forged, "source": "admin"}, ADMIN)
    assert (resp.status_code, resp.json()["error"]["code"]) == (403, "devices_not_allowed")
    assert trk.get("/v1/outdated")["concerned"] == before
    assert all(e["device_id"] != "cam-9" for d in trk.get("/v1/devices") for e in d["concerned"])

    with agents(trk, *cams):  # the tracker's commands reach the concerned devices
        until("cam-1 and cam-2 run 1.2.0", lambda: all(running(c)[1] == "1.2.0" for c in cams))
    until("the tracker sees them updated",
          lambda: all(e["state"] == "updated" for n in ("cam-1", "cam-2") for e in device_row(trk, n)["concerned"]))
    assert [e["device_id"] for e in trk.get("/v1/outdated")["concerned"]] == ["oth"]
    members = {m["device_id"]: m["state"] for m in trk.get(f"/v1/rollouts/{ro['id']}")["members"]}
    assert (members["cam-1"], members["cam-2"]) == ("succeeded", "succeeded") and "oth" not in members


def test_an_update_observed_elsewhere_makes_the_tracker_sync_and_update_the_line(net: Net) -> None:  # noqa: F811
    """T9.e, C11.2.c: tracker A polls the ledger once an hour and indexed it before 1.1.0 was
    published. Device d1 installs 1.1.0 through tracker B, then reports to A: a version A has never
    seen. A syncs at once (nothing else would make it before an hour), finds 1.1.0 on the ledger and
    the other cls-a devices reporting to it (real agent loops) install it; the cls-b device does not."""
    ta, tb, srv = net.tracker(0, poll_interval=3600, wait=False), net.tracker(1, wait=False), net.server(wait=False)
    net.up(ta, tb, srv)
    net.synced(None, ta)  # A's one poll of the hour is done
    d1 = net.device("d1", [ta, tb])
    others = [net.device(f"d{n}", [ta]) for n in (2, 3)]
    odd = net.device("d4", [ta], hardware=OTHER_HW)
    with agents(ta, *others, odd):
        until("every agent reported to A", lambda: len(ta.get("/v1/devices")) == 3)
        rel = net.release(srv, "main-fw", "1.1.0")
        net.synced(srv, tb, rel=rel)
        assert ta.health()["ledger_block"] < int(net.chain.w3.eth.block_number)  # A has not seen it
        res = update(d1, tb)  # installed through the other tracker
        assert res.exit_code == 0 and running(d1) == ("b", "1.1.0"), res.output + res.stderr
        assert all(running(r)[1] == "1.0.0" for r in others)
        res = update(d1, ta)  # d1 reports 1.1.0 to A: an update observed (T9.e)
        assert res.exit_code == 0, res.output + res.stderr
        until("d2 and d3 run the observed version", lambda: all(running(r) == ("b", "1.1.0") for r in others))
    assert running(odd) == ("a", "1.0.0")
    assert ta.health()["ledger_block"] >= int(net.chain.w3.eth.block_number) - 1
    assert {"d1", "d2", "d3"} <= set(ta.get("/v1/outdated")["up_to_date"])


def test_an_update_observed_before_its_release_is_confirmed_is_kept_until_it_is(net: Net) -> None:  # noqa: F811
    """T9.e with confirmations: tracker A indexes only blocks 2 deep and polls the ledger once an
    hour; the devices run main-fw 1.0.0, on the ledger. d1 installs 1.1.0 through tracker B (no confirmations) and reports it to A before 1.1.0's
    block is 2 deep: A's wake-up sync does not find it. A keeps the observation pending (shown in
    /health and /v1/outdated) and syncs again as blocks arrive; once the release is confirmed
    the line's other cls-a devices install it, long before A's next hourly poll, and the
    observation is settled."""
    tb, srv = net.tracker(1, wait=False), net.server(wait=False)
    net.up(tb, srv)
    net.release(srv, "main-fw", "1.0.0", hardware=(HW, OTHER_HW))  # what the devices run: the line's first
    net.mine(2)  # ... 2 deep before A starts, with the registry's vendor and classes
    ta = net.tracker(0, poll_interval=3600, confirmations=2)
    start = int(net.chain.w3.eth.block_number)
    until("A's one poll of the hour is done", lambda: (ta.health()["ledger_block"] or -1) >= start - 2)
    d1 = net.device("d1", [ta, tb])
    others = [net.device(f"d{n}", [ta]) for n in (2, 3)]
    odd = net.device("d4", [ta], hardware=OTHER_HW)
    with agents(ta, *others, odd):
        until("every agent reported to A", lambda: len(ta.get("/v1/devices")) == 3)
        rel = net.release(srv, "main-fw", "1.1.0")
        net.synced(srv, tb, rel=rel)
        res = update(d1, tb)  # installed through the other tracker
        assert res.exit_code == 0 and running(d1) == ("b", "1.1.0"), res.output + res.stderr
        published = int(net.chain.w3.eth.block_number)
        res = update(d1, ta)  # d1 reports 1.1.0 to A: an update observed (T9.e), not yet 2 blocks deep
        assert res.exit_code == 0, res.output + res.stderr
        (seen,) = until("A keeps the observation pending", lambda: ta.get("/v1/outdated")["observations_pending"])
        assert (seen["vendor"], seen["product"], seen["version"], seen["devices"]) == (
            "acme", "main-fw", "1.1.0", ["d1"])
        assert ta.health()["observations_pending"] == 1
        key_file = net.tmp / "admin.key"
        key_file.write_text(ADMIN.key.hex())
        res = CliRunner().invoke(cli, ["--home", str(net.home), "--key-file", str(key_file), "tracker", "outdated",
                                       "--tracker", ta.url, "--tracker-key", ta.address])
        assert res.exit_code == 0 and "observed acme/main-fw 1.1.0 on 1 device(s), not on the indexed ledger yet" \
            in res.stdout, res.output
        assert (ta.health()["ledger_block"] or -1) < published  # the release is not confirmed yet
        assert all(running(r)[1] == "1.0.0" for r in others)
        net.mine(2)  # the release's block is now 2 deep: nothing else wakes A before the hour
        until("d2 and d3 run the observed version", lambda: all(running(r) == ("b", "1.1.0") for r in others))
    assert running(odd) == ("a", "1.0.0")
    assert ta.get("/v1/outdated")["observations_pending"] == [] and ta.health()["observations_pending"] == 0
    assert {"d1", "d2", "d3"} <= set(ta.get("/v1/outdated")["up_to_date"])
    log = ta.get("/v1/devices/d1")["log"]
    assert any(e["kind"] == "T9.e" and e["detail"]["pending"] == {"main-fw": "pending"} for e in log)


def test_a_server_trigger_for_a_release_not_confirmed_yet_is_kept_pending_until_it_is(net: Net) -> None:  # noqa: F811
    """T9.b, T9.e with confirmations: tracker A indexes only blocks 2 deep and polls once an hour.
    The firmware server's signed trigger for main-fw 1.1.0 (naming d1) arrives before 1.1.0's block
    is 2 deep: A answers 202 ``pending``, lists it in /v1/outdated, and once the release is
    confirmed acts on it as on any accepted T9.b trigger: d1 and d2 are planned 1.1.0 (cause the
    trigger's), d1 is recorded as concerned. The same trigger signed by a key that is no
    configured server, unsigned, or an administrator's trigger for the unconfirmed release is
    refused as it always was, and nothing is kept pending."""
    srv = net.server()
    net.release(srv, "main-fw", "1.0.0", hardware=(HW, OTHER_HW))  # what the devices run
    net.mine(2)
    ta = net.tracker(0, poll_interval=3600, confirmations=2, server_keys=(SERVER_KEY.address,))
    start = int(net.chain.w3.eth.block_number)
    until("A's one poll of the hour is done", lambda: (ta.health()["ledger_block"] or -1) >= start - 2)
    devs = [net.device(f"d{n}", [ta]) for n in (1, 2)]
    for root in devs:  # each reports 1.0.0 to A (nothing to install yet)
        res = update(root, ta)
        assert res.exit_code == 0 and running(root) == ("a", "1.0.0"), res.output + res.stderr
    rel = net.release(srv, "main-fw", "1.1.0")
    body = {"source": "server", "header_hash": rel.hh, "link": rel.header.record.data.file_link, "version": "1.1.0",
            "devices": [{"device_id": "d1", "hardware": HW, "version": "1.0.0"}]}

    resp = post_trigger(ta, body, STRANGER)  # refused exactly as before: nothing kept
    assert (resp.status_code, resp.json()["error"]["code"]) == (403, "unknown_party")
    resp = requests.post(ta.url + "/v1/triggers", json=body, timeout=WAIT)
    assert (resp.status_code, resp.json()["error"]["code"]) == (401, "unsigned")
    resp = post_trigger(ta, {**body, "source": "admin", "devices": []}, ADMIN)  # only T9.b waits
    assert (resp.status_code, resp.json()["error"]["code"]) == (422, "not_on_ledger")
    assert ta.get("/v1/outdated")["observations_pending"] == [] and ta.health()["observations_pending"] == 0

    resp = post_trigger(ta, body, SERVER_KEY)
    assert resp.status_code == 202, resp.text
    out = resp.json()
    assert (out["accepted"], out["pending"], out["header_hash"], out["clause"]) == (False, True, rel.hh, "T9.b")
    (seen,) = ta.get("/v1/outdated")["observations_pending"]
    assert (seen["source"], seen["header_hash"], seen["version"], seen["signer"], seen["devices"]) == (
        "server", rel.hh, "1.1.0", SERVER_KEY.address, ["d1"])
    assert (ta.health()["ledger_block"] or -1) < int(net.chain.w3.eth.block_number) - 1  # not confirmed yet
    assert all(device_row(ta, d)["update_needed"] == [] for d in ("d1", "d2"))
    assert device_row(ta, "d1")["concerned"] == []

    net.mine(2)  # 1.1.0's block is 2 deep: nothing else wakes A before the hour
    def planned() -> list[dict[str, str]] | None:  # both rows: the devices are planned one after the other
        got = [n for d in ("d1", "d2") for n in device_row(ta, d)["update_needed"] if n["header_hash"] == rel.hh]
        return got if len(got) == 2 else None

    needs = until("d1 and d2 are planned 1.1.0", planned)
    assert len(needs) == 2 and all(n["to_version"] == "1.1.0" and n["cause"].startswith("T9.b#") for n in needs)
    (entry,) = device_row(ta, "d1")["concerned"]
    assert (entry["header_hash"], entry["server"], entry["state"]) == (rel.hh, SERVER_KEY.address, "update_needed")
    assert ta.get("/v1/outdated")["observations_pending"] == []
    trigs = [t for t in ta.get("/v1/triggers") if t["header_hash"] == rel.hh and t["source"] == "server"]
    assert [(t["accepted"], t["code"]) for t in trigs] == [(True, None), (False, "pending"), (False, "unknown_party")]
    res = update(devs[1], ta)  # and the update itself reaches the device
    assert res.exit_code == 0 and running(devs[1]) == ("b", "1.1.0"), res.output + res.stderr


def test_a_pending_observation_survives_the_tracker_killed_with_sigkill(net: Net) -> None:  # noqa: F811
    """T9.e across a crash: an observation pending on tracker A (d1 reported 1.1.0, not yet 2 blocks
    deep) is in A's database, so A killed with SIGKILL and restarted still has it, syncs for it,
    and plans 1.1.0 to d2 (cause T9.e) once the release is confirmed; d2 installs it. Real processes:
    the anvil world only."""
    if net.chain.backend != "anvil":
        pytest.skip("the embedded world runs trackers as threads; a process to kill needs anvil")
    tb, srv = net.tracker(1, wait=False), net.server(wait=False)
    net.up(tb, srv)
    net.release(srv, "main-fw", "1.0.0", hardware=(HW, OTHER_HW))
    net.mine(2)
    ta = net.tracker(0, poll_interval=3600, confirmations=2)
    start = int(net.chain.w3.eth.block_number)
    until("A's one poll of the hour is done", lambda: (ta.health()["ledger_block"] or -1) >= start - 2)
    d1, d2 = net.device("d1", [ta, tb]), net.device("d2", [ta])
    res = update(d2, ta)
    assert res.exit_code == 0 and running(d2) == ("a", "1.0.0"), res.output + res.stderr
    rel = net.release(srv, "main-fw", "1.1.0")
    net.synced(srv, tb, rel=rel)
    res = update(d1, tb)
    assert res.exit_code == 0 and running(d1) == ("b", "1.1.0"), res.output + res.stderr
    res = update(d1, ta)  # observed by A, not confirmed yet
    assert res.exit_code == 0, res.output + res.stderr
    until("A keeps the observation pending", lambda: ta.get("/v1/outdated")["observations_pending"])

    assert ta.proc is not None
    os.kill(ta.proc.pid, signal.SIGKILL)
    ta.proc.wait(WAIT)
    ta = net.tracker(0, poll_interval=3600, confirmations=2)  # same data folder and key, a new process
    (seen,) = ta.get("/v1/outdated")["observations_pending"]
    assert (seen["vendor"], seen["product"], seen["version"], seen["devices"]) == ("acme", "main-fw", "1.1.0", ["d1"])
    assert device_row(ta, "d2")["update_needed"] == []

    net.mine(2)
    (need,) = until("d2 is planned 1.1.0", lambda: device_row(ta, "d2")["update_needed"])
    assert (need["header_hash"], need["to_version"], need["cause"]) == (rel.hh, "1.1.0", "T9.e")
    assert ta.get("/v1/outdated")["observations_pending"] == []
    res = update(d2, ta)
    assert res.exit_code == 0 and running(d2) == ("b", "1.1.0"), res.output + res.stderr
