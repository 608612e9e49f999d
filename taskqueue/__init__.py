"""taskqueue: a fast, durable, in-process task queue on the standard library.

Start with :class:`taskqueue.engine.TaskQueue`; the CLI is :mod:`taskqueue.cli`.
"""

__version__ = "0.1.0"

import logging as _logging

# A library stays quiet unless the application configures logging (taskqueue.logs.configure does).
_logging.getLogger(__name__).addHandler(_logging.NullHandler())
