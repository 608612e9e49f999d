#!/usr/bin/env python3
"""Load benchmark: baseline vs the optimised engine vs a plain ThreadPoolExecutor.

    python3 benchmark.py                    # io, overhead, burst at default sizes, 3 repeats
    python3 benchmark.py --quick            # a few seconds, for a smoke test
    python3 benchmark.py --scenarios io --clients 50,100 --repeat 5

Prints a table and the requirements' verdict; writes reports/benchmark.json,
reports/benchmark.csv and reports/benchmark.svg. Standard library only. See
``python3 benchmark.py --help`` and taskqueue/bench/.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from taskqueue.bench import main  # noqa: E402  (needs the sys.path line above)

if __name__ == "__main__":
    sys.exit(main())
