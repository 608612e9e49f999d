"""The embedded backend: task rows in one SQLite file.

WAL mode (readers never block the writer), ``synchronous=NORMAL`` by default
(FULL selectable), ``busy_timeout``, write transactions with ``BEGIN
IMMEDIATE``. One write connection per store, owned by its committer; reads
use short-lived connections of their own. The file is marked with an
``application_id``, so a file that is not this queue's database is refused
untouched. Timestamps are wall-clock seconds (``clock``, injectable)
because leases are compared across processes.

SQLite cannot notify other processes: a process waiting for rows another
one holds has to look again, with a bounded backoff.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
import urllib.parse
from typing import Callable, Iterator

from ..errors import text_of
from ..logs import LOGGER_NAME
from . import ledger
from .committer import Committer
from .machine import StateMachine
from .reads import Reads

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: (id, version) names one state
    task_id         TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL UNIQUE,
    payload         TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status = 'queued' OR status = 'running' OR status = 'success'
                                            OR status = 'failed' OR status = 'dead'),
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      REAL    NOT NULL,
    updated_at      REAL    NOT NULL,
    next_attempt_at REAL,
    lease_until     REAL,
    owner           TEXT,
    output_key      TEXT,
    output_bytes    INTEGER,
    last_error      TEXT,
    error_class     TEXT,
    redrives        INTEGER NOT NULL DEFAULT 0,
    version         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_waiting ON tasks(id) WHERE status IN ('queued','failed');
CREATE TABLE IF NOT EXISTS dead_letters (
    idempotency_key TEXT    PRIMARY KEY,
    task_id         TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    error_class     TEXT    NOT NULL,
    last_error      TEXT    NOT NULL,
    created_at      REAL    NOT NULL,
    dead_at         REAL    NOT NULL
);
"""
# The status CHECK is written with OR, not IN: SQLite compiles an IN list in a CHECK into an ephemeral
# index it builds on every INSERT and UPDATE (a third of the SQL's instructions per task, measured).
_log = logging.getLogger(LOGGER_NAME)
APPLICATION_ID = 0x54517565  # "TQue": marks a SQLite file as this queue's database


def read_only_uri(path: str) -> str:
    """A ``file:`` URI that opens ``path`` for reading and leaves no file another user would own.

    Even read-only, SQLite creates a WAL database's ``-wal`` and ``-shm`` files when they are
    missing (no process has it open), owned by whoever opens it, and leaves them: another user's
    ``status`` made files the database's owner cannot write, and the owner's next command failed
    with "attempt to write a readonly database". So a user who does not own the file (root's are
    handed to the owner by SQLite itself) opens it ``immutable`` while it has no ``-wal``: then the
    file alone holds every committed change, and nothing is created. A writer starting meanwhile
    writes to its WAL, not to the file, until a checkpoint: such a read may miss its changes.
    """
    absolute = os.path.abspath(path)
    mode = "mode=ro"
    if hasattr(os, "geteuid") and os.geteuid() != 0 and not os.path.lexists(absolute + "-wal"):
        with contextlib.suppress(OSError):
            if os.stat(absolute).st_uid != os.geteuid():
                mode = "immutable=1"
    return f"file:{urllib.parse.quote(os.fsencode(absolute))}?{mode}"


def check_database(path: str) -> None:
    """Refuse, without changing it, a file that is not this queue's database.

    A missing or empty file is fine (the schema is created); so is a file
    marked with our ``application_id``. Anything else -- another
    application's SQLite file, random bytes -- raises ``sqlite3.DatabaseError``
    naming the path, before any pragma or schema could modify it.
    """
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    try:
        conn = sqlite3.connect(read_only_uri(path), uri=True, isolation_level=None)
    except sqlite3.DatabaseError as exc:
        raise sqlite3.DatabaseError(f"database {path!r}: {exc}") from None
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = sorted(name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    except sqlite3.DatabaseError as exc:
        raise sqlite3.DatabaseError(f"database {path!r}: {exc}") from None
    finally:
        conn.close()
    if app_id != APPLICATION_ID and (app_id != 0 or tables):
        raise sqlite3.DatabaseError(
            f"database {path!r} is not a task queue database (application_id {app_id}, "
            f"tables {', '.join(tables[:5]) or 'none'}); refusing to modify it")


def connect(path: str, *, busy_timeout_ms: int, synchronous: str = "normal",
            check_same_thread: bool = True) -> sqlite3.Connection:
    """Open a connection with the store's pragmas (autocommit mode: transactions are explicit)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=check_same_thread,
                           timeout=busy_timeout_ms / 1000.0)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {'FULL' if synchronous == 'full' else 'NORMAL'}")
    return conn


def begin_immediate(conn: sqlite3.Connection, tries: int = 5) -> None:
    """BEGIN IMMEDIATE, trying again when another process holds the lock past busy_timeout."""
    for attempt in range(tries):
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if attempt == tries - 1 or not ("locked" in text or "busy" in text):
                raise


class SQLiteStore(StateMachine):
    """The task store in a SQLite file (see :mod:`taskqueue.store.contract` for the contract).

    Raises ``sqlite3.Error`` naming the path if the database cannot be
    opened or its schema created, and refuses a foreign file untouched.
    """

    def __init__(self, path: str | os.PathLike, *, synchronous: str = "normal", busy_timeout_ms: int = 10000,
                 lease_s: float = 300.0, clock: Callable[[], float] = time.time, max_batch: int = 512) -> None:
        self.path = os.fspath(path)
        if os.path.isdir(self.path):
            raise IsADirectoryError(f"database path {self.path!r} is a directory")
        self._busy_timeout_ms = busy_timeout_ms
        check_database(self.path)
        try:
            conn = connect(self.path, busy_timeout_ms=busy_timeout_ms, synchronous=synchronous,
                           check_same_thread=False)  # the committer uses it from several threads, one at a time
            conn.executescript(SCHEMA + f"PRAGMA application_id = {APPLICATION_ID};")
        except sqlite3.DatabaseError as exc:
            raise type(exc)(f"database {self.path!r}: {exc}") from exc
        super().__init__(location=self.path, lease_s=lease_s, clock=clock)
        self.committer = Committer(conn, begin=begin_immediate, max_batch=max_batch)
        try:
            self._ledgers = ledger.directory_for(os.path.realpath(self.path))  # one name for every process
            self.settle_ledgers()
        except BaseException:
            self.close()
            raise
        try:
            self.ledger = ledger.Ledger(self._ledgers, self.owner)
        except OSError as exc:  # e.g. another user's directory: correct without one, only slower
            _log.warning("no start ledger: every attempt's start is committed before it runs", extra={
                "event": "ledger_unavailable", "task_id": None, "idempotency_key": None,
                "error_class": type(exc).__name__, "error": text_of(exc)})

    def _insert(self, conn: sqlite3.Connection, values: tuple) -> int | None:
        cursor = conn.execute(self.sql["insert"], values)  # no RETURNING: one sqlite3_step instead of two
        return cursor.lastrowid if cursor.rowcount == 1 else None

    @contextlib.contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        """A short-lived read connection (usable from any thread inside the ``with``)."""
        conn = connect(self.path, busy_timeout_ms=self._busy_timeout_ms)
        try:
            yield conn
        finally:
            conn.close()


class SQLiteReader(Reads):
    """Reads of an existing queue database (``status``, ``dlq list``), setting no pragma that writes.

    Refuses (without changing it) a file that is not this queue's database.
    """

    def __init__(self, path: str | os.PathLike, *, busy_timeout_ms: int = 10000) -> None:
        self.path = self.location = os.fspath(path)
        self._busy_timeout_ms = busy_timeout_ms
        check_database(self.path)

    @contextlib.contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(read_only_uri(self.path), uri=True, isolation_level=None,
                               timeout=self._busy_timeout_ms / 1000.0)
        try:
            yield conn
        finally:
            conn.close()
