"""The device as the tracker's client module: signed update commands, results, relays, intra-device.

docs/MODULES.md sections 1-3, 6-7 seen from the device. The server module (a real tracker: a
thread on the embedded chain, a ``fwledger tracker run`` process on anvil) issues a signed
command in its heartbeat answer; the device verifies it, records its id, installs through the
usual evidence -> precheck -> download -> install path and reports the results, which the
tracker's rollout counts. A :class:`Relay` on loopback stands in for an intermediate module: it
forwards every request to its upstream unchanged and re-signs the answers with its own key (a
key in the device's ``anchors.relays``), gathers ``GET /v1/attestations/{block}`` from all its
upstreams, and can cut the connection of a results report or replace the commands of heartbeat
answers (the attack tests in ``tests/security`` use that). Intra-device: the device runs its own
server-module tracker (``fwledger device run --intra-device``) and updates from the chain.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount

from entities.firmware_consumer.agent import Agent, AgentConfig, PassReport
from entities.firmware_consumer.intra import TRACKER_KEY
from entities.firmware_consumer.provision import load_provisioning
from entities.intra_device import intra_tracker, run_intra_device
from entities.protocol.http_auth import IDENTITY_PATH, sign_response
from ledger_node.errors import ConfigError, FwledgerError
from tests.integration import test_device_network
from tests.integration.test_device_network import (
    REPO,
    WAIT,
    Net,
    Service,
    running,
    tracker_key,
    update,
)

net = test_device_network.net  # the same world fixture (registry, trackers, server, devices)
RELAY_KEY = Account.from_key(b"\x6e" * 32)


class Relay:
    """A stand-in intermediate module on loopback (see the module docstring).

    ``inject``: replaces the ``commands`` of every heartbeat answer with what it returns for them;
    ``drop_results``: the next N results reports get no answer (connection closed);
    ``lose_answers``: the next N results reports reach the tracker, and its answer is lost;
    ``drop_attestations``: attestation requests get no answer (the module behind it is down).
    """

    def __init__(self, upstreams: list[str], key: LocalAccount = RELAY_KEY) -> None:
        self.upstreams, self.key = upstreams, key
        self.inject: Callable[[list[Any]], list[Any]] | None = None
        self.drop_results = self.lose_answers = 0
        self.drop_attestations = False
        self.seen: list[tuple[str, str]] = []
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                relay.handle(self, "GET")

            def do_POST(self) -> None:
                relay.handle(self, "POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return str(self.key.address)

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        self.seen.append((method, h.path))
        if h.path == IDENTITY_PATH:  # the relay's own identity, the audience of the requests it relays
            self.answer(h, 200, json.dumps({"address": self.address}).encode())
            return
        if self.drop_attestations and h.path.startswith("/v1/attestation"):
            h.close_connection = True
            return
        if method == "POST" and h.path.endswith("/results") and self.drop_results > 0:
            self.drop_results -= 1
            h.close_connection = True  # no answer at all: the device finds the module unreachable
            return
        fwd = {k: v for k, v in h.headers.items() if k.lower().startswith("x-fwledger-") or k.lower() == "content-type"}
        resp = requests.request(method, self.upstreams[0] + h.path, data=body or None, headers=fwd, timeout=WAIT)
        status, data = resp.status_code, resp.content
        if method == "POST" and h.path.endswith("/results") and self.lose_answers > 0:
            self.lose_answers -= 1
            h.close_connection = True  # the tracker recorded them; the device hears nothing
            return
        if method == "GET" and h.path.startswith("/v1/attestations/") and status == 200:
            merged = json.loads(data)
            for up in self.upstreams[1:]:
                more = requests.get(up + h.path, timeout=WAIT)
                if more.status_code == 200:
                    merged["attestations"] += more.json()["attestations"]
            data = json.dumps(merged).encode()
        if h.path == "/v1/devices/heartbeat" and status == 200 and self.inject is not None:
            answer = json.loads(data)
            answer["commands"] = self.inject(list(answer.get("commands") or []))
            data = json.dumps(answer).encode()
        self.answer(h, status, data)

    def answer(self, h: BaseHTTPRequestHandler, status: int, data: bytes) -> None:
        """Send ``data`` signed by the relay's key over the request's nonce, as a module does."""
        signed = sign_response(self.key, status, h.path, data, dict(h.headers.items()))
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in signed.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def relays() -> Iterator[list[Relay]]:
    made: list[Relay] = []
    yield made
    for r in made:
        r.close()


def agent_state(root: Path) -> dict[str, Any]:
    return json.loads((root / "agent" / "agent.json").read_text())  # type: ignore[no-any-return]


def rollout_of(trk: Service, header_hash: str) -> dict[str, Any]:
    (row,) = [r for r in trk.get("/v1/rollouts") if r["header_hash"] == header_hash]
    return trk.get(f"/v1/rollouts/{row['id']}")  # type: ignore[no-any-return]


def member(trk: Service, header_hash: str, device_id: str) -> dict[str, Any]:
    return next(m for m in rollout_of(trk, header_hash)["members"] if m["device_id"] == device_id)


# ============================================================================= commands end to end


def test_command_in_heartbeat_is_verified_installed_and_reported(net: Net) -> None:
    """P2-P5, docs/MODULES.md 2-3: the tracker's heartbeat answer carries a signed command (every
    device in the first wave); ``device update --tracker`` verifies it, records its id, installs
    1.1.0 from the server the command's record names, and posts the results, which the rollout
    counts as a success. The next pass gets no command and installs nothing (R10.e.i)."""
    trk, srv = net.tracker(0, wait=False, waves=(1.0,)), net.server(wait=False)
    net.up(trk, srv)
    cam = net.device("cam-cmd", [trk])
    rel = net.release(srv, "main-fw", "1.1.0")
    net.synced(srv, trk, rel=rel)

    res = update(cam, trk)
    assert res.exit_code == 0, res.output + res.stderr
    out = json.loads(res.stdout)
    (cmd,) = out["commands"]
    assert cmd["accepted"] and cmd["code"] is None and cmd["tracker"] == trk.url and cmd["wave"] == 0
    assert out["plan"] == [{"product": "main-fw", "vendor": "acme", "to_version": "1.1.0", "header_hash": rel.hh}]
    (r,) = out["results"]
    assert (r["component"], r["version"], r["outcome"], r["code"]) == ("main-fw", "1.1.0", "confirmed", None)
    assert out["posted"] == [{"command_id": cmd["command_id"], "tracker": trk.url, "ok": True, "code": None,
                              "kept": False}]
    assert running(cam) == ("b", "1.1.0") and (cam / "components/main-fw/slot_b").read_bytes() == rel.image
    m = member(trk, rel.hh, "cam-cmd")
    assert (m["state"], m["command_id"]) == ("succeeded", cmd["command_id"])
    events = [(e["event"], e["command_id"]) for e in agent_state(cam)["command_log"]]
    assert events == [(e, cmd["command_id"]) for e in ("accepted", "done", "reported")]
    assert agent_state(cam)["pending_results"] == []
    accepted = json.loads((cam / "agent" / "commands.json").read_text())["accepted"]
    assert list(accepted) == [cmd["command_id"]]

    again = update(cam, trk)
    assert again.exit_code == 0, again.output + again.stderr
    out = json.loads(again.stdout)
    assert out["commands"] == [] and out["results"] == [] and out["posted"] == []


def behind_relay(net: Net, relays: list[Relay], name: str) -> tuple[Service, Relay, Path, Any]:
    """A server module (one wave) and a firmware server; a relay in front of the module; device
    ``name`` behind the relay (its key in ``anchors.relays``); main-fw 1.1.0 published, synced."""
    trk, srv = net.tracker(0, wait=False, module_keys=(RELAY_KEY.address,)), net.server(wait=False)
    net.up(trk, srv)
    relay = Relay([trk.url])
    relays.append(relay)
    cam = net.device(name, [trk], relays=(relay.address,))
    rel = net.release(srv, "main-fw", "1.1.0")
    net.synced(srv, trk, rel=rel)
    return trk, relay, cam, rel


def test_results_kept_while_the_module_is_unreachable_then_posted(net: Net, relays: list[Relay]) -> None:
    """C11.2.b, docs/MODULES.md 1, 3: a device behind a relay (an intermediate's key in its
    ``anchors.relays``) installs what the command says; the results report gets no answer, so the
    device keeps it in its state and posts it at the next pass, where the tracker records it. Only
    the relay's URL is configured: answers signed by the relay are accepted, the attestation and
    the command still by the server module's key only."""
    trk, relay, cam, rel = behind_relay(net, relays, "cam-relay")

    relay.drop_results = 1
    with Agent(cam, AgentConfig(trackers=(relay.url,), follow="commands")) as agent:
        first = agent.check_and_update()
        assert agent.trackers[0].address == relay.address and agent.trackers[0].relay
    (cmd,) = first.commands
    assert cmd["accepted"] and [r.outcome for r in first.results] == ["confirmed"]
    assert first.posted == [{"command_id": cmd["command_id"], "tracker": relay.url, "ok": False,
                             "code": "tracker_unreachable", "kept": True}]
    (kept,) = agent_state(cam)["pending_results"]
    assert kept["command_id"] == cmd["command_id"] and kept["results"][0]["ok"] is True

    with Agent(cam, AgentConfig(trackers=(relay.url,), follow="commands")) as agent:  # a restart, too
        second = agent.check_and_update()
    assert second.commands == [] and second.results == []
    assert [(p["command_id"], p["ok"]) for p in second.posted] == [(cmd["command_id"], True)]
    assert agent_state(cam)["pending_results"] == []
    m = member(trk, rel.hh, "cam-relay")
    assert (m["state"], m["command_id"]) == ("succeeded", cmd["command_id"])
    assert relay.seen.count(("POST", "/v1/devices/cam-relay/results")) == 2


def test_results_taken_but_answer_lost_are_reported_once(net: Net, relays: list[Relay]) -> None:
    """docs/MODULES.md 3 (C11.2.b, P5): the tracker records a device's results, then the answer is
    lost on the way back (a module stopped in between). The device keeps them and posts them again
    at its next pass; the tracker refuses the second report (``already_reported``), which the
    device counts as taken: nothing kept, its log says reported, and the rollout counted the
    device once."""
    trk, relay, cam, rel = behind_relay(net, relays, "cam-lost")

    relay.lose_answers = 1
    with Agent(cam, AgentConfig(trackers=(relay.url,), follow="commands")) as agent:
        first = agent.check_and_update()
        (cmd,) = first.commands
        assert [(p["ok"], p["code"], p["kept"]) for p in first.posted] == [(False, "tracker_unreachable", True)]
        assert member(trk, rel.hh, "cam-lost")["state"] == "succeeded"  # the tracker has them already
        second = agent.check_and_update()
    assert second.posted == [{"command_id": cmd["command_id"], "tracker": relay.url, "ok": True,
                              "code": "already_reported", "kept": False}]
    state = agent_state(cam)
    assert state["pending_results"] == []
    assert [(e["event"], e["code"]) for e in state["command_log"] if e["command_id"] == cmd["command_id"]] == [
        ("accepted", None), ("done", None), ("report_failed", "tracker_unreachable"),
        ("reported", "already_reported")]
    assert rollout_of(trk, rel.hh)["succeeded"] == 1
    assert relay.seen.count(("POST", "/v1/devices/cam-lost/results")) == 2


def test_attestations_unreachable_mid_command_is_no_failure_and_the_device_is_commanded_again(
        net: Net, relays: list[Relay]) -> None:
    """docs/MODULES.md 4 (CI stop 9): a device accepts a command, then cannot get a single
    attestation (the module behind its relay went down mid-pass). Its result is
    ``tracker_unreachable``, not ``quorum_not_met``: the update could not be tried, so the
    rollout neither counts a failure nor halts, the device is needed again, and the next pass
    gets a new command and installs."""
    trk, relay, cam, rel = behind_relay(net, relays, "cam-att")

    relay.drop_attestations = True
    with Agent(cam, AgentConfig(trackers=(relay.url,), follow="commands")) as agent:
        first = agent.check_and_update()
        relay.drop_attestations = False
        (cmd,) = first.commands
        assert cmd["accepted"] and [(r.code, r.download) for r in first.results] == [("tracker_unreachable", None)]
        assert [p["ok"] for p in first.posted] == [True]
        ro = rollout_of(trk, rel.hh)
        assert (ro["state"], ro["failed"], member(trk, rel.hh, "cam-att")["state"]) == ("running", 0, "needed")
        assert running(cam) == ("a", "1.0.0")
        second = agent.check_and_update()
    (again,) = second.commands
    assert again["accepted"] and again["command_id"] != cmd["command_id"]
    assert [r.outcome for r in second.results] == ["confirmed"] and running(cam) == ("b", "1.1.0")


def test_a_halted_rollout_holds_back_a_device_following_the_plan(net: Net) -> None:
    """docs/MODULES.md 4: a device following the tracker's plan (the default) gets no command from
    a halted rollout and installs nothing from the plan either: the plan lists main-fw 1.1.0 as
    held (``rollout_halted``) and the pass runs nothing. Once an administrator resumes the rollout
    the device is commanded and installs it."""
    trk, srv = net.tracker(0, wait=False, waves=(1.0,)), net.server(wait=False)
    net.up(trk, srv)
    cam = net.device("cam-held", [trk])
    with Agent(cam, AgentConfig(trackers=(trk.url,))) as agent:
        agent.check_and_update()  # the tracker knows the device on 1.0.0
        rel = net.release(srv, "main-fw", "1.1.0")
        net.synced(srv, trk, rel=rel)
        (row,) = wait_until(lambda: [r for r in trk.get("/v1/rollouts") if r["header_hash"] == rel.hh],
                            "the release's rollout")
        trk.post(f"/v1/rollouts/{row['id']}/halt")
        held = agent.check_and_update()
        assert held.commands == [] and held.results == [] and held.plan == []
        assert [(h["header_hash"], h["reason"], h["state"]) for h in held.held] == [
            (rel.hh, "rollout_halted", "halted")]
        assert running(cam) == ("a", "1.0.0")
        trk.post(f"/v1/rollouts/{row['id']}/resume")
        resumed = agent.check_and_update()
    assert [c["accepted"] for c in resumed.commands] == [True] and [r.outcome for r in resumed.results] == [
        "confirmed"]
    assert running(cam) == ("b", "1.1.0")


def wait_until(predicate: Callable[[], Any], what: str) -> Any:
    end = time.monotonic() + WAIT
    while not (got := predicate()):
        assert time.monotonic() < end, f"not within {WAIT} s: {what}"
        time.sleep(0.05)
    return got


def test_device_behind_one_relay_gathers_k_of_n(net: Net, relays: list[Relay]) -> None:
    """Appendix II k of n behind an intermediate (docs/MODULES.md 6): a device provisioned with two
    trackers and k = 2 knows only one URL, a relay in front of both; each tracker attests its own
    newest block, so the device takes ``GET /v1/attestations/{block}`` (every server module's
    attestation the relay knows) to reach k distinct attesters, and installs. The relay's own key
    never counts as an attester: with one tracker's attestation only, the device refuses with
    ``quorum_not_met`` before any download."""
    relay_key = (RELAY_KEY.address,)
    t0, t1 = net.tracker(0, wait=False, module_keys=relay_key), net.tracker(1, wait=False, module_keys=relay_key)
    srv = net.server(wait=False)
    net.up(t0, t1, srv)
    both, alone = Relay([t0.url, t1.url]), Relay([t0.url])
    relays.extend([both, alone])
    cam = net.device("cam-k2", [t0, t1], quorum=2, relays=(both.address,))
    rel = net.release(srv, "main-fw", "1.1.0")
    net.synced(srv, t0, t1, rel=rel)

    with Agent(cam, AgentConfig(trackers=(alone.url,))) as agent:
        report = agent.check_and_update()
    assert [r.code for r in report.results] == ["quorum_not_met"] and running(cam) == ("a", "1.0.0")
    assert [r.download for r in report.results] == [None]
    # that failure halted t0's rollout and the device is failed in it: an administrator has it tried again
    assert t0.get(f"/v1/rollouts/{t0.get('/v1/rollouts')[0]['id']}")["failed"] == 1
    assert t0.retry(rel.hh)["state"] == "running"

    with Agent(cam, AgentConfig(trackers=(both.url,))) as agent:
        report = agent.check_and_update()
    assert [(r.version, r.outcome) for r in report.results] == [("1.1.0", "confirmed")], report.to_json()
    assert any(p.startswith("/v1/attestations/") for _, p in both.seen)
    assert running(cam) == ("b", "1.1.0")


# ============================================================================= intra-device (D8.2.1)


def test_intra_device_tracker_updates_from_the_chain(net: Net) -> None:
    """D8.2.1, docs/MODULES.md 7: a device provisioned with ``--intra-device`` has its own tracker
    key as its anchors' only tracker (k = 1); ``device run --intra-device`` starts that tracker
    (own full node over the chain, loopback port chosen by the OS, data in DIR/tracker) in the
    device process and updates from a release published on the chain, fetching the bundle from
    the server the record names. On anvil it is a real ``fwledger device run`` process stopped
    by SIGTERM. A device not provisioned for it refuses to start one."""
    srv = net.server()
    cam = net.device("cam-intra", [Service("", Path(), lambda: None, address=tracker_key(9).address)], intra=True)
    own = Account.from_key(bytes.fromhex((cam / TRACKER_KEY).read_text().strip()))
    assert load_provisioning(cam).anchors.trackers == (own.address,) and load_provisioning(cam).anchors.quorum == 1
    assert ((cam / TRACKER_KEY).stat().st_mode & 0o777) == 0o600
    rel = net.release(srv, "main-fw", "1.1.0")
    if net.chain.backend == "embedded":
        stop = threading.Event()
        passes: list[PassReport | FwledgerError] = []

        def on_pass(outcome: PassReport | FwledgerError) -> None:
            passes.append(outcome)
            if running(cam) == ("b", "1.1.0"):
                stop.set()

        worker = threading.Thread(target=run_intra_device, args=(cam, net.chain.w3, net.registry.deployment, 0.1,
                                                                 stop), kwargs={"on_pass": on_pass,
                                                                                "poll_interval": 0.05})
        worker.start()
        worker.join(WAIT * 2)
        stop.set()
        assert not worker.is_alive() and running(cam) == ("b", "1.1.0"), passes
        done = [p for p in passes if isinstance(p, PassReport) and p.results]
        assert [(r.version, r.outcome) for r in done[-1].results] == [("1.1.0", "confirmed")]
        assert (cam / "tracker" / "inventory.sqlite").exists()
    else:
        argv = [sys.executable, "-m", "entities.cli", "--home", str(net.home), "device", "run", "--dir", str(cam),
                "--intra-device", "--rpc", net.chain.rpc, "--interval", "0.2", "--ledger-poll", "0.05", "--json"]
        err = net.tmp / "intra.err"
        with open(err, "wb") as fh:
            proc = subprocess.Popen(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "FWLEDGER_KEY_FILE": ""},
                                    stdout=subprocess.PIPE, stderr=fh)
        try:
            end = time.monotonic() + WAIT * 2
            while running(cam) != ("b", "1.1.0"):
                assert proc.poll() is None and time.monotonic() < end, err.read_text()
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=WAIT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, err.read_text()
        summary = json.loads(out)
        assert [(i["version"], i["outcome"]) for i in summary["installed"]] == [("1.1.0", "confirmed")]
        (started,) = [json.loads(line) for line in err.read_text().splitlines() if '"intra_tracker"' in line]
        assert started["intra_tracker"].startswith("http://127.0.0.1:")
    assert (cam / "components/main-fw/slot_b").read_bytes() == rel.image

    plain = net.device("cam-plain", [Service("", Path(), lambda: None, address=tracker_key(9).address)])
    with pytest.raises(ConfigError, match="not provisioned for an in-device tracker"), \
            intra_tracker(plain, net.chain.w3, net.registry.deployment):
        pass
    assert not (plain / "tracker").exists()
