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
import signal
import sys
import threading

from ..config import Config
from ..errors import ConfigError, InvalidTask
from ..store import store_errors

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


def config_from(args: argparse.Namespace, *names: str) -> Config:
    """The Config of a command: its flags ``names`` (and --db, --store) over TQ_* and .env."""
    return Config.from_env({name: getattr(args, name, None) for name in ("db", "store", *names)},
                           flags={"shutdown_grace_s": "--grace"})


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
