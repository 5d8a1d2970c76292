"""A release revoked on chain while a device downloads it is never installed (R10.a.i, R10.d.ii),
as real processes.

Same world as :mod:`.test_deployments` (imported: its module anvil mining a block every second, a
fresh registry per test, vendor ``acme``, devices running main-fw 1.0.0 and addon-fw 0.9.0), a
real firmware server, a real tracker server module and a real device agent (``fwledger device
run``); the device downloads through :class:`.procs.ThrottledProxy`, a slow TCP relay, so the
download is still under way when the release's standing changes on chain. Each device's health
command appends a line to a file at every trial boot: no line, no trial boot.

The device proves the release's standing once before the download and again, with fresh
evidence from its tracker, before its trial boot and before its confirm. With no tracker to
prove it again (``status_unproven``) the image stays staged, and a later pass boots it with no
second download (``Updater.boot_staged``); the firmware server's download log shows each payload
request.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from entities.firmware_consumer import read_status
from tests.integration import test_deployments as deployments
from tests.integration.procs import ThrottledProxy, wait_for
from tests.integration.test_deployments import ADMIN, HW_A, KEPT, MAIN, Release, World, set_waves, versions
from tests.integration.test_faults import durable, results

pytestmark = pytest.mark.devnet

anvil_rpc = deployments.anvil_rpc  # the module's anvil (interval mining)
world = deployments.world

MIB = 1 << 20
IMAGE = 12 * MIB      # larger than the socket buffers between server and device
SLOW = 256 * 1024     # bytes/s through the slow link while the standing changes: ~48 s for the image


def main_fw(root: Path) -> dict[str, Any]:
    (st,) = [c for c in read_status(root)["components"] if c["name"] == MAIN]
    return st  # type: ignore[no-any-return]


def health_logging(world: World, name: str) -> tuple[Path, tuple[str, ...]]:
    """A health command that passes and appends one line per trial boot to a file."""
    log = world.tmp / f"{name}-trials.log"
    return log, ("sh", "-c", f'echo "$FWLEDGER_COMPONENT $FWLEDGER_VERSION" >> {log}')


def payload_fetches(world: World, server: Any, device_id: str, header_hash: str) -> list[dict[str, Any]]:
    """The firmware server's download log (``GET /v1/downloads``, its operator token): the
    payload requests of ``device_id`` for release ``header_hash``."""
    token = (world.tmp / "server" / "admin.token").read_text().strip()
    with requests.Session() as s:
        s.trust_env = False
        resp = s.get(f"{server.url}/v1/downloads", params={"limit": 1000, "device": device_id, "image": header_hash},
                     headers={"Authorization": f"Bearer {token}"}, timeout=30)
    resp.raise_for_status()
    return [r for r in resp.json() if r["what"] == "payload"]


def tracker_row(trk: Any, device_id: str) -> dict[str, Any]:
    (row,) = [d for d in trk.signed("GET", "/v1/devices", ADMIN) if d["device_id"] == device_id]
    return row  # type: ignore[no-any-return]


def test_release_revoked_during_a_slow_download_is_never_trial_booted(world: World) -> None:
    """A 12 MiB image crawls through the slow link; once the device's journal shows 1 MiB written
    (the pre-download check passed), the administrator revokes the release on chain. When the
    tracker has indexed the block of the revocation the link is let go. The device finishes the
    download, re-proves the release with fresh evidence and abandons it: its pass reports
    ``revoked``, it never trial-booted the image (its health command never ran), it runs main-fw
    1.0.0 from the same slot, byte for byte, with the same anti-rollback counter, and the tracker
    shows the refusal as the device's last result."""

    def revoke(run: SlowDownload) -> None:
        revoked = world.registry.revoke("acme", MAIN, bytes.fromhex(run.main.header_hash[2:]), "bricks cameras")
        assert revoked.executed
        wait_for(lambda: (run.trk.health().get("ledger_block") or 0) >= revoked.block, 30,
                 "the tracker indexed the revocation", procs=world.procs)

    run = slow_download(world, "a-0", mid=revoke)
    root, trk, trials, before, running, done = run.root, run.trk, run.trials, run.before, run.running, run.first
    procs = world.procs
    assert [(r["ok"], r["code"]) for r in done] == [(False, "revoked")], json.dumps(done, indent=1)[:2000]
    assert done[0]["download"]["bytes"] > 0  # refused after the download, not before it
    assert not trials.exists()  # never trial-booted
    st = main_fw(root)
    assert versions(root) == KEPT
    assert (st["confirmed"], st["active"], st["trial"], st["counter"]) == (
        before["confirmed"], before["confirmed"], None, before["counter"])
    other = "b" if before["confirmed"] == "a" else "a"
    assert st["slots"][other]["status"] not in ("pending", "trial", "confirmed"), st["slots"][other]
    assert (root / "components" / MAIN / f"slot_{before['confirmed']}").read_bytes() == running
    assert st["last_result"]["code"] == "revoked"
    wait_for(lambda: (tracker_row(trk, "a-0").get("last_result") or {}).get("code") == "revoked", 30,
             "the tracker shows the refusal", procs=procs)
    assert tracker_row(trk, "a-0")["last_result"]["ok"] is False


@dataclass
class SlowDownload:
    """A device's pass over main-fw 1.1.0 downloaded through a throttled link (:func:`slow_download`)."""

    root: Path
    agent: Any
    server: Any
    trk: Any
    main: Release
    trials: Path
    before: dict[str, Any]
    running: bytes
    first: list[dict[str, Any]]


def slow_download(world: World, name: str, *, mid: Callable[[SlowDownload], None]) -> SlowDownload:
    """One wave; a firmware server and a server module; device ``name`` (class A, a health command
    that logs its trial boots) runs its agent against main-fw 1.1.0 (12 MiB) served through a
    ThrottledProxy. Once 1 MiB is durably written, ``mid`` runs (the download still going), the link
    is let go, and the device's first pass over 1.1.0 is waited for (``first``)."""
    set_waves(world, [1.0])
    procs = world.procs
    server, trk = world.firmware_server(), world.server_module()
    trials, health = health_logging(world, name)
    root = world.provision(name, HW_A, trackers=[trk.address], health=health)
    before = main_fw(root)
    running = (root / "components" / MAIN / f"slot_{before['confirmed']}").read_bytes()
    procs.wait_healthy(server)
    procs.wait_healthy(trk, check=lambda h: h.get("ledger_block") is not None)
    proxy = ThrottledProxy(int(server.port or 0), rate=SLOW)
    try:
        main = world.publish(server, MAIN, "1.1.0", size=IMAGE)
        agent = procs.device(name, root, "--tracker", str(trk.url), "--server", proxy.url)
        wait_for(lambda: durable(root) >= MIB, 90, "the device's journal shows 1 MiB written", procs=procs,
                 poll=0.05)
        run = SlowDownload(root, agent, server, trk, main, trials, before, running, [])
        mid(run)
        assert 0 < durable(root) < IMAGE  # still downloading
        proxy.rate = None  # the rest of the download need not crawl
        run.first = wait_for(lambda: [r for r in results(world, agent) if r["version"] == "1.1.0"], 90,
                             "the device's pass over main-fw 1.1.0 ended", procs=procs)
    finally:
        proxy.close()
    return run


@dataclass
class Staged(SlowDownload):
    """A device left with main-fw 1.1.0 staged in ``slot`` by :func:`stage_with_tracker_gone` (the
    tracker restarted since)."""

    slot: str = ""


def stage_with_tracker_gone(world: World, name: str, *, while_down: Callable[[Release], None] = lambda _r: None
                            ) -> Staged:
    """The tracker is killed (by its PID) while the device downloads a 12 MiB image. The download
    completes, but the release's standing cannot be proven again before the trial boot: the pass
    ends ``status_unproven``, the image stays staged (never trial-booted: the health command's log
    stays empty), the device runs main-fw 1.0.0 from the same slot with the same counter. Then
    ``while_down`` runs and the tracker is restarted (same data, same port)."""
    procs = world.procs
    run = slow_download(world, name, mid=lambda run: procs.kill(run.trk))  # SIGKILL to its process group, by PID
    root, trk, main, trials, before, running, first = (run.root, run.trk, run.main, run.trials, run.before,
                                                       run.running, run.first)
    assert [(r["ok"], r["code"]) for r in first] == [(False, "status_unproven")], json.dumps(first, indent=1)[:2000]
    assert first[0]["download"]["bytes"] > 0  # downloaded, then not booted
    assert not trials.exists()  # never trial-booted
    st = main_fw(root)
    assert versions(root) == KEPT
    staged = "b" if before["confirmed"] == "a" else "a"
    assert (st["confirmed"], st["active"], st["counter"]) == (before["confirmed"], before["active"], before["counter"])
    assert (st["trial"]["slot"], st["trial"]["status"], st["trial"]["version"]) == (staged, "pending", "1.1.0")
    assert (root / "components" / MAIN / f"slot_{before['confirmed']}").read_bytes() == running
    assert st["last_result"]["code"] == "status_unproven"
    while_down(main)
    procs.restart(trk)  # same argv: same data folder, same port
    procs.wait_healthy(trk, check=lambda h: h.get("ledger_block") is not None)
    return Staged(root, run.agent, run.server, trk, main, trials, before, running, first, staged)


def test_tracker_gone_mid_download_stages_the_image_then_a_later_pass_boots_it(world: World) -> None:
    """:func:`stage_with_tracker_gone`; the tracker back, the device's next pass boots the staged
    image (its tracker sees the device in trial and plans nothing: the agent takes the staged
    image up itself, ``boot_staged``, its standing proven at the pass's block) and confirms it,
    with no second download: the firmware server served the payload to the device exactly once."""
    s = stage_with_tracker_gone(world, "a-1")
    done = wait_for(lambda: [r for r in results(world, s.agent) if r["version"] == "1.1.0" and r["ok"]], 120,
                    "a later pass booted and confirmed main-fw 1.1.0", procs=world.procs)
    assert [r["outcome"] for r in done] == ["confirmed"], json.dumps(done, indent=1)[:2000]
    assert not (done[0].get("download") or {}).get("bytes")  # booted from the staged slot, not downloaded again
    assert s.trials.read_text().splitlines() == [f"{MAIN} 1.1.0"]  # one trial boot, after the re-proof
    st = main_fw(s.root)
    assert (st["confirmed"], st["active"], st["trial"], st["counter"]) == (s.slot, s.slot, None, "1.1.0")
    assert versions(s.root)[MAIN] == "1.1.0"
    fetched = payload_fetches(world, s.server, "a-1", s.main.header_hash)
    assert [r["outcome"] for r in fetched] == ["served"], fetched  # one payload request, ever


def test_a_staged_image_whose_release_is_revoked_meanwhile_is_dropped_never_booted(world: World) -> None:
    """:func:`stage_with_tracker_gone`, and while the tracker is down the release is revoked on
    chain. The device's next pass proves the staged release at its block: ``revoked``; the staged
    image is dropped (its slot marked bad, never trial-booted), the device runs main-fw 1.0.0
    from the same slot with the same counter, and nothing is staged any more to hold back the
    component's next install."""
    def revoke(main: Release) -> None:
        assert world.registry.revoke("acme", MAIN, bytes.fromhex(main.header_hash[2:]), "recalled while staged").executed

    s = stage_with_tracker_gone(world, "a-3", while_down=revoke)
    done = wait_for(lambda: [r for r in results(world, s.agent) if r["version"] == "1.1.0" and r["code"] == "revoked"],
                    120, "a later pass refused the staged main-fw 1.1.0", procs=world.procs)
    assert done[0]["ok"] is False and not (done[0].get("download") or {}).get("bytes"), done
    assert not s.trials.exists()  # never trial-booted
    st = main_fw(s.root)
    assert versions(s.root) == KEPT
    assert (st["confirmed"], st["trial"], st["counter"]) == (s.before["confirmed"], None, s.before["counter"])
    assert st["active"] in (None, s.before["confirmed"])
    assert (st["slots"][s.slot]["status"], st["slots"][s.slot]["version"]) == ("bad", "1.1.0")
    assert (s.root / "components" / MAIN / f"slot_{s.before['confirmed']}").read_bytes() == s.running
    assert st["last_result"]["code"] == "revoked"
    fetched = payload_fetches(world, s.server, "a-3", s.main.header_hash)
    assert [r["outcome"] for r in fetched] == ["served"], fetched


def boots(world: World, agent: Any) -> list[dict[str, Any]]:
    """The boot lines the agent printed since its latest start (starting is a power-on)."""
    out: list[dict[str, Any]] = []
    for line in agent.log_lines():
        if line.startswith("[fwledger up"):
            out = []
        elif line.startswith('{"boot"'):
            out.append(json.loads(line)["boot"])
    return out


def test_agent_start_reproves_a_trial_left_from_before_a_restart(world: World) -> None:
    """The device's agent is killed (power cut) while its health command judges the trial boot of
    main-fw 1.1.0: the image is left on trial, one boot attempt used. Meanwhile the release is
    revoked on chain. The agent starts again: starting is a power-on, so the image on trial boots
    once more and its health command passes, but its standing, proven again from the tracker's
    fresh evidence before the confirm, says ``revoked``: the trial is reverted, never confirmed,
    and the device runs main-fw 1.0.0 from the same slot with the same counter."""
    set_waves(world, [1.0])
    procs = world.procs
    server, trk = world.firmware_server(), world.server_module()
    trials = world.tmp / "a-2-trials.log"
    go = world.tmp / "a-2-healthy"
    health = ("sh", "-c", f'echo "$FWLEDGER_COMPONENT $FWLEDGER_VERSION" >> {trials}; test -f {go} || sleep 600')
    root = world.provision("a-2", HW_A, trackers=[trk.address], health=health)
    before = main_fw(root)
    running = (root / "components" / MAIN / f"slot_{before['confirmed']}").read_bytes()
    procs.wait_healthy(server)
    procs.wait_healthy(trk, check=lambda h: h.get("ledger_block") is not None)
    main = world.publish(server, MAIN, "1.1.0")
    agent = procs.device("a-2", root, "--tracker", str(trk.url), "--server", str(server.url))
    wait_for(lambda: trials.exists() and trials.read_text().splitlines() == [f"{MAIN} 1.1.0"], 90,
             "the trial boot's health command started", procs=procs)
    procs.kill(agent)  # a power cut during the health check (its process group: the command too)
    st = main_fw(root)
    assert st["trial"] is not None and (st["trial"]["status"], st["trial"]["attempts"]) == ("trial", 1), st["trial"]
    staged = st["trial"]["slot"]

    revoked = world.registry.revoke("acme", MAIN, bytes.fromhex(main.header_hash[2:]), "recalled mid-trial")
    assert revoked.executed
    wait_for(lambda: (trk.health().get("ledger_block") or 0) >= revoked.block, 30,
             "the tracker indexed the revocation", procs=procs)
    go.touch()  # the health command passes from now on
    procs.restart(agent)
    booted = wait_for(lambda: boots(world, agent), 60, "the agent's start-up boot", procs=procs)
    procs.wait_passes(agent, n=1)

    assert [(b["component"], b["reverted"]) for b in booted] == [(MAIN, True)], booted
    assert "revoked" in booted[0]["events"], booted
    assert trials.read_text().splitlines() == [f"{MAIN} 1.1.0"] * 2  # booted again, healthy, then not confirmed
    st = main_fw(root)
    assert versions(root) == KEPT
    assert (st["confirmed"], st["active"], st["trial"], st["counter"]) == (
        before["confirmed"], before["confirmed"], None, before["counter"])
    assert st["slots"][staged]["status"] == "bad" and st["slots"][staged]["version"] == "1.1.0"
    assert (root / "components" / MAIN / f"slot_{before['confirmed']}").read_bytes() == running
    assert st["last_result"]["code"] == "revoked"
