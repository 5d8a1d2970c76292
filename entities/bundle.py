"""Author bundles, format v1 (``docs/BUNDLE.md``): signed, encrypted, streamable. Pure over bytes and streams.

A bundle is what an author uploads to firmware servers and what a device downloads (X.1368 P1,
R10.f.i, C11.4)::

    b"FWLB" | version u16 BE (=1) | header length u32 BE (<= 1 MiB) | header (canonical JSON) | payload

The payload is the image encrypted by the author with a fresh content key, AES-256-GCM in 64 KiB
chunks whose nonces carry the chunk index and a last-chunk flag (so truncation, reordering and
extension fail authentication). The content key is wrapped for every supported hardware class to
the class's X25519 key on the ledger (ECDH, HKDF-SHA256, AES key wrap). The Table II.1 record in
the header describes the *payload* (size, SHA-256, Merkle root over its 65552-byte chunks), so the
untrusted server and the device check exactly the bytes they hold without any key; the vendor signs
the record with EIP-712 typed data bound to the registry's chain id and address.

Trust decisions here take only bytes, dataclasses and streams: nothing reaches the network or
the chain. The only files touched are the ones the caller names (:func:`build_bundle`,
:func:`check_bundle`), written atomically (temporary file, fsync, ``os.replace``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ledger_node.codec import abi
from ledger_node.codec.ecdsa import KeyHolder, recover_hash, sign_hash
from ledger_node.codec.ecdsa import SignatureError as _CodecSignatureError
from ledger_node.codec.eip712 import typed_data_digest
from ledger_node.codec.hashing import is_address, keccak, to_checksum_address
from ledger_node.errors import ConfigError, RecordError, VerificationError
from ledger_node.merkle import leaf_hash, node_hash
from ledger_node.record import ZERO_HASH, Dependency, ReleaseData, ReleaseRecord, Version

from .readahead import ReadAhead

__all__ = [
    "AAD",
    "ALG",
    "BUNDLE_MAGIC",
    "BUNDLE_VERSION",
    "CIPHER_CHUNK",
    "MAX_HEADER",
    "PLAIN_CHUNK",
    "PREFIX_SIZE",
    "BundleError",
    "BundleFormatError",
    "BundleHeader",
    "ChunkVerifier",
    "DecryptError",
    "Encryption",
    "PayloadError",
    "Recipient",
    "SignatureError",
    "build_bundle",
    "check_bundle",
    "decrypt_payload",
    "payload_size_for",
    "read_header",
    "recover_signer",
    "release_digest",
    "sign_release",
    "unwrap_content_key",
    "verify_payload",
    "wrap_content_key",
]

BUNDLE_MAGIC = b"FWLB"
BUNDLE_VERSION = 1
PLAIN_CHUNK = 65536
TAG_SIZE = 16
CIPHER_CHUNK = PLAIN_CHUNK + TAG_SIZE
AAD = b"fwledger-bundle-v1"
ALG = "A256GCM-STREAM-64K"
MAX_HEADER = 1 << 20
NONCE_PREFIX_SIZE = 7
KEY_SIZE = 32
WRAPPED_KEY_SIZE = 40
SIGNATURE_SIZE = 65
KEK_INFO = b"fwledger-bundle-v1 kek "
MAX_CHUNKS = 1 << 32  # the chunk index is a u32 in the nonce

_PREFIX = struct.Struct(">4sHI")
PREFIX_SIZE = _PREFIX.size  # 10
_READ = 1 << 20  # bytes read at once when streaming
_BATCH = 4  # sealed chunks read and hashed at once by the payload worker (256 KiB)
_AHEAD = 4  # batches the worker may hold ahead of decryption: memory stays ~1 MiB
_SECP256K1_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0

_HEADER_KEYS = frozenset({"bundle_version", "record", "signature", "encryption"})
_ENCRYPTION_KEYS = frozenset({"alg", "nonce_prefix", "plaintext_size", "recipients"})
_RECIPIENT_KEYS = frozenset({"hardware", "ephemeral_public", "wrapped_key"})


# ----------------------------------------------------------------------------- errors

class BundleError(VerificationError):
    """A bundle failed a check; ``code`` is a stable string (also the firmware server's error code)."""

    codes: frozenset[str] = frozenset()

    def __init__(self, code: str, message: str) -> None:
        if self.codes and code not in self.codes:
            raise ValueError(f"{type(self).__name__} has no code {code!r}")
        self.code = code
        super().__init__(message)


class BundleFormatError(BundleError):
    """Not a bundle, a damaged one, or one of another format version."""

    codes = frozenset({"bad_bundle", "unsupported_bundle_version"})


class SignatureError(BundleError):
    """The vendor signature is unusable (malformed, not recoverable)."""

    codes = frozenset({"bad_signature"})


class PayloadError(BundleError):
    """The payload bytes do not match the signed record (size, SHA-256, Merkle root, extent)."""

    codes = frozenset({"size_mismatch", "hash_mismatch", "merkle_mismatch", "trailing_bytes", "truncated"})


class DecryptError(BundleError):
    """The payload cannot be decrypted with this hardware class's key, or a chunk fails authentication."""

    codes = frozenset({"no_key_for_hardware", "unwrap_failed", "chunk_auth_failed"})


def _bad(message: str) -> BundleFormatError:
    return BundleFormatError("bad_bundle", message)


# ----------------------------------------------------------------------------- sizes

def payload_size_for(plaintext_size: int) -> int:
    """Bytes of ciphertext for ``plaintext_size`` bytes of image: one 16-byte tag per started chunk."""
    chunks = -(-plaintext_size // PLAIN_CHUNK)
    return plaintext_size + TAG_SIZE * chunks


def _chunk_nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


# ----------------------------------------------------------------------------- header dataclasses

def _hex_field(value: Any, name: str, size: int, *, prefix: bool = False) -> bytes:
    """Lowercase hex of exactly ``size`` bytes (with ``0x`` when ``prefix``), as the writer emits it."""
    if not isinstance(value, str) or not re.fullmatch(("0x" if prefix else "") + f"[0-9a-f]{{{2 * size}}}", value):
        raise _bad(f"{name} must be {size} bytes of lowercase hex" + (" with 0x" if prefix else ""))
    return bytes.fromhex(value[2:] if prefix else value)


def _exact_keys(obj: Any, keys: frozenset[str], where: str) -> Mapping[str, Any]:
    if not isinstance(obj, dict):
        raise _bad(f"{where} must be a JSON object")
    missing, extra = keys - obj.keys(), obj.keys() - keys
    if missing:
        raise _bad(f"{where} lacks {', '.join(sorted(missing))}")
    if extra:
        raise _bad(f"{where} has unknown field {', '.join(sorted(str(k) for k in extra))}")
    return obj


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Recipient:
    """The content key wrapped for one hardware class."""

    hardware: str
    ephemeral_public: bytes
    wrapped_key: bytes

    def to_json(self) -> dict[str, Any]:
        return {"hardware": self.hardware, "ephemeral_public": self.ephemeral_public.hex(),
                "wrapped_key": self.wrapped_key.hex()}

    @classmethod
    def from_json(cls, obj: Any) -> Recipient:
        """Raises:
            BundleFormatError: ``bad_bundle`` (missing, unknown or malformed fields).
        """
        o = _exact_keys(obj, _RECIPIENT_KEYS, "recipient")
        if not isinstance(o["hardware"], str):
            raise _bad("recipient hardware must be text")
        return cls(o["hardware"], _hex_field(o["ephemeral_public"], "ephemeral_public", KEY_SIZE),
                   _hex_field(o["wrapped_key"], "wrapped_key", WRAPPED_KEY_SIZE))


@dataclass(frozen=True)
class Encryption:
    """How the payload is encrypted and for whom."""

    alg: str
    nonce_prefix: bytes
    plaintext_size: int
    recipients: tuple[Recipient, ...]

    @property
    def chunk_count(self) -> int:
        return -(-self.plaintext_size // PLAIN_CHUNK)

    @property
    def payload_size(self) -> int:
        return payload_size_for(self.plaintext_size)

    def validate(self) -> None:
        """Raises:
            BundleFormatError: ``bad_bundle`` (unknown algorithm, bad sizes or key lengths).
        """
        if self.alg != ALG:
            raise _bad(f"unsupported encryption {self.alg!r} (this reader knows {ALG})")
        if not isinstance(self.nonce_prefix, bytes) or len(self.nonce_prefix) != NONCE_PREFIX_SIZE:
            raise _bad(f"nonce_prefix must be {NONCE_PREFIX_SIZE} bytes")
        if not _is_int(self.plaintext_size) or self.plaintext_size <= 0:
            raise _bad("plaintext_size must be a positive integer")
        if self.chunk_count > MAX_CHUNKS or self.payload_size >= 1 << 64:
            raise _bad("plaintext_size too large")
        for r in self.recipients:
            if not isinstance(r, Recipient) or len(r.ephemeral_public) != KEY_SIZE \
                    or len(r.wrapped_key) != WRAPPED_KEY_SIZE:
                raise _bad("recipient keys have the wrong length")

    def to_json(self) -> dict[str, Any]:
        return {"alg": self.alg, "nonce_prefix": self.nonce_prefix.hex(), "plaintext_size": self.plaintext_size,
                "recipients": [r.to_json() for r in self.recipients]}

    @classmethod
    def from_json(cls, obj: Any) -> Encryption:
        """Raises:
            BundleFormatError: ``bad_bundle``.
        """
        o = _exact_keys(obj, _ENCRYPTION_KEYS, "encryption")
        if not isinstance(o["alg"], str):
            raise _bad("encryption alg must be text")
        if not _is_int(o["plaintext_size"]):
            raise _bad("plaintext_size must be an integer")
        if not isinstance(o["recipients"], list):
            raise _bad("recipients must be a list")
        enc = cls(o["alg"], _hex_field(o["nonce_prefix"], "nonce_prefix", NONCE_PREFIX_SIZE),
                  o["plaintext_size"], tuple(Recipient.from_json(r) for r in o["recipients"]))
        enc.validate()
        return enc


@dataclass(frozen=True)
class BundleHeader:
    """The bundle header: the Table II.1 record (publish time 0), the vendor signature, the encryption.

    Always consistent (checked on construction): the record's ``file_size`` is the payload size the
    encryption implies, and there is one recipient per supported hardware class, in the record's order.
    """

    record: ReleaseRecord
    signature: bytes
    encryption: Encryption

    def __post_init__(self) -> None:
        if not isinstance(self.record, ReleaseRecord):
            raise _bad("record must be a ReleaseRecord")
        try:
            self.record.validate()
        except RecordError as exc:
            raise _bad(f"bad record: {exc}") from exc
        except (TypeError, ValueError, AttributeError, OverflowError):
            raise _bad("bad record: a field has the wrong type") from None
        if self.record.data.publish_time != 0:
            raise _bad("the record's publish_time must be 0 in a bundle (the chain sets it)")
        if not isinstance(self.signature, bytes) or len(self.signature) != SIGNATURE_SIZE:
            raise _bad(f"signature must be {SIGNATURE_SIZE} bytes")
        self.encryption.validate()
        if self.record.data.file_size != self.encryption.payload_size:
            raise _bad(f"record file_size {self.record.data.file_size} is not the payload size "
                       f"{self.encryption.payload_size} of {self.encryption.plaintext_size} plaintext bytes")
        wrapped_for = tuple(r.hardware for r in self.encryption.recipients)
        if wrapped_for != self.record.data.supported_hardware:
            raise _bad("recipients must be exactly the record's supported hardware classes, in order")

    @property
    def payload_offset(self) -> int:
        """Where the payload starts in the bundle file."""
        return PREFIX_SIZE + len(self.canonical_json())

    def to_json(self) -> dict[str, Any]:
        return {"bundle_version": BUNDLE_VERSION, "record": self.record.to_json(),
                "signature": "0x" + self.signature.hex(), "encryption": self.encryption.to_json()}

    def canonical_json(self) -> bytes:
        """The header exactly as a bundle carries it (sorted keys, no spaces, UTF-8)."""
        return _canonical(self.to_json())

    def to_bytes(self) -> bytes:
        """Magic, format version, header length and header: everything before the payload."""
        body = self.canonical_json()
        return _PREFIX.pack(BUNDLE_MAGIC, BUNDLE_VERSION, len(body)) + body

    @classmethod
    def from_json(cls, obj: Any) -> BundleHeader:
        """Parse a header object strictly: no unknown or missing fields, exact types and forms.

        Raises:
            BundleFormatError: ``unsupported_bundle_version`` or ``bad_bundle``.
        """
        o = _exact_keys(obj, _HEADER_KEYS, "bundle header")
        if not _is_int(o["bundle_version"]):
            raise _bad("bundle_version must be an integer")
        if o["bundle_version"] != BUNDLE_VERSION:
            raise BundleFormatError("unsupported_bundle_version",
                                    f"bundle header version {o['bundle_version']} (this reader knows {BUNDLE_VERSION})")
        if not isinstance(o["record"], dict):
            raise _bad("record must be a JSON object")
        try:
            record = ReleaseRecord.from_json(o["record"])
        except RecordError as exc:
            raise _bad(f"bad record: {exc}") from exc
        except (TypeError, ValueError, AttributeError, OverflowError):
            # ReleaseData.validate() assumes text where JSON may hold lists or objects
            raise _bad("bad record: a field has the wrong type") from None
        expected = record.to_json()
        if set(o["record"]) != set(expected):
            missing, extra = set(expected) - set(o["record"]), set(o["record"]) - set(expected)
            raise _bad("record " + (f"lacks {', '.join(sorted(missing))}" if missing
                                    else f"has unknown field {', '.join(sorted(extra))}"))
        header = cls(record, _hex_field(o["signature"], "signature", SIGNATURE_SIZE, prefix=True),
                     Encryption.from_json(o["encryption"]))
        try:
            given = _canonical(o)
        except UnicodeEncodeError:
            raise _bad("bundle header holds text that is not valid Unicode (a lone surrogate)") from None
        if given != header.canonical_json():
            raise _bad("header fields are not in canonical form (derived record fields or number types differ)")
        return header


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# ----------------------------------------------------------------------------- EIP-712 signature

_DOMAIN_TYPES = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
_RELEASE_TYPES = [
    {"name": "vendorName", "type": "string"},
    {"name": "product", "type": "string"},
    {"name": "version", "type": "uint64"},
    {"name": "prevHash", "type": "bytes32"},
    {"name": "merkleRoot", "type": "bytes32"},
    {"name": "fileHash", "type": "bytes32"},
    {"name": "fileSize", "type": "uint256"},
    {"name": "fileLink", "type": "string"},
    {"name": "fileName", "type": "string"},
    {"name": "hardwareHash", "type": "bytes32"},
    {"name": "dependenciesHash", "type": "bytes32"},
]


def _record_of(header_or_record: BundleHeader | ReleaseRecord) -> ReleaseRecord:
    return header_or_record.record if isinstance(header_or_record, BundleHeader) else header_or_record


def _typed_digest(record: ReleaseRecord, chain_id: int, registry: str) -> bytes:
    if not _is_int(chain_id) or chain_id <= 0:
        raise ConfigError(f"bad chain id {chain_id!r}")
    if not isinstance(registry, str) or not is_address(registry):
        raise ConfigError(f"bad registry address {registry!r}")
    d = record.data
    deps = [(x.product, x.min_version.packed, x.max_version.packed) for x in d.dependencies]
    return typed_data_digest({
        "types": {"EIP712Domain": _DOMAIN_TYPES, "Release": _RELEASE_TYPES},
        "primaryType": "Release",
        "domain": {"name": "fwledger", "version": "1", "chainId": chain_id,
                   "verifyingContract": to_checksum_address(registry)},
        "message": {
            "vendorName": d.vendor_name, "product": d.product, "version": d.version.packed,
            "prevHash": record.prev_hash, "merkleRoot": d.merkle_root, "fileHash": d.file_hash,
            "fileSize": d.file_size, "fileLink": d.file_link, "fileName": d.file_name,
            "hardwareHash": keccak(abi.encode(["string[]"], [list(d.supported_hardware)])),
            "dependenciesHash": keccak(abi.encode(["(string,uint64,uint64)[]"], [deps])),
        },
    })


def release_digest(record: BundleHeader | ReleaseRecord, chain_id: int, registry: str) -> bytes:
    """The EIP-712 digest the vendor signs: every record field except the publish time.

    A ledger record (publish time set by the chain) and the bundle it came from have the same
    digest; servers match uploads to ``Published`` events with it.

    Raises:
        ConfigError: bad chain id or registry address.
        RecordError: the record is invalid.
    """
    record = _record_of(record)
    record.validate()
    return _typed_digest(record, chain_id, registry)


def sign_release(record: BundleHeader | ReleaseRecord, account: KeyHolder, chain_id: int, registry: str) -> bytes:
    """The vendor's 65-byte EIP-712 signature (r, s, v with v in {27, 28}) over the record.

    Raises:
        ConfigError: bad chain id or registry address.
        RecordError: the record is invalid.
    """
    record = _record_of(record)
    record.validate()
    return sign_hash(account, _typed_digest(record, chain_id, registry))


def recover_signer(header_or_record: BundleHeader | ReleaseRecord, signature: bytes, chain_id: int,
                   registry: str) -> str:
    """The checksum address whose key made ``signature`` over the record (compare it with the vendor's).

    Only canonical signatures are accepted: 65 bytes, ``v`` 27 or 28, low ``s``.

    Raises:
        SignatureError: ``bad_signature`` (malformed or unrecoverable).
        ConfigError: bad chain id or registry address.
    """
    record = _record_of(header_or_record)
    if not isinstance(signature, bytes | bytearray) or len(signature) != SIGNATURE_SIZE:
        raise SignatureError("bad_signature", f"signature must be {SIGNATURE_SIZE} bytes")
    s = int.from_bytes(signature[32:64], "big")
    if signature[64] not in (27, 28) or not 0 < s <= _SECP256K1_HALF_N:
        raise SignatureError("bad_signature", "signature is not canonical (v must be 27/28, s in the low half)")
    try:
        record.validate()
    except RecordError as exc:
        raise SignatureError("bad_signature", f"signed record is invalid: {exc}") from exc
    digest = _typed_digest(record, chain_id, registry)
    try:
        return recover_hash(digest, bytes(signature))
    except _CodecSignatureError:
        raise SignatureError("bad_signature", "signature does not recover to any key") from None


# ----------------------------------------------------------------------------- key wrap

def _x25519_public(raw: bytes, what: str) -> X25519PublicKey:
    if not isinstance(raw, bytes) or len(raw) != KEY_SIZE:
        raise ConfigError(f"{what} must be a 32-byte X25519 public key")
    return X25519PublicKey.from_public_bytes(raw)


def _kek(shared: bytes, eph_pub: bytes, class_pub: bytes, hw_id: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=eph_pub + class_pub,
                info=KEK_INFO + hw_id.encode()).derive(shared)


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def wrap_content_key(content_key: bytes, hw_id: str, class_public_key: bytes) -> Recipient:
    """Wrap ``content_key`` for one hardware class (fresh ephemeral X25519, HKDF-SHA256, AES key wrap).

    Raises:
        ConfigError: the class key is not a usable X25519 public key, or the content key is not 32 bytes.
    """
    if not isinstance(content_key, bytes) or len(content_key) != KEY_SIZE:
        raise ConfigError("content key must be 32 bytes")
    class_pub = _x25519_public(class_public_key, f"hardware class {hw_id}'s encryption key")
    eph = X25519PrivateKey.generate()
    eph_pub = _raw_public(eph.public_key())
    try:
        shared = eph.exchange(class_pub)
    except ValueError:
        raise ConfigError(f"hardware class {hw_id}'s encryption key is not a usable X25519 key") from None
    kek = _kek(shared, eph_pub, class_public_key, hw_id)
    return Recipient(hw_id, eph_pub, aes_key_wrap(kek, content_key))


def unwrap_content_key(encryption: Encryption, hw_id: str, class_private_key: bytes) -> bytes:
    """The content key, unwrapped with a hardware class's X25519 private key (32 raw bytes).

    Raises:
        DecryptError: ``no_key_for_hardware`` (the bundle has no recipient for ``hw_id``) or
            ``unwrap_failed`` (wrong key, or a damaged recipient entry).
    """
    entry = next((r for r in encryption.recipients if r.hardware == hw_id), None)
    if entry is None:
        raise DecryptError("no_key_for_hardware", f"the bundle is not encrypted for hardware class {hw_id}")
    if not isinstance(class_private_key, bytes) or len(class_private_key) != KEY_SIZE:
        raise DecryptError("unwrap_failed", "the class private key must be 32 bytes")
    priv = X25519PrivateKey.from_private_bytes(class_private_key)
    try:
        shared = priv.exchange(X25519PublicKey.from_public_bytes(entry.ephemeral_public))
        kek = _kek(shared, entry.ephemeral_public, _raw_public(priv.public_key()), hw_id)
        return aes_key_unwrap(kek, entry.wrapped_key)
    except (InvalidUnwrap, ValueError):
        raise DecryptError("unwrap_failed", f"cannot unwrap the content key for {hw_id} with this key") from None


# ----------------------------------------------------------------------------- payload checks

class _MerkleAccumulator:
    """``ledger_node.merkle`` root built leaf by leaf with O(log n) memory (same tree rule).

    ``pending[level]`` holds a node waiting for its right sibling; at the end a lone node is
    promoted unchanged, or paired as the right child of a pending node one level up.
    """

    def __init__(self) -> None:
        self._pending: list[bytes | None] = []

    def add(self, leaf: bytes) -> None:
        node, level = leaf, 0
        while level < len(self._pending) and self._pending[level] is not None:
            left = self._pending[level]
            assert left is not None
            node = node_hash(left, node)
            self._pending[level] = None
            level += 1
        if level == len(self._pending):
            self._pending.append(node)
        else:
            self._pending[level] = node

    def root(self) -> bytes:
        carry: bytes | None = None
        for node in self._pending:
            if node is not None:
                carry = node if carry is None else node_hash(node, carry)
        if carry is None:
            raise RecordError("an empty payload has no Merkle root")
        return carry


class _PayloadDigest:
    """SHA-256 and Merkle root (65552-byte leaves) over bytes fed in any pieces."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.merkle = _MerkleAccumulator()
        self._buf = bytearray()
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.sha.update(data)
        self.size += len(data)
        view = memoryview(data)
        while view:
            take = min(CIPHER_CHUNK - len(self._buf), len(view))
            if not self._buf and take == CIPHER_CHUNK:
                leaf = hashlib.sha256(b"\x00")  # leaf_hash without copying the chunk
                leaf.update(view[:take])
                self.merkle.add(leaf.digest())
            else:
                self._buf += view[:take]
                if len(self._buf) == CIPHER_CHUNK:
                    self.merkle.add(leaf_hash(bytes(self._buf)))
                    self._buf.clear()
            view = view[take:]

    def finish(self) -> tuple[bytes, bytes]:
        """(sha256, merkle root)."""
        if self._buf:
            self.merkle.add(leaf_hash(bytes(self._buf)))
            self._buf.clear()
        return self.sha.digest(), self.merkle.root()


class ChunkVerifier:
    """Streaming check of payload bytes against a record, in constant memory (what a device runs).

    Feed the payload in pieces of any size with :meth:`feed`, then call :meth:`finish`. Too many
    bytes fail at once; the SHA-256 and the Merkle root are compared at the end.
    """

    def __init__(self, record: ReleaseRecord) -> None:
        self.record = record
        self.expected_size = record.data.file_size
        self._digest = _PayloadDigest()
        self._done = False

    @property
    def received(self) -> int:
        return self._digest.size

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Take the next bytes of the payload.

        Raises:
            PayloadError: ``size_mismatch`` (more bytes than the record's file_size, or fed after finish).
        """
        if self._done:
            raise PayloadError("size_mismatch", "payload bytes fed after the end of the payload")
        if self._digest.size + len(data) > self.expected_size:
            self._done = True
            raise PayloadError("size_mismatch", f"payload longer than the record's file_size {self.expected_size}")
        self._digest.update(data)

    def finish(self) -> None:
        """Check the whole payload.

        Raises:
            PayloadError: ``truncated`` (fewer bytes than file_size), ``hash_mismatch`` or ``merkle_mismatch``.
        """
        if self._done:
            raise PayloadError("size_mismatch", "payload verification already ended")
        self._done = True
        if self._digest.size < self.expected_size:
            raise PayloadError("truncated", f"payload truncated: {self._digest.size} of {self.expected_size} bytes")
        file_hash, root = self._digest.finish()
        if file_hash != self.record.data.file_hash:
            raise PayloadError("hash_mismatch", "payload SHA-256 differs from the record's file hash")
        if root != self.record.data.merkle_root:
            raise PayloadError("merkle_mismatch", "payload Merkle root differs from the record's")


def _read(f: BinaryIO, n: int) -> bytes:
    try:
        return f.read(n)
    except OSError as exc:
        raise ConfigError(f"cannot read the bundle: {exc.strerror or exc}") from exc


def _read_exact(f: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes, looping over short reads; fewer only at the end of the stream."""
    parts, got = [], 0
    while got < n:
        piece = _read(f, n - got)
        if not piece:
            break
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


def read_header(f: BinaryIO) -> tuple[BundleHeader, int]:
    """Read and check the bundle header from the start of ``f`` (reads at most 1 MiB of header).

    Returns:
        The header and the payload's offset from the start of the bundle; ``f`` is left there.

    Raises:
        BundleFormatError: ``bad_bundle`` (bad magic, damaged, oversized or non-canonical header,
            inconsistent fields) or ``unsupported_bundle_version``.
        ConfigError: ``f`` cannot be read.
    """
    prefix = _read_exact(f, PREFIX_SIZE)
    if len(prefix) < PREFIX_SIZE:
        raise _bad("not a fwledger bundle (shorter than its fixed prefix)")
    magic, version, length = _PREFIX.unpack(prefix)
    if magic != BUNDLE_MAGIC:
        raise _bad("not a fwledger bundle (bad magic)")
    if version != BUNDLE_VERSION:
        raise BundleFormatError("unsupported_bundle_version",
                                f"bundle format version {version} (this reader knows {BUNDLE_VERSION})")
    if not 0 < length <= MAX_HEADER:
        raise _bad(f"bundle header length {length} outside 1..{MAX_HEADER} bytes")
    body = _read_exact(f, length)
    if len(body) < length:
        raise _bad("bundle header truncated")
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _bad("bundle header is not valid UTF-8 JSON") from None
    header = BundleHeader.from_json(obj)
    if header.canonical_json() != body:
        raise _bad("bundle header is not canonical JSON")
    return header, PREFIX_SIZE + length


def verify_payload(header: BundleHeader, f: BinaryIO) -> None:
    """Check the payload that follows the header in ``f`` against the signed record.

    Reads exactly ``file_size`` bytes, then one more to refuse trailing bytes.

    Raises:
        PayloadError: ``truncated``, ``hash_mismatch``, ``merkle_mismatch`` or ``trailing_bytes``.
        ConfigError: ``f`` cannot be read.
    """
    verifier = ChunkVerifier(header.record)
    remaining = header.record.data.file_size
    while remaining:
        piece = _read(f, min(_READ, remaining))
        if not piece:
            raise PayloadError("truncated", f"payload truncated: {verifier.received} of "
                                            f"{verifier.expected_size} bytes")
        verifier.feed(piece)
        remaining -= len(piece)
    verifier.finish()
    if _read(f, 1):
        raise PayloadError("trailing_bytes", "bytes after the end of the payload")


def decrypt_payload(header: BundleHeader, f: BinaryIO, out: BinaryIO, *, hw_id: str, class_private_key: bytes,
                    staged: Iterable[bytes] = (), staged_size: int = 0) -> int:
    """Decrypt the payload that follows the header in ``f`` into ``out``, chunk by chunk, in constant memory.

    Every chunk is authenticated (AES-GCM, nonce = prefix, index, last flag) before its plaintext is
    written, so a tampered, reordered, truncated or extended payload stops at the first bad chunk.
    The ciphertext is also checked against the signed record (size, SHA-256, Merkle root); that
    check ends with the last chunk, so ``out`` is a staging area: on any error, discard it (a
    server that re-encrypted its own image under a fresh content key passes chunk authentication
    and is caught here, by the hash).

    A resumed install passes the plaintext it already holds: ``staged`` yields its first
    ``staged_size`` bytes (a whole number of chunks). They are sealed again under the content key:
    the same key, nonce and plaintext give the same sealed chunk, tag included, so the record's
    check covers them exactly as if downloaded, and plaintext that is not this payload's fails
    it (``hash_mismatch``). They are written to ``out`` too; ``f`` skips their sealed bytes (a
    seek, else a read) and only the rest of the payload is read from it.

    Returns:
        The number of plaintext bytes written.

    Raises:
        DecryptError: ``no_key_for_hardware``, ``unwrap_failed`` or ``chunk_auth_failed``.
        PayloadError: ``truncated``, ``trailing_bytes``, ``hash_mismatch`` or ``merkle_mismatch``.
        ConfigError: ``f`` cannot be read, ``out`` cannot be written, or a bad ``staged_size``.
    """
    enc = header.encryption
    aead = AESGCM(unwrap_content_key(enc, hw_id, class_private_key))
    count = enc.chunk_count
    if staged_size < 0 or staged_size % PLAIN_CHUNK or staged_size > enc.plaintext_size:
        raise ConfigError(f"staged plaintext of {staged_size} bytes is not a whole number of this payload's chunks")
    verifier = ChunkVerifier(header.record)
    first = _reseal(enc, aead, staged, staged_size, verifier, out)
    _skip(f, first * CIPHER_CHUNK)
    written, index = staged_size, first
    # a worker reads and hashes the sealed chunks a few batches ahead (hashlib and I/O release the
    # GIL) while this thread decrypts and writes; its errors arrive where a plain loop raises them
    with ReadAhead(_sealed_batches(header, f, verifier, first), depth=_AHEAD, name="payload-read") as batches:
        for batch in batches:
            for sealed in batch:
                last = index == count - 1
                try:
                    plain = aead.decrypt(_chunk_nonce(enc.nonce_prefix, index, last), sealed, AAD)
                except InvalidTag:
                    raise DecryptError("chunk_auth_failed", f"chunk {index} of {count} fails authentication "
                                       "(tampered, reordered, truncated or extended payload)") from None
                _write(out, plain)
                written += len(plain)
                index += 1
    return written


def _write(out: BinaryIO, plain: bytes) -> None:
    try:
        out.write(plain)
    except OSError as exc:
        raise ConfigError(f"cannot write the decrypted image: {exc.strerror or exc}") from exc


def _reseal(enc: Encryption, aead: AESGCM, staged: Iterable[bytes], size: int, verifier: ChunkVerifier,
            out: BinaryIO) -> int:
    """Seal the first ``size`` plaintext bytes from ``staged`` again, feed them to ``verifier``, write
    them to ``out``; the number of chunks they make.

    Raises:
        PayloadError: ``truncated`` (``staged`` ends early), ``size_mismatch`` (beyond the payload).
    """
    count, index, buf = enc.chunk_count, 0, bytearray()
    blocks = iter(staged)
    while index * PLAIN_CHUNK < size:
        while len(buf) < PLAIN_CHUNK and len(buf) + index * PLAIN_CHUNK < size:
            block = next(blocks, b"")
            if not block:
                raise PayloadError("truncated", f"staged plaintext ends before {size} bytes")
            buf += block
        plain = bytes(buf[:PLAIN_CHUNK])
        del buf[:PLAIN_CHUNK]
        verifier.feed(aead.encrypt(_chunk_nonce(enc.nonce_prefix, index, index == count - 1), plain, AAD))
        _write(out, plain)
        index += 1
    return index


def _skip(f: BinaryIO, n: int) -> None:
    """Move ``f`` ``n`` bytes forward: a seek where it can, else reading and dropping them."""
    if not n:
        return
    try:
        seekable = f.seekable()
    except (AttributeError, OSError, ValueError):
        seekable = False
    if seekable:
        try:
            f.seek(n, os.SEEK_CUR)
            return
        except OSError as exc:
            raise ConfigError(f"cannot skip in the bundle: {exc.strerror or exc}") from exc
    while n:
        piece = _read(f, min(_READ, n))
        if not piece:
            return  # the payload check refuses the short payload (``truncated``)
        n -= len(piece)


def _sealed_batches(header: BundleHeader, f: BinaryIO, verifier: ChunkVerifier,
                    start: int = 0) -> Iterator[list[memoryview]]:
    """The sealed chunks ``start``.. of the payload in ``f``, read ``_BATCH`` at a time and checked against the record.

    Every complete chunk is fed to the record's check (size, SHA-256, Merkle root; ``verifier``
    already holds the chunks before ``start``) as it is read; after the last one: no trailing
    byte, then the whole check.

    Raises:
        PayloadError: ``truncated`` (in the chunk that is short), ``trailing_bytes``, then
            ``hash_mismatch`` or ``merkle_mismatch``.
        ConfigError: ``f`` cannot be read.
    """
    enc = header.encryption
    count, size = enc.chunk_count, enc.payload_size
    for first in range(start, count, _BATCH):
        n = min(_BATCH, count - first)
        want = min(size, (first + n) * CIPHER_CHUNK) - first * CIPHER_CHUNK
        data = _read_exact(f, want)
        whole = len(data) if len(data) == want else len(data) - len(data) % CIPHER_CHUNK
        view = memoryview(data)[:whole]
        if whole:
            verifier.feed(view)
            yield [view[i:i + CIPHER_CHUNK] for i in range(0, whole, CIPHER_CHUNK)]
        if len(data) < want:
            raise PayloadError("truncated", f"payload truncated in chunk {first + whole // CIPHER_CHUNK} of {count}")
    if _read(f, 1):
        raise PayloadError("trailing_bytes", "bytes after the end of the payload")
    verifier.finish()


def check_bundle(path: Path, *, chain_id: int, registry: str) -> BundleHeader:
    """Read a bundle file and check it against itself: header, signature recoverable, payload.

    The caller compares ``recover_signer(header, header.signature, ...)`` with the vendor address
    proven on chain; this function only proves the signature is usable for this registry.

    Raises:
        BundleFormatError: damaged header or another format version.
        SignatureError: unusable signature.
        PayloadError: the payload does not match the record.
        ConfigError: the file cannot be read, or bad chain id / registry address.
    """
    try:
        with open(path, "rb") as f:
            header, _ = read_header(f)
            recover_signer(header, header.signature, chain_id, registry)
            verify_payload(header, f)
    except OSError as exc:
        raise ConfigError(f"cannot read bundle {path}: {exc.strerror or exc}") from exc
    return header


# ----------------------------------------------------------------------------- build

def _stat_size(image: Path) -> int:
    try:
        return os.stat(image).st_size
    except OSError as exc:
        raise ConfigError(f"cannot read image {image}: {exc.strerror or exc}") from exc


def build_bundle(image: Path, out: Path, *, vendor_name: str, product: str, version: Version, link: str,
                 hardware: Sequence[str], class_keys: Mapping[str, bytes],
                 dependencies: Sequence[Dependency] = (), prev_hash: bytes = ZERO_HASH,
                 account: KeyHolder, chain_id: int, registry: str, file_name: str | None = None) -> BundleHeader:
    """Encrypt ``image`` for the hardware classes, sign its record, write the bundle to ``out`` atomically.

    One pass over the image with constant memory: the header's length does not depend on the
    hash values, so the payload is written after a placeholder header that is then overwritten
    in place, all in a temporary file renamed onto ``out`` at the end.

    Args:
        class_keys: each supported hardware class's X25519 public key (its ``enc_key`` on the ledger).
        prev_hash: header hash of the product line's head (zero for the first release).
        account: the vendor key that signs the record.
        chain_id, registry: the registry the record is meant for (EIP-712 domain).
        file_name: the record's file name; the image's own name by default.

    Raises:
        RecordError: a record field is invalid (before anything is encrypted) or the image is empty.
        ConfigError: a class key is missing or unusable, the image cannot be read or changed while
            being read, or ``out`` cannot be written.
    """
    image, out = Path(image), Path(out)
    size = _stat_size(image)
    if size <= 0:
        raise RecordError(f"image {image} is empty")
    hardware = tuple(hardware)
    missing = [hw for hw in hardware if hw not in class_keys]
    if missing:
        raise ConfigError(f"no encryption key for hardware class {missing[0]}")
    draft = ReleaseRecord(prev_hash=prev_hash, data=ReleaseData(
        merkle_root=ZERO_HASH, vendor_name=vendor_name, publish_time=0, product=product, version=version,
        file_hash=ZERO_HASH, file_link=link, file_name=image.name if file_name is None else file_name,
        file_size=payload_size_for(size), supported_hardware=hardware, dependencies=tuple(dependencies)))
    draft.validate()
    content_key = AESGCM.generate_key(bit_length=256)
    enc = Encryption(ALG, os.urandom(NONCE_PREFIX_SIZE), size,
                     tuple(wrap_content_key(content_key, hw, class_keys[hw]) for hw in hardware))
    placeholder = BundleHeader(draft, b"\x00" * SIGNATURE_SIZE, enc)
    header_len = len(placeholder.to_bytes())

    aead = AESGCM(content_key)
    digest = _PayloadDigest()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as dst, open(image, "rb") as src:
            dst.write(placeholder.to_bytes())
            count = enc.chunk_count
            for index in range(count):
                last = index == count - 1
                want = size - index * PLAIN_CHUNK if last else PLAIN_CHUNK
                plain = _read_exact(src, want)
                if len(plain) != want:
                    raise ConfigError(f"image {image} changed while it was read")
                sealed = aead.encrypt(_chunk_nonce(enc.nonce_prefix, index, last), plain, AAD)
                digest.update(sealed)
                dst.write(sealed)
            if src.read(1):
                raise ConfigError(f"image {image} changed while it was read")
            file_hash, root = digest.finish()
            record = replace(draft, data=replace(draft.data, file_hash=file_hash, merkle_root=root))
            header = BundleHeader(record, sign_release(record, account, chain_id, registry), enc)
            final = header.to_bytes()
            if len(final) != header_len:  # cannot happen: every hash and the signature are fixed-width
                raise ConfigError("internal error: bundle header length changed while signing")
            dst.seek(0)
            dst.write(final)
            dst.flush()
            os.fsync(dst.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise ConfigError(f"cannot build bundle {out}: {exc.strerror or exc}") from exc
        raise
    _fsync_dir(out.parent)
    return header


def _fsync_dir(folder: Path) -> None:
    try:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # some filesystems refuse fsync on a directory; the rename is done
        pass
