"""`fwledger up` / `fwledger down`: the whole X.1368 system as local processes, one home folder.

``up`` starts, each as its own process (own session, log in ``<home>/stack/logs/NAME.log``):

1. the devnet: anvil through :mod:`ledger_node.devnet` (the same daemon as ``fwledger devnet
   start``), with interval mining (``--block-time``, default 2 s) so the head never grows older than
   the devices' maximum header age; development keys in ``<home>/keys`` (``admin.key`` = account 0);
2. the registry: the home's deployment record is reused when its code is on chain, else deployed;
   then the administrator's setup, skipped where the chain already has it: a vendor ``acme`` with a
   new encrypted keystore (``<home>/keys/acme.json``, what ``fwledger author keygen`` writes; its
   passphrase in ``<home>/stack/acme.passphrase``), funded from the admin key; a hardware class
   ``cam-r1`` with its X25519 key (private half in ``<home>/stack/classes/cam-r1.x25519``); a policy
   allowing ``acme/main-fw`` on it;
3. a firmware server (``fwledger server run``), a status tracker's server module (``fwledger tracker
   run --role server``) and, once the CLI has it, an intermediate module between the devices and the
   server module (see :func:`intermediate_supported`);
4. N device agents (``fwledger device run``), each a device folder provisioned (as ``fwledger device
   init`` does, plus a factory image ``main-fw 0.9.0`` confirmed in slot a, so the device reports a
   running version and the tracker plans its updates) with the tracker's address as trust anchor.

Every process is waited for (devnet RPC, ``/health``, a device's first agent pass), with a
deadline; a failure names the component and its log, and stops everything started so far.
``<home>/stack/stack.json`` (atomic writes, rewritten after each start) lists every process with
its PID *and* its start time (``/proc/PID/stat`` field 22), so :func:`down` signals only the
processes it started, never a reused PID. One stack per home: ``up`` refuses while one runs.

The processes and the record: :mod:`entities.stack_procs`; the ledger and fleet setup (keys,
registry, device folders, admissions, TLS): :mod:`entities.stack_setup`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ledger_node import devnet as dn
from ledger_node.errors import ConfigError, FwledgerError
from ledger_node.fsutil import atomic_write_json

from .stack_procs import (
    _HOST,
    StackError,
    _is_ours,
    _locked,
    _now_iso,
    _remove_record,
    _running,
    _save,
    _spawn,
    _Started,
    _terminate,
    _wait_all,
    read_record,
    stack_dir,
)
from .stack_procs import _alive as _alive
from .stack_procs import _child_env as _child_env
from .stack_procs import _first_pass as _first_pass
from .stack_procs import _fwledger_argv as _fwledger_argv
from .stack_procs import _http_ready as _http_ready
from .stack_procs import _start_ticks as _start_ticks
from .stack_setup import (
    FACTORY_VERSION,
    HARDWARE,
    PRODUCT,
    _admit,
    _bind_ledger,
    _boards,
    _ledger_setup,
    _provision,
    _stack_tls,
    _write_devnet_keys,
)
from .stack_setup import MAX_HEADER_AGE as MAX_HEADER_AGE
from .stack_setup import VENDOR as VENDOR
from .stack_setup import _service_key as _service_key

__all__ = [
    "DEFAULT_BLOCK_TIME",
    "DEFAULT_DEVICES",
    "StackError",
    "dashboard_lines",
    "dashboard_login_url",
    "down",
    "intermediate_supported",
    "read_record",
    "stack_dir",
    "up",
]

DEFAULT_DEVICES = 3
DEFAULT_BLOCK_TIME = 2.0
DEFAULT_DEVICE_INTERVAL = 5.0
DEFAULT_TIMEOUT = 60.0
FORMAT = 1


# ----------------------------------------------------------------------------- topology


def intermediate_supported() -> bool:
    """Whether ``up`` puts an intermediate module between the devices and the server module
    (docs/MODULES.md section 6): yes unless ``FWLEDGER_STACK_INTERMEDIATE=0`` asks for the
    server-module-only topology."""
    return os.environ.get("FWLEDGER_STACK_INTERMEDIATE", "").strip() not in ("0", "no", "false")


# ----------------------------------------------------------------------------- up


def _port_taken(port: int) -> bool:
    """True when something listens on (or holds) ``127.0.0.1:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return True
    return False


def _ports(port_base: int | None, intermediate: bool, previous: dict[str, Any]) -> dict[str, int]:
    """Ports per component: ``port_base`` + i; else the previous ``up``'s ports when still free (stable
    URLs: published records name the firmware server's URL), else free ones the OS picks."""
    names = ["devnet", "server", "tracker"] + (["intermediate"] if intermediate else [])
    if port_base is None:
        chosen: set[int] = set()
        out = {}
        for name in names:
            port = previous.get(name)
            if not isinstance(port, int) or port in chosen or not 1024 <= port <= 65535 or _port_taken(port):
                port = dn.free_port()
                while port in chosen:
                    port = dn.free_port()
            chosen.add(port)
            out[name] = port
        return out
    if not 0 < port_base <= 65535 - len(names):
        raise StackError(f"bad --port-base {port_base}: the stack needs ports {port_base}-{port_base + len(names) - 1}")
    return {name: port_base + i for i, name in enumerate(names)}


def up(home: Path, *, devices: int = DEFAULT_DEVICES, port_base: int | None = None,
       block_time: float = DEFAULT_BLOCK_TIME, device_interval: float = DEFAULT_DEVICE_INTERVAL,
       timeout: float = DEFAULT_TIMEOUT, progress: Callable[[str], None] | None = None,
       tls: bool = False) -> dict[str, Any]:
    """Start the local stack for ``home``; returns its record (what ``stack.json`` holds). ``tls``:
    every service serves HTTPS with certificates from a fleet CA the stack makes, the devices pin
    it (as across hosts; README "Deploying on several hosts").

    Raises:
        StackError: a stack already runs for this home, or a component failed to start (everything
            started is stopped again before this is raised).
        FwledgerError: the ledger setup failed (same clean-up).
    """
    home = Path(home).expanduser().resolve()
    note = progress or (lambda _msg: None)
    if devices < 1:
        raise StackError("--devices must be at least 1")
    sdir = stack_dir(home)
    with _locked(home):
        existing = read_record(home)
        if existing is not None:
            alive = _running(existing)
            if alive:
                names = ", ".join(f"{p['name']} (pid {p['pid']})" for p in alive)
                raise StackError(f"a stack is already running for {home} since {existing.get('created_at')}: "
                                 f"{names}; run 'fwledger down' first")
            note("a stale stack record (no process of it runs) was removed")
            _down_locked(home, existing)
        if dn.status(home) is not None:
            raise StackError(f"a devnet started by 'fwledger devnet start' runs for {home}: stop it "
                             "('fwledger devnet stop') or use another --home")
        with_intermediate = intermediate_supported()
        try:
            previous = json.loads((sdir / "ports.json").read_text())
        except (OSError, ValueError):
            previous = {}
        ports = _ports(port_base, with_intermediate, previous if isinstance(previous, dict) else {})
        started = time.monotonic()
        record: dict[str, Any] = {
            "format": FORMAT, "state": "starting", "home": str(home), "created_at": _now_iso(),
            "up_pid": os.getpid(), "topology": "intermediate" if with_intermediate else "server-module",
            "processes": []}
        try:
            _up(home, sdir, record, ports, devices=devices, block_time=block_time,
                device_interval=device_interval, timeout=timeout, note=note, tls=tls)
            record["seconds"] = round(time.monotonic() - started, 1)
            _save(home, record)
            atomic_write_json(sdir / "ports.json", ports)
        except BaseException:
            with contextlib.suppress(Exception):
                _down_locked(home, record)
            raise
        return record


def _up(home: Path, sdir: Path, record: dict[str, Any], ports: dict[str, int], *, devices: int, block_time: float,
        device_interval: float, timeout: float, note: Callable[[str], None], tls: bool = False) -> None:
    logs = sdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[dict[str, Any]] = record["processes"]

    # -- devnet -------------------------------------------------------------------------------
    note(f"devnet: anvil on port {ports['devnet']}, a block every {block_time:g} s")
    devnet_log = logs / "devnet.log"
    with contextlib.suppress(FileNotFoundError):
        devnet_log.unlink()
    devnet_log.symlink_to(dn.devnet_dir(home) / "anvil.log")
    try:
        info = dn.start(home, ports["devnet"], block_time=block_time, state_interval=1, startup_timeout=timeout)
    except FwledgerError as exc:
        raise StackError(f"devnet failed to start: {exc}; log: {devnet_log}") from exc
    procs.append({"name": "devnet", "role": "devnet", "pid": info.pid, "start_time": _start_ticks(info.pid),
                  "group": False, "port": info.port, "url": info.url, "log": str(devnet_log),
                  "state_path": info.state_path, "chain_id": info.chain_id, "block_time": block_time})
    _save(home, record)
    rpc = info.url
    keys_dir = _write_devnet_keys(home)

    # -- ledger -------------------------------------------------------------------------------
    try:
        setup = _ledger_setup(home, rpc, sdir, note)
    except FwledgerError as exc:
        raise StackError(f"ledger setup failed: {exc}") from exc
    dep, class_private = setup.pop("_deployment"), setup.pop("_class_private")
    record["chain"] = {"rpc": rpc, "chain_id": setup["chain_id"], "registry": setup["registry"],
                       "deploy_block": setup["deploy_block"], "code_hash": setup["code_hash"],
                       "block_time": block_time, "keys": str(keys_dir)}
    record["setup"] = {k: v for k, v in setup.items() if k not in ("chain_id", "registry", "deploy_block",
                                                                   "code_hash")}
    _save(home, record)
    _bind_ledger(sdir, record["chain"], note)
    env = _child_env(home, rpc)
    tls_files = _stack_tls(sdir, note) if tls else None
    record["tls"] = tls_files
    scheme = "https" if tls_files else "http"

    def tls_args(name: str) -> list[str]:
        if tls_files is None:
            return []
        return ["--tls-cert", tls_files[f"{name}_cert"], "--tls-key", tls_files[f"{name}_key"],
                "--tls-ca", tls_files["ca"]]

    # -- firmware server and tracker(s) -------------------------------------------------------
    server_url = f"{scheme}://{_HOST}:{ports['server']}"
    tracker_url = f"{scheme}://{_HOST}:{ports['tracker']}"
    tracker_addr = _service_key(sdir / "tracker" / "tracker.key")
    # the intermediate's key too: the server module hears module heartbeats from configured keys only
    mid_addr = _service_key(sdir / "intermediate" / "tracker.key") if "intermediate" in ports else None
    note(f"firmware server on {server_url}, tracker (server module {tracker_addr}) on {tracker_url}")
    srv = _spawn("server", "firmware-server",
                 _fwledger_argv(home, rpc, "server", "run", "--host", _HOST, "--port", str(ports["server"]),
                                "--data", str(sdir / "server"), "--poll-interval", "0.5", "--admission", "required",
                                "--operator-key", setup["admin"], *tls_args("server"), "--json"),
                 env, logs / "server.log", port=ports["server"], url=server_url)
    srv.ready = _http_ready(server_url, tls=tls_files)
    procs.append(srv.entry)
    _save(home, record)
    trk = _spawn("tracker", "tracker-server",
                 _fwledger_argv(home, rpc, "tracker", "run", "--role", "server", "--listen",
                                f"{_HOST}:{ports['tracker']}", "--data", str(sdir / "tracker"),
                                "--poll-interval", "0.5", "--admin-key", setup["admin"], "--admission", "required",
                                "--operator-key", setup["admin"], *(["--module-key", mid_addr] if mid_addr else []),
                                *tls_args("tracker"), *(["--tls-client", "optional"] if tls_files else []), "--json"),
                 env, logs / "tracker.log", port=ports["tracker"], url=tracker_url, address=tracker_addr)
    trk.ready = _http_ready(tracker_url, lambda h: h.get("ledger_block") is not None, tls=tls_files)
    procs.append(trk.entry)
    _save(home, record)
    services = [srv, trk]

    device_tracker, anchor_keys = tracker_url, [tracker_addr]
    relay_keys: list[str] = []
    if "intermediate" in ports:
        # the intermediate module of docs/MODULES.md section 6, between the devices and the server module.
        # Devices trust the server module's key as their only tracker (attestations, commands; k = 1) and
        # the intermediate's as a relay (answers it re-signs, never attestations). intermediate_supported()
        # decides whether this runs.
        url = f"{scheme}://{_HOST}:{ports['intermediate']}"
        key_file = sdir / "intermediate" / "tracker.key"
        addr = _service_key(key_file)  # made above, before the server module that lists it (mid_addr)
        note(f"intermediate tracker {addr} on {url}")
        mid = _spawn("intermediate", "tracker-intermediate",
                     _fwledger_argv(home, rpc, "tracker", "run", "--role", "intermediate", "--upstream", tracker_url,
                                    "--upstream-key", tracker_addr, "--listen", f"{_HOST}:{ports['intermediate']}",
                                    "--data", str(sdir / "intermediate"), "--identity", str(key_file),
                                    *tls_args("intermediate"), *(["--tls-client", "optional"] if tls_files else []),
                                    "--json"),
                     env, logs / "intermediate.log", port=ports["intermediate"], url=url, address=addr)
        mid.ready = _http_ready(url, tls=tls_files)
        procs.append(mid.entry)
        _save(home, record)
        services.append(mid)
        device_tracker, relay_keys = url, [addr]

    # -- devices (provisioned while the services start) ---------------------------------------
    names = [f"dev-{i:02d}" for i in range(devices)]
    ca_pem = Path(tls_files["ca"]).read_bytes() if tls_files else None
    addresses = {name: _provision(sdir / "devices" / name, dep, class_private, anchor_keys, relay_keys, ca_pem)
                 for name in names}
    _wait_all(services, timeout)
    _admit(home, names, addresses, [server_url, tracker_url], note, tls_files,
           boards={name: _boards(sdir / "devices" / name) for name in names})
    note(f"{devices} device agent(s) ({HARDWARE}, {PRODUCT} {FACTORY_VERSION}) -> {device_tracker}")
    agents: list[_Started] = []
    for name in names:
        root = sdir / "devices" / name
        log = logs / f"{name}.log"
        offset = log.stat().st_size if log.exists() else 0
        agent = _spawn(name, "device",
                       _fwledger_argv(home, rpc, "device", "run", "--dir", str(root), "--tracker", device_tracker,
                                      "--server", server_url, "--interval", f"{device_interval:g}", "--json"),
                       env, log, dir=str(root), device_id=name, address=addresses[name], tracker=device_tracker)
        agent.ready = _first_pass(log, offset)
        procs.append(agent.entry)
        agents.append(agent)
        _save(home, record)
    _wait_all(agents, timeout)
    record["state"] = "running"
    record["urls"] = {"rpc": rpc, "server": server_url, "tracker": tracker_url, "devices_talk_to": device_tracker,
                      "dashboard": f"{tracker_url}/dashboard"}
    record["commands"] = commands(record)
    _save(home, record)


def commands(record: dict[str, Any]) -> dict[str, str]:
    """The commands to build, publish and watch a first release against a running stack."""
    home, setup, urls = record["home"], record["setup"], record["urls"]
    key = f"--key-file {setup['vendor_key']} "
    pw = f" --passphrase-file {setup['passphrase_file']}"
    tls = record.get("tls")
    tls_env = (f" FWLEDGER_TLS_CA={tls['ca']} FWLEDGER_TLS_CERT={tls['cert']} FWLEDGER_TLS_KEY={tls['key']}"
               if tls else "")
    return {
        "env": f"export FWLEDGER_HOME={home} FWLEDGER_RPC={urls['rpc']}{tls_env}",
        "image": "head -c 200000 /dev/urandom > fw.bin",
        "build": (f"fwledger {key}author build fw.bin --product {setup['product']} --version 1.0.0 "
                  f"--hardware {setup['hardware']} --link {urls['server']}/v1/images -o fw.bundle{pw}"),
        "publish": f"fwledger {key}author publish fw.bundle --server {urls['server']}{pw}",
        "watch": f"fwledger tracker devices --tracker {urls['tracker']} --json",
        "dashboard": f"fwledger tracker dashboard-url --data {stack_dir(Path(home)) / 'tracker'} "
                     f"--url {urls['tracker']}",
        "down": f"fwledger --home {home} down",
    }


def dashboard_lines(record: dict[str, Any]) -> list[str]:
    """What ``up`` tells a human about the fleet dashboard: the operator's login address (token in
    the fragment) when the tracker has made its token, else the dashboard's address and the command
    that prints the login address."""
    login = dashboard_login_url(record)
    if login:
        return [f"fleet dashboard (operator login): {login}"]
    urls, cmds = record.get("urls", {}), record.get("commands", {})
    return [f"fleet dashboard: {urls.get('dashboard', '?')} (operator login address: {cmds.get('dashboard', '?')})"]


def dashboard_login_url(record: dict[str, Any]) -> str | None:
    """The dashboard's login address with the operator token in its fragment (what ``commands()
    ["dashboard"]`` prints), read from the tracker's token file; never stored in ``stack.json``.
    None when the tracker has made no token (yet)."""
    from entities.status_tracker.dashboard import load_or_create_token, login_url

    try:
        token = load_or_create_token(stack_dir(Path(record["home"])) / "tracker" / "dashboard.token", create=False)
    except (ConfigError, KeyError):
        return None
    return login_url(record["urls"]["tracker"], token)


# ----------------------------------------------------------------------------- down


def _down_locked(home: Path, record: dict[str, Any]) -> list[dict[str, Any]]:
    """Stop every recorded process, newest first (the devnet through its manager); remove the record."""
    report: list[dict[str, Any]] = []
    errors: list[str] = []
    for proc in reversed(record.get("processes", [])):
        try:
            if proc.get("role") == "devnet":
                if _is_ours(proc):
                    dn.stop(home)
                    how = "stopped"
                else:
                    how = "not running"
            else:
                how = _terminate(proc)
        except FwledgerError as exc:
            errors.append(str(exc))
            how = f"failed: {exc}"
        report.append({"name": proc.get("name"), "pid": proc.get("pid"), "stopped": how})
    if errors:
        raise StackError("; ".join(errors))
    _remove_record(home)
    return report


def down(home: Path) -> dict[str, Any]:
    """Stop the home's stack: exactly the processes in ``stack.json`` (PID and start time checked);
    SIGTERM, then SIGKILL after a timeout; the devnet through :func:`ledger_node.devnet.stop`.
    Idempotent: with no stack it reports nothing stopped.

    Raises:
        StackError: a process would not die (the record is kept so ``down`` can be retried).
    """
    home = Path(home).expanduser().resolve()
    if not stack_dir(home).exists():
        return {"home": str(home), "stopped": [], "was_running": False}
    with _locked(home):
        record = read_record(home)
        if record is None:
            _remove_record(home)
            return {"home": str(home), "stopped": [], "was_running": False}
        was_running = bool(_running(record))
        stopped = _down_locked(home, record)
    return {"home": str(home), "stopped": stopped, "was_running": was_running}
