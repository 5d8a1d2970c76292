"""The device agent (the status tracker's client module in the device): X.1368 clause 7 (P2-P5)
seen from the device, one pass at a time.

:meth:`Agent.check_and_update` is Figure 1 from the consumer's side, a short ordered list:

0. newer trust anchors first (:mod:`.anchors`): the statements newer than the device's serial
   that the trackers hold, each applied only if k current and k' new tracker keys signed it,
   before the anchors are used for anything else in the pass;
1. report status to every tracker: versions, active slots, readiness, the last result
   (heartbeat; C11.1.a.ii, a.iv, C11.2.b); results a tracker could not take earlier are posted;
2. the orders (P2, C11.2.c; R10.e.i: nothing more happens when nothing is needed):
   - the signed update commands the heartbeat answers carry (docs/MODULES.md sections 2-3):
     each verified by :func:`entities.protocol.commands.verify_command` (signed by a provisioned server
     module, for this device, chain and registry, not expired, never accepted before) and its
     id recorded in ``DIR/agent/commands.json`` *before* anything is done for it, so the same
     command can never act twice, not even after a crash or a restart;
   - else, with ``follow="plan"`` (the default), the tracker's plan: the upgrades it decided are
     needed, dependencies first, minus those the fleet's rollouts hold back (``held``: a halted
     rollout, a wave not open yet, a dependency held; docs/MODULES.md section 4), so waves and
     halts govern a plan-following device too; with ``follow="commands"`` nothing (the device
     acts on signed commands only);
3. for each upgrade:
   a. gather the evidence at one block attested by k of the n provisioned trackers,
   b. check what the chain proves about the release before downloading anything (R10.a.i),
   c. the bundle header and payload from a firmware server: the ones given (``servers``) first,
      then the one the record's ``file_link`` names (P3, P4),
   d. :meth:`.updater.Updater.update`: verify everything, install the inactive slot, prove the
      release's standing again from fresh evidence (:meth:`Agent.fresh_evidence`; it may have been
      revoked during the download), trial-boot, and prove it again before the confirm (P5;
      :mod:`.status`); an image staged at an earlier pass whose standing could not be proven then
      is booted the same way with no new download (:meth:`.updater.Updater.boot_staged`); the
      device takes such an image up again itself at a later pass unless the rollouts hold its
      release back (:mod:`.reproof`: its tracker sees it in trial and plans nothing for it),
   e. report the result with its code to the trackers (P5, R10.c.i); for a command, also its
      results (``POST /v1/devices/{id}/results``) to the module that delivered it, kept in the
      agent's state and posted at a later pass when that module cannot be reached.

A refused command installs nothing; its code (``command_*``) is in the pass report, in the
agent's command log and, as the device's last result, in the next heartbeat. (A command re-sent
by its tracker after the device acted on it, because the results did not reach it yet, is
refused as ``command_replayed`` too, but is not a failure: the kept results are posted.)

Whom the device trusts (``anchors.json``): answers signed by a server module (``trackers``) or
an intermediate module (``relays``); attestations and commands only by server modules. Behind a
single module (an intermediate, or with fewer URLs than the quorum k) the device gathers k of n
attestations of one block through ``GET /v1/attestations/{block}``.

Intra-device (D8.2.1): :mod:`.intra` runs a server-module tracker inside the device process;
its key is made at provisioning (``DIR/keys/tracker.key``) and is the anchors' only tracker.

:meth:`Agent.run` loops it. A tracker or server that cannot be reached ends the pass (or the
upgrade) with a coded error; the device keeps running what it runs, records the failure as the
component's last result when an upgrade was under way, and reports it at the next heartbeat.

The agent holds no trust logic: the evidence is judged by :mod:`.verify`, the bundle by the
updater, commands by :mod:`entities.protocol.commands`; :mod:`.client` does the I/O. Its own memory is
``DIR/agent/agent.json`` (:mod:`.memory`).

This module is the orchestrator: the pass, the run loop and the trials at start-up; each step's
work is in its own module, and :class:`Agent` names every step:

- :mod:`.settings`: :class:`AgentConfig` (URLs, location, transport, ``follow``);
- :mod:`.report`: :class:`PassReport`, :class:`UpgradeResult`;
- :mod:`.reporting`: steps 1-2, the heartbeat, its delivery, the plan;
- :mod:`.inbox`: step 2 with commands, judged, recorded, executed, their results posted;
- :mod:`.quorum`: 3a, the block k of n trackers attest, evidence at it, fresh evidence;
- :mod:`.upgrade`: 3a-d for one upgrade, pre-download checks, firmware servers, the updater;
- :mod:`.reproof`: trials at start-up and their confirms, staged images;
- :mod:`.memory`: the agent's memory (servers, vendors, command log, results kept).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from entities.protocol.commands import Command
from ledger_node.errors import ConfigError, FwledgerError
from ledger_node.record import Version

from . import inbox, quorum, reporting, reproof, upgrade
from .anchors import refresh_from_trackers
from .client import NetworkError, TrackerClient, Transport
from .device import BootOutcome, Device
from .errors import DeviceBusy, InstallError, UpdateDeclined, UpdateRefused
from .health import HealthCheck
from .memory import COMMAND_LOG_FILE, STATE_FILE, AgentMemory
from .provision import Provisioning, load_provisioning
from .quorum import Block
from .report import PassReport, UpgradeResult
from .server_client import ServerClient
from .settings import FOLLOW_MODES, AgentConfig
from .status import FreshEvidence
from .store import Probe
from .updater import UpdatePolicy, Updater
from .verify import Evidence

__all__ = ["COMMAND_LOG_FILE", "FOLLOW_MODES", "STATE_FILE", "Agent", "AgentConfig", "PassReport", "UpgradeResult"]


# ----------------------------------------------------------------------------- the agent


class Agent:
    """A provisioned device folder's agent (see the module docstring).

    Args:
        root: the device folder (``fwledger device init``).
        config: tracker and server URLs, location.
        health_check: decides trial boots (default: the device's provisioned health command).
        policy: when to install (default: the provisioned update policy, C11.1.a.vi).
        clock: seconds since the epoch (header age, maintenance window).
        transport: one HTTP transport for every party (default: an HTTP connection pool each).
        probe: passed to the :class:`.device.Device` each pass opens (told the label of every
            durable step; the demo stops an install there to model a power cut).

    Raises:
        NotADevice, ConfigError: the folder is not a provisioned device, or a bad setting.
    """

    def __init__(self, root: Path, config: AgentConfig, *, health_check: HealthCheck | None = None,
                 policy: UpdatePolicy | None = None, clock: Callable[[], float] = time.time,
                 transport: Transport | None = None, probe: Probe | None = None) -> None:
        self.root = Path(root)
        self.prov: Provisioning = load_provisioning(self.root)
        net = config.net
        if net.tls_ca is None and self.prov.tls_ca is not None:  # the CA pinned at provisioning
            net = dataclasses.replace(net, tls_ca=str(self.prov.tls_ca))
        if net.tls_cert is None and self.prov.tls_cert is not None and self.prov.tls_key is not None:
            net = dataclasses.replace(net, tls_cert=str(self.prov.tls_cert), tls_key=str(self.prov.tls_key))
        self.config = dataclasses.replace(config, net=net).validate()
        self.health_check = health_check
        self.policy = policy
        self.clock = clock
        self._transport = transport
        self._probe = probe
        self.trackers = self._tracker_clients()
        self.memory = AgentMemory(self.root, clock)
        self._servers: dict[str, ServerClient] = {}

    def _tracker_clients(self) -> list[TrackerClient]:
        """One client per tracker URL, trusting the answers of the anchors' trackers and relays."""
        return [TrackerClient(u, self.prov.identity, self.prov.anchors.trackers, relays=self.prov.anchors.relays,
                              transport=self._transport, config=self.config.net) for u in self.config.trackers]

    def close(self) -> None:
        """Close the connections (the transport given to the constructor is the caller's)."""
        if self._transport is None:
            for t in self.trackers:
                t.close()
            for s in self._servers.values():
                s.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ================================================================ X.1368 clause 7, P2-P5

    def check_and_update(self, *, release: bytes | None = None) -> PassReport:
        """One pass of clause 7 from the device (the module docstring's list).

        ``release``: install this published release (its header hash) instead of the tracker's
        plan or commands, as a device administrator may ask (T9.c); it is verified exactly the
        same way.

        Raises:
            NetworkError: no tracker could be reached or gave a plan (nothing changed on the device).
            DeviceBusy: another process has the device open.
            DeviceStorageError, NotADevice, ConfigError: the device folder (or its command log) is unusable.
        """
        started = time.monotonic()
        anchors = self.refresh_anchors()                                # 0. newer trust anchors, verified
        with self._updater() as up:
            report = PassReport(up.device.info.device_id, up.device.info.hardware, anchors=anchors)
            live = self.report_status(up, report)                       # 1. C11.1.a.ii, a.iv
            if self.confirm_trials(up, report, live):                   #    booted, reached its tracker, re-proven
                self.report_status(up, report, live, final=True)
            self.post_pending(live, report)                             #    results kept from earlier passes
            if release is not None:                                     # 2. an administrator's release
                self.run_upgrades(up, live, report, [{"header_hash": "0x" + release.hex()}], {})
            elif report.inbox:                                          # 2. P2: the server module's orders
                for origin, envelope in report.inbox:
                    cmd = self.receive(origin, envelope, report)        #    verified, recorded before acting
                    if cmd is not None:
                        self.execute(up, live, report, origin, cmd)     # 3. P3-P5, then its results
                if report.refusals:
                    self.report_status(up, report, live, final=True)    #    the refusal, at once
            elif self.config.follow == "plan":
                upgrades, groups = self.ask_plan(live, report)          # 2. P2 (dependencies first)
                self.run_upgrades(up, live, report, upgrades, groups)   # 3. P3-P5
            staged = reproof.staged_upgrades(up, [r.header_hash for r in report.results], report.held)
            self.run_upgrades(up, live, report, staged, {})             # 3. images staged at an earlier pass
        report.seconds = time.monotonic() - started
        installed = [r.installed_at for r in report.results if r.installed_at is not None]
        report.installed_seconds = max(installed) - started if installed else None
        return report

    def run_upgrades(self, up: Updater, live: Sequence[TrackerClient], report: PassReport,
                     upgrades: Sequence[Mapping[str, Any]], groups: Mapping[str, list[str]], *,
                     at_least: int | None = None) -> list[UpgradeResult]:
        """Step 3 for ``upgrades`` (dependencies first), one by one; each result is appended to
        ``report`` and reported in a heartbeat (R10.c.i). ``at_least``: the block the evidence is
        proven at is not older than this one (a command's block). Returns these upgrades' results."""
        together = upgrade.group_versions(self.prov, upgrades, groups)
        block: Block | None = None
        done: list[UpgradeResult] = []
        for item in upgrades:
            result = upgrade.result_of(self.prov, item)
            try:
                block = block or self.attested_block(live, report, at_least=at_least)  # a. k of n attest one block
                hw = upgrade.class_for(self.prov, up, result.component)  # a board's policy for a board's component
                ev = self.gather_evidence(block, result, hw)
                board_hw = upgrade.class_for(self.prov, up, result.component)  # the record named its component
                if board_hw != hw:  # named by hash only: it runs on a board
                    ev = self.gather_evidence(block, result, board_hw)
                self.precheck(ev, up, result.component)                          # b. before any download
                self.install(up, ev, result, together.get(result.product, {}),   # c, d. P3-P5
                             fresh=self.fresh_evidence(live, block))
            except (NetworkError, UpdateRefused, UpdateDeclined, InstallError, ConfigError) as exc:
                if isinstance(exc, UpdateRefused):  # its standing changed: a staged image of it is dropped
                    reproof.drop_staged(up, result.component, result.header_hash, exc)
                upgrade.record_failed(up, result, exc)
            report.results.append(result)
            done.append(result)
            self.report_status(up, report, live, final=True)            # e. R10.c.i
        return done

    def run(self, interval: float, stop: threading.Event, *, passes: int | None = None,
            on_pass: Callable[[PassReport | FwledgerError], None] | None = None,
            on_boot: Callable[[BootOutcome], None] | None = None) -> int:
        """Run :meth:`check_and_update` every ``interval`` seconds until ``stop`` is set (or ``passes``
        passes were made). An unreachable tracker, or another process holding the device, ends
        only that pass: the device keeps running and the next pass tries again. Returns the
        number of passes made. Starting counts as a power-on for images on trial
        (:meth:`boot_trials`, each outcome to ``on_boot``).

        Raises:
            DeviceStorageError, NotADevice, ConfigError: the device folder is unusable.
        """
        self.boot_trials(on_boot)
        done = 0
        while not stop.is_set():
            outcome: PassReport | FwledgerError
            try:
                outcome = self.check_and_update()
            except (NetworkError, DeviceBusy) as exc:
                outcome = exc
            done += 1
            if on_pass is not None:
                on_pass(outcome)
            if passes is not None and done >= passes:
                break
            stop.wait(interval)
        return done

    # ================================================================ trials (entities/firmware_consumer/health.py)

    def boot_trials(self, on_boot: Callable[[BootOutcome], None] | None = None) -> list[BootOutcome]:
        """The agent starting is a power-on of every component whose image runs its trial: one
        more trial boot each (its health check, if the device has one), its standing proven again
        before a confirm, reverted once ``max_boot_attempts`` boots passed without a confirmation
        (R10.c.ii). A staged image waits for a pass (:mod:`.reproof`).

        Raises:
            DeviceBusy, DeviceStorageError: the device folder is in use or unusable.
        """
        with self._updater() as up:
            return reproof.boot_trials(up, self.fresh_evidence(self.trackers), on_boot)

    def confirm_trials(self, up: Updater, report: PassReport, live: Sequence[TrackerClient]) -> list[str]:
        """A device without a health check confirms an image running on trial once the agent,
        running it, has completed a verified round trip with a tracker (this pass's heartbeat:
        an answer signed by a provisioned module): "booted and reached its tracker", and its
        release's standing is proven again from fresh evidence (:func:`.reproof.confirm_trials`):
        a changed standing reverts it (``revoked``...), no verdict leaves it on trial for the next
        pass. Returns the components whose trial ended (confirmed ones also in ``report.confirmed``,
        reverted ones in ``report.reverted``)."""
        return reproof.confirm_trials(up, self.fresh_evidence(live), report.confirmed, report.reverted)

    # ================================================================ the steps

    def refresh_anchors(self) -> dict[str, Any]:
        """Step 0: apply the anchors statements the trackers hold that are newer than the device's
        (:func:`.anchors.refresh_from_trackers`); after a rotation the provisioning is read again
        and the tracker clients trust the new keys only.

        Raises:
            DeviceBusy, NotADevice, ConfigError, DeviceStorageError: the device folder is unusable.
        """
        outcome = refresh_from_trackers(self.root, self.trackers, probe=self._probe)
        if outcome["applied"]:
            self.prov = load_provisioning(self.root)
            old, self.trackers = self.trackers, self._tracker_clients()
            if self._transport is None:
                for t in old:
                    t.close()
        return outcome

    def report_status(self, up: Updater, report: PassReport, trackers: Sequence[TrackerClient] | None = None, *,
                      final: bool = False) -> list[TrackerClient]:
        """Step 1: the heartbeat to each tracker (all of them, or ``trackers``); returns those that
        answered (:func:`.reporting.report_status`).

        Raises:
            NetworkError: none answered (only when not ``final``: a final report is best effort).
        """
        return reporting.report_status(self.trackers if trackers is None else trackers, self.status(up), up, report,
                                       final=final)

    def status(self, up: Updater) -> dict[str, Any]:
        """The heartbeat's body (:func:`.reporting.heartbeat_body`; C11.1.a.ii, a.iv; C11.2.b i-iii)."""
        return reporting.heartbeat_body(up, self.memory.read(), self.prov, self.config.location, self.clock)

    def ask_plan(self, live: Sequence[TrackerClient], report: PassReport
                 ) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
        """Step 2, P2: the plan of the first tracker that answers (:func:`.reporting.ask_plan`).

        Raises:
            NetworkError: no tracker gave a plan.
        """
        return reporting.ask_plan(live, report)

    def attested_block(self, live: Sequence[TrackerClient], report: PassReport, *,
                       at_least: int | None = None) -> Block:
        """3a: the newest block k distinct provisioned trackers attest (not older than
        ``at_least``), its number in ``report.block`` (:func:`.quorum.attested_block`).

        Raises:
            UpdateRefused (``quorum_not_met``), TrackerUnreachable.
        """
        block = quorum.attested_block(self.prov.anchors, live, at_least=at_least)
        report.block = block.number
        return block

    def gather_evidence(self, block: Block, result: UpgradeResult, hardware: str) -> Evidence:
        """3a: one release's evidence at the pass's block (:func:`.upgrade.gather_evidence`).

        Raises:
            NetworkError, UpdateRefused (``bad_evidence``).
        """
        return upgrade.gather_evidence(self.prov, block, result, hardware)

    def fresh_evidence(self, live: Sequence[TrackerClient], block: Block | None = None) -> FreshEvidence:
        """Where the updater takes fresh evidence of a release from, to prove its standing again
        before a trial boot and a confirm (:func:`.quorum.fresh_evidence`)."""
        return quorum.fresh_evidence(self.prov.anchors, live, block)

    def precheck(self, ev: Evidence, up: Updater, component: str | None = None) -> None:
        """3b: what the chain proves, judged before a byte is downloaded (:func:`.upgrade.precheck`).

        Raises:
            UpdateRefused: the first check that fails.
        """
        upgrade.precheck(self.prov, up, ev, component, self.clock())

    def install(self, up: Updater, ev: Evidence, result: UpgradeResult, planned: Mapping[str, Version], *,
                fresh: FreshEvidence | None = None) -> None:
        """3c-d: header and payload from a firmware server, then the updater (:func:`.upgrade.install`).

        Raises:
            NetworkError, UpdateRefused, UpdateDeclined, InstallError, ConfigError.
        """
        upgrade.install(self, up, ev, result, planned, fresh=fresh)

    # ================================================================ commands (docs/MODULES.md 2-3)

    def receive(self, origin: TrackerClient, envelope: Any, report: PassReport) -> Command | None:
        """Judge one command a heartbeat answer carried, its id recorded before it is returned; None
        if refused (:func:`.inbox.receive`).

        Raises:
            ConfigError: the command log cannot be read or written (nothing is acted on).
        """
        return inbox.receive(self, origin, envelope, report)

    def execute(self, up: Updater, live: Sequence[TrackerClient], report: PassReport, origin: TrackerClient,
                cmd: Command) -> None:
        """Run an accepted command's upgrades, then post their results (:func:`.inbox.execute`)."""
        inbox.execute(self, up, live, report, origin, cmd)

    def post_pending(self, live: Sequence[TrackerClient], report: PassReport) -> None:
        """Post the command results kept from earlier passes (:func:`.inbox.post_pending`)."""
        inbox.post_pending(self.memory, self.trackers, live, report)

    # ================================================================ helpers

    @contextlib.contextmanager
    def _updater(self) -> Iterator[Updater]:
        with Device(self.root, health_check=self.health_check, probe=self._probe) as dev:
            yield Updater.from_provisioning(dev, self.prov, policy=self.policy, clock=self.clock)

    def server(self, url: str) -> ServerClient:
        """The client of the firmware server at ``url`` (one per URL, kept open)."""
        if url not in self._servers:
            self._servers[url] = ServerClient(url, self.prov.identity, transport=self._transport,
                                              config=self.config.net)
        return self._servers[url]
