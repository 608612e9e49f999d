"""Metrics: counters, the latency histogram's error bound, exact depth statistics, duration buckets, the sampler.

The Prometheus rendering is tested in test_prometheus.py.
"""

from __future__ import annotations

import json
import math
import random
import threading

import pytest

from taskqueue.metrics import (COUNTERS, DURATION_BUCKETS_S, FOLD_AT, SNAPSHOT_KEYS, DepthSampler, DepthStats,
                               LatencyHistogram, Metrics)

WAIT_S = 30  # hang guard only
QUANTILES = (0.5, 0.9, 0.95, 0.99, 1.0)


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def _uniform(rng: random.Random, n: int) -> list[float]:
    return [rng.uniform(0.001, 0.5) for _ in range(n)]


def _lognormal(rng: random.Random, n: int) -> list[float]:
    return [rng.lognormvariate(math.log(0.02), 1.0) for _ in range(n)]


def _constant(rng: random.Random, n: int) -> list[float]:
    return [0.0123] * n


def _heavy_tail(rng: random.Random, n: int) -> list[float]:
    # Pareto with alpha 1.1: most samples near 1 ms, a few thousands of times larger.
    return [0.001 * rng.paretovariate(1.1) for _ in range(n)]


def _bimodal(rng: random.Random, n: int) -> list[float]:
    return [rng.choice((rng.uniform(1e-5, 2e-5), rng.uniform(5.0, 6.0))) for _ in range(n)]


def _wide(rng: random.Random, n: int) -> list[float]:
    # Log-uniform across the whole supported range, 1 us .. 1 day.
    return [math.exp(rng.uniform(math.log(2e-6), math.log(80000.0))) for _ in range(n)]


DISTRIBUTIONS = {"uniform": _uniform, "lognormal": _lognormal, "constant": _constant,
                 "heavy_tail": _heavy_tail, "bimodal": _bimodal, "wide": _wide}


class SteppedClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- LatencyHistogram ------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.01, 0.05])
@pytest.mark.parametrize("n", [1, 7, 1000, 20000])
@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_quantiles_are_within_the_relative_error_bound(name, n, alpha):
    values = DISTRIBUTIONS[name](random.Random(f"{name}:{n}"), n)
    histogram = LatencyHistogram(alpha=alpha)
    for v in values:
        histogram.record(v)
    for q in QUANTILES:
        exact = nearest_rank(values, q)
        estimate = histogram.quantile(q)
        # A hair of slack for the floating-point logarithm at a bucket boundary.
        assert abs(estimate - exact) <= alpha * exact * (1 + 1e-9), (name, n, q, exact, estimate)


def test_summary_reports_count_mean_max_and_quantiles():
    values = _lognormal(random.Random(3), 5000)
    histogram = LatencyHistogram()
    for v in values:
        histogram.record(v)
    summary = histogram.summary()
    assert set(summary) == {"count", "mean", "p50", "p95", "p99", "max", "relative_error"}
    assert summary["count"] == 5000
    assert summary["mean"] == pytest.approx(sum(values) / len(values), rel=1e-9)
    assert summary["max"] == max(values)
    assert summary["relative_error"] == 0.01
    for key, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        exact = nearest_rank(values, q)
        assert abs(summary[key] - exact) <= 0.01 * exact * (1 + 1e-9)


def test_memory_stays_bounded_however_many_samples():
    histogram = LatencyHistogram(alpha=0.01)
    bound = math.ceil(math.log(histogram.max_value / histogram.min_value) / math.log(histogram.gamma)) + 2
    rng = random.Random(11)
    for _ in range(100_000):
        histogram.record(math.exp(rng.uniform(math.log(1e-9), math.log(1e7))))  # past both ends too
    assert histogram.count == 100_000
    assert histogram.buckets <= bound
    assert bound < 1400  # "about 1,200 for 1 us .. 1 day at 1 %"


def test_empty_histogram_has_no_quantiles():
    histogram = LatencyHistogram()
    assert histogram.quantile(0.5) is None
    summary = histogram.summary()
    assert summary["count"] == 0 and summary["mean"] is None and summary["p99"] is None and summary["max"] is None


def test_one_sample_is_every_quantile():
    histogram = LatencyHistogram()
    histogram.record(0.25)
    assert {histogram.quantile(q) for q in (0.0, 0.5, 1.0)} == {0.25}


def test_values_at_the_edges_are_documented_not_lost():
    histogram = LatencyHistogram(min_value=1e-6, max_value=10.0)
    histogram.record(0.0)
    histogram.record(-1.0)   # a clock that went backwards counts as zero
    histogram.record(1e9)    # clamped to max_value
    assert histogram.count == 3
    assert histogram.quantile(0.0) == histogram.min_value
    assert histogram.quantile(1.0) == pytest.approx(10.0, rel=0.01)
    assert histogram.max == 10.0


EDGES = [0.0, -1.0, 1e9, 1e-7, 1e-6, 86400.0, 86400.5, 5e-324, -0.0]


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS) + ["edges"])
def test_record_many_is_record_of_each_value(name):
    values = EDGES * 3 if name == "edges" else DISTRIBUTIONS[name](random.Random(name), 3000) + EDGES
    one_by_one, at_once = LatencyHistogram(), LatencyHistogram()
    for v in values:
        one_by_one.record(v)
    at_once.record_many(values[:1000])
    at_once.record_many([])
    at_once.record_many(values[1000:])
    assert dict(at_once._buckets) == dict(one_by_one._buckets)
    assert (at_once.count, at_once.min, at_once.max) == (one_by_one.count, one_by_one.min, one_by_one.max)
    assert at_once.total == one_by_one.total  # added in the same order: bit for bit
    assert at_once.summary() == one_by_one.summary()


def test_record_many_keeps_what_record_does_with_nan_and_negative_zero():
    values = [math.nan, -0.0, 0.5, math.nan, -2.0, 1e9]
    one_by_one, at_once = LatencyHistogram(max_value=10.0), LatencyHistogram(max_value=10.0)
    for v in values:
        one_by_one.record(v)
    at_once.record_many(values)
    assert dict(at_once._buckets) == dict(one_by_one._buckets)
    assert (at_once.count, at_once.min, at_once.max) == (one_by_one.count, one_by_one.min, one_by_one.max)
    assert math.isnan(at_once.total) and math.isnan(one_by_one.total)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 2.0])
def test_alpha_must_be_a_fraction(alpha):
    with pytest.raises(ValueError, match="alpha"):
        LatencyHistogram(alpha=alpha)


@pytest.mark.parametrize("q", [-0.01, 1.01])
def test_quantile_outside_0_1_is_refused(q):
    histogram = LatencyHistogram()
    histogram.record(1.0)
    with pytest.raises(ValueError):
        histogram.quantile(q)


# -- DepthStats -------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_depth_stats_are_exact(seed):
    rng = random.Random(seed)
    capacity = 64
    depths = [rng.randint(0, capacity) for _ in range(rng.randint(1, 3000))]
    stats = DepthStats(capacity)
    for d in depths:
        stats.record(d)
    summary = stats.summary()
    assert summary == {"current": depths[-1], "max": max(depths), "mean": pytest.approx(sum(depths) / len(depths)),
                       "p95": nearest_rank(depths, 0.95), "observations": len(depths), "capacity": capacity}


def test_depth_stats_record_many_clamps_and_keeps_the_order():
    depths = [3, -2, 70, 0, 64, 5]
    one_by_one, at_once = DepthStats(64), DepthStats(64)
    for d in depths:
        one_by_one.record(d)
    at_once.record_many(depths[:4])
    at_once.record_many(depths[4:])
    assert at_once.summary() == one_by_one.summary()
    assert at_once.summary()["current"] == 5 and at_once.summary()["max"] == 64


def test_depth_stats_empty():
    summary = DepthStats(8).summary()
    assert summary["p95"] is None and summary["observations"] == 0 and summary["max"] == 0
    assert summary["mean"] == 0.0


def test_depth_stats_p95_known_values():
    stats = DepthStats(10)
    for d in [0] * 95 + [7] * 4 + [10]:
        stats.record(d)
    assert stats.summary()["p95"] == 0
    stats.record(10)
    assert stats.summary()["p95"] == 7  # rank ceil(0.95 * 101) = 96


# -- Metrics ----------------------------------------------------------------------------------------

def test_snapshot_schema():
    clock = SteppedClock()
    metrics = Metrics(workers=3, queue_capacity=16, clock=clock)
    metrics.on_put(1)
    metrics.on_get(0, 0.002)
    metrics.on_processed(1, 0.5)
    metrics.on_outcome("succeeded", 0.6)
    metrics.sample_depth(4)
    clock.now += 2.0
    snap = metrics.snapshot()

    assert set(snap) == set(SNAPSHOT_KEYS)
    assert set(snap["counters"]) == set(COUNTERS)
    assert all(type(v) is int for v in snap["counters"].values())
    assert set(snap["rates"]) == {"enqueue_per_s", "dequeue_per_s", "complete_per_s"}
    assert all(isinstance(v, float) for v in snap["rates"].values())
    for name in ("latency_s", "queue_wait_s", "processing_s"):
        assert set(snap[name]) == {"count", "mean", "p50", "p95", "p99", "max", "relative_error"}
        assert type(snap[name]["count"]) is int
        assert all(isinstance(snap[name][k], float) for k in ("mean", "p50", "p95", "p99", "max"))
    for name in ("queue_depth", "queue_depth_sampled"):
        assert set(snap[name]) == {"current", "max", "mean", "p95", "observations", "capacity"}
        assert snap[name]["capacity"] == 16
    assert set(snap["workers"]) == {"count", "busy_s", "tasks", "utilisation"}
    assert set(snap["task_duration_s"]) == {"le", "cumulative", "count", "sum"}
    assert snap["task_duration_s"]["count"] == 1 and snap["task_duration_s"]["sum"] == 0.5
    assert snap["workers"]["count"] == 3
    assert snap["workers"]["busy_s"] == [0.0, 0.5, 0.0] and snap["workers"]["tasks"] == [0, 1, 0]
    assert snap["elapsed_s"] == 2.0
    assert snap["queue_depth_sampled"]["max"] == 4 and snap["queue_depth"]["observations"] == 2
    assert json.loads(metrics.to_json()) == json.loads(json.dumps(snap))


def test_rates_and_utilisation_follow_the_clock():
    clock = SteppedClock()
    metrics = Metrics(workers=2, queue_capacity=8, clock=clock)
    for _ in range(5):
        metrics.on_put(1)
    for _ in range(3):
        metrics.on_get(0, 0.0)
    metrics.on_outcome("succeeded", 1.0)
    metrics.on_outcome("dead_lettered", 1.0)
    metrics.on_processed(0, 2.0)
    metrics.on_processed(1, 3.0)
    clock.now += 10.0
    snap = metrics.snapshot()
    assert snap["rates"] == {"enqueue_per_s": 0.5, "dequeue_per_s": 0.3, "complete_per_s": 0.2}
    assert snap["workers"]["utilisation"] == pytest.approx(0.25)
    assert snap["counters"]["enqueued"] == 5 and snap["counters"]["dequeued"] == 3


def test_empty_snapshot_is_well_formed_and_serialisable():
    metrics = Metrics(workers=1, queue_capacity=1, clock=SteppedClock())
    snap = metrics.snapshot()
    assert all(v == 0 for v in snap["counters"].values())
    assert snap["latency_s"]["p50"] is None
    assert snap["elapsed_s"] > 0  # never a division by zero
    assert json.loads(metrics.to_json())["counters"] == snap["counters"]


def test_counters_are_exact_under_contention():
    metrics = Metrics(workers=4, queue_capacity=32)
    threads_n, per_thread = 8, 5000
    start = threading.Barrier(threads_n)

    def hammer(i: int) -> None:
        start.wait(WAIT_S)
        for _ in range(per_thread):
            metrics.incr("deduplicated")
            metrics.on_put(i)
            metrics.on_get(i, 0.001)
            metrics.on_processed(i % 4, 0.001)
            metrics.on_outcome("succeeded", 0.002)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    snap = metrics.snapshot()
    total = threads_n * per_thread
    c = snap["counters"]
    assert c["deduplicated"] == c["enqueued"] == c["dequeued"] == c["succeeded"] == total
    assert snap["latency_s"]["count"] == snap["queue_wait_s"]["count"] == snap["processing_s"]["count"] == total
    assert sum(snap["workers"]["tasks"]) == total
    assert snap["queue_depth"]["observations"] == 2 * total


def test_unknown_counter_is_an_error():
    with pytest.raises(KeyError):
        Metrics(workers=1, queue_capacity=1).incr("no_such_counter")


def test_duration_buckets_in_the_snapshot_are_cumulative_and_json_safe():
    metrics = Metrics(workers=1, queue_capacity=1, clock=SteppedClock())
    for busy in (0.0005, 0.001, 0.02, 0.02, 7.0, 100.0):
        metrics.on_processed(0, busy)
    buckets = metrics.snapshot()["task_duration_s"]
    assert buckets["le"] == list(DURATION_BUCKETS_S)
    assert dict(zip(buckets["le"], buckets["cumulative"]))[0.001] == 2  # le is inclusive
    assert dict(zip(buckets["le"], buckets["cumulative"]))[0.025] == 4
    assert buckets["cumulative"][-1] == 5 and buckets["count"] == 6  # 100 s only in +Inf
    assert buckets["sum"] == pytest.approx(0.0005 + 0.001 + 0.02 + 0.02 + 7.0 + 100.0)
    assert json.loads(json.dumps(buckets)) == buckets  # no inf in the JSON


def test_samples_held_back_are_folded_before_every_read():
    """However the samples fall around FOLD_AT, a snapshot sees every one: the same statistics as
    recording each sample on its own."""
    rng = random.Random(5)
    metrics = Metrics(workers=2, queue_capacity=128, clock=SteppedClock())
    latency, wait, processing = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    depths = DepthStats(128)
    for i in range(3 * FOLD_AT + 7):
        put_depth, get_depth = rng.randint(0, 128), rng.randint(0, 128)
        waited, busy, total = rng.uniform(0, 0.01), rng.lognormvariate(-5, 1), rng.uniform(0, 1)
        metrics.on_put(put_depth)
        metrics.on_get(get_depth, waited)
        metrics.on_processed(i % 2, busy)
        metrics.on_outcome("succeeded", total)
        depths.record(put_depth)
        depths.record(get_depth)
        wait.record(waited)
        processing.record(busy)
        latency.record(total)
        if i in (0, FOLD_AT - 1, FOLD_AT, 2 * FOLD_AT + 3):
            snap = metrics.snapshot()
            assert snap["latency_s"]["count"] == snap["processing_s"]["count"] == i + 1
            assert snap["queue_depth"]["current"] == get_depth
    snap = metrics.snapshot()
    assert snap["latency_s"] == latency.summary()
    assert snap["queue_wait_s"] == wait.summary()
    assert snap["processing_s"] == processing.summary()
    assert snap["queue_depth"] == depths.summary()
    assert snap["task_duration_s"]["count"] == 3 * FOLD_AT + 7


# -- DepthSampler -----------------------------------------------------------------------------------

def test_depth_sampler_records_samples_until_stopped():
    metrics = Metrics(workers=1, queue_capacity=10)
    calls = {"n": 0}
    enough = threading.Event()

    def depth() -> int:
        calls["n"] += 1
        if calls["n"] >= 3:
            enough.set()
        return 5

    sampler = DepthSampler(metrics, depth, interval_s=0.001)
    assert enough.wait(WAIT_S)
    sampler.stop()
    after_stop = calls["n"]
    sampled = metrics.snapshot()["queue_depth_sampled"]
    assert sampled["observations"] == after_stop >= 3
    assert sampled["max"] == sampled["current"] == 5
    sampler.stop()  # a second stop is harmless
    assert calls["n"] == after_stop  # the thread is gone: no sample after stop


def test_depth_sampler_stop_does_not_wait_for_the_interval():
    metrics = Metrics(workers=1, queue_capacity=1)
    sampler = DepthSampler(metrics, lambda: 0, interval_s=3600.0)
    stopper = threading.Thread(target=sampler.stop)
    stopper.start()
    stopper.join(WAIT_S)  # an hour-long interval would hang here if stop() waited for it
    assert not stopper.is_alive()
    sampled = metrics.snapshot()["queue_depth_sampled"]
    # The one taken as it stopped (found in review: the final metrics' sampled ``current`` had shown
    # the depth of its last tick, up to an interval before, tasks drained since).
    assert (sampled["observations"], sampled["current"]) == (1, 0)

