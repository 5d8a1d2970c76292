"""The world of ``fwledger demo`` (:mod:`entities.demo`): its constants, small helpers and the
shared state of one run.

:class:`DemoRun` holds what every step shares: the embedded chain and its accounts, the class
keys, the services' URLs and objects (``state``), the fleet of device folders, the report's steps
and figures, and what to stop at the end; its methods are the steps' common moves (wait until
the services are synced, one pass of a device's agent, build and publish a release, passes of
the whole fleet, a rollout's waves as text). :class:`PowerCut` is what a device probe raises to
stop an install where it stands. The steps themselves are in :mod:`entities.demo_steps`.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from web3 import Web3

from entities.author.publish import publish_bundle
from entities.bundle import build_bundle
from entities.firmware_consumer import FactoryImage, read_status
from entities.firmware_consumer.agent import Agent, AgentConfig, PassReport
from ledger_node.compiler import registry_contract
from ledger_node.errors import FwledgerError
from ledger_node.providers import connect, count_calls, dev_accounts, serialise_embedded
from ledger_node.record import ZERO_HASH, Dependency, ReleaseData, ReleaseRecord, Version, line_id

__all__ = ["DemoRun", "PowerCut"]

R1, R2 = "cam-r1", "cam-r2"
FACTORY, DRV_FACTORY = "0.9.0", "0.1.0"
IMAGE_SIZE = 1024 * 1024  # four of the install's 256 KiB writes: the power cut lands between two
DENIED_REGION = "embargo-zone"
WAIT = 30.0
WAVES = (0.25, 1.0)         # a canary wave of a quarter of the devices needing a release, then the rest
HALT_MIN_FAILURES = 2       # the location-denied device's one expected failure does not halt its rollout
RELAYED_EVERY = 3           # devices i % 3 == 0 talk to the intermediate module
MAX_PASSES = 5
# the devices with a part to play (classes alternate: even r1, odd r2)
TAMPERED, OTHER_CLASS, POWER_CUT, DENIED = 0, 1, 2, 3


class PowerCut(BaseException):
    """Raised by a device probe to stop an install where it stands, as a power cut stops the
    processor: not an ``Exception``, so no handler of the updater or the agent catches it; only
    ``finally`` blocks run (file descriptors closed, the device lock released, as the OS does
    when a process dies). What the device had written by then is all the next boot finds."""


def _bare_record(version: str, prev: bytes) -> ReleaseRecord:
    """A record published without a bundle (only to show what the chain refuses)."""
    image = f"main-fw {version}".encode() * 512
    return ReleaseRecord(prev_hash=prev, data=ReleaseData(
        merkle_root=hashlib.sha256(b"merkle" + image).digest(), vendor_name="acme", publish_time=0,
        product="main-fw", version=Version.parse(version), file_hash=hashlib.sha256(image).digest(),
        file_link="http://127.0.0.1/fw/acme/main-fw.bin", file_name=f"main-fw-{version}.bin",
        file_size=len(image), supported_hardware=(R1, R2), dependencies=()))


def _factory(component: str, version: str) -> FactoryImage:
    data = f"factory image of {component} {version}\n".encode() * 64
    return FactoryImage(version, hashlib.sha256(b"factory:" + data).digest(), data)


def _main_fw(root: Path) -> dict[str, Any]:
    return next(c for c in read_status(root)["components"] if c["name"] == "main-fw")


def _running(root: Path) -> tuple[str, str]:
    """The confirmed slot and the version in it."""
    st = _main_fw(root)
    return st["confirmed"], st["slots"][st["confirmed"]]["version"]


def _installed(root: Path) -> str:
    """What the device runs: ``main-fw/sensor-drv`` confirmed versions (``-`` for none)."""
    comps = {c["name"]: c for c in read_status(root)["components"]}
    out = []
    for name in ("main-fw", "sensor-drv"):
        c = comps[name]
        out.append((c["slots"][c["confirmed"]]["version"] if c.get("confirmed") else None) or "-")
    return "/".join(out)


def _slot_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "components").glob("*/slot_*"))}


def _names(devs: list[str]) -> str:
    return ", ".join(devs) if devs else "none"


@contextmanager
def _flipped(path: Path, offset: int) -> Iterator[None]:
    """One byte of a file changed for the duration of the block (the server's disk, tampered)."""
    os.chmod(path, 0o644)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))
    try:
        yield
    finally:
        with open(path, "r+b") as fh:
            fh.seek(offset)
            fh.write(byte)


def _counted_view(w3: Web3) -> tuple[Web3, dict[str, int]]:
    """A ``Web3`` on the same in-process chain whose JSON-RPC calls are counted apart (one
    party's chain queries), with :func:`ledger_node.providers.count_calls` on its own provider
    object. The view shares the chain and the provider's lock (:func:`serialise_embedded`, set
    on ``w3`` first, so the copy's calls go through it)."""
    serialise_embedded(w3)
    view = Web3(copy.copy(w3.provider))
    calls = count_calls(view)
    return view, calls


class DemoRun:
    """One run of the demo: the state its steps share (see the module docstring)."""

    def __init__(self, *, devices: int, quiet: bool, console: Console | None) -> None:
        self.quiet = quiet
        self.console = console or Console(stderr=True)
        self.bars_off = quiet or not self.console.is_terminal  # progress bars only on a terminal
        self.devices = max(devices, 4)  # tampered, other class, power cut, location-denied
        self.steps: list[dict[str, Any]] = []
        self.figures: dict[str, Any] = {"gas": {}}
        self.t0 = time.monotonic()
        self.tmpdir = tempfile.TemporaryDirectory(prefix="fwledger-demo-")
        self.tmp = Path(self.tmpdir.name)
        self.stoppers: list[Callable[[], None]] = []
        self.quieted: list[tuple[logging.Logger, int]] = []
        self.w3 = connect("embedded")
        self.a1, self.vendor, self.a2, self.a3, self.stranger = dev_accounts(self.w3, 5)
        self.compiled = registry_contract()
        self.class_keys = {hw: X25519PrivateKey.generate() for hw in (R1, R2)}
        self.state: dict[str, Any] = {"heads": {}, "rels": {}}
        self.fleet: list[dict[str, Any]] = []
        self.order = itertools.count()
        self.chain_calls: dict[str, dict[str, int]] = {}

    def step(self, name: str, fn: Callable[[], str]) -> None:
        console, steps, quiet = self.console, self.steps, self.quiet
        started = time.monotonic()
        try:
            detail, ok = fn(), True
        except AssertionError as exc:
            detail, ok = f"unexpected: {exc}", False
        except (FwledgerError, requests.RequestException) as exc:
            detail, ok = f"unexpected error: {exc}", False
        steps.append({"step": name, "ok": ok, "detail": detail, "seconds": round(time.monotonic() - started, 3)})
        if not quiet:
            mark = "[green]ok[/]  " if ok else "[red]FAIL[/]"
            console.print(f"{mark} {name}: {detail}")

    def gas(self, tx: Any) -> int:
        w3 = self.w3
        return int(w3.eth.get_transaction_receipt(tx)["gasUsed"])

    def note(self, dev: dict[str, Any], text: str) -> None:
        dev["result"] = f"{dev['result']}; {text}" if dev["result"] else text

    def synced(self, *versions: str) -> None:
        """Wait until the tracker indexed the chain's head, the intermediate's head caught up with
        it, and the server offers ``versions``."""
        w3, state = self.w3, self.state
        block = int(w3.eth.block_number)
        end = time.monotonic() + WAIT
        while (requests.get(state["trk"] + "/health", timeout=WAIT).json().get("ledger_block") or -1) < block:
            assert time.monotonic() < end, f"the tracker never reached block {block}"
            time.sleep(0.05)
        while True:
            resp = requests.get(state["inter_url"] + "/v1/attestation", timeout=WAIT)
            if resp.status_code == 200 and int(resp.json()["attestation"]["block_number"]) >= block:
                break
            assert time.monotonic() < end, f"the intermediate never attested block {block}: {resp.text[:200]}"
            time.sleep(0.05)
        want = {"0x" + state["rels"][v]["hh"].hex() for v in versions}
        while want:
            rows = requests.get(state["srv"] + "/v1/images", timeout=WAIT).json()
            want -= {r.get("header_hash") for r in rows if r.get("state") == "published"}
            assert time.monotonic() < end, f"the server never offered {sorted(want)}"
            time.sleep(0.05)

    def one_pass(self, dev: dict[str, Any], release_hash: bytes | None = None, *, probe: Any = None) -> PassReport:
        """One pass of the device's agent; it acts on signed commands only (or on ``release_hash``,
        an administrator's explicit request)."""
        cfg = AgentConfig(trackers=(dev["tracker"],), location=dev["location"], follow="commands")
        with Agent(dev["root"], cfg, probe=probe) as agent:
            return agent.check_and_update(release=release_hash)

    def refused_pass(self, dev: dict[str, Any], release_hash: bytes) -> tuple[PassReport, tuple[Any, ...]]:
        """An explicit request the device must refuse: one pass, then its slots are checked
        byte-identical. Returns the report and what it ran before (slot, version)."""
        one_pass = self.one_pass
        before = (_running(dev["root"]), _slot_bytes(dev["root"]))
        report = one_pass(dev, release_hash)
        assert (_running(dev["root"]), _slot_bytes(dev["root"])) == before, "the device's slots changed"
        return report, before[0]

    def release(self, version: str, hardware: tuple[str, ...], product: str = "main-fw",
                deps: tuple[Dependency, ...] = ()) -> Any:
        tmp, vendor, class_keys, state, gas = self.tmp, self.vendor, self.class_keys, self.state, self.gas
        image = os.urandom(IMAGE_SIZE)
        src, out = tmp / f"{product}-{version}.bin", tmp / f"{product}-{version}.fwb"
        src.write_bytes(image)
        line = line_id("acme", product)
        header = build_bundle(src, out, vendor_name="acme", product=product, version=Version.parse(version),
                              link=f"{state['srv']}/v1/images", hardware=list(hardware), dependencies=deps,
                              class_keys={hw: class_keys[hw].public_key().public_bytes_raw() for hw in hardware},
                              prev_hash=state["heads"].get(line, ZERO_HASH), account=vendor,
                              chain_id=state["dep"].chain_id, registry=state["dep"].address)
        res = publish_bundle(out, [state["srv"]], state["r1"].with_account(vendor))
        state["heads"][line] = res.header_hash
        rel = {"version": version, "hh": res.header_hash, "key": "0x" + res.header_hash.hex(),
               "file_hash": header.record.data.file_hash, "image": image, "gas": gas(res.tx),
               "payload_offset": header.payload_offset}
        state["rels"][version if product == "main-fw" else f"{product} {version}"] = rel
        return rel

    def rollout_of(self, rel: dict[str, Any]) -> dict[str, Any] | None:
        state = self.state
        return next((r for r in state["tracker"].rollouts() if str(r["header_hash"]).lower() == rel["key"]), None)

    def await_rollouts(self, expect: dict[str, int]) -> dict[str, dict[str, Any]]:
        """Wait until the tracker's rollout of each release (by version key) has the expected
        number of devices (the whole-fleet assessment after the ledger changed)."""
        state, rollout_of = self.state, self.rollout_of
        end = time.monotonic() + WAIT
        while True:
            got = {v: rollout_of(state["rels"][v]) for v in expect}
            if all(r is not None and r["devices"] == expect[v] for v, r in got.items()):
                return {v: r for v, r in got.items() if r is not None}
            assert time.monotonic() < end, f"rollouts never formed as expected {expect}: " + str(
                {v: None if r is None else r["devices"] for v, r in got.items()})
            time.sleep(0.05)

    def fleet_passes(self, what: str, target: Callable[[dict[str, Any]], bool]) -> int:
        """Passes over the whole fleet (each device acts on its signed commands only) until a pass
        brings no command; ``target`` says whether a device is where it should end. Returns the
        number of passes."""
        console, bars_off, fleet, order, note, one_pass = (
            self.console, self.bars_off, self.fleet, self.order, self.note, self.one_pass)
        progress = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=console, transient=True, disable=bars_off)
        with progress:
            task = progress.add_task(what, total=len(fleet))
            for n in range(1, MAX_PASSES + 1):
                commanded = 0
                for dev in fleet:
                    report = one_pass(dev)
                    assert not report.refusals, f"{dev['device']} refused commands: {report.refusals}"
                    accepted = [c for c in report.commands if c["accepted"]]
                    commanded += len(accepted)
                    wave = accepted[0]["wave"] if accepted else None
                    for r in report.results:
                        dev.setdefault("installs", {})[r.header_hash] = (next(order), n, r.ok, r.code)
                        if r.report is not None and r.product == "main-fw" and dev.get("interrupted"):
                            dev["resumed_from"] = r.report.get("resumed_from")
                        name = ("drv " if r.product == "sensor-drv" else "") + r.version
                        note(dev, f"{name} {r.outcome}" + (f" ({r.code})" if r.code else "")
                             + (f", wave {wave}" if wave is not None else ""))
                    dev["after"] = _installed(dev["root"])
                    progress.update(task, completed=sum(target(d) for d in fleet))
                if commanded == 0:
                    return n
        raise AssertionError(f"commands still flowing after {MAX_PASSES} passes")

    def waves_text(self, version: str) -> str:
        """One rollout's waves as the tracker records them; checks that every device of a wave
        installed and reported before any device of a later wave got its command."""
        state, fleet, rollout_of = self.state, self.fleet, self.rollout_of
        rel = state["rels"][version]
        summary = rollout_of(rel)
        assert summary is not None, f"no rollout of {version}"
        members = state["tracker"].rollout(summary["id"])["members"]
        assert summary["state"] == "completed", f"rollout #{summary['id']} is {summary['state']}: {summary}"
        seen = {d["device"]: d.get("installs", {}).get(rel["key"]) for d in fleet}
        parts = []
        last: tuple[int, str] | None = None
        for w, share in enumerate(WAVES):
            mine = [m for m in members if m["wave"] == w]
            acted = [seen[m["device_id"]] for m in mine if seen.get(m["device_id"]) is not None]
            if last is not None and acted:
                first = min(a[0] for a in acted)
                assert first > last[0], f"wave {w} of {version} acted before wave {last[1]} had reported"
            if acted:
                last = (max(a[0] for a in acted), str(w))
            names = [m["device_id"] + ("" if m["state"] == "succeeded" and m["code"] is None
                                       else f" ({m['code'] or m['state']})") for m in mine]
            if w == 0 and not mine:
                parts.append(f"wave 0 ({int(share * 100)}%) drew none of them, so the tracker opened the next at once")
                continue
            label = f"wave {w} ({int(share * 100)}%)" if w == 0 else f"then wave {w}"
            parts.append(f"{label}: {_names(names)}")
        return (f"{summary['product']} {summary['to_version']} (rollout #{summary['id']}, {len(members)} devices) "
                + "; ".join(parts) + f" -> {summary['state']}, {summary['succeeded']} succeeded, "
                f"{summary['failed']} failed")
