"""The engine: :class:`TaskQueue` (intake, recovery, shutdown), its in-flight table and its workers.

* :mod:`.core`     -- TaskQueue: submit(), the bounded queue, recovery, shutdown, metrics
* :mod:`.closing`  -- how a TaskQueue shuts down, and the exit hook for queues nobody shut down
* :mod:`.inflight` -- the tasks accepted and not yet settled, by idempotency key
* :mod:`.worker`   -- the worker loop and how an outcome is recorded
* :mod:`.takeover` -- rows other processes left or hold: recovery, a worker's claims, waiting
* :mod:`.feeder`   -- a ``worker`` process's feeder: due rows from the store into the queue
* :mod:`.leases`   -- the heartbeat that keeps a live process's rows its own
"""

from .closing import live_queues  # noqa: F401 - for tests that abandon a queue
from .core import TaskQueue
from .inflight import InFlight, WorkItem

__all__ = ["InFlight", "TaskQueue", "WorkItem"]
