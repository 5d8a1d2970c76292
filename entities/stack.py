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
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from ledger_node import devnet as dn
from ledger_node.errors import ConfigError, FwledgerError
from ledger_node.fsutil import atomic_write_bytes, atomic_write_json

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
#: devices refuse headers older than this (freeze attacks); far above the block time
MAX_HEADER_AGE = 300.0
VENDOR, HARDWARE, PRODUCT, FACTORY_VERSION = "acme", "cam-r1", "main-fw", "0.9.0"
FORMAT = 1
_HOST = "127.0.0.1"
_STOP_TIMEOUT = 15.0
_FUND_WEI = 100 * 10**18


class StackError(FwledgerError):
    """The local stack could not be started or stopped."""


def stack_dir(home: Path) -> Path:
    """``<home>/stack``: the record, logs, service data and device folders."""
    return Path(home).expanduser().resolve() / "stack"


def _record_path(home: Path) -> Path:
    return stack_dir(home) / "stack.json"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- processes


def _start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks after boot, ``/proc/PID/stat`` field 22); None if gone."""
    fields = dn.proc_stat(pid)
    if fields is None:
        return None
    try:
        return int(fields[19])  # fields after the command name start at field 3
    except (IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (reaps it if it is our exited child)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _is_ours(proc: dict[str, Any]) -> bool:
    """The recorded process still runs: same PID *and* same start time (a reused PID is not ours)."""
    pid = proc.get("pid")
    if not isinstance(pid, int) or pid <= 1 or not _alive(pid):
        return False
    recorded = proc.get("start_time")
    return recorded is not None and _start_ticks(pid) == recorded


def _terminate(proc: dict[str, Any], timeout: float = _STOP_TIMEOUT) -> str:
    """Stop one recorded process (its whole process group: it leads its own session).

    Returns how: ``"SIGTERM"``, ``"SIGKILL"`` or ``"not running"``.

    Raises:
        StackError: it would not die.
    """
    pid = int(proc["pid"])
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if not _is_ours(proc):
            return "not running" if sig == signal.SIGTERM else "SIGTERM"
        try:
            if proc.get("group", True):
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            return "not running" if sig == signal.SIGTERM else "SIGTERM"
        except PermissionError as exc:
            raise StackError(f"cannot signal {proc['name']} (pid {pid}): {exc.strerror}") from exc
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return sig.name
            time.sleep(0.05)
    raise StackError(f"{proc['name']} (pid {pid}) did not exit after SIGKILL")


def _child_env(home: Path, rpc: str) -> dict[str, str]:
    # the stack's processes take their settings from flags and <home>/config.toml only: a FWLEDGER_*
    # variable meant for another network (FWLEDGER_CONFIG, keys, TLS files...) must not leak into them
    keep = ("FWLEDGER_ANVIL", "FWLEDGER_DEBUG")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FWLEDGER_") or k in keep}
    env.update(FWLEDGER_HOME=str(home), FWLEDGER_RPC=rpc, PYTHONUNBUFFERED="1")
    return env


def _fwledger_argv(home: Path, rpc: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "entities.cli", "--home", str(home), "--rpc", rpc, *args]


def _log_tail(log: Path, lines: int = 1) -> str:
    """The last line(s) of a log worth showing: its last ``error:`` line if any, else the last ones."""
    try:
        text = log.read_bytes()[-65536:].decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in kept if line.startswith("error:")]
    return " | ".join((errors or kept)[-lines:])[:400]


# ----------------------------------------------------------------------------- the record


def read_record(home: Path) -> dict[str, Any] | None:
    """The home's stack record, or None if there is none (or it is unreadable)."""
    try:
        data = json.loads(_record_path(home).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _save(home: Path, record: dict[str, Any]) -> None:
    atomic_write_json(_record_path(home), record)


def _remove_record(home: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        _record_path(home).unlink()


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """One ``up``/``down`` at a time per home."""
    sdir = stack_dir(home)
    sdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(sdir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackError(f"another 'fwledger up' or 'down' is working on {home}: wait for it") from None
        yield
    finally:
        os.close(fd)


def _running(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in record.get("processes", []) if _is_ours(p)]


# ----------------------------------------------------------------------------- topology


def intermediate_supported() -> bool:
    """Whether ``up`` puts an intermediate module between the devices and the server module
    (docs/MODULES.md section 6): yes unless ``FWLEDGER_STACK_INTERMEDIATE=0`` asks for the
    server-module-only topology."""
    return os.environ.get("FWLEDGER_STACK_INTERMEDIATE", "").strip() not in ("0", "no", "false")


# ----------------------------------------------------------------------------- ledger setup


def _write_devnet_keys(home: Path) -> Path:
    """The development keys, as ``fwledger devnet start`` writes them."""
    from ledger_node.providers import mnemonic_keys

    keys_dir = home / "keys"
    for i, key in enumerate(mnemonic_keys(10)):
        atomic_write_bytes(keys_dir / f"devnet-{i}.key", ("0x" + key.hex() + "\n").encode(), mode=0o600)
    if not (keys_dir / "admin.key").exists():
        atomic_write_bytes(keys_dir / "admin.key", ("0x" + mnemonic_keys(1)[0].hex() + "\n").encode(), mode=0o600)
    return keys_dir


def _fund(w3: Any, sender: Any, to: str, minimum: int = 10**18, timeout: float = 60.0) -> None:
    """Send ``to`` 100 ether from ``sender`` when it holds less than ``minimum`` wei."""
    if int(w3.eth.get_balance(to)) >= minimum:
        return
    tx = {"to": to, "value": _FUND_WEI, "gas": 21_000, "chainId": int(w3.eth.chain_id),
          "nonce": int(w3.eth.get_transaction_count(sender.address, "pending")),
          "maxFeePerGas": 2 * int(w3.eth.gas_price) + 10**9, "maxPriorityFeePerGas": 10**9}
    signed = sender.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout, poll_latency=0.1)
    if int(receipt["status"]) != 1:
        raise StackError(f"funding {to} failed")


def _ledger_setup(home: Path, rpc: str, sdir: Path, note: Callable[[str], None]) -> dict[str, Any]:
    """Registry (reused or deployed) and the administrator's setup; idempotent against the chain."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from entities.author.keys import create_keystore, keystore_path, load_vendor_key, read_passphrase_file
    from entities.settings import load_key
    from ledger_node.providers import connect, mnemonic_keys
    from ledger_node.registry import Registry, deploy, load_deployment, save_deployment

    w3 = connect(rpc, timeout=30.0)
    chain_id = int(w3.eth.chain_id)
    admin = load_key(home / "keys" / "admin.key")
    if admin.address != _account(mnemonic_keys(1)[0]).address:
        _fund(w3, _account(mnemonic_keys(1)[0]), admin.address)
    reg: Registry | None = None
    try:
        reg = Registry(w3, load_deployment(home, chain_id), admin)
        note(f"registry {reg.address} reused (deployment record in {home / 'deployments'})")
    except ConfigError:
        dep = deploy(w3, admin)
        save_deployment(home, dep)
        reg = Registry(w3, dep, admin)
        note(f"registry deployed at {reg.address}")
    if not reg.is_admin(admin.address) or reg.threshold() != 1:
        raise StackError(f"the registry {reg.address} in {home} is not administered by {admin.address} alone "
                         "(k of n): use another --home for the local stack")

    passfile = sdir / f"{VENDOR}.passphrase"
    keystore = keystore_path(home, VENDOR)
    if keystore.exists() and passfile.exists():
        passphrase = read_passphrase_file(passfile)
        vendor = load_vendor_key(keystore, passphrase)
    else:
        if keystore.exists():
            raise StackError(f"{keystore} exists but its passphrase file {passfile} does not: move the key away")
        passphrase = secrets.token_urlsafe(24)
        atomic_write_bytes(passfile, (passphrase + "\n").encode(), mode=0o600)
        create_keystore(keystore, passphrase)
        vendor = load_vendor_key(keystore, passphrase)
        note(f"vendor key {vendor.address} in {keystore}")
    _fund(w3, admin, vendor.address)
    if not reg.is_vendor(vendor.address, VENDOR):
        reg.add_vendor(vendor.address, VENDOR)

    class_file = sdir / "classes" / f"{HARDWARE}.x25519"
    hw = reg.hardware(HARDWARE)
    if class_file.exists():
        class_key = X25519PrivateKey.from_private_bytes(bytes.fromhex(class_file.read_text().strip()))
    else:
        if hw.registered:
            raise StackError(f"hardware class {HARDWARE} is registered on this chain but its key is not in "
                             f"{class_file}: use another --home")
        class_key = X25519PrivateKey.generate()
        atomic_write_bytes(class_file, (class_key.private_bytes_raw().hex() + "\n").encode(), mode=0o600)
    public = class_key.public_key().public_bytes_raw()
    if not hw.registered:
        reg.add_hardware(HARDWARE, 1, public)
    elif hw.enc_key != public:
        raise StackError(f"hardware class {HARDWARE} is registered with another key than {class_file}")
    if not reg.policy(HARDWARE, VENDOR, PRODUCT).set:
        reg.set_policy(HARDWARE, VENDOR, PRODUCT, allowed=True)
    dep = reg.deployment
    return {"chain_id": chain_id, "registry": dep.address, "deploy_block": dep.block, "code_hash": dep.code_hash,
            "admin": admin.address, "vendor": VENDOR, "vendor_address": vendor.address,
            "vendor_key": str(keystore), "passphrase_file": str(passfile), "hardware": HARDWARE,
            "class_key": str(class_file), "product": PRODUCT, "factory_version": FACTORY_VERSION,
            "_deployment": dep, "_class_private": class_key.private_bytes_raw()}


def _account(key: bytes) -> Any:
    from eth_account import Account

    return Account.from_key(key)


def _service_key(path: Path) -> str:
    """A service's identity key, created before it starts so devices can be provisioned with its address."""
    from entities.settings import load_or_create_key

    return str(load_or_create_key(path).address)


def _provision(root: Path, dep: Any, class_private: bytes, trackers: Sequence[str], relays: Sequence[str] = (),
               tls_ca: bytes | None = None) -> str:
    """A device folder for the stack; returns its identity address.

    ``trackers``: the server modules (attesters, quorum 1); ``relays``: intermediate modules whose
    answers the device accepts, never as attestations (docs/MODULES.md 1). An existing device of
    the same registry keeps its identity and firmware; only its trust anchors are rewritten when
    the trackers or relays changed (the topology). Anything else is provisioned afresh.
    ``tls_ca``: the fleet CA the device pins (``up --tls``).
    """
    import hashlib

    from entities.firmware_consumer import FactoryImage
    from entities.firmware_consumer.provision import (
        ANCHORS_FILE,
        ComponentBinding,
        anchors_from_deployment,
        load_provisioning,
        provision_device,
        set_device_tls,
    )
    from ledger_node.compiler import registry_contract

    anchors = anchors_from_deployment(dep, registry_contract(), trackers=trackers, quorum=1,
                                      max_header_age=MAX_HEADER_AGE, relays=relays)
    if root.exists():
        with contextlib.suppress(FwledgerError, OSError):
            prov = load_provisioning(root)
            old = prov.anchors
            if (old.chain_id, old.registry) == (anchors.chain_id, anchors.registry):
                if old.to_json() != anchors.to_json():
                    atomic_write_json(root / ANCHORS_FILE, anchors.to_json())
                if tls_ca is not None:
                    set_device_tls(root, ca=tls_ca)
                return str(prov.identity.address)
        shutil.rmtree(root)
    data = f"factory image of {PRODUCT} {FACTORY_VERSION}\n".encode() * 64
    factory = FactoryImage(FACTORY_VERSION, hashlib.sha256(b"factory:" + data).digest(), data)
    prov = provision_device(root, device_id=root.name, hardware=HARDWARE,
                            components={PRODUCT: ComponentBinding(PRODUCT, VENDOR)}, anchors=anchors,
                            class_private_key=class_private, factory={PRODUCT: factory},
                            health_command=["true"], tls={"ca": tls_ca} if tls_ca is not None else None)
    return str(prov.identity.address)


def _boards(root: Path) -> list[str]:
    """The add-on boards a provisioned device carries (hardware class ids; none for the stack's own)."""
    from .firmware_consumer.provision import load_provisioning

    return sorted(load_provisioning(root).addons)


def _admit(home: Path, names: Sequence[str], addresses: Mapping[str, str], services: Sequence[str],
           note: Callable[[str], None], tls: Mapping[str, str] | None = None,
           boards: Mapping[str, Sequence[str]] | None = None) -> None:
    """The operator (the admin key) admits the stack's devices on the firmware server and the
    tracker (entities/admission.py), with the add-on boards each carries (``boards``), kept in
    ``<home>/fleet/admissions.json`` like ``fleet admit``."""
    from .admission_client import push_records, read_copy, save_copy
    from .protocol.admission import sign_admission
    from .settings import load_key

    admin = load_key(home / "keys" / "admin.key")
    held = read_copy(home)
    boards = boards or {}
    records = [sign_admission(admin, name, addresses[name], HARDWARE, {"region": "lab"},
                              addons=boards.get(name, ())) for name in names
               if (held.get(name) or {}).get("address") != addresses[name]
               or (held.get(name) or {}).get("status") != "admitted"
               or sorted((held.get(name) or {}).get("addons") or []) != sorted(boards.get(name, ()))]
    save_copy(home, records)
    everything = list(read_copy(home).values())  # a service started afresh gets the whole copy again
    pushed = push_records(services, everything, session_setup=_tls_session(tls))
    failed = {u: r["error"] for u, r in pushed.items() if "error" in r}
    if failed:
        raise StackError(f"admitting the devices failed: {failed}")
    note(f"admitted {len(names)} device(s) ({len(records)} new record(s)) on the firmware server and the tracker")


def _bind_ledger(sdir: Path, chain: dict[str, Any], note: Callable[[str], None]) -> None:
    """The stack's services and devices belong to one registry (a full node's index refuses any other):
    when the chain or registry changed (a devnet reset), their folders are started afresh."""
    marker = sdir / "ledger.json"
    want = {k: chain[k] for k in ("chain_id", "registry", "deploy_block")}
    try:
        have = json.loads(marker.read_text())
    except (OSError, ValueError):
        have = None
    if have == want:
        return
    if have is not None:
        note(f"the registry changed ({have.get('registry')} -> {want['registry']}): "
             "fresh firmware server, tracker and device folders")
    for name in ("server", "tracker", "intermediate", "devices"):
        shutil.rmtree(sdir / name, ignore_errors=True)
    atomic_write_json(marker, want)


# ----------------------------------------------------------------------------- up


@dataclasses.dataclass
class _Started:
    """A process ``up`` spawned and has not yet seen healthy."""

    entry: dict[str, Any]
    popen: subprocess.Popen[bytes]
    ready: Callable[[], bool]


def _spawn(name: str, role: str, argv: list[str], env: dict[str, str], log: Path, **fields: Any) -> _Started:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        fh.write(f"[fwledger up {_now_iso()}] starting: {' '.join(argv)}\n".encode())
        fh.flush()
        try:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,  # noqa: S603
                                     env=env, start_new_session=True, cwd=str(log.parent))
        except OSError as exc:
            raise StackError(f"{name} could not be started: {exc.strerror or exc}; log: {log}") from exc
    entry = {"name": name, "role": role, "pid": popen.pid, "start_time": _start_ticks(popen.pid), "group": True,
             "log": str(log), "argv": argv, **fields}
    return _Started(entry, popen, lambda: True)


def _tls_session(tls: Mapping[str, str] | None) -> Callable[[Any], None] | None:
    """Configure a requests session for the stack's HTTPS services (``up --tls``): the fleet CA and
    the operator's client certificate."""
    if tls is None:
        return None

    def setup(session: Any) -> None:
        session.trust_env = False
        session.verify = tls["ca"]
        session.cert = (tls["cert"], tls["key"])

    return setup


def _stack_tls(sdir: Path, note: Callable[[str], None]) -> dict[str, str]:
    """``up --tls``: a fleet CA in ``<stack>/fleet-ca`` (kept across runs) and certificates for the
    firmware server, the tracker modules and the operator, for 127.0.0.1 and localhost."""
    from .fleet_ca import ca_files, init_ca, issue_certificate

    ca_dir, certs = sdir / "fleet-ca", sdir / "certs"
    if not ca_files(ca_dir)[0].exists():
        init_ca(ca_dir, name="fwledger local stack CA")
    out = {"ca": str(ca_files(ca_dir)[0])}
    for name, role in (("server", "firmware-server"), ("tracker", "server"), ("intermediate", "intermediate"),
                       ("operator", "client")):
        issued = issue_certificate(ca_dir, name, role, (_HOST, "localhost"), certs)
        out[f"{name}_cert"], out[f"{name}_key"] = str(issued.cert), str(issued.key)
    out["cert"], out["key"] = out["operator_cert"], out["operator_key"]
    note(f"TLS: fleet CA {out['ca']}; devices pin it, services serve HTTPS")
    return out


def _http_ready(url: str, check: Callable[[dict[str, Any]], bool] = lambda _: True,
                tls: Mapping[str, str] | None = None) -> Callable[[], bool]:
    setup = _tls_session(tls)

    def ready() -> bool:
        try:
            with requests.Session() as session:
                session.trust_env = False
                if setup is not None:
                    setup(session)
                resp = session.get(url + "/health", timeout=2)
            return resp.status_code == 200 and check(resp.json())
        except (requests.RequestException, ValueError):
            return False
    return ready


def _first_pass(log: Path, offset: int) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            with log.open("rb") as fh:
                fh.seek(offset)
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return False
        return any(line.startswith('{"pass"') for line in text.splitlines())
    return ready


def _wait_all(started: list[_Started], timeout: float) -> None:
    """Wait until every process is healthy.

    Raises:
        StackError: one exited or was not healthy in time (names it and its log).
    """
    pending = list(started)
    deadline = time.monotonic() + timeout
    while pending:
        for s in list(pending):
            code = s.popen.poll()
            if code is not None:
                e = s.entry
                tail = _log_tail(Path(e["log"])) or "no output"
                raise StackError(f"{e['name']} failed to start (exit code {code}): {tail}; log: {e['log']}")
            if s.ready():
                pending.remove(s)
        if pending and time.monotonic() > deadline:
            late = pending[0].entry
            tail = _log_tail(Path(late["log"]))
            raise StackError(f"{late['name']} was not healthy within {timeout:g} s"
                             + (f" (last log line: {tail})" if tail else "") + f"; log: {late['log']}")
        if pending:
            time.sleep(0.1)


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
