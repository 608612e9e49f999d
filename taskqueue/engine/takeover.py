"""Rows other processes left or hold: recovery at start-up, a worker's claims, waiting for the rest.

The :class:`~taskqueue.engine.TaskQueue` methods of the same names are the
public face of these functions.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from .. import errors
from ..errors import ClaimedElsewhere
from ..store import Recovered, Row
from ..task import Task
from . import closing

if TYPE_CHECKING:
    from .core import TaskQueue


def recover(tq: "TaskQueue", unowned: bool) -> Recovered:
    """Take over the open rows nobody runs; schedule the runnable ones (a retry at its due time)."""
    recovered = tq.store.commit(tq.store.recover(tq.config.max_attempts, unowned))
    now = tq._wall()
    for row in recovered.runnable:
        item = tq.inflight.adopt(row)
        if item is None:  # a submit of this key got there first; it holds the row
            continue
        if not tq._scheduler.schedule(max(0.0, (row.next_attempt_at or now) - now), item):
            closing.abandon(tq, item)
    report_dead(tq, recovered.dead)
    if recovered.runnable or recovered.dead:
        tq._log.info("recovered open tasks", extra={
            "event": "recovered", "task_id": None, "idempotency_key": None,
            "runnable": len(recovered.runnable), "dead": len(recovered.dead)})
    return recovered


def claim_due(tq: "TaskQueue", limit: int) -> int:
    """Claim up to ``limit`` due rows and queue them; a stored task that no longer validates is
    dead-lettered instead. Returns how many rows were taken (dead-lettered ones included)."""
    found = tq.store.commit(tq.store.claim_due(limit, tq.config.max_attempts))
    for row in found.runnable:
        try:
            task = row.task()
            tq.processor.check(task)
        except errors.InvalidTask as exc:
            tq.store.commit(tq.store.reject(row.id, row.version, exc))
            tq.metrics.incr("dead_lettered")
            tq._log.warning("stored task is invalid: dead-lettered", extra={
                "event": "dead_lettered", "task_id": row.task_id, "idempotency_key": row.idempotency_key,
                "error_class": type(exc).__name__, "error": str(exc)})
            continue
        item = tq.inflight.adopt(row, task)
        if item is not None:
            tq._requeue(item)
    report_dead(tq, found.dead)
    return len(found.runnable) + len(found.dead)


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
