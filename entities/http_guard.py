"""Connection limits for every fwledger HTTP service facing a network (docs/THREATS.md, "Network").

uvicorn's HTTP/1.1 protocol (h11) waits forever for a request's headers and for the next byte of
its body; only idle keep-alive connections time out. :func:`guarded_protocol` makes a subclass
that also closes:

- a connection whose request headers are not complete ``header_timeout`` seconds after their
  first byte (or after the connection opened): slowloris;
- a connection whose request body has not sent a byte for ``body_timeout`` seconds while the
  service was ready to read it (flow control paused by a busy service does not count);
- a new connection from an address that already holds ``max_per_client`` open connections
  (loopback peers are exempt unless ``exempt_loopback`` is false: local software shares an address).

Headers are bounded by h11 (16 KiB per incomplete event); bodies by each service's own caps.

The same protocol offers each request on a plain TCP connection the ASGI zero-copy send
extension (:mod:`entities.zerocopy`): payload downloads go from file to socket in the kernel.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from entities.netaddr import is_loopback
from entities.zerocopy import adopt

__all__ = ["ConnectionGuard", "guarded_protocol"]


@dataclass(frozen=True)
class ConnectionGuard:
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_per_client: int = 32
    exempt_loopback: bool = True


def _host_of(protocol: object) -> str | None:
    client = getattr(protocol, "client", None)
    return str(client[0]) if client else None


def guarded_protocol(guard: ConnectionGuard) -> type[H11Protocol]:
    """An :class:`H11Protocol` enforcing ``guard`` and offering zero-copy sends (uvicorn's ``http=`` setting)."""

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._guard_timer: asyncio.TimerHandle | None = None
            self._guard_phase: str | None = None  # "headers" or "body" while a timer runs

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            host = self.client[0] if self.client else None
            if host is not None and not (guard.exempt_loopback and is_loopback(host)):
                same = sum(1 for c in self.connections if _host_of(c) == host)
                if same > guard.max_per_client:
                    transport.abort()
                    return
            self._arm("headers", guard.header_timeout)

        def handle_events(self) -> None:
            super().handle_events()
            adopt(self)  # the request's cycle, made just now: its application task has not run yet

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.transport.is_closing():
                return
            state = self.conn.their_state
            if state is h11.IDLE:  # (the rest of) the headers: the clock runs from their first byte
                if self._guard_phase != "headers":
                    self._arm("headers", guard.header_timeout)
            elif state is h11.SEND_BODY:  # each body byte restarts the clock
                self._arm("body", guard.body_timeout)
            else:  # the request is in: the service answers, the keep-alive timer takes over
                self._disarm()

        def _arm(self, phase: str, seconds: float) -> None:
            self._disarm()
            self._guard_phase = phase
            self._guard_timer = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._guard_timer is not None:
                self._guard_timer.cancel()
            self._guard_timer, self._guard_phase = None, None

        def _expired(self) -> None:
            phase, self._guard_timer = self._guard_phase, None
            if self.transport.is_closing():
                return
            if phase == "body" and self.flow.read_paused:  # the service, not the client, is behind
                self._arm("body", guard.body_timeout)
                return
            if phase == "headers" and self.conn.their_state is not h11.IDLE:
                return
            self._guard_phase = None
            self.transport.close()

    return GuardedH11Protocol
