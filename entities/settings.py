"""Typed settings: flag > environment variable > config file > config/fwledger.toml > default.

Passed in, never global (python-tuf's ``UpdaterConfig`` habit).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from ledger_node.errors import ConfigError

__all__ = ["Settings", "convert_setting", "load_key", "load_or_create_key", "load_settings", "read_config_section",
           "resolve_section"]

PROJECT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "fwledger.toml"

# key: (section, name, env var, type)
_KEYS: dict[str, tuple[str, str, str, type]] = {
    "home": ("fwledger", "home", "FWLEDGER_HOME", str),
    "rpc": ("fwledger", "rpc", "FWLEDGER_RPC", str),
    "rpc_ca": ("fwledger", "rpc_ca", "FWLEDGER_RPC_CA", str),
    "key_file": ("fwledger", "key_file", "FWLEDGER_KEY_FILE", str),
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


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
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
    for key, (section, name, env, typ) in _KEYS.items():
        value: Any = None
        source = "default"
        for src, data in layers:
            if name in data.get(section, {}):
                value, source = data[section][name], src
        if os.environ.get(env):
            value, source = os.environ[env], env
        if flags.get(key) is not None:
            value, source = flags[key], f"--{key.replace('_', '-')}"
        if value is None or value == "":
            continue
        values[key] = _convert(key, typ, value, source)

    s = Settings()
    if "home" in values:
        s = replace(s, home=Path(values.pop("home")).expanduser())
    if "key_file" in values:
        s = replace(s, key_file=Path(values.pop("key_file")).expanduser())
    if "rpc_ca" in values:
        s = replace(s, rpc_ca=Path(values.pop("rpc_ca")).expanduser())
    s = replace(s, **values)
    if s.timeout <= 0 or s.batch_blocks <= 0 or s.confirmations < 0:
        raise ConfigError("timeout and batch_blocks must be positive, confirmations not negative")
    return s


def load_key(path: Path) -> LocalAccount:
    """Load a signing key: a hex private key file or an encrypted keystore JSON.

    The keystore passphrase comes from ``FWLEDGER_PASSPHRASE`` (never the command line).

    Raises:
        ConfigError: missing or unreadable file, bad key, wrong passphrase.
    """
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror or exc}") from exc
    try:
        if text.startswith("{"):
            passphrase = os.environ.get("FWLEDGER_PASSPHRASE")
            if passphrase is None:
                raise ConfigError(f"{path} is an encrypted keystore: set FWLEDGER_PASSPHRASE")
            import json

            return Account.from_key(Account.decrypt(json.loads(text), passphrase))
        return Account.from_key(bytes.fromhex(text.removeprefix("0x")))
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"{path} holds no usable private key ({type(exc).__name__})") from exc


def load_or_create_key(path: Path) -> LocalAccount:
    """A service's own key (tracker, firmware server): read from ``path``, or created there on first
    start (hex private key, mode 0600, written atomically).

    Raises:
        ConfigError: the file exists but holds no usable key, or cannot be written.
    """
    import secrets

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


def resolve_section(home: Path, section: str, keys: dict[str, tuple[str, str, type]],
                    flags: dict[str, Any]) -> dict[str, Any]:
    """Resolve one service's settings: flag > environment variable > ``[section]`` of
    ``<home>/config.toml`` (or ``FWLEDGER_CONFIG``) > ``[section]`` of ``config/fwledger.toml``.

    ``keys`` maps field name -> (TOML key, environment variable, type); a flag that is None or
    empty counts as not given, as does an empty value. Returns only the fields that were set.

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
        if os.environ.get(env):
            value, source = os.environ[env], env
        flag = flags.get(name)
        if flag is not None and flag != () and flag != []:
            value, source = flag, f"--{name.replace('_', '-')}"
        if value is None or value == "":
            continue
        values[name] = convert_setting(section, name, typ, value, source)
    return values
