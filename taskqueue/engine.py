"""TaskQueue: a bounded ``queue.Queue`` feeding long-lived workers in one ``ThreadPoolExecutor``.

The way a task travels::

    submit() --claim key (SQLite, UNIQUE)--> bounded queue --> worker: start (attempt + 1, lease)
        --> Processor.process() --> success | retry (RetryScheduler) | dead letter
        --> the outcome is committed (group commit) --> the task's Future resolves

Tasks are never handed to ``executor.submit``: the executor's own work queue
is unbounded. Instead ``max_workers`` worker loops are submitted once and
``get()`` from the bounded queue; shutdown wakes each with one sentinel.
Nothing in the engine polls: threads block on the queue, on Futures, or on a
Condition.

Lock order: ``TaskQueue._lock`` guards ``_inflight``, ``_unfinished``,
``_closed`` and the start of an item's Future; only a Future's own lock is
taken while it is held.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import queue
import random
import threading
import time
import weakref
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from typing import Callable

from . import errors
from .config import Config
from .errors import ClaimedElsewhere, QueueFull, QueueShutDown, StaleVersion
from .logs import LOGGER_NAME, task_extra
from .metrics import DepthSampler, Metrics
from .objectstore import LocalObjectStore, atomic_write_text
from .processor import Output, Processor
from .retry import RetryPolicy, classify
from .scheduler import RetryScheduler
from .store import Recovered, Row, TaskStore, owner_alive
from .task import Task, TaskResult, TaskStatus

_STOP = object()
_live_queues: "weakref.WeakSet[TaskQueue]" = weakref.WeakSet()


class _Item:
    """A task on its way through the queue: its Future, its row and the row's version."""

    __slots__ = ("task", "future", "row_id", "version", "submitted", "enqueued", "started", "inserted")

    def __init__(self, task: Task, row: Row | None = None) -> None:
        self.task = task
        self.future: Future = Future()
        self.submitted = time.perf_counter()
        self.enqueued = self.submitted
        self.started = False  # set_running_or_notify_cancel() has been called
        self.inserted = False  # this process created the row: it may delete it if never run
        if row is not None:
            self.bind(row)

    def bind(self, row: Row, inserted: bool = False) -> None:
        self.row_id = row.id
        self.version = row.version
        self.inserted = inserted


class TaskQueue:
    """A durable, bounded, idempotent task queue running ``config.workers`` worker threads.

    ``db_path`` is the SQLite file of task rows; ``store`` the object store
    (or its root directory). ``processor`` defaults to
    ``Processor(store, config.faults)``. ``rng`` draws the backoff jitter
    (default ``random.Random(config.retry_seed)``). ``metrics_out``, if given,
    receives the final metrics as JSON at shutdown.

    Construction recovers the open rows of dead processes (see
    :meth:`TaskStore.recover`); they run again without being submitted.
    Use as a context manager, or call :meth:`shutdown`.
    """

    def __init__(self, db_path: str | os.PathLike, store: LocalObjectStore | str | os.PathLike, *,
                 config: Config | None = None, processor: Processor | None = None,
                 rng: random.Random | None = None, metrics_out: str | None = None,
                 wall_clock: Callable[[], float] = time.time, sample_interval_s: float = 0.05) -> None:
        self.config = config = config or Config()
        if not isinstance(store, LocalObjectStore):
            store = LocalObjectStore(store, chunk_size=config.chunk_size, fsync=config.fsync_outputs)
        self.objects = store
        self.processor = processor or Processor(store, config.faults)
        self.policy = RetryPolicy(config.max_attempts, config.retry_base_s, config.retry_cap_s)
        self._rng = rng or random.Random(config.retry_seed)
        self._wall = wall_clock
        self._metrics_out = metrics_out
        self._log = logging.getLogger(LOGGER_NAME)
        self.metrics = Metrics(workers=config.workers, queue_capacity=config.queue_size)
        self.store = TaskStore(db_path, synchronous=config.db_synchronous,
                               busy_timeout_ms=config.busy_timeout_ms, clock=wall_clock)
        self._queue: queue.Queue = queue.Queue(maxsize=config.queue_size)
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)  # announces: an item settled (see _forget)
        self.settled = 0  # items settled so far, guarded by _lock
        self._inflight: dict[str, _Item] = {}  # idempotency key -> its item, from submit to settled
        self._unfinished = 0
        self._closed = False
        self._finished = threading.Event()  # set when shutdown has completed
        self.final_metrics: dict | None = None
        self._scheduler = RetryScheduler(self._requeue)
        self._sampler = DepthSampler(self.metrics, self._queue.qsize, sample_interval_s)
        self._executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="tq-worker")
        self._workers = [self._executor.submit(self._work, index) for index in range(config.workers)]
        _live_queues.add(self)
        self.recovered = self.recover_orphans()

    # -- intake ----------------------------------------------------------------

    def submit(self, task: Task) -> Future:
        """Offer ``task``; return a Future of its :class:`TaskResult` (or of its error).

        Deduplicates on ``task.idempotency_key``: a key that already succeeded
        (in this run or an earlier one) returns a completed Future without
        touching the queue; a key in flight in this process returns the Future
        already held for it; a key that is dead-lettered returns a failed one.

        A key whose row is open but owned by a live process elsewhere returns
        a Future failed with :class:`ClaimedElsewhere`; an open row nobody
        runs (its process died, ``dlq redrive``, a cancelled task) is adopted
        and run here.

        Blocks while the key is claimed in SQLite (one commit: made in this
        thread when the connection is idle, else grouped by the store's
        writer thread) and, in ``block``
        mode, while the queue is full (at most ``config.put_timeout_s`` if
        set). Raises :class:`QueueFull` in ``reject`` mode or on that timeout
        (a row this call created is deleted, so the task can be offered
        again), :class:`QueueShutDown` after :meth:`shutdown`, and SQLite
        errors as they come. Done-callbacks of Futures run in whichever
        thread commits the outcome: they must not block.
        """
        key = task.idempotency_key
        with self._lock:
            if self._closed:
                raise QueueShutDown("submit() after shutdown()")
            item = self._inflight.get(key)
            if item is not None:
                self.metrics.incr("deduplicated")
                return item.future
            item = self._inflight[key] = _Item(task)
            self._unfinished += 1  # from here, shutdown() waits for this submit to settle
        item.future.add_done_callback(functools.partial(self._on_cancelled, item))
        # Other submitters of this key may hold item.future from now on: it must be resolved.
        try:
            claim = self.store.claim(task).result()
            row, runnable = claim.row, claim.new
            if not claim.new and self._adoptable(row):
                try:
                    row, runnable = self.store.adopt(row.id, row.version).result(), True
                except StaleVersion:  # it moved on meanwhile (finished, or taken): report what it is now
                    row = self.store.claim(task).result().row
            if runnable:
                item.bind(row, inserted=claim.new)
                self._put(item)
                self.metrics.on_put(self._queue.qsize())
                return item.future
            self.metrics.incr("deduplicated")
            _settle_from_row(item.future, task, row)
            self._forget(item)
            return item.future
        except BaseException as exc:  # QueueFull, a store error, even KeyboardInterrupt: leave nothing behind
            if item.inserted:  # delete the row we created, so the task can be offered again
                try:
                    self.store.release(item.row_id, item.version).result()
                except Exception:
                    pass  # it stays queued; the next start-up recovers it
            _fail(item.future, exc)
            self._forget(item)
            raise

    def _adoptable(self, row: Row) -> bool:
        """An open row nobody runs: its owner died (or ``dlq redrive`` cleared it), or it is a row of
        ours whose task was cancelled and not yet dropped by a worker."""
        if row.status not in (TaskStatus.QUEUED, TaskStatus.FAILED):
            return False
        return row.owner == self.store.owner or not owner_alive(row.owner, self.store.owner)

    def _put(self, item: _Item) -> None:
        """Put ``item`` on the bounded queue per the backpressure policy; raise QueueFull when refused."""
        try:
            if self.config.on_full == "reject":
                self._queue.put_nowait(item)
            else:
                self._queue.put(item, timeout=self.config.put_timeout_s)
        except queue.Full:
            self.metrics.incr("rejected")
            self._log.info("queue full: task rejected", extra=task_extra("rejected", item.task))
            raise QueueFull(f"queue is full ({self.config.queue_size} tasks); "
                            f"task {item.task.id!r} was not accepted") from None

    def _on_cancelled(self, item: _Item, future: Future) -> None:
        """A client cancelled a queued task: the key is free to be offered again at once."""
        if future.cancelled():
            with self._lock:
                if self._inflight.get(item.task.idempotency_key) is item:
                    del self._inflight[item.task.idempotency_key]

    def _requeue(self, item: _Item) -> None:
        """Put a retry (or a recovered task) back on the queue, blocking while it is full."""
        item.enqueued = time.perf_counter()
        self._queue.put(item)
        self.metrics.on_put(self._queue.qsize())

    def _forget(self, item: _Item) -> None:
        """The item has settled (or was never accepted): stop tracking it."""
        key = item.task.idempotency_key
        with self._lock:
            if self._inflight.get(key) is item:
                del self._inflight[key]
            self._unfinished -= 1
            self.settled += 1
            self._settled.notify_all()

    def wait_settled(self, seen: int, timeout: float | None = None) -> bool:
        """Block until more than ``seen`` items have settled (see :attr:`settled`); False on timeout.

        For a producer in ``reject`` mode: after :class:`QueueFull`, wait for
        room instead of retrying in a loop.
        """
        with self._settled:
            return self._settled.wait_for(lambda: self.settled > seen, timeout)

    # -- workers -----------------------------------------------------------------

    def _work(self, index: int) -> None:
        """One worker loop: take a task, claim an attempt, process, record. Runs until a sentinel.

        The outcome of the task just processed and the claim of the next one
        go to the store in one hand-off (one transaction, usually committed
        right here in the worker when the writer is idle). The attempt is
        committed before processing starts, and only for the task about to be
        processed, so a crash counts an attempt against that task alone.
        """
        record = None  # records the outcome of the task just processed
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                record = self._record(record)  # never hold an outcome back while waiting for work
                item = self._queue.get()
            if item is _STOP:
                self._record(record)
                return
            with self.store.together():
                record = self._record(record)
                started = self._begin(item)
            if started is None:
                continue
            try:
                record = self._run_one(index, item, started)
            except BaseException as exc:  # a bug here must not kill the worker or lose the Future
                self._log.exception("worker error", extra=task_extra("worker_error", item.task, error=exc))
                self._settle(item, "failed", error=exc)

    def _record(self, record: functools.partial | None) -> None:
        """Record a processed task's outcome (see ``_run_one``); a bug here fails that task, not the worker."""
        if record is not None:
            try:
                record()
            except BaseException as exc:
                item = record.args[0]
                self._log.exception("worker error", extra=task_extra("worker_error", item.task, error=exc))
                self._settle(item, "failed", error=exc)
        return None

    def _begin(self, item: _Item) -> Future | None:
        """Dequeue bookkeeping, then claim the item's attempt (a Future of the started row).

        None if its client cancelled it or the store failed (the item is settled then).
        """
        self.metrics.on_get(self._queue.qsize(), time.perf_counter() - item.enqueued)
        if not item.started:
            item.started = item.future.set_running_or_notify_cancel()
            if not item.started:  # its client cancelled it: drop it, and its row unless re-adopted
                self._forget(item)
                if item.inserted:
                    self.store.release(item.row_id, item.version)  # a stale version changes nothing
                return None
        try:
            return self.store.start(item.row_id, item.version, self.config.lease_s)
        except Exception as exc:  # the store is gone: fail this item, keep the worker alive
            self._settle(item, "failed", error=exc)
            return None

    def _run_one(self, index: int, item: _Item, started: Future) -> Callable[[], None] | None:
        """Process one claimed item; return the call that records its outcome (None if nothing to record)."""
        try:
            row = started.result()
        except StaleVersion as exc:
            self._settle(item, "deduplicated", error=ClaimedElsewhere(
                f"task {item.task.id!r} was claimed by another process ({_describe(exc.args[0])})"))
            return None
        item.version = row.version
        attempt = row.attempts
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug("attempt started", extra=task_extra("attempt_started", item.task, attempt=attempt,
                                                                 pid=os.getpid(), worker=index))
        began = time.perf_counter()
        try:
            output = self.processor.process(item.task, attempt)
        except Exception as exc:
            self.metrics.on_processed(index, time.perf_counter() - began)
            return functools.partial(self._failed, item, exc, attempt)
        busy = time.perf_counter() - began
        self.metrics.on_processed(index, busy)
        return functools.partial(self._succeeded, item, output, attempt, began - item.submitted, busy)

    def _succeeded(self, item: _Item, output: Output, attempt: int, waited: float, busy: float) -> None:
        result = TaskResult(task_id=item.task.id, idempotency_key=item.task.idempotency_key,
                            status=TaskStatus.SUCCESS, output_key=output.key, attempts=attempt,
                            queue_wait_s=waited, processing_s=busy, output_bytes=output.size)
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug("task succeeded", extra=task_extra("succeeded", item.task, attempt=attempt,
                                                                output_key=output.key))
        committed = self.store.succeed(item.row_id, item.version, output.key, output.size)
        committed.add_done_callback(lambda f: self._settle(item, "succeeded", result=result, commit=f))

    def _failed(self, item: _Item, exc: Exception, attempt: int) -> None:
        self.metrics.incr("failed")
        kind = classify(exc)
        if self.policy.should_retry(exc, attempt):
            delay = self.policy.delay(attempt, self._rng)
            self._log.info("attempt failed, retrying", extra=task_extra(
                "retry_scheduled", item.task, error=exc, kind=kind, attempt=attempt, delay_s=round(delay, 6)))
            committed = self.store.fail(item.row_id, item.version, exc, self._wall() + delay)
            committed.add_done_callback(lambda f: self._retry_committed(item, f, delay))
            return
        level = logging.WARNING if isinstance(exc, errors.TaskQueueError) else logging.ERROR
        self._log.log(level, "task dead-lettered", exc_info=level == logging.ERROR, extra=task_extra(
            "dead_lettered", item.task, error=exc, kind=kind, attempt=attempt))
        committed = self.store.dead_letter(item.row_id, item.version, exc)
        committed.add_done_callback(lambda f: self._settle(item, "dead_lettered", error=exc, commit=f))

    def _retry_committed(self, item: _Item, committed: Future, delay: float) -> None:
        if committed.exception() is not None:
            self._settle(item, "failed", error=committed.exception())
            return
        item.version = committed.result()
        self.metrics.incr("retried")
        if not self._scheduler.schedule(delay, item):  # shutting down with cancel_futures
            self._abandon(item)

    def _settle(self, item: _Item, counter: str, *, result: TaskResult | None = None,
                error: BaseException | None = None, commit: Future | None = None) -> None:
        """Resolve an item's Future once its outcome is committed, and count it."""
        if commit is not None and commit.exception() is not None:
            counter, result, error = "failed", None, commit.exception()
            self._log.error("could not record outcome", extra=task_extra("store_error", item.task, error=error))
        self.metrics.on_outcome(counter, time.perf_counter() - item.submitted)
        try:
            if error is None:
                item.future.set_result(result)
            else:
                item.future.set_exception(error)
        except InvalidStateError:
            pass  # cancelled meanwhile; the outcome is in the store all the same
        self._forget(item)

    # -- recovery and shutdown -------------------------------------------------------

    def recover_orphans(self) -> Recovered:
        """Adopt the open rows of processes that died, and run them here (see :meth:`TaskStore.recover`).

        Done once at construction; call again to take over from a process
        that died while this one runs. Blocks for one store round trip.
        """
        recovered = self.store.recover(self.config.max_attempts).result()
        now = self._wall()
        for row in recovered.runnable:
            item = _Item(row.task(), row)
            with self._lock:
                if row.idempotency_key in self._inflight:  # a submit got there first; it adopts the row
                    continue
                self._inflight[row.idempotency_key] = item
                self._unfinished += 1
            if not self._scheduler.schedule(max(0.0, (row.next_attempt_at or now) - now), item):
                self._abandon(item)
        for row in recovered.dead:
            self.metrics.incr("dead_lettered")
            self._log.warning("task dead-lettered at recovery", extra={
                "event": "dead_lettered", "task_id": row.task_id, "idempotency_key": row.idempotency_key,
                "error_class": row.error_class, "error": row.last_error, "attempt": row.attempts})
        if recovered.runnable or recovered.dead:
            self._log.info("recovered open tasks", extra={
                "event": "recovered", "task_id": None, "idempotency_key": None,
                "runnable": len(recovered.runnable), "dead": len(recovered.dead)})
        return recovered

    def join(self, timeout: float | None = None) -> bool:
        """Block until every accepted task has settled; False if ``timeout`` passed first."""
        with self._settled:
            return self._settled.wait_for(lambda: self._unfinished == 0, timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False,
                 timeout: float | None = None) -> bool:
        """Stop intake, finish or cancel what is pending, stop the workers, flush the store.

        ``submit()`` raises :class:`QueueShutDown` from now on. With
        ``cancel_futures=False`` every accepted task (retries included) is
        finished first; with ``True`` the tasks not yet started are cancelled
        and stay ``queued`` (or ``failed``, awaiting retry) in the store for
        the next run, and only tasks being processed are finished. With
        ``wait=True`` this blocks until done, or until ``timeout`` seconds
        have passed, in which case it returns False and leaves the workers to
        finish in the background (the store stays consistent: their rows are
        recovered by the next run). With ``wait=False`` it returns at once.
        Idempotent.
        """
        with self._lock:
            already = self._closed
            self._closed = True
        if not already:
            closer = threading.Thread(target=self._close, args=(cancel_futures,),
                                      name="tq-shutdown", daemon=True)
            closer.start()
        elif cancel_futures:
            self._cancel_pending()
        if not wait:
            return True
        return self._finished.wait(timeout)

    def _close(self, cancel_futures: bool) -> None:
        try:
            if cancel_futures:
                self._cancel_pending()
            self.join()
            for _ in self._workers:
                self._queue.put(_STOP)
            self._executor.shutdown(wait=True)
            for item in self._scheduler.stop():  # only when cancelled concurrently: kept for the next run
                self._abandon(item)
            self._sampler.stop()
            self.store.close()
            self.final_metrics = self.snapshot()
            if self._metrics_out:
                try:
                    _write_json(self._metrics_out, self.final_metrics)
                except OSError as exc:  # the metrics are lost, not the tasks: say so and finish
                    self._log.error("could not write final metrics", extra={
                        "event": "metrics_write_failed", "task_id": None, "idempotency_key": None,
                        "error_class": type(exc).__name__, "error": str(exc), "path": self._metrics_out})
        finally:
            _live_queues.discard(self)
            self._finished.set()

    def _cancel_pending(self) -> None:
        # Drain first: the scheduler thread may be blocked putting into a full queue.
        self._drain()
        for item in self._scheduler.stop():
            self._abandon(item)
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                self._abandon(item)

    def _abandon(self, item: _Item) -> None:
        """Give up on an item at shutdown: its row stays open in the store for the next run."""
        if not item.future.cancel():
            try:
                item.future.set_exception(QueueShutDown(
                    f"task {item.task.id!r} was not finished before shutdown; it stays in the store"))
            except InvalidStateError:
                pass
        self._forget(item)

    def write_metrics(self, path: str) -> None:
        """Write :meth:`snapshot` to ``path`` as JSON, atomically. Raises ``OSError``."""
        _write_json(path, self.snapshot())

    def snapshot(self) -> dict:
        """Metrics plus the store's commit statistics, as a plain dict."""
        snap = self.metrics.snapshot()
        snap["store"] = {"commits": self.store.batches, "operations": self.store.operations,
                         "ops_per_commit": self.store.operations / self.store.batches
                         if self.store.batches else 0.0}
        snap["retry_pending"] = len(self._scheduler)
        snap["config"] = {"workers": self.config.workers, "queue_size": self.config.queue_size,
                          "on_full": self.config.on_full, "max_attempts": self.config.max_attempts}
        return snap

    def __enter__(self) -> "TaskQueue":
        return self

    def __exit__(self, *exc_info) -> None:
        self.shutdown(wait=True)


def _fail(future: Future, error: BaseException) -> None:
    try:
        future.set_exception(error)
    except InvalidStateError:
        pass  # already cancelled by its client


def _settle_from_row(future: Future, task: Task, row: Row) -> None:
    """Complete ``future`` from a row the store already holds for ``task``'s key."""
    if row.status is TaskStatus.SUCCESS:
        future.set_result(TaskResult(task_id=task.id, idempotency_key=row.idempotency_key,
                                     status=TaskStatus.SUCCESS, output_key=row.output_key,
                                     attempts=row.attempts, deduplicated=True,
                                     output_bytes=row.output_bytes))
    elif row.status is TaskStatus.DEAD:
        future.set_exception(_stored_error(row))
    else:
        future.set_exception(ClaimedElsewhere(f"task {task.id!r} is being processed elsewhere "
                                              f"({_describe(row)})"))


def _stored_error(row: Row) -> BaseException:
    """Rebuild a dead-lettered task's error from its row (class by name when it is ours)."""
    cls = getattr(errors, row.error_class or "", None)
    message = row.last_error or "dead-lettered"
    if isinstance(cls, type) and issubclass(cls, errors.TaskQueueError):
        return cls(message)
    return errors.PermanentError(f"{row.error_class}: {message}")


def _describe(row: Row | None) -> str:
    return "row gone" if row is None else f"status {row.status.value}, owner {row.owner}"


def _write_json(path: str, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _abandon_at_exit() -> None:
    """At interpreter exit, stop queues nobody shut down (else their workers would block exit)."""
    for tq in list(_live_queues):
        tq.shutdown(wait=True, cancel_futures=True, timeout=5.0)


# Registered like concurrent.futures does, so it runs before the executor's exit hook joins workers.
if hasattr(threading, "_register_atexit"):
    threading._register_atexit(_abandon_at_exit)
