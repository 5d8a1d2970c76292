"""Unit tests of entities.bundle: the bundle format v1 (docs/BUNDLE.md). Pure: no chain, no network.

The author encrypts the image (R10.f.i, C11.4.b) for each hardware class's X25519 key, commits to
the ciphertext in the signed Table II.1 record (R10.a.ii: integrity verifiable by anyone holding the
bytes; R10.a.iii / C11.4.a: the vendor's EIP-712 signature names the provider), and the untrusted
server only ever handles ciphertext (C11.4.c). Each attack below is one small scenario.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import struct
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from eth_account import Account
from eth_utils import keccak, to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from entities.bundle import (
    AAD,
    ALG,
    BUNDLE_MAGIC,
    BUNDLE_VERSION,
    CIPHER_CHUNK,
    MAX_HEADER,
    PLAIN_CHUNK,
    PREFIX_SIZE,
    BundleError,
    BundleFormatError,
    BundleHeader,
    ChunkVerifier,
    DecryptError,
    Encryption,
    PayloadError,
    SignatureError,
    build_bundle,
    check_bundle,
    decrypt_payload,
    payload_size_for,
    read_header,
    recover_signer,
    release_digest,
    sign_release,
    unwrap_content_key,
    verify_payload,
    wrap_content_key,
)
from entities.bundle.format import _BATCH
from ledger_node.errors import ConfigError, RecordError, VerificationError
from ledger_node.merkle import merkle_root
from ledger_node.record import ZERO_HASH, Dependency, ReleaseData, ReleaseRecord, Version

VENDOR = Account.from_key(keccak(b"fwledger test vendor"))
OTHER = Account.from_key(keccak(b"fwledger test other key"))
CHAIN_ID = 31337
REGISTRY = to_checksum_address("0x" + "5f" * 20)
CLASS_KEYS = {hw: X25519PrivateKey.generate() for hw in ("cam-r1", "cam-r2")}
PUBLIC = {hw: k.public_key().public_bytes_raw() for hw, k in CLASS_KEYS.items()}
PRIVATE = {hw: k.private_bytes_raw() for hw, k in CLASS_KEYS.items()}


def image_bytes(size: int, seed: bytes = b"img") -> bytes:
    out, counter = bytearray(), 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest() * 64
        counter += 1
    return bytes(out[:size])


def make_bundle(tmp_path: Path, data: bytes, *, name: str = "b.fwb", hardware: tuple[str, ...] = ("cam-r1", "cam-r2"),
                account: Any = VENDOR, **kw: Any) -> tuple[Path, BundleHeader]:
    img = tmp_path / f"{name}.img"
    img.write_bytes(data)
    out = tmp_path / name
    args: dict[str, Any] = {
        "vendor_name": "acme", "product": "main-fw", "version": Version(1, 2, 3), "link": "http://127.0.0.1/fw.bin",
        "hardware": hardware, "class_keys": PUBLIC, "prev_hash": ZERO_HASH, "account": account,
        "chain_id": CHAIN_ID, "registry": REGISTRY,
    } | kw
    header = build_bundle(img, out, **args)
    return out, header


def split(path: Path) -> tuple[BundleHeader, bytes, bytes]:
    """(header, bytes before the payload, payload)."""
    raw = path.read_bytes()
    header, off = read_header(io.BytesIO(raw))
    return header, raw[:off], raw[off:]


def decrypt(header: BundleHeader, payload: bytes, hw: str = "cam-r1", key: bytes | None = None) -> bytes:
    out = io.BytesIO()
    n = decrypt_payload(header, io.BytesIO(payload), out, hw_id=hw, class_private_key=PRIVATE[hw] if key is None else key)
    assert n == len(out.getvalue())
    return out.getvalue()


def verify(header: BundleHeader, payload: bytes) -> None:
    verify_payload(header, io.BytesIO(payload))


def reheader(obj: dict[str, Any], *, version: int = BUNDLE_VERSION, magic: bytes = BUNDLE_MAGIC) -> bytes:
    body = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return struct.pack(">4sHI", magic, version, len(body)) + body


def parse(raw: bytes) -> BundleHeader:
    return read_header(io.BytesIO(raw))[0]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BundleHeader, bytes, bytes]:
    """A three-and-a-bit-chunk bundle shared by the read-only attack tests: (path, header, image, payload)."""
    tmp = tmp_path_factory.mktemp("small")
    data = image_bytes(3 * PLAIN_CHUNK + 5)
    path, header = make_bundle(tmp, data)
    return path, header, data, split(path)[2]


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("size", [1, 65535, 65536, 65537, 3 * 65536 + 5])
def test_round_trip_is_byte_identical(tmp_path: Path, size: int) -> None:
    """R10.f.i, R10.a.ii: build -> check -> decrypt gives the image back, byte for byte, for every class."""
    data = image_bytes(size)
    path, header = make_bundle(tmp_path, data)
    assert check_bundle(path, chain_id=CHAIN_ID, registry=REGISTRY) == header
    h, before, payload = split(path)
    assert h == header and before == header.to_bytes() and len(before) == header.payload_offset
    assert len(payload) == header.record.data.file_size == payload_size_for(size)
    assert header.encryption.plaintext_size == size and header.encryption.alg == ALG
    for hw in ("cam-r1", "cam-r2"):
        assert decrypt(header, payload, hw) == data
    # the record describes the ciphertext the server stores: size, SHA-256, Merkle root over 65552-byte chunks
    d = header.record.data
    assert d.file_hash == hashlib.sha256(payload).digest()
    assert d.merkle_root == merkle_root(payload[i:i + CIPHER_CHUNK] for i in range(0, len(payload), CIPHER_CHUNK))
    assert d.file_name == "b.fwb.img" and d.publish_time == 0
    assert size < 32 or data[:32] not in payload  # the server holds no plaintext (C11.4.b)


@pytest.mark.parametrize("chunks", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17])
def test_streamed_merkle_root_matches_the_ledger_rule(tmp_path: Path, chunks: int) -> None:
    """Table II.1 Merkle root: the builder's O(log n) root equals ledger_node.merkle's for odd and even trees."""
    path, header = make_bundle(tmp_path, image_bytes(chunks * PLAIN_CHUNK - 3), hardware=("cam-r1",))
    payload = split(path)[2]
    assert header.record.data.merkle_root == merkle_root(
        payload[i:i + CIPHER_CHUNK] for i in range(0, len(payload), CIPHER_CHUNK))


def test_header_bytes_round_trip_and_are_canonical(small: tuple[Path, BundleHeader, bytes, bytes]) -> None:
    """docs/BUNDLE.md layout: magic, u16 version, u32 length, canonical JSON, then the payload."""
    _, header, _, _ = small
    raw = header.to_bytes()
    magic, version, length = struct.unpack(">4sHI", raw[:PREFIX_SIZE])
    assert (magic, version, length) == (b"FWLB", 1, len(raw) - PREFIX_SIZE)
    obj = json.loads(raw[PREFIX_SIZE:])
    assert set(obj) == {"bundle_version", "record", "signature", "encryption"}
    assert raw[PREFIX_SIZE:] == json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    assert BundleHeader.from_json(obj) == header == parse(raw)
    assert [r["hardware"] for r in obj["encryption"]["recipients"]] == ["cam-r1", "cam-r2"]


# ------------------------------------------------------------------------------ hardware classes


def test_each_class_decrypts_only_with_its_own_key(small: tuple[Path, BundleHeader, bytes, bytes]) -> None:
    """R10.f.i, C11.4.b: the content key is wrapped per class; another class's key cannot unwrap it."""
    _, header, data, payload = small
    assert decrypt(header, payload, "cam-r1") == data and decrypt(header, payload, "cam-r2") == data
    with pytest.raises(DecryptError) as exc:
        decrypt(header, payload, "cam-r1", key=PRIVATE["cam-r2"])
    assert exc.value.code == "unwrap_failed"
    with pytest.raises(DecryptError) as exc:
        decrypt(header, payload, "cam-r3", key=PRIVATE["cam-r1"])
    assert exc.value.code == "no_key_for_hardware"
    with pytest.raises(DecryptError) as exc:
        decrypt(header, payload, "cam-r1", key=X25519PrivateKey.generate().private_bytes_raw())
    assert exc.value.code == "unwrap_failed"
    with pytest.raises(DecryptError) as exc:
        decrypt(header, payload, "cam-r1", key=b"short")
    assert exc.value.code == "unwrap_failed"


def test_a_bundle_for_one_class_is_not_for_another(tmp_path: Path) -> None:
    """A release for cam-r1 only carries no key for cam-r2 (P4 starts with the author's choice)."""
    path, header = make_bundle(tmp_path, image_bytes(10), hardware=("cam-r1",))
    with pytest.raises(DecryptError) as exc:
        decrypt(header, split(path)[2], "cam-r2")
    assert exc.value.code == "no_key_for_hardware"


def test_wrap_and_unwrap_are_inverse_and_bound_to_the_class_id() -> None:
    """ECDH + HKDF(info = class id) + AES key wrap: a recipient entry moved to another class id fails."""
    key = os.urandom(32)
    r = wrap_content_key(key, "cam-r1", PUBLIC["cam-r1"])
    assert len(r.ephemeral_public) == 32 and len(r.wrapped_key) == 40
    enc = Encryption(ALG, b"\x00" * 7, 1, (r,))
    assert unwrap_content_key(enc, "cam-r1", PRIVATE["cam-r1"]) == key
    moved = Encryption(ALG, b"\x00" * 7, 1, (dataclasses.replace(r, hardware="cam-r2"),))
    with pytest.raises(DecryptError) as exc:
        unwrap_content_key(moved, "cam-r2", PRIVATE["cam-r1"])
    assert exc.value.code == "unwrap_failed"


# ------------------------------------------------------------------------------ tampered payloads


@pytest.mark.parametrize("where", ["first chunk", "middle chunk", "last chunk", "a tag"])
def test_a_tampered_byte_fails_decryption_and_verification(small: tuple[Path, BundleHeader, bytes, bytes],
                                                            where: str) -> None:
    """R10.a.ii, C11.4.a: one flipped bit anywhere -> chunk_auth_failed on decrypt, hash mismatch on verify.

    Decryption stops at the bad chunk: only the authenticated chunks before it were written.
    """
    _, header, data, payload = small
    index = {"first chunk": 10, "middle chunk": CIPHER_CHUNK + 77, "last chunk": len(payload) - 20,
             "a tag": 2 * CIPHER_CHUNK - 1}[where]
    bad = bytearray(payload)
    bad[index] ^= 0x01
    out = io.BytesIO()
    with pytest.raises(DecryptError) as exc:
        decrypt_payload(header, io.BytesIO(bytes(bad)), out, hw_id="cam-r1", class_private_key=PRIVATE["cam-r1"])
    assert exc.value.code == "chunk_auth_failed"
    good_chunks = index // CIPHER_CHUNK
    assert out.getvalue() == data[: good_chunks * PLAIN_CHUNK]
    with pytest.raises(PayloadError) as vexc:
        verify(header, bytes(bad))
    assert vexc.value.code == "hash_mismatch"


def test_tampered_bundle_file_is_refused_by_check_bundle(tmp_path: Path) -> None:
    """R10.a.ii: check_bundle (what a server runs on upload) refuses a bundle whose payload was changed."""
    path, _ = make_bundle(tmp_path, image_bytes(70_000))
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x80
    path.write_bytes(bytes(raw))
    with pytest.raises(PayloadError) as exc:
        check_bundle(path, chain_id=CHAIN_ID, registry=REGISTRY)
    assert exc.value.code == "hash_mismatch" and isinstance(exc.value, VerificationError)


@pytest.mark.parametrize("cut", [1, 16, CIPHER_CHUNK - 1])
def test_truncated_payload(small: tuple[Path, BundleHeader, bytes, bytes], cut: int) -> None:
    """A payload cut short: truncated on verify and on decrypt."""
    _, header, _, payload = small
    for fn in (verify, decrypt):
        with pytest.raises(PayloadError) as exc:
            fn(header, payload[:-cut])
        assert exc.value.code == "truncated"


def test_extra_trailing_bytes(small: tuple[Path, BundleHeader, bytes, bytes]) -> None:
    """Bytes after the payload are refused (a server must not serve more than was signed)."""
    _, header, _, payload = small
    for fn in (verify, decrypt):
        with pytest.raises(PayloadError) as exc:
            fn(header, payload + b"\x00")
        assert exc.value.code == "trailing_bytes"


def test_swapped_chunks(small: tuple[Path, BundleHeader, bytes, bytes]) -> None:
    """Reordered chunks: the chunk index in the nonce fails them; the hash fails them too."""
    _, header, _, payload = small
    c = [payload[i:i + CIPHER_CHUNK] for i in range(0, len(payload), CIPHER_CHUNK)]
    swapped = b"".join([c[1], c[0], *c[2:]])
    with pytest.raises(DecryptError) as exc:
        decrypt(header, swapped)
    assert exc.value.code == "chunk_auth_failed"
    with pytest.raises(PayloadError) as vexc:
        verify(header, swapped)
    assert vexc.value.code == "hash_mismatch"


def _claim_size(header: BundleHeader, plaintext_size: int) -> BundleHeader:
    """A consistent header claiming another size (as an attacker could write; the signature then fails)."""
    rec = header.record
    rec = dataclasses.replace(rec, data=dataclasses.replace(rec.data, file_size=payload_size_for(plaintext_size)))
    return BundleHeader(rec, header.signature, dataclasses.replace(header.encryption, plaintext_size=plaintext_size))


def test_truncation_at_a_chunk_boundary_is_caught_by_the_last_flag(small: tuple[Path, BundleHeader, bytes, bytes]) -> None:
    """Dropping the last chunk and claiming the payload ends there: the new last chunk was sealed as
    not-last, so it fails authentication even with the record's size adjusted (last-flag stripping)."""
    _, header, _, payload = small
    shorter = _claim_size(header, 3 * PLAIN_CHUNK)
    with pytest.raises(DecryptError) as exc:
        decrypt(shorter, payload[: 3 * CIPHER_CHUNK])
    assert exc.value.code == "chunk_auth_failed" and "chunk 2 of 3" in str(exc.value)
    assert recover_signer(shorter, shorter.signature, CHAIN_ID, REGISTRY) != VENDOR.address


def test_extension_after_the_last_chunk_is_caught_by_the_last_flag(small: tuple[Path, BundleHeader, bytes, bytes]) -> None:
    """Claiming one more chunk after the real last one: the real last chunk, sealed as last, fails as not-last."""
    _, header, _, payload = small
    longer = _claim_size(header, 4 * PLAIN_CHUNK + 5)
    extended = payload[: 3 * CIPHER_CHUNK] + payload[: CIPHER_CHUNK] + payload[3 * CIPHER_CHUNK:]
    with pytest.raises(DecryptError) as exc:
        decrypt(longer, extended)
    assert exc.value.code == "chunk_auth_failed"


def test_a_server_cannot_substitute_its_own_encryption(tmp_path: Path,
                                                       small: tuple[Path, BundleHeader, bytes, bytes]) -> None:
    """C11.4.c: the class keys are public, so an untrusted server can encrypt its own image for a class.

    Kept under the vendor's signed record, its chunks authenticate under its own content key but
    the ciphertext is not the one the record commits to: decrypt ends in hash_mismatch. Swapping
    only the wrapped key makes the first chunk fail authentication.
    """
    _, header, _, payload = small
    evil_path, evil = make_bundle(tmp_path, image_bytes(3 * PLAIN_CHUNK + 5, seed=b"malware"), account=OTHER)
    evil_payload = split(evil_path)[2]
    forged = BundleHeader(header.record, header.signature, evil.encryption)
    assert recover_signer(forged, forged.signature, CHAIN_ID, REGISTRY) == VENDOR.address  # looks genuine
    with pytest.raises(PayloadError) as exc:
        decrypt(forged, evil_payload)
    assert exc.value.code == "hash_mismatch"
    rewrapped = BundleHeader(header.record, header.signature, dataclasses.replace(
        header.encryption, recipients=evil.encryption.recipients))
    with pytest.raises(DecryptError) as dexc:
        decrypt(rewrapped, payload)
    assert dexc.value.code == "chunk_auth_failed"


def test_merkle_mismatch_with_a_correct_file_hash(tmp_path: Path, small: tuple[Path, BundleHeader, bytes, bytes]) -> None:
    """A record whose file hash is right but whose Merkle root is not (a buggy or hostile author tool)."""
    _, header, _, payload = small
    rec = dataclasses.replace(header.record, data=dataclasses.replace(header.record.data, merkle_root=b"\x01" * 32))
    bad = BundleHeader(rec, sign_release(rec, VENDOR, CHAIN_ID, REGISTRY), header.encryption)
    with pytest.raises(PayloadError) as exc:
        verify(bad, payload)
    assert exc.value.code == "merkle_mismatch"


class _Slow(io.BytesIO):
    """A stream (``read``) or sink (``write``) that takes its time: it decides which thread of the
    payload pipeline has time to hash the Merkle leaves (``entities.readahead``'s spare work)."""

    def __init__(self, data: bytes = b"", *, delay: float = 0.002) -> None:
        super().__init__(data)
        self.delay = delay

    def read(self, n: int | None = -1) -> bytes:
        time.sleep(self.delay)
        return super().read(n)

    def write(self, b: Any) -> int:
        time.sleep(self.delay)
        return super().write(b)


@pytest.fixture(scope="module")
def multi_batch(tmp_path_factory: pytest.TempPathFactory) -> tuple[BundleHeader, bytes, bytes]:
    """A bundle of several pipeline batches and a short last chunk: (header, image, payload)."""
    data = image_bytes(3 * _BATCH * PLAIN_CHUNK + 777, seed=b"batches")
    path, header = make_bundle(tmp_path_factory.mktemp("batches"), data)
    return header, data, split(path)[2]


@pytest.mark.parametrize("slow", ["source", "sink"])
def test_the_merkle_leaves_are_checked_whichever_thread_hashed_them(
        multi_batch: tuple[BundleHeader, bytes, bytes], slow: str) -> None:
    """R10.a.ii: a slow source leaves the Merkle leaves to the decrypting thread, a slow sink to the
    reading worker; either way the image comes back whole, and a record whose Merkle root is not the
    payload's (its file hash right) is refused with ``merkle_mismatch`` after the last chunk."""
    header, data, payload = multi_batch
    src = _Slow(payload) if slow == "source" else io.BytesIO(payload)
    out = _Slow() if slow == "sink" else io.BytesIO()
    assert decrypt_payload(header, src, out, hw_id="cam-r1", class_private_key=PRIVATE["cam-r1"]) == len(data)
    assert out.getvalue() == data

    rec = dataclasses.replace(header.record, data=dataclasses.replace(header.record.data, merkle_root=b"\x01" * 32))
    bad = BundleHeader(rec, sign_release(rec, VENDOR, CHAIN_ID, REGISTRY), header.encryption)
    src = _Slow(payload) if slow == "source" else io.BytesIO(payload)
    out = _Slow() if slow == "sink" else io.BytesIO()
    with pytest.raises(PayloadError) as exc:
        decrypt_payload(bad, src, out, hw_id="cam-r1", class_private_key=PRIVATE["cam-r1"])
    assert exc.value.code == "merkle_mismatch"


# ------------------------------------------------------------------------------ ChunkVerifier


def test_chunk_verifier_accepts_the_payload_in_odd_pieces(small: tuple[Path, BundleHeader, bytes, bytes]) -> None:
    """C11.1.a.v: a device verifies as it streams, whatever sizes the network hands it."""
    _, header, _, payload = small
    pattern = [1, 7, CIPHER_CHUNK - 8, CIPHER_CHUNK + 1, 3, 65535, 2 * CIPHER_CHUNK + 13, 1]
    v, pos, i = ChunkVerifier(header.record), 0, 0
    while pos < len(payload):
        n = pattern[i % len(pattern)]
        v.feed(memoryview(payload)[pos:pos + n])
        pos, i = pos + n, i + 1
    assert v.received == len(payload)
    v.finish()


def test_chunk_verifier_refuses_too_many_bytes_at_once(small: tuple[Path, BundleHeader, bytes, bytes]) -> None:
    """More bytes than the signed size fail on the feed that overflows, before any hashing of them."""
    _, header, _, payload = small
    v = ChunkVerifier(header.record)
    v.feed(payload[:-1])
    with pytest.raises(PayloadError) as exc:
        v.feed(b"xy")
    assert exc.value.code == "size_mismatch"
    with pytest.raises(PayloadError):
        v.feed(b"x")  # stays failed


def test_chunk_verifier_short_tampered_and_reused(small: tuple[Path, BundleHeader, bytes, bytes]) -> None:
    _, header, _, payload = small
    v = ChunkVerifier(header.record)
    v.feed(payload[:100])
    with pytest.raises(PayloadError) as exc:
        v.finish()
    assert exc.value.code == "truncated"
    bad = bytearray(payload)
    bad[5] ^= 1
    v = ChunkVerifier(header.record)
    for i in range(0, len(bad), 5000):
        v.feed(bytes(bad[i:i + 5000]))
    with pytest.raises(PayloadError) as exc:
        v.finish()
    assert exc.value.code == "hash_mismatch"
    with pytest.raises(PayloadError) as exc:
        v.feed(b"")
    assert exc.value.code == "size_mismatch"


# ------------------------------------------------------------------------------ damaged headers


def test_wrong_bundle_version(small: tuple[Path, BundleHeader, bytes, bytes]) -> None:
    """A bundle of another format version is refused with its own code, in the prefix or in the JSON."""
    _, header, _, _ = small
    obj = header.to_json()
    with pytest.raises(BundleFormatError) as exc:
        parse(reheader(obj, version=2))
    assert exc.value.code == "unsupported_bundle_version" and "version 2" in str(exc.value)
    with pytest.raises(BundleFormatError) as exc:
        parse(reheader(obj | {"bundle_version": 2}))
    assert exc.value.code == "unsupported_bundle_version"


@pytest.mark.parametrize("raw", [
    b"", b"FWL", b"FWLB\x00\x01\x00\x00", b"ZIP!\x00\x01\x00\x00\x00\x02{}",
    struct.pack(">4sHI", BUNDLE_MAGIC, 1, 0),
    struct.pack(">4sHI", BUNDLE_MAGIC, 1, MAX_HEADER + 1) + b"{" * 64,
    struct.pack(">4sHI", BUNDLE_MAGIC, 1, 0xFFFFFFFF),
    struct.pack(">4sHI", BUNDLE_MAGIC, 1, 100) + b"{}",
    struct.pack(">4sHI", BUNDLE_MAGIC, 1, 2) + b"\xff\xfe",
    struct.pack(">4sHI", BUNDLE_MAGIC, 1, 20000) + b"[" * 20000,
    struct.pack(">4sHI", BUNDLE_MAGIC, 1, 2) + b"[]",
], ids=["empty", "short", "short-prefix", "bad-magic", "zero-length", "oversized", "huge-length", "truncated",
        "not-utf8", "deep-nesting", "not-object"])
def test_damaged_prefix_or_header(raw: bytes) -> None:
    with pytest.raises(BundleFormatError) as exc:
        parse(raw)
    assert exc.value.code == "bad_bundle"


def test_damaged_header_byte(small: tuple[Path, BundleHeader, bytes, bytes]) -> None:
    """Any byte of the header changed: the header no longer parses, no longer matches its hashes, or is
    not canonical. Either way: bad_bundle, never a crash."""
    _, header, _, _ = small
    raw = header.to_bytes()
    for pos in range(PREFIX_SIZE, len(raw), 7):
        bad = bytearray(raw)
        bad[pos] = ord("~") if bad[pos] != ord("~") else ord("!")
        try:
            parsed = parse(bytes(bad))
        except BundleFormatError as exc:
            assert exc.code == "bad_bundle"
            continue
        # a changed byte inside a hex value the parser accepts changes a signed or keyed field
        assert parsed != header


def _edit(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Copy of ``obj`` with ``path`` ('a.b.0.c') set to ``value`` (or removed when value is ...)."""
    out = json.loads(json.dumps(obj))
    keys = path.split(".")
    node = out
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last: Any = int(keys[-1]) if isinstance(node, list) else keys[-1]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return out


@pytest.mark.parametrize(("path", "value"), [
    ("extra", 1), ("signature", ...), ("record", ...), ("encryption", ...), ("bundle_version", ...),
    ("encryption.extra", 1), ("encryption.alg", ...), ("encryption.nonce_prefix", ...),
    ("encryption.recipients.0.extra", "x"), ("encryption.recipients.0.wrapped_key", ...),
    ("record.extra", 1), ("record.file_hash", ...), ("record.header_hash", ...), ("record.line", ...),
    ("record.block_length", ...),
])
def test_header_json_with_extra_or_missing_fields(small: tuple[Path, BundleHeader, bytes, bytes], path: str,
                                                  value: Any) -> None:
    """docs/BUNDLE.md: unknown keys and missing keys are refused (a reader never guesses)."""
    _, header, _, _ = small
    with pytest.raises(BundleFormatError) as exc:
        parse(reheader(_edit(header.to_json(), path, value)))
    assert exc.value.code == "bad_bundle"


@pytest.mark.parametrize(("path", "value"), [
    ("bundle_version", "1"), ("bundle_version", True), ("encryption.plaintext_size", "196613"),
    ("encryption.plaintext_size", 196613.0), ("encryption.plaintext_size", 0), ("encryption.plaintext_size", 5),
    ("encryption.alg", "A128CBC"), ("encryption.nonce_prefix", "00"), ("encryption.recipients", {}),
    ("encryption.recipients.0.ephemeral_public", "AB" * 32), ("encryption.recipients.0.hardware", "cam-r9"),
    ("encryption.recipients.0.hardware", 7), ("signature", "12" * 65), ("signature", "0x1234"),
    ("record.publish_time", 1700000000), ("record.file_size", 5), ("record.block_length", 1),
    ("record.line", "0x" + "00" * 32), ("record.header_hash", "0x" + "00" * 32), ("record.format_version", 2),
    ("record.supported_hardware", ["cam-r2", "cam-r1"]), ("record.supported_hardware", ["cam-r1"]),
    ("record.merkle_root", "0x" + "AB" * 32), ("record", []), ("encryption", "x"),
])
def test_header_json_with_wrong_types_or_inconsistent_values(small: tuple[Path, BundleHeader, bytes, bytes],
                                                             path: str, value: Any) -> None:
    _, header, _, _ = small
    with pytest.raises(BundleFormatError) as exc:
        parse(reheader(_edit(header.to_json(), path, value)))
    assert exc.value.code == "bad_bundle"


def test_header_that_is_not_canonical_json(small: tuple[Path, BundleHeader, bytes, bytes]) -> None:
    _, header, _, _ = small
    body = json.dumps(header.to_json(), sort_keys=True, indent=1).encode()
    with pytest.raises(BundleFormatError) as exc:
        parse(struct.pack(">4sHI", BUNDLE_MAGIC, 1, len(body)) + body)
    assert exc.value.code == "bad_bundle"


# ------------------------------------------------------------------------------ signatures


def test_signature_by_another_key_recovers_the_other_address(tmp_path: Path) -> None:
    """R10.a.iii, C11.4.a: the signature names its signer; a bundle signed by another key is checked as
    intact (check_bundle passes) but recovers to that key, which the caller compares with the vendor's."""
    path, header = make_bundle(tmp_path, image_bytes(1000), account=OTHER)
    assert check_bundle(path, chain_id=CHAIN_ID, registry=REGISTRY) == header
    assert recover_signer(header, header.signature, CHAIN_ID, REGISTRY) == OTHER.address != VENDOR.address


@pytest.mark.parametrize(("field", "value"), [
    ("vendor_name", "acme2"), ("product", "other-fw"), ("version", Version(1, 2, 4)),
    ("merkle_root", b"\x01" * 32), ("file_hash", b"\x02" * 32), ("file_size", 70_000),
    ("file_link", "http://evil.example/fw.bin"), ("file_name", "evil.bin"),
    ("supported_hardware", ("cam-r2", "cam-r1")), ("dependencies", (Dependency("boot"),)),
    ("prev_hash", b"\x03" * 32),
])
def test_a_field_changed_after_signing_changes_the_signer(small: tuple[Path, BundleHeader, bytes, bytes], field: str,
                                                          value: Any) -> None:
    """Every signed field is bound: change one and the signature recovers to some other address."""
    _, header, _, _ = small
    rec = header.record
    rec = dataclasses.replace(rec, prev_hash=value) if field == "prev_hash" else \
        dataclasses.replace(rec, data=dataclasses.replace(rec.data, **{field: value}))
    assert recover_signer(header, header.signature, CHAIN_ID, REGISTRY) == VENDOR.address
    assert recover_signer(rec, header.signature, CHAIN_ID, REGISTRY) != VENDOR.address
    assert release_digest(rec, CHAIN_ID, REGISTRY) != release_digest(header, CHAIN_ID, REGISTRY)


def test_the_signature_is_bound_to_the_chain_and_the_registry(small: tuple[Path, BundleHeader, bytes, bytes]) -> None:
    """EIP-712 domain: the same record signed for one registry does not verify for another (no cross-ledger replay)."""
    _, header, _, _ = small
    assert recover_signer(header, header.signature, CHAIN_ID + 1, REGISTRY) != VENDOR.address
    assert recover_signer(header, header.signature, CHAIN_ID, "0x" + "11" * 20) != VENDOR.address


def test_publish_time_is_not_signed_and_the_digest_is_what_is_signed(
        small: tuple[Path, BundleHeader, bytes, bytes]) -> None:
    """The chain sets the publish time, so a ledger record matches its bundle by release_digest."""
    _, header, _, _ = small
    on_chain = dataclasses.replace(header.record, data=dataclasses.replace(header.record.data, publish_time=1_700_000_000))
    digest = release_digest(header, CHAIN_ID, REGISTRY)
    assert release_digest(on_chain, CHAIN_ID, REGISTRY) == digest and len(digest) == 32
    assert on_chain.header_hash != header.record.header_hash
    assert bytes(Account.unsafe_sign_hash(digest, VENDOR.key).signature) == header.signature
    assert recover_signer(on_chain, header.signature, CHAIN_ID, REGISTRY) == VENDOR.address


def _high_s(sig: bytes) -> bytes:
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    s = n - int.from_bytes(sig[32:64], "big")
    return sig[:32] + s.to_bytes(32, "big") + bytes([55 - sig[64]])


@pytest.mark.parametrize("mangle", [
    lambda s: s[:64], lambda s: s + b"\x00", lambda s: b"\x00" * 65, lambda s: s[:64] + b"\x00",
    lambda s: s[:64] + b"\x01", _high_s, lambda s: b"\xff" * 64 + b"\x1b",
], ids=["short", "long", "zeros", "v0", "v1", "high-s", "s-out-of-range"])
def test_unusable_signatures(small: tuple[Path, BundleHeader, bytes, bytes], mangle: Any) -> None:
    _, header, _, _ = small
    with pytest.raises(SignatureError) as exc:
        recover_signer(header, mangle(header.signature), CHAIN_ID, REGISTRY)
    assert exc.value.code == "bad_signature" and isinstance(exc.value, BundleError)


def test_unusable_signature_in_a_bundle_file(tmp_path: Path, small: tuple[Path, BundleHeader, bytes, bytes]) -> None:
    _, header, _, payload = small
    bad = BundleHeader(header.record, b"\x00" * 65, header.encryption)
    path = tmp_path / "bad.fwb"
    path.write_bytes(bad.to_bytes() + payload)
    with pytest.raises(SignatureError) as exc:
        check_bundle(path, chain_id=CHAIN_ID, registry=REGISTRY)
    assert exc.value.code == "bad_signature"


# ------------------------------------------------------------------------------ building


def test_build_refuses_bad_inputs_before_writing_anything(tmp_path: Path) -> None:
    img = tmp_path / "fw.bin"
    img.write_bytes(b"x" * 100)
    common: dict[str, Any] = {"vendor_name": "acme", "product": "main-fw", "version": Version(1, 0, 0),
                              "link": "http://x/fw", "hardware": ("cam-r1",), "class_keys": PUBLIC,
                              "account": VENDOR, "chain_id": CHAIN_ID, "registry": REGISTRY}
    out = tmp_path / "out.fwb"
    with pytest.raises(RecordError):
        build_bundle(img, out, **common | {"vendor_name": "acmé"})
    with pytest.raises(RecordError):
        build_bundle(img, out, **common | {"hardware": ()})
    with pytest.raises(ConfigError, match="no encryption key for hardware class cam-r9"):
        build_bundle(img, out, **common | {"hardware": ("cam-r9",)})
    with pytest.raises(ConfigError, match="not a usable X25519 key"):
        build_bundle(img, out, **common | {"class_keys": {"cam-r1": b"\x00" * 32}})
    with pytest.raises(ConfigError, match="32-byte X25519"):
        build_bundle(img, out, **common | {"class_keys": {"cam-r1": b"\x01" * 31}})
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(RecordError, match="empty"):
        build_bundle(empty, out, **common)
    with pytest.raises(ConfigError, match="cannot read image"):
        build_bundle(tmp_path / "missing.bin", out, **common)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.bin", "fw.bin"]


def test_a_failed_build_leaves_the_old_bundle_and_no_temporary_file(tmp_path: Path) -> None:
    """Atomic write: a failure after the payload is written (here: signing for a malformed registry
    address) leaves the previous bundle untouched and no partial file."""
    path, header = make_bundle(tmp_path, image_bytes(100_000))
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="bad registry address"):
        make_bundle(tmp_path, image_bytes(100_000, seed=b"v2"), registry="0x1234")
    assert path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_fresh_content_key_and_nonces_per_bundle(tmp_path: Path) -> None:
    """The same image built twice encrypts differently (fresh content key, ephemeral keys, nonce prefix)."""
    data = image_bytes(5000)
    p1, h1 = make_bundle(tmp_path, data, name="a.fwb")
    p2, h2 = make_bundle(tmp_path, data, name="b.fwb", file_name="a.fwb.img")
    assert split(p1)[2] != split(p2)[2] and h1.record.data.file_hash != h2.record.data.file_hash
    assert h1.encryption.nonce_prefix != h2.encryption.nonce_prefix
    assert decrypt(h1, split(p1)[2]) == decrypt(h2, split(p2)[2]) == data
    assert AAD == b"fwledger-bundle-v1"


def test_constant_memory_for_a_64_mib_image(tmp_path: Path) -> None:
    """A device decrypts and verifies as it streams: memory stays flat however large the image."""
    img = tmp_path / "big.img"
    with open(img, "wb") as fh:
        for i in range(64):
            fh.write(hashlib.sha256(i.to_bytes(4, "big")).digest() * (1 << 15))
    out = tmp_path / "big.fwb"
    tracemalloc.start()
    try:
        header = build_bundle(img, out, vendor_name="acme", product="main-fw", version=Version(2, 0, 0),
                              link="http://x/fw", hardware=("cam-r1",), class_keys=PUBLIC, account=VENDOR,
                              chain_id=CHAIN_ID, registry=REGISTRY)
        build_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        plain = tmp_path / "big.out"
        with open(out, "rb") as f, open(plain, "wb") as o:
            read_header(f)
            n = decrypt_payload(header, f, o, hw_id="cam-r1", class_private_key=PRIVATE["cam-r1"])
        decrypt_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 64 << 20
    print(f"tracemalloc peak: build {build_peak} B, decrypt {decrypt_peak} B")
    assert build_peak < 8 << 20 and decrypt_peak < 8 << 20, (build_peak, decrypt_peak)
    h1, h2 = hashlib.sha256(), hashlib.sha256()
    with open(img, "rb") as a, open(plain, "rb") as b:
        for x, y in zip(iter(lambda: a.read(1 << 20), b""), iter(lambda: b.read(1 << 20), b""), strict=True):
            h1.update(x)
            h2.update(y)
    assert h1.digest() == h2.digest()


# ------------------------------------------------------------------------------ fuzzing the header reader


def _paths(obj: Any, prefix: str = "") -> list[str]:
    out = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        p = f"{prefix}{k}"
        out.append(p)
        out.extend(_paths(v, p + "."))
    return out


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
def _fuzz_header() -> BundleHeader:
    rec = ReleaseRecord(ZERO_HASH, ReleaseData(
        merkle_root=b"\x11" * 32, vendor_name="acme", publish_time=0, product="main-fw", version=Version(1, 0, 0),
        file_hash=b"\x22" * 32, file_link="http://x/fw", file_name="fw.bin", file_size=payload_size_for(1),
        supported_hardware=("cam-r1",), dependencies=(Dependency("boot"),)))
    enc = Encryption(ALG, b"\x00" * 7, 1, (wrap_content_key(os.urandom(32), "cam-r1", PUBLIC["cam-r1"]),))
    return BundleHeader(rec, sign_release(rec, VENDOR, CHAIN_ID, REGISTRY), enc)


_FUZZ_HEADER = _fuzz_header()


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_value_anywhere_in_the_header_is_a_format_error_or_a_valid_header(data: st.DataObject) -> None:
    """Whatever an uploader puts in the header JSON, the reader answers BundleFormatError (never another
    exception, never a crash) or a header that re-serializes to the same bytes."""
    obj = _FUZZ_HEADER.to_json()
    path = data.draw(st.sampled_from(_paths(obj)))
    mutated = _edit(obj, path, data.draw(st.just(...) | _JSON))
    try:
        raw = reheader(mutated)
    except ValueError:  # NaN/inf have no canonical JSON text; nothing to send
        return
    try:
        header = parse(raw)
    except BundleFormatError as exc:
        assert exc.code in ("bad_bundle", "unsupported_bundle_version")
        return
    assert header.to_bytes() == raw
