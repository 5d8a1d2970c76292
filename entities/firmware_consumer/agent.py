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
``DIR/agent/agent.json`` (written atomically): the firmware servers it registered with, the
vendor of each component it installed (the heartbeat names the vendor of every component), the
command log (accepted, refused, done, reported: the last 200 events), the last refused command,
and the command results not yet taken by their tracker. ``DIR/agent/commands.json`` holds the
accepted command ids (:class:`entities.protocol.commands.CommandLog`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

from entities.bundle import BundleHeader
from entities.protocol.commands import Command, CommandError, CommandLog, verify_command
from entities.protocol.heartbeat import NEEDS_SAFE_MODE, addons_entry, component_entry
from ledger_node.attestation import Attestation, attestation_signer
from ledger_node.errors import ConfigError, FwledgerError
from ledger_node.record import Version

from . import reproof
from .anchors import refresh_from_trackers
from .client import (
    NetConfig,
    NetworkError,
    ServerClient,
    ServerRefused,
    TrackerClient,
    TrackerRefused,
    TrackerUnreachable,
    Transport,
    base_url,
    server_from_link,
    url_refusal,
)
from .device import BootOutcome, Device
from .errors import DeviceBusy, DeviceStorageError, InstallError, UpdateDeclined, UpdateRefused
from .factory import wire_state
from .health import HealthCheck
from .provision import Provisioning, load_provisioning
from .status import FreshEvidence
from .store import Probe, atomic_write, make_folder, read_bounded
from .updater import UpdatePolicy, Updater, UpdateReport
from .verify import Evidence, check_hardware, check_release

__all__ = ["COMMAND_LOG_FILE", "FOLLOW_MODES", "STATE_FILE", "Agent", "AgentConfig", "PassReport", "UpgradeResult"]

#: the agent's own memory in the device folder
STATE_FILE = Path("agent") / "agent.json"
#: the ids of the commands the device accepted (entities.protocol.commands.CommandLog)
COMMAND_LOG_FILE = Path("agent") / "commands.json"
#: what the agent acts on: "plan" (commands when the heartbeat carries some, else the plan), "commands" (only them)
FOLLOW_MODES = ("plan", "commands")
_LOCATION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_MAX_ATTESTATIONS = 64
_MAX_CANDIDATE_BLOCKS = 4
#: codes of a tracker that answered "not now" (a module not synced, busy): it could not be asked
_NOT_NOW = frozenset({"unavailable", "not_synced", "block_not_synced"})
_LOG_KEEP = 200
_PENDING_KEEP = 32


@dataclass(frozen=True)
class AgentConfig:
    """Where the device's parties are: tracker URLs (the tracker keys and quorum k come from the
    device's provisioned anchors), firmware server URLs tried before the record's ``file_link``,
    the location label the device declares to servers (C11.3.h) and trackers, and what the agent
    acts on (``follow``: see :data:`FOLLOW_MODES` and the module docstring)."""

    trackers: tuple[str, ...]
    servers: tuple[str, ...] = ()
    location: str | None = None
    net: NetConfig = field(default_factory=NetConfig)
    follow: str = "plan"

    def validate(self) -> AgentConfig:
        """The same settings with URLs normalised.

        Raises:
            ConfigError: no tracker, a bad URL or a bad location label.
        """
        if not self.trackers:
            raise ConfigError("the device agent needs at least one tracker URL (--tracker)")
        try:
            trackers = tuple(dict.fromkeys(base_url(u, "tracker") for u in self.trackers))
            servers = tuple(dict.fromkeys(base_url(u, "firmware server") for u in self.servers))
        except NetworkError as exc:
            raise ConfigError(str(exc)) from exc
        for url in (*trackers, *servers):
            refusal = url_refusal(url, self.net)
            if refusal is not None:
                raise ConfigError(refusal)
        if self.location is not None and not _LOCATION_RE.match(self.location):
            raise ConfigError(f"bad location {self.location!r}: letters, digits, '.', '_', '-' (at most 64)")
        if self.follow not in FOLLOW_MODES:
            raise ConfigError(f"follow must be one of {', '.join(FOLLOW_MODES)}, not {self.follow!r}")
        return dataclasses.replace(self, trackers=trackers, servers=servers)


# ----------------------------------------------------------------------------- results


@dataclass
class UpgradeResult:
    """What became of one planned upgrade."""

    product: str
    vendor: str
    version: str
    header_hash: str
    component: str | None = None
    ok: bool = False
    outcome: str = "failed"
    code: str | None = None
    message: str = ""
    download: dict[str, Any] | None = None
    report: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"product": self.product, "vendor": self.vendor, "version": self.version,
                "header_hash": self.header_hash, "component": self.component, "ok": self.ok,
                "outcome": self.outcome, "code": self.code, "message": self.message, "download": self.download,
                "report": self.report}


@dataclass
class PassReport:
    """One pass of :meth:`Agent.check_and_update`."""

    device_id: str
    hardware: str
    trackers: list[dict[str, Any]] = field(default_factory=list)
    plan: list[dict[str, Any]] = field(default_factory=list)
    #: upgrades of the tracker's plan its rollouts hold back now (not run): product, to_version, header_hash, reason...
    held: list[dict[str, Any]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    block: int | None = None
    results: list[UpgradeResult] = field(default_factory=list)
    outdated: bool | None = None
    seconds: float = 0.0
    #: one entry per command received: command_id, tracker, accepted, code, message, rollout, wave, block
    commands: list[dict[str, Any]] = field(default_factory=list)
    #: command results posted this pass (or kept for later): command_id, tracker, ok, code
    posted: list[dict[str, Any]] = field(default_factory=list)
    #: step 0, trust anchors: serial, applied, refused, unreachable (:func:`.anchors.refresh_from_trackers`)
    anchors: dict[str, Any] | None = None
    #: components whose trial this pass confirmed (no health check: booted and reached its tracker)
    confirmed: list[str] = field(default_factory=list)
    #: trials this pass reverted before their confirm, their release's standing changed: component, version, code...
    reverted: list[dict[str, Any]] = field(default_factory=list)
    #: at the pass's start, each component whose last update failed: component, product, version, code, message
    last_failures: list[dict[str, Any]] = field(default_factory=list)
    #: the commands the heartbeat answers carried, with the tracker that delivered each (not reported)
    inbox: list[tuple[TrackerClient, Any]] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        """Every upgrade was installed and no command was refused (nothing to do is ok)."""
        return all(r.ok for r in self.results) and not self.refusals

    @property
    def failures(self) -> list[UpgradeResult]:
        return [r for r in self.results if not r.ok]

    @property
    def refusals(self) -> list[dict[str, Any]]:
        """The commands refused this pass (a re-sent command already acted on is not one)."""
        return [c for c in self.commands if not c["accepted"] and not c.get("resent")]

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "device": self.device_id, "hardware": self.hardware, "trackers": self.trackers,
                "block": self.block, "plan": self.plan, "held": self.held, "reasons": self.reasons,
                "results": [r.to_json() for r in self.results], "outdated": self.outdated,
                "commands": self.commands, "posted": self.posted, "anchors": self.anchors,
                "confirmed": self.confirmed, "reverted": self.reverted, "last_failures": self.last_failures,
                "seconds": round(self.seconds, 3)}


@dataclass
class _Block:
    """The block of this pass: its number, the tracker serving evidence, every attestation of it."""

    number: int
    source: TrackerClient
    attestations: tuple[Attestation, ...]


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
        return report

    def run_upgrades(self, up: Updater, live: Sequence[TrackerClient], report: PassReport,
                     upgrades: Sequence[Mapping[str, Any]], groups: Mapping[str, list[str]], *,
                     at_least: int | None = None) -> list[UpgradeResult]:
        """Step 3 for ``upgrades`` (dependencies first), one by one; each result is appended to
        ``report`` and reported in a heartbeat (R10.c.i). ``at_least``: the block the evidence is
        proven at is not older than this one (a command's block). Returns these upgrades' results."""
        together = self._group_versions(upgrades, groups)
        block: _Block | None = None
        done: list[UpgradeResult] = []
        for upgrade in upgrades:
            result = self._result_of(upgrade)
            try:
                block = block or self.attested_block(live, report, at_least=at_least)  # a. k of n attest one block
                hw = self._class_for(up, result.component)  # a board's policy for a board's component
                ev = self.gather_evidence(block, result, hw)
                if self._class_for(up, result.component) != hw:  # named by hash only: it runs on a board
                    ev = self.gather_evidence(block, result, self._class_for(up, result.component))
                self.precheck(ev, up, result.component)                          # b. before any download
                self.install(up, ev, result, together.get(result.product, {}),   # c, d. P3-P5
                             fresh=self.fresh_evidence(live, block))
            except (NetworkError, UpdateRefused, UpdateDeclined, InstallError, ConfigError) as exc:
                if isinstance(exc, UpdateRefused):  # its standing changed: a staged image of it is dropped
                    reproof.drop_staged(up, result.component, result.header_hash, exc)
                self._failed(up, result, exc)
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
        """Heartbeat to each tracker (all of them, or ``trackers``); returns those that answered.

        Raises:
            NetworkError: none answered (only when not ``final``: a final report is best effort).
        """
        body = self.status(up)
        if not final:
            report.last_failures = [
                {"component": c.name, "product": c.product, "version": r.version, "code": r.code,
                 "message": " ".join(r.message.split())[:256]}
                for c in up.facts().components if (r := up.device.state(c.name).last_result) is not None
                and not r.ok and r.op == "update"]
        live: list[TrackerClient] = []
        errors: list[NetworkError] = []
        for t in self.trackers if trackers is None else trackers:
            entry: dict[str, Any] = {"url": t.url, "address": t.address, "ok": False, "error": None}
            try:
                answer = t.heartbeat(body)
                entry.update(ok=True, address=t.address)
                report.outdated = bool(answer.get("outdated")) if answer.get("outdated") is not None else None
                live.append(t)
                if not final:  # a final report's answer may repeat them: they are taken at the next pass
                    report.inbox.extend((t, envelope) for envelope in answer["commands"])
            except NetworkError as exc:
                errors.append(exc)
                entry["error"] = {"code": exc.code, "message": str(exc)}
            if not final:
                report.trackers.append(entry)
        if not live and errors and not final:
            raise errors[0]
        return live

    def status(self, up: Updater) -> dict[str, Any]:
        """The heartbeat: components (by product: vendor, version, active slot, state), readiness,
        the newest last result of any component (C11.1.a.ii, a.iv; C11.2.b i-iii).

        Every component whose vendor the device knows (pinned by provisioning, or installed by
        this agent) is listed, with its state (``entities.protocol.heartbeat``): ``empty`` (no firmware,
        version null), ``unverified`` (an unverified factory image), ``trial`` or ``confirmed``; a
        component in safe mode says it needs an update (``"needs": "safe_mode"``, C11.1.a.iv) and
        keeps the device ready (for a recovery install). ``addons`` maps each add-on board to the
        products of the listed components running on it (Appendix II).
        """
        dev = up.device
        vendors = self._state().get("vendors", {})
        comps: dict[str, dict[str, Any]] = {}
        boards: dict[str, str] = {}
        busy = False
        last: tuple[float, str, Any] | None = None
        for c in up.facts().components:
            st = dev.state(c.name)
            busy = busy or st.trial is not None  # safe mode is ready: for a recovery install (C11.1.b)
            if st.last_result is not None and (last is None or st.last_result.at >= last[0]):
                last = (st.last_result.at, c.name, st.last_result)
            vendor = c.vendor or vendors.get(c.name)
            if not vendor or c.product in comps:
                continue
            state, version, trial = wire_state(st)
            comps[c.product] = component_entry(vendor, version, st.active or st.confirmed, state, trial,
                                               NEEDS_SAFE_MODE if st.safe_mode else None)  # C11.1.a.iv
            if c.board is not None:
                boards[c.product] = c.board
        last_result = None
        if last is not None:
            _, name, r = last
            last_result = {"ok": r.ok, "code": r.code, "message": r.message[:256] or None, "component": name,
                           "version": r.version, "at": r.at}
        refused = self._state().get("last_refusal")
        if isinstance(refused, dict) and isinstance(refused.get("at"), (int, float)) \
                and (last_result is None or refused["at"] >= last_result["at"]):
            last_result = {"ok": False, "code": str(refused.get("code")), "message": refused.get("message") or None,
                           "component": None, "version": None, "at": refused["at"]}
        out = {"device_id": dev.info.device_id, "hardware": dev.info.hardware, "addons": addons_entry(boards, comps),
               "location": self.config.location, "components": comps,
               "ready": not busy and up.policy.in_window(self.clock()), "last_result": last_result}
        if self.prov.certificate is not None:  # admission by manufacture certificate (entities/admission.py)
            out["certificate"] = self.prov.certificate
        return out

    def ask_plan(self, live: Sequence[TrackerClient], report: PassReport
                 ) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
        """P2: the first tracker that answers gives the plan. Returns its upgrades (dependencies
        first) but those its rollouts hold back, and, per product, the other products of its
        install group (a dependency cycle).

        Raises:
            NetworkError: no tracker gave a plan.
        """
        first: NetworkError | None = None
        for t in live:
            try:
                answer = t.plan(report.device_id)
            except NetworkError as exc:
                first = first or exc
                continue
            plan = answer["plan"]
            report.held = [dict(h) for h in answer["held"]]
            held = {h["header_hash"].lower() for h in report.held}
            report.plan = [dict(u) for u in plan["upgrades"] if u["header_hash"].lower() not in held]
            report.reasons = [str(r) for r in answer.get("reasons", []) if isinstance(r, str)]
            if answer.get("outdated") is not None:
                report.outdated = bool(answer["outdated"])
            groups: dict[str, list[str]] = {}
            for g in plan.get("groups", []) or []:
                if isinstance(g, list):
                    for p in g:
                        groups[str(p)] = [str(q) for q in g if q != p]
            return report.plan, groups
        assert first is not None
        raise first

    def attested_block(self, live: Sequence[TrackerClient], report: PassReport, *,
                       at_least: int | None = None) -> _Block:
        """The block this pass proves releases at (3a): the newest one that k distinct provisioned
        server modules attest (not older than ``at_least``), with every attestation of it found.

        Each reachable module is asked for its newest attestation; an attestation counts for the
        key that signed it (an intermediate hands on its upstream's), and only for a key in
        ``anchors.trackers``. When fewer than k keys attest a candidate block that way (a device
        behind one intermediate, or given fewer URLs than k), ``GET /v1/attestations/{block}``
        gathers the attestations the modules know of it.

        Raises:
            UpdateRefused: ``quorum_not_met`` (no block is attested by k distinct trackers, every
                module asked answered).
            TrackerUnreachable: no block was found and a module could not be asked (no answer,
                or "not now"): the update could not be tried now, it did not fail (its code is
                that module's: ``tracker_unreachable``, ``block_not_synced``...).
        """
        k = self.prov.anchors.quorum
        attesters = set(self.prov.anchors.trackers)
        heads: dict[str, tuple[TrackerClient, Attestation]] = {}
        missed: list[NetworkError] = []
        for t in live:
            try:
                _, att = t.attestation()
            except NetworkError as exc:
                missed.append(exc)
                continue
            who = attestation_signer(att)
            if who in attesters and who not in heads:
                heads[who] = (t, att)
        numbers = sorted({a.block_number for _, a in heads.values()
                          if at_least is None or a.block_number >= at_least}, reverse=True)
        if len(heads) >= k:  # the newest block k of them have indexed first
            kth = sorted((a.block_number for _, a in heads.values()), reverse=True)[k - 1]
            numbers = [kth, *[n for n in numbers if n != kth]] if at_least is None or kth >= at_least else numbers
        candidates = numbers[:_MAX_CANDIDATE_BLOCKS]
        if at_least is not None and at_least not in candidates:
            # an intermediate's head may lag the block the server module issued the command at (it asks
            # its upstream's head at most once per poll interval, per level): ask for that block itself
            candidates.append(at_least)
        for number in candidates:
            found = self._attestations_of(number, live, heads, k, missed)
            if found is not None:
                report.block = number
                return found
        newest = max((a.block_number for _, a in heads.values()), default=None)
        floor = f" at or after block {at_least} (the command's)" if at_least is not None else ""
        why = (f"{len(heads)} distinct provisioned tracker(s) answered"
               + (f" (newest block {newest})" if newest is not None else "")
               + f"; the device needs attestations of one block{floor} from {k}")
        down = [e for e in missed if isinstance(e, TrackerUnreachable)
                or (isinstance(e, TrackerRefused) and (e.status is None or e.status >= 500 or e.code in _NOT_NOW))]
        if down:  # a module that did not answer now: try later, this is no failure of the update
            raise TrackerUnreachable(f"{down[0]}; {why}", url=down[0].url, code=down[0].code, status=down[0].status)
        raise UpdateRefused("quorum_not_met", why)

    def _attestations_of(self, number: int, live: Sequence[TrackerClient],
                         heads: Mapping[str, tuple[TrackerClient, Attestation]], k: int,
                         missed: list[NetworkError]) -> _Block | None:
        """Block ``number`` with at least k distinct provisioned attesters, or None (the modules
        that could not be asked are added to ``missed``)."""
        attesters = set(self.prov.anchors.trackers)
        atts: dict[str, Attestation] = {}
        source: TrackerClient | None = None
        for who, (t, att) in heads.items():
            if att.block_number < number:
                continue
            if att.block_number != number:
                try:
                    _, att = t.attestation(number)
                except NetworkError as exc:
                    missed.append(exc)
                    continue
            if attestation_signer(att) == who:
                atts[who] = att
                source = source or t
        if len(atts) < k:
            for t in live:
                try:
                    _, more = t.attestations(number)
                except NetworkError as exc:
                    missed.append(exc)
                    continue
                for att in more:
                    signer = attestation_signer(att)
                    if signer is not None and signer in attesters and signer not in atts:
                        atts[signer] = att
                        source = source or t
                if len(atts) >= k:
                    break
        if source is None or len(atts) < k:
            return None
        return _Block(number, source, tuple(atts.values())[:_MAX_ATTESTATIONS])

    def gather_evidence(self, block: _Block, result: UpgradeResult, hardware: str) -> Evidence:
        """3a: the evidence of one release at the pass's block, with every tracker's attestation of
        it; ``result`` takes the product, vendor and version of the record it carries.

        Raises:
            NetworkError, UpdateRefused (``bad_evidence``).
        """
        ev = self._evidence_at(block, bytes.fromhex(result.header_hash[2:]), hardware)
        d = ev.record.data
        result.product, result.vendor, result.version = d.product, d.vendor_name, str(d.version)
        result.component = self._component_of(d.product, d.vendor_name)
        return ev

    def _evidence_at(self, block: _Block, header_hash: bytes, hardware: str) -> Evidence:
        ev = block.source.evidence(header_hash, hardware, block.number)
        mine = {a.signature for a in ev.attestations}
        more = tuple(a for a in block.attestations if a.signature not in mine)
        return dataclasses.replace(ev, attestations=(ev.attestations + more)[:_MAX_ATTESTATIONS])

    def fresh_evidence(self, live: Sequence[TrackerClient], block: _Block | None = None) -> FreshEvidence:
        """Where the updater takes fresh evidence of a release from, to prove its standing again
        before a trial boot and a confirm (:mod:`.status`). The cheapest way first: one request,
        the evidence at a tracker's newest block (``block``'s source first, then the trackers
        that answered), which carries the attestation of a server module; when k such
        attestations are needed and that one does not carry them, the newest block k of them
        attest now (:meth:`attested_block`). A fetch raises :class:`.client.NetworkError` (or
        ``UpdateRefused``) when nothing could be had."""
        def fetch(header_hash: bytes, hardware: str) -> Evidence:
            anchors = self.prov.anchors
            sources = list(dict.fromkeys([*([block.source] if block is not None else []), *live]))
            for t in sources[:1]:
                with contextlib.suppress(NetworkError):
                    ev = t.evidence(header_hash, hardware)
                    signers = {attestation_signer(a) for a in ev.attestations} & set(anchors.trackers)
                    if len(signers) >= anchors.quorum:
                        return ev
            newest = self.attested_block(sources, PassReport("", ""))
            return self._evidence_at(newest, header_hash, hardware)
        return fetch

    def precheck(self, ev: Evidence, up: Updater, component: str | None = None) -> None:
        """3b: what the chain proves (k of n attested header, proofs, not revoked or vulnerable, the
        newest for the component's class, policy, vendor), judged before a byte is downloaded
        (R10.a.i, R10.e.i). The class is the add-on board's for a component running on one.

        Raises:
            UpdateRefused: the first check that fails (:func:`.verify.check_release`).
        """
        check_release(self.prov.anchors, self._class_for(up, component), ev, now=self.clock())
        if component is not None:  # a release for a class it does not run on: no download either
            check_hardware(up.facts(), component, ev.record)

    def install(self, up: Updater, ev: Evidence, result: UpgradeResult, planned: Mapping[str, Version], *,
                fresh: FreshEvidence | None = None) -> None:
        """3c-d: header and payload from a firmware server, then the updater (which verifies all
        before installing, proves the release's standing again from ``fresh`` before the trial
        boot and the confirm, and records its outcome in the device state). An image of this
        release staged at an earlier pass (its standing unproven then) is booted with no new
        download, its standing proven from ``ev`` (this pass's). Fills ``result``.

        Raises:
            NetworkError: no server served the header, or the payload's download failed.
            UpdateRefused, UpdateDeclined, InstallError, ConfigError: as :meth:`Updater.update`.
        """
        component = result.component
        if component is None:
            raise UpdateRefused("wrong_product", f"no component of this device runs {result.vendor}/{result.product}")
        hh = ev.record.header_hash
        client, header = self.fetch_header(up, ev)                                        # P3, P4
        if up.staged(component, hh) is not None:  # downloaded at an earlier pass, not booted yet
            self._done(result, up.boot_staged(header, ev, component=component, planned=planned, fresh=fresh))
            return
        stream = client.bundle(hh, header)
        try:
            rep = up.update(cast(BinaryIO, stream), ev, component=component, planned=planned,  # P5
                            recover=up.device.state(component).safe_mode,  # safe mode: a recovery install
                            fresh=fresh)
        finally:
            stream.close()
            result.download = stream.to_json()
        self._done(result, rep)

    def fetch_header(self, up: Updater, ev: Evidence) -> tuple[ServerClient, BundleHeader]:
        """3c: the first server that serves the release's bundle header: the configured servers,
        then the one the record's ``file_link`` names. Registers with a server first (once).

        Raises:
            NetworkError, UpdateRefused (``bad_bundle``): the last server's error when none served it.
        """
        urls = list(self.config.servers)
        linked = server_from_link(ev.record.data.file_link)
        if linked is not None and linked not in urls:
            urls.append(linked)
        last: FwledgerError = NetworkError("no firmware server to ask: the record's file_link names none and "
                                           "none was given (--server)", code="no_server")
        for url in urls:
            client = self._server(url)
            try:
                self.register(up, client)
                try:
                    return client, client.header(ev.record.header_hash)
                except ServerRefused as exc:
                    if exc.code != "unregistered_device":
                        raise
                    self.register(up, client, force=True)  # the server forgot the device: register again
                    return client, client.header(ev.record.header_hash)
            except (NetworkError, UpdateRefused) as exc:
                last = exc
        raise last

    def register(self, up: Updater, client: ServerClient, *, force: bool = False) -> None:
        """Register the device with a server once (C11.3.d): again only if its class or location
        changed, or the server has forgotten it.

        Raises:
            NetworkError: the server refused or could not be reached.
        """
        info = up.device.info
        want: dict[str, Any] = {"device_id": info.device_id, "hardware": info.hardware,
                                "location": self.config.location}
        if self.prov.addons:  # the add-on boards whose firmware it downloads (Appendix II)
            want["addons"] = sorted(self.prov.addons)
        state = self._state()
        servers = state.setdefault("servers", {})
        if not force and servers.get(client.url) == want:
            return
        client.register(info.device_id, info.hardware, self.config.location, certificate=self.prov.certificate,
                        addons=want.get("addons", ()))
        servers[client.url] = want
        self._save_state(state)

    # ================================================================ commands (docs/MODULES.md 2-3)

    def receive(self, origin: TrackerClient, envelope: Any, report: PassReport) -> Command | None:
        """Judge one command a heartbeat answer carried; an accepted one's id is recorded (durably)
        before it is returned, so it can never be acted on twice. A refused one is logged, becomes
        the device's last result (unless it is a command already acted on, re-sent), and None is
        returned. Either way it has an entry in ``report.commands``.

        Raises:
            ConfigError: the command log cannot be read or written (nothing is acted on).
        """
        claimed = _claimed_id(envelope)
        if claimed is not None and any(c["command_id"] == claimed for c in report.commands):
            return None  # the same command from another module of this pass
        entry: dict[str, Any] = {"command_id": claimed, "tracker": origin.url, "accepted": False, "code": None,
                                 "message": None, "rollout": None, "wave": None, "block": None}
        report.commands.append(entry)
        anchors, now = self.prov.anchors, self.clock()
        log = CommandLog(self.root / COMMAND_LOG_FILE, clock=self.clock)
        try:
            cmd = verify_command(envelope, issuers=anchors.trackers, device_id=report.device_id,
                                 device_address=self.prov.identity.address, chain_id=anchors.chain_id,
                                 registry=anchors.registry, now=now, max_skew=anchors.max_clock_skew, seen=log.seen)
        except CommandError as exc:
            state = self._state()
            if exc.code == "command_replayed" and claimed not in _done_ids(state):
                # accepted, then the device stopped before it finished (a power cut): the same
                # signed command, re-sent, resumes it (every other check still applies); once
                # done, a replay is refused
                resumed = self._resume(envelope, log, report, now)
                if resumed is not None:
                    entry.update(accepted=True, rollout=resumed.rollout, wave=resumed.wave, block=resumed.block,
                                 resumed=True)
                    self._log_command(state, "resumed", resumed.command_id, origin.url, now=now)
                    self._save_state(state)
                    return resumed
            message = " ".join(str(exc).split())[:256]
            resent = exc.code == "command_replayed" and claimed in _done_ids(state)
            entry.update(code=exc.code, message=message, resent=resent)
            self._log_command(state, "refused", claimed, origin.url, code=exc.code, message=message, now=now,
                              resent=resent)
            if not resent:
                state["last_refusal"] = {"command_id": claimed, "code": exc.code, "message": message, "at": now,
                                         "tracker": origin.url}
            self._save_state(state)
            return None
        log.accept(cmd)                              # before acting: a replay, even after a crash, is refused
        entry.update(accepted=True, rollout=cmd.rollout, wave=cmd.wave, block=cmd.block)
        state = self._state()
        self._log_command(state, "accepted", cmd.command_id, origin.url, now=now)
        self._save_state(state)
        return cmd

    def _resume(self, envelope: Any, log: CommandLog, report: PassReport, now: float) -> Command | None:
        """The command again with every check but "never seen", if it passes them all."""
        anchors = self.prov.anchors
        try:
            return verify_command(envelope, issuers=anchors.trackers, device_id=report.device_id,
                                  device_address=self.prov.identity.address, chain_id=anchors.chain_id,
                                  registry=anchors.registry, now=now, max_skew=anchors.max_clock_skew,
                                  seen=lambda _id: False)
        except CommandError:
            return None

    def execute(self, up: Updater, live: Sequence[TrackerClient], report: PassReport, origin: TrackerClient,
                cmd: Command) -> None:
        """Run an accepted command's upgrades (step 3, evidence at a block not older than the
        command's), then post their results to the module that delivered it (kept for a later
        pass if it cannot take them now)."""
        upgrades = [{"product": u.product, "vendor": u.vendor, "to_version": u.to_version,
                     "header_hash": u.header_hash.lower()} for u in cmd.upgrades]
        report.plan.extend(upgrades)
        # a resumed command may carry upgrades installed before the device stopped: those are done
        running = {c.product: str(c.installed) for c in up.facts().components if c.installed is not None}
        todo = [u for u in upgrades if running.get(u["product"]) != u["to_version"]]
        ran = iter(self.run_upgrades(up, live, report, todo, {}, at_least=cmd.block) if todo else [])
        results = [next(ran) if u in todo else
                   dataclasses.replace(self._result_of(u), ok=True, outcome="already_installed") for u in upgrades]
        body: list[dict[str, Any]] = [  # named as the command names them (the tracker matches them)
            {"header_hash": u["header_hash"], "product": u["product"], "to_version": u["to_version"], "ok": r.ok,
             "code": None if r.ok else (r.code or "update_failed"),
             "message": (" ".join(r.message.split())[:256] or None)} for u, r in zip(upgrades, results, strict=True)]
        pending = {"tracker": origin.url, "device_id": report.device_id, "command_id": cmd.command_id,
                   "results": body, "at": self.clock()}
        state = self._state()
        state["pending_results"] = [*_pending(state), pending][-_PENDING_KEEP:]
        failed = [r.code or "update_failed" for r in results if not r.ok]
        self._log_command(state, "done", cmd.command_id, origin.url, code=failed[0] if failed else None)
        self._save_state(state)
        self._post(origin, pending, report)

    def post_pending(self, live: Sequence[TrackerClient], report: PassReport) -> None:
        """Post the command results kept from earlier passes, each to the module it came from if
        that one answered this pass (else to the first module that did, if its URL is not
        configured any more)."""
        pending = _pending(self._state())
        urls = {t.url: t for t in self.trackers}
        for item in pending:
            target = urls.get(item["tracker"]) or (live[0] if live else None)
            if target is not None and target in live:
                self._post(target, item, report)

    def _post(self, client: TrackerClient, item: Mapping[str, Any], report: PassReport) -> None:
        """One results report: taken or refused for good (an unknown command) drops it from the
        kept results; no answer, or a server error, keeps it. ``already_reported`` counts as taken:
        only this device can sign its results, so the tracker took an earlier post whose answer
        was lost (a module stopped between recording it and answering)."""
        entry: dict[str, Any] = {"command_id": item["command_id"], "tracker": client.url, "ok": False, "code": None,
                                 "kept": False}
        report.posted.append(entry)
        try:
            client.results(str(item["device_id"]), str(item["command_id"]), list(item["results"]))
            entry["ok"] = True
            event, code = "reported", None
        except TrackerRefused as exc:
            entry["code"] = exc.code
            if exc.code == "already_reported":
                entry["ok"] = True
                event, code = "reported", exc.code
            else:
                entry["kept"] = exc.status is None or exc.status >= 500
                event, code = "report_refused", exc.code
        except NetworkError as exc:
            entry.update(code=exc.code, kept=True)
            event, code = "report_failed", exc.code
        state = self._state()
        if not entry["kept"]:
            state["pending_results"] = [p for p in _pending(state) if p["command_id"] != item["command_id"]]
        self._log_command(state, event, str(item["command_id"]), client.url, code=code)
        self._save_state(state)

    def _log_command(self, state: dict[str, Any], event: str, command_id: str | None, tracker: str, *,
                     code: str | None = None, message: str | None = None, now: float | None = None,
                     resent: bool = False) -> None:
        """One event of the command log in ``state``: accepted, resumed (accepted before a stop,
        not done), refused (``resent``: a command already acted on, sent again), done, reported,
        report_refused, report_failed."""
        log = state.get("command_log")
        entries = log if isinstance(log, list) else []
        entries.append({"at": self.clock() if now is None else now, "event": event, "command_id": command_id,
                        "tracker": tracker, "code": code, "message": message, **({"resent": True} if resent else {})})
        state["command_log"] = entries[-_LOG_KEEP:]

    # ================================================================ helpers

    @contextlib.contextmanager
    def _updater(self) -> Iterator[Updater]:
        with Device(self.root, health_check=self.health_check, probe=self._probe) as dev:
            yield Updater.from_provisioning(dev, self.prov, policy=self.policy, clock=self.clock)

    def _server(self, url: str) -> ServerClient:
        if url not in self._servers:
            self._servers[url] = ServerClient(url, self.prov.identity, transport=self._transport,
                                              config=self.config.net)
        return self._servers[url]

    def _result_of(self, upgrade: Mapping[str, Any]) -> UpgradeResult:
        product, vendor = str(upgrade.get("product", "")), str(upgrade.get("vendor", ""))
        return UpgradeResult(product, vendor, str(upgrade.get("to_version", "")),
                             str(upgrade["header_hash"]).lower(), component=self._component_of(product, vendor))

    def _class_for(self, up: Updater, component: str | None) -> str:
        """The hardware class a component's releases are proven for: its add-on board's, else the device's."""
        board = self.prov.board_of(component) if component is not None else None
        return board if board is not None else up.device.info.hardware

    def _component_of(self, product: str, vendor: str) -> str | None:
        names = [n for n, b in self.prov.bindings.items() if b.product == product and b.vendor in (None, vendor)]
        return names[0] if names else None

    def _group_versions(self, upgrades: Sequence[Mapping[str, Any]], groups: Mapping[str, list[str]]
                        ) -> dict[str, dict[str, Version]]:
        """Per product, the versions the other members of its install group (a dependency cycle)
        will have, by component: they are installed together, so each is checked against the
        others' new versions; every other dependency is installed first and counts as installed."""
        versions = {str(u["product"]): str(u["to_version"]) for u in upgrades if "product" in u and "to_version" in u}
        out: dict[str, dict[str, Version]] = {}
        for product, others in groups.items():
            out[product] = {name: Version.parse(versions[o]) for o in others if o in versions
                            for name, b in self.prov.bindings.items() if b.product == o}
        return out

    def _done(self, result: UpgradeResult, rep: UpdateReport) -> None:
        js = rep.to_json()
        result.ok, result.outcome, result.code = rep.ok, rep.outcome, rep.code
        result.message = (f"{js['component']} {js['version']} installed in slot {js['slot']}; {rep.outcome}"
                          + (f" ({rep.code})" if rep.code else ""))
        result.report = js
        if rep.ok and result.component is not None:
            state = self._state()
            state.setdefault("vendors", {})[result.component] = result.vendor
            self._save_state(state)

    def _failed(self, up: Updater, result: UpgradeResult, exc: FwledgerError) -> None:
        """An upgrade that failed: its code in the result, and in the component's state when the
        updater did not record it itself (network, evidence, pre-download checks)."""
        code = str(getattr(exc, "code", None) or "update_failed")
        if isinstance(exc, ConfigError):  # the updater's word for a bundle it could not read
            code = "download_failed"
        result.ok, result.code, result.message = False, code, " ".join(str(exc).split())
        # the updater was entered (its stream was opened) and records these itself
        entered = result.download is not None
        if result.component is None or (entered and isinstance(exc, (UpdateRefused, UpdateDeclined, InstallError,
                                                                          ConfigError))):
            return
        with contextlib.suppress(DeviceStorageError):  # the original failure matters more
            up.device.record_result(result.component, "update", code, result.message[:500], result.version)

    def _state(self) -> dict[str, Any]:
        try:
            data = read_bounded(self.root / STATE_FILE)
            obj = json.loads(data) if data else {}
        except (ValueError, DeviceStorageError):
            return {}
        return obj if isinstance(obj, dict) else {}

    def _save_state(self, state: Mapping[str, Any]) -> None:
        path = self.root / STATE_FILE
        make_folder(path.parent)  # durable: its entry in the device folder synced
        atomic_write(path, (json.dumps(dict(state), sort_keys=True, indent=1) + "\n").encode())


def _claimed_id(envelope: Any) -> str | None:
    """The command id an envelope claims (unverified), if it looks like one."""
    cmd = envelope.get("command") if isinstance(envelope, dict) else None
    cid = cmd.get("command_id") if isinstance(cmd, dict) else None
    return cid if isinstance(cid, str) and _ID_RE.match(cid) else None


def _done_ids(state: Mapping[str, Any]) -> set[str]:
    """The ids of the commands the agent acted on (their results exist)."""
    log = state.get("command_log")
    return {str(e.get("command_id")) for e in (log if isinstance(log, list) else [])
            if isinstance(e, dict) and e.get("event") == "done"}


def _pending(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The command results not yet taken by their tracker, well-formed ones only."""
    items = state.get("pending_results")
    return [p for p in (items if isinstance(items, list) else [])
            if isinstance(p, dict) and isinstance(p.get("tracker"), str) and isinstance(p.get("command_id"), str)
            and isinstance(p.get("device_id"), str) and isinstance(p.get("results"), list)]
