"""``enqueue`` and ``worker``: producers and workers apart, on one SQLite file or one PostgreSQL database.

``enqueue`` validates a task file exactly as ``run`` does and inserts its
tasks as ``queued`` rows nobody owns yet (duplicates deduplicated by the
UNIQUE key); it processes nothing. ``worker`` is the engine without a
producer: its feeder (:mod:`taskqueue.engine.feeder`) claims due rows into
the bounded queue and the same workers, retries and dead letters as ``run``
process them. Many workers -- processes, machines -- share one database and
one object store.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from .. import logs, watch
from ..objectstore import LocalObjectStore
from ..processor import Processor
from ..errors import TaskQueueError
from ..store import is_url, open_store, probe, store_errors
from ..taskfile import ON_INVALID, load_tasks
from . import (EXIT_OK, EXIT_UNFINISHED, check_paths, config_from, hold_signals, printable_path, processing_flags,
               release_signals, run_with_signals, start_logging, stop_on_signal, store_flags)

ENQUEUE_BATCH = 500  # tasks per transaction: all of a batch or none of it


def add_commands(sub: argparse._SubParsersAction) -> None:
    enqueue = sub.add_parser("enqueue", help="validate a task file and add its tasks to the queue (no processing)")
    enqueue.add_argument("--tasks", required=True, help="JSON array of tasks")
    store_flags(enqueue)
    enqueue.add_argument("--invalid", choices=ON_INVALID, default="reject",
                         help="bad items: refuse the whole file (default) or dead-letter them and add the rest")
    enqueue.set_defaults(handler=cmd_enqueue)

    worker = sub.add_parser("worker", help="process queued tasks until stopped (or idle, with --exit-when-idle)")
    processing_flags(worker, queue_help="tasks this process holds at most (TQ_QUEUE_SIZE; never more than 2 "
                                        "per worker)")
    worker.add_argument("--lease-s", type=float, help="seconds a claim lasts unless renewed (TQ_LEASE_S)")
    worker.add_argument("--exit-when-idle", action="store_true",
                        help="exit 0 once no task is queued, waiting for a retry or running anywhere")
    watch.add_flags(worker)  # --no-progress, --metrics-port, --metrics-host, --metrics-interval
    worker.set_defaults(handler=cmd_worker)


# -- enqueue ---------------------------------------------------------------------------------

def cmd_enqueue(args: argparse.Namespace) -> int:
    config = config_from(args)
    check_paths(config, store=False, outputs=False)
    loaded = load_tasks(args.tasks, max_bytes=config.max_task_file_bytes, check=Processor.check,
                        on_invalid=args.invalid)
    store = open_store(config.db, lease_s=config.lease_s, synchronous=config.db_synchronous,
                       busy_timeout_ms=config.busy_timeout_ms)
    try:
        added = 0
        for start in range(0, len(loaded.tasks), ENQUEUE_BATCH):
            added += len(store.commit(store.enqueue(loaded.tasks[start:start + ENQUEUE_BATCH])))
        invalid = sum(bool(store.commit(store.record_invalid(*item.dead_letter()))) for item in loaded.invalid)
    finally:
        store.close()
    # Tasks of the file sharing a key (other ids, so not dropped as identical) are one row: the file's
    # own repeats are told apart from the keys the database already held, which alone were "there".
    keys = len({task.idempotency_key for task in loaded.tasks})
    print(f"enqueued {added} task(s) into {printable_path(store.location)}; {keys - added} already there "
          f"(not added again)")
    if len(loaded.tasks) > keys:
        print(f"repeats of a key earlier in the file (added once): {len(loaded.tasks) - keys}")
    if loaded.invalid:
        print(f"invalid items dead-lettered: {invalid} ({len(loaded.invalid) - invalid} recorded before)")
    if loaded.duplicates_dropped:
        print(f"identical duplicates in the file dropped: {loaded.duplicates_dropped}")
    return EXIT_OK


# -- worker -----------------------------------------------------------------------------------

def cmd_worker(args: argparse.Namespace) -> int:
    from ..engine import TaskQueue
    from ..engine.feeder import Feeder, held_at_most

    config = config_from(args, "workers", "queue_size", "max_attempts", "lease_s", "shutdown_grace_s", "log_level",
                         "log_file", *watch.FIELDS)
    # The queue is sized to what the feeder holds, so its depth and capacity (progress, metrics) read true.
    holds = held_at_most(config.queue_size, config.workers)
    if holds < config.queue_size and config.given("queue_size"):
        print(f"note: {config.source_of('queue_size')} {config.queue_size} held to {holds}: a worker holds at "
              f"most 2 tasks per worker thread, so that the other workers share the rest", file=sys.stderr)
    config = config.replace(queue_size=holds)
    check_paths(config)
    new_db = not is_url(config.db) and not os.path.lexists(config.db)
    if new_db and args.exit_when_idle:  # nothing can be open in it: most likely a mistyped path
        raise FileNotFoundError(f"{config.source_of('db')}: no database at {config.db!r}; a worker with "
                                f"--exit-when-idle would find nothing to do (an enqueue or a run makes it)")
    watcher = watch.Watch.from_config(config, no_progress=args.no_progress)  # binds the metrics port: a port
    # in use refuses the worker here
    handler = start_logging(config)
    held = None
    try:
        probe(config.db)  # a database that cannot be opened or created: refused, nothing made
        if not os.path.isdir(config.store):  # a typo, or a volume not mounted: every source would be missing
            raise FileNotFoundError(f"{config.source_of('store')}: no directory at {printable_path(config.store)}; "
                                    f"a worker reads each task's source from the store (is the path right, the "
                                    f"volume mounted?)")
        held = hold_signals()  # before any thread starts: SIGINT/SIGTERM will reach the main thread only
        objects = LocalObjectStore(config.store, chunk_size=config.chunk_size, fsync=config.fsync_outputs)
        processor = Processor(objects, config.faults, max_image_pixels=config.max_image_pixels)
        swept = objects.sweep_temp_files()  # only this host's dead writers': other hosts may be writing
        if swept:
            print(f"temp files of dead writers swept: {swept}")
        started = time.perf_counter()
        tq = TaskQueue(config.db, objects, config=config, processor=processor, metrics_out=config.metrics_out,
                       recover_unowned=False)
        feeder = Feeder(tq, exit_when_idle=args.exit_when_idle)
        if new_db:  # a worker may start before the producer: say so, in case the path is mistyped
            print(f"note: {config.db!r} did not exist: created an empty task queue database; waiting for tasks",
                  file=sys.stderr)
        with os.scandir(config.store) as entries:
            if next(entries, None) is None:  # an unmounted volume's mount point, most likely
                print(f"note: {config.source_of('store')} {printable_path(config.store)} is empty: every task's "
                      f"source will be missing, and the task dead-lettered (is the volume mounted?)", file=sys.stderr)
        watcher.start(tq, total=None)  # open-ended: done so far and the rate, no percent or ETA
        on_signal = stop_on_signal(f"no more claims, finishing in-flight tasks (up to {config.shutdown_grace_s:g}s)",
                                   feeder.stop)

        def feed_then_shut_down() -> tuple[bool, bool]:  # the grace period too runs under the handler
            stopped = feeder.run() != "idle"
            return stopped, tq.shutdown(wait=True, cancel_futures=stopped,
                                        timeout=config.shutdown_grace_s if stopped else None)

        outcome = run_with_signals(feed_then_shut_down, on_signal, held, "tq-feeder")
        if "error" in outcome:
            finished = tq.shutdown(wait=True, cancel_futures=True, timeout=config.shutdown_grace_s)
            watcher.stop()
            error = outcome["error"]
            if not isinstance(error, (*store_errors(), TaskQueueError, OSError)):
                raise error
            # The database went away (a restart, a network cut): stop rather than guess. The rows this
            # worker held are anybody's once their lease runs out; a supervisor starts it again.
            reason = " ".join(str(error).split())  # a driver's message may span lines
            print(f"error: the worker stopped: {reason}\nwhat finished is recorded; the tasks it held are taken "
                  f"over by any worker once their lease runs out ({config.lease_s:g}s): start it again",
                  file=sys.stderr)
            if not finished:  # a task outlived the grace period: do not wait for it at exit
                _exit_now(tq, config, handler, EXIT_UNFINISHED)
            return EXIT_UNFINISHED
        stopped, finished = outcome["value"]
        watcher.stop()  # the last frame and the final metrics file, before the summary
        snap = tq.final_metrics or tq.snapshot()
        counters = snap["counters"]
        elapsed = time.perf_counter() - started
        done = counters["succeeded"] + counters["dead_lettered"]
        taken = len(tq.recovered.runnable) + len(tq.recovered.dead)  # a dead worker's rows, at start-up
        taken_note = f" (+{taken} taken over at start-up)" if taken else ""
        print(f"worker {tq.store.owner}: {'idle everywhere' if not stopped else 'stopped'}; claimed {feeder.claimed}"
              f"{taken_note}, {counters['succeeded']} succeeded, {counters['dead_lettered']} dead-lettered, "
              f"{counters['retried']} retries; {elapsed:.1f}s, {done / elapsed if elapsed else 0:.1f} tasks/s")
        if not finished:  # grace ran out: running rows are taken over once their lease expires
            _exit_now(tq, config, handler, EXIT_OK)
        return EXIT_OK
    finally:
        release_signals(held)
        watcher.stop()
        logs.logging.getLogger(logs.LOGGER_NAME).removeHandler(handler)
        handler.close()


def _exit_now(tq, config, handler, code: int) -> None:
    """Exit without waiting for worker threads still inside a task (their rows' leases run out),
    once the metrics file has what the shutdown, still waiting for them, would have written."""
    if config.metrics_out:
        try:
            tq.write_metrics(config.metrics_out)
        except OSError as exc:
            print(f"warning: could not write the final metrics to {printable_path(config.metrics_out)}: {exc}",
                  file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    handler.flush()
    os._exit(code)
