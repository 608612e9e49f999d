"""Command line of the benchmark: plan the rows (:mod:`.plan`), run each in a fresh process, report.

Rows run one at a time (never two at once: they would share the cores), in
the plan's repeat-major order.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

from . import report, svg, thumbs, verdict
from .impls import REPO_ROOT
from .plan import DEFAULT_REPEAT, FULL_DURATION_S, FULL_REPEAT, FULL_WARMUP, plan, prepare_sources
from .scenarios import ALL_SCENARIOS, QUEUE_SIZE, SCENARIOS, VARIANT, WARMUP_TASKS, WORKERS

DEFAULT_SEED = 42
ROW_TIMEOUT_GRACE_S = 30.0  # beyond the runner's own watchdog: guards against a hung interpreter


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers greater than 0, got {text!r}")
    return values


def _positive_int(text: str) -> int:
    values = _positive_ints(text)
    if len(values) != 1 or "," in text:
        raise argparse.ArgumentTypeError(f"expected one integer greater than 0, got {text!r}")
    return values[0]


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of rounds, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more rounds, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds greater than 0, got {text!r}")
    return value


def _scenario_names(text: str) -> list[str]:
    if text.strip() == "all":
        return list(ALL_SCENARIOS)
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in ALL_SCENARIOS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown scenario {unknown[0] if unknown else text!r} "
                                         f"(known: {', '.join(ALL_SCENARIOS)})")
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmark.py",
        description="Closed- and open-loop load on the baseline, the engine and a plain "
                    "ThreadPoolExecutor; prints a table and the requirements' verdict and writes "
                    "benchmark.json, benchmark.csv and benchmark.svg.")
    p.add_argument("--scenarios", type=_scenario_names, default=list(SCENARIOS),
                   help=f"comma-separated subset of {','.join(ALL_SCENARIOS)}, or all (default: "
                        f"{','.join(SCENARIOS)}; thumbs is opt-in: real image work, needs Pillow)")
    p.add_argument("--clients", type=_positive_ints, default=None,
                   help="comma-separated client counts for every scenario "
                        "(default: 50,100 for io and overhead, 100 for burst)")
    p.add_argument("--tasks", type=_positive_int, default=None,
                   help="tasks per row for every scenario, one size only (default: io 400, overhead "
                        "600, burst 1000 and 4000; burst's memory-growth target needs two sizes)")
    p.add_argument("--repeat", type=_positive_int, default=None,
                   help=f"runs of each row; the report gives medians and min-max (default "
                        f"{DEFAULT_REPEAT}, burst 1)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"seed of tasks, sources, faults and backoff jitter (default {DEFAULT_SEED})")
    p.add_argument("--out", default=None,
                   help="directory for the report files (default reports/ with --full, the run the README "
                        "quotes; else reports/last-run/, so a short run never replaces it)")
    p.add_argument("--duration", type=_positive_float, default=None,
                   help="seconds each io and overhead row runs over its task stream (default 1.5; with "
                        f"--full {FULL_DURATION_S:g}); ignored with --tasks or --quick")
    p.add_argument("--full", action="store_true",
                   help=f"the run the README quotes: io and overhead rows run {FULL_DURATION_S:g} s and "
                        f"{FULL_REPEAT} times each after {FULL_WARMUP} warm-up round, burst at 4000 and 16000 "
                        f"tasks, thumbs {FULL_REPEAT} times (about 14 minutes; 20 with thumbs)")
    p.add_argument("--warmup", type=_non_negative_int, default=None,
                   help=f"rounds of the timed (io, overhead) rows run first and reported apart, not in "
                        f"the medians (default 0; with --full {FULL_WARMUP}; ignored with --tasks or --quick)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes and one repeat: a smoke run of a few seconds, not a measurement")
    p.add_argument("--record-outputs", action="store_true",
                   help="keep every task's outcome and output SHA-256 in the JSON (to check same work)")
    return p


def run_spec(spec: dict, module: str = "taskqueue.bench.runner", options: tuple[str, ...] = ()) -> dict:
    """Run one row in a fresh interpreter (``python -m module *options <spec JSON>``, which prints
    its measurements as its last line of JSON); return them. Raises RuntimeError on failure."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", module, *options, json.dumps(spec)],
                          capture_output=True, text=True, env=env, cwd=str(REPO_ROOT),
                          timeout=spec["watchdog_s"] + ROW_TIMEOUT_GRACE_S)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-120:])
        raise RuntimeError(f"row {spec['scenario']}/{spec['clients']}/{spec['label']} exited with "
                           f"{proc.returncode}:\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _machine() -> dict:
    affinity = getattr(os, "sched_getaffinity", None)
    workdir = tempfile.gettempdir()
    return {"platform": platform.platform(), "python": platform.python_version(),
            "implementation": platform.python_implementation(), "cpus": os.cpu_count(),
            "cpus_available": len(affinity(0)) if affinity else os.cpu_count(),
            "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "workdir": workdir, "workdir_fs": filesystem_of(workdir)}


def filesystem_of(path: str, mounts: str = "/proc/mounts") -> str | None:
    """The type of the filesystem ``path`` is on (``ext4``, ``tmpfs``...), or None where it cannot be told.

    Every row's database and objects live under the temporary directory (``TMPDIR``): on a disk the
    fsyncs of the outputs are real work, and their latency is the disk's, so the report says which.
    """
    try:
        with open(mounts, encoding="utf-8", errors="replace") as f:
            table = [line.split()[1:3] for line in f if len(line.split()) >= 3]
    except OSError:
        return None
    real = os.path.realpath(path)
    best, kind = "", None
    for point, fstype in table:  # the longest mount point holding the path; of equal ones, the last (on top)
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point)  # \040 is a space
        if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, fstype
    return kind


def _settings(args: argparse.Namespace, specs: list[dict]) -> dict:
    warm = [s["repeat"] for s in specs if s.get("warmup")]
    specs = [s for s in specs if not s.get("warmup")]
    return {"seed": args.seed, "repeat": max(s["repeat"] for s in specs) + 1, "quick": args.quick,
            "warmup_rounds": max(warm) + 1 if warm else 0,  # as planned (none where no row is timed)
            "workers": WORKERS, "queue_size": QUEUE_SIZE, "warmup_tasks": WARMUP_TASKS,
            "variant": VARIANT, "fsync_outputs": True,
            "scenarios": {name: {**ALL_SCENARIOS[name].describe(),
                                 "clients_run": sorted({s["clients"] for s in specs if s["scenario"] == name}),
                                 "tasks_run": sorted({s["tasks"] for s in specs if s["scenario"] == name}),
                                 "repeat_run": max(s["repeat"] for s in specs if s["scenario"] == name) + 1}
                          for name in args.scenarios}}


def _repeats_text(settings: dict) -> str:
    """``3 repeat(s)``, or ``3 repeat(s), burst 1`` when a scenario ran fewer."""
    fewer = [f"{name} {info['repeat_run']}" for name, info in settings["scenarios"].items()
             if info["repeat_run"] != settings["repeat"]]
    return f"{settings['repeat']} repeat(s)" + (f", {', '.join(fewer)}" if fewer else "")


def _run_all(specs: list[dict], progress: bool) -> tuple[list[dict], list[str]]:
    runs, failures = [], []
    for number, spec in enumerate(specs, 1):
        if progress:
            print(f"[{number:>3}/{len(specs)}] {spec['scenario']:<8} {spec['clients']:>4} clients "
                  f"{spec['tasks']:>5} tasks {spec['label']:<13} "
                  f"{'warm-up' if spec.get('warmup') else 'repeat'} {spec['repeat'] + 1}", end="",
                  file=sys.stderr, flush=True)
        row_began = time.perf_counter()
        try:
            runs.append(run_spec(spec))
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
            failures.append(str(exc))
            print(f"\nbenchmark: {exc}", file=sys.stderr)
        if progress:
            print(f"  {time.perf_counter() - row_began:5.2f} s", file=sys.stderr)
    return runs, failures


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every row ran (whatever the verdict), 1 if a row failed."""
    arg_list = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(arg_list)
    from .impls import BASELINE_PATH
    if not BASELINE_PATH.is_file():  # an installed package: the baseline ships only with a checkout
        print(f"error: the benchmark runs from a checkout of the project: the baseline it compares with, "
              f"{BASELINE_PATH}, is not there (an installed package does not ship it)", file=sys.stderr)
        return 2
    if thumbs.NAME in args.scenarios and not thumbs.available():
        print("thumbs: skipped: Pillow is not installed (pip install pillow)")
        args.scenarios = [name for name in args.scenarios if name != thumbs.NAME]
        if not args.scenarios:
            return 0
    specs = plan(args)
    progress = sys.stderr.isatty()
    machine = _machine()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tq-bench-sources-") as cache_dir:
        prepare_sources(specs, cache_dir)
        runs, failures = _run_all(specs, progress)
    probe = None
    if thumbs.NAME in args.scenarios:
        try:
            probe = thumbs.measure_run_rss(seed=args.seed, quick=args.quick, progress=progress)
        except (RuntimeError, OSError, ValueError) as exc:
            failures.append(str(exc))
            print(f"\nbenchmark: peak RSS probe failed: {exc}", file=sys.stderr)
    wall = time.perf_counter() - began
    machine["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    warm = [run for run in runs if run.get("warmup")]
    rows = report.aggregate([run for run in runs if not run.get("warmup")])
    result = verdict.verdict(rows)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    command = shlex.join(["python3", "benchmark.py", *arg_list])
    settings = _settings(args, specs)
    doc = report.document(rows, verdict=result, settings=settings, machine=machine, wall_s=wall,
                          created=created, command=command)
    thumbs_section = thumbs.summary(rows, probe) if thumbs.NAME in args.scenarios else None
    if thumbs_section is not None:
        doc["thumbs"] = thumbs_section
    if warm:
        doc["warmup"] = report.aggregate(warm)
    if args.out is None:  # found in review: the default short run had overwritten the --full run's reports
        args.out = "reports" if args.full else os.path.join("reports", "last-run")
    os.makedirs(args.out, exist_ok=True)
    paths = {ext: os.path.join(args.out, f"benchmark.{ext}") for ext in ("json", "csv", "svg")}
    report.write_json(paths["json"], doc)
    report.write_text(paths["csv"], report.csv_text(rows))
    report.write_text(paths["svg"], svg.chart(
        rows, title="Task queue benchmark: baseline vs engine vs stdlib ThreadPoolExecutor",
        subtitle=f"{created}, {machine['cpus']} cores, Python {machine['python']}, "
                 f"medians of {_repeats_text(settings)}, seed {args.seed}"))

    warm_text = f" (and {len(warm)} warm-up runs)" if warm else ""
    print(f"Benchmark: {len(runs) - len(warm)} runs of {len(rows)} rows{warm_text} in {wall:.1f} s on {machine['cpus']} cores "
          f"(Python {machine['python']}, seed {args.seed}, {_repeats_text(settings)})")
    print(f"command: {command}")
    print(f"rows ran in {machine['workdir']} ({machine['workdir_fs'] or 'filesystem unknown'}; set TMPDIR to move them)\n")
    print(report.table(rows))
    if warm:
        print("\n" + report.warmup_line(doc["warmup"], settings["warmup_rounds"]))
    burst = report.burst_table(rows)
    if burst:
        print("\n" + burst)
    if thumbs_section is not None:
        print("\n" + thumbs.render(thumbs_section))
    print("\n" + verdict.render(result))
    print("\nwrote " + ", ".join(paths.values()))
    if failures:
        print(f"benchmark: {len(failures)} row(s) failed; see above", file=sys.stderr)
        return 1
    return 0
