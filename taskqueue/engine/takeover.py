"""Rows other processes left or hold: recovery at start-up, a worker's claims, waiting for the rest.

The :class:`~taskqueue.engine.TaskQueue` methods of the same names are the
public face of these functions.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from .. import errors
from ..errors import ClaimedElsewhere, text_of
from ..store import Recovered, Row
from ..task import Task
from . import closing
from .inflight import WorkItem

if TYPE_CHECKING:
    from .core import TaskQueue


def recover(tq: "TaskQueue", unowned: bool) -> Recovered:
    """Take over the open rows nobody runs; schedule the runnable ones (a retry at its due time).
    Returns what was taken over: the rows scheduled here, and the rows dead-lettered."""
    recovered = tq.store.commit(tq.store.recover(tq.config.max_attempts, unowned))
    report_dead(tq, recovered.dead)
    now = tq._wall()
    runnable, dead = [], list(recovered.dead)
    for row in recovered.runnable:
        task = _valid_task(tq, row)
        if task is None:
            dead.append(row)
            continue
        runnable.append(row)
        item = _adopt(tq, row, task)
        if item is not None and not tq._scheduler.schedule(max(0.0, (row.next_attempt_at or now) - now), item):
            closing.abandon(tq, item)
    if runnable or dead:
        tq._log.info("recovered open tasks", extra={
            "event": "recovered", "task_id": None, "idempotency_key": None,
            "runnable": len(runnable), "dead": len(dead)})
    return Recovered(runnable, dead)


def claim_due(tq: "TaskQueue", limit: int) -> int:
    """Claim up to ``limit`` due rows and queue them. Returns how many rows were taken (dead-lettered
    ones included)."""
    found = tq.store.commit(tq.store.claim_due(limit, tq.config.max_attempts))
    report_dead(tq, found.dead)
    for row in found.runnable:
        task = _valid_task(tq, row)
        item = None if task is None else _adopt(tq, row, task)
        if item is not None:
            tq._requeue(item)
    return len(found.runnable) + len(found.dead)


def _valid_task(tq: "TaskQueue", row: Row) -> Task | None:
    """The task of a row just taken over; None if it no longer validates: the row is dead-lettered
    then (left open, it would stop every start-up that recovers it)."""
    check = getattr(tq.processor, "check", None)  # a processor of the caller's may offer no check()
    try:
        task = row.task()
        if task.idempotency_key != row.idempotency_key:  # an invalid item, recorded under a key of its own
            raise errors.InvalidTask(f"the stored task's key {task.idempotency_key!r} is not its row's "
                                     f"({row.idempotency_key!r}): that task is another row's to run")
        if check is not None:
            check(task)
        return task
    except errors.InvalidTask as exc:
        tq.store.commit(tq.store.reject(row.id, row.version, exc))
        tq.metrics.incr("dead_lettered")
        tq._log.warning("stored task is invalid: dead-lettered", extra={
            "event": "dead_lettered", "task_id": row.task_id, "idempotency_key": row.idempotency_key,
            "error_class": type(exc).__name__, "error": text_of(exc)})
        return None


def _adopt(tq: "TaskQueue", row: Row, task: Task) -> WorkItem | None:
    """An item for a row just taken over, or None when it will not run here: a submit of its key holds
    it already, or the queue is shutting down (the row is let go of then: anyone may take it)."""
    item = tq.inflight.adopt(row, task)
    if item is None and tq.inflight.closed:
        try:
            tq.store.post(tq.store.let_go(row.id, row.version))  # stale (a submit took it since): nothing
        except Exception:  # noqa: BLE001 - the store is closed already: the lease runs out instead
            pass
    return item


def report_dead(tq: "TaskQueue", rows: list[Row]) -> None:
    """Count and log rows taken over on their last attempt (their process died mid-attempt)."""
    for row in rows:
        tq.metrics.incr("dead_lettered")
        tq._log.warning("task dead-lettered: its last attempt never finished", extra={
            "event": "dead_lettered", "task_id": row.task_id, "idempotency_key": row.idempotency_key,
            "error_class": row.error_class, "error": row.last_error, "attempt": row.attempts})


def await_elsewhere(tq: "TaskQueue", tasks: Iterable[Task], pause: Callable[[float], bool]
                    ) -> Iterator[tuple[Task, Future]]:
    """Offer ``tasks`` again with a backoff until each is accepted here (see TaskQueue.await_elsewhere)."""
    waiting = list(tasks)
    delay = 0.02
    while waiting and pause(delay):
        delay = min(delay * 2, 0.5)
        still = []
        for task in waiting:
            future = tq.submit(task)
            if future.done() and not future.cancelled() and isinstance(future.exception(), ClaimedElsewhere):
                still.append(task)
            else:
                yield task, future
        waiting = still
