"""Helpers shared by the chaos tests: subprocess commands, workloads, and DB/store inspection.

Every subprocess gets its environment explicitly (inherited ``TQ_*`` variables
are dropped), runs with ``sys.executable`` from the repository root, and
finds the package through ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path

from polling import wait_until  # noqa: F401 - re-exported for the chaos tests
from taskqueue.objectstore import LocalObjectStore
from taskqueue.workload import create_sources, generate_tasks

REPO = Path(__file__).resolve().parents[2]
ENTRY = REPO / "task_queue_optimized.py"
CRASHY = Path(__file__).resolve().parent / "crashy_run.py"
HANG = 120.0  # seconds: guards against a hang, never a speed expectation
SOURCE_SEED = 7


def env(**settings: object) -> dict[str, str]:
    """The parent's environment without ``TQ_*``, plus PYTHONPATH and ``settings`` (TQ_ names or raw)."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("TQ_")}
    out["PYTHONPATH"] = str(REPO)
    out["PYTHONUNBUFFERED"] = "1"
    out["TQ_FSYNC_OUTPUTS"] = "false"  # atomicity against a killed process comes from os.replace alone
    for name, value in settings.items():
        out[name if name.isupper() else f"TQ_{name.upper()}"] = str(value)
    return out


def run_command(workdir: Path, *, entry: Path = ENTRY, extra: tuple = ()) -> list[str]:
    """The `run` command line for the workload in ``workdir`` (tasks.json, tasks.db, objects/)."""
    return [sys.executable, str(entry), "run", "--tasks", str(workdir / "tasks.json"),
            "--db", str(workdir / "tasks.db"), "--store", str(workdir / "objects"),
            "--metrics-out", str(workdir / "metrics.json"), *map(str, extra)]


def make_workload(workdir: Path, count: int, seed: int, **options) -> list[dict]:
    """Write ``workdir/tasks.json`` (gzip tasks) and create their sources under ``workdir/objects``."""
    return write_workload(workdir, generate_tasks(count, seed=seed, **options))


def write_workload(workdir: Path, items: list[dict]) -> list[dict]:
    """Write ``items`` to ``workdir/tasks.json`` and create their sources under ``workdir/objects``."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tasks.json").write_text(json.dumps(items))
    create_sources(LocalObjectStore(workdir / "objects", fsync=False), items, seed=SOURCE_SEED)
    return items


def unique_keys(items: list[dict]) -> set[str]:
    return {f"{item['image_key']}:{item['variant']}" for item in items}


def db_query(db: Path, sql: str, args: tuple = ()) -> list[tuple]:
    """Run one query on a read-only connection.

    Read-only on purpose: the last connection to close a WAL database checkpoints it and removes
    the WAL, so a read-write poll right after a SIGKILL would do the recovery the restarted
    process is meant to do itself.
    """
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def statuses(db: Path) -> dict[str, int]:
    """Rows per status; {} while the database or its schema does not exist yet."""
    if not db.exists():
        return {}
    try:
        return dict(db_query(db, "SELECT status, COUNT(*) FROM tasks GROUP BY status"))
    except sqlite3.OperationalError as exc:  # the child has not created the schema yet
        if "no such table" in str(exc):
            return {}
        raise


def integrity(db: Path) -> str:
    return db_query(db, "PRAGMA integrity_check")[0][0]


def outputs(root: Path) -> dict[str, bytes]:
    """Every file under ``root/variants``: relative path -> bytes (temporary files included)."""
    base = root / "variants"
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}




def reference_outputs(items: list[dict], scratch: Path) -> dict[str, bytes]:
    """The outputs a clean, fault-free Processor makes for ``items`` in process (as ``outputs()`` keys them)."""
    from taskqueue.processor import Processor
    from taskqueue.task import Task

    store = LocalObjectStore(scratch, fsync=False)
    create_sources(store, items, seed=SOURCE_SEED)
    processor = Processor(store)
    seen = set()
    for item in items:
        task = Task.from_dict(item)
        if task.idempotency_key not in seen:
            seen.add(task.idempotency_key)
            processor.process(task)
    return outputs(scratch)
