"""Command line: ``run``, ``enqueue``, ``worker``, ``status``, ``dlq list|redrive``, and ``--benchmark``.

* :mod:`.run`      -- ``run``: producer and workers in one process, over a task file
* :mod:`.scaleout` -- ``enqueue`` and ``worker``: producers and workers apart
* :mod:`.admin`    -- ``status`` and ``dlq``
* :mod:`.paths`    -- the paths a command is given, checked before anything is made

Settings come from flags > environment (``TQ_*``) > ``.env`` > defaults
(see :mod:`taskqueue.config`). Exit codes: 0 done (every task terminal, or a
graceful stop on a signal), 1 some tasks left unfinished or some keys not
found or a run stopped by an error mid-run (what finished is recorded), 2 bad
input or settings (nothing was processed), 130 a Ctrl-C before any task was
offered (while the task file loads or ``--make-sources`` writes).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Callable
from urllib.parse import urlsplit

from .. import logs
from ..config import FLAG_NAMES, Config
from ..errors import ConfigError, InvalidTask
from ..store import is_url, store_errors
from ..store.postgres import redact
from .paths import check_paths  # noqa: F401 - the commands import it from here

EXIT_OK, EXIT_UNFINISHED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 128 + signal.SIGINT  # Ctrl-C before any work began, as a shell reports it
EXIT_BROKEN_PIPE = 128 + getattr(signal, "SIGPIPE", 13)  # the reader of the output went away, as a shell says


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "--benchmark":
        from ..bench import main as bench_main
        return bench_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        code = args.handler(args)
        sys.stdout.flush()  # here, where a reader gone away is caught, not at exit
        return code
    except BrokenPipeError:  # the reader stopped reading (| head): end as a shell reports a SIGPIPE, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # what is still buffered goes nowhere
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:  # before a command holds its signals (loading the file, making sources)
        print("\ninterrupted before any task was offered", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ConfigError, InvalidTask, NotADirectoryError, IsADirectoryError, FileNotFoundError,
            FileExistsError, PermissionError, *store_errors()) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if getattr(exc, "error_count", 0):
            rest = "enqueues" if getattr(args, "command", None) == "enqueue" else "runs"
            print(f"hint: --invalid dead-letter records the bad items as dead letters and {rest} the rest",
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


def printable(text: object) -> str:
    """``text`` with every character a terminal would act on written as its escape (``\\n``, ``\\x1b``).

    Task ids, keys, variants and error text come from task files and other hosts: printed raw, a
    newline or a carriage return forges a line of the listing, an ANSI escape sequence colours or
    clears the terminal, and a lone surrogate (an undecodable byte of a file name) cannot be encoded
    on a strict UTF-8 stdout at all. Only what :meth:`str.isprintable` refuses is escaped, the way
    :func:`ascii` writes it, so ordinary text -- accents, a backslash -- is shown as it is.
    """
    text = str(text)
    if text.isprintable():  # nearly always: no copy
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def printable_path(path: str | bytes | os.PathLike) -> str:
    """``path`` as :func:`printable` text, any byte that is not in the file system's encoding as ``\\xff``.

    A name need not be valid UTF-8 (``--store $'st\\xff'``): Python holds such a byte as a lone
    surrogate, which a strict UTF-8 stdout (``PYTHONIOENCODING=utf-8``) refuses to encode, crashing
    the command after its work is done. The original bytes, shown escaped, say which name it is.
    """
    return printable(os.fsencode(path).decode(sys.getfilesystemencoding(), "backslashreplace"))


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


DOTENV = ".env"  # read from the working directory (see Config.from_env)


def config_from(args: argparse.Namespace, *names: str) -> Config:
    """The Config of a command: its flags ``names`` (and --db, --store) over TQ_* and .env.

    Raises :class:`ConfigError` naming the setting and its source for a bad value, a ``.env`` that
    cannot be read (not UTF-8, unreadable), or a ``postgresql://`` URL that cannot be parsed.
    """
    overrides = {name: getattr(args, name, None) for name in ("db", "store", *names)}
    try:
        config = Config.from_env(overrides, flags=FLAG_NAMES, dotenv_path=DOTENV)
    except (UnicodeDecodeError, OSError) as exc:  # only reading .env does I/O here
        raise ConfigError(_dotenv_error(exc)) from None
    for name, where, close in config.ignored:  # a misspelling would otherwise change nothing, silently
        hint = f" (did you mean {close}?)" if close else " (.env.example lists every setting)"
        print(f"warning: {printable(name)} ({where}) is not a setting, ignored{hint}", file=sys.stderr)
    if is_url(config.db):
        if not config.db.startswith(("postgresql://", "postgres://")):  # PostgreSQL://, a missing //, a space
            raise ConfigError(f"{config.source_of('db')}: {redact(config.db)!r} is not a PostgreSQL URL: write "
                              f"postgresql://user:password@host/database (a SQLite file would not be named so)")
        try:
            urlsplit(config.db).port  # an unclosed "[" or a port that is not a number raises ValueError
        except ValueError as exc:
            raise ConfigError(f"{config.source_of('db')}: not a valid PostgreSQL URL ({exc}), "
                              f"got {redact(config.db)!r}") from None
    return config


def _dotenv_error(exc: Exception) -> str:
    path = os.path.abspath(DOTENV)
    if isinstance(exc, UnicodeDecodeError):
        try:
            with open(path, "rb") as f:
                data = f.read()
            data.decode("utf-8")
        except UnicodeDecodeError as bad:  # the position in the whole file, not in a chunk read
            line = data.count(b"\n", 0, bad.start) + 1
            return (f".env file {path!r}: not UTF-8 text (byte 0x{data[bad.start]:02x} on line {line}); "
                    f"save it as UTF-8 or remove it")
        except OSError:
            pass
        return f".env file {path!r}: not UTF-8 text; save it as UTF-8 or remove it"
    return f".env file {path!r} cannot be read: {exc.strerror or exc}"


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
    # A signal ignored when the process started stays ignored: a shell without job control starts a
    # background command (``run ... &`` in a script) with SIGINT ignored, so that a Ctrl-C meant for
    # the foreground does not stop it. Python's own start-up keeps that too (no KeyboardInterrupt).
    previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS
                if signal.getsignal(signum) is not signal.SIG_IGN} if main else {}
    try:
        runner = threading.Thread(target=body, name=name)
        runner.start()  # inherits the held mask
        release_signals(held)  # deliverable again, to this thread only
        runner.join()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return outcome
