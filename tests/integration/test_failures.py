"""Failures end to end: poison tasks, non-blocking retries, dead letters, seeded faults, overflow, redrive.

Engine tests drive a real TaskQueue (threads, SQLite, object store) with a
scripted or fault-injecting processor; CLI tests run ``task_queue_optimized.py``
in a subprocess. Synchronisation is by Event and Future; timeouts only guard
against hangs.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import wait
from pathlib import Path

import pytest

from taskqueue import errors
from taskqueue.config import Config
from taskqueue.engine import TaskQueue
from taskqueue.objectstore import LocalObjectStore
from taskqueue.processor import FaultConfig, Processor
from taskqueue.task import Task
from taskqueue.workload import create_sources, generate_tasks

REPO = Path(__file__).resolve().parents[2]
HANG = 60.0  # seconds: a hang guard, never a speed expectation


class Recording:
    """A processor that counts every call per key, then delegates to ``behave(task, attempt)``."""

    def __init__(self, behave):
        self._behave = behave
        self._lock = threading.Lock()
        self.attempts: dict[str, list[int]] = collections.defaultdict(list)

    def process(self, task, attempt=1):
        with self._lock:
            self.attempts[task.idempotency_key].append(attempt)
        return self._behave(task, attempt)

    def calls(self, key: str) -> int:
        with self._lock:
            return len(self.attempts[key])


@contextlib.contextmanager
def running(db, store, **kwargs):
    """A TaskQueue shut down on exit, with a hang guard (a plain ``with`` would wait forever)."""
    tq = TaskQueue(db, store, **kwargs)
    try:
        yield tq
    except BaseException:
        tq.shutdown(wait=True, cancel_futures=True, timeout=HANG)
        raise
    if not tq.shutdown(wait=True, timeout=HANG):
        tq.shutdown(wait=True, cancel_futures=True, timeout=5.0)
        raise AssertionError(f"hang guard: shutdown did not finish within {HANG:g}s")


def _task(n: int, variant: str = "gzip", folder: str = "src") -> Task:
    return Task(id=f"t{n}", image_key=f"{folder}/obj-{n}.txt", variant=variant)


def _put_sources(store: LocalObjectStore, tasks) -> None:
    for task in tasks:
        store.write(task.image_key, [f"source of {task.image_key}\n".encode() * 50])


def _db_row(db: Path, key: str) -> dict:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute("SELECT * FROM tasks WHERE idempotency_key = ?", (key,)).fetchone()
        return dict(row) if row else {}
    finally:
        conn.close()


def _dead_letters(db: Path) -> dict[str, dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return {r["idempotency_key"]: dict(r) for r in conn.execute("SELECT * FROM dead_letters")}
    finally:
        conn.close()


def _statuses(db: Path) -> collections.Counter:
    conn = sqlite3.connect(db)
    try:
        return collections.Counter(dict(conn.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status")))
    finally:
        conn.close()


def _fast_retries(**changes) -> Config:
    return Config(**{"workers": 2, "max_attempts": 4, "retry_base_s": 0.001, "retry_cap_s": 0.002,
                     "retry_seed": 5, "fsync_outputs": False, **changes})


# -- poison tasks --------------------------------------------------------------------------


def _always_transient(store):
    def behave(task, attempt):
        raise errors.InjectedTransientError(f"always fails (attempt {attempt})")
    return behave


def _fault_rate_one(store):
    real = Processor(store, FaultConfig(transient_rate=1.0, seed=3))
    return real.process


@pytest.mark.parametrize("make_behaviour", [_always_transient, _fault_rate_one], ids=["scripted", "fault-rate-1"])
def test_poison_task_runs_exactly_max_attempts_then_is_dead_lettered(tmp_path, store, make_behaviour):
    db = tmp_path / "tasks.db"
    poison, healthy = _task(1), _task(2)
    _put_sources(store, [poison, healthy])
    bad = make_behaviour(store)
    real = Processor(store)
    processor = Recording(lambda task, attempt: bad(task, attempt) if task == poison
                          else real.process(task, attempt))
    tq = TaskQueue(db, store, config=_fast_retries(), processor=processor)
    try:
        poisoned, fine = tq.submit(poison), tq.submit(healthy)
        with pytest.raises(errors.InjectedTransientError):
            poisoned.result(timeout=HANG)
        assert fine.result(timeout=HANG).attempts == 1
    finally:
        assert tq.shutdown(wait=True, timeout=HANG)

    key = poison.idempotency_key
    assert processor.attempts[key] == [1, 2, 3, 4]
    row = _db_row(db, key)
    assert (row["status"], row["attempts"], row["error_class"]) == ("dead", 4, "InjectedTransientError")
    letter = _dead_letters(db)[key]
    assert (letter["attempts"], letter["error_class"]) == (4, "InjectedTransientError")
    assert set(_dead_letters(db)) == {key}
    counters = tq.final_metrics["counters"]
    assert (counters["failed"], counters["retried"], counters["dead_lettered"], counters["succeeded"]) \
        == (4, 3, 1, 1)

    # A restart on the same database neither recovers nor re-runs it; offering it again fails at once.
    tq2 = TaskQueue(db, store, config=_fast_retries(), processor=processor)
    try:
        assert tq2.recovered.runnable == [] and tq2.recovered.dead == []
        with pytest.raises(errors.InjectedTransientError):
            tq2.submit(poison).result(timeout=HANG)
    finally:
        assert tq2.shutdown(wait=True, timeout=HANG)
    assert processor.calls(key) == 4, "a dead-lettered task ran again"


def test_permanent_error_dead_letters_on_the_first_attempt(tmp_path, store):
    db = tmp_path / "tasks.db"
    missing = _task(1, folder="missing")
    processor = Recording(Processor(store).process)
    with running(db, store, config=_fast_retries(), processor=processor) as tq:
        with pytest.raises(errors.SourceMissing):
            tq.submit(missing).result(timeout=HANG)
    assert processor.attempts[missing.idempotency_key] == [1]
    letter = _dead_letters(db)[missing.idempotency_key]
    assert (letter["attempts"], letter["error_class"]) == (1, "SourceMissing")
    assert tq.final_metrics["counters"]["retried"] == 0


def test_timeout_is_transient_and_exhausts_the_attempts(tmp_path, store, fake_clock):
    db = tmp_path / "tasks.db"
    task = _task(1)
    _put_sources(store, [task])
    # Injected latency far past the timeout: each attempt "sleeps" the timeout on the fake clock and fails.
    slow = Processor(store, FaultConfig(latency_s=5.0, timeout_s=0.25), sleep=fake_clock.sleep)
    processor = Recording(slow.process)
    with running(db, store, config=_fast_retries(max_attempts=3), processor=processor) as tq:
        with pytest.raises(errors.ProcessingTimeout):
            tq.submit(task).result(timeout=HANG)
    assert processor.attempts[task.idempotency_key] == [1, 2, 3]
    assert fake_clock.sleeps == [0.25, 0.25, 0.25]
    assert _dead_letters(db)[task.idempotency_key]["error_class"] == "ProcessingTimeout"
    assert not store.exists("variants/gzip/src/obj-1.txt.gz")


class _UpperBound:
    """An rng whose uniform(a, b) is b: the backoff is exactly its bound (deterministic)."""

    def uniform(self, a, b):
        return b


def test_a_task_waiting_for_its_backoff_does_not_hold_a_worker(tmp_path, store):
    db = tmp_path / "tasks.db"
    flaky, other = _task(1), _task(2)
    _put_sources(store, [flaky, other])
    real = Processor(store)

    def behave(task, attempt):
        if task == flaky:
            raise errors.StorageBusy("busy, try later")
        return real.process(task, attempt)

    processor = Recording(behave)
    # One worker and a 120 s backoff: if the worker slept through the backoff, `other` would wait 120 s.
    config = _fast_retries(workers=1, retry_base_s=120.0, retry_cap_s=120.0)
    tq = TaskQueue(db, store, config=config, processor=processor, rng=_UpperBound())
    try:
        waiting = tq.submit(flaky)
        done = tq.submit(other)
        assert done.result(timeout=HANG).attempts == 1
        assert processor.attempts[flaky.idempotency_key] == [1]  # failed before `other` ran: one worker
        assert not waiting.done()
        row = _db_row(db, flaky.idempotency_key)
        assert (row["status"], row["attempts"], row["error_class"]) == ("failed", 1, "StorageBusy")
        assert row["next_attempt_at"] - row["updated_at"] == pytest.approx(120.0, abs=1.0)
        assert tq.snapshot()["retry_pending"] == 1
    finally:
        assert tq.shutdown(wait=True, cancel_futures=True, timeout=HANG)
    # Cancelled at shutdown: the retry stays in the store for the next run, never executed here.
    assert waiting.done() and (waiting.cancelled() or isinstance(waiting.exception(), errors.QueueShutDown))
    assert processor.calls(flaky.idempotency_key) == 1
    assert _db_row(db, flaky.idempotency_key)["status"] == "failed"


def test_the_attempt_budget_carries_across_a_restart(tmp_path, store):
    db = tmp_path / "tasks.db"
    poison = _task(1)
    _put_sources(store, [poison])
    failed_once = threading.Event()

    def behave(task, attempt):
        if attempt == 1:
            failed_once.set()
        raise errors.InjectedTransientError(f"attempt {attempt}")

    processor = Recording(behave)
    # First process: attempt 1 fails and waits 120 s for its retry; it is stopped meanwhile.
    first = TaskQueue(db, store, config=_fast_retries(workers=1, max_attempts=3, retry_base_s=120.0,
                                                      retry_cap_s=120.0),
                      processor=processor, rng=_UpperBound())
    try:
        first.submit(poison)
        assert failed_once.wait(HANG)
    finally:
        assert first.shutdown(wait=True, cancel_futures=True, timeout=HANG)
    row = _db_row(db, poison.idempotency_key)
    assert (row["status"], row["attempts"]) == ("failed", 1)

    # Second process, its clock past the retry's due time: it adopts the row and spends what is left.
    later = TaskQueue(db, store, config=_fast_retries(workers=1, max_attempts=3), processor=processor,
                      wall_clock=lambda: time.time() + 1000.0)
    try:
        assert [r.idempotency_key for r in later.recovered.runnable] == [poison.idempotency_key]
        with pytest.raises(errors.InjectedTransientError):
            later.submit(poison).result(timeout=HANG)
    finally:
        assert later.shutdown(wait=True, timeout=HANG)
    assert processor.attempts[poison.idempotency_key] == [1, 2, 3]
    assert _dead_letters(db)[poison.idempotency_key]["attempts"] == 3


def test_a_retry_runs_again_after_its_backoff(tmp_path, store):
    db = tmp_path / "tasks.db"
    flaky = _task(1)
    _put_sources(store, [flaky])
    real = Processor(store)
    first_failed = threading.Event()

    def behave(task, attempt):
        if attempt < 3:
            if attempt == 1:
                first_failed.set()
            raise errors.InjectedTransientError(f"attempt {attempt}")
        return real.process(task, attempt)

    processor = Recording(behave)
    with running(db, store, config=_fast_retries(max_attempts=3), processor=processor) as tq:
        result = tq.submit(flaky).result(timeout=HANG)
    assert first_failed.is_set()
    assert result.attempts == 3 and processor.attempts[flaky.idempotency_key] == [1, 2, 3]
    row = _db_row(db, flaky.idempotency_key)
    assert (row["status"], row["attempts"]) == ("success", 3)
    assert tq.final_metrics["counters"]["retried"] == 2
    assert gzip.decompress(Path(store.path_for(result.output_key)).read_bytes()) \
        == Path(store.path_for(flaky.image_key)).read_bytes()


# -- seeded faults across the board -------------------------------------------------------------


def _predict(faults: FaultConfig, key: str, max_attempts: int) -> tuple[str, int, str | None]:
    """(final status, attempts, error class) that the seeded faults dictate for ``key``."""
    for attempt in range(1, max_attempts + 1):
        _latency, fault = faults.decide(key, attempt)
        if fault is None:
            return "success", attempt, None
        if fault == "permanent":
            return "dead", attempt, "InjectedPermanentError"
    return "dead", max_attempts, "InjectedTransientError"


def test_seeded_faults_make_every_outcome_predictable(tmp_path, store):
    db = tmp_path / "tasks.db"
    items = generate_tasks(300, seed=11)
    create_sources(store, items, seed=11)
    tasks = [Task.from_dict(item) for item in items]
    faults = FaultConfig(latency_s=0.0, jitter_s=0.003, transient_rate=0.3, permanent_rate=0.05, seed=1234)
    max_attempts = 3
    config = _fast_retries(workers=4, max_attempts=max_attempts, queue_size=32)
    processor = Recording(Processor(store, faults).process)
    with running(db, store, config=config, processor=processor) as tq:
        futures = [tq.submit(task) for task in tasks]
        done, pending = wait(futures, timeout=HANG)
        assert not pending
    keys = {task.idempotency_key for task in tasks}
    expected = {key: _predict(faults, key, max_attempts) for key in keys}
    kinds = collections.Counter((status, error) for status, _, error in expected.values())
    # The seed gives a mix of every outcome, so the comparison below means something.
    assert kinds[("success", None)] > 100 and kinds[("dead", "InjectedPermanentError")] > 5 \
        and kinds[("dead", "InjectedTransientError")] > 3, kinds
    assert sum(1 for _, attempts, _ in expected.values() if attempts > 1) > 50

    conn = sqlite3.connect(db)
    try:
        rows = {key: (status, attempts, error_class if status == "dead" else None)
                for key, status, attempts, error_class in conn.execute(
                    "SELECT idempotency_key, status, attempts, error_class FROM tasks")}
        letters = dict(conn.execute("SELECT idempotency_key, error_class FROM dead_letters"))
    finally:
        conn.close()
    assert len(rows) == len(keys)
    mismatched = {key: (rows.get(key), expected[key]) for key in keys if rows.get(key) != expected[key]}
    assert not mismatched
    assert letters == {key: error for key, (status, _, error) in expected.items() if status == "dead"}
    for key, (_status, attempts, _error) in expected.items():
        assert processor.attempts[key] == list(range(1, attempts + 1)), key
    for task, future in zip(tasks, futures):
        status, attempts, error = expected[task.idempotency_key]
        if status == "success":
            output = Path(store.path_for(future.result().output_key)).read_bytes()
            assert gzip.decompress(output) == Path(store.path_for(task.image_key)).read_bytes()
        else:
            assert type(future.exception()).__name__ == error
    counters = tq.final_metrics["counters"]
    assert counters["succeeded"] == kinds[("success", None)]
    assert counters["dead_lettered"] == len(letters)
    # Every attempt but the last of each key was a transient failure that got retried.
    assert counters["retried"] == sum(attempts - 1 for _, attempts, _ in expected.values())


# -- overflow in reject mode ---------------------------------------------------------------------


def test_reject_mode_raises_queue_full_counts_it_and_loses_nothing(tmp_path, store):
    db = tmp_path / "tasks.db"
    tasks = [_task(n) for n in range(6)]
    _put_sources(store, tasks)
    real = Processor(store)
    entered, gate = threading.Event(), threading.Event()

    def behave(task, attempt):
        if task == tasks[0]:
            entered.set()
            assert gate.wait(HANG), "hang guard"
        return real.process(task, attempt)

    processor = Recording(behave)
    config = _fast_retries(workers=1, queue_size=2, on_full="reject")
    with running(db, store, config=config, processor=processor) as tq:
        first = tq.submit(tasks[0])
        assert entered.wait(HANG)
        # The only worker is inside tasks[0] and takes nothing more until it returns: room for 2.
        accepted = [tq.submit(tasks[1]), tq.submit(tasks[2])]
        rejected = []
        for task in tasks[3:]:
            with pytest.raises(errors.QueueFull):
                tq.submit(task)
            rejected.append(task)
        assert tq.metrics.snapshot()["counters"]["rejected"] == 3
        for task in rejected:  # the claim was released: the key is free to be offered again
            assert _db_row(db, task.idempotency_key) == {}
        gate.set()
        for future in [first, *accepted]:
            assert future.result(timeout=HANG).attempts == 1
        for task in rejected:  # one at a time: the queue holds 2 and the worker may lag behind
            assert tq.submit(task).result(timeout=HANG).attempts == 1
    assert _statuses(db) == {"success": 6}
    assert all(len(processor.attempts[t.idempotency_key]) == 1 for t in tasks)
    assert tq.final_metrics["counters"]["rejected"] == 3


# -- the CLI: reject mode, dead-letter queue, redrive ----------------------------------------------


def _env(**settings) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQ_")}
    env["PYTHONPATH"] = str(REPO)
    env.update({"TQ_FSYNC_OUTPUTS": "false", "TQ_RETRY_BASE_S": "0.001", "TQ_RETRY_CAP_S": "0.002",
                "TQ_RETRY_SEED": "1"})
    env.update({f"TQ_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def _cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "task_queue_optimized.py"), *map(str, args)],
                          cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=HANG)


def _dlq(db) -> dict[str, dict]:
    done = _cli("dlq", "list", "--db", db, "--json")
    assert done.returncode == 0, done.stderr
    return {row["idempotency_key"]: row for row in json.loads(done.stdout)}


def _check_outputs(store_root: Path, items) -> None:
    for item in items:
        source = (store_root / item["image_key"]).read_bytes()
        output = store_root / "variants" / item["variant"] / (item["image_key"] + ".gz")
        assert gzip.decompress(output.read_bytes()) == source, item


@pytest.fixture
def workload(tmp_path):
    """(task file, db path, store root, task dicts): 12 gzip tasks, 3 of them under missing/."""
    items = generate_tasks(12, seed=21, duplicate_fraction=0.0, missing_fraction=0.25)
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps(items))
    return path, tmp_path / "tasks.db", tmp_path / "objects", items


def test_cli_reject_mode_reoffers_until_everything_is_done(workload, tmp_path):
    tasks_file, db, root, items = workload
    present = [item for item in items if not item["image_key"].startswith("missing/")]
    tasks_file.write_text(json.dumps(present))
    metrics = tmp_path / "metrics.json"
    env = _env(fault_latency_s=0.002)
    done = _cli("run", "--tasks", tasks_file, "--db", db, "--store", root, "--make-sources",
                "--workers", 1, "--queue-size", 1, "--on-full", "reject", "--metrics-out", metrics, env=env)
    assert done.returncode == 0, done.stderr
    assert _statuses(db) == {"success": len(present)}
    counters = json.loads(metrics.read_text())["counters"]
    assert f"rejected offers {counters['rejected']}" in done.stdout
    _check_outputs(root, present)


def test_dlq_redrive_after_the_missing_sources_appear(workload):
    tasks_file, db, root, items = workload
    missing = sorted(f"{i['image_key']}:{i['variant']}" for i in items if i["image_key"].startswith("missing/"))
    assert len(missing) == 3

    first = _cli("run", "--tasks", tasks_file, "--db", db, "--store", root, "--make-sources")
    assert first.returncode == 0, first.stderr
    assert "3 dead-lettered" in first.stdout
    letters = _dlq(db)
    assert sorted(letters) == missing
    assert {(r["attempts"], r["error_class"]) for r in letters.values()} == {(1, "SourceMissing")}

    create_sources(LocalObjectStore(root), items, seed=21, skip_prefix=None)  # the fault is gone

    one = _cli("dlq", "redrive", "--db", db, missing[0])
    assert one.returncode == 0, one.stderr
    assert sorted(_dlq(db)) == missing[1:]
    assert _db_row(db, missing[0])["status"] == "queued"
    unknown = _cli("dlq", "redrive", "--db", db, "no/such/key.txt:gzip", missing[1])
    assert unknown.returncode == 1 and "no/such/key.txt:gzip" in unknown.stderr
    assert sorted(_dlq(db)) == missing[2:]
    rest = _cli("dlq", "redrive", "--db", db, "--all")
    assert rest.returncode == 0, rest.stderr
    assert _dlq(db) == {}

    second = _cli("run", "--tasks", tasks_file, "--db", db, "--store", root)
    assert second.returncode == 0, second.stderr
    assert _statuses(db) == {"success": len(items)}
    for key in missing:
        row = _db_row(db, key)
        assert (row["attempts"], row["redrives"]) == (1, 1)
    _check_outputs(root, items)


@pytest.mark.parametrize("fault, error_class, attempts", [
    ({"fault_permanent_rate": 1.0}, "InjectedPermanentError", 1),
    ({"fault_transient_rate": 1.0, "max_attempts": 2}, "InjectedTransientError", 2),
])
def test_dlq_redrive_after_the_fault_rate_drops_to_zero(workload, fault, error_class, attempts):
    tasks_file, db, root, items = workload
    present = [item for item in items if not item["image_key"].startswith("missing/")]
    tasks_file.write_text(json.dumps(present))

    first = _cli("run", "--tasks", tasks_file, "--db", db, "--store", root, "--make-sources", env=_env(**fault))
    assert first.returncode == 0, first.stderr
    letters = _dlq(db)
    assert len(letters) == len(present)
    assert {(r["attempts"], r["error_class"]) for r in letters.values()} == {(attempts, error_class)}

    # Without a redrive, a rerun does not retry dead tasks.
    idle = _cli("run", "--tasks", tasks_file, "--db", db, "--store", root)
    assert idle.returncode == 0, idle.stderr
    assert _statuses(db) == {"dead": len(present)}

    redrive = _cli("dlq", "redrive", "--db", db, "--all")
    assert redrive.returncode == 0 and f"redriven {len(present)}" in redrive.stdout
    second = _cli("run", "--tasks", tasks_file, "--db", db, "--store", root, env=_env(fault_permanent_rate=0))
    assert second.returncode == 0, second.stderr
    assert _statuses(db) == {"success": len(present)}
    assert _dlq(db) == {}
    _check_outputs(root, present)
