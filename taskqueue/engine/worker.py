"""The worker loop, and how a processed task's outcome is recorded.

Each of a queue's ``config.workers`` threads runs :func:`work` until it takes
the stop sentinel. For each task it makes the attempt (``running``, attempts
+ 1) durable *before* processing it, and only for the task it is about to
process, so a process that dies mid-attempt has that attempt counted and no
other: it records the attempt in the store's start ledger (a memory-mapped
file a killed process leaves behind; see :mod:`taskqueue.store.ledger`) and
hands the start to the committer without waiting for it, or, where there is
no ledger (PostgreSQL) or no free slot in it, commits the start and waits.
The outcome of the task just processed rides along with the next start (one
hand-over per task); when the worker finds no work waiting it hands the
outcome over at once instead of holding it back.

An outcome is an :class:`~taskqueue.store.Op` whose ``done`` callback runs once
it is committed: only then does the task's Future resolve (success, dead
letter) or its retry get scheduled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
import traceback
from typing import TYPE_CHECKING

from .. import errors
from ..errors import ClaimedElsewhere, StaleVersion, text_of
from ..logs import task_extra
from ..processor import Output
from ..retry import classify
from ..store import Attempt, Op, Row
from ..task import TaskResult, TaskStatus
from . import closing
from .inflight import STOP, WorkItem

if TYPE_CHECKING:
    from .core import TaskQueue


def work(tq: "TaskQueue", index: int) -> None:
    """One worker: take a task, claim its attempt, process it, record the outcome; until :data:`STOP`."""
    tq._worker_threads.add(threading.get_ident())
    try:
        _loop(tq, index)
    finally:
        tq._worker_threads.discard(threading.get_ident())


def _loop(tq: "TaskQueue", index: int) -> None:
    tasks, store = tq._queue, tq.store
    outcome: Op | None = None  # the last task's outcome, not handed over yet
    while True:
        try:
            item = tasks.get_nowait()
        except queue.Empty:
            if outcome is not None:  # never hold an outcome back while waiting for work
                store.post(outcome)
                outcome = None
            item = tasks.get()
        if item is STOP:
            if outcome is not None:
                store.post(outcome)
            return
        try:
            outcome = _attempt(tq, index, item, outcome)
        except BaseException as exc:  # a bug, or process() raising SystemExit: keep the worker, settle the Future
            tq._log.exception("worker error", extra=task_extra("worker_error", item.task, error=exc))
            if not item.forgotten:  # settled already, if what escaped came from its Future's callback
                with contextlib.suppress(Exception):  # its start, if handed over, has told whether it counted
                    store.flush()
                _not_finished(tq, item, exc)
            outcome = None


def _attempt(tq: "TaskQueue", index: int, item: WorkItem, outcome: Op | None) -> Op | None:
    """Claim ``item``'s attempt (committing ``outcome`` with it), process it; return its outcome Op."""
    try:
        tq.metrics.on_get(tq.depth(), time.perf_counter() - item.enqueued)
        if not item.started:
            item.started = item.future.set_running_or_notify_cancel()
            if not item.started:  # its client cancelled it while it waited
                _drop_cancelled(tq, item)
                return outcome
    except BaseException:  # before the hand-over: the previous outcome must not be lost with this item
        if outcome is not None:
            tq.store.post(outcome)
        raise
    along = () if outcome is None else (outcome,)
    ledger = tq.store.ledger
    # Start without waiting only while this process's leases are sure to hold: after a freeze longer
    # than a lease, another process may own the row now, and only a start committed first can tell.
    trusted = item.epoch == tq.inflight.epoch and tq._heartbeat.fresh()
    slot = None if ledger is None or not trusted else ledger.begin(item.row_id, item.version)
    item.refused = item.uncounted = None
    try:
        if slot is not None:  # recorded where a crash cannot lose it: commit the start without waiting
            tq.store.post(*along, tq.store.start(item.row_id, item.version, item.attempts,
                                                 done=_start_committed(tq, item, slot, item.version)))
            item.version, item.attempts = item.version + 1, item.attempts + 1
        else:  # urgent: this worker cannot go on until it is committed
            started: Attempt = tq.store.commit(tq.store.start(item.row_id, item.version, item.attempts), along,
                                               urgent=True)
            item.version, item.attempts = started
            item.epoch = tq.inflight.epoch  # the row is ours, now
    except StaleVersion as exc:
        settle(tq, item, "claimed_elsewhere", error=_claimed_elsewhere(item, exc))
        return None
    except Exception as exc:  # the store failed: fail this item, keep the worker alive
        if slot is not None:
            ledger.end(slot, erase=True)  # never handed over: this attempt does not begin
        _store_failed(tq, item, exc)
        return None
    attempt = item.attempts
    if tq._log.isEnabledFor(logging.DEBUG):
        tq._log.debug("attempt started", extra=task_extra("attempt_started", item.task, attempt=attempt,
                                                          pid=os.getpid(), worker=index))
    began = time.perf_counter()
    try:
        output = tq.processor.process(item.task, attempt)
        if type(output) is not Output and not isinstance(output, Output):
            raise TypeError(f"{type(tq.processor).__name__}.process() returned {type(output).__name__}, "
                            f"not an Output")
    except Exception as exc:
        tq.metrics.on_processed(index, time.perf_counter() - began)
        # The error lives on (its Future holds it, its client may keep that): let its traceback keep
        # the lines, not the finished frames' locals -- a compressor's state, a decoded image.
        traceback.clear_frames(exc.__traceback__)
        return _failed(tq, item, exc, attempt)
    busy = time.perf_counter() - began
    tq.metrics.on_processed(index, busy)
    return _succeeded(tq, item, output, attempt, began - item.submitted, busy)


def _succeeded(tq: "TaskQueue", item: WorkItem, output: Output, attempt: int, waited: float,
               busy: float) -> Op:
    result = TaskResult(task_id=item.task.id, idempotency_key=item.key, status=TaskStatus.SUCCESS,
                        output_key=output.key, attempts=attempt, queue_wait_s=waited, processing_s=busy,
                        output_bytes=output.size)
    if tq._log.isEnabledFor(logging.DEBUG):
        tq._log.debug("task succeeded", extra=task_extra("succeeded", item.task, attempt=attempt,
                                                          output_key=output.key))

    def committed(_version: int, error: BaseException | None) -> None:
        if error is None:
            settle(tq, item, "succeeded", result=result)
        else:
            _store_failed(tq, item, error)

    return tq.store.succeed(item.row_id, item.version, output.key, output.size, done=committed)


def _failed(tq: "TaskQueue", item: WorkItem, exc: Exception, attempt: int) -> Op:
    tq.metrics.incr("failed")
    kind = classify(exc)
    if tq.policy.should_retry(exc, attempt):
        delay = tq.policy.delay(attempt, tq._rng)
        tq._log.info("attempt failed, retrying", extra=task_extra(
            "retry_scheduled", item.task, error=exc, kind=kind, attempt=attempt, delay_s=round(delay, 6)))

        def retry_committed(version: int, error: BaseException | None) -> None:
            if error is not None:
                _store_failed(tq, item, error)
                return
            item.version = version
            tq.metrics.incr("retried")
            if not tq._scheduler.schedule(delay, item):  # shutting down with cancel_futures
                closing.abandon(tq, item)

        return tq.store.fail(item.row_id, item.version, exc, tq._wall() + delay, done=retry_committed)
    level = logging.WARNING if isinstance(exc, errors.TaskQueueError) else logging.ERROR
    tq._log.log(level, "task dead-lettered", exc_info=level == logging.ERROR, extra=task_extra(
        "dead_lettered", item.task, error=exc, kind=kind, attempt=attempt))

    def dead_committed(_version: int, error: BaseException | None) -> None:
        if error is None:
            settle(tq, item, "dead_lettered", error=exc)
        else:
            _store_failed(tq, item, error)

    return tq.store.dead_letter(item.row_id, item.version, exc, done=dead_committed)


def _start_committed(tq: "TaskQueue", item: WorkItem, slot: int, version: int):
    """The ``done`` of a start posted without waiting (the attempt at ``version`` is running by now).

    Committed: the database counts the attempt, the ledger slot is free. Refused as stale: the row
    is another process's (an expired lease), which counts its own attempts. Failed otherwise (the
    store is failing): this attempt runs uncounted, while the row stays ours (queued, leased, so
    nobody else runs it meanwhile); once the attempt has ended the row is let go of, with the
    attempt counted from the ledger's record in the same operation (see :func:`_let_go_of`). Until
    that commits, the slot (and the ledger file, at close) keeps the record for the next process
    to replay. Either refusal is kept for the outcome, which the same cause fails (see
    :func:`_store_failed`).
    """
    ledger = tq.store.ledger

    def committed(_attempt: Attempt | None, error: BaseException | None) -> None:
        item.refused = error
        if error is None or isinstance(error, StaleVersion):
            ledger.end(slot)
        else:
            item.uncounted = (slot, version)
    return committed


def _claimed_elsewhere(item: WorkItem, exc: StaleVersion) -> ClaimedElsewhere:
    return ClaimedElsewhere(f"task {item.task.id!r} was claimed by another process ({describe(exc.args[0])})")


def _drop_cancelled(tq: "TaskQueue", item: WorkItem) -> None:
    """Forget a task its client cancelled and give its row back (unless re-adopted since): deleted if
    we created it, else free for anyone at once. Handed over first: once ``join()`` sees the item
    forgotten, a ``flush()`` finds its row given back."""
    try:
        tq.store.post(item.give_back(tq.store, done=_log_give_back_error(tq, item)))
    finally:
        tq.inflight.forget(item)


def _log_give_back_error(tq: "TaskQueue", item: WorkItem):
    def given_back(_result: None, error: BaseException | None) -> None:
        if error is not None and not isinstance(error, StaleVersion):  # stale: re-adopted, nothing to undo
            tq._log.error("could not give back the row of a task not run", extra=task_extra(
                "release_failed", item.task, error=error))
    return given_back


def _store_failed(tq: "TaskQueue", item: WorkItem, error: BaseException) -> None:
    """The store refused this item's attempt or outcome: fail its Future, and let go of its row, so
    that it is not left open under this (living, lease-renewing) process: anyone may take it over.

    An attempt whose start (posted without waiting) found the row taken by another process ran
    anyway: it is settled as claimed elsewhere, as if the start had been refused before it ran. So
    is an outcome refused as stale: the row was taken over while the attempt ran (this process was
    frozen longer than its lease), and the other process runs the task; its row is not ours to
    let go of."""
    refused = item.refused
    if isinstance(refused, StaleVersion):
        settle(tq, item, "claimed_elsewhere", error=_claimed_elsewhere(item, refused))
        return
    if isinstance(error, StaleVersion) and refused is None:
        tq._log.warning("outcome refused: the row was taken over while the attempt ran (a freeze past the lease?)",
                        extra=task_extra("outcome_stale", item.task, error=error))
        tq.inflight.release(item)
        settle(tq, item, "claimed_elsewhere", error=_claimed_elsewhere(item, error))
        return
    if refused is not None:  # its start failed (see _start_committed): let go, the attempt counted
        tq._log.error("could not record the attempt", extra=task_extra("store_error", item.task, error=refused))
        _not_finished(tq, item, refused)
        return
    tq._log.error("could not record outcome", extra=task_extra("store_error", item.task, error=error))
    _not_finished(tq, item, error)


def _not_finished(tq: "TaskQueue", item: WorkItem, cause: BaseException) -> None:
    """The queue itself could not finish ``item`` (``cause``): let go of its row, then fail its Future
    with :class:`~taskqueue.errors.OutcomeNotRecorded`, ``cause`` chained; counted as errored."""
    _let_go_of(tq, item)
    error = errors.OutcomeNotRecorded(f"task {item.task.id!r}: its outcome was not recorded "
                                      f"({type(cause).__name__}: {text_of(cause)}); its row is left for another run")
    error.__cause__ = cause
    settle(tq, item, "errored", error=error)


def _let_go_of(tq: "TaskQueue", item: WorkItem) -> None:
    """Let go of the row of an item whose outcome will not be recorded here (whatever its status: a
    started attempt stays counted), so that it is not left open under this living, lease-renewing
    process: anyone may take it over. An attempt whose start the database refused is counted in
    the same operation, from the ledger's record (which is kept until that commits). Handed over
    before its Future settles, so that offering the task again here finds the row free (a commit
    never overtakes what was handed over before it). A row taken over since, by another process or
    by a new item here, is at another version: the give-up changes nothing."""
    tq.inflight.release(item)  # before the row is free: whoever takes it over next gets an item of its own
    store, uncounted, item.uncounted = tq.store, item.uncounted, None
    if uncounted is None:
        op = store.give_up(item.row_id, item.version)
    else:
        slot, version = uncounted

        def counted(_rows: int | None, error: BaseException | None) -> None:
            if error is None:
                store.ledger.end(slot)
        op = store.give_up(item.row_id, version + 1, begun=version, done=counted)
    try:
        store.post(op)
    except Exception:  # noqa: BLE001 - the store is closed or broken: the lease runs out at exit (and
        pass           # the ledger file keeps an uncounted attempt's record for the next process)


def settle(tq: "TaskQueue", item: WorkItem, counter: str, *, result: TaskResult | None = None,
           error: BaseException | None = None) -> None:
    """Count an item's outcome and resolve its Future; its outcome (if any) is already committed."""
    item.outcome = counter
    tq.metrics.on_outcome(counter, time.perf_counter() - item.submitted)
    tq.inflight.settle(item, result, error)


def describe(row: Row | None) -> str:
    return "row gone" if row is None else f"status {row.status.value}, owner {row.owner}"
