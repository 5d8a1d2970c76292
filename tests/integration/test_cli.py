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
from entities.demo_world import IMAGE_SIZE
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
    return {"FWLEDGER_HOME": str(home), "FWLEDGER_RPC": anvil_node.url, "FWLEDGER_KEY_FILE": "",
            "FWLEDGER_PASSPHRASE": "", "FWLEDGER_PASSPHRASE_FILE": "", "FWLEDGER_CONFIG": ""}


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
    assert 5.5 * IMAGE_SIZE < figures["bytes_served"] < 8 * IMAGE_SIZE


def fleet_result(report: dict[str, Any], device: str) -> str:
    return str(next(d["result"] for d in report["figures"]["devices"] if d["device"] == device))


# ----------------------------------------------------------------------------- the operator's path (issue 15)


def one_line(res: Result) -> str:
    """A refusal: exit 1 and exactly one `error: ...` line on stderr."""
    assert res.exit_code == 1, res.output + res.stderr
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    return res.stderr


def published(env: dict[str, str], tmp_path: Path, versions: tuple[str, ...]) -> list[str]:
    """A fresh registry with vendor acme (devnet key 1) and class cam-r1; one bare record per version."""
    key, addr = vendor_key(env)
    ok_json(env, "chain", "deploy")
    ok_json(env, "admin", "add-vendor", "--name", "acme", "--address", addr)
    ok_json(env, "admin", "add-hardware", "--id", "cam-r1", "--revision", "1", "--enc-key", "11" * 32)
    image = tmp_path / "fw.bin"
    image.write_bytes(b"\x5a" * 4096)
    return [ok_json(env, "--key-file", key, "release", "publish", str(image), "--vendor", "acme", "--product",
                    "main-fw", "--hardware", "cam-r1", "--link", "http://127.0.0.1/fw.bin",
                    "--version", v)["header_hash"] for v in versions]  # type: ignore[index]


def test_header_hashes_copied_from_release_list_are_accepted(env: dict[str, str], tmp_path: Path) -> None:
    """release list shows a prefix that show/revoke/mark-vulnerable/tracker trigger accept; --json has
    the full hash; prefixes of 8+ hex digits with or without 0x, any case; unknown ones refused in one line."""
    h1, h2 = published(env, tmp_path, ("1.0.0", "1.1.0"))
    rows = ok_json(env, "release", "list")
    assert [r["header_hash"] for r in rows] == [h1, h2]  # type: ignore[index,union-attr]
    table = run(env, "release", "list")
    assert table.exit_code == 0
    shown = [h[:18] for h in (h1, h2)]  # 0x + 16 hex digits, whole, no ellipsis
    assert all(s in table.stdout for s in shown) and "..." not in table.stdout

    assert ok_json(env, "release", "show", shown[0])["header_hash"] == h1  # type: ignore[index]
    assert ok_json(env, "release", "show", h2[2:10].upper())["header_hash"] == h2  # type: ignore[index]
    assert ok_json(env, "release", "show", h2)["version"] == "1.1.0"  # type: ignore[index]
    res = ok_json(env, "release", "mark-vulnerable", shown[0], "--note", "CVE-2026-1")
    assert res["executed"] and "main-fw 1.0.0" in res["action"]  # type: ignore[index]
    res = ok_json(env, "release", "revoke", "0x" + h2[2:12], "--reason", "bad build")
    assert res["executed"] and "main-fw 1.1.0" in res["action"]  # type: ignore[index]
    assert ok_json(env, "release", "show", h2)["revoked"] is True  # type: ignore[index]
    assert ok_json(env, "release", "show", h1)["vulnerable"] is True  # type: ignore[index]

    unknown = next("0x" + d * 8 for d in "0123456789abcdef" if not h1[2:].startswith(d) and not h2[2:].startswith(d))
    assert "no release whose header hash starts with " + unknown in one_line(run(env, "release", "show", unknown))
    assert run(env, "release", "revoke", "0x1234567", "--reason", "x").exit_code == 2  # 7 digits: usage
    assert run(env, "release", "show", "0x" + "zz" * 8).exit_code == 2

    # tracker trigger: the home's full node resolves a prefix before anything is sent
    err = one_line(run(env, "tracker", "trigger", unknown, "--version", "1.0.0", "--link", "http://127.0.0.1/x",
                       "--tracker", "http://127.0.0.1:9"))
    assert "no release whose header hash starts with" in err
    err = one_line(run(env, "tracker", "trigger", shown[0], "--version", "1.0.0", "--link", "http://127.0.0.1/x",
                       "--tracker", "http://127.0.0.1:9"))
    assert "cannot reach the tracker at http://127.0.0.1:9" in err  # resolved, then the request went out
    other = {**env, "FWLEDGER_HOME": str(tmp_path / "empty-home")}
    err = one_line(run(other, "tracker", "trigger", shown[0], "--version", "1.0.0", "--link", "http://127.0.0.1/x"))
    assert "needs this home's full node" in err and "give all 64 hex digits" in err
    # tracker rollout create, the same way
    assert "no release whose header hash starts with" in one_line(
        run(env, "tracker", "rollout", "create", unknown, "--tracker", "http://127.0.0.1:9"))
    err = one_line(run(env, "tracker", "rollout", "create", shown[1], "--tracker", "http://127.0.0.1:9"))
    assert "cannot reach the tracker at http://127.0.0.1:9" in err


def test_an_ambiguous_prefix_names_its_candidates() -> None:
    """Two header hashes sharing 8+ hex digits cannot be produced with real records (a 32-bit
    collision), so this one case uses a stand-in index holding such hashes."""
    from entities.ledger_cli import release_by_ref, unique_prefixes
    from ledger_node.errors import ConfigError

    a, b = (bytes.fromhex("deadbeef" * 4 + tail * 16) for tail in ("00", "01"))  # 33 hex digits in common
    c = bytes.fromhex("deadbeef" + "77" * 28)

    class Rel:
        def __init__(self, h: bytes) -> None:
            self.header_hash, self.vendor_name, self.product, self.version = h, "acme", "main-fw", "1.0.0"

    class Index:
        hashes = sorted([a, b, c])

        def header_hashes_with_prefix(self, prefix: str, limit: int = 10) -> list[bytes]:
            digits = prefix.lower().removeprefix("0x")
            return [h for h in self.hashes if h.hex().startswith(digits)][:limit]

        def release(self, h: bytes) -> Rel | None:
            return Rel(h) if h in self.hashes else None

    with pytest.raises(ConfigError) as exc:
        release_by_ref(Index(), "deadbeef")
    msg = str(exc.value)
    assert msg.startswith("header hash prefix 0xdeadbeef is ambiguous: ") and msg.endswith("give more digits")
    assert all("0x" + h.hex() in msg for h in (a, b, c)) and "acme/main-fw 1.0.0" in msg
    assert release_by_ref(Index(), "deadbeef" + "77").header_hash == c
    # the table lengthens a shown prefix until it names one release
    shown = unique_prefixes(Index(), ["0x" + h.hex() for h in (a, b, c)])
    assert shown == ["0x" + a.hex()[:36], "0x" + b.hex()[:36], "0x" + c.hex()[:16]]


def test_keystore_keys_sign_every_command_with_a_passphrase_file(env: dict[str, str], tmp_path: Path) -> None:
    """author keygen --role admin, chain fund from the devnet, then the keystore signs chain deploy,
    admin and release commands and chain fund, with the root --passphrase-file or FWLEDGER_PASSPHRASE_FILE."""
    from web3 import Web3

    pw = tmp_path / "admin.pass"
    pw.write_text("correct horse\n")
    made = ok_json(env, "author", "keygen", "--name", "admin2", "--role", "admin", "--passphrase-file", str(pw))
    assert made["role"] == "admin" and made["needs_funds"] is True  # type: ignore[index]
    address, keystore = made["address"], made["keystore"]  # type: ignore[index]
    assert any(f"fwledger chain fund {address} --eth" in line for line in made["next"])  # type: ignore[index]
    human = run(env, "author", "keygen", "--name", "op", "--role", "operator", "--passphrase-file", str(pw))
    assert human.exit_code == 0 and "signing key (operator) 0x" in human.stdout and "vendor key" not in human.stdout
    assert "no funds needed" in human.stdout and "--operator-key 0x" in human.stdout

    funded = ok_json(env, "chain", "fund", address, "--eth", "2.5")
    w3 = Web3(Web3.HTTPProvider(env["FWLEDGER_RPC"]))
    assert funded["to"] == address and funded["balance_wei"] == str(25 * 10**17)  # type: ignore[index]
    assert w3.eth.get_balance(address) == 25 * 10**17

    # no passphrase: one line naming the ways to give it; a wrong one: one line; nothing sent
    err = one_line(run(env, "--key-file", keystore, "chain", "deploy"))
    assert "is an encrypted keystore" in err and "--passphrase-file" in err
    bad = tmp_path / "bad.pass"
    bad.write_text("wrong\n")
    assert "wrong passphrase" in one_line(run(env, "--key-file", keystore, "--passphrase-file", str(bad), "chain", "deploy"))
    assert w3.eth.get_balance(address) == 25 * 10**17

    dep = ok_json(env, "--key-file", keystore, "--passphrase-file", str(pw), "chain", "deploy")
    info = ok_json(env, "chain", "info")
    assert info["address"] == dep["address"] and info["admin_count"] == 1  # type: ignore[index]
    by_env = {**env, "FWLEDGER_KEY_FILE": keystore, "FWLEDGER_PASSPHRASE_FILE": str(pw)}
    _, vendor = vendor_key(env)
    assert ok_json(by_env, "admin", "add-vendor", "--name", "acme", "--address", vendor)["executed"]  # type: ignore[index]
    # the home's admin.key is not an administrator of this registry: only the keystore could sign that
    assert "caller is not an administrator" in one_line(
        run(env, "admin", "add-hardware", "--id", "cam-r1", "--revision", "1", "--enc-key", "11" * 32))
    ok_json(by_env, "admin", "add-hardware", "--id", "cam-r1", "--revision", "1", "--enc-key", "11" * 32)
    # and chain fund sends from the --key-file account
    sink = Account.create().address
    sent = ok_json(by_env, "chain", "fund", sink, "--eth", "0.5")
    assert sent["from"] == address and w3.eth.get_balance(sink) == 5 * 10**17  # type: ignore[index]
    # an operator command: the admission record is signed by the keystore
    admitted = ok_json(by_env, "fleet", "admit", "dev-01", "--key", sink, "--hardware", "cam-r1")
    assert admitted["records"][0]["issuer"] == address  # type: ignore[index]


def test_chain_fund_refuses_bad_input_in_one_line(env: dict[str, str]) -> None:
    from web3 import Web3

    sink = Account.create().address
    w3 = Web3(Web3.HTTPProvider(env["FWLEDGER_RPC"]))
    assert "is not an Ethereum address" in one_line(run(env, "chain", "fund", "0x12", "--eth", "1"))
    assert "is not an Ethereum address" in one_line(run(env, "chain", "fund", sink.lower()[:-1] + "g", "--eth", "1"))
    for amount, why in (("lots", "is not an amount of ether"), ("0", "must be an amount above 0"),
                        ("-1", "must be an amount above 0"), ("1e-19", "finer than 1 wei")):
        res = run(env, "chain", "fund", sink, "--eth", amount, "--json")
        assert why in one_line(res) and json.loads(res.stdout)["ok"] is False
    assert "less than the" in one_line(run(env, "chain", "fund", sink, "--eth", "1e12"))
    assert w3.eth.get_balance(sink) == 0
    human = run(env, "chain", "fund", sink, "--eth", "0.001")
    assert human.exit_code == 0 and f"{sink} now holds 0.001 ETH" in human.stdout and "tx 0x" in human.stdout


def test_relative_paths_in_a_config_file_resolve_against_the_home(env: dict[str, str], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """config.toml says key_file = "keys/admin.json" and passphrase_file = "keys/admin.pass": found in
    the home whatever the working folder; a service's relative data folder too."""
    from entities.settings import load_settings
    from entities.status_tracker.config import load_tracker_config

    home = Path(env["FWLEDGER_HOME"])
    (home / "keys" / "admin.pass").write_text("s3cret\n")
    made = ok_json(env, "author", "keygen", "--name", "admin", "--passphrase-file", str(home / "keys" / "admin.pass"))
    (home / "config.toml").write_text('[fwledger]\nkey_file = "keys/admin.json"\npassphrase_file = "keys/admin.pass"\n'
                                      '[tracker]\ndata = "trk"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ok_json(env, "--key-file", vendor_key(env, 0)[0], "chain", "fund", made["address"], "--eth", "1")  # type: ignore[index]
    sent = ok_json(env, "chain", "fund", Account.create().address, "--eth", "0.1")
    assert sent["from"] == made["address"]  # type: ignore[index]   # signed by keys/admin.json in the home

    monkeypatch.setenv("FWLEDGER_HOME", str(home))
    monkeypatch.delenv("FWLEDGER_CONFIG", raising=False)
    monkeypatch.delenv("FWLEDGER_KEY_FILE", raising=False)
    monkeypatch.delenv("FWLEDGER_TRACKER_DATA", raising=False)
    s = load_settings()
    assert s.key_file == home / "keys" / "admin.json" and s.passphrase_file == home / "keys" / "admin.pass"
    assert load_tracker_config(home).data_dir == home / "trk"
    # on the command line a relative path is the working folder's, as usual
    assert load_settings(key_file="mine.key").key_file == Path("mine.key")


def test_up_tells_the_operator_where_the_dashboard_is(tmp_path: Path) -> None:
    """The human output of `up`: the login address with the token once the tracker made it, else
    the dashboard's address and the command that prints the login address."""
    from entities.stack import dashboard_lines
    from entities.status_tracker.dashboard import load_or_create_token

    rec = {"home": str(tmp_path), "urls": {"tracker": "http://127.0.0.1:8602", "dashboard": "http://127.0.0.1:8602/dashboard"},
           "commands": {"dashboard": "fwledger tracker dashboard-url --data X --url http://127.0.0.1:8602"}}
    (line,) = dashboard_lines(rec)
    assert line == ("fleet dashboard: http://127.0.0.1:8602/dashboard (operator login address: "
                    "fwledger tracker dashboard-url --data X --url http://127.0.0.1:8602)")
    token = load_or_create_token(tmp_path / "stack" / "tracker" / "dashboard.token")
    assert dashboard_lines(rec) == [f"fleet dashboard (operator login): http://127.0.0.1:8602/dashboard/login#{token}"]


@pytest.mark.parametrize("bad", ["main-fw", "main-fw=1.2", "=1.0.0", "main-fw=one"])
def test_tracker_wait_refuses_a_malformed_version_before_any_request(bad: str) -> None:
    """``tracker wait --version`` is PRODUCT=X.Y.Z: anything else is a usage error (2), one line,
    and no tracker is contacted (the URL does not exist)."""
    res = CliRunner().invoke(cli, ["tracker", "wait", "--version", bad, "--tracker", "http://127.0.0.1:9"])
    assert res.exit_code == 2 and "expected PRODUCT=X.Y.Z" in res.output


def test_tracker_wait_names_an_unreachable_tracker(tmp_path: Path) -> None:
    key = tmp_path / "op.key"
    key.write_text(Account.create().key.hex())
    res = CliRunner().invoke(cli, ["--home", str(tmp_path), "--key-file", str(key), "tracker", "wait", "--devices",
                                   "1", "--timeout", "1", "--tracker", "http://127.0.0.1:9"])
    assert res.exit_code == 1 and "cannot reach the tracker at http://127.0.0.1:9" in res.output
