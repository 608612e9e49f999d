"""What a load's clients measured: one preallocated slot per task (:class:`Recorder`), read back as a
:class:`LoadResult` after the run.

Every per-task measurement goes into storage allocated *before* the start
barrier, one slot per task of the row (:class:`Recorder`: ``array('d')``
of submit times and latencies, a ``bytearray`` of states, lists of error
names and, only with ``keep_outputs``, of output keys). So RSS growth
measured from the barrier (see :mod:`taskqueue.bench.sampling`) is the
implementation's memory and the Tasks it holds, not the harness's bookkeeping.
"""

from __future__ import annotations

import functools
import time
from array import array
from collections import Counter
from typing import Sequence

from .impls import Outcome

REJECTED = Outcome(False, None, "rejected")

# Recorder.state values, one byte per task.
_PENDING, _OK, _ERROR, _REJECTED = 0, 1, 2, 3


class Recorder:
    """Preallocated per-task slots for one load run (indexed by the task's position in the list).

    Each slot is written by exactly one thread (the client that submitted the
    task, or the callback of its handle), so no lock is needed; a second
    recording of the same task is a harness bug and is remembered in
    ``twice`` (then raised by the clients' run, see :mod:`.clients`).
    """

    def __init__(self, tasks: Sequence[dict], keep_outputs: bool) -> None:
        n = len(tasks)
        self.ids = [item["id"] for item in tasks]
        self.began = array("d", bytes(8 * n))       # perf_counter just before submit
        self.latency = array("d", bytes(8 * n))     # seconds, for _OK and _ERROR
        self.submit_s = array("d", bytes(8 * n))    # seconds spent inside submit()
        self.submitted = bytearray(n)               # 1 once submit() returned or raised
        self.state = bytearray(n)
        self.error: list[str | None] = [None] * n  # error class name (names are shared strings)
        self.output: list[str | None] | None = [None] * n if keep_outputs else None
        self.twice: list[int] = []                  # indices recorded more than once (a harness bug)

    def record(self, index: int, outcome: Outcome, now: float | None = None) -> bool:
        """Record task ``index``'s outcome; latency ends at ``now`` (default: this call).

        False (and nothing recorded) if the task already had an outcome.
        """
        end = time.perf_counter() if now is None else now
        if self.state[index] != _PENDING:
            self.twice.append(index)
            return False
        if outcome is REJECTED:  # never accepted: no latency, not an error (counted as rejected)
            self.state[index] = _REJECTED
            return True
        self.latency[index] = end - self.began[index]
        if outcome.ok:
            if self.output is not None:
                self.output[index] = outcome.output_key
            self.state[index] = _OK
        else:
            self.error[index] = outcome.error
            self.state[index] = _ERROR
        return True


class LoadResult:
    """What the clients measured, read from the preallocated slots after the run.

    The lists and dicts below are built on first access (after the row's
    sampler has stopped), in task order: ``latencies`` and ``submit_s`` in
    seconds, ``outcomes`` task id -> :class:`Outcome` (a success's
    ``output_key`` is None unless the run kept outputs).
    """

    def __init__(self, recorder: Recorder, wall_s: float, submit_phase_s: float, *, dealt: int | None = None,
                 ran_out: bool = False) -> None:
        self._rec = recorder
        self.dealt = len(recorder.ids) if dealt is None else dealt  # tasks handed to clients
        self.ran_out = ran_out  # a timed load that used up its task list before its deadline
        self.wall_s = wall_s
        self.submit_phase_s = submit_phase_s   # longest time any client took to submit all its tasks
        self.recorded_twice = len(recorder.twice)

    @functools.cached_property
    def latencies(self) -> list[float]:
        rec = self._rec
        return [rec.latency[i] for i, s in enumerate(rec.state) if s in (_OK, _ERROR)]

    @functools.cached_property
    def submit_s(self) -> list[float]:
        rec = self._rec
        return [rec.submit_s[i] for i, done in enumerate(rec.submitted) if done]

    @functools.cached_property
    def outcomes(self) -> dict[str, Outcome]:
        rec = self._rec
        out: dict[str, Outcome] = {}
        for i, s in enumerate(rec.state):
            if s == _OK:
                out[rec.ids[i]] = Outcome(True, rec.output[i] if rec.output is not None else None, None)
            elif s == _ERROR:
                out[rec.ids[i]] = Outcome(False, None, rec.error[i])
            elif s == _REJECTED:
                out[rec.ids[i]] = REJECTED
        return out

    @functools.cached_property
    def errors(self) -> Counter:
        rec = self._rec
        return Counter(rec.error[i] for i, s in enumerate(rec.state) if s == _ERROR)

    @property
    def rejected(self) -> int:
        return self._rec.state.count(_REJECTED)

    @property
    def completed(self) -> int:
        return self._rec.state.count(_OK) + self._rec.state.count(_ERROR)

    @property
    def failed(self) -> int:
        return self._rec.state.count(_ERROR)

    @property
    def unsettled(self) -> int:
        """Dealt tasks without an outcome (a timed load never deals the rest of its list)."""
        return self._rec.state[:self.dealt].count(_PENDING)
