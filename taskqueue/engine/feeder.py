"""The feeder of a ``worker`` process: claims due rows from the store into the bounded queue.

In ``run`` the producer and the workers share a process and tasks arrive
through ``submit()``. A ``worker`` has no producer: its feeder takes rows
that some ``enqueue`` (or a dead worker, or a retry falling due) left in the
store, a small batch at a time, and only as many as there is room for: the
bounded queue's size bounds what one worker process holds, so many workers
share the work instead of one hoarding it.

When nothing is due the feeder waits for the first of: a notification from
another process (PostgreSQL ``LISTEN``), the earliest moment a row may become
claimable (a retry falls due, another worker's lease runs out; within a second
while a worker of this host holds a lease, as a killed one notifies nobody: see
``wake_at``), or a stop request. Two things notify nobody, so the feeder looks
on its own as well: rows due now that its claim did not get (another
transaction holds them, and may roll back), after the backoff below; and, in
any case, every ``SAFETY_POLL_S`` (a listener's connection that died half-open
hears nothing and says nothing). SQLite cannot notify across processes, so
there the feeder looks again after a bounded backoff (20 ms doubling to 1 s) --
the honest way without a broker, and the same as ``run`` waiting on another
``run``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core import TaskQueue

BACKOFF_MIN_S, BACKOFF_MAX_S = 0.02, 1.0
SAFETY_POLL_S = 10.0  # a listener hears notifications, not its own connection dying half-open: look anyway
AHEAD = 2  # tasks a feeder holds per worker thread, the one it runs included


def held_at_most(queue_size: int, workers: int, ahead: int = AHEAD) -> int:
    """What a feeder holds at once: no more than the queue's size, nor than its workers start soon."""
    return min(queue_size, ahead * workers)


class Feeder:
    """Claims due rows into ``tq``'s queue until stopped, or until no row is open anywhere.

    ``batch``: rows per claim. ``ahead``: tasks held per worker thread, the
    one it runs included: the feeder holds at most ``min(queue_size, ahead x
    workers)``, so slow tasks spread over every worker process instead of the
    first one hoarding a queue's worth. ``exit_when_idle``: return once nothing
    is queued, waiting for a retry or running in any process (rows other
    workers run are waited for, and taken over if their lease runs out).

    Every wait is one ``InFlight.wait_settled`` with a predicate, so it wakes
    on whichever comes first: a stop, a notification (a listener thread pokes
    it), one of our tasks settling when that matters, or a timeout (the next
    due moment; on SQLite also the backoff).
    """

    def __init__(self, tq: "TaskQueue", *, batch: int = 16, ahead: int = AHEAD, exit_when_idle: bool = False) -> None:
        if batch <= 0 or ahead <= 0:
            raise ValueError(f"batch and ahead must be greater than 0, got {batch!r} and {ahead!r}")
        self._tq = tq
        self._exit_when_idle = exit_when_idle
        # Items held here at once (queued, running, awaiting their commit): what the queue holds at
        # most, and no more than the workers can start soon.
        self._capacity = held_at_most(tq.config.queue_size, tq.config.workers, ahead)
        self._batch = min(batch, self._capacity)
        self._stopped = False
        self._notified = False  # set by the listener thread; read and cleared by run()
        self._listener = tq.store.listener(self._on_notify)
        self.claimed = 0

    def _on_notify(self) -> None:
        self._notified = True
        self._tq.inflight.poke()

    def run(self) -> str:
        """Feed until stopped (``"stopped"``) or, with ``exit_when_idle``, idle everywhere (``"idle"``)."""
        tq, backoff = self._tq, BACKOFF_MIN_S
        try:
            while not self._stopped:
                seen = tq.settled  # first: one of ours settling from here on ends any wait below
                held = len(tq.inflight)
                room = self._capacity - held
                if room <= 0:  # hold no more than the queue's size: wait for one of ours to settle
                    tq.inflight.wait_settled(seen, None, also=lambda: self._stopped)
                    continue
                self._notified = False
                found = tq.claim_due(min(self._batch, room))
                self.claimed += found
                if found:
                    backoff = BACKOFF_MIN_S
                    continue
                if self._exit_when_idle and len(tq.inflight) == 0 and tq.store.open_count() == 0:
                    return "idle"
                # One of our own tasks settling matters only when it may leave us idle everywhere.
                backoff = self._wait(backoff, seen if self._exit_when_idle and held else float("inf"))
            return "stopped"
        finally:
            if self._listener is not None:
                self._listener.close()

    def _wait(self, backoff: float, seen: float) -> float:
        """Wait until rows may be claimable, or one of ours settles past ``seen``; return the next
        backoff (used where nobody can notify: SQLite, or a PostgreSQL listener that died)."""
        tq = self._tq
        now = tq._wall()
        due = tq.store.wake_at(now, tq.store.owner)
        timeout = None if due is None else max(0.0, due - now)
        if timeout == 0.0:  # due now, yet the claim just now did not get it: another transaction holds it,
            timeout = backoff  # and its rollback would notify nobody: look again after the backoff
            backoff = min(backoff * 2, BACKOFF_MAX_S)
        elif self._listener is None or self._listener.failed:  # look again after the backoff
            timeout = backoff if timeout is None else min(timeout, backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
        else:  # notified, or at the due time, or after a while in any case
            timeout = SAFETY_POLL_S if timeout is None else min(timeout, SAFETY_POLL_S)
        tq.inflight.wait_settled(seen, timeout, also=lambda: self._stopped or self._notified)
        return backoff

    def stop(self) -> None:
        """Ask :meth:`run` to return, waking it wherever it waits. Callable from any thread."""
        self._stopped = True
        self._tq.inflight.poke()
