"""Watching a real `run` subprocess: /metrics scraped while it runs, the metrics file rewritten during
the run, the progress line on a pseudo-terminal, and start-up refusals.

To look at a run *while* it runs without racing it, the task file starts
with a task held on a named pipe (FIFO): every command runs through
``holding_run.py``, whose worker blocks opening the pipe before it processes
that task, until the test writes to it. So the test
waits (polling, with a timeout that is only a hang guard) until every other
task is done, checks what a watcher sees with the run provably still going,
then releases the held task and checks the end. No sleep decides anything.
"""

from __future__ import annotations

import errno
import json
import os
import re
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from polling import wait_until

import taskqueue
from prometheus_text import parse, values
from taskqueue.objectstore import LocalObjectStore
from taskqueue.workload import create_sources, generate_tasks

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo") or not hasattr(os, "openpty"),
                                reason="needs a named pipe and a pseudo-terminal (POSIX)")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "integration" / "holding_run.py"  # the CLI, holding the task held names
HANG_S = 60  # hang guard only
SUMMARY = re.compile(r"tasks (\d+): (\d+) succeeded, (\d+) already done \(deduplicated\), "
                     r"(\d+) dead-lettered, (\d+) unfinished")
ANNOUNCE = re.compile(r"serving metrics on (http://127\.0\.0\.1:(\d+)/metrics) \(and /healthz\)")
FRAME = re.compile(r"(\d+)/(\d+) done \((\d+\.\d)%\) \| (?:--|\d+\.\d) tasks/s \| ETA (?:--:--|\d+(?::\d\d)+) "
                   r"\| retries (\d+) \| dead (\d+) \| queue (\d+)/(\d+)")


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TQ_")}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), clean.get("PYTHONPATH")]))
    clean["TERM"] = "xterm"
    return clean


@pytest.fixture
def held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A task file whose first task is held on a FIFO (see ``holding_run.py``, which every command
    here runs), then 10 gzip tasks (2 repeat a key), then one whose source is missing (a dead
    letter, logged as a warning)."""
    tasks = generate_tasks(10, seed=7, duplicate_fraction=0.2, variants="gzip")
    store = tmp_path / "store"
    objects = LocalObjectStore(store, fsync=False)
    create_sources(objects, tasks, seed=7)
    objects.write("hold/held.txt", [b"held\n"])
    fifo = tmp_path / "hold.fifo"
    os.mkfifo(fifo)
    monkeypatch.setenv("HOLD_KEY", "hold/held.txt")  # env() passes it on to the subprocesses
    monkeypatch.setenv("HOLD_FIFO", str(fifo))
    tasks = [{"id": "held", "image_key": "hold/held.txt", "variant": "gzip"}] + tasks + [
        {"id": "lost", "image_key": "missing/never.txt", "variant": "gzip"}]
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps(tasks), encoding="utf-8")
    pairs = len({(t["image_key"], t["variant"]) for t in tasks})
    work = tmp_path / "work"
    work.mkdir()
    return {"file": path, "store": store, "db": tmp_path / "tasks.db", "fifo": fifo, "work": work,
            "total": len(tasks), "succeeded": pairs - 2, "dedup": len(tasks) - pairs}  # not held, not lost


def run_args(w: dict, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), "run", "--tasks", str(w["file"]), "--db", str(w["db"]),
            "--store", str(w["store"]), "--workers", "2", *extra]


def release(fifo: Path, proc: subprocess.Popen) -> None:
    """Let the held task finish: open the pipe for writing once its reader is there, write, close."""
    def opened():
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no reader yet
                return None
            raise
    fd = wait_until(opened, "the worker to open the held task's pipe", proc)
    try:
        os.set_blocking(fd, True)
        os.write(fd, b"released\n")
    finally:
        os.close(fd)


class Reader:
    """Reads a file descriptor (a pipe or a pty master) in a thread until EOF; ``wait_for`` a regex."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._data = bytearray()
        self._grew = threading.Condition()
        self._done = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                chunk = os.read(self._fd, 65536)
            except OSError:  # EIO: the pty's other side is closed
                chunk = b""
            with self._grew:
                if not chunk:
                    self._done = True
                    self._grew.notify_all()
                    return
                self._data += chunk
                self._grew.notify_all()

    @property
    def text(self) -> str:
        with self._grew:
            return self._data.decode("utf-8", errors="replace")

    def wait_for(self, pattern: re.Pattern | str) -> re.Match:
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        with self._grew:
            found = self._grew.wait_for(
                lambda: regex.search(self._data.decode("utf-8", "replace")) or self._done, HANG_S)
            match = regex.search(self._data.decode("utf-8", "replace"))
        assert match, f"never saw {regex.pattern!r} (found={found!r}) in:\n{self.text}"
        return match

    def finish(self) -> str:
        self._thread.join(HANG_S)
        assert not self._thread.is_alive(), "the reader never reached end of file"
        return self.text


def scrape(url: str) -> tuple[int, dict, str]:
    try:
        with urllib.request.urlopen(url, timeout=HANG_S) as response:
            return response.status, dict(response.headers), response.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode("utf-8")


# -- live metrics over HTTP, and the metrics file during the run ------------------------------------

def test_metrics_are_scraped_during_a_real_run_and_the_file_is_rewritten_while_it_lasts(held, tmp_path):
    metrics_out = tmp_path / "metrics.json"
    proc = subprocess.Popen(run_args(held, "--metrics-port", "0", "--metrics-out", str(metrics_out),
                                     "--metrics-interval", "0.05", "--log-file", str(tmp_path / "run.log")),
                            cwd=held["work"], env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        err = Reader(proc.stderr.fileno())
        url = err.wait_for(ANNOUNCE).group(1)
        base = url.rsplit("/", 1)[0]
        assert scrape(base + "/healthz")[::2] == (200, "ok\n")
        assert scrape(base + "/nothing-here")[0] == 404

        scrapes: list[dict[str, float]] = []
        processed = held["succeeded"] + 1  # the dead letter is processed too; the held task never ends

        def all_but_the_held_task_done() -> bool:
            status, headers, body = scrape(url)
            assert status == 200
            assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            flat = values(parse(body))  # every scrape must be valid exposition text
            scrapes.append(flat)
            outcome = {o: flat[f'taskqueue_tasks_total{{outcome="{o}"}}']
                       for o in ("succeeded", "dead_lettered", "deduplicated")}
            # Counted by the threads that did the work, each a moment after it: wait for all of them.
            return outcome == {"succeeded": held["succeeded"], "dead_lettered": 1, "deduplicated": held["dedup"]} \
                and flat["taskqueue_enqueued_total"] == flat["taskqueue_dequeued_total"] == processed + 1 \
                and flat["taskqueue_task_duration_seconds_count"] == processed

        wait_until(all_but_the_held_task_done, "every task but the held one to finish", proc)
        for earlier, later in zip(scrapes, scrapes[1:]):  # counters only ever grow
            for name, value in earlier.items():
                if name.startswith(("taskqueue_tasks_total", "taskqueue_enqueued", "taskqueue_dequeued")) \
                        or "_bucket" in name or name.endswith("_count"):
                    assert later[name] >= value, name
        flat = scrapes[-1]
        assert flat[f'taskqueue_info{{version="{taskqueue.__version__}"}}'] == 1
        assert flat['taskqueue_tasks_total{outcome="failed"}'] == 1  # the dead letter's one attempt
        assert flat['taskqueue_tasks_total{outcome="retried"}'] == 0
        assert flat['taskqueue_tasks_total{outcome="rejected"}'] == 0
        assert 0 <= flat["taskqueue_queue_depth"] <= flat["taskqueue_queue_capacity"] == 128
        assert flat['taskqueue_task_duration_seconds_bucket{le="+Inf"}'] == processed
        assert flat["taskqueue_task_duration_seconds_sum"] > 0
        assert flat["taskqueue_workers"] == 2 and 0 <= flat["taskqueue_worker_utilisation_ratio"] <= 1

        def file_caught_up() -> dict | None:
            try:
                data = json.loads(metrics_out.read_text(encoding="utf-8"))
            except FileNotFoundError:
                return None
            counters = data["counters"]
            # The same state the last scrape showed (a write may come from a moment before it).
            caught_up = (counters["succeeded"], counters["dead_lettered"], counters["deduplicated"]) == \
                (held["succeeded"], 1, held["dedup"])
            return data if caught_up else None

        during = wait_until(file_caught_up, "the metrics file to be rewritten during the run", proc)
        assert proc.poll() is None  # the held task holds the run open: this was written during it
        assert during["config"]["workers"] == 2 and during["task_duration_s"]["count"] == processed

        release(held["fifo"], proc)
        stdout, _ = proc.communicate(timeout=HANG_S)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err.finish()
    assert SUMMARY.search(stdout.decode()).groups() == (
        str(held["total"]), str(held["succeeded"] + 1), str(held["dedup"]), "1", "0")
    final = json.loads(metrics_out.read_text(encoding="utf-8"))
    assert final["counters"]["succeeded"] == held["succeeded"] + 1
    assert final["processing_s"]["count"] == final["task_duration_s"]["count"] == processed + 1
    assert "Traceback" not in err.finish()


# -- the progress line on a terminal ---------------------------------------------------------------

def screen(raw: str) -> list[str]:
    """What a terminal shows for ``raw``: \\r returns to column 0, ESC[K erases to the end of the
    line, \\n starts a new line, text overwrites (lines never wrap: the frames are cut to fit)."""
    lines, row, col = [[]], 0, 0
    for token in re.findall(r"\x1b\[K|\r|\n|[^\r\n\x1b]+|\x1b", raw):
        line = lines[row]
        if token == "\r":
            col = 0
        elif token == "\n":
            row, col = row + 1, 0
            lines.append([])
        elif token == "\x1b[K":
            del line[col:]
        else:
            assert token != "\x1b", f"an escape sequence other than ESC[K in {raw!r}"
            line[col:col + len(token)] = list(token)
            col += len(token)
    return ["".join(line) for line in lines]


def run_on_a_pty(held: dict, *extra: str) -> tuple[subprocess.Popen, Reader, int]:
    """``run`` with stdout and stderr on one pseudo-terminal, as in a user's shell."""
    import fcntl  # POSIX only, like os.openpty
    import termios
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    proc = subprocess.Popen(run_args(held, *extra), cwd=held["work"], env=env(), stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave)
    os.close(slave)
    return proc, Reader(master), master


def test_the_progress_line_updates_live_keeps_logs_above_it_and_ends_with_the_final_state(held):
    proc, tty, master = run_on_a_pty(held)
    try:
        total = held["total"]
        tty.wait_for(rf"\r{total - 1}/{total} done \(")  # a live frame while the held task runs
        assert proc.poll() is None
        release(held["fifo"], proc)
        proc.wait(timeout=HANG_S)
        raw = tty.finish().replace("\r\n", "\n")  # the pty turns \n into \r\n
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
    assert proc.returncode == 0, raw

    frames = [FRAME.fullmatch(f) for f in re.findall(r"\r([^\r\n\x1b]*)\x1b\[K", raw) if "done (" in f]
    assert frames and all(frames), raw
    done = [int(m.group(1)) for m in frames]
    assert done == sorted(done) and done[0] < total - 1 <= done[-2] and done[-1] == total

    shown = [line for line in screen(raw) if line]
    summary = shown[-3:]  # the summary is unchanged, on lines of its own under the last frame
    assert SUMMARY.fullmatch(summary[0]).groups() == (
        str(total), str(held["succeeded"] + 1), str(held["dedup"]), "1", "0"), shown
    assert summary[1].startswith("retries 0, rejected offers 0") and summary[2].startswith("elapsed "), shown
    final = FRAME.fullmatch(shown[-4])
    assert final, shown  # the last frame stays on screen, complete...
    assert final.group(1, 2, 3) == (str(total), str(total), "100.0") and final.group(5) == "1"
    assert not [line for line in shown[:-4] if "done (" in line]  # ...and no earlier frame scrolled up
    logs = [json.loads(line) for line in shown if line.startswith("{")]
    assert [(r["event"], r["task_id"]) for r in logs] == [("dead_lettered", "lost")]  # printed whole, above
    assert all(line.startswith("{") for line in shown[:-4]), shown  # nothing but log lines above the frame


def test_no_progress_line_with_no_progress_or_off_a_terminal(held, tmp_path):
    proc, tty, master = run_on_a_pty(held, "--no-progress")
    try:
        release(held["fifo"], proc)
        proc.communicate(timeout=HANG_S)
        raw = tty.finish()
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
    assert proc.returncode == 0, raw
    assert not FRAME.search(raw) and "\x1b" not in raw and '"dead_lettered"' in raw
    assert SUMMARY.search(raw)

    held["db"] = tmp_path / "second.db"  # a fresh database: the held task is held again
    proc = subprocess.Popen(run_args(held), cwd=held["work"], env=env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        release(held["fifo"], proc)
        _, stderr = proc.communicate(timeout=HANG_S)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0
    assert not FRAME.search(stderr.decode()) and b"\x1b" not in stderr and b'"dead_lettered"' in stderr


# -- refused at start-up ------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["run", "worker"])
def test_a_metrics_port_in_use_exits_2_before_anything_is_created(held, command):
    import socket
    # A worker that would make its database (--exit-when-idle refuses a missing one before the port).
    args = run_args(held, "--metrics-port") if command == "run" else worker_args(held, "--metrics-port",
                                                                                 exit_when_idle=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([*args, str(port)], cwd=held["work"], env=env(),
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=HANG_S)
    assert result.returncode == 2, result.stderr
    # Named by its flag, as every other refused setting (found by a review: it was not)
    assert result.stderr.startswith("error: --metrics-port: ") and f"127.0.0.1:{port}" in result.stderr
    assert "in use" in result.stderr and "Traceback" not in result.stderr
    assert not held["db"].exists() and list(held["work"].iterdir()) == []


@pytest.mark.parametrize("extra, named", [
    (["--metrics-port", "65536"], "--metrics-port"),
    (["--metrics-port", "http"], "--metrics-port"),
    (["--metrics-interval", "0"], "--metrics-interval"),
    (["--metrics-interval", "-5"], "--metrics-interval"),
    (["--metrics-port", "0", "--metrics-host", "no-such-host.invalid"], "no-such-host.invalid"),
])
def test_bad_watch_flags_exit_2_naming_them(held, extra, named):
    result = subprocess.run(run_args(held, *extra), cwd=held["work"], env=env(), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=HANG_S)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr and "Traceback" not in result.stderr
    assert not held["db"].exists()


@pytest.mark.parametrize("variable, value", [("TQ_METRICS_PORT", "65536"), ("TQ_METRICS_INTERVAL_S", "-5"),
                                             ("TQ_METRICS_OUT", "none/such/dir/m.json")])
def test_bad_watch_variables_exit_2_naming_them(held, variable, value):
    result = subprocess.run(run_args(held), cwd=held["work"], env={**env(), variable: value},
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=HANG_S)
    assert result.returncode == 2, result.stderr
    assert (variable if variable != "TQ_METRICS_OUT" else value) in result.stderr and "Traceback" not in result.stderr
    assert not held["db"].exists()


def test_a_worker_configured_by_its_environment_alone_serves_and_writes_metrics_and_logs(tmp_path):
    """TQ_METRICS_PORT, TQ_METRICS_OUT, TQ_METRICS_INTERVAL_S and TQ_LOG_FILE do what their flags do:
    a fleet of workers is configured by its environment, like every other setting."""
    tasks = generate_tasks(6, seed=3, variants="gzip")
    store = tmp_path / "store"
    create_sources(LocalObjectStore(store, fsync=False), tasks, seed=3)
    tasks.append({"id": "lost", "image_key": "missing/never.txt", "variant": "gzip"})  # a warning in the log
    (tmp_path / "tasks.json").write_text(json.dumps(tasks), encoding="utf-8")
    metrics_out, log_file = tmp_path / "metrics.json", tmp_path / "worker.log"
    environ = {**env(), "TQ_DB": str(tmp_path / "tasks.db"), "TQ_STORE": str(store), "TQ_METRICS_PORT": "0",
               "TQ_METRICS_OUT": str(metrics_out), "TQ_METRICS_INTERVAL_S": "0.05", "TQ_LOG_FILE": str(log_file)}
    for argv in (["enqueue", "--tasks", str(tmp_path / "tasks.json")], ["worker", "--exit-when-idle"]):
        result = subprocess.run([sys.executable, str(SCRIPT), *argv], cwd=tmp_path, env=environ,
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=HANG_S)
        assert result.returncode == 0, result.stderr
    assert ANNOUNCE.search(result.stderr), result.stderr  # served on a port of its own choosing
    counters = json.loads(metrics_out.read_text(encoding="utf-8"))["counters"]
    assert (counters["succeeded"], counters["dead_lettered"]) == (len({t["image_key"] for t in tasks}) - 1, 1)
    events = [json.loads(line)["event"] for line in log_file.read_text(encoding="utf-8").splitlines()]
    assert "dead_lettered" in events


# -- a worker process: the same watching, open-ended -------------------------------------------------

OPEN_FRAME = re.compile(r"(\d+) done \| (?:--|\d+\.\d) tasks/s \| retries (\d+) \| dead (\d+) \| queue (\d+)/(\d+)")


def worker_args(w: dict, *extra: str, exit_when_idle: bool = True) -> list[str]:
    return [sys.executable, str(SCRIPT), "worker", "--db", str(w["db"]), "--store", str(w["store"]),
            "--workers", "2", *(["--exit-when-idle"] if exit_when_idle else []), *extra]


def test_a_worker_serves_metrics_rewrites_its_file_and_shows_an_open_ended_progress_line(held, tmp_path):
    enqueued = subprocess.run([sys.executable, str(SCRIPT), "enqueue", "--tasks", str(held["file"]), "--db",
                               str(held["db"])], cwd=held["work"], env=env(), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=HANG_S)
    assert enqueued.returncode == 0, enqueued.stderr
    metrics_out = tmp_path / "worker-metrics.json"
    import fcntl
    import termios
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    proc = subprocess.Popen(worker_args(held, "--metrics-port", "0", "--metrics-out", str(metrics_out),
                                        "--metrics-interval", "0.05"),
                            cwd=held["work"], env=env(), stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    tty = Reader(master)
    processed = held["succeeded"] + 1  # every distinct key but the held one (the lost one dead-lettered)
    try:
        url = tty.wait_for(ANNOUNCE).group(1)
        assert scrape(url.rsplit("/", 1)[0] + "/healthz")[::2] == (200, "ok\n")

        def all_but_the_held_task_done() -> dict | None:
            status, _, body = scrape(url)
            assert status == 200
            flat = values(parse(body))
            done = (flat['taskqueue_tasks_total{outcome="succeeded"}'],
                    flat['taskqueue_tasks_total{outcome="dead_lettered"}'])
            return flat if done == (held["succeeded"], 1) else None

        flat = wait_until(all_but_the_held_task_done, "the worker to finish every task but the held one", proc)
        assert flat["taskqueue_workers"] == 2
        frame = tty.wait_for(rf"\r({processed} done \| [^\r\n\x1b]*)\x1b\[K").group(1)  # live, held task running
        assert OPEN_FRAME.fullmatch(frame).group(1, 3, 5) == (str(processed), "1", "4"), frame  # 2 per thread

        def file_caught_up() -> bool:
            try:
                counters = json.loads(metrics_out.read_text(encoding="utf-8"))["counters"]
            except FileNotFoundError:
                return False
            return (counters["succeeded"], counters["dead_lettered"]) == (held["succeeded"], 1)

        wait_until(file_caught_up, "the worker's metrics file to be rewritten while it runs", proc)
        assert proc.poll() is None  # the held task keeps the worker busy: all of this was seen during it
        release(held["fifo"], proc)
        proc.wait(timeout=HANG_S)
        raw = tty.finish().replace("\r\n", "\n")
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
    assert proc.returncode == 0, raw
    shown = [line for line in screen(raw) if line]
    final = OPEN_FRAME.fullmatch(shown[-2])  # the last frame stays, the worker's summary under it
    assert final and final.group(1, 3) == (str(processed + 1), "1"), shown
    assert "idle everywhere" in shown[-1] and f"{held['succeeded'] + 1} succeeded" in shown[-1], shown
    assert json.loads(metrics_out.read_text(encoding="utf-8"))["counters"]["succeeded"] == held["succeeded"] + 1
    assert "Traceback" not in raw
