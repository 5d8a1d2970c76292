"""Typed firmware server settings (python-tuf's ``UpdaterConfig`` habit): passed in, never global.

Resolution order for :func:`load_server_config`: explicit keyword (the CLI flag) > environment
variable > the ``[server]`` section of ``<home>/config.toml`` (or ``FWLEDGER_CONFIG``) and of
``config/fwledger.toml`` > the default below.

Keys (``[server]`` section name, environment variable, default):

``data``             FWLEDGER_SERVER_DATA          ``<home>/server``: objects, temp files, SQLite
``max_upload_bytes`` FWLEDGER_SERVER_MAX_UPLOAD    1 GiB: largest bundle accepted in one request
``max_total_bytes``  FWLEDGER_SERVER_MAX_TOTAL     20 GiB: largest total of stored payloads
``max_json_bytes``   FWLEDGER_SERVER_MAX_JSON      64 KiB: largest body of any other request
``poll_interval``    FWLEDGER_SERVER_POLL          1.0 s between ledger syncs
``notify``           FWLEDGER_SERVER_NOTIFY        tracker notification URLs (T9.b), comma-separated
``admin_token``      FWLEDGER_SERVER_TOKEN         operator bearer token; empty: ``<data>/admin.token``
``max_skew``         FWLEDGER_SERVER_MAX_SKEW      300 s: accepted clock difference of signed requests
``notify_timeout``   FWLEDGER_SERVER_NOTIFY_TIMEOUT 3.0 s per notification POST
``admission``        FWLEDGER_SERVER_ADMISSION     ``required``: only devices the operator admitted register and
                                                   download (``open``: lab mode, any signing key is a device)
``operator_keys``    FWLEDGER_SERVER_OPERATORS     addresses whose signed admission records are honoured
``manufacturer_cas`` FWLEDGER_SERVER_MANUFACTURER_CAS manufacturer CA certificates (PEM paths): a device with a
                                                   certificate from one of them admits itself
``max_uploads``      FWLEDGER_SERVER_MAX_UPLOADS   8: uploads received at once (each one's size reserved)
``max_uploads_per_vendor`` FWLEDGER_SERVER_MAX_VENDOR_UPLOADS 2: of those, from one vendor key
``max_connections_per_client`` FWLEDGER_SERVER_MAX_CLIENT_CONNECTIONS 32: open connections from one IP address
``header_timeout``   FWLEDGER_SERVER_HEADER_TIMEOUT 10 s to send a request's headers
``body_timeout``     FWLEDGER_SERVER_BODY_TIMEOUT  30 s without a byte of a request body: the connection is closed
``anchors``          FWLEDGER_SERVER_ANCHORS       trust anchors file (``fwledger device anchors``): prove the
                                                   ledger at a header k of its n trackers attest (with ``trackers``)
``trackers``         FWLEDGER_SERVER_TRACKERS      tracker URLs asked for attestations (``GET /v1/attestation``)
``verify_rpc``       FWLEDGER_SERVER_VERIFY_RPC    a second, independent JSON-RPC node whose block hash must agree
                                                   with the header. None of the three: the header of the server's own
                                                   node, which must then be the embedded chain or on loopback
``proof_max_age``    FWLEDGER_SERVER_PROOF_MAX_AGE 5.0 s: a trusted header older than this is taken anew before a
                                                   decision (the ledger follower also takes one after each sync)
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from eth_utils import is_address

from entities.protocol.admission import ADMISSION_MODES
from entities.settings import resolve_section
from ledger_node.errors import ConfigError
from ledger_node.fsutil import atomic_write_bytes

__all__ = ["ServerConfig", "load_server_config"]


GIB = 1 << 30

# field: (toml key, env var, type)
_KEYS: dict[str, tuple[str, str, type]] = {
    "data_dir": ("data", "FWLEDGER_SERVER_DATA", str),
    "max_upload_bytes": ("max_upload_bytes", "FWLEDGER_SERVER_MAX_UPLOAD", int),
    "max_total_bytes": ("max_total_bytes", "FWLEDGER_SERVER_MAX_TOTAL", int),
    "max_json_bytes": ("max_json_bytes", "FWLEDGER_SERVER_MAX_JSON", int),
    "poll_interval": ("poll_interval", "FWLEDGER_SERVER_POLL", float),
    "tracker_notify_urls": ("notify", "FWLEDGER_SERVER_NOTIFY", list),
    "admin_token": ("admin_token", "FWLEDGER_SERVER_TOKEN", str),
    "max_skew": ("max_skew", "FWLEDGER_SERVER_MAX_SKEW", int),
    "notify_timeout": ("notify_timeout", "FWLEDGER_SERVER_NOTIFY_TIMEOUT", float),
    "admission": ("admission", "FWLEDGER_SERVER_ADMISSION", str),
    "operator_keys": ("operator_keys", "FWLEDGER_SERVER_OPERATORS", list),
    "manufacturer_cas": ("manufacturer_cas", "FWLEDGER_SERVER_MANUFACTURER_CAS", list),
    "max_uploads": ("max_uploads", "FWLEDGER_SERVER_MAX_UPLOADS", int),
    "max_uploads_per_vendor": ("max_uploads_per_vendor", "FWLEDGER_SERVER_MAX_VENDOR_UPLOADS", int),
    "max_connections_per_client": ("max_connections_per_client", "FWLEDGER_SERVER_MAX_CLIENT_CONNECTIONS", int),
    "header_timeout": ("header_timeout", "FWLEDGER_SERVER_HEADER_TIMEOUT", float),
    "body_timeout": ("body_timeout", "FWLEDGER_SERVER_BODY_TIMEOUT", float),
    "anchors": ("anchors", "FWLEDGER_SERVER_ANCHORS", str),
    "trackers": ("trackers", "FWLEDGER_SERVER_TRACKERS", list),
    "verify_rpc": ("verify_rpc", "FWLEDGER_SERVER_VERIFY_RPC", str),
    "proof_max_age": ("proof_max_age", "FWLEDGER_SERVER_PROOF_MAX_AGE", float),
}


@dataclass(frozen=True)
class ServerConfig:
    """Everything the firmware server needs besides its ledger view.

    ``admin_token`` None means: read ``<data>/admin.token``, creating it (0600) on first start.
    """

    data_dir: Path
    max_upload_bytes: int = GIB
    max_total_bytes: int = 20 * GIB
    max_json_bytes: int = 64 * 1024
    poll_interval: float = 1.0
    tracker_notify_urls: tuple[str, ...] = field(default_factory=tuple)
    admin_token: str | None = None
    max_skew: int = 300
    notify_timeout: float = 3.0
    admission: str = "required"
    operator_keys: tuple[str, ...] = field(default_factory=tuple)
    manufacturer_cas: tuple[Path, ...] = field(default_factory=tuple)
    max_uploads: int = 8
    max_uploads_per_vendor: int = 2
    max_connections_per_client: int = 32
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    anchors: Path | None = None
    trackers: tuple[str, ...] = field(default_factory=tuple)
    verify_rpc: str | None = None
    proof_max_age: float = 5.0

    def validate(self) -> None:
        """Raises:
            ConfigError: a limit is not positive or a notification URL is not http(s).
        """
        for name in ("max_upload_bytes", "max_total_bytes", "max_json_bytes", "max_skew", "max_uploads",
                     "max_uploads_per_vendor", "max_connections_per_client"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"server {name} must be a positive integer, not {value!r}")
        if not self.header_timeout > 0 or not self.body_timeout > 0:
            raise ConfigError("server header_timeout and body_timeout must be positive")
        if not self.poll_interval > 0 or not self.notify_timeout > 0:
            raise ConfigError("server poll_interval and notify_timeout must be positive")
        if not self.proof_max_age > 0:
            raise ConfigError("server proof_max_age must be positive")
        if self.trackers and self.anchors is None:
            raise ConfigError("server trackers need anchors (the tracker keys and quorum k to trust)")
        for url in self.tracker_notify_urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(f"tracker notification URL must be http(s), not {url!r}")
        if self.admission not in ADMISSION_MODES:
            raise ConfigError(f"server admission must be one of {', '.join(ADMISSION_MODES)}, not {self.admission!r}")
        for addr in self.operator_keys:
            if not isinstance(addr, str) or not is_address(addr):
                raise ConfigError(f"server operator_keys: {addr!r} is not an Ethereum address")
        if self.admin_token is not None and len(self.admin_token) < 16:
            raise ConfigError("the server admin token must be at least 16 characters")

    @property
    def objects_dir(self) -> Path:
        return self.data_dir / "objects"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "server.sqlite"

    @property
    def ledger_index_path(self) -> Path:
        return self.data_dir / "ledger.sqlite"

    def resolved_admin_token(self) -> str:
        """The operator token: the configured one, else ``<data>/admin.token`` (made if missing).

        Raises:
            ConfigError: the token file cannot be read or written.
        """
        if self.admin_token:
            return self.admin_token
        path = self.data_dir / "admin.token"
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            text = ""
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if len(text) >= 16:
            return text
        token = secrets.token_urlsafe(32)
        atomic_write_bytes(path, (token + "\n").encode(), mode=0o600)
        return token


def load_server_config(home: Path, **flags: Any) -> ServerConfig:
    """Resolve the server settings; ``flags`` are field names, None meaning "not given".

    Raises:
        ConfigError: a config file is unreadable, or a value has the wrong type or is out of range.
    """
    values = resolve_section(home, "server", _KEYS, flags)
    data_dir = Path(values.pop("data_dir", Path(home) / "server")).expanduser()
    for name in ("operator_keys", "tracker_notify_urls", "trackers"):
        if name in values:
            values[name] = tuple(values[name])
    if "manufacturer_cas" in values:
        values["manufacturer_cas"] = tuple(Path(p).expanduser().absolute() for p in values["manufacturer_cas"])
    if values.get("anchors"):
        values["anchors"] = Path(values["anchors"]).expanduser().absolute()
    for name in ("anchors", "verify_rpc"):
        if name in values and not values[name]:
            values[name] = None
    cfg = replace(ServerConfig(data_dir=data_dir), **values)
    cfg.validate()
    return cfg
