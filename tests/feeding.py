"""Running a worker's feeder in a thread of the test, and knowing when it first waits."""

from __future__ import annotations

import threading

from taskqueue.engine.feeder import Feeder


def start_feeder(feeder: Feeder) -> tuple[threading.Thread, threading.Event]:
    """Start ``feeder.run()`` in a thread; the Event is set when the feeder first waits (its room is
    full, or nothing it may claim is due), so a test acts at that point, not after a sleep."""
    tq = feeder._tq
    waiting, real_wait = threading.Event(), tq.inflight.wait_settled

    def wait_settled(seen, timeout=None, also=None):
        waiting.set()
        return real_wait(seen, timeout, also)

    tq.inflight.wait_settled = wait_settled
    thread = threading.Thread(target=feeder.run)
    thread.start()
    return thread, waiting
