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
from tests.bench.report import Table, record, sized

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


def _intrinsic_gas(w3: Web3, tx: str) -> int:
    """The gas any transaction carrying the same calldata pays before running a single opcode:
    21,000 plus 4 per zero and 16 per non-zero calldata byte (the baseline for gas per publish)."""
    data = bytes(w3.eth.get_transaction(tx)["input"])  # type: ignore[arg-type]
    zeros = data.count(0)
    return 21_000 + 4 * zeros + 16 * (len(data) - zeros)


def _populate(
    w3: Web3, vendors: int, products: int, per_line: int, intrinsic: list[int] | None = None
) -> tuple[Deployment, list[int], list[int]]:
    """Deploy, register, publish per_line releases on vendors x products lines (round robin).

    Returns the deployment and the gas of first-of-line and following publishes; appends the
    intrinsic gas of the following publishes to ``intrinsic`` when given.
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
                if intrinsic is not None and prev != ZERO_HASH:
                    intrinsic.append(_intrinsic_gas(w3, res.tx))
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


def _compare(label: str, w3: Web3, dep: Deployment, tmp: Path, batches: tuple[int, ...]) -> Table:
    """Full node against the raw loop per batch size; prints and returns the figures."""
    table = Table(f"20-ingest-{label}", f"Full-node ingest ({label} chain)", "fwledger full node events/s",
                  "raw eth_getLogs loop events/s", source="tests/bench/bench_ingest.py", words=("faster", "slower"))
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
        table.add(f"batch {batch} blocks", report.events / node_s, raw_logs / raw_s, "events/s")
    table.notes.append(f"{raw_logs} events in blocks {dep.block}-{last} ({blocks} blocks); the full node decodes, "
                       "re-verifies every hash chain and commits each range in one SQLite transaction "
                       "(synchronous=FULL), the raw loop only calls eth_getLogs over the same ranges")
    return table


def test_bench_ingest_anvil(tmp_path: Path) -> None:
    binary = _anvil_binary()
    if binary is None:
        pytest.skip("anvil not found")
    with devnet.AnvilProcess(anvil=binary) as node:
        w3 = connect(node.url)
        t = time.perf_counter()
        vendors, products, per_line = sized((2, 5, 30), (1, 2, 5))
        intrinsic: list[int] = []
        dep, first_gas, next_gas = _populate(w3, vendors=vendors, products=products, per_line=per_line,
                                             intrinsic=intrinsic)
        took = time.perf_counter() - t
        total = len(first_gas) + len(next_gas)
        assert total == vendors * products * per_line
        every = first_gas + next_gas
        print(
            f"\n[anvil] published {total} releases on {vendors * products} lines in {took:.1f} s "
            f"({total / took:.0f} tx/s)"
        )
        print(
            f"  gas per publish: first of a line mean {statistics.mean(first_gas):,.0f} "
            f"(min {min(first_gas):,}, max {max(first_gas):,}); following mean "
            f"{statistics.mean(next_gas):,.0f} (min {min(next_gas):,}, max {max(next_gas):,}); "
            f"all mean {statistics.mean(every):,.0f}; intrinsic gas of the same calldata mean "
            f"{statistics.mean(intrinsic):,.0f}"
        )
        gas = Table("10-gas", "Gas per publish (anvil)", "publish gas", "intrinsic gas of the same calldata",
                    source="tests/bench/bench_ingest.py::test_bench_ingest_anvil", words=("less", "more"))
        gas.add("first release of a line (mean)", statistics.mean(first_gas), statistics.mean(intrinsic), "gas",
                better="lower")
        gas.add("following release (mean)", statistics.mean(next_gas), statistics.mean(intrinsic), "gas",
                better="lower")
        gas.add("following release (max)", max(next_gas), max(intrinsic), "gas", better="lower")
        gas.notes.append(f"{total} releases on {vendors * products} product lines, two hardware classes each; the "
                         "baseline is what any transaction with the same calldata pays before executing: "
                         "21,000 + 4 per zero byte + 16 per non-zero byte")
        record(gas)
        record(_compare("anvil", w3, dep, tmp_path, sized((1, 10, 100, 500), (1, 10))))


def test_bench_ingest_embedded(tmp_path: Path) -> None:
    w3 = connect("embedded")
    t = time.perf_counter()
    per_line = sized(15, 3)
    dep, first_gas, next_gas = _populate(w3, vendors=2, products=2, per_line=per_line)
    took = time.perf_counter() - t
    total = len(first_gas) + len(next_gas)
    assert total == 4 * per_line
    print(
        f"\n[embedded] published {total} releases on 4 lines in {took:.1f} s "
        f"({total / took:.0f} tx/s)"
    )
    record(_compare("embedded", w3, dep, tmp_path, sized((1, 10, 100), (1, 10))))
