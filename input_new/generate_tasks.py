"""Generate a deterministic task file and the source objects it names.

    python3 input_new/generate_tasks.py --count 1000 --out tasks.json --store store --seed 1
    python3 input_new/generate_tasks.py --count 2000 --out mix.json --store store \\
        --variants gzip=0.7,thumb_128=0.2,gray=0.1 --duplicates 0.1
    python3 input_new/generate_tasks.py --sources-for input_new/sample_tasks_small.json --store store

The same --seed gives the same task file and byte-identical sources (see
taskqueue/workload.py). Sources that already exist are left alone; image keys
under missing/ are never created. The task file is written atomically: a
temporary file in the same directory, renamed onto --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from taskqueue import workload  # noqa: E402  (needs the sys.path line above)
from taskqueue.objectstore import LocalObjectStore, atomic_write_text  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.sources_for and not args.out:
        parser.error("--out is required unless --sources-for is given")
    try:
        if args.sources_for:
            tasks = _read_tasks(args.sources_for)
        else:
            mix = workload.parse_variants(args.variants)
            tasks = workload.generate_tasks(args.count, seed=args.seed,
                                            duplicate_fraction=args.duplicates, variants=mix,
                                            images=False if args.no_images else None,
                                            missing_fraction=args.missing)
            _write_json_atomically(args.out, tasks)
            distinct = len({(t["image_key"], t["variant"]) for t in tasks})
            print(f"wrote {len(tasks)} tasks ({len(tasks) - distinct} duplicates) to {args.out}")
        store = LocalObjectStore(args.store, fsync=False)
        created = workload.create_sources(store, tasks, seed=args.seed,
                                          source_size=(args.min_size, args.max_size),
                                          images=False if args.no_images else None)
    except (ValueError, OSError) as exc:
        print(f"generate_tasks: error: {exc}", file=sys.stderr)
        return 2
    keys = {t.get("image_key") for t in tasks if isinstance(t, dict)}
    print(f"created {created} source objects under {store.root} "
          f"({len(keys)} distinct image keys; existing and missing/ keys left alone)")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True, help="object store directory for the sources")
    p.add_argument("--seed", type=int, default=42, help="seed of tasks and sources (default 42)")
    p.add_argument("--sources-for", metavar="TASKFILE",
                   help="only create the sources TASKFILE names (no task file is written)")
    p.add_argument("--count", type=int, default=1000, help="number of tasks (default 1000)")
    p.add_argument("--out", help="task file to write (JSON list)")
    p.add_argument("--duplicates", type=float, default=workload.DEFAULT_DUPLICATE_FRACTION,
                   metavar="FRACTION", help="share of tasks repeating an earlier key (default 0.1)")
    p.add_argument("--missing", type=float, default=0.0, metavar="FRACTION",
                   help="share of original tasks whose source is missing (default 0)")
    p.add_argument("--variants", default="gzip",
                   help="weighted mix, e.g. gzip=0.7,thumb_128=0.2,gray=0.1 (default gzip)")
    p.add_argument("--min-size", type=int, default=workload.DEFAULT_SOURCE_SIZE[0],
                   help="smallest byte source in bytes (default %(default)s)")
    p.add_argument("--max-size", type=int, default=workload.DEFAULT_SOURCE_SIZE[1],
                   help="largest byte source in bytes (default %(default)s)")
    p.add_argument("--no-images", action="store_true",
                   help="byte sources only (.txt keys, no Pillow needed)")
    return p


def _read_tasks(path: str) -> list:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict) and isinstance(data.get("tasks"), list):
        data = data["tasks"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of tasks, got {type(data).__name__}")
    return data


def _write_json_atomically(path: str, tasks: list[dict]) -> None:
    """One task per line, so a task file diffs and greps well."""
    atomic_write_text(path, "[\n" + ",\n".join(json.dumps(t, separators=(", ", ": ")) for t in tasks) + "\n]\n")


if __name__ == "__main__":
    sys.exit(main())
