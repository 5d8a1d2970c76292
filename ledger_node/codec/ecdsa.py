"""secp256k1 keys and Ethereum signatures on ``coincurve`` (libsecp256k1), as ``eth-account`` makes them.

Signatures are 65 bytes ``r || s || v`` with ``v`` in {27, 28}; signing is deterministic
(RFC 6979) with a low ``s``, so a :class:`LocalKey` and an ``eth_account`` account with the same
key make identical signatures. Anything with a ``key`` attribute holding the 32-byte private key
(``eth_account``'s ``LocalAccount`` included) can sign through :func:`sign_hash` and
:func:`sign_personal`.
"""

from __future__ import annotations

import functools
import secrets
from typing import Final, Protocol

from coincurve import PrivateKey, PublicKey

from .hashing import keccak, to_checksum_address

__all__ = ["KeyHolder", "LocalKey", "SignatureError", "personal_hash", "recover_hash", "recover_personal",
           "sign_hash", "sign_personal"]

#: the order of secp256k1's group
SECP256K1_N: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


class SignatureError(ValueError):
    """A signature that is malformed or recovers to no key."""


class KeyHolder(Protocol):
    """What signs: a 32-byte secp256k1 private key and its checksum address (``eth_account`` accounts too)."""

    @property
    def key(self) -> bytes: ...

    @property
    def address(self) -> str: ...


def _private(holder: KeyHolder | bytes) -> PrivateKey:
    raw = bytes(holder) if isinstance(holder, bytes | bytearray) else bytes(holder.key)
    if len(raw) != 32 or not 0 < int.from_bytes(raw, "big") < SECP256K1_N:
        raise ValueError("a private key is 32 bytes in [1, n)")
    return _private_of(raw)


@functools.lru_cache(maxsize=8)
def _private_of(raw: bytes) -> PrivateKey:
    """libsecp256k1's key object for ``raw``, kept: making one computes the public point (~0.3 ms),
    and a service signs every answer with the same key (the process holds the key anyway)."""
    return PrivateKey(raw)


def address_of_public(public: PublicKey) -> str:
    """The checksum address of a public key: the last 20 bytes of keccak of its 64-byte point."""
    return to_checksum_address(keccak(public.format(compressed=False)[1:])[-20:])


class LocalKey:
    """A private key and its address: the device's light stand-in for ``eth_account.LocalAccount``."""

    __slots__ = ("_key", "address")

    def __init__(self, key: bytes) -> None:
        self._key = bytes(key)
        self.address: str = address_of_public(_private(self._key).public_key)

    @classmethod
    def from_key(cls, key: bytes | str) -> LocalKey:
        """From 32 raw bytes or 64 hex digits (``0x`` optional).

        Raises:
            ValueError: not a valid secp256k1 private key.
        """
        raw = bytes.fromhex(key.removeprefix("0x")) if isinstance(key, str) else bytes(key)
        return cls(raw)

    @classmethod
    def create(cls) -> LocalKey:
        """A new random key."""
        while True:
            raw = secrets.token_bytes(32)
            if 0 < int.from_bytes(raw, "big") < SECP256K1_N:
                return cls(raw)

    @property
    def key(self) -> bytes:
        return self._key

    def __repr__(self) -> str:  # never the key
        return f"LocalKey({self.address})"


def sign_hash(holder: KeyHolder | bytes, digest: bytes) -> bytes:
    """The 65-byte signature (v 27/28) of a 32-byte digest."""
    if len(digest) != 32:
        raise ValueError("a digest to sign is 32 bytes")
    sig = _private(holder).sign_recoverable(bytes(digest), hasher=None)
    return sig[:64] + bytes([sig[64] + 27])


def recover_hash(digest: bytes, signature: bytes) -> str:
    """The checksum address whose key signed the 32-byte ``digest``.

    ``v`` may be 27/28 or 0/1; ``r`` and ``s`` must be in [1, n).

    Raises:
        SignatureError: malformed, or no key recovers.
    """
    sig = bytes(signature)
    if len(sig) != 65:
        raise SignatureError(f"a signature is 65 bytes, got {len(sig)}")
    if len(digest) != 32:
        raise SignatureError("a signed digest is 32 bytes")
    v = sig[64] - 27 if sig[64] in (27, 28) else sig[64]
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big")
    if v not in (0, 1) or not 0 < r < SECP256K1_N or not 0 < s < SECP256K1_N:
        raise SignatureError("signature out of range")
    try:
        public = PublicKey.from_signature_and_message(sig[:64] + bytes([v]), bytes(digest), hasher=None)
    except Exception as exc:  # libsecp256k1 refuses: no point for this r
        raise SignatureError("signature does not recover to any key") from exc
    return address_of_public(public)


def personal_hash(message: bytes | str) -> bytes:
    """EIP-191 version 0x45 (``personal_sign``): keccak of the prefixed message (text as UTF-8)."""
    body = message.encode("utf-8") if isinstance(message, str) else bytes(message)
    return keccak(b"\x19Ethereum Signed Message:\n" + str(len(body)).encode() + body)


def sign_personal(holder: KeyHolder | bytes, message: bytes | str) -> bytes:
    """The signature of ``message`` as ``personal_sign`` (``encode_defunct``) makes it."""
    return sign_hash(holder, personal_hash(message))


def recover_personal(message: bytes | str, signature: bytes) -> str:
    """The signer of a ``personal_sign`` signature over ``message``.

    Raises:
        SignatureError: malformed, or no key recovers.
    """
    return recover_hash(personal_hash(message), signature)
