"""The three implementations under test, behind one small interface.

* ``baseline`` -- ``BaselineTaskQueue`` from ``input_new/baseline_task_queue_v2.py``
  (loaded by file path: ``input_new`` is not a package), used exactly as shipped.
* ``engine`` -- :class:`taskqueue.engine.TaskQueue`: durable SQLite state,
  bounded queue, idempotency, retries.
* ``stdlib`` -- a plain ``ThreadPoolExecutor`` calling the same processor once
  per task: no bound, no persistence, no retries, no deduplication.

Each adapter offers ``submit(task) -> handle`` (raising :class:`Rejected` when
the implementation refuses the task), ``result(handle) -> Outcome`` (blocks
until the task has an outcome), ``depth()`` (current backlog, or None when the
implementation reports it itself), ``held()`` (tasks the implementation holds
right now: accepted and not yet settled where it can tell, else its backlog),
``metrics()`` and ``close()``. The engine and stdlib adapters also offer
``on_done(handle, callback)``: ``callback(Outcome)`` is called once, in the
thread that completes the task (``Future.add_done_callback``); the baseline
has no such API, so it has no ``on_done`` (see :mod:`taskqueue.bench.clients`).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from ..config import Config
from ..engine import TaskQueue
from ..errors import QueueFull

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
BASELINE_PATH = REPO_ROOT / "input_new" / "baseline_task_queue_v2.py"
RESULT_TIMEOUT_S = 300.0  # guards a client against a hang only; no row comes near it


class Outcome(NamedTuple):
    """What a client learned about one task: its output key, or the name of its error."""

    ok: bool
    output_key: str | None
    error: str | None


class Rejected(Exception):
    """The implementation refused the task at submit (the engine's ``reject`` mode)."""


class TimedProcessor:
    """Wraps a Processor and adds up the seconds ``process`` calls take (busy time) and their number.

    A running total, not a list, so the harness allocates nothing per task
    while the load runs (see :mod:`taskqueue.bench.clients`). The cost is two
    ``perf_counter()`` calls and one uncontended-or-briefly-contended lock per
    call, the same for every implementation.
    """

    def __init__(self, processor) -> None:
        self.processor = processor
        self._lock = threading.Lock()  # guards busy_s and calls
        self.busy_s = 0.0
        self.calls = 0

    def process(self, task, attempt: int = 1):
        began = time.perf_counter()
        try:
            return self.processor.process(task, attempt)
        finally:
            spent = time.perf_counter() - began
            with self._lock:
                self.busy_s += spent
                self.calls += 1

    def reset(self) -> None:
        with self._lock:
            self.busy_s, self.calls = 0.0, 0


def load_baseline():
    """Import ``input_new/baseline_task_queue_v2.py`` by path (once per process)."""
    name = "baseline_task_queue_v2"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BASELINE_PATH)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"baseline not found at {BASELINE_PATH}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class BaselineImpl:
    """The v2 baseline: one global lock held while processing, sleep-polling clients."""

    def __init__(self, processor, spec: dict) -> None:
        self.queue = load_baseline().BaselineTaskQueue(processor, workers=spec["workers"])
        self.queue.start()

    def submit(self, task):
        return self.queue.submit(task)

    def result(self, ticket) -> Outcome:
        ok, value = self.queue.wait(ticket, timeout=RESULT_TIMEOUT_S)
        return Outcome(True, value.key, None) if ok else Outcome(False, None, type(value).__name__)

    def depth(self) -> int:
        return len(self.queue.queue)  # read without its lock: len() of a list is atomic

    def held(self) -> int:
        # The backlog list. (Its results dict also grows by one entry per task, forever.)
        return len(self.queue.queue)

    def metrics(self) -> dict:
        return {"counters": self.queue.stats()}

    def close(self) -> None:
        self.queue.stop()


class EngineImpl:
    """The optimised engine with durable state in ``db_path``."""

    def __init__(self, processor, spec: dict, *, store, db_path: str) -> None:
        config = Config(workers=spec["workers"], queue_size=spec["queue_size"],
                        on_full=spec["on_full"], max_attempts=spec["max_attempts"],
                        retry_base_s=spec["retry_base_s"], retry_cap_s=spec["retry_cap_s"],
                        retry_seed=spec["seed"], fsync_outputs=store.fsync)
        self.queue = TaskQueue(db_path, store, config=config, processor=processor)

    def submit(self, task):
        try:
            return self.queue.submit(task)
        except QueueFull:
            raise Rejected() from None

    def result(self, future) -> Outcome:
        try:
            result = future.result(timeout=RESULT_TIMEOUT_S)
        except Exception as exc:
            return Outcome(False, None, type(exc).__name__)
        return Outcome(True, result.output_key, None)

    def on_done(self, future, callback) -> None:
        future.add_done_callback(lambda done: callback(self.result(done)))

    def depth(self) -> None:
        return None  # the engine records its own depth at every put and get

    def held(self) -> int | None:
        # Accepted and not settled: queued, blocked in a submitter's put(), being processed or
        # awaiting its commit.
        return len(self.queue.inflight)

    def metrics(self) -> dict:
        return self.queue.snapshot()

    def close(self) -> None:
        if not self.queue.shutdown(wait=True, timeout=RESULT_TIMEOUT_S):
            raise RuntimeError("engine did not shut down in time")


class StdlibImpl:
    """``ThreadPoolExecutor(workers)`` running ``processor.process(task, 1)``: the stdlib ceiling."""

    def __init__(self, processor, spec: dict) -> None:
        self.processor = processor
        self.pool = ThreadPoolExecutor(max_workers=spec["workers"], thread_name_prefix="stdlib")

    def submit(self, task):
        return self.pool.submit(self.processor.process, task, 1)

    def result(self, future) -> Outcome:
        try:
            output = future.result(timeout=RESULT_TIMEOUT_S)
        except Exception as exc:
            return Outcome(False, None, type(exc).__name__)
        return Outcome(True, output.key, None)

    def on_done(self, future, callback) -> None:
        future.add_done_callback(lambda done: callback(self.result(done)))

    def depth(self) -> int | None:
        # The executor's private (unbounded) work queue; read-only, for the burst statistics.
        work_queue = getattr(self.pool, "_work_queue", None)
        return work_queue.qsize() if work_queue is not None else None

    def held(self) -> int | None:
        return self.depth()  # plus at most `workers` tasks being processed

    def metrics(self) -> dict:
        return {}

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def make_impl(spec: dict, processor, *, store, workdir: str, tag: str):
    """The adapter for ``spec["impl"]``; an engine gets its own database ``<tag>.sqlite``."""
    impl = spec["impl"]
    if impl == "baseline":
        return BaselineImpl(processor, spec)
    if impl == "engine":
        return EngineImpl(processor, spec, store=store, db_path=os.path.join(workdir, f"{tag}.sqlite"))
    if impl == "stdlib":
        return StdlibImpl(processor, spec)
    raise ValueError(f"unknown implementation {impl!r} (known: baseline, engine, stdlib)")
