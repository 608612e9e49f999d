"""The committer: the one owner of a store's write connection, with group commit.

A store describes each change as an :class:`Op` -- what to run, whether it is
atomic by itself, what to call once it is committed -- and hands ops to the
committer in one of two ways:

* :meth:`Committer.commit` -- the caller waits for the result. When the
  connection is idle and nothing handed over is still pending, the ops run at
  once in the caller's own thread (no thread hand-off, which under the GIL
  costs more than the SQL); otherwise they join the writer thread's next group
  commit, and the caller waits for it (a caller never overtakes the writer).
* :meth:`Committer.post` -- the caller goes on; the writer thread commits the
  ops and reports each result to its ``done`` callback.

The writer thread drains everything queued into one transaction (group
commit). Inside a transaction each non-atomic op runs under a savepoint of its
own, so one failing op rolls back its own statements and nothing else (on
PostgreSQL, where any error aborts the transaction, every op does). A
lone atomic op skips BEGIN/COMMIT (``AUTOCOMMIT_MAX``): its statement is its
own transaction, one ``sqlite3_step`` instead of three (each step releases the
GIL, the costly part under thread contention). Two or more ops share one
transaction: in WAL mode every commit writes its pages again.

Results are delivered after the commit, outside the connection lock, in the
committing thread (see :mod:`.delivery`): ``done`` callbacks must not block. A
callback that commits more work (a Future's done-callback that submits a task)
runs it right there.

A writer that wakes for a lone hand-over may *linger* before it commits it (``linger``, set by the
queue that owns the store: a few milliseconds, only while every worker has a task waiting), so that
the hand-overs arriving meanwhile share its commit. Each commit costs a wake-up of the writer and a
write of every page it changed: with tasks some milliseconds long, a writer woken for every
hand-over committed two or three ops at a time, and spent on that about as much CPU per task as
the rest of the engine together (see the README, "The commit path"). A caller that must not wait
for company (a worker that cannot go on until its start is committed) commits with
``urgent=True``: the writer never lingers for it, and one that arrives ends a linger under way.

The writer never dies silently: an error it cannot recover from (a ROLLBACK
that fails) marks the committer broken, and every op, queued or later, fails
with :class:`~taskqueue.errors.StoreBroken`.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable, NamedTuple

from ..errors import StoreBroken, StoreClosed, text_of
from ..logs import LOGGER_NAME
from .delivery import Call, Delivery, waiting

AUTOCOMMIT_MAX = 1  # a batch of this many atomic ops runs without BEGIN/COMMIT
_STOP = object()
_log = logging.getLogger(LOGGER_NAME)


class Op(NamedTuple):
    """One store operation, as the committer needs to know it.

    ``fn(conn, *args)`` runs its statements on the write connection and
    returns the op's result (or raises). ``atomic`` says the op writes at
    most one statement, so it needs no savepoint and may run in autocommit.
    ``done(result, error)``, if set, is called once the op is committed (or
    has failed), in the committing thread. ``wakes``: committing it may give
    waiting workers something to do (the committer's ``notify`` runs once in
    its transaction).
    """

    fn: Callable[..., Any]
    args: tuple = ()
    atomic: bool = True
    done: Callable[[Any, BaseException | None], None] | None = None
    wakes: bool = False


class Committer:
    """Serialises every write to ``conn``; commits directly when idle, in groups when busy.

    ``begin(conn)`` opens a write transaction (``BEGIN IMMEDIATE`` on SQLite).
    ``conn`` must be in autocommit mode and usable from any thread; the
    committer alone uses it, under its lock. ``autocommit_max``: batches of
    at most this many atomic ops run without BEGIN/COMMIT (0: never).
    ``notify(conn)`` runs once in a transaction holding an op that ``wakes``
    (PostgreSQL: NOTIFY). ``error_aborts_transaction`` (PostgreSQL, where any
    error aborts the whole transaction): every op of a shared transaction runs
    under a savepoint, so one failing op cannot take its neighbours with it.
    ``retry_alone(error)``: an op that failed with such an error (PostgreSQL: a
    deadlock between two transactions taking the same keys in another order)
    runs again, once, alone, after its transaction is over, when it no longer
    holds what the other one waits for.
    Thread-safe.
    """

    def __init__(self, conn: Any, *, begin: Callable[[Any], None], max_batch: int = 512,
                 autocommit_max: int = AUTOCOMMIT_MAX, notify: Callable[[Any], None] | None = None,
                 error_aborts_transaction: bool = False,
                 retry_alone: Callable[[BaseException], bool] | None = None, name: str = "tq-store-writer") -> None:
        self._conn = conn
        self._begin = begin
        self._autocommit_max = autocommit_max
        self._notify = notify
        self._isolate_every_op = error_aborts_transaction
        self._retry_alone = retry_alone
        self._max_batch = max_batch
        self._conn_lock = threading.Lock()  # held by whichever thread is running ops on the connection
        self._state = threading.Lock()  # guards _closed, _pending and the order of hand-overs
        self._closed = False
        self._conn_closed = False  # under _conn_lock: close() has closed the connection
        self._pending = 0  # hand-overs not yet executed and reported (queued, drained, or delivering)
        self._broken: BaseException | None = None
        self._queued: queue.SimpleQueue = queue.SimpleQueue()  # Calls for the writer, then _STOP
        self._local = Delivery()
        self.commits = 0  # transactions (an autocommit statement counts as one)
        self.operations = 0
        # Seconds the writer may wait, on waking for a lone hand-over, for others to share its commit
        # (0: commit at once). Read in the writer thread each time; the queue owning the store sets it.
        self.linger: Callable[[], float] | None = None
        self._hurried = threading.Lock()  # held unless an urgent caller came: a lingering writer waits on it
        self._hurried.acquire()
        self._writer = threading.Thread(target=self._run, name=name, daemon=True)
        self._writer.start()

    # -- handing over ------------------------------------------------------------------

    def commit(self, op: Op, along: tuple[Op, ...] | list[Op] = (), *, urgent: bool = False) -> Any:
        """Commit ``along`` and ``op`` in one transaction; return ``op``'s result or raise its error.

        ``along`` are companions reported through their own ``done`` (a
        worker hands over the previous task's outcome with its next claim).
        ``urgent``: the caller must not wait for company (see :attr:`linger`): a writer lingering
        commits at once. Blocks until committed. Raises :class:`StoreClosed` after :meth:`close`. In the main
        thread, a ``KeyboardInterrupt`` (or ``SystemExit``) raised by a ``done`` callback of
        ``along`` is raised here once every op has been told: the ops are committed by then.
        """
        ops = [*along, op]
        in_callback = self._local.delivering
        with self._state:
            if self._closed:
                raise StoreClosed("the task store is closed")
            # Direct only when nothing handed over is still waiting: a caller never overtakes the
            # writer's batch (else, under contention, the writer would starve for the connection).
            idle = not in_callback and self._pending == 0 and self._conn_lock.acquire(blocking=False)
            if not (idle or in_callback):  # busy: join the writer's next group commit
                call = waiting(ops, urgent)
                self._pending += 1
                self._queued.put(call)
                if urgent:  # after the put: a writer that re-arms from now on finds the call queued
                    self._hurry()
        if idle or in_callback:
            if in_callback:
                # A done callback committing more work: wait for the connection itself rather than
                # queue behind the writer, which may be the very thread running this callback.
                self._conn_lock.acquire()
            try:
                results = self._execute(ops)
            finally:
                self._conn_lock.release()
            self._local.deliver([Call(ops)], ops, results)
        else:
            call.ready.acquire()
            results = call.results
        result, error = results[-1]
        if error is not None:
            raise error
        return result

    def delivering(self) -> bool:
        """Whether this thread is running ``done`` callbacks of committed ops now (user code may run
        there: a Future resolved by a callback runs its own done-callbacks)."""
        return self._local.delivering

    def post(self, *ops: Op) -> None:
        """Hand ``ops`` to the writer thread and return at once; each reports to its ``done``."""
        with self._state:
            if self._closed:
                raise StoreClosed("the task store is closed")
            self._pending += 1
            self._queued.put(Call(ops))

    def flush(self) -> None:
        """Block until every op handed over before this call is committed (urgent: the writer does
        not linger for company meanwhile)."""
        call = waiting([Op(_nothing)], urgent=True)
        with self._state:
            if self._closed:
                return
            self._pending += 1
            self._queued.put(call)  # FIFO: behind everything already queued, even a batch being drained
            self._hurry()
        call.ready.acquire()

    def close(self) -> None:
        """Commit what is queued, stop the writer, close the connection. Idempotent."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            self._pending += 1
            self._queued.put(_STOP)  # last: nothing can be queued after it
        self._hurry()  # a lingering writer goes on at once
        self._writer.join()
        with self._conn_lock:  # a commit from a done callback may be waiting for it: it finds the flag
            self._conn.close()
            self._conn_closed = True

    def _hurry(self) -> None:
        """End a linger under way (or the next one, if none is): an urgent caller has handed over."""
        try:
            self._hurried.release()
        except RuntimeError:  # released already
            pass

    # -- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        """Group-commit whatever was queued while the connection was busy, until the stop marker."""
        queued, stopping = self._queued, False
        while not stopping:
            first = queued.get()
            stopping = first is _STOP
            if self.linger is not None and not stopping and not first.urgent:
                # Re-arm first. An urgent call that came since the last linger is queued behind this
                # one (so the queue is not empty: no linger) or committed already; one that comes from
                # now on is queued before it ends the linger.
                self._hurried.acquire(blocking=False)
                if queued.empty():
                    self._linger()
            with self._conn_lock:
                # Drain only once the connection is ours: what queued up meanwhile joins this commit,
                # up to max_batch ops. Nothing is queued after the stop marker.
                calls, ops = ([], []) if stopping else ([first], list(first.ops))
                while not stopping and len(ops) < self._max_batch:
                    try:
                        call = queued.get_nowait()
                    except queue.Empty:
                        break
                    if call is _STOP:
                        stopping = True
                    else:
                        calls.append(call)
                        ops += call.ops
                try:
                    results = self._execute(ops)
                except BaseException as exc:  # noqa: BLE001 - this thread must outlive any error
                    results = [(None, exc)] * len(ops)
            self._local.deliver(calls, ops, results)
            with self._state:  # only now: a direct commit's callbacks never run before these
                self._pending -= len(calls) + stopping

    def _linger(self) -> None:
        """Wait up to ``linger()`` seconds for company (hand-overs queue up meanwhile, their callers
        waiting behind this one), or until an urgent caller hands over."""
        try:
            pause = self.linger()
            if pause > 0:
                self._hurried.acquire(timeout=pause)  # ended early by _hurry(); held again either way
        except Exception:  # noqa: BLE001 - the writer must outlive any error: commit at once
            _log.exception("commit linger failed", extra={
                "event": "callback_error", "task_id": None, "idempotency_key": None})

    # -- running ops ------------------------------------------------------------------------

    def _execute(self, ops: list[Op]) -> list[tuple[Any, BaseException | None]]:
        """Run ``ops`` and commit; (result, error) per op. The caller holds the connection lock.

        An op that lost a deadlock (``retry_alone``) had no effect: once its transaction is over it
        runs again, once, in a transaction of its own, holding nothing the other one waits for.
        """
        results = self._transact(ops)
        if self._retry_alone is not None:
            for index, (_result, error) in enumerate(results):
                if error is not None and self._retry_alone(error):
                    results[index] = self._transact([ops[index]])[0]
        return results

    def _transact(self, ops: list[Op]) -> list[tuple[Any, BaseException | None]]:
        """:meth:`_execute` without its retry: one transaction (or one autocommit statement per op)."""
        if self._conn_closed:  # a commit from a done callback that checked _closed just before close()
            return [(None, StoreClosed("the task store is closed"))] * len(ops)
        if self._broken is not None:
            broken = StoreBroken(f"the task store's connection failed: {self._broken}")
            broken.__cause__ = self._broken
            return [(None, broken)] * len(ops)
        conn = self._conn
        self.operations += len(ops)
        wakes = self._notify is not None and any(op.wakes for op in ops)
        if len(ops) <= self._autocommit_max and not wakes and all(op.atomic for op in ops):
            self.commits += len(ops)
            return [_run_op(conn, op) for op in ops]
        isolate = self._isolate_every_op and len(ops) > 1
        results: list = []
        append = results.append
        try:
            self._begin(conn)
            for op in ops:  # _run_op written out: this loop runs once per op of every group commit
                if op.atomic and not isolate:
                    try:
                        append((op.fn(conn, *op.args), None))
                    except Exception as exc:  # one bad op must not sink the batch
                        append((None, exc))
                else:
                    append(_run_in_savepoint(conn, op))
            if wakes:
                self._notify(conn)
            status = getattr(conn.execute("COMMIT"), "statusmessage", None)
            if status == "ROLLBACK":  # PostgreSQL turns the COMMIT of an aborted transaction into this
                aborted = StoreBroken("the transaction was aborted and rolled back; nothing of it was committed")
                return [(None, error or aborted) for _result, error in results]  # the op that aborted it: its own
        except Exception as exc:  # BEGIN or COMMIT failed: nothing of the batch is committed
            self._rollback()
            return [(None, exc)] * len(ops)
        except BaseException:  # KeyboardInterrupt in a caller's thread: leave the connection usable
            self._rollback()
            raise
        self.commits += 1
        return results

    def _rollback(self) -> None:
        try:
            self._conn.execute("ROLLBACK")
        except Exception as exc:  # noqa: BLE001 - no transaction open is fine; anything else breaks us
            if "no transaction" not in str(exc).lower():
                self._broken = exc
                _log.error("task store connection broken", extra={
                    "event": "store_broken", "task_id": None, "idempotency_key": None,
                    "error_class": type(exc).__name__, "error": text_of(exc)})

def _run_op(conn: Any, op: Op) -> tuple[Any, BaseException | None]:
    try:
        return op.fn(conn, *op.args), None
    except Exception as exc:  # one bad op must not sink the batch
        return None, exc


def _run_in_savepoint(conn: Any, op: Op) -> tuple[Any, BaseException | None]:
    conn.execute("SAVEPOINT op")
    try:
        result = op.fn(conn, *op.args)
    except Exception as exc:
        conn.execute("ROLLBACK TO op")
        conn.execute("RELEASE op")
        return None, exc
    conn.execute("RELEASE op")
    return result, None


def _nothing(conn: Any) -> None:
    return None
