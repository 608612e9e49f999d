"""Rows a queue will not finish: given back at once, never left open under a live owner, never fatal.

A row this process holds (its owner token, its lease renewed by the heartbeat) is invisible to
every other process until this one exits. So a task that will not run here -- cancelled, refused
by a full queue, taken over while shutting down, failed by the queue itself -- gives its row
back, and a row that cannot run anywhere (its stored task no longer validates) is dead-lettered
rather than stopping every start-up. The counters say what happened, once each.

Real TaskQueues on real SQLite files; a second store on the same file plays another process
(its own owner token). Synchronisation is by Event and join(); timeouts only guard against hangs.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from concurrent.futures import CancelledError
from pathlib import Path

import pytest

from taskqueue.config import Config
from taskqueue.engine import TaskQueue
from taskqueue.errors import OutcomeNotRecorded, PermanentError, QueueFull, WorkerCrashed
from taskqueue.objectstore import LocalObjectStore
from taskqueue.processor import Processor
from taskqueue.store import SQLiteStore
from taskqueue.store.machine import StateMachine
from taskqueue.store.owners import HOSTNAME
from taskqueue.task import Task, TaskStatus

WAIT_S = 30  # hang guard only


class Gated(Processor):
    """A real Processor that holds every attempt at ``gate`` (open unless ``gated``), can raise a
    given exception for a key, and signals each entry on ``entered``."""

    def __init__(self, objects: LocalObjectStore, *, gated: bool = False,
                 raises: dict[str, BaseException] | None = None) -> None:
        super().__init__(objects)
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.raises = raises or {}
        self.entered = threading.Semaphore(0)
        self.calls: list[tuple[str, int]] = []

    def process(self, task: Task, attempt: int = 1):
        self.calls.append((task.id, attempt))
        self.entered.release()
        assert self.gate.wait(WAIT_S), "test gate never opened"
        error = self.raises.get(task.idempotency_key)
        if error is not None:
            raise error
        return super().process(task, attempt)


@pytest.fixture
def objects(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects", fsync=False)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "tasks.db"


@pytest.fixture
def tasks(objects: LocalObjectStore) -> list[Task]:
    made = []
    for n in range(4):
        objects.write(f"src/o{n}.txt", [f"source {n}\n".encode()])
        made.append(Task(id=f"t{n}", image_key=f"src/o{n}.txt", variant="gzip"))
    return made


@pytest.fixture
def queues():
    """``queues(tq)`` registers a TaskQueue (and its Gated processor) to shut down at teardown, gate opened."""
    made: list[TaskQueue] = []
    yield made.append
    for tq in made:
        gate = getattr(tq.processor, "gate", None)
        if gate is not None:
            gate.set()
        assert tq.shutdown(wait=True, timeout=WAIT_S), "TaskQueue did not shut down at teardown"


def config(**settings) -> Config:
    return Config(**{"workers": 1, "queue_size": 4, "fsync_outputs": False, "retry_base_s": 0.001, **settings})


def enqueue(db: Path, tasks: list[Task]) -> None:
    """Rows nobody holds yet, as a producer's ``enqueue`` leaves them."""
    store = SQLiteStore(str(db))
    try:
        store.commit(store.enqueue(tasks))
    finally:
        store.close()


def row_of(db: Path, key: str) -> tuple:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT status, attempts, owner FROM tasks WHERE idempotency_key = ?", (key,)).fetchone()
    finally:
        conn.close()


def hold_give_up(tq: TaskQueue) -> tuple[threading.Event, threading.Event]:
    """Hold every give-up ``tq`` hands over (an item between releasing its key and giving its row
    back) until the returned ``go`` is set; ``paused`` is set once the first is held."""
    real_give_up, paused, go = tq.store.give_up, threading.Event(), threading.Event()

    def give_up(*args, **kwargs):
        paused.set()
        assert go.wait(WAIT_S)
        return real_give_up(*args, **kwargs)
    tq.store.give_up = give_up
    return paused, go


def nonzero(tq: TaskQueue) -> dict[str, int]:
    return {name: n for name, n in tq.snapshot()["counters"].items() if n and name not in ("enqueued", "dequeued")}


# -- a task that will not run here gives its row back ------------------------------------------------

def test_a_cancelled_task_gives_back_a_row_it_took_over_to_any_process(db, objects, tasks, queues):
    blocker, task = tasks[0], tasks[1]
    enqueue(db, [task])
    processor = Gated(objects, gated=True)
    tq = TaskQueue(db, objects, config=config(), processor=processor, recover_unowned=False)
    queues(tq)
    first = tq.submit(blocker)
    assert processor.entered.acquire(timeout=WAIT_S)  # the worker is held: the next task waits in the queue
    future = tq.submit(task)  # takes over the enqueued row (nobody held it)
    assert row_of(db, task.idempotency_key)[2] == tq.store.owner
    assert future.cancel()
    processor.gate.set()
    first.result(WAIT_S)
    assert tq.join(WAIT_S)
    tq.store.flush()
    assert row_of(db, task.idempotency_key) == ("queued", 0, None)  # nobody's: not this idle, living process's
    other = SQLiteStore(str(db))
    try:
        assert other.commit(other.claim(task, 3)).runnable  # another process may run it now
    finally:
        other.close()
    assert [call[0] for call in processor.calls] == [blocker.id]


def test_a_task_refused_by_a_full_queue_gives_back_a_row_it_took_over(db, objects, tasks, queues):
    blocker, waiting, task = tasks[:3]
    enqueue(db, [task])
    processor = Gated(objects, gated=True)
    tq = TaskQueue(db, objects, config=config(queue_size=1, put_timeout_s=0.01), processor=processor,
                   recover_unowned=False)
    queues(tq)
    tq.submit(blocker)
    assert processor.entered.acquire(timeout=WAIT_S)
    tq.submit(waiting)  # the queue (size 1) is full now, and nothing takes from it
    with pytest.raises(QueueFull):
        tq.submit(task)  # its claim took the row over; the put timed out
    assert row_of(db, task.idempotency_key) == ("queued", 0, None)  # given back before submit raised
    processor.gate.set()
    assert tq.submit(task).result(WAIT_S).status is TaskStatus.SUCCESS  # offered again: runs


def test_rows_taken_over_while_shutting_down_are_let_go_and_the_shutdown_ends(db, objects, tasks, queues):
    """recover_orphans() called after shutdown() has waited for the tasks in flight: adopting its rows
    then would queue them behind the workers' stop sentinels, never to run (and, the queue full, block
    the scheduler that shutdown joins). They are let go of instead, for the next run."""
    processor = Gated(objects)
    tq = TaskQueue(db, objects, config=config(queue_size=1), processor=processor)
    queues(tq)
    workers_gone, go = threading.Event(), threading.Event()
    shut_executor = tq._executor.shutdown

    def shutdown_then_hold(*args, **kwargs):  # the interleaving: recovery runs after the workers ended
        shut_executor(*args, **kwargs)
        workers_gone.set()
        assert go.wait(WAIT_S)
    tq._executor.shutdown = shutdown_then_hold
    try:
        tq.shutdown(wait=False)
        assert workers_gone.wait(WAIT_S)
        enqueue(db, tasks[:2])  # rows nobody holds appear
        recovered = tq.recover_orphans()
        assert len(recovered.runnable) == 2 and len(tq.inflight) == 0  # taken over, none adopted
    finally:
        go.set()
    assert tq.shutdown(wait=True, timeout=WAIT_S)
    assert [row_of(db, t.idempotency_key) for t in tasks[:2]] == [("queued", 0, None)] * 2
    assert processor.calls == []
    again = TaskQueue(db, objects, config=config(), processor=Gated(objects))  # the next run takes them
    queues(again)
    assert again.join(WAIT_S)
    assert [row_of(db, t.idempotency_key)[0] for t in tasks[:2]] == ["success"] * 2


# -- a task the queue itself fails: its row let go of, counted as errored ------------------------------

def test_a_shutdown_cancelling_what_waits_lets_go_of_those_rows_at_once_not_after_what_runs(
        db, objects, tasks, queues):
    """Found in review: a stopped worker kept the rows it had claimed but not started until its running
    tasks ended (or, when its grace ran out, until their leases did: 5 min by default): other
    workers waited. They are let go of as they are cancelled; the running task's row stays ours."""
    processor = Gated(objects, gated=True)
    tq = TaskQueue(db, objects, config=config(), processor=processor)
    queues(tq)
    running, *waiting = [tq.submit(task) for task in tasks[:3]]
    assert processor.entered.acquire(timeout=WAIT_S)  # t0 runs, held at the gate; t1 and t2 wait in the queue
    assert tq.shutdown(wait=False, cancel_futures=True)
    for future in waiting:
        with pytest.raises(CancelledError):
            future.result(WAIT_S)
    tq.store.flush()  # everything handed over before this call is committed (the shutdown is still running t0)
    assert [row_of(db, task.idempotency_key) for task in tasks[1:3]] == [("queued", 0, None)] * 2
    other = SQLiteStore(str(db))  # another process takes them now
    try:
        assert sorted(r.task_id for r in other.commit(other.claim_due(5, 3)).runnable) == ["t1", "t2"]
    finally:
        other.close()
    assert row_of(db, tasks[0].idempotency_key)[:2] == ("running", 1) and not running.done()
    processor.gate.set()
    assert running.result(WAIT_S).status is TaskStatus.SUCCESS


def test_a_processor_raising_system_exit_fails_its_task_and_lets_go_of_its_row(db, objects, tasks, queues):
    task = tasks[0]
    processor = Gated(objects, raises={task.idempotency_key: SystemExit(3)})
    tq = TaskQueue(db, objects, config=config(), processor=processor)
    queues(tq)
    with pytest.raises(OutcomeNotRecorded) as info:  # not SystemExit itself, in the client's thread
        tq.submit(task).result(WAIT_S)
    assert isinstance(info.value.__cause__, SystemExit)
    tq.store.flush()
    assert row_of(db, task.idempotency_key) == ("running", 1, None)  # let go of; the attempt stays counted
    assert nonzero(tq) == {"errored": 1}
    processor.raises.clear()
    result = tq.submit(task).result(WAIT_S)  # not "being processed elsewhere": taken over, run again
    assert (result.status, result.attempts) == (TaskStatus.SUCCESS, 2)
    assert processor.calls == [(task.id, 1), (task.id, 2)]


def test_an_outcome_the_store_cannot_record_is_one_failed_attempt_and_one_errored_task(
        db, objects, tasks, queues, monkeypatch):
    task = tasks[0]

    def dead_letter_fails(self, conn, *args):  # the fault: the dead-letter cannot be written
        raise sqlite3.OperationalError("database or disk is full")
    monkeypatch.setattr(StateMachine, "_dead", dead_letter_fails)
    processor = Gated(objects, raises={task.idempotency_key: PermanentError("bad source")})
    tq = TaskQueue(db, objects, config=config(max_attempts=1), processor=processor)
    queues(tq)
    with pytest.raises(OutcomeNotRecorded, match="disk is full") as info:
        tq.submit(task).result(WAIT_S)
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    assert nonzero(tq) == {"failed": 1, "errored": 1}  # one failed attempt, counted once
    tq.store.flush()
    assert row_of(db, task.idempotency_key) == ("running", 1, None)  # let go of, for another run


# -- rows that cannot run anywhere, and rows a submit dead-letters --------------------------------------

def test_an_open_row_whose_task_no_longer_validates_is_dead_lettered_at_start_up(db, objects, tasks, queues):
    enqueue(db, tasks[:2])
    conn = sqlite3.connect(db)  # an older version's row, or a hand edit: today's validation refuses it
    conn.execute("UPDATE tasks SET payload = ? WHERE idempotency_key = ?", (json.dumps(
        {"id": "t0", "image_key": "src/o0.txt", "variant": "Not-A-Variant"}), tasks[0].idempotency_key))
    conn.commit()
    conn.close()
    tq = TaskQueue(db, objects, config=config(), processor=Gated(objects))  # raised InvalidTask before
    queues(tq)
    assert (len(tq.recovered.runnable), len(tq.recovered.dead)) == (1, 1)
    assert tq.join(WAIT_S)
    assert row_of(db, tasks[0].idempotency_key)[0] == "dead"
    assert row_of(db, tasks[1].idempotency_key)[0] == "success"
    assert nonzero(tq) == {"dead_lettered": 1, "succeeded": 1}


def test_a_submit_that_dead_letters_a_crashed_row_counts_and_logs_a_dead_letter(db, objects, tasks, queues, caplog):
    task = tasks[0]
    tq = TaskQueue(db, objects, config=config(max_attempts=3), processor=Gated(objects))
    queues(tq)
    enqueue(db, [task])
    conn = sqlite3.connect(db)  # its owner died in its last attempt (no such pid here; its lease not out)
    conn.execute("UPDATE tasks SET status = 'running', attempts = 3, owner = ?, lease_until = 9e18",
                 (f"{HOSTNAME}:999999999:-:abcdef",))
    conn.commit()
    conn.close()
    with caplog.at_level(logging.WARNING, logger="taskqueue"):
        error = tq.submit(task).exception(WAIT_S)
    assert isinstance(error, WorkerCrashed)
    assert error.deduplicated is False  # dead-lettered by this very submit: run counts it dead-lettered
    assert row_of(db, task.idempotency_key)[0] == "dead"
    assert nonzero(tq) == {"dead_lettered": 1}  # not "deduplicated"
    assert [r.event for r in caplog.records if getattr(r, "event", None) == "dead_lettered"] == ["dead_lettered"]


# -- a queue that cannot start stops what it started ------------------------------------------------------

def test_a_worker_thread_that_will_not_start_stops_the_queue_and_raises(db, objects, tasks, monkeypatch):
    """An OS limit on threads: the workers already started must not be left blocked on the queue (they
    are not daemons: the interpreter would wait for them at exit, forever), and the worker loop whose
    thread failed -- already in the executor's own queue -- must never run (it gets no stop sentinel)."""
    real_start = threading.Thread.start
    started = []

    def start(self):  # the fault: the third worker thread cannot be started
        if self.name.startswith("tq-worker"):
            started.append(self.name)
            if len(started) == 3:
                raise RuntimeError("can't start new thread")
        return real_start(self)
    monkeypatch.setattr(threading.Thread, "start", start)
    before = set(threading.enumerate())
    outcome: list = []

    def construct():
        try:
            TaskQueue(db, objects, config=config(workers=4), processor=Gated(objects))
        except RuntimeError as exc:
            outcome.append(exc)
    constructing = threading.Thread(target=construct)
    real_start(constructing)
    constructing.join(WAIT_S)
    assert not constructing.is_alive(), "TaskQueue() hung"
    assert [str(e) for e in outcome] == ["can't start new thread"] and len(started) == 3
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive() and t.name.startswith("tq-")]
    assert left == []  # shut down before raising: every worker ended, the background threads too
    monkeypatch.undo()
    again = TaskQueue(db, objects, config=config(), processor=Gated(objects))  # the database was let go of
    try:
        assert again.submit(tasks[0]).result(WAIT_S).status is TaskStatus.SUCCESS
    finally:
        assert again.shutdown(wait=True, timeout=WAIT_S)


def test_a_failed_attempt_s_error_keeps_its_traceback_but_not_the_locals_of_its_frames(db, objects, tasks, queues):
    """A run of a million tasks whose sources are missing kept every error, and through its traceback
    the frames' locals (a 256 KiB zlib compressor each): gigabytes. The lines stay for the logs."""
    class Holding(Processor):
        def process(self, task, attempt=1):
            ballast = bytearray(1 << 20)  # what a finished frame must not keep alive
            raise PermanentError(f"no source ({len(ballast)} bytes held)")

    tq = TaskQueue(db, objects, config=config(max_attempts=1), processor=Holding(objects))
    queues(tq)
    error = tq.submit(tasks[0]).exception(WAIT_S)
    assert isinstance(error, PermanentError)
    frames = []
    tb = error.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    assert frames[-1].f_code.co_name == "process"  # the traceback is whole: where it was raised
    assert "ballast" not in frames[-1].f_locals


def test_a_row_let_go_of_and_taken_over_before_its_item_settles_runs_under_a_new_item(
        db, objects, tasks, queues, monkeypatch):
    """The row is free once its give-up commits, while the old item is still about to settle: a claim
    landing in between (a worker's feeder, a recovery) takes the row over and must get an item of its
    own -- before, the key still counted as held, the claim adopted nothing, and the row stayed ours
    with nobody running it."""
    import taskqueue.engine.worker as worker_module

    task = tasks[0]
    enqueue(db, [task])
    processor = Gated(objects, raises={task.idempotency_key: SystemExit(3)})
    tq = TaskQueue(db, objects, config=config(), processor=processor, recover_unowned=False)
    queues(tq)
    real_settle = worker_module.settle
    taken: list[int] = []

    def settle_after_a_claim(tq_, item, counter, **kwargs):  # the interleaving: a claim in the window
        if counter == "errored" and not taken:
            processor.raises.clear()
            tq.store.flush()  # the give-up is committed: the row is anybody's
            taken.append(tq.claim_due(4))
        return real_settle(tq_, item, counter, **kwargs)
    monkeypatch.setattr(worker_module, "settle", settle_after_a_claim)
    assert tq.claim_due(4) == 1
    assert tq.join(WAIT_S)
    assert taken == [1]
    assert processor.calls == [(task.id, 1), (task.id, 2)]  # run again, by the item the claim made
    assert row_of(db, task.idempotency_key)[:2] == ("success", 2)


def test_a_give_up_that_lands_after_the_row_was_taken_over_again_changes_nothing(
        db, objects, tasks, queues, fail_first_start):
    """The key is released before the give-up is handed over; a submit of the same key in between takes
    the (still ours, queued) row over for a new item, which starts it. The old give-up must not then
    free the new item's running row (another process would take it and run it too): it is checked
    against the version the old item last wrote."""
    task = tasks[0]
    fail_first_start(sqlite3.OperationalError("database is locked"))  # the first start cannot be committed
    processor = Gated(objects, gated=True)
    tq = TaskQueue(db, objects, config=config(workers=2), processor=processor)
    queues(tq)
    ledger, tq.store.ledger = tq.store.ledger, None  # starts committed and waited for, as on PostgreSQL
    paused, go = hold_give_up(tq)
    try:
        first = tq.submit(task)
        assert paused.wait(WAIT_S)
        second = tq.submit(task)  # a new item: it takes the row over and a worker starts it
        assert second is not first
        assert processor.entered.acquire(timeout=WAIT_S)
        go.set()
        assert isinstance(first.exception(WAIT_S), OutcomeNotRecorded)
        tq.store.flush()  # the old give-up is committed (or refused) by now
        assert row_of(db, task.idempotency_key) == ("running", 1, tq.store.owner)  # still ours, running
        processor.gate.set()
        assert second.result(WAIT_S).status is TaskStatus.SUCCESS
    finally:
        go.set()
        processor.gate.set()
        tq.store.ledger = ledger


def test_shutdown_puts_no_stop_sentinel_for_a_worker_loop_that_never_ran(db, objects):
    """After a failed start, the executor cancels the worker loops its threads had not taken yet: they
    will never take a sentinel, and one put for each would block shutdown on a full queue forever."""
    from concurrent.futures import Future

    tq = TaskQueue(db, objects, config=config(workers=1, queue_size=1), processor=Gated(objects))
    never_ran = [Future(), Future()]
    for future in never_ran:
        future.cancel()
    tq._workers += never_ran  # as TaskQueue.__init__ leaves them when a later worker thread would not start
    assert tq.shutdown(wait=True, timeout=WAIT_S)
    assert tq.depth() == 0


def test_a_give_up_counting_a_ledger_attempt_leaves_a_row_taken_over_since_alone(
        db, objects, tasks, queues, fail_first_start):
    """As above, on the ledger's path: the start was posted and failed, so the give-up first counts
    the attempt (``begun``: the row from v to v + 1) and then frees the row at v + 1. A submit's
    take-over in between also makes the row v + 1: the give-up must see that its replay found
    nothing and stop, not free the new item's row."""
    task = tasks[0]
    fail_first_start(sqlite3.OperationalError("database is locked"))  # posted through the ledger, it fails
    processor = Gated(objects, gated=True, raises={task.idempotency_key: SystemExit(3)})
    tq = TaskQueue(db, objects, config=config(), processor=processor)
    queues(tq)
    assert tq.store.ledger is not None
    paused, go = hold_give_up(tq)
    try:
        first = tq.submit(task)
        assert processor.entered.acquire(timeout=WAIT_S)
        processor.gate.set()  # the first attempt raises SystemExit; its start has failed meanwhile
        assert paused.wait(WAIT_S)
        processor.gate.clear()
        processor.raises.clear()
        second = tq.submit(task)  # takes the (ours, queued) row over: v + 1
        go.set()
        assert isinstance(first.exception(WAIT_S), OutcomeNotRecorded)
        assert processor.entered.acquire(timeout=WAIT_S)  # the new item's attempt runs
        tq.store.flush()
        status, _attempts, owner = row_of(db, task.idempotency_key)
        assert (status, owner) == ("running", tq.store.owner)  # not freed under the new item
        processor.gate.set()
        assert second.result(WAIT_S).status is TaskStatus.SUCCESS
    finally:
        go.set()
        processor.gate.set()
