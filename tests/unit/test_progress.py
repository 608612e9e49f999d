"""The progress line: its text, the rate window, drawing, and output routed above it (no terminal needed).

The real terminal is in tests/integration/test_watch_cli.py (a pseudo-terminal).
"""

from __future__ import annotations

import io
import logging
import sys
import threading

import pytest

from taskqueue.progress import CLEAR, ERASE_TO_END, ProgressLine, RateWindow, done_count, format_status

WAIT_S = 30  # hang guard only


def snap(succeeded=0, dead=0, dedup=0, retried=0, depth=0, capacity=128) -> dict:
    return {"counters": {"succeeded": succeeded, "dead_lettered": dead, "deduplicated": dedup, "retried": retried,
                         "failed": 0, "rejected": 0, "enqueued": 0, "dequeued": 0},
            "queue_depth": {"current": depth, "capacity": capacity}}


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


class Source:
    """A snapshot callable the test steps by hand."""

    def __init__(self) -> None:
        self.value = snap()
        self.calls = 0

    def __call__(self) -> dict:
        self.calls += 1
        return self.value


@pytest.fixture
def line():
    """A ProgressLine on a StringIO, 100 columns, stepped clock, never redrawn by its thread on its own."""
    out, clock, source = io.StringIO(), Clock(), Source()
    progress = ProgressLine(source, total=40, stream=out, interval_s=3600, clock=clock, columns=lambda: 100)
    yield progress, out, clock, source
    progress.stop()


# -- the text ------------------------------------------------------------------------------------

def test_done_counts_every_terminal_outcome():
    assert done_count(snap(succeeded=3, dead=2, dedup=4, retried=9)) == 9


def test_status_text_with_a_total():
    text = format_status(snap(succeeded=20, dead=1, dedup=9, retried=4, depth=7), total=40, rate=2.5)
    assert text == "30/40 done (75.0%) | 2.5 tasks/s | ETA 0:04 | retries 4 | dead 1 | queue 7/128"


@pytest.mark.parametrize("remaining, rate, eta", [(10, None, "--:--"), (10, 0.0, "--:--"), (0, None, "0:00"),
                                                 (130, 2.0, "1:05"), (7450, 2.0, "1:02:05")])
def test_eta(remaining, rate, eta):
    text = format_status(snap(succeeded=10), total=10 + remaining, rate=rate)
    assert f"ETA {eta} |" in text


def test_open_ended_has_no_percent_and_no_eta():
    text = format_status(snap(succeeded=5), total=None, rate=None)
    assert text == "5 done | -- tasks/s | retries 0 | dead 0 | queue 0/128"


def test_done_is_capped_at_the_total_and_an_empty_total_is_complete():
    assert format_status(snap(succeeded=5, dedup=2), total=6, rate=1.0).startswith("6/6 done (100.0%)")
    assert format_status(snap(), total=0, rate=None).startswith("0/0 done (100.0%)")


def test_rate_window_covers_the_last_window_only():
    window = RateWindow(window_s=10.0)
    assert window.add(0.0, 0) is None
    assert window.add(5.0, 50) == 10.0
    assert window.add(10.0, 100) == 10.0
    assert window.add(20.0, 110) == 1.0  # (110 - 100) / (20 - 10): the first 10 s have left the window
    assert window.add(20.0, 120) == 2.0


# -- drawing -------------------------------------------------------------------------------------

def test_start_draws_at_once_refresh_redraws_and_stop_leaves_the_final_line(line):
    progress, out, clock, source = line
    progress.start()
    first = "\r0/40 done (0.0%) | -- tasks/s | ETA --:-- | retries 0 | dead 0 | queue 0/128" + ERASE_TO_END
    assert out.getvalue() == first
    clock.now += 2.0
    source.value = snap(succeeded=10, depth=3)
    progress.refresh()
    second = "\r10/40 done (25.0%) | 5.0 tasks/s | ETA 0:06 | retries 0 | dead 0 | queue 3/128" + ERASE_TO_END
    assert out.getvalue() == first + second
    clock.now += 8.0
    source.value = snap(succeeded=39, dead=1)
    progress.stop()
    final = "\r40/40 done (100.0%) | 4.0 tasks/s | ETA 0:00 | retries 0 | dead 1 | queue 0/128" + ERASE_TO_END + "\n"
    assert out.getvalue() == first + second + final  # the final rate is over the whole run: 40 / 10 s
    progress.stop()  # idempotent
    assert out.getvalue().endswith(final)


def test_a_frame_never_wraps():
    out = io.StringIO()
    progress = ProgressLine(Source(), total=40, stream=out, interval_s=3600, columns=lambda: 30)
    progress.start()
    progress.stop()
    frames = out.getvalue().split("\r")[1:]
    assert frames and all(len(f.replace(ERASE_TO_END, "").rstrip("\n")) <= 29 for f in frames)


# The README's example line: 87 characters, wider than an 80-column terminal.
README_SNAP = snap(succeeded=1237, retried=23, depth=128, capacity=128)
README_LINE = "1237/2000 done (61.9%) | 328.9 tasks/s | ETA 0:02 | retries 23 | dead 0 | queue 128/128"


def test_a_line_too_wide_loses_whole_fields_from_its_end_never_part_of_a_number():
    assert len(README_LINE) == 87
    out = io.StringIO()
    progress = ProgressLine(lambda: README_SNAP, total=2000, stream=out, interval_s=3600, clock=Clock(),
                            columns=lambda: 80)
    progress.start()  # the first frame: no rate yet (nor in the last, the clock never moving)
    progress.stop()
    frames = [f.replace(ERASE_TO_END, "").rstrip("\n") for f in out.getvalue().split("\r")[1:]]
    assert frames == ["1237/2000 done (61.9%) | -- tasks/s | ETA --:-- | retries 23 | dead 0"] * 2
    assert "queue 1" not in out.getvalue()  # not 'queue 128/128' cut to a wrong number
    assert (format_status(README_SNAP, 2000, 328.9, width=79)
            == "1237/2000 done (61.9%) | 328.9 tasks/s | ETA 0:02 | retries 23 | dead 0")


@pytest.mark.parametrize("width", range(0, 90))
def test_at_any_width_the_frame_is_whole_fields_that_fit(width):
    fields = README_LINE.split(" | ")
    shortened = {"1237/2000 done", "1237/2000", "61.9%"}  # the first field, shorter, still true
    text = format_status(README_SNAP, 2000, 328.9, width=width)
    assert len(text) <= width
    shown = text.split(" | ") if text else []
    assert shown == fields[:len(shown)] or (len(shown) == 1 and shown[0] in shortened)
    if width >= len(README_LINE):
        assert text == README_LINE
    elif width >= len("1237/2000 done (61.9%) | 328.9 tasks/s"):
        assert len(shown) >= 2 and shown[0] == fields[0]


def test_an_open_ended_line_is_shortened_the_same_way():
    text = format_status(snap(succeeded=1872, retried=4, dead=1, depth=16, capacity=16), total=None, rate=312.4,
                         width=30)
    assert text == "1873 done | 312.4 tasks/s"
    assert format_status(snap(succeeded=1873), total=None, rate=None, width=6) == "1873"
    assert format_status(snap(succeeded=1873), total=None, rate=None, width=3) == ""


def test_stop_without_start_writes_nothing():
    out = io.StringIO()
    ProgressLine(Source(), total=1, stream=out).stop()
    assert out.getvalue() == ""


def test_the_thread_redraws_until_stopped():
    out, drawn = io.StringIO(), threading.Event()

    class Counting(Source):
        def __call__(self) -> dict:
            if self.calls >= 3:
                drawn.set()
            return super().__call__()

    source = Counting()
    progress = ProgressLine(source, total=5, stream=out, interval_s=0.001, columns=lambda: 100)
    progress.start()
    assert drawn.wait(WAIT_S)
    progress.stop()
    calls = source.calls
    assert out.getvalue().count("\r") == calls  # one frame per snapshot, the last one final
    assert out.getvalue().endswith("\n") and out.getvalue().count("\n") == 1


def test_interval_must_be_positive():
    with pytest.raises(ValueError):
        ProgressLine(Source(), total=1, interval_s=0)


# -- output above the line -------------------------------------------------------------------------

def test_log_records_print_above_the_line_and_the_handler_is_restored(line):
    progress, out, _clock, _source = line
    logger = logging.getLogger("taskqueue.test_progress")
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    owner = logging.getLogger("taskqueue")
    owner.addHandler(handler)
    try:
        progress.start()
        frame = out.getvalue()[1:-len(ERASE_TO_END)]
        logger.warning("first")
        logger.warning("second\nspans two lines")
        expected_tail = (CLEAR + "WARNING first\n" + frame + ERASE_TO_END
                         + CLEAR + "WARNING second\nspans two lines\n" + frame + ERASE_TO_END)
        assert out.getvalue().endswith(expected_tail)
        assert handler.stream is not out  # rerouted while the line shows
        progress.stop()
        assert handler.stream is out
        logger.warning("after")
        assert out.getvalue().endswith("\n" + "WARNING after\n")  # plain again, no clearing
    finally:
        owner.removeHandler(handler)


def test_sys_stderr_is_routed_above_the_line_even_in_pieces(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    source = Source()
    progress = ProgressLine(source, total=4, stream=out, interval_s=3600, clock=Clock(), columns=lambda: 100)
    progress.start()
    assert sys.stderr is not out
    frame = out.getvalue()[1:-len(ERASE_TO_END)]
    before = len(out.getvalue())
    print("SIGINT: stopping", end="", file=sys.stderr)  # a partial line...
    source.value = snap(succeeded=1)
    progress.refresh()  # ...is not overwritten by a frame
    print(" intake", file=sys.stderr)
    new_frame = "1/4 done (25.0%) | -- tasks/s | ETA --:-- | retries 0 | dead 0 | queue 0/128"
    assert out.getvalue()[before:] == CLEAR + "SIGINT: stopping intake\n" + new_frame + ERASE_TO_END
    assert sys.stderr.isatty() is False  # everything else is the real stream's
    progress.stop()
    assert sys.stderr is out
    assert frame != new_frame
