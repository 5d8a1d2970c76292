"""The fleet CA: X.509 certificates for mutual TLS between tracker modules (C11.2 module rules a-b).

One self-signed CA (ECDSA P-256, 10 years) issues each module a certificate (1 year) whose
subject's OU names its role (``server``, ``intermediate``, ``client``, ``firmware-server``,
``device``), whose SANs name the
hosts it serves on (IP addresses or DNS names) and whose extended key usage allows both
serverAuth and clientAuth (an intermediate is a server to its devices and a client of its
upstream). Private keys are written 0600, atomically (:mod:`ledger_node.fsutil`).

:func:`server_ssl_context` and :func:`client_ssl_context` build the TLS contexts: both verify
the peer's certificate against the fleet CA only (not the system's roots); a client also checks
the peer's name against its SANs. Every missing, unreadable or corrupt file is a one-line
:class:`~ledger_node.errors.ConfigError`. See ``docs/MODULES.md`` section 5.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ledger_node.errors import ConfigError
from ledger_node.fsutil import atomic_write_bytes

__all__ = ["CA_CERT", "CA_KEY", "MODULE_ROLES", "Issued", "ca_files", "client_ssl_context", "init_ca",
           "issue_certificate", "load_certificate", "load_private_key", "module_role",
           "server_ssl_context"]

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
MODULE_ROLES = ("server", "intermediate", "client", "firmware-server", "device")
CA_DAYS = 3650
MODULE_DAYS = 365
_BACKDATE = dt.timedelta(minutes=5)  # tolerate a little clock difference between modules


@dataclass(frozen=True)
class Issued:
    """Files written by :func:`init_ca` or :func:`issue_certificate`."""

    cert: Path
    key: Path
    subject: str
    not_after: dt.datetime


def ca_files(directory: Path) -> tuple[Path, Path]:
    """(``ca.crt``, ``ca.key``) in ``directory``."""
    return Path(directory) / CA_CERT, Path(directory) / CA_KEY


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def load_certificate(path: Path, what: str = "certificate") -> x509.Certificate:
    """A PEM certificate.

    Raises:
        ConfigError: missing, unreadable or not a PEM certificate.
    """
    try:
        return x509.load_pem_x509_certificate(_read(path, what))
    except ValueError as exc:
        raise ConfigError(f"{what} {path} is not a PEM certificate") from exc


def _load_key(path: Path, what: str = "private key") -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path, what), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{what} {path} is not an unencrypted PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{what} {path} is not an ECDSA key")
    return key


load_private_key = _load_key  # a P-256 PEM key (the CA's), for entities.protocol.admission


def _write_pair(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, cert_path: Path, key_path: Path) -> None:
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    atomic_write_bytes(key_path, pem_key, mode=0o600)
    atomic_write_bytes(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def init_ca(directory: Path, *, name: str = "fwledger fleet CA", days: int = CA_DAYS,
            force: bool = False) -> Issued:
    """Create the fleet CA in ``directory``: a self-signed P-256 certificate and its key (0600).

    Raises:
        ConfigError: a CA is already there (and not ``force``), or the folder cannot be written.
    """
    cert_path, key_path = ca_files(directory)
    if not force and (cert_path.exists() or key_path.exists()):
        raise ConfigError(f"a fleet CA already exists in {directory} (refusing to overwrite it)")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fwledger"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    _write_pair(cert, key, cert_path, key_path)
    return Issued(cert_path, key_path, subject.rfc4514_string(), cert.not_valid_after_utc)


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    if not host or len(host) > 253 or not all(c.isalnum() or c in "-._*" for c in host):
        raise ConfigError(f"{host!r} is neither an IP address nor a DNS name")
    return x509.DNSName(host.lower())


def issue_certificate(ca_dir: Path, name: str, role: str, hosts: tuple[str, ...] | list[str], out_dir: Path, *,
                      days: int = MODULE_DAYS) -> Issued:
    """``NAME.crt`` / ``NAME.key`` in ``out_dir``, signed by the CA in ``ca_dir``: P-256, ``days``
    valid, the role in the subject's OU, SANs for ``hosts``, EKU serverAuth + clientAuth.

    Raises:
        ConfigError: unknown role, bad name or host, missing or corrupt CA files, unwritable folder.
    """
    if role not in MODULE_ROLES:
        raise ConfigError(f"module role must be one of {', '.join(MODULE_ROLES)}, not {role!r}")
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise ConfigError(f"certificate name {name!r} must be 1-64 letters, digits, '-', '_' or '.'")
    if not hosts:
        raise ConfigError("give at least one --host (IP address or DNS name) for the certificate")
    sans = [_san(h) for h in dict.fromkeys(hosts)]
    ca_cert_path, ca_key_path = ca_files(ca_dir)
    ca_cert = load_certificate(ca_cert_path, "fleet CA certificate")
    ca_key = _load_key(ca_key_path, "fleet CA key")
    if ca_cert.public_key() != ca_key.public_key():
        raise ConfigError(f"the fleet CA key {ca_key_path} does not match {ca_cert_path}")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fwledger"),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    out = Path(out_dir)
    _write_pair(cert, key, out / f"{name}.crt", out / f"{name}.key")
    return Issued(out / f"{name}.crt", out / f"{name}.key", subject.rfc4514_string(), cert.not_valid_after_utc)


def module_role(cert_path: Path, ca_path: Path) -> str:
    """The role (OU) of a module certificate, after checking the fleet CA signed it.

    Raises:
        ConfigError: unreadable files, not signed by the CA, or no role in the subject.
    """
    cert = load_certificate(cert_path)
    ca = load_certificate(ca_path, "fleet CA certificate")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ConfigError(f"certificate {cert_path} is not issued by the fleet CA {ca_path}") from exc
    ous = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    role = str(ous[0].value) if ous else ""
    if role not in MODULE_ROLES:
        raise ConfigError(f"certificate {cert_path} names no module role")
    return role


def _check_files(cert: Path, key: Path, ca: Path) -> None:
    load_certificate(ca, "fleet CA certificate")
    crt = load_certificate(cert)
    k = _load_key(key)
    if crt.public_key() != k.public_key():
        raise ConfigError(f"private key {key} does not match certificate {cert}")


def _context(purpose: ssl.Purpose, cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    _check_files(cert, key, ca)
    protocol = ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
        ctx.load_verify_locations(cafile=str(ca))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot use TLS files {cert}, {key}, {ca}: {exc}") from exc
    return ctx


def server_ssl_context(cert: Path, key: Path, ca: Path, require_client: bool = True) -> ssl.SSLContext:
    """A server's TLS context: presents ``cert``; with ``require_client``, refuses any client
    without a certificate chaining to the fleet CA ``ca``.

    Raises:
        ConfigError: a file is missing or corrupt, or the key does not match the certificate.
    """
    ctx = _context(ssl.Purpose.CLIENT_AUTH, cert, key, ca)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_OPTIONAL
    return ctx


def client_ssl_context(cert: Path | None, key: Path | None, ca: Path) -> ssl.SSLContext:
    """A client's TLS context: presents ``cert`` (if given), accepts only servers whose
    certificate chains to the fleet CA ``ca`` and names the host connected to.

    Raises:
        ConfigError: a file is missing or corrupt, or the key does not match the certificate.
    """
    if cert is None or key is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        load_certificate(ca, "fleet CA certificate")
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"cannot use fleet CA {ca}: {exc}") from exc
    else:
        ctx = _context(ssl.Purpose.SERVER_AUTH, cert, key, ca)
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
