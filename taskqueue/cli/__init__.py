"""Command line: ``run``, ``enqueue``, ``worker``, ``status``, ``dlq list|redrive``, and ``--benchmark``.

* :mod:`.run`      -- ``run``: producer and workers in one process, over a task file
* :mod:`.scaleout` -- ``enqueue`` and ``worker``: producers and workers apart
* :mod:`.admin`    -- ``status`` and ``dlq``

Settings come from flags > environment (``TQ_*``) > ``.env`` > defaults
(see :mod:`taskqueue.config`). Exit codes: 0 done (every task terminal, or a
graceful stop on a signal), 1 some tasks left unfinished or some keys not
found or a run stopped by an error mid-run (what finished is recorded), 2 bad
input or settings (nothing was processed).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Callable

from .. import logs
from ..config import FLAG_NAMES, Config
from ..errors import ConfigError, InvalidTask
from ..store import check_database, is_url, store_errors

EXIT_OK, EXIT_UNFINISHED, EXIT_USAGE = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "--benchmark":
        from ..bench import main as bench_main
        return bench_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, InvalidTask, NotADirectoryError, IsADirectoryError, FileNotFoundError,
            FileExistsError, PermissionError, *store_errors()) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if getattr(exc, "error_count", 0):
            print("hint: --invalid dead-letter records the bad items as dead letters and runs the rest",
                  file=sys.stderr)
        return EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Durable in-process task queue. `--benchmark [options]` runs the load benchmark "
                    "(see `--benchmark --help`).")
    sub = parser.add_subparsers(dest="command", required=True)
    from . import admin, run, scaleout  # the command modules import this one's helpers

    run.add_command(sub)
    admin.add_commands(sub)
    scaleout.add_commands(sub)
    return parser


def store_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", help="SQLite file of task rows, or a postgresql:// URL (TQ_DB, default ./tasks.db)")


def processing_flags(parser: argparse.ArgumentParser, queue_help: str | None = None) -> None:
    """The flags of every command that processes tasks (``run``, ``worker``)."""
    store_flags(parser)
    parser.add_argument("--store", help="object store root directory (TQ_STORE, default ./store)")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--queue-size", type=int, help=queue_help)
    parser.add_argument("--max-attempts", type=int)
    parser.add_argument("--grace", type=float, dest="shutdown_grace_s",
                        help="seconds in-flight tasks get after SIGINT/SIGTERM")
    parser.add_argument("--metrics-out", help="write the metrics here as JSON, during the run and at its end "
                                              "(TQ_METRICS_OUT)")
    parser.add_argument("--log-file", help="append JSON-lines logs here (INFO; TQ_LOG_FILE); default: warnings "
                                           "to stderr")
    parser.add_argument("--log-level", help="debug | info | warning | error")


def check_paths(config: Config, *, store: bool = True, outputs: bool = True) -> None:
    """Refuse paths that cannot work, naming the flag, before anything is created or processed.

    A SQLite ``--db`` must not be a directory, must sit in a directory that exists and, if it
    exists, must be this queue's database (checked without writing to it).
    """
    if store and os.path.lexists(config.store) and not os.path.isdir(config.store):  # lexists: a dangling link too
        raise NotADirectoryError(f"store {config.store!r} is not a directory")
    local_db = None if is_url(config.db) else config.db
    if local_db and os.path.isdir(local_db):
        raise IsADirectoryError(f"db {config.db!r} is a directory, not a database file")
    checked = [("--db", local_db)]
    if outputs:  # a command that writes them (not enqueue, whatever the environment says)
        checked += [("--metrics-out (TQ_METRICS_OUT)", config.metrics_out), ("--log-file (TQ_LOG_FILE)", config.log_file)]
    for flag, path in checked:
        if path:
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise FileNotFoundError(f"{flag} {path!r}: directory {parent!r} does not exist")
    if local_db:
        check_database(local_db)


def start_logging(config: Config):
    """Send the logs where ``config`` says (``log_file``, else stderr), at ``log_level`` (default: info into a
    file, warnings on stderr); returns the handler to remove and close at the end."""
    return logs.configure(config.log_level or ("info" if config.log_file else "warning"), path=config.log_file)


def stop_on_signal(message: str, stop: Callable[[], None]) -> Callable:
    """A SIGINT/SIGTERM handler: the first signal prints ``message`` and calls ``stop()``; a second
    one exits at once (the store and published outputs stay consistent whatever it interrupts)."""
    received = [0]

    def on_signal(signum, _frame) -> None:
        received[0] += 1
        if received[0] > 1:
            os._exit(128 + signum)
        print(f"\n{signal.Signals(signum).name}: {message}; again to exit at once", file=sys.stderr)
        stop()

    return on_signal


def config_from(args: argparse.Namespace, *names: str) -> Config:
    """The Config of a command: its flags ``names`` (and --db, --store) over TQ_* and .env."""
    return Config.from_env({name: getattr(args, name, None) for name in ("db", "store", *names)},
                           flags=FLAG_NAMES)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def hold_signals() -> object:
    """Block SIGINT and SIGTERM in this (main) thread until :func:`run_with_signals` releases them.

    Call it before starting any thread: every thread started meanwhile inherits
    the blocked mask and can never receive them, so the kernel delivers them to
    the main thread -- the only one whose wait a signal interrupts. (Delivered to
    another thread, a signal would leave the main thread asleep in ``join()``
    and its Python handler would not run until the join returned.) Returns the
    mask to restore; None where signal masks do not exist (Windows: signals go
    to the main thread anyway) or off the main thread.
    """
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def release_signals(held: object) -> None:
    """Undo :func:`hold_signals` (idempotent)."""
    if held is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def run_with_signals(target, on_signal, held: object, name: str) -> dict:
    """Run ``target()`` in a thread of its own while the main thread waits and takes SIGINT/SIGTERM.

    The main thread only waits, so ``on_signal`` (run by it) never interrupts
    code that holds a lock it needs. Returns ``{"value": ...}`` or
    ``{"error": exception}`` from ``target``.
    """
    outcome: dict = {}

    def body() -> None:
        try:
            outcome["value"] = target()
        except BaseException as exc:  # re-raised by the caller, in the main thread
            outcome["error"] = exc

    main = threading.current_thread() is threading.main_thread()
    previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS} if main else {}
    try:
        runner = threading.Thread(target=body, name=name)
        runner.start()  # inherits the held mask
        release_signals(held)  # deliverable again, to this thread only
        runner.join()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return outcome
