"""The in-flight table: the tasks a queue has accepted, from ``submit()`` until their Future settles.

It is where idempotency meets concurrency inside one process: a second
``submit()`` of a key in flight gets the first one's Future, and recovery
never adopts a row whose key a submit already holds. It also counts what is
unfinished, so ``join()`` and ``shutdown()`` can wait for it.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, InvalidStateError
from typing import Callable

from ..errors import QueueShutDown
from ..store import Op, Row, TaskStore
from ..store.contract import Done
from ..task import Task

STOP = object()  # put on the bounded queue in place of a WorkItem: ends one worker loop


class WorkItem:
    """A task on its way through the queue: its Future, and the row version this process last wrote."""

    __slots__ = ("task", "key", "future", "row_id", "version", "attempts", "inserted", "started", "submitted",
                 "enqueued", "forgotten", "refused", "uncounted", "outcome", "epoch")

    def __init__(self, task: Task, epoch: int = 0) -> None:
        self.task = task
        self.key = task.idempotency_key
        self.future: Future = Future()
        self.row_id = 0
        self.version = 0
        self.attempts = 0  # the row's attempt count at ``version``
        self.inserted = False  # this process created the row: it may delete it if it never runs
        self.started = False   # set_running_or_notify_cancel() has been called
        self.refused: BaseException | None = None  # why its last start, posted without waiting, failed
        self.uncounted: tuple[int, int] | None = None  # (ledger slot, version) of an attempt that start left uncounted
        self.forgotten = False  # settled (or given up): counted once, whatever calls forget() again
        self.outcome: str | None = None  # the counter its end was counted under, set before its Future resolves
        self.epoch = epoch  # InFlight.epoch when this process last knew the row was its own (see lapse)
        self.submitted = self.enqueued = time.perf_counter()

    def bind(self, row: Row, inserted: bool = False) -> "WorkItem":
        self.row_id, self.version, self.attempts, self.inserted = row.id, row.version, row.attempts, inserted
        return self

    def give_back(self, store: TaskStore, done: Done | None = None) -> Op:
        """The op that gives back this item's row when its task will not run here (cancelled, refused):
        deleted if this process inserted it, else left waiting with no owner, for any process to take
        at once. Stale -- another claim took the row since -- it changes nothing."""
        if self.inserted:
            return store.release(self.row_id, self.version, done=done)
        return store.let_go(self.row_id, self.version, done=done)


class InFlight:
    """Idempotency key -> the :class:`WorkItem` handling it here, plus counts of unfinished and settled items.

    ``_lock`` guards every field; ``_settled`` (a Condition on it) announces
    that an item settled. Only a Future's own lock is taken while it is held.
    An item whose client cancelled its Future is not in flight any more: its
    key may be offered (or adopted) again at once, though the item stays
    unfinished until a worker drops it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._items: dict[str, WorkItem] = {}
        self._unfinished = 0
        self._closed = False
        self._waiters = 0  # threads in wait_settled() or join(): only then does a settle notify
        self._resolving = threading.local()  # .items: how many items this thread is resolving (nested)
        self.settled = 0  # items settled so far
        self.epoch = 0  # leases lapsed so far (see lapse): an item of an earlier epoch may have lost its row

    def admit(self, task: Task) -> tuple[WorkItem, bool]:
        """The item for ``task``'s key: ``(item in flight, False)``, or a new one and True.

        A new item counts as unfinished from here: it must be settled (or
        :meth:`forget` called). Raises :class:`QueueShutDown` after :meth:`close`.
        """
        with self._lock:
            if self._closed:
                raise QueueShutDown("submit() after shutdown()")
            item = self._held(task.idempotency_key)
            if item is not None:
                return item, False
            item = self._items[task.idempotency_key] = WorkItem(task, self.epoch)
            self._unfinished += 1
            return item, True

    def adopt(self, row: Row, task: Task | None = None) -> WorkItem | None:
        """A new item for a row taken over (recovery, a worker's claim), or None if a submit holds its
        key already or intake is closed (see :attr:`closed`: past ``shutdown()``'s wait for the items in
        flight, an item adopted now would never be run). ``task`` is the row's task when the caller
        has decoded it already."""
        with self._lock:
            if self._closed or self._held(row.idempotency_key) is not None:
                return None
            item = self._items[row.idempotency_key] = WorkItem(task or row.task(), self.epoch).bind(row)
            self._unfinished += 1
            return item

    def _held(self, key: str) -> WorkItem | None:
        """The item in flight for ``key`` (the caller holds the lock); a cancelled one does not count
        (it is forgotten when a worker drops it, see :meth:`forget`)."""
        item = self._items.get(key)
        return None if item is None or item.future.cancelled() else item

    def settle(self, item: WorkItem, result: object = None, error: BaseException | None = None, *,
               accepted: bool = True) -> None:
        """Resolve ``item``'s Future (unless its client cancelled it) and stop tracking it, even when
        a done-callback of the Future raises what the Future does not catch (``SystemExit``).
        ``accepted=False``: its offer was refused (see :meth:`forget`)."""
        resolving = self._resolving
        resolving.items = getattr(resolving, "items", 0) + 1  # the Future's done-callbacks run in here
        try:
            if error is None:
                item.future.set_result(result)
            else:
                item.future.set_exception(error)
        except InvalidStateError:
            pass  # cancelled meanwhile; whatever the outcome, it is in the store
        finally:
            resolving.items -= 1
            self.forget(item, accepted)

    def lapse(self) -> None:
        """This process's leases ran out before it renewed them (it was frozen): the rows of the items
        held now may have been taken over. Each must have its next start committed, and waited for,
        before it runs (see ``engine.worker``)."""
        self.epoch += 1

    def settling(self) -> bool:
        """Whether this thread is resolving an item's Future now (running its done-callbacks)."""
        return getattr(self._resolving, "items", 0) > 0

    def release(self, item: WorkItem) -> None:
        """Stop holding ``item``'s key: its row is being given back, so a claim or a recovery that
        takes the row over from now on must get a new item (or the row would stay ours with
        nobody running it). The item stays unfinished until it is settled."""
        with self._lock:
            if self._items.get(item.key) is item:
                del self._items[item.key]

    def forget(self, item: WorkItem, accepted: bool = True) -> None:
        """``item`` settled, or (``accepted=False``) its offer was refused: stop tracking it. A refused
        offer does not count in :attr:`settled`: it made no room, so a producer waiting for room
        (:meth:`wait_settled` after ``QueueFull``) must not wake for it."""
        with self._lock:
            if item.forgotten:
                return
            item.forgotten = True
            if self._items.get(item.key) is item:
                del self._items[item.key]
            self._unfinished -= 1
            if accepted:
                self.settled += 1
            if self._waiters:
                self._settled.notify_all()

    @property
    def closed(self) -> bool:
        """Intake is closed (shutdown began): no item is admitted or adopted any more."""
        return self._closed

    def close(self) -> bool:
        """Refuse new items from now on; True if this call closed it."""
        with self._lock:
            already, self._closed = self._closed, True
            return not already

    def wait_settled(self, seen: int, timeout: float | None = None,
                     also: Callable[[], bool] | None = None) -> bool:
        """Block until more than ``seen`` items have settled (or ``also()`` is true after a
        :meth:`poke`); False on timeout."""
        return self._wait_for(lambda: self.settled > seen or (also is not None and also()), timeout)

    def poke(self) -> None:
        """Wake every :meth:`wait_settled` to look at its ``also`` again."""
        with self._settled:
            self._settled.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Block until no item is unfinished; False if ``timeout`` passed first."""
        return self._wait_for(lambda: self._unfinished == 0, timeout)

    def _wait_for(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        with self._settled:
            self._waiters += 1
            try:
                return self._settled.wait_for(predicate, timeout)
            finally:
                self._waiters -= 1

    def __len__(self) -> int:
        with self._lock:
            return self._unfinished
