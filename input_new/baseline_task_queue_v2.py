"""Baseline task queue, v2: the ORIGINAL SLOW DESIGN, kept as the point of comparison.

Do not fix this file: its flaws are the measurement. See input_new/notes.md.

* One global ``threading.Lock`` guards everything: the queue (an unbounded
  ``list``), the results dict and the counters.
* Each worker takes the lock, ``pop(0)``s a task and processes it *while still
  holding the lock*, records the outcome, and only then releases it. So at
  most one task is processed at a time whatever the number of workers, and
  clients cannot even submit or look for a result meanwhile.
* Idle workers poll with ``time.sleep(0.001)``; clients append under the lock
  and then poll the results dict with ``time.sleep(0.001)``.
* No idempotency (a duplicate is processed again), no retries (a transient
  fault is a failure), no metrics beyond the final printout, and the results
  dict is never trimmed.

The work itself is the package's ``Processor(store, faults).process(task,
attempt=1)``, identical to what the optimised engine runs.

Run with no arguments for the default workload: 400 gzip tasks (seed 42, 10%
duplicates) in a temporary directory, 100 closed-loop clients, 8 workers,
injected latency 5 ms + up to 1 ms jitter. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from taskqueue import workload  # noqa: E402  (needs the sys.path line above)
from taskqueue.objectstore import LocalObjectStore, atomic_write_text  # noqa: E402
from taskqueue.processor import FaultConfig, Processor  # noqa: E402
from taskqueue.task import Task  # noqa: E402

POLL_S = 0.001


class BaselineTaskQueue:
    """The v2 queue: a list, a dict and counters behind one lock held while processing.

    ``processor`` is anything with ``process(task, attempt)``.
    """

    def __init__(self, processor, workers: int = 8) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers <= 0:
            raise ValueError(f"workers must be an integer greater than 0, got {workers!r}")
        self.processor = processor
        self.workers = workers
        self.lock = threading.Lock()  # guards queue, results, counters -- and the processing
        self.queue: list[Task] = []   # unbounded
        self.results: dict[str, tuple[bool, object]] = {}
        self.counters = {"submitted": 0, "processed": 0, "succeeded": 0, "failed": 0}
        self._running = False
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._running = True
        for i in range(self.workers):
            thread = threading.Thread(target=self._worker, name=f"baseline-worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, task) -> str:
        """Append ``task`` (a Task or a task dict) to the queue; return its id as the ticket.

        Never blocks except on the global lock. Raises ``InvalidTask`` for a bad task dict.
        """
        if not isinstance(task, Task):
            task = Task.from_dict(task)
        with self.lock:
            self.queue.append(task)
            self.counters["submitted"] += 1
        return task.id

    def wait(self, ticket: str, timeout: float | None = None) -> tuple[bool, object]:
        """Poll the results dict every millisecond until ``ticket`` is there.

        Returns ``(True, Output)`` or ``(False, exception)``. Raises
        ``TimeoutError`` after ``timeout`` seconds (None: wait forever).
        """
        deadline = None if timeout is None else time.perf_counter() + timeout
        while True:
            with self.lock:
                if ticket in self.results:
                    return self.results[ticket]
            if deadline is not None and time.perf_counter() > deadline:
                raise TimeoutError(f"no result for task {ticket!r} after {timeout}s")
            time.sleep(POLL_S)

    def stop(self) -> None:
        """Stop the workers after their current task and join them; queued tasks are abandoned."""
        self._running = False
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    def stats(self) -> dict:
        with self.lock:
            return dict(self.counters, queued=len(self.queue))

    def _worker(self) -> None:
        while self._running:
            self.lock.acquire()
            if not self.queue:
                self.lock.release()
                time.sleep(POLL_S)
                continue
            task = self.queue.pop(0)  # O(n): shifts every remaining element
            try:
                outcome = (True, self.processor.process(task, attempt=1))
                self.counters["succeeded"] += 1
            except Exception as exc:  # no classification, no retry: every error is final
                outcome = (False, exc)
                self.counters["failed"] += 1
            self.counters["processed"] += 1
            self.results[task.id] = outcome
            self.lock.release()


# -- closed-loop load ------------------------------------------------------------------

def run_closed_loop(queue, tasks: list, clients: int) -> dict:
    """Drive ``queue`` (submit/wait) with ``clients`` threads, each: take the next task,
    submit it, wait for its result, repeat. Return the measurements.

    Latency is ``time.perf_counter()`` from just before ``submit`` to the moment the
    client holds the result. Wall time runs from the release of a start Barrier
    (all clients ready) to the last client finishing.
    """
    if isinstance(clients, bool) or not isinstance(clients, int) or clients <= 0:
        raise ValueError(f"clients must be an integer greater than 0, got {clients!r}")
    cursor = iter(tasks)
    cursor_lock = threading.Lock()  # the harness's own; not part of the queue under test
    latencies: list[float] = []
    errors: dict[str, int] = {}
    finished: list[float] = []
    record_lock = threading.Lock()
    started: list[float] = []
    barrier = threading.Barrier(clients, action=lambda: started.append(time.perf_counter()))

    def client() -> None:
        mine: list[float] = []
        my_errors: dict[str, int] = {}
        barrier.wait()
        while True:
            with cursor_lock:
                task = next(cursor, None)
            if task is None:
                break
            t0 = time.perf_counter()
            ok, value = queue.wait(queue.submit(task))
            mine.append(time.perf_counter() - t0)
            if not ok:
                name = type(value).__name__
                my_errors[name] = my_errors.get(name, 0) + 1
        end = time.perf_counter()
        with record_lock:
            latencies.extend(mine)
            finished.append(end)
            for name, n in my_errors.items():
                errors[name] = errors.get(name, 0) + n

    cpu0 = time.process_time()
    threads = [threading.Thread(target=client, name=f"client-{i}") for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cpu = time.process_time() - cpu0
    wall = max(finished) - started[0]
    completed = len(latencies)
    failed = sum(errors.values())
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "completed": completed,
        "failed": failed,
        "errors_by_type": dict(sorted(errors.items())),
        "wall_s": wall,
        "throughput_per_s": completed / wall if wall > 0 else 0.0,
        "latency_mean_ms": 1000 * sum(ordered) / completed if completed else 0.0,
        "latency_p50_ms": 1000 * percentile(ordered, 50),
        "latency_p95_ms": 1000 * percentile(ordered, 95),
        "latency_p99_ms": 1000 * percentile(ordered, 99),
        "latency_max_ms": 1000 * ordered[-1] if ordered else 0.0,
        "error_rate": failed / completed if completed else 0.0,
        "process_cpu_s": cpu,
        "cpu_utilisation": cpu / wall if wall > 0 else 0.0,  # of one core; 2.0 = both cores
    }


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list: the smallest value with at least
    p% of the values at or below it (no interpolation). 0.0 for an empty list."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(p * len(ordered) / 100))  # p * n first: 0.07 * 100 would be 7.000...1
    return ordered[rank - 1]


# -- command line ------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        report = _run(args)
    except (ValueError, OSError) as exc:  # bad task file or flag: say which, no traceback
        print(f"baseline_task_queue_v2: error: {exc}", file=sys.stderr)
        return 2
    _print(report)
    if args.json:
        _write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


def _run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="baseline-v2-") as scratch:
        if args.tasks:
            with open(args.tasks, encoding="utf-8") as f:
                raw = json.load(f)
            raw = raw["tasks"] if isinstance(raw, dict) else raw
        else:
            raw = workload.generate_tasks(args.count, seed=args.seed,
                                          duplicate_fraction=args.duplicates, variants="gzip")
        tasks = [Task.from_dict(item) for item in raw]
        store = LocalObjectStore(args.store or os.path.join(scratch, "store"), fsync=not args.no_fsync)
        created = workload.create_sources(store, raw, seed=args.seed)
        faults = FaultConfig(latency_s=args.latency_ms / 1000, jitter_s=args.jitter_ms / 1000,
                             transient_rate=args.transient_rate,
                             permanent_rate=args.permanent_rate, seed=args.seed)
        queue = BaselineTaskQueue(Processor(store, faults), workers=args.workers)
        queue.start()
        try:
            report = run_closed_loop(queue, tasks, args.clients)
        finally:
            queue.stop()
    report = {"implementation": "baseline_v2", "workers": args.workers, "tasks": len(tasks),
              "distinct_keys": len({t.idempotency_key for t in tasks}), "sources_created": created, "seed": args.seed,
              "faults": {"latency_ms": args.latency_ms, "jitter_ms": args.jitter_ms,
                         "transient_rate": args.transient_rate,
                         "permanent_rate": args.permanent_rate},
              "fsync": not args.no_fsync, "percentile_method": "nearest-rank", **report}
    return report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Run the original (slow) baseline task queue under "
                                            "closed-loop load and print its performance.")
    p.add_argument("--tasks", metavar="FILE", help="task file (JSON list); default: generate --count tasks")
    p.add_argument("--store", metavar="DIR", help="object store directory (default: a temporary one)")
    p.add_argument("--count", type=int, default=400, help="generated tasks (default 400)")
    p.add_argument("--duplicates", type=float, default=0.10, help="generated duplicate share (default 0.1)")
    p.add_argument("--clients", type=int, default=100, help="concurrent closed-loop clients (default 100)")
    p.add_argument("--workers", type=int, default=8, help="worker threads (default 8)")
    p.add_argument("--latency-ms", type=float, default=5.0, help="injected latency per task (default 5)")
    p.add_argument("--jitter-ms", type=float, default=1.0, help="injected extra latency, uniform (default 1)")
    p.add_argument("--transient-rate", type=float, default=0.0, help="injected transient error probability")
    p.add_argument("--permanent-rate", type=float, default=0.0, help="injected permanent error probability")
    p.add_argument("--seed", type=int, default=42, help="seed of workload, sources and faults (default 42)")
    p.add_argument("--no-fsync", action="store_true", help="do not fsync outputs (default: fsync, as the engine)")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    return p


def _print(r: dict) -> None:
    print(f"baseline_v2: {r['tasks']} tasks ({r['distinct_keys']} distinct keys, all processed), "
          f"{r['clients']} clients, {r['workers']} workers, "
          f"latency {r['faults']['latency_ms']:g} ms + jitter {r['faults']['jitter_ms']:g} ms")
    print(f"  throughput   {r['throughput_per_s']:.1f} tasks/s  ({r['completed']} in {r['wall_s']:.3f} s)")
    print(f"  latency      mean {r['latency_mean_ms']:.1f} ms   P95 {r['latency_p95_ms']:.1f} ms   "
          f"P99 {r['latency_p99_ms']:.1f} ms   max {r['latency_max_ms']:.1f} ms  (nearest-rank)")
    print(f"  error rate   {100 * r['error_rate']:.2f} %  ({r['failed']} failed: {r['errors_by_type'] or '-'})")
    print(f"  cpu          {r['process_cpu_s']:.2f} s  ({100 * r['cpu_utilisation']:.0f} % of one core)")


def _write_json(path: str, report: dict) -> None:
    atomic_write_text(path, json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
