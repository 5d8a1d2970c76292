"""A device-side world for the benchmarks (``bench_device``, ``bench_tuf``): the shared ledger world
(``tests/world.py``: an embedded chain, a registry, vendor acme, hardware class cls-a with a real
X25519 key), a status tracker and a firmware server (their apps in threads of this process, on
loopback); helpers to publish a random image through the real author code, provision a device and
time one ``fwledger`` process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account

from entities.author.publish import publish_bundle
from entities.bundle import build_bundle
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
from ledger_node.record import Version
from ledger_node.registry import Registry
from tests.conftest import Chain
from tests.security.world import factory_image
from tests.world import LedgerWorld

REPO = Path(__file__).resolve().parents[2]
MIB = 1 << 20
HW = "cls-a"
FWLEDGER = [sys.executable, "-m", "entities.cli"]


@dataclass
class Bench:
    """The shared ledger world (``tests/world.py``) and the tracker and firmware server serving it."""

    ledger: LedgerWorld
    tracker_url: str
    tracker_address: str
    server_url: str
    tmp: Path

    @property
    def registry(self) -> Registry:
        """The registry with vendor acme's key."""
        return self.ledger.as_vendor()

    @property
    def class_key(self) -> X25519PrivateKey:
        return self.ledger.private_keys[HW]


#: seconds between the ledger polls of the tracker and the firmware server. They are threads of the
#: benchmark process, as python-tuf's file server is: a poll of the embedded chain holds the GIL for
#: milliseconds, and every 0.1 s it slowed the servers' answers to both clients (measured: the 64 MiB
#: install 0.175-0.18 s with 1 s, 0.20 s with 0.1 s); a real node is polled over HTTP
FOLLOW_INTERVAL = 1.0


def device_world(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Bench]:
    """The body of a module-scoped fixture: yields the world, stops everything after."""
    tmp = Path(tmp_path_factory.mktemp(name))
    chain = Chain.connect(accounts=2)
    ledger = LedgerWorld.create(chain, vendors={"acme": chain.vendor}, hardware={HW: 1})
    w3, reg = chain.w3, ledger.registry
    tracker_key = Account.create()
    (tmp / "tracker").mkdir()
    (tmp / "tracker" / "tracker.key").write_text(tracker_key.key.hex())
    # one wave: a benchmark measures the update path, not a rollout holding devices back for its canary
    tracker_cfg = TrackerConfig(data_dir=tmp / "tracker", poll_interval=FOLLOW_INTERVAL, admission="open",
                                waves=(1.0,))
    tracker = TrackerThread(create_tracker_app(Tracker(tracker_cfg, w3, reg.deployment))).start()
    cfg = ServerConfig(data_dir=tmp / "server", poll_interval=FOLLOW_INTERVAL, admission="open", max_upload_bytes=2048 * MIB,
                       max_total_bytes=8192 * MIB)
    server = ServerThread(create_server_app(cfg, LedgerView(w3, reg.deployment, cfg.ledger_index_path))).start()
    try:
        yield Bench(ledger, tracker.url, tracker_key.address, server.url, tmp)
    finally:
        server.stop()
        tracker.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # gigabytes: not kept for pytest's tmp retention


def random_file(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, 16 * MIB)
            fh.write(os.urandom(n))
            left -= n


def wait_for(pred: Any, what: str, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"never: {what}"
        time.sleep(0.1)


def published(b: Bench, size: int, prev: bytes, *, keep_image: Path | None = None) -> tuple[Path, bytes, int]:
    """Build, upload and publish a random image of ``size`` bytes; wait until tracker and server have it.

    ``keep_image``: also keep the plaintext image at that path (the python-tuf comparison serves it).
    Returns (bundle path, header hash, payload size).
    """
    image, bundle = b.tmp / f"image-{size}.bin", b.tmp / f"bundle-{size}.fwb"
    random_file(image, size)
    version = Version(1, size // MIB, 0)
    header = build_bundle(image, bundle, vendor_name="acme", product="main-fw", version=version,
                          link=f"{b.server_url}/v1/images", hardware=[HW],
                          class_keys=b.ledger.class_keys, prev_hash=prev,
                          account=b.registry.account, chain_id=b.registry.deployment.chain_id,  # type: ignore[arg-type]
                          registry=b.registry.address)
    if keep_image is not None:
        os.replace(image, keep_image)
    else:
        image.unlink()
    res = publish_bundle(bundle, [b.server_url], b.registry, timeout=600)
    hh = "0x" + res.header_hash.hex()
    block = int(b.registry.w3.eth.block_number)
    wait_for(lambda: (requests.get(b.tracker_url + "/health", timeout=30).json().get("ledger_block") or -1) >= block,
             "tracker synced")
    wait_for(lambda: any(r.get("header_hash") == hh and r.get("state") == "published"
                         for r in requests.get(b.server_url + "/v1/images", timeout=30).json()), "server published")
    return bundle, res.header_hash, header.record.data.file_size


def device(b: Bench, name: str) -> Path:
    """A freshly provisioned device folder (factory image main-fw 1.0.0, health check ``true``)."""
    root = b.tmp / "devices" / name
    anchors = anchors_from_deployment(b.registry.deployment, registry_contract(), trackers=[b.tracker_address],
                                      quorum=1, max_header_age=3600)
    provision_device(root, device_id=name, hardware=HW, components={"main-fw": ComponentBinding("main-fw", "acme")},
                     anchors=anchors, class_private_key=b.class_key.private_bytes_raw(),
                     factory={"main-fw": factory_image("main-fw", "1.0.0")}, health_command=["true"])
    return root


# Linux carries a process's peak RSS across exec, and a child forked (or vforked) from this big
# test process starts with this process's pages: os.wait4 on a direct child reports at least this
# process's RSS. So children are started through a small launcher (a bare interpreter, ~10 MiB)
# that forks and waits for the real command and writes that grandchild's ru_maxrss (KiB) to a file.
_LAUNCHER = """\
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as fh:
    fh.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


_COMPILED: list[bool] = []


def _precompile() -> None:
    """Write the project's bytecode once, as an installed package has it: where the environment sets
    PYTHONDONTWRITEBYTECODE, a source checkout would otherwise compile ~40 modules in every measured
    process (about 0.1 s each time) while the baseline's site-packages are compiled."""
    if not _COMPILED:
        import compileall

        for package in ("entities", "ledger_node"):
            compileall.compile_dir(str(REPO / package), quiet=1)
        _COMPILED.append(True)


def measure(argv: list[str], log: Path) -> tuple[dict[str, Any], float, float]:
    """Run one process that prints JSON: (its JSON output, wall seconds, its own peak RSS in MiB)."""
    _precompile()
    rss_file = log.with_name(log.name + ".rss")
    started = time.perf_counter()
    with open(log, "wb") as err:
        proc = subprocess.run([sys.executable, "-c", _LAUNCHER, str(rss_file), *argv], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=err,
                              check=False)
    wall = time.perf_counter() - started
    assert proc.returncode == 0, log.read_text()
    return json.loads(proc.stdout), wall, int(rss_file.read_text()) / 1024  # Linux: KiB


def peak_rss(argv: list[str]) -> tuple[float, float]:
    """Run ``argv`` (output discarded) through the launcher: (wall seconds, its peak RSS in MiB)."""
    _precompile()
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = Path(tmp) / "rss"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", _LAUNCHER, str(rss_file), *argv], stdout=subprocess.DEVNULL,
                       check=True)
        return time.perf_counter() - started, int(rss_file.read_text()) / 1024
