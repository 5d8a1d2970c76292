"""Firmware server download throughput against a plain static file server, on loopback.

Run with ``.venv/bin/python -m pytest tests/bench/bench_server.py -m bench -s`` (or
``scripts/bench tests/bench/bench_server.py``). Prints figures; asserts only that every client
received every byte (and, for single downloads, the right SHA-256).

Setup: anvil, a registry, a 256 MiB image built into a bundle by the real author code, uploaded
to the real ``fwledger server run`` process and published; a registered device. The same payload
file (the server's own ``objects/<sha256>``) is served by ``python -m http.server``. Then:

* one client downloading the 256 MiB payload (32 MiB and 8 clients with ``scripts/bench --quick``) (best of 3), from each server;
* 50 concurrent clients each downloading the whole payload, aggregate throughput, from each.

The firmware server does more per request than the static one: a device signature to recover,
entitlement against the ledger index, a download-log row written with ``synchronous=FULL``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from eth_account import Account
from eth_account.signers.local import LocalAccount

from entities.author.publish import upload_bundle
from entities.bundle import build_bundle
from entities.protocol.http_auth import sign_request
from entities.service_identity import fetch_identity
from ledger_node import devnet
from ledger_node.errors import DevnetError
from ledger_node.providers import connect, dev_accounts
from ledger_node.record import Version
from ledger_node.registry import Registry, deploy, save_deployment
from tests.bench.report import Table, record, sized
from tests.helpers import stop_process

pytestmark = pytest.mark.bench

REPO = Path(__file__).resolve().parents[2]
SIZE = sized(256 << 20, 32 << 20)
CLIENTS = sized(50, 8)
BUF = 1 << 20


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, f"{url}: process exited {proc.returncode}"
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


def _download(port: int, path: str, headers: dict[str, str], *, digest: bool = False) -> tuple[int, float, bytes]:
    """GET on loopback reading into a reused 1 MiB buffer: (bytes, seconds, sha256 or b"")."""
    buf = bytearray(BUF)
    view = memoryview(buf)
    sha = hashlib.sha256() if digest else None
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        assert resp.status == 200, (resp.status, resp.read(300))
        got = 0
        while n := resp.readinto(view):
            got += n
            if sha is not None:
                sha.update(view[:n])
    finally:
        conn.close()
    return got, time.perf_counter() - started, sha.digest() if sha is not None else b""


def _concurrent(port: int, make_headers: object, clients: int) -> tuple[float, list[float], list[int]]:
    """``clients`` threads each downloading the payload at once: (wall seconds, per-client seconds, bytes)."""
    results: list[tuple[int, float]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def one(i: int) -> None:
        path, headers = make_headers(i)  # type: ignore[operator]
        barrier.wait()
        try:
            got, secs, _ = _download(port, path, headers)
            with lock:
                results.append((got, secs))
        except BaseException as exc:  # reported below
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    assert not errors, errors[:3]
    return wall, [s for _, s in results], [g for g, _ in results]


@pytest.fixture(scope="module")
def anvil() -> Iterator[devnet.AnvilProcess]:
    try:
        devnet.find_anvil()
    except DevnetError as exc:
        pytest.skip(f"anvil not installed ({exc})")
    node = devnet.AnvilProcess()
    node.start()
    try:
        yield node
    finally:
        node.stop()


def _mib_s(nbytes: float, secs: float) -> float:
    return nbytes / secs / (1 << 20)


def test_download_throughput_vs_static_file_server(anvil: devnet.AnvilProcess, tmp_path: Path) -> None:
    w3 = connect(anvil.url)
    admin, vendor = dev_accounts(w3, 2)
    reg = Registry(w3, deploy(w3, admin), admin)
    reg.add_vendor(vendor.address, "acme")
    class_pub = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    reg.add_hardware("cam-r1", 1, class_pub)
    home = tmp_path / "home"
    save_deployment(home, reg.deployment)

    image = tmp_path / "big.img"
    with open(image, "wb") as fh:
        for _ in range(SIZE // (16 << 20)):
            fh.write(os.urandom(16 << 20))
    t0 = time.perf_counter()
    header = build_bundle(image, tmp_path / "big.fwb", vendor_name="acme", product="cam-fw",
                          version=Version(1, 0, 0), link="http://127.0.0.1/big", hardware=("cam-r1",),
                          class_keys={"cam-r1": class_pub}, account=vendor, chain_id=reg.deployment.chain_id,
                          registry=reg.address)
    build_s = time.perf_counter() - t0
    image.unlink()
    size = header.record.data.file_size

    data = tmp_path / "data"
    port = devnet.free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "FWLEDGER_KEY_FILE": ""}
    server = subprocess.Popen(
        [sys.executable, "-m", "entities.cli", "--rpc", anvil.url, "--home", str(home), "server", "run",
         "--port", str(port), "--data", str(data), "--poll-interval", "0.2", "--max-upload", str(1 << 30)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "wb"))
    static: subprocess.Popen[bytes] | None = None
    try:
        _wait(f"http://127.0.0.1:{port}/health", server)
        t0 = time.perf_counter()
        upload_bundle(f"http://127.0.0.1:{port}", tmp_path / "big.fwb", vendor, timeout=600)
        upload_s = time.perf_counter() - t0
        hh = "0x" + reg.with_account(vendor).publish(header.record).header_hash.hex()
        end = time.monotonic() + 60
        while requests.get(f"http://127.0.0.1:{port}/v1/images", timeout=10).json()[0]["state"] != "published":
            assert time.monotonic() < end
            time.sleep(0.1)
        device: LocalAccount = Account.create()
        server_key = fetch_identity(f"http://127.0.0.1:{port}")
        body = b'{"device_id": "bench", "hardware": "cam-r1"}'
        requests.post(f"http://127.0.0.1:{port}/v1/devices", data=body, timeout=10,
                      headers={**sign_request(device, "POST", "/v1/devices", body, audience=server_key),
                               "Content-Type": "application/json"}).raise_for_status()

        objects = data / "objects"
        assert (objects / header.record.data.file_hash.hex()).stat().st_size == size
        sport = devnet.free_port()
        static = subprocess.Popen([sys.executable, "-m", "http.server", str(sport), "--bind", "127.0.0.1",
                                   "--directory", str(objects)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(f"http://127.0.0.1:{sport}/", static)
        static_path = "/" + header.record.data.file_hash.hex()
        ours_path = f"/v1/images/{hh}"

        def ours(_i: int = 0) -> tuple[str, dict[str, str]]:
            return ours_path, sign_request(device, "GET", ours_path, audience=server_key)

        def plain(_i: int = 0) -> tuple[str, dict[str, str]]:
            return static_path, {}

        single: dict[str, float] = {}
        for name, make, p in (("fwledger server", ours, port), ("python -m http.server", plain, sport)):
            best = None
            for _ in range(3):
                path, hdrs = make()
                got, secs, digest = _download(p, path, hdrs, digest=best is None)
                assert got == size
                if digest:
                    assert digest == header.record.data.file_hash
                best = secs if best is None else min(best, secs)
            assert best is not None
            single[name] = best
        many: dict[str, tuple[float, list[float]]] = {}
        for name, make, p in (("fwledger server", ours, port), ("python -m http.server", plain, sport)):
            wall, per, sizes = _concurrent(p, make, CLIENTS)
            assert sizes == [size] * CLIENTS
            many[name] = (wall, per)
    finally:
        if static is not None:
            stop_process(static)
        stop_process(server)

    ours_1, static_1 = single["fwledger server"], single["python -m http.server"]
    (ours_w, ours_per), (static_w, static_per) = many["fwledger server"], many["python -m http.server"]
    print(f"\nfirmware server download throughput, loopback, {os.cpu_count()} CPUs, payload {size / (1 << 20):.1f} MiB"
          f" (bundle build {build_s:.1f} s, upload {upload_s:.1f} s = {_mib_s(size, upload_s):.0f} MiB/s)")
    print(f"{'':34}{'fwledger server':>18}{'http.server':>14}{'ratio':>8}")
    print(f"{'1 client, MiB/s (best of 3)':34}{_mib_s(size, ours_1):>18.0f}{_mib_s(size, static_1):>14.0f}"
          f"{static_1 / ours_1:>8.2f}")
    print(f"{f'{CLIENTS} clients, aggregate MiB/s':34}{_mib_s(size * CLIENTS, ours_w):>18.0f}"
          f"{_mib_s(size * CLIENTS, static_w):>14.0f}{static_w / ours_w:>8.2f}")
    print(f"{f'{CLIENTS} clients, per client s (median)':34}{statistics.median(ours_per):>18.1f}"
          f"{statistics.median(static_per):>14.1f}")
    print(f"{f'{CLIENTS} clients, slowest client s':34}{max(ours_per):>18.1f}{max(static_per):>14.1f}")
    print("ratio = fwledger server's throughput / http.server's (above 1: the firmware server is faster)")
    mib = size / (1 << 20)
    table = Table("50-server", "Firmware server downloads against a static file server (loopback)",
                  "fwledger server run", "python -m http.server (same file)", source="tests/bench/bench_server.py",
                  words=("faster", "slower"))
    table.add("1 client, best of 3", _mib_s(size, ours_1), _mib_s(size, static_1), "MiB/s")
    table.add(f"{CLIENTS} concurrent clients, aggregate", _mib_s(size * CLIENTS, ours_w),
              _mib_s(size * CLIENTS, static_w), "MiB/s")
    table.add(f"{CLIENTS} concurrent clients, median client", statistics.median(ours_per),
              statistics.median(static_per), "s", better="lower", digits=2)
    table.add(f"{CLIENTS} concurrent clients, slowest client", max(ours_per), max(static_per), "s", better="lower",
              digits=2)
    table.notes.append(f"payload {mib:.1f} MiB (bundle build {build_s:.1f} s, signed upload "
                       f"{_mib_s(size, upload_s):.0f} MiB/s); the firmware server also recovers the device's "
                       "signature, checks entitlement against its ledger index and logs the download "
                       "(synchronous=FULL) per request")
    record(table)
