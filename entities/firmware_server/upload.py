"""The streaming upload sink: an I/O adapter around the bundle module's pure checks.

A bundle arrives as the raw request body. The sink reads it once, in pieces of any size:

- hashes every byte (the request signature covers the body's SHA-256);
- cuts off the fixed prefix and the header (at most 1 MiB, kept in memory) and parses them
  with :func:`entities.bundle.read_header`;
- streams the payload into a temp file in ``<data>/tmp`` while feeding
  :class:`entities.bundle.ChunkVerifier` (size, SHA-256, Merkle root, trailing bytes), so a
  payload that outgrows its record is refused at once and nothing is kept of it;
- enforces the per-request and total size limits.

Nothing here decides whether to accept: it records the first bundle error and the caller
(``service``) turns it into a refusal once the request signature has been verified.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from entities.bundle import (
    BUNDLE_MAGIC,
    BUNDLE_VERSION,
    MAX_HEADER,
    PREFIX_SIZE,
    BundleError,
    BundleFormatError,
    BundleHeader,
    ChunkVerifier,
    PayloadError,
    read_header,
)

from .policy import Refusal

__all__ = ["UploadResult", "UploadSink"]



@dataclass(frozen=True)
class UploadResult:
    """What the sink saw: the body hash, the parsed header (or the first bundle error), the payload."""

    body_sha256: str
    body_bytes: int
    header: BundleHeader | None
    error: BundleError | None
    payload_path: Path
    payload_bytes: int
    payload_sha256: bytes


class UploadSink:
    """Receives one upload body. Call :meth:`feed` with each piece, then :meth:`finish`.

    ``max_body`` caps the request body; ``max_payload`` caps the payload this upload may add
    to storage (the total limit minus what is stored).

    Raises (from :meth:`feed`):
        Refusal: ``too_large`` (body over ``max_body``) or ``storage_full``.
    """

    def __init__(self, fd: int, path: Path, *, max_body: int, max_payload: int) -> None:
        self._fh = os.fdopen(fd, "wb", buffering=0)
        self.path = path
        self.max_body = max_body
        self.max_payload = max_payload
        self._body = hashlib.sha256()
        self._payload = hashlib.sha256()
        self._body_bytes = 0
        self._payload_bytes = 0
        self._head = bytearray()
        self._header_len: int | None = None
        self.header: BundleHeader | None = None
        self.error: BundleError | None = None
        self._verifier: ChunkVerifier | None = None
        self._closed = False

    def feed(self, data: bytes) -> None:
        if self._closed:
            raise ValueError("upload sink is closed")
        self._body_bytes += len(data)
        if self._body_bytes > self.max_body:
            raise Refusal("too_large", f"upload larger than the server's limit of {self.max_body} bytes")
        self._body.update(data)
        view = memoryview(data)
        if self.header is None and self.error is None:
            view = self._take_head(view)
        if len(view) and self.header is not None and self.error is None:
            self._take_payload(view)

    def _take_head(self, view: memoryview) -> memoryview:
        if self._header_len is None:
            need = PREFIX_SIZE - len(self._head)
            self._head += view[:need]
            view = view[need:]
            if len(self._head) < PREFIX_SIZE:
                return view
            magic, version, length = self._head[:4], *struct.unpack(">HI", self._head[4:PREFIX_SIZE])
            if bytes(magic) != BUNDLE_MAGIC or version != BUNDLE_VERSION or not 0 < length <= MAX_HEADER:
                self._parse()  # records the bundle module's own error for this prefix
                return view[:0]
            self._header_len = length
        need = PREFIX_SIZE + self._header_len - len(self._head)
        self._head += view[:need]
        view = view[need:]
        if len(self._head) == PREFIX_SIZE + self._header_len:
            self._parse()
        return view

    def _parse(self) -> None:
        try:
            header, offset = read_header(io.BytesIO(bytes(self._head)))
        except BundleError as exc:
            self.error = exc
            return
        if offset != len(self._head):
            self.error = BundleFormatError("bad_bundle", "bundle header length is inconsistent")
            return
        self.header = header
        self._verifier = ChunkVerifier(header.record)

    def _take_payload(self, view: memoryview) -> None:
        assert self._verifier is not None and self.header is not None
        expected = self.header.record.data.file_size
        fits = view[: max(0, expected - self._payload_bytes)]
        if self._payload_bytes + len(fits) > self.max_payload:
            raise Refusal("storage_full", "the server's storage limit would be exceeded")
        if len(fits):
            try:
                self._verifier.feed(bytes(fits))
            except BundleError as exc:  # pragma: no cover - fits never exceeds the record's size
                self.error = exc
                return
            self._payload.update(fits)
            self._payload_bytes += len(fits)
            self._fh.write(fits)
        if len(view) > len(fits):
            # more bytes than the record's size: trailing bytes after the signed payload, or a
            # payload of another size altogether (the first file_size bytes do not verify)
            try:
                self._verifier.finish()
            except PayloadError:
                self.error = PayloadError("size_mismatch", f"payload longer than the record's file_size {expected}")
            else:
                self.error = PayloadError("trailing_bytes", "bytes after the end of the payload")

    def finish(self) -> UploadResult:
        """Close the temp file (fsynced) and finish the payload check."""
        if self.header is None and self.error is None:
            self._parse_short()
        if self._verifier is not None and self.error is None:
            try:
                self._verifier.finish()
            except BundleError as exc:
                self.error = exc
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._closed = True
        return UploadResult(self._body.hexdigest(), self._body_bytes, self.header, self.error, self.path,
                            self._payload_bytes, self._payload.digest())

    def _parse_short(self) -> None:
        # the body ended inside the prefix or the header: the bundle module names the error
        self._parse()
        if self.error is None:  # pragma: no cover - a complete header always reaches _parse earlier
            self.error = BundleFormatError("bad_bundle", "bundle ends inside its header")

    def discard(self) -> None:
        """Close and delete the temp file (idempotent)."""
        if not self._closed:
            self._fh.close()
            self._closed = True
        self.path.unlink(missing_ok=True)
