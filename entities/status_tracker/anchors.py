"""Trust anchor statements at a status tracker (:mod:`entities.protocol.anchor_rotation`): kept and served.

The server module keeps the statements an operator pushed (``POST /v1/anchors``, signed by one of
its administrators; :class:`AnchorsBoard`, ``<data>/anchors-statements.json``, written atomically)
and serves them to devices (``GET /v1/anchors?after=S``: the statements with a serial above S,
oldest first, at most :data:`PAGE`; answers signed like every answer). Intermediates relay that
read (:class:`AnchorsRelay`: asked upstream at most once per poll interval for each ``after``).

The tracker is not trusted for any of it: a device judges each statement itself. The board only
keeps out what no device could accept: a malformed statement, another chain's, one whose new
keys did not sign it (new quorum), one not newer than the newest held, and one the anchors of
the newest held statement would refuse (their quorum) (codes as :mod:`entities.protocol.anchor_rotation`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from entities.protocol.anchor_rotation import AnchorsError, check_rotation, parse_statement
from ledger_node.errors import ConfigError
from ledger_node.fsutil import atomic_write_json, read_json

from .inventory import TrackerRefusal

__all__ = ["ANCHORS_STATEMENTS_FILE", "PAGE", "AnchorsBoard", "AnchorsRelay", "anchors_router", "relay_router"]

ANCHORS_STATEMENTS_FILE = "anchors-statements.json"
#: statements in one answer (a device behind by more asks again at its next pass)
PAGE = 16
#: statements a board keeps (the oldest dropped beyond it)
KEEP = 256
_MAX_SERIAL = (1 << 63) - 1


class AnchorsBoard:
    """The statements a server module holds, oldest first, in one JSON file.

    Raises (constructor):
        ConfigError: the file exists but is not a statements file.
    """

    def __init__(self, path: Path, chain_id: int) -> None:
        self.path = Path(path)
        self.chain_id = int(chain_id)
        self._lock = threading.Lock()
        self._items: list[dict[str, Any]] = []
        if self.path.exists():
            data = read_json(self.path)
            items = data.get("statements") if isinstance(data, dict) and data.get("format") == 1 else None
            if not isinstance(items, list):
                raise ConfigError(f"{self.path} is not an anchors statements file")
            try:
                self._items = [parse_statement(i).to_json() for i in items]
            except AnchorsError as exc:
                raise ConfigError(f"{self.path}: {exc}") from exc

    @property
    def serial(self) -> int:
        """The newest statement's serial (0: none held)."""
        with self._lock:
            return int(self._items[-1]["serial"]) if self._items else 0

    def since(self, after: int) -> dict[str, Any]:
        """``{"serial": newest, "statements": [...]}``: those above ``after``, oldest first, at most PAGE."""
        with self._lock:
            newest = int(self._items[-1]["serial"]) if self._items else 0
            return {"serial": newest, "statements": [i for i in self._items if i["serial"] > after][:PAGE]}

    def receive(self, statement: Any, signer: str) -> dict[str, Any]:
        """Keep a statement an administrator pushed (see the module docstring for what is refused).

        Raises:
            TrackerRefusal: ``anchors_malformed``, ``anchors_chain``, ``anchors_not_newer``,
                ``anchors_quorum``.
            ConfigError: the file cannot be written.
        """
        with self._lock:
            try:
                stmt = parse_statement(statement)
                held = parse_statement(self._items[-1]) if self._items else None
                if held is None:  # a device at serial 0 judges the old half; here only the new keys'
                    check_rotation(statement, serial=0, chain_id=self.chain_id, trackers=stmt.trackers,
                                   quorum=stmt.quorum)
                else:
                    check_rotation(statement, serial=held.serial, chain_id=self.chain_id, trackers=held.trackers,
                                   quorum=held.quorum)
            except AnchorsError as exc:
                raise TrackerRefusal(exc.code, str(exc)) from None
            items = [*self._items, stmt.to_json()][-KEEP:]
            atomic_write_json(self.path, {"format": 1, "statements": items})
            self._items = items
        return {"serial": stmt.serial, "trackers": list(stmt.trackers), "quorum": stmt.quorum,
                "signers": sorted(stmt.signers()), "pushed_by": signer}


def anchors_router(board: AnchorsBoard, *, authenticate: Callable[[Request], Awaitable[str]],
                   require_admin: Callable[[str], None]) -> APIRouter:
    """The server module's ``/v1/anchors`` routes (its :func:`.app.create_app` passes its request
    authentication and administrator check)."""
    router = APIRouter()

    @router.get("/v1/anchors", tags=["light nodes"])
    async def anchors_read(after: Annotated[int, Query(ge=0, le=_MAX_SERIAL, description="The device's serial")] = 0
                           ) -> dict[str, Any]:
        """Trust anchor statements with a serial above ``after``, oldest first (at most 16), and the
        newest serial held; a device verifies each one itself (k current and k' new tracker keys)."""
        return board.since(after)

    @router.post("/v1/anchors", tags=["operator"])
    async def anchors_push(request: Request) -> dict[str, Any]:
        """An administrator hands the module a signed anchors statement to serve to devices."""
        signer = await authenticate(request)
        require_admin(signer)
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise TrackerRefusal("malformed_json", "request body is not valid JSON") from None
        return await anyio.to_thread.run_sync(board.receive, body, signer)  # type: ignore[no-any-return]

    return router


class AnchorsRelay:
    """An intermediate's ``GET /v1/anchors``: the upstream's answer for each ``after``, fetched at
    most once per ``ttl`` seconds (the newest statement need not reach devices faster than an
    agent pass), at most 64 answers kept. ``fetch(path)`` returns the upstream's verified
    ``(status, body)``."""

    def __init__(self, fetch: Callable[[str], tuple[int, bytes]], ttl: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fetch = fetch
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._answers: dict[int, tuple[float, int, bytes]] = {}

    def get(self, after: int) -> tuple[int, bytes]:
        with self._lock:
            now = self.clock()
            hit = self._answers.get(after)
            if hit is not None and now - hit[0] < self.ttl:
                return hit[1], hit[2]
            status, body = self.fetch(f"/v1/anchors?after={after}")
            if status == 200:
                if len(self._answers) >= 64:
                    self._answers.clear()
                self._answers[after] = (now, status, body)
            return status, body


def relay_router(relay: AnchorsRelay) -> APIRouter:
    """The intermediate's ``GET /v1/anchors`` (the upstream's answer, re-signed by the module)."""
    router = APIRouter()

    @router.get("/v1/anchors", tags=["light nodes"])
    async def anchors_read(after: Annotated[int, Query(ge=0, le=_MAX_SERIAL)] = 0) -> Response:
        """The upstream's trust anchor statements above ``after`` (devices verify them)."""
        status, body = await anyio.to_thread.run_sync(relay.get, after)
        return Response(content=body, status_code=status, media_type="application/json")

    return router
