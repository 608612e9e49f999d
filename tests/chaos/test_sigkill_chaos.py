"""SIGKILL chaos: kill `run` at seeded random moments, restart it, and check nothing is lost or torn.

The same task file runs once cleanly in one directory (the reference) and, in
another, under injected latency while the test kills the process with SIGKILL
``CHAOS_KILLS`` times (3 by default), restarting the same command after each
kill, then lets it finish. When to kill is decided by polling the database
from this process for a seeded number of new successes, plus a seeded offset
of a few milliseconds so kills land at different points inside tasks.

    CHAOS_KILLS=10 .venv/bin/python -m pytest tests/chaos/test_sigkill_chaos.py -rA
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time

import chaos_harness as h
from taskqueue.objectstore import LocalObjectStore

KILLS = int(os.environ.get("CHAOS_KILLS", "3"))
SEED = int(os.environ.get("CHAOS_SEED", "20240917"))
TASKS = max(300, 30 * KILLS)  # room for every kill: each needs a few new successes before it
WORKERS = 4
# Every kill counts an attempt for each task in flight: up to WORKERS tasks per kill (a worker
# claims a task's attempt just before processing it), and the same task can be caught by
# several kills. Each run claims a task at most once when no fault is injected, so KILLS + 1
# attempts is the most any task can use; a budget above that keeps the test about durability,
# not about the dead-letter rule (tests/chaos/test_crash_recovery.py covers that).
MAX_ATTEMPTS = max(10, KILLS + 2)


def _wait_for_successes(proc: subprocess.Popen, db, target: int) -> int:
    """Wait until ``target`` rows succeeded or the process exited; return the success count."""
    h.wait_until(lambda: proc.poll() is not None or h.statuses(db).get("success", 0) >= target,
                 f"{target} successes")
    return h.statuses(db).get("success", 0)


def test_sigkill_at_random_moments_loses_and_tears_nothing(tmp_path):
    rng = random.Random(SEED)
    clean, chaos = tmp_path / "clean", tmp_path / "chaos"
    items = h.make_workload(clean, TASKS, seed=SEED)
    assert h.make_workload(chaos, TASKS, seed=SEED) == items
    keys = h.unique_keys(items)

    reference_run = subprocess.run(h.run_command(clean), cwd=h.REPO, env=h.env(workers=WORKERS),
                                   capture_output=True, text=True, timeout=h.HANG)
    assert reference_run.returncode == 0, reference_run.stderr
    reference = h.outputs(clean / "objects")
    assert len(reference) == len(keys)

    env = h.env(workers=WORKERS, max_attempts=MAX_ATTEMPTS, fault_latency_s=0.005, fault_jitter_s=0.015,
                fault_seed=SEED, fsync_outputs="true", retry_base_s=0.001, retry_cap_s=0.01)
    command = h.run_command(chaos)
    db = chaos / "tasks.db"
    objects = LocalObjectStore(chaos / "objects", create=False)
    kills, torn_writes, hot_wals, running_at_kill, logs = 0, 0, 0, [], []
    for k in range(KILLS):
        done = h.statuses(db).get("success", 0)
        kills_left = KILLS - k
        # A seeded number of new successes, leaving room for the kills still to come.
        step = rng.randint(1, max(1, (len(keys) - done) // (kills_left + 1)))
        offset = rng.uniform(0.0, 0.02)
        log = open(chaos / f"run-{k}.log", "w")
        logs.append(log.name)
        with log:
            proc = subprocess.Popen(command, cwd=h.REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                _wait_for_successes(proc, db, done + step)
                time.sleep(offset)  # fault injection: where inside the running tasks the kill lands
                if proc.poll() is None:
                    running_at_kill.append(h.statuses(db).get("running", 0))
                    proc.send_signal(signal.SIGKILL)
            finally:
                proc.wait(timeout=h.HANG)
        assert proc.returncode == -signal.SIGKILL, (
            f"run {k} ended by itself (exit {proc.returncode}) before its kill: "
            + open(logs[-1]).read()[-2000:])
        kills += 1
        torn_writes += len(objects.temp_files())  # writes cut short by this kill, swept by the restart
        wal = chaos / "tasks.db-wal"
        hot_wals += wal.exists() and wal.stat().st_size > 0  # the restart must recover it itself

    final = subprocess.run(command, cwd=h.REPO, env=env, capture_output=True, text=True, timeout=h.HANG)
    assert final.returncode == 0, final.stdout + final.stderr
    swept = int(re.search(r"temp files swept (\d+)", final.stdout).group(1))
    recovered = int(re.search(r"taken over from the database (\d+)", final.stdout).group(1))

    counts = h.statuses(db)
    rows = dict(h.db_query(db, "SELECT idempotency_key, status FROM tasks"))
    attempts = [a for (a,) in h.db_query(db, "SELECT attempts FROM tasks")]
    produced = h.outputs(chaos / "objects")
    lost = sorted(key for key in keys if rows.get(key) != "success")
    mismatched = sorted(name for name in reference if produced.get(name) != reference[name])
    extra = sorted(set(produced) - set(reference))
    print(f"\nSIGKILL chaos: seed {SEED}, kills {kills}, tasks {len(items)} ({len(keys)} unique keys), "
          f"lost {len(lost)}, mismatched {len(mismatched)}, extra files {len(extra)}, "
          f"rows running at each kill {running_at_kill}, max attempts {max(attempts)}, "
          f"temp files left by the kills {torn_writes}, hot WALs left by the kills {hot_wals}, recovered by the final run {recovered}, "
          f"temp files swept by the final run {swept}")

    assert kills == KILLS
    assert lost == [], lost[:10]
    assert counts == {"success": len(keys)}, counts  # every task terminal, none running, none dead
    assert len(rows) == len(keys)  # one row per unique key in the file: nothing duplicated
    assert mismatched == [] and extra == [], (mismatched[:10], extra[:10])
    assert objects.temp_files() == []
    assert h.db_query(db, "SELECT COUNT(*) FROM dead_letters") == [(0,)]
    assert max(attempts) <= KILLS + 1
    assert h.integrity(db) == "ok"
