"""The device agent: X.1368 clause 7 (P2-P5) seen from the device, one pass at a time.

:meth:`Agent.check_and_update` is Figure 1 from the consumer's side, a short ordered list:

1. report status to every tracker: versions, active slots, readiness, the last result
   (heartbeat; C11.1.a.ii, a.iv, C11.2.b);
2. ask the tracker's plan: the upgrades it decided are needed, dependencies first (P2, C11.2.c;
   R10.e.i: nothing more happens when nothing is needed);
3. for each planned upgrade:
   a. gather the evidence at one block attested by k of the n provisioned trackers,
   b. check what the chain proves about the release before downloading anything (R10.a.i),
   c. the bundle header and payload from a firmware server: the ones given (``servers``) first,
      then the one the record's ``file_link`` names (P3, P4),
   d. :meth:`.updater.Updater.update`: verify everything, install the inactive slot, trial-boot (P5),
   e. report the result with its code to the trackers (P5, R10.c.i).

:meth:`Agent.run` loops it. A tracker or server that cannot be reached ends the pass (or the
upgrade) with a coded error; the device keeps running what it runs, records the failure as the
component's last result when an upgrade was under way, and reports it at the next heartbeat.

The agent holds no trust logic: the evidence is judged by :mod:`.verify`, the bundle by the
updater; :mod:`.client` does the I/O. Its own memory is ``DIR/agent/agent.json`` (written
atomically): the firmware servers it registered with, and the vendor of each component it
installed (the heartbeat names the vendor of every component).
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

from entities.author.bundle import BundleHeader
from ledger_node.attestation import Attestation
from ledger_node.errors import ConfigError, FwledgerError
from ledger_node.record import Version

from .client import (
    NetConfig,
    NetworkError,
    ServerClient,
    ServerRefused,
    TrackerClient,
    Transport,
    base_url,
    server_from_link,
)
from .device import Device
from .errors import DeviceBusy, DeviceStorageError, InstallError, UpdateDeclined, UpdateRefused
from .health import HealthCheck
from .provision import Provisioning, load_provisioning
from .store import atomic_write, read_bounded
from .updater import UpdatePolicy, Updater, UpdateReport
from .verify import Evidence, check_release

__all__ = ["STATE_FILE", "Agent", "AgentConfig", "PassReport", "UpgradeResult"]

#: the agent's own memory in the device folder
STATE_FILE = Path("agent") / "agent.json"
_LOCATION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MAX_ATTESTATIONS = 64


@dataclass(frozen=True)
class AgentConfig:
    """Where the device's parties are: tracker URLs (the tracker keys and quorum k come from the
    device's provisioned anchors), firmware server URLs tried before the record's ``file_link``,
    the location label the device declares to servers (C11.3.h) and trackers."""

    trackers: tuple[str, ...]
    servers: tuple[str, ...] = ()
    location: str | None = None
    net: NetConfig = field(default_factory=NetConfig)

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
        if self.location is not None and not _LOCATION_RE.match(self.location):
            raise ConfigError(f"bad location {self.location!r}: letters, digits, '.', '_', '-' (at most 64)")
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
    reasons: list[str] = field(default_factory=list)
    block: int | None = None
    results: list[UpgradeResult] = field(default_factory=list)
    outdated: bool | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every planned upgrade was installed (nothing planned is ok)."""
        return all(r.ok for r in self.results)

    @property
    def failures(self) -> list[UpgradeResult]:
        return [r for r in self.results if not r.ok]

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "device": self.device_id, "hardware": self.hardware, "trackers": self.trackers,
                "block": self.block, "plan": self.plan, "reasons": self.reasons,
                "results": [r.to_json() for r in self.results], "outdated": self.outdated,
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
        transport: one HTTP transport for every party (default: a ``requests`` session each).

    Raises:
        NotADevice, ConfigError: the folder is not a provisioned device, or a bad setting.
    """

    def __init__(self, root: Path, config: AgentConfig, *, health_check: HealthCheck | None = None,
                 policy: UpdatePolicy | None = None, clock: Callable[[], float] = time.time,
                 transport: Transport | None = None) -> None:
        self.root = Path(root)
        self.config = config.validate()
        self.prov: Provisioning = load_provisioning(self.root)
        self.health_check = health_check
        self.policy = policy
        self.clock = clock
        self._transport = transport
        self.trackers = [TrackerClient(u, self.prov.identity, self.prov.anchors.trackers, transport=transport,
                                       config=self.config.net) for u in self.config.trackers]
        self._servers: dict[str, ServerClient] = {}

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
        plan, as a device administrator may ask (T9.c); it is verified exactly the same way.

        Raises:
            NetworkError: no tracker could be reached or gave a plan (nothing changed on the device).
            DeviceBusy: another process has the device open.
            DeviceStorageError, NotADevice, ConfigError: the device folder is unusable.
        """
        started = time.monotonic()
        with self._updater() as up:
            report = PassReport(up.device.info.device_id, up.device.info.hardware)
            live = self.report_status(up, report)                       # 1. C11.1.a.ii, a.iv
            if release is None:
                upgrades, groups = self.ask_plan(live, report)          # 2. P2 (dependencies first)
            else:
                upgrades, groups = [{"header_hash": "0x" + release.hex()}], {}
            together = self._group_versions(upgrades, groups)
            block: _Block | None = None
            for upgrade in upgrades:                                    # 3. P3-P5, one by one
                result = self._result_of(upgrade)
                try:
                    block = block or self.attested_block(live, report)           # a. k of n attest one block
                    ev = self.gather_evidence(block, result, up.device.info.hardware)
                    self.precheck(ev, up)                                        # b. before any download
                    self.install(up, ev, result, together.get(result.product, {}))  # c, d. P3-P5
                except (NetworkError, UpdateRefused, UpdateDeclined, InstallError, ConfigError) as exc:
                    self._failed(up, result, exc)
                report.results.append(result)
                self.report_status(up, report, live, final=True)        # e. R10.c.i
        report.seconds = time.monotonic() - started
        return report

    def run(self, interval: float, stop: threading.Event, *, passes: int | None = None,
            on_pass: Callable[[PassReport | FwledgerError], None] | None = None) -> int:
        """Run :meth:`check_and_update` every ``interval`` seconds until ``stop`` is set (or ``passes``
        passes were made). An unreachable tracker, or another process holding the device, ends
        only that pass: the device keeps running and the next pass tries again. Returns the
        number of passes made.

        Raises:
            DeviceStorageError, NotADevice, ConfigError: the device folder is unusable.
        """
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

    # ================================================================ the steps

    def report_status(self, up: Updater, report: PassReport, trackers: Sequence[TrackerClient] | None = None, *,
                      final: bool = False) -> list[TrackerClient]:
        """Heartbeat to each tracker (all of them, or ``trackers``); returns those that answered.

        Raises:
            NetworkError: none answered (only when not ``final``: a final report is best effort).
        """
        body = self.status(up)
        live: list[TrackerClient] = []
        errors: list[NetworkError] = []
        for t in self.trackers if trackers is None else trackers:
            entry: dict[str, Any] = {"url": t.url, "address": t.address, "ok": False, "error": None}
            try:
                answer = t.heartbeat(body)
                entry.update(ok=True, address=t.address)
                report.outdated = bool(answer.get("outdated")) if answer.get("outdated") is not None else None
                live.append(t)
            except NetworkError as exc:
                errors.append(exc)
                entry["error"] = {"code": exc.code, "message": str(exc)}
            if not final:
                report.trackers.append(entry)
        if not live and errors and not final:
            raise errors[0]
        return live

    def status(self, up: Updater) -> dict[str, Any]:
        """The heartbeat: components (by product: vendor, running version, active slot), readiness,
        the newest last result of any component (C11.1.a.ii, a.iv; C11.2.b i-iii).

        A component with no confirmed image, or whose vendor the device does not know (not pinned
        by provisioning, never installed by this agent), is not listed: the tracker's report names
        products with a vendor and a version.
        """
        dev = up.device
        vendors = self._state().get("vendors", {})
        comps: dict[str, dict[str, Any]] = {}
        busy = False
        last: tuple[float, str, Any] | None = None
        for c in up.facts().components:
            st = dev.state(c.name)
            busy = busy or st.trial is not None or st.safe_mode
            if st.last_result is not None and (last is None or st.last_result.at >= last[0]):
                last = (st.last_result.at, c.name, st.last_result)
            vendor = c.vendor or vendors.get(c.name)
            if c.installed is None or not vendor or c.product in comps:
                continue
            comps[c.product] = {"vendor": vendor, "version": str(c.installed), "slot": st.active or st.confirmed}
        last_result = None
        if last is not None:
            _, name, r = last
            last_result = {"ok": r.ok, "code": r.code, "message": r.message[:256] or None, "component": name,
                           "version": r.version, "at": r.at}
        return {"device_id": dev.info.device_id, "hardware": dev.info.hardware, "addons": {},
                "location": self.config.location, "components": comps,
                "ready": not busy and up.policy.in_window(self.clock()), "last_result": last_result}

    def ask_plan(self, live: Sequence[TrackerClient], report: PassReport
                 ) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
        """P2: the first tracker that answers gives the plan. Returns its upgrades (dependencies
        first) and, per product, the other products of its install group (a dependency cycle).

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
            report.plan = [dict(u) for u in plan["upgrades"]]
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

    def attested_block(self, live: Sequence[TrackerClient], report: PassReport) -> _Block:
        """The block this pass proves releases at: the newest one k distinct trackers have indexed,
        with every reachable tracker's attestation of it (3a).

        Raises:
            UpdateRefused: ``quorum_not_met`` (fewer than k distinct trackers answered).
        """
        k = self.prov.anchors.quorum
        heads: dict[str, tuple[TrackerClient, Attestation]] = {}
        for t in live:
            try:
                _, att = t.attestation()
            except NetworkError:
                continue
            if t.address is not None and t.address not in heads:
                heads[t.address] = (t, att)
        if len(heads) < k:
            raise UpdateRefused("quorum_not_met", f"{len(heads)} distinct provisioned tracker(s) answered; the "
                                                  f"device needs attestations from {k}")
        numbers = sorted((a.block_number for _, a in heads.values()), reverse=True)
        number = numbers[k - 1]
        atts: list[Attestation] = []
        source: TrackerClient | None = None
        for t, att in heads.values():
            if att.block_number < number:
                continue
            if att.block_number != number:
                try:
                    _, att = t.attestation(number)
                except NetworkError:
                    continue
            atts.append(att)
            source = source or t
        if source is None or len(atts) < k:
            raise UpdateRefused("quorum_not_met", f"fewer than {k} trackers attest block {number}")
        report.block = number
        return _Block(number, source, tuple(atts[:_MAX_ATTESTATIONS]))

    def gather_evidence(self, block: _Block, result: UpgradeResult, hardware: str) -> Evidence:
        """3a: the evidence of one release at the pass's block, with every tracker's attestation of
        it; ``result`` takes the product, vendor and version of the record it carries.

        Raises:
            NetworkError, UpdateRefused (``bad_evidence``).
        """
        ev = block.source.evidence(bytes.fromhex(result.header_hash[2:]), hardware, block.number)
        d = ev.record.data
        result.product, result.vendor, result.version = d.product, d.vendor_name, str(d.version)
        result.component = self._component_of(d.product, d.vendor_name)
        mine = {a.signature for a in ev.attestations}
        more = tuple(a for a in block.attestations if a.signature not in mine)
        return dataclasses.replace(ev, attestations=(ev.attestations + more)[:_MAX_ATTESTATIONS])

    def precheck(self, ev: Evidence, up: Updater) -> None:
        """3b: what the chain proves (k of n attested header, proofs, not revoked or vulnerable, the
        newest for this class, policy, vendor), judged before a byte is downloaded (R10.a.i, R10.e.i).

        Raises:
            UpdateRefused: the first check that fails (:func:`.verify.check_release`).
        """
        check_release(self.prov.anchors, up.device.info.hardware, ev, now=self.clock())

    def install(self, up: Updater, ev: Evidence, result: UpgradeResult, planned: Mapping[str, Version]) -> None:
        """3c-d: header and payload from a firmware server, then the updater (which verifies all
        before installing, and records its outcome in the device state). Fills ``result``.

        Raises:
            NetworkError: no server served the header, or the payload's download failed.
            UpdateRefused, UpdateDeclined, InstallError, ConfigError: as :meth:`Updater.update`.
        """
        component = result.component
        if component is None:
            raise UpdateRefused("wrong_product", f"no component of this device runs {result.vendor}/{result.product}")
        hh = ev.record.header_hash
        client, header = self.fetch_header(up, ev)                                        # P3, P4
        stream = client.bundle(hh, header)
        try:
            rep = up.update(cast(BinaryIO, stream), ev, component=component, planned=planned)  # P5
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
        want = {"device_id": info.device_id, "hardware": info.hardware, "location": self.config.location}
        state = self._state()
        servers = state.setdefault("servers", {})
        if not force and servers.get(client.url) == want:
            return
        client.register(info.device_id, info.hardware, self.config.location)
        servers[client.url] = want
        self._save_state(state)

    # ================================================================ helpers

    @contextlib.contextmanager
    def _updater(self) -> Iterator[Updater]:
        with Device(self.root, health_check=self.health_check) as dev:
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
        try:
            path.parent.mkdir(exist_ok=True)
        except OSError as exc:
            raise DeviceStorageError(f"cannot create {path.parent}: {exc}") from exc
        atomic_write(path, (json.dumps(dict(state), sort_keys=True, indent=1) + "\n").encode())

