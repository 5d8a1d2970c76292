"""The atheris child of ``tests/fuzz/run.py``: ``python -m tests.fuzz.atheris_main TARGET CORPUS_DIR
SECONDS CRASH_DIR``. It imports nothing of the project before atheris' import hook is in place, so
that the parsers (``entities``, ``ledger_node``) are instrumented and libFuzzer sees their coverage.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import atheris


def main() -> None:
    target, workdir, seconds, crashes = sys.argv[1:5]
    with atheris.instrument_imports(include=["entities", "ledger_node", "eth_abi", "rlp"]):
        from tests.fuzz.mutate import mutate
        from tests.fuzz.targets import TARGETS

    fn = TARGETS[target]

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < 0.5:
            return mutate(data, rng)[:max_size]
        return bytes(atheris.Mutate(data, max_size))

    Path(crashes).mkdir(parents=True, exist_ok=True)
    args = [sys.argv[0], workdir, f"-max_total_time={seconds}", "-rss_limit_mb=2048", "-timeout=20",
            f"-artifact_prefix={crashes}/{target}-", "-print_final_stats=1", "-max_len=65536"]
    atheris.Setup(args, fn, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
