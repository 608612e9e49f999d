"""Run the task queue CLI holding one task until the test lets it go (for the tests only)::

    HOLD_KEY=<image key> HOLD_FIFO=<named pipe> python tests/integration/holding_run.py run --tasks ...

The task whose ``image_key`` is ``HOLD_KEY`` first opens ``HOLD_FIFO`` for reading, which blocks
until the test opens the pipe for writing, and reads it to its end; then the real
``Processor.process`` runs. Without ``HOLD_KEY`` this is the CLI unchanged. (The store itself
refuses a named pipe as a source, so the pipe lives outside it.) The repository root must be on
``PYTHONPATH``.
"""

import os
import sys

from taskqueue import cli
from taskqueue.processor import Processor


def main() -> int:
    key, fifo = os.environ.get("HOLD_KEY"), os.environ.get("HOLD_FIFO")
    if key:
        real_process = Processor.process

        def process(self, task, attempt=1):
            if task.image_key == key:
                with open(fifo, "rb") as pipe:  # blocks until the test opens it for writing
                    pipe.read()
            return real_process(self, task, attempt)

        Processor.process = process
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
