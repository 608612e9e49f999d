"""The instruction counter of the benchmark (python -m taskqueue.bench.opcount): real runs, counted per thread."""

from __future__ import annotations

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
