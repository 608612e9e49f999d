"""What the command line prints, as text a terminal shows: nothing in a task file or a path can forge a
line, colour the terminal or crash the printing; ``--json`` stays exact.

Each command runs in a subprocess (tests/integration/clirun.py) in a temporary directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from clirun import cli

# An image key that, printed raw, starts a new row that looks like a dead letter and colours it red.
FORGERY = "x\n  dead   fake/line:gzip  attempts 9  Forged: \x1b[31mRED\x1b[0m"
FORGED_ID = "evil\x1b[2J"  # printed raw: clears the screen


def test_status_and_dlq_list_escape_what_the_terminal_would_act_on_and_json_stays_exact(tmp_path: Path):
    items = [{"id": "ok-1", "image_key": "src/a.txt", "variant": "gzip"},
             {"id": FORGED_ID, "image_key": FORGERY, "variant": "gzip"}]
    (tmp_path / "tasks.json").write_text(json.dumps(items), encoding="utf-8")
    enqueued = cli("enqueue", "--tasks", "tasks.json", "--db", "tasks.db", "--invalid", "dead-letter",
                   cwd=tmp_path)
    assert enqueued.returncode == 0, enqueued.stderr

    status = cli("status", "--db", "tasks.db", cwd=tmp_path)
    dlq = cli("dlq", "list", "--db", "tasks.db", cwd=tmp_path)
    for result in (status, dlq):
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout and "\r" not in result.stdout
        assert len(result.stdout.splitlines()) == 2  # the counts (or the count) and the one dead letter
        assert "x\\n  dead   fake/line:gzip  attempts 9  Forged: \\x1b[31mRED\\x1b[0m:gzip#invalid-item-1" \
               in result.stdout
    assert "task evil\\x1b[2J  attempts 0" in dlq.stdout

    rows = json.loads(cli("dlq", "list", "--db", "tasks.db", "--json", cwd=tmp_path).stdout)
    assert [(r["idempotency_key"], r["task_id"]) for r in rows] == [(FORGERY + ":gzip#invalid-item-1", FORGED_ID)]
    failures = json.loads(cli("status", "--db", "tasks.db", "--json", cwd=tmp_path).stdout)["recent_failures"]
    assert [f["idempotency_key"] for f in failures] == [FORGERY + ":gzip#invalid-item-1"]


def test_enqueue_tells_keys_repeated_in_the_file_from_keys_already_in_the_database(tmp_path: Path):
    items = [{"id": "a-1", "image_key": "src/a.txt", "variant": "gzip"},
             {"id": "b-1", "image_key": "src/b.txt", "variant": "gzip"},
             {"id": "a-2", "image_key": "src/a.txt", "variant": "gzip"},  # a's key again, another id
             {"id": "a-3", "image_key": "src/a.txt", "variant": "gzip"},
             {"id": "b-1", "image_key": "src/b.txt", "variant": "gzip"}]  # b-1 again, identical: dropped
    (tmp_path / "tasks.json").write_text(json.dumps(items), encoding="utf-8")
    first = cli("enqueue", "--tasks", "tasks.json", "--db", "tasks.db", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "enqueued 2 task(s) into tasks.db; 0 already there (not added again)",
        "repeats of a key earlier in the file (added once): 2",
        "identical duplicates in the file dropped: 1"]
    again = cli("enqueue", "--tasks", "tasks.json", "--db", "tasks.db", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[:2] == [
        "enqueued 0 task(s) into tasks.db; 2 already there (not added again)",  # the database holds 2 rows
        "repeats of a key earlier in the file (added once): 2"]


def test_a_store_path_that_is_not_utf8_is_printed_escaped_on_a_strict_utf8_stdout(tmp_path: Path):
    store = os.fsdecode(b"st\xff")  # 'st\udcff': the byte 0xff is not UTF-8
    try:
        (tmp_path / store).mkdir()
        (tmp_path / store).rmdir()
    except (OSError, UnicodeError):
        pytest.skip("this file system takes no name that is not valid UTF-8")
    items = [{"id": "a-1", "image_key": "src/a.txt", "variant": "gzip"}]
    (tmp_path / "tasks.json").write_text(json.dumps(items), encoding="utf-8")
    result = cli("run", "--tasks", "tasks.json", "--db", "tasks.db", "--store", store, "--make-sources",
                 "--no-progress", cwd=tmp_path, env={"PYTHONIOENCODING": "utf-8"})  # strict: no surrogateescape
    assert result.returncode == 0, result.stderr
    assert "UnicodeEncodeError" not in result.stderr
    assert "created 1 source objects under " in result.stdout and "st\\xff" in result.stdout
    assert "tasks 1: 1 succeeded" in result.stdout
    enqueued = cli("enqueue", "--tasks", "tasks.json", "--db", store + ".db", cwd=tmp_path,
                   env={"PYTHONIOENCODING": "utf-8"})
    assert enqueued.returncode == 0, enqueued.stderr
    assert enqueued.stdout.startswith("enqueued 1 task(s) into st\\xff.db; 0 already there")
