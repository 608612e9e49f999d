"""Reading a file as hostile JSON: a regular file, size-limited, strict, bounded in depth.

The task file's first line of defence (:mod:`taskqueue.taskfile` builds on
it). :func:`read_limited` reads at most ``max_bytes`` from a regular file
(re-checked on the open descriptor: a path swapped for a FIFO or a growing
file is refused). :func:`parse` decodes UTF-8 (a leading byte order mark is
ignored) and refuses what Python's ``json`` would accept but a task file must
not hold: ``NaN``/``Infinity``, numbers that overflow a float, integers over
:data:`MAX_INT_DIGITS` digits, nesting deeper than :data:`MAX_NESTING`, and a
top level that is not an array. An object with a repeated key decodes as a
:class:`DuplicateKeys` naming it, for the caller to refuse. Every refusal is
a :class:`Refused` whose message says why.
"""

from __future__ import annotations

import json
import math
import os
import re
import reprlib
import stat
from typing import Any

MAX_INT_DIGITS = 100         # longer integer literals refuse the file (int() is quadratic in digits)
MAX_NESTING = 32             # a valid task file nests 3 deep: array, task, params
_READ_CHUNK = 64 * 1024
_BOM = "\ufeff"

SHORT = reprlib.Repr()  # how a hostile value is shown in a message; attributes, not arguments (3.12+)
SHORT.maxstring = SHORT.maxother = 60
SHORT.maxlong = 40
SHORT.maxlevel = 2


class Refused(ValueError):
    """The file is not one this reader accepts; the message says why (without the path)."""


def require_regular(st: Any, max_bytes: int) -> None:
    """Refuse what is not a regular file of at most ``max_bytes`` bytes (``st``: its ``os.stat``)."""
    if stat.S_ISDIR(st.st_mode):
        raise Refused("is a directory, not a task file")
    if not stat.S_ISREG(st.st_mode):
        raise Refused("is not a regular file")
    if st.st_size > max_bytes:
        raise Refused(f"is {st.st_size} bytes, over the limit of {max_bytes} bytes (max_task_file_bytes)")


def read_limited(path: str, max_bytes: int) -> bytes:
    """At most ``max_bytes`` bytes of ``path``; refuses a file that holds more, whatever stat said."""
    # O_NONBLOCK: if the path was swapped for a FIFO since the stat, open must not wait for a writer.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise Refused(f"cannot open: {exc.strerror or exc}") from exc
    chunks, total = [], 0
    with open(fd, "rb") as f:
        require_regular(os.fstat(f.fileno()), max_bytes)
        try:
            while total <= max_bytes:
                chunk = f.read(min(_READ_CHUNK, max_bytes + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
        except OSError as exc:
            raise Refused(f"cannot read: {exc.strerror or exc}") from exc
    if total > max_bytes:
        raise Refused(f"holds more than the limit of {max_bytes} bytes (it grew while being read)")
    return b"".join(chunks)


# -- parsing -----------------------------------------------------------------------

class _NotStrict(Exception):
    """Raised by the decoder hooks for valid-looking JSON this reader refuses."""


class DuplicateKeys(dict):
    """A decoded object in which ``key`` appeared more than once (JSON keeps the last)."""

    key = ""


def _object(pairs: list) -> dict:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set = set()
    marked = DuplicateKeys(obj)
    marked.key = next(k for k, _ in pairs if k in seen or seen.add(k))
    return marked


def _reject_constant(name: str) -> Any:
    raise _NotStrict(f"{name} is not a JSON number")


def _parse_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise _NotStrict(f"an integer of {digits} digits, at most {MAX_INT_DIGITS} accepted")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 is Infinity by another name
        raise _NotStrict(f"the number {SHORT.repr(text)} is out of range")
    return value


def parse(data: bytes) -> tuple[list, bool]:
    """The top-level array, and whether any string in it may hold a surrogate."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise Refused(f"not valid UTF-8: byte 0x{data[exc.start]:02x} at byte offset {exc.start} "
                      f"(line {line}): {exc.reason}") from None
    if text.startswith(_BOM):
        text = text[1:]
    if not text.strip(" \t\r\n"):
        raise Refused("is empty; expected a JSON array of tasks")
    too_deep = f"JSON nested more than {MAX_NESTING} levels deep"
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_int=_parse_int,
                           parse_float=_parse_float, object_pairs_hook=_object)
    except json.JSONDecodeError as exc:
        raise Refused(f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    except _NotStrict as exc:
        raise Refused(f"not accepted JSON: {exc}") from None
    except RecursionError:
        raise Refused(too_deep) from None
    if _deeper_than(value, MAX_NESTING):
        raise Refused(too_deep)
    if not isinstance(value, list):
        raise Refused(f"expected a JSON array of tasks at the top level, got {_json_type(value)}")
    # Strict UTF-8 text holds no surrogates: only \uXXXX escapes can put them in a string.
    return value, _SURROGATE_ESCAPE.search(text) is not None


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether containers nest more than ``limit`` deep; iterative, so it cannot overflow the stack."""
    stack = [(value, 1)] if isinstance(value, (list, dict)) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in (node.values() if isinstance(node, dict) else node):
            if isinstance(child, (list, dict)):
                stack.append((child, depth + 1))
    return False


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    names = {str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), "null")
