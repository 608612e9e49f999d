"""Run the task queue CLI with a processor that kills its own process on one key.

Usage (from the tests only; not part of the product)::

    CRASH_KEY=<idempotency key> CRASH_LOG=<file> python tests/chaos/crashy_run.py run --tasks ...

Before calling ``os._exit(CRASH_EXIT)`` on the task whose idempotency key is
``CRASH_KEY``, it appends ``<attempt>`` to ``CRASH_LOG`` (flushed and
fsynced), so the test can count how often the task was executed, and waits
for the queue's store to commit what is pending (``TaskStore.flush``): the
crash then happens as if the task had worked for a while, which makes the
state the next run recovers deterministic. Every other task runs the real
``Processor.process``. If ``EXEC_LOG`` is set, every call of ``process``
appends ``<key> <attempt>`` to it first. The repository root must be on
``PYTHONPATH``.
"""

import os
import sys

from taskqueue import cli
from taskqueue.engine import TaskQueue
from taskqueue.processor import Processor

CRASH_EXIT = 70


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one small O_APPEND write: lines from threads never interleave
        os.fsync(fd)
    finally:
        os.close(fd)


def main() -> int:
    crash_key = os.environ["CRASH_KEY"]
    crash_log = os.environ["CRASH_LOG"]
    exec_log = os.environ.get("EXEC_LOG")
    real_process = Processor.process
    real_init = TaskQueue.__init__
    queues = []

    def init(self, *args, **kwargs):
        queues.append(self)
        real_init(self, *args, **kwargs)

    def process(self, task, attempt=1):
        if exec_log:
            _append(exec_log, f"{task.idempotency_key} {attempt}\n")
        if task.idempotency_key == crash_key:
            _append(crash_log, f"{attempt}\n")
            for tq in queues:
                tq.store.flush()
            os._exit(CRASH_EXIT)
        return real_process(self, task, attempt)

    Processor.process = process
    TaskQueue.__init__ = init
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
