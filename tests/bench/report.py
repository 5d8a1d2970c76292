"""Benchmark figures as data, and the assembler that writes ``docs/PERFORMANCE.md``.

Each benchmark (``tests/bench/bench_*.py``, ``tests/load/``) keeps printing its own figures and
also hands them to :func:`record` as a :class:`Table`: rows of (our figure, a baseline's figure
measured in the same run on the same machine). ``scripts/bench`` points ``FWLEDGER_BENCH_RESULTS``
at a JSON-lines file, runs pytest, then calls ``python -m tests.bench.report`` which renders every
recorded table as markdown with the machine, the date and the command that reproduces it.

``FWLEDGER_BENCH_QUICK=1`` (``scripts/bench --quick``) asks every benchmark for its smaller sizes
(:func:`sized`): a smoke test of the whole chain of scripts, not figures to quote.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ENV_RESULTS = "FWLEDGER_BENCH_RESULTS"
ENV_QUICK = "FWLEDGER_BENCH_QUICK"

T = TypeVar("T")


def quick() -> bool:
    """True when the benchmarks run with their smoke-test sizes."""
    return os.environ.get(ENV_QUICK, "") not in ("", "0")


def sized(full: T, small: T) -> T:
    """``full`` normally, ``small`` under ``--quick``."""
    return small if quick() else full


@dataclass
class Row:
    """One figure beside its baseline. ``better``: which way is good for both ("higher": rates;
    "lower": seconds, gas, memory). ``baseline`` None: a figure with nothing to compare to."""

    label: str
    value: float
    baseline: float | None = None
    unit: str = ""
    better: str = "higher"
    digits: int = 0
    words: tuple[str, str] | None = None

    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline


@dataclass
class Table:
    """A section of the report: ``ours`` and ``baseline`` name the two columns."""

    key: str
    title: str
    ours: str
    baseline: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    source: str = ""
    words: tuple[str, str] = ("better", "worse")

    def add(self, label: str, value: float, baseline: float | None = None, unit: str = "", *,
            better: str = "higher", digits: int = 0, words: tuple[str, str] | None = None) -> Table:
        """Add a row; ``words`` (good, bad) overrides the table's for this row (default: "less",
        "more" for memory and gas)."""
        if words is None and unit in ("MiB", "gas"):
            words = ("less", "more")
        self.rows.append(Row(label, float(value), None if baseline is None else float(baseline), unit, better, digits,
                             words))
        return self

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Table:
        rows = [Row(**{**r, "words": tuple(r["words"]) if r.get("words") else None}) for r in obj.get("rows", [])]
        return cls(key=obj["key"], title=obj["title"], ours=obj["ours"], baseline=obj["baseline"], rows=rows,
                   notes=list(obj.get("notes", [])), source=obj.get("source", ""),
                   words=tuple(obj.get("words", ("better", "worse"))))  # type: ignore[arg-type]


def record(table: Table) -> None:
    """Append ``table`` to the results file named by ``FWLEDGER_BENCH_RESULTS`` (nothing if unset)."""
    path = os.environ.get(ENV_RESULTS)
    if not path:
        return
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(table.to_json()) + "\n")


def load(path: Path) -> list[Table]:
    """The tables of a results file; a later table with the same key replaces an earlier one."""
    tables: dict[str, Table] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                t = Table.from_json(json.loads(line))
                tables[t.key] = t
    return list(tables.values())


# ----------------------------------------------------------------------------- the machine


def machine_info() -> dict[str, str]:
    """CPU model, core count, memory, Python and OS of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
                break
    except (OSError, ValueError):
        pass
    return {"cpu": cpu, "nproc": str(os.cpu_count() or 0), "memory": mem,
            "python": platform.python_version() + f" ({platform.python_implementation()})",
            "os": f"{platform.system()} {platform.release()}"}


# ----------------------------------------------------------------------------- markdown


def _num(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _verdict(row: Row, words: tuple[str, str]) -> str:
    r = row.ratio()
    if r is None:
        return ""
    if r <= 0:
        return ""
    if 0.95 <= r <= 1.05:
        return "about the same"
    good = r > 1 if row.better == "higher" else r < 1
    factor = r if r > 1 else 1 / r
    return f"{factor:.1f}x {words[0] if good else words[1]}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_table(t: Table) -> str:
    out = [f"## {t.title}", ""]
    if t.source:
        out += [f"Source: `{t.source}`", ""]
    unit_col = any(r.unit for r in t.rows)
    head = ["figure", *(["unit"] if unit_col else []), _cell(t.ours), _cell(t.baseline), "ours / baseline", "so"]
    out.append("| " + " | ".join(head) + " |")
    out.append("| " + " | ".join(["---", *(["---"] if unit_col else []), "---:", "---:", "---:", "---"]) + " |")
    for r in t.rows:
        ratio = r.ratio()
        cells = [_cell(r.label), *([_cell(r.unit)] if unit_col else []), _num(r.value, r.digits),
                 _num(r.baseline, r.digits), "-" if ratio is None else f"{ratio:.2f}", _verdict(r, r.words or t.words)]
        out.append("| " + " | ".join(cells) + " |")
    if t.notes:
        out.append("")
        out += [f"- {_cell(n)}" for n in t.notes]
    return "\n".join(out) + "\n"


def render(tables: Sequence[Table], *, machine: dict[str, str], command: str, date: str, quick_run: bool) -> str:
    """The whole ``docs/PERFORMANCE.md``: header, machine, command, then one section per table
    (ordered by key)."""
    lines = [
        "# Performance",
        "",
        "Generated by `scripts/bench` (`tests/bench/report.py`); do not edit by hand, run the command below again.",
        "Every figure stands beside a baseline measured in the same run on the same machine; the ratio is",
        "ours / baseline, and the last column says which way that goes for this figure.",
        "",
        "| | |",
        "| --- | --- |",
        f"| date | {date} |",
        f"| CPU | {_cell(machine.get('cpu', '?'))} |",
        f"| nproc | {machine.get('nproc', '?')} |",
        f"| memory | {machine.get('memory', '?')} |",
        f"| Python | {machine.get('python', '?')} |",
        f"| OS | {_cell(machine.get('os', '?'))} |",
        f"| mode | {'QUICK (smoke-test sizes: not figures to quote)' if quick_run else 'full sizes'} |",
        "",
        "Reproduce:",
        "",
        "```",
        command,
        "```",
        "",
        "The machine is shared (other processes run beside the benchmarks), so figures move by tens of",
        "percent between runs; the ratios are steadier than the absolute numbers.",
        "",
    ]
    if not tables:
        lines += ["No benchmark recorded any figure in this run.", ""]
    for t in sorted(tables, key=lambda t: t.key):
        lines.append(render_table(t))
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write docs/PERFORMANCE.md from a benchmark results file.")
    p.add_argument("--results", type=Path, required=True, help="JSON lines written by the benchmarks")
    p.add_argument("--out", type=Path, required=True, help="markdown file to write")
    p.add_argument("--command", default="scripts/bench", help="the command that reproduces the figures")
    p.add_argument("--quick", action="store_true", help="the run used smoke-test sizes")
    args = p.parse_args(argv)
    tables = load(args.results)
    text = render(tables, machine=machine_info(), command=args.command,
                  date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), quick_run=args.quick)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, args.out)
    print(f"bench: wrote {args.out} ({len(tables)} tables)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
