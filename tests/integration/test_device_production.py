"""The production path for devices (issue 15): provisioned with no firmware, with a factory image
(verified, or unverified), trials without a health command, header-age settings, and pass lines
that never contradict each other.

The world is test_device_network's (a registry, real trackers and a firmware server on loopback:
threads on the embedded chain, ``fwledger ... run`` processes on anvil); devices are real folders,
``device run`` a real process stopped by its PID. The one injected fault is a device clock set
ahead (a header older than the anchors allow, ``stale_header``), which nothing on loopback can
cause otherwise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
from click.testing import CliRunner
from eth_account import Account

from entities.cli import cli
from entities.device_cli import _pass_lines
from entities.firmware_consumer.agent import Agent, AgentConfig
from entities.firmware_consumer.provision import (
    ComponentBinding,
    anchors_from_deployment,
    find_published,
    gather_evidence,
    provision_device,
)
from entities.protocol.http_auth import sign_request
from ledger_node.compiler import registry_contract
from ledger_node.fsutil import atomic_write_json
from tests.integration import test_device_network
from tests.integration.test_device_network import HW, REPO, WAIT, Net, Service, main_fw, tracker_key, update
from tests.security.world import factory_image

net = test_device_network.net  # the same world fixture


def bare(net: Net, name: str, trackers: list[Service], *, health: list[str] | None = None,
         max_age: float = 3600) -> Path:
    """A device provisioned as the README's step 6 does: acme/main-fw, no factory image."""
    root = net.tmp / "devices" / name
    anchors = anchors_from_deployment(net.registry.deployment, registry_contract(),
                                      trackers=[t.address for t in trackers], quorum=1, max_header_age=max_age)
    provision_device(root, device_id=name, hardware=HW, components={"main-fw": ComponentBinding("main-fw", "acme")},
                     anchors=anchors, class_private_key=net.class_keys[HW].private_bytes_raw(),
                     health_command=health)
    return root


def device_row(trk: Service, name: str) -> dict[str, Any]:
    return next(d for d in trk.get("/v1/devices") if d["device_id"] == name)


def wait_for(what: str, check: Any) -> Any:
    end = time.monotonic() + WAIT * 2
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"never: {what}")


def cli_run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner(env=env).invoke(cli, list(args), catch_exceptions=False)


def files_and_anchors(net: Net, trk: Service, tmp: Path) -> tuple[Path, Path]:
    """The anchors file and the class key file ``device init`` takes."""
    anchors = anchors_from_deployment(net.registry.deployment, registry_contract(), trackers=[trk.address],
                                      quorum=1, max_header_age=3600)
    a, k = tmp / "anchors.json", tmp / "class.key"
    atomic_write_json(a, anchors.to_json())
    k.write_text(net.class_keys[HW].private_bytes_raw().hex())
    return a, k


# ============================================================================= no firmware at all


def test_device_without_firmware_is_not_up_to_date_and_device_run_installs_a_later_release(net: Net) -> None:
    """A device provisioned with no factory image (README step 6) reports its component with no
    version; the tracker lists it "no firmware", never up to date, even with no release at all.
    `fwledger device run` (a real process, no health command) then installs 1.0.0 published after
    it started (an install from nothing, counter 0.0.0), confirms it once it reached its tracker,
    and the tracker lists it up to date."""
    trk, srv = net.tracker(0, wait=False), net.server(wait=False)
    net.up(trk, srv)
    root = bare(net, "empty-1", [trk])
    env = {**os.environ, "PYTHONPATH": str(REPO), "FWLEDGER_KEY_FILE": ""}
    log = net.tmp / "device-run.log"
    with open(log, "ab") as err:
        proc = subprocess.Popen([sys.executable, "-m", "entities.cli", "device", "run", "--dir", str(root),
                                 "--tracker", trk.url, "--interval", "0.3"], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        row = wait_for("the device reported", lambda: next(
            (d for d in trk.get("/v1/devices") if d["device_id"] == "empty-1"), None))
        assert row["components"]["main-fw"] == {"vendor": "acme", "version": None, "slot": None, "state": "empty"}
        assert row["firmware"] == ["no-firmware"]
        lists = trk.get("/v1/outdated")
        assert "empty-1" in lists["no_firmware"] and "empty-1" not in lists["up_to_date"]
        assert [d["device_id"] for d in trk.get("/v1/devices?status=no-firmware")] == ["empty-1"]
        assert trk.get("/v1/devices?status=up-to-date") == []

        rel = net.release(srv, "main-fw", "1.0.0")  # published after the device started
        net.synced(srv, trk, rel=rel)
        wait_for("1.0.0 confirmed", lambda: main_fw(root)["version"] == "1.0.0"
                 and main_fw(root)["confirmed"] is not None)
        wait_for("listed up to date", lambda: "empty-1" in trk.get("/v1/outdated")["up_to_date"])
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(30)
    st = main_fw(root)
    assert (st["counter"], st["firmware_state"], st["header_hash"]) == ("1.0.0", "confirmed", rel.hh)
    assert (root / "components/main-fw" / f"slot_{st['confirmed']}").read_bytes() == rel.image
    assert device_row(trk, "empty-1")["components"]["main-fw"]["version"] == "1.0.0"
    text = log.read_text()
    assert "trial confirmed (booted and reached its tracker)" in text, text


# ============================================================================= factory images


def test_device_init_places_a_verified_factory_image_and_refuses_a_bad_one(net: Net) -> None:
    """`device init --factory main-fw=BUNDLE --evidence FILE` verifies the bundle like an update and
    places it confirmed in slot a (no trial; counter = its version). A tampered payload, or
    evidence of another release, is refused with the code `device update` gives, and no device
    folder is left behind."""
    trk, srv = net.tracker(0, wait=False), net.server(wait=False)
    net.up(trk, srv)
    rel = net.release(srv, "main-fw", "1.0.0")
    other = net.release(srv, "main-fw", "1.1.0")
    anchors_file, key_file = files_and_anchors(net, trk, net.tmp)
    from entities.firmware_consumer.verify import TrustAnchors

    anchors = TrustAnchors.from_json(json.loads(anchors_file.read_text()))
    w3 = net.chain.w3

    ev_of = {}
    for r in (rel, other):
        record = find_published(w3, anchors, r.header)
        assert record is not None
        ev = gather_evidence(w3, anchors, record, HW, [tracker_key(0)])
        ev_of[r.hh] = net.tmp / f"{r.hh[:10]}.evidence.json"
        atomic_write_json(ev_of[r.hh], ev.to_json())
    base = ["device", "init", "--id", "fac-1", "--hardware", HW, "--component", "main-fw=acme/main-fw",
            "--anchors", str(anchors_file), "--class-key", str(key_file), "--json"]

    # 1.0.0 is not the newest release (1.1.0 is): refused not_newest, exactly as device update would
    root = net.tmp / "devices" / "fac-1"
    res = cli_run(*base, "--dir", str(root), "--factory", f"main-fw={rel.path}", "--evidence", str(ev_of[rel.hh]))
    assert res.exit_code == 1 and "error: not_newest:" in res.stderr, res.output + res.stderr
    assert not root.exists()
    # evidence of another release: the bundle's record is not the evidence's
    res = cli_run(*base, "--dir", str(root), "--factory", f"main-fw={rel.path}", "--evidence",
                  str(ev_of[other.hh]))
    assert res.exit_code == 1 and "error: record_mismatch:" in res.stderr, res.stderr
    assert not root.exists()
    # a tampered payload (the last byte of the bundle flipped): refused while decrypting
    bad = net.tmp / "tampered.fwb"
    data = bytearray(other.path.read_bytes())
    data[-1] ^= 1
    bad.write_bytes(bytes(data))
    res = cli_run(*base, "--dir", str(root), "--factory", f"main-fw={bad}", "--evidence", str(ev_of[other.hh]))
    assert res.exit_code == 1 and json.loads(res.stdout)["code"] in ("chunk_auth_failed", "hash_mismatch",
                                                                     "merkle_mismatch"), res.stdout
    code = json.loads(res.stdout)["code"]
    assert not root.exists()
    # the same bundle through device update on a provisioned device: the same code
    plain = bare(net, "plain-1", [trk])
    res = cli_run("device", "update", "--dir", str(plain), "--bundle", str(bad), "--evidence",
                  str(ev_of[other.hh]), "--json")
    assert res.exit_code == 1 and json.loads(res.stdout)["code"] == code

    res = cli_run(*base, "--dir", str(root), "--factory", f"main-fw={other.path}", "--evidence",
                  str(ev_of[other.hh]))
    assert res.exit_code == 0, res.output + res.stderr
    out = json.loads(res.stdout)
    assert out["factory"]["main-fw"] == {"version": "1.1.0", "verified": True, "header_hash": other.hh,
                                         "size": len(other.image)}
    st = main_fw(root)
    assert (st["confirmed"], st["slots"]["a"]["version"], st["counter"], st["trial"], st["firmware_state"]) == (
        "a", "1.1.0", "1.1.0", None, "confirmed")
    assert (root / "components/main-fw/slot_a").read_bytes() == other.image


def test_unverified_factory_image_is_never_up_to_date_and_is_offered_the_release(net: Net) -> None:
    """`--factory-image main-fw=FILE --factory-version 1.1.0` places bytes without evidence: the
    counter stays 0.0.0, the device reports it unverified, the tracker lists it so (never up to
    date, even though the version it claims is the newest) and offers it 1.1.0, which the device
    verifies and installs over it."""
    trk, srv = net.tracker(0, wait=False), net.server(wait=False)
    net.up(trk, srv)
    rel = net.release(srv, "main-fw", "1.1.0")
    net.synced(srv, trk, rel=rel)
    anchors_file, key_file = files_and_anchors(net, trk, net.tmp)
    image = net.tmp / "factory.bin"
    image.write_bytes(b"whatever the factory flashed\n" * 100)
    root = net.tmp / "devices" / "unv-1"
    res = cli_run("device", "init", "--dir", str(root), "--id", "unv-1", "--hardware", HW, "--component",
                  "main-fw=acme/main-fw", "--anchors", str(anchors_file), "--class-key", str(key_file),
                  "--factory-image", f"main-fw={image}", "--factory-version", "1.1.0", "--json")
    assert res.exit_code == 0, res.output + res.stderr
    assert json.loads(res.stdout)["factory"]["main-fw"]["verified"] is False
    st = main_fw(root)
    assert (st["slots"]["a"]["version"], st["counter"], st["firmware_state"]) == ("1.1.0", "0.0.0", "unverified")
    status = json.loads(cli_run("device", "status", "--dir", str(root), "--json").stdout)
    assert status["needs_update"] is True

    out = json.loads(update(root, trk).stdout)
    (r,) = out["results"]
    assert (r["version"], r["outcome"], r["header_hash"]) == ("1.1.0", "trial", rel.hh), out  # no --health-cmd
    assert json.loads(update(root, trk).stdout)["confirmed"] == ["main-fw"]  # reached its tracker: confirmed
    st = main_fw(root)
    assert (st["active"], st["counter"], st["firmware_state"]) == ("b", "1.1.0", "confirmed")
    assert "unv-1" in trk.get("/v1/outdated")["up_to_date"]


def test_tracker_lists_an_unverified_device_and_never_up_to_date(net: Net) -> None:
    """The tracker side alone, from signed heartbeats: an unverified component claiming the newest
    version is listed unverified and outdated, with the plan to install 1.1.0 over it; an older
    device's heartbeat (string versions, no state) still reads as confirmed and up to date; a
    heartbeat whose state and version disagree is refused."""
    trk, srv = net.tracker(0, wait=False), net.server(wait=False)
    net.up(trk, srv)
    rel = net.release(srv, "main-fw", "1.1.0")
    net.synced(srv, trk, rel=rel)

    def beat(device_id: str, comp: dict[str, Any]) -> Any:
        body = {"device_id": device_id, "hardware": HW, "components": {"main-fw": {"vendor": "acme", **comp}},
                "ready": True}
        return trk.post("/v1/devices/heartbeat", body, signer=Account.from_key(os.urandom(32)))

    assert beat("unv-2", {"version": "1.1.0", "slot": "a", "state": "unverified"})["outdated"] is True
    assert beat("old-1", {"version": "1.1.0", "slot": "A"})["outdated"] is False
    plan = trk.get("/v1/devices/unv-2/plan")
    assert [(u["from_version"], u["to_version"]) for u in plan["plan"]["upgrades"]] == [("0.0.0", "1.1.0")]
    assert [(f["kind"], f["installed"]) for f in plan["findings"]] == [("unverified", None)]
    lists = trk.get("/v1/outdated")
    assert (lists["unverified"], lists["up_to_date"]) == (["unv-2"], ["old-1"])
    assert device_row(trk, "old-1")["components"]["main-fw"] == {"vendor": "acme", "version": "1.1.0", "slot": "A"}
    path = "/v1/devices/heartbeat"
    body = json.dumps({"device_id": "bad-1", "hardware": HW, "ready": True,
                       "components": {"main-fw": {"vendor": "acme", "version": "1.0.0", "state": "empty"}}}).encode()
    resp = requests.post(trk.url + path, data=body, timeout=WAIT, headers={
        **sign_request(Account.from_key(os.urandom(32)), "POST", path, body, audience=trk.address),
        "Content-Type": "application/json"})
    assert resp.status_code == 422 and "empty component has no version" in resp.text, resp.text


# ============================================================================= trials without a health command


def test_trial_without_health_command_is_confirmed_after_a_tracker_round_trip(net: Net) -> None:
    """No --health-cmd: an update stays on trial (the tracker lists the device "in trial", never up
    to date), and the next pass confirms it once its heartbeat's signed answer came back. Another
    device whose agent starts max_boot_attempts times without reaching a tracker reverts it; and
    `device confirm` / `device revert` end a trial by hand."""
    trk, srv = net.tracker(0, wait=False), net.server(wait=False)
    net.up(trk, srv)
    first = net.release(srv, "main-fw", "1.0.0")
    net.synced(srv, trk, rel=first)
    roots = [bare(net, f"trial-{i}", [trk]) for i in range(3)]
    for root in roots:
        out = json.loads(update(root, trk).stdout)
        assert [r["outcome"] for r in out["results"]] == ["trial"], out
    lists = trk.get("/v1/outdated")
    assert {"trial-0", "trial-1", "trial-2"} <= set(lists["in_trial"]) and not lists["up_to_date"]
    assert device_row(trk, "trial-0")["components"]["main-fw"] == {
        "vendor": "acme", "version": None, "slot": "a", "state": "trial", "trial": "1.0.0"}

    res = cli_run("device", "update", "--dir", str(roots[0]), "--tracker", trk.url)  # the next pass
    assert res.exit_code == 0 and "main-fw: trial confirmed (booted and reached its tracker)" in res.stdout
    assert (main_fw(roots[0])["confirmed"], main_fw(roots[0])["counter"]) == ("a", "1.0.0")
    assert "trial-0" in trk.get("/v1/outdated")["up_to_date"]

    # no tracker answers: each start of the agent is one more trial boot; the third reverts it
    for attempt in (2, 3):
        res = cli_run("device", "run", "--dir", str(roots[1]), "--tracker", "http://127.0.0.1:9", "--passes", "1")
        assert res.exit_code == 0 and f"(attempt {attempt})" in res.stderr, res.stderr
    res = cli_run("device", "run", "--dir", str(roots[1]), "--tracker", "http://127.0.0.1:9", "--passes", "1")
    assert "too_many_boot_attempts" in res.stderr, res.stderr
    st = main_fw(roots[1])
    assert (st["confirmed"], st["trial"], st["counter"], st["last_result"]["code"]) == (
        None, None, "0.0.0", "no_bootable_slot")
    assert st["slots"]["a"]["status"] == "bad"

    # by hand
    res = cli_run("device", "revert", "--dir", str(roots[2]), "main-fw", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["reverted"] is True
    res = cli_run("device", "confirm", "--dir", str(roots[2]), "main-fw")
    assert res.exit_code == 1 and res.stderr.startswith("error: not_in_trial:"), res.stderr


# ============================================================================= header age


def test_anchors_warn_when_max_age_is_below_what_confirmations_imply(net: Net) -> None:
    """12 confirmations at 2 s blocks: headers are about 26 s old; --max-age 10 gets one warning
    line (and "warnings" in --json), --max-age 3600 none."""
    env = {"FWLEDGER_HOME": str(net.home), "FWLEDGER_RPC": net.chain.rpc, "FWLEDGER_CONFIRMATIONS": "12"}
    addr = tracker_key(0).address
    out_file = net.tmp / "a.json"
    res = cli_run("device", "anchors", "--tracker", addr, "--quorum", "1", "--max-age", "10", "--block-time", "2",
                  "-o", str(out_file), "--json", env=env)
    assert res.exit_code == 0, res.output + res.stderr
    out = json.loads(res.stdout)
    (warning,) = out["warnings"]
    assert "below what the chain implies" in warning and "86 s" in warning
    assert [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")] == [f"warning: {warning}"]
    assert out["header_age"] == {"confirmations": 12, "block_time": 2.0, "block_time_measured": False}
    res = cli_run("device", "anchors", "--tracker", addr, "--quorum", "1", "--max-age", "3600", "--block-time", "2",
                  "-o", str(out_file), "--json", env=env)
    assert res.exit_code == 0 and json.loads(res.stdout)["warnings"] == [] and "warning" not in res.stderr


def test_a_refused_release_is_said_so_not_nothing_to_install(net: Net) -> None:
    """The README's stale_header case: the plan proposes 1.1.0, the device refuses it
    (stale_header, its message telling the header's age, the maximum and the fix), the rollout
    halts; the next pass says "1.1.0 refused: stale_header (...)", never "nothing to install".
    (The device's clock is set 300 s ahead: the one way to age a header on loopback.)"""
    trk, srv = net.tracker(0, wait=False), net.server(wait=False)
    net.up(trk, srv)
    rel = net.release(srv, "main-fw", "1.1.0")
    net.synced(srv, trk, rel=rel)
    root = net.tmp / "devices" / "stale-1"
    anchors = anchors_from_deployment(net.registry.deployment, registry_contract(), trackers=[trk.address],
                                      quorum=1, max_header_age=30)
    provision_device(root, device_id="stale-1", hardware=HW,
                     components={"main-fw": ComponentBinding("main-fw", "acme")}, anchors=anchors,
                     class_private_key=net.class_keys[HW].private_bytes_raw(),
                     factory={"main-fw": factory_image("main-fw", "1.0.0")}, health_command=["true"])
    ahead = lambda: time.time() + 300  # noqa: E731
    with Agent(root, AgentConfig(trackers=(trk.url,)), clock=ahead) as agent:
        first = agent.check_and_update()
        (r,) = first.results
        assert (r.ok, r.code, r.version) == (False, "stale_header", "1.1.0")
        assert "the maximum is 30 s" in r.message and "raise --max-age in the anchors" in r.message
        second = agent.check_and_update()
    assert second.results == [] and [h["reason"] for h in second.held] == ["rollout_halted"], second.to_json()
    lines = _pass_lines(second)
    assert any(ln.startswith("main-fw 1.1.0 refused: stale_header (block ") for ln in lines), lines
    assert not any("nothing to install" in ln for ln in lines), lines
