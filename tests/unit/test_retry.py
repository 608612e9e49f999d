"""RetryPolicy (full-jitter backoff, cap, attempt limit) and classify(): pure functions, no threads."""

from __future__ import annotations

import dataclasses
import errno
import inspect
import math
import random
import sqlite3

import pytest

from taskqueue import errors
from taskqueue.retry import PERMANENT, TRANSIENT, RetryPolicy, classify

# -- the delay sequence -------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 42, 2**31 - 1])
@pytest.mark.parametrize("base, cap", [(0.1, 10.0), (0.05, 1.0), (1.0, 3.0)])
def test_delay_sequence_matches_full_jitter_drawn_independently(seed, base, cap):
    policy = RetryPolicy(max_attempts=12, base_s=base, cap_s=cap)
    rng = random.Random(seed)
    reference = random.Random(seed)
    for attempt in range(1, 13):
        bound = min(cap, base * 2 ** (attempt - 1))
        expected = reference.uniform(0, bound)
        got = policy.delay(attempt, rng)
        assert got == pytest.approx(expected, rel=1e-12, abs=0.0), (attempt, got, expected)
        assert 0.0 <= got <= bound


def test_max_delay_doubles_from_base_then_stays_at_cap():
    policy = RetryPolicy(max_attempts=3, base_s=0.1, cap_s=1.0)
    bounds = [policy.max_delay(n) for n in range(1, 8)]
    assert bounds == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_delay_uses_the_whole_jitter_range_and_only_it():
    policy = RetryPolicy(base_s=0.5, cap_s=4.0)
    rng = random.Random(7)
    draws = [policy.delay(4, rng) for _ in range(2000)]
    # bound for attempt 4 is min(4, 0.5 * 8) = 4.0: full jitter spreads over [0, 4].
    assert all(0.0 <= d <= 4.0 for d in draws)
    assert min(draws) < 0.05 * 4.0 and max(draws) > 0.95 * 4.0
    assert sum(draws) / len(draws) == pytest.approx(2.0, rel=0.1)


@pytest.mark.parametrize("attempt", [64, 1000, 1024, 1025, 10_000, 10**9])
def test_cap_holds_for_huge_attempt_numbers_without_overflow(attempt):
    policy = RetryPolicy(max_attempts=3, base_s=0.1, cap_s=10.0)
    assert policy.max_delay(attempt) == 10.0
    rng, reference = random.Random(3), random.Random(3)
    delay = policy.delay(attempt, rng)
    assert math.isfinite(delay) and 0.0 <= delay <= 10.0
    assert delay == pytest.approx(reference.uniform(0, 10.0), rel=1e-12)


def test_zero_base_means_retry_at_once():
    policy = RetryPolicy(base_s=0.0, cap_s=10.0)
    rng = random.Random(1)
    assert [policy.delay(n, rng) for n in (1, 2, 50, 10_000)] == [0.0, 0.0, 0.0, 0.0]


def test_delay_is_pure_same_rng_state_same_value_and_no_sleep(monkeypatch):
    def no_sleep(_seconds):
        raise AssertionError("a policy computes delays; it must never sleep")

    monkeypatch.setattr("time.sleep", no_sleep)
    policy = RetryPolicy(max_attempts=5, base_s=0.3, cap_s=2.0)
    first = [policy.delay(n, random.Random(99)) for n in range(1, 6)]
    second = [policy.delay(n, random.Random(99)) for n in range(1, 6)]
    assert first == second
    assert policy == RetryPolicy(max_attempts=5, base_s=0.3, cap_s=2.0)  # no state was kept


@pytest.mark.parametrize("attempt", [0, -1])
def test_attempt_numbers_start_at_one(attempt):
    with pytest.raises(ValueError, match="attempt"):
        RetryPolicy().max_delay(attempt)
    with pytest.raises(ValueError, match="attempt"):
        RetryPolicy().delay(attempt, random.Random(0))


# -- the value ---------------------------------------------------------------------------


def test_defaults_and_immutability():
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.base_s, policy.cap_s) == (3, 0.1, 10.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_attempts = 5  # type: ignore[misc]
    assert dataclasses.replace(policy, max_attempts=5).max_attempts == 5
    assert policy.max_attempts == 3


@pytest.mark.parametrize("bad", [0, -1, -100, True, False, 1.5, 3.0, "3", None])
def test_max_attempts_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=bad)


@pytest.mark.parametrize("field", ["base_s", "cap_s"])
@pytest.mark.parametrize("bad", [-0.001, -1, float("nan")])
def test_negative_or_nan_delays_are_refused(field, bad):
    with pytest.raises(ValueError):
        RetryPolicy(**{field: bad})


def test_one_attempt_never_retries():
    policy = RetryPolicy(max_attempts=1)
    assert not policy.should_retry(errors.InjectedTransientError("x"), 1)


def test_should_retry_counts_every_attempt_the_first_included():
    policy = RetryPolicy(max_attempts=3)
    transient = errors.InjectedTransientError("flaky")
    assert [policy.should_retry(transient, n) for n in (1, 2, 3, 4)] == [True, True, False, False]
    permanent = errors.SourceMissing("gone")
    assert [policy.should_retry(permanent, n) for n in (1, 2, 3)] == [False, False, False]


# -- classification ----------------------------------------------------------------------

# Every class in taskqueue.errors, and the kind classify() gives a bare instance of it.
ERROR_KINDS = {
    "TaskQueueError": PERMANENT,
    "TransientError": TRANSIENT,
    "ProcessingTimeout": TRANSIENT,
    "InjectedTransientError": TRANSIENT,
    "StorageBusy": TRANSIENT,
    "PermanentError": PERMANENT,
    "InvalidTask": PERMANENT,
    "UnknownVariant": PERMANENT,
    "InvalidParameter": PERMANENT,
    "InvalidKey": PERMANENT,
    "SourceMissing": PERMANENT,
    "UnsupportedSource": PERMANENT,
    "ImageTooLarge": PERMANENT,
    "DependencyMissing": PERMANENT,
    "InjectedPermanentError": PERMANENT,
    "WorkerCrashed": PERMANENT,
    # Without an OSError cause there is no errno to read: the store only raises it from an
    # OSError, so this is the fallback, and it is documented as "decided from the cause".
    "OutputWriteError": TRANSIENT,
    "SourceReadError": TRANSIENT,
    "StorageError": TRANSIENT,
    "QueueFull": PERMANENT,
    "QueueShutDown": PERMANENT,
    "ClaimedElsewhere": PERMANENT,
    "StaleVersion": PERMANENT,
    "StoreClosed": PERMANENT,
    "StoreBroken": PERMANENT,
    "OutcomeNotRecorded": PERMANENT,
    "ConfigError": PERMANENT,
}


def _error_classes():
    return {name: cls for name, cls in vars(errors).items()
            if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == errors.__name__}


def test_the_table_names_every_error_class():
    assert set(_error_classes()) == set(ERROR_KINDS), "a new error class needs a row in ERROR_KINDS"


@pytest.mark.parametrize("name", sorted(ERROR_KINDS))
def test_every_error_class_has_its_kind(name):
    cls = _error_classes()[name]
    assert classify(cls("boom")) == ERROR_KINDS[name]


def test_kind_follows_the_transient_and_permanent_bases():
    for name, cls in _error_classes().items():
        if issubclass(cls, errors.TransientError):
            assert classify(cls("x")) == TRANSIENT, name
        if issubclass(cls, errors.PermanentError):
            assert classify(cls("x")) == PERMANENT, name


@pytest.mark.parametrize("code, kind", [
    (errno.EAGAIN, TRANSIENT), (errno.EBUSY, TRANSIENT), (errno.ENOSPC, TRANSIENT),
    (errno.EINTR, TRANSIENT), (errno.EMFILE, TRANSIENT), (errno.EIO, TRANSIENT),
    (errno.EACCES, PERMANENT), (errno.EROFS, PERMANENT), (errno.ENOENT, PERMANENT),
    (errno.EISDIR, PERMANENT), (errno.ENOTDIR, PERMANENT), (errno.EPERM, PERMANENT),
])
def test_oserror_by_errno(code, kind):
    exc = OSError(code, "simulated")
    assert exc.errno == code
    assert classify(exc) == kind


@pytest.mark.parametrize("code, kind", [
    (errno.EAGAIN, TRANSIENT), (errno.EBUSY, TRANSIENT), (errno.ENOSPC, TRANSIENT),
    (errno.EACCES, PERMANENT), (errno.EROFS, PERMANENT), (errno.ENOENT, PERMANENT),
])
@pytest.mark.parametrize("wrapper", ["OutputWriteError", "SourceReadError", "StorageError"])
def test_storage_errors_are_classified_by_their_cause(code, kind, wrapper):
    if (wrapper, code) == ("OutputWriteError", errno.ENOENT):
        kind = TRANSIENT  # see the next test
    cls = getattr(errors, wrapper)
    try:
        try:
            raise OSError(code, "simulated")
        except OSError as cause:
            raise cls("reading or writing object 'src/x'") from cause
    except cls as exc:
        assert classify(exc) == kind


def test_an_output_write_whose_file_or_directory_vanished_is_tried_again():
    """Found in review: a process of another pid namespace under this host name swept a live writer's
    temporary file (its pid meant nothing there); the rename failed with ENOENT, and the task was
    dead-lettered for good. A write has nothing missing that the next attempt does not make again."""
    try:
        try:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory")
        except OSError as cause:
            raise errors.OutputWriteError("writing object 'variants/gzip/x.gz'") from cause
    except errors.OutputWriteError as exc:
        assert classify(exc) == TRANSIENT


def test_oserror_subclasses_with_an_errno_follow_it():
    assert classify(PermissionError(errno.EACCES, "denied")) == PERMANENT
    assert classify(FileNotFoundError(errno.ENOENT, "missing")) == PERMANENT
    assert classify(BlockingIOError(errno.EAGAIN, "again")) == TRANSIENT
    assert classify(OSError("no errno at all")) == PERMANENT


@pytest.mark.parametrize("message, kind", [
    ("database is locked", TRANSIENT),
    ("database table is locked", TRANSIENT),
    ("Database is Busy", TRANSIENT),
    ("no such table: tasks", PERMANENT),
    ("disk I/O error", PERMANENT),
])
def test_sqlite_operational_errors(message, kind):
    assert classify(sqlite3.OperationalError(message)) == kind


def test_other_sqlite_errors_are_permanent():
    assert classify(sqlite3.IntegrityError("UNIQUE constraint failed")) == PERMANENT
    assert classify(sqlite3.DatabaseError("file is not a database")) == PERMANENT


def test_timeouts_are_transient():
    assert classify(TimeoutError("slow")) == TRANSIENT
    assert classify(TimeoutError(errno.ETIMEDOUT, "timed out")) == TRANSIENT
    assert classify(errors.ProcessingTimeout("attempt 1 timed out")) == TRANSIENT


def test_a_memory_shortage_is_transient_and_retried_up_to_the_limit():
    """Found by a review: a valid 24 MP photo decoded while memory was short (other workers' images, a
    cgroup) raised MemoryError, classified as a bug: dead-lettered at the first attempt."""
    assert classify(MemoryError()) == TRANSIENT
    assert classify(MemoryError("out of memory")) == TRANSIENT
    policy = RetryPolicy(max_attempts=3)
    assert [policy.should_retry(MemoryError(), n) for n in (1, 2, 3)] == [True, True, False]


@pytest.mark.parametrize("exc", [ValueError("bad"), TypeError("bad"), KeyError("k"), ZeroDivisionError(),
                                 RuntimeError("bug"), AttributeError("x"), Exception()])
def test_bugs_and_bad_values_are_permanent(exc):
    assert classify(exc) == PERMANENT


def test_pillow_decode_errors_are_permanent():
    image = pytest.importorskip("PIL.Image")
    assert classify(image.UnidentifiedImageError("cannot identify image file")) == PERMANENT
    assert classify(image.DecompressionBombError("too many pixels")) == PERMANENT
    assert classify(errors.UnsupportedSource("not a decodable image")) == PERMANENT


def test_real_pillow_failure_on_garbage_bytes_is_permanent():
    image = pytest.importorskip("PIL.Image")
    import io
    with pytest.raises(Exception) as info:
        image.open(io.BytesIO(b"definitely not an image")).load()
    assert classify(info.value) == PERMANENT
