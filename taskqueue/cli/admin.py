"""``status`` and ``dlq list|redrive``: read and mend the queue's database, SQLite or PostgreSQL."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..config import Config
from ..store import is_url, open_reader, open_store
from ..task import TaskStatus
from . import EXIT_OK, EXIT_UNFINISHED, EXIT_USAGE, config_from, printable, store_flags


def add_commands(sub: argparse._SubParsersAction) -> None:
    status = sub.add_parser("status", help="counts by status and recent failures")
    store_flags(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=cmd_status)

    dlq = sub.add_parser("dlq", help="the dead-letter queue")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_sub.add_parser("list", help="dead-lettered tasks")
    store_flags(dlq_list)
    dlq_list.add_argument("--json", action="store_true")
    dlq_list.set_defaults(handler=cmd_dlq_list)
    redrive = dlq_sub.add_parser("redrive", help="put dead tasks back to queued with a fresh attempt budget")
    store_flags(redrive)
    group = redrive.add_mutually_exclusive_group(required=True)
    group.add_argument("--all", action="store_true")
    group.add_argument("keys", nargs="*", default=[], metavar="KEY")
    redrive.set_defaults(handler=cmd_dlq_redrive)


def _existing_db(config: Config) -> str:
    if is_url(config.db):
        return config.db
    if not os.path.isfile(config.db):
        raise FileNotFoundError(f"no database at {config.db!r} (set --db or TQ_DB)")
    if os.path.getsize(config.db) == 0:  # not a queue's database yet: read nothing, write nothing
        raise FileNotFoundError(f"{config.source_of('db')}: {config.db!r} is an empty file, not a task queue "
                                f"database yet (a run or an enqueue makes it one)")
    return config.db


def cmd_status(args: argparse.Namespace) -> int:
    config = config_from(args)
    reader = open_reader(_existing_db(config), busy_timeout_ms=config.busy_timeout_ms)
    counts = reader.counts()
    failures = reader.recent_failures()
    if args.json:
        print(json.dumps({"counts": counts, "total": sum(counts.values()), "recent_failures": failures},
                         indent=2))
        return EXIT_OK
    print("  ".join(f"{name} {n}" for name, n in counts.items()) + f"  (total {sum(counts.values())})")
    for f in failures:  # text, not --json: escaped, as a key or an error may hold anything (see printable)
        print(f"  {printable(f['status']):6} {printable(f['idempotency_key'])}  attempts {f['attempts']}  "
              f"{printable(f['error_class'])}: {printable(f['last_error'])}")
    return EXIT_OK


def cmd_dlq_list(args: argparse.Namespace) -> int:
    config = config_from(args)
    rows = open_reader(_existing_db(config), busy_timeout_ms=config.busy_timeout_ms).dead_letters()
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    print(f"{len(rows)} dead-lettered")
    for r in rows:  # text, not --json: escaped (see printable)
        print(f"  {printable(r['idempotency_key'])}  task {printable(r['task_id'])}  attempts {r['attempts']}  "
              f"{printable(r['error_class'])}: {printable(r['last_error'])}")
    return EXIT_OK


def cmd_dlq_redrive(args: argparse.Namespace) -> int:
    if not args.all and not args.keys:
        print("error: give --all or one or more idempotency keys", file=sys.stderr)
        return EXIT_USAGE
    config = config_from(args)
    store = open_store(_existing_db(config), busy_timeout_ms=config.busy_timeout_ms)
    try:
        done = store.commit(store.redrive(None if args.all else args.keys))
        if args.all:
            missing, left = [], [d["idempotency_key"] for d in store.dead_letters()]  # none can be mended
        else:
            missing = sorted(set(args.keys) - set(done))
            rows = {key: store.get(key) for key in missing}
            left = [key for key in missing if rows[key] is not None and rows[key].status is TaskStatus.DEAD]
    finally:
        store.close()
    print(f"redriven {len(done)} task(s) to queued; the next `run` or a `worker` processes them")
    if left:
        print(f"not redriven: {len(left)} invalid item(s) of a task file, dead-lettered as they were (no run can "
              f"mend them: fix the file and enqueue or run it again)")
    for key in missing:
        why = "an invalid item of a task file, not redriven" if key in left else "not in the dead-letter queue"
        print(f"  {why}: {printable(key)}", file=sys.stderr)
    return EXIT_UNFINISHED if missing else EXIT_OK
