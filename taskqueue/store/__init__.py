"""The durable state of the queue: one contract, two backends.

* :mod:`.contract`  -- rows, claims, the :class:`TaskStore` protocol every backend keeps
* :mod:`.committer` -- the one owner of a write connection: direct or group commit of :class:`Op` values
* :mod:`.machine`   -- the state machine's transitions as ops, the same SQL on every backend
* :mod:`.owners`    -- owner tokens, liveness, leases
* :mod:`.sqlite`    -- the embedded default (a file path)
* :mod:`.postgres`  -- many machines (a ``postgresql://`` URL; psycopg 3, imported only then)
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from typing import Callable

from .committer import Committer, Op
from .contract import COLUMNS, MAX_ERROR_TEXT, Attempt, Claim, Recovered, Row, TaskStore, error_text, task_payload
from .owners import alive as owner_alive, new_token as owner_token
from .postgres import is_url
from .sqlite import APPLICATION_ID, SQLiteReader, SQLiteStore, check_database, connect

__all__ = ["APPLICATION_ID", "COLUMNS", "MAX_ERROR_TEXT", "Attempt", "Claim", "Committer", "Op", "Recovered", "Row",
           "SQLiteReader", "SQLiteStore", "TaskStore", "check_database", "connect", "error_text", "is_url",
           "open_reader", "open_store", "owner_alive", "probe", "owner_token", "store_errors", "task_payload"]


def open_store(db: str, *, lease_s: float = 300.0, synchronous: str = "normal", busy_timeout_ms: int = 10000,
               clock: Callable[[], float] | None = None) -> TaskStore:
    """The task store at ``db``: a ``postgresql://`` URL, else a SQLite file path (created if absent)."""
    extra = {} if clock is None else {"clock": clock}
    if is_url(db):
        from .postgres import PostgresStore
        return PostgresStore(db, lease_s=lease_s, **extra)
    return SQLiteStore(db, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms, lease_s=lease_s, **extra)


def probe(db: str) -> None:
    """Raise the store's error now if ``db`` cannot be opened, creating nothing: a command probes
    before it makes anything else (the object store, its sources) and before any thread starts.

    A ``postgresql://`` URL is connected to once; an existing SQLite file is opened for writing (an
    absent one is not created: the CLI's ``check_paths`` has tried its directory).
    """
    if is_url(db):
        from .postgres import connect
        connect(db).close()
        return
    if not os.path.exists(db):
        return
    try:
        sqlite3.connect(f"file:{urllib.parse.quote(os.path.abspath(db))}?mode=rw", uri=True).close()
    except sqlite3.Error as exc:
        raise sqlite3.OperationalError(f"database {db!r} cannot be opened for writing: {exc}") from None


def open_reader(db: str, *, busy_timeout_ms: int = 10000):
    """Reads of an existing queue database at ``db`` (for ``status`` and ``dlq list``); writes nothing.
    Each read waits at most ``busy_timeout_ms`` for a lock (PostgreSQL: its ``lock_timeout``)."""
    if is_url(db):
        from .postgres import PostgresReader
        return PostgresReader(db, lock_timeout_ms=busy_timeout_ms)
    return SQLiteReader(db, busy_timeout_ms=busy_timeout_ms)


def store_errors() -> tuple[type[BaseException], ...]:
    """The database errors a store may raise: sqlite3's, and psycopg's when it is installed."""
    try:
        import psycopg
    except ImportError:
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)
