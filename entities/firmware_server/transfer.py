"""Transfer helpers: the single-range parser (pure) and a payload response that streams from a file.

:class:`PayloadResponse` sends an already opened file descriptor: on a plain TCP connection the
kernel sends it from file to socket (the ASGI zero-copy extension, :mod:`entities.zerocopy`), 8 MiB
per message; otherwise (TLS) it reads it with ``os.pread`` in worker threads, 1 MiB at a time. It
stops as soon as the client disconnects, and reports how many bytes it handed to the server (the
download log's ``bytes``). The descriptor is opened before the
response starts, so a payload withdrawn meanwhile (unlinked) still completes the transfer that
was already authorised, and is never served again.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping

import anyio
from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from entities.zerocopy import ZEROCOPY

from .policy import Refusal

__all__ = ["CHUNK", "PayloadResponse", "parse_range"]

CHUNK = 1 << 20
ZEROCOPY_SLICE = 8 << 20  # bytes per zero-copy message: the granularity of ``sent`` for a cut transfer
_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.ASCII)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``Range`` header -> (start, end exclusive), or None for the whole payload.

    One range only (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``), RFC 9110 semantics; ``b`` past
    the end is clipped.

    Raises:
        Refusal: ``bad_range``: malformed, several ranges, or not satisfiable.
    """
    if header is None:
        return None
    m = _RANGE_RE.match(header)
    if not m or (not m.group(1) and not m.group(2)) or len(header) > 100:
        raise Refusal("bad_range", "Range must be one range: bytes=START-END, bytes=START- or bytes=-SUFFIX",
                      details={"size": size})
    first, last = m.group(1), m.group(2)
    if not first:  # suffix: the last n bytes
        n = int(last)
        if n == 0:
            raise Refusal("bad_range", "an empty suffix range is not satisfiable", details={"size": size})
        return max(0, size - n), size
    start = int(first)
    end = size if not last else min(int(last) + 1, size)
    if start >= size or (last and int(last) < start):
        raise Refusal("bad_range", f"range {header.strip()} is not satisfiable for {size} bytes",
                      details={"size": size})
    return start, end


class PayloadResponse(Response):
    """An ASGI response streaming ``fd[start:end]``; closes ``fd`` and calls ``on_done(sent, complete)``."""

    def __init__(self, fd: int, start: int, end: int, *, status: int, headers: Mapping[str, str],
                 on_done: Callable[[int, bool], None]) -> None:
        self.fd = fd
        self.start = start
        self.end = end
        self.extra_headers = dict(headers)
        self.on_done = on_done
        self.sent = 0
        self.status_code = status
        self.background: BackgroundTask | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        disconnected = anyio.Event()

        async def watch() -> None:
            while True:
                msg: Message = await receive()
                if msg["type"] == "http.disconnect":
                    disconnected.set()
                    return

        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.extra_headers.items()]
        raw.append((b"content-length", str(self.end - self.start).encode()))
        complete = False
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": raw})
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                pos = self.start
                if ZEROCOPY in scope.get("extensions", {}):
                    pos = await self._send_zerocopy(send, disconnected)
                while pos < self.end and not disconnected.is_set():
                    n = min(CHUNK, self.end - pos)
                    data = await anyio.to_thread.run_sync(os.pread, self.fd, n, pos)
                    if not data:  # the file is shorter than recorded: never pad; abort the connection
                        raise OSError(f"stored payload ends at byte {pos}, before {self.end}")
                    pos += len(data)
                    await send({"type": "http.response.body", "body": data, "more_body": pos < self.end})
                    self.sent += len(data)
                complete = pos >= self.end and not disconnected.is_set()
                tg.cancel_scope.cancel()
        finally:
            os.close(self.fd)
            self.on_done(self.sent, complete)

    async def _send_zerocopy(self, send: Send, disconnected: anyio.Event) -> int:
        """Send ``fd[start:end]`` file to socket in the kernel; the position reached (``end``
        unless the client left: then ``disconnected`` is set)."""
        pos = self.start
        with open(self.fd, "rb", buffering=0, closefd=False) as fh:
            while pos < self.end and not disconnected.is_set():
                n = min(ZEROCOPY_SLICE, self.end - pos)
                try:
                    await send({"type": ZEROCOPY, "file": fh, "offset": pos, "count": n,
                                "more_body": pos + n < self.end})
                except ConnectionError:  # the client left during the slice
                    disconnected.set()
                    break
                pos += n
                self.sent += n
        return pos
