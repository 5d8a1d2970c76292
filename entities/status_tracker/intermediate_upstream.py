"""The intermediate module's upstream side (docs/MODULES.md section 6): what it asks, and what it keeps.

- :class:`Upstream`: one upstream module (the server module or another intermediate), its signing
  key pinned; one request per call over HTTP(S) (mutual TLS with the fleet certificate), an
  answer accepted only if the pinned key signed it over the request's path and nonce (C11.2.d),
  else :class:`UpstreamError` (``upstream_unreachable``, ``upstream_untrusted``); it tracks its
  own reachability;
- :class:`Answer`: an upstream answer whose signature verified (or one served from the cache);
- :class:`AnswerCache`: ``<data>/cache.sqlite``, verified answers of a fixed block, bounded
  (least recently used evicted in the insert's transaction).

:class:`~.intermediate.Intermediate` orchestrates them; :mod:`.intermediate` re-exports these names.
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from entities.protocol.http_auth import AuthError, verify_response
from ledger_node.errors import ConfigError, FwledgerError
from ledger_node.sqlstore import SqliteStore

__all__ = ["Answer", "AnswerCache", "Upstream", "UpstreamError"]

_MAX_ANSWER = 8 << 20         # largest upstream answer read (evidence with many successors fits)
_TOUCH_EVERY = 60.0           # seconds between two refreshes of a cached answer's last use


class UpstreamError(FwledgerError):
    """No usable answer from the upstream: ``upstream_unreachable`` (no answer) or
    ``upstream_untrusted`` (TLS refused, unsigned, signed by a key other than the pinned one,
    answering another request, too large)."""

    def __init__(self, code: str, message: str, url: str = "") -> None:
        self.code = code
        self.url = url
        super().__init__(message)


@dataclass(frozen=True)
class Answer:
    """An upstream answer whose signature verified (or one served from the cache)."""

    status: int
    body: bytes
    signer: str
    cached: bool = False


# ----------------------------------------------------------------------------- one upstream


class Upstream:
    """One upstream module, its signing key pinned; HTTPS with this module's fleet certificate
    when ``ssl_context`` is given. Tracks its own reachability (``last_ok``, ``last_error``)."""

    def __init__(self, url: str, key: str, *, ssl_context: ssl.SSLContext | None, timeout: float = 30.0,
                 max_skew: int = 300, clock: Callable[[], float] = time.time,
                 logger: logging.Logger | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
                or parts.query or parts.fragment:
            raise ConfigError(f"upstream URL must be http(s)://host:port without a path, not {url!r}")
        if parts.scheme == "https" and ssl_context is None:
            ssl_context = ssl.create_default_context()
        self.url = url.rstrip("/")
        self.key = key
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl_context = ssl_context if parts.scheme == "https" else None
        self.timeout = timeout
        self.max_skew = max_skew
        self.clock = clock
        self.log = logger or logging.getLogger("fwledger.intermediate")
        self.last_ok: float | None = None
        self.last_error: str | None = None
        self.last_error_code: str | None = None
        self.last_error_at: float | None = None

    def _fail(self, code: str, message: str) -> UpstreamError:
        self.last_error, self.last_error_code, self.last_error_at = message, code, self.clock()
        self.log.warning(json.dumps({"event": code, "upstream": self.url, "error": message}, sort_keys=True))
        return UpstreamError(code, message, self.url)

    def _send(self, method: str, path: str, headers: Mapping[str, str], body: bytes
              ) -> tuple[int, dict[str, str], bytes]:
        conn: http.client.HTTPConnection
        if self.ssl_context is not None:
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self.ssl_context)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, body=body or None, headers=dict(headers))
            resp = conn.getresponse()
            raw = resp.read(_MAX_ANSWER + 1)
            return int(resp.status), dict(resp.getheaders()), raw
        except ssl.SSLError as exc:  # the handshake failed: not a fleet module, or it refused our certificate
            raise self._fail("upstream_untrusted", f"TLS with the upstream {self.url} failed: "
                                                   f"{getattr(exc, 'verify_message', None) or exc}") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise self._fail("upstream_unreachable", f"cannot reach the upstream {self.url}: "
                                                     f"{type(exc).__name__}: {exc}") from exc
        finally:
            conn.close()

    def exchange(self, method: str, path: str, headers: Mapping[str, str], body: bytes = b"", *,
                 request_nonce: str | None) -> Answer:
        """Send one request; return the answer only if the pinned upstream key signed it over
        ``path`` and ``request_nonce``.

        Raises:
            UpstreamError: ``upstream_unreachable``, ``upstream_untrusted``.
        """
        status, hdrs, raw = self._send(method, path, headers, body)
        if len(raw) > _MAX_ANSWER:
            raise self._fail("upstream_untrusted", f"the upstream {self.url} answered more than {_MAX_ANSWER} bytes")
        try:
            signer = verify_response(hdrs, status, path, raw, request_nonce=request_nonce, tracker=self.key,
                                     max_skew=self.max_skew, now=self.clock())
        except AuthError as exc:
            raise self._fail("upstream_untrusted", f"the upstream {self.url} answered without the pinned "
                                                   f"key's signature ({exc.code}: {exc})") from exc
        self.last_ok, self.last_error, self.last_error_code = self.clock(), None, None
        return Answer(status, raw, signer)

    def state(self) -> dict[str, Any]:
        return {"url": self.url, "key": self.key, "last_ok": self.last_ok, "last_error": self.last_error,
                "last_error_code": self.last_error_code, "last_error_at": self.last_error_at,
                "reachable": self.last_ok is not None and (self.last_error_at is None
                                                           or self.last_ok >= self.last_error_at)}


# ----------------------------------------------------------------------------- the cache


class AnswerCache(SqliteStore):
    """``<data>/cache.sqlite``: verified upstream answers of a fixed block, keyed by the exact
    (canonical) request path; at most ``max_entries`` rows, the least recently used (``used_at``,
    refreshed on a hit at most every ``_TOUCH_EVERY`` seconds) evicted when an insert exceeds it,
    in the insert's transaction."""

    schema = """
    CREATE TABLE IF NOT EXISTS answers (
        key TEXT PRIMARY KEY,
        body BLOB NOT NULL,
        signer TEXT NOT NULL,
        fetched_at REAL NOT NULL,
        used_at REAL NOT NULL DEFAULT 0
    ) WITHOUT ROWID
    """
    kind = "intermediate cache"
    marker = "answers"

    def __init__(self, path: Path | str, max_entries: int = 4096, clock: Callable[[], float] = time.time) -> None:
        super().__init__(path)
        self.max_entries = max_entries
        self.clock = clock
        try:
            with self._tx() as conn:  # caches made before the bound had no used_at column
                if "used_at" not in {r[1] for r in conn.execute("PRAGMA table_info(answers)")}:
                    conn.execute("ALTER TABLE answers ADD COLUMN used_at REAL NOT NULL DEFAULT 0")
                    conn.execute("UPDATE answers SET used_at = fetched_at")
                conn.execute("CREATE INDEX IF NOT EXISTS answers_by_use ON answers (used_at)")
            self._evict()
        except BaseException:
            self.close()
            raise

    def get(self, key: str) -> Answer | None:
        with self._read() as conn:
            row = conn.execute("SELECT body, signer, used_at FROM answers WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        now = self.clock()
        if now - float(row[2]) > _TOUCH_EVERY:  # least recently used, without a write per hit
            with self._tx() as conn:
                conn.execute("UPDATE answers SET used_at = ? WHERE key = ?", (now, key))
        return Answer(200, bytes(row[0]), str(row[1]), cached=True)

    def put(self, key: str, answer: Answer, now: float) -> None:
        """Keep one answer; the least recently used ones beyond ``max_entries`` go in the same transaction."""
        with self._tx() as conn:
            conn.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?)",
                         (key, answer.body, answer.signer, now, now))
            self._trim(conn)

    def _trim(self, conn: Any) -> None:
        over = int(conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]) - self.max_entries
        if over > 0:
            conn.execute("DELETE FROM answers WHERE key IN (SELECT key FROM answers ORDER BY used_at, key LIMIT ?)",
                         (over,))

    def _evict(self) -> None:
        with self._tx() as conn:
            self._trim(conn)

    def size(self) -> int:
        with self._read() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0])
