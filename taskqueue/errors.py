"""One exception tree for the whole package.

Every error the queue raises or records derives from :class:`TaskQueueError`.
Below it, the split that drives retries: a :class:`TransientError` may pass if
the task is tried again later, a :class:`PermanentError` never will.
``retry.classify()`` maps foreign exceptions (``OSError``, ``sqlite3``, Pillow)
onto this split; everything the package raises itself is already classified.
"""


class TaskQueueError(Exception):
    """Base class of every error raised by the task queue."""


# --- transient: retry with backoff -----------------------------------------

class TransientError(TaskQueueError):
    """A failure that may pass on a later attempt."""


class ProcessingTimeout(TransientError):
    """Processing a task took longer than the configured timeout."""


class InjectedTransientError(TransientError):
    """A transient fault injected by the processor's fault configuration."""


class StorageBusy(TransientError):
    """The object store or the database was momentarily unavailable."""


# --- permanent: dead-letter at once -----------------------------------------

class PermanentError(TaskQueueError):
    """A failure that no retry can fix."""


class InvalidTask(PermanentError, ValueError):
    """A task (or a task file) failed validation; the message names the field."""


class UnknownVariant(InvalidTask):
    """The variant names no transformation the processor knows."""


class InvalidParameter(InvalidTask):
    """A variant's parameter is out of range or of the wrong type."""


class InvalidKey(PermanentError, ValueError):
    """An object key is malformed or would resolve outside the store root."""


class SourceMissing(PermanentError):
    """The task's source object does not exist in the object store."""


class UnsupportedSource(PermanentError):
    """The source object cannot be decoded for this variant (e.g. not an image)."""


class ImageTooLarge(PermanentError):
    """The image has more pixels than the limit (checked from its header), or than its output format holds."""


class DependencyMissing(PermanentError):
    """An optional dependency needed for this variant (Pillow) is not installed."""


class InjectedPermanentError(PermanentError):
    """A permanent fault injected by the processor's fault configuration."""


class WorkerCrashed(PermanentError):
    """The task's lease expired on its last attempt: its worker process died."""


class StorageError(TaskQueueError):
    """An I/O error in the object store; ``retry.classify`` decides its kind from the cause's errno."""


class OutputWriteError(StorageError):
    """Writing (publishing) an output object failed."""


class SourceReadError(StorageError):
    """Reading a source object failed part-way."""


# --- queue control: not task outcomes ---------------------------------------

class QueueFull(TaskQueueError):
    """The bounded queue is full and the backpressure policy is ``reject``."""


class QueueShutDown(TaskQueueError, RuntimeError):
    """``submit()`` was called after ``shutdown()``."""


class ClaimedElsewhere(TaskQueueError):
    """Another process claimed the task first; this process did not run it."""


class StaleVersion(TaskQueueError):
    """An optimistic-concurrency check failed: the row changed under the writer."""


class OutcomeNotRecorded(TaskQueueError):
    """Its outcome was not recorded (see ``__cause__``): the task's row is left for another run."""


class StoreClosed(TaskQueueError, RuntimeError):
    """An operation was handed to a task store after it was closed."""


class StoreBroken(TaskQueueError):
    """The task store's write connection failed beyond repair; every operation fails with this."""


class ConfigError(TaskQueueError, ValueError):
    """A setting is invalid; the message names the setting and its value."""


def text_of(error: BaseException) -> str:
    """``str(error)``, safe to store, log and print whatever the error is: never raises, and a lone
    surrogate (a file name that is not UTF-8, from ``os.listdir``) is written as ``\\udcff``, a NUL
    as ``\\x00``, which no database or UTF-8 stream refuses. A ``str()`` that raises gives a
    placeholder naming both."""
    try:
        text = str(error)
    except Exception as exc:  # noqa: BLE001 - the text of an error must not become another error
        return f"<{type(error).__name__}: its text could not be made ({type(exc).__name__})>"
    if "\x00" in text:  # PostgreSQL refuses NUL in text
        text = text.replace("\x00", "\\x00")
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
