"""What an operator watches while a queue runs: the progress line, live metrics over HTTP, a metrics file.

One object, :class:`Watch`, for a command that drives a
:class:`~taskqueue.engine.TaskQueue` (``run`` today, a long-lived worker
tomorrow)::

    add_flags(parser)                    # --no-progress, --metrics-port/-host, --metrics-interval
    config = config_from(args, ...)      # each flag over its TQ_* variable (see FIELDS)
    watch = Watch.from_config(config, no_progress=args.no_progress)  # binds the port: refuses before
                                                                     # anything is created
    ...create the TaskQueue...
    watch.start(tq, total=N)             # total None: open-ended, no percent or ETA
    ...run...
    watch.stop()                         # before printing the summary; idempotent

* the progress line (:mod:`taskqueue.progress`) shows on stderr only when
  it is a terminal and ``--no-progress`` is not given;
* ``--metrics-port`` serves ``/metrics`` and ``/healthz``
  (:mod:`taskqueue.metrics_http`) on ``--metrics-host`` (127.0.0.1);
* ``--metrics-out`` is rewritten every ``--metrics-interval`` seconds
  (:mod:`taskqueue.metrics_writer`); the engine still writes it at shutdown.

Each of these but the progress line is also a setting (``TQ_METRICS_PORT``,
``TQ_METRICS_HOST``, ``TQ_METRICS_INTERVAL_S``, ``TQ_METRICS_OUT``): a fleet of
workers is configured by its environment like everything else.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, TextIO

from .config import METRICS_HOST, METRICS_INTERVAL_S, Config
from .errors import ConfigError
from .metrics_http import MetricsServer
from .metrics_writer import PeriodicMetricsWriter
from .progress import ProgressLine
from .prometheus import render

FIELDS = ("metrics_out", "metrics_port", "metrics_host", "metrics_interval_s")  # the Config fields of these flags


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true",
                        help="no live status line on stderr (shown only when stderr is a terminal)")
    parser.add_argument("--metrics-port", metavar="PORT",
                        help="serve GET /metrics (Prometheus text) and /healthz on this port while the run "
                             "lasts; 0 picks a free port (announced on stderr) (TQ_METRICS_PORT)")
    parser.add_argument("--metrics-host", metavar="HOST",
                        help=f"address for --metrics-port (TQ_METRICS_HOST, default {METRICS_HOST})")
    parser.add_argument("--metrics-interval", dest="metrics_interval_s", metavar="SECONDS",
                        help=f"rewrite --metrics-out this often during the run (TQ_METRICS_INTERVAL_S, "
                             f"default {METRICS_INTERVAL_S:g})")


class Watch:
    """The progress line, the metrics server and the metrics file writer of one run; each optional."""

    def __init__(self, *, progress: bool = False, port: int | None = None, host: str = METRICS_HOST,
                 metrics_out: str | None = None, interval_s: float = METRICS_INTERVAL_S,
                 stream: TextIO | None = None) -> None:
        if port is not None and not 0 <= port <= 65535:
            raise ConfigError(f"--metrics-port: must be within [0, 65535], got {port!r}")
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise ConfigError(f"--metrics-interval: must be a number of seconds greater than 0, got {interval_s!r}")
        self._stream = stream or sys.stderr
        self._progress_wanted = progress
        self._metrics_out = metrics_out
        self._interval = interval_s
        self._tq: Any = None
        self.progress: ProgressLine | None = None
        self.writer: PeriodicMetricsWriter | None = None
        # Bound now, served from start(): a port in use refuses the run before anything exists.
        self.server = None if port is None else MetricsServer(self._render, host=host, port=port)

    @classmethod
    def from_config(cls, config: Config, *, no_progress: bool = False, stream: TextIO | None = None) -> "Watch":
        """The watch ``config`` asks for (its settings validated already); the progress line only on a
        terminal and without ``no_progress``."""
        stream = stream or sys.stderr
        on_terminal = _is_terminal(stream) and os.environ.get("TERM") != "dumb"
        try:
            return cls(progress=on_terminal and not no_progress, port=config.metrics_port, host=config.metrics_host,
                       metrics_out=config.metrics_out, interval_s=config.metrics_interval_s, stream=stream)
        except ConfigError as exc:  # the port is in use, or the host is no address of ours: say which setting
            named = config.source_of("metrics_port")
            if config.metrics_host != METRICS_HOST:
                named += f" on {config.source_of('metrics_host')}"
            raise ConfigError(f"{named}: {exc}") from None

    def start(self, tq: Any, total: int | None) -> None:
        """Start watching ``tq`` (anything with ``snapshot()``; ``final_metrics`` is used once set)."""
        self._tq = tq
        if self.server is not None:
            self.server.start()
            print(f"serving metrics on {self.server.url} (and /healthz)", file=self._stream, flush=True)
        if self._metrics_out:
            self.writer = PeriodicMetricsWriter(self._metrics_out, self.snapshot, interval_s=self._interval)
            self.writer.start()
        if self._progress_wanted:
            self.progress = ProgressLine(self.snapshot, total=total, stream=self._stream)
            self.progress.start()

    def snapshot(self) -> dict:
        """The queue's final metrics once it has shut down, else a fresh snapshot."""
        return getattr(self._tq, "final_metrics", None) or self._tq.snapshot()

    def _render(self) -> str:
        if self._tq is None:  # a request accepted before start(): nothing to report yet
            raise RuntimeError("the run has not started")
        return render(self.snapshot())

    def stop(self) -> None:
        """End the progress line, write the final metrics file, stop serving. Idempotent; never raises
        for one part failing before the others are stopped."""
        try:
            if self.progress is not None:
                self.progress.stop()
        finally:
            try:
                if self.writer is not None:
                    self.writer.stop()
            finally:
                if self.server is not None:
                    self.server.stop()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
