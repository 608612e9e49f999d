"""Which rows a benchmark run makes: scenarios x client counts x implementations, how long, how often.

Rows run repeat-major -- every row of repeat 1, then of repeat 2 -- so a noisy
moment on the machine spreads over the implementations instead of landing on
one of them. With ``--full`` a warm-up round of the timed rows runs first,
flagged ``"warmup"``: the report keeps it apart from the medians.
"""

from __future__ import annotations

import argparse
import os

from . import runner, thumbs
from .scenarios import ALL_SCENARIOS, row_spec

DEFAULT_REPEAT = 3
FULL_REPEAT = 5        # --full: repeats of the timed (io, overhead) rows, and of thumbs
FULL_DURATION_S = 8.0  # --full: how long each of them runs
# --full: rounds of the timed rows run first and kept out of the medians. This machine's shared disk
# syncs faster after a pause: the first 8-s io rows after ~2 minutes of quiet ran ~10 % faster than
# the ones after them, for the engine and the pool alike, then steadied (measured three times, once
# across a 2-minute pause in the middle of a series, which made the next round fast again).
FULL_WARMUP = 1


def repeats(args: argparse.Namespace, scenario) -> int:
    """Runs of each row of ``scenario``: ``--repeat``, else 1 with --quick, else the scenario's default.

    With --full, FULL_REPEAT for the timed rows and for thumbs: thumbs' target (the engine at 0.97x
    the pool) is closer than a 200-task row's noise, and over five runs of 3 repeats its ratio at
    100 clients ranged 0.96-1.03x.
    """
    measured = duration(args, scenario) or scenario.name == thumbs.NAME
    full = FULL_REPEAT if getattr(args, "full", False) and measured else DEFAULT_REPEAT
    return args.repeat or (1 if args.quick else scenario.repeat or full)


def duration(args: argparse.Namespace, scenario) -> float | None:
    """Seconds each row of ``scenario`` runs, or None for a fixed number of tasks."""
    if scenario.duration_s is None or args.quick or args.tasks:
        return None
    if getattr(args, "duration", None):
        return args.duration
    return FULL_DURATION_S if getattr(args, "full", False) else scenario.duration_s


def warmups(args: argparse.Namespace) -> int:
    """Warm-up rounds of the timed rows: ``--warmup``, else 1 with --full, else 0 (none with --quick)."""
    if args.quick or args.tasks:
        return 0
    if getattr(args, "warmup", None) is not None:
        return args.warmup
    return FULL_WARMUP if getattr(args, "full", False) else 0


def plan(args: argparse.Namespace) -> list[dict]:
    """Every row spec to run: the warm-up rounds of the timed rows (``"warmup": True``), then the
    measured ones, repeat-major (a scenario with fewer repeats drops out of later rounds)."""
    specs = []
    for index in range(warmups(args)):
        for name in args.scenarios:
            if name != thumbs.NAME and duration(args, ALL_SCENARIOS[name]) is not None:
                specs += [{**spec, "warmup": True} for spec in _round(args, name, index)]
    for index in range(max(repeats(args, ALL_SCENARIOS[name]) for name in args.scenarios)):
        for name in args.scenarios:
            if index < repeats(args, ALL_SCENARIOS[name]):
                specs += _round(args, name, index)
    return specs


def _round(args: argparse.Namespace, name: str, index: int) -> list[dict]:
    """The row specs of scenario ``name`` in round ``index``: every size, client count and implementation."""
    scenario = ALL_SCENARIOS[name]
    if name == thumbs.NAME:
        return thumbs.specs(scenario, clients=args.clients, tasks=args.tasks, quick=args.quick,
                            seed=args.seed, repeat=index, record_outputs=args.record_outputs)
    seconds = duration(args, scenario)
    full = getattr(args, "full", False)
    sizes = [(args.tasks, scenario.rows)] if args.tasks else scenario.sizes(args.quick, seconds, full)
    return [row_spec(scenario, impl, on_full, clients=clients, tasks=tasks, seed=args.seed, repeat=index,
                     record_outputs=args.record_outputs, duration_s=seconds)
            for tasks, rows in sizes for clients in args.clients or scenario.clients for impl, on_full in rows]


def prepare_sources(specs: list[dict], cache_dir: str) -> None:
    """Make each distinct set of source objects once under ``cache_dir``; point the specs at it.

    Every row then hard-links (or copies) its set into its own fresh directory:
    the rows of a scenario read byte-identical sources without each paying to
    generate them.
    """
    made: dict[str, str] = {}
    for spec in specs:
        key = runner.sources_key(spec)
        if key not in made:
            made[key] = os.path.join(cache_dir, f"sources-{len(made)}")
            runner.prepare_sources(made[key], spec)
        spec["sources_dir"] = made[key]
