"""Resolver benchmark (issue 5; X.1368 Appendix II dependency resolution): a fleet of 100,000
devices over 1,000 releases, planned in one pass.

Run with ``scripts/bench tests/bench/bench_resolver.py`` (or ``-m bench -s``). Prints figures;
asserts only counts and that the naive baseline returns the same plans.

Synthetic catalog: 20 product lines x 50 versions = 1,000 releases over 5 hardware classes
(three revisions of a gateway, two add-on boards). Main lines form dependency chains of four
(each release needs the previous line at a recent version), two lines depend on each other (a
cycle), board firmware depends on the main firmware and a calibration line pins its board
firmware to a window; gw-r1 stops being supported at release 35, gw-r3 starts at release 10;
some releases are vulnerable or revoked; policies pin a range for one class, forbid a line on
another, pin a board line. Devices come from six SKUs (sets of components, boards) and install
"fleet snapshots" skewed towards recent ones, with per-component lag: many devices share a
profile, many do not, like a real fleet.

Figures: ``plan_fleet`` on the whole fleet (shared candidate lists per (class, line), plans
memoized per profile), then on a 2,000-device sample: the same resolver fresh, and a naive
baseline planning each device independently (candidate lists recomputed per device, no memo).
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from typing import Any

import pytest

from entities.status_tracker.resolver import (
    Catalog,
    CatalogRelease,
    Component,
    DeviceProfile,
    LinePolicy,
    Resolver,
)
from ledger_node.record import Dependency, Version
from tests.bench.report import Table, record, sized

pytestmark = pytest.mark.bench

VENDOR = "acme"
VERSIONS = 50
MAIN = [f"p{k:02d}" for k in range(16)]
BOARD_LINES = {"env-fw": "env-b1", "env-cal": "env-b1", "cam-fw": "cam-b1", "cam-isp": "cam-b1"}
CLASSES = ("gw-r1", "gw-r2", "gw-r3", "env-b1", "cam-b1")
N_DEVICES = sized(100_000, 5_000)
SAMPLE = sized(2_000, 500)
MAX = Version(0xFFFF, 0xFFFF, 0xFFFF)


def ver(i: int) -> Version:
    """Release index 0..49 -> 1.0.0, 1.1.0, ... 1.9.0, 2.0.0, ..."""
    return Version(1 + i // 10, i % 10, 0)


def _hash(tag: str) -> bytes:
    return hashlib.sha256(tag.encode()).digest()


def build_releases(rng: random.Random) -> list[CatalogRelease]:
    out = []
    for k, line in enumerate(MAIN):
        for i in range(VERSIONS):
            hw = tuple(c for c, ok in (("gw-r1", i < 35), ("gw-r2", True), ("gw-r3", i >= 10)) if ok)
            deps = []
            if k % 4:  # chains of four lines: p01 needs p00, p02 needs p01, ...
                deps.append(Dependency(MAIN[k - 1], ver(max(0, i - 8))))
            if line == "p14":
                deps.append(Dependency("p15", ver(max(0, i - 2))))
            if line == "p15":
                deps.append(Dependency("p14", ver(max(0, i - 2))))
            out.append(_release(line, i, hw, deps, rng))
    for line, board in BOARD_LINES.items():
        for i in range(VERSIONS):
            deps = []
            if line == "env-fw":
                deps.append(Dependency("p00", ver(i // 2)))
            elif line == "env-cal":
                deps.append(Dependency("env-fw", ver(max(0, i - 3)), ver(min(VERSIONS - 1, i + 3))))
            elif line == "cam-isp":
                deps.append(Dependency("cam-fw", ver(max(0, i - 5))))
            hw = (board,) if line != "cam-fw" or i >= 5 else (board, "gw-r2")
            out.append(_release(line, i, hw, deps, rng))
    return out


def _release(line: str, i: int, hw: tuple[str, ...], deps: list[Dependency], rng: random.Random) -> CatalogRelease:
    roll = rng.random()
    return CatalogRelease(VENDOR, line, ver(i), _hash(f"{line}/{i}"), hw, tuple(deps),
                          revoked=roll < 0.02, vulnerable=0.02 <= roll < 0.06)


POLICIES = [
    LinePolicy("gw-r1", VENDOR, "p03", True, ver(0), ver(30)),
    LinePolicy("gw-r3", VENDOR, "p07", False),
    LinePolicy("env-b1", VENDOR, "env-fw", True, ver(5), ver(45)),
]

# SKU: (main lines installed, boards and the board lines they carry)
SKUS = [
    (MAIN[0:4], {}),
    (MAIN[0:8], {"env-b1": ["env-fw", "env-cal"]}),
    (MAIN[0:4] + MAIN[12:16], {"cam-b1": ["cam-fw", "cam-isp"]}),
    (MAIN[4:12], {}),
    (MAIN[0:2] + MAIN[8:12], {"env-b1": ["env-fw", "env-cal"], "cam-b1": ["cam-fw"]}),
    (MAIN[12:16], {"cam-b1": ["cam-fw", "cam-isp"]}),
]


def build_devices(n: int, rng: random.Random) -> list[DeviceProfile]:
    """Devices of six SKUs on three hardware revisions; each installed a fleet snapshot (skewed
    to recent ones) and some components lag behind it by a few releases."""
    out = []
    snapshots = list(range(0, VERSIONS - 5, 3))
    weights = [1 + s for s in snapshots]
    for d in range(n):
        lines, boards = SKUS[rng.randrange(len(SKUS))]
        hw = rng.choices(("gw-r1", "gw-r2", "gw-r3"), (2, 5, 3))[0]
        snap = rng.choices(snapshots, weights)[0]
        comps = []
        for line in [*lines, *(p for ps in boards.values() for p in ps)]:
            lag = rng.choice((0, 0, 0, 0, 1, 2, 4)) if rng.random() < 0.3 else 0
            board = next((b for b, ps in boards.items() if line in ps), None)
            comps.append(Component(line, VENDOR, ver(max(0, snap - lag)), board))
        out.append(DeviceProfile(f"dev-{d:06d}", hw, tuple(comps), tuple(boards)))
    return out


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds of this process): on a shared machine the CPU time is
    the steadier figure."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def test_resolver_fleet_100k_devices_1000_releases() -> None:
    rng = random.Random(1368)
    releases = build_releases(rng)
    assert len(releases) == 1_000 and len({(r.product, r.version) for r in releases}) == 1_000
    t0 = time.perf_counter()
    devices = build_devices(N_DEVICES, rng)
    t_profiles = time.perf_counter() - t0

    catalog, t_catalog, _ = timed(lambda: Catalog(releases, POLICIES))

    resolver = Resolver(catalog)
    plans, t_fleet, c_fleet = timed(lambda: resolver.plan_fleet(devices))
    assert len(plans) == N_DEVICES and resolver.profiles + resolver.hits == N_DEVICES
    assert [p.device_id for p in plans[:3]] == ["dev-000000", "dev-000001", "dev-000002"]

    sample = rng.sample(devices, SAMPLE)
    fresh = Resolver(Catalog(releases, POLICIES))
    fast, t_fast, c_fast = timed(lambda: fresh.plan_fleet(sample))
    naive = Resolver(Catalog(releases, POLICIES), shared=False, memo=False)
    slow, t_naive, c_naive = timed(lambda: naive.plan_fleet(sample))
    assert len(fast) == len(slow) == SAMPLE and fast == slow

    # the cost of a profile nobody shares: every distinct profile of the fleet, memo off
    distinct = list({d.key: d for d in devices}.values())
    unshared = Resolver(catalog, memo=False)
    _, t_distinct, c_distinct = timed(lambda: unshared.plan_fleet(distinct))

    upgrading = sum(p.needed for p in plans)
    steps = sum(len(p.upgrades) for p in plans)
    cycles = sum(bool(p.groups) for p in plans)
    blocked = sum(bool(p.blocked) for p in plans)
    incomplete = sum(not p.complete for p in plans)
    print()
    print(f"resolver: {len(releases)} releases on {len(MAIN) + len(BOARD_LINES)} lines, {len(CLASSES)} hardware "
          f"classes, {len(POLICIES)} policies; catalog built in {t_catalog * 1e3:.1f} ms; "
          f"{N_DEVICES:,} device profiles generated and keyed in {t_profiles:.2f} s")
    print(f"fleet: {N_DEVICES:,} devices, {resolver.profiles:,} distinct profiles ({resolver.hits:,} memo hits); "
          f"{upgrading:,} need updates ({steps:,} upgrades, {cycles:,} with a cycle group), "
          f"{blocked:,} have blocked components, {incomplete} incomplete searches")
    print(f"{'':34} {'wall s':>8} {'devices/s':>10} {'cpu s':>8} {'devices/s':>10}")

    def row(label: str, n: int, wall: float, cpu: float) -> None:
        print(f"{label:34} {wall:8.2f} {n / wall:10,.0f} {cpu:8.2f} {n / cpu:10,.0f}")

    row(f"plan_fleet, {N_DEVICES:,} devices", N_DEVICES, t_fleet, c_fleet)
    row(f"{len(distinct):,} distinct profiles, memo off", len(distinct), t_distinct, c_distinct)
    row(f"sample of {SAMPLE:,}, plan_fleet", SAMPLE, t_fast, c_fast)
    row(f"sample of {SAMPLE:,}, naive baseline", SAMPLE, t_naive, c_naive)
    print(f"per distinct profile: {c_distinct / len(distinct) * 1e6:.0f} us cpu; ratio plan_fleet / naive: "
          f"whole fleet {(N_DEVICES / c_fleet) / (SAMPLE / c_naive):.1f}x, same sample {c_naive / c_fast:.1f}x (cpu)")
    table = Table("60-resolver", f"Resolver: {N_DEVICES:,} devices x {len(releases):,} releases",
                  "plan_fleet devices/s (cpu)", "naive per-device planning devices/s (cpu)",
                  source="tests/bench/bench_resolver.py", words=("faster", "slower"))
    table.add(f"whole fleet of {N_DEVICES:,} (naive: the {SAMPLE:,} sample)", N_DEVICES / c_fleet, SAMPLE / c_naive,
              "devices/s")
    table.add(f"same sample of {SAMPLE:,}, fresh resolver", SAMPLE / c_fast, SAMPLE / c_naive, "devices/s")
    table.add(f"{len(distinct):,} distinct profiles, memo off", len(distinct) / c_distinct, SAMPLE / c_naive,
              "devices/s")
    table.add(f"plan_fleet wall time, {N_DEVICES:,} devices", t_fleet, None, "s", better="lower", digits=2)
    table.notes.append(f"{resolver.profiles:,} distinct profiles ({resolver.hits:,} memo hits); {upgrading:,} devices "
                       f"need updates ({steps:,} upgrades, {cycles:,} with a cycle group); the naive baseline "
                       "recomputes candidate lists per device and memoizes nothing; it returns the same plans")
    record(table)
