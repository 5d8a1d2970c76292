"""The firmware server (X.1368 clause 11.3): an untrusted HTTP service that still protects devices.

Modules:

- ``config``: :class:`ServerConfig`, typed settings passed in (flag > env > config file > default).
- ``policy``: every trust decision, pure (uploads, entitlement, location rules, notifications).
- ``store``: content-addressed objects written atomically and the SQLite metadata.
- ``upload``: the streaming upload sink (temp file, hashes, bundle split) around ``policy``.
- ``transfer``: the single-range parser and the payload response (resume with ``Range``).
- ``ledger``: :class:`LedgerView`, the server's full node and its queries.
- ``service``: :class:`FirmwareService`, the orchestrator (C11.3 a-h) and the ledger follower.
- ``app``: the FastAPI application (HTTP adapter) built by :func:`create_app`.
- ``runner``: run the app with uvicorn in this thread or a background one.
"""

from __future__ import annotations

__all__: list[str] = []
