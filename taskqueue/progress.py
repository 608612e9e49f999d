"""A live status line on a terminal: done/total, percent, tasks/s, ETA, retries, dead letters, queue depth.

:class:`ProgressLine` redraws one line (carriage return, the text, erase to
the end of the line) a few times a second from a ``snapshot()`` callable
(``TaskQueue.snapshot``: nothing here knows the engine). While it shows,
everything else written to the terminal is printed *above* it: the
``logging`` handlers that write to the same stream and ``sys.stderr``
itself are routed through :class:`_AboveTheLine`, which clears the line,
writes the text and redraws the line under it. At :meth:`ProgressLine.stop`
the last frame stays, ended by a newline, and everything is routed back.

"Done" counts terminal outcomes: succeeded + dead-lettered + deduplicated
(a key already done, or the same key in flight). ``total`` may be None
(an open-ended worker): then there is no percent and no ETA.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import threading
import time
from typing import Callable, TextIO

CLEAR = "\r\x1b[K"  # to the start of the line, erase it
ERASE_TO_END = "\x1b[K"


def done_count(snap: dict) -> int:
    counters = snap["counters"]
    return counters["succeeded"] + counters["dead_lettered"] + counters["deduplicated"]


SEPARATOR = " | "


def format_status(snap: dict, total: int | None, rate: float | None, width: int | None = None) -> str:
    """One frame of the line, e.g. ``37/120 done (30.8%) | 12.5 tasks/s | ETA 0:07 | retries 2 | ...``.

    ``width``: the most characters the frame may take (None: no limit). A line
    that does not fit loses whole fields from its end, the least important
    first, and then the first field is shortened (``37/120 done``, ``37/120``,
    ``30.8%``); if not even that fits, the frame is empty. A field is never cut:
    ``queue 128/128`` cut to ``queue 1`` would be a wrong number, not a shorter one.
    """
    done = done_count(snap)
    if total is None:
        first = [f"{done} done", f"{done}"]
    else:
        done = min(done, total)  # never past the total, whatever a counter says
        percent = f"{100.0 * done / total if total else 100.0:.1f}%"
        first = [f"{done}/{total} done ({percent})", f"{done}/{total} done", f"{done}/{total}", percent]
    rest = ["-- tasks/s" if rate is None else f"{rate:.1f} tasks/s"]
    if total is not None:
        remaining = total - done
        rest.append("ETA " + ("0:00" if remaining <= 0 else "--:--" if not rate else _clock(remaining / rate)))
    counters, depth = snap["counters"], snap["queue_depth"]
    rest += [f"retries {counters['retried']}", f"dead {counters['dead_lettered']}",
             f"queue {depth['current']}/{depth['capacity']}"]
    return _fit(first, rest, width)


def _fit(first: list[str], rest: list[str], width: int | None) -> str:
    """``first[0]`` and as many of ``rest`` as fit in ``width``, or the first of ``first`` that fits alone."""
    line = SEPARATOR.join([first[0], *rest])
    if width is None or len(line) <= width:
        return line
    while rest:  # the fields are in order of importance: the last one goes first
        rest = rest[:-1]
        line = SEPARATOR.join([first[0], *rest])
        if rest and len(line) <= width:
            return line
    return next((text for text in first if len(text) <= width), "")


def _clock(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class RateWindow:
    """Completions per second over the last ``window_s`` seconds of observations."""

    def __init__(self, window_s: float = 10.0) -> None:
        self._window = window_s
        self._seen: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, now: float, done: int) -> float | None:
        """Record ``done`` at ``now``; return the rate over the window (None until time has passed)."""
        self._seen.append((now, done))
        while len(self._seen) > 2 and now - self._seen[1][0] >= self._window:
            self._seen.popleft()  # keep one observation at or beyond the window's start
        then, done_then = self._seen[0]
        return (done - done_then) / (now - then) if now > then else None


class ProgressLine:
    """Redraws a status line on ``stream`` every ``interval_s`` seconds from a daemon thread.

    ``start()`` draws the first frame at once; ``stop()`` draws the last one
    (tasks/s over the whole run), ends the line and restores the streams it
    rerouted. Both are idempotent. ``refresh()`` draws one frame now. The
    caller decides whether to show it at all (a terminal, no ``--no-progress``).
    """

    def __init__(self, snapshot: Callable[[], dict], *, total: int | None, stream: TextIO | None = None,
                 interval_s: float = 0.25, clock: Callable[[], float] = time.monotonic,
                 columns: Callable[[], int] | None = None) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be greater than 0, got {interval_s!r}")
        self._snapshot = snapshot
        self.total = total
        self._stream = stream or sys.stderr
        self._interval = interval_s
        self._clock = clock
        self._columns = columns or self._terminal_columns
        self._rate = RateWindow()
        # Guards writes to the stream, _frame, _midline, _first and _rate. Reentrant: a signal
        # handler in the main thread may print to stderr while that thread draws the final frame.
        self._drawing = threading.RLock()
        self._frame = ""
        self._midline = False  # something above the line was written without its newline yet
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._rerouted: list[tuple[logging.StreamHandler, TextIO]] = []
        self._previous_stderr: TextIO | None = None
        self._first: tuple[float, int] | None = None

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._reroute()
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="tq-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self.refresh()
            except Exception:  # never die silently; a broken frame must not stop the run
                logging.getLogger("taskqueue").exception("progress line: could not draw", extra={
                    "event": "progress_error", "task_id": None, "idempotency_key": None})

    def stop(self) -> None:
        if self._thread is None or self._stopped.is_set():
            return
        self._stopped.set()
        self._thread.join()
        try:
            snap = self._snapshot()
            now, done = self._clock(), done_count(snap)
            first_t, first_done = self._first or (now, done)
            rate = (done - first_done) / (now - first_t) if now > first_t else None
            self._draw(format_status(snap, self.total, rate, self._width()), final=True)
        finally:
            self._restore()

    def refresh(self) -> None:
        """Draw one frame from a fresh snapshot (skipped while a partial line is being written above)."""
        snap = self._snapshot()
        with self._drawing:  # also guards _first and the rate window
            now, done = self._clock(), done_count(snap)
            if self._first is None:
                self._first = (now, done)
            self._draw(format_status(snap, self.total, self._rate.add(now, done), self._width()), final=False)

    # -- drawing ------------------------------------------------------------------------------

    def _width(self) -> int:
        """The most characters a frame may take: one less than the terminal's width, as a line that
        fills the last column wraps on some terminals, and a wrapped line cannot be redrawn in place."""
        return max(self._columns() - 1, 0)

    def _draw(self, frame: str, final: bool) -> None:
        with self._drawing:
            self._frame = frame
            if self._midline and not final:
                return
            self._stream.write(("\n" if self._midline else "\r") + frame + ERASE_TO_END + ("\n" if final else ""))
            self._stream.flush()
            if final:
                self._frame = ""

    def _write_above(self, text: str) -> None:
        if not text:
            return
        with self._drawing:
            out = text if self._midline else CLEAR + text
            self._midline = not text.endswith("\n")
            if not self._midline and self._frame:
                out += self._frame + ERASE_TO_END
            self._stream.write(out)
            self._stream.flush()

    def _terminal_columns(self) -> int:
        try:
            columns = os.get_terminal_size(self._stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            columns = 0
        return columns or 80  # a pseudo-terminal nobody sized reports 0

    # -- routing other output above the line ------------------------------------------------------

    def _reroute(self) -> None:
        above = _AboveTheLine(self._stream, self._write_above)
        for logger in (logging.getLogger(), logging.getLogger("taskqueue")):
            for handler in logger.handlers:
                if isinstance(handler, logging.StreamHandler) and handler.stream is self._stream:
                    self._rerouted.append((handler, handler.setStream(above) or self._stream))
        if sys.stderr is self._stream:
            self._previous_stderr, sys.stderr = sys.stderr, above

    def _restore(self) -> None:
        for handler, stream in self._rerouted:
            handler.setStream(stream)
        self._rerouted.clear()
        if self._previous_stderr is not None:
            sys.stderr, self._previous_stderr = self._previous_stderr, None


class _AboveTheLine:
    """A text stream that writes through ``write_above`` (and looks like ``stream`` otherwise)."""

    def __init__(self, stream: TextIO, write_above: Callable[[str], None]) -> None:
        self._stream = stream
        self._write_above = write_above

    def write(self, text: str) -> int:
        self._write_above(text)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
