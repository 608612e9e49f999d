"""The backend for many machines: task rows in PostgreSQL (``postgresql://`` URLs).

The same schema, transitions and SQL as SQLite (:mod:`.machine`), through
psycopg 3, which is imported only here: the default path needs nothing
outside the standard library. Differences that matter:

* Several processes write at once, row by row: ``claim_due`` takes rows with
  ``FOR UPDATE SKIP LOCKED``, so workers never wait on each other's rows; every
  transition is still version-checked.
* Every group commit is a transaction (``autocommit_max=0``), the default
  READ COMMITTED isolation.
* A worker waiting for work listens (``LISTEN taskqueue``): ops that make rows
  claimable ``NOTIFY`` in their transaction, delivered at commit. No polling.
* The schema is created under an advisory lock (many processes may start at
  once); a ``tasks`` table that is not this queue's is refused untouched.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from typing import Any, Callable, Iterator
from urllib.parse import unquote, urlsplit, urlunsplit

from ..errors import ConfigError, text_of
from .committer import Committer
from .machine import StateMachine
from .reads import Reads
from .statements import SQL, dialect

CHANNEL = "taskqueue"
MARK = "taskqueue task rows, schema 1"  # the tasks table's comment: this queue's table, not someone else's
_SCHEMA_LOCK = 0x54517565  # advisory lock key while creating the schema
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS tasks (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- never reused
    task_id         TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL UNIQUE,
    payload         TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status = 'queued' OR status = 'running' OR status = 'success'
                                            OR status = 'failed' OR status = 'dead'),
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      DOUBLE PRECISION NOT NULL,
    updated_at      DOUBLE PRECISION NOT NULL,
    next_attempt_at DOUBLE PRECISION,
    lease_until     DOUBLE PRECISION,
    owner           TEXT,
    output_key      TEXT,
    output_bytes    BIGINT,
    last_error      TEXT,
    error_class     TEXT,
    redrives        INTEGER NOT NULL DEFAULT 0,
    version         INTEGER NOT NULL DEFAULT 0
);
COMMENT ON TABLE tasks IS '{MARK}';
CREATE INDEX IF NOT EXISTS tasks_waiting ON tasks (id) WHERE status IN ('queued','failed');
CREATE TABLE IF NOT EXISTS dead_letters (
    idempotency_key TEXT    PRIMARY KEY,
    task_id         TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    error_class     TEXT    NOT NULL,
    last_error      TEXT    NOT NULL,
    created_at      DOUBLE PRECISION NOT NULL,
    dead_at         DOUBLE PRECISION NOT NULL
);
"""
PG_SQL = dialect(SQL, placeholder="%s", lock=" FOR UPDATE SKIP LOCKED")
PG_SQL["insert"] += " RETURNING id"  # psycopg has no lastrowid; the row comes back with the reply anyway
# Producers enqueue one batch at a time: two batches inserting the same keys in another order would
# each wait for the other's uncommitted rows (a deadlock, one batch refused). File order is kept.
PG_SQL["serialise_enqueue"] = f"SELECT pg_advisory_xact_lock({0x54516571})"


_SCHEME = re.compile(r"\s*postgres(?:ql)?:", re.IGNORECASE)


def is_url(db: str) -> bool:
    """Whether ``db`` names a PostgreSQL database rather than a SQLite file: anything that starts as a
    ``postgresql:`` or ``postgres:`` URL does, written well or not (``PostgreSQL://``, a missing
    ``//``): :func:`connect` refuses a malformed one, where a SQLite file would have been made."""
    return bool(_SCHEME.match(db))


def connect(url: str, *, connect_timeout_s: float = 10.0) -> Any:
    """A psycopg connection (autocommit) to the UTF-8 database at ``url``.

    Raises ``ConfigError`` for a URL not written ``postgresql://...`` (or ``postgres://...``), and
    ``psycopg.Error`` naming the database, never its password or any other secret of the URL
    (libpq's own messages may quote them: see :func:`scrub`), if it cannot be reached or does not
    use UTF-8 (the queue's texts are Unicode: SQL_ASCII hands back bytes, LATIN1 refuses most keys).
    """
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"{redact(url)!r} is not a PostgreSQL URL: write postgresql://user:password@host/database")
    psycopg = driver()
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=connect_timeout_s)
    except psycopg.Error as exc:
        raise type(exc)(f"database {redact(url)}: {scrub(str(exc), url)}") from None
    encoding = conn.info.parameter_status("server_encoding")
    if encoding != "UTF8":
        conn.close()
        raise psycopg.DatabaseError(f"database {redact(url)} uses the encoding {encoding}; the task queue needs "
                                    f"UTF8 (CREATE DATABASE ... ENCODING 'UTF8')")
    return conn


def _secrets(url: str) -> list[str]:
    """What of ``url`` must never be printed: its password (as written and decoded, and every piece of
    it between ``@`` signs, which libpq may split at), and the values of ``password`` and
    ``sslpassword`` parameters."""
    found = []
    rest = url.partition("://")[2]
    userinfo = rest[:rest.rfind("@")] if "@" in rest else ""
    if ":" in userinfo:
        secret = userinfo.partition(":")[2]
        found += [secret, *secret.split("@")]
    for item in url.partition("?")[2].split("&"):
        name, eq, value = item.partition("=")
        if eq and unquote(name).strip().lower() in _SECRET_PARAMETERS:
            found.append(value)
    found += [unquote(text) for text in found]
    return sorted({text for text in found if len(text) >= 3}, key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """``text`` (a driver's message about ``url``) with every secret of ``url`` replaced by ``***``."""
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return text


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs: ``user:***@host`` and ``password=***`` in
    the query; everything else as written.

    Never raises. A URL that cannot be parsed (``[::1`` unclosed), or whose ``@`` is not in the part
    parsed as the host (a password holding ``/``, ``?`` or ``#``), is masked as text instead: from the
    first ``:`` after the user name to the last ``@``.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    after = url.partition("://")[2]
    if parts is None or after.rfind("@") >= len(parts.netloc):  # an "@" past the host: a password with "/?#"
        head, mark, query = re.sub(r"^([^:/?#]*://[^:/?#@\[\]]*):.*@", r"\1:***@", url, flags=re.S).partition("?")
        return head + mark + _mask_password_parameter(query)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username}:***@{netloc.rpartition('@')[2]}"
    query = _mask_password_parameter(parts.query)
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    redacted = urlunsplit(parts._replace(netloc=netloc, query=query))
    head = url.partition("://")[0]  # the scheme as written ("PostgreSQL"), which urlsplit lowercases
    return head + redacted[redacted.find("://"):] if "://" in redacted else redacted


def _mask_password_parameter(query: str) -> str:
    """``query`` with the value of every ``password=`` or ``sslpassword=`` parameter (its name
    percent-decoded, as libpq reads it) replaced by ``***``."""
    items = query.split("&")
    for i, item in enumerate(items):
        name, eq, _value = item.partition("=")
        if eq and unquote(name).strip().lower() in _SECRET_PARAMETERS:
            items[i] = f"{name}=***"
    return "&".join(items)


_SECRET_PARAMETERS = ("password", "sslpassword")


def driver():
    """The psycopg module; ConfigError saying how to install it when it is missing."""
    try:
        import psycopg
    except ImportError:
        raise ConfigError('a postgresql:// database needs the psycopg driver: pip install "psycopg[binary]"') \
            from None
    return psycopg


_DEAD_LETTER_COLUMNS = frozenset({"idempotency_key", "task_id", "payload", "attempts", "error_class", "last_error",
                                  "created_at", "dead_at"})


def _schema_complete(conn: Any, url: str) -> bool:
    """Whether the queue's tables and index are all there, as the search path finds them; refuse,
    before anything is created, a ``tasks`` table that is someone else's (its comment is not ours)
    or a ``dead_letters`` table without the queue's columns."""
    comment, tasks, dead_letters, index = conn.execute(
        "SELECT obj_description(to_regclass('tasks'), 'pg_class'), to_regclass('tasks') IS NOT NULL,"
        " to_regclass('dead_letters') IS NOT NULL, to_regclass('tasks_waiting') IS NOT NULL").fetchone()
    if tasks and comment != MARK:
        raise driver().DatabaseError(f"database {redact(url)} has a table 'tasks' that is not this queue's "
                                     f"(comment {comment!r}); refusing to modify it")
    if dead_letters:
        columns = {name for (name,) in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass('dead_letters') AND attnum > 0"
            " AND NOT attisdropped")}
        if not _DEAD_LETTER_COLUMNS <= columns:
            raise driver().DatabaseError(f"database {redact(url)} has a table 'dead_letters' that is not this "
                                         f"queue's (columns {', '.join(sorted(columns))}); refusing to use it")
    return tasks and dead_letters and index


class PostgresStore(StateMachine):
    """The task store in PostgreSQL (see :mod:`taskqueue.store.contract` for the contract).

    Raises ``psycopg.Error`` naming the database if it cannot be reached or
    its schema created; :class:`ConfigError` if psycopg is not installed.
    """

    sql = PG_SQL

    def __init__(self, url: str, *, lease_s: float = 300.0, clock: Callable[[], float] = time.time,
                 max_batch: int = 512, connect_timeout_s: float = 10.0) -> None:
        psycopg = driver()
        self.url = url
        self._connect_timeout = connect_timeout_s
        self._read_lock = threading.Lock()
        self._read_conn: Any = None
        conn = self._connect(psycopg)
        try:
            # The schema is created only where a part is missing: its DDL takes a lock on the tasks table
            # that stalls every worker's writes, and needs rights a worker's role may not have. Created
            # where the search path finds its tables: one queue, whatever schema it is in.
            if not _schema_complete(conn, url):
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                    if not _schema_complete(conn, url):
                        # Beside an existing tasks table (an index added since), not in the first schema
                        # of the search path, where CREATE ... IF NOT EXISTS would start a second queue.
                        conn.execute("SELECT set_config('search_path', quote_ident(n.nspname), true)"
                                     " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                                     " WHERE c.oid = to_regclass('tasks')")
                        conn.execute(SCHEMA)
        except BaseException:
            conn.close()
            raise
        super().__init__(location=redact(url), lease_s=lease_s, clock=clock)
        self.committer = Committer(conn, begin=lambda c: c.execute("BEGIN"), max_batch=max_batch,
                                   autocommit_max=0, notify=lambda c: c.execute(f"NOTIFY {CHANNEL}"),
                                   error_aborts_transaction=True,
                                   retry_alone=lambda exc: isinstance(exc, (psycopg.errors.DeadlockDetected,
                                                                            psycopg.errors.SerializationFailure)))

    def _insert(self, conn: Any, values: tuple) -> int | None:
        inserted = conn.execute(self.sql["insert"], values).fetchone()
        return None if inserted is None else inserted[0]

    def _connect(self, psycopg=None):
        return connect(self.url, connect_timeout_s=self._connect_timeout)

    @contextlib.contextmanager
    def reader(self) -> Iterator[Any]:
        """This store's read connection, opened at its first read and kept (a feeder reads every
        second or so: a connection each time cost a backend start each, and near the server's or the
        role's connection limit one refused made an idle worker stop). One thread at a time; a
        connection that failed is dropped, and the next read opens another."""
        with self._read_lock:
            if self._read_conn is None:
                self._read_conn = self._connect()
            try:
                yield self._read_conn
            except driver().OperationalError:
                self._read_conn.close()
                self._read_conn = None
                raise

    def close(self) -> None:
        try:
            super().close()
        finally:
            with self._read_lock:
                if self._read_conn is not None:
                    self._read_conn.close()
                    self._read_conn = None

    def listener(self, on_notify: Callable[[], None]) -> "Listener":
        return Listener(self.url, on_notify, self._connect_timeout)


class PostgresReader(Reads):
    """Reads of an existing queue database (``status``, ``dlq list``); creates nothing.

    Each statement waits at most ``lock_timeout_ms`` for a lock (``TQ_BUSY_TIMEOUT_MS``, as SQLite's
    busy timeout; PostgreSQL's ``lock_timeout``): a table another session holds locked (a migration,
    ``VACUUM FULL``) makes a read fail with a message that says so, never hang. A read that is only
    slow (a big table) is not cut short.
    """

    sql = PG_SQL

    def __init__(self, url: str, *, connect_timeout_s: float = 10.0, lock_timeout_ms: int = 10000) -> None:
        driver()
        self.url = url
        self.location = redact(url)
        self._connect_timeout = connect_timeout_s
        self._lock_timeout_ms = int(lock_timeout_ms)
        with self.reader() as conn:
            found = conn.execute("SELECT obj_description(to_regclass('tasks'), 'pg_class')").fetchone()[0]
        if found != MARK:
            raise driver().DatabaseError(f"database {self.location} holds no task queue (no tasks table of ours)")

    @contextlib.contextmanager
    def reader(self) -> Iterator[Any]:
        psycopg = driver()
        conn = connect(self.url, connect_timeout_s=self._connect_timeout)
        try:
            conn.execute(f"SET lock_timeout = {self._lock_timeout_ms}")
            yield conn
        except psycopg.errors.LockNotAvailable as exc:
            raise psycopg.errors.LockNotAvailable(
                f"database {self.location}: another session holds its tables locked; no lock within "
                f"{self._lock_timeout_ms} ms (TQ_BUSY_TIMEOUT_MS) ({text_of(exc)})") from exc
        finally:
            conn.close()


class Listener:
    """Calls ``on_notify()`` each time another process NOTIFYs that rows may be claimable.

    Its own connection LISTENing on :data:`CHANNEL`, read by a daemon thread
    that blocks on the socket (no polling). :meth:`close` closes the
    connection, which ends the thread.
    """

    def __init__(self, url: str, on_notify: Callable[[], None], connect_timeout_s: float) -> None:
        self._conn = connect(url, connect_timeout_s=connect_timeout_s)
        try:
            self._conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            self._conn.close()
            raise
        self._on_notify = on_notify
        self._closed = False
        self.failed = False  # the connection died: whoever waits on us must look on its own again
        self._thread = threading.Thread(target=self._run, name="tq-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for _notification in self._conn.notifies():
                self._on_notify()
        except Exception:  # noqa: BLE001 - closed by close(), or the server went away
            if not self._closed:
                self.failed = True
                self._on_notify()  # the feeder looks, and from now on waits with a backoff

    def close(self) -> None:
        self._closed = True
        self._conn.close()
        self._thread.join()
