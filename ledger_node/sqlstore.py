"""SQLite plumbing shared by every fwledger database (the full node's index, the tracker's
inventory and module tables, the firmware server's store): errors mapped to the project's, one
write transaction.

- :func:`db_errors`: sqlite3 errors become :class:`~ledger_node.errors.IndexCorruption` (the
  file is damaged or inconsistent) or :class:`~ledger_node.errors.ConfigError` (it cannot be
  used: locked, read-only, closed), with the file named and the message on one line.
- :func:`write_tx`: ``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception (a crash
  between the two leaves the file as it was: SQLite's journal).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ConfigError, IndexCorruption

__all__ = ["CORRUPTION_HINTS", "db_errors", "write_tx"]

#: words in an OperationalError that mean the file is damaged rather than unusable
CORRUPTION_HINTS = ("malformed", "not a database", "no such table", "no such column", "corrupt", "encrypted")


def _one_line(text: str, limit: int = 240) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


@contextmanager
def db_errors(path: Path | str, kind: str) -> Iterator[None]:
    """Map sqlite3 errors raised inside to the project's; ``kind`` names the database
    ("index", "inventory", ...) in the message."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        raise IndexCorruption(f"{kind} {path} is inconsistent: {_one_line(str(exc))}") from exc
    except sqlite3.OperationalError as exc:
        msg = str(exc)
        if any(h in msg.lower() for h in CORRUPTION_HINTS):
            raise IndexCorruption(f"{kind} {path} is damaged: {_one_line(msg)}") from exc
        raise ConfigError(f"cannot use {kind} {path}: {_one_line(msg)}") from exc
    except sqlite3.ProgrammingError as exc:
        raise ConfigError(f"{kind} {path} cannot be used: {_one_line(str(exc))}") from exc
    except sqlite3.DatabaseError as exc:
        raise IndexCorruption(f"{kind} {path} is damaged: {_one_line(str(exc))}") from exc


@contextmanager
def write_tx(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction on an autocommit connection (``isolation_level=None``); the caller
    holds whatever lock serialises the connection."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
