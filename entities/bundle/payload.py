"""The payload: checked chunk by chunk against the record (size, SHA-256, Merkle root), decrypted and
written, with resumption from durable plaintext; reads and hashes ahead in a worker (``entities.readahead``)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from entities.readahead import ReadAhead
from ledger_node.errors import ConfigError, RecordError
from ledger_node.merkle import leaf_hash, node_hash
from ledger_node.record import ReleaseRecord

from .format import (
    _AHEAD,
    _BATCH,
    _READ,
    _WRITE,
    AAD,
    CIPHER_CHUNK,
    PLAIN_CHUNK,
    TAG_SIZE,
    BundleHeader,
    DecryptError,
    Encryption,
    PayloadError,
    _chunk_nonce,
    _read,
    _read_upto,
    read_header,
)
from .keywrap import (
    unwrap_content_key,
)
from .signing import (
    recover_signer,
)

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
    """SHA-256 and Merkle root (65552-byte leaves) over bytes fed in any pieces.

    The payload pipeline feeds the SHA-256 alone (``leaves=False``, whole chunks) and adds each
    chunk's leaf to ``merkle`` itself: another thread may have hashed it.
    """

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.merkle = _MerkleAccumulator()
        self._buf = bytearray()
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview, *, leaves: bool = True) -> None:
        self.sha.update(data)
        self.size += len(data)
        if not leaves:
            return
        view = memoryview(data)
        while view:
            take = min(CIPHER_CHUNK - len(self._buf), len(view))
            if not self._buf and take == CIPHER_CHUNK:
                self.merkle.add(leaf_hash(view[:take]))
            else:
                self._buf += view[:take]
                if len(self._buf) == CIPHER_CHUNK:
                    self.merkle.add(leaf_hash(self._buf))
                    self._buf.clear()
            view = view[take:]

    def finish(self) -> tuple[bytes, bytes]:
        """(sha256, merkle root)."""
        if self._buf:
            self.merkle.add(leaf_hash(self._buf))
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

    def feed(self, data: bytes | bytearray | memoryview, *, leaves: bool = True) -> None:
        """Take the next bytes of the payload. ``leaves=False``: only their size and SHA-256; the
        Merkle leaves of those bytes (whole chunks) then come through :meth:`add_leaf`, in order.

        Raises:
            PayloadError: ``size_mismatch`` (more bytes than the record's file_size, or fed after finish).
        """
        if self._done:
            raise PayloadError("size_mismatch", "payload bytes fed after the end of the payload")
        if self._digest.size + len(data) > self.expected_size:
            self._done = True
            raise PayloadError("size_mismatch", f"payload longer than the record's file_size {self.expected_size}")
        self._digest.update(data, leaves=leaves)

    def add_leaf(self, leaf: bytes) -> None:
        """The Merkle leaf (``ledger_node.merkle.leaf_hash``) of the next chunk fed with ``leaves=False``."""
        self._digest.merkle.add(leaf)

    def finish(self) -> None:
        """Check the whole payload.

        Raises:
            PayloadError: ``truncated`` (fewer bytes than file_size), ``hash_mismatch`` or ``merkle_mismatch``.
        """
        self.finish_hash()
        self.finish_merkle()

    def finish_hash(self) -> None:
        """Check the size and the SHA-256 (then :meth:`finish_merkle`, once every leaf is in).

        Raises:
            PayloadError: ``truncated``, ``hash_mismatch``, or ``size_mismatch`` (already ended).
        """
        if self._done:
            raise PayloadError("size_mismatch", "payload verification already ended")
        self._done = True
        if self._digest.size < self.expected_size:
            raise PayloadError("truncated", f"payload truncated: {self._digest.size} of {self.expected_size} bytes")
        if self._digest.sha.digest() != self.record.data.file_hash:
            raise PayloadError("hash_mismatch", "payload SHA-256 differs from the record's file hash")

    def finish_merkle(self) -> None:
        """Check the Merkle root, after :meth:`finish_hash` passed.

        Raises:
            PayloadError: ``merkle_mismatch`` (``hash_mismatch`` if the SHA-256 was not found right first).
        """
        if not self._done or self._digest.sha.digest() != self.record.data.file_hash:
            raise PayloadError("hash_mismatch", "the payload's SHA-256 was not checked before its Merkle root")
        if self._digest.finish()[1] != self.record.data.merkle_root:
            raise PayloadError("merkle_mismatch", "payload Merkle root differs from the record's")


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
    and is caught here, by the hash). ``out.write`` is given a view of a buffer that is filled
    again once it returns: it must consume or copy the bytes (files and ``io.BytesIO`` do).

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
    # a worker reads the sealed chunks a batch ahead and hashes them (SHA-256; hashlib and I/O
    # release the GIL) while this thread decrypts them, _WRITE chunks into one buffer, and writes
    # that buffer at once. The Merkle leaves go to whichever thread has time: the worker hashes
    # them while this thread is still busy with the previous batch (a fast source), this thread
    # those the worker did not reach (a slow one).
    # The worker's errors arrive where a plain loop raises them.
    plain = memoryview(bytearray(_WRITE * PLAIN_CHUNK))
    with ReadAhead(_sealed_batches(header, f, verifier, first), depth=_AHEAD, name="payload-read",
                   spare=_Batch.hash_leaf) as batches:
        for batch in batches:
            filled, leaves = 0, batch.leaves
            for i, sealed in enumerate(batch.chunks):
                verifier.add_leaf(leaves[i] if i < len(leaves) else leaf_hash(sealed))
                n = len(sealed) - TAG_SIZE
                try:
                    aead.decrypt_into(_chunk_nonce(enc.nonce_prefix, index, index == count - 1), sealed, AAD,
                                      plain[filled:filled + n])
                except InvalidTag:
                    if filled:  # the chunks before it passed authentication: written as they would be alone
                        _write(out, plain[:filled])
                    raise DecryptError("chunk_auth_failed", f"chunk {index} of {count} fails authentication "
                                       "(tampered, reordered, truncated or extended payload)") from None
                filled += n
                index += 1
                if filled + PLAIN_CHUNK > len(plain):
                    _write(out, plain[:filled])
                    written, filled = written + filled, 0
            if filled:
                _write(out, plain[:filled])
                written += filled
    verifier.finish_merkle()  # the worker checked the size and the SHA-256 after the last chunk
    return written


class _Batch:
    """Sealed chunks read at once, and the Merkle leaves of the first ``len(leaves)`` of them.

    The worker that read it may hash leaves (:meth:`hash_leaf`) until it hands the batch over;
    from then on only the consumer touches it (the queue orders the two).
    """

    __slots__ = ("chunks", "leaves")

    def __init__(self, chunks: list[memoryview]) -> None:
        self.chunks = chunks
        self.leaves: list[bytes] = []

    def hash_leaf(self) -> bool:
        """Hash the next chunk's leaf; False when every leaf is done."""
        i = len(self.leaves)
        if i == len(self.chunks):
            return False
        self.leaves.append(leaf_hash(self.chunks[i]))
        return True


def _write(out: BinaryIO, plain: bytes | memoryview) -> None:
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
                    start: int = 0) -> Iterator[_Batch]:
    """The sealed chunks ``start``.. of the payload in ``f``, read ``_BATCH`` at a time and checked against the record.

    Every complete chunk is fed to the record's size and SHA-256 check (``verifier`` already holds
    the chunks before ``start``) as it is read; its Merkle leaf is the consumer's to add. After the
    last chunk: no trailing byte, then the size and the SHA-256.

    Raises:
        PayloadError: ``truncated`` (in the chunk that is short), ``trailing_bytes``, then
            ``hash_mismatch``.
        ConfigError: ``f`` cannot be read.
    """
    enc = header.encryption
    count, size = enc.chunk_count, enc.payload_size
    for first in range(start, count, _BATCH):
        n = min(_BATCH, count - first)
        want = min(size, (first + n) * CIPHER_CHUNK) - first * CIPHER_CHUNK
        data, cut = _read_upto(f, want)
        whole = len(data) if len(data) == want else len(data) - len(data) % CIPHER_CHUNK
        view = memoryview(data)[:whole]
        if whole:  # after a cut too: every whole chunk that arrived is checked and written (resumable)
            verifier.feed(view, leaves=False)
            yield _Batch([view[i:i + CIPHER_CHUNK] for i in range(0, whole, CIPHER_CHUNK)])
        if cut is not None:
            raise cut
        if len(data) < want:
            raise PayloadError("truncated", f"payload truncated in chunk {first + whole // CIPHER_CHUNK} of {count}")
    if _read(f, 1):
        raise PayloadError("trailing_bytes", "bytes after the end of the payload")
    verifier.finish_hash()


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
