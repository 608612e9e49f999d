"""Task-store backends for the contract tests: each test using ``backend`` runs once per backend.

A backend makes stores on one fresh database, reads and crafts rows behind the
store's back through a connection of its own (as another process would), and
closes everything it made at teardown.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Callable

import pytest

from taskqueue.store import SQLiteStore

WAIT_S = 30  # hang guard only


class SQLiteBackend:
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stores: list = []

    def make(self, *, clock: Callable[[], float] | None = None, lease_s: float = 30.0) -> SQLiteStore:
        kwargs: dict[str, Any] = {"lease_s": lease_s}
        if clock is not None:
            kwargs["clock"] = clock
        store = SQLiteStore(self.path, **kwargs)
        self.stores.append(store)
        return store

    def raw(self, sql: str, params: tuple = ()) -> list[tuple]:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=WAIT_S)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def close(self) -> None:
        for store in self.stores:
            store.close()
        assert self.raw("PRAGMA integrity_check") == [("ok",)]


class PostgresBackend:
    name = "postgres"

    def __init__(self, server) -> None:
        self.url = server.new_database()
        self.stores: list = []

    def make(self, *, clock: Callable[[], float] | None = None, lease_s: float = 30.0):
        from taskqueue.store.postgres import PostgresStore

        kwargs: dict[str, Any] = {"lease_s": lease_s}
        if clock is not None:
            kwargs["clock"] = clock
        store = PostgresStore(self.url, **kwargs)
        self.stores.append(store)
        return store

    def raw(self, sql: str, params: tuple = ()) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            cursor = conn.execute(sql.replace("?", "%s"), params)
            return cursor.fetchall() if cursor.description else []

    def close(self) -> None:
        for store in self.stores:
            store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path: Path):
    """A fresh database on each backend; PostgreSQL's comes from the session's real server."""
    if request.param == "postgres":
        made = PostgresBackend(request.getfixturevalue("postgres_server"))
    else:
        made = SQLiteBackend(tmp_path / "tasks.db")
    yield made
    made.close()


def set_row(backend, row_id: int, **columns) -> None:
    """Craft a row's state directly (as another process would have left it)."""
    assignments = ", ".join(f"{name} = ?" for name in columns)
    backend.raw(f"UPDATE tasks SET {assignments} WHERE id = ?", (*columns.values(), row_id))
