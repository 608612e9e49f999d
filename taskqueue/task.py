"""The task model: what a client submits, the states a task moves through, what it gets back.

A task asks for one *variant* of one source object. Its idempotency key is
``image_key + ":" + variant``, plus ``"." + format`` when the task's ``format``
parameter names an output format other than the default ``jpeg`` (see
:func:`make_idempotency_key`). Variants are ``[a-z][a-z0-9_]*`` and never
contain ``":"`` or ``"."``, so the key splits back unambiguously at its last
colon, then at the first dot after it, whatever the image key holds.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from .errors import InvalidKey, InvalidTask
from .objectstore import validate_key

MAX_ID_LENGTH = 128
MAX_PARAMS = 16
MAX_PARAM_STRING = 256
VARIANT_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}")
_ID_PATTERN = re.compile(r"[A-Za-z0-9._:@/+=-]{1,%d}" % MAX_ID_LENGTH)
_FIELDS = frozenset({"id", "image_key", "variant", "params"})
NO_PARAMS: Mapping[str, Any] = MappingProxyType({})  # the params of a task without any (shared: it cannot change)


class TaskStatus(str, enum.Enum):
    """States of a task row. ``SUCCESS`` and ``DEAD`` are terminal.

    ``FAILED`` means the last attempt failed and a retry is scheduled
    (``next_attempt_at``); it leads back to ``RUNNING`` or on to ``DEAD``.
    """

    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    DEAD = "dead"

    @property
    def terminal(self) -> bool:
        return self in (TaskStatus.SUCCESS, TaskStatus.DEAD)


DEFAULT_OUTPUT_FORMAT = "jpeg"  # what every image variant wrote before the ``format`` parameter existed


def make_idempotency_key(image_key: str, variant: str, output_format: object = None) -> str:
    """The deduplication key: one per (source object, variant, output format).

    Two tasks that differ only in ``format`` make two different objects, so
    they get two keys. The default format adds nothing, so every key of a task
    without ``format`` (all keys made before it existed) is unchanged, and
    ``format: "jpeg"`` is the same task as no format at all.
    """
    key = f"{image_key}:{variant}"
    if output_format is None or output_format == DEFAULT_OUTPUT_FORMAT:
        return key
    return f"{key}.{output_format}"


@dataclass(frozen=True)
class Task:
    """One unit of work: make ``variant`` of the object at ``image_key``.

    Construct through :meth:`from_dict` for untrusted input; the constructor
    validates too, so an invalid ``Task`` cannot exist.
    """

    id: str
    image_key: str
    variant: str
    params: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        _check_id(self.id)
        try:
            validate_key(self.image_key)
        except InvalidKey as exc:
            raise InvalidTask(f"field 'image_key': {exc}") from exc
        if not isinstance(self.variant, str) or not VARIANT_PATTERN.fullmatch(self.variant):
            raise InvalidTask(
                f"field 'variant': {self.variant!r} is not a variant name "
                f"(lowercase letters, digits and '_', starting with a letter, at most 32)")
        params = self.params
        if params is NO_PARAMS or (type(params) is dict and not params):  # most tasks: nothing to check or copy
            object.__setattr__(self, "params", NO_PARAMS)
            object.__setattr__(self, "_key", make_idempotency_key(self.image_key, self.variant))
            return
        _check_params(params)
        # Freeze a private copy so a Task is a value: nobody can change it under the queue.
        object.__setattr__(self, "params", MappingProxyType(dict(params)))
        # Read several times on a task's way through the queue: made once (not a field, so not compared).
        object.__setattr__(self, "_key", make_idempotency_key(self.image_key, self.variant, params.get("format")))

    @property
    def idempotency_key(self) -> str:
        return self._key

    @classmethod
    def from_dict(cls, obj: Any) -> "Task":
        """Build a task from a decoded JSON object; raises :class:`InvalidTask` naming the field."""
        if not isinstance(obj, dict):
            raise InvalidTask(f"a task must be a JSON object, got {type(obj).__name__}")
        unknown = sorted(set(obj) - _FIELDS)
        if unknown:
            name = unknown[0] if len(unknown[0]) <= 60 else unknown[0][:57] + "..."
            raise InvalidTask(f"unknown field {name!r} (allowed: {', '.join(sorted(_FIELDS))})")
        for name in ("id", "image_key", "variant"):
            if name not in obj:
                raise InvalidTask(f"field {name!r} is missing")
            if not isinstance(obj[name], str):
                raise InvalidTask(f"field {name!r}: expected a string, got {_show(obj[name])}")
        params = obj.get("params", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise InvalidTask(f"field 'params': expected an object, got {_show(params)}")
        return cls(id=obj["id"], image_key=obj["image_key"], variant=obj["variant"], params=params)

    def to_dict(self) -> dict:
        out = {"id": self.id, "image_key": self.image_key, "variant": self.variant}
        if self.params:
            out["params"] = dict(self.params)
        return out


@dataclass(frozen=True)
class TaskResult:
    """What a task's Future resolves to on success.

    ``attempts`` counts claims (1 when it succeeded first time). ``deduplicated``
    is true when this result was found in the store rather than produced now.
    Durations are seconds measured with ``time.perf_counter()``:
    ``queue_wait_s`` from ``submit()`` to the start of the successful attempt
    (queueing, backoffs and earlier attempts included), ``processing_s`` that
    attempt's processing. Both are ``None`` for a deduplicated result.
    """

    task_id: str
    idempotency_key: str
    status: TaskStatus
    output_key: str | None
    attempts: int
    deduplicated: bool = False
    queue_wait_s: float | None = None
    processing_s: float | None = None
    output_bytes: int | None = None


def _check_id(value: Any) -> None:
    if not isinstance(value, str) or not _ID_PATTERN.fullmatch(value):
        raise InvalidTask(
            f"field 'id': {_show(value)} is not a task id "
            f"(1-{MAX_ID_LENGTH} characters of letters, digits and ._:@/+=-)")


def _check_params(params: Any) -> None:
    if not (isinstance(params, dict) or isinstance(params, Mapping)):  # dict first: no ABC machinery
        raise InvalidTask(f"field 'params': expected an object, got {_show(params)}")
    if len(params) > MAX_PARAMS:
        raise InvalidTask(f"field 'params': {len(params)} entries, at most {MAX_PARAMS} allowed")
    for name, value in params.items():
        if not isinstance(name, str) or not VARIANT_PATTERN.fullmatch(name):
            raise InvalidTask(f"field 'params': {_show(name)} is not a parameter name")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidTask(f"field 'params.{name}': {value!r} is not a finite number")
        if isinstance(value, str) and len(value) > MAX_PARAM_STRING:
            raise InvalidTask(f"field 'params.{name}': string of {len(value)} characters, "
                              f"at most {MAX_PARAM_STRING}")
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise InvalidTask(f"field 'params.{name}': expected a number, string, boolean or null, "
                              f"got {_show(value)}")


def _show(value: Any, limit: int = 60) -> str:
    """A short, safe rendering of a bad value for an error message."""
    if isinstance(value, (str, bytes)) and len(value) > limit:
        value = value[:limit]  # never repr a huge value whole
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{text} ({type(value).__name__})"
