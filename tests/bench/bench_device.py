"""A device's update throughput and peak memory for a 16 MiB, a 256 MiB and a 1 GiB image, beside ``openssl dgst
-sha256`` (4, 16 and 64 MiB with ``scripts/bench --quick``); peak memory compares the largest with the smallest.

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

Each case runs ``RUNS`` times (3; once with ``--quick``), each on a fresh device; the fastest is
reported, with the largest peak RSS of its runs. Per run: the wall time of the process, the updater's own verify and install times (install = read,
check and decrypt every chunk, write the inactive slot, hash it), the peak RSS of that process
(``ru_maxrss`` of exactly that process, started through a small launcher so that the benchmark
process's own memory is not counted: ``tests/bench/world.py``), and the same
bundle hashed by ``openssl dgst -sha256`` (the fastest SHA-256 here) for the ratio.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from ledger_node.record import ZERO_HASH
from tests.bench.report import Table, record, sized
from tests.bench.world import FWLEDGER, HW, MIB, Bench, device, device_world, measure, peak_rss, published

pytestmark = pytest.mark.bench

SIZES = sized((16 * MIB, 256 * MIB, 1024 * MIB), (4 * MIB, 16 * MIB, 64 * MIB))
RUNS = sized(3, 1)  # runs of each case; the fastest is reported (peak RSS: the largest)


@dataclass
class Run:
    wall: float
    verify: float
    install: float
    rss_mib: float

    def rate(self, size: int) -> float:
        """MiB/s of verify + decrypt + install."""
        return size / MIB / (self.verify + self.install)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    yield from device_world(tmp_path_factory, "bench-device")


def _update(bench: Bench, path: str, name: str, bundle: Path, evidence: Path, file_size: int) -> Run:
    """One ``fwledger device update`` on a freshly provisioned device ``name``: from ``bundle`` and
    ``evidence`` on disk (``file``) or from the tracker and firmware server (``network``)."""
    root = device(bench, name)
    if path == "file":
        out, wall, rss = measure([*FWLEDGER, "device", "update", "--dir", str(root), "--bundle", str(bundle),
                                   "--evidence", str(evidence), "--json"], bench.tmp / "update.log")
        assert out["outcome"] == "confirmed"
        secs = out["seconds"]
    else:
        out, wall, rss = measure([*FWLEDGER, "device", "update", "--dir", str(root), "--tracker", bench.tracker_url,
                                   "--json"], bench.tmp / "update.log")
        (res,) = out["results"]
        assert res["outcome"] == "confirmed" and res["download"]["bytes"] == file_size
        secs = res["report"]["seconds"]
    shutil.rmtree(root)
    return Run(wall, secs["verify"], secs["install"], rss)


def _openssl(path: Path) -> tuple[float, float]:
    """Best of ``RUNS`` ``openssl dgst -sha256`` runs: (seconds, peak RSS MiB of that process)."""
    best, rss = float("inf"), 0.0
    for _ in range(RUNS):
        secs, mib = peak_rss(["openssl", "dgst", "-sha256", str(path)])
        best, rss = min(best, secs), max(rss, mib)
    return best, rss


def test_update_throughput_and_constant_memory(bench: Bench) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    runs: dict[tuple[str, int], Run] = {}
    sha: dict[int, float] = {}
    sha_rss: dict[int, float] = {}
    prev = ZERO_HASH
    for size in SIZES:
        bundle, hh, file_size = published(bench, size, prev)
        prev = hh
        ev = requests.get(f"{bench.tracker_url}/v1/evidence/0x{hh.hex()}?hardware={HW}", timeout=60)
        assert ev.status_code == 200, ev.text
        evidence = bench.tmp / f"evidence-{size}.json"
        evidence.write_bytes(ev.content)

        for path in ("file", "network"):
            tries = [_update(bench, path, f"{path}-{size}-{i}", bundle, evidence, file_size) for i in range(RUNS)]
            best = max(tries, key=lambda r: r.rate(size))  # the disk's write-back rate varies from run to run
            runs[(path, size)] = Run(best.wall, best.verify, best.install, max(r.rss_mib for r in tries))

        sha[size], sha_rss[size] = _openssl(bundle)
        bundle.unlink()

    print("\ndevice update (one fwledger process per run; install = read + check + decrypt + write + hash)")
    print(f"{'image':>8} {'path':>8} {'wall s':>7} {'verify s':>9} {'install s':>10} {'MiB/s':>7} "
          f"{'openssl MiB/s':>14} {'openssl/update':>15} {'peak RSS MiB':>13}")
    for (path, size), r in runs.items():
        ssl = size / MIB / sha[size]
        print(f"{size // MIB:>6}Mi {path:>8} {r.wall:>7.2f} {r.verify:>9.3f} {r.install:>10.2f} {r.rate(size):>7.0f} "
              f"{ssl:>14.0f} {ssl / r.rate(size):>14.1f}x {r.rss_mib:>13.1f}")

    small, big = SIZES[0], SIZES[-1]
    speed = Table("40-device", "Device update: verify + decrypt + install throughput", "fwledger device MiB/s",
                  "openssl dgst -sha256 MiB/s (same bundle)", source="tests/bench/bench_device.py",
                  words=("faster", "slower"))
    for (path, size), r in runs.items():
        if size != small:  # the smallest image is for the memory table: openssl's start-up is most of its time
            speed.add(f"{size // MIB} MiB image, {path}", r.rate(size), size / MIB / sha[size], "MiB/s")
    speed.notes.append(f"best of {RUNS}; one `fwledger device update` process per run on a freshly provisioned device; "
                       "`file`: bundle "
                       "and evidence from disk, `network`: heartbeat, plan, evidence, header and payload from the "
                       "tracker and firmware server on loopback. MiB/s = image size / (verify + install seconds); "
                       "install = read, check and decrypt every chunk, write the inactive slot, hash it. openssl "
                       "only hashes, so the ratio is the price of doing all of that instead")
    speed.notes.append("goal: at least 0.5x openssl for 256 MiB. What bounds it: hashing on two cores, then the disk. "
                       "The record commits the payload twice (its SHA-256 and its Merkle root over 64 KiB leaves, "
                       "both over the ciphertext) and the slot state records the plaintext's BLAKE3 for the "
                       "boot-time check: two SHA-256 passes (SHA-NI, ~1.4 GiB/s each on this CPU) and one BLAKE3 "
                       "pass (~6 GiB/s, SIMD, one thread) against openssl's one. The read-ahead worker receives "
                       "1 MiB of sealed chunks at once and makes the "
                       "file-hash pass; the caller decrypts (AES-GCM, decrypt_into, ~10% of the CPU) into a "
                       "256 KiB buffer, writes it and makes the plaintext pass; the Merkle leaves go to whichever "
                       "thread has time (the worker hashes them while the caller is busy, the caller those the "
                       "worker did not reach: a slow network leaves them to the caller). Calls are few and large because "
                       "every call that releases the GIL hands it between the two threads: with 256 KiB reads and a "
                       "write per chunk the device spent ~6 futex calls per chunk and twice the receive CPU. The "
                       "disk is asked to start writing every MiB (sync_file_range), so the checkpoint every 8 MiB "
                       "(slot fsync, atomic journal write) waits only for what is left; the slot is hashed as it is "
                       "written, not read back. `network`: the firmware server sends the payload from file to socket "
                       "in the kernel (sendfile; ~0.03 s of its CPU per 64 MiB, was ~0.1 s through Python), loopback "
                       "TCP still costs the device ~0.035 s of receive per 64 MiB. From 256 MiB on, the disk's "
                       "write-back rate, which moves by 2-3x between runs on this shared machine, bounds the run")
    record(speed)
    mem = Table("41-device-rss", "Device update: peak RSS against image size", f"peak RSS, {big // MIB} MiB image",
                f"peak RSS, {small // MIB} MiB image", source="tests/bench/bench_device.py",
                words=("less", "more"))
    for path in ("file", "network"):
        mem.add(f"update process, {path}", runs[(path, big)].rss_mib, runs[(path, small)].rss_mib, "MiB",
                better="lower", digits=1)
    mem.add("openssl dgst -sha256 (for scale)", sha_rss[big], sha_rss[small], "MiB", better="lower", digits=1)
    mem.notes.append(f"the image is {big // small}x larger in the first column: a ratio near 1.00 means the payload "
                     "is streamed with constant memory (peak RSS of exactly that process: tests/bench/world.py)")
    record(mem)
    for path in ("file", "network"):
        a, b = runs[(path, small)].rss_mib, runs[(path, big)].rss_mib
        margin = max(16.0, 0.10 * a)
        assert b - a <= margin, (f"{path}: peak RSS grew from {a:.1f} MiB to {b:.1f} MiB with a {big // small}x "
                                 "larger image")
