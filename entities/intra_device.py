"""The intra-device deployment wired up (X.1368 D8.2.1, docs/MODULES.md section 7): the status
tracker's server module running inside the device's process, its agent's only tracker.

It joins two entities (the firmware consumer and the status tracker), so it sits above both,
beside :mod:`entities.stack`; neither entity imports the other. The device's side (the in-device
tracker's key, made at provisioning, and its data folder) is in
:mod:`entities.firmware_consumer.intra`.

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

from eth_utils import to_checksum_address

from entities.firmware_consumer.agent import Agent, AgentConfig, PassReport
from entities.firmware_consumer.client import NetConfig
from entities.firmware_consumer.health import HealthCheck
from entities.firmware_consumer.intra import TRACKER_DIR, TRACKER_KEY, tracker_account
from entities.firmware_consumer.provision import load_provisioning
from entities.firmware_consumer.updater import UpdatePolicy
from entities.status_tracker.app import TrackerThread, create_app
from entities.status_tracker.config import TrackerConfig
from entities.status_tracker.daemon import Tracker
from ledger_node.errors import ChainError, ConfigError, FwledgerError

if TYPE_CHECKING:
    from web3 import Web3

    from ledger_node.registry import Deployment

__all__ = ["intra_tracker", "run_intra_device"]


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
    """The device agent loop (:meth:`entities.firmware_consumer.agent.Agent.run`) against the device's own tracker
    (:func:`intra_tracker`); ``on_start`` gets the tracker's URL once it serves. Returns the
    number of passes made.

    Raises:
        ConfigError, NotADevice, ChainError: as :func:`intra_tracker` and the device's
            :class:`~entities.firmware_consumer.agent.Agent`.
        DeviceStorageError: the device folder is unusable.
    """
    with intra_tracker(root, w3, deployment, poll_interval=poll_interval, confirmations=confirmations) as url:
        if on_start is not None:
            on_start(url)
        config = AgentConfig(trackers=(url,), servers=servers, location=location, follow=follow,
                             net=net or NetConfig())
        with Agent(root, config, health_check=health_check, policy=policy, clock=clock) as agent:
            return agent.run(interval, stop, passes=passes, on_pass=on_pass)
