"""CPU time by thread: which of a run's threads spent the process's CPU (Linux; None elsewhere).

Used by :mod:`.opcount` (``--cpu``) and by every benchmark row (:mod:`.runner`), so that "the engine
costs more CPU per task than the pool" can be split into its writer, its workers and its clients.
"""

from __future__ import annotations

import collections
import threading


def thread_cpu() -> dict[int, tuple[str, float]] | None:
    """Per live thread, by native id: its name with trailing digits stripped (``tq-worker_3`` ->
    ``tq-worker``) and the CPU seconds it has run (``/proc/self/task/<id>/schedstat``, in
    nanoseconds); None off Linux."""
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    seen: dict[int, tuple[str, float]] = {}
    for ident, name in names.items():
        try:
            with open(f"/proc/self/task/{ident}/schedstat") as f:
                seen[ident] = (name.rstrip("0123456789_-"), int(f.read().split()[0]) / 1e9)
        except (OSError, ValueError, IndexError):  # no /proc (not Linux), or the thread just ended
            continue
    return seen or None


def by_thread(before: dict[int, tuple[str, float]] | None, after: dict[int, tuple[str, float]] | None,
              cpu_s: float, rest: str = "client") -> dict[str, float] | None:
    """CPU seconds by thread name between two :func:`thread_cpu` readings, ``cpu_s`` the process's
    CPU time over the same span: the threads alive at ``after`` get what they ran since ``before``
    (or since they started), and ``rest`` gets what the process spent beyond them -- the threads
    gone by then (a load's clients). None where either reading is None."""
    if before is None or after is None:
        return None
    spent: collections.Counter[str] = collections.Counter()
    for ident, (name, seconds) in after.items():
        spent[name] += seconds - before.get(ident, (name, 0.0))[1]
    spent[rest] += max(0.0, cpu_s - sum(spent.values()))
    return dict(spent)
