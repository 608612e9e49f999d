"""RetryScheduler: due order, wake-up on a sooner item, stop returns what was waiting."""

import threading

from taskqueue.scheduler import RetryScheduler

WAIT_S = 10.0  # hang guard only


class SteppedClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_items_come_out_in_due_order_once_due():
    clock, put, done = SteppedClock(), [], threading.Event()

    def record(item):
        put.append(item)
        if len(put) == 4:
            done.set()

    scheduler = RetryScheduler(record, clock=clock)
    try:
        assert scheduler.schedule(30.0, "c")
        assert scheduler.schedule(10.0, "a")
        assert scheduler.schedule(20.0, "b")
        assert put == [] and len(scheduler) == 3  # nothing is due at t=100
        clock.now = 1000.0  # everything is due now; scheduling wakes the timer thread to look again
        assert scheduler.schedule(0.0, "now")
        assert done.wait(WAIT_S)
        assert put == ["a", "b", "c", "now"]  # by due time: 110, 120, 130, then 1000
    finally:
        scheduler.stop()


def test_stop_returns_the_waiting_items_and_refuses_new_ones():
    scheduler = RetryScheduler(lambda item: None, clock=SteppedClock())
    scheduler.schedule(60.0, "x")
    scheduler.schedule(30.0, "y")
    assert sorted(scheduler.stop()) == ["x", "y"]
    assert scheduler.schedule(0.0, "z") is False
    assert len(scheduler) == 0
