"""Turn runs into rows (medians over repeats, with the spread) and render them: table, JSON, CSV.

A *run* is one runner result (one repeat of one row). A *row* groups the
runs of one (scenario, clients, implementation, tasks): every metric in
:data:`METRICS` is the median over the repeats, and ``spread[metric]`` is
``[min, max]`` over them. The runs themselves are kept under ``runs``.

``benchmark.json`` (schema ``taskqueue-benchmark/1``)::

    schema, created (UTC ISO 8601), command, wall_s (whole benchmark)
    machine   {platform, python, implementation, cpus, cpus_available,
               load_average_start, load_average_end,
               workdir (where the rows' databases and objects were: TMPDIR), workdir_fs (its filesystem type)}
    settings  {seed, repeat (the most any scenario ran), quick, workers, queue_size,
               warmup_tasks, variant, fsync_outputs,
               scenarios: {name: {scenario parameters, clients_run, tasks_run [sizes],
                                  repeat_run}}}
    rows      [{scenario, clients, label, impl, on_full, tasks, repeats,
                <every METRICS name: median>, queue_depth_source,
                errors_by_type (summed over repeats), spread {metric: [min, max]},
                runs [runner result per repeat (see runner._measurements); with
                      --record-outputs each has outputs {task id: {key, sha256} | {error}}]}]
    warmup    (only when warm-up rounds ran: --full, --warmup N) rows as above, of the warm-up
              rounds of the timed rows, which are in no median and no verdict
    verdict   {requirements: [{scenario, clients, status PASS|FAIL|n/a, throughput_ratio,
                               p95_ratio, need, detail}],
               targets: [{target, status MET|MISSED|n/a, value, detail}]}

Units: latencies in ms, throughput in tasks with an outcome per second,
error_rate a fraction of those tasks, RSS in KiB, utilisation a fraction of
``wall x workers``. ``benchmark.csv`` has one line per row: :data:`CSV_COLUMNS`.

Memory and backlog metrics (per run, medians per row):

* ``rss_growth_kib`` -- highest RSS sampled during the load minus RSS when
  the load started (at the clients' start barrier: client threads created,
  harness storage preallocated); ``rss_start_kib`` is the latter,
  ``rss_peak_kib`` the process's lifetime peak (``ru_maxrss``, includes set-up).
* ``queue_depth_max`` -- the backlog at its peak: the engine's queue depth
  (exact, from its metrics), the baseline's list length and the stdlib
  executor's work-queue size (sampled every 5 ms).
* ``held_max`` -- tasks the implementation held at once (sampled): for the
  engine every accepted, unsettled task (queued, blocked in a submitter's
  ``put``, processing, awaiting commit); for the others the backlog again.
* ``submit_phase_s`` -- the longest any client took to submit all its tasks
  (open loop: how long backpressure held the clients; closed loop: the run).

Host speed (per run): ``host_probe_ms`` -- how long a fixed piece of work took on the machine
(:mod:`.hostspeed`), the mean of a probe just before the load and one just after it
(``host_probe_span_ms``), the implementation idle; ``host_fsync_ms`` (``host_fsync_span_ms``) --
how long making a small file durable took in the row's directory, the same way. They move only
with the machine: a row whose repeats spread while they moved as much ran on a host (or a disk)
that changed speed.

:func:`burst_growth` turns the burst rows at two sizes into RSS growth per
1000 tasks (the slope), which the burst memory target in ``verdict`` uses.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile

from . import stats

SCHEMA = "taskqueue-benchmark/1"
IDENTITY = ("scenario", "clients", "label", "impl", "on_full", "tasks")
METRICS = (
    "throughput_per_s", "latency_mean_ms", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms",
    "latency_max_ms", "error_rate", "completed", "succeeded", "failed", "rejected", "retries",
    "dedup_hits", "process_calls", "queue_depth_max", "queue_depth_mean", "queue_depth_p95",
    "utilisation", "cpu_cores", "submit_blocked_s", "submit_max_ms", "submit_phase_s", "held_max",
    "rss_peak_kib", "rss_start_kib", "rss_growth_kib", "wall_s", "host_probe_ms",
    "host_fsync_ms",
)
CSV_SPREAD = ("throughput_per_s", "latency_p95_ms")
CSV_COLUMNS = IDENTITY + ("repeats",) + METRICS + tuple(
    f"{m}_{end}" for m in CSV_SPREAD for end in ("min", "max")) + ("queue_depth_source",)


def aggregate(runs: list[dict]) -> list[dict]:
    """Group runs by (scenario, clients, label, tasks), in first-seen order; medians and spreads per row."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["scenario"], run["clients"], run["label"], run["tasks"]), []).append(run)
    rows = []
    for members in groups.values():
        first = members[0]
        row = {k: first[k] for k in IDENTITY}
        row["repeats"] = len(members)
        for metric in METRICS:
            row[metric] = stats.median(run.get(metric) for run in members)
        row["queue_depth_source"] = first.get("queue_depth_source")
        row["errors_by_type"] = _summed(run.get("errors_by_type", {}) for run in members)
        row["cpu_us_per_task_by_thread"] = _median_by_key(run.get("cpu_us_per_task_by_thread") for run in members)
        row["spread"] = {m: stats.spread(run.get(m) for run in members) for m in METRICS}
        row["runs"] = members
        rows.append(row)
    return rows


def _median_by_key(dicts) -> dict | None:
    """Each key's median over the dicts that are not None (a key a dict lacks counts as 0); None if
    all are (the CPU split by thread, which only Linux gives)."""
    present = [d for d in dicts if d is not None]
    if not present:
        return None
    keys = sorted({k for d in present for k in d})
    return {k: stats.median(d.get(k, 0.0) for d in present) for k in keys}


def _summed(dicts) -> dict:
    total: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            total[k] = total.get(k, 0) + v
    return dict(sorted(total.items()))


def find(rows: list[dict], scenario: str, clients: int | None, label: str,
         tasks: int | None = None) -> dict | None:
    """The row of ``label`` in ``scenario`` at ``clients`` (any count if None) and ``tasks``
    (if None: the largest size run), or None."""
    found = [row for row in rows if row["scenario"] == scenario and row["label"] == label
             and (clients is None or row["clients"] == clients)
             and (tasks is None or row["tasks"] == tasks)]
    return max(found, key=lambda row: row["tasks"]) if found else None


GROWTH_LABELS = ("baseline", "engine", "stdlib")


def burst_growth(rows: list[dict]) -> dict | None:
    """RSS growth per 1000 tasks in ``burst``, from its smallest and largest sizes; None without two.

    For each of :data:`GROWTH_LABELS` run at both sizes (at the highest client
    count run): ``slope_kib_per_1000 = (growth(large) - growth(small)) /
    (large - small) * 1000`` -- the memory a further 1000 submitted tasks
    cost, with everything that does not depend on the task count (threads,
    concurrent zlib streams, allocator arenas) cancelled out.
    """
    burst = [r for r in rows if r["scenario"] == "burst"]
    if not burst:
        return None
    clients = max(r["clients"] for r in burst)
    sizes = sorted({r["tasks"] for r in burst if r["clients"] == clients})
    if len(sizes) < 2:
        return None
    small, large = sizes[0], sizes[-1]
    out = {"clients": clients, "small": small, "large": large, "labels": {}}
    for label in GROWTH_LABELS:
        a, b = find(rows, "burst", clients, label, small), find(rows, "burst", clients, label, large)
        if a is None or b is None or a["rss_growth_kib"] is None or b["rss_growth_kib"] is None:
            continue
        out["labels"][label] = {
            "growth_small_kib": a["rss_growth_kib"], "growth_large_kib": b["rss_growth_kib"],
            "slope_kib_per_1000": (b["rss_growth_kib"] - a["rss_growth_kib"]) / (large - small) * 1000,
            "held_max_large": b["held_max"], "queue_depth_max_large": b["queue_depth_max"]}
    return out


# -- table ---------------------------------------------------------------------------

def _num(value, fmt: str = ".1f", missing: str = "n/a") -> str:
    return missing if value is None else format(value, fmt)


def _depth(row: dict) -> str:
    if row["queue_depth_max"] is None:
        return "n/a"
    return f"{row['queue_depth_max']:.0f}/{row['queue_depth_mean']:.1f}/{row['queue_depth_p95']:.0f}"


def _mib(kib) -> str:
    return _num(None if kib is None else kib / 1024)


def table(rows: list[dict]) -> str:
    """The main results table, one line per row (medians; throughput with its min-max)."""
    head = (f"{'scenario':<9}{'clients':>7}{'tasks':>6}  {'impl':<14}{'tasks/s (min-max)':>22}"
            f"{'mean':>8}{'p50':>8}{'p95':>8}{'p99':>8}{'err %':>7}{'retry':>6}{'dedup':>6}"
            f"{'depth max/mean/p95':>20}{'util %':>7}{'RSS MiB':>8}")
    lines = [head, "-" * len(head)]
    for row in rows:
        low, high = row["spread"]["throughput_per_s"] or (None, None)
        tput = f"{_num(row['throughput_per_s'], '.0f')} ({_num(low, '.0f')}-{_num(high, '.0f')})"
        lines.append(
            f"{row['scenario']:<9}{row['clients']:>7}{row['tasks']:>6}  {row['label']:<14}{tput:>22}"
            f"{_num(row['latency_mean_ms']):>8}{_num(row['latency_p50_ms']):>8}"
            f"{_num(row['latency_p95_ms']):>8}{_num(row['latency_p99_ms']):>8}"
            f"{_num(100 * row['error_rate'], '.2f'):>7}{row['retries']:>6.0f}{row['dedup_hits']:>6.0f}"
            f"{_depth(row):>20}{_num(100 * row['utilisation'], '.0f'):>7}{_mib(row['rss_peak_kib']):>8}")
    lines.append("latency in ms (time.perf_counter() from just before submit to the client holding the "
                 "outcome; exact nearest-rank percentiles); medians over repeats.")
    if any(r["scenario"] == "burst" for r in rows):
        lines.append("burst latency: engine and stdlib to the completion callback; baseline (no callbacks) "
                     "to wait() returning in a collector thread per client, which waits for the tickets in "
                     "submission order (= the baseline's completion order) while the client submits.")
    lines.append("depth: engine from its own metrics at every put/get; baseline and stdlib sampled every "
                 "5 ms by the harness. util: busy time in process() / (wall x 8 workers).")
    return "\n".join(lines)


def burst_table(rows: list[dict]) -> str:
    """Backpressure and memory in the open-loop burst rows; '' when there are none."""
    burst = [r for r in rows if r["scenario"] == "burst"]
    if not burst:
        return ""
    head = (f"{'burst':<6}{'clients':>7}{'tasks':>6}  {'impl':<14}{'done':>6}{'rejected':>9}"
            f"{'backlog max':>12}{'held max':>9}{'in submit s':>12}{'submit phase s':>15}"
            f"{'RSS start MiB':>14}{'RSS growth MiB':>15}")
    lines = [head, "-" * len(head)]
    for row in burst:
        depth_high = (row["spread"]["queue_depth_max"] or [None, None])[1]
        lines.append(
            f"{'':<6}{row['clients']:>7}{row['tasks']:>6}  {row['label']:<14}{row['completed']:>6.0f}"
            f"{row['rejected']:>9.0f}{_num(depth_high, '.0f'):>12}{_num(row['held_max'], '.0f'):>9}"
            f"{_num(row['submit_blocked_s'], '.2f'):>12}{_num(row['submit_phase_s'], '.2f'):>15}"
            f"{_mib(row['rss_start_kib']):>14}{_mib(row['rss_growth_kib']):>15}")
    growth = burst_growth(rows)
    if growth is not None and growth["labels"]:
        parts = [f"{label} {g['slope_kib_per_1000'] / 1024:+.2f}" for label, g in growth["labels"].items()]
        lines.append(f"RSS growth per 1000 more tasks ({growth['small']} -> {growth['large']} tasks, "
                     f"MiB): " + ", ".join(parts))
    lines.append("backlog max: engine queue depth (exact, highest over repeats), baseline list and stdlib "
                 "work queue (sampled every 5 ms). held max: tasks held at once (engine: accepted and not "
                 "settled, including those blocked in submit).")
    lines.append("in submit s: seconds all clients together spent inside submit() (blocked by "
                 "backpressure or a lock); submit phase s: longest time a client took to submit all its "
                 "tasks.")
    lines.append("RSS growth: highest RSS sampled during the load minus RSS at its start. The clients hold "
                 "no per-task handle for engine and stdlib (completion callbacks); for the baseline they "
                 "hold each pending ticket (the task id) until a collector thread has waited for it.")
    return "\n".join(lines)


# -- files -------------------------------------------------------------------------------

def warmup_line(rows: list[dict], rounds: int) -> str:
    """One line on the ``rounds`` warm-up rounds: what each timed row made before the measured repeats."""
    made = ", ".join(f"{r['scenario']}@{r['clients']} {r['label']} "
                     + "/".join(f"{run['throughput_per_s']:.0f}" for run in r["runs"]) for r in rows)
    return f"warm-up ({rounds} round(s) of the timed rows first, in no median and no verdict), tasks/s: {made}"


def document(rows: list[dict], *, verdict: dict, settings: dict, machine: dict, wall_s: float,
             created: str, command: str) -> dict:
    """The JSON report (schema in this module's docstring)."""
    return {"schema": SCHEMA, "created": created, "command": command, "machine": machine,
            "settings": settings, "wall_s": wall_s, "rows": rows, "verdict": verdict}


def csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        values = []
        for column in CSV_COLUMNS:
            for metric in CSV_SPREAD:
                if column in (f"{metric}_min", f"{metric}_max"):
                    pair = row["spread"][metric]
                    value = None if pair is None else pair[column.endswith("_max")]
                    break
            else:
                value = row.get(column)
            values.append("" if value is None else (f"{value:.6g}" if isinstance(value, float) else value))
        writer.writerow(values)
    return buf.getvalue()


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file in the same directory, renamed)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".bench-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(temp, 0o644)  # mkstemp makes it private; a report is for reading
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise


def write_json(path: str, data: dict) -> None:
    write_text(path, json.dumps(data, indent=1, sort_keys=False) + "\n")
