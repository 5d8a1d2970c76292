"""The python-tuf side of ``bench_tuf``: one ngclient update check + download + verify, timed.

``python -m tests.bench.tuf_client ROOT_JSON METADATA_DIR METADATA_URL TARGETS_URL TARGET OUT_DIR`` prints
one JSON object: seconds for the whole job (``Updater`` from the bootstrap root, ``refresh()``:
root, timestamp, snapshot and targets metadata fetched and verified, ``get_targetinfo``,
``download_target``: download, length and SHA-256 check, copy to ``OUT_DIR``) and for its parts.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tuf.ngclient import Updater


def main(argv: list[str]) -> int:
    root_json, metadata_dir, metadata_url, targets_url, target, out_dir = argv
    started = time.perf_counter()
    updater = Updater(metadata_dir, metadata_url, out_dir, targets_url, bootstrap=Path(root_json).read_bytes())
    updater.refresh()
    refreshed = time.perf_counter()
    info = updater.get_targetinfo(target)
    if info is None:
        print(json.dumps({"error": f"no target {target}"}))
        return 1
    path = updater.download_target(info)
    done = time.perf_counter()
    print(json.dumps({"seconds": done - started, "refresh": refreshed - started, "download": done - refreshed,
                      "bytes": Path(path).stat().st_size}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
