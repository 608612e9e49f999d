"""What a task store is: the rows it keeps, and the contract every backend keeps.

One row per idempotency key; the UNIQUE key decides duplicates. States::

    queued -> running -> success
                      -> failed -> running ...   (retry due at next_attempt_at)
                      -> dead                    (copied to the dead-letter table)

Every transition is ``UPDATE ... WHERE id = ? AND version = ?`` and must
change exactly one row, else it fails with :class:`StaleVersion` holding the
row as it is now (optimistic concurrency: a stale writer changes nothing).
Attempts are counted by :meth:`TaskStore.start`, made durable before the
attempt runs -- committed, or, where the store keeps a start ledger
(:mod:`~taskqueue.store.ledger`, SQLite), recorded there and committed
without waiting -- so a process that dies mid-attempt has that attempt
counted, and only that one.

Changes are described as :class:`~taskqueue.store.committer.Op` values and
committed by :meth:`TaskStore.commit` (wait) or :meth:`TaskStore.post` (do
not), so a caller can hand several changes over in one transaction.
"""

from __future__ import annotations

import json
import json.encoder
from dataclasses import dataclass
from typing import Any, Callable, Iterable, NamedTuple, Protocol

from ..errors import InvalidTask, text_of
from ..task import Task, TaskStatus
from .committer import Op

MAX_ERROR_TEXT = 2000
OPEN = ("queued", "running", "failed")  # statuses of a row some process still has to finish
Done = Callable[[Any, "BaseException | None"], None]


class Row(NamedTuple):
    """A snapshot of one task row (the column order of the tasks table). A tuple: cheap to build."""

    id: int
    task_id: str
    idempotency_key: str
    payload: str
    status: TaskStatus
    attempts: int
    created_at: float
    updated_at: float
    next_attempt_at: float | None
    lease_until: float | None
    owner: str | None
    output_key: str | None
    output_bytes: int | None
    last_error: str | None
    error_class: str | None
    redrives: int
    version: int

    @classmethod
    def from_db(cls, values: tuple | list) -> "Row":
        values = list(values)
        values[4] = _STATUS[values[4]]
        return tuple.__new__(cls, values)

    def task(self) -> Task:
        """The stored task; raises :class:`InvalidTask` if the payload is not one (``record_invalid``
        keeps whatever it is given, a producer's raw line included)."""
        try:
            decoded = json.loads(self.payload)
        except (ValueError, RecursionError) as exc:
            raise InvalidTask(f"the stored payload is not JSON ({type(exc).__name__}: {exc})") from None
        return Task.from_dict(decoded)


_STATUS = {status.value: status for status in TaskStatus}


def mendable(row: Row) -> bool:
    """Whether running ``row`` again could help (a redrive): its payload is a valid task whose key is
    the row's. Not so for the record of a task file's invalid item, kept under a key of its own with
    whatever the file held: its task, if any, is another row's to run."""
    try:
        return row.task().idempotency_key == row.idempotency_key
    except InvalidTask:
        return False


COLUMNS = ", ".join(Row._fields)


class Claim(NamedTuple):
    """What offering a task's key found (a tuple: one is built per submit).

    ``row`` is the row as it now stands. ``runnable``: this process now owns
    an open row and must run it -- it ``inserted`` it, or took over a row
    nobody runs (its owner died, ``dlq redrive``, a cancelled task). Otherwise
    the row is finished (``success``/``dead``) or held by a live owner;
    ``dead_lettered``: this claim dead-lettered it (its owner died in its last
    attempt, see ``recover``).
    """

    row: Row
    runnable: bool
    inserted: bool = False
    dead_lettered: bool = False


class Attempt(NamedTuple):
    """A started attempt: the row's new version, and its attempts so far (this one included)."""

    version: int
    attempts: int


@dataclass(frozen=True)
class Recovered:
    """What recovery found: rows to run again here, and rows it dead-lettered."""

    runnable: list[Row]
    dead: list[Row]


_CANONICAL = json.JSONEncoder(sort_keys=True)  # json.dumps(..., sort_keys=True) without a new encoder per call
_quoted = json.encoder.encode_basestring_ascii  # a JSON string literal, as that encoder writes it


def task_payload(task: Task) -> str:
    """The task as stored in the row: ``json.dumps(task.to_dict(), sort_keys=True)``.

    Made once per submit: a task without params (most) is written out directly, the same text.
    """
    if task.params:
        return _CANONICAL.encode(task.to_dict())
    return f'{{"id": {_quoted(task.id)}, "image_key": {_quoted(task.image_key)}, "variant": {_quoted(task.variant)}}}'


def error_text(error: BaseException) -> str:
    """An error's text as a row keeps it: storable whatever the error (see ``errors.text_of``), cut
    to ``MAX_ERROR_TEXT``; its class's name when it has none."""
    text = text_of(error) or type(error).__name__
    return text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 3] + "..."


class TaskStore(Protocol):
    """The durable state behind a :class:`~taskqueue.engine.TaskQueue`; SQLite and PostgreSQL keep it.

    The op methods only *describe* a change; nothing touches the database
    until it is handed to :meth:`commit` or :meth:`post`. Each op method's
    docstring names what its op resolves to. ``done``, where accepted, is
    called with ``(result, error)`` once the op is committed.
    """

    owner: str      # this store's owner token (see taskqueue.store.owners)
    location: str   # the database, for messages: a path or a URL without its password
    lease_s: float  # how long a claim lasts unless renewed
    ledger: Any     # a start ledger (taskqueue.store.ledger.Ledger), or None: starts are committed and waited for

    # -- ops ---------------------------------------------------------------------------
    def claim(self, task: Task, max_attempts: int) -> Op:
        """Offer ``task``'s key -> :class:`Claim` (insert, or take over a row nobody runs)."""
    def start(self, row_id: int, version: int, attempts: int, done: Done | None = None) -> Op:
        """``queued``/``failed`` -> ``running``, attempts + 1, leased -> an :class:`Attempt`.

        ``attempts``: the row's count at ``version``, as the caller last saw it (the version
        check makes it exact; the store need not read it back). A caller may post it without
        waiting only after ``ledger.begin(row_id, version)`` gave it a slot."""
    def succeed(self, row_id: int, version: int, output_key: str, output_bytes: int,
                done: Done | None = None) -> Op:
        """``running`` -> ``success`` -> the new version."""
    def fail(self, row_id: int, version: int, error: BaseException, next_attempt_at: float,
             done: Done | None = None) -> Op:
        """``running`` -> ``failed``, a retry due at ``next_attempt_at`` (wall clock) -> the new version."""
    def dead_letter(self, row_id: int, version: int, error: BaseException, done: Done | None = None) -> Op:
        """``running`` -> ``dead`` plus a dead-letter record -> the new version."""
    def release(self, row_id: int, version: int, done: Done | None = None) -> Op:
        """Delete a ``queued`` row this store inserted but could not enqueue -> None."""
    def let_go(self, row_id: int, version: int, done: Done | None = None) -> Op:
        """Give up a waiting (``queued``/``failed``) row of ours at ``version`` that will not run here
        (its task was cancelled or refused, or taken over while shutting down): no owner, so any process
        may take it at once -> None."""
    def record_invalid(self, task_id: str, idempotency_key: str, payload: str, error: BaseException) -> Op:
        """Dead-letter an item that failed validation -> True if recorded (False: key already there)."""
    def recover(self, max_attempts: int, unowned: bool = True) -> Op:
        """Take over every open row nobody runs -> :class:`Recovered`. ``unowned=False`` leaves the rows
        no process has held yet (enqueued, redriven) to ``claim_due``: only a dead owner's are taken."""
    def redrive(self, keys: Iterable[str] | None) -> Op:
        """``dead`` -> ``queued`` with a fresh attempt budget (all when None) -> keys redriven. A row
        no redrive can mend (see :func:`mendable`: an invalid item's record) stays dead."""
    def give_up(self, row_id: int, version: int, begun: int | None = None, done: Done | None = None) -> Op:
        """Let go of one open row of ours at ``version`` whose outcome could not be recorded (anyone may
        take it over) -> rows changed; ``begun``: count first the attempt the ledger recorded at that
        version, never committed (``version`` is then ``begun + 1``)."""
    def disown(self) -> Op:
        """Give up every waiting row this store holds (shutdown) -> rows."""
    def claim_due(self, limit: int, max_attempts: int) -> Op:
        """Take up to ``limit`` rows a worker may run now -> :class:`Recovered`."""
    def enqueue(self, tasks: list[Task]) -> Op:
        """Insert ``tasks`` as ``queued`` rows nobody owns yet -> keys added."""
    def renew(self, done: Done | None = None) -> Op:
        """Extend the lease of every open row this store owns -> rows renewed."""

    # -- committing ---------------------------------------------------------------------
    def commit(self, op: Op, along: tuple[Op, ...] = (), *, urgent: bool = False) -> Any:
        """Commit ``along`` and ``op`` together; block; return ``op``'s result or raise its error.
        ``urgent``: the caller cannot go on until it is committed (a worker's start where there is no
        ledger): the store must not hold it back to group it with later changes."""
    def post(self, *ops: Op) -> None:
        """Hand ``ops`` over without waiting; results go to their ``done``."""
    def flush(self) -> None:
        """Block until everything handed over before is committed."""
    def close(self) -> None:
        """Commit what is pending and release the connection. Idempotent."""
    def settle_ledgers(self) -> int:
        """Commit the starts that processes which died had begun (their start ledgers), then delete
        those ledgers -> rows started. Blocks; 0 where the store keeps no ledgers."""

    # -- reads ------------------------------------------------------------------------------
    def get(self, idempotency_key: str) -> Row | None: ...
    def rows(self) -> list[Row]: ...
    def counts(self) -> dict[str, int]: ...
    def recent_failures(self, limit: int = 10) -> list[dict]: ...
    def dead_letters(self) -> list[dict]: ...
