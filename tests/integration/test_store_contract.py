"""The task-store contract (taskqueue.store.contract), run against every backend.

Rows are crafted behind the store's back through a connection of the
backend's own, as another process would leave them; liveness uses real
processes (one that lives, one that has exited).
"""

from __future__ import annotations

import socket
import threading

import pytest

from taskqueue.errors import InjectedTransientError, StaleVersion, StoreClosed, WorkerCrashed
from taskqueue.store import MAX_ERROR_TEXT, Attempt, Claim, Row
from taskqueue.store.owners import process_start
from taskqueue.task import Task, TaskStatus

from storebackends import WAIT_S, set_row

HOST = socket.gethostname()
MAX_ATTEMPTS = 3


def make_task(n: int) -> Task:
    return Task(id=f"t{n}", image_key=f"src/o{n}.txt", variant="gzip")


@pytest.fixture
def store(backend, fake_clock):
    """A store on the backend's fresh database, with the stepping clock and a 30 s lease."""
    return backend.make(clock=fake_clock, lease_s=30.0)






def claim(store, n: int) -> Row:
    result = store.commit(store.claim(make_task(n), MAX_ATTEMPTS))
    assert result.inserted and result.runnable
    return result.row


def start(store, row: Row) -> Attempt:
    return store.commit(store.start(row.id, row.version, row.attempts))


# -- claims and transitions --------------------------------------------------------------------

def test_claim_inserts_a_queued_leased_row_once_then_returns_the_existing_row(store, fake_clock):
    first = store.commit(store.claim(make_task(1), MAX_ATTEMPTS))
    assert isinstance(first, Claim) and first.inserted and first.runnable
    row = first.row
    assert (row.status, row.attempts, row.version, row.owner) == (TaskStatus.QUEUED, 0, 0, store.owner)
    assert row.created_at == row.updated_at == fake_clock.now and row.lease_until == fake_clock.now + 30.0
    assert row.task() == make_task(1)
    assert store.get(row.idempotency_key) == row  # what claim returned is what the database holds

    start(store, row)  # running under a live owner: a second offer finds it, takes nothing
    again = store.commit(store.claim(Task(id="other-id", image_key="src/o1.txt", variant="gzip"), MAX_ATTEMPTS))
    assert not again.inserted and not again.runnable
    assert again.row == store.get(row.idempotency_key) and again.row.task_id == "t1"  # untouched
    assert len(store.rows()) == 1


def test_concurrent_claims_of_one_key_insert_exactly_once(backend):
    stores = [backend.make() for _ in range(2)]  # two stores: two connections, as two processes
    clients = 32
    start_line = threading.Barrier(clients)
    claims: list[Claim] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        store = stores[i % 2]
        start_line.wait(WAIT_S)
        result = store.commit(store.claim(Task(id=f"c{i}", image_key="src/same.txt", variant="gzip"), 3))
        with lock:
            claims.append(result)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert len(claims) == clients
    assert sum(c.inserted for c in claims) == 1
    assert len({c.row.id for c in claims}) == 1
    assert len(stores[0].rows()) == 1


def test_transitions_bump_the_version_and_record_each_state(store, fake_clock):
    row = claim(store, 1)
    assert start(store, row) == Attempt(version=1, attempts=1)
    running = store.get(row.idempotency_key)
    assert (running.status, running.lease_until, running.owner) == (TaskStatus.RUNNING, fake_clock.now + 30.0,
                                                                    store.owner)

    fake_clock.advance(1)
    assert store.commit(store.fail(row.id, 1, InjectedTransientError("flaky"), fake_clock.now + 5)) == 2
    failed = store.get(row.idempotency_key)
    assert (failed.status, failed.version, failed.error_class, failed.last_error) == \
        (TaskStatus.FAILED, 2, "InjectedTransientError", "flaky")
    assert failed.next_attempt_at == fake_clock.now + 5
    assert failed.lease_until == fake_clock.now + 30.0  # a pending retry stays ours, under lease

    assert store.commit(store.start(row.id, 2, 1)) == Attempt(version=3, attempts=2)
    assert store.get(row.idempotency_key).next_attempt_at is None
    assert store.commit(store.succeed(row.id, 3, "variants/gzip/src/o1.txt.gz", 42)) == 4
    done = store.get(row.idempotency_key)
    assert (done.status, done.version, done.output_key, done.output_bytes, done.attempts) == \
        (TaskStatus.SUCCESS, 4, "variants/gzip/src/o1.txt.gz", 42, 2)
    assert done.last_error is None and done.error_class is None and done.lease_until is None


@pytest.mark.parametrize("stale", [
    pytest.param(lambda s, r: s.start(r.id, 0, 0), id="start-old-version"),
    pytest.param(lambda s, r: s.start(r.id, 7, 0), id="start-future-version"),
    pytest.param(lambda s, r: s.succeed(r.id, 0, "variants/x", 1), id="succeed-old-version"),
    pytest.param(lambda s, r: s.fail(r.id, 0, InjectedTransientError("x"), 0.0), id="fail-old-version"),
    pytest.param(lambda s, r: s.dead_letter(r.id, 0, InjectedTransientError("x")), id="dead-old-version"),
    pytest.param(lambda s, r: s.release(r.id, 1), id="release-running-row"),
    pytest.param(lambda s, r: s.let_go(r.id, 1), id="let-go-running-row"),
])
def test_a_stale_transition_raises_stale_version_and_changes_nothing(store, backend, stale):
    row = claim(store, 1)
    start(store, row)
    running = store.get(row.idempotency_key)
    before = backend.raw("SELECT * FROM tasks")
    with pytest.raises(StaleVersion) as info:
        store.commit(stale(store, running))
    assert info.value.args[0] == running  # the current row comes with the error
    assert backend.raw("SELECT * FROM tasks") == before
    assert backend.raw("SELECT COUNT(*) FROM dead_letters") == [(0,)]


def test_succeed_of_a_queued_row_is_stale(store):
    row = claim(store, 1)
    with pytest.raises(StaleVersion):
        store.commit(store.succeed(row.id, 0, "variants/x", 1))
    assert store.get(row.idempotency_key) == row


def test_dead_letter_moves_the_row_and_records_it_in_dead_letters(store, backend, fake_clock):
    row = claim(store, 1)
    start(store, row)
    assert store.commit(store.dead_letter(row.id, 1, InjectedTransientError("gave up"))) == 2
    dead = store.get(row.idempotency_key)
    assert (dead.status, dead.error_class, dead.last_error) == (TaskStatus.DEAD, "InjectedTransientError", "gave up")
    assert backend.raw("SELECT idempotency_key, task_id, attempts, error_class, last_error, dead_at"
                       " FROM dead_letters") == [(row.idempotency_key, "t1", 1, "InjectedTransientError", "gave up",
                                                  fake_clock.now)]
    assert [d["idempotency_key"] for d in store.dead_letters()] == [row.idempotency_key]


def test_error_text_is_bounded(store):
    row = claim(store, 1)
    start(store, row)
    store.commit(store.fail(row.id, 1, InjectedTransientError("x" * (MAX_ERROR_TEXT * 3)), 0.0))
    stored = store.get(row.idempotency_key).last_error
    assert len(stored) == MAX_ERROR_TEXT and stored.endswith("...")


def test_release_deletes_only_a_queued_row_at_the_given_version(store):
    row = claim(store, 1)
    with pytest.raises(StaleVersion):
        store.commit(store.release(row.id, 5))
    assert store.get(row.idempotency_key) == row
    assert store.commit(store.release(row.id, 0)) is None
    assert store.get(row.idempotency_key) is None
    with pytest.raises(StaleVersion):  # a row that is gone
        store.commit(store.release(row.id, 0))
    assert store.commit(store.claim(make_task(1), MAX_ATTEMPTS)).inserted  # offerable again


def test_record_invalid_dead_letters_once(store, backend):
    error = ValueError("field 'variant': bad")
    assert store.commit(store.record_invalid("bad-1", "src/x.txt:nope#invalid-item-0", "{}", error)) is True
    assert store.commit(store.record_invalid("bad-1", "src/x.txt:nope#invalid-item-0", "{}", error)) is False
    assert backend.raw("SELECT status, error_class FROM tasks") == [("dead", "ValueError")]
    assert backend.raw("SELECT COUNT(*) FROM dead_letters") == [(1,)]


def test_done_callbacks_hear_the_outcome_after_the_commit(store, backend):
    row = claim(store, 1)
    heard: list = []

    def done(result, error):  # reads through a connection of its own: sees only committed state
        heard.append((result, type(error).__name__ if error else None,
                      backend.raw("SELECT status FROM tasks WHERE id = ?", (row.id,))))

    started = store.commit(store.start(row.id, 0, 0), along=(store.release(row.id, 5, done=done),))
    assert started.version == 1
    store.commit(store.succeed(row.id, 1, "variants/x.gz", 3, done=done))
    assert heard == [(None, "StaleVersion", [("running",)]), (2, None, [("success",)])]  # stale release: reported


def test_reads_for_status_and_dlq(store):
    rows = [claim(store, n) for n in range(4)]
    start(store, rows[0])
    store.commit(store.succeed(rows[0].id, 1, "variants/x.gz", 3))
    start(store, rows[1])
    store.commit(store.dead_letter(rows[1].id, 1, InjectedTransientError("gone")))
    start(store, rows[2])
    store.commit(store.fail(rows[2].id, 1, InjectedTransientError("again"), 0.0))
    assert store.counts() == {"queued": 1, "running": 0, "success": 1, "failed": 1, "dead": 1}
    assert {f["idempotency_key"]: f["status"] for f in store.recent_failures()} == {
        rows[1].idempotency_key: "dead", rows[2].idempotency_key: "failed"}
    assert [d["error_class"] for d in store.dead_letters()] == ["InjectedTransientError"]
    assert [r.id for r in store.rows()] == [r.id for r in rows]


# -- owners, take-over and recovery -----------------------------------------------------------------

def test_claim_takes_over_an_open_row_nobody_runs(store, backend, fake_clock, dead_pid):
    """An offered key whose row a dead process left open is taken over in the same operation."""
    dead = f"{HOST}:{dead_pid}:-:gone"
    rows = {n: claim(store, n) for n in (1, 2, 3, 4)}
    set_row(backend, rows[1].id, owner=dead, status="queued", version=5)
    set_row(backend, rows[2].id, owner=dead, status="failed", attempts=1, next_attempt_at=fake_clock.now + 9,
            version=5)
    set_row(backend, rows[3].id, owner=dead, status="running", attempts=1, version=5)
    set_row(backend, rows[4].id, owner=dead, status="running", attempts=MAX_ATTEMPTS, version=5)
    taken = {n: store.commit(store.claim(make_task(n), MAX_ATTEMPTS)) for n in rows}
    for n, status in ((1, "queued"), (2, "failed"), (3, "queued")):
        assert taken[n].runnable and not taken[n].inserted
        assert (taken[n].row.status.value, taken[n].row.owner, taken[n].row.version) == (status, store.owner, 6)
        assert taken[n].row == store.get(taken[n].row.idempotency_key)
    assert taken[2].row.next_attempt_at == fake_clock.now + 9 and taken[3].row.attempts == 1
    assert not taken[4].runnable  # its last attempt died with its process: dead-lettered, not run again
    assert (taken[4].row.status, taken[4].row.error_class) == (TaskStatus.DEAD, WorkerCrashed.__name__)


def test_a_queued_row_of_our_own_that_is_not_in_flight_is_taken_back_but_a_running_one_is_not(store):
    """The engine offers a key only when it holds no work item for it: an open row of ours then is
    a cancelled task's (take it back); a running one is a worker's (leave it)."""
    claim(store, 1)
    running = claim(store, 2)
    start(store, running)
    again = store.commit(store.claim(make_task(1), MAX_ATTEMPTS))
    assert again.runnable and again.row.version == 1
    still = store.commit(store.claim(make_task(2), MAX_ATTEMPTS))
    assert not still.runnable and still.row.status is TaskStatus.RUNNING


def test_recover_takes_over_rows_of_dead_owners_and_expired_leases_and_leaves_live_ones(
        store, backend, fake_clock, dead_pid, live_pid):
    now = fake_clock.now
    dead, live, other_host = f"{HOST}:{dead_pid}:-:x", f"{HOST}:{live_pid}:-:y", f"elsewhere-{HOST}:1:-:z"
    reused = f"{HOST}:{live_pid}:{process_start(live_pid) or 'x'}0:w"  # the pid lives, another process has it
    states = {  # n: (status, owner, attempts, lease_until, next_attempt_at)
        1: ("queued", dead, 0, None, None),
        2: ("failed", dead, 1, None, now + 50),
        3: ("running", dead, 1, now + 1000, None),    # lease still valid, but its owner is gone
        4: ("running", dead, 3, now + 1000, None),    # last attempt never finished
        5: ("queued", live, 0, now + 1000, None),
        6: ("running", live, 1, now + 1000, None),    # live owner, lease valid: hands off
        7: ("running", live, 2, now - 1, None),       # live pid, but the lease ran out: its heartbeat
        8: ("running", live, 3, now - 1, None),       #   stopped (hung, or not the owner): taken
        9: ("success", dead, 1, None, None),
        10: ("dead", dead, 3, None, None),
        11: ("queued", other_host, 0, now + 1000, None),
        12: ("queued", None, 0, None, None),          # redriven: no owner
        13: ("failed", live, 1, None, now + 50),      # no lease recorded (an older version): the pid decides
        14: ("running", other_host, 2, now - 1, None),  # another host, lease expired: taken back
        15: ("running", other_host, 3, now - 1, None),  # ... on its last attempt: dead
        16: ("running", other_host, 1, now + 1000, None),  # another host, lease valid: kept
        17: ("running", reused, 1, now + 1000, None),  # a reused pid: not the owner, which is dead
    }
    ids = {}
    for n, (status, owner, attempts, lease, due) in states.items():
        row = claim(store, n)
        ids[n] = row.id
        set_row(backend, row.id, status=status, owner=owner, attempts=attempts, lease_until=lease,
                next_attempt_at=due, version=10)
    before = {r.id: r for r in store.rows()}

    recovered = store.commit(store.recover(max_attempts=3))

    after = {r.id: r for r in store.rows()}
    runnable = {r.id: r for r in recovered.runnable}
    assert sorted(runnable) == sorted(ids[n] for n in (1, 2, 3, 7, 12, 14, 17))
    assert sorted(r.id for r in recovered.dead) == sorted(ids[n] for n in (4, 8, 15))
    for n, status in ((1, "queued"), (2, "failed"), (3, "queued"), (7, "queued"), (12, "queued"),
                      (14, "queued"), (17, "queued")):
        row = after[ids[n]]
        assert (row.status.value, row.owner, row.version, row.lease_until) == (status, store.owner, 11, now + 30.0)
        assert runnable[ids[n]] == row
    assert after[ids[2]].next_attempt_at == now + 50  # a pending retry keeps its due time
    assert after[ids[3]].attempts == 1 and after[ids[14]].attempts == 2  # attempts were counted at start
    for n in (4, 8, 15):
        row = after[ids[n]]
        assert (row.status, row.error_class, row.attempts) == (TaskStatus.DEAD, "WorkerCrashed", 3)
    assert sorted(backend.raw("SELECT idempotency_key, error_class, attempts FROM dead_letters")) == sorted(
        (make_task(n).idempotency_key, WorkerCrashed.__name__, 3) for n in (4, 8, 15))
    for n in (5, 6, 9, 10, 11, 13, 16):
        assert after[ids[n]] == before[ids[n]], f"row {n} should be left alone"


def test_recover_skips_a_row_another_process_takes_between_its_scan_and_its_take_over(store, backend, dead_pid):
    """Recovery scans open rows, then takes each over with a version check: a row another worker
    claimed in between is skipped, and the rest are still taken (it does not fail the recovery)."""
    if backend.name != "postgres":
        pytest.skip("on SQLite the recovery holds the database's write lock: nobody can step in")
    rows = [claim(store, n) for n in range(3)]
    for row in rows:
        set_row(backend, row.id, owner=f"{HOST}:{dead_pid}:-:gone", version=4)
    real = store._take_over

    def take_over(conn, row, now, max_attempts):
        if row.id == rows[1].id:  # another worker gets there first, on its own connection
            backend.raw("UPDATE tasks SET owner = 'elsewhere:1:-:x', version = version + 1 WHERE id = ?", (row.id,))
        return real(conn, row, now, max_attempts)

    store._take_over = take_over
    recovered = store.commit(store.recover(MAX_ATTEMPTS))
    assert sorted(r.id for r in recovered.runnable) == [rows[0].id, rows[2].id]
    assert store.get(rows[1].idempotency_key).owner == "elsewhere:1:-:x"


def test_two_group_commits_claiming_the_same_keys_in_opposite_order_both_complete(backend, fake_clock):
    """PostgreSQL: each transaction waits for the other's uncommitted key (a deadlock). The op the
    server refuses runs again alone once its own transaction has committed: every claim resolves,
    each key runnable in exactly one store, none failed."""
    if backend.name != "postgres":
        pytest.skip("on SQLite one writer holds the database: two transactions never interleave")
    a, b = backend.make(clock=fake_clock), backend.make(clock=fake_clock)
    first_insert = {a: threading.Event(), b: threading.Event()}

    def paced(store, other):  # after its first insert, each waits until the other has made its own
        real = store._insert

        def insert(conn, values):
            row_id = real(conn, values)
            if not first_insert[store].is_set():
                first_insert[store].set()
                assert first_insert[other].wait(WAIT_S)
            return row_id
        store._insert = insert
    paced(a, b)
    paced(b, a)
    heard: dict = {a: {}, b: {}}

    def claims(store, numbers):
        ops = [store.claim(make_task(n), MAX_ATTEMPTS)._replace(
            done=lambda result, error, n=n: heard[store].__setitem__(n, error or result.runnable)) for n in numbers]
        store.commit(ops[-1], along=ops[:-1])

    threads = [threading.Thread(target=claims, args=(a, (1, 2))), threading.Thread(target=claims, args=(b, (2, 1)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert not any(thread.is_alive() for thread in threads)
    assert all(isinstance(outcome, bool) for store in (a, b) for outcome in heard[store].values()), heard
    assert sorted(heard[a]) == sorted(heard[b]) == [1, 2]
    assert [heard[a][n] + heard[b][n] for n in (1, 2)] == [1, 1]  # each key runnable in exactly one store


def test_a_lone_op_that_loses_a_deadlock_runs_again_on_its_own(backend):
    """PostgreSQL: a producer's enqueue batch (one op, its own transaction) against a run's group commit
    of claims taking the same keys in the other order: whichever loses the deadlock runs again once
    the other has committed; neither fails."""
    if backend.name != "postgres":
        pytest.skip("on SQLite one writer holds the database: two transactions never interleave")
    from polling import wait_until

    run, producer = backend.make(), backend.make()
    run_has_2, producer_has_1 = threading.Event(), threading.Event()
    real_insert, real_enqueue = run._insert, producer._enqueue

    def insert(conn, values):  # the run takes key 2, then waits until the producer holds key 1 and waits
        row_id = real_insert(conn, values)  # for key 2: the producer waits first, so it is the one refused
        if values[1] == make_task(2).idempotency_key and not run_has_2.is_set():
            run_has_2.set()
            assert producer_has_1.wait(WAIT_S)
            wait_until(lambda: backend.raw("SELECT count(*) FROM pg_locks WHERE NOT granted")[0][0] >= 1,
                       "the producer waiting for key 2")
        return row_id

    def enqueue(conn, items):  # the producer takes key 1 once the run holds key 2, then wants key 2
        if not producer_has_1.is_set():
            assert run_has_2.wait(WAIT_S)
            added = real_enqueue(conn, items[:1])
            producer_has_1.set()
            return added + real_enqueue(conn, items[1:])
        return real_enqueue(conn, items)
    run._insert, producer._enqueue = insert, enqueue
    outcomes: dict = {}

    def do(name, call):
        try:
            outcomes[name] = call()
        except Exception as exc:  # noqa: BLE001 - what the test looks at
            outcomes[name] = exc

    threads = [threading.Thread(target=do, args=("run", lambda: run.commit(run.claim(make_task(1), MAX_ATTEMPTS),
                                                                            along=[run.claim(make_task(2), MAX_ATTEMPTS)]))),
               threading.Thread(target=do, args=("enqueue", lambda: producer.commit(producer.enqueue(
                   [make_task(1), make_task(2)]))))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert not any(isinstance(outcome, Exception) for outcome in outcomes.values()), outcomes
    assert sorted(backend.raw("SELECT idempotency_key FROM tasks")) == [(make_task(n).idempotency_key,) for n in (1, 2)]


def test_producers_enqueue_one_batch_at_a_time(backend):
    """PostgreSQL: two enqueues of the same keys in another order would deadlock; each batch takes a
    transaction-level lock first, so a second producer waits for the first instead."""
    if backend.name != "postgres":
        pytest.skip("on SQLite one writer holds the database: batches never interleave")
    import psycopg
    from polling import wait_until

    from taskqueue.store.postgres import PG_SQL

    store = backend.make()
    with psycopg.connect(backend.url) as producer:  # another producer, its batch under way
        producer.execute(PG_SQL["serialise_enqueue"])
        added: list = []
        thread = threading.Thread(target=lambda: added.append(store.commit(store.enqueue([make_task(2),
                                                                                          make_task(1)]))))
        thread.start()
        wait_until(lambda: backend.raw("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                                       " AND NOT granted")[0][0] == 1, "the second batch waiting for the first")
        producer.execute("INSERT INTO tasks (task_id, idempotency_key, payload, status, created_at, updated_at)"
                         " VALUES ('t1', %s, '{}', 'queued', 0, 0)", (make_task(1).idempotency_key,))
        producer.commit()
    thread.join(WAIT_S)
    assert added == [[make_task(2).idempotency_key]]  # the first batch's key was there by then


def test_recover_on_an_empty_store_finds_nothing(store):
    recovered = store.commit(store.recover(3))
    assert recovered.runnable == [] and recovered.dead == []


def test_renew_extends_the_lease_of_our_open_rows_only(store, backend, fake_clock):
    ours = [claim(store, n) for n in range(3)]
    start(store, ours[1])
    store.commit(store.succeed(ours[1].id, 1, "variants/x.gz", 1))  # finished: no lease to renew
    other = claim(store, 9)
    set_row(backend, other.id, owner="elsewhere:1:-:z", lease_until=fake_clock.now + 5)
    fake_clock.advance(20)
    assert store.commit(store.renew()) == 2
    leases = {r.id: r.lease_until for r in store.rows()}
    assert leases == {ours[0].id: fake_clock.now + 30.0, ours[1].id: None, ours[2].id: fake_clock.now + 30.0,
                      other.id: fake_clock.now - 15}


def test_redrive_resets_attempts_and_removes_the_dead_letter(store, backend):
    rows = [claim(store, n) for n in (1, 2, 3)]
    for row in rows:
        start(store, row)
    for row in rows[:2]:
        store.commit(store.dead_letter(row.id, 1, InjectedTransientError("x")))
    keys = [r.idempotency_key for r in rows]

    assert store.commit(store.redrive([keys[0], keys[2], "no:such"])) == [keys[0]]
    row = store.get(keys[0])
    assert (row.status, row.attempts, row.owner, row.redrives, row.version) == (TaskStatus.QUEUED, 0, None, 1, 3)
    assert backend.raw("SELECT idempotency_key FROM dead_letters") == [(keys[1],)]
    assert store.get(keys[2]).status is TaskStatus.RUNNING  # not dead: untouched

    assert store.commit(store.redrive()) == [keys[1]]  # all the dead ones
    assert backend.raw("SELECT COUNT(*) FROM dead_letters") == [(0,)]
    assert store.commit(store.redrive()) == []
    # A redriven row has no owner, so recovery takes it over.
    taken = {r.idempotency_key: r for r in store.commit(store.recover(3)).runnable}
    assert sorted(taken) == sorted(keys[:2])
    # Its attempts start again from 0: the count the caller passes to start() is the one it read back,
    # and the new attempt is numbered from it, as the row stores it.
    again = taken[keys[0]]
    assert again.attempts == 0
    assert store.commit(store.start(again.id, again.version, again.attempts)) == Attempt(again.version + 1, 1)
    assert (store.get(keys[0]).attempts, store.get(keys[0]).version) == (1, again.version + 1)


# -- the scale-out operations (enqueue / worker) ----------------------------------------------------

def test_enqueue_adds_unowned_rows_once_and_claim_due_takes_them_in_order(store, backend, fake_clock):
    assert store.commit(store.enqueue([make_task(n) for n in range(5)])) == [make_task(n).idempotency_key
                                                                            for n in range(5)]
    assert store.commit(store.enqueue([make_task(0), make_task(5)])) == [make_task(5).idempotency_key]
    assert {r.owner for r in store.rows()} == {None}
    first = store.commit(store.claim_due(4, MAX_ATTEMPTS))
    assert [r.task_id for r in first.runnable] == ["t0", "t1", "t2", "t3"] and first.dead == []
    assert all(r.owner == store.owner and r.lease_until == fake_clock.now + 30.0 for r in first.runnable)
    second = store.commit(store.claim_due(4, MAX_ATTEMPTS))
    assert [r.task_id for r in second.runnable] == ["t4", "t5"]  # held rows are not handed out twice
    assert store.commit(store.claim_due(4, MAX_ATTEMPTS)).runnable == []


def test_claim_due_leaves_a_retry_until_it_is_due(store, backend, fake_clock):
    store.commit(store.enqueue([make_task(1)]))
    row = store.rows()[0]
    set_row(backend, row.id, status="failed", attempts=1, next_attempt_at=fake_clock.now + 10)
    assert store.commit(store.claim_due(5, MAX_ATTEMPTS)).runnable == []
    fake_clock.advance(10)
    assert [r.id for r in store.commit(store.claim_due(5, MAX_ATTEMPTS)).runnable] == [row.id]


def test_claim_due_takes_another_owners_expired_rows_but_never_its_own(store, backend, fake_clock):
    """A row of ours whose lease ran out may still be in this process's hands (a stalled
    heartbeat): only another process, or a restart under a new owner token, takes it over."""
    other = backend.make(clock=fake_clock, lease_s=30.0)
    store.commit(store.enqueue([make_task(n) for n in range(4)]))
    mine = store.commit(store.claim_due(2, MAX_ATTEMPTS)).runnable
    theirs = other.commit(other.claim_due(2, MAX_ATTEMPTS)).runnable
    start(store, mine[0])
    start(other, theirs[0])
    fake_clock.advance(31)  # every lease has run out
    again = store.commit(store.claim_due(10, MAX_ATTEMPTS)).runnable
    assert sorted(r.id for r in again) == sorted(r.id for r in theirs)
    taken = {r.id: r for r in again}
    assert (taken[theirs[0].id].status, taken[theirs[0].id].attempts) == (TaskStatus.QUEUED, 1)
    assert {r.id: r.owner for r in store.rows() if r.id in {m.id for m in mine}} == {m.id: store.owner for m in mine}


def test_claim_due_takes_over_at_once_the_rows_of_a_dead_process_of_this_host_whatever_their_lease(
        store, backend, fake_clock, dead_pid, live_pid):
    """Found by a review: a worker SIGKILLed mid-run left its rows to wait out their whole lease (5 min
    by default) before the other workers' feeders took them, though the README says "at once on the
    same host, where a dead pid is seen": only a start-up's recovery asked whether owners lived."""
    now = fake_clock.now
    dead, live, other_host = f"{HOST}:{dead_pid}:-:x", f"{HOST}:{live_pid}:-:y", f"elsewhere-{HOST}:1:-:z"
    states = {  # n: (status, owner, attempts, lease_until)
        1: ("running", dead, 1, now + 1000),   # its owner is gone: taken, the attempt stays counted
        2: ("queued", dead, 0, now + 1000),
        3: ("running", dead, 3, now + 1000),   # on its last attempt: dead-lettered
        4: ("running", live, 1, now + 1000),   # a live owner's: kept
        5: ("queued", other_host, 0, now + 1000),  # another host's, lease valid: kept
    }
    ids = {}
    for n, (status, owner, attempts, lease) in states.items():
        row = claim(store, n)
        ids[n] = row.id
        set_row(backend, row.id, status=status, owner=owner, attempts=attempts, lease_until=lease, version=10)
    found = store.commit(store.claim_due(10, max_attempts=3))
    assert sorted(r.id for r in found.runnable) == sorted(ids[n] for n in (1, 2))
    assert [r.id for r in found.dead] == [ids[3]]
    after = {r.id: r for r in store.rows()}
    assert (after[ids[1]].owner, after[ids[1]].status, after[ids[1]].attempts) == (store.owner, TaskStatus.QUEUED, 1)
    assert (after[ids[4]].owner, after[ids[5]].owner) == (live, other_host)


def test_wake_at_looks_again_soon_while_a_process_of_this_host_holds_a_lease_and_now_once_it_is_gone(
        store, backend, fake_clock, dead_pid, live_pid):
    """Found in review: on PostgreSQL a worker's feeder with a live listener sleeps until ``wake_at``,
    which was the end of the other workers' leases (5 min by default). A worker of this host killed
    meanwhile renews nothing and notifies nobody: its rows waited out their lease, though claim_due
    would have taken them at once. Another host's processes cannot be seen: their lease decides."""
    now = fake_clock.now
    other_host, live = f"elsewhere-{HOST}:1:-:z", f"{HOST}:{live_pid}:-:y"
    set_row(backend, claim(store, 1).id, owner=other_host, lease_until=now + 1001, version=10)
    assert store.wake_at(now, store.owner) == now + 1001  # when its lease runs out
    live_row = claim(store, 2)
    set_row(backend, live_row.id, owner=live, lease_until=now + 1002, version=10)
    assert store.wake_at(now, store.owner, recheck_s=2.5) == now + 2.5  # alive now: look again soon
    dead_row = claim(store, 3)
    set_row(backend, dead_row.id, status="running", owner=f"{HOST}:{dead_pid}:-:x", attempts=1,
            lease_until=now + 1000, version=10)
    assert store.wake_at(now, store.owner, recheck_s=2.5) == now  # gone: its rows may be taken now
    assert [r.id for r in store.commit(store.claim_due(10, MAX_ATTEMPTS)).runnable] == [dead_row.id]
    assert store.wake_at(now, store.owner, recheck_s=2.5) == now + 2.5  # taken: the live one's, again
    set_row(backend, live_row.id, status="success", owner=None, lease_until=None, version=11)
    assert store.wake_at(now, store.owner, recheck_s=2.5) == now + 1001  # nobody of this host holds one


def test_give_up_lets_any_process_take_the_row_over_counting_its_attempt(store, backend, fake_clock):
    other = backend.make(clock=fake_clock, lease_s=30.0)
    store.commit(store.enqueue([make_task(1)]))
    row = store.commit(store.claim_due(1, MAX_ATTEMPTS)).runnable[0]
    started = start(store, row)
    assert other.commit(other.give_up(row.id, started.version)) == 0  # not theirs to give up
    assert store.commit(store.give_up(row.id, started.version - 1)) == 0  # another version: taken over since
    assert store.commit(store.give_up(row.id, started.version)) == 1
    fake_clock.advance(0.001)
    taken = other.commit(other.claim_due(5, MAX_ATTEMPTS)).runnable
    assert [(r.id, r.owner, r.status, r.attempts) for r in taken] == [(row.id, other.owner, TaskStatus.QUEUED, 1)]


def test_let_go_hands_back_one_waiting_row_at_its_version_and_keeps_its_retry_time(store, backend, fake_clock):
    other = backend.make(clock=fake_clock, lease_s=30.0)
    store.commit(store.enqueue([make_task(n) for n in range(2)]))
    queued, retrying = store.commit(store.claim_due(2, MAX_ATTEMPTS)).runnable
    started = start(store, retrying)
    failed = store.commit(store.fail(retrying.id, started.version, InjectedTransientError("x"), fake_clock.now + 5))
    with pytest.raises(StaleVersion):  # another version: changes nothing
        store.commit(store.let_go(queued.id, queued.version + 1))
    with pytest.raises(StaleVersion):  # not theirs to let go of
        other.commit(other.let_go(queued.id, queued.version))
    assert store.commit(store.let_go(queued.id, queued.version)) is None
    assert store.commit(store.let_go(retrying.id, failed)) is None
    after = {r.id: r for r in store.rows()}
    assert [(after[r.id].status, after[r.id].owner, after[r.id].lease_until, after[r.id].version)
            for r in (queued, retrying)] == [(TaskStatus.QUEUED, None, None, queued.version + 1),
                                             (TaskStatus.FAILED, None, None, failed + 1)]
    assert after[retrying.id].next_attempt_at == fake_clock.now + 5  # its backoff still holds
    # Nobody holds them: another process takes the queued one at once, the retry when it is due.
    assert [r.id for r in other.commit(other.claim_due(5, MAX_ATTEMPTS)).runnable] == [queued.id]
    fake_clock.advance(5)
    assert [(r.id, r.attempts) for r in other.commit(other.claim_due(5, MAX_ATTEMPTS)).runnable] == [
        (retrying.id, 1)]


def test_disown_hands_back_waiting_rows_and_keeps_running_ones(store, backend, fake_clock):
    other = backend.make(clock=fake_clock, lease_s=30.0)
    store.commit(store.enqueue([make_task(n) for n in range(3)]))
    held = store.commit(store.claim_due(3, MAX_ATTEMPTS)).runnable
    start(store, held[0])
    assert store.commit(store.disown()) == 2
    assert sorted(r.id for r in other.commit(other.claim_due(5, MAX_ATTEMPTS)).runnable) == sorted(
        r.id for r in held[1:])
    assert store.get(held[0].idempotency_key).owner == store.owner


# -- committing ----------------------------------------------------------------------------------------

def test_ops_handed_over_together_commit_in_one_transaction(store):
    first = claim(store, 0)
    commits = store.committer.commits
    results: list = []
    along = [store.claim(make_task(n), MAX_ATTEMPTS)._replace(done=lambda r, e: results.append((r, e)))
             for n in range(1, 21)]
    started = store.commit(store.start(first.id, 0, 0), along=along)
    assert started.attempts == 1
    assert store.committer.commits - commits == 1
    assert len(results) == 20 and all(r.inserted and e is None for r, e in results)


def test_a_failing_op_does_not_sink_the_others_committed_with_it(store, backend):
    anchor = claim(store, 0)
    outcomes: list = []
    along = []
    for n in range(1, 21):
        along.append(store.claim(make_task(n), MAX_ATTEMPTS)._replace(done=lambda r, e: outcomes.append(e)))
        along.append(store.start(anchor.id, 99, 0)._replace(done=lambda r, e: outcomes.append(e)))  # stale
    with pytest.raises(StaleVersion):
        store.commit(store.release(12345, 0), along=along)  # no such row
    assert sum(e is None for e in outcomes) == 20
    assert sum(isinstance(e, StaleVersion) for e in outcomes) == 20
    assert backend.raw("SELECT COUNT(*) FROM tasks WHERE status = 'queued'") == [(21,)]
    assert store.get(anchor.idempotency_key) == anchor


def test_post_returns_at_once_and_flush_waits_for_what_was_posted(store, backend):
    heard = threading.Event()
    store.post(*[store.claim(make_task(n), MAX_ATTEMPTS) for n in range(9)],
               store.claim(make_task(9), MAX_ATTEMPTS)._replace(done=lambda r, e: heard.set()))
    store.flush()
    assert heard.is_set()
    assert backend.raw("SELECT COUNT(*) FROM tasks") == [(10,)]


def test_close_commits_what_is_pending_and_refuses_new_work(backend):
    store = backend.make()
    done = threading.Event()
    store.post(*[store.claim(make_task(n), MAX_ATTEMPTS) for n in range(49)],
               store.claim(make_task(49), MAX_ATTEMPTS)._replace(done=lambda r, e: done.set()))
    store.close()
    assert done.is_set()
    assert backend.raw("SELECT COUNT(*) FROM tasks") == [(50,)]
    store.close()  # idempotent
    with pytest.raises(StoreClosed):
        store.commit(store.claim(make_task(99), MAX_ATTEMPTS))
    with pytest.raises(StoreClosed):
        store.post(store.claim(make_task(99), MAX_ATTEMPTS))
    store.flush()  # nothing pending: returns


def test_two_stores_on_one_database_keep_one_row_per_key(backend):
    first, second = backend.make(), backend.make()
    a = first.commit(first.claim(make_task(1), 3))
    start(first, a.row)  # running under a live owner: the second store must leave it
    b = second.commit(second.claim(make_task(1), 3))
    assert (a.inserted, b.inserted, b.runnable) == (True, False, False) and a.row.id == b.row.id
    # The second store cannot move a row it read at a version the first one then changed.
    with pytest.raises(StaleVersion):
        second.commit(second.start(a.row.id, 0, 0))
    assert backend.raw("SELECT status, attempts, version FROM tasks") == [("running", 1, 1)]


def test_an_op_the_database_rejects_does_not_abort_the_transaction_it_shares(store, backend):
    """On PostgreSQL any error aborts the whole transaction: each op of a shared batch runs under
    its own savepoint, so a neighbour's database error neither loses nor fails the others."""
    from taskqueue.store import Op

    outcomes: list = []
    along = [store.claim(make_task(n), MAX_ATTEMPTS)._replace(done=lambda r, e: outcomes.append(e))
             for n in range(1, 6)]
    bad = Op(lambda conn: conn.execute("SELECT no_such_column FROM tasks").fetchall())
    with pytest.raises(Exception) as raised:
        store.commit(bad, along=along)
    assert "no_such_column" in str(raised.value)
    assert outcomes == [None] * 5
    assert backend.raw("SELECT COUNT(*) FROM tasks") == [(5,)]
    assert store.commit(store.claim(make_task(9), MAX_ATTEMPTS)).inserted  # the connection is still good
