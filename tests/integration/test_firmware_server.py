"""The firmware server over real HTTP on loopback, against the embedded chain and an anvil devnet:
the whole flow (build, upload, publish, download, resume with ``Range``), upload refusals, a
replayed upload, a barred vendor, a record rolled back to unpublished, crash safety (SIGKILL
mid-upload) and ``server run``'s refusals.

On the embedded chain the server runs in this process (uvicorn in a thread: the chain cannot
leave the process); on anvil it is the real ``fwledger server run`` process, started with a home
holding the registry's deployment record and stopped (or SIGKILLed) by PID. The author side is
the real one (``entities.bundle.build_bundle``, ``entities.author.publish``). The world, the
server and the clients are :mod:`tests.integration.server_world`'s; downloads refused, revocations
and bars, T9.b notifications and bad input are in ``test_firmware_server_downloads.py``.

Covers P1, P4, R10.a.i-iii, R10.f.i, C11.3.a-c, C11.3.f, C11.4.a-c (requirement IDs of
``../shared/X1368-REQUIREMENTS.md``); each refusal asserts the HTTP status, the error code and
that nothing was stored or served (rows and files counted before and after).
"""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from eth_account.signers.local import LocalAccount

from entities.author.publish import publish_bundle
from entities.bundle import BundleHeader, decrypt_payload
from entities.protocol.http_auth import HDR_CONTENT_SHA256, sign_request
from entities.service_identity import fetch_identity
from ledger_node.devnet import free_port
from ledger_node.registry import save_deployment
from tests.integration.server_world import (  # noqa: F401 (make_server, server, world: fixtures)
    WAIT,
    Server,
    World,
    _bundle_bytes,
    _refused_download,
    _split,
    code_of,
    digest_of,
    fetch,
    make_server,
    new_device,
    payload_of,
    published,
    register,
    resign,
    server,
    upload,
    world,
)

# ----------------------------------------------------------------------------- the whole flow


def test_build_upload_publish_download_byte_identical(world: World, server: Server, tmp_path: Path) -> None:  # noqa: F811
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


def test_resume_with_range_after_a_cut_connection(world: World, server: Server, tmp_path: Path) -> None:  # noqa: F811
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
def test_upload_refused_and_nothing_stored(name: str, world: World, make_server: Callable[..., Server],  # noqa: F811
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


def test_image_whose_record_is_rolled_back_goes_back_to_unpublished(world: World, server: Server,  # noqa: F811
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


def test_replayed_upload_refused(world: World, server: Server, tmp_path: Path) -> None:  # noqa: F811
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


def test_barred_vendor_refused_and_its_images_withdrawn(world: World, server: Server, tmp_path: Path) -> None:  # noqa: F811
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
def test_sigkill_mid_upload_leaves_nothing_partial(world: World, make_server: Callable[..., Server],  # noqa: F811
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


# ----------------------------------------------------------------------------- the command line


@pytest.mark.devnet
@pytest.mark.parametrize("chain", ["anvil"], indirect=True)
def test_server_run_refusals_are_one_line(world: World, tmp_path: Path) -> None:  # noqa: F811
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
