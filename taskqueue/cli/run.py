"""``run``: producer and workers in one process, over a task file.

Every task of the file is submitted to one :class:`~taskqueue.engine.TaskQueue`
and waited for; the work runs in a thread of its own so the signal handler
(in the main thread) never interrupts code that holds a lock it needs.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

from .. import logs, watch
from ..config import Config
from ..errors import ClaimedElsewhere, QueueFull, QueueShutDown, TaskQueueError
from ..objectstore import LocalObjectStore
from ..processor import Processor
from ..store import store_errors
from ..taskfile import ON_INVALID, load_tasks
from . import (EXIT_OK, EXIT_UNFINISHED, check_paths, config_from, hold_signals, processing_flags,
               release_signals, run_with_signals, start_logging, stop_on_signal)


def add_command(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="process a task file")
    run.add_argument("--tasks", required=True, help="JSON array of tasks")
    processing_flags(run)
    run.add_argument("--on-full", help="block | reject")
    run.add_argument("--invalid", choices=ON_INVALID, default="reject",
                     help="bad items: refuse the whole file (default) or dead-letter them and run the rest")
    run.add_argument("--make-sources", action="store_true",
                     help="create the source objects the file names if absent (keys under missing/ never)")
    watch.add_flags(run)  # --no-progress, --metrics-port, --metrics-host, --metrics-interval
    run.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from ..engine import TaskQueue  # imported here so `status` and `dlq` stay light

    config = config_from(args, "workers", "queue_size", "on_full", "max_attempts", "shutdown_grace_s",
                         "log_level", "log_file", *watch.FIELDS)
    check_paths(config)
    # Everything that can refuse the run does so before anything is created.
    loaded = load_tasks(args.tasks, max_bytes=config.max_task_file_bytes, check=Processor.check,
                        on_invalid=args.invalid)
    watcher = watch.Watch.from_config(config, no_progress=args.no_progress)  # binds the metrics port: a port
    # in use refuses the run here
    handler = start_logging(config)
    held = hold_signals()  # before any thread starts: SIGINT/SIGTERM will reach the main thread only
    try:
        objects = LocalObjectStore(config.store, chunk_size=config.chunk_size, fsync=config.fsync_outputs)
        processor = Processor(objects, config.faults, max_image_pixels=config.max_image_pixels)
        if args.make_sources:
            from ..workload import create_sources
            created = create_sources(objects, [t.to_dict() for t in loaded.tasks], seed=config.fault_seed)
            if created:
                print(f"created {created} source objects under {objects.root}")
        swept = objects.sweep_temp_files()
        started = time.perf_counter()
        tq = TaskQueue(config.db, objects, config=config, processor=processor,
                       metrics_out=config.metrics_out)
        watcher.start(tq, total=len(loaded.tasks) + len(loaded.invalid) + len(tq.recovered.runnable)
                      + len(tq.recovered.dead))
        try:
            return _drive(tq, loaded, config, started, swept, config.metrics_out, on_finished=watcher.stop,
                          held=held)
        except (*store_errors(), TaskQueueError, OSError) as exc:  # mid-run: some work may be done
            print(f"error: the run stopped: {exc}\nwhat finished is recorded; run again to finish the rest "
                  f"(nothing is done twice)", file=sys.stderr)
            return EXIT_UNFINISHED
    finally:
        release_signals(held)
        watcher.stop()
        logs.logging.getLogger(logs.LOGGER_NAME).removeHandler(handler)
        handler.close()


class _Waiter:
    """Waits for watched Futures, or for a stop request (a signal), whichever comes first."""

    def __init__(self) -> None:
        self._changed = threading.Condition()  # announces: a watched Future settled, or stop requested
        self.stopping = False
        self._watched = 0
        self._settled = 0

    def request_stop(self) -> None:
        with self._changed:
            self.stopping = True
            self._changed.notify_all()

    def watch(self, future) -> None:
        with self._changed:
            self._watched += 1
        future.add_done_callback(self._one_settled)

    def _one_settled(self, _future) -> None:
        with self._changed:
            self._settled += 1
            self._changed.notify_all()

    def wait_all(self) -> bool:
        """Block until every watched Future is done (True) or stop is requested (False)."""
        with self._changed:
            self._changed.wait_for(lambda: self._settled >= self._watched or self.stopping)
            return not self.stopping

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake at once on a stop request."""
        with self._changed:
            self._changed.wait_for(lambda: self.stopping, seconds)


def _drive(tq, loaded, config: Config, started: float, swept: int, metrics_out: str | None,
           on_finished=lambda: None, held: object = None) -> int:
    """Submit every task, wait for all outcomes (or a signal), shut down, summarise.

    The work runs in a thread of its own and the main thread takes the signals
    (see :func:`taskqueue.cli.run_with_signals`); ``held`` is what
    :func:`taskqueue.cli.hold_signals` returned before any thread started.
    """
    waiter = _Waiter()
    on_signal = stop_on_signal(f"stopping intake, finishing in-flight tasks (up to {config.shutdown_grace_s:g}s)",
                               waiter.request_stop)

    try:
        outcome = run_with_signals(lambda: _submit_and_wait(tq, loaded, config, waiter), on_signal, held, "tq-run")
    finally:
        on_finished()  # the progress line ends and the metrics file is final before the summary prints
    if "error" in outcome:
        raise outcome["error"]
    submitted, rejected_offers, finished = outcome["value"]
    summary = _summary(submitted, loaded, rejected_offers, time.perf_counter() - started, tq, swept)
    print(_render(summary))
    if waiter.stopping:
        if not finished:  # grace expired: in-flight rows are recovered by the next run
            if metrics_out:
                tq.write_metrics(metrics_out)
            sys.stdout.flush()
            os._exit(EXIT_OK)
        return EXIT_OK
    return EXIT_OK if summary["unfinished"] == 0 else EXIT_UNFINISHED


def _submit_and_wait(tq, loaded, config: Config, waiter: _Waiter):
    """Offer every task (re-offering on QueueFull in reject mode), wait, shut down.

    The queue is shut down whatever happens here: a store error mid-run
    stops intake, lets in-flight tasks finish within the grace period and
    propagates.
    """
    submitted: list = []  # (task, Future)
    rejected_offers = 0
    finished = False
    try:
        for item in loaded.invalid:
            tq.record_invalid(*item.dead_letter())
        for task in loaded.tasks:
            future = None
            while future is None and not waiter.stopping:
                seen = tq.settled
                try:
                    future = tq.submit(task)
                except QueueFull:  # reject mode: wait until something settles, then offer again
                    rejected_offers += 1
                    tq.wait_settled(seen, timeout=0.25)  # the timeout only re-checks for a stop request
            if future is None:
                break
            waiter.watch(future)
            submitted.append((task, future))
        if waiter.wait_all():
            submitted = _await_elsewhere(tq, submitted, waiter)
    finally:
        finished = tq.shutdown(wait=True, cancel_futures=waiter.stopping or sys.exc_info()[0] is not None,
                               timeout=config.shutdown_grace_s if waiter.stopping else None)
    return submitted, rejected_offers, finished


def _await_elsewhere(tq, submitted: list, waiter: _Waiter) -> list:
    """Wait for the tasks another live process holds (see :meth:`TaskQueue.await_elsewhere`)."""
    result = list(submitted)
    position = {id(task): i for i, (task, future) in enumerate(submitted) if _elsewhere(future)}
    if not position:
        return result
    tasks = [submitted[i][0] for i in position.values()]
    for task, future in tq.await_elsewhere(tasks, pause=lambda seconds: (waiter.sleep(seconds), not waiter.stopping)[1]):
        waiter.watch(future)
        result[position[id(task)]] = (task, future)
    waiter.wait_all()
    return result


def _elsewhere(future) -> bool:
    return future.done() and not future.cancelled() and isinstance(future.exception(), ClaimedElsewhere)


def _summary(submitted: list, loaded, rejected_offers: int, elapsed: float, tq, swept: int) -> dict:
    outcome = {"succeeded": 0, "deduplicated": 0, "dead_lettered": 0, "unfinished": 0}
    seen: set[int] = set()
    for _task, future in submitted:
        kind = _outcome(future)
        if id(future) in seen and kind == "succeeded":  # a duplicate in flight shared its original's Future
            kind = "deduplicated"
        seen.add(id(future))
        outcome[kind] += 1
    snap = tq.final_metrics or tq.snapshot()
    return {"tasks": len(loaded.tasks), "invalid_dead_lettered": len(loaded.invalid),
            "duplicates_in_file_dropped": loaded.duplicates_dropped, **outcome,
            "retries": snap["counters"]["retried"], "rejected_offers": rejected_offers,
            "recovered": len(tq.recovered.runnable), "recovered_dead": len(tq.recovered.dead),
            "temp_files_swept": swept, "elapsed_s": round(elapsed, 3),
            "throughput_per_s": round(len(submitted) / elapsed, 1) if elapsed > 0 else None,
            "latency_p95_s": snap["latency_s"]["p95"], "queue_depth_max": snap["queue_depth"]["max"],
            "db": tq.store.location, "store": tq.objects.root}


def _outcome(future) -> str:
    if future.cancelled() or not future.done():
        return "unfinished"
    error = future.exception()
    if error is None:
        return "deduplicated" if future.result().deduplicated else "succeeded"
    if isinstance(error, (QueueShutDown, ClaimedElsewhere)):
        return "unfinished"
    return "dead_lettered"


def _render(summary: dict) -> str:
    lines = [f"tasks {summary['tasks']}: {summary['succeeded']} succeeded, "
             f"{summary['deduplicated']} already done (deduplicated), "
             f"{summary['dead_lettered']} dead-lettered, {summary['unfinished']} unfinished"]
    if summary["invalid_dead_lettered"]:
        lines.append(f"invalid items dead-lettered: {summary['invalid_dead_lettered']}")
    lines.append(f"retries {summary['retries']}, rejected offers {summary['rejected_offers']}, "
                 f"recovered from an earlier run {summary['recovered']} (+{summary['recovered_dead']} "
                 f"dead-lettered), temp files swept {summary['temp_files_swept']}")
    p95 = summary["latency_p95_s"]
    lines.append(f"elapsed {summary['elapsed_s']}s, {summary['throughput_per_s']} tasks/s, "
                 f"p95 {'n/a' if p95 is None else f'{p95 * 1000:.1f} ms'}, "
                 f"max queue depth {summary['queue_depth_max']}")
    return "\n".join(lines)
