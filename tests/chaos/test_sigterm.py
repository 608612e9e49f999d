"""Graceful shutdown on SIGTERM/SIGINT under load, the second signal, and the grace period running out.

Each test starts `run` in a subprocess with injected latency, waits (by
polling the database) until work is under way, signals it, and checks the
exit, the store, and that a rerun completes everything. Waits on the child
carry timeouts only as hang guards.
"""

from __future__ import annotations

import gzip
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import chaos_harness as h
from taskqueue.objectstore import LocalObjectStore
from taskqueue.workload import generate_tasks

GRACE = 5.0
MARGIN = 10.0  # hang guard on top of the grace period, not a speed expectation


def _start(work: Path, env: dict, *extra) -> tuple[subprocess.Popen, Path, Path]:
    out, err = work / "stdout.txt", work / "stderr.txt"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen(h.run_command(work, extra=extra), cwd=h.REPO, env=env,
                                stdout=stdout, stderr=stderr)
    return proc, out, err


def _finish(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"hang guard: the process did not exit within {timeout:g}s") from None


def _signal_when(proc: subprocess.Popen, ready, what: str, signum: int, timeout: float) -> int:
    """Once ``ready()`` holds, send ``signum`` and return the exit code (within ``timeout``: a hang
    guard); the process is killed if the test fails before it exits."""
    try:
        h.wait_until(ready, what, proc)
        proc.send_signal(signum)
        return _finish(proc, timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _check_outputs(work: Path, items: list[dict]) -> None:
    """Every output byte-identical to a clean in-process run, no other file, and gunzip gives the source."""
    root = work / "objects"
    produced = h.outputs(root)
    reference = h.reference_outputs(items, work / "reference")
    assert sorted(produced) == sorted(reference)
    assert [name for name in reference if produced[name] != reference[name]] == []
    for item in items:
        output = root / "variants" / item["variant"] / (item["image_key"] + ".gz")
        assert gzip.decompress(output.read_bytes()) == (root / item["image_key"]).read_bytes(), item


def _rerun_completes_everything(work: Path, items: list[dict]) -> subprocess.CompletedProcess:
    done = subprocess.run(h.run_command(work), cwd=h.REPO, env=h.env(workers=4), capture_output=True,
                          text=True, timeout=h.HANG)
    assert done.returncode == 0, done.stdout + done.stderr
    assert h.statuses(work / "tasks.db") == {"success": len(h.unique_keys(items))}
    _check_outputs(work, items)
    assert LocalObjectStore(work / "objects", create=False).temp_files() == []
    assert h.integrity(work / "tasks.db") == "ok"
    return done


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_under_load_finishes_in_flight_work_and_exits_zero(tmp_path, signum):
    items = h.make_workload(tmp_path, 300, seed=31)
    env = h.env(workers=4, fault_latency_s=0.02, fault_jitter_s=0.01, fault_seed=31)
    proc, out, err = _start(tmp_path, env, "--grace", GRACE)
    code = _signal_when(proc, lambda: h.statuses(tmp_path / "tasks.db").get("success", 0) >= 20,
                        "20 successes", signum, GRACE + MARGIN)
    assert code == 0, out.read_text() + err.read_text()
    assert f"{signum.name}: stopping intake" in err.read_text()

    counts = h.statuses(tmp_path / "tasks.db")
    assert counts.get("running", 0) == 0, counts  # in-flight and prefetched tasks were finished
    assert set(counts) <= {"success", "queued", "failed"}, counts
    # About 270 x 25 ms of work on 4 workers remained when the signal came: intake stopped, and
    # the rest waits in the store for the next run.
    assert counts.get("queued", 0) > 0, counts
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["counters"]["succeeded"] == counts["success"]
    assert "unfinished" in out.read_text()
    assert h.integrity(tmp_path / "tasks.db") == "ok"

    rerun = _rerun_completes_everything(tmp_path, items)
    assert "0 unfinished" in rerun.stdout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ignored_when_the_run_started_stays_ignored(tmp_path, signum):
    """A shell without job control starts ``run ... &`` with SIGINT ignored, so that a Ctrl-C meant
    for the foreground leaves it alone; the run caught it anyway during the load and stopped."""
    items = h.make_workload(tmp_path, 120, seed=35)
    env = h.env(workers=4, fault_latency_s=0.02, fault_jitter_s=0.01, fault_seed=35)
    ignoring = [sys.executable, "-c", f"import os, signal, sys; signal.signal({int(signum)}, signal.SIG_IGN); "
                                      "os.execv(sys.argv[1], sys.argv[1:])"]
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen([*ignoring, *h.run_command(tmp_path)], cwd=h.REPO, env=env, stdout=stdout,
                                stderr=stderr)
    code = _signal_when(proc, lambda: h.statuses(tmp_path / "tasks.db").get("success", 0) >= 20,
                        "20 successes", signum, h.HANG)
    assert code == 0, out.read_text() + err.read_text()
    assert "stopping intake" not in err.read_text()
    assert h.statuses(tmp_path / "tasks.db") == {"success": len(h.unique_keys(items))}  # it ran to the end


def test_second_signal_exits_at_once_and_the_store_stays_consistent(tmp_path):
    items = h.make_workload(tmp_path, 20, seed=32)
    # Each attempt sleeps 30 s: a process that waited for its in-flight tasks would trip the hang guard.
    env = h.env(workers=2, fault_latency_s=30.0, fault_seed=32)
    proc, out, err = _start(tmp_path, env, "--grace", 60)
    try:
        h.wait_until(lambda: h.statuses(tmp_path / "tasks.db").get("running", 0) >= 1,
                     "a task in flight", proc)
        proc.send_signal(signal.SIGINT)
        h.wait_until(lambda: "stopping intake" in err.read_text(), "the first signal's message", proc)
        proc.send_signal(signal.SIGINT)
        code = _finish(proc, MARGIN)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code != 0
    assert h.integrity(tmp_path / "tasks.db") == "ok"
    counts = h.statuses(tmp_path / "tasks.db")
    assert counts.get("success", 0) == 0 and counts.get("running", 0) >= 1, counts

    rerun = _rerun_completes_everything(tmp_path, items)
    assert "taken over from the database" in rerun.stdout
    attempts = dict(h.db_query(tmp_path / "tasks.db", "SELECT idempotency_key, attempts FROM tasks"))
    assert max(attempts.values()) == 2 and min(attempts.values()) == 1  # the interrupted ones ran again


def test_a_signal_before_every_task_was_offered_counts_the_rest_as_never_offered(tmp_path):
    """Intake stops at the signal: the tasks of the file not offered yet have no row anywhere, so the
    summary must count them (as unfinished, and say so), not leave them out of its totals."""
    items = h.make_workload(tmp_path, 20, seed=34, duplicate_fraction=0.0)
    env = h.env(workers=1, queue_size=1, fault_latency_s=30.0, fault_seed=34)
    proc, out, err = _start(tmp_path, env, "--grace", 1)
    code = _signal_when(proc, lambda: h.statuses(tmp_path / "tasks.db").get("running", 0) >= 1, "a task in flight",
                        signal.SIGTERM, 1 + MARGIN)
    output = out.read_text()
    assert code == 0, output + err.read_text()
    found = re.search(r"tasks (\d+): (\d+) succeeded, (\d+) already done \(deduplicated\), (\d+) dead-lettered, "
                      r"(\d+) unfinished \((\d+) never offered", output)
    assert found, output
    total, succeeded, already_done, dead, unfinished, never = map(int, found.groups())
    assert total == len(items) and succeeded + already_done + dead + unfinished == total, found.group(0)
    rows = sum(h.statuses(tmp_path / "tasks.db").values())
    assert never == total - rows and never > 0, (found.group(0), rows)  # exactly the tasks with no row
    rerun = _rerun_completes_everything(tmp_path, items)
    assert "0 unfinished" in rerun.stdout


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, -signal.SIGTERM)],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_sources_are_made_stops_the_run_at_once(tmp_path, signum, code):
    """--make-sources runs before any thread starts: a signal stops it where it is (Ctrl-C without a
    traceback), instead of being held until every source is written."""
    items = [{"id": f"t{n}", "image_key": f"src/{n // 1000:02d}/o{n:05d}.txt", "variant": "gzip"} for n in range(20000)]
    (tmp_path / "tasks.json").write_text(json.dumps(items))
    objects = tmp_path / "objects"
    proc, out, err = _start(tmp_path, h.env(fsync_outputs=True), "--make-sources")
    first = objects / "src" / "00"
    returncode = _signal_when(proc, lambda: first.is_dir() and any(first.iterdir()), "the first source written",
                              signum, MARGIN)
    assert returncode == code, out.read_text() + err.read_text()
    assert "Traceback" not in err.read_text()
    assert len([p for p in (objects / "src").rglob("*") if p.is_file()]) < len(items)  # stopped part-way
    assert not (tmp_path / "tasks.db").exists()  # no task was offered


@pytest.fixture(scope="module")
def grace_expired(tmp_path_factory):
    """A `run` whose in-flight tasks outlast a 1 s grace period after SIGTERM: (work, code, items, output).

    Module-scoped: the tests below only read what it left; the one that reruns it goes last.
    """
    tmp_path = tmp_path_factory.mktemp("grace")
    # 18 unique keys and 2 in-file duplicates, then one more original: once its row exists, every
    # item of the file (the duplicates included) has been submitted.
    items = h.write_workload(tmp_path, generate_tasks(20, seed=33) + [
        {"id": "last", "image_key": "src/last.txt", "variant": "gzip"}])
    unique = len(h.unique_keys(items))
    env = h.env(workers=2, fault_latency_s=30.0, fault_seed=33)
    proc, out, err = _start(tmp_path, env, "--grace", 1)
    code = _signal_when(proc, lambda: sum(h.statuses(tmp_path / "tasks.db").values()) == unique
                        and h.statuses(tmp_path / "tasks.db").get("running", 0) >= 1,
                        "every item submitted and a task in flight", signal.SIGTERM, 1 + MARGIN)
    return tmp_path, code, items, out.read_text() + err.read_text()


def test_grace_period_running_out_still_writes_the_final_metrics(grace_expired):
    work, code, _items, output = grace_expired
    assert code == 0, output
    assert (work / "metrics.json").exists(), "no --metrics-out file after SIGTERM with an expired grace"
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["counters"]["succeeded"] == 0


def test_grace_period_summary_does_not_report_unfinished_duplicates_as_done(grace_expired):
    work, code, items, output = grace_expired
    assert code == 0, output
    found = re.search(r"tasks (\d+): (\d+) succeeded, (\d+) already done", output)
    assert found, output
    total, succeeded, already_done = map(int, found.groups())
    assert total == len(items) and h.statuses(work / "tasks.db").get("success", 0) == 0
    assert (succeeded, already_done) == (0, 0), found.group(0)


def test_grace_period_running_out_still_exits_zero_and_a_rerun_recovers(grace_expired):
    work, code, items, output = grace_expired
    assert code == 0, output
    assert h.integrity(work / "tasks.db") == "ok"
    counts = h.statuses(work / "tasks.db")
    assert counts.get("running", 0) >= 1 and counts.get("success", 0) == 0, counts  # left for recovery
    rerun = _rerun_completes_everything(work, items)
    assert "0 unfinished" in rerun.stdout
