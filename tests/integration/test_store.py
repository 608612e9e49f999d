"""TaskStore: the SQLite state machine, idempotent claims, recovery, redrive and the group-commit writer.

States are crafted by writing rows through a separate connection; the
writer is held back deterministically by taking the database's write lock
from another connection (``writer_blocked``), which lets a test know that a
set of operations shares a commit and that none of them has committed yet.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest

from taskqueue.errors import InjectedTransientError, StaleVersion, WorkerCrashed
from taskqueue.store import MAX_ERROR_TEXT, Claim, Row, TaskStore, owner_alive, owner_token, status_counts
from taskqueue.task import Task, TaskStatus

WAIT_S = 30  # hang guard only
HOST = socket.gethostname()


def make_task(n: int) -> Task:
    return Task(id=f"t{n}", image_key=f"src/o{n}.txt", variant="gzip")


def raw(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(path, isolation_level=None, timeout=WAIT_S)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def set_row(path: Path, row_id: int, **columns) -> None:
    """Craft a row's state directly (as another process would have left it)."""
    assignments = ", ".join(f"{name} = ?" for name in columns)
    raw(path, f"UPDATE tasks SET {assignments} WHERE id = ?", (*columns.values(), row_id))


@contextlib.contextmanager
def writer_blocked(path: Path) -> Iterator[None]:
    """Hold the database's write lock, so the store's writer cannot begin a transaction."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=WAIT_S)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("COMMIT")
        conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "tasks.db"


@pytest.fixture
def task_store(db: Path, fake_clock) -> Iterator[TaskStore]:
    """A TaskStore on a fresh file with the stepping clock; integrity-checked after close."""
    store = TaskStore(db, clock=fake_clock)
    yield store
    store.close()
    assert raw(db, "PRAGMA integrity_check") == [("ok",)]


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process of ours that has exited (and been reaped)."""
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait(WAIT_S)
        try:
            os.kill(proc.pid, 0)
        except ProcessLookupError:
            return proc.pid
    pytest.skip("could not find a pid that stays unused")


@pytest.fixture(scope="module")
def live_pid() -> Iterator[int]:
    """The pid of another live process on this host (it waits for its stdin to close)."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    yield proc.pid
    proc.stdin.close()
    proc.wait(WAIT_S)


def claim(store: TaskStore, n: int) -> Row:
    result = store.claim(make_task(n)).result(WAIT_S)
    assert result.new
    return result.row


# -- claims and transitions --------------------------------------------------------------------

def test_claim_inserts_a_queued_row_once_and_then_returns_the_existing_row(task_store, fake_clock):
    first = task_store.claim(make_task(1)).result(WAIT_S)
    assert isinstance(first, Claim) and first.new
    row = first.row
    assert (row.status, row.attempts, row.version, row.owner) == (TaskStatus.QUEUED, 0, 0, task_store.owner)
    assert row.created_at == row.updated_at == fake_clock.now
    assert row.task() == make_task(1)

    again = task_store.claim(Task(id="other-id", image_key="src/o1.txt", variant="gzip")).result(WAIT_S)
    assert again.new is False
    assert again.row == row  # the existing row, untouched (task_id too)
    assert len(task_store.rows()) == 1


def test_concurrent_claims_of_one_key_insert_exactly_once(task_store):
    clients = 32
    start = threading.Barrier(clients)
    claims: list[Claim] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        start.wait(WAIT_S)
        result = task_store.claim(Task(id=f"c{i}", image_key="src/same.txt", variant="gzip")).result(WAIT_S)
        with lock:
            claims.append(result)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert len(claims) == clients
    assert sum(c.new for c in claims) == 1
    assert len({c.row.id for c in claims}) == 1
    assert len(task_store.rows()) == 1


def test_transitions_bump_the_version_and_record_each_state(task_store, fake_clock):
    row = claim(task_store, 1)
    started = task_store.start(row.id, 0, 30.0).result(WAIT_S)
    assert (started.status, started.attempts, started.version) == (TaskStatus.RUNNING, 1, 1)
    assert started.lease_until == fake_clock.now + 30.0

    fake_clock.advance(1)
    version = task_store.fail(started.id, 1, InjectedTransientError("flaky"), fake_clock.now + 5).result(WAIT_S)
    assert version == 2
    failed = task_store.get(row.idempotency_key)
    assert (failed.status, failed.version, failed.error_class, failed.last_error) == \
        (TaskStatus.FAILED, 2, "InjectedTransientError", "flaky")
    assert failed.next_attempt_at == fake_clock.now + 5 and failed.lease_until is None

    again = task_store.start(row.id, 2, 30.0).result(WAIT_S)
    assert (again.status, again.attempts, again.version, again.next_attempt_at) == (TaskStatus.RUNNING, 2, 3, None)
    assert task_store.succeed(row.id, 3, "variants/gzip/src/o1.txt.gz", 42).result(WAIT_S) == 4
    done = task_store.get(row.idempotency_key)
    assert (done.status, done.version, done.output_key, done.output_bytes, done.attempts) == \
        (TaskStatus.SUCCESS, 4, "variants/gzip/src/o1.txt.gz", 42, 2)
    assert done.last_error is None and done.error_class is None


@pytest.mark.parametrize("stale", [
    pytest.param(lambda s, r: s.start(r.id, 0, 30.0), id="start-old-version"),
    pytest.param(lambda s, r: s.start(r.id, 7, 30.0), id="start-future-version"),
    pytest.param(lambda s, r: s.succeed(r.id, 0, "variants/x", 1), id="succeed-old-version"),
    pytest.param(lambda s, r: s.fail(r.id, 0, InjectedTransientError("x"), 0.0), id="fail-old-version"),
    pytest.param(lambda s, r: s.dead_letter(r.id, 0, InjectedTransientError("x")), id="dead-old-version"),
    pytest.param(lambda s, r: s.release(r.id, 1), id="release-running-row"),
])
def test_a_stale_transition_raises_stale_version_and_changes_nothing(task_store, db, stale):
    row = claim(task_store, 1)
    running = task_store.start(row.id, 0, 30.0).result(WAIT_S)
    before = raw(db, "SELECT * FROM tasks")
    with pytest.raises(StaleVersion) as info:
        stale(task_store, running).result(WAIT_S)
    assert info.value.args[0] == running  # the current row comes with the error
    assert raw(db, "SELECT * FROM tasks") == before
    assert raw(db, "SELECT COUNT(*) FROM dead_letters") == [(0,)]


def test_succeed_of_a_queued_row_is_stale(task_store):
    row = claim(task_store, 1)
    with pytest.raises(StaleVersion):
        task_store.succeed(row.id, 0, "variants/x", 1).result(WAIT_S)
    assert task_store.get(row.idempotency_key) == row


def test_dead_letter_moves_the_row_and_records_it_in_dead_letters(task_store, db, fake_clock):
    row = claim(task_store, 1)
    task_store.start(row.id, 0, 30.0).result(WAIT_S)
    assert task_store.dead_letter(row.id, 1, InjectedTransientError("gave up")).result(WAIT_S) == 2
    dead = task_store.get(row.idempotency_key)
    assert (dead.status, dead.error_class, dead.last_error) == (TaskStatus.DEAD, "InjectedTransientError", "gave up")
    assert raw(db, "SELECT idempotency_key, task_id, attempts, error_class, last_error, dead_at FROM dead_letters") \
        == [(row.idempotency_key, "t1", 1, "InjectedTransientError", "gave up", fake_clock.now)]


def test_error_text_is_bounded(task_store):
    row = claim(task_store, 1)
    task_store.start(row.id, 0, 30.0).result(WAIT_S)
    task_store.fail(row.id, 1, InjectedTransientError("x" * (MAX_ERROR_TEXT * 3)), 0.0).result(WAIT_S)
    stored = task_store.get(row.idempotency_key).last_error
    assert len(stored) == MAX_ERROR_TEXT and stored.endswith("...")


def test_release_deletes_only_a_queued_row_at_the_given_version(task_store, db):
    row = claim(task_store, 1)
    with pytest.raises(StaleVersion):
        task_store.release(row.id, 5).result(WAIT_S)
    assert task_store.get(row.idempotency_key) == row
    assert task_store.release(row.id, 0).result(WAIT_S) is None
    assert task_store.get(row.idempotency_key) is None
    with pytest.raises(StaleVersion):  # a row that is gone
        task_store.release(row.id, 0).result(WAIT_S)
    assert task_store.claim(make_task(1)).result(WAIT_S).new  # offerable again


def test_record_invalid_dead_letters_once(task_store, db):
    error = ValueError("field 'variant': bad")
    assert task_store.record_invalid("bad-1", "src/x.txt:nope#invalid-item-0", "{}", error).result(WAIT_S) is True
    assert task_store.record_invalid("bad-1", "src/x.txt:nope#invalid-item-0", "{}", error).result(WAIT_S) is False
    assert raw(db, "SELECT status, error_class FROM tasks") == [("dead", "ValueError")]
    assert raw(db, "SELECT COUNT(*) FROM dead_letters") == [(1,)]


# -- owners and recovery ---------------------------------------------------------------------------

def test_owner_alive(dead_pid, live_pid):
    me = owner_token()
    assert owner_alive(me, me) is True
    assert owner_alive(None, me) is False
    assert owner_alive("", me) is False
    assert owner_alive(f"{HOST}:{dead_pid}:abc", me) is False
    assert owner_alive(f"{HOST}:{live_pid}:abc", me) is True
    assert owner_alive(f"{HOST}:{os.getpid()}:another-nonce", me) is False  # an earlier incarnation
    assert owner_alive(f"not-{HOST}.example:{dead_pid}:abc", me) is True  # other hosts: the lease decides
    assert me.startswith(f"{HOST}:{os.getpid()}:")


def test_recover_adopts_rows_of_dead_owners_and_leaves_live_ones(task_store, db, fake_clock, dead_pid, live_pid):
    now = fake_clock.now
    dead, live, other_host = f"{HOST}:{dead_pid}:x", f"{HOST}:{live_pid}:y", f"elsewhere-{HOST}:1:z"
    states = {  # n: (status, owner, attempts, lease_until, next_attempt_at)
        1: ("queued", dead, 0, None, None),
        2: ("failed", dead, 1, None, now + 50),
        3: ("running", dead, 1, now + 1000, None),    # lease still valid, but its owner is gone
        4: ("running", dead, 3, now + 1000, None),    # last attempt never finished
        5: ("queued", live, 0, None, None),
        6: ("running", live, 1, now + 1000, None),    # live owner, lease valid: hands off
        7: ("running", live, 2, now - 1, None),       # live owner on this host: kept, lease or not
        8: ("running", live, 3, now - 1, None),       # (leases are not renewed; the pid says it lives)
        9: ("success", dead, 1, None, None),
        10: ("dead", dead, 3, None, None),
        11: ("queued", other_host, 0, None, None),
        12: ("queued", None, 0, None, None),          # redriven: no owner
        13: ("failed", live, 1, None, now + 50),
        14: ("running", other_host, 2, now - 1, None),  # another host, lease expired: taken back
        15: ("running", other_host, 3, now - 1, None),  # ... on its last attempt: dead
        16: ("running", other_host, 1, now + 1000, None),  # another host, lease valid: kept
    }
    ids = {}
    for n, (status, owner, attempts, lease, due) in states.items():
        row = claim(task_store, n)
        ids[n] = row.id
        set_row(db, row.id, status=status, owner=owner, attempts=attempts, lease_until=lease,
                next_attempt_at=due, version=10)
    before = {r.id: r for r in task_store.rows()}

    recovered = task_store.recover(max_attempts=3).result(WAIT_S)

    after = {r.id: r for r in task_store.rows()}
    runnable = {r.id: r for r in recovered.runnable}
    assert sorted(runnable) == sorted(ids[n] for n in (1, 2, 3, 12, 14))
    assert sorted(r.id for r in recovered.dead) == sorted(ids[n] for n in (4, 15))
    for n, status in ((1, "queued"), (2, "failed"), (3, "queued"), (12, "queued"), (14, "queued")):
        row = after[ids[n]]
        assert (row.status.value, row.owner, row.version, row.lease_until) == (status, task_store.owner, 11, None)
        assert runnable[ids[n]] == row
    assert after[ids[2]].next_attempt_at == now + 50  # a pending retry keeps its due time
    assert after[ids[3]].attempts == 1 and after[ids[14]].attempts == 2  # attempts were counted at claim
    for n in (4, 15):
        row = after[ids[n]]
        assert (row.status, row.error_class) == (TaskStatus.DEAD, "WorkerCrashed")
        assert row.attempts == 3
    assert sorted(raw(db, "SELECT idempotency_key, error_class, attempts FROM dead_letters")) == sorted(
        (make_task(n).idempotency_key, WorkerCrashed.__name__, 3) for n in (4, 15))
    for n in (5, 6, 7, 8, 9, 10, 11, 13, 16):
        assert after[ids[n]] == before[ids[n]], f"row {n} should be left alone"


def test_recover_on_an_empty_store_finds_nothing(task_store):
    recovered = task_store.recover(3).result(WAIT_S)
    assert recovered.runnable == [] and recovered.dead == []


def test_redrive_resets_attempts_and_removes_the_dead_letter(task_store, db):
    rows = [claim(task_store, n) for n in (1, 2, 3)]
    for row in rows:
        task_store.start(row.id, 0, 30.0).result(WAIT_S)
    for row in rows[:2]:
        task_store.dead_letter(row.id, 1, InjectedTransientError("x")).result(WAIT_S)
    keys = [r.idempotency_key for r in rows]

    assert task_store.redrive([keys[0], keys[2], "no:such"]).result(WAIT_S) == [keys[0]]
    row = task_store.get(keys[0])
    assert (row.status, row.attempts, row.owner, row.redrives, row.version) == (TaskStatus.QUEUED, 0, None, 1, 3)
    assert raw(db, "SELECT idempotency_key FROM dead_letters") == [(keys[1],)]
    assert task_store.get(keys[2]).status is TaskStatus.RUNNING  # not dead: untouched

    assert task_store.redrive().result(WAIT_S) == [keys[1]]  # all the dead ones
    assert raw(db, "SELECT COUNT(*) FROM dead_letters") == [(0,)]
    assert task_store.redrive().result(WAIT_S) == []
    # A redriven row has no owner, so start-up recovery adopts it.
    assert sorted(r.idempotency_key for r in task_store.recover(3).result(WAIT_S).runnable) == sorted(keys[:2])


# -- the group-commit writer -------------------------------------------------------------------

def test_operations_waiting_on_a_busy_database_share_commits(task_store, db):
    clients = 100
    futures: list = [None] * clients
    returned = {"n": 0}
    changed = threading.Condition()

    def submit(i: int) -> None:
        future = task_store.claim(make_task(i))
        with changed:
            futures[i] = future
            returned["n"] += 1
            changed.notify_all()

    batches, operations = task_store.batches, task_store.operations
    threads = [threading.Thread(target=submit, args=(i,)) for i in range(clients)]
    with writer_blocked(db):
        for t in threads:
            t.start()
        # Handing an operation over does not wait for its commit (at most one caller may be
        # committing in its own thread, blocked like the writer), and nothing can commit while
        # the lock is held.
        with changed:
            assert changed.wait_for(lambda: returned["n"] >= clients - 1, WAIT_S)
            assert not any(f.done() for f in futures if f is not None)
    for t in threads:
        t.join(WAIT_S)
    claims = [f.result(WAIT_S) for f in futures]
    assert all(c.new for c in claims)
    assert task_store.operations - operations == clients
    # The 100 operations went into a handful of transactions, not one each.
    assert task_store.batches - batches <= 3
    assert status_counts(str(db))["queued"] == clients


def test_operations_handed_over_together_commit_together(task_store, db):
    first = claim(task_store, 0)
    batches = task_store.batches
    with task_store.together():
        futures = [task_store.claim(make_task(n)) for n in range(1, 21)]
        started = task_store.start(first.id, 0, 30.0)
        helper = threading.Thread(target=task_store.flush)  # another thread's work is not held
        helper.start()
        helper.join(WAIT_S)
        assert not helper.is_alive()
        assert not any(f.done() for f in futures) and not started.done()
    assert all(f.result(WAIT_S).new for f in futures)
    assert started.result(WAIT_S).status is TaskStatus.RUNNING
    assert task_store.batches - batches == 2  # the helper's flush, then the 21 operations at once


def test_threads_hammering_the_store_get_fewer_commits_than_operations(task_store):
    clients, per_client = 16, 50
    start = threading.Barrier(clients)

    def client(i: int) -> None:
        start.wait(WAIT_S)
        for j in range(per_client):
            row = task_store.claim(make_task(i * per_client + j)).result(WAIT_S).row
            task_store.start(row.id, row.version, 30.0).result(WAIT_S)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert task_store.operations == 2 * clients * per_client
    assert 0 < task_store.batches <= task_store.operations
    counts = task_store.counts()
    assert counts["running"] == clients * per_client and sum(counts.values()) == clients * per_client


def test_a_failing_operation_does_not_sink_the_others_in_its_batch(task_store, db):
    anchor = claim(task_store, 0)
    batches = task_store.batches
    good, bad = [], []
    with task_store.together():  # one hand-off: one transaction
        for n in range(1, 21):
            good.append(task_store.claim(make_task(n)))
            bad.append(task_store.start(anchor.id, 99, 30.0))  # stale: fails inside the batch
        bad.append(task_store.release(12345, 0))  # no such row
    for f in bad:
        with pytest.raises(StaleVersion):
            f.result(WAIT_S)
    assert all(f.result(WAIT_S).new for f in good)
    assert task_store.batches - batches == 1
    assert raw(db, "SELECT COUNT(*) FROM tasks WHERE status = 'queued'") == [(21,)]
    assert task_store.get(anchor.idempotency_key) == anchor


def test_a_future_resolves_only_after_its_change_is_committed(task_store, db):
    # The callback runs as soon as the Future resolves and reads through a connection of its
    # own, which cannot see an uncommitted change.
    seen: list = []
    done = threading.Event()

    def look(future) -> None:
        seen.append(raw(db, "SELECT status, version FROM tasks WHERE id = ?", (row.id,)))
        done.set()

    row = claim(task_store, 1)
    for submit, expected in ((lambda: task_store.start(row.id, 0, 30.0), [("running", 1)]),
                             (lambda: task_store.succeed(row.id, 1, "variants/x.gz", 3), [("success", 2)])):
        seen.clear()
        done.clear()
        submit().add_done_callback(look)
        assert done.wait(WAIT_S)
        assert seen == [expected]


def test_close_commits_what_is_pending_and_refuses_new_work(db):
    store = TaskStore(db)
    futures = [store.claim(make_task(n)) for n in range(50)]
    store.close()
    assert all(f.done() and f.result().new for f in futures)
    assert raw(db, "SELECT COUNT(*) FROM tasks") == [(50,)]
    store.close()  # idempotent
    with pytest.raises(RuntimeError):
        store.claim(make_task(99))
    assert raw(db, "PRAGMA integrity_check") == [("ok",)]


def test_flush_waits_for_earlier_operations(task_store, db):
    futures = [task_store.claim(make_task(n)) for n in range(10)]
    task_store.flush()
    assert all(f.done() for f in futures)
    assert raw(db, "SELECT COUNT(*) FROM tasks") == [(10,)]


def test_database_is_in_wal_mode(task_store, db):
    assert raw(db, "PRAGMA journal_mode") == [("wal",)]


def test_a_directory_is_refused_as_database(tmp_path):
    with pytest.raises(IsADirectoryError):
        TaskStore(tmp_path)


def test_two_stores_on_one_file_keep_one_row_per_key(db):
    first, second = TaskStore(db), TaskStore(db)
    try:
        a = first.claim(make_task(1)).result(WAIT_S)
        b = second.claim(make_task(1)).result(WAIT_S)
        assert (a.new, b.new) == (True, False) and a.row == b.row
        # The second store cannot move a row it read at a version the first one then changed.
        first.start(a.row.id, 0, 30.0).result(WAIT_S)
        with pytest.raises(StaleVersion):
            second.start(b.row.id, 0, 30.0).result(WAIT_S)
    finally:
        first.close()
        second.close()
    assert raw(db, "SELECT status, attempts, version FROM tasks") == [("running", 1, 1)]
