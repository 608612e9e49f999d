"""Which failures to retry, and how long to wait: classification and backoff in one place.

``classify(exc)`` is the only place that decides whether an exception is
transient or permanent. :class:`RetryPolicy` is an immutable value whose
methods are pure: it computes delays from an injected ``random.Random`` and
never sleeps.
"""

from __future__ import annotations

import errno
import random
import sqlite3
from dataclasses import dataclass

from .errors import OutputWriteError, PermanentError, StorageError, TaskQueueError, TransientError

TRANSIENT = "transient"
PERMANENT = "permanent"

# OSErrors that can pass on their own: a busy or interrupted resource, a full disk being cleaned.
TRANSIENT_ERRNOS = frozenset(
    code for code in (errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.ETIMEDOUT, errno.ENOSPC,
                      errno.EMFILE, errno.ENFILE, getattr(errno, "EDQUOT", None), errno.EIO)
    if code is not None)


def classify(exc: BaseException) -> str:
    """Return ``TRANSIENT`` or ``PERMANENT`` for a failure raised while processing a task.

    * the package's own errors carry their kind in their class;
    * a :class:`StorageError` (output write, source read) or bare ``OSError`` is transient when its
      errno is in ``TRANSIENT_ERRNOS`` (``EAGAIN``, ``EBUSY``, ``ENOSPC``, ...)
      and permanent otherwise (``EACCES``, ``EROFS``, ``ENOENT``, ...), except an output write
      failing with ``ENOENT`` (its temp file or directory vanished): transient;
    * ``TimeoutError`` and SQLite "database is locked/busy" are transient;
    * ``MemoryError`` is transient: an allocation refused says how busy the host is (other workers'
      images, a cgroup, strict overcommit), not that the task is bad; a task that can never fit
      is still dead-lettered after ``max_attempts``;
    * anything else -- a bug, a bad value -- is permanent: retrying a bug
      only hides it.
    """
    if isinstance(exc, StorageError):
        cause = exc.__cause__
        if isinstance(exc, OutputWriteError) and isinstance(cause, OSError) and cause.errno == errno.ENOENT:
            return TRANSIENT  # its temp file or directory vanished (swept, removed): the next attempt makes both
        return classify(cause) if isinstance(cause, OSError) else TRANSIENT
    if isinstance(exc, TransientError):
        return TRANSIENT
    if isinstance(exc, (PermanentError, TaskQueueError)):
        return PERMANENT
    if isinstance(exc, (TimeoutError, MemoryError)):
        return TRANSIENT
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return TRANSIENT if ("locked" in text or "busy" in text) else PERMANENT
    if isinstance(exc, OSError):
        return TRANSIENT if exc.errno in TRANSIENT_ERRNOS else PERMANENT
    return PERMANENT


@dataclass(frozen=True)
class RetryPolicy:
    """Retry limit and "full jitter" exponential backoff.

    After attempt ``n`` (1-based) fails, the next attempt waits
    ``uniform(0, min(cap_s, base_s * 2**(n-1)))`` seconds.
    ``max_attempts`` counts every attempt, the first included.
    """

    max_attempts: int = 3
    base_s: float = 0.1
    cap_s: float = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) \
                or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        if not self.base_s >= 0 or not self.cap_s >= 0:
            raise ValueError(f"base_s and cap_s must be >= 0, got {self.base_s!r}, {self.cap_s!r}")

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """True when ``exc``, raised by attempt ``attempt``, deserves another attempt."""
        return attempt < self.max_attempts and classify(exc) == TRANSIENT

    def max_delay(self, attempt: int) -> float:
        """The upper bound of the wait after attempt ``attempt`` fails."""
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt!r}")
        # Cap the exponent first so huge attempt numbers cannot overflow the float.
        return min(self.cap_s, self.base_s * 2.0 ** min(attempt - 1, 1000))

    def delay(self, attempt: int, rng: random.Random) -> float:
        """A full-jitter delay after attempt ``attempt`` fails, drawn from ``rng``."""
        return rng.uniform(0.0, self.max_delay(attempt))
