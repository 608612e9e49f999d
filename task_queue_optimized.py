#!/usr/bin/env python3
"""Durable in-process task queue: `run`, `status`, `dlq`, and `--benchmark`.

    python3 task_queue_optimized.py --benchmark            # the load benchmark (stdlib only)
    python3 task_queue_optimized.py run --tasks FILE --db tasks.db --store store
    python3 task_queue_optimized.py status --db tasks.db
    python3 task_queue_optimized.py dlq list --db tasks.db

The code lives in the `taskqueue` package; this file is the entry point.
"""

import sys

from taskqueue.cli import main

if __name__ == "__main__":
    sys.exit(main())
