"""The firmware server over real HTTP on loopback, against the embedded chain and an anvil devnet.

On the embedded chain the server runs in this process (uvicorn in a thread: the chain cannot
leave the process); on anvil it is the real ``fwledger server run`` process, started with a home
holding the registry's deployment record and stopped (or SIGKILLed) by PID. The author side is
the real one (``entities.bundle.build_bundle``, ``entities.author.publish``).

Covers P1, P4, R10.a.i-iii, R10.f.i, C11.3.a-h, C11.4.a-c, T9.b (requirement IDs of
``../shared/X1368-REQUIREMENTS.md``); each refusal asserts the HTTP status, the error code and
that nothing was stored or served (rows and files counted before and after).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from eth_account import Account
from eth_account.signers.local import LocalAccount
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from entities.author.publish import publish_bundle
from entities.bundle import (
    BundleHeader,
    decrypt_payload,
    read_header,
    release_digest,
    sign_release,
)
from entities.cli import cli
from entities.firmware_server.app import create_app
from entities.firmware_server.config import ServerConfig
from entities.firmware_server.ledger import LedgerView
from entities.firmware_server.runner import ServerThread
from entities.protocol.http_auth import HDR_CONTENT_SHA256, IDENTITY_PATH, sign_request, sign_response, verify_request
from entities.service_identity import fetch_identity
from ledger_node.devnet import free_port
from ledger_node.record import ReleaseRecord, Version
from ledger_node.registry import save_deployment
from tests.conftest import Chain
from tests.world import LedgerWorld

REPO = Path(__file__).resolve().parents[2]
WAIT = 30.0


# ----------------------------------------------------------------------------- the world on chain


World = LedgerWorld  # the shared world (tests/world.py): vendors acme and globex, real class keys


@pytest.fixture
def world(chain: Chain) -> World:
    return LedgerWorld.create(chain)


# ----------------------------------------------------------------------------- the server under test


@dataclass
class Server:
    """A running firmware server (a thread here, or a real process) and its data folder."""

    url: str
    data: Path
    stop: Callable[[], None]
    kill: Callable[[], None] | None = None
    proc: subprocess.Popen[bytes] | None = None
    app: Any = None

    @property
    def token(self) -> str:
        return (self.data / "admin.token").read_text().strip()

    def admin(self, method: str, path: str, body: Any = None) -> requests.Response:
        return requests.request(method, self.url + path, json=body, timeout=30,
                                headers={"Authorization": f"Bearer {self.token}"})

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        con = sqlite3.connect(f"file:{self.data / 'server.sqlite'}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

    def snapshot(self) -> dict[str, Any]:
        """What a refusal must leave unchanged: image rows, stored objects, temp files, served downloads."""
        return {
            "images": sorted(self.rows("SELECT digest, state FROM images")),
            "objects": sorted(p.name for p in (self.data / "objects").iterdir()),
            "tmp": sorted(p.name for p in (self.data / "tmp").iterdir()),
            "served": self.rows("SELECT COUNT(*) FROM downloads WHERE outcome = 'served'")[0][0],
        }

    def barred(self) -> set[str]:
        return {r[0] for r in self.rows("SELECT vendor_name FROM barred")}

    def image_state(self, digest: bytes) -> str | None:
        rows = self.rows("SELECT state FROM images WHERE digest = ?", ("0x" + digest.hex(),))
        return rows[0][0] if rows else None

    def wait_state(self, digest: bytes, state: str, timeout: float = WAIT) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.image_state(digest) == state:
                return
            time.sleep(0.05)
        raise AssertionError(f"image {digest.hex()[:12]} never became {state} (is {self.image_state(digest)})")

    def wait_barred(self, vendor: str, timeout: float = WAIT) -> None:
        """Until ``vendor`` is barred and the files of its withdrawn images are gone (the store
        commits the bar and the withdrawal, then deletes the files)."""
        end = time.monotonic() + timeout

        def withdrawn_files() -> list[str]:
            rows = self.rows("SELECT file_hash FROM images WHERE vendor_name = ? AND state = 'withdrawn'", (vendor,))
            return [h for (h,) in rows if (self.data / "objects" / str(h).removeprefix("0x")).exists()]

        while vendor not in self.barred() or withdrawn_files():
            if time.monotonic() > end:
                raise AssertionError(f"vendor {vendor} never barred (or its files were kept: {withdrawn_files()})")
            time.sleep(0.05)


def _wait_http(url: str, proc: subprocess.Popen[bytes] | None, err: Path | None, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {err.read_text() if err else ''}")
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise AssertionError("server never answered /health")


def start_process(world: World, home: Path, data: Path, *extra: str, log: Path) -> Server:
    """``fwledger --rpc URL --home H server run`` as a real process on a free loopback port."""
    port = free_port()
    argv = [sys.executable, "-m", "entities.cli", "--rpc", world.chain.rpc, "--home", str(home), "server", "run",
            "--host", "127.0.0.1", "--port", str(port), "--data", str(data), "--poll-interval", "0.1", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "FWLEDGER_KEY_FILE": ""}
    with open(log, "ab") as err:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}"
    _wait_http(url, proc, log)

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def kill() -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    return Server(url, data, stop, kill, proc)


def start_thread(world: World, data: Path, **cfg: Any) -> Server:
    """The app in this process (uvicorn in a thread), sharing the embedded chain."""
    config = ServerConfig(data_dir=data, poll_interval=0.1, **{"admission": "open", **cfg})
    ledger = LedgerView(world.chain.w3, world.registry.deployment, config.ledger_index_path)
    app = create_app(config, ledger)
    thread = ServerThread(app).start()
    return Server(thread.url, data, thread.stop, app=app)


@pytest.fixture
def make_server(world: World, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers on ``world``'s backend; every one is stopped at the end of the test."""
    started: list[Server] = []
    home = tmp_path / "server-home"
    save_deployment(home, world.registry.deployment)

    def make(data: Path | None = None, **cfg: Any) -> Server:
        data = data or tmp_path / f"server-data-{len(started)}"
        if world.chain.backend == "embedded":
            srv = start_thread(world, data, **cfg)
        else:
            flags = []
            if "max_upload_bytes" in cfg:
                flags += ["--max-upload", str(cfg.pop("max_upload_bytes"))]
            if "max_total_bytes" in cfg:
                flags += ["--max-total", str(cfg.pop("max_total_bytes"))]
            for url in cfg.pop("tracker_notify_urls", ()):
                flags += ["--notify", url]
            assert not cfg, f"no flag for {cfg}"
            srv = start_process(world, home, data, *flags, log=tmp_path / "server.log")
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def server(make_server: Callable[..., Server]) -> Server:
    return make_server()


# ----------------------------------------------------------------------------- clients


def upload(srv: Server, account: LocalAccount, body: bytes, *, sign_body: bytes | None = None,
           headers: dict[str, str] | None = None) -> requests.Response:
    """POST a bundle body signed by ``account`` (over ``sign_body`` if given: a forged body)."""
    signed = body if sign_body is None else sign_body
    hdrs = sign_request(account, "POST", "/v1/bundles", signed, audience=fetch_identity(srv.url))
    hdrs["Content-Type"] = "application/octet-stream"
    hdrs[HDR_CONTENT_SHA256] = hashlib.sha256(signed).hexdigest()
    hdrs.update(headers or {})
    return requests.post(srv.url + "/v1/bundles", data=body, headers=hdrs, timeout=60)


def register(srv: Server, device: LocalAccount, device_id: str, hardware: str = "cam-r1",
             location: str | None = None) -> requests.Response:
    body = json.dumps({"device_id": device_id, "hardware": hardware, "location": location}).encode()
    hdrs = sign_request(device, "POST", "/v1/devices", body, audience=fetch_identity(srv.url))
    hdrs["Content-Type"] = "application/json"
    return requests.post(srv.url + "/v1/devices", data=body, headers=hdrs, timeout=30)


def fetch(srv: Server, device: LocalAccount, path: str, *, headers: dict[str, str] | None = None,
          stream: bool = False) -> requests.Response:
    hdrs = sign_request(device, "GET", path, audience=fetch_identity(srv.url))
    hdrs.update(headers or {})
    return requests.get(srv.url + path, headers=hdrs, timeout=60, stream=stream)


def code_of(resp: requests.Response) -> str:
    return str(resp.json()["error"]["code"])


def payload_of(bundle: Path) -> bytes:
    with open(bundle, "rb") as fh:
        _header, offset = read_header(fh)
    return bundle.read_bytes()[offset:]


def digest_of(world: World, header: BundleHeader) -> bytes:
    return release_digest(header, world.chain.w3.eth.chain_id, world.registry.address)


def resign(world: World, header: BundleHeader, record: ReleaseRecord, account: LocalAccount) -> bytes:
    """Header bytes for ``record`` signed by ``account`` (same encryption): a forged bundle's prefix."""
    sig = sign_release(record, account, world.chain.w3.eth.chain_id, world.registry.address)
    return BundleHeader(record, sig, header.encryption).to_bytes()


def new_device() -> LocalAccount:
    return Account.create()


# ----------------------------------------------------------------------------- the whole flow


def test_build_upload_publish_download_byte_identical(world: World, server: Server, tmp_path: Path) -> None:
    """P1 -> P4 with the real author: build (R10.f.i), upload, held unpublished (C11.4.c), publish on
    the ledger, the server's full node sees it, an entitled device gets byte-identical ciphertext
    that decrypts to the image (C11.3.a, C11.3.b, C11.3.f)."""
    bundle, header, plain = world.bundle(tmp_path, "1.0.0")
    digest = digest_of(world, header)
    receipt = publish_bundle(bundle, [server.url], world.as_vendor(world.chain.vendor))
    assert receipt.servers[0].state == "unpublished" and receipt.servers[0].status == 201
    server.wait_state(digest, "published")
    hh = "0x" + receipt.header_hash.hex()

    listed = requests.get(server.url + "/v1/images", timeout=10).json()
    assert [(i["header_hash"], i["state"], i["version"], i["ledger"]["head"]) for i in listed] == \
        [(hh, "published", "1.0.0", True)]

    device = new_device()
    reg = register(server, device, "cam-0001", "cam-r1", "eu-west")
    assert reg.status_code == 201 and reg.json()["address"] == device.address
    got = fetch(server, device, f"/v1/images/{hh}")
    assert got.status_code == 200 and got.headers["accept-ranges"] == "bytes"
    assert got.content == payload_of(bundle)
    hdr = fetch(server, device, f"/v1/images/{hh}/header")
    assert hdr.status_code == 200 and BundleHeader.from_json(hdr.json()) == header
    out = io.BytesIO()
    decrypt_payload(header, io.BytesIO(got.content), out, hw_id="cam-r1", class_private_key=world.class_priv["cam-r1"])
    assert out.getvalue() == plain
    # the object on disk is content-addressed: its name is the SHA-256 of its bytes
    obj = server.data / "objects" / header.record.data.file_hash.hex()
    assert hashlib.sha256(obj.read_bytes()).digest() == header.record.data.file_hash
    log = server.admin("GET", "/v1/downloads").json()
    assert [(r["device_id"], r["what"], r["outcome"], r["header_hash"]) for r in log] == \
        [("cam-0001", "header", "served", hh), ("cam-0001", "payload", "served", hh)]
    assert log[1]["bytes"] == header.record.data.file_size
    devices = server.admin("GET", "/v1/devices").json()
    assert [(d["device_id"], d["hardware"], d["location"]) for d in devices] == [("cam-0001", "cam-r1", "eu-west")]
    vendors = {v["name"]: v for v in requests.get(server.url + "/v1/vendors", timeout=10).json()}
    assert vendors["acme"]["images"] == 1 and not vendors["acme"]["barred"]
    health = requests.get(server.url + "/health", timeout=10).json()
    assert health["status"] == "ok" and health["ledger_block"] >= receipt.block


def test_resume_with_range_after_a_cut_connection(world: World, server: Server, tmp_path: Path) -> None:
    """A download cut mid-way resumes with ``Range`` and the pieces join byte-identical (P3/P4 transfer)."""
    # larger than the loopback socket buffers, so the cut really stops the server mid-way
    bundle, header, _ = world.bundle(tmp_path, "1.0.0", size=24_000_000)
    upload(server, world.chain.vendor, bundle.read_bytes()).raise_for_status()
    hh = "0x" + world.publish_bundle(header).hex()
    server.wait_state(digest_of(world, header), "published")
    device = new_device()
    register(server, device, "cam-7").raise_for_status()
    whole = payload_of(bundle)

    # cut: read 1 MiB of the body, then drop the connection
    resp = fetch(server, device, f"/v1/images/{hh}", stream=True)
    assert resp.status_code == 200 and int(resp.headers["content-length"]) == len(whole)
    first = resp.raw.read(1 << 20)
    resp.close()
    assert len(first) == 1 << 20 and first == whole[: 1 << 20]

    rest = fetch(server, device, f"/v1/images/{hh}", headers={"Range": f"bytes={len(first)}-"})
    assert rest.status_code == 206
    assert rest.headers["content-range"] == f"bytes {len(first)}-{len(whole) - 1}/{len(whole)}"
    assert first + rest.content == whole
    mid = fetch(server, device, f"/v1/images/{hh}", headers={"Range": "bytes=100-199"})
    assert mid.status_code == 206 and mid.content == whole[100:200]
    tail = fetch(server, device, f"/v1/images/{hh}", headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == whole[-10:]
    bad = fetch(server, device, f"/v1/images/{hh}", headers={"Range": f"bytes={len(whole)}-"})
    assert bad.status_code == 416 and code_of(bad) == "bad_range"
    assert bad.headers["content-range"] == f"bytes */{len(whole)}"
    multi = fetch(server, device, f"/v1/images/{hh}", headers={"Range": "bytes=0-1,5-9"})
    assert multi.status_code == 416 and code_of(multi) == "bad_range"
    # the log keeps each transfer with the bytes it carried; the cut one carried less than the whole
    log = server.admin("GET", "/v1/downloads").json()
    served = [r for r in reversed(log) if r["outcome"] == "served"]
    assert served[0]["bytes"] < len(whole)
    assert served[1]["bytes"] == len(whole) - (1 << 20)
    # ... and the range it served (start, end exclusive); the whole payload has none
    assert (served[0]["range_start"], served[0]["range_end"]) == (None, None)
    assert (served[1]["range_start"], served[1]["range_end"]) == (1 << 20, len(whole))
    assert (served[2]["range_start"], served[2]["range_end"], served[2]["bytes"]) == (100, 200, 100)
    # a Range changes nothing about who is served: an unregistered device and one of another class
    # are refused before the range is looked at (a bad range from them is no 416 either)
    stranger, other = new_device(), new_device()
    assert register(server, other, "r2-cam", "cam-r2").status_code == 201
    before = server.snapshot()["served"]
    for who, code in ((stranger, "unregistered_device"), (other, "hardware_not_supported")):
        for rng in ("bytes=100-", f"bytes={len(whole)}-"):
            resp = fetch(server, who, f"/v1/images/{hh}", headers={"Range": rng})
            assert (resp.status_code, code_of(resp)) == (403, code), resp.text
            assert "content-range" not in resp.headers
    assert server.snapshot()["served"] == before


# ----------------------------------------------------------------------------- upload refusals


def _bundle_bytes(world: World, tmp: Path, version: str = "1.0.0", **kw: Any) -> tuple[bytes, BundleHeader]:
    path, header, _ = world.bundle(tmp, version, **kw)
    return path.read_bytes(), header


def _split(body: bytes) -> tuple[bytes, bytes]:
    _header, offset = read_header(io.BytesIO(body))
    return body[:offset], body[offset:]


def _case_unsigned(w: World, s: Server, t: Path) -> requests.Response:
    return requests.post(s.url + "/v1/bundles", data=_bundle_bytes(w, t)[0], timeout=30)


def _case_wrongly_signed(w: World, s: Server, t: Path) -> requests.Response:
    body = _bundle_bytes(w, t)[0]
    hdrs = sign_request(w.chain.stranger, "POST", "/v1/bundles", body, audience=fetch_identity(s.url))
    hdrs["X-Fwledger-Address"] = w.chain.vendor.address  # claims to be the vendor
    hdrs[HDR_CONTENT_SHA256] = hashlib.sha256(body).hexdigest()
    return requests.post(s.url + "/v1/bundles", data=body, headers=hdrs, timeout=30)


def _case_body_swapped(w: World, s: Server, t: Path) -> requests.Response:
    body = _bundle_bytes(w, t)[0]
    return upload(s, w.chain.vendor, body, sign_body=body[:-1] + bytes([body[-1] ^ 1]))


def _case_stale(w: World, s: Server, t: Path) -> requests.Response:
    body = _bundle_bytes(w, t)[0]
    hdrs = sign_request(w.chain.vendor, "POST", "/v1/bundles", body, now=time.time() - 3600,
                        audience=fetch_identity(s.url))
    hdrs[HDR_CONTENT_SHA256] = hashlib.sha256(body).hexdigest()
    return requests.post(s.url + "/v1/bundles", data=body, headers=hdrs, timeout=30)


def _case_no_intent(w: World, s: Server, t: Path) -> requests.Response:
    body = _bundle_bytes(w, t)[0]
    hdrs = sign_request(w.chain.vendor, "POST", "/v1/bundles", body, audience=fetch_identity(s.url))
    return requests.post(s.url + "/v1/bundles", data=body, headers=hdrs, timeout=30)


def _case_chunked(w: World, s: Server, t: Path) -> requests.Response:
    body = _bundle_bytes(w, t)[0]
    hdrs = sign_request(w.chain.vendor, "POST", "/v1/bundles", body, audience=fetch_identity(s.url))
    hdrs[HDR_CONTENT_SHA256] = hashlib.sha256(body).hexdigest()
    return requests.post(s.url + "/v1/bundles", data=iter([body]), headers=hdrs, timeout=30)  # no length


def _case_not_a_vendor(w: World, s: Server, t: Path) -> requests.Response:
    return upload(s, w.chain.stranger, _bundle_bytes(w, t, account=w.chain.stranger)[0])


def _case_tampered_chunk(w: World, s: Server, t: Path) -> requests.Response:
    head, payload = _split(_bundle_bytes(w, t)[0])
    i = 70_000  # inside the second chunk
    return upload(s, w.chain.vendor, head + payload[:i] + bytes([payload[i] ^ 0x40]) + payload[i + 1:])


def _case_wrong_merkle_root(w: World, s: Server, t: Path) -> requests.Response:
    body, header = _bundle_bytes(w, t)
    record = replace(header.record, data=replace(header.record.data, merkle_root=b"\x42" * 32))
    return upload(s, w.chain.vendor, resign(w, header, record, w.chain.vendor) + _split(body)[1])


def _case_wrong_size(w: World, s: Server, t: Path) -> requests.Response:
    small, _ = _bundle_bytes(w, t, "1.0.0", size=100_000)
    big, _ = _bundle_bytes(w, t, "1.0.1", size=300_000)
    return upload(s, w.chain.vendor, _split(small)[0] + _split(big)[1])  # another, longer payload


def _case_truncated(w: World, s: Server, t: Path) -> requests.Response:
    return upload(s, w.chain.vendor, _bundle_bytes(w, t)[0][:-100])


def _case_trailing_bytes(w: World, s: Server, t: Path) -> requests.Response:
    return upload(s, w.chain.vendor, _bundle_bytes(w, t)[0] + b"\x00" * 10)


def _case_not_a_bundle(w: World, s: Server, t: Path) -> requests.Response:
    return upload(s, w.chain.vendor, b"#!/bin/sh\nrm -rf /\n" * 100)


def _case_other_format_version(w: World, s: Server, t: Path) -> requests.Response:
    body = bytearray(_bundle_bytes(w, t)[0])
    body[4:6] = (2).to_bytes(2, "big")
    return upload(s, w.chain.vendor, bytes(body))


def _case_unusable_bundle_signature(w: World, s: Server, t: Path) -> requests.Response:
    body, header = _bundle_bytes(w, t)
    forged = BundleHeader(header.record, b"\x00" * 64 + b"\x1b", header.encryption).to_bytes()
    return upload(s, w.chain.vendor, forged + _split(body)[1])


def _case_signer_mismatch(w: World, s: Server, t: Path) -> requests.Response:
    # a bundle for acme signed by globex's key, uploaded by acme
    return upload(s, w.chain.vendor, _bundle_bytes(w, t, account=w.chain.vendor2)[0])


def _case_vendor_name_mismatch(w: World, s: Server, t: Path) -> requests.Response:
    # acme signs a record in globex's name
    return upload(s, w.chain.vendor, _bundle_bytes(w, t, vendor="globex", account=w.chain.vendor)[0])


def _case_unknown_hardware(w: World, s: Server, t: Path) -> requests.Response:
    keys = {**w.class_keys, "cam-r9": X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw,
                                                                                          PublicFormat.Raw)}
    return upload(s, w.chain.vendor, _bundle_bytes(w, t, hardware=("cam-r1", "cam-r9"), keys=keys)[0])


def _case_known_bad(w: World, s: Server, t: Path) -> requests.Response:
    body, header = _bundle_bytes(w, t)
    r = s.admin("POST", "/v1/admin/known-bad", {"file_hash": "0x" + header.record.data.file_hash.hex(),
                                                "reason": "ships a backdoor"})
    assert r.status_code == 201, r.text
    return upload(s, w.chain.vendor, body)


def _case_too_large(w: World, s: Server, t: Path) -> requests.Response:
    return upload(s, w.chain.vendor, _bundle_bytes(w, t, size=300_000)[0])


# name: (case, config, status, code, proves malice: the vendor is barred)
UPLOAD_REFUSALS: dict[str, tuple[Callable[[World, Server, Path], requests.Response], dict[str, Any], int, str, bool]] = {
    "unsigned": (_case_unsigned, {}, 401, "unsigned", False),
    "wrongly_signed": (_case_wrongly_signed, {}, 401, "bad_signature", False),
    "body_not_the_signed_one": (_case_body_swapped, {}, 400, "body_mismatch", False),
    "no_signed_intent": (_case_no_intent, {}, 401, "no_intent", False),
    "chunked_without_length": (_case_chunked, {}, 411, "length_required", False),
    "stale": (_case_stale, {}, 401, "stale_request", False),
    "not_a_vendor": (_case_not_a_vendor, {}, 403, "not_a_vendor", False),
    "tampered_chunk": (_case_tampered_chunk, {}, 422, "hash_mismatch", True),
    "wrong_merkle_root": (_case_wrong_merkle_root, {}, 422, "merkle_mismatch", True),
    "wrong_size": (_case_wrong_size, {}, 422, "size_mismatch", True),
    "truncated": (_case_truncated, {}, 422, "truncated", True),
    "trailing_bytes": (_case_trailing_bytes, {}, 422, "trailing_bytes", True),
    "not_a_bundle": (_case_not_a_bundle, {}, 422, "bad_bundle", False),
    "other_format_version": (_case_other_format_version, {}, 422, "unsupported_bundle_version", False),
    "unusable_bundle_signature": (_case_unusable_bundle_signature, {}, 422, "bad_signature", True),
    "signer_mismatch": (_case_signer_mismatch, {}, 422, "signer_mismatch", False),
    "vendor_name_mismatch": (_case_vendor_name_mismatch, {}, 422, "vendor_name_mismatch", False),
    "unknown_hardware": (_case_unknown_hardware, {}, 422, "unknown_hardware", False),
    "known_bad": (_case_known_bad, {}, 422, "known_bad", True),
    "too_large": (_case_too_large, {"max_upload_bytes": 200_000}, 413, "too_large", False),
    "storage_full": (_case_too_large, {"max_total_bytes": 200_000}, 413, "storage_full", False),
}


@pytest.mark.parametrize("name", list(UPLOAD_REFUSALS))
def test_upload_refused_and_nothing_stored(name: str, world: World, make_server: Callable[..., Server],
                                           tmp_path: Path) -> None:
    """C11.3.a (authenticated active vendors only, replays refused), C11.3.c and R10.a.i (a bundle
    checked against itself and the ledger), R10.a.iii (the provider verifiable): each refusal has
    its status and code, stores nothing, and bars the vendor exactly when it proves malice."""
    case, cfg, status, code, malicious = UPLOAD_REFUSALS[name]
    srv = make_server(**cfg)
    before = srv.snapshot()
    resp = case(world, srv, tmp_path)
    assert (resp.status_code, code_of(resp)) == (status, code), resp.text
    assert resp.json()["error"]["message"] and "\n" not in resp.json()["error"]["message"]
    assert srv.snapshot() == before  # no row, no object, no temp file
    assert srv.rows("SELECT COUNT(*) FROM images")[0][0] == 0
    assert srv.barred() == ({"acme"} if malicious else set())
    # and a good upload from a vendor that is not barred still goes through
    if not malicious:
        good, _ = _bundle_bytes(world, tmp_path, "2.0.0", size=50_000)
        assert upload(srv, world.chain.vendor, good).status_code == 201


def test_image_whose_record_is_rolled_back_goes_back_to_unpublished(world: World, server: Server,
                                                                     tmp_path: Path) -> None:
    """The chain reverted below the block that published an uploaded image's record: the server's
    full node rolls its index back (``/health`` stays ok), the image goes back to unpublished and
    is not served; its record published again on the new branch, the image is published again."""
    if world.chain.backend != "embedded":
        pytest.skip("reverts the chain: embedded only (the session's anvil is shared)")
    w3 = world.chain.w3
    body, header = _bundle_bytes(world, tmp_path)
    digest = digest_of(world, header)
    assert upload(server, world.chain.vendor, body).status_code == 201
    snapshot = w3.testing.snapshot()
    heads = dict(world.heads)
    hh = world.publish_bundle(header)
    server.wait_state(digest, "published")
    device = new_device()
    assert register(server, device, "cam-0001", "cam-r1").status_code == 201
    assert fetch(server, device, f"/v1/images/0x{hh.hex()}").status_code == 200

    w3.testing.revert(snapshot)
    world.heads = heads
    w3.testing.mine(2)
    server.wait_state(digest, "unpublished")
    health = requests.get(server.url + "/health", timeout=10).json()
    assert health["status"] == "ok" and health["last_sync_error"] is None, health
    listed = requests.get(server.url + "/v1/images", timeout=10).json()
    assert [(i["state"], i["header_hash"]) for i in listed] == [("unpublished", None)], listed
    # the lost record cannot be fetched any more (the device registration was an off-chain row: kept)
    assert fetch(server, device, f"/v1/images/0x{hh.hex()}").status_code >= 400

    again = world.publish_bundle(header)  # the bundle's record on the new branch (a new publish time)
    server.wait_state(digest, "published")
    assert server.rows("SELECT header_hash FROM images") == [("0x" + again.hex(),)]
    assert fetch(server, device, f"/v1/images/0x{again.hex()}").status_code == 200


def test_replayed_upload_refused(world: World, server: Server, tmp_path: Path) -> None:
    """C11.3.a: a captured upload request sent again is refused (nonce already spent), nothing doubled."""
    body, header = _bundle_bytes(world, tmp_path)
    hdrs = sign_request(world.chain.vendor, "POST", "/v1/bundles", body, audience=fetch_identity(server.url))
    hdrs[HDR_CONTENT_SHA256] = hashlib.sha256(body).hexdigest()
    first = requests.post(server.url + "/v1/bundles", data=body, headers=hdrs, timeout=30)
    assert first.status_code == 201 and first.json()["digest"] == "0x" + digest_of(world, header).hex()
    before = server.snapshot()
    again = requests.post(server.url + "/v1/bundles", data=body, headers=hdrs, timeout=30)
    assert (again.status_code, code_of(again)) == (401, "replayed_request")
    assert server.snapshot() == before
    # the same bundle in a fresh request is idempotent: 200, still one image
    same = upload(server, world.chain.vendor, body)
    assert same.status_code == 200 and server.snapshot() == before


def test_barred_vendor_refused_and_its_images_withdrawn(world: World, server: Server, tmp_path: Path) -> None:
    """C11.3.c: a vendor proven malicious is barred: its stored images are withdrawn (files deleted,
    rows kept) and its next upload, valid or not, is refused with vendor_barred."""
    good, header = _bundle_bytes(world, tmp_path, "1.0.0")
    assert upload(server, world.chain.vendor, good).status_code == 201
    other, _ = _bundle_bytes(world, tmp_path, "1.0.0", account=world.chain.vendor2, vendor="globex")
    assert upload(server, world.chain.vendor2, other).status_code == 201
    assert len(server.snapshot()["objects"]) == 2
    evil_head, evil_payload = _split(_bundle_bytes(world, tmp_path, "1.1.0")[0])
    bad = upload(server, world.chain.vendor, evil_head + evil_payload[:-1] + bytes([evil_payload[-1] ^ 1]))
    assert (bad.status_code, code_of(bad)) == (422, "hash_mismatch")
    assert server.barred() == {"acme"}
    assert server.image_state(digest_of(world, header)) == "withdrawn"
    assert server.snapshot()["objects"] == [hashlib.sha256(_split(other)[1]).hexdigest()]  # globex's only
    before = server.snapshot()
    again, _ = _bundle_bytes(world, tmp_path, "1.2.0")
    refused = upload(server, world.chain.vendor, again)
    assert (refused.status_code, code_of(refused)) == (403, "vendor_barred")
    assert server.snapshot() == before
    vendors = {v["name"]: v for v in requests.get(server.url + "/v1/vendors", timeout=10).json()}
    assert vendors["acme"]["barred"] and "malicious upload (hash_mismatch)" in vendors["acme"]["barred_reason"]
    assert not vendors["globex"]["barred"]


# ----------------------------------------------------------------------------- download refusals


def published(world: World, srv: Server, tmp: Path, version: str = "1.0.0", **kw: Any) -> tuple[str, BundleHeader,
                                                                                                 bytes]:
    """Upload and publish a release; wait until the server serves it. Returns (header hash, header, body)."""
    body, header = _bundle_bytes(world, tmp, version, **kw)
    assert upload(srv, kw.get("account") or world.chain.vendor, body).status_code == 201
    hh = world.publish_bundle(header, kw.get("account"))
    srv.wait_state(digest_of(world, header), "published")
    return "0x" + hh.hex(), header, body


def wait_ledger(srv: Server, block: int) -> None:
    end = time.monotonic() + WAIT
    while (requests.get(srv.url + "/health", timeout=10).json()["ledger_block"] or 0) < block:
        assert time.monotonic() < end, "server never reached the block"
        time.sleep(0.05)


def _refused_download(srv: Server, device: LocalAccount, target: str, status: int, code: str) -> dict[str, Any]:
    """Ask for the payload and the header: both refused, nothing served, the refusal logged."""
    before = srv.snapshot()
    for path in (f"/v1/images/{target}", f"/v1/images/{target}/header"):
        resp = fetch(srv, device, path)
        assert (resp.status_code, code_of(resp)) == (status, code), resp.text
        assert resp.headers["content-type"] == "application/json"
    assert srv.snapshot()["served"] == before["served"]
    rows = srv.rows("SELECT outcome, code, rule, what FROM downloads WHERE target = ? ORDER BY id", (target,))
    assert [(r[0], r[1], r[3]) for r in rows[-2:]] == [("refused", code, "payload"), ("refused", code, "header")]
    return resp.json()["error"]  # type: ignore[no-any-return]


def test_unregistered_device_refused(world: World, server: Server, tmp_path: Path) -> None:
    """P4, C11.3.b/d: only registered devices get images."""
    hh, _, _ = published(world, server, tmp_path)
    _refused_download(server, new_device(), hh, 403, "unregistered_device")


def test_device_of_another_hardware_class_refused(world: World, server: Server, tmp_path: Path) -> None:
    """P4, Appendix II (supported hardware): a cam-r2 device never gets a cam-r1-only image."""
    hh, _, _ = published(world, server, tmp_path, hardware=("cam-r1",))
    device = new_device()
    assert register(server, device, "r2-dev", "cam-r2").status_code == 201
    err = _refused_download(server, device, hh, 403, "hardware_not_supported")
    assert "cam-r1" in err["message"]


def test_ledger_policy_denied(world: World, server: Server, tmp_path: Path) -> None:
    """P4 with the administrator's ledger policy (Appendix II smart contract): a class whose policy
    forbids the version is refused; lifting the policy serves it."""
    hh, _, body = published(world, server, tmp_path)
    device = new_device()
    register(server, device, "dev-p").raise_for_status()
    res = world.registry.set_policy("cam-r1", "acme", "cam-fw", allowed=True, min_version=Version(2, 0, 0))
    wait_ledger(server, res.block)
    err = _refused_download(server, device, hh, 403, "policy_denied")
    assert "2.0.0" in err["message"]
    res = world.registry.set_policy("cam-r1", "acme", "cam-fw", allowed=True)
    wait_ledger(server, res.block)
    assert fetch(server, device, f"/v1/images/{hh}").content == _split(body)[1]


def test_location_denied_names_the_rule(world: World, server: Server, tmp_path: Path) -> None:
    """C11.3.h: first matching rule wins (region labels and client network); a refusal names the
    rule and is logged with it; the operator's region overrides the device's own claim."""
    hh, _, body = published(world, server, tmp_path)
    eu, us = new_device(), new_device()
    register(server, eu, "dev-eu", location="eu-west").raise_for_status()
    register(server, us, "dev-us", location="us-east").raise_for_status()
    rules = [{"action": "allow", "region": "us-*"}, {"action": "deny", "region": "eu-*"},
             {"action": "deny", "cidr": "10.0.0.0/8"}]
    assert server.admin("POST", "/v1/admin/location-rules", {"rules": rules}).status_code == 200
    err = _refused_download(server, eu, hh, 403, "location_denied")
    assert err["rule"] == {"index": 1, "action": "deny", "region": "eu-*"}
    assert "rule #1" in err["message"]
    logged = server.rows("SELECT rule FROM downloads WHERE device_id = 'dev-eu' AND outcome = 'refused'")
    assert json.loads(logged[0][0]) == {"index": 1, "action": "deny", "region": "eu-*"}
    assert fetch(server, us, f"/v1/images/{hh}").content == _split(body)[1]
    # the operator assigns the US device to the EU: the device's own label no longer counts
    r = server.admin("POST", "/v1/admin/device-region", {"device": "dev-us", "region": "eu-central"})
    assert r.status_code == 200 and r.json()["assigned_region"] == "eu-central"
    _refused_download(server, us, hh, 403, "location_denied")
    # a network rule: loopback clients denied
    rules = [{"action": "deny", "cidr": "127.0.0.0/8"}]
    server.admin("POST", "/v1/admin/location-rules", {"rules": rules}).raise_for_status()
    server.admin("POST", "/v1/admin/device-region", {"device": "dev-us", "region": None}).raise_for_status()
    err = _refused_download(server, us, hh, 403, "location_denied")
    assert err["rule"] == {"index": 0, "action": "deny", "cidr": "127.0.0.0/8"}


def test_unknown_and_unpublished_images_refused(world: World, server: Server, tmp_path: Path) -> None:
    """P4 / C11.4.c: an upload is never offered before the ledger has its record."""
    device = new_device()
    register(server, device, "dev-u").raise_for_status()
    _refused_download(server, device, "0x" + "ab" * 32, 404, "unknown_image")
    body, header = _bundle_bytes(world, tmp_path)
    assert upload(server, world.chain.vendor, body).json()["state"] == "unpublished"
    _refused_download(server, device, "0x" + digest_of(world, header).hex(), 409, "not_published")


def _wait_withdrawn(srv: Server, digest: bytes) -> None:
    """Until the image is withdrawn and its file deleted (the store commits, then deletes)."""
    srv.wait_state(digest, "withdrawn")
    end = time.monotonic() + WAIT
    file_hash = srv.rows("SELECT file_hash FROM images WHERE digest = ?", ("0x" + digest.hex(),))[0][0]
    while (srv.data / "objects" / str(file_hash).removeprefix("0x")).exists():
        assert time.monotonic() < end, "the withdrawn image's file was kept"
        time.sleep(0.05)


def test_vendor_revoking_its_own_release_stays_in_good_standing(world: World, server: Server,
                                                                tmp_path: Path) -> None:
    """C11.3.c/d, R10.a.i: a vendor recalling its own bad build (the ledger's ``Revoked`` sent by
    the vendor's key) gets that image withdrawn and refused with ``revoked``; the vendor is not
    barred, its other image stays served, and the fix uploads and publishes."""
    good_hh, _, good_body = published(world, server, tmp_path, "1.0.0")
    bad_hh, bad_header, _ = published(world, server, tmp_path, "1.1.0")
    device = new_device()
    register(server, device, "dev-own").raise_for_status()
    world.as_vendor(world.chain.vendor).revoke("acme", "cam-fw", bytes.fromhex(bad_hh[2:]), "bricks r1 boards")
    _wait_withdrawn(server, digest_of(world, bad_header))
    wait_ledger(server, world.chain.w3.eth.block_number)
    assert server.barred() == set()
    err = _refused_download(server, device, bad_hh, 410, "revoked")
    assert "bricks r1 boards" in err["message"]
    assert fetch(server, device, f"/v1/images/{good_hh}").content == _split(good_body)[1]
    listed = {i["version"]: i for i in requests.get(server.url + "/v1/images", timeout=10).json()}
    assert listed["1.1.0"]["state"] == "withdrawn" and listed["1.1.0"]["ledger"]["revoked"]
    assert "by its vendor" in listed["1.1.0"]["withdraw_reason"]
    assert listed["1.0.0"]["state"] == "published"
    # the fix: uploaded, published (chained after the revoked head), served
    fix_hh, _, fix_body = published(world, server, tmp_path, "1.2.0")
    assert fetch(server, device, f"/v1/images/{fix_hh}").content == _split(fix_body)[1]
    vendors = {v["name"]: v for v in requests.get(server.url + "/v1/vendors", timeout=10).json()}
    assert not vendors["acme"]["barred"] and server.barred() == set()


def test_release_revoked_by_the_administration_is_withdrawn_vendor_not_barred(world: World, server: Server,
                                                                              tmp_path: Path) -> None:
    """C11.3.c, R10.a.i: a release the administration revokes is withdrawn (file deleted, row kept)
    and refused with ``revoked``; that proves no malice of its vendor (the ledger has
    ``VendorRevoked`` for that), so the vendor is not barred and its next release goes through."""
    hh, header, body = published(world, server, tmp_path)
    device = new_device()
    register(server, device, "dev-r").raise_for_status()
    assert fetch(server, device, f"/v1/images/{hh}").content == _split(body)[1]
    world.registry.revoke("acme", "cam-fw", bytes.fromhex(hh[2:]), "remote code execution")
    _wait_withdrawn(server, digest_of(world, header))
    assert server.snapshot()["objects"] == []
    err = _refused_download(server, device, hh, 410, "revoked")
    assert "withdrawn" in err["message"] or "revoked" in err["message"]
    listed = requests.get(server.url + "/v1/images", timeout=10).json()
    assert [(i["state"], i["ledger"]["revoked"]) for i in listed] == [("withdrawn", True)]
    assert "by its administration" in listed[0]["withdraw_reason"]
    assert server.barred() == set()
    assert upload(server, world.chain.vendor, _bundle_bytes(world, tmp_path, "1.1.0")[0]).status_code == 201


def test_vendor_revoked_on_the_ledger_is_barred_for_good(world: World, server: Server, tmp_path: Path) -> None:
    """C11.3.c/d: a vendor the ledger revokes is barred here and its images withdrawn; the operator
    cannot lift that bar (409 ``vendor_revoked``: the ledger says so), and it stays."""
    hh, header, _ = published(world, server, tmp_path)
    world.registry.revoke_vendor(world.chain.vendor.address)
    server.wait_barred("acme")
    assert server.image_state(digest_of(world, header)) == "withdrawn"
    device = new_device()
    register(server, device, "dev-v").raise_for_status()
    _refused_download(server, device, hh, 410, "revoked")
    refused = server.admin("POST", "/v1/admin/vendors/acme/unbar", {"reason": "they asked nicely"})
    assert (refused.status_code, code_of(refused)) == (409, "vendor_revoked"), refused.text
    assert server.barred() == {"acme"}
    assert [h["action"] for h in server.admin("GET", "/v1/admin/bars?vendor=acme").json()] == ["barred"]


class _Events(logging.Handler):
    """The server's log events, when it runs in this process."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append({"event": record.getMessage(), **(getattr(record, "fields", None) or {})})


def _logged(srv: Server, events: _Events, log: Path, name: str) -> list[dict[str, Any]]:
    """The server's log events called ``name`` (the process's stderr file, or this process's log)."""
    if srv.proc is None:
        found = events.events
    else:
        found = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [e for e in found if e.get("event") == name]


def test_operator_lifts_a_bar_with_a_reason(world: World, server: Server, tmp_path: Path) -> None:
    """C11.3.c: a malicious upload bars the vendor; only the operator (bearer token) lifts the bar,
    with a printable reason that is logged and kept in the bar history (HTTP and CLI); the vendor's
    honest uploads then go through, the bar does not come back as the ledger moves, and an image
    the bar withdrew can be uploaded again."""
    events = _Events()
    logging.getLogger("fwledger.server").addHandler(events)
    try:
        _lift_a_bar(world, server, tmp_path, events)
    finally:
        logging.getLogger("fwledger.server").removeHandler(events)


def _lift_a_bar(world: World, server: Server, tmp_path: Path, events: _Events) -> None:
    hh, header, body = published(world, server, tmp_path, "1.0.0")
    evil_head, evil_payload = _split(_bundle_bytes(world, tmp_path, "1.1.0")[0])
    bad = upload(server, world.chain.vendor, evil_head + evil_payload[:-1] + bytes([evil_payload[-1] ^ 1]))
    assert (bad.status_code, code_of(bad)) == (422, "hash_mismatch")
    server.wait_barred("acme")
    assert server.image_state(digest_of(world, header)) == "withdrawn"

    path = "/v1/admin/vendors/acme/unbar"
    reason = "build pipeline fault, fixed in their CI (ticket OPS-42)"
    for headers in ({}, {"Authorization": "Bearer " + "x" * 40}):
        resp = requests.post(server.url + path, json={"reason": reason}, headers=headers, timeout=10)
        assert (resp.status_code, code_of(resp)) == (401, "unauthorized"), resp.text
    for bad_body in ({}, {"reason": ""}, {"reason": "   "}, {"reason": "x" * 257}, {"reason": "ok\x1b[31m"},
                     {"reason": "line\nbreak"}, {"reason": 42}, {"reason": "ok", "extra": 1}):
        resp = server.admin("POST", path, bad_body)
        assert (resp.status_code, code_of(resp)) == (422, "invalid_request"), (bad_body, resp.text)
    assert server.barred() == {"acme"}
    refused = server.admin("POST", "/v1/admin/vendors/globex/unbar", {"reason": reason})
    assert (refused.status_code, code_of(refused)) == (409, "not_barred")

    # the CLI: a wrong token is refused, the operator's lifts the bar
    cli_args = ["server", "unbar", "acme", "--reason", reason, "--server", server.url, "--json"]
    wrong = CliRunner().invoke(cli, [*cli_args, "--token", "y" * 40])
    assert wrong.exit_code == 1 and "401 unauthorized" in wrong.output, wrong.output
    assert server.barred() == {"acme"}
    res = CliRunner().invoke(cli, [*cli_args, "--token", server.token])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["vendor"] == "acme" and out["reason"] == reason
    assert "malicious upload (hash_mismatch)" in out["lifted"]["reason"]
    assert server.barred() == set()
    again = server.admin("POST", path, {"reason": reason})
    assert (again.status_code, code_of(again)) == (409, "not_barred")

    history = server.admin("GET", "/v1/admin/bars?vendor=acme").json()
    assert [(h["action"], h["reason"] == reason) for h in history] == [("barred", False), ("lifted", True)]
    assert server.rows("SELECT action, reason FROM bar_history WHERE action = 'lifted'") == [("lifted", reason)]
    assert requests.get(server.url + "/v1/admin/bars", timeout=10).status_code == 401
    logged = _logged(server, events, tmp_path / "server.log", "vendor_unbarred")
    assert [(e["vendor"], e["reason"]) for e in logged] == [("acme", reason)], logged

    # honest uploads go through; the ledger moves (reconciles) and the bar does not come back
    fix_hh, _, fix_body = published(world, server, tmp_path, "1.1.0")
    wait_ledger(server, world.chain.w3.eth.block_number)
    assert server.barred() == set()
    device = new_device()
    register(server, device, "dev-lift").raise_for_status()
    assert fetch(server, device, f"/v1/images/{fix_hh}").content == _split(fix_body)[1]
    # the good image the bar withdrew comes back when uploaded again (same digest, published)
    _refused_download(server, device, hh, 410, "revoked")
    back = upload(server, world.chain.vendor, body)
    assert (back.status_code, back.json()["state"]) == (201, "published"), back.text
    assert fetch(server, device, f"/v1/images/{hh}").content == _split(body)[1]
    assert server.barred() == set()


def test_image_withdrawn_before_publication_is_revoked_by_header_hash(world: World, server: Server,
                                                                      tmp_path: Path) -> None:
    """An upload withdrawn while still unpublished (never stored under a header hash) is, once its
    record reaches the ledger, refused by that header hash with 410 ``revoked``, not 404."""
    body, header = _bundle_bytes(world, tmp_path)
    assert upload(server, world.chain.vendor, body).json()["state"] == "unpublished"
    r = server.admin("POST", "/v1/admin/known-bad", {"file_hash": "0x" + header.record.data.file_hash.hex(),
                                                     "reason": "ships a backdoor"})
    assert r.status_code == 201, r.text
    assert server.image_state(digest_of(world, header)) == "withdrawn"
    hh = "0x" + world.publish_bundle(header).hex()
    wait_ledger(server, world.chain.w3.eth.block_number)
    device = new_device()
    register(server, device, "dev-w").raise_for_status()
    err = _refused_download(server, device, hh, 410, "revoked")
    assert "withdrawn" in err["message"]
    _refused_download(server, device, "0x" + "cd" * 32, 404, "unknown_image")


# ----------------------------------------------------------------------------- versions (T9.b)


class _Tracker(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]
    answer: tuple[int, bytes] = (204, b"")
    key = Account.from_key(b"\x7a" * 32)

    def do_GET(self) -> None:  # GET /v1/identity: the audience the server names in its notification
        body = json.dumps({"address": self.key.address}).encode()
        self.send_response(200 if self.path == IDENTITY_PATH else 404)
        for k, v in sign_response(self.key, 200, self.path, body, dict(self.headers.items())).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        signer = verify_request(dict(self.headers), "POST", self.path, hashlib.sha256(body).hexdigest(),
                                audience=(self.key.address,))
        type(self).received.append(json.loads(body) | {"_signer": signer.address})
        status, answer = type(self).answer
        self.send_response(status)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def tracker() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A notification endpoint on loopback collecting what it is sent."""
    handler = type("Tracker", (_Tracker,), {"received": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/notify", handler.received
    httpd.shutdown()
    httpd.server_close()


def test_new_release_notifies_trackers_of_outdated_devices(world: World, make_server: Callable[..., Server],
                                                           tracker: tuple[str, list[dict[str, Any]]],
                                                           tmp_path: Path) -> None:
    """C11.3.e/g, T9.b: when a newer release of a line is published, the trackers get an update
    request signed by the server's key (the tracker's /v1/triggers shape); the server's log keeps
    the devices that downloaded an older version of that line."""
    url, received = tracker
    srv = make_server(tracker_notify_urls=(url,))
    hh1, _, _ = published(world, srv, tmp_path, "1.0.0")
    old, fresh = new_device(), new_device()
    register(srv, old, "dev-old").raise_for_status()
    register(srv, fresh, "dev-fresh").raise_for_status()
    assert fetch(srv, old, f"/v1/images/{hh1}").status_code == 200
    assert fetch(srv, old, f"/v1/images/{hh1}/header").status_code == 200
    hh2, _, _ = published(world, srv, tmp_path, "1.1.0")
    end = time.monotonic() + WAIT
    while not any(n["header_hash"] == hh2 for n in received):
        assert time.monotonic() < end, f"no notification for {hh2}: {received}"
        time.sleep(0.05)
    note = next(n for n in received if n["header_hash"] == hh2)
    server_address = requests.get(srv.url + "/health", timeout=10).json()["address"]
    assert note["_signer"] == server_address
    assert {k: note[k] for k in ("source", "header_hash", "version")} == {
        "source": "server", "header_hash": hh2, "version": "1.1.0"}
    assert note["link"].startswith("http")
    while not (logged := srv.rows("SELECT url, status FROM notifications WHERE header_hash = ?", (hh2,))):
        assert time.monotonic() < end, "the notification was never logged"  # logged once the POST returned
        time.sleep(0.05)
    assert logged == [(url, "204")]
    detail = srv.rows("SELECT payload FROM notifications WHERE header_hash = ?", (hh2,))
    (named,) = json.loads(detail[0][0])["devices"]  # C11.3.g: the device that took 1.0.0, not the other
    assert (named["device_id"], named["version"]) == ("dev-old", "1.0.0")
    assert note["devices"] == [named]  # named in the signed trigger too
    listed = requests.get(srv.url + "/v1/images", params={"product": "cam-fw"}, timeout=10).json()
    assert [(i["version"], i["ledger"]["head"]) for i in listed] == [("1.0.0", False), ("1.1.0", True)]

    # a tracker that has not indexed the release yet keeps the trigger (202 pending): logged as such
    _Tracker.answer = (202, json.dumps({"accepted": False, "pending": True}).encode())
    try:
        hh3, _, _ = published(world, srv, tmp_path, "1.2.0")
        while not (logged := srv.rows("SELECT url, status FROM notifications WHERE header_hash = ?", (hh3,))):
            assert time.monotonic() < end + WAIT, "the pending notification was never logged"
            time.sleep(0.05)
        assert logged == [(url, "202 pending")]
    finally:
        _Tracker.answer = (204, b"")


# ----------------------------------------------------------------------------- crash safety


def _slow_upload(url: str, account: LocalAccount, body: bytes, sent: threading.Event,
                         stop: threading.Event) -> None:
    """Send ``body`` as a signed upload, 256 KiB at a time, 50 ms apart, until ``stop``."""
    host, port = url.removeprefix("http://").split(":")
    hdrs = sign_request(account, "POST", "/v1/bundles", body, audience=fetch_identity(url))
    hdrs[HDR_CONTENT_SHA256] = hashlib.sha256(body).hexdigest()
    head = "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    try:
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall((f"POST /v1/bundles HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
                          f"Content-Type: application/octet-stream\r\n{head}\r\n").encode())
            for i in range(0, len(body), 256 * 1024):
                sock.sendall(body[i:i + 256 * 1024])
                if i >= 2 << 20:
                    sent.set()
                if stop.wait(0.05):
                    return
    except OSError:
        return  # the server was killed under us: expected


@pytest.mark.devnet
@pytest.mark.parametrize("chain", ["anvil"], indirect=True)
def test_sigkill_mid_upload_leaves_nothing_partial(world: World, make_server: Callable[..., Server],
                                                   tmp_path: Path) -> None:
    """Atomic storage: SIGKILL of the real server process mid-upload, then a restart: no partial image
    is listed or served, temp files are gone, and what was committed before is intact."""
    data = tmp_path / "data"
    srv = make_server(data)
    hh, header, committed = published(world, srv, tmp_path, "1.0.0")
    big, big_header = _bundle_bytes(world, tmp_path, "1.1.0", size=12_000_000)
    sent, stop = threading.Event(), threading.Event()
    sender = threading.Thread(target=_slow_upload, args=(srv.url, world.chain.vendor, big, sent, stop))
    sender.start()
    try:
        assert sent.wait(60), "the slow upload never got going"
        end = time.monotonic() + WAIT
        while not any(p.stat().st_size > 0 for p in (data / "tmp").iterdir()):
            assert time.monotonic() < end, "no temp file grew"
            time.sleep(0.02)
        assert srv.kill is not None
        srv.kill()  # SIGKILL, mid-upload
    finally:
        stop.set()
        sender.join(30)
    assert any((data / "tmp").iterdir()), "the kill should have left a temp file behind"

    again = make_server(data)
    assert list((data / "tmp").iterdir()) == []
    assert sorted(p.name for p in (data / "objects").iterdir()) == [header.record.data.file_hash.hex()]
    listed = requests.get(again.url + "/v1/images", timeout=10).json()
    assert [(i["header_hash"], i["state"]) for i in listed] == [(hh, "published")]
    device = new_device()
    register(again, device, "dev-k").raise_for_status()
    _refused_download(again, device, "0x" + digest_of(world, big_header).hex(), 404, "unknown_image")
    assert fetch(again, device, f"/v1/images/{hh}").content == _split(committed)[1]
    # the upload itself, sent again whole, goes through
    assert upload(again, world.chain.vendor, big).status_code == 201


# ----------------------------------------------------------------------------- bad input


def _raw(url: str, request: bytes) -> tuple[int, bytes]:
    """Send exact bytes (no client-side normalisation of the path); returns (status, body)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


@pytest.mark.parametrize("chain", ["embedded"], indirect=True)
def test_bad_input_to_every_endpoint_is_a_4xx(world: World, server: Server, tmp_path: Path) -> None:
    """Malformed JSON, wrong types, huge bodies, path tricks, junk headers on every endpoint: always a
    4xx with a JSON error, never a 5xx, and nothing stored (the HTTP layer is the same on both backends)."""
    device = new_device()
    register(server, device, "dev-1").raise_for_status()
    token = {"Authorization": f"Bearer {server.token}"}

    def signed_post(path: str, body: bytes, account: LocalAccount = device) -> requests.Response:
        hdrs = sign_request(account, "POST", path, body, audience=fetch_identity(server.url))
        hdrs["Content-Type"] = "application/json"
        return requests.post(server.url + path, data=body, headers=hdrs, timeout=30)

    huge = b'{"device_id": "' + b"x" * 200_000 + b'"}'
    cases: list[tuple[str, Callable[[], requests.Response], int, str]] = [
        ("devices: malformed json", lambda: signed_post("/v1/devices", b'{"device_id": '), 400, "malformed_json"),
        ("devices: wrong types", lambda: signed_post("/v1/devices", b'{"device_id": 5, "hardware": []}'), 422,
         "invalid_request"),
        ("devices: extra field", lambda: signed_post("/v1/devices", json.dumps(
            {"device_id": "a", "hardware": "cam-r1", "admin": True}).encode()), 422, "invalid_request"),
        ("devices: not an object", lambda: signed_post("/v1/devices", b"[1, 2]"), 422, "invalid_request"),
        ("devices: huge", lambda: signed_post("/v1/devices", huge), 413, "too_large"),
        ("devices: unknown hardware", lambda: signed_post("/v1/devices", json.dumps(
            {"device_id": "a", "hardware": "toaster"}).encode()), 422, "unknown_hardware"),
        ("devices: id taken", lambda: signed_post("/v1/devices", json.dumps(
            {"device_id": "dev-1", "hardware": "cam-r1"}).encode(), new_device()), 409, "device_id_taken"),
        ("devices: bad location", lambda: signed_post("/v1/devices", json.dumps(
            {"device_id": "b", "hardware": "cam-r1", "location": "../etc"}).encode()), 422, "invalid_request"),
        ("devices: unsigned", lambda: requests.post(server.url + "/v1/devices", json={"device_id": "c",
                                                                                     "hardware": "cam-r1"}),
         401, "unsigned"),
        ("devices: junk signature", lambda: requests.post(
            server.url + "/v1/devices", json={"device_id": "c", "hardware": "cam-r1"},
            headers={**sign_request(device, "POST", "/v1/devices", b"{}", audience=fetch_identity(server.url)),
                     "X-Fwledger-Signature": "0xzz"}),
         401, "bad_signature_format"),
        ("bundles: empty", lambda: upload(server, world.chain.vendor, b""), 422, "bad_bundle"),
        ("bundles: wrong method", lambda: requests.get(server.url + "/v1/bundles"), 405, "method_not_allowed"),
        ("images: bad hash", lambda: fetch(server, device, "/v1/images/0xZZ"), 422, "invalid_request"),
        ("images: bad state", lambda: requests.get(server.url + "/v1/images?state=lost"), 422, "invalid_request"),
        ("images: long product", lambda: requests.get(server.url + "/v1/images", params={"product": "p" * 500}),
         422, "invalid_request"),
        ("images: junk range", lambda: fetch(server, device, "/v1/images/0x" + "00" * 32,
                                             headers={"Range": "lines=1-2"}), 404, "unknown_image"),
        ("downloads: no token", lambda: requests.get(server.url + "/v1/downloads"), 401, "unauthorized"),
        ("downloads: wrong token", lambda: requests.get(server.url + "/v1/downloads",
                                                        headers={"Authorization": "Bearer nope"}), 401, "unauthorized"),
        ("downloads: bad limit", lambda: requests.get(server.url + "/v1/downloads?limit=-1", headers=token), 422,
         "invalid_request"),
        ("devices list: no token", lambda: requests.get(server.url + "/v1/devices"), 401, "unauthorized"),
        ("rules: malformed", lambda: requests.post(server.url + "/v1/admin/location-rules", data=b"{rules",
                                                   headers={**token, "Content-Type": "application/json"}),
         400, "malformed_json"),
        ("rules: wrong types", lambda: requests.post(server.url + "/v1/admin/location-rules",
                                                     json={"rules": [{"action": 1}]}, headers=token),
         422, "invalid_request"),
        ("rules: bad cidr", lambda: requests.post(server.url + "/v1/admin/location-rules",
                                                  json={"rules": [{"action": "deny", "cidr": "10.0.0.0/99"}]},
                                                  headers=token), 422, "invalid_request"),
        ("rules: huge", lambda: requests.post(server.url + "/v1/admin/location-rules",
                                              json={"rules": [{"action": "deny", "region": "x" * 60}] * 2000},
                                              headers=token), 413, "too_large"),
        ("rules: no token", lambda: requests.post(server.url + "/v1/admin/location-rules", json={"rules": []}),
         401, "unauthorized"),
        ("known-bad: bad hash", lambda: requests.post(server.url + "/v1/admin/known-bad",
                                                      json={"file_hash": "0x12", "reason": "x"}, headers=token),
         422, "invalid_request"),
        ("region: unknown device", lambda: requests.post(server.url + "/v1/admin/device-region",
                                                         json={"device": "nobody", "region": "eu"}, headers=token),
         404, "unknown_device"),
        ("unknown path", lambda: requests.get(server.url + "/v2/anything"), 404, "not_found"),
    ]
    before = server.snapshot()
    for name, call, status, code in cases:
        resp = call()
        assert (resp.status_code, resp.json()["error"]["code"]) == (status, code), f"{name}: {resp.text}"
    # path tricks, sent byte for byte
    for path in (b"/v1/images/..%2F..%2Fserver.sqlite", b"/v1/images/../../etc/passwd", b"/v1/images/%00",
                 b"/v1/images/0x" + b"00" * 32 + b"/..%2f..%2fobjects", b"/../../../etc/passwd",
                 b"/v1/images/" + b"%2e%2e%2f" * 20, b"/v1/images/0x" + b"ab" * 32 + b"%00.bin"):
        status, body = _raw(server.url, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert 400 <= status < 500 and json.loads(body)["error"]["code"] in ("not_found", "invalid_request",
                                                                            "unsigned"), (path, status, body)
    status, _ = _raw(server.url, b"GARBAGE\r\n\r\n")
    assert 400 <= status < 500
    intent = {**sign_request(world.chain.vendor, "POST", "/v1/bundles", b"x", audience=fetch_identity(server.url)),
              HDR_CONTENT_SHA256: hashlib.sha256(b"x").hexdigest()}
    signed = "".join(f"{k}: {v}\r\n" for k, v in intent.items()).encode()
    for length, expected in ((b"abc", 400), (str(1 << 40).encode(), 413)):  # malformed, and declared too large
        status, body = _raw(server.url, b"POST /v1/bundles HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + signed
                            + b"Content-Length: " + length + b"\r\n\r\nx")
        assert status == expected, body
    after = server.snapshot()
    assert (after["images"], after["objects"], after["tmp"], after["served"]) == \
        (before["images"], before["objects"], before["tmp"], before["served"])
    assert server.rows("SELECT COUNT(*) FROM devices")[0][0] == 1


# ----------------------------------------------------------------------------- OpenAPI fuzzing



class _SignEverything(requests.auth.AuthBase):
    """Signs every fuzzed request (device key, the vendor's for uploads) and adds the operator token,
    so generated inputs reach the handlers' logic instead of stopping at authentication."""

    def __init__(self, device: LocalAccount, vendor: LocalAccount, token: str, audience: str) -> None:
        self.device, self.vendor, self.token, self.audience = device, vendor, token, audience

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        body = r.body if isinstance(r.body, bytes) else (r.body or "").encode() if isinstance(r.body, str) else b""
        path = r.path_url
        key = self.vendor if path.startswith("/v1/bundles") else self.device
        r.headers.update(sign_request(key, str(r.method), path, body, audience=self.audience))
        r.headers[HDR_CONTENT_SHA256] = hashlib.sha256(body).hexdigest()
        r.headers["Authorization"] = f"Bearer {self.token}"
        return r


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, requests.Session]]:
    """A server on its own embedded chain with a published image and a registered device."""
    from ledger_node.providers import connect, dev_accounts

    w3 = connect("embedded")
    chain = Chain("embedded", w3, dev_accounts(w3, 4), "embedded")
    w = LedgerWorld.create(chain, hardware={"cam-r1": 1}, vendors={"acme": chain.vendor})
    tmp = tmp_path_factory.mktemp("fuzz")
    srv = start_thread(w, tmp / "data")
    try:
        published(w, srv, tmp)
        device = new_device()
        register(srv, device, "fuzz-dev").raise_for_status()
        session = requests.Session()
        session.auth = _SignEverything(device, chain.vendor, srv.token, fetch_identity(srv.url))
        yield srv.url, session
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def api_schema(fuzz_target: tuple[str, requests.Session]) -> Any:
    return schemathesis.openapi.from_url(fuzz_target[0] + "/openapi.json")


fuzz_schema = schemathesis.pytest.from_fixture("api_schema")


@fuzz_schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_openapi_fuzz_never_a_server_error(case: Any, fuzz_target: tuple[str, requests.Session]) -> None:
    """Every endpoint of /openapi.json fuzzed (40 examples each, signed requests): never a 5xx, and every
    status, content type and body is one the description documents."""
    resp = case.call(session=fuzz_target[1])
    case.validate_response(resp, checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                         response_schema_conformance])


# ----------------------------------------------------------------------------- the command line


@pytest.mark.devnet
@pytest.mark.parametrize("chain", ["anvil"], indirect=True)
def test_server_run_refusals_are_one_line(world: World, tmp_path: Path) -> None:
    """CLI.md: ``fwledger server run`` fails in one ``error:`` line, exit 1 (no registry, port taken)."""
    from click.testing import CliRunner

    from entities.cli import cli

    def run(home: Path, port: int) -> Any:
        return CliRunner().invoke(cli, ["--rpc", world.chain.rpc, "--home", str(home), "server", "run", "--port",
                                        str(port), "--data", str(tmp_path / "data")], catch_exceptions=False)

    res = run(tmp_path / "empty-home", free_port())
    assert res.exit_code == 1 and res.stderr.startswith("error: no registry deployed on chain")
    assert res.stderr.count("\n") == 1
    home = tmp_path / "home"
    save_deployment(home, world.registry.deployment)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = run(home, port)
    assert res.exit_code == 1 and res.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert res.stderr.count("\n") == 1
