"""SQLite under contention: one database and one store shared by 100 threads and 4 processes.

The main test runs a ``TaskQueue`` driven by 100 client threads in this
process while four ``task_queue_optimized.py run`` processes work through
the same ~600-task file against the same database and object store. Each
key may be claimed by any of the five; what must hold is that nobody ever
sees ``database is locked``, every process exits 0, every key ends
``success`` with exactly one output, and no (key, attempt) is processed
twice anywhere. The subprocesses log every attempt (``--log-level debug``:
the engine's ``attempt_started`` event carries ``idempotency_key``,
``attempt`` and ``pid``); this process wraps its Processor to record the
same.

Outputs are not fsynced (``TQ_FSYNC_OUTPUTS=false``): the contention under
test is SQLite's, not the disk's. The database keeps its default
``synchronous=NORMAL``.
"""

from __future__ import annotations

import collections
import gzip
import json
import logging
import os
import random
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from taskqueue.config import Config
from taskqueue.engine import TaskQueue
from taskqueue.errors import ClaimedElsewhere, InjectedTransientError, StaleVersion
from taskqueue.logs import LOGGER_NAME
from taskqueue.objectstore import LocalObjectStore
from taskqueue.processor import Processor
from taskqueue.store import SQLiteStore, connect
from taskqueue.task import Task, TaskStatus
from taskqueue.workload import create_sources, generate_tasks

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "task_queue_optimized.py"
HANG_S = 180  # hang guard only
TASKS = 600
SEED = 606
CLIENTS = 100
PROCESSES = 4
LOCKED = "database is locked"


class RecordingProcessor(Processor):
    """A real Processor that records every (idempotency key, attempt) it is asked to process."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self.attempts: list[tuple[str, int]] = []

    def process(self, task: Task, attempt: int = 1):
        with self._lock:
            self.attempts.append((task.idempotency_key, attempt))
        return super().process(task, attempt)


class Collect(logging.Handler):
    """Keeps every record of WARNING or above logged by the package in this process."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQ_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(TQ_FAULT_LATENCY_S="0.002", TQ_FSYNC_OUTPUTS="false")
    return env


def test_100_threads_and_4_processes_share_one_database_without_locks_or_double_work(tmp_path, store_root):
    tasks = generate_tasks(TASKS, seed=SEED, variants="gzip")  # 10% repeat an earlier key
    keys = {f"{t['image_key']}:{t['variant']}" for t in tasks}
    objects = LocalObjectStore(store_root, fsync=False)
    create_sources(objects, tasks, seed=SEED, source_size=(200, 2000))
    task_file, db = tmp_path / "tasks.json", tmp_path / "tasks.db"
    task_file.write_text(json.dumps(tasks), encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()

    # Four CLI processes over the file in file order ...
    procs, logs, outs = [], [], []
    for n in range(PROCESSES):
        log, out = tmp_path / f"run-{n}.log", tmp_path / f"run-{n}.out"
        logs.append(log)
        outs.append(out)
        with open(out, "wb") as sink:
            procs.append(subprocess.Popen(
                [sys.executable, str(SCRIPT), "run", "--tasks", str(task_file), "--db", str(db),
                 "--store", str(store_root), "--workers", "4", "--queue-size", "32",
                 "--log-file", str(log), "--log-level", "debug"],
                cwd=work, env=subprocess_env(), stdout=sink, stderr=subprocess.STDOUT))

    # ... and 100 client threads here, each over its share in reverse order, meeting them midway.
    collect = Collect()
    logging.getLogger(LOGGER_NAME).addHandler(collect)
    processor = RecordingProcessor(objects, Config(fault_latency_s=0.002).faults)
    config = Config(workers=4, queue_size=32, fsync_outputs=False, fault_latency_s=0.002)
    outcomes: collections.Counter[str] = collections.Counter()
    thread_errors: list[BaseException] = []
    record_lock = threading.Lock()
    start = threading.Barrier(CLIENTS)
    shares = [list(reversed(tasks))[i::CLIENTS] for i in range(CLIENTS)]
    try:
        tq = TaskQueue(db, objects, config=config, processor=processor)
        try:
            def client(share: list[dict]) -> None:
                try:
                    start.wait(HANG_S)
                    for item in share:
                        future = tq.submit(Task.from_dict(item))
                        try:
                            result = future.result(HANG_S)
                            kind = "deduplicated" if result.deduplicated else "processed"
                        except ClaimedElsewhere:
                            kind = "claimed elsewhere"
                        with record_lock:
                            outcomes[kind] += 1
                except BaseException as exc:  # noqa: BLE001 - every error is a finding
                    with record_lock:
                        thread_errors.append(exc)

            threads = [threading.Thread(target=client, args=(share,)) for share in shares]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(HANG_S)
                assert not thread.is_alive(), "a client thread hung"
        finally:
            assert tq.shutdown(wait=True, timeout=HANG_S), "TaskQueue did not shut down"
    finally:
        logging.getLogger(LOGGER_NAME).removeHandler(collect)
        for proc in procs:
            try:
                proc.wait(HANG_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # Nobody saw a lock, every process finished everything.
    outputs_text = [out.read_text(encoding="utf-8", errors="replace") for out in outs]
    assert [p.returncode for p in procs] == [0] * PROCESSES, outputs_text
    for text in outputs_text:
        assert LOCKED not in text and "Traceback" not in text, text
        assert "0 dead-lettered, 0 unfinished" in text, text
    assert thread_errors == [], thread_errors
    assert sum(outcomes.values()) == TASKS
    assert [r.getMessage() for r in collect.records] == []

    # Every attempt, in every process: no (key, attempt) twice, every key exactly once.
    attempts: collections.Counter[tuple[str, int]] = collections.Counter(processor.attempts)
    by_pid = collections.Counter({os.getpid(): len(processor.attempts)})
    for log in logs:
        text = log.read_text(encoding="utf-8")
        assert LOCKED not in text
        for line in text.splitlines():
            event = json.loads(line)
            assert event["level"] in ("debug", "info"), event
            if event["event"] == "attempt_started":
                attempts[(event["idempotency_key"], event["attempt"])] += 1
                by_pid[event["pid"]] += 1
    twice = {pair: n for pair, n in attempts.items() if n > 1}
    assert twice == {}, f"processed more than once: {twice}"
    assert set(attempts) == {(key, 1) for key in keys}
    print(f"\nattempts per process (pid: count): {dict(by_pid)}; in-process outcomes: {dict(outcomes)}")
    assert len([pid for pid, n in by_pid.items() if n]) >= 2, f"no contention happened: {dict(by_pid)}"

    # The database and the store agree: one success row and one complete output per key.
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT idempotency_key, status, attempts, output_key FROM tasks").fetchall()
        assert conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone() == (0,)
    finally:
        conn.close()
    assert len(rows) == len(keys) and {r[0] for r in rows} == keys
    assert {(r[1], r[2]) for r in rows} == {("success", 1)}
    produced = sorted(p.relative_to(store_root).as_posix() for p in (store_root / "variants").rglob("*")
                      if p.is_file())
    assert produced == sorted(r[3] for r in rows)
    assert objects.temp_files() == []
    for key, _status, _attempts, output in random.Random(SEED).sample(rows, 60):
        image_key = key.rsplit(":", 1)[0]
        with open(objects.path_for(output), "rb") as f, open(objects.path_for(image_key), "rb") as src:
            assert gzip.decompress(f.read()) == src.read()


# -- the optimistic version check, across two stores --------------------------------------------------

WAIT_S = 30


def _task() -> Task:
    return Task(id="t1", image_key="src/one.txt", variant="gzip")


@pytest.mark.parametrize("stale", [
    pytest.param(lambda s, row: s.succeed(row.id, row.version, "variants/gzip/elsewhere.gz", 1), id="succeed"),
    pytest.param(lambda s, row: s.fail(row.id, row.version, InjectedTransientError("late"), 0.0), id="fail"),
    pytest.param(lambda s, row: s.dead_letter(row.id, row.version, InjectedTransientError("late")),
                 id="dead-letter"),
    pytest.param(lambda s, row: s.start(row.id, row.version, row.attempts), id="start"),
])
def test_a_stale_writer_in_another_store_cannot_overwrite_a_finished_task(tmp_path, stale):
    db = tmp_path / "tasks.db"
    first, second = SQLiteStore(db, lease_s=30.0), SQLiteStore(db, lease_s=30.0)
    try:
        claim = first.commit(first.claim(_task(), 3))
        started = first.commit(first.start(claim.row.id, 0, 0))
        seen_by_second = second.get(_task().idempotency_key)  # read while the first store runs it
        assert seen_by_second.version == started.version and seen_by_second.status is TaskStatus.RUNNING
        first.commit(first.succeed(claim.row.id, started.version, "variants/gzip/src/one.txt.gz", 10))
        done = first.get(_task().idempotency_key)

        with pytest.raises(StaleVersion) as info:
            second.commit(stale(second, seen_by_second))  # the lost update the version check prevents
        assert info.value.args[0] == done  # the error carries the current row
        assert second.get(_task().idempotency_key) == done
        with second.reader() as conn:
            assert conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone() == (0,)
    finally:
        first.close()
        second.close()
    assert (done.status, done.output_key, done.attempts) == (TaskStatus.SUCCESS, "variants/gzip/src/one.txt.gz", 1)


# -- one connection shared across threads is refused by design ----------------------------------------

def test_a_connection_from_connect_refuses_to_be_used_from_another_thread(tmp_path):
    conn = connect(str(tmp_path / "tasks.db"), busy_timeout_ms=1000)
    caught: list[BaseException] = []

    def use_it() -> None:
        try:
            conn.execute("SELECT 1").fetchall()
        except BaseException as exc:  # noqa: BLE001 - the refusal is what we look for
            caught.append(exc)

    try:
        thread = threading.Thread(target=use_it)
        thread.start()
        thread.join(WAIT_S)
        assert len(caught) == 1 and isinstance(caught[0], sqlite3.ProgrammingError), caught
        assert "thread" in str(caught[0])
        assert conn.execute("SELECT 1").fetchall() == [(1,)]  # its own thread may still use it
    finally:
        conn.close()


def test_task_store_reads_open_a_connection_per_call_so_threads_never_share_one(tmp_path):
    """The store's read path works from many threads at once because each call opens its own connection."""
    store = SQLiteStore(tmp_path / "tasks.db")
    try:
        store.commit(store.claim(_task(), 3))
        barrier = threading.Barrier(8)
        seen: list = []
        errors: list[BaseException] = []

        def read() -> None:
            try:
                barrier.wait(WAIT_S)
                seen.append(store.get(_task().idempotency_key).status)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=read) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT_S)
        assert errors == [] and seen == [TaskStatus.QUEUED] * 8
    finally:
        store.close()
