"""Write the fuzz seed corpus ``tests/fuzz/corpus/<target>/`` from real artefacts.

``.venv/bin/python -m tests.fuzz.make_corpus`` (a few seconds): an embedded chain, the world of
``tests/security/world.py``, two published releases (one with two hardware classes and a
dependency), then for each: the bundle header (framed and bare), the evidence a tracker would
hand a device (and its ``eth_getProof`` answer alone), the record's ABI data section and JSON, and
the proofs' trie nodes as RLP lists. Reproducers of past findings (``regress-*``) are kept.
The files are committed; run this again only when a format changes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from entities.bundle import PREFIX_SIZE, read_header
from ledger_node.codec import rlp
from ledger_node.record import Dependency, Version
from tests.fuzz.targets import CORPUS, TARGETS
from tests.security.world import HW, DeviceWorld

_SMALL = {"empty-object": b"{}", "list": b"[]", "null": b"null", "number": b"1e999", "nested": b"[" * 50 + b"]" * 50}


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="fwledger-corpus-"))
    try:
        world = DeviceWorld.embedded(tmp, quorum=2)
        rels = [world.release("main-fw", "1.0.0", size=70_000),
                world.release("app-fw", "2.3.4", size=3_000, hardware=[HW],
                              deps=[Dependency("main-fw", Version(1, 0, 0), Version(1, 9, 0))])]
        files: dict[str, dict[str, bytes]] = {t: {} for t in TARGETS}
        for i, rel in enumerate(rels):
            raw = rel.path.read_bytes()
            with open(rel.path, "rb") as fh:
                _, offset = read_header(fh)
            files["bundle_header"][f"header-{i}.json"] = raw[PREFIX_SIZE:offset]
            files["bundle_header"][f"bundle-{i}.fwb"] = raw[: offset + 64]
            ev = world.evidence(rel.record).to_json()
            files["evidence_json"][f"evidence-{i}.json"] = json.dumps(ev, sort_keys=True).encode()
            files["proof_json"][f"proof-{i}.json"] = json.dumps(ev["proof"], sort_keys=True).encode()
            files["record_codec"][f"data-{i}.bin"] = rel.record.data.encode()
            files["record_codec"][f"record-{i}.json"] = json.dumps(rel.record.to_json(), sort_keys=True).encode()
            nodes = [bytes.fromhex(n[2:]) for n in ev["proof"]["accountProof"]]
            files["light_codecs"][f"account-proof-{i}.rlp"] = rlp.encode(nodes)
            nodes = [bytes.fromhex(n[2:]) for n in ev["proof"]["storageProof"][0]["proof"]]
            files["light_codecs"][f"storage-proof-{i}.rlp"] = rlp.encode(nodes)
            files["light_codecs"][f"record-data-{i}.bin"] = rel.record.data.encode()
        for target, named in files.items():
            folder = CORPUS / target
            folder.mkdir(parents=True, exist_ok=True)
            for old in folder.iterdir():  # reproducers of past findings stay
                if not old.name.startswith("regress-"):
                    old.unlink()
            for name, data in {**named, **{f"small-{k}": v for k, v in _SMALL.items()}}.items():
                (folder / name).write_bytes(data)
            print(f"{folder}: {len(named) + len(_SMALL)} seeds")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
