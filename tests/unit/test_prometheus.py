"""The Prometheus exposition: the rendering checked by a strict parser, and the parser checked on bad text."""

from __future__ import annotations

import bisect
import math
import random

import pytest

import taskqueue
from prometheus_text import FormatError, parse, values
from taskqueue.metrics import DURATION_BUCKETS_S, Metrics
from taskqueue.prometheus import CONTENT_TYPE, OUTCOMES, render


class SteppedClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def busy_metrics(durations: list[float]) -> Metrics:
    clock = SteppedClock()
    metrics = Metrics(workers=2, queue_capacity=8, clock=clock)
    for i, d in enumerate(durations):
        metrics.on_put(3)
        metrics.on_get(2, 0.004)
        metrics.on_processed(i % 2, d)
        metrics.on_outcome("succeeded", d + 0.004)
    for name, n in (("failed", 2), ("retried", 3), ("dead_lettered", 4), ("deduplicated", 5), ("rejected", 6),
                    ("errored", 7), ("claimed_elsewhere", 8)):
        metrics.incr(name, n)
    clock.now += 10.0
    return metrics


# -- the rendering --------------------------------------------------------------------------------

def test_every_family_the_issue_names_is_there_with_the_right_type():
    families = parse(busy_metrics([0.01, 0.2, 3.0]).to_prometheus())
    types = {name: f.type for name, f in families.items()}
    assert types["taskqueue_tasks_total"] == "counter"
    assert types["taskqueue_queue_depth"] == "gauge"
    assert types["taskqueue_task_duration_seconds"] == "histogram"
    assert types["taskqueue_worker_utilisation_ratio"] == "gauge"
    assert types["taskqueue_info"] == "gauge"
    assert all(f.help for f in families.values())
    flat = values(families)
    assert flat[f'taskqueue_info{{version="{taskqueue.__version__}"}}'] == 1
    expected = {"succeeded": 3, "failed": 2, "retried": 3, "dead_lettered": 4, "deduplicated": 5, "rejected": 6,
                "errored": 7, "claimed_elsewhere": 8}
    assert {o: flat[f'taskqueue_tasks_total{{outcome="{o}"}}'] for o in OUTCOMES} == expected
    assert flat["taskqueue_queue_depth"] == 2 and flat["taskqueue_queue_capacity"] == 8
    assert flat["taskqueue_enqueued_total"] == flat["taskqueue_dequeued_total"] == 3
    assert flat["taskqueue_worker_utilisation_ratio"] == pytest.approx((0.01 + 0.2 + 3.0) / (10.0 * 2))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_duration_buckets_count_exactly_what_was_recorded(seed):
    rng = random.Random(seed)
    # Around every boundary (on it, just below, just above), plus a spread and values past the last bound.
    durations = [b * f for b in DURATION_BUCKETS_S for f in (1.0, 0.999, 1.001)]
    durations += [rng.lognormvariate(math.log(0.05), 2.0) for _ in range(500)] + [0.0, 120.0, 4000.0]
    flat = values(parse(busy_metrics(durations).to_prometheus()))
    for le in DURATION_BUCKETS_S:
        assert flat[f'taskqueue_task_duration_seconds_bucket{{le="{le!r}"}}'] == sum(d <= le for d in durations)
    assert flat['taskqueue_task_duration_seconds_bucket{le="+Inf"}'] == len(durations)
    assert flat["taskqueue_task_duration_seconds_count"] == len(durations)
    # The histogram's sum is the latency histogram's (values above its 1-day cap are clamped).
    assert flat["taskqueue_task_duration_seconds_sum"] == pytest.approx(sum(durations))


def test_a_value_on_a_boundary_is_in_that_bucket():
    assert bisect.bisect_left(DURATION_BUCKETS_S, DURATION_BUCKETS_S[3]) == 3  # le is inclusive
    flat = values(parse(busy_metrics([DURATION_BUCKETS_S[3]]).to_prometheus()))
    assert flat[f'taskqueue_task_duration_seconds_bucket{{le="{DURATION_BUCKETS_S[3]!r}"}}'] == 1
    assert flat[f'taskqueue_task_duration_seconds_bucket{{le="{DURATION_BUCKETS_S[2]!r}"}}'] == 0


def test_an_empty_queue_renders_valid_text_with_nan_quantiles():
    families = parse(Metrics(workers=1, queue_capacity=1, clock=SteppedClock()).to_prometheus())
    flat = values(families)
    assert math.isnan(flat['taskqueue_task_latency_seconds{quantile="0.95"}'])
    assert flat["taskqueue_task_latency_seconds_count"] == 0
    assert flat['taskqueue_task_duration_seconds_bucket{le="+Inf"}'] == 0


def test_latency_summary_quantiles_come_from_the_histogram():
    metrics = busy_metrics([0.1] * 99 + [2.0])
    flat = values(parse(metrics.to_prometheus()))
    latency = metrics.snapshot()["latency_s"]
    assert flat['taskqueue_task_latency_seconds{quantile="0.95"}'] == latency["p95"]
    assert flat['taskqueue_task_latency_seconds{quantile="0.99"}'] == latency["p99"]
    assert flat["taskqueue_task_latency_seconds_count"] == 100
    assert flat["taskqueue_task_latency_seconds_sum"] == pytest.approx(99 * 0.104 + 2.004)


def test_taskqueue_only_keys_render_when_present_and_labels_are_escaped():
    snap = busy_metrics([0.01]).snapshot()
    snap["retry_pending"] = 7
    snap["store"] = {"commits": 11, "operations": 40, "ops_per_commit": 40 / 11}
    text = render(snap, version='1.0 "odd"\\name\nline')
    flat = values(parse(text))
    assert flat["taskqueue_retry_pending"] == 7
    assert flat["taskqueue_store_commits_total"] == 11 and flat["taskqueue_store_operations_total"] == 40
    assert 'taskqueue_info{version="1.0 \\"odd\\"\\\\name\\nline"} 1\n' in text
    assert flat['taskqueue_info{version="1.0 "odd"\\name\nline"}'] == 1  # the parser unescapes
    assert "taskqueue_retry_pending" not in render(busy_metrics([0.01]).snapshot())


def test_content_type_is_the_0_0_4_text_format():
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


# -- the parser rejects what it must ----------------------------------------------------------------

GOOD = """\
# HELP x_seconds A histogram.
# TYPE x_seconds histogram
x_seconds_bucket{le="0.1"} 1
x_seconds_bucket{le="1.0"} 3
x_seconds_bucket{le="+Inf"} 4
x_seconds_sum 5.5
x_seconds_count 4
# HELP y_total A counter.
# TYPE y_total counter
y_total{kind="a"} 2
"""


def test_the_parser_accepts_a_good_exposition():
    flat = values(parse(GOOD))
    assert flat == {'x_seconds_bucket{le="0.1"}': 1, 'x_seconds_bucket{le="1.0"}': 3,
                    'x_seconds_bucket{le="+Inf"}': 4, "x_seconds_sum": 5.5, "x_seconds_count": 4,
                    'y_total{kind="a"}': 2}


@pytest.mark.parametrize("old, new, why", [
    ('x_seconds_bucket{le="1.0"} 3', 'x_seconds_bucket{le="1.0"} 0', "not cumulative"),
    ('x_seconds_bucket{le="+Inf"} 4\n', "", "no +Inf bucket"),
    ('x_seconds_bucket{le="+Inf"} 4', 'x_seconds_bucket{le="+Inf"} 5', "+Inf != _count"),
    ("x_seconds_sum 5.5\n", "", "no _sum"),
    ('x_seconds_bucket{le="1.0"} 3', 'x_seconds_bucket{le="0.05"} 3', "le decreasing"),
    ("x_seconds_count 4", "x_seconds_count 4.5", "fractional count"),
    ("y_total{kind=\"a\"} 2", "y_total{kind=\"a\"} -2", "negative counter"),
    ("y_total{kind=\"a\"} 2", "y_total{kind=a} 2", "unquoted label value"),
    ("y_total{kind=\"a\"} 2", "y_total{kind=\"a\",} 2", "trailing comma"),
    ("y_total{kind=\"a\"} 2", "y_total{kind=\"a\\q\"} 2", "bad escape"),
    ("y_total{kind=\"a\"} 2", "y_total{kind=\"a\"} two", "bad value"),
    ("y_total{kind=\"a\"} 2", "y_total{kind=\"a\"}  2", "two spaces"),
    ("y_total{kind=\"a\"} 2", "y_total{kind=\"a\"} 2\ny_total{kind=\"a\"} 3", "duplicate series"),
    ("# TYPE y_total counter", "# TYPE y_total counter\n# TYPE y_total counter", "second TYPE"),
    ("# TYPE y_total counter\n", "", "no TYPE"),
    ("# TYPE y_total counter", "# TYPE y_total gauge\n# a stray comment", "stray comment"),
    ("# HELP y_total A counter.\n# TYPE y_total counter", "# HELP y_count A counter.\n# TYPE y_count counter",
     "counter without _total"),
    ("x_seconds_count 4\n", "x_seconds_count 4\n\n", "blank line"),
    ("y_total{kind=\"a\"} 2", "y_total{kind=\"a\"} 2\nx_seconds_sum 1", "sample outside its block"),
    ("y_total{kind=\"a\"} 2\n", "y_total{kind=\"a\"} 2", "no final newline"),
    ('x_seconds_bucket{le="0.1"} 1', 'x_seconds_bucket{lx="0.1"} 1', "bucket without le"),
])
def test_the_parser_rejects_bad_text(old, new, why):
    assert old in GOOD, why
    with pytest.raises(FormatError):
        parse(GOOD.replace(old, new, 1))
