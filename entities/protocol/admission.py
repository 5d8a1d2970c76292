"""Device admission: who is a device of this fleet (X.1368 P4, C11.3 d and h), pure.

A device is served by a tracker module or a firmware server only once its operator admitted it.
One admission is honoured by every module and server of that operator without a shared database,
because it is a document that proves itself:

**Admission record** (:class:`Admission`, ``source: "operator"``). The operator's secp256k1 key
(one of the services' ``operator_keys``) signs, with EIP-191 ``personal_sign``, the text
``fwledger-admission-v1\\n`` followed by the canonical JSON (sorted keys, no spaces) of::

    {"device_id", "address", "hardware", "labels": {name: value}, "status": "admitted"|"decommissioned",
     "serial", "issued_at", "issuer", "addons": [board class, ...]}

``address`` is the device's identity key (the key that signs its requests); ``hardware`` and
``labels`` (``region``, ``group``, ...) are what entitlement, location rules and rollouts use: what
a device declares in its own messages is shown, never decides. ``addons`` (X.1368 Appendix II)
lists the add-on boards the device carries, each by its hardware class id on the ledger (a board's
id is its class, as in ``fwledger device init --addon``): a service serves a board's firmware, and
a tracker plans it, only for a board listed here. The field is optional: a record without boards
leaves it out of the signed text (so every record signed before boards existed still verifies),
and a service that predates it refuses a record that has it (unknown field) rather than dropping
the boards silently. ``serial`` orders the records of
one device id: a service keeps the record with the highest serial and ignores older ones, so a
decommissioning or a key replacement (a new record for the same id with another ``address``)
supersedes the admission it replaces everywhere it reaches, and replaying an old record changes
nothing. The operator's CLI uses the time in microseconds.

**Manufacture certificate** (:func:`issue_device_certificate`, ``source: "certificate"``). An X.509
certificate that a manufacturer CA (P-256, the same files as :mod:`entities.fleet_ca`) issued at
manufacture over the device's secp256k1 identity key: subject CN = device id, the hardware class
and labels as SAN URIs ``urn:fwledger:hardware:<class>`` and ``urn:fwledger:label:<name>=<value>``,
and the add-on boards fitted at manufacture as ``urn:fwledger:addon:<class>`` (the certificate is
signed, so they are the CA's word like the class). A board fitted later needs an operator record
(which supersedes the certificate's admission). A service that pins the CA (``manufacturer_cas``)
admits such a device on first contact when the certificate verifies, its key is the request's
signer and the hardware class, and each board's, is registered on the ledger
(:func:`certificate_admission`); the admission it records has serial 0, so any operator record (a
decommissioning) supersedes it.

:func:`decide` is the one decision every service takes for a signed request from a device.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_keys import keys as eth_keys
from eth_utils import is_address, to_checksum_address

from ledger_node.errors import ConfigError, FwledgerError

__all__ = [
    "ADMISSION_MODES",
    "DEVICE_ID_RE",
    "LABEL_NAME_RE",
    "LABEL_VALUE_RE",
    "Admission",
    "AdmissionError",
    "AdmissionView",
    "NotAdmitted",
    "certificate_admission",
    "decide",
    "issue_device_certificate",
    "load_certificate_authorities",
    "parse_addons",
    "parse_admission",
    "parse_labels",
    "sign_admission",
    "verify_admission",
]

#: ``required``: only admitted devices are served (the default); ``open``: a lab mode in which any
#: key that signs is a device (the first key to present an id keeps it), logged as such at start
ADMISSION_MODES = ("required", "open")
STATUSES = ("admitted", "decommissioned")
SOURCES = ("operator", "certificate")
TEXT_PREFIX = "fwledger-admission-v1\n"
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
HARDWARE_RE = re.compile(r"^[\x20-\x7e]{1,64}$")
LABEL_NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,31}$")
LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$")
MAX_LABELS = 16
MAX_ADDONS = 16
#: an add-on board's id: its hardware class id on the ledger (no '@', '/', '=' or spaces), as provisioning takes it
ADDON_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
MAX_CERT_BYTES = 8192
_SIG_RE = re.compile(r"^0x[0-9a-fA-F]{130}$")
_HW_URI = "urn:fwledger:hardware:"
_LABEL_URI = "urn:fwledger:label:"
_ADDON_URI = "urn:fwledger:addon:"


class AdmissionError(FwledgerError):
    """An admission record or certificate that does not parse or verify; ``code`` is stable."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class NotAdmitted(FwledgerError):
    """A device a service must not serve; ``code``: ``not_admitted``, ``decommissioned``,
    ``rejected``, ``device_key_mismatch``, ``bad_certificate``, ``unknown_hardware`` or
    ``board_not_admitted``."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def parse_labels(labels: Any) -> dict[str, str]:
    """Labels as a checked ``{name: value}``; also accepts ``["name=value", ...]``.

    Raises:
        AdmissionError: ``bad_labels``.
    """
    if isinstance(labels, list | tuple):
        pairs: dict[str, Any] = {}
        for item in labels:
            if not isinstance(item, str) or "=" not in item:
                raise AdmissionError("bad_labels", f"label {item!r} is not NAME=VALUE")
            k, _, v = item.partition("=")
            pairs[k.strip()] = v.strip()
        labels = pairs
    if not isinstance(labels, Mapping):
        raise AdmissionError("bad_labels", "labels must be an object of name: value")
    if len(labels) > MAX_LABELS:
        raise AdmissionError("bad_labels", f"at most {MAX_LABELS} labels")
    out: dict[str, str] = {}
    for k, v in labels.items():
        if not isinstance(k, str) or not LABEL_NAME_RE.match(k):
            raise AdmissionError("bad_labels", f"label name {k!r} must be lower-case letters, digits, '_.-' (1-32)")
        if not isinstance(v, str) or not LABEL_VALUE_RE.match(v):
            raise AdmissionError("bad_labels", f"label {k}: value {v!r} must be letters, digits, '._:/-' (1-64)")
        out[k] = v
    return dict(sorted(out.items()))


def parse_addons(addons: Any, hardware: str | None = None) -> tuple[str, ...]:
    """Add-on boards as a checked, sorted tuple of hardware class ids (``hardware``: the device's
    own class, which no board may repeat).

    Raises:
        AdmissionError: ``bad_addons`` (not a list of board ids, a board twice or the device's class, too many).
    """
    if not isinstance(addons, list | tuple):
        raise AdmissionError("bad_addons", "addons must be a list of add-on board hardware class ids")
    if len(addons) > MAX_ADDONS:
        raise AdmissionError("bad_addons", f"at most {MAX_ADDONS} add-on boards")
    for board in addons:
        if not isinstance(board, str) or not ADDON_RE.match(board):
            raise AdmissionError("bad_addons", f"add-on board {str(board)[:80]!r} is not a hardware class id "
                                               "(letters, digits, '._:-', 1-64)")
        if board == hardware:
            raise AdmissionError("bad_addons", f"add-on board {board!r} is the device's own hardware class")
    if len(set(addons)) != len(addons):
        raise AdmissionError("bad_addons", "an add-on board is listed twice")
    return tuple(sorted(addons))


@dataclass(frozen=True)
class Admission:
    """One device's admission as a service holds it (see the module docstring)."""

    device_id: str
    address: str
    hardware: str
    labels: Mapping[str, str] = field(default_factory=dict)
    status: str = "admitted"
    serial: int = 0
    issued_at: int = 0
    issuer: str = ""
    signature: str = ""
    source: str = "operator"
    certificate: str | None = None  # the PEM, for source "certificate"
    addons: tuple[str, ...] = ()  # the add-on boards (hardware class ids) it is entitled to, sorted

    @property
    def admitted(self) -> bool:
        return self.status == "admitted"

    @property
    def region(self) -> str | None:
        return self.labels.get("region")

    def signed_body(self) -> dict[str, Any]:
        body = {"device_id": self.device_id, "address": self.address, "hardware": self.hardware,
                "labels": dict(self.labels), "status": self.status, "serial": self.serial,
                "issued_at": self.issued_at, "issuer": self.issuer}
        if self.addons:  # absent when none: records without boards sign the text they always did
            body["addons"] = list(self.addons)
        return body

    def to_json(self) -> dict[str, Any]:
        out = {**self.signed_body(), "signature": self.signature, "source": self.source}
        if self.certificate is not None:
            out["certificate"] = self.certificate
        return out


def _text(body: Mapping[str, Any]) -> str:
    return TEXT_PREFIX + _canonical(body)


def sign_admission(account: LocalAccount, device_id: str, address: str, hardware: str,
                   labels: Mapping[str, str] | None = None, *, status: str = "admitted", serial: int | None = None,
                   now: float | None = None, addons: Collection[str] = ()) -> Admission:
    """An operator record signed by ``account``; ``serial`` defaults to the time in microseconds;
    ``addons``: the add-on boards (hardware class ids) the device carries.

    Raises:
        AdmissionError: a field out of its format (same codes as :func:`parse_admission`).
    """
    t = time.time() if now is None else now
    body = {"device_id": device_id, "address": address, "hardware": hardware, "labels": dict(labels or {}),
            "status": status, "serial": int(t * 1_000_000) if serial is None else serial, "issued_at": int(t),
            "issuer": account.address, "addons": list(addons) if isinstance(addons, list | tuple | set) else addons}
    checked = _check_body(body)
    sig = account.sign_message(encode_defunct(text=_text(checked.signed_body())))
    return Admission(**{**checked.__dict__, "signature": "0x" + bytes(sig.signature).hex()})


def _check_body(obj: Mapping[str, Any]) -> Admission:
    def need(cond: bool, message: str) -> None:
        if not cond:
            raise AdmissionError("bad_admission", message)

    dev, addr, hw = obj.get("device_id"), obj.get("address"), obj.get("hardware")
    need(isinstance(dev, str) and bool(DEVICE_ID_RE.match(dev)), f"device_id {dev!r} is not a device id")
    need(isinstance(addr, str) and is_address(addr), f"address {addr!r} is not an address")
    need(isinstance(hw, str) and bool(HARDWARE_RE.match(hw)), f"hardware {hw!r} is not a hardware class id")
    status, serial, issued, issuer = obj.get("status"), obj.get("serial"), obj.get("issued_at"), obj.get("issuer")
    need(status in STATUSES, f"status must be one of {', '.join(STATUSES)}")
    need(type(serial) is int and 0 < serial < 1 << 63, "serial must be a positive integer")
    need(type(issued) is int and 0 <= issued < 1 << 40, "issued_at must be unix seconds")
    need(isinstance(issuer, str) and is_address(issuer), "issuer is not an address")
    assert isinstance(dev, str) and isinstance(addr, str) and isinstance(hw, str) and isinstance(issuer, str)
    return Admission(dev, to_checksum_address(addr), hw, parse_labels(obj.get("labels", {})), str(status),
                     int(serial), int(issued), to_checksum_address(issuer),  # type: ignore[arg-type]
                     addons=parse_addons(obj.get("addons", []), hw))


def parse_admission(obj: Any) -> Admission:
    """An operator record from JSON (not yet verified: see :func:`verify_admission`); a record
    without ``addons`` (as every record signed before boards existed) has no boards.

    Raises:
        AdmissionError: ``bad_admission`` (a field missing or malformed), ``bad_labels``, ``bad_addons``.
    """
    if not isinstance(obj, Mapping):
        raise AdmissionError("bad_admission", "an admission record is a JSON object")
    extra = set(obj) - {"device_id", "address", "hardware", "labels", "status", "serial", "issued_at", "issuer",
                        "signature", "source", "addons"}
    if extra:
        raise AdmissionError("bad_admission", f"unknown field(s) {', '.join(sorted(map(str, extra)))[:200]}")
    if obj.get("source", "operator") != "operator":
        raise AdmissionError("bad_admission", "only operator records travel between services")
    sig = obj.get("signature")
    if not isinstance(sig, str) or not _SIG_RE.match(sig):
        raise AdmissionError("bad_admission", "signature must be 0x and 130 hex digits")
    body = _check_body(obj)
    return Admission(**{**body.__dict__, "signature": sig})


def verify_admission(adm: Admission, operators: Collection[str]) -> Admission:
    """``adm`` when its signature recovers to its issuer and the issuer is one of ``operators``.

    Raises:
        AdmissionError: ``bad_signature`` or ``unknown_operator``.
    """
    try:
        signer = Account.recover_message(encode_defunct(text=_text(adm.signed_body())), signature=adm.signature)
    except Exception:  # eth-keys raises several types for an unusable signature
        raise AdmissionError("bad_signature", f"admission of {adm.device_id}: signature does not verify") from None
    if signer != adm.issuer:
        raise AdmissionError("bad_signature", f"admission of {adm.device_id}: not signed by its issuer")
    if signer not in {to_checksum_address(o) for o in operators}:
        raise AdmissionError("unknown_operator", f"admission of {adm.device_id}: {signer} is not an operator key "
                                                 "of this service")
    return adm


# ----------------------------------------------------------------------------- manufacture certificates


def _address_of(public_key: ec.EllipticCurvePublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return str(eth_keys.PublicKey(raw[1:]).to_checksum_address())


def issue_device_certificate(ca_dir: Path, device_id: str, identity_key: bytes, hardware: str, out: Path, *,
                             labels: Mapping[str, str] | None = None, days: int = 3650,
                             addons: Collection[str] = ()) -> Path:
    """Write ``out``: a PEM certificate for the device whose secp256k1 identity key is
    ``identity_key`` (32 bytes; only its public half goes in), issued by the manufacturer CA in
    ``ca_dir`` (``ca.crt``/``ca.key`` as :func:`entities.fleet_ca.init_ca` makes them), naming
    the add-on boards ``addons`` (hardware class ids) fitted at manufacture.

    Raises:
        ConfigError: missing or corrupt CA files, a bad id, hardware, label or board, unwritable ``out``.
    """
    from entities.fleet_ca import ca_files, load_certificate, load_private_key
    from ledger_node.fsutil import atomic_write_bytes

    if not DEVICE_ID_RE.match(device_id):
        raise ConfigError(f"device id {device_id!r} is not a device id")
    if not HARDWARE_RE.match(hardware) or any(c in hardware for c in " ,="):
        raise ConfigError(f"hardware class {hardware!r} cannot go into a certificate")
    try:
        labels = parse_labels(dict(labels or {}))
        boards = parse_addons(list(addons), hardware)
    except AdmissionError as exc:
        raise ConfigError(str(exc)) from exc
    cert_path, key_path = ca_files(ca_dir)
    ca_cert = load_certificate(cert_path, "manufacturer CA certificate")
    ca_key = load_private_key(key_path, "manufacturer CA key")
    device_pub = ec.derive_private_key(int.from_bytes(identity_key, "big"), ec.SECP256K1()).public_key()
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(_HW_URI + hardware)]
    sans += [x509.UniformResourceIdentifier(f"{_LABEL_URI}{k}={v}") for k, v in labels.items()]
    sans += [x509.UniformResourceIdentifier(_ADDON_URI + b) for b in boards]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fwledger device"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .issuer_name(ca_cert.subject).public_key(device_pub).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256()))
    atomic_write_bytes(Path(out), cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return Path(out)


def load_certificate_authorities(paths: Collection[Path | str]) -> tuple[x509.Certificate, ...]:
    """The manufacturer CA certificates a service pins.

    Raises:
        ConfigError: a missing or corrupt file.
    """
    from entities.fleet_ca import load_certificate

    return tuple(load_certificate(Path(p), "manufacturer CA certificate") for p in paths)


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    ca_key = ca.public_key()
    if not isinstance(ca_key, ec.EllipticCurvePublicKey) or cert.signature_hash_algorithm is None:
        return False
    try:
        ca_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    except InvalidSignature:
        return False
    return True


def certificate_admission(pem: str, cas: Collection[x509.Certificate], *, now: float | None = None) -> Admission:
    """The admission a manufacture certificate proves (source ``certificate``, serial 0).

    Raises:
        NotAdmitted: ``bad_certificate`` (unparsable, too large, not issued by a pinned CA, expired,
            not a secp256k1 device key, no hardware class, bad labels or add-on boards).
    """
    def bad(message: str) -> NotAdmitted:
        return NotAdmitted("bad_certificate", f"device certificate: {message}")

    if not isinstance(pem, str) or len(pem) > MAX_CERT_BYTES:
        raise bad(f"must be a PEM text of at most {MAX_CERT_BYTES} bytes")
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise bad("not a PEM certificate") from None
    issuer = next((ca for ca in cas if ca.subject == cert.issuer and _signed_by(cert, ca)), None)
    if issuer is None:
        raise bad("not issued (or not signed) by a manufacturer CA this service trusts")
    moment = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC)
    if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
        raise bad("outside its validity period")
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256K1):
        raise bad("the subject key is not a secp256k1 device key")
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    device_id = str(cns[0].value) if cns else ""
    if not DEVICE_ID_RE.match(device_id):
        raise bad("the subject CN is not a device id")
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
            .get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    hardware = [u[len(_HW_URI):] for u in uris if u.startswith(_HW_URI)]
    if len(hardware) != 1 or not HARDWARE_RE.match(hardware[0]):
        raise bad("it names no single hardware class")
    try:
        labels = parse_labels([u[len(_LABEL_URI):] for u in uris if u.startswith(_LABEL_URI)])
        boards = parse_addons([u[len(_ADDON_URI):] for u in uris if u.startswith(_ADDON_URI)], hardware[0])
    except AdmissionError as exc:
        raise bad(str(exc)) from None
    fingerprint = issuer.fingerprint(hashes.SHA256()).hex()[:16]
    return Admission(device_id, _address_of(key), hardware[0], labels, "admitted", 0,
                     int(cert.not_valid_before_utc.timestamp()), f"ca:{fingerprint}", "", "certificate", pem, boards)


# ----------------------------------------------------------------------------- the decision


class AdmissionView(Protocol):
    """What :func:`decide` reads of a service's admission store."""

    def get(self, device_id: str) -> Admission | None: ...

    def is_rejected(self, device_id: str, address: str) -> bool: ...


def _boards_admitted(adm: Admission, addons: Collection[str] | None) -> Admission:
    unlisted = sorted(set(addons or ()) - set(adm.addons))
    if unlisted:
        raise NotAdmitted("board_not_admitted", f"device {adm.device_id} declares add-on board(s) "
                                                f"{', '.join(unlisted)[:200]} that its admission does not list "
                                                f"({', '.join(adm.addons) or 'no boards'})")
    return adm


def decide(store: AdmissionView, device_id: str, address: str, *, certificate: str | None = None,
           cas: Collection[x509.Certificate] = (), hardware_known: Callable[[str], bool] | None = None,
           now: float | None = None, addons: Collection[str] | None = None) -> Admission:
    """May the key ``address`` act as device ``device_id``, carrying the add-on boards ``addons``
    it declares? The admission that says so.

    An operator record (or a certificate admission already recorded) decides when there is one;
    else a manufacture certificate that verifies, names this id and this key, and a hardware class
    (and boards) registered on the ledger admits the device (the caller records it); else it is
    not admitted. A board the device declares must be one its admission lists: a board's firmware
    is the board's, and the device's word alone entitles it to nothing.

    Raises:
        NotAdmitted: ``decommissioned``, ``device_key_mismatch`` (the id is admitted with another
            key: squatting, or an old key after a replacement), ``bad_certificate``,
            ``unknown_hardware``, ``rejected`` (the operator rejected this key for this id),
            ``not_admitted``, or ``board_not_admitted`` (a declared board its admission does not list).
    """
    adm = store.get(device_id)
    if adm is not None:
        if not adm.admitted:
            raise NotAdmitted("decommissioned", f"device {device_id} was decommissioned by the operator")
        if adm.address != address:
            raise NotAdmitted("device_key_mismatch", f"device {device_id} is admitted with another key")
        return _boards_admitted(adm, addons)
    if certificate is not None and cas:
        cert_adm = certificate_admission(certificate, cas, now=now)
        if cert_adm.device_id != device_id or cert_adm.address != address:
            raise NotAdmitted("bad_certificate", "device certificate: issued for another device id or key")
        for hw in (cert_adm.hardware, *cert_adm.addons):
            if hardware_known is not None and not hardware_known(hw):
                raise NotAdmitted("unknown_hardware", f"device certificate: hardware class {hw!r} is "
                                                      "not registered on the ledger")
        return _boards_admitted(cert_adm, addons)
    if store.is_rejected(device_id, address):
        raise NotAdmitted("rejected", f"the operator rejected this key for device {device_id}")
    raise NotAdmitted("not_admitted", f"device {device_id} is not admitted by the operator of this service")
