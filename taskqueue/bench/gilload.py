"""Does Python running beside the io workers slow them as the engine does? The pool with a load beside it.

    python -m taskqueue.bench.gilload [--rounds 5] [--duration 8] [--load-us 200] [--period-us 1000]
                                      [--clients 100] [--out FILE]

At io@100 the engine completes tasks at the pool's rate, but its workers make
fewer ``process()`` calls per second than the pool's: each call takes some
6-8 % longer (README, "The commit path"). The same call does the same work
and the same system calls; what differs is what runs beside it. After each
system call (a read, a write, an fsync, a zlib call that released the GIL) a
worker must take the GIL back, and waits while another thread holds it.

This runs the io row for the standard-library pool four ways, in turns, each
in a fresh process as the benchmark runs its rows: the pool alone; the pool
with a thread beside it that spins in Python ``load-us`` of every
``period-us`` and sleeps the rest (:class:`ThreadLoad`: it takes a core's
share *and* the GIL); the pool with the same loop in a process of its own
(:class:`ProcessLoad`: the same share of the two cores, none of the GIL); and
the engine. It prints, per row and as medians, ``process()`` calls per second
and their mean duration. If the thread's load slows the pool's calls as the
engine does, and the process's does not, what slows them is Python holding
the GIL, not the cores being busy.

The loads run for the timed part of a row only (not its set-up, warm-up or
host probes). The loop is timed by the wall clock, its waits for the GIL
included: a thread load holds the GIL *at most* ``load-us`` of each period,
and its period stretches when it waits. Each row's ``load_cores`` is the
load's own CPU time over the timed load; its ``cpu_cores`` is the row's
process, which a thread load is part of and a process load is not.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Iterator

from . import runner
from .cli import _positive_float, run_spec
from .plan import prepare_sources
from .scenarios import ALL_SCENARIOS, row_spec

SCENARIO = "io"
SEED = 42
MAX_US = 1_000_000  # the bound of --load-us and --period-us: a second
LOADS = ("thread", "process")


class ThreadLoad:
    """A thread that runs a pure-Python loop for ``busy_s`` of every ``period_s``, then waits.

    ``clock`` times the loop (the interpreter lets the GIL go only at its own switch points while it
    spins); ``wait(timeout)`` is the pause, True once :meth:`stop` is called. Both are injectable
    for tests. ``busy_total_s`` adds up the time in the loop (waits for the GIL included);
    ``cycles`` counts loops; ``cpu_s`` is the thread's CPU time, once stopped.
    """

    def __init__(self, busy_s: float, period_s: float, *, clock: Callable[[], float] = time.perf_counter,
                 wait: Callable[[float], bool] | None = None) -> None:
        _check_share(busy_s, period_s)
        self.busy_s, self.period_s = busy_s, period_s
        self._clock = clock
        self._stopped = threading.Event()
        self._wait = wait or self._stopped.wait
        self.busy_total_s = 0.0
        self.cycles = 0
        self.cpu_s = 0.0
        self._thread = threading.Thread(target=self._run, name="gil-load", daemon=True)

    def start(self) -> "ThreadLoad":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the loop (at its next pause) and wait for the thread. Harmless if never started."""
        self._stopped.set()
        if self._thread.ident is not None:
            self._thread.join()

    def _run(self) -> None:
        clock, busy, pause = self._clock, self.busy_s, self.period_s - self.busy_s
        cpu0 = time.thread_time()
        try:
            while not self._stopped.is_set():
                began = clock()
                end = began + busy
                while clock() < end:
                    pass
                self.busy_total_s += clock() - began
                self.cycles += 1
                if self._wait(pause):
                    return
        finally:
            self.cpu_s = time.thread_time() - cpu0


# The same loop as ThreadLoad's, in an interpreter of its own: it shares the cores, not the GIL.
_SPIN = """\
import sys, time
busy, pause = float(sys.argv[1]), float(sys.argv[2]) - float(sys.argv[1])
while True:
    end = time.perf_counter() + busy
    while time.perf_counter() < end:
        pass
    time.sleep(pause)
"""


class ProcessLoad:
    """:class:`ThreadLoad`'s loop in a child process; ``cpu_s`` is the child's CPU time, once stopped."""

    def __init__(self, busy_s: float, period_s: float) -> None:
        _check_share(busy_s, period_s)
        self.busy_s, self.period_s = busy_s, period_s
        self.cpu_s = 0.0
        self._child: subprocess.Popen | None = None

    def start(self) -> "ProcessLoad":
        self._child = subprocess.Popen([sys.executable, "-c", _SPIN, repr(self.busy_s), repr(self.period_s)])
        return self

    def stop(self) -> None:
        """Kill the child and reap it, reading its CPU time. Harmless if never started."""
        child, self._child = self._child, None
        if child is None:
            return
        child.kill()
        _pid, _status, usage = os.wait4(child.pid, 0)
        child.returncode = -9  # reaped here: Popen must not wait for it again
        self.cpu_s = usage.ru_utime + usage.ru_stime


def _check_share(busy_s: float, period_s: float) -> None:
    if not 0.0 < busy_s < period_s:
        raise ValueError(f"busy_s must be within (0, period_s), got busy_s={busy_s!r}, period_s={period_s!r}")


@contextlib.contextmanager
def beside(load: ThreadLoad | ProcessLoad, record: dict) -> Iterator[None]:
    """Run ``load`` for the ``with`` block; then put its CPU time over the block's wall time in
    ``record["load_cores"]``."""
    began = time.perf_counter()
    load.start()
    try:
        yield
    finally:
        load.stop()
        ran = time.perf_counter() - began
        record["load_cores"] = load.cpu_s / ran if ran > 0 else 0.0


def run_loaded_row(spec: dict, load_us: int, period_us: int, load_in: str = "thread") -> dict:
    """Run the row ``spec`` (see :func:`taskqueue.bench.runner.run_row`) with a load of ``load_us``
    per ``period_us`` beside its timed part, in a thread or a process (``load_in``); none if
    ``load_us`` is 0. The result gains ``load_us``, ``load_in`` and ``load_cores``."""
    if load_in not in LOADS:
        raise ValueError(f"load_in must be one of {', '.join(LOADS)}, got {load_in!r}")
    record = {"load_us": load_us, "load_in": load_in if load_us else None, "load_cores": 0.0}
    if load_us:
        kind = ThreadLoad if load_in == "thread" else ProcessLoad
        load = kind(load_us / 1e6, period_us / 1e6)
        result = runner.run_row(spec, beside=lambda: beside(load, record))
    else:
        result = runner.run_row(spec)
    result.update(record)
    return result


def per_call_ms(result: dict) -> float | None:
    """Mean duration of the row's ``process()`` calls, in ms (None if it made none)."""
    return result["busy_s"] / result["process_calls"] * 1000 if result["process_calls"] else None


def _child(args: argparse.Namespace) -> int:
    """Run the row ``args.spec`` (as JSON) with its load; print its measurements as JSON."""
    spec = json.loads(args.spec)
    faulthandler.dump_traceback_later(spec.get("watchdog_s", 600.0), exit=True)  # as the runner does
    print(json.dumps(run_loaded_row(spec, args.load_us, args.period_us, args.load_in)), flush=True)
    return 0


def _variants(load_us: int) -> list[tuple[str, str, int, str]]:
    """(name, impl, load in µs, where the load runs) of the rows each round runs."""
    return [("stdlib", "stdlib", 0, "thread"),
            (f"stdlib+thread{load_us}us", "stdlib", load_us, "thread"),
            (f"stdlib+process{load_us}us", "stdlib", load_us, "process"),
            ("engine", "engine", 0, "thread")]


def _row(spec: dict, load_us: int, period_us: int, load_in: str) -> dict:
    """Run one row with its load in a fresh interpreter, as the benchmark runs its rows."""
    return run_spec(spec, "taskqueue.bench.gilload",
                    ("--load-us", str(load_us), "--period-us", str(period_us), "--load-in", load_in))


def _parent(args: argparse.Namespace) -> int:
    """Run the rounds (the variants in a rotating order, after one warm-up row kept out), print the
    rows and their medians, write them to ``args.out`` if given."""
    scenario = ALL_SCENARIOS[SCENARIO]
    tasks = scenario.timed_tasks(args.duration + 2)
    variants = _variants(args.load_us)
    rows: dict[str, list[dict]] = {name: [] for name, *_rest in variants}
    print(f"io@{args.clients}, {args.duration:g}-s rows, {args.rounds} rounds after a warm-up row; load "
          f"{args.load_us} us of every {args.period_us} us", flush=True)

    def spec_for(impl: str, index: int) -> dict:
        return row_spec(scenario, impl, "block" if impl == "engine" else "-", clients=args.clients,
                        tasks=tasks, seed=SEED, repeat=index, duration_s=args.duration)

    with tempfile.TemporaryDirectory(prefix="tq-gilload-") as cache:
        # The first row after a quiet spell runs fast (see plan.FULL_WARMUP): one row is run first
        # and kept out, and the order of the variants turns each round, so no variant always goes first.
        warmup = spec_for("stdlib", -1)
        plan = [(index, variant, spec_for(variant[1], index))
                for index in range(args.rounds)
                for variant in variants[index % len(variants):] + variants[:index % len(variants)]]
        prepare_sources([warmup] + [spec for *_rest, spec in plan], cache)  # once: every row reads the same
        _row(warmup, 0, args.period_us, "thread")
        for index, (name, _impl, load_us, load_in), spec in plan:
            result = _row(spec, load_us, args.period_us, load_in)
            rows[name].append(result)
            print(f"  round {index} {name:<24} {result['throughput_per_s']:7.1f} tasks/s  "
                  f"{result['process_calls'] / result['wall_s']:7.1f} calls/s  {_ms(per_call_ms(result))} ms/call  "
                  f"{result['cpu_cores']:.2f} cores (load {result['load_cores']:.2f})", flush=True)
    summary = {name: _medians(results) for name, results in rows.items()}
    base = summary["stdlib"]
    print(f"medians of {args.rounds}:")
    for name, s in summary.items():
        s["calls_per_s_vs_stdlib"] = s["calls_per_s"] / base["calls_per_s"] if base["calls_per_s"] else None
        s["ms_per_call_vs_stdlib"] = (s["ms_per_call"] / base["ms_per_call"]
                                      if s["ms_per_call"] is not None and base["ms_per_call"] else None)
        print(f"  {name:<24} {s['tasks_per_s']:7.1f} tasks/s  {s['calls_per_s']:7.1f} calls/s "
              f"({_ratio(s['calls_per_s_vs_stdlib'])})  {_ms(s['ms_per_call'])} ms/call "
              f"({_ratio(s['ms_per_call_vs_stdlib'])})  {s['cores']:.2f} cores (load {s['load_cores']:.2f})")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump({"command": shlex.join(["python", "-m", "taskqueue.bench.gilload", *args.argv]),
                       "settings": {k: v for k, v in vars(args).items() if k not in ("argv", "spec", "load_in")},
                       "summary": summary, "rows": rows}, fh, indent=1)
    return 0


def _medians(results: list[dict]) -> dict:
    """The medians over a variant's rows (``ms_per_call`` over the rows that made a call; else None)."""
    calls = [ms for ms in map(per_call_ms, results) if ms is not None]
    return {"tasks_per_s": statistics.median(r["throughput_per_s"] for r in results),
            "calls_per_s": statistics.median(r["process_calls"] / r["wall_s"] for r in results),
            "ms_per_call": statistics.median(calls) if calls else None,
            "cores": statistics.median(r["cpu_cores"] for r in results),
            "load_cores": statistics.median(r["load_cores"] for r in results)}


def _ms(value: float | None) -> str:
    return "  -  " if value is None else f"{value:5.2f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _int_within(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer within ``low..high``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer within {low}..{high}, got {value}")
        return value
    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taskqueue.bench.gilload", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=_int_within(1, 100), default=5)
    parser.add_argument("--duration", type=_positive_float, default=8.0, help="seconds per row (default 8)")
    parser.add_argument("--load-us", type=_int_within(0, MAX_US), default=200,
                        help="µs of every period the load spins (default 200)")
    parser.add_argument("--period-us", type=_int_within(1, MAX_US), default=1000,
                        help="the load's period in µs (default 1000)")
    parser.add_argument("--clients", type=_int_within(1, 10000), default=100)
    parser.add_argument("--out", help="write the rows and medians here as JSON (its directory must exist)")
    parser.add_argument("spec", nargs="?", help=argparse.SUPPRESS)  # a child: run this row spec, print its JSON
    parser.add_argument("--load-in", choices=LOADS, default="thread", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.load_us >= args.period_us:
        parser.error(f"--load-us must be below --period-us, got {args.load_us} and {args.period_us}")
    if args.out is not None and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        parser.error(f"--out: no directory {os.path.dirname(os.path.abspath(args.out))!r} to write {args.out!r} in")
    if args.spec is not None:
        return _child(args)
    return _parent(args)


if __name__ == "__main__":
    sys.exit(main())
