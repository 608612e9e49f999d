"""The instruction counter of the benchmark (python -m taskqueue.bench.opcount): real runs, counted per thread."""

from __future__ import annotations

import os
import threading

import pytest

from taskqueue.bench import opcount


def test_the_engine_and_the_pool_are_counted_per_thread_and_the_engine_does_more():
    pool = opcount.measure(opcount.PoolOption(), tasks=60, clients=4, warmup=5)
    engine = opcount.measure(opcount.EngineOption(), tasks=60, clients=4, warmup=5)
    assert {"client", "ThreadPoolExecutor"} <= set(pool.by_thread)
    assert {"client", "tq-worker", "tq-store-writer"} <= set(engine.by_thread)
    assert sum(engine.by_thread.values()) > sum(pool.by_thread.values()) > 60  # every task costs something
    assert sum(engine.by_function.values()) == sum(engine.by_thread.values())  # one count, two views
    assert any(name.endswith(":submit") for name in engine.by_function)
    text = opcount.report("engine", engine, 60, top=3)
    assert text.startswith("engine: ") and "instructions per task" in text and len(text.splitlines()) >= 5


def test_nothing_is_counted_outside_the_timed_loop_and_tracing_is_off_afterwards():
    import sys
    import threading
    count = opcount.measure(opcount.PoolOption(), tasks=8, clients=2, warmup=3)
    assert count.on is False
    assert threading.gettrace() is None if hasattr(threading, "gettrace") else True
    assert sys.gettrace() is None


def test_an_unknown_option_is_refused_by_name(capsys):
    with pytest.raises(ValueError, match="'no_such_thing'"):
        opcount.load("no_such_thing")
    with pytest.raises(SystemExit) as info:
        opcount.main(["--tasks", "0", "pool"])
    assert info.value.code == 2
    assert "--tasks" in capsys.readouterr().err


def test_cpu_mode_times_untraced_runs_and_reports_medians_per_task(capsys):
    import sys
    timing = opcount.time_once(opcount.EngineOption(), tasks=40, clients=4, warmup=3)
    assert timing.tasks == 40 and timing.cpu_s > 0 and timing.wall_s > 0
    assert sys.gettrace() is None
    # Where the process can tell (getrusage), the CPU time splits into user and system time, and the
    # threads' waits are counted as voluntary context switches: each task waits at least once.
    assert timing.user_s is not None and timing.system_s is not None and timing.switches is not None
    assert timing.user_s + timing.system_s > 0 and timing.switches >= 40
    if os.path.exists(f"/proc/self/task/{threading.get_native_id()}/schedstat"):  # Linux: by thread too
        assert timing.threads is not None and {"client", "tq-store-writer", "tq-worker"} <= set(timing.threads)
        assert all(seconds >= 0 for seconds in timing.threads.values())
        assert sum(timing.threads.values()) <= timing.cpu_s * 1.05  # parts of the whole (clocks differ a little)
    text = opcount.cpu_report("engine", [opcount.Timing(1000, 0.1, 0.05), opcount.Timing(1000, 0.3, 0.1),
                                         opcount.Timing(1000, 0.2, 0.2)])
    # medians: 200 us per task, 10000 tasks/s (of 20000, 10000, 5000), 2.00 cores (of 2, 3, 1)
    assert text == "engine: 200 us CPU per task, 10000 tasks/s, 2.00 cores (medians of 3)"
    split = opcount.cpu_report("engine", [opcount.Timing(1000, 0.1, 0.05, 0.04, 0.06, 8000),
                                          opcount.Timing(1000, 0.3, 0.1, 0.1, 0.2, 9000),
                                          opcount.Timing(1000, 0.2, 0.2, 0.05, 0.15, 7500)])
    # medians of each: user 50 us (of 40, 100, 50), system 150 us (of 60, 200, 150), 8.0 switches a task
    assert split == ("engine: 200 us CPU per task (user 50, system 150), 8.0 context switches per task, "
                     "10000 tasks/s, 2.00 cores (medians of 3)")
    by_thread = opcount.cpu_report("engine", [
        opcount.Timing(1000, 0.1, 0.05, threads={"client": 0.06, "tq-worker": 0.03, "tq-store-writer": 0.01}),
        opcount.Timing(1000, 0.3, 0.1, threads={"client": 0.09, "tq-worker": 0.02, "tq-store-writer": 0.04}),
        opcount.Timing(1000, 0.2, 0.2, threads={"client": 0.07, "tq-worker": 0.025, "tq-store-writer": 0.02})])
    # medians per thread group, largest first: client 70 (of 60, 90, 70), tq-worker 25, tq-store-writer 20
    assert by_thread.splitlines()[1] == "  by thread, us CPU per task: client 70, tq-worker 25, tq-store-writer 20"
    assert opcount.main(["--cpu", "2", "--tasks", "20", "--clients", "2", "pool", "engine"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("  by thread")]
    assert [line.split(":")[0] for line in lines] == ["pool", "engine"]
    assert all("us CPU per task" in line and "(medians of 2)" in line for line in lines)


def test_a_negative_cpu_round_count_is_refused_by_name(capsys):
    with pytest.raises(SystemExit) as info:
        opcount.main(["--cpu", "-1", "pool"])
    assert info.value.code == 2
    assert "--cpu" in capsys.readouterr().err
