"""PostgreSQL as a review found it in use: locks, search paths, roles, encodings, bytes, secrets.

Each test runs against the tests' own real server (see ``tests/pgserver.py``), mocks nothing of it,
and failed before its fix (three of them by hanging: their guards are hang guards only).
"""

from __future__ import annotations

import threading
import uuid

import pytest

from feeding import start_feeder
from taskqueue.config import Config
from taskqueue.engine import TaskQueue
from taskqueue.engine.feeder import Feeder
from taskqueue.errors import ConfigError, PermanentError
from taskqueue.objectstore import LocalObjectStore
from taskqueue.processor import Processor
from taskqueue.store import is_url
from taskqueue.store.postgres import PostgresReader, PostgresStore, connect, redact, scrub
from taskqueue.task import Task

psycopg = pytest.importorskip("psycopg")
HANG = 60.0  # hang guard only


@pytest.fixture
def url(postgres_server) -> str:
    return postgres_server.new_database()


def sql(url: str, *statements: str) -> list:
    with psycopg.connect(url, autocommit=True) as conn:
        result = []
        for statement in statements:
            cursor = conn.execute(statement)
            result = cursor.fetchall() if cursor.description else []
        return result


def tasks(n: int) -> list[Task]:
    return [Task(id=f"t{i}", image_key=f"src/{i}.txt", variant="gzip") for i in range(n)]


@pytest.fixture
def objects(tmp_path) -> LocalObjectStore:
    objects = LocalObjectStore(tmp_path / "store", fsync=False)
    for i in range(8):
        objects.write(f"src/{i}.txt", [f"source {i}\n".encode()])
    return objects


def enqueue(url: str, items: list[Task]) -> None:
    store = PostgresStore(url)
    try:
        store.commit(store.enqueue(items))
    finally:
        store.close()


def test_an_idle_worker_claims_rows_another_transaction_held_once_it_rolls_back(url, objects):
    """Its claim skipped the rows another transaction had locked (SKIP LOCKED); that one rolled back,
    which notifies nobody, and the feeder waited for good: nothing looked due to it."""
    enqueue(url, tasks(3))
    holder = psycopg.connect(url)  # a claim that will not commit: SIGKILLed, cut off, failed at COMMIT
    holder.execute("SELECT id FROM tasks FOR UPDATE")
    tq = TaskQueue(url, objects, config=Config(workers=1, fsync_outputs=False), recover_unowned=False)
    feeder = Feeder(tq, exit_when_idle=True)
    thread, waiting = start_feeder(feeder)  # waiting: set when the feeder first waits
    try:
        assert waiting.wait(HANG), "hang guard: the feeder never waited"
        assert feeder.claimed == 0
        holder.rollback()
        thread.join(HANG)
        assert not thread.is_alive(), "the rows released by the rollback were never claimed"
    finally:
        holder.close()
        feeder.stop()
        thread.join(HANG)
        tq.shutdown(wait=True)
    assert feeder.claimed == 3 and sql(url, "SELECT DISTINCT status FROM tasks") == [("success",)]


def test_a_search_path_with_another_schema_first_finds_the_same_queue(url):
    """Found in review: with another schema first on the search path (a role with a schema of its own
    name has one by default), CREATE TABLE IF NOT EXISTS made a second, empty queue there: every
    task was enqueued, and run, again."""
    enqueue(url, tasks(2))
    sql(url, "CREATE SCHEMA other")
    shadowed = url + "&options=-csearch_path%3Dother,public"
    store = PostgresStore(shadowed)
    try:
        assert store.commit(store.enqueue(tasks(3))) == [tasks(3)[2].idempotency_key]  # two were there
    finally:
        store.close()
    assert sql(url, "SELECT to_regclass('other.tasks') IS NULL, COUNT(*) FROM public.tasks") == [(True, 3)]


def test_a_role_with_rights_on_the_rows_only_runs_a_worker_and_opening_takes_no_table_lock(url, objects):
    """Found in review: every store that opened ran the schema's DDL: its CREATE INDEX waited for (and
    then stalled) every writer of the table, and a role with rights on the rows only (no CREATE, not
    the owner) could not open it at all. An existing schema is used as it is."""
    enqueue(url, tasks(2))
    role = f"worker_{uuid.uuid4().hex[:8]}"
    sql(url, f"CREATE ROLE {role} LOGIN", f"GRANT SELECT, INSERT, UPDATE, DELETE ON tasks, dead_letters TO {role}",
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    writer = psycopg.connect(url)  # a long write transaction of another worker: a row lock on tasks
    writer.execute("UPDATE tasks SET updated_at = updated_at WHERE id = 1")
    opened: list = []
    thread = threading.Thread(target=lambda: opened.append(TaskQueue(
        url.replace("postgres@", f"{role}@"), objects, config=Config(workers=1, fsync_outputs=False),
        recover_unowned=False)))
    thread.start()
    thread.join(HANG)
    writer.rollback()
    writer.close()
    thread.join(HANG)
    assert opened, "the store never opened while another transaction wrote to the table"
    tq = opened[0]
    try:
        assert tq.claim_due(5) == 2 and tq.join(HANG)
    finally:
        tq.shutdown(wait=True)
    assert sql(url, "SELECT DISTINCT status FROM tasks") == [("success",)]


def test_a_store_reads_on_one_connection_it_keeps_and_closes(url):
    """Found in review: each read (a feeder's wake_at, every second while a sibling holds a lease)
    opened a connection of its own; near a connection limit, one refused stopped an idle worker."""
    store = PostgresStore(url)
    try:
        backends, kept = set(), []
        for _ in range(3):
            with store.reader() as conn:
                backends.add(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
                kept.append(conn)
            store.wake_at(0.0, store.owner)
        assert len(backends) == 1
    finally:
        store.close()
    assert kept[0].closed


def test_a_dead_letters_table_that_is_not_the_queues_is_refused_untouched(url):
    sql(url, "CREATE TABLE dead_letters (idempotency_key text PRIMARY KEY, note text)")
    with pytest.raises(psycopg.DatabaseError, match="'dead_letters' that is not this queue's"):
        PostgresStore(url)
    assert sql(url, "SELECT to_regclass('tasks') IS NULL") == [(True,)]


@pytest.mark.parametrize("encoding", ["LATIN1", "SQL_ASCII"])
def test_a_database_not_in_utf8_is_refused_naming_its_encoding(postgres_server, encoding):
    """SQL_ASCII hands back bytes (the queue then refused its own table as someone else's); LATIN1
    refuses most keys with a traceback."""
    name = f"enc_{encoding.lower()}_{uuid.uuid4().hex[:8]}"
    sql(postgres_server.url(), f"CREATE DATABASE {name} ENCODING '{encoding}' TEMPLATE template0 "
                               f"LC_COLLATE 'C' LC_CTYPE 'C'")
    url = postgres_server.url(name)
    for make in (PostgresStore, PostgresReader):
        with pytest.raises(psycopg.DatabaseError, match=f"uses the encoding {encoding}; the task queue needs UTF8"):
            make(url)
    assert sql(url, "SELECT to_regclass('tasks') IS NULL") == [(True,)]


def test_a_nul_in_an_error_text_is_stored_escaped_and_the_task_dead_lettered(url, objects):
    """PostgreSQL refuses NUL in text: the dead letter could not be written, and the task's outcome
    was never recorded (OutcomeNotRecorded, the row left running)."""
    class Failing(Processor):
        def process(self, task, attempt=1):
            raise PermanentError("bad byte \x00 in here")

    with TaskQueue(url, objects, config=Config(workers=1, fsync_outputs=False), processor=Failing(objects)) as tq:
        error = tq.submit(tasks(1)[0]).exception(HANG)
        assert isinstance(error, PermanentError)
    assert sql(url, "SELECT status, last_error FROM tasks") == [("dead", "bad byte \\x00 in here")]


# -- the URL ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("db", ["PostgreSQL://u:hunter2@/x", "postgresql:postgres", " postgresql://u@/x",
                                "POSTGRES://h/db"])
def test_a_url_not_written_as_one_is_refused_not_taken_for_a_sqlite_file(db):
    assert is_url(db)
    with pytest.raises(ConfigError, match="is not a PostgreSQL URL") as info:
        connect(db)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("db, message, shown", [
    ("postgresql://alice:hunter2 x@/db", 'unexpected spaces found in "hunter2 x"', "postgresql://alice:***@/db"),
    ("postgresql://alice:hunter2%zz@/db", 'invalid percent-encoded token: "hunter2%zz"',
     "postgresql://alice:***@/db"),
    ("postgresql://alice:Sx@hunter2@localhost/db", 'failed to resolve host "hunter2@localhost"',
     "postgresql://alice:***@localhost/db"),
    ("postgresql://alice:p@ss:hunter2/rd?#%x@/db", "whatever", "postgresql://alice:***@/db"),
    ("postgresql://alice@/db?sslpassword=hunter2&sslmode=bogus", 'sslmode value "bogus"',
     "postgresql://alice@/db?sslpassword=***&sslmode=bogus"),
])
def test_no_secret_of_the_url_is_printed_by_redact_or_in_the_drivers_message(db, message, shown):
    """Found in review: libpq's own messages quote the password (a space in it, a bad %-escape, an
    "@" it split at), sslpassword was never masked, and a password holding "/" and "@" leaked."""
    assert redact(db) == shown
    assert "hunter2" not in scrub(message, db)


def test_the_drivers_message_about_a_bad_url_names_no_secret(postgres_server):
    db = postgres_server.url().replace("postgres@", "postgres:hunter2 x@")
    with pytest.raises(psycopg.Error) as info:
        connect(db)
    assert "hunter2" not in str(info.value) and "***" in str(info.value)
