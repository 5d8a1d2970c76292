"""Fleet simulation: a two-level tracker tree against the flat deployment (issues 5 and 6).

``fwledger simulate`` with 10,000 devices (1,000 under ``--quick``), run flat (devices -> server
module) and with one level of intermediates (100 devices each), side by side in one process.
The flat run is the baseline: the figures are chain queries made by the trackers, requests and
bytes at the server module, per device, and the wall time to update the whole fleet (three waves).
"""

from __future__ import annotations

import pytest

from entities.simulate import run_simulation

from .report import Table, record, sized

pytestmark = pytest.mark.bench

DEVICES = sized(10_000, 1_000)


def test_flat_vs_two_level_fleet() -> None:
    flat = run_simulation(devices=DEVICES, depth=1, quiet=True)
    tree = run_simulation(devices=DEVICES, depth=2, fanout=100, quiet=True)
    for rep in (flat, tree):
        assert rep["ok"], rep
    print()
    for rep in (flat, tree):
        print(f"depth {rep['depth']}: {rep['devices']:,} devices ({rep['intermediates']} intermediates), "
              f"{rep['updated']:,}/{rep['entitled']:,} updated in {rep['rounds']} rounds, "
              f"{rep['seconds_to_full_fleet']:.1f} s; tracker chain queries {rep['chain_queries']['trackers']:,} "
              f"({rep['chain_queries_per_device']} per device), devices 0; server module "
              f"{rep['server_module_requests']:,} requests, {rep['server_module_bytes_per_device']:,.0f} B per device; "
              f"firmware server {rep['bytes_served_by_firmware_server'] / 2**20:,.0f} MiB")
    n = DEVICES
    table = Table("75-simulate", f"Fleet simulation: {n:,} devices, two-level tree vs flat",
                  "depth 2 (100 devices per intermediate)", "flat (devices -> server module)",
                  source="tests/bench/bench_simulate.py",
                  words=("less", "more"))
    table.add("tracker chain queries per device", tree["chain_queries_per_device"], flat["chain_queries_per_device"],
              better="lower", digits=3)
    table.add("server-module requests per device", tree["server_module_requests"] / n,
              flat["server_module_requests"] / n, better="lower", digits=2)
    table.add("server-module bytes per device", tree["server_module_bytes_per_device"],
              flat["server_module_bytes_per_device"], "B", better="lower")
    table.add("device chain queries", 0, None, better="lower")
    table.add("time to full-fleet update (3 waves)", tree["seconds_to_full_fleet"], flat["seconds_to_full_fleet"],
              "s", better="lower", digits=1)
    table.add("firmware server bytes per updated device", tree["bytes_served_by_firmware_server"] / tree["updated"],
              flat["bytes_served_by_firmware_server"] / flat["updated"], "B", better="lower")
    table.notes.append(f"the same runs by hand: `fwledger simulate --devices {n} --depth 1` and `--depth 2`")
    table.notes.append(
        f"{flat['entitled']:,} of {n:,} devices entitled (the rest: another hardware class whose policy caps the "
        "line, listed outdated with the reason and never commanded); real tracker (full node, resolver, rollouts, "
        "signed commands, eth_getProof evidence) and real device-side verification (command signature, k-of-n "
        "header, proofs, payload Merkle root and hash); device models instead of device folders, function calls "
        "instead of HTTP (sizes counted as JSON)")
    record(table)
