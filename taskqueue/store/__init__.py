"""The durable state of the queue: one contract, and its SQLite backend.

* :mod:`.contract`  -- rows, claims, the :class:`TaskStore` protocol every backend keeps
* :mod:`.committer` -- the one owner of a write connection: direct or group commit of :class:`Op` values
* :mod:`.machine`   -- the state machine's transitions as ops, the same SQL on every backend
* :mod:`.owners`    -- owner tokens, liveness, leases
* :mod:`.sqlite`    -- the embedded backend (a file path)
"""

from .committer import Committer, Op
from .contract import COLUMNS, MAX_ERROR_TEXT, Attempt, Claim, Recovered, Row, TaskStore, error_text, task_payload
from .owners import alive as owner_alive, new_token as owner_token
from .sqlite import APPLICATION_ID, SQLiteReader, SQLiteStore, check_database, connect

__all__ = ["APPLICATION_ID", "COLUMNS", "MAX_ERROR_TEXT", "Attempt", "Claim", "Committer", "Op", "Recovered", "Row",
           "SQLiteReader", "SQLiteStore", "TaskStore", "check_database", "connect", "error_text",
           "owner_alive", "owner_token", "task_payload"]
