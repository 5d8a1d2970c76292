"""The firmware server's test world, shared by the test modules of the firmware server
(``test_firmware_server.py``, ``test_firmware_server_downloads.py``, ``test_server_views.py``,
``test_server_zerocopy.py``, ``test_server_proofs.py``); not a test module itself.

It provides the ledger world and its fixtures (``World``, ``world``), the server under test
(``Server``; ``start_thread``: the app in this process, uvicorn in a thread, on the embedded
chain, which cannot leave the process; ``start_process``: the real ``fwledger server run``
process, on anvil, started with a home holding the registry's deployment record and stopped or
SIGKILLed by PID; the ``make_server`` and ``server`` fixtures pick one by the chain's backend),
signed clients (``upload``, ``register``, ``fetch``, ``code_of``) and bundle helpers
(``_bundle_bytes``, ``_split``, ``payload_of``, ``digest_of``, ``resign``, ``new_device``,
``published``, ``wait_ledger``, ``_refused_download``). Test modules import the fixtures by name.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount

from entities.bundle import BundleHeader, read_header, release_digest, sign_release
from entities.firmware_server.app import create_app
from entities.firmware_server.config import ServerConfig
from entities.firmware_server.ledger import LedgerView
from entities.firmware_server.runner import ServerThread
from entities.protocol.http_auth import HDR_CONTENT_SHA256, sign_request
from entities.service_identity import fetch_identity
from ledger_node.devnet import free_port
from ledger_node.record import ReleaseRecord
from ledger_node.registry import save_deployment
from tests.conftest import Chain
from tests.helpers import stop_process, wait_healthy
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


def start_process(world: World, home: Path, data: Path, *extra: str, log: Path) -> Server:
    """``fwledger --rpc URL --home H server run`` as a real process on a free loopback port."""
    port = free_port()
    argv = [sys.executable, "-m", "entities.cli", "--rpc", world.chain.rpc, "--home", str(home), "server", "run",
            "--host", "127.0.0.1", "--port", str(port), "--data", str(data), "--poll-interval", "0.1", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "FWLEDGER_KEY_FILE": ""}
    with open(log, "ab") as err:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, log)

    def kill() -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    return Server(url, data, lambda: stop_process(proc), kill, proc)


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


# ----------------------------------------------------------------------------- bundles and published releases


def _bundle_bytes(world: World, tmp: Path, version: str = "1.0.0", **kw: Any) -> tuple[bytes, BundleHeader]:
    path, header, _ = world.bundle(tmp, version, **kw)
    return path.read_bytes(), header


def _split(body: bytes) -> tuple[bytes, bytes]:
    _header, offset = read_header(io.BytesIO(body))
    return body[:offset], body[offset:]

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
