"""The local stack's ledger and fleet setup (:mod:`entities.stack`, ``fwledger up``).

The development keys; the registry (reused or deployed) and the administrator's setup (vendor
``acme`` with its keystore, hardware class ``cam-r1`` with its X25519 key, a policy), idempotent
against the chain; the services' identity keys; the device folders (provisioned with a factory
image); the admission of the devices on the firmware server and the tracker; the fleet CA and
certificates of ``up --tls``; starting service folders afresh when the registry changed.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ledger_node.errors import ConfigError, FwledgerError
from ledger_node.fsutil import atomic_write_bytes, atomic_write_json

from .stack_procs import _HOST, StackError, _tls_session

#: devices refuse headers older than this (freeze attacks); far above the block time
MAX_HEADER_AGE = 300.0
VENDOR, HARDWARE, PRODUCT, FACTORY_VERSION = "acme", "cam-r1", "main-fw", "0.9.0"
_FUND_WEI = 100 * 10**18


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
