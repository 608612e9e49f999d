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


def install_signal_handler(handler):
    """Install ``handler`` for SIGINT and SIGTERM; return what was there (pass it back to restore).

    Does nothing outside the main thread (only it may install handlers).
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    if isinstance(handler, dict):
        for signum, previous in handler.items():
            signal.signal(signum, previous)
        return None
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    return previous
