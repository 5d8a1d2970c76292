"""The vendor's EIP-712 signature over a bundle's record: digest, signing, recovery (pure)."""

from __future__ import annotations

from ledger_node.codec import abi
from ledger_node.codec.ecdsa import KeyHolder, recover_hash, sign_hash
from ledger_node.codec.ecdsa import SignatureError as _CodecSignatureError
from ledger_node.codec.eip712 import typed_data_digest
from ledger_node.codec.hashing import is_address, keccak, to_checksum_address
from ledger_node.errors import ConfigError, RecordError
from ledger_node.record import ReleaseRecord

from .format import (
    _SECP256K1_HALF_N,
    SIGNATURE_SIZE,
    BundleHeader,
    SignatureError,
    _is_int,
)

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
