"""Hostile task files through ``run``, end to end: refused with a clear message, nothing processed.

``tests/unit/test_taskfile.py`` checks each refusal of the loader on its own;
here every case goes through the real command line in a subprocess
(``sys.executable task_queue_optimized.py run``) with the object store at the
``store_root`` fixture, so the ``canary`` directory beside it is compared byte
for byte at teardown: whatever a task file asks for, nothing is written
outside the store root.

What "nothing processed" means is read off ``cli.cmd_run``: the task file is
loaded before the ``TaskQueue`` (and so the SQLite file) is created, so a
refused file leaves **no database file at all**, and no object under
``variants/``. (The store root itself is created before the file is read;
it stays empty apart from the sources the test put there.)

The subprocess runs in an empty temporary directory, not the repository:
``.env`` is read from the working directory, and a developer's ``.env`` at
the repository root (``.gitignore`` admits one) would leak into the tests.
Every ``TQ_*`` variable of the calling environment is removed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from taskqueue import cli as cli_module
from taskqueue.config import ENV_PREFIX, Config
from taskqueue.objectstore import LocalObjectStore

from clirun import cli

pytestmark = pytest.mark.usefixtures("canary")  # every test: nothing beside the store root may change

MAX_STDERR = 4000  # a refusal of hostile values must stay readable, whatever their size


def good(n: int) -> dict:
    return {"id": f"good-{n}", "image_key": f"src/good-{n}.txt", "variant": "gzip"}


GOOD = [good(0), good(1)]


def variant_files(store: Path) -> list[str]:
    root = store / "variants"
    return sorted(p.relative_to(store).as_posix() for p in root.rglob("*") if p.is_file()) \
        if root.exists() else []


def store_files(store: Path) -> list[str]:
    return sorted(p.relative_to(store).as_posix() for p in store.rglob("*") if not p.is_dir())


def query(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture
def env(tmp_path: Path, store_root: Path) -> dict:
    """Paths for one run: the store (canary-guarded, holding the GOOD sources), db, work dir."""
    work = tmp_path / "work"
    work.mkdir()
    objects = LocalObjectStore(store_root, fsync=False)
    for item in GOOD:
        objects.write(item["image_key"], [f"content of {item['id']}\n".encode() * 40])
    return {"store": store_root, "db": tmp_path / "tasks.db", "work": work,
            "file": tmp_path / "tasks.json"}


def write_file(env: dict, content) -> Path:
    if not isinstance(content, bytes):
        content = (content if isinstance(content, str) else json.dumps(content)).encode("utf-8")
    env["file"].write_bytes(content)
    return env["file"]


def run(env: dict, *extra: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    return cli("run", "--tasks", str(env["file"]), "--db", str(env["db"]), "--store", str(env["store"]),
               *extra, cwd=env["work"], env=extra_env)


def assert_nothing_processed(env: dict, result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""  # not even a summary: no run started
    assert not env["db"].exists(), "a refused task file must not create the database"
    assert variant_files(env["store"]) == []
    assert store_files(env["store"]) == [item["image_key"] for item in GOOD]  # no source made either
    assert len(result.stderr) < MAX_STDERR, result.stderr[:500]


def long(n: int) -> str:
    return "x" * n


BAD_UTF8 = json.dumps(GOOD).encode()[:-1] + b',\n{"id": "\xff\xfe", "image_key": "a", "variant": "gzip"}]'

# (id, file content, TQ_* environment, substrings stderr must hold). Good items come first, so a
# loader that processed "what it could" would leave outputs behind.
REJECTED = [
    pytest.param(b'[{"id": "good-0", "image_key": "src/good-0.txt",, }]', {},
                 ["not valid JSON", "line 1, column 49"], id="malformed-json"),
    pytest.param({"tasks": GOOD}, {}, ["expected a JSON array of tasks at the top level, got an object"],
                 id="top-level-object"),
    pytest.param(GOOD + [42], {}, ["item 2: a task must be a JSON object, got int"], id="item-not-an-object"),
    pytest.param(GOOD + [["a", "b"]], {}, ["item 2: a task must be a JSON object, got list"],
                 id="item-is-a-list"),
    pytest.param(GOOD + [{"id": "m", "image_key": "src/m.txt"}], {}, ["item 2: field 'variant' is missing"],
                 id="missing-field"),
    pytest.param(GOOD + [{"id": 42, "image_key": "src/m.txt", "variant": "gzip"}], {},
                 ["item 2: field 'id': expected a string, got 42 (int)"], id="id-wrong-type"),
    pytest.param(GOOD + [{"id": "p", "image_key": "src/p.txt", "variant": "gzip", "params": [9]}], {},
                 ["item 2: field 'params': expected an object, got [9] (list)"], id="params-wrong-type"),
    pytest.param(GOOD + [{"id": "u", "image_key": "src/u.txt", "variant": "gzip", "colour": "red"}], {},
                 ["item 2: unknown field 'colour'"], id="unknown-field"),
    pytest.param(json.dumps(GOOD)[:-1] + ', {"id": "n", "image_key": "src/n.txt", "variant": "gzip",'
                 ' "params": {"level": NaN}}]', {}, ["not accepted JSON: NaN is not a JSON number"], id="nan"),
    pytest.param(json.dumps(GOOD)[:-1] + ', {"id": "i", "image_key": "src/i.txt", "variant": "gzip",'
                 ' "params": {"level": -Infinity}}]', {}, ["not accepted JSON: -Infinity is not a JSON number"],
                 id="infinity"),
    pytest.param(GOOD + [{"id": "s", "image_key": "src/s.jpg", "variant": "sepia"}], {},
                 ["item 2: field 'variant': unknown variant 'sepia'"], id="unknown-variant"),
    pytest.param(GOOD + [{"id": "t", "image_key": "src/t.jpg", "variant": "thumb_999999"}], {},
                 ["item 2: field 'variant': 'thumb_999999' needs a size from 1 to 4096"], id="thumb-999999"),
    pytest.param(GOOD + [{"id": "t", "image_key": "src/t.jpg", "variant": "thumb_4097"}], {},
                 ["item 2: field 'variant': 'thumb_4097' asks for 4097 px, at most 4096"], id="thumb-4097"),
    pytest.param(GOOD + [{"id": "l", "image_key": "src/l.txt", "variant": "gzip", "params": {"level": 10**9}}],
                 {}, ["item 2: field 'params.level': 1000000000 is not an integer from 0 to 9"],
                 id="absurd-parameter"),
    pytest.param(GOOD + [{"id": long(10_000), "image_key": "src/l.txt", "variant": "gzip"}], {},
                 ["item 2: field 'id': 'xxxxxxxx", "is not a task id"], id="10k-char-id"),
    pytest.param(GOOD + [{"id": "k", "image_key": "src/" + long(10_000), "variant": "gzip"}], {},
                 ["item 2: field 'image_key': object key is 10004 characters long, at most 512"],
                 id="10k-char-key"),
    pytest.param(GOOD + [{"id": "q", "image_key": "src/q.jpg", "variant": "gray",
                          "params": {"quality": long(10_000)}}], {},
                 ["item 2: field 'params.quality': string of 10000 characters, at most 256"],
                 id="10k-char-param"),
    pytest.param(GOOD + [{"id": "good-0", "image_key": "src/other.txt", "variant": "gzip"}], {},
                 ["item 2: field 'id': duplicate id 'good-0' with different content from item 0"],
                 id="duplicate-id-different-content"),
    pytest.param(GOOD, {"TQ_MAX_TASK_FILE_BYTES": "64"}, ["over the limit of 64 bytes", "max_task_file_bytes"],
                 id="file-over-size-limit"),
    pytest.param(BAD_UTF8, {}, [f"not valid UTF-8: byte 0xff at byte offset {BAD_UTF8.index(0xFF)} (line 2)"],
                 id="invalid-utf8"),
]


@pytest.mark.parametrize("content, extra_env, expected", REJECTED)
def test_hostile_file_is_refused_whole_naming_the_problem_and_nothing_runs(env, content, extra_env, expected):
    write_file(env, content)
    result = run(env, extra_env=extra_env)
    assert_nothing_processed(env, result)
    assert result.stderr.startswith(f"error: {env['file']}: "), result.stderr[:500]
    for text in expected:
        assert text in result.stderr, result.stderr[:1000]


ESCAPES = [
    pytest.param("../x", "object key '../x' has a '..' segment", id="dotdot"),
    pytest.param("../canary/secret.txt", "has a '..' segment", id="dotdot-to-canary"),
    pytest.param("/etc/passwd", "object key '/etc/passwd' is absolute", id="absolute"),
    pytest.param("a/../../b", "object key 'a/../../b' has a '..' segment", id="dotdot-inside"),
    pytest.param("..\\..\\canary\\x", "contains a backslash", id="backslashes"),
    pytest.param("C:/Windows/x", "looks like a drive path", id="drive"),
    pytest.param("a//b", "has an empty segment", id="empty-segment"),
    pytest.param("src/a\x00b", "contains a control character", id="nul"),
]


@pytest.mark.parametrize("key, reason", ESCAPES)
def test_key_trying_to_escape_the_store_is_refused_and_nothing_runs(env, key, reason):
    write_file(env, GOOD + [{"id": "evil", "image_key": key, "variant": "gzip"}])
    result = run(env, "--make-sources")
    assert_nothing_processed(env, result)
    assert "item 2: field 'image_key': " in result.stderr and reason in result.stderr, result.stderr


def test_every_bad_item_is_named_in_one_refusal(env):
    write_file(env, GOOD + [{"id": "a", "image_key": "../a", "variant": "gzip"},
                            {"id": "b", "image_key": "src/b.jpg", "variant": "sepia"},
                            "not a task"])
    result = run(env)
    assert_nothing_processed(env, result)
    lines = result.stderr.splitlines()
    assert "3 invalid items (indexes are 0-based); no task was loaded:" in lines[0]
    assert [line.split(":")[0].strip() for line in lines[1:4]] == ["item 2", "item 3", "item 4"]
    assert "--invalid dead-letter" in result.stderr  # the hint


# -- dead-letter mode: bad items recorded, good ones run -------------------------------------------

BAD_ITEMS = [
    # (item, substring of its dead letter's last_error)
    ({"id": "v", "image_key": "src/v.jpg", "variant": "sepia"}, "field 'variant': unknown variant 'sepia'"),
    ({"id": "t", "image_key": "src/t.jpg", "variant": "thumb_999999"}, "'thumb_999999' needs a size"),
    ({"id": "m", "image_key": "src/m.txt"}, "field 'variant' is missing"),
    (17, "a task must be a JSON object, got int"),
    ({"id": 5, "image_key": "src/w.txt", "variant": "gzip"}, "field 'id': expected a string"),
    ({"id": "good-0", "image_key": "src/else.txt", "variant": "gzip"}, "duplicate id 'good-0'"),
    ({"id": "e1", "image_key": "../escape.txt", "variant": "gzip"}, "has a '..' segment"),
    ({"id": "e2", "image_key": "/etc/passwd", "variant": "gzip"}, "is absolute"),
    ({"id": "e3", "image_key": "a/../../b", "variant": "gzip"}, "has a '..' segment"),
    ({"id": "e4", "image_key": "..\\canary\\secret.txt", "variant": "gzip"}, "contains a backslash"),
    ({"id": "l", "image_key": "src/l.txt", "variant": "gzip", "params": {"level": 99}},
     "field 'params.level': 99 is not an integer from 0 to 9"),
]


def dlq(env: dict) -> list[dict]:
    result = cli("dlq", "list", "--db", str(env["db"]), "--json", cwd=env["work"])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_dead_letter_mode_records_each_bad_item_and_runs_the_good_ones(env):
    items = GOOD + [item for item, _ in BAD_ITEMS] + [good(2)]
    write_file(env, items)
    result = run(env, "--invalid", "dead-letter", "--make-sources")
    assert result.returncode == 0, result.stderr
    assert f"invalid items dead-lettered: {len(BAD_ITEMS)}" in result.stdout
    assert "tasks 3: 3 succeeded" in result.stdout

    letters = dlq(env)
    assert len(letters) == len(BAD_ITEMS)
    by_index = {}
    for letter in letters:
        assert letter["error_class"] == "InvalidTask"
        assert letter["attempts"] == 0  # never processed
        index = int(letter["last_error"].split(":")[0].removeprefix("item "))
        by_index[index] = letter
    assert sorted(by_index) == list(range(2, 2 + len(BAD_ITEMS)))
    for index, (item, reason) in enumerate(BAD_ITEMS, start=2):
        assert reason in by_index[index]["last_error"], (index, by_index[index])
        if isinstance(item, dict) and isinstance(item.get("id"), str) and "variant" in item:
            assert by_index[index]["task_id"] == item["id"]

    assert query(env["db"], "SELECT status, COUNT(*) FROM tasks GROUP BY status ORDER BY status") == \
        [("dead", len(BAD_ITEMS)), ("success", 3)]
    assert variant_files(env["store"]) == [f"variants/gzip/src/good-{n}.txt.gz" for n in range(3)]
    # --make-sources created only the good item's missing source, never a bad item's.
    assert sorted(p.relative_to(env["store"]).as_posix() for p in (env["store"] / "src").rglob("*")) == \
        [f"src/good-{n}.txt" for n in range(3)]

    again = run(env, "--invalid", "dead-letter")  # the same file again: nothing new, nothing redone
    assert again.returncode == 0, again.stderr
    assert "tasks 3: 0 succeeded, 3 already done" in again.stdout
    assert len(dlq(env)) == len(BAD_ITEMS)


@pytest.mark.parametrize("content, expected", [
    pytest.param(b"[{]", "not valid JSON", id="malformed"),
    pytest.param(json.dumps(GOOD)[:-1] + ', {"id": "n", "image_key": "src/n.txt", "variant": "gzip",'
                 ' "params": {"level": NaN}}]', "NaN is not a JSON number", id="nan"),
    pytest.param(b'[{"id": "\xc3\x28"}]', "not valid UTF-8", id="invalid-utf8"),
    pytest.param({"not": "a list"}, "expected a JSON array", id="not-a-list"),
])
def test_dead_letter_mode_still_refuses_a_file_that_is_bad_as_a_whole(env, content, expected):
    write_file(env, content)
    result = run(env, "--invalid", "dead-letter")
    assert_nothing_processed(env, result)
    assert expected in result.stderr


# -- symlinks inside the store that point outside it ------------------------------------------------

def test_source_behind_a_symlink_pointing_outside_is_dead_lettered_not_read(env, canary):
    link = env["store"] / "src" / "outside"
    os.symlink(canary, link)  # store/src/outside -> sandbox/canary
    write_file(env, GOOD + [{"id": "leak", "image_key": "src/outside/secret.txt", "variant": "gzip"}])
    result = run(env, "--make-sources")
    assert result.returncode == 0, result.stderr
    assert "tasks 3: 2 succeeded, 0 already done (deduplicated), 1 dead-lettered" in result.stdout
    [letter] = dlq(env)
    assert (letter["idempotency_key"], letter["error_class"], letter["attempts"]) == \
        ("src/outside/secret.txt:gzip", "InvalidKey", 1)
    assert "resolves outside the store root" in letter["last_error"]
    # The secret was not compressed into the store either.
    assert variant_files(env["store"]) == ["variants/gzip/src/good-0.txt.gz", "variants/gzip/src/good-1.txt.gz"]


def test_output_directory_symlinked_outside_is_refused_for_every_output(env, canary):
    os.symlink(canary, env["store"] / "variants")  # store/variants -> sandbox/canary
    write_file(env, GOOD)
    result = run(env)
    assert result.returncode == 0, result.stderr
    assert "tasks 2: 0 succeeded, 0 already done (deduplicated), 2 dead-lettered" in result.stdout
    letters = dlq(env)
    assert sorted((d["idempotency_key"], d["error_class"]) for d in letters) == \
        [("src/good-0.txt:gzip", "InvalidKey"), ("src/good-1.txt:gzip", "InvalidKey")]
    # canary teardown: nothing was created under sandbox/canary through the link


# -- settings: every variable, .env entry and flag is validated and named ---------------------------
#
# The full sweep runs ``cli.main`` in-process (the same code path as the subprocess, minus the
# interpreter start-up, so ~100 cases cost well under a second); a few cases and every path check
# also run as a real subprocess below.

SETTINGS = [f.name for f in dataclasses.fields(Config)]

# Values a setting cannot parse at all, and values it parses but must refuse as out of range.
UNPARSABLE = {name: "not-a-number!" for name in SETTINGS}
UNPARSABLE.update(db="   ", store="   ", on_full="drop", db_synchronous="sometimes", log_level="loud",
                  fsync_outputs="maybe", metrics_host="two words")
del UNPARSABLE["log_file"], UNPARSABLE["metrics_out"]  # any path parses; where it leads: PATH_CASES below
OUT_OF_RANGE = [
    ("workers", "0"), ("workers", "-4"), ("queue_size", "0"), ("max_attempts", "0"), ("busy_timeout_ms", "0"),
    ("chunk_size", "0"), ("max_task_file_bytes", "-1"), ("lease_s", "0"), ("put_timeout_s", "0"),
    ("fault_timeout_s", "-1"), ("retry_base_s", "-0.5"), ("retry_cap_s", "-1"), ("shutdown_grace_s", "-1"),
    ("fault_latency_s", "-0.001"), ("fault_jitter_s", "3601"), ("fault_latency_s", "inf"),
    ("fault_transient_rate", "1.5"), ("fault_transient_rate", "-0.1"), ("fault_permanent_rate", "1.01"),
    ("fault_permanent_rate", "nan"), ("workers", "2.5"), ("metrics_port", "65536"), ("metrics_port", "-1"),
    ("metrics_interval_s", "0"), ("commit_linger_s", "-1"), ("commit_linger_s", "0.5"),
]
CASES = [(name, raw) for name, raw in UNPARSABLE.items()] + OUT_OF_RANGE


@pytest.fixture
def in_process(tmp_path: Path, monkeypatch, capsys):
    """``call(*flags, drop=()) -> (exit code, stderr)``: ``cli.main`` run in an empty directory, no TQ_* set.

    The base command is ``run --tasks tasks.json --db t.db --store st``; ``flags`` are appended, or
    replace the value of a base flag they repeat; ``drop`` names base flags to leave out.
    """
    work = tmp_path / "settings"
    work.mkdir()
    (work / "tasks.json").write_text(json.dumps(GOOD), encoding="utf-8")
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    monkeypatch.chdir(work)

    def call(*flags: str, drop: tuple = ()) -> tuple[int, str]:
        base = {"--tasks": "tasks.json", "--db": "t.db", "--store": "st"}
        extra = list(flags)
        for flag in list(base):
            if flag in drop:
                del base[flag]
            elif flag in extra:
                i = extra.index(flag)
                base[flag] = extra[i + 1]
                del extra[i:i + 2]
        argv = ["run", *[x for pair in base.items() for x in pair], *extra]
        capsys.readouterr()
        try:
            code = cli_module.main(argv)
        except SystemExit as exc:  # argparse refuses a flag of the wrong type itself
            code = exc.code
        return code, capsys.readouterr().err

    call.work = work
    return call


def created(work: Path) -> list[str]:
    return sorted(p.name for p in work.iterdir() if p.name not in ("tasks.json", ".env"))


def _id(name: str, raw: str) -> str:
    return f"{name}={raw.strip() or 'blank'}"


@pytest.mark.parametrize("name, raw", CASES, ids=[_id(n, v) for n, v in CASES])
def test_bad_environment_variable_exits_2_naming_it_and_creates_nothing(in_process, monkeypatch, name, raw):
    var = ENV_PREFIX + name.upper()
    monkeypatch.setenv(var, raw)
    code, err = in_process(drop=(f"--{name}",))  # a --db/--store flag would override the variable
    assert code == 2, err
    assert f"error: {var} (environment): " in err and repr(raw) in err, err
    assert created(in_process.work) == []


@pytest.mark.parametrize("name, raw", CASES, ids=[_id(n, v) for n, v in CASES])
def test_bad_dotenv_entry_exits_2_naming_it_and_creates_nothing(in_process, name, raw):
    var = ENV_PREFIX + name.upper()
    (in_process.work / ".env").write_text(f"# settings\n{var}='{raw}'\n", encoding="utf-8")
    code, err = in_process(drop=(f"--{name}",))
    assert code == 2, err
    assert f"error: {var} (.env): " in err and repr(raw) in err, err
    assert created(in_process.work) == []


FLAGS = [
    ("--workers", "0", "--workers"), ("--workers", "-1", "--workers"), ("--queue-size", "0", "--queue-size"),
    ("--on-full", "drop", "--on-full"), ("--on-full", "", "--on-full"), ("--max-attempts", "0", "--max-attempts"),
    ("--log-level", "loud", "--log-level"), ("--db", "   ", "--db"), ("--store", "  ", "--store"),
    # argparse itself refuses a value of the wrong type for a typed flag, naming the flag
    ("--workers", "eight", "argument --workers: invalid int value: 'eight'"),
    ("--queue-size", "1e3", "argument --queue-size: invalid int value: '1e3'"),
    ("--grace", "soon", "argument --grace: invalid float value: 'soon'"),
]


@pytest.mark.parametrize("flag, raw, named", FLAGS, ids=[_id(f, v) for f, v, _ in FLAGS])
def test_bad_flag_exits_2_naming_it_and_creates_nothing(in_process, flag, raw, named):
    code, err = in_process(flag, raw)
    assert code == 2, err
    assert named in err, err
    assert repr(raw) in err or f"got {raw}\n" in err, err  # typed flags are already ints: got 0
    assert created(in_process.work) == []


def test_bad_grace_flag_is_reported_under_the_name_the_user_typed(in_process):
    code, err = in_process("--grace", "-1")
    assert code == 2, err
    assert "error: --grace: " in err and "-1" in err, err
    assert created(in_process.work) == []


# -- settings, end to end: paths that cannot work, and a few values from the real environment --------

@pytest.fixture
def paths(tmp_path: Path) -> dict:
    """A task file with its sources, and where db/store/metrics/log would go (none exists yet)."""
    base = tmp_path / "paths"
    (base / "work").mkdir(parents=True)
    objects = LocalObjectStore(base / "sources", fsync=False)
    for item in GOOD:
        objects.write(item["image_key"], [b"x" * 100])
    (base / "tasks.json").write_text(json.dumps(GOOD), encoding="utf-8")
    (base / "a-file").write_text("not a directory\n", encoding="utf-8")
    (base / "a-dir").mkdir()
    return {"base": base, "work": base / "work", "tasks": base / "tasks.json", "db": base / "tasks.db",
            "store": base / "sources", "metrics": base / "metrics.json", "log": base / "run.log"}


def tree(base: Path) -> list[str]:
    return sorted(p.relative_to(base).as_posix() for p in base.rglob("*"))


PATH_CASES = [
    # (flag to set, value relative to the base dir, substrings of the message)
    pytest.param("--db", "a-dir", ["a-dir", "is a directory"], id="db-is-a-directory"),
    pytest.param("--db", "no-such-dir/tasks.db", ["--db", "no-such-dir", "does not exist"], id="db-in-missing-dir"),
    pytest.param("--db", "a-file/tasks.db", ["--db", "a-file", "does not exist"], id="db-parent-is-a-file"),
    pytest.param("--metrics-out", "no-such-dir/m.json", ["--metrics-out", "no-such-dir", "does not exist"],
                 id="metrics-out-in-missing-dir"),
    pytest.param("--log-file", "no-such-dir/run.log", ["--log-file", "no-such-dir", "does not exist"],
                 id="log-file-in-missing-dir"),
    pytest.param("--store", "a-file", ["a-file", "is not a directory"], id="store-is-a-file"),
    pytest.param("--store", "a-file/store", ["a-file", "store"], id="store-under-a-file"),
]


@pytest.mark.parametrize("flag, value, expected", PATH_CASES)
def test_path_that_cannot_work_exits_2_at_start_up_and_creates_nothing(paths, flag, value, expected):
    args = {"--tasks": str(paths["tasks"]), "--db": str(paths["db"]), "--store": str(paths["store"])}
    args[flag] = str(paths["base"] / value)
    before = tree(paths["base"])
    result = cli("run", *[x for pair in args.items() for x in pair], "--make-sources", cwd=paths["work"])
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and result.stdout == ""
    for text in expected:
        assert text in result.stderr, result.stderr
    assert tree(paths["base"]) == before  # no db, no store, no metrics or log file, no output
    assert (paths["base"] / "a-file").read_text(encoding="utf-8") == "not a directory\n"


@pytest.mark.parametrize("var", ["TQ_METRICS_OUT", "TQ_LOG_FILE"])
def test_an_output_path_from_a_variable_that_cannot_work_exits_2_naming_it(paths, var):
    before = tree(paths["base"])
    result = cli("run", "--tasks", str(paths["tasks"]), "--db", str(paths["db"]), "--store", str(paths["store"]),
                 cwd=paths["work"], env={var: str(paths["base"] / "no-such-dir" / "out")})
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and var in result.stderr and "does not exist" in result.stderr
    assert tree(paths["base"]) == before


@pytest.mark.parametrize("where", ["environment", ".env"])
@pytest.mark.parametrize("var, raw, reason", [
    ("TQ_FAULT_TRANSIENT_RATE", "1.5", "must be within [0, 1]"),
    ("TQ_FAULT_PERMANENT_RATE", "-0.25", "must be within [0, 1]"),
    ("TQ_ON_FULL", "drop-oldest", "must be one of block, reject"),
    ("TQ_QUEUE_SIZE", "lots", "must be an integer"),
])
def test_bad_setting_from_the_real_environment_or_dotenv_exits_2(paths, where, var, raw, reason):
    env = {}
    if where == "environment":
        env[var] = raw
    else:
        (paths["work"] / ".env").write_text(f"{var}={raw}\n", encoding="utf-8")
    before = tree(paths["base"])
    result = cli("run", "--tasks", str(paths["tasks"]), "--db", str(paths["db"]), "--store", str(paths["store"]),
                 cwd=paths["work"], env=env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr == f"error: {var} ({where}): {reason}, got {raw!r}\n"
    assert tree(paths["base"]) == before
