"""A task whose processing kills its process: restarts end it in the dead-letter queue.

``crashy_run.py`` runs the real CLI with a processor that calls ``os._exit``
on one key. The same command is restarted until it exits 0. Attempts are
counted when a task is claimed, so after ``max_attempts`` claims start-up
recovery dead-letters the task with ``WorkerCrashed`` instead of looping.
"""

from __future__ import annotations

import collections
import gzip
import re
import subprocess

import pytest

import chaos_harness as h

MAX_ATTEMPTS = 3
TASKS = 20
CRASH_INDEX = 7
CRASH_EXIT = 70


@pytest.fixture(scope="module")
def crash_runs(tmp_path_factory):
    """Restart a one-worker `run` whose task CRASH_INDEX calls os._exit, until it exits 0.

    One worker makes the order of claims deterministic (see crashy_run.py for the flush that
    makes what each crash leaves behind deterministic too). Yields a namespace of the figures.
    """
    work = tmp_path_factory.mktemp("crash")
    items = h.make_workload(work, TASKS, seed=3, duplicate_fraction=0.0)
    keys = [f"{item['image_key']}:{item['variant']}" for item in items]
    crash_key = keys[CRASH_INDEX]
    env = h.env(workers=1, max_attempts=MAX_ATTEMPTS, retry_base_s=0.001, retry_cap_s=0.002,
                CRASH_KEY=crash_key, CRASH_LOG=work / "crash.log", EXEC_LOG=work / "exec.log")
    command = h.run_command(work, entry=h.CRASHY)
    codes = []
    for _ in range(MAX_ATTEMPTS + 3):  # bounded: a task that loops forever fails the test, not hangs it
        done = subprocess.run(command, cwd=h.REPO, env=env, capture_output=True, text=True, timeout=h.HANG)
        codes.append(done.returncode)
        if done.returncode != CRASH_EXIT:
            break
    executions = collections.defaultdict(list)
    for line in (work / "exec.log").read_text().splitlines():
        key, attempt = line.rsplit(" ", 1)
        executions[key].append(int(attempt))
    last = done
    again = subprocess.run(command, cwd=h.REPO, env=env, capture_output=True, text=True, timeout=h.HANG)
    return type("CrashRuns", (), dict(
        work=work, db=work / "tasks.db", items=items, keys=keys, crash_key=crash_key, codes=codes,
        last=last, again=again, executions=executions,
        crash_log=(work / "crash.log").read_text().split()))


def test_the_crashing_task_is_dead_lettered_after_max_attempts_claims(crash_runs):
    r = crash_runs
    assert r.codes == [CRASH_EXIT] * MAX_ATTEMPTS + [0], r.last.stderr
    assert r.crash_log == ["1", "2", "3"]  # executed once per claim, never more
    assert r.executions[r.crash_key] == [1, 2, 3]
    status, attempts, error_class, last_error = h.db_query(
        r.db, "SELECT status, attempts, error_class, last_error FROM tasks WHERE idempotency_key = ?",
        (r.crash_key,))[0]
    assert (status, attempts, error_class) == ("dead", MAX_ATTEMPTS, "WorkerCrashed")
    assert "never finished" in last_error
    letters = {key: (attempts, error_class) for key, attempts, error_class in h.db_query(
        r.db, "SELECT idempotency_key, attempts, error_class FROM dead_letters")}
    assert letters[r.crash_key] == (MAX_ATTEMPTS, "WorkerCrashed")
    recovered_dead = re.search(r"\(\+(\d+) dead-lettered\)", r.last.stdout)
    assert recovered_dead and int(recovered_dead.group(1)) >= 1, r.last.stdout  # by start-up recovery


def test_after_the_crashes_every_row_is_terminal_and_consistent(crash_runs):
    r = crash_runs
    counts = h.statuses(r.db)
    assert set(counts) <= {"success", "dead"}, counts  # nothing running, queued or awaiting a retry
    assert sum(counts.values()) == TASKS
    assert h.integrity(r.db) == "ok"
    for key, output_key in h.db_query(r.db, "SELECT idempotency_key, output_key FROM tasks"
                                            " WHERE status = 'success'"):
        image_key = key.rsplit(":", 1)[0]
        source = (r.work / "objects" / image_key).read_bytes()
        assert gzip.decompress((r.work / "objects" / output_key).read_bytes()) == source
    assert not [p for p in (r.work / "objects").rglob("*") if ".tmp-" in p.name]


def test_a_further_run_changes_nothing(crash_runs):
    r = crash_runs
    assert r.again.returncode == 0, r.again.stderr
    assert r.crash_log == (r.work / "crash.log").read_text().split()
    assert "0 unfinished" in r.again.stdout


def test_only_the_crashing_task_is_dead_lettered(crash_runs):
    r = crash_runs
    dead = {key: (attempts, error_class) for key, attempts, error_class in h.db_query(
        r.db, "SELECT idempotency_key, attempts, error_class FROM tasks WHERE status = 'dead'")}
    never_ran = {key: dead[key] for key in dead if not r.executions.get(key)}
    assert never_ran == {}, f"dead-lettered without ever being executed: {never_ran}"
    assert h.statuses(r.db) == {"success": TASKS - 1, "dead": 1}
