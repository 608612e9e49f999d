"""Scale-out benchmark: ``worker`` throughput with 1, 2 and 4 processes, on SQLite and on PostgreSQL.

    python -m taskqueue.bench.scaleout [--workloads gzip,thumbs] [--processes 1,2,4] [--repeat 3]

For each workload, backend and process count: a fresh database, the task file
enqueued once (``enqueue``, not timed), then N ``worker --exit-when-idle``
processes started together; throughput = tasks / wall time from their start
to the last one's exit (process start-up included: a worker is a process).
Every process runs ``--workers`` threads (default 4). PostgreSQL is a real
server this module starts in a temporary directory (default settings, fsync
on), or ``--postgres URL``. ``thumbs`` needs Pillow and is skipped without it.
Writes ``reports/scaleout.json`` and prints a table of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from .. import workload
from ..objectstore import LocalObjectStore
from . import thumbs
from .impls import REPO_ROOT

ENTRY = REPO_ROOT / "task_queue_optimized.py"
GZIP_TASKS, THUMB_TASKS = 2000, 240


def _tasks(name: str, root: str, seed: int) -> list[dict]:
    """The workload's task dicts, with their sources written under ``root`` (not timed)."""
    if name == "gzip":
        items = workload.generate_tasks(GZIP_TASKS, seed=seed, variants="gzip", duplicate_fraction=0.0)
        workload.create_sources(LocalObjectStore(root, fsync=False), items, seed=seed)
        return items
    spec = {"seed": seed, "tasks": THUMB_TASKS, "warmup_tasks": 0, "variant": list(thumbs.VARIANTS),
            "photos": {"count": thumbs.PHOTOS, "sizes": [list(s) for s in workload.PHOTO_SIZES],
                       "slots": THUMB_TASKS // len(thumbs.VARIANTS)}}
    thumbs.prepare_sources(root, spec)
    return thumbs.task_lists(spec)[0]


def _env(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQ_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["TQ_WORKERS"] = str(threads)
    return env


def run_once(db: str, store: str, task_file: str, processes: int, threads: int, tasks: int) -> dict:
    """Enqueue, then time ``processes`` workers draining the queue. Returns the measurements."""
    env = _env(threads)
    subprocess.run([sys.executable, str(ENTRY), "enqueue", "--tasks", task_file, "--db", db], env=env,
                   check=True, capture_output=True, timeout=600)
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, str(ENTRY), "worker", "--db", db, "--store", store,
                               "--exit-when-idle"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(processes)]
    outputs = [p.communicate(timeout=3600) for p in procs]
    wall = time.perf_counter() - started
    failed = [err[-800:] for p, (_out, err) in zip(procs, outputs) if p.returncode != 0]
    if failed:
        raise RuntimeError(f"a worker failed: {failed[0]}")
    claimed = [int(out.split("claimed ")[1].split(",")[0]) for out, _err in outputs]
    return {"wall_s": wall, "tasks_per_s": tasks / wall, "claimed_per_process": claimed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m taskqueue.bench.scaleout", description=__doc__.split("\n")[0])
    p.add_argument("--workloads", default="gzip,thumbs")
    p.add_argument("--backends", default="sqlite,postgres")
    p.add_argument("--processes", default="1,2,4")
    p.add_argument("--threads", type=int, default=4, help="worker threads per process (default 4)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--postgres", help="a postgresql:// URL to use instead of starting a server")
    p.add_argument("--out", default="reports/scaleout.json")
    args = p.parse_args(argv)
    workloads = [w for w in args.workloads.split(",") if w]
    if "thumbs" in workloads and not thumbs.available():
        print("thumbs: skipped: Pillow is not installed (pip install pillow)")
        workloads.remove("thumbs")
    backends = [b for b in args.backends.split(",") if b]
    counts = [int(n) for n in args.processes.split(",")]
    server = None
    if "postgres" in backends and not args.postgres:
        from . import pgserver
        why = pgserver.unavailable()
        if why:
            print(f"postgres: skipped: {why}")
            backends.remove("postgres")
        else:
            server = pgserver.PostgresServer(fsync=True)
    runs = []
    try:
        with tempfile.TemporaryDirectory(prefix="tq-scaleout-") as scratch:
            for name in workloads:
                sources = os.path.join(scratch, f"{name}-sources")
                items = _tasks(name, sources, args.seed)
                task_file = os.path.join(scratch, f"{name}.json")
                with open(task_file, "w", encoding="utf-8") as f:
                    json.dump(items, f)
                for repeat in range(args.repeat):
                    for backend in backends:
                        for n in counts:
                            run_dir = tempfile.mkdtemp(dir=scratch)
                            store = os.path.join(run_dir, "store")
                            subprocess.run(["cp", "-al", sources, store], check=True)  # hard links: sources only
                            if backend == "postgres":
                                db = server.new_database() if server else args.postgres
                            else:
                                db = os.path.join(run_dir, "tasks.db")
                            result = run_once(db, store, task_file, n, args.threads, len(items))
                            runs.append({"workload": name, "backend": backend, "processes": n,
                                         "threads": args.threads, "repeat": repeat, "tasks": len(items), **result})
                            print(f"{name:7} {backend:9} {n} process(es) x {args.threads} threads: "
                                  f"{result['tasks_per_s']:8.1f} tasks/s  ({result['wall_s']:.1f} s, "
                                  f"claimed {result['claimed_per_process']})", flush=True)
    finally:
        if server is not None:
            server.stop()
    rows = []
    for key in sorted({(r["workload"], r["backend"], r["processes"]) for r in runs}):
        group = [r["tasks_per_s"] for r in runs if (r["workload"], r["backend"], r["processes"]) == key]
        rows.append({"workload": key[0], "backend": key[1], "processes": key[2], "runs": len(group),
                     "tasks_per_s": statistics.median(group), "min": min(group), "max": max(group)})
    print("\nmedians (tasks/s, min-max):")
    for r in rows:
        print(f"  {r['workload']:7} {r['backend']:9} {r['processes']} process(es): {r['tasks_per_s']:8.1f} "
              f"({r['min']:.0f}-{r['max']:.0f})")
    doc = {"command": " ".join(["python -m taskqueue.bench.scaleout", *(argv if argv is not None else sys.argv[1:])]),
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
           "threads_per_process": args.threads, "rows": rows, "runs": runs}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
