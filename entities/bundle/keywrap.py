"""The content key wrapped per hardware class: X25519 ECDH, HKDF-SHA256, AES key wrap (pure)."""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from ledger_node.errors import ConfigError

from .format import (
    KEK_INFO,
    KEY_SIZE,
    DecryptError,
    Encryption,
    Recipient,
)

# ----------------------------------------------------------------------------- X25519 keys

def _rust_constructors() -> tuple[Callable[[bytes], X25519PrivateKey], Callable[[bytes], X25519PublicKey]]:
    """cryptography's X25519 constructors without the import of its whole OpenSSL backend module.

    ``X25519PrivateKey.from_private_bytes`` and ``X25519PublicKey.from_public_bytes`` import
    ``cryptography.hazmat.backends.openssl.backend`` (RSA, EC, padding, every cipher: ~8 ms of a
    device's update, measured) only to ask whether X25519 is supported, then call the Rust
    constructors used here directly; their keys are the same ``X25519PrivateKey`` and
    ``X25519PublicKey``. Where the binding is laid out otherwise, the public constructors.
    """
    try:
        from cryptography.hazmat.bindings._rust import openssl as rust_openssl

        x25519 = rust_openssl.x25519
        return x25519.from_private_bytes, x25519.from_public_bytes
    except (ImportError, AttributeError):  # pragma: no cover - another cryptography layout
        return X25519PrivateKey.from_private_bytes, X25519PublicKey.from_public_bytes


_private_from, _public_from = _rust_constructors()


def x25519_private(raw: bytes) -> X25519PrivateKey:
    """An X25519 private key from its 32 raw bytes.

    Raises:
        ValueError: not 32 bytes.
    """
    return _private_from(raw)


def x25519_public(raw: bytes) -> X25519PublicKey:
    """An X25519 public key from its 32 raw bytes.

    Raises:
        ValueError: not 32 bytes.
    """
    return _public_from(raw)


# ----------------------------------------------------------------------------- key wrap

def _x25519_public(raw: bytes, what: str) -> X25519PublicKey:
    if not isinstance(raw, bytes) or len(raw) != KEY_SIZE:
        raise ConfigError(f"{what} must be a 32-byte X25519 public key")
    return x25519_public(raw)


def _kek(shared: bytes, eph_pub: bytes, class_pub: bytes, hw_id: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=eph_pub + class_pub,
                info=KEK_INFO + hw_id.encode()).derive(shared)


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes_raw()


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
    priv = x25519_private(class_private_key)
    try:
        shared = priv.exchange(x25519_public(entry.ephemeral_public))
        kek = _kek(shared, entry.ephemeral_public, _raw_public(priv.public_key()), hw_id)
        return aes_key_unwrap(kek, entry.wrapped_key)
    except (InvalidUnwrap, ValueError):
        raise DecryptError("unwrap_failed", f"cannot unwrap the content key for {hw_id} with this key") from None
