"""Load clients: C threads driving one implementation, closed loop or open loop.

Tasks are dealt as plain dicts from one shared iterator (behind the harness's
own lock, not part of any queue under test); each client builds the
:class:`~taskqueue.task.Task` just before submitting it, as a real producer
would, so a queue that holds tasks pays for their memory. Latency is ``time.perf_counter()`` from just
before ``submit`` -- so time blocked by backpressure counts -- to the moment the
client holds the outcome, success or error. Wall time runs from the release
of a start :class:`threading.Barrier` (every client ready) to the last client
finishing; throughput is tasks with an outcome divided by it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from ..task import Task
from .impls import Outcome, Rejected

REJECTED = Outcome(False, None, "rejected")


@dataclass
class LoadResult:
    """What the clients measured: per-task latencies and outcomes, submit times, wall time."""

    wall_s: float = 0.0
    latencies: list[float] = field(default_factory=list)    # seconds, one per task with an outcome
    submit_s: list[float] = field(default_factory=list)     # seconds spent inside each submit call
    outcomes: dict[str, Outcome] = field(default_factory=dict)  # task id -> outcome
    errors: Counter = field(default_factory=Counter)        # error class name -> count
    rejected: int = 0

    @property
    def completed(self) -> int:
        return len(self.latencies)

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


class _Clients:
    """Shared state of one load run: the task iterator, the barrier, the merged results."""

    def __init__(self, tasks: Sequence[dict], clients: int) -> None:
        if isinstance(clients, bool) or not isinstance(clients, int) or clients <= 0:
            raise ValueError(f"clients must be an integer greater than 0, got {clients!r}")
        self.clients = clients
        self._tasks = iter(tasks)
        self._tasks_lock = threading.Lock()   # guards _tasks
        self._merge_lock = threading.Lock()   # guards result and finished
        self.started: list[float] = []
        self.barrier = threading.Barrier(clients, action=lambda: self.started.append(time.perf_counter()))
        self.result = LoadResult()
        self.finished: list[float] = []
        self.crashed: list[BaseException] = []

    def next_task(self) -> Task | None:
        with self._tasks_lock:
            item = next(self._tasks, None)
        return None if item is None else Task.from_dict(item)

    def merge(self, local: LoadResult) -> None:
        end = time.perf_counter()
        with self._merge_lock:
            self.finished.append(end)
            self.result.latencies.extend(local.latencies)
            self.result.submit_s.extend(local.submit_s)
            self.result.outcomes.update(local.outcomes)
            self.result.errors.update(local.errors)
            self.result.rejected += local.rejected

    def run(self, body) -> LoadResult:
        def client() -> None:
            local = LoadResult()
            try:
                self.barrier.wait()
                body(local)
            except BaseException as exc:  # surface a harness bug instead of under-counting
                self.crashed.append(exc)
                self.barrier.abort()
            finally:
                self.merge(local)

        threads = [threading.Thread(target=client, name=f"bench-client-{i}") for i in range(self.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self.crashed:
            raise RuntimeError(f"a load client crashed: {self.crashed[0]!r}") from self.crashed[0]
        self.result.wall_s = max(self.finished) - self.started[0]
        return self.result


def _submit(impl, task, local: LoadResult):
    """Submit ``task``; return its handle, or an Outcome if it was refused or raised at once."""
    began = time.perf_counter()
    try:
        return impl.submit(task)
    except Rejected:
        local.rejected += 1
        return REJECTED
    except Exception as exc:
        return Outcome(False, None, type(exc).__name__)
    finally:
        local.submit_s.append(time.perf_counter() - began)


def _record(local: LoadResult, task, outcome: Outcome, began: float) -> None:
    local.outcomes[task.id] = outcome
    if outcome is REJECTED:
        return  # never accepted: no latency, not an error (counted in ``rejected``)
    local.latencies.append(time.perf_counter() - began)
    if not outcome.ok:
        local.errors[outcome.error] += 1


def closed_loop(impl, tasks: Sequence[dict], clients: int) -> LoadResult:
    """Each client: take a task, submit it, wait for its outcome, repeat until none are left."""
    shared = _Clients(tasks, clients)

    def body(local: LoadResult) -> None:
        while (task := shared.next_task()) is not None:
            began = time.perf_counter()
            handle = _submit(impl, task, local)
            outcome = handle if isinstance(handle, Outcome) else impl.result(handle)
            _record(local, task, outcome, began)

    return shared.run(body)


def open_loop(impl, tasks: Sequence[dict], clients: int) -> LoadResult:
    """Each client: submit tasks without waiting until none are left, then wait for each in turn."""
    shared = _Clients(tasks, clients)

    def body(local: LoadResult) -> None:
        pending = []
        while (task := shared.next_task()) is not None:
            began = time.perf_counter()
            pending.append((task, began, _submit(impl, task, local)))
        for task, began, handle in pending:
            outcome = handle if isinstance(handle, Outcome) else impl.result(handle)
            _record(local, task, outcome, began)

    return shared.run(body)
