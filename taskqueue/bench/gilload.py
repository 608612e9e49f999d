"""Does holding the GIL elsewhere slow the io workers as the engine does? The pool with a GIL load beside it.

    python -m taskqueue.bench.gilload [--rounds 4] [--duration 6] [--load-us 200] [--period-us 1000]
                                      [--clients 100] [--out FILE]

At io@100 the engine completes tasks at the pool's rate, but its workers make
fewer ``process()`` calls per second than the pool's: each call takes some
6-8 % longer (README, "The commit path"). The same call does the same work
and the same system calls; what differs is what runs beside it. After each
system call (a read, a write, an fsync, a zlib call that released the GIL) a
worker must take the GIL back, and waits while another thread holds it.

This runs, in turns, the io row for the standard-library pool, the same row
with a :class:`GilLoad` beside it (a thread that holds the GIL ``load-us`` of
every ``period-us``: a Python loop, then a sleep), and the engine, each in a
fresh process as the benchmark runs its rows. It prints, per row and as
medians, ``process()`` calls per second and their mean duration. If the loaded
pool's calls slow as the engine's do, at about the load the engine's own
Python adds (its writer, its clients' intake, its workers' bookkeeping: the
rows' ``cpu_us_per_task_by_thread``), that Python is where the gap comes from.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable

from . import runner
from .cli import ROW_TIMEOUT_GRACE_S
from .impls import REPO_ROOT
from .plan import prepare_sources
from .scenarios import ALL_SCENARIOS, row_spec

SCENARIO = "io"
SEED = 42
MAX_LOAD_US = 1_000_000


class GilLoad:
    """A thread that holds the GIL ``busy_s`` of every ``period_s``: a pure-Python loop, then a wait.

    ``clock`` times the loop (the GIL is released only at the interpreter's own switch points while
    it spins); ``wait(timeout)`` is the pause, returning True once :meth:`stop` is called. Both are
    injectable for tests. ``busy_total_s`` adds up the time spent in the loop (waits for the GIL
    included); ``cycles`` counts loops; ``cpu_s`` is the thread's CPU time, once stopped.
    """

    def __init__(self, busy_s: float, period_s: float, *, clock: Callable[[], float] = time.perf_counter,
                 wait: Callable[[float], bool] | None = None) -> None:
        if not 0.0 < busy_s < period_s:
            raise ValueError(f"busy_s must be within (0, period_s), got busy_s={busy_s!r}, period_s={period_s!r}")
        self.busy_s, self.period_s = busy_s, period_s
        self._clock = clock
        self._stopped = threading.Event()
        self._wait = wait or self._stopped.wait
        self.busy_total_s = 0.0
        self.cycles = 0
        self.cpu_s = 0.0  # this thread's CPU time, once stopped
        self._thread = threading.Thread(target=self._run, name="gil-load", daemon=True)

    def start(self) -> "GilLoad":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
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


def run_loaded_row(spec: dict, load_us: int, period_us: int) -> dict:
    """Run the row ``spec`` (see :func:`taskqueue.bench.runner.run_row`) with a :class:`GilLoad` of
    ``load_us`` per ``period_us`` beside it for the whole row (none if ``load_us`` is 0)."""
    load = GilLoad(load_us / 1e6, period_us / 1e6).start() if load_us else None
    began = time.perf_counter()
    try:
        result = runner.run_row(spec)
    finally:
        if load is not None:
            load.stop()
    ran = time.perf_counter() - began
    result["gil_load_us"] = load_us
    result["gil_load_cores"] = load.cpu_s / ran if load is not None and ran > 0 else 0.0
    return result


def per_call_ms(result: dict) -> float | None:
    """Mean duration of the row's ``process()`` calls, in ms."""
    return result["busy_s"] / result["process_calls"] * 1000 if result["process_calls"] else None


def _child(spec_json: str, load_us: int, period_us: int) -> int:
    spec = json.loads(spec_json)
    faulthandler.dump_traceback_later(spec.get("watchdog_s", 600.0), exit=True)  # as the runner does
    print(json.dumps(run_loaded_row(spec, load_us, period_us)), flush=True)
    return 0


def _variants(load_us: int) -> list[tuple[str, str, int]]:
    """(name, impl, load in µs) of the rows each round runs, in turn."""
    return [("stdlib", "stdlib", 0), (f"stdlib+load{load_us}us", "stdlib", load_us), ("engine", "engine", 0)]


def _row(spec: dict, load_us: int, period_us: int) -> dict:
    """Run one row in a fresh interpreter, as the benchmark does (see ``cli.run_spec``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-m", "taskqueue.bench.gilload", "--row", json.dumps(spec),
                          "--load-us", str(load_us), "--period-us", str(period_us)],
                         capture_output=True, text=True, env=env, cwd=str(REPO_ROOT),
                         timeout=spec["watchdog_s"] + ROW_TIMEOUT_GRACE_S)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = "\n".join(out.stderr.strip().splitlines()[-60:])
        raise RuntimeError(f"row {spec['label']} (load {load_us} us) exited with {out.returncode}:\n{tail}")
    return json.loads(lines[-1])


def _parent(args: argparse.Namespace) -> int:
    scenario = ALL_SCENARIOS[SCENARIO]
    tasks = scenario.timed_tasks(args.duration + 2)
    variants = _variants(args.load_us)
    rows: dict[str, list[dict]] = {name: [] for name, _impl, _load in variants}
    print(f"io@{args.clients}, {args.duration:g}-s rows, {args.rounds} rounds; load {args.load_us} us of every "
          f"{args.period_us} us", flush=True)
    with tempfile.TemporaryDirectory(prefix="tq-gilload-") as cache:
        plan = [(index, name, load_us, row_spec(scenario, impl, "block" if impl == "engine" else "-",
                                                 clients=args.clients, tasks=tasks, seed=SEED, repeat=index,
                                                 duration_s=args.duration))
                for index in range(args.rounds) for name, impl, load_us in variants]
        prepare_sources([spec for *_rest, spec in plan], cache)  # once: every row reads the same objects
        for index, name, load_us, spec in plan:
            result = _row(spec, load_us, args.period_us)
            rows[name].append(result)
            print(f"  round {index} {name:<20} {result['throughput_per_s']:7.1f} tasks/s  "
                  f"{result['process_calls'] / result['wall_s']:7.1f} calls/s  {per_call_ms(result):5.2f} ms/call  "
                  f"{result['cpu_cores']:.2f} cores (load {result['gil_load_cores']:.2f})", flush=True)
    summary = {name: _medians(results) for name, results in rows.items()}
    base = summary["stdlib"]
    print(f"medians of {args.rounds}:")
    for name, s in summary.items():
        s["calls_per_s_vs_stdlib"] = s["calls_per_s"] / base["calls_per_s"]
        s["ms_per_call_vs_stdlib"] = s["ms_per_call"] / base["ms_per_call"]
        print(f"  {name:<20} {s['tasks_per_s']:7.1f} tasks/s  {s['calls_per_s']:7.1f} calls/s "
              f"({s['calls_per_s_vs_stdlib']:.2f}x)  {s['ms_per_call']:5.2f} ms/call ({s['ms_per_call_vs_stdlib']:.2f}x)  "
              f"{s['cores']:.2f} cores (load {s['load_cores']:.2f})")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump({"command": " ".join(["python -m taskqueue.bench.gilload", *args.argv]),
                       "settings": {k: v for k, v in vars(args).items() if k not in ("argv", "row")},
                       "summary": summary, "rows": rows}, fh, indent=1)
    return 0


def _medians(results: list[dict]) -> dict:
    return {"tasks_per_s": statistics.median(r["throughput_per_s"] for r in results),
            "calls_per_s": statistics.median(r["process_calls"] / r["wall_s"] for r in results),
            "ms_per_call": statistics.median(per_call_ms(r) for r in results),
            "cores": statistics.median(r["cpu_cores"] for r in results),
            "load_cores": statistics.median(r["gil_load_cores"] for r in results)}


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _int_within(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be within {low}..{high}, got {value}")
        return value
    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taskqueue.bench.gilload", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=_int_within(1, 100), default=4)
    parser.add_argument("--duration", type=_positive_float, default=6.0, help="seconds per row (default 6)")
    parser.add_argument("--load-us", type=_int_within(0, MAX_LOAD_US), default=200,
                        help="µs of every period the load holds the GIL (default 200)")
    parser.add_argument("--period-us", type=_int_within(1, MAX_LOAD_US), default=1000,
                        help="the load's period in µs (default 1000)")
    parser.add_argument("--clients", type=_int_within(1, 10000), default=100)
    parser.add_argument("--out", help="write the rows and medians here as JSON")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # the child: run this row spec, print its JSON
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.load_us and args.load_us >= args.period_us:
        parser.error(f"--load-us must be below --period-us, got {args.load_us} and {args.period_us}")
    if args.row is not None:
        return _child(args.row, args.load_us, args.period_us)
    return _parent(args)


if __name__ == "__main__":
    sys.exit(main())
