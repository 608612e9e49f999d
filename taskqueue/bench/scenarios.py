"""The benchmark's scenarios and the rows each one runs.

A *row* is one implementation under one load: a plain JSON-serialisable dict
(:func:`row_spec`) that :mod:`taskqueue.bench.runner` executes in a fresh
process. Every row of a scenario gets the same task list, the same source
objects and the same fault seed, so the implementations do identical work.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

WORKERS = 8          # the engine's default, the baseline's default, and the stdlib pool's size
QUEUE_SIZE = 128     # the engine's default bound
WARMUP_TASKS = 16    # per row, on separate keys, before the timed phase
VARIANT = "gzip"     # standard library only, so the benchmark runs without Pillow

# (implementation, backpressure mode); "-" where the implementation has no bound.
CLOSED_ROWS = (("baseline", "-"), ("engine", "block"), ("stdlib", "-"))
BURST_ROWS = (("baseline", "-"), ("engine", "block"), ("engine", "reject"), ("stdlib", "-"))
PROBE_ROWS = CLOSED_ROWS  # at a scenario's second, smaller size: only what the memory slope needs


@dataclass(frozen=True)
class Scenario:
    """One load shape: the work each task does, the faults injected, how clients submit."""

    name: str
    description: str
    open_loop: bool               # True: clients submit everything, then wait (burst)
    latency_s: float              # injected processor latency per attempt
    jitter_s: float               # plus uniform(0, jitter_s)
    transient_rate: float
    permanent_rate: float
    duplicate_fraction: float
    tasks: int                    # default tasks per row
    quick_tasks: int              # tasks per row with --quick
    clients: tuple[int, ...]      # default client counts
    retry_base_s: float = 0.005   # engine backoff: small, so retries fit a short run
    retry_cap_s: float = 0.05
    max_attempts: int = 3
    repeat: int | None = None     # default repeats of this scenario (None: the CLI's default)
    probe_tasks: int | None = None        # a second, smaller size (PROBE_ROWS), for growth per task
    quick_probe_tasks: int | None = None  # the same with --quick
    full_tasks: int | None = None         # --full: the larger size instead of `tasks`
    full_probe_tasks: int | None = None   # --full: the smaller size instead of `probe_tasks`
    duration_s: float | None = None       # closed loop: every row runs this long (None: until `tasks` are done)
    max_rate: int = 0                     # tasks/s no implementation reaches here: sizes a timed row's list

    def timed_tasks(self, duration_s: float) -> int:
        """Tasks in the list of a row that runs ``duration_s``: more than the fastest can take."""
        return max(self.tasks, int(self.max_rate * duration_s))

    @property
    def rows(self) -> tuple[tuple[str, str], ...]:
        return BURST_ROWS if self.open_loop else CLOSED_ROWS

    def sizes(self, quick: bool, duration_s: float | None = None,
              full: bool = False) -> list[tuple[int, tuple[tuple[str, str], ...]]]:
        """``(tasks, rows)`` to run by default, smaller size first (a timed row: its list's size)."""
        main = (self.quick_tasks if quick else self.timed_tasks(duration_s) if duration_s
                else (full and self.full_tasks) or self.tasks)
        probe = self.quick_probe_tasks if quick else (full and self.full_probe_tasks) or self.probe_tasks
        return ([(probe, PROBE_ROWS)] if probe else []) + [(main, self.rows)]

    def describe(self) -> dict:
        return asdict(self)


# io and overhead rows run for a fixed time (duration_s; --full makes it longer and repeats
# more), each implementation going as far down the same seeded task stream as it can: the
# fast ones get enough tasks for a stable figure, and the baseline -- one task at a time,
# ~7 ms each in io, ~2 ms in overhead on a local SSD with fsync -- does not stretch the run.
# Their lists hold max_rate tasks per second of the row (more than any implementation
# completes here). The whole default run has to finish in about two minutes.
#
# burst runs at two sizes, 1000 and 4000 tasks, because "RSS flat while the
# baseline's grows" is a statement about growth *per task*: each row's RSS
# growth contains fixed costs that do not depend on the task count (client
# thread stacks, 8 concurrent zlib streams, allocator arenas), and only the
# difference between two sizes cancels them (see verdict.py). 4000 tasks is
# what fits the time budget (the baseline and the engine each take ~7-9 s
# at this size on 2 cores, and making its sources ~4 s). For the same reason
# burst runs once by default (repeat=1) instead of three times, so its rows
# are single runs with no spread: their throughput and latency are
# indicative, their RSS figures one sample each, and RSS is noisy too (over
# runs on the development machine the engine's growth at 1000 tasks ranged
# ~5-10 MiB, the baseline's ~0.2-2 MiB). ``--repeat N`` repeats burst too.
# At these sizes the engine's bounded caches are still filling (its growth per 1000 tasks
# measured on the development machine: +0.30 MiB from 1000 to 4000 tasks, +0.08 from 4000 to
# 12000, +0.03 from 12000 to 24000; the baseline's +0.37 from 4000 to 12000), so --full runs
# burst at 4000 and 16000 tasks instead: the slope there is what a further task costs.
SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("io", "processor latency 5 ms + up to 1 ms jitter, 2 % transient and 0.5 % permanent "
                   "faults, 10 % duplicate keys; closed loop",
             open_loop=False, latency_s=0.005, jitter_s=0.001, transient_rate=0.02,
             permanent_rate=0.005, duplicate_fraction=0.10, tasks=400, quick_tasks=60,
             clients=(50, 100), duration_s=1.5, max_rate=1100),
    Scenario("overhead", "no injected latency, no faults, no duplicates: what the queue itself "
                         "costs around real gzip + fsync work; closed loop",
             open_loop=False, latency_s=0.0, jitter_s=0.0, transient_rate=0.0, permanent_rate=0.0,
             duplicate_fraction=0.0, tasks=600, quick_tasks=80, clients=(50, 100), duration_s=1.5,
             max_rate=1300),
    Scenario("burst", "open loop: every client submits all its tasks without waiting, then waits "
                      "for them all; no injected latency or faults",
             open_loop=True, latency_s=0.0, jitter_s=0.0, transient_rate=0.0, permanent_rate=0.0,
             duplicate_fraction=0.0, tasks=4000, quick_tasks=150, clients=(100,),
             repeat=1, probe_tasks=1000, quick_probe_tasks=50, full_tasks=16000, full_probe_tasks=4000),
)}


def row_label(impl: str, on_full: str) -> str:
    """``baseline``, ``engine``, ``engine-reject`` or ``stdlib``."""
    return f"{impl}-reject" if on_full == "reject" else impl


def row_spec(scenario: Scenario, impl: str, on_full: str, *, clients: int, tasks: int, seed: int,
             repeat: int, record_outputs: bool = False, duration_s: float | None = None) -> dict:
    """Everything the runner needs for one row, as plain JSON data."""
    return {
        "scenario": scenario.name, "impl": impl, "on_full": on_full,
        "label": row_label(impl, on_full), "clients": clients, "tasks": tasks, "seed": seed,
        "repeat": repeat, "open_loop": scenario.open_loop, "variant": VARIANT,
        "latency_s": scenario.latency_s, "jitter_s": scenario.jitter_s,
        "transient_rate": scenario.transient_rate, "permanent_rate": scenario.permanent_rate,
        "duplicate_fraction": scenario.duplicate_fraction, "workers": WORKERS,
        "queue_size": QUEUE_SIZE, "retry_base_s": scenario.retry_base_s,
        "retry_cap_s": scenario.retry_cap_s, "max_attempts": scenario.max_attempts,
        "warmup_tasks": WARMUP_TASKS, "record_outputs": record_outputs, "duration_s": duration_s,
        # The runner dumps its threads' stacks and exits if the row takes longer than this.
        "watchdog_s": 60.0 + 0.05 * tasks,
    }


# Opt-in scenarios (``--scenarios thumbs`` or ``all``), outside SCENARIOS so the default run keeps
# its two minutes. thumbs is real image work (thumb_256 and gray of photo-like sources up to
# 24 MP) and needs Pillow; its rows, the worker-scaling rows and the RSS probe come from
# taskqueue/bench/thumbs.py.
OPT_IN_SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("thumbs", "thumb_256 and gray of photo-like sources (0.5-24 MP, some with EXIF orientation, "
                       "some PNG with alpha); no injected latency, faults or duplicates; closed loop; "
                       "needs Pillow",
             open_loop=False, latency_s=0.0, jitter_s=0.0, transient_rate=0.0, permanent_rate=0.0,
             duplicate_fraction=0.0, tasks=200, quick_tasks=24, clients=(50, 100)),
)}
ALL_SCENARIOS: dict[str, Scenario] = {**SCENARIOS, **OPT_IN_SCENARIOS}
