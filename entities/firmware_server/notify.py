"""The firmware server's outward voice: its JSON log lines and its T9.b notifications to trackers."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import requests
from eth_account.signers.local import LocalAccount

from entities.protocol.http_auth import sign_request
from entities.service_identity import IdentityError, fetch_identity

from .store import Store

__all__ = ["json_logger", "post_notifications"]


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None) or {}
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "event": record.getMessage(),
               **fields}
        return json.dumps(out, default=str, separators=(",", ":"))


def json_logger(name: str = "fwledger.server") -> logging.Logger:
    """A logger writing one JSON object per line to stderr (installed once)."""
    logger = logging.getLogger(name)
    if not any(getattr(h, "_fwledger_json", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_JsonFormatter())
        handler._fwledger_json = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def post_notifications(identity: LocalAccount, urls: Sequence[str], timeout: float, store: Store,
                       payload: dict[str, Any], triggers: list[dict[str, Any]], event: Callable[..., None]) -> None:
    """POST the signed T9.b trigger(s) to each tracker URL; log (``store`` and ``event``) each with the
    devices it names. Best effort: a tracker's failure is its status, never an exception."""
    for url in urls:
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        for trigger in triggers:
            body = json.dumps(trigger, separators=(",", ":")).encode()
            try:
                tracker = fetch_identity(f"{parts.scheme}://{parts.netloc}", timeout=timeout)
                headers = sign_request(identity, "POST", path or "/", body, audience=tracker) | {
                    "Content-Type": "application/json"}
                resp = requests.post(url, data=body, headers=headers, timeout=timeout)
                status = str(resp.status_code) + (" pending" if _pending(resp) else "")
            except IdentityError as exc:
                status = f"error: {exc}"
            except requests.RequestException as exc:
                status = f"error: {type(exc).__name__}"
            logged = {**payload, "devices": trigger.get("devices", [])}
            try:
                store.log_notification(url, payload["header_hash"], logged, status)
            except Exception as exc:  # the store may be closing; a notification is best effort
                status += f" (not logged: {type(exc).__name__})"
            event("tracker_notified", url=url, header_hash=payload["header_hash"], status=status,
                  devices=len(logged["devices"]))


def _pending(resp: requests.Response) -> bool:
    """A tracker's 202 ``{"pending": true}``: it keeps the trigger until the release is indexed (T9.b)."""
    if resp.status_code != 202:
        return False
    try:
        return bool(resp.json().get("pending") is True)
    except (ValueError, AttributeError):
        return False
