"""What the command line prints, as text a terminal shows: nothing in a task file or a path can forge a
line, colour the terminal or crash the printing; ``--json`` stays exact.

Each command runs in a subprocess (tests/integration/clirun.py) in a temporary directory.
"""

from __future__ import annotations

import json
from pathlib import Path

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
