"""Run the fuzz targets: ``python -m tests.fuzz.run [--seconds N] [--engine atheris|random] [target ...]``
(``scripts/fuzz`` is the same).

* ``atheris`` (the default when it is installed): coverage-guided libFuzzer over the target, each
  target in its own process, the parsers instrumented, starting from a copy of the seed corpus
  (``tests/fuzz/corpus/<target>/``); half of the mutations are libFuzzer's, half the JSON-aware
  ones of :mod:`tests.fuzz.mutate`.
* ``random``: the fallback without atheris: seeds mutated by :mod:`tests.fuzz.mutate` and plain
  random bytes, in this process, for the same time.

A finding (a foreign exception) is written to ``--crashes`` (default
``$TMPDIR/fwledger-fuzz/crashes``) as a reproducer file; ``--repro FILE TARGET`` runs one input
again with the traceback. Exit code 0 when no target found anything, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from tests.fuzz.mutate import mutate
from tests.fuzz.targets import TARGETS, Finding, run_one, seeds

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CRASHES = Path(tempfile.gettempdir()) / "fwledger-fuzz" / "crashes"


def have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def _save(crashes: Path, target: str, data: bytes) -> Path:
    crashes.mkdir(parents=True, exist_ok=True)
    path = crashes / f"{target}-{hashlib.sha256(data).hexdigest()[:16]}"
    path.write_bytes(data)
    return path


def fuzz_random(target: str, seconds: float, crashes: Path, seed: int | None = None) -> int:
    """The fallback engine: mutated seeds and random bytes for ``seconds``; 1 on a finding."""
    rng = random.Random(seed)
    corpus = seeds(target) or [b""]
    end = time.monotonic() + seconds
    runs = 0
    while time.monotonic() < end:
        if rng.random() < 0.9:
            data = mutate(rng.choice(corpus), rng, rounds=rng.randrange(1, 5))
        else:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 512)))
        runs += 1
        try:
            run_one(target, data)
        except Finding as exc:
            path = _save(crashes, target, data)
            print(f"fuzz {target}: FINDING after {runs} inputs: {exc}\n  reproducer: {path}\n"
                  f"  scripts/fuzz --repro {path} {target}", file=sys.stderr)
            return 1
    print(f"fuzz {target}: random engine, {runs} inputs in {seconds:.0f} s, no finding", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- atheris (one process per target)


def fuzz_atheris(target: str, seconds: int, crashes: Path) -> int:
    """One target under atheris in a child process; 1 on a finding."""
    with tempfile.TemporaryDirectory(prefix=f"fwledger-fuzz-{target}-") as work:
        for i, data in enumerate(seeds(target)):
            (Path(work) / f"seed-{i}").write_bytes(data)
        proc = subprocess.run([sys.executable, "-m", "tests.fuzz.atheris_main", target, work, str(seconds),
                               str(crashes)], cwd=REPO, check=False, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        tail = [ln for ln in proc.stderr.splitlines() if ln.startswith(("#", "stat::", "Done"))]
        if proc.returncode != 0:
            print(proc.stderr[-6000:], file=sys.stderr)
            print(f"fuzz {target}: FINDING (atheris exit {proc.returncode}); reproducers in {crashes}/{target}-*",
                  file=sys.stderr)
            return 1
        stats = [ln for ln in tail if ln.startswith("Done")]
        cov = [ln.split("cov: ")[1].split()[0] for ln in tail if "cov: " in ln]
        if cov:
            stats.append(f"coverage {cov[-1]} edges")
        print(f"fuzz {target}: atheris {seconds} s, no finding ({'; '.join(stats) or 'done'})", file=sys.stderr)
        return 0


def repro(path: Path, target: str) -> int:
    """Run one saved input with the full traceback."""
    try:
        run_one(target, path.read_bytes())
    except Finding as exc:
        traceback.print_exception(exc.__cause__ or exc)
        print(f"\n{target}: {exc}", file=sys.stderr)
        return 1
    print(f"{target}: {path} parses or raises the project's own errors", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/fuzz", description="Fuzz the parsers of untrusted input.")
    p.add_argument("targets", nargs="*", metavar="target", help=f"any of {', '.join(TARGETS)} (default: all)")
    p.add_argument("--seconds", type=int, default=60, help="per target [60]")
    p.add_argument("--engine", choices=["atheris", "random"], default=None,
                   help="default: atheris when installed, else random")
    p.add_argument("--crashes", type=Path, default=DEFAULT_CRASHES, help=f"reproducers go here [{DEFAULT_CRASHES}]")
    p.add_argument("--seed", type=int, default=None, help="random engine: the RNG seed")
    p.add_argument("--repro", type=Path, default=None, help="run this one input (with a target) and show the error")
    args = p.parse_args(argv)
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        p.error(f"unknown target {', '.join(unknown)} (known: {', '.join(TARGETS)})")
    if args.repro is not None:
        if len(args.targets) != 1:
            p.error("--repro needs exactly one target")
        return repro(args.repro, args.targets[0])
    engine = args.engine or ("atheris" if have_atheris() else "random")
    if engine == "atheris" and not have_atheris():
        p.error("atheris is not installed (pip install atheris; or --engine random)")
    failed = 0
    for target in args.targets or list(TARGETS):
        if engine == "atheris":
            failed |= fuzz_atheris(target, args.seconds, args.crashes)
        else:
            failed |= fuzz_random(target, args.seconds, args.crashes, args.seed)
    return failed


if __name__ == "__main__":
    raise SystemExit(main())
