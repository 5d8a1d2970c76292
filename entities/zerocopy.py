"""Zero-copy payload sends: the ASGI ``http.response.zerocopysend`` extension on uvicorn's h11 protocol.

uvicorn does not offer the extension, so every body byte of a download is copied from the file
into Python and again into the socket. :func:`adopt` gives one request's response cycle the
extension when its connection is plain TCP: a ``{"type": "http.response.zerocopysend", "file",
"offset", "count", "more_body"}`` message is sent by the kernel from the file to the socket
(``loop.sendfile``, ``os.sendfile``), never through Python. Over TLS the bytes must pass through
the TLS layer (asyncio would copy them in 16 KiB blocks), so the extension is not offered and the
application sends ``http.response.body`` as before (:class:`entities.firmware_server.transfer.PayloadResponse`
does both).

h11 keeps counting the body against ``Content-Length``: it is told of each sent range by a
stand-in of its length that is never written. A client that leaves mid-range makes ``send``
raise :class:`ConnectionError` (as the ASGI spec asks of a send on a closed connection); a file
shorter than the range aborts the connection and raises :class:`OSError`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

__all__ = ["ZEROCOPY", "adopt"]

ZEROCOPY = "http.response.zerocopysend"


class _Counted:
    """Stands for ``n`` body bytes in h11's Content-Length count; never written (the kernel sends them)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def adopt(protocol: H11Protocol) -> None:
    """Offer the extension to ``protocol``'s current request, when its connection is plain TCP.

    Called right after uvicorn made the request's cycle, before its application task first runs.
    """
    cycle = getattr(protocol, "cycle", None)
    if type(cycle) is not RequestResponseCycle or cycle.response_started:
        return
    # asyncio's socket transport sends files natively; its TLS transport (and other loops) would
    # copy them through Python in small blocks, worse than the application's own reads
    mode = getattr(protocol.transport, "_sendfile_compatible", None)
    if getattr(mode, "name", None) != "TRY_NATIVE":
        return
    cycle.__class__ = _ZeroCopyCycle
    cycle.scope.setdefault("extensions", {})[ZEROCOPY] = {}


class _ZeroCopyCycle(RequestResponseCycle):
    """uvicorn's response cycle with ``http.response.zerocopysend``; every other message as uvicorn sends it."""

    async def send(self, message: Any) -> None:
        if message["type"] != ZEROCOPY:
            await super().send(message)
            return
        if not self.response_started or self.response_complete:
            raise RuntimeError(f"unexpected ASGI message {ZEROCOPY!r}: no response body is open")
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected or self.transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        count = int(message["count"])
        if self.scope["method"] != "HEAD" and count > 0:
            offset = int(message.get("offset", 0))
            self.conn.send_with_data_passthrough(h11.Data(data=_Counted(count)))  # type: ignore[arg-type]
            try:
                sent = await asyncio.get_running_loop().sendfile(self.transport, message["file"], offset, count,
                                                                 fallback=False)
            except ConnectionError as exc:  # reset or broken pipe
                self.disconnected = True
                self.transport.close()
                raise ConnectionResetError(f"the client left during the transfer: {exc}") from None
            if sent != count:  # the file ends before the range: never pad, abort the connection
                self.transport.abort()
                raise OSError(f"the file ends {count - sent} bytes before the end of the range at {offset}")
        if not message.get("more_body", False):
            self.response_complete = True
            self.message_event.set()
            self.transport.write(self.conn.send(event=h11.EndOfMessage()))
            if self.conn.our_state is h11.MUST_CLOSE or not self.keep_alive:
                self.conn.send(event=h11.ConnectionClosed())
                self.transport.close()
            self.on_response()
