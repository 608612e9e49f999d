"""A metrics snapshot in the Prometheus text exposition format, version 0.0.4.

:func:`render` is a pure function of a snapshot dict (``Metrics.snapshot()``,
or ``TaskQueue.snapshot()``, which adds the store's commit counts, the retries
waiting out their backoff and the configuration). Every family has a HELP and
a TYPE line; names follow the Prometheus conventions (``_total`` counters,
base units, ``_ratio`` for 0..1).

==========================================  =========  =============================================
family                                      type       from the snapshot
==========================================  =========  =============================================
``taskqueue_info{version}``                 gauge      1, labelled with ``taskqueue.__version__``
``taskqueue_tasks_total{outcome}``          counter    succeeded, failed (attempts), retried,
                                                       dead_lettered, deduplicated, rejected (offers),
                                                       errored (failed by the queue, not the task),
                                                       claimed_elsewhere (offers another process held)
``taskqueue_enqueued_total``                counter    puts on the bounded queue (retries included)
``taskqueue_dequeued_total``                counter    gets from it
``taskqueue_queue_depth``                   gauge      depth at the last put or get
``taskqueue_queue_capacity``                gauge      the queue's ``maxsize``
``taskqueue_task_duration_seconds``         histogram  processing time of one attempt
``taskqueue_task_latency_seconds``          summary    submit to outcome (p50, p95, p99 within 1 %)
``taskqueue_queue_wait_seconds``            summary    time on the queue before a worker took it
``taskqueue_workers``                       gauge      worker threads
``taskqueue_worker_utilisation_ratio``      gauge      time processing / (elapsed x workers)
``taskqueue_retry_pending``                 gauge      retries waiting out their backoff (TaskQueue)
``taskqueue_store_commits_total``           counter    task store transactions committed (TaskQueue)
``taskqueue_store_operations_total``        counter    operations the store ran, failed ones included (TaskQueue)
==========================================  =========  =============================================
"""

from __future__ import annotations

import math

from . import __version__

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OUTCOMES = ("succeeded", "failed", "retried", "dead_lettered", "deduplicated", "rejected", "errored",
            "claimed_elsewhere")
QUANTILES = (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))


def render(snap: dict, *, version: str | None = None, prefix: str = "taskqueue") -> str:
    """The exposition of ``snap``: one family after another, each line ending in a newline."""
    version = __version__ if version is None else version
    out = _Families(prefix)
    counters = snap["counters"]
    out.family("info", "gauge", "Build information; the value is always 1.")
    out.sample("info", 1, version=version)
    out.family("tasks_total", "counter",
               "Task outcomes and events: succeeded, dead_lettered and deduplicated are terminal; failed "
               "counts failed attempts, retried the attempts scheduled again, rejected the offers refused "
               "by a full queue, errored the tasks failed by the queue itself (their outcome could not be "
               "recorded: the row is left for another run), claimed_elsewhere the offers of a task another "
               "live process held (not done here; it may be offered again).")
    for outcome in OUTCOMES:
        out.sample("tasks_total", counters[outcome], outcome=outcome)
    out.single("enqueued_total", "counter", "Puts on the bounded queue, retries included.", counters["enqueued"])
    out.single("dequeued_total", "counter", "Gets from the bounded queue.", counters["dequeued"])
    depth = snap["queue_depth"]
    out.single("queue_depth", "gauge", "Tasks waiting on the bounded queue, at the last put or get.",
               depth["current"])
    out.single("queue_capacity", "gauge", "Capacity (maxsize) of the bounded queue.", depth["capacity"])
    _histogram(out, "task_duration_seconds", "Processing time of one task attempt, in seconds.",
               snap["task_duration_s"])
    _summary(out, "task_latency_seconds", "Time from submit to a task's outcome, in seconds.", snap["latency_s"])
    _summary(out, "queue_wait_seconds", "Time a task waited on the queue for a worker, in seconds.",
             snap["queue_wait_s"])
    workers = snap["workers"]
    out.single("workers", "gauge", "Worker threads.", workers["count"])
    out.single("worker_utilisation_ratio", "gauge",
               "Share of the workers' time spent processing since the queue started (0 to 1).",
               workers["utilisation"])
    if "retry_pending" in snap:
        out.single("retry_pending", "gauge", "Retries waiting out their backoff.", snap["retry_pending"])
    if "store" in snap:
        out.single("store_commits_total", "counter", "Task store transactions committed (SQLite or PostgreSQL).",
                   snap["store"]["commits"])
        out.single("store_operations_total", "counter",
                   "Operations the task store ran, in its transactions (failed ones included).",
                   snap["store"]["operations"])
    return out.text()


def _histogram(out: "_Families", name: str, help_text: str, buckets: dict) -> None:
    out.family(name, "histogram", help_text)
    for le, cumulative in zip(buckets["le"], buckets["cumulative"], strict=True):
        out.sample(f"{name}_bucket", cumulative, le=_number(float(le)))
    out.sample(f"{name}_bucket", buckets["count"], le="+Inf")
    out.sample(f"{name}_sum", float(buckets["sum"]))
    out.sample(f"{name}_count", buckets["count"])


def _summary(out: "_Families", name: str, help_text: str, summary: dict) -> None:
    out.family(name, "summary", help_text)
    for label, key in QUANTILES:
        value = summary[key]
        out.sample(name, math.nan if value is None else float(value), quantile=label)
    out.sample(f"{name}_sum", float((summary["mean"] or 0.0) * summary["count"]))
    out.sample(f"{name}_count", summary["count"])


class _Families:
    """Accumulates lines; names get the prefix, label values are escaped."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        full = f"{self._prefix}_{name}"
        escaped = help_text.replace("\\", "\\\\").replace("\n", "\\n")
        self._lines += [f"# HELP {full} {escaped}", f"# TYPE {full} {kind}"]

    def sample(self, name: str, value: float, **labels: str) -> None:
        text = ",".join(f'{key}="{_escape(str(val))}"' for key, val in labels.items())
        self._lines.append(f"{self._prefix}_{name}{{{text}}} {_number(value)}" if labels
                           else f"{self._prefix}_{name} {_number(value)}")

    def single(self, name: str, kind: str, help_text: str, value: float) -> None:
        self.family(name, kind, help_text)
        self.sample(name, value)

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    """Integers as integers; floats round-trip exactly; NaN and infinities spelt as Prometheus does."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
