"""A device's update throughput and peak memory for a 256 MiB and a 1 GiB image, beside ``openssl dgst -sha256``.

Run with ``.venv/bin/python -m pytest tests/bench/bench_device.py -m bench -s`` (or
``scripts/bench tests/bench/bench_device.py``). Prints figures; asserts only a memory bound: the
update process's peak RSS must not grow with the image size by more than a small margin
(max(16 MiB, 10 %)), since the payload is streamed chunk by chunk and never held whole.

Setup, on the embedded chain: a registry, vendor acme, hardware class cls-a with a real X25519 key;
a status tracker and a firmware server (their apps in threads of this process, on loopback); for
each size a random image built into a bundle by the real author code, uploaded and published
(``publish_bundle``). Then, each in its own ``fwledger`` process on a freshly provisioned device:

* ``file``: ``device update --bundle B --evidence E`` (the bundle from disk; evidence from the tracker);
* ``network``: ``device update --tracker T`` (heartbeat, plan, evidence, header, payload streamed from
  the server over HTTP, then the same verification and install).

Per run: the wall time of the process, the updater's own verify and install times (install = read,
check and decrypt every chunk, write the inactive slot, hash it), the peak RSS of that process
(``os.wait4``'s resource usage of exactly that child, the ``getrusage`` record), and the same
bundle hashed by ``openssl dgst -sha256`` (the fastest SHA-256 here) for the ratio.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account

from entities.author.bundle import build_bundle
from entities.author.publish import publish_bundle
from entities.firmware_consumer.provision import ComponentBinding, anchors_from_deployment, provision_device
from entities.firmware_server.app import create_app as create_server_app
from entities.firmware_server.config import ServerConfig
from entities.firmware_server.ledger import LedgerView
from entities.firmware_server.runner import ServerThread
from entities.status_tracker.app import TrackerThread
from entities.status_tracker.app import create_app as create_tracker_app
from entities.status_tracker.config import TrackerConfig
from entities.status_tracker.daemon import Tracker
from ledger_node.compiler import registry_contract
from ledger_node.providers import connect, dev_accounts
from ledger_node.record import ZERO_HASH, Version
from ledger_node.registry import Registry, deploy
from tests.security.world import factory_image

pytestmark = pytest.mark.bench

REPO = Path(__file__).resolve().parents[2]
MIB = 1 << 20
SIZES = (256 * MIB, 1024 * MIB)
HW = "cls-a"
FWLEDGER = [sys.executable, "-m", "entities.cli"]


@dataclass
class Run:
    wall: float
    verify: float
    install: float
    rss_mib: float

    def rate(self, size: int) -> float:
        """MiB/s of verify + decrypt + install."""
        return size / MIB / (self.verify + self.install)


@dataclass
class Bench:
    registry: Registry
    class_key: X25519PrivateKey
    tracker_url: str
    tracker_address: str
    server_url: str
    tmp: Path


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    tmp = Path(tmp_path_factory.mktemp("bench-device"))
    w3 = connect("embedded")
    accts = dev_accounts(w3, 2)
    reg = Registry(w3, deploy(w3, accts[0]), accts[0])
    reg.add_vendor(accts[1].address, "acme")
    key = X25519PrivateKey.generate()
    reg.add_hardware(HW, 1, key.public_key().public_bytes_raw())
    tracker_key = Account.create()
    (tmp / "tracker").mkdir()
    (tmp / "tracker" / "tracker.key").write_text(tracker_key.key.hex())
    tracker = TrackerThread(create_tracker_app(Tracker(TrackerConfig(data_dir=tmp / "tracker", poll_interval=0.1),
                                                       w3, reg.deployment))).start()
    cfg = ServerConfig(data_dir=tmp / "server", poll_interval=0.1, max_upload_bytes=2048 * MIB,
                       max_total_bytes=8192 * MIB)
    server = ServerThread(create_server_app(cfg, LedgerView(w3, reg.deployment, cfg.ledger_index_path))).start()
    try:
        yield Bench(reg.with_account(accts[1]), key, tracker.url, tracker_key.address, server.url, tmp)
    finally:
        server.stop()
        tracker.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # gigabytes: not kept for pytest's tmp retention


def _random_file(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, 16 * MIB)
            fh.write(os.urandom(n))
            left -= n


def _wait(pred: Any, what: str, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"never: {what}"
        time.sleep(0.1)


def _published(b: Bench, size: int, prev: bytes) -> tuple[Path, bytes, int]:
    """Build, upload and publish a random image of ``size`` bytes; wait until tracker and server have it."""
    image, bundle = b.tmp / f"image-{size}.bin", b.tmp / f"bundle-{size}.fwb"
    _random_file(image, size)
    version = Version(1, size // MIB, 0)
    header = build_bundle(image, bundle, vendor_name="acme", product="main-fw", version=version,
                 link=f"{b.server_url}/v1/images", hardware=[HW],
                 class_keys={HW: b.class_key.public_key().public_bytes_raw()}, prev_hash=prev,
                 account=b.registry.account, chain_id=b.registry.deployment.chain_id,  # type: ignore[arg-type]
                 registry=b.registry.address)
    image.unlink()
    res = publish_bundle(bundle, [b.server_url], b.registry, timeout=600)
    hh = "0x" + res.header_hash.hex()
    block = int(b.registry.w3.eth.block_number)
    _wait(lambda: (requests.get(b.tracker_url + "/health", timeout=30).json().get("ledger_block") or -1) >= block,
          "tracker synced")
    _wait(lambda: any(r.get("header_hash") == hh and r.get("state") == "published"
                      for r in requests.get(b.server_url + "/v1/images", timeout=30).json()), "server published")
    return bundle, res.header_hash, header.record.data.file_size


def _device(b: Bench, name: str) -> Path:
    root = b.tmp / "devices" / name
    anchors = anchors_from_deployment(b.registry.deployment, registry_contract(), trackers=[b.tracker_address],
                                      quorum=1, max_header_age=3600)
    provision_device(root, device_id=name, hardware=HW, components={"main-fw": ComponentBinding("main-fw", "acme")},
                     anchors=anchors, class_private_key=b.class_key.private_bytes_raw(),
                     factory={"main-fw": factory_image("main-fw", "1.0.0")}, health_command=["true"])
    return root


def _measure(argv: list[str], log: Path) -> tuple[dict[str, Any], float, float]:
    """Run one ``fwledger`` process: (its JSON output, wall seconds, peak RSS in MiB from its rusage)."""
    started = time.perf_counter()
    with open(log, "wb") as err:
        proc = subprocess.Popen(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                                stderr=err)
        out = proc.stdout.read()  # type: ignore[union-attr]
        _, status, usage = os.wait4(proc.pid, 0)  # the rusage of exactly this child
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, log.read_text()
    return json.loads(out), wall, usage.ru_maxrss / 1024  # Linux: KiB


def _openssl(path: Path) -> float:
    """Best of two ``openssl dgst -sha256`` runs, seconds."""
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        subprocess.run(["openssl", "dgst", "-sha256", str(path)], check=True, capture_output=True)
        best = min(best, time.perf_counter() - t)
    return best


def test_update_throughput_and_constant_memory(bench: Bench) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    runs: dict[tuple[str, int], Run] = {}
    sha: dict[int, float] = {}
    prev = ZERO_HASH
    for size in SIZES:
        bundle, hh, file_size = _published(bench, size, prev)
        prev = hh
        ev = requests.get(f"{bench.tracker_url}/v1/evidence/0x{hh.hex()}?hardware={HW}", timeout=60)
        assert ev.status_code == 200, ev.text
        evidence = bench.tmp / f"evidence-{size}.json"
        evidence.write_bytes(ev.content)

        root = _device(bench, f"file-{size}")
        out, wall, rss = _measure([*FWLEDGER, "device", "update", "--dir", str(root), "--bundle", str(bundle),
                                   "--evidence", str(evidence), "--json"], bench.tmp / "update.log")
        assert out["outcome"] == "confirmed"
        runs[("file", size)] = Run(wall, out["seconds"]["verify"], out["seconds"]["install"], rss)
        shutil.rmtree(root)

        root = _device(bench, f"net-{size}")
        out, wall, rss = _measure([*FWLEDGER, "device", "update", "--dir", str(root), "--tracker", bench.tracker_url,
                                   "--json"], bench.tmp / "update.log")
        (res,) = out["results"]
        assert res["outcome"] == "confirmed" and res["download"]["bytes"] == file_size
        secs = res["report"]["seconds"]
        runs[("network", size)] = Run(wall, secs["verify"], secs["install"], rss)
        shutil.rmtree(root)

        sha[size] = _openssl(bundle)
        bundle.unlink()

    print("\ndevice update (one fwledger process per run; install = read + check + decrypt + write + hash)")
    print(f"{'image':>8} {'path':>8} {'wall s':>7} {'verify s':>9} {'install s':>10} {'MiB/s':>7} "
          f"{'openssl MiB/s':>14} {'openssl/update':>15} {'peak RSS MiB':>13}")
    for (path, size), r in runs.items():
        ssl = size / MIB / sha[size]
        print(f"{size // MIB:>6}Mi {path:>8} {r.wall:>7.2f} {r.verify:>9.3f} {r.install:>10.2f} {r.rate(size):>7.0f} "
              f"{ssl:>14.0f} {ssl / r.rate(size):>14.1f}x {r.rss_mib:>13.1f}")

    small, big = SIZES
    for path in ("file", "network"):
        a, b = runs[(path, small)].rss_mib, runs[(path, big)].rss_mib
        margin = max(16.0, 0.10 * a)
        assert b - a <= margin, f"{path}: peak RSS grew from {a:.1f} MiB to {b:.1f} MiB with a 4x larger image"
