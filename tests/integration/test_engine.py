"""TaskQueue end to end: counting under contention, dedup, backpressure, shutdown, retries, dead letters.

Synchronisation is by Event, Condition, Barrier and join(); every timeout
below only guards against a hang. A :class:`GatedProcessor` holds workers
inside ``process()`` until the test opens its gate, which makes the queue's
occupancy a known quantity instead of a race.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import sys
import threading
from collections import Counter
from concurrent.futures import CancelledError, Future
from pathlib import Path
from typing import Callable, Iterator

import pytest

from taskqueue.config import Config
from taskqueue.engine import TaskQueue
from taskqueue.errors import (InjectedPermanentError, InjectedTransientError, PermanentError,
                              QueueFull, QueueShutDown, SourceMissing)
from taskqueue.objectstore import LocalObjectStore
from taskqueue.processor import Processor
from taskqueue.store import SQLiteStore
from taskqueue.task import Task, TaskResult, TaskStatus

WAIT_S = 30  # hang guard only


# -- helpers ------------------------------------------------------------------------------

class GatedProcessor(Processor):
    """A real Processor that counts calls and can hold them at a gate or fail them on purpose.

    * ``gate``: ``process()`` waits for it before doing anything (open by default).
    * ``faults_by_key[key]``: a list indexed by attempt-1; an exception instance there is
      raised (after the gate) instead of processing; ``None`` or a missing entry processes.
    * ``wait_entered(n)``: block until ``process()`` has been entered ``n`` times in total.
    """

    def __init__(self, store: LocalObjectStore, *, gated: bool = False,
                 faults_by_key: dict[str, list] | None = None) -> None:
        super().__init__(store)
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.faults_by_key = faults_by_key or {}
        self.calls: Counter[str] = Counter()
        self.attempts: list[tuple[str, int]] = []
        self.entered = 0
        self._entered_changed = threading.Condition()

    def process(self, task: Task, attempt: int = 1):
        with self._entered_changed:
            self.entered += 1
            self.calls[task.idempotency_key] += 1
            self.attempts.append((task.idempotency_key, attempt))
            self._entered_changed.notify_all()
        if not self.gate.wait(WAIT_S):
            raise RuntimeError("test gate never opened")
        plan = self.faults_by_key.get(task.idempotency_key, [])
        if attempt - 1 < len(plan) and plan[attempt - 1] is not None:
            raise plan[attempt - 1]
        return super().process(task, attempt)

    def wait_entered(self, n: int) -> None:
        with self._entered_changed:
            assert self._entered_changed.wait_for(lambda: self.entered >= n, WAIT_S), \
                f"process() entered {self.entered} times, expected {n}"


def make_tasks(objects: LocalObjectStore, n: int, prefix: str = "t", *, linked: bool = False) -> list[Task]:
    """``n`` gzip tasks with distinct keys, and their (tiny) source objects.

    ``linked=True`` makes every source a hard link to one file: much cheaper for
    thousands of tasks, and the processor cannot tell the difference.
    """
    tasks = []
    first = None
    for i in range(n):
        key = f"src/{prefix}/{i // 1000:03d}/o{i:05d}.txt"
        if linked and first is not None:
            path = Path(objects.path_for(key))
            path.parent.mkdir(parents=True, exist_ok=True)
            os.link(first, path)
        else:
            objects.write(key, [f"source {prefix} {i}\n".encode()])
            first = objects.path_for(key)
        tasks.append(Task(id=f"{prefix}-{i}", image_key=key, variant="gzip"))
    return tasks


def db_rows(db: Path, sql: str = "SELECT idempotency_key, status, attempts, version, output_key FROM tasks",
            params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def output_files(objects: LocalObjectStore) -> list[Path]:
    return sorted(p for p in (Path(objects.root) / "variants").rglob("*") if p.is_file())


@pytest.fixture
def objects(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects", fsync=False)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "tasks.db"


@pytest.fixture
def make_queue(db: Path, objects: LocalObjectStore) -> Iterator[Callable[..., TaskQueue]]:
    """``make_queue(processor=None, metrics_out=None, **config)``: a TaskQueue shut down at teardown.

    Config defaults here: 2 workers, no output fsync, a 1 ms retry base.
    Teardown opens every gate first, so a failing test cannot leave a worker stuck.
    """
    made: list[tuple[TaskQueue, Processor]] = []

    def make(processor: Processor | None = None, metrics_out: str | None = None, **settings) -> TaskQueue:
        settings = {"workers": 2, "fsync_outputs": False, "retry_base_s": 0.001, "retry_seed": 7,
                    **settings}
        processor = processor or GatedProcessor(objects)
        tq = TaskQueue(db, objects, config=Config(**settings), processor=processor,
                       metrics_out=metrics_out)
        made.append((tq, processor))
        return tq

    yield make
    for tq, processor in made:
        gate = getattr(processor, "gate", None)
        if gate is not None:
            gate.set()
        assert tq.shutdown(wait=True, timeout=WAIT_S), "TaskQueue did not shut down at teardown"


def counters(tq: TaskQueue) -> dict[str, int]:
    return tq.snapshot()["counters"]


def fill(tq: TaskQueue, processor: GatedProcessor, tasks: list[Task]) -> list[Future]:
    """Occupy every worker inside ``process()`` (no prefetched item), then fill the queue exactly.

    Takes ``workers + queue_size`` tasks. Each worker is made to enter the gated
    processor before the next task is offered, so none of them holds a
    prefetched task, and with every worker held at the gate nothing takes
    from the queue: afterwards it holds exactly ``queue_size`` items.
    """
    workers, size = tq.config.workers, tq.config.queue_size
    assert len(tasks) == workers + size
    futures = []
    for n, task in enumerate(tasks[:workers], start=1):
        futures.append(tq.submit(task))
        processor.wait_entered(n)
    futures += [tq.submit(task) for task in tasks[workers:]]
    assert tq.snapshot()["queue_depth"]["current"] == size
    return futures


# -- counting under contention ---------------------------------------------------------------

def test_100_threads_submit_10000_distinct_tasks_and_every_count_is_exact(make_queue, objects, db):
    # The full size the issue asks for: 100 client threads x 100 tasks each. About 9 s on 2 idle cores
    # (most of it the 10,000 real gzip outputs); if that grows, 50 threads x 40 tasks keeps the point.
    clients, per_client = 100, 100
    total = clients * per_client
    tasks = make_tasks(objects, total, linked=True)
    processor = GatedProcessor(objects)
    tq = make_queue(processor, workers=8, queue_size=128)
    start = threading.Barrier(clients)
    futures: list[list[Future]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []

    def client(index: int) -> None:
        try:
            start.wait(WAIT_S)
            for task in tasks[index::clients]:
                futures[index].append(tq.submit(task))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S * 2)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    results = [f.result(timeout=WAIT_S) for fs in futures for f in fs]
    assert len(results) == total
    assert all(r.status is TaskStatus.SUCCESS and r.attempts == 1 and not r.deduplicated for r in results)
    assert len({r.idempotency_key for r in results}) == total
    assert len({r.output_key for r in results}) == total
    assert tq.join(timeout=WAIT_S)

    snap = tq.snapshot()
    c = snap["counters"]
    assert c["enqueued"] == c["dequeued"] == c["succeeded"] == total
    assert c["deduplicated"] == c["rejected"] == c["failed"] == c["retried"] == c["dead_lettered"] == 0
    assert sum(snap["workers"]["tasks"]) == total
    assert snap["latency_s"]["count"] == snap["processing_s"]["count"] == snap["queue_wait_s"]["count"] == total
    assert snap["queue_depth"]["max"] <= tq.config.queue_size
    assert snap["store"]["operations"] == 3 * total + 1  # claim, start, succeed per task; one recover
    assert sum(processor.calls.values()) == total and set(processor.calls.values()) == {1}

    rows = db_rows(db)
    assert len(rows) == total
    assert {(status, attempts, version) for _k, status, attempts, version, _o in rows} == {("success", 1, 2)}
    by_key = {r.idempotency_key: r.output_key for r in results}
    assert {k: o for k, _s, _a, _v, o in rows} == by_key
    assert len(output_files(objects)) == total


# -- idempotency -------------------------------------------------------------------------------

def test_50_threads_submitting_one_key_share_one_processing(make_queue, objects, db):
    [task] = make_tasks(objects, 1)
    processor = GatedProcessor(objects, gated=True)
    tq = make_queue(processor)
    clients = 50
    start = threading.Barrier(clients)
    futures: list[Future | None] = [None] * clients

    def client(index: int) -> None:
        start.wait(WAIT_S)
        # Each client builds its own Task object with its own id: only the key is shared.
        futures[index] = tq.submit(Task(id=f"client-{index}", image_key=task.image_key, variant="gzip"))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert not any(t.is_alive() for t in threads)
    # The gate is still closed, so the first submitter's task cannot have finished: every
    # other submit found it in flight.
    assert len({id(f) for f in futures}) == 1
    processor.gate.set()
    results = [f.result(timeout=WAIT_S) for f in futures]
    assert len(set(results)) == 1
    assert results[0].status is TaskStatus.SUCCESS and not results[0].deduplicated
    assert processor.calls == Counter({task.idempotency_key: 1})
    c = counters(tq)
    assert c["deduplicated"] == clients - 1
    assert c["enqueued"] == c["succeeded"] == 1
    assert db_rows(db, "SELECT COUNT(*) FROM tasks") == [(1,)]
    assert [p.relative_to(objects.root).as_posix() for p in output_files(objects)] == [results[0].output_key]


def test_many_threads_racing_on_many_keys_process_each_key_once(make_queue, objects, db):
    keys = 20
    tasks = make_tasks(objects, keys)
    processor = GatedProcessor(objects)
    tq = make_queue(processor, workers=4)
    clients = 50
    start = threading.Barrier(clients)
    results: list[list[TaskResult]] = [[] for _ in range(clients)]

    def client(index: int) -> None:
        order = list(tasks)
        random.Random(index).shuffle(order)
        start.wait(WAIT_S)
        futures = [tq.submit(t) for t in order]
        results[index] = [f.result(timeout=WAIT_S) for f in futures]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert not any(t.is_alive() for t in threads)
    flat = [r for rs in results for r in rs]
    assert len(flat) == clients * keys
    assert processor.calls == Counter({t.idempotency_key: 1 for t in tasks})
    outputs = {}
    for r in flat:
        assert r.status is TaskStatus.SUCCESS
        assert outputs.setdefault(r.idempotency_key, r.output_key) == r.output_key
    c = counters(tq)
    assert c["succeeded"] == c["enqueued"] == keys
    assert c["deduplicated"] == clients * keys - keys
    assert db_rows(db, "SELECT COUNT(*), MIN(status), MAX(status) FROM tasks") == [(keys, "success", "success")]
    assert len(output_files(objects)) == keys


def test_key_done_in_an_earlier_queue_returns_a_completed_future_without_queueing(make_queue, objects, db):
    [task] = make_tasks(objects, 1)
    first = make_queue()
    original = first.submit(task).result(timeout=WAIT_S)
    assert first.shutdown(timeout=WAIT_S)
    output = Path(objects.root, original.output_key)
    mtime = output.stat().st_mtime_ns
    version = db_rows(db, "SELECT version FROM tasks")

    processor = GatedProcessor(objects, gated=True)  # would block if it were ever called
    second = make_queue(processor)
    future = second.submit(Task(id="again", image_key=task.image_key, variant="gzip"))
    assert future.done()
    result = future.result(timeout=0)
    assert result.deduplicated is True
    assert result.status is TaskStatus.SUCCESS
    assert result.output_key == original.output_key
    assert result.attempts == 1 and result.output_bytes == original.output_bytes
    c = counters(second)
    assert c["deduplicated"] == 1
    assert c["enqueued"] == c["dequeued"] == 0
    assert processor.entered == 0
    assert db_rows(db, "SELECT version FROM tasks") == version
    assert output.stat().st_mtime_ns == mtime


def test_dead_lettered_key_returns_a_failed_future_with_the_stored_error_class(make_queue, objects, db):
    [task] = make_tasks(objects, 1)
    failing = GatedProcessor(objects, faults_by_key={task.idempotency_key: [InjectedPermanentError("boom")]})
    first = make_queue(failing)
    with pytest.raises(InjectedPermanentError, match="boom"):
        first.submit(task).result(timeout=WAIT_S)
    # Offered again in the same queue once settled: the store answers.
    again = first.submit(task)
    assert again.done()
    with pytest.raises(InjectedPermanentError):
        again.result(timeout=0)
    assert first.shutdown(timeout=WAIT_S)

    processor = GatedProcessor(objects)
    second = make_queue(processor)
    future = second.submit(task)
    assert future.done()
    error = future.exception(timeout=0)
    assert type(error) is InjectedPermanentError
    assert "boom" in str(error)
    assert processor.entered == 0
    assert counters(second)["enqueued"] == 0


def test_dead_lettered_foreign_error_comes_back_as_a_permanent_error_naming_its_class(make_queue, objects):
    [task] = make_tasks(objects, 1)
    first = make_queue(GatedProcessor(objects, faults_by_key={task.idempotency_key: [ValueError("bad value")]}))
    with pytest.raises(ValueError):
        first.submit(task).result(timeout=WAIT_S)
    assert first.shutdown(timeout=WAIT_S)
    second = make_queue()
    error = second.submit(task).exception(timeout=0)
    assert isinstance(error, PermanentError)
    assert "ValueError" in str(error) and "bad value" in str(error)


# -- backpressure ----------------------------------------------------------------------------

def test_block_mode_blocks_the_producer_while_full_and_never_exceeds_maxsize(make_queue, objects):
    workers, size = 2, 3
    tasks = make_tasks(objects, workers + size + 1)
    processor = GatedProcessor(objects, gated=True)
    tq = make_queue(processor, workers=workers, queue_size=size, on_full="block")
    futures = fill(tq, processor, tasks[:-1])

    returned = threading.Event()
    late: list[Future] = []

    def producer() -> None:
        late.append(tq.submit(tasks[-1]))
        returned.set()

    thread = threading.Thread(target=producer)
    thread.start()
    # Every worker is held in process() and the queue holds `size` items: nothing can make
    # room until the gate opens, so the producer cannot have returned however long we wait.
    thread.join(0.3)
    assert thread.is_alive() and not returned.is_set()
    assert counters(tq)["rejected"] == 0

    processor.gate.set()
    thread.join(WAIT_S)
    assert not thread.is_alive()
    results = [f.result(timeout=WAIT_S) for f in futures + late]
    assert all(r.status is TaskStatus.SUCCESS for r in results)
    snap = tq.snapshot()
    assert snap["queue_depth"]["max"] == size
    assert snap["queue_depth_sampled"]["max"] <= size
    assert snap["counters"]["enqueued"] == snap["counters"]["succeeded"] == len(tasks)


def test_reject_mode_raises_queue_full_counts_it_and_releases_the_key(make_queue, objects, db):
    workers, size = 2, 3
    tasks = make_tasks(objects, workers + size + 1)
    processor = GatedProcessor(objects, gated=True)
    tq = make_queue(processor, workers=workers, queue_size=size, on_full="reject")
    futures = fill(tq, processor, tasks[:-1])
    extra = tasks[-1]

    seen = tq.settled
    for _ in range(3):
        with pytest.raises(QueueFull):
            tq.submit(extra)
    # A refused offer settles nothing: a producer waiting for room (wait_settled) must not wake for it.
    # Found by a review: it counted as settled, so run's reject mode offered again at once, in a loop
    # (1.5 million refusals, a full core, 6x slower than block).
    assert tq.settled == seen and not tq.wait_settled(seen, timeout=0)
    c = counters(tq)
    assert c["rejected"] == 3
    assert c["enqueued"] == workers + size
    assert db_rows(db, "SELECT COUNT(*) FROM tasks WHERE idempotency_key = ?", (extra.idempotency_key,)) == [(0,)]

    processor.gate.set()
    assert all(f.result(timeout=WAIT_S).status is TaskStatus.SUCCESS for f in futures)
    assert tq.join(timeout=WAIT_S)
    result = tq.submit(extra).result(timeout=WAIT_S)  # offerable again, and now it runs
    assert result.status is TaskStatus.SUCCESS and not result.deduplicated
    assert processor.calls[extra.idempotency_key] == 1
    assert counters(tq)["rejected"] == 3


def test_block_mode_with_put_timeout_raises_queue_full_after_the_timeout(make_queue, objects, db):
    workers, size = 1, 2
    tasks = make_tasks(objects, workers + size + 1)
    processor = GatedProcessor(objects, gated=True)
    tq = make_queue(processor, workers=workers, queue_size=size, on_full="block", put_timeout_s=0.05)
    futures = fill(tq, processor, tasks[:-1])
    with pytest.raises(QueueFull):
        tq.submit(tasks[-1])
    assert counters(tq)["rejected"] == 1
    assert db_rows(db, "SELECT COUNT(*) FROM tasks") == [(workers + size,)]
    processor.gate.set()
    assert all(f.result(timeout=WAIT_S).status is TaskStatus.SUCCESS for f in futures)
    assert tq.join(timeout=WAIT_S)
    assert tq.submit(tasks[-1]).result(timeout=WAIT_S).status is TaskStatus.SUCCESS


# -- shutdown --------------------------------------------------------------------------------

def test_shutdown_without_cancel_finishes_every_accepted_task(make_queue, objects, db):
    workers, size = 2, 6
    tasks = make_tasks(objects, workers + size)
    processor = GatedProcessor(objects, gated=True)
    tq = make_queue(processor, workers=workers, queue_size=size)
    futures = fill(tq, processor, tasks)
    assert tq.shutdown(wait=False) is True
    with pytest.raises(QueueShutDown):
        tq.submit(tasks[0])
    assert not any(f.done() for f in futures)
    processor.gate.set()
    assert tq.shutdown(wait=True, timeout=WAIT_S) is True
    assert all(f.result(timeout=0).status is TaskStatus.SUCCESS for f in futures)
    assert db_rows(db, "SELECT status, COUNT(*) FROM tasks GROUP BY status") == [("success", len(tasks))]
    assert tq.final_metrics["counters"]["succeeded"] == len(tasks)


def test_shutdown_with_cancel_leaves_queued_rows_for_the_next_queue(make_queue, objects, db):
    workers, size = 2, 5
    tasks = make_tasks(objects, workers + size)
    processor = GatedProcessor(objects, gated=True)
    tq = make_queue(processor, workers=workers, queue_size=size)
    futures = fill(tq, processor, tasks)
    running, queued = futures[:workers], futures[workers:]

    # The running tasks are stuck at the gate, so a bounded shutdown must report failure...
    assert tq.shutdown(wait=True, cancel_futures=True, timeout=0.2) is False
    for f in queued:  # ...but the queued ones are cancelled all the same
        with pytest.raises(CancelledError):
            f.result(timeout=WAIT_S)
    assert not any(f.done() for f in running)
    with pytest.raises(QueueShutDown):
        tq.submit(tasks[0])
    processor.gate.set()
    assert tq.shutdown(wait=True, timeout=WAIT_S) is True
    assert all(f.result(timeout=0).status is TaskStatus.SUCCESS for f in running)
    statuses = dict(db_rows(db, "SELECT idempotency_key, status FROM tasks"))
    assert [statuses[t.idempotency_key] for t in tasks] == ["success"] * workers + ["queued"] * size
    assert processor.entered == workers

    # A new queue on the same database adopts the queued rows and finishes them.
    processor2 = GatedProcessor(objects)
    tq2 = make_queue(processor2, workers=workers, queue_size=size)
    assert sorted(r.idempotency_key for r in tq2.recovered.runnable) == \
        sorted(t.idempotency_key for t in tasks[workers:])
    assert tq2.join(timeout=WAIT_S)
    assert db_rows(db, "SELECT status, COUNT(*) FROM tasks GROUP BY status") == [("success", len(tasks))]
    assert processor2.calls == Counter({t.idempotency_key: 1 for t in tasks[workers:]})
    assert len(output_files(objects)) == len(tasks)


def test_retry_failing_after_cancelling_shutdown_is_left_failed_and_shutdown_completes(make_queue, objects, db):
    tasks = make_tasks(objects, 2)
    stuck, queued = tasks
    processor = GatedProcessor(objects, gated=True,
                               faults_by_key={stuck.idempotency_key: [InjectedTransientError("flaky")]})
    # A long backoff (seed 2 draws 19.1 s of up to 20 s), so the retry cannot come due and run
    # again while shutdown is still stopping the scheduler.
    tq = make_queue(processor, workers=1, queue_size=2, max_attempts=3, retry_base_s=20.0, retry_cap_s=20.0,
                    retry_seed=2)
    f_stuck = tq.submit(stuck)
    processor.wait_entered(1)
    f_queued = tq.submit(queued)
    assert tq.shutdown(wait=False, cancel_futures=True)
    with pytest.raises(CancelledError):  # cancellation has begun
        f_queued.result(timeout=WAIT_S)
    processor.gate.set()  # the running attempt now fails transiently: its retry must not run
    assert tq.shutdown(wait=True, timeout=WAIT_S) is True
    with pytest.raises(QueueShutDown):
        f_stuck.result(timeout=0)
    assert dict(db_rows(db, "SELECT idempotency_key, status FROM tasks")) == {
        stuck.idempotency_key: "failed", queued.idempotency_key: "queued"}
    assert processor.calls[stuck.idempotency_key] == 1


def test_shutdown_is_idempotent_and_writes_final_metrics(make_queue, objects, tmp_path):
    tasks = make_tasks(objects, 5)
    out = tmp_path / "metrics.json"
    tq = make_queue(metrics_out=str(out))
    futures = [tq.submit(t) for t in tasks]
    assert tq.shutdown() is True
    assert tq.shutdown() is True
    assert tq.shutdown(wait=False, cancel_futures=True) is True
    assert all(f.result(timeout=0).status is TaskStatus.SUCCESS for f in futures)
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written == json.loads(json.dumps(tq.final_metrics))
    assert written["counters"]["succeeded"] == written["counters"]["enqueued"] == 5
    assert written["store"]["operations"] == 3 * 5 + 2  # claim, start, succeed each; one recover, one disown
    assert written["config"]["workers"] == 2


def test_context_manager_finishes_tasks_and_closes_intake(db, objects):
    tasks = make_tasks(objects, 10)
    with TaskQueue(db, objects, config=Config(workers=2, fsync_outputs=False)) as tq:
        futures = [tq.submit(t) for t in tasks]
    assert all(f.done() and f.result().status is TaskStatus.SUCCESS for f in futures)
    with pytest.raises(QueueShutDown):
        tq.submit(tasks[0])
    assert tq.final_metrics is not None and tq.final_metrics["counters"]["succeeded"] == 10


def test_shutdown_timeout_reports_a_stuck_task_and_succeeds_once_released(make_queue, objects):
    [task] = make_tasks(objects, 1)
    processor = GatedProcessor(objects, gated=True)
    tq = make_queue(processor, workers=1)
    future = tq.submit(task)
    processor.wait_entered(1)
    assert tq.shutdown(timeout=0.1) is False
    assert not future.done()
    processor.gate.set()
    assert tq.shutdown(timeout=WAIT_S) is True
    assert future.result(timeout=0).status is TaskStatus.SUCCESS


# -- retries and dead letters (engine level) -------------------------------------------------

def test_transient_failure_once_then_success_takes_two_attempts(make_queue, objects, db):
    [task] = make_tasks(objects, 1)
    processor = GatedProcessor(objects, faults_by_key={task.idempotency_key: [InjectedTransientError("once")]})
    tq = make_queue(processor, max_attempts=3)
    result = tq.submit(task).result(timeout=WAIT_S)
    assert result.status is TaskStatus.SUCCESS and result.attempts == 2
    assert processor.attempts == [(task.idempotency_key, 1), (task.idempotency_key, 2)]
    assert tq.join(timeout=WAIT_S)
    c = counters(tq)
    assert (c["retried"], c["failed"], c["succeeded"], c["dead_lettered"]) == (1, 1, 1, 0)
    assert c["enqueued"] == c["dequeued"] == 2
    assert db_rows(db) == [(task.idempotency_key, "success", 2, 4, result.output_key)]


def test_permanent_failure_is_dead_lettered_at_once(make_queue, objects, db):
    [task] = make_tasks(objects, 1)
    processor = GatedProcessor(objects, faults_by_key={task.idempotency_key: [InjectedPermanentError("never")]})
    tq = make_queue(processor, max_attempts=5)
    with pytest.raises(InjectedPermanentError):
        tq.submit(task).result(timeout=WAIT_S)
    assert tq.join(timeout=WAIT_S)
    c = counters(tq)
    assert (c["dead_lettered"], c["retried"], c["failed"], c["succeeded"]) == (1, 0, 1, 0)
    assert db_rows(db, "SELECT status, attempts, error_class FROM tasks") == [("dead", 1, "InjectedPermanentError")]
    assert db_rows(db, "SELECT idempotency_key, attempts, error_class, last_error FROM dead_letters") == [
        (task.idempotency_key, 1, "InjectedPermanentError", "never")]


def test_transient_failures_exhaust_attempts_then_dead_letter(make_queue, objects, db):
    [task] = make_tasks(objects, 1)
    processor = GatedProcessor(objects, faults_by_key={
        task.idempotency_key: [InjectedTransientError(f"try {n}") for n in range(1, 4)]})
    tq = make_queue(processor, max_attempts=3)
    with pytest.raises(InjectedTransientError, match="try 3"):
        tq.submit(task).result(timeout=WAIT_S)
    assert tq.join(timeout=WAIT_S)
    assert [a for _k, a in processor.attempts] == [1, 2, 3]
    c = counters(tq)
    assert (c["retried"], c["failed"], c["dead_lettered"]) == (2, 3, 1)
    assert db_rows(db, "SELECT attempts, error_class FROM dead_letters") == [(3, "InjectedTransientError")]


def test_missing_source_is_dead_lettered_with_source_missing(make_queue, db):
    tq = make_queue()
    task = Task(id="ghost", image_key="src/none.txt", variant="gzip")
    with pytest.raises(SourceMissing):
        tq.submit(task).result(timeout=WAIT_S)
    assert db_rows(db, "SELECT status, error_class FROM tasks") == [("dead", "SourceMissing")]


def test_utilisation_is_a_fraction_in_a_real_run(make_queue, objects):
    tasks = make_tasks(objects, 200)
    tq = make_queue(workers=4)
    for f in [tq.submit(t) for t in tasks]:
        f.result(timeout=WAIT_S)
    assert tq.shutdown(timeout=WAIT_S)
    workers = tq.final_metrics["workers"]
    assert 0.0 < workers["utilisation"] <= 1.0
    assert len(workers["busy_s"]) == 4 and all(b >= 0 for b in workers["busy_s"])
    assert sum(workers["tasks"]) == 200


# -- cancellation by the client, races with shutdown, more than one queue ------------------------

def test_a_queued_task_cancelled_by_its_client_is_not_run_and_its_key_is_released(make_queue, objects, db):
    workers, size = 1, 2
    tasks = make_tasks(objects, workers + size)
    processor = GatedProcessor(objects, gated=True)
    tq = make_queue(processor, workers=workers, queue_size=size)
    futures = fill(tq, processor, tasks)
    assert futures[1].cancel()
    processor.gate.set()
    assert futures[0].result(timeout=WAIT_S).status is TaskStatus.SUCCESS
    assert futures[2].result(timeout=WAIT_S).status is TaskStatus.SUCCESS
    assert tq.join(timeout=WAIT_S)
    assert processor.calls[tasks[1].idempotency_key] == 0
    assert db_rows(db, "SELECT COUNT(*) FROM tasks WHERE idempotency_key = ?", (tasks[1].idempotency_key,)) == [(0,)]
    result = tq.submit(tasks[1]).result(timeout=WAIT_S)  # offerable again
    assert result.status is TaskStatus.SUCCESS and not result.deduplicated


def test_offering_again_a_key_whose_future_was_cancelled_gives_a_live_future(make_queue, objects):
    workers, size = 1, 2
    tasks = make_tasks(objects, workers + size)
    processor = GatedProcessor(objects, gated=True)
    tq = make_queue(processor, workers=workers, queue_size=size)
    futures = fill(tq, processor, tasks)
    assert futures[1].cancel()
    offered: list[Future] = []
    # The cancelled item still holds its queue slot until a worker drops it: the offer blocks (block
    # mode) until the gate opens and the worker gets to it.
    offer = threading.Thread(target=lambda: offered.append(tq.submit(tasks[1])))
    offer.start()
    processor.gate.set()
    offer.join(WAIT_S)
    [again] = offered
    assert not again.cancelled()
    assert again.result(timeout=WAIT_S).status is TaskStatus.SUCCESS


def test_a_submit_racing_shutdown_is_finished_before_the_store_closes(make_queue, objects):
    """A submit() that passed the _closed check counts as unfinished: shutdown() waits for it."""
    [task] = make_tasks(objects, 1)
    tq = make_queue()
    real_claim, real_close = tq.store.claim, tq.store.close
    in_claim, claim_may_go = threading.Event(), threading.Event()
    closing = threading.Event()

    def claim(t, max_attempts):  # wraps the instance's method: holds submit() between its checks and its claim
        in_claim.set()
        assert claim_may_go.wait(WAIT_S)
        return real_claim(t, max_attempts)

    def close():
        closing.set()
        real_close()

    tq.store.claim, tq.store.close = claim, close
    outcome: dict = {}

    def client() -> None:
        try:
            outcome["future"] = tq.submit(task)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=client)
    thread.start()
    assert in_claim.wait(WAIT_S)
    assert tq.shutdown(wait=False)
    with pytest.raises(QueueShutDown):  # intake is closed for everyone else
        tq.submit(make_tasks(objects, 2)[1])
    assert not closing.is_set()  # the store cannot close under the submit in progress
    claim_may_go.set()
    thread.join(WAIT_S)
    assert "error" not in outcome
    assert outcome["future"].result(timeout=WAIT_S).status is TaskStatus.SUCCESS
    assert tq.shutdown(timeout=WAIT_S)
    assert closing.is_set()


def test_recover_orphans_takes_over_rows_a_dead_process_left_while_this_one_runs(make_queue, objects, db):
    tasks = make_tasks(objects, 3)
    processor = GatedProcessor(objects)
    tq = make_queue(processor)
    assert tq.recovered.runnable == []
    # Another "process" (an earlier incarnation: same pid, another owner nonce) claims and dies.
    other = SQLiteStore(db)
    try:
        for t in tasks:
            other.commit(other.claim(t, 3))
    finally:
        other.close()
    recovered = tq.recover_orphans()
    assert sorted(r.idempotency_key for r in recovered.runnable) == sorted(t.idempotency_key for t in tasks)
    assert tq.join(timeout=WAIT_S)
    assert db_rows(db, "SELECT status, COUNT(*) FROM tasks GROUP BY status") == [("success", 3)]
    assert processor.calls == Counter({t.idempotency_key: 1 for t in tasks})
    assert tq.recover_orphans().runnable == []  # its own rows are never taken back


def test_two_live_queues_in_one_process_never_run_a_task_twice(make_queue, objects):
    tasks = make_tasks(objects, 2)
    first_processor = GatedProcessor(objects, gated=True)
    first = make_queue(first_processor, workers=1)
    running = first.submit(tasks[0])
    first_processor.wait_entered(1)
    queued = first.submit(tasks[1])
    second_processor = GatedProcessor(objects)
    second = make_queue(second_processor, workers=1)
    assert second.join(timeout=WAIT_S)
    first_processor.gate.set()
    assert running.result(timeout=WAIT_S).status is TaskStatus.SUCCESS
    assert queued.result(timeout=WAIT_S).status is TaskStatus.SUCCESS
    assert first_processor.calls[tasks[0].idempotency_key] + second_processor.calls[tasks[0].idempotency_key] == 1


# -- defects of the commit path, each with the test that found it -------------------------------

def test_a_submit_and_a_recovery_racing_for_orphaned_rows_run_each_once(make_queue, objects, db):
    """Recovery and a submit of the same key take the row over in one store operation each: whoever
    comes second finds it ours (or in flight) and neither fails with ClaimedElsewhere."""
    tasks = make_tasks(objects, 40)
    processor = GatedProcessor(objects)
    tq = make_queue(processor, workers=4)
    other = SQLiteStore(db)  # another incarnation claims them all, then dies
    for t in tasks:
        other.commit(other.claim(t, 3))
    other.close()
    line = threading.Barrier(2)
    futures: list[Future] = []

    def submitter() -> None:
        line.wait(WAIT_S)
        futures.extend(tq.submit(t) for t in tasks)

    def recoverer() -> None:
        line.wait(WAIT_S)
        for _ in range(5):
            tq.recover_orphans()

    threads = [threading.Thread(target=submitter), threading.Thread(target=recoverer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert [f.result(timeout=WAIT_S).status for f in futures] == [TaskStatus.SUCCESS] * len(tasks)
    assert tq.join(timeout=WAIT_S)
    assert processor.calls == Counter({t.idempotency_key: 1 for t in tasks})
    assert db_rows(db, "SELECT status, COUNT(*) FROM tasks GROUP BY status") == [("success", len(tasks))]


def test_a_submit_after_recovery_took_the_row_runs_it(make_queue, objects, db):
    """The interleaving that used to strand a row: recovery's take-over commits, then a submit of the
    key claims it before recovery has scheduled it."""
    [task] = make_tasks(objects, 1)
    processor = GatedProcessor(objects)
    tq = make_queue(processor)
    other = SQLiteStore(db)
    other.commit(other.claim(task, 3))
    other.close()
    recovered = tq.store.commit(tq.store.recover(3))  # recovery's operation, as recover_orphans runs it
    assert [r.idempotency_key for r in recovered.runnable] == [task.idempotency_key]
    assert tq.submit(task).result(timeout=WAIT_S).status is TaskStatus.SUCCESS
    assert tq.recover_orphans().runnable == []  # nothing left for the scheduling half
    assert processor.calls == Counter({task.idempotency_key: 1})


def test_rows_of_a_reused_pid_are_taken_over_at_once(make_queue, objects, db):
    """A run killed mid-way whose pid now belongs to an unrelated process: its rows are not that
    process's, so the next queue takes them over at start-up instead of waiting for a lease."""
    import subprocess
    import sys
    from taskqueue.store.owners import HOSTNAME, process_start

    tasks = make_tasks(objects, 3)
    unrelated = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        start = process_start(unrelated.pid)
        if start is None:
            pytest.skip("process start times need /proc")
        boot, ticks = start.split(".")
        killed_run = f"{HOSTNAME}:{unrelated.pid}:{boot}.{int(ticks) - 100}:0123456789ab"
        seed = SQLiteStore(db, lease_s=3600)
        for t in tasks:
            row = seed.commit(seed.claim(t, 3)).row
            seed.commit(seed.start(row.id, row.version, row.attempts))
        seed.close()
        conn = sqlite3.connect(db)
        with conn:
            conn.execute("UPDATE tasks SET owner = ?", (killed_run,))
        conn.close()
        processor = GatedProcessor(objects)
        tq = make_queue(processor)
        assert len(tq.recovered.runnable) == 3
        assert tq.join(timeout=WAIT_S)
        assert db_rows(db, "SELECT status, attempts FROM tasks") == [("success", 2)] * 3
    finally:
        unrelated.stdin.close()
        unrelated.wait(WAIT_S)


def test_a_release_that_fails_after_queue_full_is_logged_not_swallowed(make_queue, objects, caplog):
    tasks = make_tasks(objects, 4)
    processor = GatedProcessor(objects, gated=True)
    tq = make_queue(processor, workers=1, queue_size=1, put_timeout_s=0.01)  # block mode, gives up fast
    held = [tq.submit(tasks[0])]
    processor.wait_entered(1)
    held.append(tq.submit(tasks[1]))  # fills the queue

    def failing_release(row_id, version, done=None):  # fault injection: the delete cannot commit
        def boom(conn):
            raise sqlite3.OperationalError("disk I/O error (injected)")
        return real_release(row_id, version, done)._replace(fn=boom, args=())

    real_release, tq.store.release = tq.store.release, failing_release
    with pytest.raises(QueueFull):  # the queue is full: the submit claims, cannot enqueue, releases
        tq.submit(tasks[2])
    records = [r for r in caplog.records if getattr(r, "event", None) == "release_failed"]
    assert len(records) == 1 and "disk I/O error" in records[0].error
    tq.store.release = real_release
    processor.gate.set()
    assert all(f.result(timeout=WAIT_S).status is TaskStatus.SUCCESS for f in held)


def test_the_writer_keeps_serving_when_a_done_callback_of_a_client_raises(make_queue, objects):
    """A client's done-callback that raises runs in the committing thread: logged by the Future,
    the committer and the workers carry on."""
    tasks = make_tasks(objects, 5)
    tq = make_queue()
    for t in tasks:
        tq.submit(t).add_done_callback(lambda f: 1 / 0)
    assert tq.join(timeout=WAIT_S)
    assert tq.submit(make_tasks(objects, 6, prefix="u")[5]).result(timeout=WAIT_S).status is TaskStatus.SUCCESS


def test_a_done_callback_that_raises_system_exit_still_lets_the_task_settle(make_queue, objects):
    """Future's own callback runner catches only Exception: a SystemExit got through to the writer,
    which died, and the task never left the in-flight table (join and shutdown hung)."""
    processor = GatedProcessor(objects, gated=True)
    tq = make_queue(processor=processor)
    task, later = make_tasks(objects, 2)
    future = tq.submit(task)
    future.add_done_callback(lambda f: sys.exit("a callback that exits"))  # attached before the outcome
    processor.gate.set()
    assert tq.join(timeout=WAIT_S)
    assert future.result(timeout=0).status is TaskStatus.SUCCESS and len(tq.inflight) == 0
    assert tq.submit(later).result(timeout=WAIT_S).status is TaskStatus.SUCCESS


def test_a_done_callback_that_raises_system_exit_while_shutdown_cancels_does_not_stop_the_shutdown(
        make_queue, objects):
    """Cancelling a queued task runs its Future's callbacks in the shutdown thread: a SystemExit there
    killed that thread, so the other queued tasks were never cancelled and the store never closed."""
    processor = GatedProcessor(objects, gated=True)
    tq = make_queue(processor=processor, workers=1)
    running, exiting, queued = make_tasks(objects, 3)
    first = tq.submit(running)
    processor.wait_entered(1)  # the one worker is busy: the other two wait in the queue
    second, third = tq.submit(exiting), tq.submit(queued)
    second.add_done_callback(lambda f: sys.exit("a callback that exits"))
    third_done = threading.Event()
    third.add_done_callback(lambda f: third_done.set())
    tq.shutdown(wait=False, cancel_futures=True)
    assert third_done.wait(WAIT_S)  # hang guard only (wait() does not count a cancel() as done)
    assert third.cancelled() and second.cancelled()
    processor.gate.set()
    assert tq.shutdown(wait=True, timeout=WAIT_S)
    assert first.result(timeout=0).status is TaskStatus.SUCCESS
    assert len(tq.inflight) == 0 and tq.store.committer._closed


def test_a_second_cancelling_shutdown_leaves_the_workers_their_stop_sentinels(make_queue, monkeypatch):
    """shutdown(cancel_futures=True) after shutdown(wait=False) -- as the exit hook does when a program
    returns before its shutdown finished -- took the sentinels the first had queued off the queue with
    the tasks it cancelled: the workers never ended, nor did the shutdown, nor the process at exit."""
    import queue
    from taskqueue.engine import core
    from taskqueue.engine.inflight import STOP
    gate, queued_stops = threading.Event(), threading.Semaphore(0)

    class HeldQueue(queue.Queue):
        """The bounded queue, whose workers wait at ``gate`` before they block on it."""

        def get(self, block=True, timeout=None):
            if block:
                gate.wait()
            return super().get(block, timeout)

        def put(self, item, block=True, timeout=None):
            super().put(item, block, timeout)
            if item is STOP:
                queued_stops.release()

    with monkeypatch.context() as patch:
        patch.setattr(core.queue, "Queue", HeldQueue)
        tq = make_queue(workers=2)
    try:
        assert tq.shutdown(wait=False)
        assert queued_stops.acquire(timeout=WAIT_S) and queued_stops.acquire(timeout=WAIT_S)
        assert tq.shutdown(wait=False, cancel_futures=True)  # drains what waits in the queue
        left = tq._queue.qsize()
    finally:
        gate.set()
    finished = tq.shutdown(wait=True, timeout=WAIT_S)
    if not finished:  # let the workers go, so that a failure cannot hang the test run at exit
        tq._queue.put(STOP)
        tq._queue.put(STOP)
    assert (left, finished) == (2, True)
    assert tq.store.committer._closed


@pytest.mark.parametrize("started", [False, True])
def test_a_process_that_never_shuts_its_queue_down_still_exits(tmp_path, started):
    """The exit hook stops the queues nobody shut down before concurrent.futures joins their workers
    (which would wait on the bounded queue forever): whatever was imported first, the process ends,
    with the work it accepted finished or left in the store for the next run."""
    import subprocess
    import sys
    import textwrap
    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQ_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
    code = textwrap.dedent(f"""
        from taskqueue.engine import TaskQueue  # the package first, as a user would import it
        from taskqueue.objectstore import LocalObjectStore
        from taskqueue.task import Task
        objects = LocalObjectStore({str(tmp_path / "objects")!r})
        objects.write("src/a.txt", [b"hello"])
        tq = TaskQueue({str(tmp_path / "tasks.db")!r}, objects)
        if {started!r}:
            assert tq.submit(Task(id="a", image_key="src/a.txt", variant="gzip")).result(30).attempts == 1
        print("leaving without shutdown()", flush=True)
    """)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, "leaving without shutdown()\n"), result.stderr


def test_a_task_another_live_queue_holds_is_counted_claimed_elsewhere_not_done(make_queue, objects):
    """Found by a review of the metrics: such an offer counted ``deduplicated`` -- done, for the
    progress line -- and the re-offer that later found it finished counted it again."""
    from taskqueue.errors import ClaimedElsewhere
    from taskqueue.progress import done_count
    tasks = make_tasks(objects, 4)
    holder = GatedProcessor(objects, gated=True)
    other = make_queue(holder)  # another live process, as far as the store can tell
    held = [other.submit(t) for t in tasks[:2]]
    holder.wait_entered(2)
    tq = make_queue(GatedProcessor(objects))
    first = [tq.submit(t) for t in tasks]
    assert [f.result(timeout=WAIT_S).status for f in first[2:]] == [TaskStatus.SUCCESS] * 2
    for future in first[:2]:
        assert isinstance(future.exception(timeout=WAIT_S), ClaimedElsewhere)
    counters = tq.snapshot()["counters"]
    assert (counters["succeeded"], counters["deduplicated"], counters["claimed_elsewhere"]) == (2, 0, 2)
    assert done_count(tq.snapshot()) == 2
    holder.gate.set()
    assert [f.result(timeout=WAIT_S).status for f in held] == [TaskStatus.SUCCESS] * 2
    again = [tq.submit(t) for t in tasks[:2]]  # what run does with them (await_elsewhere)
    assert all(f.result(timeout=WAIT_S).deduplicated for f in again)
    counters = tq.snapshot()["counters"]
    assert (counters["succeeded"], counters["deduplicated"], counters["claimed_elsewhere"]) == (2, 2, 2)
    assert done_count(tq.snapshot()) == 4  # each of the 4 tasks once


def test_an_invalid_item_recorded_before_counts_as_deduplicated_so_a_rerun_s_progress_reaches_its_total(
        make_queue, objects, db):
    """Found by a review of the metrics: on a second run of a file with ``--invalid dead-letter``, its
    invalid items were counted nowhere, and the progress line stopped short of the total."""
    from taskqueue.errors import InvalidTask
    from taskqueue.progress import done_count
    error = InvalidTask("field 'variant': 'Bad' is not a variant name")
    tq = make_queue()
    assert tq.record_invalid("bad-1", "src/x.txt:Bad", '{"id": "bad-1"}', error)
    assert not tq.record_invalid("bad-1", "src/x.txt:Bad", '{"id": "bad-1"}', error)  # the same file again
    counters = tq.snapshot()["counters"]
    assert (counters["dead_lettered"], counters["deduplicated"]) == (1, 1)
    assert done_count(tq.snapshot()) == 2
    assert db_rows(db, "SELECT COUNT(*) FROM dead_letters") == [(1,)]


def test_a_reopened_invalid_item_whose_stored_task_has_another_key_is_dead_lettered_not_run(make_queue, objects, db):
    """Found by a review: an item refused as a duplicate id is recorded under a key of its own
    (``<key>#invalid-item-N``) with its payload, which may be a valid task whose key is another row's.
    Redriven and recovered, it ran under the invalid key: the same output made twice, by two rows.
    ``dlq redrive`` leaves such records dead now; a row reopened otherwise (an earlier version's
    redrive, a hand edit) is still dead-lettered, not run."""
    from taskqueue.errors import InvalidTask
    [task] = make_tasks(objects, 1)
    tq = make_queue()
    assert tq.submit(task).result(timeout=WAIT_S).status is TaskStatus.SUCCESS
    invalid_key = task.idempotency_key + "#invalid-item-1"
    assert tq.record_invalid(task.id, invalid_key, json.dumps(task.to_dict()), InvalidTask("duplicate id"))
    assert tq.store.commit(tq.store.redrive([invalid_key])) == []  # no redrive can mend it
    conn = sqlite3.connect(db)
    with conn:  # reopened as an earlier version's redrive did
        conn.execute("UPDATE tasks SET status = 'queued', attempts = 0, owner = NULL, version = version + 1"
                     " WHERE idempotency_key = ?", (invalid_key,))
    conn.close()
    tq.recover_orphans()
    assert tq.join(timeout=WAIT_S)
    rows = dict(db_rows(db, "SELECT idempotency_key, status FROM tasks"))
    assert rows == {task.idempotency_key: "success", invalid_key: "dead"}
    assert db_rows(db, "SELECT COUNT(*) FROM tasks WHERE output_key IS NOT NULL") == [(1,)]


# -- the store writer's linger -------------------------------------------------------------------------

def test_the_store_writer_lingers_only_while_every_worker_has_a_task_waiting(make_queue, objects):
    """A commit a few milliseconds later delays no worker only while each has a task queued behind the
    one it runs; an idle or draining queue commits at once."""
    processor = GatedProcessor(objects, gated=True)
    tq = make_queue(processor, commit_linger_s=0.004)  # 2 workers
    assert tq.store.committer.linger == tq._linger
    assert tq._linger() == 0.0  # idle
    tasks = make_tasks(objects, 4)
    futures = [tq.submit(task) for task in tasks[:2]]
    processor.wait_entered(2)  # each worker holds one task at the gate
    assert tq._linger() == 0.0
    futures.append(tq.submit(tasks[2]))
    assert tq._linger() == 0.0  # one task waiting for two workers
    futures.append(tq.submit(tasks[3]))
    assert tq._linger() == 0.004
    processor.gate.set()
    assert [f.result(WAIT_S).status for f in futures] == [TaskStatus.SUCCESS] * 4
    assert tq._linger() == 0.0


def test_a_linger_of_zero_leaves_the_writer_committing_at_once(make_queue):
    assert make_queue(commit_linger_s=0).store.committer.linger is None


def test_a_worker_waiting_for_its_start_commits_it_as_urgent(make_queue, objects):
    """Found in review: where a worker commits its start and waits (PostgreSQL, which has no start
    ledger; SQLite after a freeze), a lingering writer held every start up to the whole linger. The
    writer never lingers for an urgent commit (see test_committer)."""
    processor = GatedProcessor(objects, gated=True)
    tq = make_queue(processor, commit_linger_s=0.1)  # 2 workers
    tq.store.ledger = None  # every start is committed and waited for, as on PostgreSQL
    seen: list[bool] = []
    commit = tq.store.commit

    def spying(op, along=(), *, urgent=False):
        if threading.get_ident() in tq._worker_threads and op.fn.__name__ == "_start":
            seen.append(urgent)
        return commit(op, along, urgent=urgent)

    tq.store.commit = spying
    tasks = make_tasks(objects, 6)
    futures = [tq.submit(task) for task in tasks[:2]]
    processor.wait_entered(2)
    futures += [tq.submit(task) for task in tasks[2:]]  # 4 waiting for 2 workers: a loaded queue
    assert tq._linger() == 0.1
    processor.gate.set()
    assert [f.result(WAIT_S).status for f in futures] == [TaskStatus.SUCCESS] * 6
    assert seen == [True] * 6
