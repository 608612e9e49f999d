"""Structured logs: stdlib ``logging`` with a formatter that writes one JSON object per line.

Every record carries ``ts``, ``level``, ``logger``, ``event``, ``message``,
``task_id`` and ``idempotency_key`` (null when the record is not about a
task), and ``error_class`` when it reports a failure. Pass the fields with
``extra=``; :func:`task_extra` builds them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from datetime import datetime, timezone
from typing import Any

from .errors import text_of

LOGGER_NAME = "taskqueue"
_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "taskName"}


def task_extra(event: str, task: Any = None, *, error: BaseException | None = None, **fields: Any) -> dict:
    """The ``extra=`` dict for a log call about ``task`` (a Task or anything with id/idempotency_key)."""
    extra = {"event": event,
             "task_id": getattr(task, "id", None),
             "idempotency_key": getattr(task, "idempotency_key", None)}
    if error is not None:
        extra["error_class"] = type(error).__name__
        extra["error"] = text_of(error)
    extra.update(fields)
    return extra


class JsonFormatter(logging.Formatter):
    """Format a LogRecord as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,  # several workers may share one log file
            "event": getattr(record, "event", None) or "log",
            "message": record.getMessage(),
            "task_id": getattr(record, "task_id", None),
            "idempotency_key": getattr(record, "idempotency_key", None),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
            out.setdefault("error_class", record.exc_info[0].__name__ if record.exc_info[0] else None)
        try:
            line = json.dumps(out, default=str, ensure_ascii=False, allow_nan=False)
        except ValueError:  # NaN or Infinity somewhere: strict JSON has no spelling for them
            line = json.dumps(_finite(out), default=str, ensure_ascii=False, allow_nan=False)
        return line if line.isascii() else _one_line(line)


# Characters that str.splitlines() (and some log shippers) take for line ends, written as JSON escapes.
_LINE_ENDS = {ord(c): f"\\u{ord(c):04x}" for c in "\x85\u2028\u2029"}


def _one_line(line: str) -> str:
    """A JSON line that stays one line and is valid UTF-8: Unicode line separators, and lone
    surrogates (a file name that is not UTF-8, from ``os.listdir``), as ``\\uXXXX`` escapes. Else a
    log file refused the record whole (strict UTF-8): its line was lost."""
    return line.translate(_LINE_ENDS).encode("utf-8", "backslashreplace").decode("utf-8")


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by its name ("nan", "inf", "-inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def configure(level: str | int = "info", path: str | None = None, stream: Any = None) -> logging.Handler:
    """Send the package's logs, as JSON lines, to ``path`` (appended) or ``stream`` (stderr).

    Returns the handler so the caller can remove it. Idempotent per target.
    """
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level.upper() if isinstance(level, str) else level)
    target = os.path.abspath(path) if path else (stream or sys.stderr)
    for existing in logger.handlers:
        if isinstance(existing.formatter, JsonFormatter) and target == (
                existing.baseFilename if isinstance(existing, logging.FileHandler)
                else getattr(existing, "stream", None)):
            return existing
    handler: logging.Handler = (_LogFile(path, encoding="utf-8", errors="backslashreplace") if path
                                else logging.StreamHandler(stream or sys.stderr))
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    return handler


class _LogFile(logging.FileHandler):
    """A log file that, when it cannot be written (its disk is full), says so once on stderr instead
    of a traceback per record, and whose :meth:`close` never raises: lines lost from the log must not
    turn a run whose tasks all finished into a crash."""

    failed = False

    def handleError(self, record: logging.LogRecord | None) -> None:
        if not self.failed:
            self.failed = True
            error = sys.exc_info()[1]
            print(f"warning: the log file {self.baseFilename!r} cannot be written ({error}); its lines are lost",
                  file=sys.stderr)

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # the last flush failed
            self.handleError(None)

