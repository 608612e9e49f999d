"""Producers and workers apart: ``enqueue`` and ``worker`` on SQLite and on a real PostgreSQL server.

Commands run as subprocesses (``sys.executable`` on the repository's entry
point, ``TQ_*`` removed from the environment); the feeder's bound is checked
in-process with a gated processor. Waits poll the database only to decide
*when* to act, with a hang guard, never to decide an outcome.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from feeding import start_feeder
from polling import wait_until
from taskqueue.config import Config
from taskqueue.engine import TaskQueue
from taskqueue.engine.feeder import Feeder
from taskqueue.objectstore import LocalObjectStore
from taskqueue.processor import Processor
from taskqueue.store.owners import process_start
from taskqueue.workload import create_sources, generate_tasks

REPO = Path(__file__).resolve().parents[2]
ENTRY = REPO / "task_queue_optimized.py"
HANG = 120.0  # hang guard only


class Database:
    """One fresh task database on one backend, and a way to read it behind the commands' backs."""

    def __init__(self, kind: str, tmp_path: Path, request, url: str | None = None) -> None:
        self.kind = kind
        if url is not None:
            self.url = url
        elif kind == "postgres":
            self.url = request.getfixturevalue("postgres_server").new_database()
        else:
            self.url = str(tmp_path / "tasks.db")

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        if self.kind == "postgres":
            import psycopg

            with psycopg.connect(self.url, autocommit=True) as conn:
                return conn.execute(sql.replace("?", "%s"), params).fetchall()
        if not os.path.exists(self.url):
            return []
        conn = sqlite3.connect(f"{Path(self.url).resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        finally:
            conn.close()

    def execute(self, sql: str) -> None:
        if self.kind == "postgres":
            import psycopg

            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(sql)
            return
        conn = sqlite3.connect(self.url)
        with conn:
            conn.execute(sql)
        conn.close()

    def statuses(self) -> dict[str, int]:
        try:
            return dict(self.query("SELECT status, COUNT(*) FROM tasks GROUP BY status"))
        except Exception as exc:  # the schema is not there yet
            if "tasks" in str(exc):
                return {}
            raise


@pytest.fixture(params=["sqlite", "postgres"])
def database(request, tmp_path) -> Database:
    return Database(request.param, tmp_path, request)


def environment(**settings) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("TQ_")}
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), out.get("PYTHONPATH")]))
    out["PYTHONUNBUFFERED"] = "1"
    out["TQ_FSYNC_OUTPUTS"] = "false"
    out.update({f"TQ_{k.upper()}": str(v) for k, v in settings.items()})
    return out


def command(*args: str) -> list[str]:
    return [sys.executable, str(ENTRY), *args]


def run(*args: str, cwd: Path, **settings) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), cwd=cwd, env=environment(**settings), capture_output=True, text=True,
                          timeout=HANG)


@pytest.fixture
def workload(tmp_path: Path) -> dict:
    items = generate_tasks(60, seed=11, duplicate_fraction=0.1, variants="gzip")
    store = tmp_path / "store"
    create_sources(LocalObjectStore(store, fsync=False), items, seed=11)
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps(items), encoding="utf-8")
    keys = {f"{i['image_key']}:{i['variant']}" for i in items}
    return {"items": items, "file": path, "store": store, "keys": keys, "cwd": tmp_path}


# -- enqueue ---------------------------------------------------------------------------------------

def test_enqueue_adds_each_key_once_processes_nothing_and_says_what_it_did(database, workload):
    first = run("enqueue", "--tasks", str(workload["file"]), "--db", database.url, cwd=workload["cwd"])
    assert first.returncode == 0, first.stderr
    unique = len(workload["keys"])
    assert f"enqueued {unique} task(s)" in first.stdout
    assert "0 already there" in first.stdout  # an empty database: the file's repeated keys are told apart
    assert f"repeats of a key earlier in the file (added once): {len(workload['items']) - unique}" in first.stdout
    assert database.statuses() == {"queued": unique}
    assert database.query("SELECT COUNT(*) FROM tasks WHERE owner IS NOT NULL OR attempts <> 0") == [(0,)]
    assert not (workload["store"] / "variants").exists()  # nothing processed

    again = run("enqueue", "--tasks", str(workload["file"]), "--db", database.url, cwd=workload["cwd"])
    assert again.returncode == 0 and "enqueued 0 task(s)" in again.stdout
    assert f"; {unique} already there" in again.stdout  # as many as the rows: no repeat counted twice
    assert database.statuses() == {"queued": unique}


def test_enqueue_ignores_the_workers_output_settings_of_a_shared_environment(workload):
    """A fleet shares one environment: the log and metrics files it names are the workers' (here in a
    directory only the workers' machines have); enqueue writes neither, so it does not refuse them."""
    elsewhere = workload["cwd"] / "only-on-the-workers"
    result = run("enqueue", "--tasks", str(workload["file"]), "--db", str(workload["cwd"] / "tasks.db"),
                 cwd=workload["cwd"], log_file=elsewhere / "worker.log", metrics_out=elsewhere / "metrics.json")
    assert result.returncode == 0, result.stderr
    assert f"enqueued {len(workload['keys'])} task(s)" in result.stdout and not elsewhere.exists()


def test_enqueue_refuses_a_bad_file_whole_or_dead_letters_its_bad_items(database, tmp_path):
    items = [{"id": "ok-1", "image_key": "src/a.txt", "variant": "gzip"},
             {"id": "bad-1", "image_key": "src/b.txt", "variant": "nope"}]
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps(items))
    refused = run("enqueue", "--tasks", str(path), "--db", database.url, cwd=tmp_path)
    assert refused.returncode == 2 and "item 1: field 'variant'" in refused.stderr
    assert "dead letters and enqueues the rest" in refused.stderr  # enqueue runs nothing (found in review)
    assert database.statuses() == {}
    lenient = run("enqueue", "--tasks", str(path), "--db", database.url, "--invalid", "dead-letter", cwd=tmp_path)
    assert lenient.returncode == 0, lenient.stderr
    assert database.statuses() == {"queued": 1, "dead": 1}


def test_a_postgresql_url_without_psycopg_is_a_clear_error(tmp_path, workload):
    hide = tmp_path / "no-psycopg"
    (hide / "psycopg").mkdir(parents=True)
    (hide / "psycopg" / "__init__.py").write_text("raise ImportError('psycopg hidden by the test')\n")
    env = environment()
    env["PYTHONPATH"] = os.pathsep.join([str(hide), env["PYTHONPATH"]])
    for args in (["enqueue", "--tasks", str(workload["file"])], ["worker", "--store", str(workload["store"])],
                 ["status"]):
        result = subprocess.run(command(*args, "--db", "postgresql://nobody@/nowhere"), cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=HANG)
        assert result.returncode == 2, (args, result.stderr)
        assert 'pip install "psycopg[binary]"' in result.stderr and "Traceback" not in result.stderr


def test_status_and_dlq_list_on_a_locked_postgresql_table_fail_within_the_busy_timeout(tmp_path, request,
                                                                                       workload):
    """Noticed in an earlier review: on PostgreSQL ``status`` and ``dlq list`` had no timeout at all,
    so a table locked by another session (a migration, a VACUUM FULL) held them forever. As on SQLite, they wait
    at most TQ_BUSY_TIMEOUT_MS, then say so."""
    import psycopg

    database = Database("postgres", tmp_path, request)
    assert run("enqueue", "--tasks", str(workload["file"]), "--db", database.url, cwd=tmp_path).returncode == 0
    with psycopg.connect(database.url) as locker:  # a transaction: the lock holds until it ends
        locker.execute("LOCK TABLE tasks, dead_letters IN ACCESS EXCLUSIVE MODE")
        for argv in (["status"], ["dlq", "list"]):
            done = run(*argv, "--db", database.url, cwd=tmp_path, busy_timeout_ms=300)  # hangs without the timeout
            assert done.returncode == 2, (argv, done.stdout, done.stderr)
            assert "holds its tables locked; no lock within 300 ms (TQ_BUSY_TIMEOUT_MS)" in done.stderr, done.stderr
        locker.rollback()
    after = run("status", "--db", database.url, cwd=tmp_path, busy_timeout_ms=300)
    assert after.returncode == 0 and f"queued {len(workload['keys'])}" in after.stdout, after.stderr


# -- worker --------------------------------------------------------------------------------------------

def test_a_worker_says_how_many_rows_of_a_dead_worker_it_took_over_at_start_up(workload, dead_pid):
    """Found in review: its summary counted only what its feeder claimed afterwards."""
    cwd, db = workload["cwd"], str(workload["cwd"] / "tasks.db")
    assert run("enqueue", "--tasks", str(workload["file"]), "--db", db, cwd=cwd).returncode == 0
    database = Database("sqlite", cwd, None, db)
    database.execute(f"UPDATE tasks SET owner = '{socket.gethostname()}:{dead_pid}:-:gone', "
                     f"lease_until = {time.time() + 1000}, version = version + 1 WHERE id <= 5")
    worker = run("worker", "--db", db, "--store", str(workload["store"]), "--exit-when-idle", cwd=cwd)
    assert worker.returncode == 0, worker.stderr
    rest = len(workload["keys"]) - 5
    assert f"claimed {rest} (+5 taken over at start-up), {len(workload['keys'])} succeeded" in worker.stdout, \
        worker.stdout


def test_a_worker_whose_grace_runs_out_still_writes_its_metrics_file(workload):
    """Found in review: it exited without the final metrics (the shutdown that writes them was still
    waiting for the task), and with the default 10 s interval nothing at all had been written."""
    cwd, db, out = workload["cwd"], str(workload["cwd"] / "tasks.db"), workload["cwd"] / "m.json"
    assert run("enqueue", "--tasks", str(workload["file"]), "--db", db, cwd=cwd).returncode == 0
    worker = subprocess.Popen(command("worker", "--db", db, "--store", str(workload["store"]), "--grace", "0.2",
                                      "--metrics-out", str(out), "--no-progress"),
                              cwd=cwd, env=environment(fault_latency_s=60, workers=1), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    database = Database("sqlite", cwd, None, db)
    wait_until(lambda: dict(database.query("SELECT status, COUNT(*) FROM tasks GROUP BY status")).get("running") == 1,
               "a task running", worker)
    worker.send_signal(signal.SIGTERM)
    out_text, err = worker.communicate(timeout=HANG)
    assert worker.returncode == 0, (out_text, err)
    snapshot = json.loads(out.read_text())
    assert snapshot["counters"]["dequeued"] >= 1 and snapshot["config"]["workers"] == 1


def test_a_worker_says_when_it_holds_fewer_tasks_than_the_queue_size_asked_for(workload):
    """Found in review: --queue-size 128 with 8 workers silently became 16 (2 per worker thread)."""
    cwd, db = workload["cwd"], str(workload["cwd"] / "tasks.db")
    assert run("enqueue", "--tasks", str(workload["file"]), "--db", db, cwd=cwd).returncode == 0
    asked = run("worker", "--db", db, "--store", str(workload["store"]), "--exit-when-idle", "--workers", "8",
                "--queue-size", "128", cwd=cwd)
    assert asked.returncode == 0 and "note: --queue-size 128 held to 16" in asked.stderr, asked.stderr
    default = run("worker", "--db", db, "--store", str(workload["store"]), "--exit-when-idle", cwd=cwd)
    assert default.returncode == 0 and "held to" not in default.stderr


def test_a_worker_refuses_a_store_that_does_not_exist_and_warns_of_an_empty_one(workload):
    """Found in review: a mistyped --store was created, empty, and every task in the queue was
    dead-lettered (SourceMissing) at full speed, exit 0: one machine of a fleet with its volume not
    mounted clears the queue. A worker reads sources from the store: it must be there."""
    cwd, db = workload["cwd"], str(workload["cwd"] / "tasks.db")
    assert run("enqueue", "--tasks", str(workload["file"]), "--db", db, cwd=cwd).returncode == 0
    missing = run("worker", "--db", db, "--store", str(cwd / "stor"), "--exit-when-idle", cwd=cwd)
    assert missing.returncode == 2 and missing.stderr.startswith("error: --store: no directory at "), missing.stderr
    assert not (cwd / "stor").exists()
    assert {status for (status,) in Database("sqlite", cwd, None, db).query("SELECT status FROM tasks")} == {"queued"}
    (cwd / "mnt").mkdir()
    empty = run("worker", "--db", db, "--store", str(cwd / "mnt"), "--exit-when-idle", cwd=cwd)
    assert empty.returncode == 0 and "is empty: every task's source will be missing" in empty.stderr, empty.stderr


def test_workers_share_the_queue_and_exit_when_nothing_is_open_anywhere(database, workload):
    assert run("enqueue", "--tasks", str(workload["file"]), "--db", database.url, cwd=workload["cwd"]).returncode == 0
    env = environment(fault_latency_s=0.01, workers=3)
    args = command("worker", "--db", database.url, "--store", str(workload["store"]), "--exit-when-idle")
    procs = [subprocess.Popen(args, cwd=workload["cwd"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=HANG) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert all("idle everywhere" in out for out, _err in outputs)
    assert database.statuses() == {"success": len(workload["keys"])}
    claimed = sum(int(out.split("claimed ")[1].split(",")[0]) for out, _err in outputs)
    assert claimed == len(workload["keys"])  # every row claimed once, by one of the two


def test_sigterm_stops_a_worker_which_gives_back_what_it_did_not_start(database, workload):
    assert run("enqueue", "--tasks", str(workload["file"]), "--db", database.url, cwd=workload["cwd"]).returncode == 0
    env = environment(fault_latency_s=0.2, workers=2, queue_size=8, shutdown_grace_s=30)
    proc = subprocess.Popen(command("worker", "--db", database.url, "--store", str(workload["store"])),
                            cwd=workload["cwd"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: database.statuses().get("running", 0) >= 1, "a task running", proc)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=HANG)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    counts = database.statuses()
    assert counts.get("running", 0) == 0 and counts.get("success", 0) >= 1  # in flight: finished
    # What it had claimed but not started is nobody's now: another worker may take it at once.
    assert database.query("SELECT COUNT(*) FROM tasks WHERE status = 'queued' AND owner IS NOT NULL") == [(0,)]
    rest = run("worker", "--db", database.url, "--store", str(workload["store"]), "--exit-when-idle",
               cwd=workload["cwd"])
    assert rest.returncode == 0, rest.stderr
    assert database.statuses() == {"success": len(workload["keys"])}


def test_a_task_longer_than_its_lease_is_not_taken_over_while_its_worker_lives_and_is_after_a_kill(
        database, tmp_path):
    items = [{"id": "long", "image_key": "src/long.txt", "variant": "gzip"}]
    store = tmp_path / "store"
    create_sources(LocalObjectStore(store, fsync=False), items, seed=1)
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps(items))
    assert run("enqueue", "--tasks", str(path), "--db", database.url, cwd=tmp_path).returncode == 0
    lease = 2.0  # the heartbeat renews it every lease/3 while the worker lives
    slow = environment(fault_latency_s=3 * lease, lease_s=lease, workers=1)
    watcher_env = environment(lease_s=lease, workers=1)
    worker = ["worker", "--db", database.url, "--store", str(store), "--exit-when-idle"]

    first = subprocess.Popen(command(*worker), cwd=tmp_path, env=slow, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    wait_until(lambda: database.statuses().get("running") == 1, "the long task running", first)
    second = subprocess.run(command(*worker), cwd=tmp_path, env=watcher_env, capture_output=True, text=True,
                            timeout=HANG)  # waits for the running row, renewed all along, to finish
    out, _ = first.communicate(timeout=HANG)
    assert first.returncode == 0 and second.returncode == 0, (out, second.stdout, second.stderr)
    assert "claimed 0" in second.stdout  # never took it over
    assert database.query("SELECT status, attempts FROM tasks") == [("success", 1)]

    # Again, but the worker dies mid-task: the row is taken over once its lease runs out. The survivor
    # runs under another host name (a UTS namespace): it cannot see the victim's pid, only its lease.
    if not can_rename_host():
        pytest.skip("needs unshare -u (root on Linux) to give the survivor another host name")
    reset = "UPDATE tasks SET status = 'queued', attempts = 0, owner = NULL, lease_until = NULL, version = version + 1"
    database.execute(reset)
    victim = subprocess.Popen(command(*worker), cwd=tmp_path, env=slow, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    wait_until(lambda: database.statuses().get("running") == 1, "the long task running again", victim)
    victim.kill()
    victim.wait(timeout=HANG)
    [(lease_until,)] = database.query("SELECT lease_until FROM tasks")
    survivor = subprocess.run(["unshare", "-u", "sh", "-c", 'hostname "another-machine" && exec "$0" "$@"',
                               *command(*worker)], cwd=tmp_path, env=watcher_env, capture_output=True, text=True,
                              timeout=HANG)
    assert survivor.returncode == 0, survivor.stderr
    assert "claimed 1" in survivor.stdout
    assert database.query("SELECT status, attempts FROM tasks") == [("success", 2)]  # the lost attempt counted
    # Taken at once it would have finished well inside the 2 s lease: it waited for the lease to run out.
    assert time.time() >= lease_until


def test_a_worker_in_another_pid_namespace_under_this_host_name_is_not_taken_for_dead(database, tmp_path):
    """Found in review: containers sharing the host's name and kernel (Docker ``--network host``) each
    have a pid namespace of their own. A worker outside looked the other one's pid up in its own
    process table, found it dead, and ended its leases: both ran every task, each one's outcomes
    were refused as stale, and every task ended WorkerCrashed. The lease decides now."""
    if not can_unshare_pids():
        pytest.skip("needs unshare -p (root on Linux) to run a worker in a pid namespace of its own")
    items = [{"id": f"slow-{n}", "image_key": f"src/slow-{n}.txt", "variant": "gzip"} for n in range(2)]
    store = tmp_path / "store"
    create_sources(LocalObjectStore(store, fsync=False), items, seed=1)
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps(items))
    assert run("enqueue", "--tasks", str(path), "--db", database.url, cwd=tmp_path).returncode == 0
    worker = ["worker", "--db", database.url, "--store", str(store), "--exit-when-idle"]
    inside = subprocess.Popen(["unshare", "-p", "-f", "--mount-proc", *command(*worker)], cwd=tmp_path,
                              env=environment(fault_latency_s=3, workers=2), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    wait_until(lambda: database.statuses().get("running") == 2, "both tasks running in the namespace", inside)
    outside = run(*worker, cwd=tmp_path, workers=1)  # waits for the rows the other renews, then exits idle
    out, _ = inside.communicate(timeout=HANG)
    assert inside.returncode == 0 and outside.returncode == 0, (out, outside.stdout, outside.stderr)
    assert "claimed 0" in outside.stdout, outside.stdout  # never took the live worker's rows
    assert sorted(database.query("SELECT status, attempts, error_class FROM tasks")) == [("success", 1, None)] * 2


def can_unshare_pids() -> bool:
    try:
        return subprocess.run(["unshare", "-p", "-f", "--mount-proc", "true"], capture_output=True,
                              timeout=30).returncode == 0
    except OSError:
        return False


def can_rename_host() -> bool:
    try:
        return subprocess.run(["unshare", "-u", "true"], capture_output=True, timeout=30).returncode == 0
    except OSError:
        return False


@pytest.mark.parametrize("workers, queue_size, holds", [(3, 5, 5), (1, 5, 2)],
                         ids=["the-queue-size", "two-per-worker"])
def test_a_worker_holds_no_more_than_its_queue_size_or_two_per_worker(database, workload, workers, queue_size,
                                                                      holds):
    """The feeder claims only what there is room for, and no more than its workers can start soon:
    other workers get the rest."""
    assert run("enqueue", "--tasks", str(workload["file"]), "--db", database.url, cwd=workload["cwd"]).returncode == 0
    gate = threading.Event()

    class Gated(Processor):
        def process(self, task, attempt=1):
            assert gate.wait(HANG)
            return super().process(task, attempt)

    objects = LocalObjectStore(workload["store"], fsync=False)
    tq = TaskQueue(database.url, objects, config=Config(workers=workers, queue_size=queue_size, fsync_outputs=False),
                   processor=Gated(objects), recover_unowned=False)
    feeder = Feeder(tq, batch=3)
    thread, waiting = start_feeder(feeder)  # waiting: set when the feeder first waits
    try:
        assert waiting.wait(HANG), "hang guard: the feeder never waited"
        held = database.query("SELECT COUNT(*) FROM tasks WHERE owner = ?", (tq.store.owner,))
        assert held == [(holds,)] and feeder.claimed == holds  # running and queued, no more
    finally:
        gate.set()
        feeder.stop()
        thread.join(HANG)
        tq.shutdown(wait=True, cancel_futures=True)
    assert database.query("SELECT COUNT(*) FROM tasks WHERE status = 'queued' AND owner IS NOT NULL") == [(0,)]


def test_an_idle_worker_takes_over_at_once_the_rows_of_a_worker_of_this_host_killed_while_it_waited(
        database, workload):
    """Found in review: on PostgreSQL an idle worker's feeder slept until the first lease ran out (its
    listener hears enqueues, not deaths), so the rows of a worker of this host killed meanwhile waited
    out their lease (5 min by default). It now looks again every second while one holds a lease."""
    assert run("enqueue", "--tasks", str(workload["file"]), "--db", database.url, cwd=workload["cwd"]).returncode == 0
    sibling = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    token = f"{socket.gethostname()}:{sibling.pid}:{process_start(sibling.pid) or '-'}:sibling"
    database.execute(f"UPDATE tasks SET owner = '{token}', lease_until = {time.time() + 1000},"
                     " version = version + 1")  # all claimed by the sibling, whose lease runs for 1000 s
    objects = LocalObjectStore(workload["store"], fsync=False)
    tq = TaskQueue(database.url, objects, config=Config(workers=2, fsync_outputs=False), recover_unowned=False)
    feeder = Feeder(tq, exit_when_idle=True)
    thread, waiting = start_feeder(feeder)  # waiting: set when the feeder first waits
    try:
        assert waiting.wait(HANG), "hang guard: the feeder never waited"
        assert feeder.claimed == 0
        sibling.kill()  # SIGKILL: it renews nothing, releases nothing, notifies nobody
        sibling.wait(HANG)
        thread.join(HANG)
        assert not thread.is_alive(), "the killed sibling's rows were left to wait out their lease"
    finally:
        feeder.stop()
        thread.join(HANG)
        tq.shutdown(wait=True)
        sibling.stdin.close()
    assert feeder.claimed == len(workload["keys"])
    assert database.statuses() == {"success": len(workload["keys"])}


def test_a_postgresql_database_whose_tasks_table_is_someone_elses_is_refused_untouched(request, tmp_path, workload):
    url = request.getfixturevalue("postgres_server").new_database()
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE tasks (id integer PRIMARY KEY, what text)")
        conn.execute("INSERT INTO tasks VALUES (1, 'theirs')")
    for args in (["enqueue", "--tasks", str(workload["file"])], ["status"], ["dlq", "list"]):
        result = run(*args, "--db", url, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "not this queue's" in result.stderr or "holds no task queue" in result.stderr
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT * FROM tasks").fetchall() == [(1, "theirs")]
        assert conn.execute("SELECT to_regclass('dead_letters')").fetchone() == (None,)


def test_a_worker_whose_database_restarts_stops_cleanly_and_a_new_one_finishes_everything(request, workload):
    """The server is shut down under a busy worker (every connection cut, as in a restart): the worker
    stops with exit 1 and a one-line reason, no traceback; once the server is back, a new worker takes
    over what the first one held and finishes every task, none lost, none wrong."""
    import gzip

    import pgserver

    why = pgserver.unavailable()
    if why:
        pytest.skip(why)
    server = pgserver.PostgresServer()  # its own: the session's server must not go away under other tests
    try:
        database = Database("postgres", workload["cwd"], request, url=server.new_database())
        assert run("enqueue", "--tasks", str(workload["file"]), "--db", database.url,
                   cwd=workload["cwd"]).returncode == 0
        worker = ["worker", "--db", database.url, "--store", str(workload["store"]), "--exit-when-idle"]
        busy = environment(fault_latency_s=0.2, workers=2)  # ~5 s of work: still busy when the server stops
        first = subprocess.Popen(command(*worker), cwd=workload["cwd"], env=busy, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: database.statuses().get("success", 0) >= 5, "the worker to be busy", first)
            server.shut_down()
            out, err = first.communicate(timeout=HANG)
        finally:
            if first.poll() is None:
                first.kill()
        assert first.returncode == 1, (out, err)
        assert "error: the worker stopped:" in err and "start it again" in err and "Traceback" not in err, err

        server.start()
        second = run(*worker, cwd=workload["cwd"])
        assert second.returncode == 0, second.stderr
        assert database.statuses() == {"success": len(workload["keys"])}
        for image_key, output_key in database.query("SELECT t.payload::json->>'image_key', t.output_key FROM tasks t"):
            source = (workload["store"] / image_key).read_bytes()
            assert gzip.decompress((workload["store"] / output_key).read_bytes()) == source, output_key
    finally:
        server.stop()


def test_a_worker_that_loses_its_database_exits_after_its_grace_even_with_a_task_that_never_ends(
        request, tmp_path):
    """A task still running when the grace period runs out must not keep the process alive: the
    worker exits 1 anyway (its row is taken over once its lease runs out)."""
    import pgserver

    why = pgserver.unavailable()
    if why or not hasattr(os, "mkfifo"):
        pytest.skip(why or "needs a named pipe")
    store = tmp_path / "store"
    LocalObjectStore(store, fsync=False).write("hold/held.txt", [b"held\n"])
    os.mkfifo(tmp_path / "hold.fifo")  # the task blocks opening it (holding_run.py) until a writer comes: never
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps([{"id": "held", "image_key": "hold/held.txt", "variant": "gzip"}]))
    server = pgserver.PostgresServer()
    try:
        database = Database("postgres", tmp_path, request, url=server.new_database())
        assert run("enqueue", "--tasks", str(path), "--db", database.url, cwd=tmp_path).returncode == 0
        holding = [sys.executable, str(REPO / "tests" / "integration" / "holding_run.py")]
        worker = subprocess.Popen([*holding, "worker", "--db", database.url, "--store", str(store), "--grace", "1"],
                                  cwd=tmp_path, env={**environment(workers=1), "HOLD_KEY": "hold/held.txt",
                                                     "HOLD_FIFO": str(tmp_path / "hold.fifo")}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: database.statuses().get("running") == 1, "the held task running", worker)
            server.shut_down()
            out, err = worker.communicate(timeout=HANG)  # hangs here if the exit waits for the held task
        finally:
            if worker.poll() is None:
                worker.kill()
        assert worker.returncode == 1, (out, err)
        assert "error: the worker stopped:" in err and "Traceback" not in err, err
    finally:
        server.stop()
