"""JSON-lines logs: the formatter's contract, and every line of a real run with retries and dead letters."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import sqlite3
import sys
from pathlib import Path
from typing import Iterator

import pytest

from taskqueue.config import Config
from taskqueue.engine import TaskQueue
from taskqueue.errors import InjectedPermanentError, InjectedTransientError, SourceMissing
from taskqueue import logs
from taskqueue.logs import LOGGER_NAME, JsonFormatter, configure, task_extra
from taskqueue.objectstore import LocalObjectStore
from taskqueue.processor import Processor
from taskqueue.store import SQLiteStore
from taskqueue.task import Task

WAIT_S = 30  # hang guard only
REQUIRED = ("ts", "level", "logger", "event", "message", "task_id", "idempotency_key")
FAILURE_EVENTS = {"retry_scheduled", "dead_lettered", "store_error", "worker_error"}


def strict_loads(line: str) -> dict:
    """json.loads that refuses NaN and Infinity, which are not JSON (RFC 8259)."""
    def refuse(name: str):
        raise ValueError(f"non-JSON constant {name} in {line!r}")
    return json.loads(line, parse_constant=refuse)


def make_record(msg: str = "hello", *, level: int = logging.INFO, extra: dict | None = None,
                exc_info=None) -> logging.LogRecord:
    logger = logging.getLogger(LOGGER_NAME + ".test")
    return logger.makeRecord(logger.name, level, __file__, 1, msg, (), exc_info, extra=extra)


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Every record of the package's logger, at DEBUG, formatted as JSON lines into a StringIO."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    logger = logging.getLogger(LOGGER_NAME)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(previous)


@pytest.fixture
def restore_package_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger(LOGGER_NAME)
    handlers, level = list(logger.handlers), logger.level
    yield logger
    for handler in logger.handlers[:]:
        if handler not in handlers:
            logger.removeHandler(handler)
            handler.close()
    logger.setLevel(level)


# -- the formatter ----------------------------------------------------------------------------------

def test_a_plain_record_has_every_required_field():
    out = strict_loads(JsonFormatter().format(make_record("plain %s" % "text", level=logging.WARNING)))
    assert set(REQUIRED) <= set(out)
    assert out["event"] == "log" and out["task_id"] is None and out["idempotency_key"] is None
    assert out["level"] == "warning" and out["message"] == "plain text"
    assert out["logger"] == LOGGER_NAME + ".test"
    assert out["ts"].endswith("+00:00")


def test_task_extra_carries_task_fields_and_the_error_class():
    task = Task(id="t-1", image_key="src/a.txt", variant="gzip")
    extra = task_extra("retry_scheduled", task, error=InjectedTransientError("flaky"), attempt=2, delay_s=0.25)
    out = strict_loads(JsonFormatter().format(make_record("retrying", extra=extra)))
    assert out["event"] == "retry_scheduled"
    assert (out["task_id"], out["idempotency_key"]) == ("t-1", "src/a.txt:gzip")
    assert (out["error_class"], out["error"]) == ("InjectedTransientError", "flaky")
    assert (out["attempt"], out["delay_s"]) == (2, 0.25)


def test_task_extra_without_a_task_or_error():
    assert task_extra("started") == {"event": "started", "task_id": None, "idempotency_key": None}


def test_an_exception_adds_its_traceback_and_class():
    try:
        raise SourceMissing("object 'x' does not exist")
    except SourceMissing:
        record = make_record("failed", level=logging.ERROR, exc_info=sys.exc_info())
    out = strict_loads(JsonFormatter().format(record))
    assert out["error_class"] == "SourceMissing"
    assert "Traceback" in out["traceback"] and "object 'x' does not exist" in out["traceback"]


def test_multiline_and_unicode_text_stays_on_one_line():
    line = JsonFormatter().format(make_record("first\nsecond \u00e9\u4e2d \u2028 end",
                                              extra={"event": "x", "note": "a\r\nb"}))
    assert "\n" not in line and "\r" not in line
    out = strict_loads(line)
    assert out["message"] == "first\nsecond \u00e9\u4e2d \u2028 end" and out["note"] == "a\r\nb"


def test_values_json_cannot_encode_are_rendered_as_text():
    out = strict_loads(JsonFormatter().format(make_record("x", extra={"path": Path("/a/b"), "blob": b"\x00\xff",
                                                                     "items": {1, 2}})))
    assert out["path"] == str(Path("/a/b")) and out["blob"] == str(b"\x00\xff") and out["items"] == str({1, 2})


def test_non_finite_numbers_still_give_strict_json():
    line = JsonFormatter().format(make_record("x", extra={"event": "sample", "delay_s": math.nan,
                                                          "rate": math.inf, "nested": [1.5, -math.inf]}))
    out = strict_loads(line)
    assert out["event"] == "sample" and out["nested"][0] == 1.5
    assert all(isinstance(v, str) for v in (out["delay_s"], out["rate"], out["nested"][1]))


def test_configure_writes_json_lines_to_a_stream(restore_package_logger):
    stream = io.StringIO()
    handler = configure("info", stream=stream)
    log = logging.getLogger(LOGGER_NAME)
    log.debug("hidden", extra={"event": "debug_only"})
    log.info("shown", extra=task_extra("shown", Task(id="a", image_key="k.txt", variant="gzip")))
    lines = stream.getvalue().splitlines()
    assert [strict_loads(line)["event"] for line in lines] == ["shown"]
    assert isinstance(handler.formatter, JsonFormatter)


def test_configure_appends_to_a_file(tmp_path, restore_package_logger):
    path = tmp_path / "log.jsonl"
    path.write_text('{"earlier": true}\n', encoding="utf-8")
    handler = configure("warning", path=str(path))
    logging.getLogger(LOGGER_NAME).warning("careful", extra={"event": "careful"})
    handler.flush()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert strict_loads(lines[0]) == {"earlier": True}
    assert strict_loads(lines[1])["event"] == "careful" and len(lines) == 2


def test_configure_twice_for_one_target_does_not_duplicate_lines(restore_package_logger, tmp_path):
    stream, other = io.StringIO(), io.StringIO()
    first = configure("info", stream=stream)
    assert configure("info", stream=stream) is first  # documented: "Idempotent per target"
    configure("info", stream=other)
    path = tmp_path / "log.jsonl"
    to_file = configure("info", path=str(path))
    assert configure("info", path=str(path)) is to_file
    logging.getLogger(LOGGER_NAME).info("once", extra={"event": "once"})
    to_file.flush()
    assert len(stream.getvalue().splitlines()) == len(other.getvalue().splitlines()) == 1
    assert len(path.read_text(encoding="utf-8").splitlines()) == 1


# -- every line of a real run -------------------------------------------------------------------------

class ScriptedProcessor(Processor):
    """Raises the scripted exception for (key, attempt), else processes for real."""

    def __init__(self, store: LocalObjectStore, script: dict[tuple[str, int], BaseException]) -> None:
        super().__init__(store)
        self.script = script

    def process(self, task: Task, attempt: int = 1):
        error = self.script.get((task.idempotency_key, attempt))
        if error is not None:
            raise error
        return super().process(task, attempt)


def test_every_line_of_a_run_with_retries_and_dead_letters_is_complete_json(tmp_path, captured):
    objects = LocalObjectStore(tmp_path / "objects", fsync=False)
    db = tmp_path / "tasks.db"
    names = ["ok", "flaky", "broken", "hopeless", "crashed"]
    tasks = {}
    for name in names:
        objects.write(f"src/{name}.txt", [name.encode()])
        tasks[name] = Task(id=f"id-{name}", image_key=f"src/{name}.txt", variant="gzip")
    tasks["ghost"] = Task(id="id-ghost", image_key="src/ghost.txt", variant="gzip")  # no source: dead
    key = {name: t.idempotency_key for name, t in tasks.items()}

    # A row left running on its last attempt by an earlier incarnation: dead-lettered at recovery.
    earlier = SQLiteStore(db)
    row = earlier.commit(earlier.claim(tasks["crashed"], 3)).row
    earlier.commit(earlier.start(row.id, row.version, row.attempts))
    earlier.close()
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE tasks SET attempts = 2 WHERE id = ?", (row.id,))
    conn.close()

    script = {(key["flaky"], 1): InjectedTransientError("flaky once"),
              (key["broken"], 1): InjectedPermanentError("broken for good"),
              (key["hopeless"], 1): InjectedTransientError("no luck 1"),
              (key["hopeless"], 2): InjectedTransientError("no luck 2")}
    config = Config(workers=2, max_attempts=2, retry_base_s=0.001, retry_seed=1, fsync_outputs=False)
    with TaskQueue(db, objects, config=config, processor=ScriptedProcessor(objects, script)) as tq:
        futures = {name: tq.submit(tasks[name]) for name in ("ok", "flaky", "broken", "hopeless", "ghost")}
        for future in futures.values():
            future.exception(timeout=WAIT_S)
    assert futures["ok"].result().attempts == 1 and futures["flaky"].result().attempts == 2

    lines = captured.getvalue().splitlines()
    assert lines, "the run logged nothing"
    records = []
    for line in lines:
        out = strict_loads(line)
        assert isinstance(out, dict)
        missing = [f for f in REQUIRED if f not in out]
        assert not missing, f"{missing} missing from {line}"
        assert isinstance(out["event"], str) and out["event"]
        if out["event"] in FAILURE_EVENTS or out["level"] in ("warning", "error", "critical"):
            assert out.get("error_class"), f"failure line without error_class: {line}"
            assert out["task_id"] and out["idempotency_key"], f"failure line without its task: {line}"
        records.append(out)

    retries = sorted(r["idempotency_key"] for r in records if r["event"] == "retry_scheduled")
    assert retries == sorted([key["flaky"], key["hopeless"]])
    dead = {r["idempotency_key"]: r["error_class"] for r in records if r["event"] == "dead_lettered"}
    assert dead == {key["broken"]: "InjectedPermanentError", key["hopeless"]: "InjectedTransientError",
                    key["ghost"]: "SourceMissing", key["crashed"]: "WorkerCrashed"}
    for r in records:  # a line names the task its key belongs to
        if r["idempotency_key"] is not None:
            name = r["idempotency_key"].split("/")[1].split(".")[0]
            assert r["task_id"] == f"id-{name}", r


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a device whose writes fail: disk full)")
def test_a_log_file_that_cannot_be_written_warns_once_and_never_raises(capsys):
    """Found by a review: with the log file's disk full, logging printed a traceback per record, and the
    handler's close() raised at the end of a run whose every task had finished (exit 1, not 0)."""
    handler = logs.configure("info", path="/dev/full")
    log = logging.getLogger(logs.LOGGER_NAME)
    try:
        for n in range(3):
            log.info("line %d", n, extra={"event": "x", "task_id": None, "idempotency_key": None})  # emit flushes
    finally:
        log.removeHandler(handler)
        handler.close()  # must not raise
    err = capsys.readouterr().err
    assert err.count("cannot be written") == 1 and "/dev/full" in err and "Traceback" not in err


def test_a_record_with_a_lone_surrogate_or_a_unicode_line_separator_is_one_valid_utf8_line(tmp_path):
    """Found in review: a path that is not UTF-8 (a lone surrogate, from os.listdir) in a record made
    the log file's strict UTF-8 refuse it: the line was lost, and every later line with it (the
    handler gave up for good). A key holding U+2028 split a line where str.splitlines() reads it."""
    path = tmp_path / "run.log"
    handler = configure("info", str(path))
    try:
        log = logging.getLogger(LOGGER_NAME)
        bad_path, key = os.fsdecode(b"d\xff/m.json"), "a\u2028b\x85c\u2029d \u00e9"
        log.error("could not write final metrics", extra={"event": "metrics_write_failed", "path": bad_path,
                                                           "idempotency_key": key})
        log.info("after", extra={"event": "after"})
    finally:
        logging.getLogger(LOGGER_NAME).removeHandler(handler)
        handler.close()
    text = path.read_bytes().decode("utf-8")  # strict: every byte is UTF-8
    lines = text.splitlines()
    assert len(lines) == 2 and text.count("\n") == 2
    first = json.loads(lines[0])
    assert (first["path"], first["idempotency_key"]) == (bad_path, key)  # as they were, escaped in the line
    assert json.loads(lines[1])["event"] == "after"


def test_every_line_names_its_process():
    stream = io.StringIO()
    handler = configure("info", stream=stream)
    try:
        logging.getLogger(LOGGER_NAME).info("hello", extra={"event": "hello"})
    finally:
        logging.getLogger(LOGGER_NAME).removeHandler(handler)
    assert json.loads(stream.getvalue())["pid"] == os.getpid()
