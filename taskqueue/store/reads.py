"""The reads ``status`` and ``dlq`` need, on read connections of their own (never the write one)."""

from __future__ import annotations

import contextlib
from typing import Any

from ..task import TaskStatus
from . import owners
from .contract import Row
from .statements import SQL, dialect

RECHECK_LOCAL_S = 1.0  # how often a feeder looks again while a process of this host holds a lease


class Reads:
    """The reads ``status`` and ``dlq`` need, on connections from :meth:`reader` (never the write one)."""

    sql = dialect(SQL)

    def reader(self) -> contextlib.AbstractContextManager:
        """A context manager yielding a read connection."""
        raise NotImplementedError

    def _select(self, conn: Any, statement: str, value: Any) -> Row | None:
        values = conn.execute(self.sql[statement], (value,)).fetchone()
        return None if values is None else Row.from_db(values)

    def get(self, idempotency_key: str) -> Row | None:
        with self.reader() as conn:
            return self._select(conn, "by_key", idempotency_key)

    def rows(self) -> list[Row]:
        with self.reader() as conn:
            return [Row.from_db(v) for v in conn.execute(self.sql["all_rows"]).fetchall()]

    def open_count(self) -> int:
        """Rows some process still has to finish (queued, running or waiting for a retry)."""
        with self.reader() as conn:
            return conn.execute(self.sql["open_count"]).fetchone()[0]

    def wake_at(self, now: float, me: str, recheck_s: float = RECHECK_LOCAL_S) -> float | None:
        """When a feeder of ``me`` should look for rows again: the earliest time a row not held by
        ``me`` may become claimable (a retry falls due, another owner's lease runs out). While a
        process of this host holds a lease, it is ``now`` if that process is gone (``claim_due``
        ends its leases at once), else at most ``recheck_s`` away: it may die at any moment, and
        nothing would say so. None if no such row."""
        with self.reader() as conn:
            due = conn.execute(self.sql["wake_at"], (now, me)).fetchone()[0]
            if due is not None and due > now:
                for (owner,) in conn.execute(self.sql["leasing_owners"], (me, now)).fetchall():
                    if owners.here(owner):
                        if not owners.alive(owner, None, now, me):
                            return now
                        due = min(due, now + recheck_s)
        return due

    def counts(self) -> dict[str, int]:
        counts = {status.value: 0 for status in TaskStatus}
        with self.reader() as conn:
            for status, n in conn.execute(self.sql["counts"]).fetchall():
                counts[status] = n
        return counts

    def recent_failures(self, limit: int = 10) -> list[dict]:
        with self.reader() as conn:
            return _dicts(conn.execute(self.sql["recent_failures"], (limit,)))

    def dead_letters(self) -> list[dict]:
        with self.reader() as conn:
            return _dicts(conn.execute(self.sql["dead_letters"]))


def _dicts(cursor: Any) -> list[dict]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, values)) for values in cursor.fetchall()]
