"""The command line, run as a subprocess: run / status / dlq, idempotent re-runs, and bad settings.

Each command runs with ``sys.executable`` on ``task_queue_optimized.py`` by
absolute path, in a temporary working directory (so no ``.env`` or default
``tasks.db``/``store`` of the repository is read or written) and with every
``TQ_*`` variable removed from the environment.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from taskqueue.objectstore import LocalObjectStore
from taskqueue.workload import create_sources, generate_tasks

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "task_queue_optimized.py"
TIMEOUT_S = 120  # hang guard only
SUMMARY = re.compile(r"tasks (\d+): (\d+) succeeded, (\d+) already done \(deduplicated\), "
                     r"(\d+) dead-lettered, (\d+) unfinished")


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TQ_")}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), clean.get("PYTHONPATH")]))
    clean.update(env or {})
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=clean, capture_output=True,
                          text=True, timeout=TIMEOUT_S)


def summary(stdout: str) -> dict[str, int]:
    match = SUMMARY.search(stdout)
    assert match, f"no summary line in:\n{stdout}"
    names = ("tasks", "succeeded", "deduplicated", "dead_lettered", "unfinished")
    return dict(zip(names, map(int, match.groups())))


def query(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def outputs(store: Path) -> dict[str, tuple[int, int]]:
    """Every output object: relative path -> (inode, mtime_ns); os.replace gives a new inode."""
    found = {}
    for path in (store / "variants").rglob("*"):
        if path.is_file():
            st = path.stat()
            found[path.relative_to(store).as_posix()] = (st.st_ino, st.st_mtime_ns)
    return found


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """An empty working directory for the subprocess."""
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def workload(tmp_path: Path) -> dict:
    """12 gzip tasks (3 of them repeat an earlier pair) with their sources, in a task file."""
    tasks = generate_tasks(12, seed=5, duplicate_fraction=0.25, variants="gzip")
    store = tmp_path / "store"
    create_sources(LocalObjectStore(store, fsync=False), tasks, seed=5)
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps(tasks), encoding="utf-8")
    pairs = {(t["image_key"], t["variant"]) for t in tasks}
    return {"tasks": tasks, "file": path, "store": store, "db": tmp_path / "tasks.db", "pairs": len(pairs)}


def run_args(w: dict, *extra: str) -> list[str]:
    return ["run", "--tasks", str(w["file"]), "--db", str(w["db"]), "--store", str(w["store"]), *extra]


# -- run, and run again -----------------------------------------------------------------------------

def test_run_processes_the_file_and_a_second_run_processes_nothing(work, workload, tmp_path):
    first = cli(*run_args(workload, "--workers", "3", "--metrics-out", str(tmp_path / "m1.json")), cwd=work)
    assert first.returncode == 0, first.stderr
    s1 = summary(first.stdout)
    pairs = workload["pairs"]
    assert s1 == {"tasks": 12, "succeeded": pairs, "deduplicated": 12 - pairs, "dead_lettered": 0, "unfinished": 0}
    assert query(workload["db"], "SELECT status, COUNT(*) FROM tasks GROUP BY status") == [("success", pairs)]
    made = outputs(workload["store"])
    assert len(made) == pairs
    rows = query(workload["db"], "SELECT id, version, updated_at FROM tasks ORDER BY id")
    metrics1 = json.loads((tmp_path / "m1.json").read_text(encoding="utf-8"))
    assert metrics1["counters"]["succeeded"] == pairs

    second = cli(*run_args(workload, "--workers", "3", "--metrics-out", str(tmp_path / "m2.json")), cwd=work)
    assert second.returncode == 0, second.stderr
    assert summary(second.stdout) == {"tasks": 12, "succeeded": 0, "deduplicated": 12, "dead_lettered": 0,
                                      "unfinished": 0}
    assert outputs(workload["store"]) == made  # not one output rewritten
    assert query(workload["db"], "SELECT id, version, updated_at FROM tasks ORDER BY id") == rows
    metrics2 = json.loads((tmp_path / "m2.json").read_text(encoding="utf-8"))
    assert metrics2["counters"]["enqueued"] == metrics2["counters"]["dequeued"] == 0
    assert metrics2["processing_s"]["count"] == 0
    assert metrics2["counters"]["deduplicated"] == 12


def test_run_in_reject_mode_with_a_tiny_queue_still_finishes_everything(work, workload):
    result = cli(*run_args(workload, "--workers", "1", "--queue-size", "1", "--on-full", "reject"), cwd=work)
    assert result.returncode == 0, result.stderr
    s = summary(result.stdout)
    assert s["succeeded"] == workload["pairs"] and s["unfinished"] == 0 and s["dead_lettered"] == 0
    assert query(workload["db"], "SELECT COUNT(*) FROM tasks WHERE status = 'success'") == [(workload["pairs"],)]


def test_status_json_counts_match_the_database(work, workload):
    missing = {"id": "lost-1", "image_key": "missing/none.txt", "variant": "gzip"}
    workload["file"].write_text(json.dumps(workload["tasks"] + [missing]), encoding="utf-8")
    assert cli(*run_args(workload), cwd=work).returncode == 0
    result = cli("status", "--db", str(workload["db"]), "--json", cwd=work)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    expected = {s: 0 for s in ("queued", "running", "success", "failed", "dead")}
    expected.update(dict(query(workload["db"], "SELECT status, COUNT(*) FROM tasks GROUP BY status")))
    assert status["counts"] == expected
    assert (expected["success"], expected["dead"]) == (workload["pairs"], 1)
    assert status["total"] == workload["pairs"] + 1
    assert [(f["idempotency_key"], f["status"], f["error_class"]) for f in status["recent_failures"]] == [
        ("missing/none.txt:gzip", "dead", "SourceMissing")]

    text = cli("status", "--db", str(workload["db"]), cwd=work)
    assert text.returncode == 0 and f"success {workload['pairs']}" in text.stdout and "dead 1" in text.stdout


# -- the dead-letter queue ---------------------------------------------------------------------------

def test_dlq_list_redrive_and_the_next_run_completes_the_task(work, workload):
    key = "missing/late.txt"
    lost = {"id": "late-1", "image_key": key, "variant": "gzip"}
    workload["file"].write_text(json.dumps(workload["tasks"] + [lost]), encoding="utf-8")
    db = str(workload["db"])

    first = cli(*run_args(workload), cwd=work)
    assert first.returncode == 0, first.stderr
    assert summary(first.stdout)["dead_lettered"] == 1

    listed = cli("dlq", "list", "--db", db, "--json", cwd=work)
    assert listed.returncode == 0, listed.stderr
    [item] = json.loads(listed.stdout)
    assert (item["idempotency_key"], item["task_id"], item["error_class"], item["attempts"]) == \
        (f"{key}:gzip", "late-1", "SourceMissing", 1)

    unknown = cli("dlq", "redrive", "--db", db, "no/such.txt:gzip", cwd=work)
    assert unknown.returncode == 1 and "no/such.txt:gzip" in unknown.stderr

    LocalObjectStore(workload["store"], fsync=False).write(key, [b"it arrived after all\n"])  # the fault is gone
    redriven = cli("dlq", "redrive", "--db", db, f"{key}:gzip", cwd=work)
    assert redriven.returncode == 0, redriven.stderr
    assert query(workload["db"], "SELECT status, attempts FROM tasks WHERE idempotency_key = ?", (f"{key}:gzip",)) \
        == [("queued", 0)]
    assert json.loads(cli("dlq", "list", "--db", db, "--json", cwd=work).stdout) == []

    before = outputs(workload["store"])
    again = cli(*run_args(workload), cwd=work)
    assert again.returncode == 0, again.stderr
    s = summary(again.stdout)
    assert s["dead_lettered"] == 0 and s["unfinished"] == 0
    assert query(workload["db"], "SELECT status, attempts FROM tasks WHERE idempotency_key = ?", (f"{key}:gzip",)) \
        == [("success", 1)]
    after = outputs(workload["store"])
    assert set(after) - set(before) == {f"variants/gzip/{key}.gz"}
    assert {k: v for k, v in after.items() if k in before} == before  # nothing else was redone


def test_dlq_redrive_leaves_the_records_of_invalid_items_and_their_errors_as_they_are(work, tmp_path):
    """Found in review: redriven, a task file's invalid item (kept under a key of its own, with what
    the file held) was dead-lettered again by the next run as "the stored task's key ... is not its
    row's": its real error (an unknown variant, a level of 42) was lost. No redrive can mend it: it
    is not redriven, and the command says so."""
    sample = REPO / "input_new" / "sample_tasks_small.json"
    db, store = str(tmp_path / "tasks.db"), str(tmp_path / "store")
    first = cli("run", "--tasks", str(sample), "--db", db, "--store", store, "--make-sources",
                "--invalid", "dead-letter", cwd=work)
    assert first.returncode == 0, first.stderr
    before = {d["idempotency_key"]: d for d in json.loads(cli("dlq", "list", "--db", db, "--json", cwd=work).stdout)}
    invalid = sorted(k for k, d in before.items() if d["attempts"] == 0)
    assert len(invalid) == 2 and "missing/sample/ghost.txt:gzip" in before  # and the missing source, a real one

    redriven = cli("dlq", "redrive", "--db", db, "--all", cwd=work)
    assert redriven.returncode == 0, redriven.stderr
    assert "redriven 1 task(s)" in redriven.stdout
    assert "not redriven: 2 invalid item(s) of a task file" in redriven.stdout, redriven.stdout
    by_key = cli("dlq", "redrive", "--db", db, invalid[0], cwd=work)
    assert by_key.returncode == 1 and "an invalid item of a task file" in by_key.stderr, by_key.stderr

    again = cli("run", "--tasks", str(sample), "--db", db, "--store", store, "--invalid", "dead-letter", cwd=work)
    assert again.returncode == 0, again.stderr
    after = {d["idempotency_key"]: d for d in json.loads(cli("dlq", "list", "--db", db, "--json", cwd=work).stdout)}
    assert {k: (after[k]["error_class"], after[k]["last_error"]) for k in invalid} == {
        k: (before[k]["error_class"], before[k]["last_error"]) for k in invalid}


# -- bad input exits 2 and does nothing ------------------------------------------------------------------

@pytest.mark.parametrize("extra, env, names", [
    pytest.param(["--workers", "0"], {}, ("--workers", "0"), id="workers-0"),
    pytest.param(["--on-full", "drop"], {}, ("--on-full", "drop"), id="on-full-drop"),
    pytest.param(["--queue-size", "-3"], {}, ("--queue-size", "-3"), id="queue-size-negative"),
    pytest.param([], {"TQ_QUEUE_SIZE": "-1"}, ("TQ_QUEUE_SIZE", "-1"), id="env-queue-size"),
    pytest.param([], {"TQ_WORKERS": "many"}, ("TQ_WORKERS", "many"), id="env-workers-text"),
])
def test_bad_settings_exit_2_naming_the_setting_and_value(work, workload, extra, env, names):
    result = cli(*run_args(workload, *extra), cwd=work, env=env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    for name in names:
        assert name in result.stderr
    assert not workload["db"].exists()


def test_a_bad_value_in_dotenv_exits_2_naming_it(work, workload):
    (work / ".env").write_text("TQ_WORKERS=0\n", encoding="utf-8")
    result = cli(*run_args(workload), cwd=work)
    assert result.returncode == 2
    assert "TQ_WORKERS" in result.stderr and ".env" in result.stderr
    assert not workload["db"].exists()


def test_flag_overrides_environment(work, workload, tmp_path):
    result = cli(*run_args(workload, "--workers", "2", "--metrics-out", str(tmp_path / "m.json")), cwd=work,
                 env={"TQ_WORKERS": "0"})
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))["config"]["workers"] == 2


def test_store_that_is_a_file_exits_2(work, workload, tmp_path):
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x", encoding="utf-8")
    result = cli("run", "--tasks", str(workload["file"]), "--db", str(workload["db"]), "--store", str(a_file),
                 cwd=work)
    assert result.returncode == 2
    assert str(a_file) in result.stderr and "not a directory" in result.stderr
    assert not workload["db"].exists()
    assert a_file.read_text(encoding="utf-8") == "x"


def test_missing_task_file_exits_2_and_creates_no_database(work, workload, tmp_path):
    result = cli("run", "--tasks", str(tmp_path / "absent.json"), "--db", str(workload["db"]),
                 "--store", str(workload["store"]), cwd=work)
    assert result.returncode == 2
    assert "absent.json" in result.stderr
    assert not workload["db"].exists()


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["dlq", "list"]])
def test_reading_commands_on_a_missing_database_exit_2_without_creating_it(work, tmp_path, command):
    db = tmp_path / "nothing-here.db"
    result = cli(*command, "--db", str(db), cwd=work)
    assert result.returncode == 2
    assert str(db) in result.stderr
    assert not db.exists()
    assert list(work.iterdir()) == []


def test_redrive_needs_keys_or_all(work, workload):
    assert cli(*run_args(workload), cwd=work).returncode == 0
    result = cli("dlq", "redrive", "--db", str(workload["db"]), cwd=work)
    assert result.returncode == 2
    assert "--all" in result.stderr
    everything = cli("dlq", "redrive", "--db", str(workload["db"]), "--all", cwd=work)
    assert everything.returncode == 0 and "redriven 0" in everything.stdout


def test_a_store_error_mid_run_shuts_down_exits_1_and_keeps_what_finished(work, workload):
    """A claim the database refuses half-way through the file (an injected trigger): the run stops
    intake, finishes what it accepted, says what happened and exits 1 -- not 2, which promises
    that nothing was processed."""
    db = workload["db"]
    first = cli(*run_args(workload), cwd=work)
    assert first.returncode == 0, first.stderr
    query(db, "DELETE FROM tasks")  # start again from an empty queue, with a trap in the database
    conn = sqlite3.connect(db)
    victim = json.loads(Path(workload["file"]).read_text())[5]["id"]
    conn.execute(f"CREATE TRIGGER trap BEFORE INSERT ON tasks WHEN NEW.task_id = '{victim}'"
                 " BEGIN SELECT RAISE(ABORT, 'injected: the disk is gone'); END")
    conn.commit()
    conn.close()
    again = cli(*run_args(workload), cwd=work)
    assert again.returncode == 1, (again.stdout, again.stderr)
    assert "the run stopped" in again.stderr and "injected: the disk is gone" in again.stderr
    assert "Traceback" not in again.stderr
    statuses = query(db, "SELECT status, COUNT(*) FROM tasks GROUP BY status")
    assert statuses and all(status == "success" for status, _n in statuses)  # what it accepted, it finished


@pytest.mark.parametrize("level, shows_debug, shows_info", [("debug", True, True), ("error", False, False)])
def test_tq_log_level_is_applied(work, workload, level, shows_debug, shows_info):
    log = work / "run.log"
    faults = {"TQ_FAULT_TRANSIENT_RATE": "0.5", "TQ_RETRY_BASE_S": "0.001", "TQ_MAX_ATTEMPTS": "20"}  # retries log at info
    result = cli(*run_args(workload, "--log-file", str(log)), cwd=work, env={"TQ_LOG_LEVEL": level, **faults})
    assert result.returncode == 0, result.stderr
    levels = {json.loads(line)["level"] for line in log.read_text().splitlines()} if log.exists() else set()
    assert ("debug" in levels) is shows_debug
    assert ("info" in levels) is shows_info


def test_a_misspelt_setting_is_warned_of_naming_the_one_meant(work, workload):
    result = cli("status", "--db", str(workload["db"]), cwd=work, env={"TQ_WORKRS": "4"})
    assert "warning: TQ_WORKRS (environment) is not a setting, ignored (did you mean TQ_WORKERS?)" in result.stderr
