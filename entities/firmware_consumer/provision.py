"""Provisioning a device, and gathering the evidence it verifies (I/O adapters around :mod:`.verify`).

A provisioned device folder holds, besides what :func:`.device_info.init_device` makes::

    DIR/anchors.json         trust anchors: chain id, registry address, runtime code hash and storage
                             slots, tracker addresses and quorum k, intermediate modules' addresses
                             (relays), maximum header age (TrustAnchors)
    DIR/provision.json       per component the product line it runs ({"vendor", "product"}, and
                             "board" for one running on an add-on board), the add-on boards
                             ({"BOARD": {"revision": N | null}}), and the update policy
                             (maintenance window, deferral limit, veto command)
    DIR/keys/identity.key    the device's secp256k1 identity key (hex), for signed requests; mode 600
    DIR/keys/class.key       its hardware class's X25519 private key (hex), unwraps content keys; mode 600
    DIR/keys/addons.json     each add-on board's class X25519 private key ({"BOARD": hex}); mode 600
    DIR/keys/tracker.key     intra-device only (D8.2.1, :mod:`.intra`): the key of the tracker the
                             device runs itself, the anchors' only tracker (k = 1); mode 600

All of it is written before ``device.json`` (which :func:`init_device` writes last), so a crash
during provisioning leaves no half-device; re-running it overwrites the leftovers.

Evidence (:func:`gather_evidence`) is what a tracker will hand a device (issue 5's daemon): the
latest block header, the trackers' attestations of it, the registry's ``eth_getProof`` answer for
the release and the slots the device checks, the record as published and its successors. Until
that daemon exists, tests and the manual path sign the attestations here with tracker keys they
hold, standing in for the trackers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from entities.bundle import BundleHeader, release_digest
from entities.bundle.keywrap import x25519_private
from ledger_node.attestation import attest
from ledger_node.codec import abi
from ledger_node.codec.ecdsa import KeyHolder, LocalKey
from ledger_node.codec.hashing import keccak, to_checksum_address
from ledger_node.compiler import CompiledContract
from ledger_node.errors import ChainError, ConfigError, FwledgerError, ProofError, RecordError
from ledger_node.fsutil import atomic_write_bytes, atomic_write_json
from ledger_node.header import decode_header, header_rlp_from_json
from ledger_node.lightnode import RegistryLayout, release_slots
from ledger_node.record import ReleaseRecord
from ledger_node.registry_types import Deployment

if TYPE_CHECKING:  # the host-side evidence helpers take a web3 connection; devices never load web3
    from web3 import Web3

from .device import DEFAULT_MAX_BOOT_ATTEMPTS, FactoryImage, init_device
from .errors import BadInstallRequest, DeviceExists, NotADevice
from .memory import STATE_FILE
from .store import Layout, make_folder, read_bounded
from .verify import Evidence, TrustAnchors

__all__ = [
    "DEVICE_CERT",
    "KEYS_DIR",
    "PUBLISHED_EVENT",
    "TLS_CA",
    "TLS_CERT",
    "TLS_KEY",
    "AddonBoard",
    "ComponentBinding",
    "Provisioning",
    "anchors_from_deployment",
    "find_published",
    "gather_evidence",
    "line_records",
    "load_provisioning",
    "parse_addon_spec",
    "parse_component_spec",
    "provision_device",
    "set_device_tls",
]

#: the registry's ``Published`` event signature (topic 0 = its keccak)
PUBLISHED_EVENT = "Published(bytes32,bytes32,bytes32,bytes)"

ANCHORS_FILE = "anchors.json"
PROVISION_FILE = "provision.json"
KEYS_DIR = "keys"
IDENTITY_KEY = "identity.key"
CLASS_KEY = "class.key"
#: the add-on boards' class keys ({"BOARD": hex}), one file
ADDON_KEYS = "addons.json"
#: the manufacture certificate (PEM, public), when the manufacturer gave the device one
#: (``fwledger fleet certify``): sent with its heartbeats and registrations (entities/admission.py)
DEVICE_CERT = "device.crt"
#: HTTPS (docs/THREATS.md "Network"): the CA every HTTPS module and server must chain to (pinned),
#: and the device's own TLS client certificate and key (for modules that require one)
TLS_CA, TLS_CERT, TLS_KEY = "tls-ca.crt", "tls.crt", "tls.key"

_SPEC_RE = re.compile(r"^([a-z0-9][a-z0-9._-]{0,63})(?:=(.+))?$")
#: an add-on board's id: a hardware class id on the ledger (no '@', '/', '=' or spaces)
_BOARD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


def _board_ok(board: Any) -> bool:
    return isinstance(board, str) and _BOARD_RE.match(board) is not None


@dataclass(frozen=True)
class ComponentBinding:
    """The product line a component runs: ``product``, and ``vendor`` if pinned (None: any active vendor).

    ``board``: the add-on board (its hardware class id) the component runs on; None: the device's
    own hardware class. A board's releases, policy and class key are the board's.
    """

    product: str
    vendor: str | None = None
    board: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"product": self.product, "vendor": self.vendor}
        if self.board is not None:
            out["board"] = self.board
        return out

    @classmethod
    def from_json(cls, obj: Any) -> ComponentBinding:
        """Raises:
            ConfigError: malformed.
        """
        try:
            product, vendor, board = obj["product"], obj.get("vendor"), obj.get("board")
        except (AttributeError, KeyError, TypeError) as exc:
            raise ConfigError(f"bad component binding {obj!r}") from exc
        if not isinstance(product, str) or not product or not (vendor is None or (isinstance(vendor, str) and vendor)) \
                or not (board is None or _board_ok(board)):
            raise ConfigError(f"bad component binding {obj!r}")
        return cls(product, vendor, board)


def parse_component_spec(text: str) -> tuple[str, ComponentBinding]:
    """``NAME`` (runs product NAME of any vendor), ``NAME=PRODUCT`` or ``NAME=VENDOR/PRODUCT``, each
    optionally followed by ``@BOARD``: the component runs on that add-on board (``--addon``).

    Raises:
        BadInstallRequest: malformed.
    """
    usage = "NAME[=PRODUCT|=VENDOR/PRODUCT][@BOARD], NAME like [a-z0-9._-]"
    m = _SPEC_RE.match(text.strip()) if isinstance(text, str) else None
    if not m:
        raise BadInstallRequest(f"bad component {text!r}: {usage}")
    name, line = m.group(1), m.group(2)
    board: str | None = None
    if line is not None and "@" in line:
        line, _, board = line.rpartition("@")
        if not _board_ok(board) or not line:
            raise BadInstallRequest(f"bad component {text!r}: {usage}")
    if line is None:
        return name, ComponentBinding(name)
    vendor, sep, product = line.partition("/")
    if not sep:
        return name, ComponentBinding(line, None, board)
    if not vendor or not product:
        raise BadInstallRequest(f"bad component {text!r}: empty vendor or product")
    return name, ComponentBinding(product, vendor, board)


@dataclass(frozen=True)
class AddonBoard:
    """An add-on board the device carries (X.1368 Appendix II): its hardware class id on the
    ledger and, if given, its hardware revision (recorded on the device; the ledger's class id
    names the revision its releases and policies are for)."""

    board: str
    revision: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"revision": self.revision}


def parse_addon_spec(text: str) -> AddonBoard:
    """``BOARD`` or ``BOARD@REVISION`` (a hardware class id, a revision 0..2^32-1).

    Raises:
        BadInstallRequest: malformed.
    """
    board, sep, rev = text.strip().partition("@") if isinstance(text, str) else ("", "", "")
    if not _board_ok(board) or (sep and not (rev.isdigit() and int(rev) < 1 << 32)):
        raise BadInstallRequest(f"bad add-on board {text!r}: BOARD[@REVISION], BOARD a hardware class id "
                                "([A-Za-z0-9._:-]), REVISION a number")
    return AddonBoard(board, int(rev) if sep else None)


@dataclass(frozen=True)
class Provisioning:
    """What :func:`load_provisioning` reads from a device folder."""

    root: Path
    anchors: TrustAnchors
    bindings: Mapping[str, ComponentBinding]
    class_private_key: bytes = field(repr=False)
    identity: KeyHolder = field(repr=False)
    update_policy: Mapping[str, Any] = field(default_factory=dict)
    certificate: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    addons: Mapping[str, AddonBoard] = field(default_factory=dict)
    addon_keys: Mapping[str, bytes] = field(default_factory=dict, repr=False)

    @property
    def class_public_key(self) -> bytes:
        return x25519_private(self.class_private_key).public_key().public_bytes_raw()

    def board_of(self, component: str) -> str | None:
        """The add-on board a component runs on (None: the device's own class)."""
        b = self.bindings.get(component)
        return b.board if b is not None else None


def anchors_from_deployment(deployment: Deployment, compiled: CompiledContract, *, trackers: Sequence[str],
                            quorum: int, max_header_age: float, max_clock_skew: float = 120.0,
                            relays: Sequence[str] = ()) -> TrustAnchors:
    """The trust anchors for devices of a registry deployment (from its record and the compiler's layout).

    Raises:
        ConfigError: the compiled source is not the deployed code, or the anchors are inconsistent.
    """
    code_hash = bytes.fromhex(deployment.code_hash.removeprefix("0x"))
    if code_hash != compiled.runtime_code_hash:
        raise ConfigError("the compiled registry is not the deployed one (runtime code hashes differ)")
    anchors = TrustAnchors(chain_id=deployment.chain_id, registry=to_checksum_address(deployment.address),
                           layout=RegistryLayout.from_compiled(compiled),
                           trackers=tuple(to_checksum_address(t) for t in trackers), quorum=quorum,
                           max_header_age=float(max_header_age), max_clock_skew=float(max_clock_skew),
                           registry_block=deployment.block, relays=tuple(to_checksum_address(r) for r in relays))
    anchors.validate()
    return anchors


def provision_device(root: Path, *, device_id: str, hardware: str, components: Mapping[str, ComponentBinding],
                     anchors: TrustAnchors, class_private_key: bytes, identity_key: bytes | None = None,
                     factory: Mapping[str, FactoryImage] | None = None, health_command: Sequence[str] | None = None,
                     max_boot_attempts: int = DEFAULT_MAX_BOOT_ATTEMPTS,
                     update_policy: Mapping[str, Any] | None = None, relays: Sequence[str] = (),
                     intra_device: bool = False, tls: Mapping[str, bytes] | None = None,
                     anchors_serial: int = 0, addons: Sequence[AddonBoard] = (),
                     addon_keys: Mapping[str, bytes] | None = None) -> Provisioning:
    """Create a provisioned device folder (``fwledger device init``).

    Components listed in ``factory`` start with that image confirmed in slot ``a``; the others
    start empty (a normal update installs into them; once booted empty, only ``recover`` does).
    ``relays`` are added to the anchors' intermediate modules. ``intra_device``: the device
    runs its own tracker (D8.2.1, :mod:`.intra`): a tracker key is made in
    ``DIR/keys/tracker.key`` and becomes the anchors' only tracker, with k = 1 (the anchors'
    other trackers are dropped; their relays kept). ``tls``: ``ca``, ``cert``, ``key`` (PEM) for
    :func:`set_device_tls`. ``anchors_serial``: the anchors' serial (0 unless given), which a
    rotation statement must exceed (:mod:`.anchors`). ``addons``: the add-on boards the device
    carries, each with its class's X25519 private key in ``addon_keys``; a component whose
    binding names a ``board`` runs on it.

    Raises:
        DeviceExists: the folder already holds a device.
        BadInstallRequest: bad id, hardware, component name or factory image; a component on a
            board not declared, a board declared twice or without its class key.
        ConfigError: bad anchors or class key, or the folder cannot be written.
        DeviceStorageError: init_device could not write.
    """
    root = Path(root)
    layout = Layout(root)
    if layout.device_file.exists():
        raise DeviceExists(f"{root} already holds a device")
    anchors.validate()
    if not isinstance(anchors_serial, int) or isinstance(anchors_serial, bool) or not 0 <= anchors_serial < 1 << 63:
        raise ConfigError("the anchors' serial must be an integer in 0..2^63-1")
    if not isinstance(class_private_key, bytes) or len(class_private_key) != 32:
        raise ConfigError("the class private key must be 32 bytes (X25519)")
    unknown = set(factory or {}) - set(components)
    if not components or unknown:
        raise BadInstallRequest(f"factory images for unknown components {sorted(unknown)}" if unknown
                                else "a device needs at least one component")
    boards = _check_addons(hardware, components, addons, addon_keys or {})
    if relays:
        anchors = dataclasses.replace(anchors, relays=tuple(dict.fromkeys(
            (*anchors.relays, *(to_checksum_address(r) for r in relays)))))
        anchors.validate()
    identity = LocalKey.from_key(identity_key) if identity_key is not None else LocalKey.create()
    keys = root / KEYS_DIR
    atomic_write_bytes(keys / IDENTITY_KEY, (identity.key.hex().removeprefix("0x") + "\n").encode(), mode=0o600)
    atomic_write_bytes(keys / CLASS_KEY, (class_private_key.hex() + "\n").encode(), mode=0o600)
    if boards:
        atomic_write_json(keys / ADDON_KEYS, {b: (addon_keys or {})[b].hex() for b in boards}, mode=0o600)
    if intra_device:
        from .intra import create_tracker_key

        own = to_checksum_address(create_tracker_key(root).address)
        anchors = dataclasses.replace(anchors, trackers=(own,), quorum=1,
                                      relays=tuple(r for r in anchors.relays if r != own))
        anchors.validate()
    if tls:
        set_device_tls(root, ca=tls.get("ca"), cert=tls.get("cert"), key=tls.get("key"))
    os.chmod(keys, 0o700)
    doc = anchors.to_json()
    if anchors_serial:
        doc["serial"] = anchors_serial
    atomic_write_json(root / ANCHORS_FILE, doc)
    atomic_write_json(root / PROVISION_FILE, {
        "format": 1, "components": {n: b.to_json() for n, b in components.items()},
        **({"addons": {b: a.to_json() for b, a in boards.items()}} if boards else {}),
        "update_policy": dict(update_policy or {})})
    make_folder(root / STATE_FILE.parent)  # the agent's memory: its first pass then creates no folder
    comps: dict[str, FactoryImage | None] = {n: (factory or {}).get(n) for n in components}
    init_device(root, device_id=device_id, hardware=hardware, components=comps, health_command=health_command,
                max_boot_attempts=max_boot_attempts)
    return load_provisioning(root)


def _check_addons(hardware: str, components: Mapping[str, ComponentBinding], addons: Sequence[AddonBoard],
                  keys: Mapping[str, bytes]) -> dict[str, AddonBoard]:
    """The declared add-on boards by id, checked against the bindings and keys.

    Raises:
        BadInstallRequest: see :func:`provision_device`.
        ConfigError: a board's class key is not 32 bytes.
    """
    boards: dict[str, AddonBoard] = {}
    for a in addons:
        if not _board_ok(a.board) or a.board == hardware or a.board in boards:
            raise BadInstallRequest(f"add-on board {a.board!r}: a bad id, the device's own class, or declared twice")
        boards[a.board] = a
    for board, key in keys.items():
        if board not in boards:
            raise BadInstallRequest(f"a class key for {board!r}, which is not a declared add-on board (--addon)")
        if not isinstance(key, bytes) or len(key) != 32:
            raise ConfigError(f"the class key of add-on board {board!r} must be 32 bytes (X25519)")
    for board in boards:
        if board not in keys:
            raise BadInstallRequest(f"add-on board {board!r} needs its class key (--addon-class-key {board}=FILE)")
    for name, b in components.items():
        if b.board is not None and b.board not in boards:
            raise BadInstallRequest(f"component {name} runs on board {b.board!r}, which is not a declared "
                                    f"add-on board (--addon {b.board})")
    return boards


def _read_json(path: Path) -> Any:
    data = read_bounded(path)
    if data is None:
        raise NotADevice(f"{path} is missing: the device is not provisioned (run fwledger device init)")
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ConfigError(f"{path} is not JSON: {exc}") from exc


def _read_hex_key(path: Path, size: int) -> bytes:
    data = read_bounded(path, 4096)
    if data is None:
        raise NotADevice(f"{path} is missing: the device is not provisioned (run fwledger device init)")
    try:
        raw = bytes.fromhex(data.decode().strip().removeprefix("0x"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path} is not a hex key") from exc
    if len(raw) != size:
        raise ConfigError(f"{path}: expected a {size}-byte key")
    return raw


def load_provisioning(root: Path) -> Provisioning:
    """Read the trust anchors, component bindings, keys and update policy of a device folder.

    Raises:
        NotADevice: a provisioning file is missing.
        ConfigError: one is malformed.
        DeviceStorageError: unreadable.
    """
    root = Path(root)
    anchors = TrustAnchors.from_json(_read_json(root / ANCHORS_FILE))
    prov = _read_json(root / PROVISION_FILE)
    if not isinstance(prov, dict) or prov.get("format") != 1 or not isinstance(prov.get("components"), dict):
        raise ConfigError(f"{root / PROVISION_FILE}: unsupported or malformed")
    bindings = {str(n): ComponentBinding.from_json(b) for n, b in prov["components"].items()}
    policy = prov.get("update_policy") or {}
    if not isinstance(policy, dict):
        raise ConfigError(f"{root / PROVISION_FILE}: update_policy must be an object")
    class_key = _read_hex_key(root / KEYS_DIR / CLASS_KEY, 32)
    addons, addon_keys = _load_addons(root, prov.get("addons") or {}, bindings)
    identity = LocalKey.from_key(_read_hex_key(root / KEYS_DIR / IDENTITY_KEY, 32))
    cert_path = root / KEYS_DIR / DEVICE_CERT
    try:
        certificate = cert_path.read_text(encoding="ascii") if cert_path.exists() else None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{cert_path}: unreadable device certificate: {exc}") from exc
    tls = {name: (root / KEYS_DIR / name) if (root / KEYS_DIR / name).exists() else None
           for name in (TLS_CA, TLS_CERT, TLS_KEY)}
    if (tls[TLS_CERT] is None) != (tls[TLS_KEY] is None):
        raise ConfigError(f"{root / KEYS_DIR}: {TLS_CERT} and {TLS_KEY} go together")
    return Provisioning(root, anchors, bindings, class_key, identity, policy, certificate,
                        tls[TLS_CA], tls[TLS_CERT], tls[TLS_KEY], addons, addon_keys)


def _load_addons(root: Path, doc: Any, bindings: Mapping[str, ComponentBinding]
                 ) -> tuple[dict[str, AddonBoard], dict[str, bytes]]:
    """The add-on boards of ``provision.json`` and their class keys (``keys/addons.json``).

    Raises:
        ConfigError: malformed, a board without its key, a component on an undeclared board.
    """
    where = root / PROVISION_FILE
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: addons must be an object")
    boards: dict[str, AddonBoard] = {}
    for board, entry in doc.items():
        rev = entry.get("revision") if isinstance(entry, dict) else "?"
        if not _board_ok(board) or not (rev is None or (isinstance(rev, int) and not isinstance(rev, bool))):
            raise ConfigError(f"{where}: bad add-on board {board!r}")
        boards[board] = AddonBoard(board, rev)
    for name, b in bindings.items():
        if b.board is not None and b.board not in boards:
            raise ConfigError(f"{where}: component {name} runs on board {b.board!r}, which is not declared")
    keys: dict[str, bytes] = {}
    if boards:
        raw = _read_json(root / KEYS_DIR / ADDON_KEYS)
        for board in boards:
            try:
                key = bytes.fromhex(str(raw[board]))
            except (KeyError, TypeError, ValueError):
                key = b""
            if len(key) != 32:
                raise ConfigError(f"{root / KEYS_DIR / ADDON_KEYS}: no 32-byte class key for board {board!r}")
            keys[board] = key
    return boards, keys


def set_device_tls(root: Path, *, ca: bytes | None = None, cert: bytes | None = None, key: bytes | None = None) -> None:
    """Pin the HTTPS CA of a device (``ca``, PEM) and/or give it a TLS client certificate
    (``cert`` and ``key``, PEM, together); each file is replaced atomically, the key 0600.

    Raises:
        ConfigError: not PEM certificates, a key without its certificate, or a key that is not
            the certificate's.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if (cert is None) != (key is None):
        raise ConfigError("the device's TLS certificate and key go together")
    try:
        if ca is not None and not x509.load_pem_x509_certificates(ca):
            raise ValueError("no certificate")
        if cert is not None and key is not None:
            public = x509.load_pem_x509_certificate(cert).public_key()
            private = serialization.load_pem_private_key(key, password=None)
            spki = serialization.PublicFormat.SubjectPublicKeyInfo
            if private.public_key().public_bytes(serialization.Encoding.DER, spki) != \
                    public.public_bytes(serialization.Encoding.DER, spki):
                raise ConfigError("the TLS key is not the certificate's")
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"unusable TLS file: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
            from None
    keys = Path(root) / KEYS_DIR
    if ca is not None:
        atomic_write_bytes(keys / TLS_CA, ca, mode=0o644)
    if cert is not None and key is not None:
        atomic_write_bytes(keys / TLS_KEY, key, mode=0o600)
        atomic_write_bytes(keys / TLS_CERT, cert, mode=0o644)


# ----------------------------------------------------------------------------- evidence (host side)


def _rpc(w3: Web3, method: str, params: list[Any]) -> Any:
    import requests  # host side: web3's HTTP provider
    from web3.exceptions import Web3Exception

    try:
        resp = w3.provider.make_request(method, params)  # type: ignore[arg-type]
    except (Web3Exception, requests.exceptions.RequestException, OSError, ValueError) as exc:
        raise ChainError(f"{method} failed: {exc}") from exc
    if "error" in resp:
        raise ChainError(f"{method} failed: {resp['error']}")
    return resp.get("result")


def line_records(w3: Web3, anchors: TrustAnchors, line: bytes, *,
                 to_block: int | str = "latest") -> list[ReleaseRecord]:
    """Every record published on a product line, in chain order, read from ``Published`` logs.

    Each record is rebuilt from its event and checked against the event's header hash and line.

    Raises:
        ChainError: the node failed or answered something unusable.
    """
    logs = _rpc(w3, "eth_getLogs", [{
        "address": anchors.registry, "fromBlock": hex(anchors.registry_block),
        "toBlock": hex(to_block) if isinstance(to_block, int) else to_block,
        "topics": ["0x" + keccak(PUBLISHED_EVENT.encode()).hex(), "0x" + line.hex()]}])
    out = []
    try:
        for log in logs or []:
            topics = [bytes.fromhex(str(t).removeprefix("0x")) for t in log["topics"]]
            prev_hash, data = abi.decode(["bytes32", "bytes"], bytes.fromhex(str(log["data"]).removeprefix("0x")))
            out.append(ReleaseRecord.from_event(header_hash=topics[2], line=topics[1], prev_hash=prev_hash, data=data))
    except (KeyError, IndexError, TypeError, ValueError, FwledgerError) as exc:
        raise ChainError(f"unusable Published log: {exc}") from exc
    return out


def find_published(w3: Web3, anchors: TrustAnchors, bundle: BundleHeader) -> ReleaseRecord | None:
    """The published record matching a bundle (same ``release_digest``), or None if not published.

    Raises:
        ChainError: the node failed.
    """
    want = release_digest(bundle, anchors.chain_id, anchors.registry)
    for rec in line_records(w3, anchors, bundle.record.line):
        if release_digest(rec, anchors.chain_id, anchors.registry) == want:
            return rec
    return None


def _successors(records: Sequence[ReleaseRecord], record: ReleaseRecord) -> list[ReleaseRecord]:
    by_prev = {r.prev_hash: r for r in records}
    out: list[ReleaseRecord] = []
    cur = record.header_hash
    while cur in by_prev and len(out) < 64:
        nxt = by_prev[cur]
        out.append(nxt)
        cur = nxt.header_hash
    return out


def gather_evidence(w3: Web3, anchors: TrustAnchors, record: ReleaseRecord, hw_id: str,
                    tracker_accounts: Sequence[KeyHolder], *, block: int | str = "latest",
                    successors: Sequence[ReleaseRecord] | None = None) -> Evidence:
    """Build the evidence a device of class ``hw_id`` needs for the published ``record``.

    Reads the block header and ``eth_getProof`` at one block, the line's successors of ``record``
    from the ``Published`` logs (unless given), and has each of ``tracker_accounts`` attest the
    header (standing in for the trackers until issue 5's daemon serves attestations).

    Raises:
        ChainError: the node failed or answered something unusable.
    """
    raw = _rpc(w3, "eth_getBlockByNumber", [hex(block) if isinstance(block, int) else block, False])
    if not raw:
        raise ChainError(f"the node has no block {block}")
    try:
        header = decode_header(header_rlp_from_json(raw))
    except ProofError as exc:
        raise ChainError(f"the node's block is unusable: {exc}") from exc
    if successors is None:
        successors = _successors(line_records(w3, anchors, record.line, to_block=header.number), record)
    try:
        slots = release_slots(anchors.layout, record, hw_id)
        wanted = [slots.entry, slots.vendor_address, slots.policy]
        wanted += [release_slots(anchors.layout, s).entry for s in successors]
    except RecordError as exc:
        raise ChainError(f"cannot compute the slots of the record: {exc}") from exc

    from ledger_node.proof_fetch import ask_proof, block_param  # host side only (web3): not on a device's path

    def proof_of(keys: list[int | None]) -> dict[str, Any]:
        def ask() -> dict[str, Any]:
            result = _rpc(w3, "eth_getProof", [anchors.registry, ["0x" + k.to_bytes(32, "big").hex()
                                                                  for k in keys if k is not None],
                                               block_param(header.hash)])
            if not isinstance(result, dict):
                raise ChainError("eth_getProof returned no object")
            return result

        return dict(ask_proof(ask, anchors.registry, header.state_root))  # asked again while from another state

    proof = proof_of(list(wanted))
    vendor_word = 0
    for entry in proof.get("storageProof", []):
        if int(str(entry.get("key")), 16) == slots.vendor_address:
            vendor_word = int(str(entry.get("value")), 16)
    if vendor_word:
        proof = proof_of([*wanted, slots.vendor_active(vendor_word.to_bytes(32, "big")[12:])])
    attestations = tuple(attest(a, header, chain_id=anchors.chain_id, registry=anchors.registry)
                         for a in tracker_accounts)
    return Evidence(header_rlp=header.rlp, attestations=attestations, proof=proof, record=record,
                    successors=tuple(successors))
