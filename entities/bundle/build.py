"""Building a bundle (the author's side): encrypt an image, wrap its key, sign its record, write it atomically."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ledger_node.codec.ecdsa import KeyHolder
from ledger_node.errors import ConfigError, RecordError
from ledger_node.record import ZERO_HASH, Dependency, ReleaseData, ReleaseRecord, Version

from .format import (
    AAD,
    ALG,
    NONCE_PREFIX_SIZE,
    PLAIN_CHUNK,
    SIGNATURE_SIZE,
    BundleHeader,
    Encryption,
    _chunk_nonce,
    _read_exact,
    payload_size_for,
)
from .keywrap import (
    wrap_content_key,
)
from .payload import (
    _PayloadDigest,
)
from .signing import (
    sign_release,
)

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
