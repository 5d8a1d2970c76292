"""The PERFORMANCE.md assembler on fake figures (a default-run test: no benchmark runs here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench import report
from tests.bench.report import Table


def _fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    results = tmp_path / "results.jsonl"
    monkeypatch.setenv(report.ENV_RESULTS, str(results))
    report.record(Table("20-ingest", "Ingest (anvil)", "fwledger full node", "raw eth_getLogs loop",
                        source="tests/bench/bench_ingest.py", words=("faster", "slower"))
                  .add("batch 1, events/s", 177, 570)
                  .add("batch 500, events/s", 1144, 6997))
    report.record(Table("10-gas", "Gas per publish", "publish", "intrinsic gas", words=("less", "more"),
                        notes=["a | pipe in a note"])
                  .add("following release", 75658, 25000, "gas", better="lower")
                  .add("same", 100, 99, "gas", better="lower")
                  .add("no baseline", 3.14159, None, "s", digits=2)
                  .add("rss", 200, 100, "MiB", better="lower", digits=1))
    # a table recorded again (same key) replaces the first
    report.record(Table("30-x", "old", "a", "b").add("r", 1, 1))
    report.record(Table("30-x", "Replaced", "a", "b").add("r", 2, 1))
    return results


def test_record_load_and_render(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tables = report.load(_fake(tmp_path, monkeypatch))
    assert [t.key for t in tables] == ["20-ingest", "10-gas", "30-x"]
    md = report.render(tables, machine={"cpu": "Fake CPU", "nproc": "2", "python": "3.11.7", "os": "Linux",
                                        "memory": "24 GiB"},
                       command="scripts/bench --load", date="2026-01-01 00:00 UTC", quick_run=False)
    assert md.startswith("# Performance\n")
    assert "| CPU | Fake CPU |" in md and "| nproc | 2 |" in md and "| Python | 3.11.7 |" in md
    assert "| date | 2026-01-01 00:00 UTC |" in md
    assert "```\nscripts/bench --load\n```" in md
    # sections ordered by key; the replaced table only once
    assert md.index("## Gas per publish") < md.index("## Ingest (anvil)") < md.index("## Replaced")
    assert "## old" not in md
    assert "| figure | fwledger full node | raw eth_getLogs loop | ours / baseline | so |" in md
    assert "| batch 1, events/s | 177 | 570 | 0.31 | 3.2x slower |" in md
    assert "| following release | gas | 75,658 | 25,000 | 3.03 | 3.0x more |" in md
    assert "| same | gas | 100 | 99 | 1.01 | about the same |" in md
    assert "| no baseline | s | 3.14 | - | - |  |" in md
    assert "- a \\| pipe in a note" in md
    assert "| rss | MiB | 200.0 | 100.0 | 2.00 | 2.0x more |" in md
    assert "Source: `tests/bench/bench_ingest.py`" in md
    # every table row has as many cells as its header
    for block in md.split("\n\n"):
        rows = [ln for ln in block.splitlines() if ln.startswith("| ")]
        if rows:
            assert len({ln.replace("\\|", "").count("|") for ln in rows}) == 1, block


def test_quick_mode_and_main_writes_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = _fake(tmp_path, monkeypatch)
    monkeypatch.setenv(report.ENV_QUICK, "1")
    assert report.quick() and report.sized(100, 5) == 5
    monkeypatch.setenv(report.ENV_QUICK, "0")
    assert not report.quick() and report.sized(100, 5) == 100
    out = tmp_path / "docs" / "PERFORMANCE.md"
    assert report.main(["--results", str(results), "--out", str(out), "--command", "scripts/bench --quick",
                        "--quick"]) == 0
    md = out.read_text()
    assert "QUICK" in md and "scripts/bench --quick" in md and "## Replaced" in md
    info = report.machine_info()
    assert int(info["nproc"]) >= 1 and info["python"]


def test_record_without_results_file_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(report.ENV_RESULTS, raising=False)
    report.record(Table("k", "t", "a", "b").add("r", 1, 2))  # nothing to write, nothing raised


def test_empty_results_render(tmp_path: Path) -> None:
    md = report.render(report.load(tmp_path / "missing.jsonl"), machine={}, command="scripts/bench",
                       date="d", quick_run=True)
    assert "No benchmark recorded any figure" in md
