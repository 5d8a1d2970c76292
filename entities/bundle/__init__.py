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

from .build import build_bundle
from .format import (
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
    DecryptError,
    Encryption,
    PayloadError,
    Recipient,
    SignatureError,
    payload_size_for,
    read_header,
)
from .keywrap import unwrap_content_key, wrap_content_key
from .payload import ChunkVerifier, check_bundle, decrypt_payload, verify_payload
from .signing import recover_signer, release_digest, sign_release

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
