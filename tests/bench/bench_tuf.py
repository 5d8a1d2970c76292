"""fwledger against python-tuf: the whole device-side job for one 64 MiB image (16 MiB with
``scripts/bench --quick``): update check, download, verification.

Run with ``scripts/bench tests/bench/bench_tuf.py`` (or ``-m bench -s``). Prints both times and the
ratio; asserts only that both clients ended with the image.

* fwledger: the world of ``tests/bench/world.py`` (embedded chain, a status tracker and a firmware
  server in threads of this process, on loopback); the image built into a bundle by the real author
  code, uploaded and published; then ``fwledger device update --tracker T --json`` in its own
  process on a freshly provisioned device: heartbeat, plan, k-of-n attested header, storage proofs,
  bundle header from the server, payload streamed, every chunk checked and decrypted, the inactive
  slot written and hashed, trial boot confirmed.
* python-tuf (``tuf`` ngclient ``Updater``): a TUF repository for the same image (plaintext, the
  same 64 MiB) made with tuf's Metadata API (root, timestamp, snapshot, targets; one ed25519 key per
  role; consistent snapshots, so the target is served as ``<sha256>.<name>``), served by
  ``http.server`` in a thread of this process on loopback; then ``tests/bench/tuf_client.py`` in its
  own process: ``Updater`` from the bootstrap root, ``refresh()``, ``get_targetinfo``,
  ``download_target`` (length and SHA-256 checked, copied to the target directory).

Both clients are separate processes and both servers are threads of this one; each side is timed
by the client itself (the job) and from outside (the whole process, interpreter start included).
Best of ``RUNS`` runs each. fwledger does more than TUF here: it decrypts and installs the image
into a slot and proves the release against the ledger; TUF checks signed metadata and one hash.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ledger_node.record import ZERO_HASH
from tests.bench.report import Table, record, sized
from tests.bench.world import FWLEDGER, MIB, Bench, device, device_world, measure, published

pytestmark = pytest.mark.bench

SIZE = sized(64 * MIB, 16 * MIB)
RUNS = sized(3, 1)
TARGET = "firmware.bin"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    yield from device_world(tmp_path_factory, "bench-tuf")


def make_tuf_repository(repo: Path, image: Path) -> bytes:
    """A TUF repository under ``repo`` (``metadata/``, ``targets/``) with ``image`` as target
    ``TARGET``; returns the root metadata bytes a client is bootstrapped with."""
    tuf_metadata = pytest.importorskip("tuf.api.metadata")
    from securesystemslib.signer import CryptoSigner
    from tuf.api.serialization.json import JSONSerializer

    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=7)
    signers = {role: CryptoSigner.generate_ed25519() for role in ("root", "timestamp", "snapshot", "targets")}
    root = tuf_metadata.Root(expires=expires, consistent_snapshot=True)
    for role, signer in signers.items():
        root.add_key(signer.public_key, role)
    targets = tuf_metadata.Targets(expires=expires)
    target = tuf_metadata.TargetFile.from_file(TARGET, str(image), ["sha256"])
    targets.targets[TARGET] = target
    snapshot = tuf_metadata.Snapshot(expires=expires)  # meta: targets.json version 1
    timestamp = tuf_metadata.Timestamp(expires=expires)  # snapshot_meta: version 1

    meta_dir, targets_dir = repo / "metadata", repo / "targets"
    meta_dir.mkdir(parents=True)
    targets_dir.mkdir()
    serializer = JSONSerializer(compact=True)
    for name, signed, filename in (("root", root, "1.root.json"), ("targets", targets, "1.targets.json"),
                                   ("snapshot", snapshot, "1.snapshot.json"),
                                   ("timestamp", timestamp, "timestamp.json")):
        md: Any = tuf_metadata.Metadata(signed)
        md.sign(signers[name])
        md.to_file(str(meta_dir / filename), serializer)
    shutil.copyfile(image, targets_dir / f"{target.hashes['sha256']}.{TARGET}")
    return (meta_dir / "1.root.json").read_bytes()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_fwledger_vs_python_tuf_one_image(world: Bench) -> None:
    pytest.importorskip("tuf.ngclient")
    image = world.tmp / "tuf-image.bin"
    bundle, _hh, payload_size = published(world, SIZE, ZERO_HASH, keep_image=image)
    bundle.unlink()

    repo = world.tmp / "tuf-repo"
    root_json = world.tmp / "root.json"
    root_json.write_bytes(make_tuf_repository(repo, image))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(repo)))
    serving = threading.Thread(target=httpd.serve_forever, daemon=True)
    serving.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"

    fw: list[tuple[float, float, float, dict[str, Any], float]] = []
    tf: list[tuple[float, float, float, dict[str, Any]]] = []
    try:
        for i in range(RUNS):
            root = device(world, f"tuf-cmp-{i}")
            out, wall, rss = measure([*FWLEDGER, "device", "update", "--dir", str(root), "--tracker",
                                      world.tracker_url, "--json"], world.tmp / "fw.log")
            (res,) = out["results"]
            assert res["outcome"] == "confirmed" and res["download"]["bytes"] == payload_size, res
            fw.append((float(out["installed_seconds"]), wall, rss, res["report"]["seconds"], float(out["seconds"])))
            shutil.rmtree(root)

            meta, dest = world.tmp / f"tuf-client-{i}" / "metadata", world.tmp / f"tuf-client-{i}" / "targets"
            meta.mkdir(parents=True)
            out, wall, rss = measure([sys.executable, "-m", "tests.bench.tuf_client", str(root_json), str(meta),
                                      f"{base}/metadata/", f"{base}/targets/", TARGET, str(dest)],
                                     world.tmp / "tuf.log")
            assert out["bytes"] == SIZE, out
            tf.append((float(out["seconds"]), wall, rss, out))
            shutil.rmtree(meta.parent)
    finally:
        httpd.shutdown()
        httpd.server_close()
        image.unlink(missing_ok=True)

    fw_job, fw_wall, fw_rss = min(r[0] for r in fw), min(r[1] for r in fw), max(r[2] for r in fw)
    fw_pass = min(r[4] for r in fw)
    tf_job, tf_wall, tf_rss = min(r[0] for r in tf), min(r[1] for r in tf), max(r[2] for r in tf)
    best_fw = min(fw, key=lambda r: r[0])[3]
    best_tf = min(tf, key=lambda r: r[0])[3]
    mib = SIZE / MIB
    print(f"\nfwledger vs python-tuf, one {mib:.0f} MiB image, loopback, best of {RUNS}")
    print(f"{'':44}{'fwledger':>10}{'python-tuf':>12}{'ratio':>8}")
    print(f"{'update check + download + verify (+ install), s':44}{fw_job:>10.2f}{tf_job:>12.2f}"
          f"{fw_job / tf_job:>8.2f}")
    print(f"{'  fwledger: + trial boot, confirm, report, s':44}{fw_pass:>10.2f}{tf_job:>12.2f}{fw_pass / tf_job:>8.2f}")
    print(f"{'whole process (interpreter start), s':44}{fw_wall:>10.2f}{tf_wall:>12.2f}{fw_wall / tf_wall:>8.2f}")
    print(f"{'peak RSS, MiB':44}{fw_rss:>10.1f}{tf_rss:>12.1f}{fw_rss / tf_rss:>8.2f}")
    print(f"fwledger parts: verify {best_fw.get('verify', 0):.3f} s, install {best_fw.get('install', 0):.2f} s; "
          f"tuf parts: refresh {best_tf['refresh']:.3f} s, download {best_tf['download']:.2f} s")
    print("ratio = fwledger / python-tuf (above 1: fwledger takes longer)")

    table = Table("45-tuf", f"Device-side update of one {mib:.0f} MiB image: fwledger against python-tuf",
                  "fwledger device agent", "python-tuf ngclient Updater", source="tests/bench/bench_tuf.py",
                  words=("faster", "slower"))
    table.add("update check + download + verify (fwledger: + install), MiB/s", mib / fw_job, mib / tf_job, "MiB/s")
    table.add("update check + download + verify (fwledger: + install; client's own timer)", fw_job, tf_job, "s",
              better="lower", digits=2)
    table.add("fwledger's whole pass (+ trial boot, confirm, report) against the same", fw_pass, tf_job, "s",
              better="lower", digits=2)
    table.add("whole client process, interpreter start included", fw_wall, tf_wall, "s", better="lower", digits=2)
    table.add("peak RSS of the client process", fw_rss, tf_rss, "MiB", better="lower", digits=1)
    table.notes.append(
        f"best of {RUNS}; both servers are threads of the benchmark process on loopback, each client its own "
        "process. fwledger's job, as the issue counts it (check + download + verify + install): trust anchors, "
        "heartbeat, plan, attested header, storage proofs, registration, bundle header, payload streamed and "
        "checked chunk by chunk, decrypted, written to the inactive slot, hashed and made durable, the slot "
        f"pending (the pass's `installed_seconds`; verify {best_fw.get('verify', 0):.3f} s, install "
        f"{best_fw.get('install', 0):.2f} s of it); its whole pass adds the release's standing proven again, the "
        "trial boot, the confirm and the report to the tracker (`seconds`); python-tuf: root, timestamp, snapshot "
        f"and targets metadata verified (refresh {best_tf['refresh']:.3f} s), target downloaded to a temporary "
        f"file, length and SHA-256 checked, copied out ({best_tf['download']:.2f} s)")
    table.notes.append(
        "goals: the job no slower than python-tuf's (floor 1.5x), the whole process at most 1.5x, peak RSS at most "
        "python-tuf's (floor 1.2x). Start-up and RSS: the device imports no Ethereum library, no HTTP library, no "
        "rich, no cffi and no pycryptodome module (ledger_node/codec on coincurve, keccak bound to pycryptodome's C "
        "library through ctypes; http.client); X25519 keys come from cryptography's Rust constructors, without its "
        "OpenSSL backend module; its imports take ~0.05 s more than python-tuf's and requests' (a third of that is "
        "making dataclasses); a device command ends without the interpreter's teardown. What bounds the job: "
        f"the install ({best_fw.get('install', 0):.2f} s, against python-tuf's download + SHA-256 + copy "
        f"{best_tf['download']:.2f} s), CPU-bound on two cores "
        "shared with the server: two SHA-256 passes over the ciphertext (the record's hash and its Merkle "
        "leaves), AES-GCM, the BLAKE3 slot digest (the boot check's reference, ~4x SHA-256 here), receive and "
        "durable writes (see the 256 MiB table); then the protocol around it "
        f"({fw_job - best_fw.get('install', 0) - best_fw.get('verify', 0):.3f} s, against python-tuf's refresh "
        f"{best_tf['refresh']:.3f} s): "
        "7 round trips of 1-6 ms (trust anchors, heartbeat, attestation, evidence, identity, registration, "
        "bundle header; the tracker's and the server's own durable writes included: a heartbeat commits once) "
        "and ~10 fsyncs of the device's own (the accepted command and the agent memory before acting, the "
        "journal and the mirrored state before the slot; the payload request is sent ahead while those last "
        "run). The trial boot does not read back the slot the same process has just written, hashed and synced "
        "while the file is unchanged. Peak RSS: after its imports the device holds ~34 MiB, python-tuf's client "
        "~32 MiB (of ours: cryptography ~7 MiB, coincurve's secp256k1 ~5 MiB, ssl ~5 MiB, which http.client "
        "imports and TLS needs); the rest is the payload pipeline, three 1 MiB batches in flight (256 KiB "
        "batches measured: ~2 MiB less, ~6 ms more install). python-tuf hashes once and writes without fsync: "
        "an install that must survive a "
        "power cut and the proofs against the ledger cost the difference")
    record(table)
