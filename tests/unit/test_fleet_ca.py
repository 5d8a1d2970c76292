"""The fleet CA (docs/MODULES.md section 5): certificates, TLS contexts, one-line errors."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from entities.fleet_ca import (
    client_ssl_context,
    init_ca,
    issue_certificate,
    load_certificate,
    module_role,
    server_ssl_context,
)
from ledger_node.errors import ConfigError


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    init_ca(tmp_path / "ca")
    return tmp_path / "ca"


def test_ca_init_writes_a_self_signed_ca_with_a_private_key(ca: Path) -> None:
    cert = load_certificate(ca / "ca.crt")
    assert cert.issuer == cert.subject
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert stat.S_IMODE((ca / "ca.key").stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match="already exists"):
        init_ca(ca)


def test_issued_certificate_names_role_hosts_and_both_usages(ca: Path, tmp_path: Path) -> None:
    issued = issue_certificate(ca, "relay-1", "intermediate", ["127.0.0.1", "relay.local"], tmp_path / "out")
    cert = load_certificate(issued.cert)
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "intermediate"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["relay.local"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert 360 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 366
    assert stat.S_IMODE(issued.key.stat().st_mode) == 0o600
    assert module_role(issued.cert, ca / "ca.crt") == "intermediate"


def test_bad_inputs_are_one_line_config_errors(ca: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="role"):
        issue_certificate(ca, "x", "boss", ["127.0.0.1"], tmp_path)
    with pytest.raises(ConfigError, match="neither an IP"):
        issue_certificate(ca, "x", "server", ["bad host!"], tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        issue_certificate(tmp_path / "nowhere", "x", "server", ["127.0.0.1"], tmp_path)
    (tmp_path / "junk.crt").write_text("not a certificate")
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        load_certificate(tmp_path / "junk.crt")
    other = issue_certificate(ca, "a", "server", ["127.0.0.1"], tmp_path / "a")
    third = issue_certificate(ca, "b", "server", ["127.0.0.1"], tmp_path / "b")
    with pytest.raises(ConfigError, match="does not match"):
        server_ssl_context(other.cert, third.key, ca / "ca.crt")
    init_ca(tmp_path / "ca2")
    with pytest.raises(ConfigError, match="not issued by the fleet CA"):
        module_role(other.cert, tmp_path / "ca2" / "ca.crt")


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, host: str = "127.0.0.1") -> str | None:
    """One TLS handshake over loopback; the client's error, or None."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError):
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                client_ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.recv(2)
        return None
    except (ssl.SSLError, OSError) as exc:
        return type(exc).__name__
    finally:
        t.join(5)
        listener.close()


def test_mutual_tls_accepts_fleet_peers_and_refuses_others(ca: Path, tmp_path: Path) -> None:
    srv = issue_certificate(ca, "srv", "server", ["127.0.0.1"], tmp_path / "s")
    cli = issue_certificate(ca, "cli", "intermediate", ["127.0.0.1"], tmp_path / "c")
    init_ca(tmp_path / "rogue-ca")
    rogue = issue_certificate(tmp_path / "rogue-ca", "rogue", "server", ["127.0.0.1"], tmp_path / "r")
    server = server_ssl_context(srv.cert, srv.key, ca / "ca.crt", require_client=True)
    client = client_ssl_context(cli.cert, cli.key, ca / "ca.crt")
    assert _handshake(server, client) is None
    # a server whose certificate another CA issued is refused by the client
    assert _handshake(server_ssl_context(rogue.cert, rogue.key, ca / "ca.crt"), client) == "SSLCertVerificationError"
    # the host name is checked against the SANs
    assert _handshake(server, client, host="other.example") == "SSLCertVerificationError"
    # a client without a certificate, or with a rogue one, is refused by a server requiring one
    assert _handshake(server, client_ssl_context(None, None, ca / "ca.crt")) is not None
    assert _handshake(server, client_ssl_context(rogue.cert, rogue.key, ca / "ca.crt")) is not None
