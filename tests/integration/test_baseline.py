"""The original baseline queue: it does the real work, and it has the flaws it is kept for."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys
import threading
from collections import Counter

import pytest

from taskqueue import workload
from taskqueue.errors import InjectedTransientError, UnknownVariant
from taskqueue.objectstore import LocalObjectStore
from taskqueue.processor import FaultConfig, Processor

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "input_new" / "baseline_task_queue_v2.py"
WAIT_S = 30  # guards against a hang only


def _load_baseline():
    spec = importlib.util.spec_from_file_location("baseline_task_queue_v2", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


baseline = _load_baseline()


class CountingProcessor:
    """A real Processor that counts its calls per idempotency key (and attempt numbers)."""

    def __init__(self, processor: Processor) -> None:
        self.processor = processor
        self.calls: Counter[str] = Counter()
        self.attempts: Counter[int] = Counter()
        self._lock = threading.Lock()

    def process(self, task, attempt=1):
        with self._lock:
            self.calls[task.idempotency_key] += 1
            self.attempts[attempt] += 1
        return self.processor.process(task, attempt)


@pytest.fixture
def store(tmp_path):
    return LocalObjectStore(tmp_path / "store", fsync=False)


@pytest.fixture
def make_queue():
    queues = []

    def make(processor, workers=4):
        queue = baseline.BaselineTaskQueue(processor, workers=workers)
        queue.start()
        queues.append(queue)
        return queue

    yield make
    for queue in queues:
        queue.stop()


def test_every_task_gets_a_result_and_duplicates_are_processed_again(store, make_queue):
    tasks = workload.generate_tasks(60, seed=1, duplicate_fraction=0.2)
    workload.create_sources(store, tasks, seed=1)
    counting = CountingProcessor(Processor(store))
    queue = make_queue(counting)
    tickets = [queue.submit(t) for t in tasks]
    outcomes = [queue.wait(ticket, timeout=WAIT_S) for ticket in tickets]
    assert all(ok for ok, _ in outcomes)
    assert set(queue.results) == {t["id"] for t in tasks}
    expected = Counter(f"{t['image_key']}:{t['variant']}" for t in tasks)
    assert counting.calls == expected  # no idempotency: 12 duplicates processed a second time
    assert sum(expected.values()) - len(expected) == 12
    assert counting.attempts == Counter({1: 60})
    assert queue.stats() == {"submitted": 60, "processed": 60, "succeeded": 60, "failed": 0,
                             "queued": 0}
    output = outcomes[0][1]
    assert store.size(output.key) == output.size


def test_a_transient_fault_is_a_failure_not_retried(store, make_queue):
    tasks = workload.generate_tasks(5, seed=2, duplicate_fraction=0.0)
    workload.create_sources(store, tasks, seed=2)
    counting = CountingProcessor(Processor(store, FaultConfig(transient_rate=1.0, seed=2)))
    queue = make_queue(counting)
    tickets = [queue.submit(t) for t in tasks]
    for ticket in tickets:
        ok, error = queue.wait(ticket, timeout=WAIT_S)
        assert not ok and isinstance(error, InjectedTransientError)
    assert counting.attempts == Counter({1: 5})
    assert queue.stats()["failed"] == 5


def test_a_permanent_error_is_recorded_and_the_workers_carry_on(store, make_queue):
    tasks = [{"id": "bad", "image_key": "src/a.txt", "variant": "sepia"},
             {"id": "gone", "image_key": "missing/b.txt", "variant": "gzip"},
             {"id": "good", "image_key": "src/a.txt", "variant": "gzip"}]
    workload.create_sources(store, tasks, seed=3)
    queue = make_queue(Processor(store), workers=1)
    tickets = [queue.submit(t) for t in tasks]
    results = [queue.wait(t, timeout=WAIT_S) for t in tickets]
    assert isinstance(results[0][1], UnknownVariant)
    assert type(results[1][1]).__name__ == "SourceMissing"
    assert results[2][0] is True


def test_the_lock_is_held_while_processing(store, make_queue):
    """While one task is being processed, nobody can even submit: the flaw under study."""
    entered, release = threading.Event(), threading.Event()

    class Blocking:
        def process(self, task, attempt=1):
            entered.set()
            assert release.wait(WAIT_S)
            return "done"

    queue = make_queue(Blocking(), workers=4)
    queue.submit({"id": "t1", "image_key": "a.txt", "variant": "gzip"})
    assert entered.wait(WAIT_S)
    assert queue.lock.locked()
    assert not queue.lock.acquire(timeout=0.05)  # a submitter would block here
    release.set()
    assert queue.wait("t1", timeout=WAIT_S) == (True, "done")


def test_closed_loop_driver_measures_every_task(store, make_queue):
    tasks = workload.generate_tasks(40, seed=4)
    workload.create_sources(store, tasks, seed=4)
    queue = make_queue(Processor(store, FaultConfig(permanent_rate=0.25, seed=4)))
    report = baseline.run_closed_loop(queue, tasks, clients=8)
    assert report["completed"] == 40
    assert report["failed"] == queue.stats()["failed"] > 0
    assert report["errors_by_type"] == {"InjectedPermanentError": report["failed"]}
    assert report["error_rate"] == report["failed"] / 40
    assert 0 < report["latency_p50_ms"] <= report["latency_p95_ms"] <= report["latency_max_ms"]


@pytest.mark.parametrize("p, expected", [(50, 2.0), (95, 4.0), (100, 4.0), (1, 1.0), (0, 1.0)])
def test_percentile_is_nearest_rank(p, expected):
    assert baseline.percentile([1.0, 2.0, 3.0, 4.0], p) == expected


def test_percentile_rank_is_not_pushed_up_by_float_rounding():
    values = [float(i) for i in range(1, 101)]
    assert baseline.percentile(values, 7) == 7.0
    assert baseline.percentile(values, 95) == 95.0


def test_percentile_of_nothing_is_zero():
    assert baseline.percentile([], 95) == 0.0


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="workers"):
        baseline.BaselineTaskQueue(Processor(None), workers=0)


def test_cli_runs_end_to_end_and_writes_json(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--count", "24", "--clients", "6", "--workers", "2",
         "--latency-ms", "0", "--jitter-ms", "0", "--transient-rate", "0.2", "--no-fsync",
         "--store", str(tmp_path / "store"), "--json", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "throughput" in proc.stdout and "P95" in proc.stdout
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["tasks"] == report["completed"] == 24
    assert report["failed"] == report["errors_by_type"].get("InjectedTransientError", 0)
    assert report["percentile_method"] == "nearest-rank"
    assert report["throughput_per_s"] > 0


def test_cli_runs_a_task_file(tmp_path):
    sample = REPO / "input_new" / "sample_tasks_small.json"
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tasks", str(sample), "--clients", "3",
         "--latency-ms", "0", "--jitter-ms", "0", "--no-fsync",
         "--store", str(tmp_path / "store"), "--json", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["completed"] == 8
    errors = report["errors_by_type"]
    assert errors["UnknownVariant"] == errors["InvalidParameter"] == errors["SourceMissing"] == 1
