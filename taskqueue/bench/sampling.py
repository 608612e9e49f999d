"""Measurements taken while a row runs: resident memory and the implementation's backlog.

RSS comes from ``/proc/self/statm`` (Linux) while the row runs, and the
process's lifetime peak from ``resource.getrusage`` (``ru_maxrss``). Both
degrade to None where the platform lacks them (Windows has neither).

RSS growth of a row (:meth:`Sampler.rss_growth_kib`) is the highest RSS
sampled during the load minus the RSS at :meth:`Sampler.mark` -- called by
the load clients' start barrier, when every client thread exists and the
harness's per-task storage is allocated -- so it is what the implementation
(and the Tasks it holds) added while the load ran. Samples every 5 ms: a
peak shorter than that can be missed, a sustained one (a backlog) cannot.
"""

from __future__ import annotations

import os
import sys
import threading

try:
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None

SAMPLE_INTERVAL_S = 0.005


def rss_kib() -> int | None:
    """Current resident set size in KiB from /proc/self/statm; None where there is no /proc."""
    try:
        with open("/proc/self/statm", "rb") as f:
            resident_pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE") // 1024


def peak_rss_kib() -> int | None:
    """The process's peak RSS in KiB (``ru_maxrss``: KiB on Linux, bytes on macOS); None without it."""
    if resource is None:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


class Sampler:
    """A thread recording RSS and the implementation's backlog every few milliseconds until stopped.

    ``depth`` and ``held`` are callables returning an int or None (not known).
    """

    def __init__(self, depth, held=None, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self._depth = depth
        self._held = held or (lambda: None)
        self._interval = interval_s
        self._stopped = threading.Event()
        self.rss: list[int] = []
        self.depths: list[int] = []
        self.held: list[int] = []
        self.rss_at_mark: int | None = None
        self._mark_index: int | None = None
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def mark(self) -> None:
        """The load starts now: RSS growth is measured from here."""
        self.rss_at_mark = rss_kib()
        self._mark_index = len(self.rss)

    def rss_growth_kib(self) -> int | None:
        """Highest RSS sampled since :meth:`mark` (or since the start) minus RSS then; None without /proc."""
        if self.rss_at_mark is not None:
            after = self.rss[self._mark_index:]
            return max(after) - self.rss_at_mark if after else 0
        return max(self.rss) - self.rss[0] if self.rss else None

    def rss_start_kib(self) -> int | None:
        return self.rss_at_mark if self.rss_at_mark is not None else (self.rss[0] if self.rss else None)

    def __enter__(self) -> "Sampler":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stopped.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        rss = rss_kib()
        if rss is not None:
            self.rss.append(rss)
        depth = self._depth()
        if depth is not None:
            self.depths.append(depth)
        held = self._held()
        if held is not None:
            self.held.append(held)

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            self._sample()
