"""Bad paths, .env files, database URLs and object keys at the command line's boundary.

The house rule, end to end through a subprocess (``sys.executable task_queue_optimized.py``): bad
input exits 2 with one ``error: <flag or variable>: ...`` line naming the value -- never a traceback --
and nothing is created or processed; a password never reaches a message. Each subprocess runs in an
empty directory of its own with every ``TQ_*`` variable removed (see ``test_hostile_input.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from taskqueue.objectstore import MAX_SEGMENT_BYTES, LocalObjectStore
from taskqueue.store.postgres import redact

from clirun import HANG_S, REPO, SCRIPT, cli

GOOD = [{"id": "good-0", "image_key": "src/good-0.txt", "variant": "gzip"}]
LONG_NAME = "a" * 300  # over any file system's 255-byte limit on a file name


def tree(base: Path) -> list[str]:
    return sorted(p.relative_to(base).as_posix() for p in base.rglob("*"))


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """``work/`` (the working directory), a task file, its sources under ``sources/``, ``a-dir/``."""
    base = tmp_path / "b"
    (base / "work").mkdir(parents=True)
    objects = LocalObjectStore(base / "sources", fsync=False)
    objects.write(GOOD[0]["image_key"], [b"x" * 100])
    (base / "tasks.json").write_text(json.dumps(GOOD), encoding="utf-8")
    (base / "a-dir").mkdir()
    return base


def run(base: Path, *flags: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``run`` of the task file; ``flags`` replace the default --db/--store or add to them."""
    args = {"--tasks": str(base / "tasks.json"), "--db": str(base / "tasks.db"), "--store": str(base / "sources")}
    extra = list(flags)
    for flag in ("--db", "--store"):
        if flag in extra:
            i = extra.index(flag)
            args[flag] = extra[i + 1]
            del extra[i:i + 2]
    return cli("run", *[x for pair in args.items() for x in pair], *extra, cwd=base / "work", env=env)


def assert_refused(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr


# -- A and B: paths that cannot work, named by the flag or variable they came from ------------------------

PROC = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
FIFO = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")


@pytest.mark.parametrize("flag, value, expected", [
    pytest.param("--store", LONG_NAME, ["error: --store: ", "300 bytes"], id="store-name-too-long"),
    pytest.param("--log-file", LONG_NAME, ["error: --log-file: ", "300 bytes"], id="log-file-name-too-long"),
    pytest.param("--metrics-out", LONG_NAME, ["error: --metrics-out: ", "300 bytes"],
                 id="metrics-out-name-too-long"),
    pytest.param("--db", LONG_NAME, ["error: --db: ", "300 bytes"], id="db-name-too-long"),
    pytest.param("--metrics-out", "a-dir", ["error: --metrics-out: ", "a-dir", "is a directory"],
                 id="metrics-out-is-a-directory"),
    pytest.param("--log-file", "a-dir", ["error: --log-file: ", "a-dir", "is a directory"],
                 id="log-file-is-a-directory"),
    pytest.param("--metrics-out", "/proc/x.json", ["error: --metrics-out: ", "'/proc/x.json' cannot be written"],
                 id="metrics-out-not-writable", marks=PROC),
    pytest.param("--log-file", "/proc/x.log", ["error: --log-file: ", "'/proc/x.log' cannot be written"],
                 id="log-file-not-writable", marks=PROC),
    pytest.param("--store", "/proc/x", ["error: --store: ", "'/proc/x' cannot be written"],
                 id="store-not-creatable", marks=PROC),
    pytest.param("--metrics-out", "a-fifo", ["error: --metrics-out: ", "a-fifo", "is not a regular file"],
                 id="metrics-out-would-replace-a-fifo", marks=FIFO),  # as /dev/null would be, by root
    # Found by a review: an output naming another input or output of the same run overwrote it (exit 0).
    pytest.param("--metrics-out", "tasks.json", ["error: --metrics-out: ", "is the task file (--tasks)"],
                 id="metrics-out-is-the-task-file"),
    pytest.param("--metrics-out", "tasks.db", ["error: --metrics-out: ", "is the database (--db)"],
                 id="metrics-out-is-the-database"),
    pytest.param("--log-file", "tasks.db-wal", ["error: --log-file: ", "is the database (--db)"],
                 id="log-file-is-the-database-log"),
    pytest.param("--metrics-out", "sources/m.json", ["error: --metrics-out: ", "inside the object store (--store)"],
                 id="metrics-out-inside-the-store"),
    pytest.param("--log-file", "m.json", ["error: --log-file: ", "is the metrics file (--metrics-out)"],
                 id="log-file-is-the-metrics-file"),
    # Found by a review: a database path that is not a file passed the checks, then the store and the
    # sources were made (and /dev/null-journal written) before SQLite refused it.
    pytest.param("--db", "/dev/null", ["error: --db: ", "'/dev/null' is not a regular file"], id="db-is-a-device"),
    pytest.param("--db", ":memory:", ["error: --db: ", "':memory:'", "in memory"], id="db-in-memory"),
    # ... and a log file that could not be opened for appending hung (a pipe nobody reads) or raised a
    # traceback (/proc/version) once the run had begun.
    pytest.param("--log-file", "a-fifo", ["error: --log-file: ", "a-fifo", "named pipe nobody reads"],
                 id="log-file-is-a-fifo-nobody-reads", marks=FIFO),
    pytest.param("--log-file", "/proc/version", ["error: --log-file: ", "'/proc/version' cannot be appended to"],
                 id="log-file-cannot-be-appended-to", marks=PROC),
])
def test_an_unusable_path_exits_2_naming_its_flag_and_creates_nothing(base, flag, value, expected):
    if value == "a-fifo":
        os.mkfifo(base / value)
    extra = ["--metrics-out", str(base / "m.json")] if flag == "--log-file" and value == "m.json" else []
    value = value if os.path.isabs(value) or value == ":memory:" else str(base / value)
    before = tree(base)
    result = run(base, flag, value, "--make-sources", *extra)
    assert_refused(result, *expected)
    assert tree(base) == before  # no db, no store, no output, no probe left behind


@pytest.mark.parametrize("where", ["environment", ".env"])
@pytest.mark.parametrize("var", ["TQ_METRICS_OUT", "TQ_LOG_FILE"])
def test_an_output_path_variable_naming_a_directory_exits_2_naming_the_variable(base, var, where):
    env = {}
    if where == "environment":
        env[var] = str(base / "a-dir")
    else:
        (base / "work" / ".env").write_text(f"{var}={base / 'a-dir'}\n", encoding="utf-8")
    before = tree(base)
    result = run(base, env=env)
    assert_refused(result, f"error: {var} ({where}): ", "a-dir", "is a directory")
    assert tree(base) == before


def test_usable_output_paths_run_and_the_checks_leave_no_probe_behind(base):
    result = run(base, "--metrics-out", str(base / "m.json"), "--log-file", str(base / "run.log"),
                 "--store", str(base / "new" / "store"), "--make-sources")
    assert result.returncode == 0, result.stderr
    assert json.loads((base / "m.json").read_text(encoding="utf-8"))["counters"]
    assert not [p for p in tree(base) if ".tq-probe-" in p]


# -- A: a .env that is not UTF-8, a database URL that cannot be parsed ----------------------------------

@pytest.mark.parametrize("command", [["status"], ["dlq", "list"], ["run", "--tasks", "t.json"],
                                     ["enqueue", "--tasks", "t.json"]], ids=" ".join)
def test_a_dotenv_that_is_not_utf8_exits_2_naming_the_file_on_every_command(tmp_path, command):
    (tmp_path / ".env").write_bytes(b"# settings\nTQ_WORKERS=4\nTQ_STORE=caf\xe9\n")
    before = tree(tmp_path)
    result = cli(*command, cwd=tmp_path)
    assert_refused(result, f".env file {str(tmp_path / '.env')!r}", "not UTF-8", "0xe9 on line 3")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("command", [["status"], ["dlq", "list"], ["dlq", "redrive", "--all"],
                                     ["run", "--tasks", "t.json"], ["enqueue", "--tasks", "t.json"]],
                         ids=" ".join)
@pytest.mark.parametrize("url, reason", [
    ("postgresql://[::1", "Invalid IPv6 URL"),
    ("postgresql://u:hunter2@[::1/q", "Invalid IPv6 URL"),
    ("postgres://h:port/q?password=hunter2", "Port could not be cast to integer"),
])
def test_a_database_url_that_cannot_be_parsed_exits_2_naming_db_without_its_password(tmp_path, command, url,
                                                                                     reason):
    (tmp_path / "t.json").write_text(json.dumps(GOOD), encoding="utf-8")
    result = cli(*command, "--db", url, cwd=tmp_path)
    assert_refused(result, "error: --db: not a valid PostgreSQL URL", reason, f"got {redact(url)!r}")
    assert "hunter2" not in result.stderr


def test_a_database_url_from_the_environment_is_named_by_its_variable(tmp_path):
    result = cli("status", cwd=tmp_path, env={"TQ_DB": "postgresql://h:99999/q"})
    assert_refused(result, "error: TQ_DB (environment): not a valid PostgreSQL URL", "postgresql://h:99999/q")


# -- C: no password in messages, in the user part or the query --------------------------------------------

@pytest.mark.parametrize("url, shown", [
    ("postgresql://u:hunter2@h:5/db", "postgresql://u:***@h:5/db"),
    ("postgresql://u@127.0.0.1:1/x?password=hunter2", "postgresql://u@127.0.0.1:1/x?password=***"),
    ("postgresql://u@h/db?sslmode=require&password=hunter2&application_name=a",
     "postgresql://u@h/db?sslmode=require&password=***&application_name=a"),
    ("postgresql://u@h/db?pass%77ord=hunter2", "postgresql://u@h/db?pass%77ord=***"),  # libpq decodes names
    ("postgresql://u:p@ss:hunter2@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u:hun/ter2@h/db", "postgresql://u:***@h/db"),  # a "/" in the password, unescaped
    ("postgresql://u:hun?ter2@h/db?password=hunter2", "postgresql://u:***@h/db?password=***"),
    ("postgresql://u:hunter2@[::1", "postgresql://u:***@[::1"),  # cannot be parsed: masked as text
    ("postgresql://[::1?password=hunter2", "postgresql://[::1?password=***"),
    ("postgresql://h/db?sslmode=require", "postgresql://h/db?sslmode=require"),  # nothing to hide
])
def test_redact_hides_every_password_and_never_raises(url, shown):
    assert redact(url) == shown
    assert "hunter2" not in redact(url)


def test_a_password_in_the_url_query_is_not_printed(tmp_path):
    pytest.importorskip("psycopg")
    url = "postgresql://u@127.0.0.1:1/x?password=hunter2&connect_timeout=5"  # port 1: refused at once
    result = cli("status", "--db", url, cwd=tmp_path)
    assert_refused(result, "postgresql://u@127.0.0.1:1/x?password=***&connect_timeout=5")
    assert "hunter2" not in result.stderr


@pytest.mark.parametrize("command", ["run", "worker"])
def test_a_database_that_cannot_be_reached_refuses_before_the_store_or_sources_are_made(base, command):
    pytest.importorskip("psycopg")
    url = "postgresql://u:secret@/x?host=/nonexistent-socket-dir&connect_timeout=5"
    store = base / "new-store"
    args = (["--tasks", str(base / "tasks.json"), "--make-sources"] if command == "run" else ["--exit-when-idle"])
    result = cli(command, *args, "--db", url, "--store", str(store), "--no-progress", cwd=base / "work")
    assert_refused(result, "postgresql://u:***@/x")
    assert "secret" not in result.stderr
    assert not store.exists()  # neither the store root nor a source


# -- D: object key segments are limited in bytes, leaving room for what the store adds --------------------

def task_file(base: Path, key: str, **extra) -> None:
    (base / "tasks.json").write_text(json.dumps([{"id": "k", "image_key": key, "variant": "gzip", **extra}]),
                                     encoding="utf-8")


@pytest.mark.parametrize("chars", [150, 120, MAX_SEGMENT_BYTES // 2 + 1])
def test_a_key_segment_over_the_byte_limit_is_refused_at_load_naming_it(base, chars):
    key = "src/" + "é" * chars  # two bytes a character: within the limit counted in characters
    task_file(base, key)
    before = tree(base)
    result = run(base, "--make-sources")
    assert_refused(result, "field 'image_key'", repr(key), f"{2 * chars} bytes",
                   f"over the limit of {MAX_SEGMENT_BYTES} bytes")
    assert tree(base) == before  # no source made, no database


@pytest.mark.parametrize("variant, params, ext, suffix", [
    ("gzip", {}, "", ".gz"),
    pytest.param("thumb_8", {"format": "webp"}, ".png", ".webp", id="thumb-webp"),
])
def test_the_longest_source_segment_its_output_allows_is_processed(base, variant, params, ext, suffix):
    if variant != "gzip":
        pytest.importorskip("PIL.Image")
    room = MAX_SEGMENT_BYTES - len(suffix) - len(ext)  # the output's last segment is exactly at the limit
    segment = "é" * (room // 2) + "x" * (room % 2) + ext
    assert len((segment + suffix).encode()) == MAX_SEGMENT_BYTES
    (base / "tasks.json").write_text(json.dumps([{"id": "k", "image_key": "src/" + segment, "variant": variant,
                                                  "params": params}]), encoding="utf-8")
    result = run(base, "--make-sources")
    assert result.returncode == 0, result.stderr
    assert "1 succeeded" in result.stdout, result.stdout
    assert (base / "sources" / "variants" / variant / "src" / (segment + suffix)).is_file()

    longer = "é" + segment  # one character more: the output key would be over the limit
    (base / "tasks.json").write_text(json.dumps([{"id": "k2", "image_key": "src/" + longer, "variant": variant,
                                                  "params": params}]), encoding="utf-8")
    assert_refused(run(base, "--make-sources"), "too long for its output key", f"{MAX_SEGMENT_BYTES} bytes")


@pytest.mark.parametrize("command", [["status"], ["dlq", "list"], ["dlq", "redrive", "--all"]],
                         ids=["status", "dlq-list", "dlq-redrive"])
def test_an_empty_database_file_is_refused_by_the_admin_commands_and_left_empty(tmp_path, command):
    db = tmp_path / "tasks.db"
    db.write_bytes(b"")  # touched, or a typo'd path made by something else: no queue's database yet
    result = cli(*command, "--db", str(db), cwd=tmp_path)
    assert_refused(result, "--db", "empty file")
    assert db.read_bytes() == b"" and tree(tmp_path) == ["tasks.db"]  # no schema written, no side files


# -- E: a worker on a database that does not exist ------------------------------------------------------------

def test_a_worker_exiting_when_idle_refuses_a_database_that_does_not_exist(base):
    before = tree(base)
    result = cli("worker", "--db", str(base / "typo.db"), "--store", str(base / "new-store"), "--exit-when-idle",
                 "--no-progress", cwd=base / "work")
    assert_refused(result, "--db: no database at", repr(str(base / "typo.db")), "--exit-when-idle")
    assert tree(base) == before  # no database, no store root


def test_a_worker_that_makes_its_database_says_so_and_then_waits_for_tasks(base):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQ_")}
    env["PYTHONPATH"] = str(REPO)
    db = base / "new.db"
    worker = subprocess.Popen([sys.executable, str(SCRIPT), "worker", "--db", str(db), "--store",
                               str(base / "sources"), "--no-progress"], cwd=base / "work", env=env,
                              stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    guard = threading.Timer(HANG_S, worker.kill)  # hang guard only: a worker that never writes the note
    guard.start()
    try:
        lines = []
        for line in worker.stderr:  # until the note (or the end of a worker that died)
            lines.append(line)
            if line.startswith("note: "):
                break
        assert lines and lines[-1] == f"note: {str(db)!r} did not exist: created an empty task queue database; " \
                                      f"waiting for tasks\n", lines
        assert db.is_file()
        worker.send_signal(signal.SIGTERM)
        out, _err = worker.communicate(timeout=HANG_S)
    finally:
        guard.cancel()
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0
    assert "stopped" in out


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["dlq", "list"]])
def test_a_reader_that_stops_reading_ends_the_command_quietly(base, command):
    """Found by a review: ``dlq list | head -1`` ended in a BrokenPipeError traceback and exit 1.
    The reader going away ends the command as a shell reports a SIGPIPE (141), with nothing on stderr."""
    (base / "tasks.json").write_text(json.dumps([{"id": f"m{i}", "image_key": f"missing/{i}.txt", "variant": "gzip"}
                                                 for i in range(3)]), encoding="utf-8")
    assert run(base).returncode == 0  # three dead letters (their sources are missing)
    child = subprocess.Popen([sys.executable, str(SCRIPT), *command, "--db", str(base / "tasks.db")],
                             cwd=base / "work", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()  # the reader is gone before the first line is written
    stderr = child.stderr.read().decode()
    assert child.wait(timeout=HANG_S) == 128 + signal.SIGPIPE, stderr
    assert stderr == ""


def _runner_as_others() -> str:
    """A python3 that users other than root may run (the venv's may sit under /root); skip if none."""
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("runuser"):
        pytest.skip("needs root and runuser, to act as two other users")
    import pwd

    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            pytest.skip(f"needs a user named {user!r}")
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate) and subprocess.run(
                ["runuser", "-u", "nobody", "--", candidate, "-c", "import sqlite3"],
                capture_output=True, timeout=HANG_S).returncode == 0:
            return candidate
    pytest.skip("no python3 that other users may run")


def test_another_users_status_leaves_nothing_that_stops_the_owners_next_run():
    """Found in review: ``status`` (and ``dlq list``) opened the database as a writer would. With no
    process holding it, SQLite created its -wal and -shm files for the reader, owned by the reader:
    the owner's next command failed with "attempt to write a readonly database"."""
    python = _runner_as_others()
    shared = Path(tempfile.mkdtemp())  # not tmp_path: under a 0700 directory other users cannot enter
    try:
        shared.chmod(0o1777)  # a shared directory, like /tmp
        shutil.copytree(REPO / "taskqueue", shared / "taskqueue")
        shutil.copy(SCRIPT, shared / SCRIPT.name)
        (shared / "tasks.json").write_text(json.dumps(GOOD), encoding="utf-8")
        for path in shared.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)

        def as_user(user: str, *args: str) -> subprocess.CompletedProcess:
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(shared), "LC_ALL": "C.UTF-8"}
            return subprocess.run(["runuser", "-u", user, "--", python, SCRIPT.name, *args], cwd=shared, env=env,
                                  capture_output=True, text=True, timeout=HANG_S)

        db = str(shared / "tasks.db")
        made = as_user("postgres", "enqueue", "--tasks", "tasks.json", "--db", db)
        assert made.returncode == 0, made.stderr
        for command in (["status"], ["dlq", "list"]):
            read = as_user("nobody", *command, "--db", db)
            assert read.returncode == 0, read.stderr
        import pwd

        nobody = pwd.getpwnam("nobody").pw_uid
        assert [p.name for p in shared.iterdir() if p.stat().st_uid == nobody] == []
        again = as_user("postgres", "enqueue", "--tasks", "tasks.json", "--db", db)
        assert again.returncode == 0, again.stderr
        assert "enqueued 0 task(s)" in again.stdout and "1 already there" in again.stdout, again.stdout
    finally:
        shutil.rmtree(shared, ignore_errors=True)
