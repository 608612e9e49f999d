"""What a library user's own code can do to a TaskQueue, and what the queue does about it.

Found by a review that used the Python API as a demanding developer would: done-callbacks that
submit more work or shut the queue down, processors that return the wrong thing or raise what
``Exception`` does not cover, errors whose text cannot be printed or stored, a stored payload that
is not JSON. Each of these had hung the queue for good, lost the real error, or stopped every later
start-up. Real threads, a real SQLite file, real objects; every timeout is a hang guard.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
from pathlib import Path

import pytest

from taskqueue.config import Config
from taskqueue.engine import TaskQueue
from taskqueue.errors import OutcomeNotRecorded, QueueFull
from taskqueue.objectstore import LocalObjectStore
from taskqueue.processor import Output, Processor
from taskqueue.store import SQLiteStore
from taskqueue.task import Task

WAIT_S = 60  # hang guard only


class Scripted(Processor):
    """A real Processor; ``behave(task, attempt)`` may raise or return something instead (None: process).
    ``gate`` holds every task but ``t0`` until set."""

    def __init__(self, objects: LocalObjectStore, behave=None, *, gated: bool = False) -> None:
        super().__init__(objects)
        self.behave = behave
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.calls: list[tuple[str, int]] = []

    def process(self, task: Task, attempt: int = 1):
        self.calls.append((task.id, attempt))
        if task.id != "t0" and not self.gate.wait(WAIT_S):
            raise RuntimeError("test gate never opened")
        if self.behave is not None:
            made = self.behave(task, attempt)
            if made is not None:
                return made
        return super().process(task, attempt)


@pytest.fixture
def objects(tmp_path: Path) -> LocalObjectStore:
    objects = LocalObjectStore(tmp_path / "objects", fsync=False)
    for i in range(60):
        objects.write(f"src/{i}.txt", [f"source {i}\n".encode()])
    return objects


def task(i: int) -> Task:
    return Task(id=f"t{i}", image_key=f"src/{i}.txt", variant="gzip")


def rows(db: Path) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT task_id, status, attempts, error_class, last_error FROM tasks"
                            " ORDER BY id").fetchall()
    finally:
        conn.close()


def finish(tq: TaskQueue) -> None:
    assert tq.join(WAIT_S), "hang guard: join() never returned"
    assert tq.shutdown(wait=True, timeout=WAIT_S), "hang guard: shutdown() never finished"


# -- done-callbacks -----------------------------------------------------------------------------------

@pytest.mark.parametrize("ledger", [True, False], ids=["start-ledger", "no-ledger"])
def test_a_done_callback_submitting_into_a_full_queue_is_refused_at_once_instead_of_hanging(
        tmp_path, objects, ledger):
    """The callback runs in the thread that committed the outcome: the store's writer, or (without a
    start ledger: PostgreSQL, an unwritable directory) a worker. Waiting there for room waited for
    itself, and the queue hung for good, shutdown(timeout) and interpreter exit included."""
    db = tmp_path / "tasks.db"
    if not ledger:
        Path(f"{db}-attempts").touch()  # where the ledger's directory goes: no ledger, starts committed
    processor = Scripted(objects, gated=True)  # t0 runs; the tasks its callback submits wait at the gate
    tq = TaskQueue(db, objects, config=Config(workers=1, queue_size=4, fsync_outputs=False), processor=processor)
    assert (tq.store.ledger is not None) == ledger
    accepted, refused, done = [], [], threading.Event()

    def fan_out(_future) -> None:
        try:
            for i in range(1, 40):
                try:
                    accepted.append(tq.submit(task(i)))
                except QueueFull as exc:
                    refused.append(exc)
        finally:
            done.set()

    tq.submit(task(0)).add_done_callback(fan_out)
    assert done.wait(WAIT_S), "hang guard: the callback never returned"
    processor.gate.set()
    finish(tq)
    assert len(accepted) + len(refused) == 39 and 4 <= len(accepted) <= 5  # the queue, and the one running
    assert "cannot wait for room" in str(refused[0])
    assert all(f.result(0).status.value == "success" for f in accepted)
    assert tq.snapshot()["counters"]["rejected"] == len(refused)
    assert {r[1] for r in rows(db)} == {"success"} and len(rows(db)) == 1 + len(accepted)  # refused: no row


def test_shutdown_waiting_from_a_done_callback_raises_and_the_shutdown_goes_on(tmp_path, objects):
    """It waited for the very item whose Future was running the callback: a deadlock, silently."""
    tq = TaskQueue(tmp_path / "tasks.db", objects, config=Config(workers=1, fsync_outputs=False),
                   processor=Scripted(objects))
    raised, done = [], threading.Event()

    def stop(_future) -> None:
        try:
            tq.shutdown()
        except RuntimeError as exc:
            raised.append(exc)
        finally:
            done.set()

    tq.submit(task(0)).add_done_callback(stop)
    assert done.wait(WAIT_S), "hang guard: the callback never returned"
    assert len(raised) == 1 and "wait=False" in str(raised[0])
    assert tq.shutdown(wait=True, timeout=WAIT_S)  # it went on in the background
    assert tq.inflight.closed


def test_shutdown_waiting_from_inside_a_task_raises_and_the_task_is_dead_lettered(tmp_path, objects):
    holder: list[TaskQueue] = []

    def stop_from_inside(_task, _attempt):
        holder[0].shutdown()  # a worker waiting for the workers to stop

    tq = TaskQueue(tmp_path / "tasks.db", objects, config=Config(workers=2, fsync_outputs=False),
                   processor=Scripted(objects, stop_from_inside))
    holder.append(tq)
    error = tq.submit(task(0)).exception(WAIT_S)
    assert isinstance(error, RuntimeError) and "wait=False" in str(error)
    assert tq.shutdown(wait=True, timeout=WAIT_S)
    assert rows(tmp_path / "tasks.db")[0][:4] == ("t0", "dead", 1, "RuntimeError")


# -- processors that misbehave -------------------------------------------------------------------------

class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


class UnprintableAbort(BaseException):
    def __str__(self) -> str:
        raise RuntimeError("no text")


BAD_NAME = os.fsdecode(b"photo-\xff.jpg")  # a file name from os.listdir that is not UTF-8: a lone surrogate


@pytest.mark.parametrize("error, error_class, stored", [
    (ValueError(f"cannot decode {BAD_NAME}"), "ValueError", "cannot decode photo-\\udcff.jpg"),
    (Unprintable(), "Unprintable", "<Unprintable: its text could not be made (RuntimeError)>"),
], ids=["surrogate-in-text", "str-raises"])
def test_a_permanent_error_is_dead_lettered_on_its_first_attempt_whatever_its_text_or_class(
        tmp_path, objects, error, error_class, stored):
    """Before: a text SQLite cannot store, or a str() that raises, failed the dead-letter write or the
    log line: the Future got OutcomeNotRecorded, the task ran again on every offer and ended as
    WorkerCrashed, its own error lost."""
    def fail(t, _attempt):
        if t.id == "t1":
            raise error

    processor = Scripted(objects, fail)
    db = tmp_path / "tasks.db"
    tq = TaskQueue(db, objects, config=Config(workers=1, max_attempts=3, fsync_outputs=False), processor=processor)
    first, second = tq.submit(task(1)), tq.submit(task(2))
    assert first.exception(WAIT_S) is error
    assert second.result(WAIT_S).status.value == "success"  # the worker lives on
    assert str(tq.submit(task(1)).exception(WAIT_S)).startswith(f"{error_class}: ")  # dead: not run again
    finish(tq)
    assert processor.calls.count(("t1", 1)) == 1 and ("t1", 2) not in processor.calls
    assert rows(db)[0] == ("t1", "dead", 1, error_class, stored)
    counters = tq.snapshot()["counters"]
    assert (counters["dead_lettered"], counters["errored"], counters["failed"]) == (1, 0, 1)


def test_a_base_exception_whose_text_cannot_be_made_fails_its_task_and_the_worker_lives_on(tmp_path, objects):
    """Before: the worker's own handler failed on its str() and the worker thread died: its Futures
    never resolved, join() and shutdown() hung. Like SystemExit (see test_giving_back.py), it is not
    raised in the client's thread: its task fails with OutcomeNotRecorded, its row let go of."""
    def abort(t, _attempt):
        if t.id == "t1":
            raise UnprintableAbort()

    tq = TaskQueue(tmp_path / "tasks.db", objects, config=Config(workers=1, fsync_outputs=False),
                   processor=Scripted(objects, abort))
    first, second = tq.submit(task(1)), tq.submit(task(2))
    error = first.exception(WAIT_S)
    assert isinstance(error, OutcomeNotRecorded) and isinstance(error.__cause__, UnprintableAbort)
    assert "its text could not be made" in str(error)
    assert second.result(WAIT_S).status.value == "success"
    finish(tq)
    assert tq.snapshot()["counters"]["errored"] == 1


@pytest.mark.parametrize("made", [None, "variants/gzip/x.gz", {"key": "x", "size": 1}], ids=["none", "str", "dict"])
def test_a_processor_returning_something_other_than_an_output_is_dead_lettered_naming_it(tmp_path, objects, made):
    class Wrong(Processor):
        def process(self, task, attempt=1):
            return made

    db = tmp_path / "tasks.db"
    tq = TaskQueue(db, objects, config=Config(workers=1, fsync_outputs=False), processor=Wrong(objects))
    error = tq.submit(task(1)).exception(WAIT_S)
    finish(tq)
    assert isinstance(error, TypeError) and type(made).__name__ in str(error) and "Output" in str(error)
    assert rows(db)[0][:4] == ("t1", "dead", 1, "TypeError")


def test_submit_of_something_other_than_a_task_is_a_type_error(tmp_path, objects):
    tq = TaskQueue(tmp_path / "tasks.db", objects, config=Config(workers=1, fsync_outputs=False))
    try:
        with pytest.raises(TypeError, match="Task"):
            tq.submit({"id": "t1", "image_key": "src/1.txt", "variant": "gzip"})
    finally:
        finish(tq)


# -- what is stored ------------------------------------------------------------------------------------

def test_a_reopened_row_whose_payload_is_not_json_is_dead_lettered_again_and_start_up_goes_on(tmp_path, objects):
    """record_invalid() keeps whatever payload it is given (a producer's raw line). Redriven, its row
    made every later TaskQueue() fail with JSONDecodeError as recovery decoded it. A redrive leaves
    it dead now; reopened otherwise (an earlier version's redrive, a hand edit), it is dead-lettered."""
    db = tmp_path / "tasks.db"
    config = Config(workers=1, fsync_outputs=False)
    with TaskQueue(db, objects, config=config) as tq:
        assert tq.record_invalid("raw-1", "raw-key-1", "this is the raw line from my producer", ValueError("not json"))
        assert tq.store.commit(tq.store.redrive(["raw-key-1"])) == []  # no run can mend it
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE tasks SET status = 'queued', version = version + 1 WHERE idempotency_key = 'raw-key-1'")
    conn.close()
    with TaskQueue(db, objects, config=config) as tq:
        assert tq.submit(task(1)).result(WAIT_S).status.value == "success"
    dead = rows(db)[0]
    assert dead[:4] == ("raw-1", "dead", 0, "InvalidTask") and "not JSON" in dead[4]


def test_a_snapshot_after_shutdown_is_the_final_one_and_names_its_process(tmp_path, objects):
    """Found in review: snapshot() after shutdown kept its clock running, so rates and utilisation fell
    the longer one waited; and nothing in it said which worker's it was (workers sharing a metrics
    file, or a log file, could not be told apart)."""
    with TaskQueue(tmp_path / "tasks.db", objects, config=Config(workers=1, fsync_outputs=False)) as tq:
        for i in range(3):
            tq.submit(task(i)).result(WAIT_S)
        live = tq.snapshot()
    assert live["owner"] == tq.store.owner and f":{os.getpid()}:" in live["owner"]
    final = tq.final_metrics
    assert tq.snapshot() == final and tq.snapshot() is not final  # a copy: the same figures every time
    assert final["rates"]["complete_per_s"] > 0


def test_a_task_taken_over_at_start_up_and_offered_again_is_counted_once(tmp_path, objects, dead_pid):
    """Found in review: rerunning the file of a run that died, each task whose row the new queue took
    over was counted twice -- once as that row's outcome, once as the file's offer, "deduplicated" --
    so the progress line read 533/533 done for 360 tasks and tasks/s doubled. The first offer of a
    key taken over is that task; a second offer is a duplicate."""
    db = tmp_path / "tasks.db"
    store = SQLiteStore(str(db))
    try:
        store.commit(store.enqueue([task(i) for i in range(5)]))
    finally:
        store.close()
    conn = sqlite3.connect(db)
    with conn:  # the rows of a run that died: its owner's pid is gone
        conn.execute(f"UPDATE tasks SET owner = '{socket.gethostname()}:{dead_pid}:-:gone', lease_until = 1e12,"
                     " version = version + 1")
    conn.close()
    with TaskQueue(db, objects, config=Config(workers=2, fsync_outputs=False)) as tq:
        assert len(tq.recovered.runnable) == 5
        assert tq.join(WAIT_S)  # the rows taken over are done before the file is offered again
        futures = [tq.submit(task(i)) for i in range(7)] + [tq.submit(task(0))]  # the file, one key twice
        results = [f.result(WAIT_S) for f in futures]
        assert tq.join(WAIT_S)
    counters = tq.final_metrics["counters"]
    assert (counters["succeeded"], counters["deduplicated"]) == (7, 1)  # 7 tasks, and the one repeat
    # Found by a later review: the file's summary called the taken-over tasks "already done
    # (deduplicated)", though this run did them. Only the repeat was found done.
    assert [r.deduplicated for r in results] == [False] * 7 + [True]


def test_a_dead_lettered_keys_future_is_marked_deduplicated_only_when_found_dead(tmp_path, objects):
    with TaskQueue(tmp_path / "tasks.db", objects, config=Config(workers=1, fsync_outputs=False),
                   processor=Scripted(objects, lambda t, a: (_ for _ in ()).throw(ValueError("bad")))) as tq:
        fresh = tq.submit(task(1)).exception(WAIT_S)
        again = tq.submit(task(1)).exception(WAIT_S)
    assert getattr(fresh, "deduplicated", False) is False  # dead-lettered by this offer
    assert again.deduplicated is True and str(again).startswith("ValueError: bad")
