"""The author against a real registry (embedded chain and anvil) and a loopback HTTP peer: X.1368 P1.

Build a bundle from ledger data (the classes' X25519 keys, the line's head, the vendor name),
upload it, publish its record; the ledger record then matches the bundle by ``release_digest`` and
by header hash once the chain's publish time is filled in. The firmware server is another issue's
work: :class:`FakeServer` below is a tiny stdlib ``http.server`` on 127.0.0.1 that stands in for it
as a peer for the *transport only* (it checks the request signature with ``verify_request`` and
answers 201 or an error). It is not a mock of fwledger code; the server's own checks are tested
with the server.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account

from entities.author.keys import create_keystore, keystore_path, load_vendor_key
from entities.author.ledger import PreflightError, gather_inputs, preflight
from entities.author.publish import PublishError, UploadError, publish_bundle, upload_bundle
from entities.bundle import (
    BundleHeader,
    build_bundle,
    check_bundle,
    decrypt_payload,
    read_header,
    recover_signer,
    release_digest,
)
from entities.cli import cli
from entities.protocol.http_auth import IDENTITY_PATH, AuthError, sign_response, verify_request
from ledger_node.devnet import AnvilProcess
from ledger_node.errors import ConfigError
from ledger_node.fullnode import FullNode, Index
from ledger_node.providers import connect, mnemonic_keys
from ledger_node.record import ZERO_HASH, Version
from ledger_node.registry import Registry
from tests.conftest import Chain
from tests.world import LedgerWorld

# ------------------------------------------------------------------------------ the stand-in peer


class _Nonces:
    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()
        self.lock = threading.Lock()

    def remember(self, address: str, nonce: str, expires_at: float) -> bool:
        with self.lock:
            if (address, nonce) in self.seen:
                return False
            self.seen.add((address, nonce))
            return True


class FakeServer:
    """Stands in for the firmware server (transport only): ``POST /v1/bundles`` on 127.0.0.1, a free port.

    Checks the signed-request headers with the real ``verify_request`` (401 with its code if they
    fail), then answers as configured: 201 with ``{"digest", "file_hash", "state"}`` (digest and
    file hash read from the uploaded header), or ``(status, code)`` as an error document, or a
    non-JSON body, or nothing until the client gives up. Keeps what it accepted.
    """

    def __init__(self, *, chain_id: int = 0, registry: str = "", answer: Any = "ok", delay: float = 0.0) -> None:
        self.chain_id, self.registry, self.answer, self.delay = chain_id, registry, answer, delay
        self.key = Account.create()
        self.received: list[tuple[str, bytes]] = []  # (signer, body) of every correctly signed request
        self.nonces = _Nonces()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, status: int, obj: Any) -> None:
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # GET /v1/identity: the audience of the signed upload
                body = json.dumps({"address": outer.key.address}).encode()
                headers = sign_response(outer.key, 200, self.path, body, dict(self.headers.items()))
                self.send_response(200 if self.path == IDENTITY_PATH else 404)
                for k, v in {"Content-Type": "application/json", "Content-Length": str(len(body)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                if outer.answer == "early":  # refuse on the headers alone, without reading the body
                    self.close_connection = True
                    self._json(413, {"error": {"code": "too_large", "message": "bundle larger than 1 MiB"}})
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != "/v1/bundles":
                    self._json(404, {"error": {"code": "not_found", "message": self.path}})
                    return
                try:
                    req = verify_request(dict(self.headers.items()), "POST", self.path,
                                         hashlib.sha256(body).hexdigest(), audience=(outer.key.address,),
                                         nonces=outer.nonces)
                except AuthError as exc:
                    self._json(401, {"error": {"code": exc.code, "message": str(exc)}})
                    return
                outer.received.append((req.address, body))
                time.sleep(outer.delay)
                if outer.answer == "ok":
                    header, _ = read_header(io.BytesIO(body))
                    self._json(201, {"digest": "0x" + release_digest(header, outer.chain_id, outer.registry).hex(),
                                     "file_hash": "0x" + header.record.data.file_hash.hex(), "state": "unpublished"})
                elif outer.answer == "not json":
                    raw = b"<html>\x1b[31mInternal\nServer Error</html>"
                    self.send_response(500)
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                else:
                    status, code = outer.answer
                    self._json(status, {"error": {"code": code, "message": f"refused: {code}"}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def free_port_url() -> str:
    """A loopback URL nothing listens on (bound, then released)."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    srv.server_close()
    return url


# ------------------------------------------------------------------------------ ledger fixtures


@dataclasses.dataclass
class World:
    """The author's world: the shared ledger world (``tests/world.py``: vendor acme, hardware classes
    cam-x1 and cam-x2 with real X25519 keys) and a full node indexing it, which the author reads."""

    ledger: LedgerWorld
    node: FullNode

    @property
    def chain(self) -> Chain:
        return self.ledger.chain

    @property
    def admin(self) -> Registry:
        return self.ledger.registry

    @property
    def vendor(self) -> Registry:
        return self.ledger.as_vendor()

    @property
    def class_keys(self) -> dict[str, X25519PrivateKey]:
        return self.ledger.private_keys

    @property
    def dep(self) -> tuple[int, str]:
        return self.admin.deployment.chain_id, self.admin.address

    def server(self, **kw: Any) -> FakeServer:
        return FakeServer(chain_id=self.dep[0], registry=self.dep[1], **kw)

    def inputs(self, version: str = "1.0.0", hardware: tuple[str, ...] = ("cam-x1", "cam-x2")) -> Any:
        self.node.sync_once()
        return gather_inputs(self.vendor, self.node.index, self.chain.vendor.address, vendor_name=None,
                             product="main-fw", version=Version.parse(version), hardware=hardware)

    def build(self, tmp: Path, version: str = "1.0.0", *, data: bytes | None = None,
              hardware: tuple[str, ...] = ("cam-x1", "cam-x2"), account: Any = None) -> tuple[Path, BundleHeader, bytes]:
        inputs = self.inputs(version, hardware)
        data = data if data is not None else os.urandom(150_000)
        img = tmp / f"fw-{version}.bin"
        img.write_bytes(data)
        out = tmp / f"fw-{version}.fwb"
        header = build_bundle(img, out, vendor_name=inputs.vendor_name, product="main-fw",
                              version=Version.parse(version), link=f"http://fw.local/fw-{version}.fwb",
                              hardware=hardware, class_keys=inputs.class_keys, prev_hash=inputs.prev_hash,
                              account=account or self.chain.vendor, chain_id=inputs.chain_id,
                              registry=inputs.registry)
        return out, header, data


@pytest.fixture
def world(chain: Chain, tmp_path: Path) -> Iterator[World]:
    ledger = LedgerWorld.create(chain, vendors={"acme": chain.vendor}, hardware={"cam-x1": 1, "cam-x2": 2})
    index = Index(tmp_path / "index.sqlite")
    try:
        yield World(ledger, FullNode(chain.w3, ledger.registry.deployment, index))
    finally:
        index.close()


def decrypt_file(path: Path, hw: str, key: X25519PrivateKey) -> bytes:
    out = io.BytesIO()
    with open(path, "rb") as f:
        header, _ = read_header(f)
        decrypt_payload(header, f, out, hw_id=hw, class_private_key=key.private_bytes_raw())
    return out.getvalue()


# ------------------------------------------------------------------------------ library level, both backends


def test_build_from_ledger_data_then_publish_the_record(world: World, tmp_path: Path) -> None:
    """P1, R10.f.i, R10.a.iii: the bundle is encrypted to the classes' ledger keys and its signed record
    is the one the chain publishes: same release_digest, same header hash once publish_time is set."""
    inputs = world.inputs()
    assert inputs.vendor_name == "acme" and inputs.prev_hash == ZERO_HASH and inputs.head_version is None
    assert inputs.class_keys == {hw: k.public_key().public_bytes_raw() for hw, k in world.class_keys.items()}
    assert inputs.chain_id == world.chain.w3.eth.chain_id and inputs.registry == world.admin.address

    path, header, data = world.build(tmp_path)
    chain_id, reg = world.dep
    assert check_bundle(path, chain_id=chain_id, registry=reg) == header
    assert recover_signer(header, header.signature, chain_id, reg) == world.chain.vendor.address
    preflight(world.vendor, header.record, world.chain.vendor.address)

    res = world.vendor.publish(header.record)
    world.node.sync_once()
    indexed = world.node.index.release(res.header_hash)
    assert indexed is not None and indexed.head and not indexed.flagged
    ledger = indexed.record
    assert release_digest(ledger, chain_id, reg) == release_digest(header, chain_id, reg)
    assert ledger.data.publish_time > 0
    with_time = dataclasses.replace(header.record, data=dataclasses.replace(
        header.record.data, publish_time=ledger.data.publish_time))
    assert with_time.header_hash == res.header_hash == ledger.header_hash
    # a device holding the ledger record and the bundle's signature proves the provider (R10.a.iii)
    assert recover_signer(ledger, header.signature, chain_id, reg) == world.chain.vendor.address
    for hw, key in world.class_keys.items():
        assert decrypt_file(path, hw, key) == data

    # the next build chains onto the head
    nxt = world.inputs("1.1.0")
    assert nxt.prev_hash == res.header_hash and nxt.head_version == Version(1, 0, 0)
    with pytest.raises(PreflightError, match="not above the head"):
        world.inputs("1.0.0")


def test_publish_uploads_to_every_server_then_publishes(world: World, tmp_path: Path) -> None:
    """P1 / C11.4.c: the exact bundle bytes reach every server, signed by the vendor key, then the
    record is published; the servers' answers match the bundle."""
    path, header, _ = world.build(tmp_path)
    with world.server() as s1, world.server() as s2:
        outcome = publish_bundle(path, [s1.url, s2.url, s1.url], world.vendor, timeout=30)
    raw = path.read_bytes()
    assert s1.received == [(world.chain.vendor.address, raw)] and s2.received == [(world.chain.vendor.address, raw)]
    digest = release_digest(header, *world.dep)
    assert outcome.digest == digest
    out = outcome.to_json()
    assert set(out) == {"header_hash", "tx", "block", "servers"}
    assert [s["url"] for s in out["servers"]] == [s1.url, s2.url]
    assert all(s["state"] == "unpublished" and s["digest"] == "0x" + digest.hex() for s in out["servers"])
    world.node.sync_once()
    head = world.node.index.head("acme", "main-fw")
    assert head is not None and "0x" + head.header_hash.hex() == out["header_hash"]
    assert head.block == out["block"]


def test_a_refused_upload_publishes_nothing(world: World, tmp_path: Path) -> None:
    """P1: the record is published only after every server holds the bundle; a refusal by the second
    server leaves the first with an unpublished upload and the ledger untouched."""
    path, _, _ = world.build(tmp_path)
    with world.server() as good, world.server(answer=(403, "not_a_vendor")) as bad:
        with pytest.raises(UploadError) as exc:
            publish_bundle(path, [good.url, bad.url], world.vendor, timeout=30)
    assert exc.value.code == "not_a_vendor" and exc.value.status == 403 and exc.value.server == bad.url
    assert str(exc.value) == f"upload to {bad.url} refused: HTTP 403 not_a_vendor: refused: not_a_vendor"
    assert len(good.received) == 1 and len(bad.received) == 1
    assert not world.vendor.line_started("acme", "main-fw")


def test_unreachable_and_slow_servers_publish_nothing(world: World, tmp_path: Path) -> None:
    path, _, _ = world.build(tmp_path)
    dead = free_port_url()
    with pytest.raises(UploadError) as exc:
        publish_bundle(path, [dead], world.vendor, timeout=30)
    assert exc.value.code == "unreachable" and dead in str(exc.value)
    with world.server(delay=3.0) as slow:
        with pytest.raises(UploadError) as exc:
            publish_bundle(path, [slow.url], world.vendor, timeout=0.5)
    assert exc.value.code == "timeout" and "\n" not in str(exc.value)
    with world.server(answer="not json") as broken:
        with pytest.raises(UploadError) as exc:
            publish_bundle(path, [broken.url], world.vendor, timeout=30)
    assert exc.value.code == "http_500" and "\x1b" not in str(exc.value) and "\n" not in str(exc.value)
    assert not world.vendor.line_started("acme", "main-fw")


def test_bundles_the_ledger_would_refuse_are_not_uploaded(world: World, tmp_path: Path) -> None:
    """Checked before any upload: signed by another key, a line that moved on, a revoked vendor."""
    chain_id, reg = world.dep
    (tmp_path / "forged").mkdir()
    forged, forged_header, _ = world.build(tmp_path / "forged", account=world.chain.stranger)
    assert recover_signer(forged_header, forged_header.signature, chain_id, reg) == world.chain.stranger.address
    with world.server() as s:
        with pytest.raises(PublishError, match="signed by"):
            publish_bundle(forged, [s.url], world.vendor, timeout=30)
        first, _, _ = world.build(tmp_path, "1.0.0")
        second, _, _ = world.build(tmp_path, "1.1.0")  # also built on the then empty line
        publish_bundle(first, [s.url], world.vendor, timeout=30)
        assert len(s.received) == 1
        with pytest.raises(PreflightError, match="already has releases"):
            publish_bundle(second, [s.url], world.vendor, timeout=30)
        world.admin.revoke_vendor(world.chain.vendor.address)
        with pytest.raises(PreflightError, match="not the active vendor"):
            publish_bundle(second, [s.url], world.vendor, timeout=30)
        assert len(s.received) == 1


def test_upload_signature_is_checked_by_the_peer(world: World, tmp_path: Path) -> None:
    """The request signature covers the body: the peer's verify_request accepts it once; a replay of
    the same headers would be refused (replayed_request)."""
    path, header, _ = world.build(tmp_path)
    with world.server() as s:
        receipt = upload_bundle(s.url, path, world.chain.vendor, timeout=30,
                                expect_digest=release_digest(header, *world.dep),
                                expect_file_hash=header.record.data.file_hash)
        assert receipt.status == 201 and receipt.state == "unpublished"
        with pytest.raises(UploadError) as exc:  # the peer names another digest than ours
            upload_bundle(s.url, path, world.chain.vendor, timeout=30, expect_digest=b"\x00" * 32)
        assert exc.value.code == "bad_answer"
        with pytest.raises(ConfigError, match="bad firmware server URL"):
            upload_bundle("ftp://127.0.0.1/", path, world.chain.vendor)
    assert len(s.nonces.seen) == 2


def test_a_refusal_before_the_body_is_read_still_names_its_code(tmp_path: Path) -> None:
    """A server may refuse on the headers alone (size limit) and close while the client still sends:
    the author still gets the server's code, not a transport error."""
    big = tmp_path / "big.fwb"
    with open(big, "wb") as fh:
        for _ in range(32):
            fh.write(os.urandom(1 << 20))
    with FakeServer(answer="early") as s:
        with pytest.raises(UploadError) as exc:
            upload_bundle(s.url, big, Account.create(), timeout=30)
    assert exc.value.code == "too_large" and exc.value.status == 413


# ------------------------------------------------------------------------------ keys


def test_keystore_is_private_atomic_and_never_overwritten(tmp_path: Path) -> None:
    """C11.4.a: the vendor key is stored encrypted, readable by its owner only, never replaced."""
    path = keystore_path(tmp_path / "home", "acme")
    key = create_keystore(path, "correct horse")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and json.loads(path.read_text())["crypto"]["kdf"] == "scrypt"
    assert load_vendor_key(path, "correct horse").address == key.address
    with pytest.raises(ConfigError, match="wrong passphrase"):
        load_vendor_key(path, "wrong")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        create_keystore(path, "other")
    with pytest.raises(ConfigError, match="empty passphrase"):
        create_keystore(tmp_path / "x.json", "")
    for bad in ("../evil", "", "a/b", ".hidden", "x" * 65):
        with pytest.raises(ConfigError, match="bad key name"):
            keystore_path(tmp_path, bad)
    assert sorted(p.name for p in path.parent.iterdir()) == ["acme.json"]


# ------------------------------------------------------------------------------ the command line on anvil


@pytest.fixture
def env(tmp_path: Path, anvil_node: AnvilProcess) -> dict[str, str]:
    """A fresh home with the devnet's admin key (as tests/integration/test_cli.py does)."""
    home = tmp_path / "home"
    keys = home / "keys"
    keys.mkdir(parents=True)
    (keys / "admin.key").write_text("0x" + mnemonic_keys(1)[0].hex())
    return {"FWLEDGER_HOME": str(home), "FWLEDGER_RPC": anvil_node.url, "FWLEDGER_KEY_FILE": "",
            "FWLEDGER_PASSPHRASE": ""}


def run(env: dict[str, str], *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, input=input, catch_exceptions=False)


def ok_json(env: dict[str, str], *args: str, input: str | None = None) -> Any:
    res = run(env, *args, "--json", input=input)
    assert res.exit_code == 0, res.output + res.stderr
    return json.loads(res.stdout)


def fund(rpc: str, address: str) -> None:
    w3 = connect(rpc)
    payer = Account.from_key(mnemonic_keys(2)[1])
    tx = {"to": address, "value": 10**18, "gas": 21_000, "gasPrice": w3.eth.gas_price,
          "nonce": w3.eth.get_transaction_count(payer.address, "pending"), "chainId": w3.eth.chain_id}
    w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(payer.sign_transaction(tx).raw_transaction))


@pytest.mark.devnet
def test_cli_keygen_build_publish_on_a_devnet(env: dict[str, str], tmp_path: Path) -> None:
    """fwledger author keygen / build / publish (shared/CLI.md) against anvil and a loopback peer."""
    home = Path(env["FWLEDGER_HOME"])
    secret = {**env, "FWLEDGER_PASSPHRASE": "s3cret pass"}
    key = ok_json(secret, "author", "keygen", "--name", "acme")
    keystore = home / "keys" / "acme.json"
    assert key["keystore"] == str(keystore) and key["role"] == "vendor" and key["needs_funds"] is True
    assert any(f"add-vendor --name acme --address {key['address']}" in step for step in key["next"])
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600
    again = run(secret, "author", "keygen", "--name", "acme")
    assert again.exit_code == 1 and again.stderr == f"error: {keystore} already exists: refusing to overwrite a key\n"

    dep = ok_json(env, "chain", "deploy")
    ok_json(env, "admin", "add-vendor", "--name", "acme", "--address", key["address"])
    cls = X25519PrivateKey.generate()
    ok_json(env, "admin", "add-hardware", "--id", "cam-x1", "--revision", "1",
            "--enc-key", cls.public_key().public_bytes_raw().hex())
    fund(env["FWLEDGER_RPC"], key["address"])

    image = tmp_path / "fw.bin"
    data = os.urandom(200_001)
    image.write_bytes(data)
    bundle = tmp_path / "fw.fwb"
    build_args = ["--key-file", str(keystore), "author", "build", str(image), "--product", "main-fw",
                  "--version", "1.0.0", "--hardware", "cam-x1", "--depends", "boot>=1.2.0,<2.0.0",
                  "--link", "http://fw.local/fw.fwb", "-o", str(bundle)]
    # the keystore passphrase from a prompt (stderr), never from the command line
    prompted = run(env, *build_args, "--json", input="s3cret pass\n")
    assert prompted.exit_code == 0, prompted.stderr
    built = json.loads(prompted.stdout)
    assert "Keystore passphrase" in prompted.stderr
    assert built["vendor"] == "acme" and built["version"] == "1.0.0" and built["signer"] == key["address"]
    assert built["prev_hash"] == "0x" + "00" * 32 and built["plaintext_size"] == 200_001
    assert built["chain_id"] == dep["chain_id"] and built["registry"] == dep["address"]
    header = check_bundle(bundle, chain_id=dep["chain_id"], registry=dep["address"])
    assert [str(d) for d in header.record.data.dependencies] == ["boot>=1.2.0,<=1.65535.65535"]
    assert decrypt_file(bundle, "cam-x1", cls) == data

    wrong = tmp_path / "wrong.txt"
    wrong.write_text("not it\n")
    bad = run(env, "--key-file", str(keystore), "author", "publish", str(bundle), "--server", "http://127.0.0.1:9",
              "--passphrase-file", str(wrong))
    assert bad.exit_code == 1 and bad.stderr == f"error: wrong passphrase for {keystore}\n"

    with FakeServer(chain_id=dep["chain_id"], registry=dep["address"], answer=(409, "known_bad")) as refusing:
        res = run(secret, "--key-file", str(keystore), "author", "publish", str(bundle), "--server", refusing.url)
    assert res.exit_code == 1
    assert res.stderr == f"error: upload to {refusing.url} refused: HTTP 409 known_bad: refused: known_bad\n"
    assert ok_json(env, "release", "list") == []

    with FakeServer(chain_id=dep["chain_id"], registry=dep["address"]) as server:
        pub = ok_json(secret, "--key-file", str(keystore), "author", "publish", str(bundle), "--server", server.url)
    assert set(pub) == {"header_hash", "tx", "block", "servers", "proven"} and pub["servers"][0]["url"] == server.url
    assert server.received == [(key["address"], bundle.read_bytes())]
    rows = ok_json(env, "release", "list")
    assert [(r["header_hash"], r["version"], r["head"]) for r in rows] == [(pub["header_hash"], "1.0.0", True)]
    assert rows[0]["file_hash"] == "0x" + header.record.data.file_hash.hex()
    assert rows[0]["merkle_root"] == "0x" + header.record.data.merkle_root.hex()

    # the next build reads the new head as prev_hash; a version not above it is refused before encrypting
    ok_again = ok_json(secret, "--key-file", str(keystore), "author", "build", str(image), "--product", "main-fw",
                       "--version", "1.0.1", "--hardware", "cam-x1", "--link", "x", "-o", str(tmp_path / "2.fwb"))
    assert ok_again["prev_hash"] == pub["header_hash"]
    old = run(secret, "--key-file", str(keystore), "author", "build", str(image), "--product", "main-fw",
              "--version", "1.0.0", "--hardware", "cam-x1", "--link", "x", "-o", str(tmp_path / "3.fwb"))
    assert old.exit_code == 1 and old.stderr == "error: version 1.0.0 is not above the head of acme/main-fw (1.0.0)\n"
    assert not (tmp_path / "3.fwb").exists()


@pytest.mark.devnet
def test_cli_keygen_passphrase_sources(env: dict[str, str], tmp_path: Path) -> None:
    """The passphrase comes from a file, the environment or a confirmed prompt; never a flag."""
    pw = tmp_path / "pw.txt"
    pw.write_text("from a file\nignored\n")
    k1 = ok_json(env, "author", "keygen", "--name", "a", "--passphrase-file", str(pw))
    assert load_vendor_key(Path(k1["keystore"]), "from a file").address == k1["address"]
    prompted = run(env, "author", "keygen", "--name", "b", "--out", str(tmp_path / "b.json"), "--json",
                   input="typed\ntyped\n")
    assert prompted.exit_code == 0, prompted.stderr
    k2 = json.loads(prompted.stdout)
    assert k2["keystore"] == str(tmp_path / "b.json") and "Repeat for confirmation" in prompted.stderr
    assert load_vendor_key(tmp_path / "b.json", "typed").address == k2["address"]
    assert run(env, "author", "keygen", "--name", "c", "--passphrase", "x").exit_code == 2
    assert run(env, "author", "keygen", "--name", "../x").stderr.startswith("error: bad key name")
