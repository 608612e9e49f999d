"""The benchmark's arithmetic on synthetic numbers: exact percentiles, medians over repeats, verdicts.

No threads, no timing: every expected value is worked out by hand.
"""

from __future__ import annotations

import csv
import io
import math
import random

import pytest

from taskqueue.bench import report, stats, verdict
from taskqueue.bench.scenarios import QUEUE_SIZE, WORKERS


# -- percentiles ---------------------------------------------------------------------

def test_nearest_rank_percentiles_of_1_to_100_are_the_ranks_themselves():
    ordered = [float(i) for i in range(1, 101)]
    assert stats.percentile(ordered, 50) == 50.0
    assert stats.percentile(ordered, 95) == 95.0
    assert stats.percentile(ordered, 99) == 99.0
    assert stats.percentile(ordered, 100) == 100.0
    assert stats.percentile(ordered, 0.5) == 1.0


def test_percentile_picks_a_real_sample_never_an_interpolation():
    ordered = [0.1, 0.2, 0.3, 0.4, 0.5]
    assert stats.percentile(ordered, 50) == 0.3    # rank ceil(2.5) = 3
    assert stats.percentile(ordered, 95) == 0.5    # rank ceil(4.75) = 5
    assert stats.percentile(ordered, 40) == 0.2    # rank ceil(2.0) = 2, not 2.4's neighbour
    twenty = [float(i) for i in range(10, 210, 10)]
    assert stats.percentile(twenty, 95) == 190.0   # rank 19 of 20
    assert stats.percentile(twenty, 99) == 200.0   # rank ceil(19.8) = 20


def test_percentile_edge_cases():
    assert stats.percentile([], 95) is None
    assert stats.percentile([7.0], 50) == stats.percentile([7.0], 99) == 7.0
    for bad in (0, -1, 100.5):
        with pytest.raises(ValueError):
            stats.percentile([1.0], bad)


def test_summarize_sorts_for_itself_and_means_exactly():
    samples = [float(i) for i in range(1, 1001)]
    random.Random(3).shuffle(samples)
    summary = stats.summarize(samples)
    assert summary == {"count": 1000, "mean": 500.5, "p50": 500.0, "p95": 950.0, "p99": 990.0,
                       "max": 1000.0}


def test_summarize_mean_has_no_rounding_drift():
    summary = stats.summarize([0.1] * 10)
    assert summary["mean"] == 0.1  # math.fsum: a naive sum gives 0.09999999999999999
    assert stats.summarize([]) == {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None,
                                   "max": None}


def test_median_spread_ratio():
    assert stats.median([3.0, 1.0, 2.0]) == 2.0
    assert stats.median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert stats.median([None, 5.0]) == 5.0
    assert stats.median([]) is None
    assert stats.spread([3.0, None, 1.0, 2.0]) == [1.0, 3.0]
    assert stats.spread([None]) is None
    assert stats.ratio(6.0, 3.0) == 2.0
    assert stats.ratio(1.0, 0.0) is None
    assert stats.ratio(None, 1.0) is None


# -- aggregation over repeats ----------------------------------------------------------

def _run(label, *, scenario="io", clients=100, repeat=0, throughput=100.0, p95=100.0, error_rate=0.0,
         depth_max=None, rss_growth_kib=1024, tasks=300, **extra):
    impl = label.split("-")[0]
    run = {"scenario": scenario, "clients": clients, "label": label, "impl": impl,
           "on_full": "reject" if label.endswith("reject") else ("block" if impl == "engine" else "-"),
           "tasks": tasks, "seed": 42, "repeat": repeat}
    for metric in report.METRICS:
        run[metric] = 1.0
    run.update(throughput_per_s=throughput, latency_p95_ms=p95, error_rate=error_rate,
               queue_depth_max=depth_max, rss_growth_kib=rss_growth_kib, rss_peak_kib=30 * 1024,
               queue_depth_source="test", errors_by_type={"InjectedTransientError": 1} if error_rate else {})
    run.update(extra)
    return run


def test_aggregate_takes_medians_and_spreads_per_row_in_first_seen_order():
    runs = [_run("baseline", repeat=r, throughput=t, p95=p)
            for r, (t, p) in enumerate([(100.0, 900.0), (120.0, 700.0), (90.0, 800.0)])]
    runs += [_run("engine", repeat=r, throughput=t) for r, t in enumerate([600.0, 500.0])]
    rows = report.aggregate(runs)
    assert [row["label"] for row in rows] == ["baseline", "engine"]
    base, engine = rows
    assert base["repeats"] == 3 and engine["repeats"] == 2
    assert base["throughput_per_s"] == 100.0 and base["spread"]["throughput_per_s"] == [90.0, 120.0]
    assert base["latency_p95_ms"] == 800.0 and base["spread"]["latency_p95_ms"] == [700.0, 900.0]
    assert engine["throughput_per_s"] == 550.0          # even count: mean of the middle two
    assert base["runs"] == runs[:3]


def test_csv_has_one_line_per_row_with_medians_and_spread():
    runs = [_run("baseline", repeat=r, throughput=t) for r, t in enumerate([100.0, 120.0, 90.0])]
    text = report.csv_text(report.aggregate(runs))
    lines = list(csv.DictReader(io.StringIO(text)))
    assert list(lines[0].keys()) == list(report.CSV_COLUMNS)
    assert len(lines) == 1
    assert float(lines[0]["throughput_per_s"]) == 100.0
    assert (float(lines[0]["throughput_per_s_min"]), float(lines[0]["throughput_per_s_max"])) == (90.0, 120.0)
    assert lines[0]["queue_depth_max"] == ""            # missing values are empty cells


# -- verdicts -----------------------------------------------------------------------------

def _io_rows(engine_tput, engine_p95, *, clients=(50, 100)):
    runs = []
    for c in clients:
        runs += [_run("baseline", clients=c, throughput=100.0, p95=1000.0, error_rate=0.02),
                 _run("engine", clients=c, throughput=engine_tput, p95=engine_p95, error_rate=0.0),
                 _run("stdlib", clients=c, throughput=engine_tput, p95=engine_p95, error_rate=0.02)]
    return report.aggregate(runs)


def test_requirement_passes_at_exactly_the_thresholds_and_fails_just_past_them():
    at_limit = verdict.verdict(_io_rows(200.0, 600.0))["requirements"]
    assert [(c["clients"], c["status"]) for c in at_limit] == [(50, "PASS"), (100, "PASS")]
    assert at_limit[0]["throughput_ratio"] == 2.0 and at_limit[0]["p95_ratio"] == 0.6
    slow = verdict.verdict(_io_rows(199.0, 100.0))["requirements"]
    assert {c["status"] for c in slow} == {"FAIL"}
    laggy = verdict.verdict(_io_rows(500.0, 601.0))["requirements"]
    assert {c["status"] for c in laggy} == {"FAIL"}


def test_requirement_not_run_is_not_a_pass():
    result = verdict.verdict(_io_rows(500.0, 100.0, clients=(100,)))
    assert [(c["clients"], c["status"]) for c in result["requirements"]] == [(50, "n/a"), (100, "PASS")]
    targets = {t["target"]: t["status"] for t in result["targets"]}
    assert all(status == "n/a" for name, status in targets.items() if name.startswith(("overhead", "burst")))


def test_targets_are_computed_from_the_rows():
    targets = verdict.targets(_io_rows(600.0, 150.0))
    assert [t["status"] for t in targets[:4]] == ["MET", "MET", "MET", "MET"]  # 6x, 0.15x, 0 < 2 %, 1x
    assert math.isclose(targets[0]["value"], 6.0) and math.isclose(targets[1]["value"], 0.15)
    assert "6.00x" in targets[0]["detail"] and "600.0" in targets[0]["detail"]
    missed = verdict.targets(_io_rows(400.0, 250.0))
    assert [t["status"] for t in missed[:2]] == ["MISSED", "MISSED"]  # 4x < 5x, 0.25x > 0.2x


def _burst(label, tasks, growth_kib, *, repeat=0, depth_max=None, held_max=None):
    return _run(label, scenario="burst", tasks=tasks, repeat=repeat, rss_growth_kib=growth_kib,
                depth_max=depth_max, held_max=held_max)


def test_burst_holding_target_uses_the_most_held_over_repeats_and_sizes_unclamped():
    """Found in review: the target read the engine's queue depth, which its histogram clamps to the
    queue's capacity: it could never miss. It reads what the harness sampled the engine holding."""
    bound = 2 * (QUEUE_SIZE + WORKERS + 100)
    runs = [_burst("baseline", 5000, 2048, held_max=4900),
            _burst("engine", 1000, 1024, held_max=bound - 5),
            _burst("engine", 5000, 1024, repeat=0, held_max=bound),
            _burst("engine", 5000, 1024, repeat=1, held_max=bound - 5),
            _burst("engine-reject", 5000, 512, held_max=QUEUE_SIZE)]
    held = verdict.targets(report.aggregate(runs))[-2]
    assert held["status"] == "MET" and held["value"] == bound and "baseline@5000 4900" in held["detail"]
    runs[3]["held_max"] = bound + 1           # one repeat over the bound is enough to miss
    held = verdict.targets(report.aggregate(runs))[-2]
    assert held["status"] == "MISSED" and held["value"] == bound + 1


def test_the_requirement_fails_an_engine_that_errs_more_than_the_baseline():
    """Found in review: throughput counts every outcome, a failure included, and the verdict looked at
    speed alone: an engine failing every task passed."""
    rows = report.aggregate([_run("baseline", throughput=124.0, p95=1040.0, error_rate=0.02),
                             _run("engine", throughput=5000.0, p95=5.0, error_rate=1.0)])
    check = verdict.requirement(rows, 100)
    assert check["status"] == "FAIL" and "errors 100.00% vs 2.00%" in check["detail"]
    rows = report.aggregate([_run("baseline", throughput=124.0, p95=1040.0, error_rate=0.02),
                             _run("engine", throughput=5000.0, p95=5.0, error_rate=0.01)])
    assert verdict.requirement(rows, 100)["status"] == "PASS"


def test_the_processed_target_leaves_out_duplicates_answered_without_work_and_retries():
    """Found in review: io has 10 % duplicate keys, which the engine completes from its store without
    processing; its throughput counted them, the stdlib pool's work did not compare like with like."""
    rows = report.aggregate([
        _run("engine", throughput=980.0, wall_s=10.0, process_calls=9000, retries=100, dedup_hits=1000),
        _run("stdlib", throughput=1000.0, wall_s=10.0, process_calls=10000, retries=0, dedup_hits=0)])
    target = verdict.processed_target(rows)
    assert target["value"] == pytest.approx(0.89) and target["status"] == "MISSED"  # 890 vs 1000 per s
    assert "1000 duplicates" in target["detail"]


def _spread_rows(engine, stdlib):
    """io@100 engine and stdlib rows from (throughput, host probe ms) per repeat (None: no probe)."""
    runs = []
    for label, pairs in (("engine", engine), ("stdlib", stdlib)):
        runs += [_run(label, repeat=r, throughput=t, host_probe_ms=p, host_fsync_ms=None)
                 for r, (t, p) in enumerate(pairs)]
    return report.aggregate(runs)


def test_the_spread_target_says_how_far_the_host_moved_beside_the_spread_as_measured():
    # The host took 10 ms for the probe, then 12.5 ms (20 % slower): both rows lost 20 % in that repeat.
    rows = _spread_rows(engine=[(1000.0, 10.0), (1000.0, 10.0), (800.0, 12.5)],
                        stdlib=[(1100.0, 10.0), (1100.0, 10.0), (880.0, 12.5)])
    target = verdict.spread_target(rows)
    assert target["status"] == "MISSED" and target["value"] == pytest.approx(0.2)  # as measured: 800 vs 1000
    assert target["detail"].endswith("; the host's CPU probe moved 25% over the same runs (10.0-12.5 ms)")


def test_the_spread_target_says_how_far_the_disk_moved_too():
    runs = [_run(label, repeat=r, throughput=t, host_probe_ms=8.0, host_fsync_ms=f)
            for label in ("engine", "stdlib") for r, (t, f) in enumerate([(1000.0, 2.0), (990.0, 3.0), (995.0, 2.0)])]
    detail = verdict.spread_target(report.aggregate(runs))["detail"]
    assert detail.endswith("; the host's CPU probe moved 0% over the same runs (8.0-8.0 ms)"
                           "; the host's fsync probe moved 50% over the same runs (2.0-3.0 ms)")


def test_the_spread_target_of_runs_made_before_the_probe_says_nothing_of_it():
    rows = _spread_rows(engine=[(1000.0, None), (990.0, None)], stdlib=[(1100.0, None), (1090.0, None)])
    target = verdict.spread_target(rows)
    assert target["status"] == "MET" and "probe" not in target["detail"]


def test_burst_growth_is_the_slope_between_the_two_sizes_per_1000_tasks():
    runs = [_burst("baseline", 1000, 1000, held_max=990), _burst("baseline", 5000, 9000, held_max=4900),
            _burst("engine", 1000, 6000, held_max=240), _burst("engine", 5000, 6400, held_max=244),
            _burst("engine-reject", 5000, 5000),
            _burst("stdlib", 1000, 2000), _burst("stdlib", 5000, 10000)]
    growth = report.burst_growth(report.aggregate(runs))
    assert (growth["small"], growth["large"], growth["clients"]) == (1000, 5000, 100)
    assert set(growth["labels"]) == {"baseline", "engine", "stdlib"}   # engine-reject: one size only
    assert growth["labels"]["baseline"]["slope_kib_per_1000"] == 2000.0  # (9000 - 1000) / 4
    assert growth["labels"]["engine"]["slope_kib_per_1000"] == 100.0     # (6400 - 6000) / 4
    assert growth["labels"]["engine"]["held_max_large"] == 244
    rss = verdict.rss_target(report.aggregate(runs))
    assert rss["status"] == "MET" and rss["value"] == 100.0             # 100 <= 25 % of 2000
    assert "baseline +1.95" in rss["detail"] and "engine +0.10" in rss["detail"]


def test_burst_rss_target_at_the_threshold_and_past_it():
    def rows(engine_large_kib, baseline_large_kib=5000):
        return report.aggregate([_burst("baseline", 1000, 1000), _burst("baseline", 5000, baseline_large_kib),
                                 _burst("engine", 1000, 6000), _burst("engine", 5000, engine_large_kib)])
    # baseline slope (5000 - 1000) / 4 = 1000 KiB per 1000 tasks; the engine may grow 250.
    assert verdict.rss_target(rows(7000))["status"] == "MET"           # slope 250: exactly 25 %
    assert verdict.rss_target(rows(7004))["status"] == "MISSED"        # slope 251
    # A larger fixed cost alone is not growth: an engine far above the baseline but flat is MET.
    assert verdict.rss_target(rows(6000))["status"] == "MET"
    # A baseline that does not grow cannot be outgrown: not MET even for a flat engine.
    assert verdict.rss_target(rows(6000, baseline_large_kib=1000))["status"] == "MISSED"
    # A miss measured from below the size where the engine's caches have filled says so.
    assert "--full measures from 4000" in verdict.rss_target(rows(7004))["detail"]
    assert "--full" not in verdict.rss_target(rows(7000))["detail"]


def test_burst_rss_target_needs_two_sizes():
    one_size = report.aggregate([_burst("baseline", 5000, 9000), _burst("engine", 5000, 100)])
    rss = verdict.rss_target(one_size)
    assert rss["status"] == "n/a" and "two sizes" in rss["detail"]
    assert report.burst_growth(one_size) is None


# -- the host's speed probe -----------------------------------------------------------------

def test_the_probe_is_the_fastest_of_its_rounds_in_ms():
    from taskqueue.bench import hostspeed
    ticks = iter([0.0, 0.020, 1.0, 1.030, 2.0, 2.010, 3.0, 3.025])  # rounds of 20, 30, 10 and 25 ms
    assert hostspeed.probe(rounds=4, clock=lambda: next(ticks)) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        hostspeed.probe(rounds=0)


def test_the_probes_work_is_the_same_every_time():
    from taskqueue.bench import hostspeed
    assert hostspeed.work() == hostspeed.work() > 0


def test_the_fsync_probe_is_the_median_in_ms_and_leaves_nothing_behind(tmp_path):
    from taskqueue.bench import hostspeed
    ticks = iter([0.0, 0.004, 1.0, 1.001, 2.0, 2.002])  # 4, 1 and 2 ms
    assert hostspeed.fsync_probe(str(tmp_path), rounds=3, clock=lambda: next(ticks)) == pytest.approx(2.0)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        hostspeed.fsync_probe(str(tmp_path), rounds=0)
