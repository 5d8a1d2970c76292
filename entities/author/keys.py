"""Signing keys (a vendor's, an administrator's, an operator's): an Ethereum key in an encrypted
keystore (eth-account, scrypt) in the home.

A keystore is created once (``<home>/keys/<name>.json``, mode 600, written atomically and never
over an existing file) and read with a passphrase that comes from a file, ``FWLEDGER_PASSPHRASE``
or an interactive prompt: never from a command-line value, which other users could read.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from ledger_node.errors import ConfigError

from ..settings import PASSPHRASE_ENV, is_keystore, load_key, read_passphrase_file

__all__ = [
    "PASSPHRASE_ENV",
    "NewKey",
    "create_keystore",
    "is_keystore",
    "keystore_path",
    "load_vendor_key",
    "read_passphrase_file",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class NewKey:
    address: str
    keystore: Path

    def to_json(self) -> dict[str, str]:
        return {"address": self.address, "keystore": str(self.keystore)}


def keystore_path(home: Path, name: str) -> Path:
    """``<home>/keys/<name>.json``.

    Raises:
        ConfigError: ``name`` is not 1-64 letters, digits, ``.``, ``_`` or ``-`` (no paths).
    """
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise ConfigError(f"bad key name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return Path(home) / "keys" / f"{name}.json"


def create_keystore(path: Path, passphrase: str) -> NewKey:
    """Make a new random signing key and write it encrypted to ``path`` (mode 600, atomic, no overwrite).

    Raises:
        ConfigError: empty passphrase, ``path`` already exists, or the folder cannot be written.
    """
    if not isinstance(passphrase, str) or not passphrase:
        raise ConfigError("refusing an empty passphrase for a signing key")
    path = Path(path)
    if path.exists():
        raise ConfigError(f"{path} already exists: refusing to overwrite a key")
    account = Account.create()
    text = json.dumps(Account.encrypt(account.key, passphrase), indent=2) + "\n"
    try:
        if not path.parent.exists():
            path.parent.mkdir(parents=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 600
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.link(tmp, path)  # atomic, and fails if the name exists (no race with another keygen)
        finally:
            os.unlink(tmp)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except FileExistsError:
        raise ConfigError(f"{path} already exists: refusing to overwrite a key") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return NewKey(account.address, path)


def load_vendor_key(path: Path, passphrase: str | None = None) -> LocalAccount:
    """Load the vendor key: with ``passphrase`` if given, else as :func:`entities.settings.load_key` does
    (hex key file, or keystore with ``FWLEDGER_PASSPHRASE_FILE`` / ``FWLEDGER_PASSPHRASE``).

    Raises:
        ConfigError: unreadable file, no usable key, wrong passphrase.
    """
    return load_key(path, passphrase=passphrase)
