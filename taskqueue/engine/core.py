"""TaskQueue: a bounded ``queue.Queue`` feeding long-lived workers in one ``ThreadPoolExecutor``.

The way a task travels::

    submit() --claim key (store, UNIQUE)--> bounded queue --> worker: start (attempt + 1, lease)
        --> Processor.process() --> success | retry (RetryScheduler) | dead letter
        --> the outcome is committed --> the task's Future resolves

Tasks are never handed to ``executor.submit``: the executor's own work queue
is unbounded. Instead ``config.workers`` worker loops (:mod:`.worker`) are
submitted once and ``get()`` from the bounded queue; shutdown wakes each with
one sentinel. Nothing in the engine polls: threads block on the queue, on
Futures, or on a Condition.
"""

from __future__ import annotations

import copy
import logging
import os
import queue
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

from ..config import Config
from ..errors import QueueFull
from ..logs import LOGGER_NAME, task_extra
from ..metrics import DepthSampler, Metrics
from ..objectstore import LocalObjectStore
from ..processor import Processor
from ..retry import RetryPolicy
from ..scheduler import RetryScheduler
from ..store import Recovered, TaskStore, open_store
from ..task import Task, TaskStatus
from .inflight import InFlight, WorkItem
from .leases import Heartbeat
from . import closing, takeover
from .stored import outcome_of
from .worker import work


class TaskQueue:
    """A durable, bounded, idempotent task queue running ``config.workers`` worker threads.

    ``db`` is the task store: a SQLite path, a ``postgresql://`` URL, or any
    :class:`TaskStore` (which the queue then owns and closes). ``store`` is the object store (or
    its root directory). ``processor`` defaults to
    ``Processor(store, config.faults, max_image_pixels=...)`` from ``config``. ``rng`` draws the backoff jitter
    (default ``random.Random(config.retry_seed)``). ``metrics_out``, if
    given, receives the final metrics as JSON at shutdown.

    Construction takes over the open rows nobody runs (:meth:`recover_orphans`);
    they run again without being submitted. A ``worker`` passes
    ``recover_unowned=False``: it takes over only what dead processes held,
    and leaves rows nobody has held yet to its feeder. Use as a context manager, or call
    :meth:`shutdown`.
    """

    def __init__(self, db: str | os.PathLike | TaskStore, store: LocalObjectStore | str | os.PathLike, *,
                 config: Config | None = None, processor: Processor | None = None,
                 rng: random.Random | None = None, metrics_out: str | None = None,
                 wall_clock: Callable[[], float] = time.time, sample_interval_s: float = 0.05,
                 recover_unowned: bool = True) -> None:
        self.config = config = config or Config()
        if not isinstance(store, LocalObjectStore):
            store = LocalObjectStore(store, chunk_size=config.chunk_size, fsync=config.fsync_outputs)
        self.objects = store
        self.processor = processor or Processor(store, config.faults, max_image_pixels=config.max_image_pixels)
        self.policy = RetryPolicy(config.max_attempts, config.retry_base_s, config.retry_cap_s)
        self._rng = rng or random.Random(config.retry_seed)
        self._wall = wall_clock
        self._metrics_out = metrics_out
        self._log = logging.getLogger(LOGGER_NAME)
        self.metrics = Metrics(workers=config.workers, queue_capacity=config.queue_size)
        self.store: TaskStore = db if not isinstance(db, (str, os.PathLike)) else open_store(
            os.fspath(db), synchronous=config.db_synchronous, busy_timeout_ms=config.busy_timeout_ms,
            lease_s=config.lease_s, clock=wall_clock)
        self._queue: queue.Queue = queue.Queue(maxsize=config.queue_size)
        if config.commit_linger_s > 0:
            self.store.committer.linger = self._linger
        self.inflight = InFlight()
        self._finished = threading.Event()  # set when shutdown has completed
        self.final_metrics: dict | None = None
        self._scheduler = RetryScheduler(self._requeue)
        self._sampler = DepthSampler(self.metrics, self.depth, sample_interval_s)
        self._heartbeat = Heartbeat(self.store, self.store.lease_s / 3, lease_s=self.store.lease_s,
                                    on_lapse=self.inflight.lapse)
        self._executor = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="tq-worker")
        self._workers: list[Future] = []
        self._worker_threads: set[int] = set()  # idents of the threads running a worker loop now
        self._taken_over: set[str] = set()
        closing.live_queues.add(self)
        try:
            for index in range(config.workers):
                self._workers.append(self._executor.submit(work, self, index))
            self.recovered = self.recover_orphans(recover_unowned)
            # Keys taken over at start-up: the first offer of one is that very task, not a duplicate of it.
            self._taken_over = {row.idempotency_key for row in (*self.recovered.runnable, *self.recovered.dead)}
        except BaseException:  # a thread that would not start (an OS limit), a store error: stop what runs
            # A worker loop whose thread would not start may still wait in the executor's own queue, to
            # run once a started thread is free: it never gets a stop sentinel, so it must never run.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self.shutdown(wait=True, cancel_futures=True)
            raise

    # -- intake ------------------------------------------------------------------------------

    def submit(self, task: Task) -> Future:
        """Offer ``task``; return a Future of its :class:`TaskResult` (or of its error).

        Deduplicates on ``task.idempotency_key`` (a dead-lettered key's Future fails with its stored
        error, whose ``deduplicated`` attribute is True): a key in flight here returns
        the Future already held for it (one Future per key in flight: a
        ``cancel()`` by any of its holders cancels the task for all of them); a key that already succeeded (in this
        run or an earlier one) returns a completed Future without touching the
        queue; a dead-lettered key returns a failed one; a key whose open row
        a live process elsewhere holds returns a Future failed with
        :class:`ClaimedElsewhere`. An open row nobody runs (its process died,
        ``dlq redrive``, a cancelled task) is taken over and run here.

        Blocks while the key is claimed in the store (one commit: made in this
        thread when the connection is idle, else in the writer's next group
        commit) -- when this returns, the task is durably accepted -- and, in
        ``block`` mode, while the queue is full (at most
        ``config.put_timeout_s`` if set). Raises :class:`QueueFull` in
        ``reject`` mode or on that timeout (the row this call claimed is
        given back, so the task can be offered again), :class:`QueueShutDown`
        after :meth:`shutdown`, ``TypeError`` if ``task`` is not a :class:`Task`,
        and store errors as they come. Done-callbacks of Futures run in
        whichever thread commits the outcome (the store's writer, a worker):
        they must not block. A ``submit()`` there, or in a processor, never
        waits for room: with the queue full it raises :class:`QueueFull`,
        whatever ``on_full`` says (that thread may be the one to make room).
        """
        if not isinstance(task, Task):
            raise TypeError(f"submit() takes a Task, got {type(task).__name__} (Task.from_dict() builds one)")
        item, new = self.inflight.admit(task)
        if not new:  # counted as the item it joins ends: done, held elsewhere, or (refused) not at all
            if not self._first_offer_of_taken_over(task):
                item.future.add_done_callback(lambda _future: self._count_duplicate(item))
            return item.future
        held = accepted = False
        try:  # other submitters of this key may hold item.future from here on: it must be resolved
            if self.config.on_full == "reject" and self._queue.full():
                raise self._rejected(item)  # fail fast before claiming (put_nowait below decides)
            claim = self.store.commit(self.store.claim(task, self.config.max_attempts))
            item.bind(claim.row, inserted=claim.inserted)
            if not claim.runnable:
                if claim.dead_lettered:  # its process died in its last attempt: the claim dead-lettered it
                    takeover.report_dead(self, [claim.row])
                    item.outcome = "dead_lettered"
                    done_here = True  # by this very offer: not found done
                else:  # done already (here, in an earlier run, or elsewhere), or held by a live process
                    item.outcome = "deduplicated" if claim.row.status.terminal else "claimed_elsewhere"
                    done_here = claim.row.status.terminal and self._first_offer_of_taken_over(task)
                    if not done_here:
                        self.metrics.incr(item.outcome)
                    else:  # a row this queue took over at start-up and finished: this offer's own task
                        item.outcome = "succeeded" if claim.row.status is TaskStatus.SUCCESS else "dead_lettered"
                self.inflight.settle(item, *outcome_of(task, claim.row, deduplicated=not done_here))
                return item.future
            held = True  # an open row of ours: given back below if the task is not accepted
            delay = (claim.row.next_attempt_at or 0.0) - self._wall()
            if not (delay > 0 and self._scheduler.schedule(delay, item)):  # a taken-over retry not yet due
                self._put(item)
            accepted = True  # the queue (or the scheduler) holds it now: whatever happens, a worker settles it
            return item.future
        except BaseException as exc:  # QueueFull, a store error, even KeyboardInterrupt: leave nothing behind
            if accepted:
                raise
            if held:
                self._give_back(item)
            self.inflight.settle(item, error=exc, accepted=False)
            raise

    def _first_offer_of_taken_over(self, task: Task) -> bool:
        """Whether ``task`` is the first offer of a key this queue took over at start-up (a rerun of
        the file whose run died): that task is counted once, by its taken-over row's outcome, not
        again as a duplicate of itself. A second offer of the key is a duplicate."""
        key = task.idempotency_key
        if key not in self._taken_over:
            return False
        self._taken_over.discard(key)
        return True

    def _count_duplicate(self, item: WorkItem) -> None:
        """Count an offer that joined ``item`` in flight, now that it has ended: deduplicated if it is
        done (succeeded or dead-lettered), claimed elsewhere if another process holds it, else (its
        offer refused, given up at shutdown, its outcome not recorded) not at all: nothing is done."""
        counter = _DUPLICATE_OUTCOMES.get(item.outcome)
        if counter is not None:
            self.metrics.incr(counter)

    def _put(self, item: WorkItem) -> None:
        """Put ``item`` on the bounded queue per the backpressure policy; raise QueueFull when refused.

        A thread the queue needs in order to make room never waits for it, whatever the policy: it
        would wait for itself (see :meth:`_needed_here`)."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            if self.config.on_full == "reject":
                raise self._rejected(item) from None
            if self._needed_here():
                raise self._rejected(item, "; submit() ran in a thread the queue needs to make room (one of its "
                                           "workers, or a done-callback that one of them or the store's writer "
                                           "runs), so it cannot wait for room") from None
            try:
                self._queue.put(item, timeout=self.config.put_timeout_s)
            except queue.Full:
                raise self._rejected(item) from None
        self.metrics.on_put(self.depth())

    def _rejected(self, item: WorkItem, why: str = "") -> QueueFull:
        self.metrics.incr("rejected")
        self._log.info("queue full: task rejected", extra=task_extra("rejected", item.task))
        return QueueFull(f"queue is full ({self.config.queue_size} tasks){why}; task {item.task.id!r} was not "
                         f"accepted")

    def _needed_here(self, settling: bool = False) -> bool:
        """Whether this thread is one the queue needs to make progress, so it must not wait for the
        queue: one of its workers, or a thread delivering committed results (the store's writer, or a
        worker committing its own start), whose done-callbacks run user code. With ``settling``, also
        any thread resolving one of the queue's Futures: the item it settles is unfinished until its
        callbacks return."""
        return (threading.get_ident() in self._worker_threads or self.store.committer.delivering()
                or (settling and self.inflight.settling()))

    def _give_back(self, item: WorkItem) -> None:
        """Give back the row of a task this submit could not accept, so it can be offered again at once
        (here or in another process): deleted if the submit created it, else no longer ours."""
        self.inflight.release(item)  # from now on a claim of the key is not this item's
        try:
            self.store.commit(item.give_back(self.store))
        except Exception as exc:  # noqa: BLE001 - the row stays queued; the next start-up recovers it
            self._log.warning("could not give back the row of a task not accepted", extra=task_extra(
                "release_failed", item.task, error=exc))

    def _requeue(self, item: WorkItem) -> None:
        """Put a retry (or a recovered task) back on the queue, blocking while it is full."""
        item.enqueued = time.perf_counter()
        self._queue.put(item)
        self.metrics.on_put(self.depth())

    def _linger(self) -> float:
        """How long the store's writer may wait for company before committing a lone hand-over:
        ``config.commit_linger_s`` while every worker has a task waiting behind the one it runs (a
        commit a few milliseconds later then delays no worker, and saves a wake-up and a commit),
        else 0: an idle or draining queue commits at once. A worker that waits for its start's commit
        (PostgreSQL, which has no start ledger; see ``engine.worker``) commits it as urgent: the
        writer does not linger for it."""
        return self.config.commit_linger_s if len(self._queue.queue) >= self.config.workers else 0.0

    def depth(self) -> int:
        """Tasks waiting in the bounded queue now (a snapshot, read without its lock)."""
        return len(self._queue.queue)

    def record_invalid(self, task_id: str, idempotency_key: str, payload: str, error: BaseException) -> bool:
        """Dead-letter an item that failed validation (it never runs); False if its key was there already.

        Counted as dead-lettered, or as deduplicated when its key was there (a run of the same file
        again). Blocks for one commit; raises store errors.
        """
        recorded = self.store.commit(self.store.record_invalid(task_id, idempotency_key, payload, error))
        self.metrics.incr("dead_lettered" if recorded else "deduplicated")
        return recorded

    @property
    def settled(self) -> int:
        """Items settled so far (for :meth:`wait_settled`)."""
        return self.inflight.settled

    def wait_settled(self, seen: int, timeout: float | None = None) -> bool:
        """Block until more than ``seen`` items have settled (see :attr:`settled`); False on timeout.

        For a producer in ``reject`` mode: after :class:`QueueFull`, wait for
        room instead of retrying in a loop.
        """
        return self.inflight.wait_settled(seen, timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Block until every accepted task has settled; False if ``timeout`` passed first."""
        return self.inflight.join(timeout)

    # -- other processes (see .takeover) ---------------------------------------------------------

    def recover_orphans(self, unowned: bool = True) -> Recovered:
        """Take over the open rows nobody runs, and run them here (see ``TaskStore.recover``).

        Done once at construction; call again to take over from a process
        that died while this one runs. Blocks for one commit. Only rows whose
        commit succeeded are scheduled (recovery is one atomic operation).
        ``unowned=False`` (a worker) leaves rows no process has held yet to
        the feeder, which claims them a batch at a time.
        """
        return takeover.recover(self, unowned)

    def claim_due(self, limit: int) -> int:
        """Take up to ``limit`` rows a worker may run now (see ``TaskStore.claim_due``) and queue them.

        For a ``worker`` process, whose tasks come from the store rather than
        from ``submit()``. Blocks for one commit, then while the queue is full.
        Returns how many rows were taken (dead-lettered ones included). A row
        whose stored task no longer validates is dead-lettered, not run.
        """
        return takeover.claim_due(self, limit)

    def await_elsewhere(self, tasks: Iterable[Task], pause: Callable[[float], bool]
                        ) -> Iterator[tuple[Task, Future]]:
        """Wait for tasks another live process holds: yield ``(task, future)`` as each is accepted here.

        Each task is offered again after ``pause(delay)`` (delay 20 ms,
        doubling to 500 ms; SQLite cannot notify across processes). A key that
        finished elsewhere comes back as a deduplicated result; one whose owner
        died (or whose lease ran out) is taken over and runs here. Stops when
        ``pause`` returns False (a stop request).
        """
        return takeover.await_elsewhere(self, tasks, pause)

    # -- shutdown --------------------------------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None) -> bool:
        """Stop intake, finish or cancel what is pending, stop the workers, flush the store.

        ``submit()`` raises :class:`QueueShutDown` from now on. With
        ``cancel_futures=False`` every accepted task (retries included) is
        finished first; with ``True`` the tasks not yet started are cancelled
        and stay ``queued`` (or ``failed``, awaiting retry) in the store for
        the next run, and only tasks being processed are finished. With
        ``wait=True`` this blocks until done, or until ``timeout`` seconds
        have passed, in which case it returns False and leaves the workers to
        finish in the background (the store stays consistent: their rows are
        recovered by the next run; the interpreter still waits for them at
        exit, as for any ``ThreadPoolExecutor``). With ``wait=False`` it
        returns at once. Idempotent. With ``wait=True``, called from a
        done-callback of this queue's Futures or from a processor (a worker),
        it raises ``RuntimeError``: it would wait for itself; the shutdown goes
        on in the background.
        """
        if self.inflight.close():
            threading.Thread(target=closing.close, args=(self, cancel_futures), name="tq-shutdown",
                             daemon=True).start()
        elif cancel_futures:
            closing.cancel_pending(self)
        if not wait:
            return True
        if self._needed_here(settling=True) and not self._finished.is_set():
            raise RuntimeError("shutdown(wait=True) was called from a thread the shutdown waits for (a worker of "
                               "this queue, or a done-callback of one of its Futures): it would wait for itself. "
                               "The shutdown goes on in the background; call shutdown(wait=False) there")
        return self._finished.wait(timeout)

    # -- metrics -----------------------------------------------------------------------------------------

    def write_metrics(self, path: str) -> None:
        """Write :meth:`snapshot` to ``path`` as JSON, atomically. Raises ``OSError``."""
        closing.write_json(path, self.snapshot())

    def snapshot(self) -> dict:
        """Metrics plus the store's commit statistics, as a plain dict; once shut down, the final
        metrics (a copy), so that rates and utilisation stop where the queue did. ``owner`` names
        this queue's process (host, pid), so that the files of several workers can be told apart."""
        if self.final_metrics is not None:
            return copy.deepcopy(self.final_metrics)
        snap = self.metrics.snapshot()
        snap["owner"] = self.store.owner
        committer = self.store.committer
        snap["store"] = {"commits": committer.commits, "operations": committer.operations,
                         "ops_per_commit": committer.operations / committer.commits if committer.commits else 0.0}
        snap["retry_pending"] = len(self._scheduler)
        snap["config"] = {"workers": self.config.workers, "queue_size": self.config.queue_size,
                          "on_full": self.config.on_full, "max_attempts": self.config.max_attempts}
        return snap

    def __enter__(self) -> "TaskQueue":
        return self

    def __exit__(self, *exc_info) -> None:
        self.shutdown(wait=True)


# What an offer of a key in flight counts as, by what the item it joined was counted as.
_DUPLICATE_OUTCOMES = {"succeeded": "deduplicated", "dead_lettered": "deduplicated",
                       "deduplicated": "deduplicated", "claimed_elsewhere": "claimed_elsewhere"}


__all__ = ["TaskQueue"]
