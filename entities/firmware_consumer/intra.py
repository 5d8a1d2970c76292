"""Intra-device deployment (X.1368 D8.2.1, docs/MODULES.md section 7): the status tracker inside the device.

The device runs its own server-module tracker (its own full node over ``rpc``, its own key) on
a loopback port the OS chooses, in its own process, and its agent uses that tracker as its only
one: k = 1 of the in-device tracker's key. The firmware server is still the one the record's
``file_link`` names (or ``servers``), reached directly.

The in-device tracker's key (design): made at provisioning (``provision_device(...,
intra_device=True)``, ``fwledger device init --intra-device``) in ``DIR/keys/tracker.key`` (mode
0600, next to the identity and class keys), and written into the trust anchors as their only
tracker with quorum 1 (relays kept). So the anchors say, as for any device, exactly which key
may attest headers and sign commands; running the tracker needs no change of trust at run time,
and a device not provisioned this way refuses to run one (``ConfigError``) rather than trusting
a key made on the spot. The tracker's data (index, inventory) lives in ``DIR/tracker``.

This module holds the device's side (the key, where the tracker's data lives); running the
tracker inside the device wires two entities together, so it lives above them, in
:mod:`entities.intra_device`.
"""

from __future__ import annotations

from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from ledger_node.errors import ConfigError
from ledger_node.fsutil import atomic_write_bytes

from .provision import KEYS_DIR
from .store import read_bounded

__all__ = ["TRACKER_DIR", "TRACKER_KEY", "create_tracker_key", "tracker_account"]

#: the in-device tracker's key, made at provisioning
TRACKER_KEY = Path(KEYS_DIR) / "tracker.key"
#: the in-device tracker's data folder (full node index, inventory)
TRACKER_DIR = Path("tracker")


def create_tracker_key(root: Path) -> LocalAccount:
    """Make the in-device tracker's key in ``DIR/keys/tracker.key`` (mode 0600); provisioning only.

    Raises:
        ConfigError: the file cannot be written.
    """
    account: LocalAccount = Account.create()
    try:
        atomic_write_bytes(Path(root) / TRACKER_KEY, (account.key.hex().removeprefix("0x") + "\n").encode(),
                           mode=0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write {Path(root) / TRACKER_KEY}: {exc}") from exc
    return account


def tracker_account(root: Path) -> LocalAccount:
    """The in-device tracker's key of a device provisioned for it.

    Raises:
        ConfigError: no such key (the device was not provisioned with --intra-device), or unusable.
    """
    path = Path(root) / TRACKER_KEY
    data = read_bounded(path, 4096)
    if data is None:
        raise ConfigError(f"{path} is missing: the device was not provisioned for an in-device tracker "
                          "(fwledger device init --intra-device)")
    try:
        account: LocalAccount = Account.from_key(bytes.fromhex(data.decode().strip().removeprefix("0x")))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path} is not a hex key") from exc
    return account
