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
    expected = {(name, c, label) for name, s in SCENARIOS.items() for c in s.clients
                for label in ([f"{i}-reject" if m == "reject" else i for i, m in s.rows])}
    assert {(r["scenario"], r["clients"], r["label"]) for r in doc["rows"]} == expected
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
            groups[(row["scenario"], row["clients"])].append(row["runs"][0])
    for (scenario, _clients), runs in groups.items():
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
        if row["impl"] == "engine":
            assert run["queue_depth_max"] <= QUEUE_SIZE
        else:
            assert run["rejected"] == 0


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


def test_load_clients_reject_a_bad_client_count():
    with pytest.raises(ValueError):
        clients.closed_loop(_Instant(), _tasks(1), 0)


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
