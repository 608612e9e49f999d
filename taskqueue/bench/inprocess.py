"""TaskQueue beside a plain ThreadPoolExecutor, in one process, on the same work.

    python3 -m taskqueue.bench.inprocess [--tasks 2000] [--clients 100] [--latency-ms 5 0]

For each injected latency: N distinct gzip tasks (no duplicates, no faults)
driven by C closed-loop client threads, first through :class:`TaskQueue`
(durable state on, defaults: 8 workers, queue 128), then through
``ThreadPoolExecutor(8)`` calling the same :class:`Processor` (fresh
directories for each). Prints tasks/s, p95 and the ratio. The full benchmark
(``python3 benchmark.py``) runs each row in its own process; this is the quick
same-process check the engine issue asks for.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ..config import Config
from ..engine import TaskQueue
from ..objectstore import LocalObjectStore
from ..processor import Processor
from ..task import Task
from .stats import percentile


def _drive(submit, tasks: list[Task], clients: int) -> tuple[float, float]:
    """Closed loop: each client submits a task and waits for it. Returns (tasks/s, p95 seconds)."""
    feed, lock, latencies = iter(tasks), threading.Lock(), []
    barrier = threading.Barrier(clients + 1)

    def client() -> None:
        barrier.wait()
        while True:
            with lock:
                task = next(feed, None)
            if task is None:
                return
            began = time.perf_counter()
            try:
                submit(task).result()
            except Exception:
                pass  # no faults are injected; an error would still count as an outcome
            latencies.append(time.perf_counter() - began)  # list.append is atomic

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return len(tasks) / wall, percentile(sorted(latencies), 95)


def _workload(root: str, count: int) -> tuple[LocalObjectStore, list[Task]]:
    store = LocalObjectStore(os.path.join(root, "store"))
    for i in range(count):  # ~10 KiB of compressible text each, written once, outside the timing
        store.write(f"src/{i:06d}.txt", [(b"task %d payload " % i) * 600])
    return store, [Task(id=str(i), image_key=f"src/{i:06d}.txt", variant="gzip") for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m taskqueue.bench.inprocess", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[5.0, 0.0])
    args = parser.parse_args(argv)
    for latency_ms in args.latency_ms:
        config = Config(fault_latency_s=latency_ms / 1000.0)
        with tempfile.TemporaryDirectory(prefix="tq-inprocess-") as root:
            store, tasks = _workload(root, args.tasks)
            with TaskQueue(os.path.join(root, "tasks.db"), store, config=config) as tq:
                engine = _drive(tq.submit, tasks, args.clients)
        with tempfile.TemporaryDirectory(prefix="tq-inprocess-") as root:
            store, tasks = _workload(root, args.tasks)
            processor = Processor(store, config.faults)
            with ThreadPoolExecutor(config.workers) as pool:
                plain = _drive(lambda task: pool.submit(processor.process, task, 1), tasks, args.clients)
        print(f"latency {latency_ms:g} ms, {args.tasks} tasks, {args.clients} clients: "
              f"TaskQueue {engine[0]:.0f} tasks/s p95 {engine[1] * 1000:.1f} ms | "
              f"ThreadPoolExecutor({config.workers}) {plain[0]:.0f} tasks/s p95 {plain[1] * 1000:.1f} ms | "
              f"ratio {engine[0] / plain[0]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
