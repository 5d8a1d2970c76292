"""The Table II.1 release record: canonical encoding, header hash, validation, decoding. Pure.

A record is a header and a data section (X.1368 Appendix II, Table II.1):

- data: Merkle root of the image chunks, vendor name, publish time, product (the software
  component the record belongs to: the product line), version number, file hash, file link,
  file name, file size, supported hardware, software dependencies;
- header: block length (bytes of the encoded data section), record format version, hash of the
  previous record header of the same product line, and the hash of the data section.

The canonical encoding is Ethereum ABI encoding (the registry contract builds exactly the same
bytes on chain, so the header hash a device computes is the one the chain committed to):

    data   = abi_encode(bytes32 merkle_root, string vendor_name, uint256 publish_time,
                        string product, uint64 version, bytes32 file_hash, string file_link,
                        string file_name, uint256 file_size, string[] supported_hardware,
                        (string,uint64,uint64)[] dependencies)
    header = abi_encode(uint256 block_length, uint8 format_version, bytes32 prev_hash,
                        bytes32 keccak256(data))
    header_hash = keccak256(header)

Versions are ``MAJOR.MINOR.PATCH`` with each part below 65536, packed into a uint64 as
``major << 32 | minor << 16 | patch`` so that integer order is version order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ledger_node.codec import abi
from ledger_node.codec.hashing import keccak

from .errors import RecordError, VerificationError

__all__ = [
    "DATA_TYPES",
    "FORMAT_VERSION",
    "HEADER_TYPES",
    "MAX_DEPENDENCIES",
    "MAX_HARDWARE",
    "ZERO_HASH",
    "Dependency",
    "ReleaseData",
    "ReleaseRecord",
    "Version",
    "line_id",
    "parse_dependency",
]

FORMAT_VERSION = 1
MAX_HARDWARE = 8
MAX_DEPENDENCIES = 8
ZERO_HASH = b"\x00" * 32

DATA_TYPES = (
    "bytes32", "string", "uint256", "string", "uint64", "bytes32", "string", "string",
    "uint256", "string[]", "(string,uint64,uint64)[]",
)
HEADER_TYPES = ("uint256", "uint8", "bytes32", "bytes32")

# byte limits, the contract's String[N] sizes
_LIMITS = {"vendor_name": 64, "product": 64, "file_link": 256, "file_name": 128, "hardware": 64}
_PRINTABLE = re.compile(r"^[\x20-\x7e]*$")
_VERSION_RE = re.compile(r"^(0|[1-9]\d{0,4})\.(0|[1-9]\d{0,4})\.(0|[1-9]\d{0,4})$", re.ASCII)
_DEP_RE = re.compile(r"^\s*([^<>=!,\s]+)\s*(.*)$")


@dataclass(frozen=True, order=True)
class Version:
    """A ``MAJOR.MINOR.PATCH`` version; ordered like its packed integer."""

    major: int
    minor: int
    patch: int

    def __post_init__(self) -> None:
        for part in (self.major, self.minor, self.patch):
            if not isinstance(part, int) or isinstance(part, bool) or not 0 <= part <= 0xFFFF:
                raise RecordError(
                    f"version parts must be integers 0..65535, got {self.major}.{self.minor}.{self.patch}")

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse ``"1.2.3"``.

        Raises:
            RecordError: not three dot-separated numbers in range.
        """
        m = _VERSION_RE.match(text.strip()) if isinstance(text, str) else None
        if not m:
            raise RecordError(f"bad version {text!r}: expected MAJOR.MINOR.PATCH, each 0..65535")
        return cls(*(int(g) for g in m.groups()))

    @classmethod
    def unpack(cls, packed: int) -> Version:
        """Inverse of :attr:`packed`.

        Raises:
            RecordError: the integer is not a packed version.
        """
        if not 0 <= packed < 1 << 48:
            raise RecordError(f"packed version out of range: {packed}")
        return cls(packed >> 32, (packed >> 16) & 0xFFFF, packed & 0xFFFF)

    @property
    def packed(self) -> int:
        return self.major << 32 | self.minor << 16 | self.patch

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


MIN_VERSION = Version(0, 0, 0)
MAX_VERSION = Version(0xFFFF, 0xFFFF, 0xFFFF)


@dataclass(frozen=True)
class Dependency:
    """A software dependency: ``product`` in the inclusive range [min_version, max_version]."""

    product: str
    min_version: Version = MIN_VERSION
    max_version: Version = MAX_VERSION

    def allows(self, version: Version) -> bool:
        return self.min_version <= version <= self.max_version

    def __str__(self) -> str:
        return f"{self.product}>={self.min_version},<={self.max_version}"


def parse_dependency(text: str) -> Dependency:
    """Parse ``'PRODUCT>=1.2.0,<2.0.0'`` (operators ``>=``, ``>``, ``<=``, ``<``, ``==``).

    Bounds are turned into the inclusive range the chain stores: ``<2.0.0`` becomes
    ``<=1.65535.65535``, ``>1.0.0`` becomes ``>=1.0.1``.

    Raises:
        RecordError: malformed text or an empty range.
    """
    m = _DEP_RE.match(text or "")
    if not m:
        raise RecordError(f"bad dependency {text!r}: expected PRODUCT>=X.Y.Z,<X.Y.Z")
    product, rest = m.group(1), m.group(2).strip()
    lo, hi = MIN_VERSION.packed, MAX_VERSION.packed
    for clause in filter(None, (c.strip() for c in rest.split(","))):
        cm = re.match(r"^(>=|<=|==|>|<)\s*(\S+)$", clause)
        if not cm:
            raise RecordError(f"bad dependency clause {clause!r} in {text!r}")
        op, v = cm.group(1), Version.parse(cm.group(2)).packed
        if op == ">=":
            lo = max(lo, v)
        elif op == ">":
            lo = max(lo, v + 1)
        elif op == "<=":
            hi = min(hi, v)
        elif op == "<":
            hi = min(hi, v - 1)
        else:
            lo, hi = max(lo, v), min(hi, v)
    if lo > hi or hi < 0:
        raise RecordError(f"dependency {text!r} allows no version")
    return Dependency(product, _unpack_in_range(lo), _unpack_in_range(hi))


def _unpack_in_range(packed: int) -> Version:
    # a "<X.0.0" bound may land on a packed integer whose low parts overflow 0xFFFF: clamp
    major, rest = divmod(packed, 1 << 32)
    minor, patch = divmod(rest, 1 << 16)
    return Version(major, minor, patch)


def line_id(vendor_name: str, product: str) -> bytes:
    """The product line id the registry uses: keccak256(abi_encode(vendor_name, product))."""
    return keccak(abi.encode(["string", "string"], [vendor_name, product]))


def _check_text(name: str, value: Any, limit: int, *, allow_empty: bool = False) -> None:
    if not isinstance(value, str):
        raise RecordError(f"{name} must be text")
    if not value and not allow_empty:
        raise RecordError(f"{name} is empty")
    if not _PRINTABLE.match(value):
        raise RecordError(f"{name} must be printable ASCII")
    if len(value) > limit:
        raise RecordError(f"{name} is longer than {limit} bytes")


def _check_hash(name: str, value: Any) -> None:
    if not isinstance(value, bytes) or len(value) != 32:
        raise RecordError(f"{name} must be 32 bytes")


@dataclass(frozen=True)
class ReleaseData:
    """The data section of Table II.1."""

    merkle_root: bytes
    vendor_name: str
    publish_time: int
    product: str
    version: Version
    file_hash: bytes
    file_link: str
    file_name: str
    file_size: int
    supported_hardware: tuple[str, ...]
    dependencies: tuple[Dependency, ...] = field(default_factory=tuple)

    def validate(self) -> None:
        """Check every field against the registry's rules.

        Raises:
            RecordError: naming the first field that is wrong.
        """
        _check_hash("merkle root", self.merkle_root)
        _check_hash("file hash", self.file_hash)
        _check_text("vendor name", self.vendor_name, _LIMITS["vendor_name"])
        _check_text("product", self.product, _LIMITS["product"])
        _check_text("file link", self.file_link, _LIMITS["file_link"], allow_empty=True)
        _check_text("file name", self.file_name, _LIMITS["file_name"], allow_empty=True)
        if not isinstance(self.version, Version):
            raise RecordError("version must be a Version")
        if (not isinstance(self.publish_time, int) or isinstance(self.publish_time, bool)
                or not 0 <= self.publish_time < 1 << 64):
            raise RecordError("publish time out of range")
        if not isinstance(self.file_size, int) or isinstance(self.file_size, bool) or self.file_size <= 0:
            raise RecordError("file size must be a positive integer")
        if self.file_size >= 1 << 64:
            raise RecordError("file size out of range")
        if not self.supported_hardware:
            raise RecordError("no supported hardware")
        if len(self.supported_hardware) > MAX_HARDWARE:
            raise RecordError(f"more than {MAX_HARDWARE} supported hardware classes")
        for hw in self.supported_hardware:
            _check_text("hardware id", hw, _LIMITS["hardware"])
        if len(set(self.supported_hardware)) != len(self.supported_hardware):
            raise RecordError("supported hardware lists a class twice")
        if len(self.dependencies) > MAX_DEPENDENCIES:
            raise RecordError(f"more than {MAX_DEPENDENCIES} dependencies")
        for dep in self.dependencies:
            if not isinstance(dep, Dependency):
                raise RecordError("dependencies must be Dependency entries")
            _check_text("dependency product", dep.product, _LIMITS["product"])
            if dep.min_version > dep.max_version:
                raise RecordError(f"dependency on {dep.product}: min version above max version")
            if dep.product == self.product:
                raise RecordError(f"{self.product} cannot depend on itself")

    def abi_values(self) -> list[Any]:
        return [
            self.merkle_root, self.vendor_name, self.publish_time, self.product,
            self.version.packed, self.file_hash, self.file_link, self.file_name, self.file_size,
            list(self.supported_hardware),
            [(d.product, d.min_version.packed, d.max_version.packed) for d in self.dependencies],
        ]

    def encode(self) -> bytes:
        """Canonical bytes of the data section.

        Raises:
            RecordError: a field is invalid.
        """
        self.validate()
        return abi.encode(list(DATA_TYPES), self.abi_values())

    @classmethod
    def decode(cls, data: bytes) -> ReleaseData:
        """Decode and validate; refuses any encoding that is not the canonical one.

        Raises:
            RecordError: not a canonical, valid data section.
        """
        try:
            v = abi.decode(list(DATA_TYPES), bytes(data))
            obj = cls(
                merkle_root=v[0], vendor_name=v[1], publish_time=v[2], product=v[3],
                version=Version.unpack(v[4]), file_hash=v[5], file_link=v[6], file_name=v[7],
                file_size=v[8], supported_hardware=tuple(v[9]),
                dependencies=tuple(Dependency(p, Version.unpack(lo), Version.unpack(hi)) for p, lo, hi in v[10]),
            )
        except (abi.AbiError, UnicodeDecodeError, ValueError, TypeError, OverflowError) as exc:
            raise RecordError(f"undecodable record data: {exc}") from exc
        if obj.encode() != bytes(data):
            raise RecordError("record data is not canonically encoded")
        return obj

    def to_json(self) -> dict[str, Any]:
        return {
            "merkle_root": "0x" + self.merkle_root.hex(),
            "vendor_name": self.vendor_name,
            "publish_time": self.publish_time,
            "product": self.product,
            "version": str(self.version),
            "file_hash": "0x" + self.file_hash.hex(),
            "file_link": self.file_link,
            "file_name": self.file_name,
            "file_size": self.file_size,
            "supported_hardware": list(self.supported_hardware),
            "dependencies": [
                {"product": d.product, "min_version": str(d.min_version), "max_version": str(d.max_version)}
                for d in self.dependencies
            ],
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ReleaseData:
        """Inverse of :meth:`to_json`.

        Raises:
            RecordError: missing or malformed fields.
        """
        try:
            if isinstance(obj["supported_hardware"], str):
                raise TypeError("supported_hardware must be a list, not a string")
            data = cls(
                merkle_root=_hex32(obj["merkle_root"], "merkle_root"),
                vendor_name=obj["vendor_name"],
                publish_time=int(obj.get("publish_time", 0)),
                product=obj["product"],
                version=Version.parse(obj["version"]),
                file_hash=_hex32(obj["file_hash"], "file_hash"),
                file_link=obj.get("file_link", ""),
                file_name=obj.get("file_name", ""),
                file_size=obj["file_size"],
                supported_hardware=tuple(obj["supported_hardware"]),
                dependencies=tuple(
                    Dependency(d["product"], Version.parse(d["min_version"]), Version.parse(d["max_version"]))
                    for d in obj.get("dependencies", ())
                ),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:  # OverflowError: int(Infinity)
            raise RecordError(f"bad record JSON: {exc!r}") from exc
        data.validate()
        return data


def _hex32(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise RecordError(f"{name} must be a hex string")
    try:
        raw = bytes.fromhex(value.removeprefix("0x"))
    except ValueError as exc:
        raise RecordError(f"{name} is not hex") from exc
    if len(raw) != 32:
        raise RecordError(f"{name} must be 32 bytes")
    return raw


@dataclass(frozen=True)
class ReleaseRecord:
    """A whole Table II.1 record: header fields around a data section."""

    prev_hash: bytes
    data: ReleaseData
    format_version: int = FORMAT_VERSION

    def validate(self) -> None:
        """Raises:
            RecordError: bad header field or data field.
        """
        _check_hash("previous header hash", self.prev_hash)
        if type(self.format_version) is not int or self.format_version != FORMAT_VERSION:
            raise RecordError(f"unsupported record format version {self.format_version}")
        self.data.validate()

    @property
    def data_bytes(self) -> bytes:
        return self.data.encode()

    @property
    def block_length(self) -> int:
        return len(self.data_bytes)

    def header_bytes(self) -> bytes:
        """The encoded header (block length, format version, previous hash, data hash).

        Raises:
            RecordError: a field is invalid.
        """
        self.validate()
        data = self.data_bytes
        return abi.encode(list(HEADER_TYPES), [len(data), self.format_version, self.prev_hash, keccak(data)])

    @property
    def header_hash(self) -> bytes:
        return keccak(self.header_bytes())

    @property
    def line(self) -> bytes:
        return line_id(self.data.vendor_name, self.data.product)

    @classmethod
    def from_event(cls, *, header_hash: bytes, line: bytes, prev_hash: bytes, data: bytes,
                   format_version: int = FORMAT_VERSION) -> ReleaseRecord:
        """Rebuild a record from a ``Published`` event and check it against the event's hashes.

        The block length is the length of ``data``; the format version is the registry's.

        Raises:
            RecordError: the data section is not a valid canonical record.
            VerificationError: the recomputed header hash or line differ from the event's.
        """
        record = cls(prev_hash=bytes(prev_hash), data=ReleaseData.decode(bytes(data)), format_version=format_version)
        if record.header_hash != bytes(header_hash):
            raise VerificationError("event header hash does not match the recomputed header hash")
        if record.line != bytes(line):
            raise VerificationError("event product line does not match its vendor and product")
        return record

    def to_json(self) -> dict[str, Any]:
        return {
            "header_hash": "0x" + self.header_hash.hex(),
            "line": "0x" + self.line.hex(),
            "format_version": self.format_version,
            "block_length": self.block_length,
            "prev_hash": "0x" + self.prev_hash.hex(),
            **self.data.to_json(),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ReleaseRecord:
        """Inverse of :meth:`to_json`; a ``header_hash`` present must match.

        Raises:
            RecordError: malformed, or the header hash given does not match.
        """
        if not isinstance(obj, Mapping):
            raise RecordError("record JSON must be an object")
        rec = cls(prev_hash=_hex32(obj.get("prev_hash", "0x" + "00" * 32), "prev_hash"),
                  data=ReleaseData.from_json(obj), format_version=obj.get("format_version", FORMAT_VERSION))
        rec.validate()
        if "header_hash" in obj and _hex32(obj["header_hash"], "header_hash") != rec.header_hash:
            raise RecordError("header_hash does not match the record's fields")
        return rec


def dependencies_from_texts(texts: Sequence[str]) -> tuple[Dependency, ...]:
    """Parse several ``--depends`` texts.

    Raises:
        RecordError: one is malformed.
    """
    return tuple(parse_dependency(t) for t in texts)
