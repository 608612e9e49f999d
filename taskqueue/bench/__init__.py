"""The load benchmark: baseline vs the engine vs a plain ThreadPoolExecutor, measured honestly.

``python3 benchmark.py`` (or ``python3 task_queue_optimized.py --benchmark``)
calls :func:`main`. Modules: ``scenarios`` (the loads and their rows),
``impls`` (the three implementations behind one interface), ``clients``
(closed- and open-loop load threads), ``runner`` (one row in a fresh
process), ``stats`` (exact percentiles), ``report`` (medians, table, JSON,
CSV), ``svg`` (the chart), ``verdict`` (requirements and targets), ``cli``,
``thumbs`` (the opt-in image scenario: rows, worker scaling, peak RSS of
``run``), ``peakrss`` (a command's peak RSS, measured from a fresh process).
Standard library only; ``thumbs`` needs Pillow and is skipped without it.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark with command-line ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    from .cli import main as cli_main  # imported late: ``python -m taskqueue.bench.runner`` needs none of it

    return cli_main(argv)


__all__ = ["main"]
