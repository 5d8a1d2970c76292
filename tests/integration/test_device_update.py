"""A device updates from the ledger: X.1368 clause 7 P1-P5 end to end, on the embedded chain and on anvil.

The author builds and signs a bundle (P1) and publishes its record; evidence (an attested header,
proofs, the published record) is gathered from the node with tracker keys standing in for issue 5's
tracker daemons (P2); the device verifies everything, installs into its inactive slot, trial-boots
and confirms (P3-P5), or reverts on a failed health check (R10.c.ii); a power cut mid-install is a
SIGKILL of a real ``fwledger device update`` process, and the retry resumes and completes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from eth_account import Account

from entities.cli import cli
from entities.firmware_consumer import Device, SlotStatus, UpdateRefused, read_status
from entities.firmware_consumer.errors import SafeModeActive, UpdateDeclined
from entities.firmware_consumer.provision import ComponentBinding, find_published, line_records
from entities.firmware_consumer.updater import UpdatePolicy
from ledger_node.devnet import AnvilProcess
from ledger_node.providers import connect, mnemonic_keys
from ledger_node.record import Version
from ledger_node.registry import Registry, load_deployment
from tests.conftest import Chain
from tests.security.world import HW, DeviceWorld, boot_state

REPO = Path(__file__).resolve().parents[2]
FWLEDGER = [sys.executable, "-m", "entities.cli"]
MAIN = {"main-fw": (ComponentBinding("main-fw", "acme"), "1.0.0")}


@pytest.fixture
def world(chain: Chain, registry: Registry, tmp_path: Path) -> DeviceWorld:
    return DeviceWorld.create(chain.w3, registry, {"acme": chain.vendor}, tmp_path / "world")


def status_of(root: Path, component: str = "main-fw") -> dict[str, object]:
    return next(c for c in read_status(root)["components"] if c["name"] == component)


def test_author_publishes_device_verifies_installs_and_confirms(world: DeviceWorld) -> None:
    """P1-P5, R10.a.ii-iii, C11.1.a.i: build -> publish -> evidence -> update -> trial boot -> confirmed;
    the next release goes to the other slot (A/B), each time the counter rises on confirm only."""
    rel = world.release("main-fw", "1.1.0")
    root = world.device("cam-1", MAIN)
    with world.updater(root) as up:
        assert up.needs_update(world.evidence(rel.record).to_json())["release"]["needed"] is True
        report = up.update(rel.path, world.evidence(rel.record))
    assert (report.outcome, report.code, report.slot, report.resumed_from) == ("confirmed", None, "b", 0)
    js = report.to_json()
    assert js["header_hash"] == "0x" + rel.record.header_hash.hex() and js["publish_time"] == rel.record.data.publish_time
    assert js["vendor_address"] == world.vendors["acme"].address and js["head"] is True
    assert (root / "components/main-fw/slot_b").read_bytes() == rel.image
    st = status_of(root)
    assert (st["version"], st["active"], st["counter"], st["header_hash"]) == (
        "1.1.0", "b", "1.1.0", "0x" + rel.record.header_hash.hex())
    assert st["last_result"]["op"] == "confirm" and st["last_result"]["ok"]  # type: ignore[index]

    nxt = world.release("main-fw", "1.2.0", size=70_000)
    with world.updater(root) as up:
        report = up.update(nxt.path, world.evidence(nxt.record))
        assert up.needs_update()["needs_update"] is False
    assert (report.outcome, report.slot) == ("confirmed", "a")
    assert (root / "components/main-fw/slot_a").read_bytes() == nxt.image
    assert status_of(root)["counter"] == "1.2.0"


def test_failing_health_check_reverts_automatically(world: DeviceWorld) -> None:
    """R10.c.ii, C11.1.a.iii: a trial that fails its health check is reverted on the spot; the previous
    image runs again, the counter stays, the failure's code is recorded for the tracker (R10.c.i)."""
    rel = world.release("main-fw", "1.1.0")
    root = world.device("cam-2", MAIN)
    factory = (root / "components/main-fw/slot_a").read_bytes()
    with world.updater(root, health=lambda ctx: False) as up:
        report = up.update(rel.path, world.evidence(rel.record))
    assert (report.outcome, report.code, report.ok) == ("reverted", "health_check_failed", False)
    assert report.boot.version == "1.0.0" and report.boot.slot == "a"
    st = status_of(root)
    assert (st["version"], st["active"], st["counter"]) == ("1.0.0", "a", "1.0.0")
    assert st["slots"]["b"]["status"] == SlotStatus.BAD.value  # type: ignore[index]
    assert st["last_result"]["code"] == "health_check_failed"  # type: ignore[index]
    assert (root / "components/main-fw/slot_a").read_bytes() == factory


def test_newest_allowed_by_the_policy_or_past_revoked_heads(world: DeviceWorld) -> None:
    """R10.d.i + Appendix II policies: a release that is not the head is installed only when every newer
    one is proven unusable for this class (above the administrator's max version, revoked); the
    policy itself is enforced (policy_denied); successors missing from the evidence -> not_newest."""
    world.release("pol-fw", "1.0.0", size=5_000)
    top = world.release("pol-fw", "2.0.0", size=5_000)
    world.admin.set_policy(HW, "acme", "pol-fw", max_version=Version(1, 65535, 65535))
    first = next(r for r in line_records(world.w3, world.anchors, top.record.line) if str(r.data.version) == "1.0.0")
    rv1 = world.release("rv-fw", "1.0.0", size=5_000)
    rv2 = world.release("rv-fw", "1.1.0", size=5_000)
    world.admin.revoke("acme", "rv-fw", rv2.record.header_hash, "bad build")
    comps = {"pol-fw": (ComponentBinding("pol-fw", "acme"), "0.1.0"), "rv-fw": (ComponentBinding("rv-fw"), "0.1.0")}
    root = world.device("cam-3", comps)
    pol_bundle = world.tmp / "acme-pol-fw-1.0.0.fwb"
    with world.updater(root) as up:
        with pytest.raises(UpdateRefused) as err:
            up.update(top.path, world.evidence(top.record))
        assert err.value.code == "policy_denied"
        ev = world.evidence(first)
        assert [str(s.data.version) for s in ev.successors] == ["2.0.0"]
        with pytest.raises(UpdateRefused) as err:
            up.update(pol_bundle, dataclasses.replace(ev, successors=()))
        assert err.value.code == "not_newest"
        report = up.update(pol_bundle, ev)
        assert report.outcome == "confirmed"
        assert report.to_json()["skipped"] == [{"version": "2.0.0", "why": "not permitted by the policy"}]
        report = up.update(rv1.path, world.evidence(rv1.record))
        assert report.to_json()["skipped"] == [{"version": "1.1.0", "why": "revoked"}]
    assert status_of(root, "pol-fw")["version"] == "1.0.0" and status_of(root, "rv-fw")["version"] == "1.0.0"


def test_safe_mode_accepts_only_a_verified_recover(world: DeviceWorld) -> None:
    """C11.1.b: a component with no bootable image is in safe mode; a normal update is refused
    (safe_mode), ``recover`` installs a bundle verified exactly like an update and ends safe mode."""
    rel = world.release("main-fw", "1.1.0")
    root = world.device("cam-4", {"main-fw": (ComponentBinding("main-fw", "acme"), None)})
    with Device(root) as dev:
        assert dev.boot_component("main-fw").kind.value == "safe"
    with world.updater(root) as up:
        with pytest.raises(SafeModeActive):
            up.update(rel.path, world.evidence(rel.record))
        assert up.needs_update()["components"][0]["reason"] == "safe_mode"
        bad = world.evidence(rel.record, trackers=world.trackers[:1])
        with pytest.raises(UpdateRefused) as err:
            up.recover(rel.path, bad)
        assert err.value.code == "quorum_not_met"
        report = up.recover(rel.path, world.evidence(rel.record))
    assert report.outcome == "confirmed"
    st = status_of(root)
    assert (st["safe_mode"], st["version"], st["mode"]) == (False, "1.1.0", "normal")


def test_the_device_may_decline_and_says_why(world: DeviceWorld) -> None:
    """C11.1.a.vi: a verified update outside the maintenance window is deferred (the reason recorded
    for the tracker), at most max_deferrals times, then installed; a veto hook refuses for good."""
    rel = world.release("main-fw", "1.1.0")
    root = world.device("cam-6", MAIN)
    minute = int(time.time() // 60 % 1440)
    later = UpdatePolicy(maintenance_window=((minute + 120) % 1440, (minute + 180) % 1440), max_deferrals=1)
    with world.updater(root, policy=later) as up:
        with pytest.raises(UpdateDeclined) as err:
            up.update(rel.path, world.evidence(rel.record))
        assert err.value.code == "outside_maintenance_window" and "1 of at most 1" in str(err.value)
        st = status_of(root)
        assert (st["confirmed"], st["counter"], st["last_result"]["code"]) == (  # type: ignore[index]
            "a", "1.0.0", "outside_maintenance_window")
        assert up.update(rel.path, world.evidence(rel.record)).outcome == "confirmed"  # the limit is reached
    nxt = world.release("main-fw", "1.2.0", size=5_000)
    with world.updater(root, policy=UpdatePolicy(veto=lambda u: f"recording; not {u.version} now")) as up:
        with pytest.raises(UpdateDeclined) as err:
            up.update(nxt.path, world.evidence(nxt.record))
    assert err.value.code == "vetoed" and "recording; not 1.2.0 now" in str(err.value)
    assert status_of(root)["version"] == "1.1.0"


# ----------------------------------------------------------------------------- power cut (a real process)


def _open_fifo_writer(path: Path, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """Open the FIFO for writing once the device process has opened it for reading."""
    end = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            if proc.poll() is not None:
                raise AssertionError(f"device process ended early: {proc.communicate()}") from exc
            if time.monotonic() > end:
                raise AssertionError("device process never opened the bundle") from exc
            time.sleep(0.01)
            continue
        os.set_blocking(fd, True)
        return fd


def test_power_cut_mid_install_then_retry_completes(world: DeviceWorld) -> None:
    """R10.c.ii: SIGKILL of a ``fwledger device update`` process in the middle of the payload (the bundle
    comes through a FIFO, so the cut lands exactly there); a power-on boots the old image; the
    same update run again resumes at the last durable checkpoint (every 8 MiB) and completes."""
    rel = world.release("main-fw", "1.1.0", size=20 * 1024 * 1024 + 12_345)
    root = world.device("cam-5", MAIN, health_command=["true"])
    evidence = world.tmp / "ev.json"
    evidence.write_text(json.dumps(world.evidence(rel.record).to_json()))
    fifo = world.tmp / "bundle.pipe"
    os.mkfifo(fifo)
    data = rel.path.read_bytes()
    cmd = [*FWLEDGER, "device", "update", "--dir", str(root), "--evidence", str(evidence), "--json"]
    env = {**os.environ, "FWLEDGER_HOME": str(world.tmp / "home")}
    proc = subprocess.Popen([*cmd, "--bundle", str(fifo)], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        fd = _open_fifo_writer(fifo, proc)
        try:
            os.write(fd, data[: rel.header.payload_offset + 17_500_000])  # past 16 MiB of plaintext, not 24
            end = time.monotonic() + 30
            while (status_of(root)["install"] or {}).get("durable", 0) < 16 << 20:  # type: ignore[union-attr]
                assert time.monotonic() < end, "the install never reached its second checkpoint"
                time.sleep(0.01)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    install = status_of(root)["install"]
    assert install is not None and install["durable"] == 16 << 20  # type: ignore[index]

    with Device(root) as dev:  # power on: the old image boots, the interrupted install is kept
        booted = dev.boot_component("main-fw")
    assert (booted.kind.value, booted.slot, booted.version) == ("normal", "a", "1.0.0")

    done = subprocess.run([*cmd, "--bundle", str(rel.path)], cwd=REPO, env=env, capture_output=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr.decode()
    out = json.loads(done.stdout)
    assert (out["outcome"], out["resumed_from"], out["slot"], out["version"]) == ("confirmed", 16 << 20, "b", "1.1.0")
    assert (root / "components/main-fw/slot_b").read_bytes() == rel.image
    assert status_of(root)["install"] is None


# ----------------------------------------------------------------------------- the command line (anvil)


@pytest.fixture
def env(tmp_path: Path, anvil_node: AnvilProcess) -> dict[str, str]:
    home = tmp_path / "home"
    (home / "keys").mkdir(parents=True)
    (home / "keys" / "admin.key").write_text("0x" + mnemonic_keys(1)[0].hex())
    return {"FWLEDGER_HOME": str(home), "FWLEDGER_RPC": anvil_node.url, "FWLEDGER_KEY_FILE": ""}


def run(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def ok_json(env: dict[str, str], *args: str) -> dict[str, object]:
    res = run(env, *args, "--json")
    assert res.exit_code == 0, res.output + res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


@pytest.mark.devnet
def test_cli_device_round_trip(env: dict[str, str], tmp_path: Path) -> None:
    """fwledger device anchors|init|evidence|status|update|run on anvil: one JSON document with --json,
    refusals as one ``error: <code>: ...`` line and exit 1, unavailable modes as usage errors (2)."""
    dep = ok_json(env, "chain", "deploy")
    w3 = connect(env["FWLEDGER_RPC"])
    registry = Registry(w3, load_deployment(Path(env["FWLEDGER_HOME"]), int(dep["chain_id"])),  # type: ignore[call-overload]
                        Account.from_key(mnemonic_keys(1)[0]))
    vendor = Account.from_key(mnemonic_keys(2)[1])
    world = DeviceWorld.create(w3, registry, {"acme": vendor}, tmp_path / "world")
    rel = world.release("main-fw", "1.0.0")
    keys = []
    for i, t in enumerate(world.trackers):
        keys.append(tmp_path / f"tracker{i}.key")
        keys[-1].write_text("0x" + t.key.hex().removeprefix("0x"))
    class_key = tmp_path / "class.key"
    class_key.write_text(world.class_keys[HW].private_bytes_raw().hex())
    anchors = tmp_path / "anchors.json"
    out = ok_json(env, "device", "anchors", *[a for t in world.trackers for a in ("--tracker", t.address)],
                  "--quorum", "2", "--max-age", "600", "-o", str(anchors))
    assert out["registry"] == dep["address"] and out["quorum"] == 2
    root = tmp_path / "dev"
    init = ok_json(env, "device", "init", "--dir", str(root), "--id", "cam-9", "--hardware", HW,
                   "--component", "main-fw=acme/main-fw", "--anchors", str(anchors), "--class-key", str(class_key),
                   "--health-cmd", "true")
    assert init["components"] == {"main-fw": {"product": "main-fw", "vendor": "acme"}}
    assert init["class_public_key"] == world.class_keys[HW].public_key().public_bytes_raw().hex()
    again = run(env, "device", "init", "--dir", str(root), "--id", "x", "--hardware", HW, "--component", "m",
                "--anchors", str(anchors))
    assert again.exit_code == 1 and again.stderr.startswith("error: device_exists: ")
    # the class key as 32 raw bytes works too; anything else is one line and no device folder
    raw = tmp_path / "class.raw"
    raw.write_bytes(world.class_keys[HW].private_bytes_raw())
    twin = ok_json(env, "device", "init", "--dir", str(tmp_path / "twin"), "--id", "cam-10", "--hardware", HW,
                   "--component", "main-fw=acme/main-fw", "--anchors", str(anchors), "--class-key", str(raw))
    assert twin["class_public_key"] == init["class_public_key"]
    junk = tmp_path / "class.junk"
    junk.write_bytes(b"\xff\xfe not a key")
    bad = run(env, "device", "init", "--dir", str(tmp_path / "bad"), "--id", "cam-11", "--hardware", HW,
              "--component", "m", "--anchors", str(anchors), "--class-key", str(junk))
    assert bad.exit_code == 1 and "must be an X25519 private key: 64 hex digits or 32 raw bytes" in bad.stderr
    assert bad.stderr.count("\n") == 1 and not (tmp_path / "bad").exists()

    st = ok_json(env, "device", "status", "--dir", str(root))
    assert st["needs_update"] is True and st["components"][0]["version"] is None  # type: ignore[index]
    assert find_published(w3, world.anchors, rel.header) == rel.record
    ev = ok_json(env, "device", "evidence", "--bundle", str(rel.path), "--anchors", str(anchors), "--hardware", HW,
                 "--tracker-key", str(keys[0]), "--tracker-key", str(keys[2]))
    assert ev["evidence"] == str(rel.path) + ".evidence.json" and ev["attestations"] == 2
    st = ok_json(env, "device", "status", "--dir", str(root), "--evidence", str(ev["evidence"]))
    assert st["release"]["needed"] is True  # type: ignore[index]

    before = boot_state(root)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    res = run(env, "device", "update", "--dir", str(root), "--bundle", str(rel.path), "--evidence", str(bad))
    assert res.exit_code == 1 and res.stderr.startswith("error: bad_evidence: ") and res.stderr.count("\n") == 1
    assert boot_state(root) == before

    up = ok_json(env, "device", "update", "--dir", str(root), "--bundle", str(rel.path))
    assert (up["ok"], up["outcome"], up["version"], up["slot"]) == (True, "confirmed", "1.0.0", "a")
    st = ok_json(env, "device", "status", "--dir", str(root))
    comp = st["components"][0]  # type: ignore[index]
    assert (comp["version"], comp["mode"], comp["last_result"]["op"]) == ("1.0.0", "normal", "confirm")
    human = run(env, "device", "status", "--dir", str(root))
    assert human.exit_code == 0 and "main-fw" in human.stdout and "1.0.0" in human.stdout

    res = run(env, "device", "update", "--dir", str(root), "--bundle", str(rel.path), "--json")
    assert res.exit_code == 1 and res.stderr.startswith("error: rollback: ")
    assert json.loads(res.stdout)["code"] == "rollback"
    res = run(env, "device", "update", "--dir", str(root), "--tracker", "http://127.0.0.1:9")
    assert res.exit_code == 1 and res.stderr.startswith("error: tracker_unreachable: ") and res.stderr.count("\n") == 1
    res = run(env, "device", "run", "--dir", str(root))
    assert res.exit_code == 2 and "--tracker" in res.stderr
    res = run(env, "device", "update", "--dir", str(root), "--bundle", str(tmp_path / "none.fwb"))
    assert res.exit_code == 2 and "no evidence" in res.stderr

