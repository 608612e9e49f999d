"""How a committer reports what it committed: each op's ``done`` callback, then the waiting callers.

Results are delivered after the commit, outside the connection lock, in the committing thread
(:class:`Delivery.deliver`). A callback may commit more work, which is delivered right there,
nested in the delivery that called it. A callback that raises -- even ``KeyboardInterrupt`` or
``SystemExit`` -- is logged and the other ops are still told; in the main thread such an interrupt
is then raised again, once the outermost delivery is done.
"""

from __future__ import annotations

import logging
import threading
from _thread import allocate_lock
from typing import TYPE_CHECKING, Any, Sequence

from ..logs import LOGGER_NAME

if TYPE_CHECKING:
    from .committer import Op

_log = logging.getLogger(LOGGER_NAME)
Results = list  # of (result, error) pairs, one per op, in order


class Call:
    """Ops handed over together. A caller that waits holds ``ready`` (acquired): the committing
    thread fills in ``results``, then releases it. A post has no ``ready`` and no ``results``.
    ``urgent``: its caller must not wait for company (see ``Committer.commit``)."""

    __slots__ = ("ops", "results", "ready", "urgent")

    def __init__(self, ops: Sequence["Op"], ready: Any = None, urgent: bool = False) -> None:
        self.ops = ops
        self.results: list | None = None
        self.ready = ready
        self.urgent = urgent


def waiting(ops: Sequence["Op"], urgent: bool = False) -> Call:
    """A :class:`Call` whose caller will wait for its results."""
    ready = allocate_lock()
    ready.acquire()
    return Call(ops, ready, urgent)


class Delivery(threading.local):
    """Per thread: whether it is running ``done`` callbacks now, and an interrupt a delivery nested
    in one of them left for the outermost delivery to raise."""

    delivering = False
    interrupted: BaseException | None = None

    def deliver(self, calls: list[Call], ops: Sequence["Op"], results: Results) -> None:
        """Report ``results`` (one per op of ``ops``: the ops of ``calls``, in order): ``done``
        callbacks first (in this thread), then wake the waiting callers."""
        outer = self.delivering
        self.delivering = True
        position = 0
        for call in calls:  # every waiting caller has its results before any callback runs
            if call.ready is not None:
                call.results = results[position:position + len(call.ops)]
            position += len(call.ops)
        interrupted: BaseException | None = None
        try:
            for op, (result, error) in zip(ops, results):
                if op.done is not None:
                    try:
                        op.done(result, error)
                    except BaseException as exc:  # noqa: BLE001 - a callback must not stop delivery
                        _log.exception("store callback failed", extra={
                            "event": "callback_error", "task_id": None, "idempotency_key": None})
                        if not isinstance(exc, Exception) and interrupted is None:
                            interrupted = exc
        finally:
            self.delivering = outer
            for call in calls:
                if call.ready is not None:
                    call.ready.release()
        # A KeyboardInterrupt or SystemExit from a callback is raised again once every result is out,
        # in the main thread only: a Ctrl-C lands in whatever the main thread runs, and must reach it.
        # Elsewhere (the writer, a worker committing its start) it was logged, and the thread goes on.
        # A delivery nested in a callback (that callback committed more work) leaves it to the
        # outermost one, so that the callbacks around it are all told first.
        if outer:
            if interrupted is not None and self.interrupted is None:
                self.interrupted = interrupted
            return
        if self.interrupted is not None:
            interrupted, self.interrupted = interrupted or self.interrupted, None
        if interrupted is not None and threading.current_thread() is threading.main_thread():
            raise interrupted
