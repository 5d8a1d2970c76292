"""SQLite plumbing shared by every fwledger database (the full node's index, the tracker's
inventory and module tables, the firmware server's store): errors mapped to the project's, one
write transaction.

- :func:`db_errors`: sqlite3 errors become :class:`~ledger_node.errors.IndexCorruption` (the
  file is damaged or inconsistent) or :class:`~ledger_node.errors.ConfigError` (it cannot be
  used: locked, read-only, closed), with the file named and the message on one line.
- :func:`write_tx`: ``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception (a crash
  between the two leaves the file as it was: SQLite's journal).
- :func:`savepoint`: ``SAVEPOINT`` ... ``RELEASE`` inside a transaction already open, rolled back
  to its start on any exception (the enclosing transaction goes on): a nested write that commits
  with its enclosing transaction, once.
- :class:`SqliteStore`: a small store on one file (schema, kind, marker table), one connection
  shared under a lock: the tracker's module table, the intermediate's cache, services' admissions.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from .errors import ConfigError, IndexCorruption

__all__ = ["CORRUPTION_HINTS", "SqliteStore", "db_errors", "savepoint", "write_tx"]

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


@contextmanager
def savepoint(conn: sqlite3.Connection, name: str = "nested") -> Iterator[sqlite3.Connection]:
    """A savepoint inside the transaction open on ``conn`` (the caller holds its lock): released
    into it on success, rolled back to its start on any exception (then re-raised); nothing is
    durable before the enclosing transaction commits.

    Raises:
        sqlite3.OperationalError: no transaction is open (SQLite rolled the enclosing one back
            after an I/O error: a savepoint now would begin a new one, committing part of it).
    """
    if not conn.in_transaction:
        raise sqlite3.OperationalError("savepoint outside a transaction: the enclosing one was rolled back")
    conn.execute(f"SAVEPOINT {name}")
    try:
        yield conn
        conn.execute(f"RELEASE {name}")
    except BaseException:
        if conn.in_transaction:  # an I/O error may have rolled the whole transaction back already
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
        raise


class SqliteStore:
    """One SQLite file in WAL mode, one connection shared under a lock, errors as ConfigError
    (unusable) or IndexCorruption (damaged). Subclasses give ``schema`` and ``kind``.

    Raises (constructor):
        ConfigError: the file cannot be opened or created.
        IndexCorruption: the file is damaged or another kind of database.
    """

    schema = ""
    kind = "store"
    marker = ""  # a table the file must have if it has any
    durable = False  # synchronous=FULL: a committed change survives a power cut, not only a crash

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open {self.kind} {self.path}: {exc}") from exc
        try:
            with self._errors():
                conn = self._conn
                conn.execute("PRAGMA busy_timeout = 30000")
                conn.execute("PRAGMA journal_mode = WAL")
                if self.durable:
                    conn.execute("PRAGMA synchronous = FULL")
                tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if tables and self.marker not in tables:
                    raise IndexCorruption(f"{self.path} is an SQLite database but not a {self.kind}")
                with self._tx() as tx:
                    for stmt in filter(None, (s.strip() for s in self.schema.split(";"))):
                        tx.execute(stmt)
        except BaseException:
            self._conn.close()
            raise

    def _errors(self) -> AbstractContextManager[None]:
        return db_errors(self.path, self.kind)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors(), write_tx(self._conn) as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors():
            yield self._conn

    def close(self) -> None:
        with self._lock:
            self._conn.close()
