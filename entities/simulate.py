"""`fwledger simulate`: a fleet of thousands of lightweight devices against a real tracker tree.

What is real: the embedded chain and the Vyper registry, the author's encrypted and signed
bundles, the server-module :class:`~entities.status_tracker.daemon.Tracker` (full node, inventory,
resolver, rollouts in waves, signed update commands, attestations and evidence with ``eth_getProof``
proofs), and on every device the verification code of the firmware consumer: the command's
signature and freshness (:func:`entities.protocol.commands.verify_command`), the k-of-n attested header and
the ledger proofs (:func:`entities.firmware_consumer.verify.check_release`), and the payload's
size, Merkle root and hash (:class:`entities.bundle.ChunkVerifier`).

What is modelled, to fit thousands of devices in one process: a device is a few fields (key, id,
hardware class, running version) instead of a device folder with A/B slots (the install path is
measured by ``tests/bench/bench_device.py`` and the power-loss suites); HTTP hops are function
calls whose request and answer sizes are counted as their JSON encodings; an intermediate module
is :class:`CachingTier`, the same caching rule as ``entities/status_tracker/intermediate.py``
(relay heartbeats and results, answer attestations and evidence at a given block from a cache)
without the HTTP server; the firmware server is the bundle's bytes in memory, counted.

Rounds: in each round every device heartbeats through its tier; a device given a command
verifies it and its evidence, "downloads" and checks the payload, and reports the result. The
rollout's waves widen between rounds (canary first), so the number of rounds shows the waves.
``fail_rate`` makes that share of devices fail their trial boot (reported ``health_check_failed``),
to watch a rollout halt.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account
from eth_account.signers.local import LocalAccount
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from entities.bundle import BundleHeader, ChunkVerifier, build_bundle
from entities.firmware_consumer.provision import anchors_from_deployment
from entities.firmware_consumer.verify import Evidence, TrustAnchors, check_release
from entities.protocol.commands import verify_command
from entities.status_tracker.config import TrackerConfig
from entities.status_tracker.daemon import Tracker
from entities.status_tracker.inventory import HeartbeatIn
from ledger_node.compiler import registry_contract
from ledger_node.errors import ConfigError, FwledgerError
from ledger_node.providers import connect, count_calls, dev_accounts
from ledger_node.record import ZERO_HASH, Version
from ledger_node.registry import Registry, deploy

__all__ = ["CachingTier", "SimDevice", "SimProgress", "TrackerTier", "run_simulation"]

VENDOR, PRODUCT, HW, HW_CAPPED = "acme", "main-fw", "sim-r1", "sim-r2"
FROM, TO = "1.0.0", "1.1.0"
MAX_ROUNDS = 20


def _size(obj: Any) -> int:
    return len(json.dumps(obj, separators=(",", ":"), default=str))


@dataclass
class Counters:
    """What one tier handled: requests from below, bytes in both directions, requests sent up."""

    name: str
    requests: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    upstream_requests: int = 0
    cache_hits: int = 0

    def count(self, request: Any, answer: dict[str, Any]) -> dict[str, Any]:
        """One request answered here: counted with both sizes; returns the answer."""
        self.requests += 1
        self.bytes_up += _size(request)
        self.bytes_down += _size(answer)
        return answer

    def to_json(self) -> dict[str, Any]:
        return {"tier": self.name, "requests": self.requests, "bytes_to_devices": self.bytes_down,
                "bytes_from_devices": self.bytes_up, "upstream_requests": self.upstream_requests,
                "cache_hits": self.cache_hits}


class Tier(Protocol):
    counters: Counters

    def heartbeat(self, signer: str, hb: HeartbeatIn) -> dict[str, Any]: ...

    def evidence(self, header_hash: str, hardware: str, block: int) -> dict[str, Any]: ...

    def results(self, signer: str, device_id: str, body: dict[str, Any]) -> dict[str, Any]: ...


class TrackerTier:
    """The server module itself, called in process (the flat deployment's only tier)."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.counters = Counters("server module")
        self._count = self.counters.count

    def heartbeat(self, signer: str, hb: HeartbeatIn) -> dict[str, Any]:
        return self._count(hb.model_dump(), self.tracker.heartbeat(signer, hb))

    def evidence(self, header_hash: str, hardware: str, block: int) -> dict[str, Any]:
        return self._count({"hash": header_hash, "hardware": hardware, "block": block},
                           self.tracker.evidence(header_hash, hardware, block))

    def results(self, signer: str, device_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._count(body, self.tracker.results(signer, device_id, body))


class CachingTier:
    """An intermediate module's rule (D8.2.3, R10.e.ii) without its HTTP server: heartbeats and
    results relayed upstream unchanged, evidence at a block answered from its cache."""

    def __init__(self, upstream: Tier, name: str) -> None:
        self.upstream = upstream
        self.counters = Counters(name)
        self._count = self.counters.count
        self._cache: dict[tuple[str, str, int], dict[str, Any]] = {}

    def heartbeat(self, signer: str, hb: HeartbeatIn) -> dict[str, Any]:
        self.counters.upstream_requests += 1
        return self._count(hb.model_dump(), self.upstream.heartbeat(signer, hb))

    def evidence(self, header_hash: str, hardware: str, block: int) -> dict[str, Any]:
        key = (header_hash, hardware, block)
        hit = self._cache.get(key)
        if hit is None:
            self.counters.upstream_requests += 1
            hit = self._cache[key] = self.upstream.evidence(header_hash, hardware, block)
        else:
            self.counters.cache_hits += 1
        return self._count(dict(zip(("hash", "hardware", "block"), key, strict=True)), hit)

    def results(self, signer: str, device_id: str, body: dict[str, Any]) -> dict[str, Any]:
        self.counters.upstream_requests += 1
        return self._count(body, self.upstream.results(signer, device_id, body))


@dataclass
class SimDevice:
    """A lightweight device model: identity, class, running version, the tier it talks to."""

    device_id: str
    account: LocalAccount
    hardware: str
    tier: Tier
    version: str = FROM
    fails: bool = False
    seen: set[str] = field(default_factory=set)
    last: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)
    installed_at: float | None = None

    def heartbeat(self) -> HeartbeatIn:
        return HeartbeatIn.model_validate({
            "device_id": self.device_id, "hardware": self.hardware, "ready": True,
            "components": {PRODUCT: {"vendor": VENDOR, "version": self.version, "slot": "A"}},
            "last_result": self.last})


@dataclass
class World:
    tracker: Tracker
    anchors: TrustAnchors
    payloads: dict[str, tuple[BundleHeader, bytes]]
    clock: Callable[[], float]
    bytes_served: int = 0
    downloads: int = 0


def _step(world: World, dev: SimDevice) -> bool:
    """One device's round; True when it installed something."""
    now = world.clock()
    signer = str(dev.account.address)
    answer = dev.tier.heartbeat(signer, dev.heartbeat())
    changed = False
    for envelope in answer.get("commands") or []:
        try:
            cmd = verify_command(envelope, issuers=world.anchors.trackers, device_id=dev.device_id,
                                 device_address=signer, chain_id=world.anchors.chain_id,
                                 registry=world.anchors.registry, now=now, seen=dev.seen.__contains__)
        except FwledgerError as exc:
            dev.errors.append(getattr(exc, "code", type(exc).__name__))
            continue
        dev.seen.add(cmd.command_id)
        results = []
        for up in cmd.upgrades:
            code: str | None = None
            try:
                ev = Evidence.from_json(dev.tier.evidence(up.header_hash, dev.hardware, cmd.block))
                check_release(world.anchors, dev.hardware, ev, now=now)
                header, payload = world.payloads[up.header_hash]
                world.bytes_served += len(payload)
                world.downloads += 1
                verifier = ChunkVerifier(ev.record)
                verifier.feed(payload)
                verifier.finish()
                if header.record.data.file_hash != ev.record.data.file_hash:
                    code = "record_mismatch"
                elif dev.fails:
                    code = "health_check_failed"
            except FwledgerError as exc:
                code = getattr(exc, "code", None) or type(exc).__name__
            if code is None:
                dev.version, changed, dev.installed_at = up.to_version, True, world.clock()
            else:
                dev.errors.append(code)
            dev.last = {"ok": code is None, "code": code, "component": up.product, "version": up.to_version,
                        "at": now}
            results.append({"header_hash": up.header_hash, "product": up.product, "to_version": up.to_version,
                            "ok": code is None, "code": code, "message": None})
            if code is not None:
                break
        dev.tier.results(signer, dev.device_id, {"command_id": cmd.command_id, "results": results})
    return changed


def _publish(tmp: Path, registry: Registry, vendor: LocalAccount, class_keys: dict[str, X25519PrivateKey],
             version: str, prev: bytes, image_size: int) -> tuple[bytes, BundleHeader, bytes]:
    src, out = tmp / f"{version}.bin", tmp / f"{version}.fwb"
    src.write_bytes(os.urandom(image_size))
    header = build_bundle(src, out, vendor_name=VENDOR, product=PRODUCT, version=Version.parse(version),
                          link="http://127.0.0.1:1/v1/images", hardware=[HW, HW_CAPPED],
                          class_keys={hw: k.public_key().public_bytes_raw() for hw, k in class_keys.items()},
                          prev_hash=prev, account=vendor, chain_id=registry.deployment.chain_id,
                          registry=registry.deployment.address)
    res = registry.with_account(vendor).publish(header.record)
    payload = out.read_bytes()[header.payload_offset:]
    return res.header_hash, header, payload


class SimProgress:
    """Where a simulation is, on ``console`` (stderr in the CLI): a live bar on a terminal, else one
    line per phase and, within a phase, at most one line every ``every`` seconds."""

    def __init__(self, console: Console, every: float = 5.0) -> None:
        self.console = console
        self.every = every
        self._live: Progress | None = None
        self._task: Any = None
        self._text = ""
        self._total: int | None = None
        self._done = self._printed = 0
        self._last = 0.0
        if console.is_terminal:
            self._live = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=console, transient=True)
            self._live.start()

    def phase(self, text: str, total: int | None = None, done: int = 0) -> None:
        """A new step (``total``: how many things it counts, if it counts; ``done`` already)."""
        self._flush()
        self._text, self._total, self._last, self._done, self._printed = text, total, time.monotonic(), done, done
        if self._live is not None:
            if self._task is not None:
                self._live.update(self._task, visible=False)
            self._task = self._live.add_task(text, total=total, completed=done)
        else:
            self._line(f"{text} ({done}/{total})" if total else text)

    def advance(self, done: int) -> None:
        """``done`` of the phase's total so far."""
        self._done = done
        if self._live is not None:
            self._live.update(self._task, completed=done)
        elif self._total and time.monotonic() - self._last >= self.every:
            self._flush()

    def close(self) -> None:
        self._flush()
        if self._live is not None:
            self._live.stop()

    def _flush(self) -> None:
        """The current phase's count, if it moved since its last line (one-line mode)."""
        if self._live is None and self._total and self._done != self._printed:
            self._line(f"{self._text}: {self._done}/{self._total}")
            self._printed, self._last = self._done, time.monotonic()

    def _line(self, text: str) -> None:
        self.console.print(f"simulate: {text}", markup=False, highlight=False, soft_wrap=True)


def _tiers(tracker: Tracker, depth: int, fanout: int, devices: int) -> tuple[list[Tier], list[Tier]]:
    """The tracker tree: returns (every tier, the leaf tiers devices attach to)."""
    top: Tier = TrackerTier(tracker)
    tiers: list[Tier] = [top]
    level: list[Tier] = [top]
    for d in range(1, depth):
        width = max(1, -(-devices // fanout ** (depth - d)))
        level = [CachingTier(level[i % len(level)], f"intermediate L{d}.{i}") for i in range(width)]
        tiers += level
    return tiers, level


def run_simulation(*, devices: int = 1000, depth: int = 1, fanout: int = 100, image_size: int = 64 * 1024,
                   fail_rate: float = 0.0, capped_share: float = 0.1, waves: tuple[float, ...] = (0.1, 0.5, 1.0),
                   quiet: bool = False, console: Console | None = None, progress: bool | None = None
                   ) -> dict[str, Any]:
    """Run one simulated fleet update and return the figures (JSON-ready). ``quiet`` leaves out the
    final table; ``progress`` (default: not ``quiet``) reports each phase on ``console``
    (:class:`SimProgress`).

    Raises:
        ConfigError: impossible sizes (no devices, depth < 1, fanout < 2, rates outside [0, 1]).
    """
    if devices < 1 or depth < 1 or fanout < 2 or not 0 <= fail_rate <= 1 or not 0 <= capped_share < 1:
        raise ConfigError("simulate: need devices >= 1, depth >= 1, fanout >= 2, rates in [0, 1]")
    console = console or Console(stderr=True)
    t0 = time.monotonic()
    logging.getLogger("fwledger.tracker").setLevel(logging.ERROR)
    shown = SimProgress(console) if (not quiet if progress is None else progress) else None
    try:
        report = _simulate(devices, depth, fanout, image_size, fail_rate, capped_share, waves, shown, t0)
    finally:
        if shown is not None:
            shown.close()
    if not quiet:
        table = Table(title=f"fwledger simulate: {devices} devices, depth {depth}")
        table.add_column("figure")
        table.add_column("value", justify="right")
        for key in ("entitled", "updated", "not_entitled", "rounds", "seconds_to_full_fleet",
                    "bytes_served_by_firmware_server", "chain_queries_per_device", "server_module_requests",
                    "server_module_bytes_per_device", "intermediates"):
            table.add_row(key.replace("_", " "), str(report[key]))
        table.add_row("failure causes", ", ".join(f"{k}: {v}" for k, v in report["failure_causes"].items()) or "none")
        console.print(table)
    return report


def _simulate(devices: int, depth: int, fanout: int, image_size: int, fail_rate: float, capped_share: float,
              waves: tuple[float, ...], shown: SimProgress | None, t0: float) -> dict[str, Any]:
    def phase(text: str, total: int | None = None, done: int = 0) -> None:
        if shown is not None:
            shown.phase(text, total, done)

    def advance(done: int) -> None:
        if shown is not None:
            shown.advance(done)

    with tempfile.TemporaryDirectory(prefix="fwledger-sim-") as tmpname:
        tmp = Path(tmpname)
        phase(f"deploying the registry on the embedded chain, publishing {PRODUCT} {FROM}")
        w3 = connect("embedded")
        admin, vendor = dev_accounts(w3, 2)
        compiled = registry_contract()
        dep = deploy(w3, admin, compiled=compiled)
        reg = Registry(w3, dep, admin)
        class_keys = {HW: X25519PrivateKey.generate(), HW_CAPPED: X25519PrivateKey.generate()}
        assert reg.add_vendor(vendor.address, VENDOR).executed
        for rev, hw in enumerate(class_keys, start=1):
            reg.add_hardware(hw, rev, class_keys[hw].public_key().public_bytes_raw())
        reg.set_policy(HW_CAPPED, VENDOR, PRODUCT, max_version=Version(1, 0, 65535))
        h1, b1, p1 = _publish(tmp, reg, vendor, class_keys, FROM, ZERO_HASH, image_size)
        # the simulated fleet is taken as admitted ("open"): it measures planning and rollouts
        cfg = TrackerConfig(data_dir=tmp / "tracker", admission="open", waves=waves, command_ttl=3600,
                            halt_failure_rate=0.25).validate()
        tracker = Tracker(cfg, w3, dep, compiled=compiled)
        try:
            anchors = anchors_from_deployment(dep, compiled, trackers=[tracker.address], quorum=1,
                                              max_header_age=3600)
            tracker.cycle()
            tiers, leaves = _tiers(tracker, depth, fanout, devices)
            phase(f"creating {devices} device keys", devices)
            accounts = []
            for i in range(devices):
                accounts.append(Account.create())
                advance(i + 1)
            fleet = [SimDevice(f"sim-{i:06d}", accounts[i],
                               HW_CAPPED if (i * 7919 % 1000) / 1000 < capped_share else HW,
                               leaves[i % len(leaves)],
                               fails=(i * 104729 % 1000) / 1000 < fail_rate) for i in range(devices)]
            world = World(tracker, anchors, {}, time.time)
            world.payloads["0x" + h1.hex()] = (b1, p1)
            phase(f"registering {devices} devices (first heartbeats, {PRODUCT} {FROM})", devices)
            for i, dev in enumerate(fleet):  # registration: everyone reports 1.0.0, nothing to do yet
                dev.tier.heartbeat(str(dev.account.address), dev.heartbeat())
                advance(i + 1)
            phase(f"publishing {PRODUCT} {TO}")
            h2, b2, p2 = _publish(tmp, reg, vendor, class_keys, TO, h1, image_size)
            calls = count_calls(w3)  # from here on only the tracker uses the chain
            world.payloads["0x" + h2.hex()] = (b2, p2)
            t_release = time.monotonic()
            tracker.cycle()
            entitled = [d for d in fleet if d.hardware == HW]
            rounds = 0
            updated_so_far = 0
            while rounds < MAX_ROUNDS:
                rounds += 1
                phase(f"round {rounds}: devices updated to {TO}", len(entitled), updated_so_far)
                moved = 0
                for dev in fleet:
                    if _step(world, dev):
                        moved += 1
                        advance(updated_so_far + moved)
                updated_so_far += moved
                if all(d.version == TO or d.fails for d in entitled):
                    break
                if moved == 0 and rounds > len(waves) + 1:
                    break
            t_done = time.monotonic()
            rollouts = tracker.rollouts()
            outdated = {o["device_id"]: o for o in tracker.outdated_lists()["outdated"]}
        finally:
            tracker.close()
    causes: dict[str, int] = {}
    for dev in fleet:
        for code in dev.errors:
            causes[code] = causes.get(code, 0) + 1
    updated = sum(d.version == TO for d in entitled)
    capped = [d for d in fleet if d.hardware == HW_CAPPED]
    chain_queries = sum(calls.values())
    leaf_requests = sum(t.counters.requests for t in leaves)
    report: dict[str, Any] = {
        "devices": devices, "depth": depth, "fanout": fanout, "intermediates": len(tiers) - 1,
        "image_bytes": image_size, "waves": list(waves), "rounds": rounds,
        "entitled": len(entitled), "updated": updated, "not_entitled": len(capped),
        "not_entitled_untouched": all(d.version == FROM for d in capped),
        "failed_devices": sum(1 for d in entitled if d.version != TO),
        "failure_causes": causes,
        "seconds_to_full_fleet": round(t_done - t_release, 2),
        "bytes_served_by_firmware_server": world.bytes_served, "downloads": world.downloads,
        "chain_queries": {"devices": 0, "trackers": chain_queries, "by_method": dict(sorted(calls.items()))},
        "chain_queries_per_device": round(chain_queries / devices, 3),
        "server_module_requests": tiers[0].counters.requests,
        "server_module_bytes_per_device": round((tiers[0].counters.bytes_down + tiers[0].counters.bytes_up)
                                                / devices, 1),
        "device_requests": leaf_requests,
        "tiers": [t.counters.to_json() for t in tiers],
        "rollouts": [{k: r.get(k) for k in ("id", "state", "open_wave", "waves")} for r in rollouts],
        "not_entitled_listed_with_reason": sum(1 for d in capped if outdated.get(d.device_id, {}).get("reasons")),
        "seconds_total": round(time.monotonic() - t0, 2),
    }
    report["ok"] = (report["not_entitled_untouched"] and report["not_entitled_listed_with_reason"] == len(capped)
                    and (updated == len(entitled) if fail_rate == 0 else True))
    return report


