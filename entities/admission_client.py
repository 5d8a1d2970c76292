"""The operator's side of device admission (:mod:`entities.protocol.admission`), without the CLI: the
operator's copy of every record it signed, and pushing records to services.

``<home>/fleet/admissions.json``: ``{"format": 1, "records": {device_id: record}}``, the newest
record (highest serial) per device, written atomically (0600) before anything is pushed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ledger_node.errors import ConfigError, FwledgerError
from ledger_node.fsutil import atomic_write_bytes

from .protocol.admission import Admission

__all__ = ["BATCH", "copy_path", "push_records", "read_copy", "save_copy"]

#: records per ``POST /v1/admissions`` (services take at most 200)
BATCH = 50


def copy_path(home: Path) -> Path:
    return Path(home) / "fleet" / "admissions.json"


def read_copy(home: Path) -> dict[str, dict[str, Any]]:
    """The operator's records by device id (empty when none was signed yet).

    Raises:
        ConfigError: the file is unreadable or not an admissions file.
    """
    path = copy_path(home)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"the operator's admission copy {path} is unreadable: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("format") != 1 or not isinstance(obj.get("records"), dict):
        raise ConfigError(f"the operator's admission copy {path} is not an admissions file (format 1)")
    return obj["records"]  # type: ignore[no-any-return]


def save_copy(home: Path, records: Sequence[Admission]) -> dict[str, dict[str, Any]]:
    """Keep ``records`` in the copy (a record older than the one kept for its device is ignored)."""
    copy = read_copy(home)
    for adm in records:
        old = copy.get(adm.device_id)
        if old is None or int(old.get("serial", 0)) < adm.serial:
            copy[adm.device_id] = {k: v for k, v in adm.to_json().items() if k != "source"}
    data = json.dumps({"format": 1, "records": dict(sorted(copy.items()))}, indent=1).encode()
    atomic_write_bytes(copy_path(home), data, mode=0o600)
    return copy


def push_records(services: Iterable[str], records: Sequence[dict[str, Any]], *, timeout: float = 30.0,
                 session_setup: Callable[[Any], None] | None = None) -> dict[str, dict[str, Any]]:
    """POST the records to each service in batches of :data:`BATCH`; per service
    ``{"applied", "stale"}``, or ``{"error", "applied"}`` (a refusal or no answer: the batches
    before it were taken). ``session_setup`` configures the requests session (TLS files)."""
    import requests

    out: dict[str, dict[str, Any]] = {}
    for url in dict.fromkeys(u.rstrip("/") for u in services):
        applied = stale = 0
        try:
            with requests.Session() as session:
                session.trust_env = False
                if session_setup is not None:
                    session_setup(session)
                for i in range(0, len(records), BATCH):
                    resp = session.post(f"{url}/v1/admissions", json={"records": list(records[i:i + BATCH])},
                                        timeout=timeout)
                    try:
                        body = resp.json()
                    except ValueError:
                        body = None
                    if resp.status_code != 200 or not isinstance(body, dict):
                        err = body.get("error", {}) if isinstance(body, dict) else {}
                        raise FwledgerError(f"{resp.status_code} {err.get('code', '?')}: {err.get('message', '')}")
                    applied += int(body.get("applied", 0))
                    stale += int(body.get("stale", 0))
            out[url] = {"applied": applied, "stale": stale}
        except requests.RequestException as exc:
            out[url] = {"error": f"no answer ({type(exc).__name__})", "applied": applied}
        except FwledgerError as exc:
            out[url] = {"error": str(exc)[:300], "applied": applied}
    return out
