"""The command line, in-process with click's CliRunner, against an anvil node and the embedded chain.

Asserts exit codes (0 done, 1 refused with one `error:` line, 2 usage), and that --json prints
exactly one JSON document on stdout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from eth_account import Account

from entities.cli import cli
from ledger_node.devnet import AnvilProcess
from ledger_node.providers import mnemonic_keys

pytestmark = pytest.mark.devnet


@pytest.fixture
def env(tmp_path: Path, anvil_node: AnvilProcess) -> dict[str, str]:
    """A fresh home with the devnet's admin key, and a fresh anvil chain state per test (snapshot)."""
    home = tmp_path / "home"
    keys = home / "keys"
    keys.mkdir(parents=True)
    for i, key in enumerate(mnemonic_keys(4)):
        (keys / f"devnet-{i}.key").write_text("0x" + key.hex())
    (keys / "admin.key").write_text("0x" + mnemonic_keys(1)[0].hex())
    return {"FWLEDGER_HOME": str(home), "FWLEDGER_RPC": anvil_node.url, "FWLEDGER_KEY_FILE": ""}


def run(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def ok_json(env: dict[str, str], *args: str) -> object:
    res = run(env, *args, "--json")
    assert res.exit_code == 0, res.output + res.stderr
    return json.loads(res.stdout)


def vendor_key(env: dict[str, str], i: int = 1) -> tuple[str, str]:
    path = str(Path(env["FWLEDGER_HOME"]) / "keys" / f"devnet-{i}.key")
    return path, Account.from_key(Path(path).read_text().strip()).address


def test_deploy_publish_list_revoke_on_a_devnet(env: dict[str, str], tmp_path: Path) -> None:
    rpc = env["FWLEDGER_RPC"]
    dep = ok_json({**env, "FWLEDGER_RPC": "http://127.0.0.1:9"}, "--rpc", rpc, "chain", "deploy")  # flag beats env
    assert set(dep) >= {"address", "chain_id", "block"} and dep["chain_id"] == 31337  # type: ignore[operator,index]
    # a second deploy from the same home is refused in one line, exit 1
    again = run(env, "chain", "deploy")
    assert again.exit_code == 1 and again.stderr.startswith("error: a registry is already deployed")
    assert again.stderr.count("\n") == 1

    key, addr = vendor_key(env)
    assert ok_json(env, "admin", "add-vendor", "--name", "acme", "--address", addr)["executed"]  # type: ignore[index]
    ok_json(env, "admin", "add-hardware", "--id", "cam-r1", "--revision", "1", "--enc-key", "11" * 32)
    image = tmp_path / "fw.bin"
    image.write_bytes(b"\x7f" * 200_000)
    common = ["release", "publish", str(image), "--vendor", "acme", "--product", "main-fw",
              "--hardware", "cam-r1", "--link", "http://127.0.0.1/fw.bin"]
    p1 = ok_json(env, "--key-file", key, *common, "--version", "1.0.0")
    p2 = ok_json(env, "--key-file", key, *common, "--version", "1.1.0", "--depends", "boot>=1.0.0,<2.0.0")
    assert p1["header_hash"] != p2["header_hash"]  # type: ignore[index]

    rollback = run(env, "--key-file", key, *common, "--version", "1.0.1")
    assert rollback.exit_code == 1
    assert rollback.stderr == "error: publish: refused by the registry: version not above the head's version\n"

    rows = ok_json(env, "release", "list")
    assert [(r["version"], r["head"]) for r in rows] == [("1.0.0", False), ("1.1.0", True)]  # type: ignore[index,union-attr]
    assert rows[1]["prev_hash"] == p1["header_hash"] and rows[1]["file_size"] == 200_000  # type: ignore[index]
    assert rows[1]["dependencies"] == [{"product": "boot", "min_version": "1.0.0", "max_version": "1.65535.65535"}]  # type: ignore[index]

    res = ok_json(env, "release", "revoke", p2["header_hash"], "--reason", "bad build")  # type: ignore[index]
    assert res["executed"]  # type: ignore[index]
    shown = ok_json(env, "release", "show", p2["header_hash"])  # type: ignore[index]
    assert shown["revoked"] and shown["revoke_reason"] == "bad build"  # type: ignore[index]
    assert ok_json(env, "release", "list", "--product", "other") == []


def test_k_of_n_through_the_cli(env: dict[str, str]) -> None:
    k0, a0 = vendor_key(env, 0)
    k2, a2 = vendor_key(env, 2)
    k3, a3 = vendor_key(env, 3)
    ok_json(env, "chain", "deploy", "--admin", a0, "--admin", a2, "--threshold", "2")
    _, vendor = vendor_key(env, 1)
    first = ok_json(env, "--key-file", k0, "admin", "add-vendor", "--name", "acme", "--address", vendor)
    assert first["executed"] is False and first["approvals"] == 1 and first["threshold"] == 2  # type: ignore[index]
    stolen = run(env, "--key-file", k3, "admin", "add-vendor", "--name", "acme", "--address", vendor)
    assert stolen.exit_code == 1 and "caller is not an administrator" in stolen.stderr
    second = ok_json(env, "--key-file", k2, "admin", "add-vendor", "--name", "acme", "--address", vendor)
    assert second["executed"] is True  # type: ignore[index]
    info = ok_json(env, "chain", "info")
    assert info["threshold"] == 2 and info["admin_count"] == 2  # type: ignore[index]


@pytest.mark.parametrize("args", [
    ["admin", "add-vendor", "--name", "x", "--address", "0x12"],
    ["admin", "add-hardware", "--id", "x", "--revision", "1", "--enc-key", "zz"],
    ["admin", "set-policy", "--hardware", "x", "--vendor", "v", "--product", "p", "--max", "1.2"],
    ["release", "show", "0x1234"],
    ["admin", "set-threshold", "0"],
    ["nonsense"],
])
def test_usage_errors_exit_2(env: dict[str, str], args: list[str]) -> None:
    res = run(env, *args)
    assert res.exit_code == 2, res.output


def test_refusals_are_one_line_exit_1(env: dict[str, str], tmp_path: Path) -> None:
    # no deployment yet on this chain from this home
    res = run(env, "chain", "info", "--json")
    assert res.exit_code == 1 and res.stderr.startswith("error: no registry deployed on chain 31337")
    assert json.loads(res.stdout)["ok"] is False
    # unreachable node
    res = run({**env, "FWLEDGER_RPC": "http://127.0.0.1:9"}, "chain", "info")
    assert res.exit_code == 1
    assert res.stderr == "error: cannot reach the Ethereum node at http://127.0.0.1:9: connection refused or timed out\n"
    # a bad key file
    bad = tmp_path / "bad.key"
    bad.write_text("not a key")
    res = run(env, "--key-file", str(bad), "chain", "deploy")
    assert res.exit_code == 1 and res.stderr.startswith("error: ") and "holds no usable private key" in res.stderr
    # a release unknown to the index
    ok_json(env, "chain", "deploy")
    res = run(env, "release", "show", "0x" + "ab" * 32)
    assert res.exit_code == 1 and "no release 0x" + "ab" * 32 in res.stderr


def test_node_sync_reports_progress(env: dict[str, str]) -> None:
    ok_json(env, "chain", "deploy")
    _, vendor = vendor_key(env)
    ok_json(env, "admin", "add-vendor", "--name", "acme", "--address", vendor)
    rep = ok_json(env, "node", "sync")
    assert rep["events"] >= 3  # type: ignore[index]   # admin + threshold + vendor
    assert ok_json(env, "node", "sync")["events"] == 0  # type: ignore[index]   # nothing doubled


def test_demo_runs_on_the_embedded_chain() -> None:
    """The README's first command: every expected outcome happens, --json is one document."""
    res = CliRunner().invoke(cli, ["demo", "--devices", "4", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] is True
    steps = {s["step"]: s for s in report["steps"]}
    assert list(steps) == [
        "deploy", "k-of-n", "administration", "server and trackers", "provision", "unadmitted device refused", "publish",
            "non-vendor refused",
        "rollback refused", "tampered copy", "location denied", "power cut mid-install", "fleet update",
        "power-cut device completes", "dependent release", "other class", "tampered device recovers",
        "hierarchical trackers", "revocation"]
    assert all(s["ok"] for s in steps.values())
    figures = report["figures"]
    assert figures["gas"]["publish_next"] < 80_000
    fleet = {d["device"]: (d["class"], d["via"], d["before"], d["after"]) for d in figures["devices"]}
    assert fleet == {  # main-fw/sensor-drv; every third device behind the intermediate
        "dev-000": ("cam-r1", "intermediate", "0.9.0/0.1.0", "1.1.0/1.0.0"),   # tampered copy refused, then updated
        "dev-001": ("cam-r2", "server module", "0.9.0/0.1.0", "1.0.0/0.1.0"),  # policy cap, driver's dependency
        "dev-002": ("cam-r1", "server module", "0.9.0/0.1.0", "1.1.0/1.0.0"),  # power cut, then completed
        "dev-003": ("cam-r2", "intermediate", "0.9.0/0.1.0", "0.9.0/0.1.0")}   # location denied
    assert "chunk_auth_failed" in fleet_result(report, "dev-000")
    assert fleet_result(report, "dev-002").startswith("power cut mid-install, rebooted on 0.9.0; 1.1.0 confirmed")
    assert fleet_result(report, "dev-003").startswith("refused: location_denied")
    # the power cut: stopped in process at a durable step, old slot intact, completed by the rollout's command
    assert "byte-identical" in steps["power cut mid-install"]["detail"]
    assert "tests/integration/test_power_loss.py" in steps["power cut mid-install"]["detail"]
    # signed commands in waves: a canary, then the rest, every rollout completed (dev-003's failure did not halt)
    assert "wave 0 (25%)" in steps["fleet update"]["detail"] and "then wave 1" in steps["fleet update"]["detail"]
    rollouts = {(r["product"], r["to_version"]): r for r in figures["rollouts"] if r["devices"]}  # 1.2.0: revoked
    assert {k: (r["state"], r["devices"], r["failed"]) for k, r in rollouts.items()} == {
        ("main-fw", "1.0.0"): ("completed", 2, 1), ("main-fw", "1.1.0"): ("completed", 2, 0),
        ("sensor-drv", "1.0.0"): ("completed", 2, 0)}
    # the hierarchical deployment: the intermediate relayed and cached; no chain query below the server module
    inter = figures["intermediate"]
    assert inter["devices_below"] == ["dev-000", "dev-003"]
    assert inter["relayed"] > 0 and inter["cache_hits"] > 0 and inter["fetched"] < inter["cache_hits"] + inter["fetched"]
    queries = figures["chain_queries"]
    assert queries["devices"] == 0 and queries["intermediate"] == 0
    assert queries["tracker"] > 0 and queries["tracker_by_method"]["eth_getProof"] > 0
    # payloads served: the tampered copy, 1.0.0 once, 1.1.0 and the driver twice (and the power-cut download)
    assert 5.5 * 256 * 1024 < figures["bytes_served"] < 8 * 256 * 1024


def fleet_result(report: dict[str, Any], device: str) -> str:
    return str(next(d["result"] for d in report["figures"]["devices"] if d["device"] == device))
