"""`fwledger up` / `fwledger down`: the local stack as real processes.

The anvil tests run the real CLI in subprocesses against a temporary home: ``up`` starts anvil
(interval mining), deploys and sets up the registry, a firmware server, the tracker(s) and device
agents; a release built and published with the commands ``up`` prints reaches the running agents,
visible in ``fwledger tracker devices``; ``down`` leaves no process and no listening port. Every wait
polls with a deadline. The record-only tests (PID reuse, idempotent ``down``) need no anvil.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from entities import stack
from ledger_node import devnet
from ledger_node.fsutil import atomic_write_json
from tests.conftest import require_anvil

REPO = Path(__file__).resolve().parents[2]


def fwledger(home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "entities.cli", "--home", str(home), *args]
    base = {k: v for k, v in os.environ.items() if not k.startswith("FWLEDGER_") or k == "FWLEDGER_ANVIL"}
    return subprocess.run(argv, cwd=REPO, env={**base, "PYTHONPATH": str(REPO), **(env or {})}, capture_output=True,
                          text=True, timeout=timeout, check=False)


def one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    return res.stderr


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def gone(pid: int) -> bool:
    """The process no longer runs (a zombie awaiting its reaper counts as gone)."""
    return not stack._alive(pid)


def free_block(n: int) -> int:
    """A base port with ``n`` consecutive free ports on 127.0.0.1."""
    for _ in range(200):
        base = random.randrange(20000, 60000)
        if all(port_free(base + i) for i in range(n)):
            return base
    raise AssertionError("no block of free ports")


@pytest.fixture
def anvil() -> None:
    require_anvil()


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A temporary home; whatever a test leaves running there is stopped by its record."""
    h = tmp_path / "home"
    try:
        yield h
    finally:
        with contextlib.suppress(Exception):
            stack.down(h)
        with contextlib.suppress(Exception):
            devnet.stop(h)


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout} s (last: {last!r})")


# ============================================================================= the stack on anvil


@pytest.mark.devnet
@pytest.mark.parametrize("tls", [False, True], ids=["http-loopback", "tls"])
def test_up_publish_reaches_the_device_agents_then_down_leaves_nothing(anvil: None, home: Path, tmp_path: Path,
                                                                       tls: bool) -> None:
    """``up`` (with ``--tls``: every service over HTTPS from the stack's fleet CA, the devices
    pinning it, the operator's commands carrying FWLEDGER_TLS_*), a first release with the
    commands it printed reaches the devices, ``down`` leaves nothing."""
    res = fwledger(home, "up", "--devices", "2", "--device-interval", "0.5", *(["--tls"] if tls else []), "--json")
    assert res.returncode == 0, res.stderr
    rec = json.loads(res.stdout)
    assert rec == json.loads((home / "stack" / "stack.json").read_text())
    assert rec["state"] == "running" and rec["format"] == 1
    names = [p["name"] for p in rec["processes"]]
    assert names[:3] == ["devnet", "server", "tracker"] and names[-2:] == ["dev-00", "dev-01"]
    assert rec["topology"] in ("server-module", "intermediate")
    assert ("intermediate" in names) == (rec["topology"] == "intermediate")
    for p in rec["processes"]:
        assert isinstance(p["pid"], int) and isinstance(p["start_time"], int) and not gone(p["pid"])
        assert Path(p["log"]).parent == home / "stack" / "logs"
    assert rec["chain"]["block_time"] == 2.0 and rec["urls"]["rpc"].startswith("http://127.0.0.1:")
    ports = [p["port"] for p in rec["processes"] if "port" in p]
    # interval mining: the head moves with no transaction, so devices' headers never go stale
    first = devnet._rpc(rec["urls"]["rpc"], "eth_blockNumber")
    wait_for(lambda: devnet._rpc(rec["urls"]["rpc"], "eth_blockNumber") != first, 15, "a new block without a transaction")

    # one stack per home
    again = fwledger(home, "up", "--devices", "1")
    assert "already running" in one_line_error(again)
    assert json.loads((home / "stack" / "stack.json").read_text()) == rec

    # the exact commands up printed: build and publish a first release against it
    cmds = rec["commands"]
    env = dict(kv.split("=", 1) for kv in cmds["env"].removeprefix("export ").split())
    tls_env = {"FWLEDGER_TLS_CA": rec["tls"]["ca"], "FWLEDGER_TLS_CERT": rec["tls"]["cert"],
               "FWLEDGER_TLS_KEY": rec["tls"]["key"]} if tls else {}
    assert env == {"FWLEDGER_HOME": str(home), "FWLEDGER_RPC": rec["urls"]["rpc"], **tls_env}
    scheme = "https" if tls else "http"
    assert all(rec["urls"][k].startswith(f"{scheme}://127.0.0.1:") for k in ("server", "tracker", "devices_talk_to"))
    work = tmp_path / "work"
    work.mkdir()
    (work / "fw.bin").write_bytes(os.urandom(150_000))
    for step in ("build", "publish"):
        argv = shlex.split(cmds[step])
        assert argv[0] == "fwledger"
        out = subprocess.run([sys.executable, "-m", "entities.cli", *argv[1:], "--json"], cwd=work,
                             env={**os.environ, "PYTHONPATH": str(REPO), **env}, capture_output=True, text=True,
                             timeout=240, check=False)
        assert out.returncode == 0, f"{step}: {out.stderr}"
    header_hash = json.loads(out.stdout)["header_hash"]

    def updated() -> list[dict[str, Any]] | None:
        watch = shlex.split(cmds["watch"])
        got = fwledger(home, *watch[1:], env=env, timeout=60)
        if got.returncode != 0:
            return None
        rows = json.loads(got.stdout)
        done = [r for r in rows if r["components"].get("main-fw", {}).get("version") == "1.0.0"]
        return rows if len(done) == 2 else None

    rows = wait_for(updated, 120, "both device agents run main-fw 1.0.0")
    assert sorted(r["device_id"] for r in rows) == ["dev-00", "dev-01"]
    for name in ("dev-00", "dev-01"):
        root = home / "stack" / "devices" / name
        status = subprocess.run([sys.executable, "-m", "entities.cli", "device", "status", "--dir", str(root), "--json"],
                                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                                timeout=60, check=False)
        comp = next(c for c in json.loads(status.stdout)["components"] if c["name"] == "main-fw")
        assert comp["version"] == "1.0.0" and comp["header_hash"] == header_hash

    # down stops exactly what up recorded, then nothing is left
    res = fwledger(home, "down", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["was_running"] is True
    assert sorted(s["name"] for s in out["stopped"]) == sorted(names)
    assert all(s["stopped"] in ("SIGTERM", "SIGKILL", "stopped") for s in out["stopped"]), out
    for p in rec["processes"]:
        assert gone(p["pid"]), p
    for port in ports:
        assert port_free(port), port
    assert not (home / "stack" / "stack.json").exists() and devnet.status(home) is None
    res = fwledger(home, "down", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["stopped"] == []


@pytest.mark.devnet
def test_a_component_that_cannot_start_fails_up_and_leaves_nothing(anvil: None, home: Path) -> None:
    base = free_block(4)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:  # the tracker's port
        taken.bind(("127.0.0.1", base + 2))
        taken.listen()
        res = fwledger(home, "up", "--devices", "1", "--port-base", str(base), "--json")
    err = one_line_error(res)
    assert err.startswith("error: tracker failed to start") and str(home / "stack" / "logs" / "tracker.log") in err
    assert json.loads(res.stdout)["ok"] is False
    assert not (home / "stack" / "stack.json").exists()
    assert devnet.status(home) is None
    for port in range(base, base + 4):
        assert port_free(port), port
    # what had started (devnet, firmware server) is gone: nothing of this home runs
    mine = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
            if str(home) in " ".join(devnet._cmdline(pid) or []) and not gone(pid)]
    assert mine == []


# ============================================================================= the record (no anvil)


def test_down_without_a_stack_is_a_no_op(home: Path) -> None:
    res = fwledger(home, "down", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"home": str(home.resolve()), "stopped": [], "was_running": False}


def test_down_signals_only_a_pid_whose_start_time_matches(home: Path) -> None:
    """A recorded PID now used by another process (another start time) is never signalled."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        ticks = stack._start_ticks(proc.pid)
        assert ticks is not None
        entry = {"name": "dev-00", "role": "device", "pid": proc.pid, "start_time": ticks + 1, "group": True,
                 "log": str(home / "stack" / "logs" / "dev-00.log")}
        atomic_write_json(home / "stack" / "stack.json", {"format": 1, "processes": [entry]})
        out = stack.down(home)
        assert out["stopped"] == [{"name": "dev-00", "pid": proc.pid, "stopped": "not running"}]
        assert proc.poll() is None and not (home / "stack" / "stack.json").exists()

        atomic_write_json(home / "stack" / "stack.json", {"format": 1, "processes": [entry | {"start_time": ticks}]})
        res = fwledger(home, "up", "--devices", "1")
        assert "already running" in one_line_error(res) and f"dev-00 (pid {proc.pid})" in res.stderr
        out = stack.down(home)
        assert out["stopped"] == [{"name": "dev-00", "pid": proc.pid, "stopped": "SIGTERM"}]
        proc.wait(5)  # down reaped it already (it is this process's child): the status is gone with it
        assert gone(proc.pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
