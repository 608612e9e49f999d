"""The start ledger (taskqueue.store.ledger): an attempt begun by a process that died before its
start was committed is still counted, and only that attempt.

The dying processes are real: a child opens the store (or a whole TaskQueue), begins an attempt
and is SIGKILLed before the start reaches the database -- held back by a writer stalled on purpose,
the one fault injected here.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from taskqueue.config import Config
from taskqueue.engine import TaskQueue
from taskqueue.errors import ClaimedElsewhere, OutcomeNotRecorded, WorkerCrashed
from taskqueue.objectstore import LocalObjectStore
from taskqueue.processor import Processor
from taskqueue.store import SQLiteStore, ledger
from taskqueue.store.machine import StateMachine
from taskqueue.task import Task, TaskStatus

REPO = Path(__file__).resolve().parents[2]
HOST = socket.gethostname()
WAIT_S = 60  # hang guard only


def make_task(n: int) -> Task:
    return Task(id=f"t{n}", image_key=f"src/o{n}.txt", variant="gzip")


def rows(db: Path) -> dict[str, tuple]:
    conn = sqlite3.connect(db)
    try:
        return {key: (status, attempts, version) for key, status, attempts, version in conn.execute(
            "SELECT idempotency_key, status, attempts, version FROM tasks")}
    finally:
        conn.close()


def ledger_files(db: Path) -> list[str]:
    directory = Path(ledger.directory_for(str(db)))
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def run_child(code: str) -> None:
    """Run ``code`` in a fresh interpreter that must die of SIGKILL (it kills itself)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQ_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=WAIT_S)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr


def die_with_begun_attempts(db: Path, *, begun: tuple[int, ...], committed: tuple[int, ...] = ()) -> None:
    """A child claims tasks 1-3, begins attempts on ``begun`` in its ledger, commits the start of
    ``committed`` (a subset of ``begun``), and is killed."""
    run_child(f"""
        import os, signal
        from taskqueue.store import SQLiteStore
        from taskqueue.task import Task
        store = SQLiteStore({str(db)!r})
        claims = {{n: store.commit(store.claim(Task(id=f"t{{n}}", image_key=f"src/o{{n}}.txt", variant="gzip"), 3))
                   for n in (1, 2, 3)}}
        for n in {begun!r}:
            row = claims[n].row
            assert store.ledger.begin(row.id, row.version) is not None
            if n in {committed!r}:
                store.commit(store.start(row.id, row.version, row.attempts))
        os.kill(os.getpid(), signal.SIGKILL)
    """)


# -- the ledger file --------------------------------------------------------------------------------

def test_entries_are_read_back_slots_are_reused_and_close_deletes_the_file(tmp_path):
    token = f"{HOST}:{os.getpid()}:-:abc123"
    book = ledger.Ledger(str(tmp_path / "l"), token)
    slots = [book.begin(n, n * 10) for n in range(1, ledger.SLOTS + 1)]
    assert sorted(slots) == list(range(ledger.SLOTS))
    assert book.begin(999, 1) is None  # every slot waits for its start's commit
    book.end(slots[4])
    assert book.begin(999, 1) == slots[4]
    written_by, entries = ledger.read(book.path)
    assert written_by == token
    assert sorted(entries) == sorted([(n, n * 10) for n in range(1, ledger.SLOTS + 1) if n != 5] + [(999, 1)])
    assert book.unsettled == ledger.SLOTS
    for slot in range(ledger.SLOTS):
        book.end(slot)
    assert book.unsettled == 0
    book.close()
    assert not os.path.exists(book.path) and not (tmp_path / "l").exists()  # the last one out tidies up


def test_a_ledger_closed_with_an_attempt_not_yet_counted_stays_for_the_next_process(tmp_path):
    token = f"{HOST}:{os.getpid()}:-:abc123"
    book = ledger.Ledger(str(tmp_path / "l"), token)
    counted = book.begin(1, 0)
    book.begin(2, 5)  # its start never committed (the store failed)
    book.end(counted)
    book.close()
    assert ledger.read(book.path) == (token, [(1, 0), (2, 5)])


def test_an_attempt_never_handed_over_is_erased(tmp_path):
    book = ledger.Ledger(str(tmp_path / "l"), f"{HOST}:{os.getpid()}:-:abc123")
    slot = book.begin(3, 1)
    book.end(slot, erase=True)
    assert ledger.read(book.path)[1] == []
    book.close()


def test_a_torn_entry_is_never_read_as_another_one(tmp_path):
    book = ledger.Ledger(str(tmp_path / "l"), f"{HOST}:{os.getpid()}:-:abc123")
    book.begin(7, 3)
    book.begin(8, 4)
    with open(book.path, "r+b") as f:  # a write cut short: the version half of the first entry is old
        f.seek(256 + 8)
        f.write((2).to_bytes(8, "little"))
    assert ledger.read(book.path)[1] == [(8, 4)]
    book.close()


@pytest.mark.parametrize("token", ["no-colons", f"{HOST}:x:-:abc", f"{HOST}:\u00b2:-:abc", f"{HOST}:12:-:a/b"])
def test_a_token_that_cannot_name_a_ledger_file_is_refused(tmp_path, token):
    assert ledger.path_for(str(tmp_path), token) is None
    with pytest.raises(ValueError, match="cannot name a ledger"):
        ledger.Ledger(str(tmp_path), token)


def test_a_ledger_is_named_by_pid_and_nonce_not_host(tmp_path):
    """Containers sharing a database on one kernel have different host names and one directory."""
    assert ledger.path_for(str(tmp_path), "box-a:12:-:abc") == ledger.path_for(str(tmp_path), "box-b:12:-:abc")


# -- replay by the next store --------------------------------------------------------------------------

def test_a_store_opening_counts_the_attempts_a_killed_process_began_and_deletes_its_ledger(tmp_path):
    db = tmp_path / "tasks.db"
    die_with_begun_attempts(db, begun=(1, 2), committed=(2,))
    assert len(ledger_files(db)) == 1
    key = {n: make_task(n).idempotency_key for n in (1, 2, 3)}
    assert rows(db)[key[1]] == ("queued", 0, 0)  # its start never reached the database

    store = SQLiteStore(db)
    try:
        after = rows(db)
        assert after[key[1]] == ("running", 1, 1)  # begun, not committed: counted now
        assert after[key[2]] == ("running", 1, 1)  # committed before the kill: counted once, not twice
        assert after[key[3]] == ("queued", 0, 0)   # waiting, never begun: not charged
        assert ledger_files(db) == [os.path.basename(store.ledger.path)]  # the dead one's is gone
        recovered = store.commit(store.recover(max_attempts=1))
        assert sorted(r.idempotency_key for r in recovered.dead) == [key[1], key[2]]
        assert [r.idempotency_key for r in recovered.runnable] == [key[3]]
        assert store.get(key[1]).error_class == WorkerCrashed.__name__
    finally:
        store.close()
    assert ledger_files(db) == []


@pytest.mark.parametrize("path", ["claim", "recover", "claim_due"])
def test_a_process_dying_while_a_store_is_open_has_its_begun_attempt_counted_by_each_take_over(tmp_path, path):
    """The ledger is replayed wherever a dead owner's rows are taken over, not only when a store opens."""
    db = tmp_path / "tasks.db"
    store = SQLiteStore(db, clock=lambda: time.time() + 10_000)  # the child's leases have all run out
    try:
        die_with_begun_attempts(db, begun=(1,))
        key = make_task(1).idempotency_key
        assert rows(db)[key] == ("queued", 0, 0)
        if path == "claim":
            claim = store.commit(store.claim(make_task(1), 1))
            assert not claim.runnable and claim.row.status is TaskStatus.DEAD
        elif path == "recover":
            recovered = store.commit(store.recover(max_attempts=1))
            assert [r.idempotency_key for r in recovered.dead] == [key]
        else:
            due = store.commit(store.claim_due(10, 1))
            assert [r.idempotency_key for r in due.dead] == [key]
            assert sorted(r.task_id for r in due.runnable) == ["t2", "t3"]
        assert store.get(key).error_class == WorkerCrashed.__name__ and store.get(key).attempts == 1
    finally:
        store.close()


def test_a_long_running_queue_settles_the_ledger_of_a_process_that_died_meanwhile_on_its_heartbeat(tmp_path):
    """Not only the next store to open: a queue that stays open (a worker running for days) counts a
    dead neighbour's begun attempts and deletes its ledger at its next heartbeat."""
    db = tmp_path / "tasks.db"
    tq = TaskQueue(db, LocalObjectStore(tmp_path / "objects"), config=Config(workers=1))  # beats every 100 s
    try:
        die_with_begun_attempts(db, begun=(1,))
        key = make_task(1).idempotency_key
        assert rows(db)[key] == ("queued", 0, 0) and len(ledger_files(db)) == 2
        assert tq._heartbeat.beat()  # the beat the heartbeat thread runs, run here, now
        assert rows(db)[key] == ("running", 1, 1)  # counted; the rows themselves are taken over as ever
        assert ledger_files(db) == [os.path.basename(tq.store.ledger.path)]
    finally:
        assert tq.shutdown(timeout=WAIT_S)
    assert not tq._heartbeat.beat()  # the store is closed: the heartbeat thread would stop here
    assert ledger_files(db) == []


def test_a_live_process_s_ledger_is_left_alone_until_it_dies(tmp_path):
    db = tmp_path / "tasks.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQ_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from taskqueue.store import SQLiteStore
        from taskqueue.task import Task
        store = SQLiteStore({str(db)!r})
        row = store.commit(store.claim(Task(id="t1", image_key="src/o1.txt", variant="gzip"), 3)).row
        store.ledger.begin(row.id, row.version)  # begun; its start not handed over yet
        print("begun", flush=True)
        sys.stdin.readline()  # alive until told
    """)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "begun\n"
        key = make_task(1).idempotency_key
        SQLiteStore(db).close()  # opens while the child lives: its ledger is not replayed
        assert rows(db)[key] == ("queued", 0, 0) and len(ledger_files(db)) == 1
    finally:
        child.kill()
        child.wait(WAIT_S)
    SQLiteStore(db).close()  # and once it is dead, it is
    assert rows(db)[key] == ("running", 1, 1) and ledger_files(db) == []


def test_claim_due_counts_the_begun_attempt_of_an_owner_whose_lease_lapsed_like_recover_does(tmp_path):
    """A live owner whose lease ran out (frozen, or its writer stalled) loses its rows to whoever
    claims them; an attempt its ledger says it began is counted first, on every take-over path."""
    db = tmp_path / "tasks.db"
    frozen = SQLiteStore(db, lease_s=30.0)
    later = SQLiteStore(db, lease_s=30.0, clock=lambda: time.time() + 1000)
    try:
        row = frozen.commit(frozen.claim(make_task(1), 3)).row
        frozen.ledger.begin(row.id, row.version)
        due = later.commit(later.claim_due(10, 3))
        assert [r.attempts for r in due.runnable] == [1]  # taken over as an attempt that never finished
        assert later.get(row.idempotency_key).owner == later.owner
    finally:
        later.close()
        frozen.close()


def test_a_store_that_cannot_keep_a_ledger_commits_each_start_before_the_attempt(tmp_path, caplog):
    db = tmp_path / "tasks.db"
    Path(ledger.directory_for(str(db))).write_text("not a directory")
    objects = LocalObjectStore(tmp_path / "objects", fsync=False)
    objects.write("src/o1.txt", [b"x\n"])
    with caplog.at_level("WARNING", logger="taskqueue"):
        tq = TaskQueue(db, objects, config=Config(workers=1, fsync_outputs=False))
    try:
        assert tq.store.ledger is None
        assert "no start ledger" in caplog.text
        assert tq.submit(make_task(1)).result(WAIT_S).attempts == 1
    finally:
        assert tq.shutdown(wait=True, timeout=WAIT_S)


# -- the engine ---------------------------------------------------------------------------------------

def test_a_task_that_kills_its_process_before_its_start_is_committed_is_charged_the_attempt(tmp_path):
    """The worker does not wait for its start to commit: here the writer is stalled on purpose, so
    the start is still in memory when the task kills the process. The next queue counts it from the
    ledger and, at ``max_attempts=1``, dead-letters the task instead of running it again."""
    db, root = tmp_path / "tasks.db", tmp_path / "objects"
    objects = LocalObjectStore(root, fsync=False)
    objects.write("src/o1.txt", [b"one\n"])
    run_child(f"""
        import os, signal, threading
        from taskqueue.config import Config
        from taskqueue.engine import TaskQueue
        from taskqueue.objectstore import LocalObjectStore
        from taskqueue.processor import Processor
        from taskqueue.store.machine import StateMachine
        from taskqueue.task import Task

        stalled = threading.Event()
        def stall(self, conn, *args):  # the fault: the writer never commits a start
            stalled.set()
            threading.Event().wait()
        StateMachine._start = stall

        class Killer(Processor):
            def process(self, task, attempt=1):
                os.kill(os.getpid(), signal.SIGKILL)

        objects = LocalObjectStore({str(root)!r}, fsync=False)
        tq = TaskQueue({str(db)!r}, objects, config=Config(workers=1, max_attempts=1, fsync_outputs=False),
                       processor=Killer(objects))
        tq.submit(Task(id="t1", image_key="src/o1.txt", variant="gzip")).result(60)
    """)
    key = make_task(1).idempotency_key
    assert rows(db)[key][:2] == ("queued", 0)  # the start never reached the database
    tq = TaskQueue(db, objects, config=Config(workers=1, max_attempts=1, fsync_outputs=False))
    try:
        with pytest.raises(WorkerCrashed):
            tq.submit(make_task(1)).result(WAIT_S)
    finally:
        assert tq.shutdown(wait=True, timeout=WAIT_S)
    assert rows(db)[key][:2] == ("dead", 1)
    assert ledger_files(db) == []


class _Bump(Processor):
    """Processes the first task only once the second one is submitted and its row has been taken by
    "another process" (its version moved on behind the queue's back)."""

    def __init__(self, objects, db: Path) -> None:
        super().__init__(objects)
        self.db = db
        self.second_submitted = threading.Event()
        self.ran: list[str] = []

    def process(self, task, attempt=1):
        self.ran.append(task.id)
        if task.id == "t1":
            assert self.second_submitted.wait(WAIT_S)
            conn = sqlite3.connect(self.db, timeout=WAIT_S)
            try:
                conn.execute("UPDATE tasks SET version = version + 7, owner = 'elsewhere:1:-:x' WHERE task_id = 't2'")
                conn.commit()
            finally:
                conn.close()
        return super().process(task, attempt)


def _bumping_queue(tmp_path: Path) -> tuple[Path, _Bump, TaskQueue]:
    """A one-worker queue over two objects whose processor is a :class:`_Bump`: (db, processor, queue)."""
    db = tmp_path / "tasks.db"
    objects = LocalObjectStore(tmp_path / "objects", fsync=False)
    for n in (1, 2):
        objects.write(f"src/o{n}.txt", [b"x\n"])
    processor = _Bump(objects, db)
    return db, processor, TaskQueue(db, objects, config=Config(workers=1, fsync_outputs=False), processor=processor)


def test_an_attempt_whose_posted_start_finds_the_row_taken_elsewhere_fails_as_claimed_elsewhere(tmp_path):
    db, processor, tq = _bumping_queue(tmp_path)
    try:
        first, second = tq.submit(make_task(1)), tq.submit(make_task(2))
        processor.second_submitted.set()
        assert first.result(WAIT_S).status is TaskStatus.SUCCESS
        with pytest.raises(ClaimedElsewhere, match="claimed by another process"):
            second.result(WAIT_S)
    finally:
        assert tq.shutdown(wait=True, timeout=WAIT_S)
    counters = tq.final_metrics["counters"]
    assert (counters["claimed_elsewhere"], counters["deduplicated"]) == (1, 0)  # not done here
    # The cost of not waiting for the start: the attempt ran before the refusal came back (its
    # output is the same bytes whoever writes it). Before, a refused start stopped it from running.
    assert processor.ran == ["t1", "t2"]
    assert rows(db)[make_task(2).idempotency_key] == ("queued", 0, 7)  # the other process's, untouched


def test_a_second_offer_of_a_key_in_flight_is_counted_as_its_item_ends_not_as_done_before(tmp_path):
    # The second offer shares the first one's Future; that one then fails as claimed elsewhere. Counted
    # "deduplicated" when offered, the progress line would have called it done.
    db, processor, tq = _bumping_queue(tmp_path)
    try:
        first, second = tq.submit(make_task(1)), tq.submit(make_task(2))
        again = tq.submit(Task(id="t2-again", image_key="src/o2.txt", variant="gzip"))
        assert again is second
        processor.second_submitted.set()
        assert first.result(WAIT_S).status is TaskStatus.SUCCESS
        with pytest.raises(ClaimedElsewhere):
            again.result(WAIT_S)
    finally:
        assert tq.shutdown(wait=True, timeout=WAIT_S)
    counters = tq.final_metrics["counters"]
    assert (counters["succeeded"], counters["claimed_elsewhere"], counters["deduplicated"]) == (1, 2, 0)


class _Recording(Processor):
    """Records each attempt it is asked for; on the first, notes how many ledger slots are taken."""

    def __init__(self, objects) -> None:
        super().__init__(objects)
        self.attempts: list[tuple[str, int]] = []
        self.unsettled_seen: list[int] = []
        self.tq: TaskQueue | None = None
        self.entered = threading.Event()

    def process(self, task, attempt=1):
        self.attempts.append((task.id, attempt))
        self.unsettled_seen.append(self.tq.store.ledger.unsettled)
        self.entered.set()
        return super().process(task, attempt)


def test_a_ledger_slot_stays_taken_until_the_start_it_records_is_committed(tmp_path, monkeypatch):
    db = tmp_path / "tasks.db"
    objects = LocalObjectStore(tmp_path / "objects", fsync=False)
    objects.write("src/o1.txt", [b"x\n"])
    release = threading.Event()
    real_start = StateMachine._start

    def stalled_start(self, conn, *args):  # the fault: the writer holds the start back until told
        assert release.wait(WAIT_S)
        return real_start(self, conn, *args)
    monkeypatch.setattr(StateMachine, "_start", stalled_start)
    processor = _Recording(objects)
    tq = processor.tq = TaskQueue(db, objects, config=Config(workers=1, fsync_outputs=False), processor=processor)
    try:
        future = tq.submit(make_task(1))
        assert processor.entered.wait(WAIT_S)  # running while its start waits in the writer
        release.set()
        assert future.result(WAIT_S).attempts == 1
        tq.store.flush()
        assert processor.unsettled_seen == [1] and tq.store.ledger.unsettled == 0
    finally:
        release.set()
        assert tq.shutdown(wait=True, timeout=WAIT_S)
    assert rows(db)[make_task(1).idempotency_key][:2] == ("success", 1)


def test_a_start_the_store_fails_to_commit_is_still_counted_and_the_task_is_not_lost(tmp_path, fail_first_start):
    """The attempt ran (the worker did not wait for its start); the start failed: the row is let go
    of with that attempt counted from the ledger, and the next offer of the key runs attempt 2."""
    db = tmp_path / "tasks.db"
    objects = LocalObjectStore(tmp_path / "objects", fsync=False)
    objects.write("src/o1.txt", [b"x\n"])
    fail_first_start(sqlite3.OperationalError("database is locked"))  # the fault: the first start cannot be written
    processor = _Recording(objects)
    tq = processor.tq = TaskQueue(db, objects, config=Config(workers=1, max_attempts=2, fsync_outputs=False),
                                  processor=processor)
    try:
        with pytest.raises(OutcomeNotRecorded, match="database is locked") as info:
            tq.submit(make_task(1)).result(WAIT_S)
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        tq.store.flush()
        assert rows(db)[make_task(1).idempotency_key][:2] == ("running", 1)  # counted, and let go of
        assert tq.store.ledger.unsettled == 0
        assert tq.submit(make_task(1)).result(WAIT_S).attempts == 2
    finally:
        assert tq.shutdown(wait=True, timeout=WAIT_S)
    assert processor.attempts == [("t1", 1), ("t1", 2)]


class _Held(_Recording):
    """A _Recording processor that holds each attempt until ``go`` is set."""

    def __init__(self, objects) -> None:
        super().__init__(objects)
        self.go = threading.Event()

    def process(self, task, attempt=1):
        self.attempts.append((task.id, attempt))
        self.entered.set()
        assert self.go.wait(WAIT_S), "test gate never opened"
        return Processor.process(self, task, attempt)


def test_while_an_attempt_whose_start_failed_runs_no_other_process_can_take_its_row(tmp_path, fail_first_start):
    """The start failed while the attempt ran (posted without waiting): the row stays ours, under
    lease, until the attempt ends; only then is it let go of, its attempt counted. Letting go at once
    would hand the row to another process while this one still runs it."""
    db = tmp_path / "tasks.db"
    objects = LocalObjectStore(tmp_path / "objects", fsync=False)
    objects.write("src/o1.txt", [b"x\n"])
    failures = fail_first_start(sqlite3.OperationalError("disk I/O error"))  # the first start cannot be written
    processor = _Held(objects)
    tq = processor.tq = TaskQueue(db, objects, config=Config(workers=1, fsync_outputs=False), processor=processor)
    other = SQLiteStore(str(db))  # another process's store: its own owner token
    try:
        future = tq.submit(make_task(1))
        assert processor.entered.wait(WAIT_S)
        tq.store.flush()  # the start has failed by now, and its callback has run
        assert not failures and not future.done()
        assert other.commit(other.claim_due(5, 3)).runnable == []
        assert other.commit(other.recover(3)).runnable == []
        assert not other.commit(other.claim(make_task(1), 3)).runnable  # held by a live owner
        assert tq.store.ledger.unsettled == 1  # the attempt's record, not counted in the database yet
        processor.go.set()
        with pytest.raises(OutcomeNotRecorded, match="disk I/O error") as info:
            future.result(WAIT_S)
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        tq.store.flush()
        assert rows(db)[make_task(1).idempotency_key][:2] == ("running", 1)  # counted, and let go of
        assert tq.store.ledger.unsettled == 0
        taken = other.commit(other.claim(make_task(1), 3))
        assert taken.runnable and taken.row.attempts == 1
    finally:
        processor.go.set()
        other.close()
        assert tq.shutdown(wait=True, timeout=WAIT_S)


def test_a_temporary_file_left_by_a_process_killed_while_making_its_ledger_is_swept_when_stale(tmp_path):
    """Killed between creating ``<pid>-<nonce>.attempts.<pid>.tmp`` and renaming it: nothing was
    recorded in it, and left alone it keeps the ledger directory from being removed."""
    db = tmp_path / "tasks.db"
    directory = Path(ledger.directory_for(str(db)))
    directory.mkdir()
    stale = directory / "4242-abc123.attempts.4242.tmp"
    fresh = directory / "4343-def456.attempts.4343.tmp"  # a creation under way right now: left alone
    other = directory / "notes.tmp"  # not a ledger's: left alone whatever its age
    for path in (stale, fresh, other):
        path.write_bytes(b"\0" * ledger.SIZE)
    old = time.time() - ledger.STALE_TEMPORARY_S - 5
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    store = SQLiteStore(db)
    try:
        assert sorted(ledger_files(db)) == sorted([fresh.name, other.name, os.path.basename(store.ledger.path)])
    finally:
        store.close()
    assert sorted(ledger_files(db)) == sorted([fresh.name, other.name])
    assert ledger.sweep_temporary(str(directory), now=time.time() + ledger.STALE_TEMPORARY_S + 5) == 1
    assert sorted(ledger_files(db)) == [other.name]


def test_a_ledger_on_a_full_disk_is_an_oserror_not_a_sigbus(tmp_path):
    """Found in review: the ledger file was made by a sparse ftruncate, and the first store into its
    mapping on a full disk killed the process with SIGBUS (exit 135, no message) where the store
    should have gone on without a ledger (ledger_unavailable). A tmpfs of 64 KiB, filled, in a
    mount namespace of its own."""
    if os.geteuid() != 0 or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs root and unshare -m, to mount a small file system")
    mount = tmp_path / "small"
    mount.mkdir()
    script = textwrap.dedent(f"""
        import errno, os, sys
        sys.path.insert(0, {str(REPO)!r})
        from taskqueue.store import ledger
        try:
            with open({str(mount / "filler")!r}, "wb") as f:
                while True:
                    f.write(b"x" * 4096)
                    f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        try:
            ledger.Ledger({str(mount / "ledgers")!r}, "host:1:-:abc")
        except OSError as exc:
            print("refused", errno.errorcode[exc.errno])
        else:
            print("made")
    """)
    result = subprocess.run(["unshare", "-m", "sh", "-c",
                             f"mount -t tmpfs -o size=64k tmpfs {mount} && exec {sys.executable} -c \"$0\"", script],
                            capture_output=True, text=True, timeout=WAIT_S)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.strip() == "refused ENOSPC"


# -- a process frozen longer than its lease -----------------------------------------------------------

class _Gated(Processor):
    def __init__(self, objects: LocalObjectStore) -> None:
        super().__init__(objects)
        self.gate, self.entered, self.calls = threading.Event(), threading.Event(), []

    def process(self, task: Task, attempt: int = 1):
        self.calls.append(task.id)
        self.entered.set()
        assert self.gate.wait(WAIT_S), "test gate never opened"
        return super().process(task, attempt)


def _frozen_queue(tmp_path: Path) -> tuple[TaskQueue, _Gated, list, SQLiteStore]:
    """A queue running t0 (held at the gate) with t1 and t2 waiting in its queue, whose rows another
    process has taken over as if this one had been frozen past its lease."""
    objects = LocalObjectStore(tmp_path / "objects", fsync=False)
    for n in range(3):
        objects.write(f"src/o{n}.txt", [f"source {n}\n".encode()])
    processor = _Gated(objects)
    db = tmp_path / "tasks.db"
    tq = TaskQueue(db, objects, config=Config(workers=1, queue_size=4, fsync_outputs=False), processor=processor)
    futures = [tq.submit(make_task(n)) for n in range(3)]
    assert processor.entered.wait(WAIT_S)
    conn = sqlite3.connect(db)
    with conn:  # their leases ran out while this process was stopped
        conn.execute("UPDATE tasks SET lease_until = 0 WHERE task_id IN ('t1', 't2')")
    conn.close()
    other = SQLiteStore(str(db))
    assert sorted(r.task_id for r in other.commit(other.claim_due(5, 3)).runnable) == ["t1", "t2"]
    return tq, processor, futures, other


def test_a_process_resuming_from_a_freeze_past_its_lease_runs_no_task_another_has_taken_over(tmp_path):
    """Found in review: SIGSTOPped past its lease, then resumed, a run started every task still in
    its queue on a start it did not wait for -- rows another process had taken over and often
    finished: the same attempt run twice, outputs rewritten, runs never counted. Until a renewal
    commits again, its leases are not trusted: each start is committed first, and refused."""
    tq, processor, futures, other = _frozen_queue(tmp_path)
    try:
        jump = time.monotonic() + 1000.0  # the freeze: the heartbeat's clock moved past the lease
        tq._heartbeat._clock = lambda: jump
        assert not tq._heartbeat.fresh()
        processor.gate.set()
        assert futures[0].result(WAIT_S).status is TaskStatus.SUCCESS
        for future in futures[1:]:
            assert isinstance(future.exception(WAIT_S), ClaimedElsewhere)
        assert processor.calls == ["t0"]  # neither taken-over task ran here
    finally:
        processor.gate.set()
        tq.shutdown(wait=True)
        other.close()


def test_items_held_across_a_lapse_wait_for_their_start_even_once_the_leases_are_fresh_again(tmp_path):
    """The heartbeat's first renewal after the freeze makes the leases fresh again, but not the rows
    taken meanwhile: the items held from before the lapse still have their starts committed first."""
    tq, processor, futures, other = _frozen_queue(tmp_path)
    try:
        late = time.monotonic() + 1000.0
        tq._heartbeat._clock = lambda: late
        tq._heartbeat.beat()  # a renewal that commits after the leases ran out: a lapse
        tq.store.flush()
        assert tq.inflight.epoch == 1 and tq._heartbeat.fresh()
        processor.gate.set()
        assert futures[0].result(WAIT_S).status is TaskStatus.SUCCESS
        assert [type(f.exception(WAIT_S)) for f in futures[1:]] == [ClaimedElsewhere] * 2
        assert processor.calls == ["t0"]
    finally:
        processor.gate.set()
        tq.shutdown(wait=True)
        other.close()


def test_an_outcome_refused_as_stale_is_claimed_elsewhere_not_an_error(tmp_path):
    """Frozen while running t0 past its lease: t0's row was taken over, and its outcome refused. That
    is not a store failure (OutcomeNotRecorded, exit 1 from run): another process runs the task."""
    tq, processor, futures, other = _frozen_queue(tmp_path)
    try:
        conn = sqlite3.connect(tmp_path / "tasks.db")
        with conn:
            conn.execute("UPDATE tasks SET lease_until = 0 WHERE task_id = 't0'")
        conn.close()
        other.commit(other.claim_due(5, 3))  # takes t0 (running, lease run out) over as well
        processor.gate.set()
        assert isinstance(futures[0].exception(WAIT_S), ClaimedElsewhere)
        assert tq.snapshot()["counters"]["errored"] == 0
    finally:
        processor.gate.set()
        tq.shutdown(wait=True)
        other.close()
