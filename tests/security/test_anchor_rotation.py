"""Rotating a device's trust anchors against a real device folder: every refused statement leaves
``anchors.json`` byte for byte as it was, an accepted one replaces it whole (with its statement as
proof), and a process killed in the middle of the write leaves the old anchors.

The statements are signed with real keys (entities/anchor_rotation.py); the device folder is made
by the real ``provision_device`` and changed through the real ``fwledger device anchors-update``
and :func:`apply_statement`. The crash is a real one: a child process applying a statement exits
(``os._exit``) from the device store's write probe, the hook the power-loss tests use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from entities.cli import cli
from entities.firmware_consumer.anchors import apply_statement, current_anchors
from entities.firmware_consumer.provision import ComponentBinding, load_provisioning, provision_device
from entities.firmware_consumer.verify import TrustAnchors
from entities.protocol.anchor_rotation import AnchorsError
from tests.security.world import factory_image
from tests.unit.test_anchor_rotation import A, B, C, D, anchors_json, statement

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def dev(tmp_path: Path) -> Path:
    """A device trusting trackers {A, B} with k = 2 (serial 0)."""
    root = tmp_path / "dev"
    provision_device(root, device_id="dev-1", hardware="cls-a", components={"main-fw": ComponentBinding("main-fw")},
                     anchors=TrustAnchors.from_json(anchors_json([A, B], 2)), class_private_key=os.urandom(32),
                     factory={"main-fw": factory_image("main-fw", "1.0.0")})
    return root


def write(tmp_path: Path, name: str, obj: Any) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return path


def anchors_update(root: Path, path: Path) -> Any:
    return CliRunner().invoke(cli, ["device", "anchors-update", "--dir", str(root), str(path), "--json"],
                              catch_exceptions=False)


ATTACKS = {
    "signed_by_one_current_key": (lambda: statement(1, [B, C], 2, [B, C]), "anchors_quorum"),
    "signed_by_new_keys_only": (lambda: statement(1, [C, D], 2, [C, D]), "anchors_quorum"),
    "new_keys_did_not_sign": (lambda: statement(1, [C, D], 2, [A, B]), "anchors_quorum"),
    "another_chain": (lambda: statement(1, [B, C], 2, [A, B, C], chain_id=1338), "anchors_chain"),
    "tampered_after_signing": (lambda: {**(s := statement(1, [B, C], 2, [A, B, C])),
                                        "anchors": {**s["anchors"], "quorum": 1}}, "anchors_quorum"),
    "unknown_field": (lambda: {**statement(1, [B, C], 2, [A, B, C]), "note": "x"}, "anchors_malformed"),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_refused_statement_leaves_the_anchors_untouched(dev: Path, tmp_path: Path, attack: str) -> None:
    make, code = ATTACKS[attack]
    before = (dev / "anchors.json").read_bytes()
    res = anchors_update(dev, write(tmp_path, "s.json", make()))
    assert res.exit_code == 1 and res.stderr.startswith(f"error: {code}: ") and res.stderr.count("\n") == 1
    assert json.loads(res.stdout)["code"] == code
    assert (dev / "anchors.json").read_bytes() == before
    assert load_provisioning(dev).anchors.trackers == (A.address, B.address)


def test_rotation_then_replay_and_rollback_are_refused(dev: Path, tmp_path: Path) -> None:
    """{A, B} k=2 -> {B, C} k=2 (serial 1) -> {C, D} k=1 (serial 2): each judged by the anchors the
    previous one installed; the older statement, replayed, is refused and changes nothing."""
    s1 = write(tmp_path, "s1.json", statement(1, [B, C], 2, [A, B, C]))
    res = anchors_update(dev, s1)
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert (out["previous"], out["serial"], out["trackers"], out["quorum"]) == (0, 1, [B.address, C.address], 2)
    prov = load_provisioning(dev)
    assert prov.anchors.trackers == (B.address, C.address) and current_anchors(dev)[1] == 1
    proof = json.loads((dev / "anchors.json").read_text())["statement"]
    assert proof == json.loads(s1.read_text())  # the device keeps the statement that installed its anchors

    # A alone (retired) cannot vouch any more: the old set's signatures do not count
    assert anchors_update(dev, write(tmp_path, "x.json", statement(2, [A, D], 1, [A, B, D]))).stderr.startswith(
        "error: anchors_quorum: 1 of the device's current trackers signed; it needs 2")
    before = (dev / "anchors.json").read_bytes()
    res = anchors_update(dev, s1)  # replayed
    assert res.exit_code == 1 and res.stderr.startswith("error: anchors_not_newer: ")
    assert (dev / "anchors.json").read_bytes() == before

    assert anchors_update(dev, write(tmp_path, "s2.json", statement(2, [C, D], 1, [B, C, D]))).exit_code == 0
    assert load_provisioning(dev).anchors.trackers == (C.address, D.address)
    res = anchors_update(dev, s1)  # a rollback to the older set
    assert res.exit_code == 1 and res.stderr.startswith("error: anchors_not_newer: ")
    assert current_anchors(dev)[1] == 2


def test_a_provisioned_serial_is_respected(tmp_path: Path) -> None:
    """``device init --anchors`` takes the file's serial: a statement must exceed it."""
    doc = {**anchors_json([A, B], 2), "serial": 5}
    root = tmp_path / "dev5"
    provision_device(root, device_id="dev-5", hardware="cls-a", components={"main-fw": ComponentBinding("main-fw")},
                     anchors=TrustAnchors.from_json(doc), class_private_key=os.urandom(32), anchors_serial=5)
    with pytest.raises(AnchorsError) as exc:
        apply_statement(root, statement(5, [B, C], 2, [A, B, C]))
    assert exc.value.code == "anchors_not_newer" and current_anchors(root)[1] == 5
    assert apply_statement(root, statement(6, [B, C], 2, [A, B, C]))["serial"] == 6


def test_the_cli_flow_signs_and_applies(dev: Path, tmp_path: Path) -> None:
    """``fleet anchors-sign`` turns new anchors with a serial into a statement, one key at a time."""
    new = write(tmp_path, "new.json", {**anchors_json([B, C], 2), "serial": 1})
    out = tmp_path / "statement.json"
    for i, key in enumerate((A, B, C)):
        kf = write(tmp_path, f"k{i}.key", key.key.hex())
        kf.write_text(key.key.hex())
        res = CliRunner().invoke(cli, ["fleet", "anchors-sign", str(out if i else new), "--key-file", str(kf),
                                       "-o", str(out), "--json"], catch_exceptions=False)
        assert res.exit_code == 0, res.stderr
        got = json.loads(res.stdout)
        assert got["signer"] == key.address and len(got["signers"]) == i + 1
    assert got["new_quorum_met"] is True
    res = CliRunner().invoke(cli, ["fleet", "anchors-sign", str(write(tmp_path, "n0.json", anchors_json([B, C], 2))),
                                   "--key-file", str(kf), "-o", str(tmp_path / "x.json")])
    assert res.exit_code == 1 and "error: anchors_malformed: " in res.stderr and "--serial" in res.stderr
    assert anchors_update(dev, out).exit_code == 0
    assert load_provisioning(dev).anchors.trackers == (B.address, C.address)


_CRASH = """
import json, os, sys
from entities.firmware_consumer.anchors import apply_statement
def probe(label):
    if label == sys.argv[3]:
        os._exit(9)  # the power goes out here
apply_statement(sys.argv[1], json.load(open(sys.argv[2])), probe=probe)
os._exit(0)
"""


@pytest.mark.parametrize("step", ["anchors write", "anchors replace"])
def test_a_crash_in_the_middle_of_the_write_leaves_the_old_anchors(dev: Path, tmp_path: Path, step: str) -> None:
    s1 = write(tmp_path, "s1.json", statement(1, [B, C], 2, [A, B, C]))
    before = (dev / "anchors.json").read_bytes()
    proc = subprocess.run([sys.executable, "-c", _CRASH, str(dev), str(s1), step], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, timeout=120)
    assert proc.returncode == 9, proc.stderr.decode()
    assert (dev / "anchors.json").read_bytes() == before
    assert load_provisioning(dev).anchors.trackers == (A.address, B.address) and current_anchors(dev)[1] == 0
    # the same statement applies once the device is back (the lock died with the process)
    assert apply_statement(dev, json.loads(s1.read_text()))["serial"] == 1
    assert load_provisioning(dev).anchors.trackers == (B.address, C.address)
