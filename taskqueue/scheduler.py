"""RetryScheduler: puts tasks back on the queue when their backoff has passed.

A heap ordered by due time and one timer thread that sleeps on a Condition
until the earliest item is due or a sooner one arrives -- a worker never
sleeps through a backoff, and nothing polls.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Any, Callable


class RetryScheduler:
    """Puts items back on the queue when their backoff has passed.

    A heap ordered by due time and one timer thread that sleeps on a
    Condition until the earliest item is due (or a sooner one arrives). The
    ``put`` callback may block on a full queue; it is called outside the lock.
    """

    def __init__(self, put: Callable[[Any], None], clock: Callable[[], float] = time.monotonic) -> None:
        self._put = put
        self._clock = clock
        self._heap: list = []
        self._seq = itertools.count()
        self._changed = threading.Condition()  # announces: heap changed or stop requested
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="tq-retry-scheduler", daemon=True)
        self._thread.start()

    def schedule(self, delay_s: float, item: Any) -> bool:
        """Put ``item`` back on the queue in ``delay_s`` seconds; False if the scheduler is stopped."""
        with self._changed:
            if self._stopped:
                return False
            heapq.heappush(self._heap, (self._clock() + delay_s, next(self._seq), item))
            # Wake the timer to look again: the new item may be the soonest, and the clock may have
            # moved further than the timer's wait expected (an injected clock, a suspended machine).
            self._changed.notify()
            return True

    def __len__(self) -> int:
        with self._changed:
            return len(self._heap)

    def _run(self) -> None:
        while True:
            with self._changed:
                while True:
                    if self._stopped:
                        return
                    if self._heap:
                        wait = self._heap[0][0] - self._clock()
                        if wait <= 0:
                            item = heapq.heappop(self._heap)[2]
                            break
                        self._changed.wait(wait)
                    else:
                        self._changed.wait()
            self._put(item)

    def stop(self) -> list[Any]:
        """Stop the timer thread and return the items that were still waiting."""
        with self._changed:
            self._stopped = True
            self._changed.notify()
        self._thread.join()
        with self._changed:
            items = [entry[2] for entry in self._heap]
            self._heap.clear()
        return items
