"""Object keys: what a key may be, checked before any I/O (the rule every store and task shares).

A key is ``/``-separated segments. Refused: non-strings, empty keys, keys over
:data:`MAX_KEY_LENGTH` characters, segments over :data:`MAX_SEGMENT_BYTES`
bytes in UTF-8, absolute paths, backslashes, control characters, empty, ``.``
and ``..`` segments, drive paths, and segments that look like a store's
temporary files (:data:`TEMP_MARKER`).
"""

from __future__ import annotations

import re

from .errors import InvalidKey

MAX_KEY_LENGTH = 512
TEMP_MARKER = ".tmp-"
# A segment's limit, in UTF-8 bytes (file systems count a file name's bytes, 255 at most, not its
# characters). Within 255 bytes it leaves room for the longest name the store makes from a segment, the
# temporary file of a write: "." + segment + ".tmp-" + pid + "-" + counter + "~" + host tag, i.e.
# segment + 16 bytes + the digits of pid and counter (room for 39 of them here). An output key's last
# segment is its source's plus a variant suffix (".gz", ".webp", ...): it is validated under the same
# limit, so a task whose source segment plus suffix exceeds it is refused at load (InvalidParameter).
MAX_SEGMENT_BYTES = 200
MAX_SEGMENT_LENGTH = MAX_SEGMENT_BYTES  # the former name (ASCII: one byte a character)

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# The keys almost every caller uses, accepted by one match (the checks below would accept them too):
# ASCII segments that start with a letter, digit, "_" or "-" (so never "", "." or ".."), no ":" or "\\".
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.=+@-]{0,%d}(?:/[A-Za-z0-9_-][A-Za-z0-9_.=+@-]{0,%d})*"
                        % (MAX_SEGMENT_BYTES - 1, MAX_SEGMENT_BYTES - 1))


def validate_key(key: object) -> str:
    """Return ``key`` if it is a safe object key, else raise :class:`InvalidKey` saying why.

    Refused: non-strings, empty keys, keys over ``MAX_KEY_LENGTH`` characters,
    segments over ``MAX_SEGMENT_BYTES`` bytes in UTF-8, absolute paths,
    backslashes, NUL and other control characters, empty segments (``a//b``,
    trailing ``/``), ``.`` and ``..`` segments, and segments that look like
    this store's temporary files.
    """
    if type(key) is str and len(key) <= MAX_KEY_LENGTH and _PLAIN_KEY.fullmatch(key) and TEMP_MARKER not in key:
        return key
    return _check_key(key)


def _check_key(key: object) -> str:
    """:func:`validate_key`, one rule at a time (each refusal says which rule)."""
    if not isinstance(key, str):
        raise InvalidKey(f"object key must be a string, got {type(key).__name__}")
    if not key:
        raise InvalidKey("object key is empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"object key is {len(key)} characters long, at most {MAX_KEY_LENGTH}")
    if key.startswith("/"):
        raise InvalidKey(f"object key {key!r} is absolute")
    if "\\" in key:
        raise InvalidKey(f"object key {key!r} contains a backslash")
    if _CONTROL.search(key):  # C0, DEL and C1 controls
        raise InvalidKey(f"object key {key!r} contains a control character")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKey(f"object key {key!r} is not valid Unicode (lone surrogate)") from None
    for segment in key.split("/"):
        if segment == "":
            raise InvalidKey(f"object key {key!r} has an empty segment")
        if segment in (".", ".."):
            raise InvalidKey(f"object key {key!r} has a {segment!r} segment")
        size = len(segment.encode("utf-8"))
        if size > MAX_SEGMENT_BYTES:
            raise InvalidKey(f"object key {key!r} has a segment of {size} bytes (UTF-8), "
                             f"over the limit of {MAX_SEGMENT_BYTES} bytes")
        if TEMP_MARKER in segment:
            raise InvalidKey(f"object key {key!r} uses the reserved marker {TEMP_MARKER!r}")
    if len(key) >= 2 and key[1] == ":":
        raise InvalidKey(f"object key {key!r} looks like a drive path")
    return key
