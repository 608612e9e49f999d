"""The exception tree: one base, a transient/permanent split, control errors outside it."""

from __future__ import annotations

import inspect
import pickle

import pytest

from taskqueue import errors
from taskqueue.errors import PermanentError, TaskQueueError, TransientError

TRANSIENT = {"ProcessingTimeout", "InjectedTransientError", "StorageBusy"}
PERMANENT = {"InvalidTask", "UnknownVariant", "InvalidParameter", "InvalidKey", "SourceMissing",
             "UnsupportedSource", "ImageTooLarge", "DependencyMissing", "InjectedPermanentError", "WorkerCrashed"}
# Neither kind: queue control, concurrency control, configuration, and OutputWriteError,
# whose kind retry.classify() derives from its __cause__.
NEITHER = {"StorageError", "OutputWriteError", "SourceReadError", "QueueFull", "QueueShutDown", "ClaimedElsewhere", "StaleVersion",
           "OutcomeNotRecorded",
           "StoreClosed", "StoreBroken", "ConfigError"}
BASES = {"TaskQueueError", "TransientError", "PermanentError"}

ALL_CLASSES = {name: obj for name, obj in vars(errors).items()
               if inspect.isclass(obj) and issubclass(obj, BaseException)
               and obj.__module__ == errors.__name__}


def test_every_class_is_classified_exactly_once():
    # A new error class must be added to one of the tables above (and so, to the documented split).
    tables = [TRANSIENT, PERMANENT, NEITHER, BASES]
    assert set().union(*tables) == set(ALL_CLASSES)
    assert sum(len(t) for t in tables) == len(ALL_CLASSES)


@pytest.mark.parametrize("name", sorted(ALL_CLASSES))
def test_every_class_derives_from_the_base_and_has_a_one_line_docstring(name):
    cls = ALL_CLASSES[name]
    assert issubclass(cls, TaskQueueError)
    doc = (cls.__doc__ or "").strip()
    assert doc and "\n" not in doc


@pytest.mark.parametrize("name", sorted(TRANSIENT))
def test_transient_errors_are_not_permanent(name):
    cls = ALL_CLASSES[name]
    assert issubclass(cls, TransientError)
    assert not issubclass(cls, PermanentError)


@pytest.mark.parametrize("name", sorted(PERMANENT))
def test_permanent_errors_are_not_transient(name):
    cls = ALL_CLASSES[name]
    assert issubclass(cls, PermanentError)
    assert not issubclass(cls, TransientError)


@pytest.mark.parametrize("name", sorted(NEITHER))
def test_control_errors_are_neither_transient_nor_permanent(name):
    cls = ALL_CLASSES[name]
    assert not issubclass(cls, (TransientError, PermanentError))


def test_the_two_kinds_are_disjoint_branches_of_the_base():
    assert TransientError.__bases__ == (TaskQueueError,)
    assert PermanentError.__bases__ == (TaskQueueError,)
    assert not issubclass(TransientError, PermanentError)
    assert not issubclass(PermanentError, TransientError)


@pytest.mark.parametrize("name, builtin", [
    ("InvalidTask", ValueError), ("UnknownVariant", ValueError), ("InvalidParameter", ValueError),
    ("InvalidKey", ValueError), ("ConfigError", ValueError), ("QueueShutDown", RuntimeError),
])
def test_builtin_mixins_let_callers_catch_the_conventional_type(name, builtin):
    assert issubclass(ALL_CLASSES[name], builtin)


@pytest.mark.parametrize("name", ["UnknownVariant", "InvalidParameter"])
def test_variant_errors_are_invalid_tasks(name):
    assert issubclass(ALL_CLASSES[name], errors.InvalidTask)


@pytest.mark.parametrize("name", sorted(ALL_CLASSES))
def test_every_error_survives_pickling_with_its_message(name):
    # Errors may cross process boundaries (workers, multiprocessing in tests).
    exc = ALL_CLASSES[name]("field 'x': bad value")
    clone = pickle.loads(pickle.dumps(exc))
    assert type(clone) is type(exc)
    assert str(clone) == "field 'x': bad value"

