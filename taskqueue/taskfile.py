"""Loading a task file: a JSON array of task objects, read as hostile input.

:func:`load_tasks` reads one file and writes nothing. The file as a whole is
refused with :class:`TaskFileError` when it is not a regular file, is larger
than ``max_bytes``, is not UTF-8, is not strict JSON (``NaN``, ``Infinity``,
numbers that overflow a float, integers over :data:`MAX_INT_DIGITS` digits), nests deeper than
:data:`MAX_NESTING` levels, or is not an array. A leading UTF-8 byte order
mark is accepted and ignored (RFC 8259 section 8.1 allows it; Windows tools
write one). Reading and strict parsing live in :mod:`taskqueue.strictjson`.

Each item is then checked on its own, and each problem becomes an
:class:`ItemError` whose message reads
``item 3: field 'variant': unknown variant 'sepia' (...)``. Item indexes are
**0-based** positions in the top-level array, as in jq's ``.[3]``.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

from .errors import InvalidTask
from .strictjson import MAX_INT_DIGITS, MAX_NESTING  # noqa: F401 - the limits, named here too
from .strictjson import DuplicateKeys, Refused, parse, read_limited, require_regular
from .strictjson import SHORT as _short
from .task import Task

ON_INVALID = ("reject", "dead-letter")
MAX_REPORTED_ERRORS = 20     # item errors listed in a "reject" TaskFileError
MAX_MESSAGE_CHARS = 300      # item messages are clipped: hostile values must not bloat logs
MAX_IDENTITY_CHARS = 1024    # id/image_key/variant longer than this are not handed back as raw
_IDENTITY = ("id", "image_key", "variant")


class TaskFileError(InvalidTask):
    """The task file was refused as a whole; the message starts with its path.

    ``errors`` holds the first :data:`MAX_REPORTED_ERRORS` item errors and
    ``error_count`` the total when items were refused; both are empty/0 when
    the file itself was the problem.
    """

    def __init__(self, path: str, reason: str, errors: tuple[ItemError, ...] = (),
                 error_count: int = 0) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.errors = tuple(errors)
        self.error_count = error_count

    def __reduce__(self):
        return type(self), (self.path, self.reason, self.errors, self.error_count)


@dataclass(frozen=True)
class ItemError:
    """Why one item was refused. ``index`` is 0-based.

    ``field`` is the field at fault (``'variant'``, ``'params.level'``) or
    None when the item as a whole is wrong; ``value_repr`` a short repr of the
    offending value, None when there is none (a missing field); ``kind`` the
    name of the :class:`~taskqueue.errors.InvalidTask` subclass raised.
    """

    index: int
    field: str | None
    value_repr: str | None
    message: str
    kind: str = "InvalidTask"

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class InvalidItem:
    """A refused item, for the caller to record as a dead letter.

    ``raw`` is the item as decoded when it is an object whose ``id``,
    ``image_key`` and ``variant`` are non-empty, valid-Unicode strings of at
    most :data:`MAX_IDENTITY_CHARS` characters; otherwise None. It is
    untrusted: other fields may hold anything JSON can.
    """

    index: int
    error: ItemError
    raw: dict | None = None
    content: str | None = None  # the item as canonical JSON, when ``raw`` is None

    def dead_letter(self) -> tuple[str, str, str, InvalidTask]:
        """``(task_id, idempotency_key, payload, error)`` to record this item as a dead letter.

        The key is the item's own key plus ``#invalid-item-<index>``: '#' cannot occur in a
        variant, so it never collides with a real task's key, and re-running the file adds nothing.
        An item without that identity is keyed by its index and a digest of its content
        (``invalid-item:#<index>:<sha256, 16 hex>``): another file's bad item there is another one.
        """
        raw = self.raw or {}
        task_id = str(raw.get("id") or f"item-{self.index}")
        if raw:
            key = f"{raw.get('image_key', '')}:{raw.get('variant', '')}#invalid-item-{self.index}"
            return task_id, key, json.dumps(raw, sort_keys=True, default=str), InvalidTask(str(self.error))
        content = self.content if self.content is not None else "null"
        key = f"invalid-item:#{self.index}:{hashlib.sha256(content.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}"
        return task_id, key, content, InvalidTask(str(self.error))


@dataclass(frozen=True)
class LoadedTasks:
    """The valid tasks in file order, the refused items, and the identical duplicates dropped."""

    tasks: list[Task]
    invalid: list[InvalidItem]
    duplicates_dropped: int = 0


def load_tasks(path: str | os.PathLike, *, max_bytes: int,
               check: Callable[[Task], None] | None = None,
               on_invalid: str = "reject") -> LoadedTasks:
    """Read, parse and validate the task file at ``path``. Reads only that file; writes nothing.

    Each item goes through :meth:`Task.from_dict`, then ``check(task)`` (e.g.
    ``processor.check``), which must raise :class:`~taskqueue.errors.InvalidTask`
    for a bad task; any other exception from it propagates. Items sharing an
    ``id`` must be the same JSON object (key order and whitespace aside): a
    later identical copy is dropped and counted, a later different one is an
    error naming both indexes (the first is kept).

    ``on_invalid="reject"`` raises :class:`TaskFileError` if any item is bad,
    listing the first :data:`MAX_REPORTED_ERRORS` and the total.
    ``on_invalid="dead-letter"`` returns the bad items in ``invalid``. Either
    way a file-level problem raises :class:`TaskFileError`. Raises
    ``ValueError`` for a bad ``max_bytes`` or ``on_invalid``, ``TypeError``
    for a ``check`` that is not callable.
    """
    if on_invalid not in ON_INVALID:
        raise ValueError(f"on_invalid must be 'reject' or 'dead-letter', got {on_invalid!r}")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ValueError(f"max_bytes must be a positive integer, got {max_bytes!r}")
    if check is not None and not callable(check):
        raise TypeError(f"check must be callable or None, got {type(check).__name__}")
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TaskFileError(path, "no such file") from None
    except OSError as exc:
        raise TaskFileError(path, f"cannot open: {exc.strerror or exc}") from exc
    try:
        require_regular(st, max_bytes)  # before any read: a huge file is refused unread
        items, surrogates = parse(read_limited(path, max_bytes))
    except Refused as exc:
        raise TaskFileError(path, str(exc)) from exc.__cause__  # the OSError behind "cannot read", if any
    return _validate(path, items, check, on_invalid, surrogates)


# -- validating --------------------------------------------------------------------

def _validate(path: str, items: list, check: Callable[[Task], None] | None,
              on_invalid: str, surrogates: bool) -> LoadedTasks:
    tasks: list = []
    invalid: list = []
    listed: list = []
    error_count = dropped = 0
    # id -> [index, canonical JSON of that item, computed on a clash], for valid items only: an item
    # refused (for a repeated JSON key, say) leaves its id free, and the next with it is checked on its own
    first_with_id: dict = {}
    for index, obj in enumerate(items):
        ident = obj.get("id") if isinstance(obj, dict) else None
        first = first_with_id.get(ident) if isinstance(ident, str) else None
        if first is not None:
            if first[1] is None:
                first[1] = _canonical(items[first[0]])
            if _canonical(obj) == first[1]:
                dropped += 1
                continue
            task, error = None, _item_error(index, obj, InvalidTask(
                f"field 'id': duplicate id {_short.repr(ident)} with different content "
                f"from item {first[0]}"))
        else:
            task, error = _check_item(index, obj, check, surrogates)
            if error is None and isinstance(ident, str):
                first_with_id[ident] = [index, None]
        if error is None:
            tasks.append(task)
            continue
        error_count += 1
        if on_invalid == "dead-letter":
            if _has_identity(obj):
                invalid.append(InvalidItem(index, error, dict(obj)))
            else:
                invalid.append(InvalidItem(index, error, None, _canonical(obj)))
        elif len(listed) < MAX_REPORTED_ERRORS:
            listed.append(error)
    if error_count and on_invalid == "reject":
        lines = [f"{error_count} invalid item{'s' if error_count > 1 else ''} "
                 f"(indexes are 0-based); no task was loaded:"]
        lines += [f"  {error.message}" for error in listed]
        if error_count > len(listed):
            lines.append(f"  ... and {error_count - len(listed)} more")
        raise TaskFileError(path, "\n".join(lines), tuple(listed), error_count)
    return LoadedTasks(tasks=tasks, invalid=invalid, duplicates_dropped=dropped)


def _check_item(index: int, obj: Any, check: Callable[[Task], None] | None, surrogates: bool):
    try:
        _screen(obj, surrogates)
        task = Task.from_dict(obj)
        if check is not None:
            check(task)
    except InvalidTask as exc:
        return None, _item_error(index, obj, exc)
    return task, None


def _screen(obj: Any, surrogates: bool) -> None:
    """Refuse what ``Task.from_dict`` lets through: repeated keys, strings that are not valid Unicode."""
    if not isinstance(obj, dict):
        return
    for prefix, mapping in (("", obj), ("params.", obj.get("params"))):
        if not isinstance(mapping, dict):
            continue
        if isinstance(mapping, DuplicateKeys):
            raise InvalidTask(f"field {_short.repr(prefix + mapping.key)}: "
                              f"appears more than once in the object")
        if not surrogates:
            continue
        for key, value in mapping.items():
            for text in (key, value):
                if isinstance(text, str) and not _is_unicode(text):
                    # JSON's \ud800 escapes decode to lone surrogates, which SQLite and the
                    # file system cannot encode.
                    raise InvalidTask(f"field {_short.repr(prefix + key)}: {_short.repr(text)} "
                                      f"holds an unpaired surrogate, not valid Unicode")


def _item_error(index: int, obj: Any, exc: InvalidTask) -> ItemError:
    detail = str(exc)
    field = _field_of(detail)
    if field is None and not isinstance(obj, dict):
        value_repr = _short.repr(obj)
    else:
        value_repr = _value_at(obj, field)
    return ItemError(index=index, field=_clip(field) if field else None, value_repr=value_repr,
                     message=_clip(f"item {index}: {detail}"), kind=type(exc).__name__)


_FIELD = re.compile(r"""(?:unknown )?field ('[^'\\]*(?:\\.[^'\\]*)*'|"[^"\\]*(?:\\.[^"\\]*)*")""")


def _field_of(detail: str) -> str | None:
    """The field a message names: every InvalidTask message says ``field '<name>'``."""
    match = _FIELD.match(detail)
    if match is None:
        return None
    try:
        name = ast.literal_eval(match.group(1))
    except (ValueError, SyntaxError):
        return None
    return name if isinstance(name, str) else None


def _value_at(obj: Any, field: str | None) -> str | None:
    if field is None or not isinstance(obj, dict):
        return None
    if field in obj:
        return _short.repr(obj[field])
    head, _, name = field.partition(".")
    inner = obj.get(head)
    if name and isinstance(inner, dict) and name in inner:
        return _short.repr(inner[name])
    return None


def _canonical(obj: Any) -> str:
    # sort_keys: key order is not content. JSON text, not ==: 1, 1.0 and true compare equal in Python.
    return json.dumps(obj, sort_keys=True)


def _has_identity(obj: Any) -> bool:
    return isinstance(obj, dict) and all(
        isinstance(obj.get(name), str) and 0 < len(obj[name]) <= MAX_IDENTITY_CHARS
        and _is_unicode(obj[name]) for name in _IDENTITY)


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS - 3] + "..."
