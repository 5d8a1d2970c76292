"""Typed status tracker settings (python-tuf's ``UpdaterConfig`` habit): passed in, never global.

Resolution order for :func:`load_tracker_config`: explicit keyword (the CLI flag) > environment
variable > the ``[tracker]`` section of ``<home>/config.toml`` (or ``FWLEDGER_CONFIG``) and of
``config/fwledger.toml`` > the default below.

Keys (``[tracker]`` key, environment variable, default):

``data``            FWLEDGER_TRACKER_DATA       ``<home>/tracker``: index, inventory, identity key
``identity``        FWLEDGER_TRACKER_IDENTITY   ``<data>/tracker.key``: the tracker's own secp256k1
                                                key (hex), made 0600 on first start; it signs
                                                header attestations and every response
``poll_interval``   FWLEDGER_TRACKER_POLL       1.0 s between ledger polls (T9.d)
``admin_keys``      FWLEDGER_TRACKER_ADMINS     addresses of device administrators (T9.c triggers,
                                                operator reads), comma-separated
``server_keys``     FWLEDGER_TRACKER_SERVERS    addresses of trusted firmware servers (T9.b)
``module_keys``     FWLEDGER_TRACKER_MODULE_KEYS addresses of the lower modules (intermediates) whose
                                                module heartbeats are accepted (C11.2 c); any other
                                                key is refused ``unknown_module`` (403). Empty: none
``trigger_rate``    FWLEDGER_TRACKER_TRIGGER_RATE 60: triggers a minute per signer (token bucket, bursts
                                                of one minute's worth); more are refused
                                                ``rate_limited`` (429) and not logged
``trigger_limit``   FWLEDGER_TRACKER_TRIGGER_LIMIT 10000 trigger rows kept (oldest pruned)
``cache_entries``   FWLEDGER_TRACKER_CACHE_ENTRIES intermediate only: 4096 cached upstream answers
                                                kept (least recently used evicted)
``max_skew``        FWLEDGER_TRACKER_MAX_SKEW   300 s: accepted clock difference of signed requests
``max_json_bytes``  FWLEDGER_TRACKER_MAX_JSON   64 KiB: largest request body
``stale_after``     FWLEDGER_TRACKER_STALE      600 s without a heartbeat: a device is unreachable
``log_limit``       FWLEDGER_TRACKER_LOG_LIMIT  100000 communication log rows kept (oldest pruned)
``waves``           FWLEDGER_TRACKER_WAVES      0.1,0.5,1.0: cumulative fleet shares of a rollout's waves
``halt_failure_rate`` FWLEDGER_TRACKER_HALT_RATE 0.25: a rollout halts above this failure rate...
``halt_min_failures`` FWLEDGER_TRACKER_HALT_MIN  1: ...once it has at least this many failures
``command_ttl``     FWLEDGER_TRACKER_COMMAND_TTL 600 s: lifetime of a signed update command
``rollout_settle``  FWLEDGER_TRACKER_ROLLOUT_SETTLE 300 s: a rollout with nothing pending in its open
                                                waves and no device joining it for this long opens its
                                                next waves (an empty canary wave never stalls it)
``upstreams``       FWLEDGER_TRACKER_UPSTREAMS  intermediate only: upstream module URLs
``upstream_keys``   FWLEDGER_TRACKER_UPSTREAM_KEYS intermediate only: the upstreams' signing addresses
``tls_cert``        FWLEDGER_TRACKER_TLS_CERT   this module's certificate from the fleet CA (PEM)
``tls_key``         FWLEDGER_TRACKER_TLS_KEY    its private key (PEM)
``tls_ca``          FWLEDGER_TRACKER_TLS_CA     the fleet CA certificate (PEM): peers must chain to it
``tls_require_client`` FWLEDGER_TRACKER_TLS_REQUIRE_CLIENT true: with TLS on, clients need a CA certificate
``dashboard_token_file`` FWLEDGER_TRACKER_DASHBOARD_TOKEN ``<data>/dashboard.token``: the operator's dashboard
                                                token (64 hex characters), made 0600 on first start
``dashboard_hosts`` FWLEDGER_TRACKER_DASHBOARD_HOSTS Host headers the dashboard answers (``name`` or
                                                ``name:port``); empty: the listen address and loopback
                                                names with its port (:mod:`.dashboard`)

``admission``       FWLEDGER_TRACKER_ADMISSION  ``required``: only devices the operator admitted are
                                                served (``open``: lab mode, any signing key is a device)
``operator_keys``   FWLEDGER_TRACKER_OPERATORS  addresses whose signed admission records this tracker
                                                honours (:mod:`entities.protocol.admission`); empty: ``admin_keys``
``manufacturer_cas`` FWLEDGER_TRACKER_MANUFACTURER_CAS manufacturer CA certificates (PEM paths): a device
                                                with a certificate from one of them admits itself
``max_pending``     FWLEDGER_TRACKER_MAX_PENDING 1000 unannounced devices kept in the pending queue
``observation_retry`` FWLEDGER_TRACKER_OBSERVATION_RETRY 2.0 s between ledger polls while a version a
                                                device reported is not indexed yet (T9.e, its block
                                                not yet confirmed; :mod:`.observations`); 0: off
``max_observations`` FWLEDGER_TRACKER_MAX_OBSERVATIONS 64 such observations kept pending (least
                                                recently reported dropped)
``observation_margin`` FWLEDGER_TRACKER_OBSERVATION_MARGIN 12 blocks past confirmations an
                                                observation stays pending (else one hour at most)

Wire formats of commands, rollouts, intermediates and TLS: ``docs/MODULES.md``.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from eth_utils import is_address, to_checksum_address

from entities.protocol.admission import ADMISSION_MODES
from entities.settings import resolve_section
from ledger_node.errors import ConfigError

__all__ = ["ROLES", "TrackerConfig", "load_tracker_config", "parse_listen"]


#: the deployment roles of clause 8; only ``server`` (D8.2.2's server module) is built so far
ROLES = ("server", "intermediate", "client")

#: a ``dashboard_hosts`` entry: ``name``, ``name:port``, ``[v6]``, ``[v6]:port``
_DASHBOARD_HOST = re.compile(r"([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(:\d{1,5})?")

# field: (toml key, env var, type)
_KEYS: dict[str, tuple[str, str, type]] = {
    "data_dir": ("data", "FWLEDGER_TRACKER_DATA", str),
    "identity_file": ("identity", "FWLEDGER_TRACKER_IDENTITY", str),
    "poll_interval": ("poll_interval", "FWLEDGER_TRACKER_POLL", float),
    "admin_keys": ("admin_keys", "FWLEDGER_TRACKER_ADMINS", list),
    "server_keys": ("server_keys", "FWLEDGER_TRACKER_SERVERS", list),
    "module_keys": ("module_keys", "FWLEDGER_TRACKER_MODULE_KEYS", list),
    "trigger_rate": ("trigger_rate", "FWLEDGER_TRACKER_TRIGGER_RATE", float),
    "trigger_limit": ("trigger_limit", "FWLEDGER_TRACKER_TRIGGER_LIMIT", int),
    "cache_entries": ("cache_entries", "FWLEDGER_TRACKER_CACHE_ENTRIES", int),
    "max_skew": ("max_skew", "FWLEDGER_TRACKER_MAX_SKEW", int),
    "max_json_bytes": ("max_json_bytes", "FWLEDGER_TRACKER_MAX_JSON", int),
    "stale_after": ("stale_after", "FWLEDGER_TRACKER_STALE", float),
    "log_limit": ("log_limit", "FWLEDGER_TRACKER_LOG_LIMIT", int),
    "waves": ("waves", "FWLEDGER_TRACKER_WAVES", list),
    "halt_failure_rate": ("halt_failure_rate", "FWLEDGER_TRACKER_HALT_RATE", float),
    "halt_min_failures": ("halt_min_failures", "FWLEDGER_TRACKER_HALT_MIN", int),
    "command_ttl": ("command_ttl", "FWLEDGER_TRACKER_COMMAND_TTL", int),
    "rollout_settle": ("rollout_settle", "FWLEDGER_TRACKER_ROLLOUT_SETTLE", int),
    "upstreams": ("upstreams", "FWLEDGER_TRACKER_UPSTREAMS", list),
    "upstream_keys": ("upstream_keys", "FWLEDGER_TRACKER_UPSTREAM_KEYS", list),
    "tls_cert": ("tls_cert", "FWLEDGER_TRACKER_TLS_CERT", str),
    "tls_key": ("tls_key", "FWLEDGER_TRACKER_TLS_KEY", str),
    "tls_ca": ("tls_ca", "FWLEDGER_TRACKER_TLS_CA", str),
    "tls_require_client": ("tls_require_client", "FWLEDGER_TRACKER_TLS_REQUIRE_CLIENT", bool),
    "dashboard_token_file": ("dashboard_token_file", "FWLEDGER_TRACKER_DASHBOARD_TOKEN", str),
    "dashboard_hosts": ("dashboard_hosts", "FWLEDGER_TRACKER_DASHBOARD_HOSTS", list),
    "admission": ("admission", "FWLEDGER_TRACKER_ADMISSION", str),
    "operator_keys": ("operator_keys", "FWLEDGER_TRACKER_OPERATORS", list),
    "manufacturer_cas": ("manufacturer_cas", "FWLEDGER_TRACKER_MANUFACTURER_CAS", list),
    "max_pending": ("max_pending", "FWLEDGER_TRACKER_MAX_PENDING", int),
    "observation_retry": ("observation_retry", "FWLEDGER_TRACKER_OBSERVATION_RETRY", float),
    "max_observations": ("max_observations", "FWLEDGER_TRACKER_MAX_OBSERVATIONS", int),
    "observation_margin": ("observation_margin", "FWLEDGER_TRACKER_OBSERVATION_MARGIN", int),
}


@dataclass(frozen=True)
class TrackerConfig:
    """Everything the tracker needs besides its chain connection and deployment record.

    ``identity_file`` None means ``<data>/tracker.key``. Addresses are checksummed by
    :meth:`validate` (through :func:`load_tracker_config`).
    """

    data_dir: Path
    role: str = "server"
    identity_file: Path | None = None
    poll_interval: float = 1.0
    admin_keys: tuple[str, ...] = field(default_factory=tuple)
    server_keys: tuple[str, ...] = field(default_factory=tuple)
    module_keys: tuple[str, ...] = field(default_factory=tuple)
    trigger_rate: float = 60.0
    trigger_limit: int = 10_000
    cache_entries: int = 4096
    max_skew: int = 300
    max_json_bytes: int = 64 * 1024
    stale_after: float = 600.0
    log_limit: int = 100_000
    waves: tuple[float, ...] = (0.1, 0.5, 1.0)
    halt_failure_rate: float = 0.25
    halt_min_failures: int = 1
    command_ttl: int = 600
    rollout_settle: int = 300
    upstreams: tuple[str, ...] = field(default_factory=tuple)
    upstream_keys: tuple[str, ...] = field(default_factory=tuple)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls_require_client: bool = True
    dashboard_token_file: Path | None = None
    dashboard_hosts: tuple[str, ...] = field(default_factory=tuple)
    admission: str = "required"
    operator_keys: tuple[str, ...] = field(default_factory=tuple)
    manufacturer_cas: tuple[Path, ...] = field(default_factory=tuple)
    max_pending: int = 1000
    observation_retry: float = 2.0
    max_observations: int = 64
    observation_margin: int = 12

    @property
    def tls(self) -> bool:
        """True when this module serves (and connects upstream over) TLS."""
        return self.tls_cert is not None

    def validate(self) -> TrackerConfig:
        """The same settings with addresses checksummed.

        Raises:
            ConfigError: an unknown role, a non-positive limit, or a key that is not an address.
        """
        if self.role not in ROLES:
            raise ConfigError(f"tracker role must be one of {', '.join(ROLES)}, not {self.role!r}")
        for name in ("max_skew", "max_json_bytes", "log_limit", "halt_min_failures", "command_ttl",
                     "rollout_settle", "trigger_limit", "cache_entries", "max_pending", "max_observations"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"tracker {name} must be a positive integer, not {value!r}")
        if not self.poll_interval > 0 or not self.stale_after > 0:
            raise ConfigError("tracker poll_interval and stale_after must be positive")
        if isinstance(self.observation_retry, bool) or not isinstance(self.observation_retry, int | float) \
                or not 0 <= self.observation_retry <= 3600:
            raise ConfigError(f"tracker observation_retry must be 0 (off) to 3600 s, not {self.observation_retry!r}")
        if not isinstance(self.observation_margin, int) or isinstance(self.observation_margin, bool) \
                or not 0 <= self.observation_margin <= 10_000:
            raise ConfigError(f"tracker observation_margin must be 0 to 10000 blocks, not {self.observation_margin!r}")
        if isinstance(self.trigger_rate, bool) or not isinstance(self.trigger_rate, int | float) \
                or not self.trigger_rate > 0:
            raise ConfigError(f"tracker trigger_rate must be a positive number, not {self.trigger_rate!r}")
        try:
            waves = tuple(float(w) for w in self.waves)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"tracker waves must be numbers, not {self.waves!r}") from exc
        if not waves or waves[-1] != 1.0 or any(not 0 < w <= 1 for w in waves) \
                or any(a >= b for a, b in itertools.pairwise(waves)):
            raise ConfigError(f"tracker waves must be increasing fleet shares in (0, 1] ending at 1.0, not {waves}")
        if not 0 <= self.halt_failure_rate < 1:
            raise ConfigError(f"tracker halt_failure_rate must be in [0, 1), not {self.halt_failure_rate}")
        if self.command_ttl > 86_400:
            raise ConfigError("tracker command_ttl must be at most 86400 s")
        if self.rollout_settle > 86_400:
            raise ConfigError("tracker rollout_settle must be at most 86400 s")
        tls = (self.tls_cert, self.tls_key, self.tls_ca)
        if any(t is not None for t in tls) and not all(t is not None for t in tls):
            raise ConfigError("tracker TLS needs tls_cert, tls_key and tls_ca together")
        for url in self.upstreams:
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ConfigError(f"tracker upstream must be an http(s) URL, not {url!r}")
        if self.role == "intermediate" and not self.upstreams:
            raise ConfigError("an intermediate tracker needs at least one --upstream URL")
        if self.upstream_keys and len(self.upstream_keys) != len(self.upstreams):
            raise ConfigError("give one upstream key per upstream URL")
        for host in self.dashboard_hosts:
            if not isinstance(host, str) or not _DASHBOARD_HOST.fullmatch(host):
                raise ConfigError(f"tracker dashboard_hosts: {host!r} is not a host name or host:port")
        if self.admission not in ADMISSION_MODES:
            raise ConfigError(f"tracker admission must be one of {', '.join(ADMISSION_MODES)}, not {self.admission!r}")
        keys: dict[str, tuple[str, ...]] = {}
        for name in ("admin_keys", "server_keys", "module_keys", "upstream_keys", "operator_keys"):
            out = []
            for addr in getattr(self, name):
                if not isinstance(addr, str) or not is_address(addr):
                    raise ConfigError(f"tracker {name}: {addr!r} is not an Ethereum address")
                out.append(to_checksum_address(addr))
            keys[name] = tuple(dict.fromkeys(out))
        return replace(self, admin_keys=keys["admin_keys"], server_keys=keys["server_keys"],
                       module_keys=keys["module_keys"], upstream_keys=keys["upstream_keys"], waves=waves,
                       operator_keys=keys["operator_keys"] or keys["admin_keys"],
                       manufacturer_cas=tuple(Path(p) for p in self.manufacturer_cas),
                       upstreams=tuple(u.rstrip("/") for u in self.upstreams),
                       dashboard_hosts=tuple(dict.fromkeys(h.lower() for h in self.dashboard_hosts)))

    @property
    def identity_path(self) -> Path:
        return self.identity_file if self.identity_file is not None else self.data_dir / "tracker.key"

    @property
    def dashboard_token_path(self) -> Path:
        """The operator's dashboard token (:mod:`.dashboard`)."""
        return self.dashboard_token_file if self.dashboard_token_file is not None \
            else self.data_dir / "dashboard.token"

    @property
    def index_path(self) -> Path:
        return self.data_dir / "ledger.sqlite"

    @property
    def inventory_path(self) -> Path:
        return self.data_dir / "inventory.sqlite"


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port).

    Raises:
        ConfigError: malformed, or a port outside 1..65535.
    """
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--listen must be HOST:PORT, not {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not 0 < int(port) < 65536:
        raise ConfigError(f"--listen port must be 1..65535, not {port}")
    return host, int(port)


def load_tracker_config(home: Path, *, role: str = "server", **flags: Any) -> TrackerConfig:
    """Resolve the tracker settings; ``flags`` are field names, None (or empty) meaning "not given".

    Raises:
        ConfigError: a config file is unreadable, or a value has the wrong type or is out of range.
    """
    values = resolve_section(home, "tracker", _KEYS, flags)
    data_dir = Path(values.pop("data_dir", Path(home) / "tracker")).expanduser().absolute()
    identity = values.pop("identity_file", None)
    for name in ("tls_cert", "tls_key", "tls_ca"):
        if values.get(name):
            values[name] = Path(values[name]).expanduser().absolute()
        else:
            values.pop(name, None)
    if values.get("dashboard_token_file"):
        values["dashboard_token_file"] = Path(values["dashboard_token_file"]).expanduser().absolute()
    else:
        values.pop("dashboard_token_file", None)
    if "manufacturer_cas" in values:
        values["manufacturer_cas"] = tuple(Path(p).expanduser().absolute() for p in values["manufacturer_cas"])
    for name in ("waves", "upstreams", "upstream_keys", "dashboard_hosts", "operator_keys"):
        if name in values:
            values[name] = tuple(values[name])
    cfg = TrackerConfig(data_dir=data_dir, role=role,
                        identity_file=Path(identity).expanduser().absolute() if identity else None, **values)
    return cfg.validate()
