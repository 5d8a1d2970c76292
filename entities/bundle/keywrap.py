"""The content key wrapped per hardware class: X25519 ECDH, HKDF-SHA256, AES key wrap (pure)."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ledger_node.errors import ConfigError

from .format import (
    KEK_INFO,
    KEY_SIZE,
    DecryptError,
    Encryption,
    Recipient,
)

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
