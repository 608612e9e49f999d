"""What an offer resolves to when the store already holds its key: the stored result, the stored
error of a dead letter, or :class:`~taskqueue.errors.ClaimedElsewhere` when another live process
holds the row. ``submit()`` settles such an offer without running anything."""

from __future__ import annotations

from .. import errors
from ..errors import ClaimedElsewhere
from ..store import Row
from ..task import Task, TaskResult, TaskStatus
from .worker import describe


def outcome_of(task: Task, row: Row, deduplicated: bool = True) -> tuple[TaskResult | None, BaseException | None]:
    """``(result, error)`` for a key the store already holds, finished or held elsewhere.
    ``deduplicated=False``: finished by this queue (a row it took over at start-up)."""
    if row.status is TaskStatus.SUCCESS:
        return TaskResult(task_id=task.id, idempotency_key=row.idempotency_key, status=TaskStatus.SUCCESS,
                          output_key=row.output_key, attempts=row.attempts, deduplicated=deduplicated,
                          output_bytes=row.output_bytes), None
    if row.status is TaskStatus.DEAD:
        error = stored_error(row)
        error.deduplicated = deduplicated  # dead before this offer: nothing was done again (see run's summary)
        return None, error
    return None, ClaimedElsewhere(f"task {task.id!r} is being processed elsewhere ({describe(row)})")


def stored_error(row: Row) -> BaseException:
    """Rebuild a dead-lettered task's error from its row (class by name when it is ours)."""
    cls = getattr(errors, row.error_class or "", None)
    message = row.last_error or "dead-lettered"
    if isinstance(cls, type) and issubclass(cls, errors.TaskQueueError):
        return cls(message)
    return errors.PermanentError(f"{row.error_class}: {message}")
