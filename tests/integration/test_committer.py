"""The committer: group commit, direct commit when idle, savepoints, and what happens when things break.

The writer is held back deterministically by taking the database's write
lock from another connection (``writer_blocked``): while it is held no
transaction can begin, so a test knows which operations share a commit and
that none has committed yet. Faults of the connection itself (a COMMIT or a
ROLLBACK that fails) are injected with a thin wrapper around a real one.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Iterator

import pytest

from taskqueue.errors import StoreBroken, StoreClosed
from taskqueue.store import Op, SQLiteStore
from taskqueue.store.committer import Committer
from taskqueue.store.sqlite import begin_immediate, connect
from taskqueue.task import Task

WAIT_S = 30  # hang guard only


def make_task(n: int) -> Task:
    return Task(id=f"t{n}", image_key=f"src/o{n}.txt", variant="gzip")


def raw(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(path, isolation_level=None, timeout=WAIT_S)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@contextlib.contextmanager
def writer_blocked(path: Path) -> Iterator[None]:
    """Hold the database's write lock, so no other connection can begin a transaction."""
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
def store(db: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(db)
    yield s
    s.close()
    assert raw(db, "PRAGMA integrity_check") == [("ok",)]


class CountingQueue:
    """The committer's hand-over queue, announcing each hand-over (test instrumentation)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.puts = 0
        self.changed = threading.Condition()

    def put(self, item) -> None:
        self.inner.put(item)
        with self.changed:
            self.puts += 1
            self.changed.notify_all()

    def wait_for_puts(self, n: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.puts >= n, WAIT_S)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@contextlib.contextmanager
def holding_the_writer(store: SQLiteStore) -> Iterator[None]:
    """Hold the store's writer inside an op of its own, after its drain, until the block ends: what
    is handed over meanwhile waits for its next drain."""
    running, gate = threading.Event(), threading.Event()

    def held(_conn) -> None:
        running.set()
        assert gate.wait(WAIT_S)

    store.post(Op(held))
    assert running.wait(WAIT_S)
    try:
        yield
    finally:
        gate.set()


def test_operations_waiting_on_a_busy_database_share_commits(store, db):
    clients = 100
    claims: list = [None] * clients
    queued = store.committer._queued = CountingQueue(store.committer._queued)

    def client(i: int) -> None:
        claims[i] = store.commit(store.claim(make_task(i), 3))

    commits, operations = store.committer.commits, store.committer.operations
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    with writer_blocked(db):
        for t in threads:
            t.start()
        # At most one caller found the connection idle (it is blocked in its INSERT now, holding the
        # connection); every other one handed its claim over. Nothing can commit meanwhile.
        queued.wait_for_puts(clients - 1)
        assert raw(db, "SELECT COUNT(*) FROM tasks") == [(0,)]
    for t in threads:
        t.join(WAIT_S)
    assert all(c.inserted for c in claims)
    assert store.committer.operations - operations == clients
    # Whoever found the connection idle commits alone; everyone who queued meanwhile shares the
    # writer's next transaction: a handful of commits for 100 operations, never one each.
    assert store.committer.commits - commits <= 3
    assert store.counts()["queued"] == clients


def test_a_single_atomic_op_commits_on_its_own_without_a_transaction_around_it(store):
    commits = store.committer.commits
    store.commit(store.claim(make_task(1), 3))
    assert store.committer.commits - commits == 1


def test_a_done_callback_that_commits_more_work_runs_it_at_once(store):
    """A Future's done-callback may submit a task: committing from the committing thread must not
    wait behind itself."""
    nested: list = []

    def done(_result, _error):
        nested.append(store.commit(store.claim(make_task(2), 3)))

    store.post(store.claim(make_task(1), 3)._replace(done=done))
    store.flush()
    assert len(nested) == 1 and nested[0].inserted


def test_a_callback_that_raises_is_logged_and_the_others_are_still_told(store, caplog):
    told = []

    def broken(_result, _error):
        raise RuntimeError("bug in a callback")

    store.commit(store.claim(make_task(3), 3), along=(store.claim(make_task(1), 3)._replace(done=broken),
                                                     store.claim(make_task(2), 3)._replace(
                                                         done=lambda r, e: told.append(r))))
    assert len(told) == 1 and told[0].inserted
    assert any(r.getMessage() == "store callback failed" for r in caplog.records)
    assert store.commit(store.claim(make_task(4), 3)).inserted  # the committer still serves


def test_a_callback_that_raises_system_exit_in_the_writer_neither_kills_it_nor_skips_the_others(store, caplog):
    """Before: the writer thread died with it, and every later commit waited forever."""
    told = []

    def leaving(_result, _error):
        raise SystemExit("a done callback that exits")

    store.post(store.claim(make_task(1), 3)._replace(done=leaving),
               store.claim(make_task(2), 3)._replace(done=lambda r, e: told.append(r)))
    flushed = threading.Thread(target=store.flush, daemon=True)
    flushed.start()
    flushed.join(WAIT_S)  # hang guard only: the flush returns as soon as the writer has delivered
    assert not flushed.is_alive()
    assert len(told) == 1 and told[0].inserted
    assert any(r.getMessage() == "store callback failed" for r in caplog.records)
    assert store.committer._writer.is_alive()
    assert store.commit(store.claim(make_task(3), 3)).inserted  # the committer still serves


def test_a_keyboard_interrupt_from_a_callback_reaches_the_main_thread_after_every_result_is_out(store):
    """In a direct commit the callbacks run in the caller's thread: in the main thread (where a
    Ctrl-C lands) the interrupt is raised again once the other ops have been told."""
    told = []

    def interrupted(_result, _error):
        raise KeyboardInterrupt

    assert store.committer._pending == 0  # nothing handed over: this commit runs here, in the main thread
    with pytest.raises(KeyboardInterrupt):
        store.commit(store.claim(make_task(3), 3), along=(
            store.claim(make_task(1), 3)._replace(done=interrupted),
            store.claim(make_task(2), 3)._replace(done=lambda r, e: told.append(r))))
    assert len(told) == 1 and told[0].inserted
    assert store.commit(store.claim(make_task(4), 3)).inserted


def test_an_interrupt_in_a_delivery_nested_in_a_callback_is_raised_once_by_the_outermost(store):
    """A callback that commits more work delivers that work's results inside its own delivery: an
    interrupt there must not cut the outer callback short, nor skip the callbacks after it."""
    told = []

    def interrupted(_result, _error):
        raise KeyboardInterrupt

    def commits_more(_result, _error):
        told.append("first")
        store.commit(store.claim(make_task(5), 3), along=(store.claim(make_task(4), 3)._replace(done=interrupted),))
        told.append("first, after its nested commit")

    assert store.committer._pending == 0
    with pytest.raises(KeyboardInterrupt):
        store.commit(store.claim(make_task(3), 3), along=(
            store.claim(make_task(1), 3)._replace(done=commits_more),
            store.claim(make_task(2), 3)._replace(done=lambda r, e: told.append("second"))))
    assert told == ["first", "first, after its nested commit", "second"]
    assert store.committer._local.interrupted is None  # raised, not left for the next delivery
    assert store.commit(store.claim(make_task(6), 3)).inserted


def test_a_system_exit_from_a_callback_in_another_thread_is_logged_and_that_thread_goes_on(store, caplog):
    """A worker committing its start runs the previous outcome's callbacks in its own thread: an
    exit raised by a client's callback there is not the worker's to act on."""
    told, outcome = [], []

    def leaving(_result, _error):
        raise SystemExit("a done callback that exits")

    def commit_in_a_thread():
        outcome.append(store.commit(store.claim(make_task(3), 3), along=(
            store.claim(make_task(1), 3)._replace(done=leaving),
            store.claim(make_task(2), 3)._replace(done=lambda r, e: told.append(r)))))

    thread = threading.Thread(target=commit_in_a_thread)
    thread.start()
    thread.join(WAIT_S)
    assert not thread.is_alive() and len(outcome) == 1 and outcome[0].inserted
    assert len(told) == 1 and told[0].inserted
    assert any(r.getMessage() == "store callback failed" for r in caplog.records)


def test_a_multi_statement_op_that_fails_rolls_back_its_own_statements_only(store, db):
    def half_done(conn):
        conn.execute("INSERT INTO dead_letters VALUES ('k', 't', '{}', 1, 'E', 'm', 0, 0)")
        raise ValueError("second statement failed")

    claimed: list = []
    with pytest.raises(ValueError):
        store.commit(Op(half_done, atomic=False),
                     along=(store.claim(make_task(1), 3)._replace(done=lambda r, e: claimed.append(r)),))
    assert raw(db, "SELECT COUNT(*) FROM dead_letters") == [(0,)]  # its first statement was rolled back
    assert raw(db, "SELECT COUNT(*) FROM tasks") == [(1,)] and claimed[0].inserted  # its neighbour committed


def test_recover_is_atomic_a_failure_halfway_takes_over_nothing(store, db):
    """Recovery takes over several rows in one operation: if one fails, none is taken (else the
    rows already taken would belong to this process and never be scheduled)."""
    other = SQLiteStore(db)
    rows = [other.commit(other.claim(make_task(n), 3)).row for n in range(3)]
    other.close()  # its owner token is no longer open here: its rows are orphans
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TRIGGER fail_third BEFORE UPDATE OF owner ON tasks WHEN OLD.id = ?"
                 " BEGIN SELECT RAISE(ABORT, 'injected failure'); END".replace("?", str(rows[2].id)))
    conn.close()
    with pytest.raises(sqlite3.IntegrityError, match="injected failure"):
        store.commit(store.recover(3))
    assert {owner for (owner,) in raw(db, "SELECT owner FROM tasks")} == {other.owner}
    raw(db, "DROP TRIGGER fail_third")
    assert len(store.commit(store.recover(3)).runnable) == 3


class FaultyConnection:
    """A real connection whose COMMIT and ROLLBACK fail on demand (fault injection)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.fail = set()

    def execute(self, sql: str, *args):
        if sql in self.fail:
            raise sqlite3.OperationalError(f"{sql} failed (injected)")
        return self.conn.execute(sql, *args)

    def close(self) -> None:
        self.conn.close()


def _insert(conn, value: int) -> int:
    conn.execute("INSERT INTO t VALUES (?)", (value,))
    return value


@pytest.fixture
def faulty(db) -> Iterator[tuple[Committer, FaultyConnection]]:
    conn = connect(str(db), busy_timeout_ms=1000, check_same_thread=False)
    conn.execute("CREATE TABLE t (v INTEGER)")
    wrapped = FaultyConnection(conn)
    committer = Committer(wrapped, begin=begin_immediate)
    yield committer, wrapped
    committer.close()


def test_a_failed_commit_fails_every_op_of_its_batch_and_the_next_batch_commits(faulty, db):
    committer, conn = faulty
    conn.fail = {"COMMIT"}
    with pytest.raises(sqlite3.OperationalError, match="COMMIT failed"):
        committer.commit(Op(_insert, (1,)), along=(Op(_insert, (2,)),))
    conn.fail = set()
    assert committer.commit(Op(_insert, (3,)), along=(Op(_insert, (4,)),)) == 3
    assert raw(db, "SELECT v FROM t ORDER BY v") == [(3,), (4,)]


def test_a_rollback_that_fails_breaks_the_committer_loudly_and_nothing_waits_forever(faulty, caplog):
    committer, conn = faulty
    conn.fail = {"COMMIT", "ROLLBACK"}
    with pytest.raises(sqlite3.OperationalError, match="COMMIT failed"):
        committer.commit(Op(_insert, (1,)), along=(Op(_insert, (2,)),))
    assert any(r.getMessage() == "task store connection broken" for r in caplog.records)
    conn.fail = set()
    with pytest.raises(StoreBroken):  # the connection's state is unknown: refuse, do not guess
        committer.commit(Op(_insert, (3,)))
    told = threading.Event()
    errors: list = []
    committer.post(Op(_insert, (4,), done=lambda r, e: (errors.append(e), told.set())))
    assert told.wait(WAIT_S)  # the writer thread is alive and answers
    assert isinstance(errors[0], StoreBroken)


def test_a_commit_from_a_done_callback_that_races_close_is_refused_as_closed(db):
    """The callback's commit passed the closed check, then waited for the connection while close()
    took it and closed it: it must be refused with StoreClosed, not run on a closed connection."""
    store = SQLiteStore(db)
    committer = store.committer
    real = committer._conn_lock
    at_acquire, closed = threading.Event(), threading.Event()

    class Paced:  # the real lock; only the callback thread's blocking acquire waits for close()
        def acquire(self, blocking=True, timeout=-1):
            if blocking and threading.current_thread().name == "callback-thread":
                at_acquire.set()
                assert closed.wait(WAIT_S)
            return real.acquire(blocking, timeout)

        def release(self):
            real.release()

        def __enter__(self):
            return real.__enter__()

        def __exit__(self, *exc_info):
            return real.__exit__(*exc_info)
    committer._conn_lock = Paced()
    heard = []

    def callback(_result, _error):  # commits more work from a done callback, in the committing thread
        try:
            heard.append(store.commit(store.enqueue([make_task(2)])))
        except Exception as exc:  # noqa: BLE001 - what the test looks at
            heard.append(exc)

    thread = threading.Thread(target=lambda: store.commit(store.enqueue([make_task(1)])._replace(done=callback)),
                              name="callback-thread")
    thread.start()
    assert at_acquire.wait(WAIT_S)
    store.close()
    closed.set()
    thread.join(WAIT_S)
    assert not thread.is_alive() and len(heard) == 1 and isinstance(heard[0], StoreClosed), heard
    assert raw(db, "SELECT task_id FROM tasks") == [("t1",)]


def test_posts_racing_close_are_each_committed_or_refused_never_lost(db):
    for _ in range(20):
        store = SQLiteStore(db)
        posters = 8
        line = threading.Barrier(posters + 1)
        outcomes: list = []
        lock = threading.Lock()

        def poster(i: int) -> None:
            line.wait(WAIT_S)
            for j in range(20):
                try:
                    store.post(store.renew(done=lambda r, e: _note(lock, outcomes, "done")))
                except StoreClosed:
                    _note(lock, outcomes, "refused")

        threads = [threading.Thread(target=poster, args=(i,)) for i in range(posters)]
        for t in threads:
            t.start()
        line.wait(WAIT_S)
        store.close()
        for t in threads:
            t.join(WAIT_S)
        assert len(outcomes) == posters * 20  # every post heard back or refused; none hangs unanswered


def _note(lock: threading.Lock, outcomes: list, what: str) -> None:
    with lock:
        outcomes.append(what)


# -- lingering: a writer woken for a lone hand-over may wait for company ------------------------------

def test_a_lingering_writer_commits_what_arrives_meanwhile_with_the_hand_over_it_woke_for(store):
    """With tasks some milliseconds long a writer woken for every hand-over commits two or three ops
    at a time; lingering (while the queue owning the store is loaded) lets the next ones share it."""
    lingering, posted, both_done = threading.Event(), threading.Event(), threading.Event()
    calls, results = [], []

    def linger() -> float:
        calls.append(threading.current_thread().name)
        lingering.set()
        assert posted.wait(WAIT_S)  # hang guard only: the test posts at once
        return 0.001

    def done(result, error) -> None:
        results.append((result, error))
        if len(results) == 2:
            both_done.set()

    store.committer.linger = linger
    commits = store.committer.commits
    store.post(store.claim(make_task(1), 3)._replace(done=done))
    assert lingering.wait(WAIT_S)  # the writer holds the first hand-over, and waits
    store.post(store.claim(make_task(2), 3)._replace(done=done))
    posted.set()
    assert both_done.wait(WAIT_S)
    assert [error for _result, error in results] == [None, None]
    assert calls == ["tq-store-writer"]  # consulted once, in the writer, for the lone hand-over
    assert store.committer.commits - commits == 1  # both in one transaction
    assert store.counts()["queued"] == 2


def test_a_writer_that_finds_more_waiting_commits_at_once_without_lingering(store):
    """Only a lone hand-over waits: a writer that already has company (a busy queue at zero task
    length, where the writer is the bottleneck) must never idle."""
    second_done = threading.Event()
    calls = []
    store.committer.linger = lambda: calls.append("linger") or 0.0
    with holding_the_writer(store):  # what is posted now waits for the next drain, together
        store.post(store.claim(make_task(1), 3))
        store.post(store.claim(make_task(2), 3)._replace(done=lambda _r, _e: second_done.set()))
    assert second_done.wait(WAIT_S)
    assert calls == ["linger"]  # for the lone first hand-over only: the next one found another behind it
    assert store.counts()["queued"] == 2


def test_a_linger_that_raises_is_logged_and_the_writer_commits_at_once(store, caplog):
    def broken() -> float:
        raise RuntimeError("bug in a linger")

    store.committer.linger = broken
    done = threading.Event()
    store.post(store.claim(make_task(1), 3)._replace(done=lambda _r, _e: done.set()))
    assert done.wait(WAIT_S)
    assert any(r.getMessage() == "commit linger failed" for r in caplog.records)
    assert store.committer._writer.is_alive()
    assert store.commit(store.claim(make_task(2), 3)).inserted  # the committer still serves


def test_an_urgent_commit_ends_a_linger_under_way(store):
    """Found in review: on PostgreSQL (no start ledger) every worker waits for its start's commit, and
    a lingering writer held each one up to the whole linger. A worker's start is committed as urgent."""
    lingering = threading.Event()
    calls = []

    def linger() -> float:
        calls.append("linger")
        lingering.set()
        return 3600.0 if len(calls) == 1 else 0.0  # only the urgent commit can end the first one in time

    queued = store.committer._queued = CountingQueue(store.committer._queued)
    store.committer.linger = linger
    commits = store.committer.commits
    store.post(store.claim(make_task(1), 3))
    assert lingering.wait(WAIT_S)
    claims: list = []
    waiting = threading.Thread(target=lambda: claims.append(store.commit(store.claim(make_task(2), 3), urgent=True)))
    waiting.start()
    waiting.join(WAIT_S)  # hang guard only: were it not urgent, the writer would sleep for an hour
    assert not waiting.is_alive() and claims[0].inserted
    assert queued.puts == 2  # handed over behind the lingering writer, not committed directly
    assert store.committer.commits - commits == 1  # the lingering hand-over and the urgent one, together
    assert calls == ["linger"]


def test_the_writer_never_lingers_for_an_urgent_call_it_woke_for(store):
    """An urgent call that arrives alone, while the writer is busy, is committed as soon as the writer
    is free: it is not the company a linger waits for."""
    calls = []
    queued = store.committer._queued = CountingQueue(store.committer._queued)
    claims: list = []
    waiting = threading.Thread(target=lambda: claims.append(store.commit(store.claim(make_task(1), 3), urgent=True)))
    with holding_the_writer(store):  # what is handed over now comes next, alone
        store.committer.linger = lambda: calls.append("linger") or 3600.0
        waiting.start()
        queued.wait_for_puts(2)  # queued behind the busy writer
    waiting.join(WAIT_S)  # hang guard only: a writer lingering for it would sleep for an hour
    assert not waiting.is_alive() and claims[0].inserted
    assert calls == []


def test_an_urgent_call_already_committed_does_not_cut_the_next_linger_short(store):
    """The urgent call that ends a linger (or finds none under way) must not end the next one too."""
    lingering = threading.Event()
    pause = [0.0]

    def linger() -> float:
        if pause[0]:
            lingering.set()
        return pause[0]

    store.committer.linger = linger
    queued = store.committer._queued = CountingQueue(store.committer._queued)
    waiting = threading.Thread(target=lambda: store.commit(store.claim(make_task(1), 3), urgent=True))
    with holding_the_writer(store):
        waiting.start()
        queued.wait_for_puts(2)  # an urgent call behind the busy writer, none lingering
    waiting.join(WAIT_S)
    assert not waiting.is_alive()
    pause[0] = 3600.0
    commits = store.committer.commits
    store.post(store.claim(make_task(2), 3))
    assert lingering.wait(WAIT_S)  # a lone hand-over: the writer lingers for company
    store.post(store.claim(make_task(3), 3))  # its company
    ending = threading.Thread(target=lambda: store.commit(store.claim(make_task(4), 3), urgent=True))
    ending.start()  # and the end of the linger
    ending.join(WAIT_S)  # hang guard only
    assert not ending.is_alive()
    assert store.committer.commits - commits == 1  # all three together: the linger ran until the urgent call
    assert store.counts()["queued"] == 4
