"""The task state machine as store operations: the same SQL on SQLite and PostgreSQL.

:class:`StateMachine` implements the :class:`~taskqueue.store.contract.TaskStore`
contract on top of a :class:`~taskqueue.store.committer.Committer`; a backend
(``sqlite.py``, ``postgres.py``) supplies the connection, the schema, its
read connections and its dialect of :mod:`.statements`.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Callable, Iterable, Iterator

from ..errors import StaleVersion, WorkerCrashed
from ..task import Task, TaskStatus
from . import ledger as ledgers
from . import owners
from .committer import Committer, Op
from .contract import OPEN, Attempt, Claim, Done, Recovered, Row, error_text, mendable, task_payload
from .reads import Reads


class StateMachine(Reads):
    """The transitions of :mod:`taskqueue.store.contract`, as ops over one committer.

    Subclasses set :attr:`sql` (the statements in their placeholder style),
    create ``self.committer`` and implement :meth:`reader`.
    """

    committer: Committer
    ledger: ledgers.Ledger | None = None  # this process's start ledger (SQLite; see ledger.py)
    _ledgers: str | None = None  # the directory of every process's ledger, where there are ledgers

    def __init__(self, *, location: str, lease_s: float, clock: Callable[[], float]) -> None:
        if not lease_s > 0:
            raise ValueError(f"lease_s must be greater than 0, got {lease_s!r}")
        self.location = location
        self.lease_s = lease_s
        self._clock = clock
        self.owner = owners.new_token()

    # -- committing ------------------------------------------------------------------------

    def listener(self, on_notify: Callable[[], None]):
        """Call ``on_notify()`` whenever another process says rows may be claimable; returns something
        with ``close()`` and ``failed`` (its connection died), or None where processes cannot notify
        each other (SQLite)."""
        return None

    def commit(self, op: Op, along: tuple[Op, ...] | list[Op] = (), *, urgent: bool = False) -> Any:
        return self.committer.commit(op, along, urgent=urgent)

    def post(self, *ops: Op) -> None:
        self.committer.post(*ops)

    def flush(self) -> None:
        self.committer.flush()

    def close(self) -> None:
        try:
            self.committer.close()  # commits every start the ledger recorded: it may go
            if self.ledger is not None:
                self.ledger.close()
        finally:
            owners.closed(self.owner)

    # -- ops ------------------------------------------------------------------------------------

    def claim(self, task: Task, max_attempts: int) -> Op:
        # The payload is serialised here, in the caller's thread, not while holding the connection.
        return Op(self._claim, (task, task_payload(task), max_attempts))

    def start(self, row_id: int, version: int, attempts: int, done: Done | None = None) -> Op:
        return Op(self._start, (row_id, version, attempts), done=done)

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

    def let_go(self, row_id: int, version: int, done: Done | None = None) -> Op:
        return Op(self._let_go, (row_id, version), done=done, wakes=True)

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

    def give_up(self, row_id: int, version: int, begun: int | None = None, done: Done | None = None) -> Op:
        """Let go of one open row of ours at ``version`` whose outcome could not be recorded -> rows
        changed (0: it is at another version now, taken over since, or not ours).

        No owner and a lease already run out: any process (this one's feeder, another worker,
        the next ``run``) takes it over, counting the attempt it had started, as after a crash.
        ``begun``: the version at which an attempt began whose start was never committed (the
        ledger recorded it): that attempt is counted first, in the same operation, which takes
        the row from ``begun`` to ``begun + 1`` (so ``version`` is ``begun + 1`` then).
        """
        return Op(self._give_up, (row_id, version, begun), atomic=begun is None, done=done, wakes=True)

    def disown(self) -> Op:
        """Give up the waiting rows this store holds (shutdown): others may take them at once -> rows."""
        return Op(self._disown, wakes=True)

    # -- what the ops run (on the write connection, in whichever thread commits) ----------------

    def _claim(self, conn: Any, task: Task, payload: str, max_attempts: int) -> Claim:
        key = task.idempotency_key
        for _ in range(5):  # another process may change the row between our statements: look again
            now = self._clock()
            lease = now + self.lease_s
            row_id = self._insert(conn, (task.id, key, payload, now, now, self.owner, lease))
            if row_id is not None:  # the row is what we wrote: build it rather than read it back
                return Claim(Row(row_id, task.id, key, payload, TaskStatus.QUEUED, 0, now, now, None, lease,
                                 self.owner, None, None, None, None, 0, 0), runnable=True, inserted=True)
            row = self._select(conn, "by_key", key)
            if row is None:  # released by its owner in between: offer it again
                continue
            if not self._orphaned(row, now):
                return Claim(row, runnable=False)
            # Its owner had begun an attempt: the row is running now. (A replayed start is a fact of
            # its own: it may commit whatever the rest of this op does, so the op stays atomic.)
            if self._replay(conn, [row.owner], now):
                continue
            try:
                return self._take_over(conn, row, now, max_attempts)
            except StaleVersion:
                continue
        raise StaleVersion(self._select(conn, "by_key", key))

    def _insert(self, conn: Any, values: tuple) -> int | None:
        """Run ``sql["insert"]`` -> the new row's id, or None when its key is already there (per backend)."""
        raise NotImplementedError

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
            return Claim(self._select(conn, "by_id", row.id), runnable=False, dead_lettered=True)
        status = "failed" if row.status is TaskStatus.FAILED else "queued"
        values = conn.execute(self.sql["take_over"], (status, self.owner, now + self.lease_s, now, row.id,
                                                      row.version)).fetchone()
        if values is None:
            raise StaleVersion(self._select(conn, "by_id", row.id))
        return Claim(Row.from_db(values), runnable=True)

    def _start(self, conn: Any, row_id: int, version: int, attempts: int) -> Attempt:
        now = self._clock()
        self._one(conn, conn.execute(self.sql["start"], (now + self.lease_s, self.owner, now, row_id, version)),
                  row_id)
        return Attempt(version + 1, attempts + 1)  # the version check made the row the one the caller knows

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

    def _let_go(self, conn: Any, row_id: int, version: int) -> None:
        self._one(conn, conn.execute(self.sql["let_go"], (self._clock(), row_id, version, self.owner)), row_id)

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
        # Not ours (in flight here), not a live owner's, and (unless asked) not one nobody has held yet
        # (left to claim_due). Liveness is decided once: a replay changes no owner and no lease.
        orphans = [row for row in map(Row.from_db, conn.execute(self.sql["open_rows"]).fetchall())
                   if row.owner != self.owner and self._orphaned(row, now) and (row.owner is not None or unowned)]
        if self._replay(conn, {row.owner for row in orphans if row.owner}, now):  # their begun attempts
            fresh = {row.id: row for row in map(Row.from_db, conn.execute(self.sql["open_rows"]).fetchall())}
            orphans = [fresh[row.id] for row in orphans if row.id in fresh]
        for row in orphans:
            try:
                claim = self._take_over(conn, row, now, max_attempts)
            except StaleVersion:  # another process took it between the scan and here (PostgreSQL)
                continue
            (runnable if claim.runnable else dead).append(claim.row)
        return Recovered(runnable, dead)

    def _redrive(self, conn: Any, keys: list[str] | None) -> list[str]:
        if keys is None:
            keys = [key for (key,) in conn.execute(self.sql["dead_keys"]).fetchall()]
        done = []
        for key in keys:
            row = self._select(conn, "by_key", key)
            if row is None or not mendable(row):
                continue
            if conn.execute(self.sql["redrive"], (self._clock(), key)).rowcount:
                conn.execute(self.sql["undead"], (key,))
                done.append(key)
        return done

    def _renew(self, conn: Any) -> int:
        return conn.execute(self.sql["renew"], (self._clock() + self.lease_s, self.owner)).rowcount

    def _enqueue(self, conn: Any, items: list[tuple[str, str, str]]) -> list[str]:
        if "serialise_enqueue" in self.sql:
            conn.execute(self.sql["serialise_enqueue"])
        now = self._clock()
        return [key for task_id, key, payload in items
                if conn.execute(self.sql["enqueue"], (task_id, key, payload, now, now)).fetchone() is not None]

    def _claim_due(self, conn: Any, limit: int, max_attempts: int) -> Recovered:
        now = self._clock()
        runnable, dead = [], []
        # A process of this host that is gone (a worker SIGKILLed) renews no lease: its rows would wait
        # up to lease_s for their leases to run out. They run out now, and are taken below as any other.
        for (owner,) in conn.execute(self.sql["leasing_owners"], (self.owner, now)).fetchall():
            if not owners.alive(owner, None, now, self.owner):
                conn.execute(self.sql["end_lease"], (math.nextafter(now, -math.inf), owner, now))
        if self._ledgers is not None:  # waiting rows whose owner's lease lapsed: had it begun any?
            self._replay(conn, [owner for (owner,) in conn.execute(self.sql["lapsed_owners"], (self.owner, now))],
                         now)
        for values in conn.execute(self.sql["expired"], (now, self.owner, limit)).fetchall():
            claim = self._take_over(conn, Row.from_db(values), now, max_attempts)
            (runnable if claim.runnable else dead).append(claim.row)
        if len(runnable) < limit:
            # UPDATE ... RETURNING gives rows in no particular order (PostgreSQL): oldest first.
            runnable += sorted((Row.from_db(v) for v in conn.execute(
                self.sql["claim_due"], (self.owner, now + self.lease_s, now, now, now, self.owner,
                                        limit - len(runnable))).fetchall()), key=lambda row: row.id)
        return Recovered(runnable, dead)

    def _give_up(self, conn: Any, row_id: int, version: int, begun: int | None) -> int:
        now = self._clock()
        if begun is not None and not conn.execute(self.sql["replay"], (now, row_id, begun, self.owner)).rowcount:
            return 0  # not at ``begun`` any more: taken over since (and then at ``version`` too), not ours to free
        return conn.execute(self.sql["give_up"], (now, now, row_id, version, self.owner)).rowcount

    def _disown(self, conn: Any) -> int:
        return conn.execute(self.sql["disown"], (self._clock(), self.owner)).rowcount

    def _reject(self, conn: Any, row_id: int, version: int, error_class: str, message: str) -> int:
        row = self._select(conn, "by_id", row_id)
        if row is None or row.version != version:
            raise StaleVersion(row)
        return self._dead(conn, row_id, version, error_class, message, row.status.value)

    # -- the start ledgers of dead processes (see ledger.py) ----------------------------------------

    def _replay(self, conn: Any, tokens: Iterable[str], now: float) -> int:
        """Commit the starts that the dead owners ``tokens`` had begun but not committed -> rows started."""
        if self._ledgers is None:
            return 0
        return ledgers.replay(conn, self.sql["replay"], self._ledgers, [t for t in tokens if t != self.owner], now)

    def settle_ledgers(self) -> int:
        """Replay the ledger of every dead process beside this store, then delete it (after the
        commit: a replay that rolled back would find it again) -> rows started. Called when the
        store opens and on each heartbeat; a live process's ledger is left alone, and so is one
        it cannot read. Stale temporary files of ledgers never made go too."""
        started = 0
        for path, token, entries in ledgers.of_the_dead(self._ledgers, self.owner, self._clock()):
            started += self.commit(Op(ledgers.replay_entries, (self.sql["replay"], token, entries, self._clock()),
                                      atomic=False))
            with contextlib.suppress(OSError):  # gone already, or not ours to delete: replayed either way
                os.unlink(path)
        ledgers.sweep_temporary(self._ledgers)
        return started

    def _one(self, conn: Any, cursor: Any, row_id: int) -> None:
        if cursor.rowcount != 1:
            raise StaleVersion(self._select(conn, "by_id", row_id))



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
