"""Full-node ingest benchmark: gas per publish, and ingest rate against a raw eth_getLogs loop.

Run with ``.venv/bin/python -m pytest tests/bench/bench_ingest.py -m bench -s`` (or
``scripts/bench``). Prints figures; asserts only that the runs saw the same logs.

* anvil: 300 releases over 10 product lines; gas of each publish (first of a line vs the
  following ones); then the full node (decode, re-verify, one SQLite transaction per range with
  ``synchronous=FULL``) against a loop doing only the same ``eth_getLogs`` calls, per batch size.
* embedded chain: the same comparison on a smaller chain (eth-tester mines ~25 tx/s).
"""

from __future__ import annotations

import hashlib
import statistics
import time
from pathlib import Path

import pytest
from web3 import Web3

from ledger_node import devnet
from ledger_node.errors import DevnetError
from ledger_node.fullnode import FullNode, Index
from ledger_node.providers import connect, dev_accounts
from ledger_node.record import ZERO_HASH, ReleaseData, ReleaseRecord, Version
from ledger_node.registry import Deployment, Registry, deploy

pytestmark = pytest.mark.bench

PUBLISH_GAS = 400_000


def _anvil_binary() -> Path | None:
    try:
        return devnet.find_anvil()
    except DevnetError:
        return None


def _record(vendor: str, product: str, version: Version, prev: bytes) -> ReleaseRecord:
    tag = f"{vendor}/{product}/{version}"
    return ReleaseRecord(
        prev_hash=prev,
        data=ReleaseData(
            merkle_root=hashlib.sha256(b"m" + tag.encode()).digest(),
            vendor_name=vendor,
            publish_time=0,
            product=product,
            version=version,
            file_hash=hashlib.sha256(b"f" + tag.encode()).digest(),
            file_link=f"https://fw.example.com/{tag}.bin",
            file_name=f"{product}-{version}.bin",
            file_size=1 << 20,
            supported_hardware=("cam-r1", "cam-r2"),
        ),
    )


def _populate(
    w3: Web3, vendors: int, products: int, per_line: int
) -> tuple[Deployment, list[int], list[int]]:
    """Deploy, register, publish per_line releases on vendors x products lines (round robin).

    Returns the deployment and the gas of first-of-line and following publishes.
    """
    accounts = dev_accounts(w3, vendors + 1)
    dep = deploy(w3, accounts[0])
    admin = Registry(w3, dep, accounts[0])
    admin.add_hardware("cam-r1", 1, b"\x11" * 32)
    admin.add_hardware("cam-r2", 2, b"\x22" * 32)
    regs = {}
    for i in range(vendors):
        admin.add_vendor(accounts[i + 1].address, f"vendor{i}")
        regs[f"vendor{i}"] = admin.with_account(accounts[i + 1])
    heads: dict[tuple[str, str], bytes] = {}
    first_gas: list[int] = []
    next_gas: list[int] = []
    for n in range(per_line):
        for vendor, reg in regs.items():
            for p in range(products):
                key = (vendor, f"product{p}")
                prev = heads.get(key, ZERO_HASH)
                res = reg.publish(_record(vendor, key[1], Version(1, n, 0), prev), gas=PUBLISH_GAS)
                heads[key] = res.header_hash
                (first_gas if prev == ZERO_HASH else next_gas).append(res.gas_used)
    return dep, first_gas, next_gas


def _raw_loop(w3: Web3, address: str, first: int, last: int, batch: int) -> tuple[float, int]:
    t = time.perf_counter()
    logs = 0
    for start in range(first, last + 1, batch):
        logs += len(
            w3.eth.get_logs(
                {"address": address, "fromBlock": start, "toBlock": min(start + batch - 1, last)}
            )
        )
    return time.perf_counter() - t, logs


def _compare(label: str, w3: Web3, dep: Deployment, tmp: Path, batches: tuple[int, ...]) -> None:
    last = int(w3.eth.block_number)
    blocks = last - dep.block + 1
    print(f"\n[{label}] ingest of blocks {dep.block}-{last} ({blocks} blocks)")
    print(
        f"  {'batch':>5} | {'full node':>9} {'events/s':>9} {'blocks/s':>9} | "
        f"{'raw loop':>9} {'events/s':>9} {'blocks/s':>9} | node/raw time"
    )
    for batch in batches:
        node = FullNode(w3, dep, Index(tmp / f"{label}-{batch}.db"), batch_blocks=batch)
        t = time.perf_counter()
        report = node.sync_once()
        node_s = time.perf_counter() - t
        raw_s, raw_logs = _raw_loop(w3, dep.address, dep.block, last, batch)
        assert report.events == raw_logs and report.to_block == last
        assert node.index.stats()["events"] == raw_logs
        node.index.close()
        print(
            f"  {batch:>5} | {node_s:>8.2f}s {report.events / node_s:>9.0f} "
            f"{blocks / node_s:>9.0f} | {raw_s:>8.2f}s {raw_logs / raw_s:>9.0f} "
            f"{blocks / raw_s:>9.0f} | {node_s / raw_s:>6.1f}x"
        )


def test_bench_ingest_anvil(tmp_path: Path) -> None:
    binary = _anvil_binary()
    if binary is None:
        pytest.skip("anvil not found")
    with devnet.AnvilProcess(anvil=binary) as node:
        w3 = connect(node.url)
        t = time.perf_counter()
        dep, first_gas, next_gas = _populate(w3, vendors=2, products=5, per_line=30)
        took = time.perf_counter() - t
        total = len(first_gas) + len(next_gas)
        assert total == 300
        every = first_gas + next_gas
        print(
            f"\n[anvil] published {total} releases on 10 lines in {took:.1f} s "
            f"({total / took:.0f} tx/s)"
        )
        print(
            f"  gas per publish: first of a line mean {statistics.mean(first_gas):,.0f} "
            f"(min {min(first_gas):,}, max {max(first_gas):,}); following mean "
            f"{statistics.mean(next_gas):,.0f} (min {min(next_gas):,}, max {max(next_gas):,}); "
            f"all mean {statistics.mean(every):,.0f}"
        )
        _compare("anvil", w3, dep, tmp_path, (1, 10, 100, 500))


def test_bench_ingest_embedded(tmp_path: Path) -> None:
    w3 = connect("embedded")
    t = time.perf_counter()
    dep, first_gas, next_gas = _populate(w3, vendors=2, products=2, per_line=15)
    took = time.perf_counter() - t
    total = len(first_gas) + len(next_gas)
    assert total == 60
    print(
        f"\n[embedded] published {total} releases on 4 lines in {took:.1f} s "
        f"({total / took:.0f} tx/s)"
    )
    _compare("embedded", w3, dep, tmp_path, (1, 10, 100))
