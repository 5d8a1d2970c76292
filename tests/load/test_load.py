"""Load tests, on demand: ``scripts/bench --load`` (or ``scripts/bench tests/load``); marked ``bench``
so the default run skips them. Everything on loopback, every loop bounded in count and time.

Both services run as real processes (``fwledger server run``, ``fwledger tracker run --role server``
on an anvil devnet) so that their memory is theirs alone: the peak RSS reported is the process's
``VmHWM`` read from ``/proc`` after the load, beside its ``VmRSS`` when idle before it.

* ``test_concurrent_downloads``: ``DOWNLOADS`` (200) registered devices download one published
  16 MiB payload from one firmware server at the same moment (each a signed GET); the same
  payload file served by ``python -m http.server`` to as many clients is the baseline.
* ``test_signed_heartbeats``: ``HEARTBEATS`` (10,000) device-signed heartbeats from ``DEVICES``
  (1,000) devices sent open-loop at 10,000 per minute to one server-module tracker (requests are
  signed beforehand, each for its planned send time, so that the load generator only sends).
  Latency is counted from the planned send time, so a tracker falling behind shows in it.

Errors must be 0 (asserted). ``scripts/bench --quick`` uses 20 downloads of 2 MiB and 1,000
heartbeats at the same rate.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account
from eth_account.signers.local import LocalAccount

from entities.author.publish import upload_bundle
from entities.bundle import build_bundle
from entities.protocol.http_auth import sign_request
from entities.service_identity import fetch_identity
from ledger_node import devnet
from ledger_node.errors import DevnetError
from ledger_node.providers import connect, dev_accounts
from ledger_node.record import ZERO_HASH, ReleaseData, ReleaseRecord, Version
from ledger_node.registry import Registry, deploy, save_deployment
from tests.bench.report import Table, record, sized

pytestmark = pytest.mark.bench

REPO = Path(__file__).resolve().parents[2]
MIB = 1 << 20
DOWNLOADS = sized(200, 20)
PAYLOAD = sized(16 * MIB, 2 * MIB)
RATE_PER_MIN = 10_000
HEARTBEATS = sized(10_000, 1_000)
DEVICES = sized(1_000, 100)
SENDERS = 48
HB_PATH = "/v1/devices/heartbeat"


# ----------------------------------------------------------------------------- services


@dataclass
class Chain:
    anvil: devnet.AnvilProcess
    registry: Registry
    vendor: LocalAccount
    class_pub: bytes
    home: Path


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    try:
        devnet.find_anvil()
    except DevnetError as exc:
        pytest.skip(f"anvil not installed ({exc})")
    node = devnet.AnvilProcess()
    node.start()
    try:
        w3 = connect(node.url)
        admin, vendor = dev_accounts(w3, 2)
        reg = Registry(w3, deploy(w3, admin), admin)
        reg.add_vendor(vendor.address, "acme")
        class_pub = X25519PrivateKey.generate().public_key().public_bytes_raw()
        reg.add_hardware("cam-r1", 1, class_pub)
        home = Path(tmp_path_factory.mktemp("load-home"))
        save_deployment(home, reg.deployment)
        yield Chain(node, reg, vendor, class_pub, home)
    finally:
        node.stop()


class Service:
    """A ``fwledger`` service process on loopback."""

    def __init__(self, argv: list[str], url: str, log: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "FWLEDGER_KEY_FILE": ""}
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
        self.url, self.log = url, log

    def wait_up(self, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc.poll() is None, f"{self.url}: exited {self.proc.returncode}: {self.log.read_text()[-2000:]}"
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.url} never answered")

    def memory(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) of the process in MiB."""
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
        return fields["VmRSS"], fields["VmHWM"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ----------------------------------------------------------------------------- 200 concurrent downloads


def _get(port: int, path: str, headers: dict[str, str], expect: int) -> tuple[float, float]:
    """One download read through a reused buffer: (seconds to first byte, seconds in all)."""
    buf = memoryview(bytearray(1 << 20))
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        if resp.status != 200:
            raise AssertionError(f"HTTP {resp.status}: {resp.read(300)!r}")
        first = 0.0
        got = 0
        while n := resp.readinto(buf):
            if not got:
                first = time.perf_counter() - started
            got += n
        if got != expect:
            raise AssertionError(f"short read {got} of {expect}")
    finally:
        conn.close()
    return first, time.perf_counter() - started


def _storm(port: int, requests_: list[tuple[str, dict[str, str]]], expect: int
           ) -> tuple[float, list[tuple[float, float]], list[str]]:
    """All downloads at once (a barrier): (wall seconds, (ttfb, total) per success, errors)."""
    done: list[tuple[float, float]] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(requests_) + 1)

    def one(path: str, headers: dict[str, str]) -> None:
        barrier.wait()
        try:
            res = _get(port, path, headers, expect)
            with lock:
                done.append(res)
        except Exception as exc:  # counted, reported
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=one, args=r, daemon=True) for r in requests_]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join(600)
    return time.perf_counter() - started, done, errors


def test_concurrent_downloads(chain: Chain, tmp_path: Path) -> None:
    reg = chain.registry
    image = tmp_path / "image.bin"
    image.write_bytes(os.urandom(PAYLOAD))
    header = build_bundle(image, tmp_path / "b.fwb", vendor_name="acme", product="load-fw", version=Version(1, 0, 0),
                          link="http://127.0.0.1/load", hardware=("cam-r1",), class_keys={"cam-r1": chain.class_pub},
                          account=chain.vendor, chain_id=reg.deployment.chain_id, registry=reg.address)
    size = header.record.data.file_size
    port = devnet.free_port()
    data = tmp_path / "server-data"
    server = Service([sys.executable, "-m", "entities.cli", "--rpc", chain.anvil.url, "--home", str(chain.home),
                      "server", "run", "--port", str(port), "--data", str(data), "--poll-interval", "0.2"],
                     f"http://127.0.0.1:{port}", tmp_path / "server.log")
    static: subprocess.Popen[bytes] | None = None
    try:
        server.wait_up()
        upload_bundle(server.url, tmp_path / "b.fwb", chain.vendor, timeout=300)
        hh = "0x" + reg.with_account(chain.vendor).publish(header.record).header_hash.hex()
        end = time.monotonic() + 60
        while not any(r["header_hash"] == hh and r["state"] == "published"
                      for r in requests.get(server.url + "/v1/images", timeout=10).json()):
            assert time.monotonic() < end, "never published"
            time.sleep(0.1)
        devices = [Account.create() for _ in range(DOWNLOADS)]
        server_key = fetch_identity(server.url)
        with requests.Session() as s:
            for i, dev in enumerate(devices):
                body = json.dumps({"device_id": f"load-{i}", "hardware": "cam-r1"}).encode()
                s.post(server.url + "/v1/devices", data=body, timeout=30,
                       headers={**sign_request(dev, "POST", "/v1/devices", body, audience=server_key),
                                "Content-Type": "application/json"}).raise_for_status()
        idle_rss, _ = server.memory()
        path = f"/v1/images/{hh}"
        ours = [(path, sign_request(dev, "GET", path, audience=server_key)) for dev in devices]
        ours_wall, ours_done, ours_err = _storm(port, ours, size)
        rss_after, hwm = server.memory()

        objects = data / "objects"
        assert (objects / header.record.data.file_hash.hex()).stat().st_size == size
        sport = devnet.free_port()
        static = subprocess.Popen([sys.executable, "-m", "http.server", str(sport), "--bind", "127.0.0.1",
                                   "--directory", str(objects)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 30
        while True:
            try:
                requests.get(f"http://127.0.0.1:{sport}/", timeout=2)
                break
            except requests.RequestException:
                assert time.monotonic() < end and static.poll() is None
                time.sleep(0.1)
        plain: list[tuple[str, dict[str, str]]] = [("/" + header.record.data.file_hash.hex(), {}) for _ in devices]
        static_wall, static_done, static_err = _storm(sport, plain, size)
    finally:
        if static is not None:
            static.terminate()
            static.wait(20)
        server.stop()

    mib = size / MIB
    ours_tot = [t for _, t in ours_done]
    static_tot = [t for _, t in static_done]
    print(f"\nload: {DOWNLOADS} concurrent downloads of {mib:.1f} MiB, one firmware server process, loopback")
    print(f"{'':34}{'fwledger server':>16}{'http.server':>13}")
    print(f"{'errors':34}{len(ours_err):>16}{len(static_err):>13}")
    print(f"{'aggregate MiB/s':34}{DOWNLOADS * mib / ours_wall:>16.0f}{DOWNLOADS * mib / static_wall:>13.0f}")
    print(f"{'download s, p50':34}{_pct(ours_tot, 0.5):>16.2f}{_pct(static_tot, 0.5):>13.2f}")
    print(f"{'download s, p99':34}{_pct(ours_tot, 0.99):>16.2f}{_pct(static_tot, 0.99):>13.2f}")
    print(f"{'first byte s, p99':34}{_pct([f for f, _ in ours_done], 0.99):>16.2f}"
          f"{_pct([f for f, _ in static_done], 0.99):>13.2f}")
    print(f"server RSS MiB: idle {idle_rss:.1f}, after {rss_after:.1f}, peak (VmHWM) {hwm:.1f}")
    if ours_err or static_err:
        print("errors:", (ours_err + static_err)[:5])

    table = Table("70-load-downloads", f"Load: {DOWNLOADS} concurrent device downloads from one firmware server",
                  "fwledger server run", "python -m http.server (same file)", source="tests/load/test_load.py",
                  words=("better", "worse"))
    table.add("errors", len(ours_err), len(static_err), "count", better="lower")
    table.add("aggregate throughput", DOWNLOADS * mib / ours_wall, DOWNLOADS * mib / static_wall, "MiB/s")
    table.add("downloads completed per second", DOWNLOADS / ours_wall, DOWNLOADS / static_wall, "1/s", digits=1)
    table.add("download time p50", _pct(ours_tot, 0.5), _pct(static_tot, 0.5), "s", better="lower", digits=2)
    table.add("download time p99", _pct(ours_tot, 0.99), _pct(static_tot, 0.99), "s", better="lower", digits=2)
    table.add("time to first byte p99", _pct([f for f, _ in ours_done], 0.99),
              _pct([f for f, _ in static_done], 0.99), "s", better="lower", digits=2)
    table.add("server peak RSS (VmHWM) / its idle RSS", hwm, idle_rss, "MiB", better="lower", digits=1)
    table.notes.append(f"payload {mib:.1f} MiB, {DOWNLOADS} registered devices each sending a signed GET at the same "
                       "moment (a barrier); the client threads share this machine's 2 cores with the server; "
                       "http.server listens with a backlog of 5, so some of its clients wait for a SYN retry (~1 s)")
    record(table)
    assert not ours_err, ours_err[:5]
    assert len(ours_done) == DOWNLOADS  # the baseline's own refusals (backlog 5) are reported, not ours to fail


# ----------------------------------------------------------------------------- 10,000 heartbeats per minute


def _sign_batch(batch: list[tuple[str, bytes, float, str]]) -> list[dict[str, str]]:
    """Worker of a process pool: sign each (private key hex, body, time to sign for, audience)."""
    accounts: dict[str, LocalAccount] = {}
    out = []
    for key, body, at, audience in batch:
        acct = accounts.get(key) or accounts.setdefault(key, Account.from_key(key))
        out.append({**sign_request(acct, "POST", HB_PATH, body, now=at, audience=audience),
                    "Content-Type": "application/json"})
    return out


def _heartbeat_body(i: int) -> bytes:
    version = "0.9.0" if i % 3 else "1.0.0"
    return json.dumps({"device_id": f"dev-{i:05d}", "hardware": "cam-r1", "addons": {}, "location": "lab-1",
                       "components": {"main-fw": {"vendor": "acme", "version": version, "slot": "A"}},
                       "ready": True, "last_result": None}).encode()


def _open_loop(url: str, plan: list[tuple[float, bytes, dict[str, str]]], t0: float
               ) -> tuple[list[float], list[float], list[str], float]:
    """Send each request at its planned time (relative to ``t0``) from ``SENDERS`` threads:
    (latency from the planned time, service time from the actual send, errors, last completion)."""
    latency: list[float] = []
    service: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    local = threading.local()
    last = [t0]

    def send(at: float, body: bytes, headers: dict[str, str]) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        sent = time.perf_counter()
        try:
            resp = session.post(url + HB_PATH, data=body, headers=headers, timeout=60)
            ok = resp.status_code == 200
            problem = "" if ok else f"HTTP {resp.status_code}: {resp.text[:200]}"
        except requests.RequestException as exc:
            ok, problem = False, f"{type(exc).__name__}: {exc}"
        done = time.perf_counter()
        with lock:
            last[0] = max(last[0], done)
            if ok:
                latency.append(done - (t0 + at))
                service.append(done - sent)
            else:
                errors.append(problem)

    with concurrent.futures.ThreadPoolExecutor(SENDERS) as pool:
        futures = []
        for at, body, headers in plan:
            delay = t0 + at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(send, at, body, headers))
        concurrent.futures.wait(futures, timeout=600)
    return latency, service, errors, last[0]


def test_signed_heartbeats(chain: Chain, tmp_path: Path) -> None:
    reg = chain.registry
    # one published release on the line the devices report, so that heartbeats mark devices outdated
    reg.with_account(chain.vendor).publish(ReleaseRecord(prev_hash=ZERO_HASH, data=ReleaseData(
        merkle_root=hashlib.sha256(b"m").digest(), vendor_name="acme", publish_time=0, product="main-fw",
        version=Version(1, 0, 0), file_hash=hashlib.sha256(b"f").digest(), file_link="https://fw.example/1.bin",
        file_name="main-fw-1.0.0.bin", file_size=1 << 20, supported_hardware=("cam-r1",))))
    port = devnet.free_port()
    admin = Account.create()
    tracker = Service([sys.executable, "-m", "entities.cli", "--rpc", chain.anvil.url, "--home", str(chain.home),
                       "tracker", "run", "--role", "server", "--listen", f"127.0.0.1:{port}",
                       "--data", str(tmp_path / "tracker"), "--poll-interval", "0.5", "--admin-key", admin.address,
                       "--json"], f"http://127.0.0.1:{port}", tmp_path / "tracker.log")
    try:
        tracker.wait_up()
        block = int(reg.w3.eth.block_number)
        end = time.monotonic() + 60
        while (requests.get(tracker.url + "/health", timeout=5).json().get("ledger_block") or -1) < block:
            assert time.monotonic() < end, "tracker never synced"
            time.sleep(0.1)

        keys = [Account.create().key.hex() for _ in range(DEVICES)]
        interval = 60.0 / RATE_PER_MIN
        # each request is signed for its planned send time, estimated from the signing speed; when
        # signing takes longer, every request goes out that much later than its signed time (the
        # tracker accepts 300 s of clock skew)
        estimated = time.time() + 5.0 + HEARTBEATS * 0.006
        audience = fetch_identity(tracker.url)
        jobs = [(keys[i % DEVICES], _heartbeat_body(i % DEVICES), estimated + i * interval, audience)
                for i in range(HEARTBEATS)]
        by_device = sorted(range(HEARTBEATS), key=lambda i: i % DEVICES)  # one key's requests in one batch
        chunks = [[jobs[i] for i in by_device[j: j + 500]] for j in range(0, HEARTBEATS, 500)]
        signed_at = time.time()
        with concurrent.futures.ProcessPoolExecutor(2) as signers:
            flat = [h for batch in signers.map(_sign_batch, chunks) for h in batch]
        signed = [dict[str, str]() for _ in range(HEARTBEATS)]
        for i, headers in zip(by_device, flat, strict=True):
            signed[i] = headers
        plan_start = max(estimated, time.time() + 1.0)
        late = plan_start - estimated
        print(f"\nsigned {HEARTBEATS:,} requests in {time.time() - signed_at:.1f} s; sending {late:.1f} s after "
              "their signed times")
        assert late < 200, f"signing took {late:.0f} s longer than estimated: too close to the 300 s window"
        idle_rss, _ = tracker.memory()
        t0 = time.perf_counter() + (plan_start - time.time())
        plan = [(i * interval, body, headers) for i, ((_, body, _, _), headers) in enumerate(zip(jobs, signed, strict=True))]
        latency, service, errors, last = _open_loop(tracker.url, plan, t0)
        rss_after, hwm = tracker.memory()
    finally:
        tracker.stop()

    span = last - t0
    offered = HEARTBEATS / (HEARTBEATS * interval) * 60
    achieved = len(latency) / span * 60 if span > 0 else 0.0
    print(f"\nload: {HEARTBEATS:,} signed heartbeats from {DEVICES:,} devices, offered {offered:,.0f}/min, "
          f"one tracker process, loopback")
    print(f"errors {len(errors)}; achieved {achieved:,.0f}/min over {span:.1f} s; latency from planned send p50 "
          f"{_pct(latency, 0.5) * 1e3:.1f} ms p99 {_pct(latency, 0.99) * 1e3:.1f} ms max "
          f"{max(latency, default=0) * 1e3:.0f} ms; service time p50 {_pct(service, 0.5) * 1e3:.1f} ms p99 "
          f"{_pct(service, 0.99) * 1e3:.1f} ms; tracker RSS MiB idle {idle_rss:.1f} after {rss_after:.1f} "
          f"peak {hwm:.1f}")
    if errors:
        print("errors:", errors[:5])
    table = Table("71-load-heartbeats", f"Load: signed heartbeats at {RATE_PER_MIN:,} per minute to one tracker",
                  "fwledger tracker run", "offered load / idle state", source="tests/load/test_load.py",
                  words=("better", "worse"))
    table.add("errors", len(errors), 0, "count", better="lower")
    table.add("throughput (completed / span)", achieved, offered, "per minute")
    table.add("latency from planned send, p50", _pct(latency, 0.5) * 1e3, None, "ms", better="lower", digits=1)
    table.add("latency from planned send, p99", _pct(latency, 0.99) * 1e3, None, "ms", better="lower", digits=1)
    table.add("service time (from actual send), p99", _pct(service, 0.99) * 1e3, None, "ms", better="lower",
              digits=1)
    table.add("tracker peak RSS (VmHWM) / its idle RSS", hwm, idle_rss, "MiB", better="lower", digits=1)
    table.notes.append(f"{HEARTBEATS:,} heartbeats from {DEVICES:,} device keys, each request EIP-191 signed "
                       f"(signed beforehand for its planned send time), open loop from {SENDERS} sender threads; the "
                       "tracker verifies each signature and nonce, updates its inventory (SQLite) and signs its "
                       f"answer; span {span:.1f} s. Latency is measured from the planned send time")
    record(table)
    assert not errors, errors[:5]
    assert len(latency) == HEARTBEATS

