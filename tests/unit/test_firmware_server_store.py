"""The firmware server's storage, upload sink and configuration, on a real temp folder (no chain).

Atomic content-addressed storage (a crash leaves nothing visible; a restart cleans temp files
and orphans, keeps what was committed), the replay window, the streaming upload checks (bundle
split from any piece sizes, trailing bytes vs another size, limits), and settings resolution.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from eth_account import Account

from entities.bundle import BundleHeader, build_bundle, read_header
from entities.firmware_server.config import ServerConfig, load_server_config
from entities.firmware_server.policy import LocationRule, Refusal
from entities.firmware_server.store import DeviceTaken, Store
from entities.firmware_server.upload import UploadSink
from ledger_node.errors import ConfigError
from ledger_node.record import Version

VENDOR = Account.from_key(b"\x01" * 32)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, BundleHeader]:
    tmp = tmp_path_factory.mktemp("b")
    (tmp / "img").write_bytes(os.urandom(150_000))
    pub = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    header = build_bundle(tmp / "img", tmp / "b.fwb", vendor_name="acme", product="p", version=Version(1, 0, 0),
                          link="", hardware=("hw",), class_keys={"hw": pub}, account=VENDOR, chain_id=1,
                          registry="0x" + "11" * 20)
    return (tmp / "b.fwb").read_bytes(), header


def _add(store: Store, header: BundleHeader, payload: bytes, digest: bytes = b"\x01" * 32) -> None:
    fd, tmp = store.new_temp()
    with os.fdopen(fd, "wb") as fh:
        fh.write(payload)
    d = header.record.data
    store.add_image(digest=digest, file_hash=d.file_hash, header_json=header.to_json(), vendor_address=VENDOR.address,
                    vendor_name="acme", product="p", version=d.version, size=d.file_size, temp_payload=tmp,
                    header_hash=None)


def _payload(body: bytes) -> bytes:
    import io

    _h, off = read_header(io.BytesIO(body))
    return body[off:]


# ----------------------------------------------------------------------------- storage


def test_objects_are_content_addressed_and_survive_reopen(tmp_path: Path, bundle: tuple[bytes, BundleHeader]) -> None:
    body, header = bundle
    store = Store(tmp_path)
    _add(store, header, _payload(body))
    obj = store.object_path(header.record.data.file_hash)
    assert hashlib.sha256(obj.read_bytes()).digest() == header.record.data.file_hash
    assert list((tmp_path / "tmp").iterdir()) == []
    store.close()
    again = Store(tmp_path)
    assert again.removed_on_open == {"tmp": 0, "orphans": 0}
    assert [i.state for i in again.images()] == ["unpublished"] and obj.exists()
    assert again.stored_bytes() == header.record.data.file_size


def test_restart_after_a_crash_cleans_temp_files_and_orphans(tmp_path: Path) -> None:
    """A crash mid-upload leaves a temp file; a crash between rename and commit an orphan object:
    neither is ever listed, and both are gone after the next open."""
    store = Store(tmp_path)
    fd, _tmp = store.new_temp()
    os.write(fd, b"partial")
    os.close(fd)
    (tmp_path / "objects" / ("ab" * 32)).write_bytes(b"renamed but never committed")
    assert store.images() == []
    store.close()
    again = Store(tmp_path)
    assert again.removed_on_open == {"tmp": 1, "orphans": 1}
    assert list((tmp_path / "tmp").iterdir()) == [] and list((tmp_path / "objects").iterdir()) == []


def test_withdraw_deletes_the_payload_keeps_the_row(tmp_path: Path, bundle: tuple[bytes, BundleHeader]) -> None:
    body, header = bundle
    store = Store(tmp_path)
    _add(store, header, _payload(body))
    withdrawn = store.bar_vendor("acme", VENDOR.address, "test")
    assert [r.state for r in withdrawn] == ["withdrawn"] and store.is_barred("acme")
    assert not store.object_path(header.record.data.file_hash).exists()
    assert store.images()[0].withdraw_reason == "vendor barred: test"
    assert store.stored_bytes() == 0
    assert store.bar_vendor("acme", None, "again") == []  # idempotent


def test_lifted_bar_history_and_reinstated_image(tmp_path: Path, bundle: tuple[bytes, BundleHeader]) -> None:
    """C11.3.c: a bar and its lift are kept with their reasons; an image withdrawn by the bar can be
    taken back from a fresh upload once lifted, one withdrawn for itself never."""
    body, header = bundle
    store = Store(tmp_path)
    _add(store, header, _payload(body))
    _add(store, header, _payload(body), digest=b"\x02" * 32)
    store.withdraw([b"\x02" * 32], "release revoked on the ledger")
    store.bar_vendor("acme", VENDOR.address, "malicious upload")
    assert store.lift_bar("globex", "why not") is None
    lifted = store.lift_bar("acme", "operator checked their CI")
    assert lifted is not None and lifted["reason"] == "malicious upload" and not store.is_barred("acme")
    assert store.lift_bar("acme", "twice") is None
    assert [(h["action"], h["reason"]) for h in store.bar_history("acme")] == [
        ("barred", "malicious upload"), ("lifted", "operator checked their CI")]
    assert store.bar_history("globex") == []

    def temp() -> Path:
        fd, path = store.new_temp()
        with os.fdopen(fd, "wb") as fh:
            fh.write(_payload(body))
        return path

    kept = temp()
    assert store.reinstate(b"\x02" * 32, kept, None) is None and kept.exists()  # withdrawn for itself
    row = store.reinstate(b"\x01" * 32, temp(), b"\x09" * 32)
    assert row is not None and (row.state, row.header_hash, row.withdraw_reason) == ("published", b"\x09" * 32, None)
    assert store.object_path(header.record.data.file_hash).exists()
    store.bar_vendor("acme", None, "again")
    assert [h["action"] for h in store.bar_history("acme")] == ["barred", "lifted", "barred"]
    assert store.reinstate(b"\x01" * 32, temp(), None) is None  # the vendor is barred again


def test_same_digest_stored_once(tmp_path: Path, bundle: tuple[bytes, BundleHeader]) -> None:
    body, header = bundle
    store = Store(tmp_path)
    _add(store, header, _payload(body))
    _add(store, header, _payload(body))
    assert len(store.images()) == 1 and list((tmp_path / "tmp").iterdir()) == []


def test_one_server_per_data_folder(tmp_path: Path) -> None:
    """A second server on the same folder would delete the first's uploads in flight: refused."""
    first = Store(tmp_path)
    with pytest.raises(ConfigError, match="in use by another firmware server"):
        Store(tmp_path)
    first.close()
    Store(tmp_path).close()


def test_nonce_replay_window(tmp_path: Path) -> None:
    store = Store(tmp_path)
    import time

    assert store.remember("0xa", "n1", time.time() + 300)
    assert not store.remember("0xa", "n1", time.time() + 300)
    assert store.remember("0xb", "n1", time.time() + 300)
    assert store.remember("0xa", "old", time.time() - 10)
    assert store.remember("0xc", "n2", time.time() + 300)  # purges the expired one
    assert store.remember("0xa", "old", time.time() + 300)


def test_devices_rules_known_bad(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.register_device("0xa", "dev-1", "hw", "eu-west")
    with pytest.raises(DeviceTaken):
        store.register_device("0xb", "dev-1", "hw", None)
    store.register_device("0xa", "dev-1", "hw2", None)  # re-registration updates
    assert store.find_device("dev-1") == store.find_device("0XA") == store.device("0xa")
    assert store.device("0xa").hardware == "hw2"  # type: ignore[union-attr]
    store.assign_region("0xa", "cn-north")
    assert store.device("0xa").assigned_region == "cn-north"  # type: ignore[union-attr]
    rules = (LocationRule.parse({"action": "deny", "cidr": "10.0.0.0/8"}), LocationRule("allow", region="eu-*"))
    store.set_rules(rules)
    assert store.rules() == rules
    store.add_known_bad(b"\x01" * 32, "backdoor")
    assert store.known_bad() == frozenset({b"\x01" * 32})


def test_schema_version_checked(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store._q("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    store.close()
    with pytest.raises(ConfigError, match="schema version 99"):
        Store(tmp_path)


# ----------------------------------------------------------------------------- the upload sink


def _sink(tmp_path: Path, max_body: int = 1 << 30, max_payload: int = 1 << 30) -> UploadSink:
    store = Store(tmp_path)
    fd, path = store.new_temp()
    return UploadSink(fd, path, max_body=max_body, max_payload=max_payload)


@pytest.mark.parametrize("piece", [1, 7, 10, 4096, 65552, 1 << 20])
def test_sink_splits_a_bundle_fed_in_any_pieces(tmp_path: Path, bundle: tuple[bytes, BundleHeader],
                                                piece: int) -> None:
    body, header = bundle
    sink = _sink(tmp_path)
    for i in range(0, len(body), piece):
        sink.feed(body[i:i + piece])
    res = sink.finish()
    assert res.error is None and res.header == header
    assert res.body_sha256 == hashlib.sha256(body).hexdigest() and res.body_bytes == len(body)
    assert res.payload_path.read_bytes() == _payload(body) and res.payload_sha256 == header.record.data.file_hash


@pytest.mark.parametrize(("mutate", "code"), [
    (lambda b: b + b"\x00", "trailing_bytes"),
    (lambda b: b[:-1], "truncated"),
    (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "hash_mismatch"),
    (lambda b: b[:12], "bad_bundle"),
    (lambda b: b"", "bad_bundle"),
    (lambda b: b"XXXX" + b[4:], "bad_bundle"),
    (lambda b: b[:4] + b"\x00\x07" + b[6:], "unsupported_bundle_version"),
    (lambda b: b[:6] + b"\xff\xff\xff\xff" + b[10:], "bad_bundle"),
])
def test_sink_records_the_first_bundle_error(tmp_path: Path, bundle: tuple[bytes, BundleHeader], mutate: object,
                                             code: str) -> None:
    body, _ = bundle
    sink = _sink(tmp_path)
    sink.feed(mutate(body))  # type: ignore[operator]
    res = sink.finish()
    assert res.error is not None and res.error.code == code


def test_sink_another_longer_payload_is_a_size_mismatch(tmp_path: Path, bundle: tuple[bytes, BundleHeader]) -> None:
    body, header = bundle
    head_len = len(body) - header.record.data.file_size
    sink = _sink(tmp_path)
    sink.feed(body[:head_len] + os.urandom(header.record.data.file_size + 100))
    assert sink.finish().error.code == "size_mismatch"  # type: ignore[union-attr]


def test_sink_limits(tmp_path: Path, bundle: tuple[bytes, BundleHeader]) -> None:
    body, _ = bundle
    with pytest.raises(Refusal) as err:
        _sink(tmp_path / "a", max_body=1000).feed(body)
    assert err.value.code == "too_large"
    with pytest.raises(Refusal) as err:
        _sink(tmp_path / "b", max_payload=1000).feed(body)
    assert err.value.code == "storage_full"
    sink = _sink(tmp_path / "c")
    sink.feed(body[:100])
    sink.discard()
    assert list((tmp_path / "c" / "tmp").iterdir()) == []


# ----------------------------------------------------------------------------- configuration


def test_config_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """flag > environment > <home>/config.toml > default (STYLE.md configuration)."""
    (tmp_path / "config.toml").write_text('[server]\nmax_upload_bytes = 1000\npoll_interval = 5\n'
                                          'notify = ["http://127.0.0.1:1/a"]\n')
    monkeypatch.delenv("FWLEDGER_CONFIG", raising=False)
    monkeypatch.setenv("FWLEDGER_SERVER_POLL", "2.5")
    cfg = load_server_config(tmp_path, max_upload_bytes=None, max_total_bytes=3000)
    assert (cfg.max_upload_bytes, cfg.poll_interval, cfg.max_total_bytes) == (1000, 2.5, 3000)
    assert cfg.tracker_notify_urls == ("http://127.0.0.1:1/a",) and cfg.data_dir == tmp_path / "server"
    assert load_server_config(tmp_path, tracker_notify_urls=["http://x:1/n", "http://y:2/n"]).tracker_notify_urls \
        == ("http://x:1/n", "http://y:2/n")


@pytest.mark.parametrize("kw", [{"max_upload_bytes": 0}, {"poll_interval": 0}, {"tracker_notify_urls": ["ftp://x"]},
                                {"admin_token": "short"}])
def test_bad_config_refused(tmp_path: Path, kw: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        load_server_config(tmp_path, **kw)


def test_bad_config_value_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FWLEDGER_SERVER_MAX_UPLOAD", "lots")
    with pytest.raises(ConfigError, match="FWLEDGER_SERVER_MAX_UPLOAD"):
        load_server_config(tmp_path)


def test_admin_token_made_once(tmp_path: Path) -> None:
    cfg = ServerConfig(data_dir=tmp_path)
    token = cfg.resolved_admin_token()
    assert len(token) >= 32 and cfg.resolved_admin_token() == token
    assert (tmp_path / "admin.token").stat().st_mode & 0o777 == 0o600
    assert ServerConfig(data_dir=tmp_path, admin_token="t" * 20).resolved_admin_token() == "t" * 20
