"""Resource stability over 100,000 tasks: the engine's RSS stays flat, the baseline's grows with its backlog.

Slow (two to four minutes on 2 shared cores), so not in the default run::

    .venv/bin/python -m pytest tests/integration/test_soak.py -m slow -rA -s

Both tests print their RSS series (MiB after every 10,000 tasks).

* **Engine.** 100,000 distinct zero-latency ``gzip`` tasks of tiny sources go
  through a ``TaskQueue`` driven by closed-loop clients (each submits one
  task and waits for its result). Outputs are not fsynced
  (``Config(fsync_outputs=False)``): the test is about the queue's memory,
  not the disk. Once warm (from 20,000 tasks on) RSS must stay within
  :data:`FLAT_MIB` of its value at 20,000: bounded queue, Futures dropped
  when settled, latency histogram in bounded memory.
* **Baseline.** The same 100,000 tasks are handed to the original queue at
  once, as its clients can (``submit`` never blocks): its unbounded list
  holds them all. RSS is sampled after every 10,000 submitted, then after
  every 10,000 drained (its results dict is never trimmed).

Sources are shared by both tests (a module fixture) and written directly as
files: creating them through the store would double the run time for
nothing the test measures. RSS comes from ``/proc/self/statm`` (current),
or ``ru_maxrss`` (peak) where there is no /proc. Both tests run in the
pytest process, engine first; each series is read against its own start.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from pathlib import Path

import pytest

from taskqueue.config import Config
from taskqueue.engine import TaskQueue
from taskqueue.objectstore import LocalObjectStore
from taskqueue.processor import Processor
from taskqueue.task import Task

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TASKS = 100_000
EVERY = 10_000
WARM = 20_000
FLAT_MIB = 20.0
CLIENTS = 32
HANG_S = 900  # hang guard only: the engine run takes about 80 s on 2 cores

resource = pytest.importorskip("resource")  # POSIX: ru_maxrss when there is no /proc


def rss_mib() -> float:
    """Resident set size of this process in MiB: current from /proc, else the peak."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def key(i: int) -> str:
    return f"src/{i // 1000:03d}/o{i:06d}.txt"


def task(i: int) -> Task:
    return Task(id=f"t{i}", image_key=key(i), variant="gzip")


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    """A store holding the 100,000 tiny sources."""
    root = tmp_path_factory.mktemp("soak") / "store"
    for i in range(TASKS):
        if i % 1000 == 0:
            (root / "src" / f"{i // 1000:03d}").mkdir(parents=True)
        (root / key(i)).write_bytes(b"tiny source %d\n" % i)
    return root


def show(title: str, series: list[tuple[int, float]]) -> None:
    print(f"\n{title}")
    print("  tasks    RSS MiB")
    for n, mib in series:
        print(f"  {n:>7,}  {mib:8.1f}")


def test_engine_rss_stays_flat_over_100k_tasks(store_dir, tmp_path):
    objects = LocalObjectStore(store_dir, fsync=False)
    config = Config(workers=8, queue_size=128, fsync_outputs=False)
    lock = threading.Lock()  # guards cursor, done, series, errors
    cursor, done = [0], [0]
    series: list[tuple[int, float]] = [(0, rss_mib())]
    errors: list[BaseException] = []

    with TaskQueue(tmp_path / "tasks.db", objects, config=config) as tq:
        def client() -> None:
            try:
                while True:
                    with lock:
                        i = cursor[0]
                        if i >= TASKS:
                            return
                        cursor[0] += 1
                    result = tq.submit(task(i)).result(HANG_S)
                    assert not result.deduplicated
                    with lock:
                        done[0] += 1
                        if done[0] % EVERY == 0:
                            series.append((done[0], rss_mib()))
            except BaseException as exc:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(exc)

        threads = [threading.Thread(target=client, name=f"soak-client-{n}") for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(HANG_S)
            assert not thread.is_alive(), "a client hung"
        snap = tq.snapshot()

    show(f"engine: {TASKS:,} zero-latency gzip tasks, {CLIENTS} closed-loop clients, "
         f"{config.workers} workers, queue {config.queue_size}", series)
    assert errors == []
    assert snap["counters"]["succeeded"] == TASKS
    assert snap["queue_depth"]["max"] <= config.queue_size
    warm = dict(series)[WARM]
    growth = max(mib for n, mib in series if n >= WARM) - warm
    print(f"  growth after warm-up ({WARM:,} -> {TASKS:,}): {growth:+.1f} MiB (bound {FLAT_MIB} MiB)")
    assert growth < FLAT_MIB, series


def _load_baseline():
    spec = importlib.util.spec_from_file_location("baseline_task_queue_v2",
                                                  REPO / "input_new" / "baseline_task_queue_v2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_baseline_rss_grows_with_its_unbounded_backlog(store_dir):
    baseline = _load_baseline()
    queue = baseline.BaselineTaskQueue(Processor(LocalObjectStore(store_dir, fsync=False)), workers=8)
    start = rss_mib()
    backlog: list[tuple[int, float]] = [(0, start)]
    for i in range(TASKS):
        queue.submit(task(i))  # never blocks: the list takes everything
        if (i + 1) % EVERY == 0:
            backlog.append((i + 1, rss_mib()))
    drained: list[tuple[int, float]] = []
    queue.start()
    try:
        for n in range(EVERY, TASKS + 1, EVERY):
            ok, value = queue.wait(f"t{n - 1}", timeout=HANG_S)  # FIFO: all before it are done too
            assert ok, value
            drained.append((n, rss_mib()))
    finally:
        queue.stop()

    show(f"baseline: {TASKS:,} tasks submitted at once (backlog in its unbounded list)", backlog)
    show("baseline: the same tasks drained by its 8 workers (results dict never trimmed)", drained)
    stats = queue.stats()
    assert stats["succeeded"] == TASKS and stats["queued"] == 0
    print(f"  growth with the backlog (0 -> {TASKS:,} queued): {backlog[-1][1] - start:+.1f} MiB")
    # The measurement's point: memory proportional to the backlog (about 360 bytes a task here),
    # where the engine's bounded queue makes a producer wait instead. Read from 20,000 on: the
    # first steps may reuse memory the engine test freed in this process.
    queued = dict(backlog)
    per_task = (queued[TASKS] - queued[WARM]) * 2**20 / (TASKS - WARM)
    print(f"  {per_task:.0f} bytes per queued task ({WARM:,} -> {TASKS:,})")
    assert per_task > 150, backlog
