"""TaskQueue beside a plain ThreadPoolExecutor, in one process, on the same work.

    python3 -m taskqueue.bench.inprocess [--tasks 2000] [--clients 100] [--latency-ms 5 0]

For each injected latency: N distinct gzip tasks (no duplicates, no faults)
driven by the benchmark's closed-loop clients, first through
:class:`TaskQueue` (durable state on, defaults: 8 workers, queue 128), then
through ``ThreadPoolExecutor(8)`` calling the same :class:`Processor` (the
benchmark's own adapters; fresh directories for each). Prints tasks/s, p95 and the ratio. The full benchmark
(``python3 benchmark.py``) runs each row in its own process; this is the quick
same-process check the engine issue asks for.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from ..objectstore import LocalObjectStore
from ..processor import FaultConfig, Processor
from .clients import closed_loop
from .impls import EngineImpl, StdlibImpl
from .stats import percentile

SPEC = {"workers": 8, "queue_size": 128, "on_full": "block", "max_attempts": 3,
        "retry_base_s": 0.005, "retry_cap_s": 0.05, "seed": 42}  # default size and bound; no faults, so no retries


def _run(make_impl, root: str, count: int, clients: int, latency_s: float) -> tuple[float, float]:
    """Drive one implementation with the benchmark's closed-loop clients; (tasks/s, p95 seconds)."""
    store = LocalObjectStore(os.path.join(root, "store"))
    for i in range(count):  # ~10 KiB of compressible text each, written once, outside the timing
        store.write(f"src/{i:06d}.txt", [(b"task %d payload " % i) * 600])
    impl = make_impl(Processor(store, FaultConfig(latency_s=latency_s)), store, root)
    try:
        load = closed_loop(impl, [{"id": str(i), "image_key": f"src/{i:06d}.txt", "variant": "gzip"}
                                  for i in range(count)], clients, keep_outputs=False)
    finally:
        impl.close()
    return load.completed / load.wall_s, percentile(sorted(load.latencies), 95)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m taskqueue.bench.inprocess", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[5.0, 0.0])
    args = parser.parse_args(argv)
    for latency_ms in args.latency_ms:
        runs = {}
        for name, make_impl in (
                ("TaskQueue", lambda processor, store, root: EngineImpl(
                    processor, SPEC, store=store, db_path=os.path.join(root, "tasks.db"))),
                (f"ThreadPoolExecutor({SPEC['workers']})", lambda processor, store, root: StdlibImpl(processor, SPEC))):
            with tempfile.TemporaryDirectory(prefix="tq-inprocess-") as root:
                runs[name] = _run(make_impl, root, args.tasks, args.clients, latency_ms / 1000.0)
        (engine, (tput_e, p95_e)), (pool, (tput_p, p95_p)) = runs.items()
        print(f"latency {latency_ms:g} ms, {args.tasks} tasks, {args.clients} clients: "
              f"{engine} {tput_e:.0f} tasks/s p95 {p95_e * 1000:.1f} ms | "
              f"{pool} {tput_p:.0f} tasks/s p95 {p95_p * 1000:.1f} ms | ratio {tput_e / tput_p:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
