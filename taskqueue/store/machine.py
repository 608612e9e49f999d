"""The task state machine as store operations: the same SQL on SQLite and PostgreSQL.

:class:`StateMachine` implements the :class:`~taskqueue.store.contract.TaskStore`
contract on top of a :class:`~taskqueue.store.committer.Committer`; a backend
(``sqlite.py``, ``postgres.py``) supplies the connection, the schema, its
read connections and its dialect: the statements below are written with
``?`` placeholders and a ``{lock}`` where a row-locking clause goes
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL, nothing on SQLite, whose writer
holds the whole database); :func:`dialect` rewrites them once per backend.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator

from ..errors import StaleVersion, WorkerCrashed
from ..task import Task, TaskStatus
from . import owners
from .committer import Committer, Op
from .contract import COLUMNS, OPEN, Attempt, Claim, Done, Recovered, Row, error_text, task_payload

_OPEN_SQL = "('queued', 'running', 'failed')"

SQL = {
    "insert": "INSERT INTO tasks (task_id, idempotency_key, payload, status, created_at, updated_at, owner,"
              " lease_until) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?) ON CONFLICT (idempotency_key) DO NOTHING"
              " RETURNING id",
    "by_key": f"SELECT {COLUMNS} FROM tasks WHERE idempotency_key = ?",
    "by_id": f"SELECT {COLUMNS} FROM tasks WHERE id = ?",
    "take_over": "UPDATE tasks SET status = ?, owner = ?, lease_until = ?, updated_at = ?, version = version + 1"
                 f" WHERE id = ? AND version = ? RETURNING {COLUMNS}",
    "start": "UPDATE tasks SET status = 'running', attempts = attempts + 1, lease_until = ?, owner = ?,"
             " next_attempt_at = NULL, updated_at = ?, version = version + 1"
             " WHERE id = ? AND version = ? AND status IN ('queued', 'failed') RETURNING version, attempts",
    "finish": "UPDATE tasks SET status = ?, output_key = ?, output_bytes = ?, last_error = ?, error_class = ?,"
              " next_attempt_at = ?, lease_until = ?, updated_at = ?, version = version + 1"
              " WHERE id = ? AND version = ? AND status = 'running'",
    "dead": "UPDATE tasks SET status = 'dead', last_error = ?, error_class = ?, lease_until = NULL,"
            " next_attempt_at = NULL, updated_at = ?, version = version + 1"
            " WHERE id = ? AND version = ? AND status = ?",
    "dead_letter": "INSERT INTO dead_letters (idempotency_key, task_id, payload, attempts, error_class,"
                   " last_error, created_at, dead_at)"
                   " SELECT idempotency_key, task_id, payload, attempts, error_class, last_error, created_at, ?"
                   " FROM tasks WHERE id = ?"
                   " ON CONFLICT (idempotency_key) DO UPDATE SET attempts = excluded.attempts,"
                   " error_class = excluded.error_class, last_error = excluded.last_error,"
                   " dead_at = excluded.dead_at",
    "invalid": "INSERT INTO tasks (task_id, idempotency_key, payload, status, created_at, updated_at,"
               " last_error, error_class) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)"
               " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
    "release": "DELETE FROM tasks WHERE id = ? AND version = ? AND status = 'queued'",
    "open_rows": f"SELECT {COLUMNS} FROM tasks WHERE status IN {_OPEN_SQL} ORDER BY id",
    "dead_keys": "SELECT idempotency_key FROM tasks WHERE status = 'dead' ORDER BY id",
    "redrive": "UPDATE tasks SET status = 'queued', attempts = 0, owner = NULL, lease_until = NULL,"
               " next_attempt_at = NULL, redrives = redrives + 1, updated_at = ?, version = version + 1"
               " WHERE idempotency_key = ? AND status = 'dead'",
    "undead": "DELETE FROM dead_letters WHERE idempotency_key = ?",
    "renew": f"UPDATE tasks SET lease_until = ? WHERE owner = ? AND status IN {_OPEN_SQL}",
    "enqueue": "INSERT INTO tasks (task_id, idempotency_key, payload, status, created_at, updated_at)"
               " VALUES (?, ?, ?, 'queued', ?, ?) ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
    "expired": f"SELECT {COLUMNS} FROM tasks WHERE status = 'running' AND lease_until < ? ORDER BY id LIMIT ?"
               "{lock}",
    "claim_due": "UPDATE tasks SET owner = ?, lease_until = ?, updated_at = ?, version = version + 1"
                 " WHERE id IN (SELECT id FROM tasks WHERE status IN ('queued', 'failed')"
                 " AND (next_attempt_at IS NULL OR next_attempt_at <= ?) AND (owner IS NULL OR lease_until < ?)"
                 " ORDER BY id LIMIT ?{lock})"
                 f" RETURNING {COLUMNS}",
    "disown": "UPDATE tasks SET owner = NULL, lease_until = NULL, updated_at = ?, version = version + 1"
              " WHERE owner = ? AND status IN ('queued', 'failed')",
    "open_count": f"SELECT COUNT(*) FROM tasks WHERE status IN {_OPEN_SQL}",
    "wake_at": "SELECT MIN(CASE WHEN status = 'running' OR (owner IS NOT NULL AND lease_until >= ?)"
               " THEN lease_until ELSE next_attempt_at END)"
               f" FROM tasks WHERE status IN {_OPEN_SQL} AND (owner IS NULL OR owner <> ?)",
    "all_rows": f"SELECT {COLUMNS} FROM tasks ORDER BY id",
    "counts": "SELECT status, COUNT(*) FROM tasks GROUP BY status",
    "recent_failures": "SELECT idempotency_key, task_id, status, attempts, error_class, last_error, updated_at"
                       " FROM tasks WHERE status IN ('failed', 'dead') ORDER BY updated_at DESC LIMIT ?",
    "dead_letters": "SELECT idempotency_key, task_id, attempts, error_class, last_error, created_at, dead_at"
                    " FROM dead_letters ORDER BY dead_at",
}


def dialect(statements: dict[str, str], *, placeholder: str = "?", lock: str = "") -> dict[str, str]:
    """``statements`` with every ``?`` written as ``placeholder`` (none occurs inside a literal) and
    every ``{lock}`` as ``lock``."""
    return {name: text.replace("?", placeholder).replace("{lock}", lock) for name, text in statements.items()}


class Reads:
    """The reads ``status`` and ``dlq`` need, on connections from :meth:`reader` (never the write one)."""

    sql = dialect(SQL)

    def reader(self) -> contextlib.AbstractContextManager:
        """A context manager yielding a read connection."""
        raise NotImplementedError

    def _select(self, conn: Any, statement: str, value: Any) -> Row | None:
        values = conn.execute(self.sql[statement], (value,)).fetchone()
        return None if values is None else Row.from_db(values)

    def get(self, idempotency_key: str) -> Row | None:
        with self.reader() as conn:
            return self._select(conn, "by_key", idempotency_key)

    def rows(self) -> list[Row]:
        with self.reader() as conn:
            return [Row.from_db(v) for v in conn.execute(self.sql["all_rows"]).fetchall()]

    def open_count(self) -> int:
        """Rows some process still has to finish (queued, running or waiting for a retry)."""
        with self.reader() as conn:
            return conn.execute(self.sql["open_count"]).fetchone()[0]

    def listener(self, on_notify: Callable[[], None]):
        """Call ``on_notify()`` whenever another process says rows may be claimable; returns something
        to ``close()``, or None where processes cannot notify each other (SQLite)."""
        return None

    def wake_at(self, now: float, me: str) -> float | None:
        """The earliest time a row not held by ``me`` may become claimable: a retry falls due, or
        another owner's lease runs out. None if no such row."""
        with self.reader() as conn:
            return conn.execute(self.sql["wake_at"], (now, me)).fetchone()[0]

    def counts(self) -> dict[str, int]:
        counts = {status.value: 0 for status in TaskStatus}
        with self.reader() as conn:
            for status, n in conn.execute(self.sql["counts"]).fetchall():
                counts[status] = n
        return counts

    def recent_failures(self, limit: int = 10) -> list[dict]:
        with self.reader() as conn:
            return _dicts(conn.execute(self.sql["recent_failures"], (limit,)))

    def dead_letters(self) -> list[dict]:
        with self.reader() as conn:
            return _dicts(conn.execute(self.sql["dead_letters"]))



class StateMachine(Reads):
    """The transitions of :mod:`taskqueue.store.contract`, as ops over one committer.

    Subclasses set :attr:`sql` (the statements in their placeholder style),
    create ``self.committer`` and implement :meth:`reader`.
    """

    committer: Committer

    def __init__(self, *, location: str, lease_s: float, clock: Callable[[], float]) -> None:
        if not lease_s > 0:
            raise ValueError(f"lease_s must be greater than 0, got {lease_s!r}")
        self.location = location
        self.lease_s = lease_s
        self._clock = clock
        self.owner = owners.new_token()

    # -- committing ------------------------------------------------------------------------

    def commit(self, op: Op, along: tuple[Op, ...] | list[Op] = ()) -> Any:
        return self.committer.commit(op, along)

    def post(self, *ops: Op) -> None:
        self.committer.post(*ops)

    def flush(self) -> None:
        self.committer.flush()

    def close(self) -> None:
        try:
            self.committer.close()
        finally:
            owners.closed(self.owner)

    # -- ops ------------------------------------------------------------------------------------

    def claim(self, task: Task, max_attempts: int) -> Op:
        # The payload is serialised here, in the caller's thread, not while holding the connection.
        return Op(self._claim, (task, task_payload(task), max_attempts))

    def start(self, row_id: int, version: int) -> Op:
        return Op(self._start, (row_id, version))

    def succeed(self, row_id: int, version: int, output_key: str, output_bytes: int,
                done: Done | None = None) -> Op:
        return Op(self._finish, (row_id, version, "success", output_key, output_bytes, None, None, None),
                  done=done, wakes=True)

    def fail(self, row_id: int, version: int, error: BaseException, next_attempt_at: float,
             done: Done | None = None) -> Op:
        return Op(self._finish, (row_id, version, "failed", None, None, error_text(error),
                                 type(error).__name__, next_attempt_at), done=done)

    def dead_letter(self, row_id: int, version: int, error: BaseException, done: Done | None = None) -> Op:
        return Op(self._dead, (row_id, version, type(error).__name__, error_text(error), "running"),
                  atomic=False, done=done, wakes=True)

    def reject(self, row_id: int, version: int, error: BaseException) -> Op:
        """A waiting row that cannot run at all (its stored task fails validation) -> dead, never started."""
        return Op(self._reject, (row_id, version, type(error).__name__, error_text(error)), atomic=False)

    def release(self, row_id: int, version: int, done: Done | None = None) -> Op:
        return Op(self._release, (row_id, version), done=done)

    def record_invalid(self, task_id: str, idempotency_key: str, payload: str, error: BaseException) -> Op:
        return Op(self._record_invalid, (task_id, idempotency_key, payload, error), atomic=False)

    def recover(self, max_attempts: int, unowned: bool = True) -> Op:
        return Op(self._recover, (max_attempts, unowned), atomic=False)

    def redrive(self, keys: Iterable[str] | None = None) -> Op:
        return Op(self._redrive, (None if keys is None else list(keys),), atomic=False, wakes=True)

    def renew(self, done: Done | None = None) -> Op:
        return Op(self._renew, done=done)

    def enqueue(self, tasks: list[Task]) -> Op:
        """Insert ``tasks`` as ``queued`` rows nobody owns yet (a producer's batch) -> keys added.

        One operation: all of the batch or none of it. Keys already present are left alone.
        """
        return Op(self._enqueue, ([(t.id, t.idempotency_key, task_payload(t)) for t in tasks],), atomic=False,
                  wakes=True)

    def claim_due(self, limit: int, max_attempts: int) -> Op:
        """Take up to ``limit`` rows a worker may run now -> :class:`Recovered`.

        Waiting rows that are due and that nobody holds (no owner, or an
        expired lease), and running rows whose lease expired (their worker
        died or hung: the attempt stays counted, a last one is dead-lettered
        with :class:`WorkerCrashed`). Rows another process is claiming at the
        same moment are skipped, never waited for (PostgreSQL: ``SKIP LOCKED``).
        """
        return Op(self._claim_due, (limit, max_attempts), atomic=False)

    def disown(self) -> Op:
        """Give up the waiting rows this store holds (shutdown): others may take them at once -> rows."""
        return Op(self._disown, wakes=True)

    # -- what the ops run (on the write connection, in whichever thread commits) ----------------

    def _claim(self, conn: Any, task: Task, payload: str, max_attempts: int) -> Claim:
        key = task.idempotency_key
        for _ in range(5):  # another process may change the row between our statements: look again
            now = self._clock()
            lease = now + self.lease_s
            inserted = conn.execute(self.sql["insert"], (task.id, key, payload, now, now, self.owner,
                                                         lease)).fetchone()
            if inserted is not None:  # the row is what we wrote: build it rather than read it back
                return Claim(Row(inserted[0], task.id, key, payload, TaskStatus.QUEUED, 0, now, now, None, lease,
                                 self.owner, None, None, None, None, 0, 0), runnable=True, inserted=True)
            row = self._select(conn, "by_key", key)
            if row is None:  # released by its owner in between: offer it again
                continue
            if not self._orphaned(row, now):
                return Claim(row, runnable=False)
            try:
                return self._take_over(conn, row, now, max_attempts)
            except StaleVersion:
                continue
        raise StaleVersion(self._select(conn, "by_key", key))

    def _orphaned(self, row: Row, now: float) -> bool:
        """An open row nobody runs: its owner died, or it is ours but not in flight here.

        The caller checks its in-flight table first, so a ``queued``/``failed``
        row of ours that reaches a claim was cancelled or abandoned; a
        ``running`` row of ours is never taken (a worker of ours holds it).
        """
        if row.status.value not in OPEN:
            return False
        if row.owner == self.owner:
            return row.status is not TaskStatus.RUNNING
        return not owners.alive(row.owner, row.lease_until, now, self.owner)

    def _take_over(self, conn: Any, row: Row, now: float, max_attempts: int) -> Claim:
        """Make an orphaned row ours. A ``running`` one had its attempt counted when it started: if
        that was its last, it is dead-lettered (:class:`WorkerCrashed`) instead of running again."""
        if row.status is TaskStatus.RUNNING and row.attempts >= max_attempts:
            error = WorkerCrashed(f"attempt {row.attempts} of {max_attempts} never finished: its process "
                                  f"({row.owner}) died or its lease expired")
            with _savepoint(conn):
                self._dead(conn, row.id, row.version, type(error).__name__, str(error), "running")
            return Claim(self._select(conn, "by_id", row.id), runnable=False)
        status = "failed" if row.status is TaskStatus.FAILED else "queued"
        values = conn.execute(self.sql["take_over"], (status, self.owner, now + self.lease_s, now, row.id,
                                                      row.version)).fetchone()
        if values is None:
            raise StaleVersion(self._select(conn, "by_id", row.id))
        return Claim(Row.from_db(values), runnable=True)

    def _start(self, conn: Any, row_id: int, version: int) -> Attempt:
        now = self._clock()
        values = conn.execute(self.sql["start"], (now + self.lease_s, self.owner, now, row_id, version)).fetchone()
        if values is None:
            raise StaleVersion(self._select(conn, "by_id", row_id))
        return Attempt(*values)

    def _finish(self, conn: Any, row_id: int, version: int, status: str, output_key: str | None,
                output_bytes: int | None, message: str | None, error_class: str | None,
                next_attempt_at: float | None) -> int:
        now = self._clock()
        lease = now + self.lease_s if status == "failed" else None  # a retry pending stays ours
        self._one(conn, conn.execute(self.sql["finish"], (status, output_key, output_bytes, message, error_class,
                                                          next_attempt_at, lease, now, row_id, version)), row_id)
        return version + 1

    def _dead(self, conn: Any, row_id: int, version: int, error_class: str, message: str,
              from_status: str) -> int:
        now = self._clock()
        self._one(conn, conn.execute(self.sql["dead"], (message, error_class, now, row_id, version, from_status)),
                  row_id)
        conn.execute(self.sql["dead_letter"], (now, row_id))
        return version + 1

    def _release(self, conn: Any, row_id: int, version: int) -> None:
        self._one(conn, conn.execute(self.sql["release"], (row_id, version)), row_id)

    def _record_invalid(self, conn: Any, task_id: str, key: str, payload: str, error: BaseException) -> bool:
        now = self._clock()
        values = conn.execute(self.sql["invalid"], (task_id, key, payload, now, now, error_text(error),
                                                    type(error).__name__)).fetchone()
        if values is None:
            return False
        self._dead(conn, values[0], 0, type(error).__name__, error_text(error), "queued")
        return True

    def _recover(self, conn: Any, max_attempts: int, unowned: bool) -> Recovered:
        now = self._clock()
        runnable, dead = [], []
        for values in conn.execute(self.sql["open_rows"]).fetchall():
            row = Row.from_db(values)
            if row.owner == self.owner or not self._orphaned(row, now) or (row.owner is None and not unowned):
                continue  # ours (in flight here), a live owner's, or one nobody has held (left to claim_due)
            claim = self._take_over(conn, row, now, max_attempts)
            (runnable if claim.runnable else dead).append(claim.row)
        return Recovered(runnable, dead)

    def _redrive(self, conn: Any, keys: list[str] | None) -> list[str]:
        if keys is None:
            keys = [key for (key,) in conn.execute(self.sql["dead_keys"]).fetchall()]
        done = []
        for key in keys:
            if conn.execute(self.sql["redrive"], (self._clock(), key)).rowcount:
                conn.execute(self.sql["undead"], (key,))
                done.append(key)
        return done

    def _renew(self, conn: Any) -> int:
        return conn.execute(self.sql["renew"], (self._clock() + self.lease_s, self.owner)).rowcount

    def _enqueue(self, conn: Any, items: list[tuple[str, str, str]]) -> list[str]:
        now = self._clock()
        return [key for task_id, key, payload in items
                if conn.execute(self.sql["enqueue"], (task_id, key, payload, now, now)).fetchone() is not None]

    def _claim_due(self, conn: Any, limit: int, max_attempts: int) -> Recovered:
        now = self._clock()
        runnable, dead = [], []
        for values in conn.execute(self.sql["expired"], (now, limit)).fetchall():
            claim = self._take_over(conn, Row.from_db(values), now, max_attempts)
            (runnable if claim.runnable else dead).append(claim.row)
        if len(runnable) < limit:
            runnable += [Row.from_db(v) for v in conn.execute(
                self.sql["claim_due"], (self.owner, now + self.lease_s, now, now, now,
                                        limit - len(runnable))).fetchall()]
        return Recovered(runnable, dead)

    def _disown(self, conn: Any) -> int:
        return conn.execute(self.sql["disown"], (self._clock(), self.owner)).rowcount

    def _reject(self, conn: Any, row_id: int, version: int, error_class: str, message: str) -> int:
        row = self._select(conn, "by_id", row_id)
        if row is None or row.version != version:
            raise StaleVersion(row)
        return self._dead(conn, row_id, version, error_class, message, row.status.value)

    def _one(self, conn: Any, cursor: Any, row_id: int) -> None:
        if cursor.rowcount != 1:
            raise StaleVersion(self._select(conn, "by_id", row_id))

def _dicts(cursor: Any) -> list[dict]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, values)) for values in cursor.fetchall()]


@contextlib.contextmanager
def _savepoint(conn: Any) -> Iterator[None]:
    """Make several statements atomic inside whatever transaction is open (or as one of their own)."""
    conn.execute("SAVEPOINT take_over")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK TO take_over")
        conn.execute("RELEASE take_over")
        raise
    conn.execute("RELEASE take_over")
