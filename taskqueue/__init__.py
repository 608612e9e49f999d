"""taskqueue: a fast, durable, in-process task queue on the standard library.

Start with :class:`taskqueue.engine.TaskQueue`; the CLI is :mod:`taskqueue.cli`.
"""

__version__ = "0.1.0"
