"""The benchmark end to end: a tiny run of every scenario (schema, same work), the load clients,
and the requirements' comparison of baseline and engine at 50 and 100 clients.

Only ``test_engine_meets_the_requirements_against_the_baseline`` asserts a
speed, as the requirements ask; its expected margin is several times the
threshold, so it holds on a busy machine.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
import threading
import xml.etree.ElementTree as ET
from collections import defaultdict

import pytest

from taskqueue.bench import clients, main, report
from taskqueue.bench.impls import Outcome, Rejected
from taskqueue.bench.scenarios import QUEUE_SIZE, SCENARIOS

ROW_KEYS = {
    "scenario": str, "clients": int, "label": str, "impl": str, "on_full": str, "tasks": int,
    "repeats": int, "throughput_per_s": float, "latency_mean_ms": float, "latency_p50_ms": float,
    "latency_p95_ms": float, "latency_p99_ms": float, "error_rate": float, "completed": (int, float),
    "rejected": (int, float), "retries": (int, float), "dedup_hits": (int, float),
    "utilisation": float, "errors_by_type": dict, "spread": dict, "runs": list,
}


def _run_benchmark(args: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(args)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One ``--quick`` run of every scenario, outputs recorded: (exit code, stdout, JSON, out dir)."""
    out_dir = tmp_path_factory.mktemp("bench-quick")
    code, stdout = _run_benchmark(["--quick", "--record-outputs", "--out", str(out_dir)])
    print(stdout)
    doc = json.loads((out_dir / "benchmark.json").read_text(encoding="utf-8"))
    return code, stdout, doc, out_dir


def test_quick_run_succeeds_and_prints_table_and_verdict(quick):
    code, stdout, _doc, out_dir = quick
    assert code == 0
    assert "tasks/s" in stdout and "Requirements verdict" in stdout and "Product targets" in stdout
    for clients_count in (50, 100):
        assert any(line.strip().startswith(f"{clients_count} clients: ") for line in stdout.splitlines())
    assert {p.name for p in out_dir.iterdir()} >= {"benchmark.json", "benchmark.csv", "benchmark.svg"}


def test_json_schema(quick):
    _code, _stdout, doc, _out = quick
    assert doc["schema"] == report.SCHEMA
    assert {"created", "command", "machine", "settings", "wall_s", "rows", "verdict"} <= set(doc)
    assert doc["machine"]["cpus"] >= 1 and doc["settings"]["quick"] is True
    expected = {(name, c, tasks, f"{i}-reject" if m == "reject" else i)
                for name, s in SCENARIOS.items() for c in s.clients
                for tasks, rows in s.sizes(quick=True) for i, m in rows}
    assert {(r["scenario"], r["clients"], r["tasks"], r["label"]) for r in doc["rows"]} == expected
    assert len({r["tasks"] for r in doc["rows"] if r["scenario"] == "burst"}) == 2  # the memory slope
    for row in doc["rows"]:
        for key, kind in ROW_KEYS.items():
            assert isinstance(row[key], kind), (row["label"], key, row[key])
        assert row["repeats"] == len(row["runs"]) == 1
        assert row["spread"]["throughput_per_s"][0] <= row["throughput_per_s"] <= row["spread"]["throughput_per_s"][1]
        assert row["latency_p50_ms"] <= row["latency_p95_ms"] <= row["latency_p99_ms"] <= row["latency_max_ms"]
        assert 0.0 <= row["error_rate"] <= 1.0 and 0.0 < row["utilisation"] <= 1.0
    checks = doc["verdict"]["requirements"]
    assert [c["clients"] for c in checks] == [50, 100]
    assert all(c["status"] in ("PASS", "FAIL") and c["throughput_ratio"] > 0 for c in checks)
    assert all(t["status"] in ("MET", "MISSED", "n/a") for t in doc["verdict"]["targets"])


def test_csv_matches_json(quick):
    _code, _stdout, doc, out_dir = quick
    with open(out_dir / "benchmark.csv", newline="", encoding="utf-8") as f:
        lines = list(csv.DictReader(f))
    assert list(lines[0]) == list(report.CSV_COLUMNS)
    assert [(line["scenario"], line["label"], int(line["clients"])) for line in lines] == \
        [(r["scenario"], r["label"], r["clients"]) for r in doc["rows"]]
    for line, row in zip(lines, doc["rows"]):
        assert float(line["throughput_per_s"]) == pytest.approx(row["throughput_per_s"], rel=1e-5)
        assert float(line["latency_p95_ms"]) == pytest.approx(row["latency_p95_ms"], rel=1e-5)


def test_svg_is_well_formed_with_a_bar_per_row(quick):
    _code, _stdout, doc, out_dir = quick
    root = ET.parse(out_dir / "benchmark.svg").getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    tips = [t.text for t in root.iter("{http://www.w3.org/2000/svg}title")]
    for row in doc["rows"]:
        assert any(tip.startswith(f"{row['label']}: {row['throughput_per_s']:.1f} tasks/s") for tip in tips)


def test_the_rows_of_a_scenario_did_the_same_work(quick):
    """Same tasks everywhere; a task that succeeded in every row has the same output key and bytes."""
    _code, _stdout, doc, _out = quick
    groups = defaultdict(list)
    for row in doc["rows"]:
        if row["label"] != "engine-reject":  # load shedding: it does less work on purpose
            groups[(row["scenario"], row["clients"], row["tasks"])].append(row["runs"][0])
    for (scenario, _clients, _tasks), runs in groups.items():
        assert {r["label"] for r in runs} == {"baseline", "engine", "stdlib"}
        task_ids = {frozenset(r["outputs"]) for r in runs}
        assert len(task_ids) == 1 and len(next(iter(task_ids))) == runs[0]["tasks"]
        assert {r["completed"] for r in runs} == {runs[0]["tasks"]}
        everywhere_ok = set.intersection(*({t for t, o in r["outputs"].items() if "key" in o} for r in runs))
        assert everywhere_ok, scenario
        for task_id in everywhere_ok:
            assert len({(r["outputs"][task_id]["key"], r["outputs"][task_id]["sha256"]) for r in runs}) == 1
        if SCENARIOS[scenario].permanent_rate == SCENARIOS[scenario].transient_rate == 0:
            assert len(everywhere_ok) == runs[0]["tasks"]  # no faults: everything succeeded everywhere


def test_burst_accounts_for_every_task_and_keeps_the_bound(quick):
    _code, _stdout, doc, _out = quick
    for row in (r for r in doc["rows"] if r["scenario"] == "burst"):
        run = row["runs"][0]
        assert run["completed"] + run["rejected"] == run["tasks"]
        assert isinstance(run["rss_growth_kib"], int) and run["held_max"] >= run["queue_depth_max"] >= 0
        assert 0 <= run["submit_phase_s"] <= run["wall_s"]
        if row["impl"] == "engine":
            assert run["queue_depth_max"] <= QUEUE_SIZE
            assert run["held_max"] <= min(run["tasks"], QUEUE_SIZE + run["clients"] + 8 + 8)
        else:
            assert run["rejected"] == 0
    rss = next(t for t in doc["verdict"]["targets"] if t["target"].startswith("burst: engine peak RSS"))
    assert rss["status"] in ("MET", "MISSED") and "per 1000 more tasks" in rss["detail"]


# -- the load clients, on a stand-in implementation --------------------------------------------

class _Instant:
    """Resolves every task at once; refuses the ids in ``refuse`` (like a full queue in reject mode)."""

    def __init__(self, refuse=()):
        self.refuse = set(refuse)
        self.lock = threading.Lock()
        self.seen = []

    def submit(self, task):
        with self.lock:
            self.seen.append(task.id)
        if task.id in self.refuse:
            raise Rejected()
        return task

    def result(self, task):
        if task.id.endswith("7"):
            return Outcome(False, None, "InjectedTransientError")
        return Outcome(True, f"variants/gzip/{task.image_key}.gz", None)


def _tasks(n):
    return [{"id": f"t-{i:03d}", "image_key": f"src/{i:03d}.txt", "variant": "gzip"} for i in range(n)]


@pytest.mark.parametrize("drive", [clients.closed_loop, clients.open_loop])
def test_load_clients_deal_every_task_once_and_count_outcomes(drive):
    impl = _Instant(refuse={"t-010", "t-020"})
    load = drive(impl, _tasks(100), 7)
    assert sorted(impl.seen) == [t["id"] for t in _tasks(100)]
    assert load.rejected == 2 and load.completed == 98 and len(load.outcomes) == 100
    assert load.errors == {"InjectedTransientError": 10} and load.failed == 10
    assert len(load.submit_s) == 100 and all(s >= 0 for s in load.latencies)
    assert load.wall_s >= max(load.latencies)


class _Ticking(_Instant):
    """Each outcome moves a stepped clock one second on: time passes only as tasks complete."""

    def __init__(self):
        super().__init__()
        self.now = 0.0

    def clock(self):
        return self.now

    def result(self, task):
        self.now += 1.0
        return super().result(task)


def test_a_timed_closed_loop_deals_no_task_after_its_deadline():
    impl = _Ticking()
    load = clients.closed_loop(impl, _tasks(100), 1, duration_s=10.0, clock=impl.clock)
    assert impl.seen == [t["id"] for t in _tasks(10)]  # the next one would start at t=10: not dealt
    assert (load.dealt, load.completed, load.unsettled, load.ran_out) == (10, 10, 0, False)
    assert len(load.outcomes) == 10


def test_a_timed_closed_loop_whose_list_runs_out_says_so():
    impl = _Ticking()
    load = clients.closed_loop(impl, _tasks(20), 3, duration_s=1e9, clock=impl.clock)
    assert sorted(impl.seen) == [t["id"] for t in _tasks(20)]
    assert (load.dealt, load.completed, load.ran_out) == (20, 20, True)


def test_timed_rows_in_the_plan(tmp_path):
    from taskqueue.bench import cli as bench_cli
    plan = bench_cli.plan(bench_cli.parser().parse_args(["--scenarios", "io,burst"]))
    io_rows = [s for s in plan if s["scenario"] == "io"]
    assert {s["duration_s"] for s in io_rows} == {SCENARIOS["io"].duration_s}
    assert {s["tasks"] for s in io_rows} == {SCENARIOS["io"].timed_tasks(SCENARIOS["io"].duration_s)}
    assert {s["duration_s"] for s in plan if s["scenario"] == "burst"} == {None}  # open loop: all its tasks
    full = bench_cli.plan(bench_cli.parser().parse_args(["--scenarios", "io", "--full"]))
    assert {s["duration_s"] for s in full} == {bench_cli.FULL_DURATION_S}
    assert len([s for s in full if not s.get("warmup")]) == len(io_rows) // 3 * bench_cli.FULL_REPEAT
    assert len([s for s in full if s.get("warmup")]) == len(io_rows) // 3 * bench_cli.FULL_WARMUP
    fixed = bench_cli.plan(bench_cli.parser().parse_args(["--scenarios", "io", "--tasks", "50"]))
    assert {(s["duration_s"], s["tasks"]) for s in fixed} == {(None, 50)}


def test_full_repeats_thumbs_as_often_as_the_timed_rows():
    """thumbs' target (0.97x the pool) is closer than a 200-task row's noise: --full runs it
    FULL_REPEAT times, as the timed rows; a short run, DEFAULT_REPEAT times."""
    from taskqueue.bench import cli as bench_cli
    for argv, expected in ((["--scenarios", "thumbs", "--full"], bench_cli.FULL_REPEAT),
                           (["--scenarios", "thumbs"], bench_cli.DEFAULT_REPEAT),
                           (["--scenarios", "thumbs", "--full", "--repeat", "2"], 2)):
        plan = bench_cli.plan(bench_cli.parser().parse_args(argv))
        assert sorted({s["repeat"] for s in plan}) == list(range(expected)), argv
        assert not any(s.get("warmup") for s in plan)  # not a timed row: no warm-up round
    assert bench_cli.FULL_REPEAT > bench_cli.DEFAULT_REPEAT


def test_full_runs_a_warm_up_round_of_the_timed_rows_first():
    """The shared disk syncs faster after a pause: --full's first round of the timed rows is a
    warm-up, run before the measured repeats and flagged so that it enters no median."""
    from taskqueue.bench import cli as bench_cli
    full = bench_cli.plan(bench_cli.parser().parse_args(["--scenarios", "io,burst", "--full"]))
    warm = [s for s in full if s.get("warmup")]
    measured = [s for s in full if not s.get("warmup")]
    assert full[:len(warm)] == warm  # first
    assert {s["scenario"] for s in warm} == {"io"}  # only the timed rows
    assert sorted((s["clients"], s["label"]) for s in warm) == \
        sorted((s["clients"], s["label"]) for s in measured if s["scenario"] == "io" and s["repeat"] == 0)
    assert len(measured) == len(bench_cli.plan(bench_cli.parser().parse_args(
        ["--scenarios", "io,burst", "--full", "--warmup", "0"])))
    for argv in (["--scenarios", "io"], ["--full", "--quick"], ["--full", "--tasks", "20"]):
        assert not any(s.get("warmup") for s in bench_cli.plan(bench_cli.parser().parse_args(argv)))
    assert sum(s.get("warmup", False) for s in bench_cli.plan(bench_cli.parser().parse_args(
        ["--scenarios", "io", "--warmup", "2"]))) == 12
    with pytest.raises(SystemExit):
        bench_cli.parser().parse_args(["--warmup", "-1"])


def test_warm_up_runs_are_reported_apart_and_in_no_median(tmp_path):
    code, stdout = _run_benchmark(["--scenarios", "overhead", "--clients", "2", "--duration", "0.2",
                                   "--repeat", "1", "--warmup", "1", "--out", str(tmp_path)])
    assert code == 0, stdout
    doc = json.loads((tmp_path / "benchmark.json").read_text(encoding="utf-8"))
    assert doc["settings"]["warmup_rounds"] == 1 and doc["settings"]["repeat"] == 1
    assert sorted(r["label"] for r in doc["warmup"]) == ["baseline", "engine", "stdlib"]
    assert all(run["warmup"] for r in doc["warmup"] for run in r["runs"])
    assert all(r["repeats"] == 1 and not r["runs"][0]["warmup"] for r in doc["rows"])
    assert "warm-up (1 round(s) of the timed rows first, in no median and no verdict)" in stdout
    assert "3 runs of 3 rows (and 3 warm-up runs)" in stdout
    assert len((tmp_path / "benchmark.csv").read_text(encoding="utf-8").splitlines()) == 1 + 3  # header, rows


def test_no_warm_up_round_where_no_row_is_timed():
    from taskqueue.bench import cli as bench_cli
    for argv in (["--scenarios", "burst", "--full"], ["--scenarios", "burst", "--warmup", "2"]):
        args = bench_cli.parser().parse_args(argv)
        specs = bench_cli.plan(args)
        assert not any(s.get("warmup") for s in specs)
        assert bench_cli._settings(args, specs)["warmup_rounds"] == 0
    args = bench_cli.parser().parse_args(["--scenarios", "io", "--warmup", "2"])
    assert bench_cli._settings(args, bench_cli.plan(args))["warmup_rounds"] == 2


def test_full_runs_burst_at_sizes_past_the_engine_s_caches_filling():
    from taskqueue.bench import cli as bench_cli
    sizes = {spec["tasks"] for spec in bench_cli.plan(bench_cli.parser().parse_args(["--scenarios", "burst"]))}
    full = {spec["tasks"] for spec in bench_cli.plan(bench_cli.parser().parse_args(["--scenarios", "burst", "--full"]))}
    quick = {spec["tasks"] for spec in bench_cli.plan(bench_cli.parser().parse_args(["--scenarios", "burst", "--quick"]))}
    assert (sizes, full, quick) == ({1000, 4000}, {4000, 16000}, {50, 150})


def test_load_clients_reject_a_bad_client_count():
    with pytest.raises(ValueError):
        clients.closed_loop(_Instant(), _tasks(1), 0)


class _Handle:
    """A stand-in Future: weakly referenceable, holding nothing but its task's id."""

    __slots__ = ("task_id", "__weakref__")

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id


class _CompletesOnRelease:
    """A callback-capable stand-in that completes a task only once *nobody* holds its handle.

    ``submit`` returns a fresh :class:`_Handle` and keeps only a weak
    reference to it; ``on_done`` keeps the callback, not the handle. When the
    handle's last strong reference goes, the weak reference's callback hands
    the task to a completer thread, which calls its callback (once; twice for
    ids in ``twice``). So if the client kept a handle, that task would never
    complete. Ids ending in 5 complete at once, inside ``on_done`` (like a
    deduplicated task's finished Future); ids in ``refuse`` are rejected.
    """

    def __init__(self, refuse=(), twice=()) -> None:
        import queue
        import weakref
        self._weakref = weakref
        self.refuse, self.twice = set(refuse), set(twice)
        self.refs = {}          # task id -> weak reference to its handle (kept so its callback fires)
        self.callbacks = {}     # task id -> the client's callback, until called
        self.released = queue.SimpleQueue()
        self.completed_after_release = []
        self.completer = threading.Thread(target=self._complete, daemon=True)
        self.completer.start()

    def submit(self, task):
        if task.id in self.refuse:
            raise Rejected()
        handle = _Handle(task.id)
        self.refs[task.id] = self._weakref.ref(handle, lambda _ref, tid=task.id: self.released.put(tid))
        return handle

    def on_done(self, handle, callback):
        task_id = handle.task_id
        if task_id.endswith("5"):
            callback(self.outcome(task_id))
        else:
            self.callbacks[task_id] = callback

    @staticmethod
    def outcome(task_id):
        if task_id.endswith("7"):
            return Outcome(False, None, "InjectedTransientError")
        return Outcome(True, f"variants/gzip/{task_id}.gz", None)

    def _complete(self):
        while (task_id := self.released.get()) is not None:
            callback = self.callbacks.pop(task_id, None)
            if callback is None:  # completed inside on_done already
                continue
            assert self.refs[task_id]() is None
            self.completed_after_release.append(task_id)
            for _ in range(2 if task_id in self.twice else 1):
                callback(self.outcome(task_id))

    def finish_the_rest(self):
        """Stop the completer; complete whatever still waits (only when a test has already failed)."""
        self.released.put(None)
        self.completer.join(timeout=10)
        for task_id in list(self.callbacks):
            self.callbacks.pop(task_id)(self.outcome(task_id))

    def result(self, handle):  # pragma: no cover - the callback path never blocks on a handle
        raise AssertionError("an open-loop client waited on a handle of a callback-capable implementation")


def _open_loop_in_thread(impl, tasks, n_clients):
    """Run open_loop in a thread; return its LoadResult or raise what it raised. Never hangs the suite."""
    box = {}

    def run():
        try:
            box["load"] = clients.open_loop(impl, tasks, n_clients)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=20)
    hung = thread.is_alive()
    impl.finish_the_rest()
    thread.join(timeout=10)
    assert not hung, "open_loop did not finish: a client still holds a handle, so its task never completed"
    if "error" in box:
        raise box["error"]
    return box["load"]


def test_open_loop_keeps_no_handle_and_records_each_outcome_once_with_callbacks():
    impl = _CompletesOnRelease(refuse={"t-010", "t-020"})
    tasks = _tasks(200)
    load = _open_loop_in_thread(impl, tasks, 7)
    # Every accepted task not completed inside on_done completed *after* its handle was released.
    accepted = [t["id"] for t in tasks if t["id"] not in {"t-010", "t-020"}]
    assert sorted(impl.completed_after_release) == [i for i in accepted if not i.endswith("5")]
    assert load.recorded_twice == 0 and load.unsettled == 0
    assert len(load.outcomes) == 200 and load.rejected == 2 and load.completed == 198
    assert {i: o for i, o in load.outcomes.items() if o is not clients.REJECTED} == \
        {i: impl.outcome(i) for i in accepted}
    assert load.errors == {"InjectedTransientError": 20} and load.failed == 20
    assert len(load.latencies) == 198 and all(s >= 0 for s in load.latencies)
    assert len(load.submit_s) == 200 and load.wall_s >= max(load.latencies)
    assert 0 <= load.submit_phase_s <= load.wall_s


def test_open_loop_refuses_an_outcome_delivered_twice():
    impl = _CompletesOnRelease(twice={"t-004"})
    with pytest.raises(RuntimeError, match="recorded twice.*t-004"):
        _open_loop_in_thread(impl, _tasks(30), 3)


# -- the requirements' integration test ------------------------------------------------------------

def test_engine_meets_the_requirements_against_the_baseline(tmp_path):
    """io at 50 and 100 clients, a few hundred tasks: throughput >= 2x and P95 <= 60 % of the baseline."""
    code, stdout = _run_benchmark(["--scenarios", "io", "--clients", "50,100", "--tasks", "300",
                                   "--repeat", "1", "--out", str(tmp_path)])
    print(stdout)
    assert code == 0
    doc = json.loads((tmp_path / "benchmark.json").read_text(encoding="utf-8"))
    checks = {c["clients"]: c for c in doc["verdict"]["requirements"]}
    for count in (50, 100):
        check = checks[count]
        assert check["throughput_ratio"] >= 2.0, check["detail"]
        assert check["p95_ratio"] <= 0.60, check["detail"]
        assert check["status"] == "PASS"


def test_the_report_says_which_filesystem_the_rows_ran_on(tmp_path):
    from taskqueue.bench.cli import filesystem_of
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/vda / ext4 rw 0 0\n"
                      "tmpfs /data tmpfs rw 0 0\n"
                      "/dev/vdb /data/fast\\040disk xfs rw 0 0\n"
                      "tmpfs /data/over tmpfs rw 0 0\n"
                      "/dev/vdc /data/over btrfs rw 0 0\n"
                      "garbage\n")
    assert filesystem_of("/data/x/y", str(mounts)) == "tmpfs"
    assert filesystem_of("/data", str(mounts)) == "tmpfs"
    assert filesystem_of("/database", str(mounts)) == "ext4"  # a prefix of the name is not a mount
    assert filesystem_of("/data/fast disk/rows", str(mounts)) == "xfs"
    assert filesystem_of("/data/over/x", str(mounts)) == "btrfs"  # mounted over the tmpfs: the one seen
    assert filesystem_of("/anything", str(tmp_path / "missing")) is None


def test_a_run_without_full_or_out_never_replaces_the_reports_the_readme_quotes(tmp_path, monkeypatch):
    """Found in review: the README's main command (`--benchmark`, the short run) wrote into reports/,
    replacing the --full run's files the README quotes. Only --full writes there by default."""
    monkeypatch.chdir(tmp_path)
    code, _stdout = _run_benchmark(["--quick", "--scenarios", "overhead", "--clients", "4"])
    assert code == 0
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("benchmark.*")) == [
        "reports/last-run/benchmark.csv", "reports/last-run/benchmark.json", "reports/last-run/benchmark.svg"]


def test_without_the_baseline_a_checkout_has_the_benchmark_refuses_at_once_writing_nothing(tmp_path, monkeypatch):
    """Found in review: from an installed package (no input_new/), it ran anyway, crashed six rows
    and wrote reports/ into the working directory."""
    from taskqueue.bench import impls

    monkeypatch.setattr(impls, "BASELINE_PATH", tmp_path / "input_new" / "baseline_task_queue_v2.py")
    monkeypatch.chdir(tmp_path)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code, _stdout = _run_benchmark(["--quick"])
    assert code == 2 and "runs from a checkout" in err.getvalue()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CPU time by thread comes from /proc (Linux)")
def test_each_row_splits_its_cpu_time_by_thread(quick):
    """Found measuring the commit path: the engine's extra CPU per task at io sat mostly in its store
    writer, which only a split by thread could show. Every row carries it; the parts add up to the
    row's CPU time per task."""
    _code, _stdout, doc, _out = quick
    for row in doc["rows"]:
        split = row["cpu_us_per_task_by_thread"]
        run = row["runs"][0]
        assert split == run["cpu_us_per_task_by_thread"]  # one repeat: its median is itself
        assert all(value >= 0 for value in split.values()) and "client" in split
        total = run["cpu_cores"] * run["wall_s"] / run["completed"] * 1e6
        assert sum(split.values()) == pytest.approx(total, rel=0.05, abs=5.0), (row["label"], split, total)
        if row["impl"] == "engine":
            assert {"tq-store-writer", "tq-worker"} <= set(split), split
            assert split["tq-worker"] > 0
        if row["impl"] == "stdlib":
            assert "stdlib" in split and "tq-store-writer" not in split
