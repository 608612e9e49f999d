"""The task store's SQL, one text for every backend, and the dialect that adapts it.

Written with ``?`` placeholders and a ``{lock}`` where a row-locking clause goes
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL, nothing on SQLite, whose writer
holds the whole database); :func:`dialect` rewrites them once per backend.
"""

from __future__ import annotations

from .contract import COLUMNS

_OPEN_SQL = "('queued', 'running', 'failed')"

SQL = {
    # Hot-path statements return nothing they need not: in pysqlite every row fetched is one more
    # sqlite3_step, and each step gives the GIL up and must win it back, which under thread contention
    # costs more than the SQL. The new id of an "insert" comes from the backend (see _insert).
    "insert": "INSERT INTO tasks (task_id, idempotency_key, payload, status, created_at, updated_at, owner,"
              " lease_until) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?) ON CONFLICT (idempotency_key) DO NOTHING",
    "by_key": f"SELECT {COLUMNS} FROM tasks WHERE idempotency_key = ?",
    "by_id": f"SELECT {COLUMNS} FROM tasks WHERE id = ?",
    "take_over": "UPDATE tasks SET status = ?, owner = ?, lease_until = ?, updated_at = ?, version = version + 1"
                 f" WHERE id = ? AND version = ? RETURNING {COLUMNS}",
    "start": "UPDATE tasks SET status = 'running', attempts = attempts + 1, lease_until = ?, owner = ?,"
             " next_attempt_at = NULL, updated_at = ?, version = version + 1"
             " WHERE id = ? AND version = ? AND status IN ('queued', 'failed')",
    # A start a dead process had begun (its ledger says so) but not committed: committed now.
    "replay": "UPDATE tasks SET status = 'running', attempts = attempts + 1, next_attempt_at = NULL,"
              " updated_at = ?, version = version + 1"
              " WHERE id = ? AND version = ? AND owner = ? AND status IN ('queued', 'failed')",
    # Other owners whose leases still hold rows (a dead one's, on this host, are ended at once: end_lease).
    "leasing_owners": f"SELECT DISTINCT owner FROM tasks WHERE status IN {_OPEN_SQL}"
                      " AND owner IS NOT NULL AND owner <> ? AND lease_until >= ?",
    "end_lease": f"UPDATE tasks SET lease_until = ? WHERE owner = ? AND status IN {_OPEN_SQL} AND lease_until >= ?",
    "lapsed_owners": "SELECT DISTINCT owner FROM tasks WHERE status IN ('queued', 'failed')"
                     " AND owner IS NOT NULL AND owner <> ? AND lease_until < ?",
    "finish": "UPDATE tasks SET status = ?, output_key = ?, output_bytes = ?, last_error = ?, error_class = ?,"
              " next_attempt_at = ?, lease_until = ?, updated_at = ?, version = version + 1"
              " WHERE id = ? AND version = ? AND status = 'running'",
    "dead": "UPDATE tasks SET status = 'dead', last_error = ?, error_class = ?, lease_until = NULL,"
            " next_attempt_at = NULL, updated_at = ?, version = version + 1"
            " WHERE id = ? AND version = ? AND status = ?",
    "dead_letter": "INSERT INTO dead_letters (idempotency_key, task_id, payload, attempts, error_class,"
                   " last_error, created_at, dead_at)"
                   " SELECT idempotency_key, task_id, payload, attempts, error_class, last_error, created_at, ?"
                   " FROM tasks WHERE id = ?"
                   " ON CONFLICT (idempotency_key) DO UPDATE SET attempts = excluded.attempts,"
                   " error_class = excluded.error_class, last_error = excluded.last_error,"
                   " dead_at = excluded.dead_at",
    "invalid": "INSERT INTO tasks (task_id, idempotency_key, payload, status, created_at, updated_at,"
               " last_error, error_class) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)"
               " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
    "release": "DELETE FROM tasks WHERE id = ? AND version = ? AND status = 'queued'",
    "open_rows": f"SELECT {COLUMNS} FROM tasks WHERE status IN {_OPEN_SQL} ORDER BY id",
    "dead_keys": "SELECT idempotency_key FROM tasks WHERE status = 'dead' ORDER BY id",
    "redrive": "UPDATE tasks SET status = 'queued', attempts = 0, owner = NULL, lease_until = NULL,"
               " next_attempt_at = NULL, redrives = redrives + 1, updated_at = ?, version = version + 1"
               " WHERE idempotency_key = ? AND status = 'dead'",
    "undead": "DELETE FROM dead_letters WHERE idempotency_key = ?",
    "renew": f"UPDATE tasks SET lease_until = ? WHERE owner = ? AND status IN {_OPEN_SQL}",
    "enqueue": "INSERT INTO tasks (task_id, idempotency_key, payload, status, created_at, updated_at)"
               " VALUES (?, ?, ?, 'queued', ?, ?) ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
    "expired": f"SELECT {COLUMNS} FROM tasks WHERE status = 'running' AND lease_until < ?"
               " AND (owner IS NULL OR owner <> ?) ORDER BY id LIMIT ?{lock}",
    "claim_due": "UPDATE tasks SET owner = ?, lease_until = ?, updated_at = ?, version = version + 1"
                 " WHERE id IN (SELECT id FROM tasks WHERE status IN ('queued', 'failed')"
                 " AND (next_attempt_at IS NULL OR next_attempt_at <= ?)"
                 " AND (owner IS NULL OR (lease_until < ? AND owner <> ?))"
                 " ORDER BY id LIMIT ?{lock})"
                 f" RETURNING {COLUMNS}",
    "give_up": "UPDATE tasks SET owner = NULL, lease_until = ?, updated_at = ?, version = version + 1"
               f" WHERE id = ? AND version = ? AND owner = ? AND status IN {_OPEN_SQL}",
    "disown": "UPDATE tasks SET owner = NULL, lease_until = NULL, updated_at = ?, version = version + 1"
              " WHERE owner = ? AND status IN ('queued', 'failed')",
    "let_go": "UPDATE tasks SET owner = NULL, lease_until = NULL, updated_at = ?, version = version + 1"
              " WHERE id = ? AND version = ? AND owner = ? AND status IN ('queued', 'failed')",
    "open_count": f"SELECT COUNT(*) FROM tasks WHERE status IN {_OPEN_SQL}",
    # A waiting row with no retry time is due at once (0.0): if the claim did not get it, another
    # transaction holds it (PostgreSQL's SKIP LOCKED), and may roll back without notifying anyone.
    "wake_at": "SELECT MIN(CASE WHEN status = 'running' OR (owner IS NOT NULL AND lease_until >= ?)"
               " THEN lease_until ELSE COALESCE(next_attempt_at, 0.0) END)"
               f" FROM tasks WHERE status IN {_OPEN_SQL} AND (owner IS NULL OR owner <> ?)",
    "all_rows": f"SELECT {COLUMNS} FROM tasks ORDER BY id",
    "counts": "SELECT status, COUNT(*) FROM tasks GROUP BY status",
    "recent_failures": "SELECT idempotency_key, task_id, status, attempts, error_class, last_error, updated_at"
                       " FROM tasks WHERE status IN ('failed', 'dead') ORDER BY updated_at DESC LIMIT ?",
    "dead_letters": "SELECT idempotency_key, task_id, attempts, error_class, last_error, created_at, dead_at"
                    " FROM dead_letters ORDER BY dead_at",
}


def dialect(statements: dict[str, str], *, placeholder: str = "?", lock: str = "") -> dict[str, str]:
    """``statements`` with every ``?`` written as ``placeholder`` (none occurs inside a literal) and
    every ``{lock}`` as ``lock``."""
    return {name: text.replace("?", placeholder).replace("{lock}", lock) for name, text in statements.items()}
