"""Python work per task, counted rather than timed: bytecode instructions by thread and by function.

    python -m taskqueue.bench.opcount [--tasks 3000] [--clients 100] [--top 25] [engine|pool|MODULE:CLASS ...]
    python -m taskqueue.bench.opcount --cpu ROUNDS [--tasks 3000] [--clients 100] [OPTION ...]

On two shared cores a timed run moves by a quarter from one minute to the
next; the number of bytecode instructions a task costs does not (it moves by
a few per cent with how the writer's group commits happen to fall). At zero
task length, throughput follows it closely, so this is the measure to
compare a hot-path change by. Each option runs the closed loop of the side-by-side harness
(``clients`` threads, each submitting one zero-length task and waiting for
its result, then the next; 8 workers) under ``sys.settrace`` with opcode
events, which makes it some ten times slower: the figures are counts, never rates.

``engine`` is a :class:`~taskqueue.engine.TaskQueue` on a temporary SQLite
file with a processor that does nothing (the harness's ``tq_adapter``);
``pool`` is ``ThreadPoolExecutor(8).submit(f).result()``. ``MODULE:CLASS``
loads an option of the harness in ``../shared/bench`` (``peer_bench:BQSqliteGroupCommitOption``
with that directory on ``PYTHONPATH``): it needs ``start(workers, workdir)``,
``run_one(tid, s, timeout)`` and ``stop()``.

``--cpu ROUNDS`` runs the same loop untraced and reports, per option, the
median over ROUNDS of the process's CPU time per task (``time.process_time``:
every thread, user and system, so thread switches count too), of tasks/s, and
of cores used (CPU time over wall time). The options take turns within each
round, so they share the machine's slow and fast stretches. Under the GIL a
closed loop of zero-length tasks keeps about one core busy whatever runs it,
so throughput is close to the inverse of CPU time per task: it says what a
task must cost to reach a given rate. Where ``getrusage`` is there (Unix), the
CPU time is also split into user time (the interpreter's own work) and system
time (mostly threads waiting and waking each other: futexes, the GIL's hand-overs), and the
voluntary context switches per task are counted: two designs with the same number of waits per
task differ by their user time alone. On Linux the CPU time is also given by thread
(``/proc/self/task/*/schedstat``; the clients' share is what the process spent beyond the
threads still alive at the end, which the clients are not).
"""

from __future__ import annotations

import argparse
import collections
import importlib
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, NamedTuple

from .cputime import by_thread, thread_cpu

WORKERS = 8


class Count:
    """Instructions executed while :attr:`on`, by thread name (digits stripped) and by function."""

    def __init__(self) -> None:
        self.on = False
        self.by_thread: collections.Counter[str] = collections.Counter()
        self.by_function: collections.Counter[str] = collections.Counter()

    def trace(self, frame, event: str, arg: Any):
        frame.f_trace_opcodes = True
        return self._opcode

    def _opcode(self, frame, event: str, arg: Any):
        if event == "opcode" and self.on:
            self.by_thread[threading.current_thread().name.rstrip("0123456789_-")] += 1
            code = frame.f_code
            self.by_function[f"{os.path.basename(code.co_filename)}:{code.co_name}"] += 1
        return self._opcode


class EngineOption:
    """The project's TaskQueue as the harness drives it (durable, queue 128, block), doing nothing per task."""

    def start(self, workers: int, workdir: str) -> None:
        from ..config import Config
        from ..engine import TaskQueue
        from ..processor import Output
        from ..task import Task

        class Nothing:
            check = staticmethod(lambda task: None)
            output_key = staticmethod(lambda task: "out/" + task.image_key)
            process = staticmethod(lambda task, attempt=1: Output(key="out/" + task.image_key, size=0))

        self._task = Task
        self.tq = TaskQueue(os.path.join(workdir, "tq.db"), os.path.join(workdir, "store"),
                            config=Config(workers=workers, queue_size=128, on_full="block"), processor=Nothing())

    def run_one(self, tid: int, s: float, timeout: float) -> Any:
        return self.tq.submit(self._task(id=f"t{tid}", image_key=f"k/{tid}", variant="gzip")).result(timeout)

    def stop(self) -> None:
        self.tq.shutdown(wait=True)


class PoolOption:
    """``ThreadPoolExecutor(workers)``: the in-process ceiling, nothing durable."""

    def start(self, workers: int, workdir: str) -> None:
        self.pool = ThreadPoolExecutor(workers)

    def run_one(self, tid: int, s: float, timeout: float) -> Any:
        return self.pool.submit(int, tid).result(timeout)

    def stop(self) -> None:
        self.pool.shutdown(wait=True)


OPTIONS: dict[str, Callable[[], Any]] = {"engine": EngineOption, "pool": PoolOption}


def load(name: str) -> Any:
    """An option by name, or ``module:Class`` imported (``ValueError`` naming it if that fails)."""
    if name in OPTIONS:
        return OPTIONS[name]()
    module, _, attr = name.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)()
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"option {name!r}: not {' or '.join(OPTIONS)}, and not an importable module:Class ({exc})")


def measure(option: Any, tasks: int, clients: int, warmup: int = 50) -> Count:
    """Run ``tasks`` zero-length tasks from ``clients`` closed-loop threads; count what the run executes."""
    count = Count()
    threading.settrace(count.trace)  # before the option starts its threads: they are traced from birth
    try:
        _closed_loop(option, tasks, clients, warmup, lambda on: setattr(count, "on", on))
    finally:
        threading.settrace(None)  # type: ignore[arg-type]
    return count


class Timing(NamedTuple):
    """One untraced run of the loop: the process's CPU seconds and the wall seconds it took; where
    ``getrusage`` is there, the user and system seconds and the voluntary context switches too."""

    tasks: int
    cpu_s: float
    wall_s: float
    user_s: float | None = None
    system_s: float | None = None
    switches: int | None = None
    threads: dict[str, float] | None = None  # CPU seconds by thread name (digits stripped), Linux


def time_once(option: Any, tasks: int, clients: int, warmup: int = 50) -> Timing:
    """Run the loop of :func:`measure` untraced; the CPU time (all threads) and wall time it took."""
    marks: list[tuple] = []
    _closed_loop(option, tasks, clients, warmup,
                 lambda on: marks.append((time.process_time(), time.perf_counter(), _usage(), thread_cpu())))
    (cpu0, wall0, usage0, threads0), (cpu1, wall1, usage1, threads1) = marks
    timing = Timing(tasks, cpu1 - cpu0, wall1 - wall0)
    if usage0 is not None:
        timing = timing._replace(user_s=usage1.ru_utime - usage0.ru_utime, system_s=usage1.ru_stime - usage0.ru_stime,
                                 switches=usage1.ru_nvcsw - usage0.ru_nvcsw)
    # The option's threads are alive at both marks; the clients, gone by the end, spent the rest.
    return timing._replace(threads=by_thread(threads0, threads1, timing.cpu_s))


def _usage() -> Any:
    """The process's ``getrusage`` (every thread), or None where there is none (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF)


def _closed_loop(option: Any, tasks: int, clients: int, warmup: int, timed: Callable[[bool], None]) -> None:
    """Start ``option``, warm it up, run the clients; ``timed(True)`` as they are released, ``timed(False)``
    once all have finished (before the option stops)."""
    with tempfile.TemporaryDirectory(prefix="tq-opcount-") as workdir:
        option.start(WORKERS, workdir)
        try:
            for i in range(warmup):
                option.run_one(10 ** 9 + i, 0.0, 30.0)
            go = threading.Barrier(clients + 1)

            def client(first: int) -> None:
                go.wait()
                for tid in range(first, tasks, clients):
                    option.run_one(tid, 0.0, 60.0)

            threads = [threading.Thread(target=client, args=(k,), name="client") for k in range(clients)]
            for thread in threads:
                thread.start()
            timed(True)
            go.wait()
            for thread in threads:
                thread.join()
            timed(False)
        finally:
            option.stop()


def report(name: str, count: Count, tasks: int, top: int) -> str:
    total = sum(count.by_thread.values())
    lines = [f"{name}: {total / tasks:.0f} instructions per task"]
    lines += [f"  {thread:<24} {n / tasks:8.1f}" for thread, n in count.by_thread.most_common() if n / tasks >= 0.5]
    lines += [f"      {n / tasks:8.1f}  {function}" for function, n in count.by_function.most_common(top)]
    return "\n".join(lines)


def cpu_report(name: str, timings: list[Timing]) -> str:
    """Medians over the rounds: CPU microseconds per task (user and system, where measured), context
    switches per task, tasks/s, cores used."""
    per_task = statistics.median(t.cpu_s / t.tasks * 1e6 for t in timings)
    rate = statistics.median(t.tasks / t.wall_s for t in timings)
    cores = statistics.median(t.cpu_s / t.wall_s for t in timings)
    split = ","
    if all(t.switches is not None for t in timings):
        user = statistics.median(t.user_s / t.tasks * 1e6 for t in timings)
        system = statistics.median(t.system_s / t.tasks * 1e6 for t in timings)
        switches = statistics.median(t.switches / t.tasks for t in timings)
        split = f" (user {user:.0f}, system {system:.0f}), {switches:.1f} context switches per task,"
    text = (f"{name}: {per_task:.0f} us CPU per task{split} {rate:.0f} tasks/s, {cores:.2f} cores "
            f"(medians of {len(timings)})")
    if all(t.threads is not None for t in timings):
        groups = {group for t in timings for group in t.threads}
        medians = {group: statistics.median(t.threads.get(group, 0.0) / t.tasks * 1e6 for t in timings)
                   for group in groups}
        shown = sorted((group for group in medians if medians[group] >= 0.5), key=lambda g: (-medians[g], g))
        text += "\n  by thread, us CPU per task: " + ", ".join(f"{g} {medians[g]:.0f}" for g in shown)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taskqueue.bench.opcount", description=__doc__.split("\n\n")[0])
    parser.add_argument("options", nargs="*", default=["pool", "engine"], metavar="OPTION")
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--top", type=int, default=25, help="functions listed per option (default 25)")
    parser.add_argument("--cpu", type=int, default=0, metavar="ROUNDS",
                        help="time ROUNDS untraced runs of each option, taking turns: CPU per task, not instructions")
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.clients < 1 or args.top < 0 or args.cpu < 0:
        parser.error(f"--tasks and --clients must be at least 1, --top and --cpu at least 0 "
                     f"(got {args.tasks}, {args.clients}, {args.top}, {args.cpu})")
    try:
        options = [(name, load(name)) for name in args.options]
    except ValueError as exc:
        parser.error(str(exc))
    if args.cpu:
        timings: dict[str, list[Timing]] = {name: [] for name in args.options}
        for _ in range(args.cpu):
            for name in timings:  # a fresh option each run, as the harness does
                timings[name].append(time_once(load(name), args.tasks, args.clients))
        for name in timings:
            print(cpu_report(name, timings[name]), flush=True)
        return 0
    for name, option in options:
        print(report(name, measure(option, args.tasks, args.clients), args.tasks, args.top), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
