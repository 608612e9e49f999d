"""SIGKILL chaos across processes: one ``enqueue``, three ``worker`` processes, one database, one store.

The same task file runs once cleanly with ``run`` (the reference outputs).
Then it is enqueued once, and three workers process it under injected
latency while the test kills a random worker with SIGKILL ``WORKER_KILLS``
times (20 by default), starting a new one after each kill; every worker uses
``--exit-when-idle``, so the last ones exit once nothing is open anywhere.
Each ``process()`` call is logged (``key attempt``, O_APPEND + fsync) before
it runs, by the test wrapper ``crashy_run.py``.

Checked: every key ends ``success`` exactly once, 0 lost, outputs byte-identical
to the clean run, no (key, attempt) processed twice, no row left running, no
temp file left behind. Runs on SQLite (processes on one machine) and on a real
PostgreSQL server the suite starts.

    WORKER_KILLS=40 .venv/bin/python -m pytest tests/chaos/test_worker_chaos.py -rA
"""

from __future__ import annotations

import collections
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

import chaos_harness as h
from taskqueue.objectstore import LocalObjectStore

KILLS = int(os.environ.get("WORKER_KILLS", "20"))
SEED = int(os.environ.get("CHAOS_SEED", "20261201"))
TASKS = 2000
PROCESSES = 3
THREADS = 4
MAX_ATTEMPTS = KILLS + 2  # a task may be caught by every kill: keep the test about losing nothing


class Db:
    def __init__(self, kind: str, url: str) -> None:
        self.kind, self.url = kind, url

    def query(self, sql: str) -> list[tuple]:
        if self.kind == "postgres":
            import psycopg

            with psycopg.connect(self.url, autocommit=True) as conn:
                return conn.execute(sql).fetchall()
        conn = sqlite3.connect(f"file:{self.url}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    def successes(self) -> int:
        return self.query("SELECT COUNT(*) FROM tasks WHERE status = 'success'")[0][0]


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, tmp_path) -> Db:
    if request.param == "postgres":
        return Db("postgres", request.getfixturevalue("postgres_server").new_database())
    return Db("sqlite", str(tmp_path / "chaos" / "tasks.db"))


def test_killed_workers_lose_nothing_and_run_no_attempt_twice(tmp_path, db):
    rng = random.Random(SEED)
    clean, chaos = tmp_path / "clean", tmp_path / "chaos"
    items = h.make_workload(clean, TASKS, seed=SEED)
    assert h.make_workload(chaos, TASKS, seed=SEED) == items
    keys = h.unique_keys(items)
    reference_run = subprocess.run(h.run_command(clean), cwd=h.REPO, env=h.env(workers=8), capture_output=True,
                                   text=True, timeout=h.HANG)
    assert reference_run.returncode == 0, reference_run.stderr
    reference = h.outputs(clean / "objects")

    enqueue = subprocess.run([sys.executable, str(h.ENTRY), "enqueue", "--tasks", str(chaos / "tasks.json"),
                              "--db", db.url], cwd=h.REPO, env=h.env(), capture_output=True, text=True,
                             timeout=h.HANG)
    assert enqueue.returncode == 0, enqueue.stderr
    exec_log = chaos / "exec.log"
    env = h.env(workers=THREADS, max_attempts=MAX_ATTEMPTS, fault_latency_s=0.005, fault_jitter_s=0.01,
                fault_seed=SEED, fsync_outputs="true", lease_s=5, queue_size=16, retry_base_s=0.001,
                CRASH_KEY="-no-such-key-", CRASH_LOG=str(chaos / "crash.log"), EXEC_LOG=str(exec_log))
    worker = [sys.executable, str(h.CRASHY), "worker", "--db", db.url, "--store", str(chaos / "objects"),
              "--exit-when-idle"]
    logs = []

    def start() -> subprocess.Popen:
        log = open(chaos / f"worker-{len(logs)}.log", "w")
        logs.append(log.name)
        with log:
            return subprocess.Popen(worker, cwd=h.REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    procs = [start() for _ in range(PROCESSES)]
    kills = 0
    try:
        for k in range(KILLS):
            done = db.successes()
            left = len(keys) - done
            target = done + rng.randint(1, max(1, left // (KILLS - k + 2)))
            h.wait_until(lambda: db.successes() >= target or all(p.poll() is not None for p in procs),
                         f"{target} successes before kill {k}")
            time.sleep(rng.uniform(0.0, 0.01))  # fault injection: where inside the running tasks it lands
            alive = [p for p in procs if p.poll() is None]
            if not alive:
                break
            victim = rng.choice(alive)
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=h.HANG)
            kills += 1
            procs[procs.index(victim)] = start()
        for p in procs:
            p.wait(timeout=h.HANG)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def tails() -> str:  # what the workers said, for a failure message
        return "\n".join(f"--- {name}:\n{open(name).read()[-1200:]}" for name in logs)

    assert [p.returncode for p in procs] == [0] * PROCESSES, tails()

    rows = dict(db.query("SELECT idempotency_key, status FROM tasks"))
    attempts = collections.Counter(line.strip() for line in exec_log.read_text().splitlines() if line.strip())
    twice = sorted(entry for entry, n in attempts.items() if n > 1)
    produced = h.outputs(chaos / "objects")
    lost = sorted(key for key in keys if rows.get(key) != "success")
    mismatched = sorted(name for name in reference if produced.get(name) != reference[name])
    leftovers = LocalObjectStore(chaos / "objects", create=False).temp_files()
    print(f"\nworker chaos ({db.kind}): seed {SEED}, {kills} kills, {len(keys)} keys, {len(attempts)} attempts run, "
          f"lost {len(lost)}, mismatched {len(mismatched)}, (key, attempt) run twice {len(twice)}, "
          f"temp files left {len(leftovers)}")
    assert kills == KILLS, "the workers finished before every kill: raise TASKS or the latency\n" + tails()
    assert lost == [], (lost[:10], tails())
    assert len(rows) == len(keys) and set(rows.values()) == {"success"}
    assert twice == [], (twice[:10], tails())
    assert mismatched == [] and set(produced) == set(reference)
    assert db.query("SELECT COUNT(*) FROM dead_letters") == [(0,)]
    # Writes a kill tore are swept by the worker that replaces the victim (this host's dead writers).
    assert leftovers == [], (leftovers[:5], tails())


def test_a_task_that_kills_every_worker_it_meets_is_dead_lettered_after_max_attempts(tmp_path, db):
    """One thread per worker, so the poison task is the only attempt in flight when its worker dies:
    it alone is charged, and the worker that finds its last attempt unfinished dead-letters it."""
    work = tmp_path / "chaos"
    items = h.make_workload(work, 40, seed=SEED)
    keys = sorted(h.unique_keys(items))
    poison = keys[len(keys) // 2]
    subprocess.run([sys.executable, str(h.ENTRY), "enqueue", "--tasks", str(work / "tasks.json"), "--db", db.url],
                   cwd=h.REPO, env=h.env(), check=True, capture_output=True, timeout=h.HANG)
    crash_log = work / "crash.log"
    env = h.env(workers=1, max_attempts=3, lease_s=30, CRASH_KEY=poison, CRASH_LOG=str(crash_log))
    worker = [sys.executable, str(h.CRASHY), "worker", "--db", db.url, "--store", str(work / "objects"),
              "--exit-when-idle"]
    exits = []
    for _ in range(10):  # a hang guard: it must settle well before
        result = subprocess.run(worker, cwd=h.REPO, env=env, capture_output=True, text=True, timeout=h.HANG)
        exits.append(result.returncode)
        if result.returncode == 0:
            break
    assert exits == [70, 70, 70, 0], exits  # three attempts, each killing its worker; the fourth worker finishes
    assert crash_log.read_text().split() == ["1", "2", "3"]
    rows = {key: (status, attempts, error) for key, status, attempts, error in db.query(
        "SELECT idempotency_key, status, attempts, error_class FROM tasks")}
    assert rows.pop(poison) == ("dead", 3, "WorkerCrashed")
    assert set(rows.values()) == {("success", 1, None)}  # nobody else was charged
