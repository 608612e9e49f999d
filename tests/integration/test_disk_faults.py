"""Broken disks: output writes failing mid-way, and a store or database that cannot be opened.

Write faults are injected, not provoked: the tests run as root, for whom a
read-only (chmod) directory does not stop a write, and a full disk cannot be
staged portably. :class:`FaultyStore` is a real :class:`LocalObjectStore`
whose writes, for chosen keys and attempts, write part of the data and then
raise ``OSError(errno)`` in the system call's place -- the way a full disk
(``ENOSPC``) or a revoked permission (``EACCES``/``EROFS``) shows up in the
middle of a write. Everything else (the temporary file, the cleanup, the
wrapping in :class:`OutputWriteError`, the retry decision) is the code under
test.

Start-up faults run ``task_queue_optimized.py run`` in a subprocess.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest

from taskqueue.config import Config
from taskqueue.engine import TaskQueue
from taskqueue.errors import OutputWriteError
from taskqueue.objectstore import TEMP_MARKER, LocalObjectStore
from taskqueue.task import Task

pytestmark = pytest.mark.usefixtures("canary")  # every test: nothing beside the store root may change

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "task_queue_optimized.py"
HANG_S = 60  # hang guard only


class _FailingFile:
    """Wraps the store's temporary file: the first write goes through half-way, then ``OSError(code)``."""

    def __init__(self, real, code: int, seen: list) -> None:
        self._real = real
        self._code = code
        self._seen = seen

    def write(self, data: bytes) -> int:
        self._real.write(data[: max(1, len(data) // 2)])
        self._real.flush()
        # Prove a partial temporary really exists at the moment of the fault.
        self._seen.append(os.path.getsize(self._real.name))
        raise OSError(self._code, os.strerror(self._code), self._real.name)

    def __getattr__(self, name):
        return getattr(self._real, name)


class FaultyStore(LocalObjectStore):
    """A LocalObjectStore whose writes of chosen keys fail mid-write.

    ``plan[key]`` lists, per write of that key (1st, 2nd, ...), an errno to
    fail with or None to write normally; writes past the end of the list
    succeed. ``writes[key]`` counts the writes started; ``partial_sizes``
    records the size of each partial temporary at the moment it failed.
    ``write`` (how the gzip variant publishes) fails in the system call's
    place, ``_write_out``; ``open_write`` (the image variants) hands out a
    failing file.
    """

    def __init__(self, root, plan: dict[str, list], **kwargs) -> None:
        super().__init__(root, **kwargs)
        self.plan = plan
        self.writes: Counter[str] = Counter()
        self.partial_sizes: list[int] = []
        self._lock = threading.Lock()
        self._failing = threading.local()  # the errno the write under way in this thread fails with

    def _fault(self, key: str) -> int | None:
        with self._lock:
            self.writes[key] += 1
            n = self.writes[key]
        steps = self.plan.get(key, [])
        return steps[n - 1] if n <= len(steps) else None

    def write(self, key: str, chunks) -> int:
        self._failing.code = self._fault(key)
        try:
            return super().write(key, chunks)
        finally:
            self._failing.code = None

    def _write_out(self, fd: int, data: bytes) -> int:
        code = getattr(self._failing, "code", None)
        if code is None:
            return super()._write_out(fd, data)
        super()._write_out(fd, data[: max(1, len(data) // 2)])
        self.partial_sizes.append(os.fstat(fd).st_size)  # a partial temporary really exists now
        raise OSError(code, os.strerror(code))

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator:
        code = self._fault(key)
        with super().open_write(key) as real:
            yield real if code is None else _FailingFile(real, code, self.partial_sizes)


def source_bytes(n: int) -> bytes:
    return f"line {n} of a compressible source object\n".encode() * 200


def make_tasks(objects: LocalObjectStore, count: int) -> list[Task]:
    tasks = []
    for n in range(count):
        task = Task(id=f"t{n}", image_key=f"src/o{n}.txt", variant="gzip")
        objects.write(task.image_key, [source_bytes(n)])
        tasks.append(task)
    return tasks


def output_key(task: Task) -> str:
    return f"variants/gzip/{task.image_key}.gz"


def db_row(db: Path, key: str) -> dict:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return dict(conn.execute("SELECT * FROM tasks WHERE idempotency_key = ?", (key,)).fetchone())
    finally:
        conn.close()


def dead_letters(db: Path) -> list[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM dead_letters")]
    finally:
        conn.close()


def files_named_like_temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if TEMP_MARKER in p.name]


@pytest.fixture
def world(tmp_path: Path, store_root: Path):
    """``start(plan) -> (TaskQueue, FaultyStore, tasks)``: 5 gzip tasks in a canary-guarded store.

    3 attempts at most, backoff of about a millisecond. The queue is shut down at teardown.
    """
    made: list[TaskQueue] = []

    def start(plan_for: dict[int, list]) -> tuple[TaskQueue, FaultyStore, list[Task]]:
        setup = LocalObjectStore(store_root, fsync=False)
        tasks = make_tasks(setup, 5)
        plan = {output_key(tasks[n]): steps for n, steps in plan_for.items()}
        objects = FaultyStore(store_root, plan)
        config = Config(workers=2, max_attempts=3, retry_base_s=0.001, retry_cap_s=0.002, retry_seed=11)
        tq = TaskQueue(tmp_path / "tasks.db", objects, config=config)
        made.append(tq)
        return tq, objects, tasks

    yield start
    for tq in made:
        assert tq.shutdown(wait=True, timeout=HANG_S), "TaskQueue did not shut down"


def run_all(tq: TaskQueue, tasks: list[Task]) -> list:
    futures = [tq.submit(t) for t in tasks]
    assert tq.join(timeout=HANG_S), "tasks did not settle"
    return futures


def assert_good_tasks_succeeded(objects: LocalObjectStore, tasks: list[Task], futures: list, bad: set[int]):
    for n, (task, future) in enumerate(zip(tasks, futures)):
        if n in bad:
            continue
        result = future.result(timeout=0)
        assert result.output_key == output_key(task) and result.attempts == 1
        with open(objects.path_for(output_key(task)), "rb") as f:
            assert gzip.decompress(f.read()) == source_bytes(n)


# -- output write faults, in process ------------------------------------------------------------

def test_enospc_mid_write_is_retried_then_dead_lettered_with_no_partial_object(world, tmp_path):
    tq, objects, tasks = world({0: [errno.ENOSPC] * 3})
    futures = run_all(tq, tasks)

    error = futures[0].exception(timeout=0)
    assert isinstance(error, OutputWriteError)
    assert isinstance(error.__cause__, OSError) and error.__cause__.errno == errno.ENOSPC
    assert "No space left on device" in str(error)
    assert objects.writes[output_key(tasks[0])] == 3  # transient: every attempt was made
    row = db_row(tmp_path / "tasks.db", tasks[0].idempotency_key)
    assert (row["status"], row["attempts"], row["error_class"]) == ("dead", 3, "OutputWriteError")
    assert [(d["idempotency_key"], d["attempts"], d["error_class"]) for d in dead_letters(tmp_path / "tasks.db")] \
        == [(tasks[0].idempotency_key, 3, "OutputWriteError")]
    assert tq.snapshot()["counters"]["retried"] == 2

    # Each attempt left a partial temporary at the moment of the fault; none was published or kept.
    assert len(objects.partial_sizes) == 3 and all(size > 0 for size in objects.partial_sizes)
    assert not objects.exists(output_key(tasks[0]))
    assert objects.temp_files() == []
    assert files_named_like_temporaries(Path(objects.root)) == []
    assert_good_tasks_succeeded(objects, tasks, futures, bad={0})


def test_enospc_that_clears_lets_a_retry_publish_the_complete_object(world, tmp_path):
    tq, objects, tasks = world({2: [errno.ENOSPC, errno.ENOSPC]})
    futures = run_all(tq, tasks)

    result = futures[2].result(timeout=0)
    assert result.attempts == 3
    assert objects.writes[output_key(tasks[2])] == 3
    with open(objects.path_for(output_key(tasks[2])), "rb") as f:
        assert gzip.decompress(f.read()) == source_bytes(2)  # complete, not the partial bytes
    row = db_row(tmp_path / "tasks.db", tasks[2].idempotency_key)
    assert (row["status"], row["attempts"], row["output_key"]) == ("success", 3, output_key(tasks[2]))
    assert dead_letters(tmp_path / "tasks.db") == []
    assert objects.temp_files() == []
    assert_good_tasks_succeeded(objects, tasks, futures, bad={2})


@pytest.mark.parametrize("code, text", [(errno.EACCES, "Permission denied"),
                                        (errno.EROFS, "Read-only file system")])
def test_permission_or_read_only_fault_is_permanent_and_dead_lettered_at_once(world, tmp_path, code, text):
    tq, objects, tasks = world({1: [code, code, code]})
    futures = run_all(tq, tasks)

    error = futures[1].exception(timeout=0)
    assert isinstance(error, OutputWriteError) and error.__cause__.errno == code
    assert objects.writes[output_key(tasks[1])] == 1  # permanent: never retried
    row = db_row(tmp_path / "tasks.db", tasks[1].idempotency_key)
    assert (row["status"], row["attempts"], row["error_class"]) == ("dead", 1, "OutputWriteError")
    assert text in row["last_error"]
    assert tq.snapshot()["counters"]["retried"] == 0
    assert not objects.exists(output_key(tasks[1]))
    assert objects.temp_files() == []
    assert_good_tasks_succeeded(objects, tasks, futures, bad={1})


def test_several_keys_failing_at_once_leave_no_temporaries_and_the_rest_succeed(world, tmp_path):
    tq, objects, tasks = world({0: [errno.ENOSPC], 1: [errno.EACCES], 3: [errno.ENOSPC] * 3})
    futures = run_all(tq, tasks)
    assert futures[0].result(timeout=0).attempts == 2
    assert isinstance(futures[1].exception(timeout=0), OutputWriteError)
    assert isinstance(futures[3].exception(timeout=0), OutputWriteError)
    assert {d["idempotency_key"]: d["attempts"] for d in dead_letters(tmp_path / "tasks.db")} == \
        {tasks[1].idempotency_key: 1, tasks[3].idempotency_key: 3}
    assert objects.temp_files() == []
    assert sorted(p.relative_to(objects.root).as_posix() for p in Path(objects.root, "variants").rglob("*.gz")) \
        == sorted(output_key(tasks[n]) for n in (0, 2, 4))
    assert_good_tasks_succeeded(objects, tasks, futures, bad={0, 1, 3})


# -- output write faults through the command line --------------------------------------------------

# Runs the real CLI with the store's writer patched to fail with ENOSPC for keys under src/full/.
RUNNER = """
import contextlib, errno, os, sys, threading
sys.path.insert(0, {repo!r})
from taskqueue import objectstore, cli

real_write, real_write_out = objectstore.LocalObjectStore.write, objectstore.LocalObjectStore._write_out
full = threading.local()

def write(self, key, chunks):
    full.on = key.startswith("variants/gzip/src/full/")
    try:
        return real_write(self, key, chunks)
    finally:
        full.on = False

def write_out(fd, data):
    if not getattr(full, "on", False):
        return real_write_out(fd, data)
    real_write_out(fd, data[: len(data) // 2 or 1])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

objectstore.LocalObjectStore.write = write
objectstore.LocalObjectStore._write_out = staticmethod(write_out)
sys.exit(cli.main(sys.argv[1:]))
"""


def test_cli_full_disk_dead_letters_the_task_after_its_attempts_and_exits_0(tmp_path, store_root):
    objects = LocalObjectStore(store_root, fsync=False)
    items = [{"id": "ok-1", "image_key": "src/ok-1.txt", "variant": "gzip"},
             {"id": "full-1", "image_key": "src/full/a.txt", "variant": "gzip"},
             {"id": "ok-2", "image_key": "src/ok-2.txt", "variant": "gzip"}]
    for item in items:
        objects.write(item["image_key"], [b"some bytes to compress\n" * 100])
    (tmp_path / "tasks.json").write_text(json.dumps(items), encoding="utf-8")
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER.format(repo=str(REPO)), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQ_")}
    env.update(TQ_RETRY_BASE_S="0.001", TQ_RETRY_CAP_S="0.002")
    db, log = tmp_path / "tasks.db", tmp_path / "run.log"
    result = subprocess.run([sys.executable, str(runner), "run", "--tasks", str(tmp_path / "tasks.json"),
                             "--db", str(db), "--store", str(store_root), "--log-file", str(log)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_S)
    assert result.returncode == 0, result.stderr
    assert "tasks 3: 2 succeeded, 0 already done (deduplicated), 1 dead-lettered, 0 unfinished" in result.stdout
    assert "retries 2" in result.stdout
    [letter] = dead_letters(db)
    assert (letter["idempotency_key"], letter["attempts"], letter["error_class"]) == \
        ("src/full/a.txt:gzip", 3, "OutputWriteError")
    assert "No space left on device" in letter["last_error"]
    events = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    retries = [e for e in events if e["event"] == "retry_scheduled"]
    assert [(e["idempotency_key"], e["error_class"], e["kind"]) for e in retries] == \
        [("src/full/a.txt:gzip", "OutputWriteError", "transient")] * 2
    assert not objects.exists("variants/gzip/src/full/a.txt.gz")
    assert objects.temp_files() == []
    assert objects.exists("variants/gzip/src/ok-1.txt.gz") and objects.exists("variants/gzip/src/ok-2.txt.gz")


# -- a store or database that cannot be opened: refused at start-up ---------------------------------

def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQ_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=HANG_S)


@pytest.fixture
def startup(tmp_path: Path, store_root: Path) -> dict:
    """Two gzip tasks whose sources exist in a canary-guarded store, and a work directory."""
    objects = LocalObjectStore(store_root, fsync=False)
    items = [{"id": f"t{n}", "image_key": f"src/t{n}.txt", "variant": "gzip"} for n in range(2)]
    for item in items:
        objects.write(item["image_key"], [b"abc\n" * 100])
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps(items), encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    return {"tasks": path, "store": store_root, "work": work, "base": tmp_path}


def run(s: dict, db: Path, store: Path | None = None) -> subprocess.CompletedProcess:
    return cli("run", "--tasks", str(s["tasks"]), "--db", str(db), "--store", str(store or s["store"]), cwd=s["work"])


def assert_refused_at_start_up(s: dict, result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == "" and result.stderr.startswith("error: ")
    assert not (s["store"] / "variants").exists()  # nothing processed
    assert LocalObjectStore(s["store"]).temp_files() == []


NOT_A_DATABASE = [
    pytest.param(random.Random(6).randbytes(8192), id="random-bytes"),
    pytest.param(b"id,image_key,variant\nt1,src/t1.txt,gzip\n" * 50, id="csv-text"),
    pytest.param(b"SQLite format 3\x00" + b"\xff" * 4080, id="bad-header"),
]


@pytest.mark.parametrize("content", NOT_A_DATABASE)
def test_db_file_that_is_not_sqlite_is_refused_and_left_byte_for_byte(startup, content):
    db = startup["base"] / "tasks.db"
    db.write_bytes(content)
    result = run(startup, db)
    assert_refused_at_start_up(startup, result)
    assert "not a database" in result.stderr
    assert db.read_bytes() == content  # never "repaired" by overwriting the user's file
    assert sorted(p.name for p in startup["base"].glob("tasks.db*")) == ["tasks.db"]  # no -wal / -shm


def test_db_file_that_is_not_sqlite_is_named_in_the_error(startup):
    db = startup["base"] / "tasks.db"
    db.write_bytes(b"not a database at all\n" * 100)
    result = run(startup, db)
    assert result.returncode == 2
    assert str(db) in result.stderr, result.stderr


def test_foreign_sqlite_database_is_refused_unchanged_and_named(startup):
    db = startup["base"] / "other-app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE tasks (id INTEGER PRIMARY KEY, status TEXT, title TEXT)")
    conn.execute("INSERT INTO tasks (status, title) VALUES ('open', 'buy milk')")
    conn.commit()
    conn.close()
    before = db.read_bytes()
    result = run(startup, db)
    assert_refused_at_start_up(startup, result)
    assert str(db) in result.stderr, result.stderr
    assert db.read_bytes() == before


def test_foreign_sqlite_database_is_refused_without_processing(startup):
    """The part of the above that holds today: exit 2, nothing processed, its rows intact."""
    db = startup["base"] / "other-app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE tasks (id INTEGER PRIMARY KEY, status TEXT, title TEXT)")
    conn.execute("INSERT INTO tasks (status, title) VALUES ('open', 'buy milk')")
    conn.commit()
    conn.close()
    result = run(startup, db)
    assert_refused_at_start_up(startup, result)
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT id, status, title FROM tasks").fetchall() == [(1, "open", "buy milk")]
    finally:
        conn.close()


def a_file(path: Path) -> Path:
    path.write_text("x", encoding="utf-8")
    return path


def a_dir(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.mark.parametrize("make, expected", [
    pytest.param(lambda base: a_file(base / "blocker") / "tasks.db", ["--db", "blocker", "does not exist"],
                 id="db-parent-is-a-file"),
    pytest.param(lambda base: a_dir(base / "tasks.db"), ["tasks.db", "is a directory"], id="db-is-a-directory"),
])
def test_db_path_that_cannot_be_opened_is_refused_at_start_up(startup, make, expected):
    db = make(startup["base"])
    result = run(startup, db)
    assert_refused_at_start_up(startup, result)
    for text in expected:
        assert text in result.stderr, result.stderr


def refused_store(startup: dict, store: Path, expected: list[str]) -> None:
    db = startup["base"] / "tasks.db"
    result = run(startup, db, store)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == "" and result.stderr.startswith("error: "), result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr
    assert not db.exists()  # refused before the database was created


@pytest.mark.parametrize("make, expected", [
    pytest.param(lambda base: a_file(base / "store-file"), ["store-file", "not a directory"], id="store-is-a-file"),
    pytest.param(lambda base: a_file(base / "blocker") / "store", ["--store", "blocker", "not a directory"],
                 id="store-parent-is-a-file"),
])
def test_store_root_that_cannot_be_opened_is_refused_at_start_up(startup, make, expected):
    refused_store(startup, make(startup["base"]), expected)
    for name in ("store-file", "blocker"):
        path = startup["base"] / name
        assert not path.exists() or path.read_text(encoding="utf-8") == "x"  # left as it was


def test_store_root_that_is_a_dangling_symlink_is_refused_at_start_up(startup):
    os.symlink(startup["base"] / "nowhere", startup["base"] / "dangling")
    refused_store(startup, startup["base"] / "dangling", ["dangling"])
    assert not (startup["base"] / "nowhere").exists()


# -- the final metrics file cannot be written -------------------------------------------------------

@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the tq-shutdown thread dies
def test_metrics_file_that_cannot_be_written_does_not_hang_shutdown(tmp_path):
    from taskqueue import engine

    out_dir = tmp_path / "metrics"
    out_dir.mkdir()
    objects = LocalObjectStore(tmp_path / "store", fsync=False)
    [task] = make_tasks(objects, 1)
    tq = TaskQueue(tmp_path / "tasks.db", objects, config=Config(workers=1),
                   metrics_out=str(out_dir / "metrics.json"))
    try:
        assert tq.submit(task).result(HANG_S).attempts == 1
        out_dir.rmdir()  # the disk under the metrics file goes away during the run
        assert tq.shutdown(wait=True, timeout=3.0), "shutdown never completed"  # 3 s: a hang guard
    finally:
        engine.live_queues.discard(tq)  # else the exit hook waits for it again
    assert db_row(tmp_path / "tasks.db", task.idempotency_key)["status"] == "success"
