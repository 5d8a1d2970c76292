"""The local anvil devnet: a child node, the per-home daemon, state across restarts.

Needs the anvil binary (``scripts/setup`` installs it into ``.devnet/``; ``FWLEDGER_ANVIL``
overrides); every test that runs anvil is skipped with the reason when it cannot be found.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from eth_account import Account

from ledger_node import devnet
from ledger_node.errors import DevnetError

pytestmark = pytest.mark.devnet

# anvil's first two default accounts (mnemonic "test test ... junk")
SENDER_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
SENDER = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
RECIPIENT = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
DEFAULT_BALANCE = 10_000 * 10**18
AMOUNT = 123_456_789


def rpc(url: str, method: str, *params: Any) -> Any:
    """One raw JSON-RPC call (no proxies)."""
    with requests.Session() as session:
        session.trust_env = False
        answer = session.post(
            url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)},
            timeout=10,
        ).json()
    assert "result" in answer, answer
    return answer["result"]


def send_transfer(url: str, value: int = AMOUNT) -> int:
    """Sign a plain ETH transfer SENDER -> RECIPIENT locally and send it; returns its block."""
    chain_id = int(rpc(url, "eth_chainId"), 16)
    nonce = int(rpc(url, "eth_getTransactionCount", SENDER, "pending"), 16)
    tx = {
        "type": 2, "chainId": chain_id, "nonce": nonce, "to": RECIPIENT, "value": value,
        "gas": 21_000, "maxFeePerGas": 10 * 10**9, "maxPriorityFeePerGas": 10**9,
    }
    signed = Account.sign_transaction(tx, SENDER_KEY)
    raw = "0x" + signed.raw_transaction.hex().removeprefix("0x")
    tx_hash = rpc(url, "eth_sendRawTransaction", raw)
    deadline = time.monotonic() + 10  # anvil automines, but the receipt can lag a moment
    while (receipt := rpc(url, "eth_getTransactionReceipt", tx_hash)) is None:
        assert time.monotonic() < deadline, f"no receipt for {tx_hash}"
        time.sleep(0.02)
    assert int(receipt["status"], 16) == 1
    return int(receipt["blockNumber"], 16)


def balance(url: str, address: str = RECIPIENT) -> int:
    return int(rpc(url, "eth_getBalance", address, "latest"), 16)


def block_number(url: str) -> int:
    return int(rpc(url, "eth_blockNumber"), 16)


def gone(pid: int) -> bool:
    """True if ``pid`` no longer runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


@pytest.fixture(scope="module")
def anvil() -> Path:
    try:
        return devnet.find_anvil()
    except DevnetError as exc:
        pytest.skip(f"no anvil binary: {exc}")


@pytest.fixture
def home(tmp_path: Path, anvil: Path) -> Iterator[Path]:
    """A fresh fwledger home whose devnet is always stopped afterwards."""
    home = tmp_path / "home"
    yield home
    devnet.stop(home)


# --------------------------------------------------------------------------- find_anvil


def test_find_anvil_errors_clearly_when_nothing_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FWLEDGER_ANVIL", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(DevnetError, match=r"anvil not found: run scripts/setup"):
        devnet.find_anvil(project_root=tmp_path)


def test_find_anvil_rejects_a_bad_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FWLEDGER_ANVIL", str(tmp_path / "nope"))
    with pytest.raises(DevnetError, match=r"FWLEDGER_ANVIL=.* is not an executable file"):
        devnet.find_anvil(project_root=tmp_path)


def test_find_anvil_order_and_wrapper_resolution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The project's .devnet beats PATH, and the npm wrapper resolves to the native binary."""
    package = devnet._platform_package()
    if package is None:
        pytest.skip("no @foundry-rs platform package for this machine")
    modules = tmp_path / ".devnet" / "node_modules"
    wrapper = modules / "@foundry-rs" / "anvil" / "bin.mjs"
    native = modules / "@foundry-rs" / package / "bin" / "anvil"
    on_path = tmp_path / "bin" / "anvil"
    for path in (wrapper, native, on_path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    (modules / ".bin").mkdir()
    (modules / ".bin" / "anvil").symlink_to("../@foundry-rs/anvil/bin.mjs")
    monkeypatch.delenv("FWLEDGER_ANVIL", raising=False)
    monkeypatch.setenv("PATH", str(on_path.parent))

    assert devnet.find_anvil(project_root=tmp_path) == native
    monkeypatch.setenv("FWLEDGER_ANVIL", str(modules / ".bin" / "anvil"))
    assert devnet.find_anvil(project_root=tmp_path) == native  # wrapper -> binary
    monkeypatch.delenv("FWLEDGER_ANVIL")
    native.unlink()
    (modules / ".bin" / "anvil").unlink()
    assert devnet.find_anvil(project_root=tmp_path) == on_path


# --------------------------------------------------------------------------- AnvilProcess


def test_free_ports_are_outside_the_range_the_os_gives_connections() -> None:
    """A port handed to a server about to start is not one the OS may give an outgoing
    connection meanwhile (its ephemeral range): the server's bind cannot meet "address in use"."""
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = {devnet.free_port() for _ in range(20)}
    assert all(1024 <= p < low for p in ports) and len(ports) > 1, (ports, low, high)
    port = ports.pop()
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", port))
        srv.listen(1)
        assert devnet._port_in_use(port)
        assert port not in {devnet.free_port() for _ in range(50)}  # taken: never handed out


def test_anvil_process_starts_on_a_free_port_and_stops_by_pid(anvil: Path) -> None:
    node = devnet.AnvilProcess(chain_id=4242)
    with node:
        assert node.url == f"http://127.0.0.1:{node.port}"
        assert int(rpc(node.url, "eth_chainId"), 16) == 4242
        pid = node.pid
        assert not gone(pid)
        assert node.running
    assert gone(pid)
    assert not node.running
    node.stop()  # idempotent


def test_anvil_process_keeps_its_chain_in_a_state_file(tmp_path: Path, anvil: Path) -> None:
    state = tmp_path / "state.json"
    with devnet.AnvilProcess(state=state) as node:
        block = send_transfer(node.url)
    assert state.exists()
    with devnet.AnvilProcess(state=state) as node:
        assert block_number(node.url) == block
        assert balance(node.url) == DEFAULT_BALANCE + AMOUNT


def test_anvil_process_that_dies_reports_its_log(tmp_path: Path, anvil: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text('{"block": ')  # truncated: anvil refuses it and exits at once
    node = devnet.AnvilProcess(state=state, startup_timeout=10)
    with pytest.raises(DevnetError, match=r"anvil exited with code \d+ during startup: .*state"):
        node.start()
    assert not node.running


def test_anvil_process_on_a_taken_port_fails_clearly(anvil: Path) -> None:
    with devnet.AnvilProcess() as first:
        second = devnet.AnvilProcess(port=first.port, startup_timeout=10)
        with pytest.raises(DevnetError, match="in use"):
            second.start()
        assert not second.running
        assert int(rpc(first.url, "eth_chainId"), 16) == devnet.DEFAULT_CHAIN_ID


# --------------------------------------------------------------------------- the daemon


def test_daemon_start_status_stop_by_pid(home: Path) -> None:
    port = devnet.free_port()
    info = devnet.start(home, port)
    assert (info.port, info.url) == (port, f"http://127.0.0.1:{port}")
    record = json.loads((home / "devnet" / "devnet.json").read_text())
    assert record["pid"] == info.pid and record["url"] == info.url and record["started_at"]
    assert json.loads(info.to_json())["pid"] == info.pid

    now = devnet.status(home)
    assert now is not None and now.pid == info.pid and now.block_number == 0

    assert devnet.stop(home) is True
    assert gone(info.pid)
    assert not (home / "devnet" / "devnet.json").exists()
    assert (home / "devnet" / "state.json").exists()  # dumped on stop
    assert devnet.status(home) is None
    assert devnet.stop(home) is False  # idempotent


def test_chain_survives_stop_and_start(home: Path) -> None:
    info = devnet.start(home, devnet.free_port())
    block = send_transfer(info.url)
    send_transfer(info.url)
    assert devnet.stop(home)

    again = devnet.start(home, devnet.free_port())
    assert again.pid != info.pid
    assert block_number(again.url) == block + 1
    assert balance(again.url) == DEFAULT_BALANCE + 2 * AMOUNT
    status = devnet.status(home)
    assert status is not None and status.block_number == block + 1
    send_transfer(again.url)  # nonces continue where they were
    assert balance(again.url) == DEFAULT_BALANCE + 3 * AMOUNT


def test_second_start_for_the_same_home_is_refused(home: Path) -> None:
    info = devnet.start(home, devnet.free_port())
    with pytest.raises(DevnetError, match="already running"):
        devnet.start(home, devnet.free_port())
    now = devnet.status(home)
    assert now is not None and now.pid == info.pid


def test_start_on_a_taken_port_says_so(home: Path) -> None:
    with devnet.AnvilProcess() as other:
        with pytest.raises(DevnetError, match=rf"port {other.port} .* in use"):
            devnet.start(home, other.port)
    assert devnet.status(home) is None


def test_daemon_outlives_the_process_that_started_it(home: Path) -> None:
    port = devnet.free_port()
    code = (
        "import sys; from pathlib import Path; from ledger_node import devnet; "
        "print(devnet.start(Path(sys.argv[1]), int(sys.argv[2])).to_json())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(home), str(port)],
        capture_output=True, text=True, timeout=60, check=False,
        cwd=Path(devnet.__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr
    pid = json.loads(done.stdout)["pid"]
    now = devnet.status(home)
    assert now is not None and now.pid == pid and now.port == port
    assert os.getsid(pid) == pid  # its own session: a Ctrl-C of the CLI does not reach it
    assert devnet.stop(home) is True
    assert gone(pid)


def test_sigkill_loses_little_and_stale_pid_file_is_cleaned(home: Path) -> None:
    info = devnet.start(home, devnet.free_port(), state_interval=1)
    block = send_transfer(info.url)
    state = home / "devnet" / "state.json"
    deadline = time.monotonic() + 15
    while True:  # wait for a periodic dump that holds the transfer
        try:
            dumped = int(json.loads(state.read_text())["block"]["number"], 16)
        except (OSError, ValueError, KeyError, TypeError):
            dumped = -1
        if dumped >= block:
            break
        assert time.monotonic() < deadline, "anvil never dumped its state"
        time.sleep(0.1)

    os.kill(info.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not gone(info.pid):
        assert time.monotonic() < deadline
        time.sleep(0.05)

    assert devnet.status(home) is None
    assert devnet.stop(home) is False  # stale record: nothing killed, record removed
    assert not (home / "devnet" / "devnet.json").exists()

    again = devnet.start(home, devnet.free_port())
    assert balance(again.url) == DEFAULT_BALANCE + AMOUNT


def test_stop_never_kills_a_reused_pid(home: Path, anvil: Path) -> None:
    """The record names a live process that is not this home's anvil: it must survive."""
    info = devnet.start(home, devnet.free_port())
    assert devnet.stop(home)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = json.loads(info.to_json()) | {"pid": bystander.pid}
        (home / "devnet" / "devnet.json").write_text(json.dumps(record))
        assert devnet.status(home) is None
        assert devnet.start(home, devnet.free_port()).pid != bystander.pid  # record replaced
        assert devnet.stop(home) is True
        record["pid"] = bystander.pid
        (home / "devnet" / "devnet.json").write_text(json.dumps(record))
        assert devnet.stop(home) is False
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_damaged_state_is_restored_from_the_last_good_copy(home: Path) -> None:
    info = devnet.start(home, devnet.free_port())
    send_transfer(info.url)
    assert devnet.stop(home)
    state = home / "devnet" / "state.json"
    state.write_bytes(state.read_bytes()[:100])  # as if killed in the middle of a dump

    again = devnet.start(home, devnet.free_port())
    assert again.notes and "restored" in again.notes[0]
    assert balance(again.url) == DEFAULT_BALANCE + AMOUNT
    assert (home / "devnet" / "state.json.corrupt").exists()


def test_damaged_state_without_a_good_copy_is_refused(home: Path) -> None:
    state = home / "devnet" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text('{"block": ')
    with pytest.raises(DevnetError, match=r"damaged .* delete it"):
        devnet.start(home, devnet.free_port())
