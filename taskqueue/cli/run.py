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
import weakref

from .. import logs, progress, watch
from ..config import Config
from ..errors import ClaimedElsewhere, OutcomeNotRecorded, QueueFull, QueueShutDown, TaskQueueError
from ..objectstore import LocalObjectStore
from ..processor import Processor
from ..store import probe, store_errors
from ..taskfile import ON_INVALID, load_tasks
from . import (EXIT_OK, EXIT_UNFINISHED, check_paths, config_from, hold_signals, processing_flags,
               printable_path, release_signals, run_with_signals, start_logging, stop_on_signal)


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
    check_paths(config, tasks=args.tasks)
    # Everything that can refuse the run does so before anything is created.
    loaded = load_tasks(args.tasks, max_bytes=config.max_task_file_bytes, check=Processor.check,
                        on_invalid=args.invalid)
    watcher = watch.Watch.from_config(config, no_progress=args.no_progress)  # binds the metrics port: a port
    # in use refuses the run here
    handler = start_logging(config)
    held = None
    try:
        probe(config.db)  # a database that cannot be opened or created: refused, nothing made
        objects = LocalObjectStore(config.store, chunk_size=config.chunk_size, fsync=config.fsync_outputs)
        processor = Processor(objects, config.faults, max_image_pixels=config.max_image_pixels)
        if args.make_sources:  # before the signals are held: nothing runs yet, and Ctrl-C stops it at once
            from ..workload import IMAGE_SUFFIXES, Image, create_sources
            created = create_sources(objects, [t.to_dict() for t in loaded.tasks], seed=config.fault_seed)
            if created:
                print(f"created {created} source objects under {printable_path(objects.root)}")
            if Image is None and any(t.image_key.lower().endswith(IMAGE_SUFFIXES) for t in loaded.tasks):
                print("note: image sources (.jpg, .png) not made: Pillow is not installed (pip install pillow; "
                      "then --make-sources makes them)", file=sys.stderr)
        swept = objects.sweep_temp_files()
        held = hold_signals()  # before any thread starts: SIGINT/SIGTERM will reach the main thread only
        started = time.perf_counter()
        tq = TaskQueue(config.db, objects, config=config, processor=processor,
                       metrics_out=config.metrics_out)
        # Each task once: a row taken over whose key is in the file is that file's task (see TaskQueue.submit).
        keys = {task.idempotency_key for task in loaded.tasks}
        taken_over = sum(row.idempotency_key not in keys for row in (*tq.recovered.runnable, *tq.recovered.dead))
        watcher.start(tq, total=len(loaded.tasks) + len(loaded.invalid) + taken_over)
        try:
            return _drive(tq, loaded, config, started, swept, config.metrics_out, on_finished=watcher.stop,
                          held=held)
        except (*store_errors(), TaskQueueError, OSError) as exc:  # mid-run: some work may be done
            print(f"error: the run stopped: {exc}\nwhat finished is recorded; run again to finish the rest "
                  f"(nothing recorded as done is done again)", file=sys.stderr)
            return EXIT_UNFINISHED
    finally:
        release_signals(held)
        watcher.stop()
        logs.logging.getLogger(logs.LOGGER_NAME).removeHandler(handler)
        handler.close()


class _Waiter:
    """Counts the outcomes of the offered tasks as their Futures settle, and waits for them all, or for
    a stop request (a signal), whichever comes first.

    A settled Future is not kept: a file of a million tasks must not hold a million Futures (and
    their errors) until the summary. Only the tasks another live process holds are kept, to offer
    again (see :func:`_await_elsewhere`). Every offered task is, at any time, in exactly one of:
    an outcome, a watched Future not settled yet, or :attr:`elsewhere`.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()  # announces: a watched Future settled, or stop requested
        self.stopping = False
        self.offered = 0  # tasks of the file offered (a re-offer of one held elsewhere is not counted again)
        self._watched = self._settled = 0
        self._seen: weakref.WeakSet = weakref.WeakSet()  # Futures watched: a second watch is a duplicate's
        self.outcomes = dict.fromkeys(("succeeded", "deduplicated", "dead_lettered", "unfinished"), 0)
        self.elsewhere: list = []  # tasks another live process held when offered, not offered again (yet)

    def request_stop(self) -> None:
        with self._changed:
            self.stopping = True
            self._changed.notify_all()

    def watch(self, task, future, *, again: bool = False) -> None:
        """Count ``task``'s outcome when ``future`` settles; ``again``: a re-offer of a task held elsewhere."""
        with self._changed:
            self.offered += not again
            self._watched += 1
            duplicate = future in self._seen  # a duplicate in flight shares its original's Future
            self._seen.add(future)
        future.add_done_callback(lambda done: self._one_settled(task, done, duplicate))

    def _one_settled(self, task, future, duplicate: bool) -> None:
        kind = _outcome(future)
        with self._changed:
            if kind == "elsewhere":
                self.elsewhere.append(task)
            else:
                self.outcomes["deduplicated" if duplicate and kind == "succeeded" else kind] += 1
            self._settled += 1
            self._changed.notify_all()

    def wait_all(self) -> bool:
        """Block until every watched Future is done (True) or stop is requested (False)."""
        with self._changed:
            self._changed.wait_for(lambda: self._settled >= self._watched or self.stopping)
            return not self.stopping

    def counts(self, total: int) -> dict[str, int]:
        """The outcomes of a file of ``total`` tasks so far: a task offered and not settled, or held
        elsewhere, or never offered (intake stopped by a signal) is unfinished."""
        with self._changed:
            not_offered = total - self.offered
            return {**self.outcomes, "unfinished": self.outcomes["unfinished"] + self._watched - self._settled
                    + len(self.elsewhere) + not_offered, "not_offered": not_offered}

    def take_elsewhere(self) -> list:
        """The tasks held elsewhere so far, to offer again (each re-offer is watched ``again``)."""
        with self._changed:
            tasks, self.elsewhere = self.elsewhere, []
            return tasks

    def put_back(self, tasks: list) -> None:
        """Tasks taken to offer again that never were (a stop came first): unfinished, held elsewhere."""
        with self._changed:
            self.elsewhere += tasks

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

    def stop() -> None:  # run by the main thread, which only waits: it interrupts nothing holding a lock
        waiter.request_stop()
        tq.shutdown(wait=False, cancel_futures=True)  # intake closes now, even a submit blocked on a full queue
    on_signal = stop_on_signal(f"stopping intake, finishing in-flight tasks (up to {config.shutdown_grace_s:g}s)",
                               stop)

    try:
        outcome = run_with_signals(lambda: _submit_and_wait(tq, loaded, config, waiter), on_signal, held, "tq-run")
    finally:
        on_finished()  # the progress line ends and the metrics file is final before the summary prints
    if "error" in outcome:
        raise outcome["error"]
    rejected_offers, finished = outcome["value"]
    summary = _summary(waiter, loaded, rejected_offers, time.perf_counter() - started, tq, swept)
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
                except QueueShutDown:  # a stop request closed intake between the check and the offer
                    break
            if future is None:
                break
            waiter.watch(task, future)
        if waiter.wait_all():
            _await_elsewhere(tq, waiter)
    finally:
        finished = tq.shutdown(wait=True, cancel_futures=waiter.stopping or sys.exc_info()[0] is not None,
                               timeout=config.shutdown_grace_s if waiter.stopping else None)
    return rejected_offers, finished


def _await_elsewhere(tq, waiter: _Waiter) -> None:
    """Wait for the tasks another live process holds (see :meth:`TaskQueue.await_elsewhere`)."""
    tasks = waiter.take_elsewhere()
    if not tasks:
        return
    offered = set()
    try:
        for task, future in tq.await_elsewhere(tasks, pause=lambda seconds: (waiter.sleep(seconds),
                                                                                 not waiter.stopping)[1]):
            offered.add(id(task))
            waiter.watch(task, future, again=True)
    finally:
        waiter.put_back([task for task in tasks if id(task) not in offered])
    waiter.wait_all()


def _summary(waiter: _Waiter, loaded, rejected_offers: int, elapsed: float, tq, swept: int) -> dict:
    """The figures :func:`_render` prints. ``throughput_per_s`` is the tasks done -- succeeded,
    deduplicated or dead-lettered, the rows taken over from the database included -- per second of
    the run: the progress line's count, less the invalid items recorded (no task, no work). Counting
    the tasks offered would credit an interrupted run with work it never did; counting the file's
    alone, a run that also finished an enqueued backlog with work it did not."""
    outcome = waiter.counts(len(loaded.tasks))
    snap = tq.final_metrics or tq.snapshot()
    done = max(0, progress.done_count(snap) - len(loaded.invalid))
    return {"tasks": len(loaded.tasks), "invalid_dead_lettered": len(loaded.invalid),
            "duplicates_in_file_dropped": loaded.duplicates_dropped, **outcome,
            "retries": snap["counters"]["retried"], "rejected_offers": rejected_offers,
            "recovered": len(tq.recovered.runnable), "recovered_dead": len(tq.recovered.dead),
            "temp_files_swept": swept, "elapsed_s": round(elapsed, 3),
            "throughput_per_s": round(done / elapsed, 1) if elapsed > 0 else None,
            "latency_p95_s": snap["latency_s"]["p95"], "queue_depth_max": snap["queue_depth"]["max"],
            "db": tq.store.location, "store": tq.objects.root}


def _outcome(future) -> str:
    if future.cancelled() or not future.done():
        return "unfinished"
    error = future.exception()
    if error is None:
        return "deduplicated" if future.result().deduplicated else "succeeded"
    if isinstance(error, ClaimedElsewhere):
        return "elsewhere"
    if isinstance(error, (QueueShutDown, OutcomeNotRecorded)):  # its row is still open, for another run
        return "unfinished"
    if getattr(error, "deduplicated", False):  # dead-lettered before this run: done, nothing done again
        return "deduplicated"
    return "dead_lettered"


def _render(summary: dict) -> str:
    lines = [f"tasks {summary['tasks']}: {summary['succeeded']} succeeded, "
             f"{summary['deduplicated']} already done (deduplicated), "
             f"{summary['dead_lettered']} dead-lettered, {summary['unfinished']} unfinished"
             + (f" ({summary['not_offered']} never offered: intake stopped; run the file again)"
                if summary["not_offered"] else "")]
    if summary["invalid_dead_lettered"]:
        lines.append(f"invalid items dead-lettered: {summary['invalid_dead_lettered']}")
    lines.append(f"retries {summary['retries']}, rejected offers {summary['rejected_offers']}, "
                 f"taken over from the database {summary['recovered']} (+{summary['recovered_dead']} "
                 f"dead-lettered), temp files swept {summary['temp_files_swept']}")
    if summary["recovered"] or summary["recovered_dead"]:
        lines.append("  (open rows nobody ran: left by an earlier run, a dead process, an enqueue or a redrive)")
    p95 = summary["latency_p95_s"]
    lines.append(f"elapsed {summary['elapsed_s']}s, {summary['throughput_per_s']} tasks/s, "
                 f"p95 {'n/a' if p95 is None else f'{p95 * 1000:.1f} ms'}, "
                 f"max queue depth {summary['queue_depth_max']}")
    return "\n".join(lines)
