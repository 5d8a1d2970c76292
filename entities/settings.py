"""Typed settings: flag > environment variable > config file > config/fwledger.toml > default.

Passed in, never global (python-tuf's ``UpdaterConfig`` habit). A relative path written in a
config file (``key_file = "keys/admin.json"``, a service's ``data``, ``tls_*``...) is taken
relative to the home, so one file serves every user; on the command line or in a ``FWLEDGER_*``
variable it is relative to the working folder, as usual.

Signing keys are hex files or encrypted keystores; a keystore's passphrase comes from a file
(``--passphrase-file`` / ``FWLEDGER_PASSPHRASE_FILE`` / ``passphrase_file``) or
``FWLEDGER_PASSPHRASE``, never from a command-line value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger_node.errors import ConfigError

if TYPE_CHECKING:  # eth-account is imported only where a host loads a key: devices never do
    from eth_account.signers.local import LocalAccount

__all__ = ["PASSPHRASE_ENV", "PASSPHRASE_FILE_ENV", "Settings", "convert_setting", "is_keystore", "load_key",
           "load_or_create_key", "load_settings", "read_config_section", "read_passphrase_file", "resolve_section"]

PROJECT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "fwledger.toml"
PASSPHRASE_ENV = "FWLEDGER_PASSPHRASE"  # noqa: S105 (the variable's name, not a secret)
PASSPHRASE_FILE_ENV = "FWLEDGER_PASSPHRASE_FILE"  # noqa: S105
_MAX_PASSPHRASE_FILE = 4096

# TOML keys that name files or folders: relative values from a config file resolve against the home
_PATH_KEYS = frozenset({"key_file", "rpc_ca", "passphrase_file", "data", "identity", "tls_cert", "tls_key",
                        "tls_ca", "dashboard_token_file", "manufacturer_cas"})

# key: (section, name, env var, type)
_KEYS: dict[str, tuple[str, str, str, type]] = {
    "home": ("fwledger", "home", "FWLEDGER_HOME", str),
    "rpc": ("fwledger", "rpc", "FWLEDGER_RPC", str),
    "rpc_ca": ("fwledger", "rpc_ca", "FWLEDGER_RPC_CA", str),
    "key_file": ("fwledger", "key_file", "FWLEDGER_KEY_FILE", str),
    "passphrase_file": ("fwledger", "passphrase_file", PASSPHRASE_FILE_ENV, str),
    "timeout": ("fwledger", "timeout", "FWLEDGER_TIMEOUT", float),
    "confirmations": ("fullnode", "confirmations", "FWLEDGER_CONFIRMATIONS", int),
    "batch_blocks": ("fullnode", "batch_blocks", "FWLEDGER_BATCH_BLOCKS", int),
    "devnet_port": ("devnet", "port", "FWLEDGER_DEVNET_PORT", int),
}


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=lambda: Path("~/.fwledger").expanduser())
    rpc: str = "http://127.0.0.1:8545"
    rpc_ca: Path | None = None  # the CA an https:// node must chain to (pinned); None: the system's
    key_file: Path | None = None
    passphrase_file: Path | None = None  # a keystore's passphrase (first line); else FWLEDGER_PASSPHRASE
    timeout: float = 120.0
    confirmations: int = 0
    batch_blocks: int = 500
    devnet_port: int = 8545

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    def signing_key_file(self) -> Path:
        """The key file to sign with: the configured one, else ``<home>/keys/admin.key``.

        Raises:
            ConfigError: none configured and no default key in the home.
        """
        if self.key_file is not None:
            return self.key_file
        default = self.keys_dir / "admin.key"
        if default.exists():
            return default
        raise ConfigError(f"no signing key: pass --key-file (or set FWLEDGER_KEY_FILE); "
                          f"'fwledger devnet start' writes development keys to {self.keys_dir}")

    def signing_account(self, passphrase: str | None = None) -> LocalAccount:
        """The account of :meth:`signing_key_file`; a keystore is opened with ``passphrase`` if
        given, else the passphrase file (``--passphrase-file``, ``FWLEDGER_PASSPHRASE_FILE``), else
        ``FWLEDGER_PASSPHRASE``.

        Raises:
            ConfigError: no key, unreadable file, no usable key, no or wrong passphrase.
        """
        return load_key(self.signing_key_file(), passphrase=passphrase, passphrase_file=self.passphrase_file)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        fh = open(path, "rb")  # closed below, once it is known to exist
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    import tomllib  # only when there is a file to parse (most device commands have none: start-up time)

    with fh:
        try:
            return tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc


def _convert(name: str, typ: type, value: Any, source: str) -> Any:
    try:
        return typ(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} from {source} must be {typ.__name__}, got {value!r}") from exc


def load_settings(**flags: Any) -> Settings:
    """Resolve settings from flags (None = not given), environment, config files and defaults.

    Raises:
        ConfigError: a config file is unreadable or a value has the wrong type.
    """
    layers: list[tuple[str, dict[str, Any]]] = [(str(PROJECT_CONFIG), _read_toml(PROJECT_CONFIG))]
    # the home itself may come from a flag or env before the home's config is read
    home_hint = flags.get("home") or os.environ.get("FWLEDGER_HOME")
    if not home_hint:
        home_hint = layers[0][1].get("fwledger", {}).get("home", "~/.fwledger")
    user_cfg = os.environ.get("FWLEDGER_CONFIG") or str(Path(str(home_hint)).expanduser() / "config.toml")
    layers.append((user_cfg, _read_toml(Path(user_cfg))))

    values: dict[str, Any] = {}
    from_file: set[str] = set()  # keys whose value came from a config file
    for key, (section, name, env, typ) in _KEYS.items():
        value: Any = None
        source = "default"
        for src, data in layers:
            if name in data.get(section, {}):
                value, source = data[section][name], src
        in_file = source != "default"
        if os.environ.get(env):
            value, source, in_file = os.environ[env], env, False
        if flags.get(key) is not None:
            value, source, in_file = flags[key], f"--{key.replace('_', '-')}", False
        if value is None or value == "":
            continue
        values[key] = _convert(key, typ, value, source)
        if in_file:
            from_file.add(key)

    s = Settings()
    if "home" in values:
        s = replace(s, home=Path(values.pop("home")).expanduser())
    paths: dict[str, Path] = {}
    for key in ("key_file", "rpc_ca", "passphrase_file"):
        if key in values:
            path = Path(values.pop(key)).expanduser()
            paths[key] = s.home / path if key in from_file and not path.is_absolute() else path
    s = replace(s, key_file=paths.get("key_file"), rpc_ca=paths.get("rpc_ca"),
                passphrase_file=paths.get("passphrase_file"), **values)
    if s.timeout <= 0 or s.batch_blocks <= 0 or s.confirmations < 0:
        raise ConfigError("timeout and batch_blocks must be positive, confirmations not negative")
    return s


def read_passphrase_file(path: Path) -> str:
    """The passphrase in a file: its first line, without the line ending.

    Raises:
        ConfigError: unreadable, too large, not UTF-8, or empty.
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_MAX_PASSPHRASE_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read passphrase file {path}: {exc.strerror or exc}") from exc
    if len(raw) > _MAX_PASSPHRASE_FILE:
        raise ConfigError(f"passphrase file {path} is larger than {_MAX_PASSPHRASE_FILE} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"passphrase file {path} is not UTF-8 text") from None
    lines = text.splitlines()
    passphrase = lines[0] if lines else ""
    if not passphrase:
        raise ConfigError(f"passphrase file {path} is empty")
    return passphrase


def is_keystore(path: Path) -> bool:
    """Whether a key file holds an encrypted keystore (JSON) rather than a hex key.

    Raises:
        ConfigError: the file cannot be read.
    """
    try:
        with open(path, "rb") as fh:
            return fh.read(64).lstrip().startswith(b"{")
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror or exc}") from exc


def load_key(path: Path, *, passphrase: str | None = None, passphrase_file: Path | None = None) -> LocalAccount:
    """Load a signing key: a hex private key file or an encrypted keystore JSON.

    A keystore's passphrase is ``passphrase``, else the first line of ``passphrase_file``, else of
    the file named by ``FWLEDGER_PASSPHRASE_FILE``, else ``FWLEDGER_PASSPHRASE`` (never a
    command-line value). A hex key file needs none and reads no passphrase file.

    Raises:
        ConfigError: missing or unreadable file, bad key, no or wrong passphrase.
    """
    import json

    from eth_account import Account

    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror or exc}") from exc
    if not text.startswith("{"):
        try:
            return Account.from_key(bytes.fromhex(text.removeprefix("0x")))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path} holds no usable private key ({type(exc).__name__})") from None
    if passphrase is None:
        named = passphrase_file or (Path(os.environ[PASSPHRASE_FILE_ENV]).expanduser()
                                    if os.environ.get(PASSPHRASE_FILE_ENV) else None)
        passphrase = read_passphrase_file(named) if named is not None else os.environ.get(PASSPHRASE_ENV)
    if not passphrase:
        raise ConfigError(f"{path} is an encrypted keystore: give its passphrase with --passphrase-file FILE "
                          f"(or {PASSPHRASE_FILE_ENV}, or {PASSPHRASE_ENV})")
    try:
        obj = json.loads(text)
    except ValueError:
        raise ConfigError(f"{path} is not a keystore (bad JSON)") from None
    try:
        return Account.from_key(Account.decrypt(obj, passphrase))
    except ValueError as exc:
        if "MAC mismatch" in str(exc):
            raise ConfigError(f"wrong passphrase for {path}") from None
        raise ConfigError(f"{path} holds no usable private key ({type(exc).__name__})") from None
    except (TypeError, KeyError, AttributeError) as exc:
        raise ConfigError(f"{path} holds no usable private key ({type(exc).__name__})") from None


def load_or_create_key(path: Path) -> LocalAccount:
    """A service's own key (tracker, firmware server): read from ``path``, or created there on first
    start (hex private key, mode 0600, written atomically).

    Raises:
        ConfigError: the file exists but holds no usable key, or cannot be written.
    """
    import secrets

    from eth_account import Account

    from ledger_node.fsutil import atomic_write_bytes

    if Path(path).exists():
        return load_key(path)
    account: LocalAccount = Account.from_key(secrets.token_bytes(32))
    atomic_write_bytes(Path(path), (account.key.hex().removeprefix("0x") + "\n").encode(), mode=0o600)
    return account


def read_config_section(path: Path, section: str) -> dict[str, Any]:
    """The ``[section]`` table of a TOML config file; empty if the file does not exist.

    Raises:
        ConfigError: unreadable file, bad TOML, or the section is not a table.
    """
    data = _read_toml(Path(path)).get(section, {})
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: [{section}] must be a table")
    return data


def convert_setting(section: str, name: str, typ: type, value: Any, source: str) -> Any:
    """Convert one setting to ``typ`` (``list`` accepts a comma-separated string).

    Raises:
        ConfigError: the value has the wrong type, naming the section, key and source.
    """
    try:
        if typ is list:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(u).strip() for u in items if str(u).strip())
        if typ is bool and isinstance(value, str):
            low = value.strip().lower()
            if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError("not a boolean")
            return low in ("1", "true", "yes", "on")
        if typ is bool and not isinstance(value, bool):
            raise TypeError("not a boolean")
        if typ is int and isinstance(value, float | bool):
            raise TypeError("not an integer")
        return typ(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{section} {name} from {source} must be {typ.__name__}, got {value!r}") from exc


def _from_home(home: Path, value: Any) -> Any:
    """A path (or list of paths) written in a config file: relative ones taken from the home."""
    if isinstance(value, list):
        return [_from_home(home, v) for v in value]
    if not isinstance(value, str) or not value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else Path(home).expanduser() / path)


def resolve_section(home: Path, section: str, keys: dict[str, tuple[str, str, type]],
                    flags: dict[str, Any]) -> dict[str, Any]:
    """Resolve one service's settings: flag > environment variable > ``[section]`` of
    ``<home>/config.toml`` (or ``FWLEDGER_CONFIG``) > ``[section]`` of ``config/fwledger.toml``.

    ``keys`` maps field name -> (TOML key, environment variable, type); a flag that is None or
    empty counts as not given, as does an empty value. A relative file path from a config file
    (``data``, ``identity``, ``tls_*``...) is taken relative to ``home``. Returns only the fields
    that were set.

    Raises:
        ConfigError: a config file is unreadable, or a value has the wrong type.
    """
    user_cfg = Path(os.environ.get("FWLEDGER_CONFIG") or Path(home) / "config.toml")
    layers = [(str(PROJECT_CONFIG), read_config_section(PROJECT_CONFIG, section)),
              (str(user_cfg), read_config_section(user_cfg, section))]
    values: dict[str, Any] = {}
    for name, (key, env, typ) in keys.items():
        value: Any = None
        source = "default"
        for src, table in layers:
            if key in table:
                value, source = table[key], src
                if key in _PATH_KEYS:
                    value = _from_home(home, value)
        if os.environ.get(env):
            value, source = os.environ[env], env
        flag = flags.get(name)
        if flag is not None and flag != () and flag != []:
            value, source = flag, f"--{name.replace('_', '-')}"
        if value is None or value == "":
            continue
        values[name] = convert_setting(section, name, typ, value, source)
    return values
