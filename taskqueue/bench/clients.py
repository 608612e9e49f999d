"""Load clients: C threads driving one implementation, closed loop or open loop.

Tasks are dealt as plain dicts from one shared iterator (behind the harness's
own lock, not part of any queue under test); each client builds the
:class:`~taskqueue.task.Task` just before submitting it, as a real producer
would, so a queue that holds tasks pays for their memory. Wall time runs from
the release of a start :class:`threading.Barrier` (every client ready) to the
last client finishing; throughput is tasks with an outcome divided by it.
Each measurement goes into a slot allocated before that barrier (:mod:`.recorder`), so
the memory a row measures is the implementation's, not the harness's.

Latency
-------
Always ``time.perf_counter()`` from just before ``submit`` -- so time blocked
by backpressure counts -- to the moment the harness learns the outcome,
success or error. What "learns" means differs by loop and implementation:

* **Closed loop** (``io``, ``overhead``): the client submits, then blocks in
  ``impl.result(handle)``; latency ends when that returns. Same for all three.
* **Open loop** (``burst``), implementations with completion callbacks
  (``engine``, ``stdlib``: ``Future.add_done_callback``, via the adapter's
  ``on_done``): latency ends in the callback, i.e. when the task completes.
  The client keeps *no* per-task handle: the callback (owned by the
  implementation's Future) records the outcome into the preallocated slot and
  decrements the client's outstanding count; after its last submit the client
  waits on a ``threading.Condition`` until that count is 0 (no polling).
* **Open loop, baseline**: its API has no callbacks (``submit -> ticket``,
  then ``wait(ticket)``, which polls its results dict every 1 ms under its
  global lock), so a client must hold every ticket (the task id) until it has
  waited for it, and can learn an outcome only by waiting. Each baseline
  client is therefore two threads: the submitter passes ``(index, ticket)``
  to a collector through a ``queue.SimpleQueue``, and the collector waits for
  the tickets in submission order *while* the submitter goes on. Latency ends
  when ``wait`` returns. The baseline runs tasks strictly FIFO from one list,
  one at a time under its global lock, so a client's tickets complete in the
  order it submitted them: waiting in that order is waiting in completion
  order, and latency is submission-to-completion plus at most the baseline's
  own 1 ms poll (and its lock), as in the closed loop. (Collecting only after
  the last submit, as a single-threaded client must, would charge the
  baseline for its own submission phase -- several seconds when its global
  lock throttles the submitters -- so it is not done.) The pending tickets and
  the polling collector threads are the baseline API's cost and stay in the
  measurement; the collectors are created before the start barrier, like all
  client threads.

``LoadResult.submit_phase_s`` is the longest any client took to submit all of
its tasks: for the engine in ``block`` mode, how long backpressure held the
clients; for the baseline, how long its global lock (held while processing)
did.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from typing import Callable, Sequence

from ..task import Task
from .impls import RESULT_TIMEOUT_S, Outcome, Rejected
from .recorder import REJECTED, LoadResult, Recorder

class _Clients:
    """Shared state of one load run: the task iterator, the barrier, the recorder, the timings."""

    def __init__(self, tasks: Sequence[dict], clients: int, *, keep_outputs: bool,
                 on_start: Callable[[], None] | None, duration_s: float | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if isinstance(clients, bool) or not isinstance(clients, int) or clients <= 0:
            raise ValueError(f"clients must be an integer greater than 0, got {clients!r}")
        self.clients = clients
        self._tasks_list = tasks
        self._next = 0
        self._tasks_lock = threading.Lock()   # guards _next
        self.recorder = Recorder(tasks, keep_outputs)
        self.started: list[float] = []
        self._on_start = on_start
        self.barrier: threading.Barrier | None = None   # made by run(), for every thread of the load
        self.finished: list[float] = []       # list.append is atomic: no lock needed
        self.submit_phases: list[float] = []
        self.crashed: list[BaseException] = []
        self.duration_s = duration_s          # deal no task once this long has passed since the start
        self.deadline = float("inf")
        self._clock = clock                   # the deadline's clock (injectable for tests)
        self.ran_out = False                  # the list ended before the deadline

    def next_task(self) -> tuple[int, Task] | None:
        """The next task to submit and its index, or None when all have been dealt."""
        with self._tasks_lock:
            index = self._next
            if index >= len(self._tasks_list):
                self.ran_out = self.duration_s is not None
                return None
            if self._clock() >= self.deadline:
                return None
            self._next = index + 1
        return index, Task.from_dict(self._tasks_list[index])

    def submit(self, impl, index: int, task: Task):
        """Submit ``task``; return its handle, or None if it was refused or raised (then recorded)."""
        rec = self.recorder
        began = rec.began[index] = time.perf_counter()
        try:
            return impl.submit(task)
        except Rejected:
            rec.record(index, REJECTED)
        except Exception as exc:
            rec.record(index, Outcome(False, None, type(exc).__name__))
        finally:
            rec.submit_s[index] = time.perf_counter() - began
            rec.submitted[index] = 1
        return None

    def submitting_done(self) -> None:
        self.submit_phases.append(time.perf_counter() - self.started[0])

    def run(self, body, collector=None) -> LoadResult:
        """Run ``body()`` in each client thread; return the measurements once all have finished.

        With ``collector``, each client is two threads sharing a
        :class:`queue.SimpleQueue`: ``body(pending)`` submits, and
        ``collector(pending)`` collects; the client finishes when its collector
        does. Every thread exists before the start barrier releases them all.
        """
        def release() -> None:  # run by the last thread to arrive, before any is released
            if self._on_start is not None:
                self._on_start()
            self.started.append(time.perf_counter())
            if self.duration_s is not None:
                self.deadline = self._clock() + self.duration_s

        def thread_main(fn, args, finishes: bool) -> None:
            try:
                self.barrier.wait()
                fn(*args)
            except BaseException as exc:  # surface a harness bug instead of under-counting
                self.crashed.append(exc)
                self.barrier.abort()
            finally:
                if finishes:
                    self.finished.append(time.perf_counter())

        threads = []
        for i in range(self.clients):
            if collector is None:
                threads.append(threading.Thread(target=thread_main, args=(body, (), True),
                                                name=f"bench-client-{i}"))
            else:
                pending = queue.SimpleQueue()
                threads.append(threading.Thread(target=thread_main, args=(body, (pending,), False),
                                                name=f"bench-client-{i}"))
                threads.append(threading.Thread(target=thread_main, args=(collector, (pending,), True),
                                                name=f"bench-collector-{i}"))
        self.barrier = threading.Barrier(len(threads), action=release)
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self.crashed:
            raise RuntimeError(f"a load client crashed: {self.crashed[0]!r}") from self.crashed[0]
        if self.recorder.twice:
            raise RuntimeError(f"{len(self.recorder.twice)} task(s) recorded twice, e.g. "
                               f"{self.recorder.ids[self.recorder.twice[0]]!r}")
        result = LoadResult(self.recorder, max(self.finished) - self.started[0],
                            max(self.submit_phases, default=0.0), dealt=self._next, ran_out=self.ran_out)
        if result.unsettled:
            raise RuntimeError(f"{result.unsettled} task(s) have no outcome after the load")
        return result


def closed_loop(impl, tasks: Sequence[dict], clients: int, *, keep_outputs: bool = True,
                on_start: Callable[[], None] | None = None, duration_s: float | None = None,
                clock: Callable[[], float] = time.perf_counter) -> LoadResult:
    """Each client: take a task, submit it, wait for its outcome, repeat until none are left.

    With ``duration_s``, no task is dealt once that long has passed since the
    start: every implementation runs for the same time over the same task
    stream (the fast ones further down it), then its clients finish the task
    each holds; the list must be long enough for the fastest. ``on_start`` is
    called once when every client is ready, just before the clock starts.
    ``clock`` reads the time for the deadline.
    """
    shared = _Clients(tasks, clients, keep_outputs=keep_outputs, on_start=on_start, duration_s=duration_s,
                      clock=clock)
    rec = shared.recorder

    def body() -> None:
        while (dealt := shared.next_task()) is not None:
            index, task = dealt
            handle = shared.submit(impl, index, task)
            if handle is not None:
                rec.record(index, impl.result(handle))
        shared.submitting_done()

    return shared.run(body)


class _Outstanding:
    """One open-loop client's count of submitted tasks without an outcome yet."""

    __slots__ = ("count", "settled")

    def __init__(self) -> None:
        self.count = 0
        self.settled = threading.Condition(threading.Lock())  # announces: count reached 0

    def add(self) -> None:
        with self.settled:
            self.count += 1

    def done(self) -> None:
        with self.settled:
            self.count -= 1
            if self.count == 0:
                self.settled.notify_all()

    def wait(self, timeout: float) -> bool:
        with self.settled:
            return self.settled.wait_for(lambda: self.count == 0, timeout)


def _settled(rec: Recorder, mine: _Outstanding, crashed: list, index: int, outcome: Outcome) -> None:
    """Completion callback of one task (runs in whichever thread resolved it)."""
    now = time.perf_counter()
    try:
        first = rec.record(index, outcome, now)
    except BaseException as exc:  # pragma: no cover - a harness bug; never leave the client waiting
        crashed.append(exc)
        first = True
    if first:  # a second call for the same task is remembered by the recorder, not counted again
        mine.done()


def _submit_with_callback(shared: _Clients, impl, index: int, task: Task, mine: _Outstanding) -> None:
    """Submit one task and hand its outcome to a callback; the handle dies with this frame."""
    mine.add()
    handle = shared.submit(impl, index, task)
    if handle is None:  # refused or raised: already recorded
        mine.done()
        return
    try:
        impl.on_done(handle, functools.partial(_settled, shared.recorder, mine, shared.crashed, index))
    except BaseException:
        mine.done()  # no callback will come: do not leave the client waiting for it
        raise


def open_loop(impl, tasks: Sequence[dict], clients: int, *, keep_outputs: bool = True,
              on_start: Callable[[], None] | None = None) -> LoadResult:
    """Each client: submit tasks without waiting until none are left, then wait for all of its own.

    With an implementation that offers ``on_done(handle, callback)`` the
    client holds no handle (see the module docstring); otherwise (the
    baseline) it holds each ticket and waits for them in submission order.
    """
    shared = _Clients(tasks, clients, keep_outputs=keep_outputs, on_start=on_start)
    rec = shared.recorder
    callbacks = callable(getattr(impl, "on_done", None))

    def with_callbacks() -> None:
        mine = _Outstanding()
        while (dealt := shared.next_task()) is not None:
            _submit_with_callback(shared, impl, *dealt, mine)
        shared.submitting_done()
        if not mine.wait(RESULT_TIMEOUT_S):
            raise RuntimeError(f"{mine.count} task(s) still without an outcome after {RESULT_TIMEOUT_S} s")

    # The baseline has no completion callbacks: a client must hold every ticket until it has waited
    # for it, and can learn an outcome only by waiting (polling). So each baseline client is two
    # threads: one submits and passes (index, ticket) on, one waits for the tickets in that order
    # (= the baseline's completion order) while the submitter goes on. The pending tickets and the
    # second, polling thread are the baseline API's cost, and stay in the measurement.
    def submit_tickets(pending: queue.SimpleQueue) -> None:
        try:
            while (dealt := shared.next_task()) is not None:
                index, task = dealt
                ticket = shared.submit(impl, index, task)
                if ticket is not None:
                    pending.put((index, ticket))
            shared.submitting_done()
        finally:
            pending.put(None)

    def collect_tickets(pending: queue.SimpleQueue) -> None:
        while (item := pending.get()) is not None:  # blocks while nothing is pending: no polling here
            index, ticket = item
            rec.record(index, impl.result(ticket))

    if callbacks:
        return shared.run(with_callbacks)
    return shared.run(submit_tickets, collector=collect_tickets)
