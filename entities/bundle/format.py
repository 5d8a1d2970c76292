"""The bundle format v1 (``docs/BUNDLE.md``): constants, errors, the header and its canonical JSON, reading a header."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from ledger_node.errors import ConfigError, RecordError, VerificationError
from ledger_node.record import ReleaseRecord

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
# The payload pipeline (payload.decrypt_payload): the worker reads and hashes _BATCH sealed chunks
# (1 MiB) at once and may hold _AHEAD batches ahead of decryption; the caller decrypts _WRITE chunks
# (256 KiB) into one buffer and writes them at once. Few, large calls: every call that releases the
# GIL hands it between the two threads (measured: 256 KiB reads and a write per chunk spent ~6 futex
# calls per chunk and ~2x the receive CPU). Memory stays ~3.5 MiB.
_BATCH = 16
_AHEAD = 1
_WRITE = 4
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


def _read(f: BinaryIO, n: int) -> bytes:
    try:
        return f.read(n)
    except OSError as exc:
        raise ConfigError(f"cannot read the bundle: {exc.strerror or exc}") from exc


def _read_exact(f: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes, looping over short reads; fewer only at the end of the stream."""
    data, cut = _read_upto(f, n)
    if cut is not None:
        raise cut
    return data


def _read_upto(f: BinaryIO, n: int) -> tuple[bytes, Exception | None]:
    """:func:`_read_exact`, and the error that ended the read early, if one (a cut connection),
    returned with the bytes that arrived before it instead of raised."""
    parts, got = [], 0
    try:
        while got < n:
            piece = _read(f, n - got)
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
    except Exception as exc:
        return b"".join(parts), exc
    return b"".join(parts), None


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
