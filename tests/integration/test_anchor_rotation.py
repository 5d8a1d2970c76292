"""Rotating the devices' trust anchors over the air (issue 15): trackers {A, B} with k = 2 become
{B, C} with k = 2, on the embedded chain and on anvil (where the trackers are real ``fwledger
tracker run`` processes).

The operator's side runs through the real CLI: new anchors with a serial, one ``fleet
anchors-sign`` per tracker key (each taken from its tracker's data folder, where ``tracker run``
keeps it), ``tracker anchors-push`` to the server modules. The device's agent takes the statement
at its next pass (step 0, before its anchors serve anything else) and then updates with B's and
C's attestations, while evidence attested by A alone is refused. A compromised A serves a
statement of its own (signed by A and a key of its choosing): the device refuses it with its
code. An intermediate module relays the statements to a device below it. Nothing is mocked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests
from click.testing import CliRunner, Result

from entities.cli import cli
from entities.firmware_consumer.agent import Agent, AgentConfig
from entities.firmware_consumer.anchors import current_anchors
from entities.firmware_consumer.provision import gather_evidence, load_provisioning
from entities.protocol.anchor_rotation import new_statement, sign_statement
from entities.status_tracker.app import verify_response
from entities.status_tracker.config import TrackerConfig
from entities.status_tracker.intermediate import Intermediate, IntermediateThread, create_intermediate_app
from tests.integration import test_device_network
from tests.integration.test_device_network import ADMIN, HW, WAIT, Net, main_fw, running, slots, tracker_key
from tests.unit.test_anchor_rotation import D

net = test_device_network.net  # the same world fixture (registry, trackers, server, devices)


def fw(net: Net, *args: str) -> Result:
    """The CLI against the world's home (and its chain, for the commands that read it)."""
    key = net.tmp / "admin.key"
    key.write_text(ADMIN.key.hex())
    pre = ["--home", str(net.home), "--key-file", str(key)]
    if net.chain.backend != "embedded":
        pre += ["--rpc", net.chain.rpc]
    return CliRunner().invoke(cli, [*pre, *args], catch_exceptions=False)


def ok(res: Result) -> Any:
    assert res.exit_code == 0, res.output + res.stderr
    return json.loads(res.stdout)


def new_anchors(net: Net, trackers: list[Any], quorum: int, serial: int, relays: tuple[str, ...]) -> Path:
    """``fwledger device anchors ... --serial N`` (on anvil through the CLI; the embedded chain
    lives in this process only, so there the same function the CLI calls writes it)."""
    out = net.tmp / "new-anchors.json"
    if net.chain.backend == "embedded":
        out.write_text(json.dumps({**net.anchors(trackers, quorum, relays).to_json(), "serial": serial}))
        return out
    got = ok(fw(net, "device", "anchors", *[a for t in trackers for a in ("--tracker", t.address)],
                "--quorum", str(quorum), "--max-age", "3600", "--serial", str(serial),
                *[a for r in relays for a in ("--relay", r)], "-o", str(out), "--json"))
    assert got["serial"] == serial and got["trackers"] == [t.address for t in trackers]
    return out


def test_rotation_from_a_b_to_b_c_over_the_air(net: Net) -> None:
    a, b, c = (net.tracker(n, wait=False) for n in range(3))
    srv = net.server(wait=False)
    net.up(a, b, c, srv)
    mid_data = net.tmp / "mid"
    mid = Intermediate(TrackerConfig(data_dir=mid_data, role="intermediate", poll_interval=0.05,
                                     upstreams=(b.url,), upstream_keys=(b.address,)).validate())
    mid_thread = IntermediateThread(create_intermediate_app(mid, follow=False))
    mid.url = mid_thread.url
    mid_thread.start()
    net.started.append(test_device_network.Service(mid_thread.url, mid_data, mid_thread.stop))

    cam = net.device("cam-rot", [a, b], quorum=2)
    below = net.device("cam-below", [a, b], quorum=2, relays=(mid.address,))
    assert current_anchors(cam) == (load_provisioning(cam).anchors, 0)

    # -- the operator: new anchors (serial 1), signed by A and B (the current k) and B and C (the new k)
    stmt = net.tmp / "statement.json"
    src = new_anchors(net, [b, c], 2, 1, (mid.address,))
    for i, t in enumerate((a, b, c)):
        got = ok(fw(net, "fleet", "anchors-sign", str(stmt if i else src), "--key-file", str(t.data / "tracker.key"),
                    "-o", str(stmt), "--json"))
        assert got["signer"] == t.address and got["serial"] == 1
    assert got["new_quorum_met"] is True and got["signers"] == sorted([a.address, b.address, c.address])
    for t in (b, c):
        pushed = ok(fw(net, "tracker", "anchors-push", str(stmt), "--tracker", t.url, "--tracker-key", t.address,
                       "--json"))
        assert (pushed["serial"], pushed["trackers"]) == (1, [b.address, c.address])
    again = fw(net, "tracker", "anchors-push", str(stmt), "--tracker", b.url)
    assert again.exit_code == 1 and "anchors_not_newer" in again.stderr and again.stderr.count("\n") == 1

    # -- a compromised A holds a statement of its own: itself and D, k = 1, serial 2
    forged = new_statement({**json.loads(stmt.read_text())["anchors"], "trackers": [a.address, D.address],
                            "quorum": 1, "relays": []}, 2)
    forged = sign_statement(D, sign_statement(tracker_key(0), forged))
    ok(fw(net, "tracker", "anchors-push", str(_write(net.tmp / "forged.json", forged)), "--tracker", a.url, "--json"))

    # -- the device's next pass: rotation first, then the update with B's and C's attestations
    rel = net.release(srv, "main-fw", "1.1.0")
    net.synced(srv, a, b, c, rel=rel)
    with Agent(cam, AgentConfig(trackers=(a.url, b.url, c.url), servers=(srv.url,))) as agent:
        report = agent.check_and_update()
    rot = report.anchors
    assert rot is not None and rot["serial"] == 1
    assert [(x["serial"], x["tracker"], x["trackers"]) for x in rot["applied"]] == [(1, b.url, [b.address, c.address])]
    assert [(x["serial"], x["tracker"], x["code"]) for x in rot["refused"]] == [(2, a.url, "anchors_quorum")]
    assert load_provisioning(cam).anchors.trackers == (b.address, c.address) and current_anchors(cam)[1] == 1
    assert json.loads((cam / "anchors.json").read_text())["statement"] == json.loads(stmt.read_text())
    assert [(r.version, r.outcome) for r in report.results] == [("1.1.0", "confirmed")], report.to_json()
    by_url = {t["url"]: t for t in report.trackers}
    assert by_url[b.url]["ok"] and by_url[c.url]["ok"] and not by_url[a.url]["ok"]  # A's answers: not trusted
    assert running(cam) == ("b", "1.1.0")

    # -- evidence attested by A alone (the retired key) is refused, nothing installed
    nxt = net.release(srv, "main-fw", "1.2.0")
    net.synced(srv, a, b, c, rel=nxt)
    anchors = load_provisioning(cam).anchors
    record = next(r for r in _line(net, anchors) if "0x" + r.header_hash.hex() == nxt.hh)
    ev = gather_evidence(net.chain.w3, anchors, record, HW, [tracker_key(0)])
    evidence = _write(net.tmp / "a-only.evidence.json", ev.to_json())
    before = slots(cam)
    res = CliRunner().invoke(cli, ["device", "update", "--dir", str(cam), "--bundle", str(nxt.path), "--evidence",
                                   str(evidence)], catch_exceptions=False)
    assert res.exit_code == 1 and res.stderr.startswith("error: quorum_not_met: ") and res.stderr.count("\n") == 1
    assert slots(cam) == before and main_fw(cam)["last_result"]["code"] == "quorum_not_met"
    # the same release attested by B and C installs
    good = _write(net.tmp / "bc.evidence.json",
                  gather_evidence(net.chain.w3, anchors, record, HW, [tracker_key(1), tracker_key(2)]).to_json())
    res = CliRunner().invoke(cli, ["device", "update", "--dir", str(cam), "--bundle", str(nxt.path), "--evidence",
                                   str(good), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    assert running(cam) == ("a", "1.2.0")

    # -- a device behind the intermediate takes the statement relayed (signed by the module)
    resp = requests.get(mid.url + "/v1/anchors?after=0", timeout=WAIT)
    assert resp.status_code == 200 and resp.json()["statements"] == [json.loads(stmt.read_text())]
    assert verify_response(resp.headers, 200, "/v1/anchors?after=0", resp.content, tracker=mid.address)
    with Agent(below, AgentConfig(trackers=(mid.url,))) as agent:
        out = agent.refresh_anchors()
        assert [x["serial"] for x in out["applied"]] == [1] and agent.trackers[0].provisioned == {
            b.address, c.address, mid.address}
        assert agent.refresh_anchors()["applied"] == []  # nothing newer: nothing rewritten
    assert load_provisioning(below).anchors.relays == (mid.address,)


def _write(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj))
    return path


def _line(net: Net, anchors: Any) -> list[Any]:
    from entities.firmware_consumer.provision import line_records
    from ledger_node.record import line_id

    return line_records(net.chain.w3, anchors, line_id("acme", "main-fw"))
