"""Run one benchmark row and print its measurements as one line of JSON.

    python -m taskqueue.bench.runner '<row spec JSON>'     (spec from scenarios.row_spec)

The parent runs every row in a fresh process like this, so peak RSS is per
row and no row inherits another's threads, caches or garbage. A row works in
its own temporary directory: it generates the task list and the source
objects from the seed (byte-identical for every row of a scenario; the parent
makes them once and the row hard-links them in), warms the implementation up
on separate keys, then times the load.
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Callable, ContextManager

from .. import workload
from ..objectstore import LocalObjectStore
from ..processor import FaultConfig, Processor
from ..task import Task
from . import clients, cputime, hostspeed, stats, thumbs
from .impls import TimedProcessor, make_impl
from .sampling import SAMPLE_INTERVAL_S, Sampler, peak_rss_kib

WARMUP_SEED_OFFSET = 1_000_003  # warm-up keys embed their seed, so they never meet the timed ones


def task_lists(spec: dict) -> tuple[list[dict], list[dict]]:
    """The row's timed task dicts and its warm-up task dicts: pure functions of the spec."""
    if spec.get("photos"):
        return thumbs.task_lists(spec)
    seed = spec["seed"]
    raw = workload.generate_tasks(spec["tasks"], seed=seed, variants=spec["variant"],
                                  duplicate_fraction=spec["duplicate_fraction"])
    warm = workload.generate_tasks(spec["warmup_tasks"], seed=seed + WARMUP_SEED_OFFSET,
                                   variants=spec["variant"], duplicate_fraction=0.0)
    return raw, warm


def sources_key(spec: dict) -> str:
    """Rows with equal keys need byte-identical source objects (so the parent can make them once)."""
    if spec.get("photos"):
        return thumbs.sources_key(spec)
    return json.dumps([spec[k] for k in ("seed", "tasks", "variant", "duplicate_fraction", "warmup_tasks")])


def prepare_sources(root: str, spec: dict) -> int:
    """Create every source object the row's tasks name under ``root``; return how many.

    Sources are set-up, not the measured work: written without fsync.
    """
    if spec.get("photos"):
        return thumbs.prepare_sources(root, spec)
    raw, warm = task_lists(spec)
    return workload.create_sources(LocalObjectStore(root, fsync=False), raw + warm, seed=spec["seed"])


def run_row(spec: dict, beside: Callable[[], ContextManager] | None = None) -> dict:
    """Run the row ``spec`` describes in a fresh temporary directory; return its measurements.

    The sources come from ``spec["sources_dir"]`` when given (made by
    :func:`prepare_sources` for an equal :func:`sources_key`; hard-linked, as
    no implementation writes a source), else are generated here. ``beside()``,
    if given, is a context manager entered for the timed load only (after the
    warm-up and the host probes): something to run beside the implementation
    (see :mod:`.gilload`).
    """
    with tempfile.TemporaryDirectory(prefix=f"tq-bench-{spec['scenario']}-") as workdir:
        seed = spec["seed"]
        raw, warm_raw = task_lists(spec)
        root = os.path.join(workdir, "objects")
        if spec.get("sources_dir"):
            shutil.copytree(spec["sources_dir"], root, copy_function=_link_or_copy)
        else:
            prepare_sources(root, spec)
        store = LocalObjectStore(root, fsync=True)  # outputs: fsync, the engine's default
        faults = FaultConfig(latency_s=spec["latency_s"], jitter_s=spec["jitter_s"],
                             transient_rate=spec["transient_rate"],
                             permanent_rate=spec["permanent_rate"], seed=seed)
        processor = TimedProcessor(Processor(store, faults))
        for item in raw + warm_raw:
            Task.from_dict(item)  # fail before any timing if the generator produced a bad task

        impl = _warmed_up(spec, processor, store, workdir, warm_raw)
        timed = {"duration_s": spec["duration_s"]} if spec.get("duration_s") else {}
        drive = clients.open_loop if spec["open_loop"] else clients.closed_loop
        processor.reset()
        gc.collect()
        probe_before = hostspeed.probe()  # the machine's speed now, the implementation idle
        fsync_before = hostspeed.fsync_probe(workdir)  # and its disk's, where the row writes
        try:
            with Sampler(impl.depth, impl.held) as sampler, (beside or contextlib.nullcontext)():
                cpu0, threads0 = time.process_time(), cputime.thread_cpu()
                load = drive(impl, raw, spec["clients"], keep_outputs=bool(spec.get("record_outputs")),
                             on_start=sampler.mark, **timed)
                cpu_s = time.process_time() - cpu0
                threads = cputime.by_thread(threads0, cputime.thread_cpu(), cpu_s)
            metrics = impl.metrics()
        finally:
            impl.close()
        probe_after, fsync_after = hostspeed.probe(), hostspeed.fsync_probe(workdir)
        result = _measurements(spec, load, metrics, processor, sampler, cpu_s)
        # The fixed work's time around the load (see hostspeed): the row's host speed, and how it moved.
        result["host_probe_ms"] = (probe_before + probe_after) / 2
        result["host_probe_span_ms"] = [probe_before, probe_after]
        result["host_fsync_ms"] = (fsync_before + fsync_after) / 2
        result["host_fsync_span_ms"] = [fsync_before, fsync_after]
        # Where the CPU went, per task: the implementation's threads by name, "client" the load's
        # client threads (gone by the end) and whatever else the process spent; None off Linux.
        result["cpu_us_per_task_by_thread"] = None if threads is None or not load.completed else {
            name: round(seconds / load.completed * 1e6, 1) for name, seconds in sorted(threads.items())}
        if result["engine"] is not None:  # the durable state's size: its page cache grows with it
            db = os.path.join(workdir, "bench.sqlite")
            result["engine"]["db_kib"] = os.path.getsize(db) // 1024 if os.path.exists(db) else None
        if spec.get("record_outputs"):
            result["outputs"] = _outputs(store, load)
        return result


def _link_or_copy(source: str, destination: str) -> None:
    """Hard-link a source object into the row's directory (rows only read sources); copy if we cannot."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _warmed_up(spec: dict, processor, store, workdir: str, warm: list):
    """A ready implementation after a few tasks on separate keys went through the same code.

    The engine warms up on a throwaway instance (its own database), so the
    timed instance's metrics count the timed tasks only.
    """
    warm_clients = min(spec["clients"], spec["workers"])
    if spec["impl"] == "engine":
        scratch = make_impl(spec, processor, store=store, workdir=workdir, tag="warmup")
        try:
            clients.closed_loop(scratch, warm, warm_clients)
        finally:
            scratch.close()
        return make_impl(spec, processor, store=store, workdir=workdir, tag="bench")
    impl = make_impl(spec, processor, store=store, workdir=workdir, tag="bench")
    clients.closed_loop(impl, warm, warm_clients)
    return impl


def _measurements(spec: dict, load: clients.LoadResult, metrics: dict, processor: TimedProcessor,
                  sampler: Sampler, cpu_s: float) -> dict:
    wall = load.wall_s
    lat = stats.summarize(load.latencies)
    ms = {k: (v * 1000 if v is not None else None) for k, v in lat.items() if k != "count"}
    busy = processor.busy_s
    counters = metrics.get("counters", {})
    if spec["impl"] == "engine":
        depth, depth_source = metrics["queue_depth"], "engine metrics (every put and get)"
        depth = {"max": depth["max"], "mean": depth["mean"], "p95": depth["p95"]}
    else:
        summary = stats.summarize(sampler.depths)
        depth = {"max": summary["max"], "mean": summary["mean"], "p95": summary["p95"]}
        depth_source = f"sampled every {SAMPLE_INTERVAL_S * 1000:g} ms by the harness"
    rss_max = max(sampler.rss) if sampler.rss else None
    held = stats.summarize(sampler.held)
    return {
        **{k: spec[k] for k in ("scenario", "label", "impl", "on_full", "clients", "tasks", "seed",
                                "repeat")},
        "duration_s": spec.get("duration_s"),
        "warmup": bool(spec.get("warmup")),
        "dealt": load.dealt,
        "ran_out": load.ran_out,
        "completed": load.completed,
        "succeeded": load.completed - load.failed,
        "failed": load.failed,
        "rejected": load.rejected,
        "errors_by_type": dict(sorted(load.errors.items())),
        "wall_s": wall,
        "throughput_per_s": load.completed / wall if wall > 0 else 0.0,
        "latency_mean_ms": ms["mean"], "latency_p50_ms": ms["p50"], "latency_p95_ms": ms["p95"],
        "latency_p99_ms": ms["p99"], "latency_max_ms": ms["max"],
        "error_rate": load.failed / load.completed if load.completed else 0.0,
        "retries": counters.get("retried", 0),
        "dedup_hits": counters.get("deduplicated", 0),
        "process_calls": processor.calls,
        "queue_depth_max": depth["max"], "queue_depth_mean": depth["mean"],
        "queue_depth_p95": depth["p95"], "queue_depth_source": depth_source,
        "utilisation": busy / (wall * spec["workers"]) if wall > 0 else 0.0,
        "busy_s": busy,
        "cpu_s": cpu_s,
        "cpu_cores": cpu_s / wall if wall > 0 else 0.0,
        "submit_blocked_s": sum(load.submit_s),
        "submit_max_ms": max(load.submit_s) * 1000 if load.submit_s else 0.0,
        "submit_phase_s": load.submit_phase_s,
        "held_max": held["max"],
        "rss_peak_kib": peak_rss_kib(),
        "rss_start_kib": sampler.rss_start_kib(),
        "rss_max_sampled_kib": rss_max,
        "rss_growth_kib": sampler.rss_growth_kib(),
        "engine": _engine_extract(metrics) if spec["impl"] == "engine" else None,
    }


def _engine_extract(snap: dict) -> dict:
    """The engine's own view of the row, for cross-checking the harness's numbers."""
    return {"counters": snap["counters"], "utilisation": snap["workers"]["utilisation"],
            "latency_p95_ms": (snap["latency_s"]["p95"] or 0.0) * 1000,
            "queue_depth": snap["queue_depth"], "queue_depth_sampled": snap["queue_depth_sampled"],
            "store": snap.get("store")}


def _outputs(store: LocalObjectStore, load: clients.LoadResult) -> dict:
    """task id -> {"key", "sha256"} of its output, or {"error": class name}."""
    digests: dict[str, str] = {}
    out = {}
    for task_id, outcome in sorted(load.outcomes.items()):
        if not outcome.ok:
            out[task_id] = {"error": outcome.error}
            continue
        if outcome.output_key not in digests:
            h = hashlib.sha256()
            for chunk in store.read_chunks(outcome.output_key):
                h.update(chunk)
            digests[outcome.output_key] = h.hexdigest()
        out[task_id] = {"key": outcome.output_key, "sha256": digests[outcome.output_key]}
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m taskqueue.bench.runner '<row spec JSON>'", file=sys.stderr)
        return 2
    spec = json.loads(args[0])
    # A hung row dumps every thread's stack to stderr and exits, instead of stalling the benchmark.
    faulthandler.dump_traceback_later(spec.get("watchdog_s", 600.0), exit=True)
    print(json.dumps(run_row(spec)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
