"""The firmware server over real HTTP on loopback, against the embedded chain and an anvil devnet:
downloads refused, revocations and bars (and the operator lifting one), T9.b version
notifications and bad input (every endpoint, OpenAPI fuzzing).

On the embedded chain the server runs in this process (uvicorn in a thread: the chain cannot
leave the process); on anvil it is the real ``fwledger server run`` process, started with a home
holding the registry's deployment record and stopped (or SIGKILLed) by PID. The author side is
the real one (``entities.bundle.build_bundle``, ``entities.author.publish``). The world, the
server and the clients are :mod:`tests.integration.server_world`'s; the whole flow, upload
refusals and crash safety are in ``test_firmware_server.py``.

Covers P4, R10.a.i, C11.3.b-e, C11.3.g-h, C11.4.c, T9.b (requirement IDs of
``../shared/X1368-REQUIREMENTS.md``); each refusal asserts the HTTP status, the error code and
that nothing was stored or served (rows and files counted before and after).
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from click.testing import CliRunner
from eth_account import Account
from eth_account.signers.local import LocalAccount
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from entities.cli import cli
from entities.protocol.http_auth import HDR_CONTENT_SHA256, IDENTITY_PATH, sign_request, sign_response, verify_request
from entities.service_identity import fetch_identity
from ledger_node.record import Version
from tests.conftest import Chain
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
    published,
    register,
    server,
    start_thread,
    upload,
    wait_ledger,
    world,
)
from tests.world import LedgerWorld

# ----------------------------------------------------------------------------- download refusals


def test_unregistered_device_refused(world: World, server: Server, tmp_path: Path) -> None:  # noqa: F811
    """P4, C11.3.b/d: only registered devices get images."""
    hh, _, _ = published(world, server, tmp_path)
    _refused_download(server, new_device(), hh, 403, "unregistered_device")


def test_device_of_another_hardware_class_refused(world: World, server: Server, tmp_path: Path) -> None:  # noqa: F811
    """P4, Appendix II (supported hardware): a cam-r2 device never gets a cam-r1-only image."""
    hh, _, _ = published(world, server, tmp_path, hardware=("cam-r1",))
    device = new_device()
    assert register(server, device, "r2-dev", "cam-r2").status_code == 201
    err = _refused_download(server, device, hh, 403, "hardware_not_supported")
    assert "cam-r1" in err["message"]


def test_ledger_policy_denied(world: World, server: Server, tmp_path: Path) -> None:  # noqa: F811
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


def test_location_denied_names_the_rule(world: World, server: Server, tmp_path: Path) -> None:  # noqa: F811
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


def test_unknown_and_unpublished_images_refused(world: World, server: Server, tmp_path: Path) -> None:  # noqa: F811
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


def test_vendor_revoking_its_own_release_stays_in_good_standing(world: World, server: Server,  # noqa: F811
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


def test_release_revoked_by_the_administration_is_withdrawn_vendor_not_barred(world: World, server: Server,  # noqa: F811
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


def test_vendor_revoked_on_the_ledger_is_barred_for_good(world: World, server: Server, tmp_path: Path) -> None:  # noqa: F811
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


def test_operator_lifts_a_bar_with_a_reason(world: World, server: Server, tmp_path: Path) -> None:  # noqa: F811
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


def _lift_a_bar(world: World, server: Server, tmp_path: Path, events: _Events) -> None:  # noqa: F811
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


def test_image_withdrawn_before_publication_is_revoked_by_header_hash(world: World, server: Server,  # noqa: F811
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


def test_new_release_notifies_trackers_of_outdated_devices(world: World, make_server: Callable[..., Server],  # noqa: F811
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
def test_bad_input_to_every_endpoint_is_a_4xx(world: World, server: Server, tmp_path: Path) -> None:  # noqa: F811
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
