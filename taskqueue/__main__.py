"""``python -m taskqueue``: the same command line as ``taskqueue`` and ``python3 task_queue_optimized.py``."""

import sys

from .cli import main

sys.argv[0] = "python -m taskqueue"  # for the usage line
sys.exit(main())
