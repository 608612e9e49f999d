"""Rewrite a metrics file during a run: atomically, every ``interval_s`` seconds, from a daemon thread.

The engine writes ``--metrics-out`` once, at shutdown; :class:`PeriodicMetricsWriter`
keeps the same file current while the run lasts, so a long run can be
followed with nothing more than ``cat``. Each write goes through
:func:`~taskqueue.tempfiles.atomic_write_text` (temp file, fsync, rename):
a reader sees the previous snapshot or the next, never half of one.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from typing import Callable

from .errors import text_of
from .logs import LOGGER_NAME
from .tempfiles import atomic_write_text

_log = logging.getLogger(LOGGER_NAME)


class PeriodicMetricsWriter:
    """Writes ``snapshot()`` as JSON to ``path`` every ``interval_s`` seconds between start() and stop().

    The first write is one interval after :meth:`start`. The thread waits on
    an Event, so :meth:`stop` returns at once; if the thread wrote at least
    once, ``stop()`` writes one last snapshot after it has gone, so the file
    ends with the final state even if a periodic write raced the engine's
    own final write. A failed write is logged and retried at the next tick;
    it never stops the thread or the run.
    """

    def __init__(self, path: str, snapshot: Callable[[], dict], *, interval_s: float = 10.0) -> None:
        if not (isinstance(interval_s, (int, float)) and math.isfinite(interval_s) and interval_s > 0):
            raise ValueError(f"interval_s must be a finite number greater than 0, got {interval_s!r}")
        self.path = path
        self._snapshot = snapshot
        self._interval = float(interval_s)
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.writes = 0  # successful writes so far (read after stop(), or for tests)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tq-metrics-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            self.write_now()

    def write_now(self) -> bool:
        """Write one snapshot now; False (and an error logged) if it failed."""
        try:
            atomic_write_text(self.path, json.dumps(self._snapshot(), indent=2, sort_keys=True) + "\n")
        except Exception as exc:  # OSError mostly; whatever it is, the run goes on
            _log.error("could not write metrics", extra={
                "event": "metrics_write_failed", "task_id": None, "idempotency_key": None,
                "error_class": type(exc).__name__, "error": text_of(exc), "path": self.path})
            return False
        self.writes += 1
        return True

    def stop(self) -> None:
        """Stop the thread; then, if it wrote anything, write the final snapshot. Idempotent."""
        if self._thread is None or self._stopped.is_set():
            return
        self._stopped.set()
        self._thread.join()
        if self.writes:
            self.write_now()
