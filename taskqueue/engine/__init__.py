"""The engine: :class:`TaskQueue` (intake, recovery, shutdown), its in-flight table and its workers.

* :mod:`.core`     -- TaskQueue: submit(), the bounded queue, recovery, shutdown, metrics
* :mod:`.inflight` -- the tasks accepted and not yet settled, by idempotency key
* :mod:`.worker`   -- the worker loop and how an outcome is recorded
* :mod:`.leases`   -- the heartbeat that keeps a live process's rows its own
"""

from .core import TaskQueue, _live_queues
from .inflight import InFlight, WorkItem

__all__ = ["InFlight", "TaskQueue", "WorkItem"]
