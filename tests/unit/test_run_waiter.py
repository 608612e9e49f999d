"""`run`'s summary arithmetic (taskqueue.cli.run._Waiter): every task of the file counted exactly once.

Real ``concurrent.futures.Future`` objects, settled by the test as the engine would settle them.
"""

from __future__ import annotations

import gc
import weakref
from concurrent.futures import Future
from types import SimpleNamespace

from taskqueue.cli.run import _render, _summary, _Waiter
from taskqueue.errors import ClaimedElsewhere, OutcomeNotRecorded, PermanentError, QueueShutDown
from taskqueue.task import Task, TaskResult, TaskStatus


def task(n: int) -> Task:
    return Task(id=f"t{n}", image_key=f"src/o{n}.txt", variant="gzip")


def succeeded(n: int, deduplicated: bool = False) -> TaskResult:
    return TaskResult(task_id=f"t{n}", idempotency_key=task(n).idempotency_key, status=TaskStatus.SUCCESS,
                      output_key="variants/x", attempts=1, deduplicated=deduplicated)


def failed(error: BaseException) -> Future:
    future: Future = Future()
    future.set_exception(error)
    return future


def test_each_outcome_is_counted_once_and_the_total_adds_up():
    waiter = _Waiter()
    done: Future = Future()
    waiter.watch(task(0), done)
    done.set_result(succeeded(0))
    waiter.watch(task(1), failed(PermanentError("bad")))
    already: Future = Future()
    already.set_result(succeeded(2, deduplicated=True))
    waiter.watch(task(2), already)
    waiter.watch(task(3), failed(QueueShutDown("cancelled at shutdown")))
    waiter.watch(task(4), failed(OutcomeNotRecorded("its row is left for another run")))
    pending: Future = Future()
    waiter.watch(task(5), pending)  # never settles: the grace period ran out
    counts = waiter.counts(7)  # the 7th task was never offered
    assert counts == {"succeeded": 1, "deduplicated": 1, "dead_lettered": 1, "unfinished": 4, "not_offered": 1}
    assert sum(counts[k] for k in ("succeeded", "deduplicated", "dead_lettered", "unfinished")) == 7


def test_a_duplicate_that_shares_a_future_already_settled_is_counted_as_deduplicated():
    """The engine hands a duplicate in flight its original's Future, even when that Future has just
    settled (the item is forgotten a moment later): the second watch is the duplicate's."""
    waiter = _Waiter()
    shared: Future = Future()
    waiter.watch(task(0), shared)
    shared.set_result(succeeded(0))
    waiter.watch(task(0), shared)  # settled already when the duplicate is watched
    assert waiter.counts(2) == {"succeeded": 1, "deduplicated": 1, "dead_lettered": 0, "unfinished": 0,
                                "not_offered": 0}


def test_a_task_held_elsewhere_is_unfinished_once_whether_or_not_it_was_offered_again():
    waiter = _Waiter()
    waiter.watch(task(0), failed(ClaimedElsewhere("another process holds it")))
    ok: Future = Future()
    ok.set_result(succeeded(1))
    waiter.watch(task(1), ok)
    # A stop before it was offered again, and before task 2 was offered at all:
    assert waiter.counts(3) == {"succeeded": 1, "deduplicated": 0, "dead_lettered": 0, "unfinished": 2,
                                "not_offered": 1}
    taken = waiter.take_elsewhere()
    assert taken == [task(0)]
    waiter.put_back(taken)  # the stop came before the re-offer
    assert waiter.counts(3)["unfinished"] == 2
    again = waiter.take_elsewhere()
    finished: Future = Future()
    waiter.watch(again[0], finished, again=True)  # offered again, and accepted this time
    finished.set_result(succeeded(0))
    assert waiter.counts(3) == {"succeeded": 2, "deduplicated": 0, "dead_lettered": 0, "unfinished": 1,
                                "not_offered": 1}


def test_the_waiter_keeps_no_future_once_it_has_settled():
    waiter = _Waiter()
    future: Future = Future()
    waiter.watch(task(0), future)
    future.set_result(succeeded(0))
    ref = weakref.ref(future)
    del future
    gc.collect()
    assert ref() is None
    assert waiter.counts(1)["succeeded"] == 1


def summary_of(waiter: _Waiter, tasks: int, elapsed: float, taken_over: tuple[int, int] = (0, 0),
               invalid: int = 0) -> dict:
    """``run``'s summary of a file of ``tasks`` tasks after ``elapsed`` seconds (the queue stubbed: its
    counters are the waiter's, plus ``taken_over`` rows of the database that succeeded and that died)."""
    loaded = SimpleNamespace(tasks=[task(n) for n in range(tasks)], invalid=[object()] * invalid,
                             duplicates_dropped=0)
    outcome = waiter.counts(tasks)
    counters = {"retried": 0, "succeeded": outcome["succeeded"] + taken_over[0],
                "deduplicated": outcome["deduplicated"], "dead_lettered": outcome["dead_lettered"] + taken_over[1]}
    snap = {"counters": counters, "latency_s": {"p95": None}, "queue_depth": {"max": 4}}
    tq = SimpleNamespace(final_metrics=snap, recovered=SimpleNamespace(runnable=[], dead=[]),
                         store=SimpleNamespace(location="tasks.db"), objects=SimpleNamespace(root="store"))
    return _summary(waiter, loaded, 0, elapsed, tq, 0)


def test_tasks_per_second_counts_the_tasks_done_not_those_offered():
    """An interrupted run whose offered tasks never finished did no task per second."""
    waiter = _Waiter()
    for n in range(8):
        waiter.watch(task(n), Future())  # offered, never settled: a stop, and the grace period ran out
    interrupted = summary_of(waiter, 10, elapsed=2.0)
    assert interrupted["unfinished"] == 10 and interrupted["throughput_per_s"] == 0.0
    assert "elapsed 2.0s, 0.0 tasks/s" in _render(interrupted)

    waiter = _Waiter()
    outcomes = [succeeded(0), succeeded(1), succeeded(2, deduplicated=True)]
    for n, result in enumerate(outcomes):
        future: Future = Future()
        future.set_result(result)
        waiter.watch(task(n), future)
    waiter.watch(task(3), failed(PermanentError("bad")))
    waiter.watch(task(4), failed(QueueShutDown("cancelled at shutdown")))  # unfinished: not done
    waiter.watch(task(5), Future())
    partial = summary_of(waiter, 8, elapsed=2.0)
    assert (partial["succeeded"], partial["deduplicated"], partial["dead_lettered"]) == (2, 1, 1)
    assert partial["throughput_per_s"] == 2.0  # 4 done (succeeded, deduplicated or dead-lettered) in 2 s
    backlog = summary_of(waiter, 8, elapsed=2.0, taken_over=(5, 1))  # found in review: a run that also
    assert backlog["throughput_per_s"] == 5.0  # finished rows taken over from the database did that work too
    # ... and invalid items, recorded as dead letters (counted so in the metrics), are no work done
    invalid = summary_of(waiter, 8, elapsed=2.0, taken_over=(0, 2), invalid=2)
    assert invalid["throughput_per_s"] == 2.0


def test_a_task_dead_lettered_before_this_run_counts_as_already_done_not_dead_lettered_again():
    """Found in review: rerunning a file, the summary said "3 dead-lettered" for tasks dead since the
    first run, where nothing was done again (the metrics said deduplicated)."""
    before = PermanentError("SourceMissing: object 'x' does not exist")
    before.deduplicated = True  # as TaskQueue.submit marks a stored dead letter
    waiter = _Waiter()
    waiter.watch(task(0), failed(before))
    waiter.watch(task(1), failed(PermanentError("bad source")))  # dead-lettered in this run
    counts = waiter.counts(2)
    assert (counts["deduplicated"], counts["dead_lettered"]) == (1, 1)
