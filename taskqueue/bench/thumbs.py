"""The ``thumbs`` scenario: real image work on photo-like sources (opt-in: ``--scenarios thumbs``).

Three measurements, all needing Pillow (without it the scenario is skipped
with a one-line note):

* rows ``thumbs`` at 50 and 100 clients: baseline vs engine vs stdlib pool
  making ``thumb_256`` and ``gray`` of photos of several sizes up to 24 MP
  (:func:`taskqueue.workload.photo_specs`: some stored sideways with an EXIF
  orientation, some PNG cut-outs with alpha), closed loop, no injected faults
  or duplicates; in the same table, JSON, CSV and SVG as the other scenarios;
* rows ``thumbs`` labelled ``engine-1w``, ``engine-2w``, ``engine-8w``: the
  engine making ``thumb_256`` only with 1, 2 and 8 workers
  (:data:`SCALING_WORKERS`), 16 clients: thumbnails per second, and the CPU
  cores the process used, which shows where adding threads stops helping;
* :func:`measure_run_rss`: the peak RSS of ``python3 task_queue_optimized.py
  run`` over a set of 24 MP photos with 1 and 8 workers, and over a single
  gzip task (the process floor), read from the kernel's accounting of each
  run (:mod:`.peakrss`).

The photos are generated at benchmark time from the seed (a few distinct
ones; every task key is a hard link to one of them, so 100 sources cost the
disk of 12) and deleted with the benchmark's temporary directory.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import tempfile

from .. import workload
from ..objectstore import LocalObjectStore
from . import peakrss
from .impls import REPO_ROOT
from .scenarios import row_spec

NAME = "thumbs"
VARIANTS = ("thumb_256", "gray")
SCALING_VARIANT = "thumb_256"
SCALING_WORKERS = (1, 2, 8)
SCALING_CLIENTS = 16            # enough closed-loop clients to keep 8 workers busy
SCALING_TASKS, QUICK_SCALING_TASKS = 100, 12
PHOTOS, QUICK_PHOTOS = 12, 5    # distinct photos behind the task keys
QUICK_SIZES = tuple(size for size in workload.PHOTO_SIZES if size[0] * size[1] <= 2_000_000)
WARMUP_TASKS = 2                # per row, on the smallest photo: real photos make warm-up costly
RSS_SIZE = workload.PHOTO_SIZES[0]   # 6000 x 4000, 24 MP
RSS_KEYS, RSS_WORKERS = 8, (1, 8)
_SCALING_LABEL = re.compile(r"engine-(\d+)w")


def available() -> bool:
    """Whether Pillow is importable (the scenario needs it)."""
    try:
        import PIL.Image  # noqa: F401
    except ImportError:
        return False
    return True


# -- rows ---------------------------------------------------------------------------------------

def specs(scenario, *, clients: list[int] | None, tasks: int | None, quick: bool, seed: int, repeat: int,
          record_outputs: bool = False) -> list[dict]:
    """Every row spec of one repeat: the three implementations at each client count, then the scaling rows.

    All of them share one set of sources (see :func:`sources_key`).
    """
    count = tasks or (scenario.quick_tasks if quick else scenario.tasks)
    scaling_count = tasks or (QUICK_SCALING_TASKS if quick else SCALING_TASKS)
    photos = {"count": QUICK_PHOTOS if quick else PHOTOS,
              "sizes": [list(size) for size in (QUICK_SIZES if quick else workload.PHOTO_SIZES)],
              "slots": max(math.ceil(count / len(VARIANTS)), scaling_count)}
    extra = {"photos": photos, "warmup_tasks": WARMUP_TASKS, "watchdog_s": 600.0}
    out = []
    for n in clients or scenario.clients:
        for impl, on_full in scenario.rows:
            spec = row_spec(scenario, impl, on_full, clients=n, tasks=count, seed=seed, repeat=repeat,
                            record_outputs=record_outputs)
            out.append({**spec, **extra, "variant": list(VARIANTS)})
    for workers in SCALING_WORKERS:
        spec = row_spec(scenario, "engine", "block", clients=SCALING_CLIENTS, tasks=scaling_count, seed=seed,
                        repeat=repeat, record_outputs=record_outputs)
        out.append({**spec, **extra, "label": f"engine-{workers}w", "workers": workers,
                    "variant": [SCALING_VARIANT]})
    return out


def _photos(spec: dict) -> list[dict]:
    return workload.photo_specs(spec["photos"]["count"], seed=spec["seed"],
                                sizes=[tuple(size) for size in spec["photos"]["sizes"]])


def _slot_key(seed: int, slot: int, photo: dict) -> str:
    return f"thumbs/s{seed}/{slot:04d}/{photo['key'].rsplit('/', 1)[1]}"


def _warm_key(seed: int, index: int, photo: dict) -> str:
    return f"warmup/s{seed}/{index:03d}/{photo['key'].rsplit('/', 1)[1]}"


def task_lists(spec: dict) -> tuple[list[dict], list[dict]]:
    """The row's timed and warm-up task dicts: task i makes variant i mod V of slot i div V.

    Slot ``j`` is a key of its own (so every task has its own idempotency key)
    holding photo ``j mod count``, so sizes stay mixed throughout the run.
    """
    seed, photos, variants = spec["seed"], _photos(spec), spec["variant"]
    raw = [{"id": f"th{seed}-{i:05d}", "variant": variants[i % len(variants)],
            "image_key": _slot_key(seed, i // len(variants), photos[(i // len(variants)) % len(photos)])}
           for i in range(spec["tasks"])]
    smallest = min(photos, key=lambda p: p["width"] * p["height"])
    warm = [{"id": f"th{seed}-w{i:03d}", "variant": variants[i % len(variants)],
             "image_key": _warm_key(seed, i, smallest)} for i in range(spec["warmup_tasks"])]
    return raw, warm


def sources_key(spec: dict) -> str:
    """Rows with equal keys read the same sources: the photos and the slots, whatever their tasks."""
    return json.dumps(["photos", spec["seed"], spec["photos"], spec["warmup_tasks"]])


def prepare_sources(root: str, spec: dict) -> int:
    """Write the distinct photos under ``root`` and hard-link every slot and warm-up key to one; return
    how many source keys exist. Set-up, not the measured work: no fsync.

    The photos are drawn in a child process: a 24 MP image costs this process
    hundreds of MiB of peak RSS otherwise, and a process's peak RSS is passed
    on to every child it starts (Linux counts the parent's memory image a
    child replaces at exec), so every later row would report it as its own.
    """
    store = LocalObjectStore(root, fsync=False)
    seed, photos = spec["seed"], _photos(spec)
    _write_photos_in_a_child(root, photos, seed)
    smallest = min(photos, key=lambda p: p["width"] * p["height"])
    links = [(_slot_key(seed, j, photos[j % len(photos)]), photos[j % len(photos)])
             for j in range(spec["photos"]["slots"])]
    links += [(_warm_key(seed, i, smallest), smallest) for i in range(spec["warmup_tasks"])]
    for key, photo in links:
        _link(store.path_for(photo["key"]), os.path.join(store.root, *key.split("/")))
    return len(links)


def _link(source: str, destination: str) -> None:
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)


# -- peak RSS of `run` ----------------------------------------------------------------------------

def measure_run_rss(*, seed: int, quick: bool, progress: bool = False) -> dict:
    """Peak RSS of ``task_queue_optimized.py run`` over 24 MP photos with 1 and 8 workers, and its floor.

    The task file makes ``thumb_256`` and ``gray`` of :data:`RSS_KEYS` keys,
    hard links to two distinct 6000x4000 JPEGs (one stored sideways with EXIF
    orientation 6): 16 tasks, so 8 workers decode 8 photos at once. Each run
    starts from an empty database and store; the floor is the same command
    over one small gzip task. ``quick`` uses 1600x1200 photos (a smoke run,
    not a measurement). Blocks for the runs (seconds each).
    """
    if not peakrss.available():
        return {"skipped": "os.wait4 is not available on this platform"}
    size = workload.PHOTO_SIZES[3] if quick else RSS_SIZE
    photos = workload.photo_specs(2, seed=seed, sizes=[size], alpha=False)
    keys = [(f"rss/{i:02d}/{photos[i % 2]['key'].rsplit('/', 1)[1]}", photos[i % 2]) for i in range(RSS_KEYS)]
    tasks = [{"id": f"rss-{i:02d}-{variant}", "image_key": key, "variant": variant}
             for i, (key, _) in enumerate(keys) for variant in VARIANTS]
    runs = []
    with tempfile.TemporaryDirectory(prefix="tq-bench-rss-") as workdir:
        originals = LocalObjectStore(os.path.join(workdir, "originals"), fsync=False)
        _write_photos_in_a_child(originals.root, photos, seed)
        plan = [("floor", 1, [{"id": "floor", "image_key": "floor.txt", "variant": "gzip"}])]
        plan += [("photos", workers, tasks) for workers in RSS_WORKERS]
        for index, (kind, workers, task_list) in enumerate(plan):
            run_dir = os.path.join(workdir, f"run-{index}")
            store = LocalObjectStore(os.path.join(run_dir, "store"), fsync=False)
            if kind == "floor":
                store.write("floor.txt", [b"a small source\n" * 64])
            for key, photo in keys if kind == "photos" else ():
                _link(originals.path_for(photo["key"]), os.path.join(store.root, *key.split("/")))
            with open(os.path.join(run_dir, "tasks.json"), "w", encoding="utf-8") as f:
                json.dump(task_list, f)
            if progress:
                print(f"[rss] run over {len(task_list)} task(s), {workers} worker(s)", end="",
                      file=sys.stderr, flush=True)
            runs.append({"kind": kind, "workers": workers, "tasks": len(task_list),
                         **_run_and_measure(run_dir, workers)})
            if progress:
                print(f"  {runs[-1]['wall_s']:5.2f} s", file=sys.stderr)
    floor = runs[0]["peak_rss_kib"]
    by_workers = {run["workers"]: run["peak_rss_kib"] for run in runs[1:]}
    one, eight = by_workers.get(1), by_workers.get(8)
    return {
        "photos": f"{RSS_KEYS} keys, hard links to 2 distinct {size[0]}x{size[1]} JPEGs "
                  f"(one with EXIF orientation 6)", "variants": list(VARIANTS), "quick": quick,
        "runs": runs, "floor_kib": floor,
        "per_worker_kib": (eight - floor) / 8 if eight and floor else None,
        "marginal_per_worker_kib": (eight - one) / 7 if eight and one else None,
    }


def _run_and_measure(run_dir: str, workers: int) -> dict:
    """Run ``run`` in ``run_dir``, measured by :mod:`.peakrss`; its wall time and peak RSS. Raises
    RuntimeError if it fails."""
    cmd = [sys.executable, str(REPO_ROOT / "task_queue_optimized.py"), "run", "--tasks", "tasks.json",
           "--db", "tasks.db", "--store", "store", "--workers", str(workers)]
    log = os.path.join(run_dir, "run.log")
    result = peakrss.measure(cmd, log=log, cwd=run_dir)
    if result["exit"] != 0:
        with open(log, encoding="utf-8", errors="replace") as f:
            tail = f.read()[-2000:]
        raise RuntimeError(f"`run` with {workers} worker(s) exited with {result['exit']}:\n{tail}")
    return {"peak_rss_kib": result["peak_rss_kib"], "wall_s": result["wall_s"]}


def _write_photos_in_a_child(root: str, photos: list[dict], seed: int) -> None:
    peakrss.python_module(__name__, [root, str(seed), json.dumps(photos)])


def main(argv: list[str]) -> int:
    """``ROOT SEED PHOTOS_JSON``: write the photos (see :func:`prepare_sources`); prints one line of JSON."""
    if len(argv) != 3:
        print("usage: python -m taskqueue.bench.thumbs ROOT SEED PHOTOS_JSON", file=sys.stderr)
        return 2
    store = LocalObjectStore(argv[0], fsync=False)
    written = [workload.write_photo(store, photo, seed=int(argv[1])) for photo in json.loads(argv[2])]
    print(json.dumps({"bytes": sum(written)}))
    return 0


# -- report ---------------------------------------------------------------------------------------

def summary(rows: list[dict], probe: dict | None) -> dict:
    """The JSON report's ``thumbs`` section: scaling (thumbnails/s per worker count) and the RSS probe."""
    scaling = sorted((r for r in rows if r["scenario"] == NAME and _SCALING_LABEL.fullmatch(r["label"])),
                     key=lambda r: _workers(r["label"]))
    base = scaling[0]["throughput_per_s"] if scaling else None
    return {
        "scaling": [{"workers": _workers(r["label"]), "thumbnails_per_s": r["throughput_per_s"],
                     "speedup_vs_1": r["throughput_per_s"] / base if base else None,
                     "cpu_cores": r["cpu_cores"], "tasks": r["tasks"], "clients": r["clients"],
                     "spread": r["spread"]["throughput_per_s"]} for r in scaling],
        "rss": probe,
    }


def _workers(label: str) -> int:
    """``engine-8w`` -> 8."""
    return int(_SCALING_LABEL.fullmatch(label).group(1))


def render(section: dict) -> str:
    """Text for the terminal: the scaling table and the RSS probe; '' when neither ran."""
    lines = []
    if section["scaling"]:
        first = section["scaling"][0]
        lines.append(f"thumbs scaling: engine, {SCALING_VARIANT} only, {first['clients']} clients, "
                     f"{first['tasks']} tasks (medians over repeats)")
        lines.append(f"{'workers':>8}{'thumbnails/s':>14}{'vs 1 worker':>13}{'CPU cores used':>16}")
        for s in section["scaling"]:
            lines.append(f"{s['workers']:>8}{s['thumbnails_per_s']:>14.1f}{s['speedup_vs_1']:>12.2f}x"
                         f"{s['cpu_cores']:>16.2f}")
        lines.append(f"CPU cores used: process CPU time / wall; this machine has {os.cpu_count()} cores. "
                     f"Pillow releases the GIL while it decodes, resizes and encodes.")
    probe = section["rss"]
    if probe and "skipped" in probe:
        lines.append(f"peak RSS of `run`: skipped ({probe['skipped']})")
    elif probe:
        parts = [f"{r['workers']} worker{'s' if r['workers'] > 1 else ''} {r['peak_rss_kib'] / 1024:.1f} MiB "
                 f"({r['wall_s']:.1f} s)" for r in probe["runs"] if r["kind"] == "photos"]
        quick = " [quick: smaller photos, not a measurement]" if probe["quick"] else ""
        lines.append(f"peak RSS of `task_queue_optimized.py run` over {probe['photos']}, "
                     f"{' + '.join(probe['variants'])}{quick}:")
        lines.append(f"  floor (one gzip task) {probe['floor_kib'] / 1024:.1f} MiB; " + "; ".join(parts))
        if probe["per_worker_kib"] is not None:
            lines.append(f"  per worker at 8 workers: (peak - floor) / 8 = "
                         f"{probe['per_worker_kib'] / 1024:.1f} MiB; each worker beyond the first: "
                         f"(peak 8 - peak 1) / 7 = {probe['marginal_per_worker_kib'] / 1024:.1f} MiB")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
