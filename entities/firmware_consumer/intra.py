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

:func:`intra_tracker` is the building block (a context manager yielding the tracker's URL);
:func:`run_intra_device` runs the agent loop against it (``fwledger device run --intra-device``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

from ledger_node.errors import ChainError, ConfigError, FwledgerError
from ledger_node.fsutil import atomic_write_bytes

from .agent import Agent, AgentConfig, PassReport
from .client import NetConfig
from .health import HealthCheck
from .provision import KEYS_DIR, load_provisioning
from .store import read_bounded
from .updater import UpdatePolicy

if TYPE_CHECKING:
    from web3 import Web3

    from ledger_node.registry import Deployment

__all__ = ["TRACKER_DIR", "TRACKER_KEY", "create_tracker_key", "intra_tracker", "run_intra_device",
           "tracker_account"]

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


@contextlib.contextmanager
def intra_tracker(root: Path, w3: Web3, deployment: Deployment, *, poll_interval: float = 1.0,
                  confirmations: int = 0, batch_blocks: int = 500,
                  logger: logging.Logger | None = None) -> Iterator[str]:
    """Run the device's server-module tracker on ``127.0.0.1`` (a port the OS picks) in threads of
    this process; yields its base URL, stops it on exit. It syncs once before it is served.

    Raises:
        ConfigError: the device has no in-device tracker key, its anchors do not trust that key,
            the deployment is not the anchors' registry, or the tracker could not start.
        NotADevice: the folder is not a provisioned device.
        ChainError, IndexCorruption: as the tracker's full node.
    """
    from entities.status_tracker.app import TrackerThread, create_app
    from entities.status_tracker.config import TrackerConfig
    from entities.status_tracker.daemon import Tracker

    root = Path(root)
    anchors = load_provisioning(root).anchors
    account = tracker_account(root)
    if to_checksum_address(account.address) not in anchors.trackers:
        raise ConfigError(f"the device's anchors do not trust its in-device tracker key {account.address}")
    if (int(deployment.chain_id), to_checksum_address(deployment.address)) != (anchors.chain_id, anchors.registry):
        raise ConfigError(f"the deployment record (chain {deployment.chain_id}, registry {deployment.address}) is "
                          f"not the device's registry (chain {anchors.chain_id}, {anchors.registry})")
    # a fleet of one: a single wave (no canary to wait for); it serves only this device, on
    # loopback inside the device's process, so there is nobody to admit ("open")
    config = TrackerConfig(data_dir=(root / TRACKER_DIR).absolute(), admission="open",
                           identity_file=(root / TRACKER_KEY).absolute(), poll_interval=poll_interval,
                           waves=(1.0,)).validate()
    tracker = Tracker(config, w3, deployment, confirmations=confirmations, batch_blocks=batch_blocks,
                      logger=logger or logging.getLogger("fwledger.device.tracker"))
    try:
        with contextlib.suppress(ChainError):  # an unreachable node now: the follower retries
            tracker.cycle()
        thread = TrackerThread(create_app(tracker), host="127.0.0.1", port=0).start()
    except BaseException:
        tracker.close()
        raise
    try:
        yield thread.url
    finally:
        thread.stop()


def run_intra_device(root: Path, w3: Web3, deployment: Deployment, interval: float, stop: threading.Event, *,
                     passes: int | None = None, on_pass: Callable[[PassReport | FwledgerError], None] | None = None,
                     servers: tuple[str, ...] = (), location: str | None = None, follow: str = "plan",
                     net: NetConfig | None = None, health_check: HealthCheck | None = None,
                     policy: UpdatePolicy | None = None, clock: Callable[[], float] = time.time,
                     poll_interval: float = 1.0, confirmations: int = 0,
                     on_start: Callable[[str], None] | None = None) -> int:
    """The device agent loop (:meth:`.agent.Agent.run`) against the device's own tracker
    (:func:`intra_tracker`); ``on_start`` gets the tracker's URL once it serves. Returns the
    number of passes made.

    Raises:
        ConfigError, NotADevice, ChainError: as :func:`intra_tracker` and :class:`.agent.Agent`.
        DeviceStorageError: the device folder is unusable.
    """
    with intra_tracker(root, w3, deployment, poll_interval=poll_interval, confirmations=confirmations) as url:
        if on_start is not None:
            on_start(url)
        config = AgentConfig(trackers=(url,), servers=servers, location=location, follow=follow,
                             net=net or NetConfig())
        with Agent(root, config, health_check=health_check, policy=policy, clock=clock) as agent:
            return agent.run(interval, stop, passes=passes, on_pass=on_pass)
