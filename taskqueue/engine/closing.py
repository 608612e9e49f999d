"""How a :class:`~taskqueue.engine.TaskQueue` stops: finish or cancel what is pending, then let go.

:meth:`TaskQueue.shutdown` is the public face: it closes intake and runs
:func:`close` in a thread of its own. The order matters and is all here: the
accepted tasks settle (or are cancelled), the workers take one sentinel each
and end, the scheduler and the background threads stop, the waiting rows
this process still holds are given up, the store commits its last hand-overs
and closes, and the final metrics are written.

Queues nobody shut down are stopped at interpreter exit (:func:`at_exit`),
as ``concurrent.futures`` does for its executors.
"""

from __future__ import annotations

import concurrent.futures.thread  # noqa: F401 - registers its exit hook first, so that ours runs first
import json
import queue
import threading
import weakref
from typing import TYPE_CHECKING

from ..errors import QueueShutDown, text_of
from ..logs import task_extra
from ..tempfiles import atomic_write_text
from .inflight import STOP, WorkItem

if TYPE_CHECKING:
    from .core import TaskQueue

live_queues: "weakref.WeakSet[TaskQueue]" = weakref.WeakSet()  # started and not yet shut down


def close(tq: "TaskQueue", cancel_futures: bool) -> None:
    """Run the whole shutdown of ``tq`` (intake is closed already); set ``tq._finished`` at the end."""
    try:
        if cancel_futures:
            cancel_pending(tq)
        tq.join()
        for worker in tq._workers:
            if not worker.cancelled():  # a worker loop that never ran (TaskQueue() failed to start) needs none
                tq._queue.put(STOP)
        tq._executor.shutdown(wait=True)
        for item in tq._scheduler.stop():  # only when cancelled concurrently: kept for the next run
            abandon(tq, item)
        tq._sampler.stop()
        tq._heartbeat.stop()
        try:  # the waiting rows we still hold (cancelled at shutdown): others may take them at once
            tq.store.commit(tq.store.disown())
        except Exception as exc:  # noqa: BLE001 - they are freed anyway when our leases run out
            tq._log.warning("could not give up waiting rows at shutdown", extra={
                "event": "disown_failed", "task_id": None, "idempotency_key": None,
                "error_class": type(exc).__name__, "error": text_of(exc)})
        tq.store.close()
        tq.final_metrics = tq.snapshot()
        if tq._metrics_out:
            try:
                write_json(tq._metrics_out, tq.final_metrics)
            except OSError as exc:  # the metrics are lost, not the tasks: say so and finish
                tq._log.error("could not write final metrics", extra={
                    "event": "metrics_write_failed", "task_id": None, "idempotency_key": None,
                    "error_class": type(exc).__name__, "error": text_of(exc), "path": tq._metrics_out})
    finally:
        live_queues.discard(tq)
        tq._finished.set()


def cancel_pending(tq: "TaskQueue") -> None:
    """Cancel every task not started yet: the queued ones and the retries waiting for their time.

    Their rows are let go of as they are cancelled (still waiting, no owner), so that other
    processes may take them at once, not once the tasks still running here have ended -- or, when a
    grace period runs out first, once this process's leases have. No worker holds these items (a
    worker takes an item off the queue before it starts it), so none of them can start here now.
    """
    drain(tq)  # first: the scheduler thread may be blocked putting into a full queue
    for item in tq._scheduler.stop():
        _let_go(tq, item)
        abandon(tq, item)
    drain(tq)


def drain(tq: "TaskQueue") -> None:
    """Abandon every item waiting in the queue. A worker's stop sentinel goes back: a shutdown under
    way queued it (this is a second, cancelling one: the exit hook's), and its worker must take it."""
    stops = 0
    try:
        while True:
            try:
                item = tq._queue.get_nowait()
            except queue.Empty:
                return
            if item is STOP:
                stops += 1
            else:
                _let_go(tq, item)
                abandon(tq, item)
    finally:
        for _ in range(stops):
            tq._queue.put(STOP)


def _let_go(tq: "TaskQueue", item: WorkItem) -> None:
    """Hand over the letting go of ``item``'s row, before its Future is cancelled (so a caller who
    saw it cancelled and then flushes the store finds the row free). Stale (taken over since): no
    change."""
    try:
        tq.store.post(tq.store.let_go(item.row_id, item.version))
    except Exception:  # noqa: BLE001 - the store is closed or broken: the final disown, or the lease, frees it
        pass


def abandon(tq: "TaskQueue", item: WorkItem) -> None:
    """Give up on an item at shutdown: its row stays open in the store for the next run.

    A done-callback of its Future that raises what ``Future`` does not catch (``SystemExit``) is
    logged and the item forgotten; the interrupt is raised again only in the main thread (where a
    Ctrl-C lands). Elsewhere -- the shutdown thread, the writer -- the shutdown goes on.
    """
    try:
        if item.future.cancel():
            tq.inflight.forget(item)
        else:
            tq.inflight.settle(item, error=QueueShutDown(
                f"task {item.task.id!r} was not finished before shutdown; it stays in the store"))
    except BaseException as exc:  # noqa: BLE001 - see above
        tq.inflight.forget(item)
        tq._log.error("a done-callback raised while the task was given up", exc_info=True,
                      extra=task_extra("callback_error", item.task, error=exc))
        if threading.current_thread() is threading.main_thread():
            raise


def write_json(path: str, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def at_exit() -> None:
    """At interpreter exit, stop queues nobody shut down (else their workers would block exit)."""
    for tq in list(live_queues):
        tq.shutdown(wait=True, cancel_futures=True, timeout=5.0)


# Registered like concurrent.futures does, and after it (exit hooks run newest first), so it stops the
# queues before the executor's hook joins their workers, which would otherwise wait on the queue forever.
if hasattr(threading, "_register_atexit"):
    threading._register_atexit(at_exit)
