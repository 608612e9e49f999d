"""Temporary files: how a file is replaced atomically, and how the one a killed writer left is known.

A file (an object in a store, a report, a metrics snapshot) is written as a
temporary beside it, fsynced and renamed onto its name. The temporary's name
says which process on which host writes it, ``.<name>.tmp-<pid>-<n>~<host
tag>``, so that a sweep can tell the leftovers of a writer that died from the
files of one still writing, here or on another machine sharing the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
import socket
from typing import Iterator

from .confined import BENEATH, at, fsync_directory
from .keys import TEMP_MARKER

# Temp files end in "~<host tag>": on a store shared by several machines, a sweep removes only the
# temp files of dead writers on its own host (another host's pids mean nothing here).
HOST_TAG = hashlib.sha1(socket.gethostname().encode("utf-8", "surrogatepass")).hexdigest()[:8]
# What temp_name makes, and nothing else: a user's "holiday.tmp-edit.jpg" beside the objects is not ours
# to sweep. (Names written before the host tag have none: they are this host's.)
TEMP_NAME = re.compile(r"\..+" + re.escape(TEMP_MARKER) + r"(?P<pid>[0-9]+)-[0-9]+(?:~(?P<host>[0-9A-Za-z]+))?")
_counter = itertools.count()


def temp_name(path: str) -> str:
    """``.<name>.tmp-<pid>-<n>~<host tag>``: which process on which host is writing it."""
    return f".{os.path.basename(path)}{TEMP_MARKER}{os.getpid()}-{next(_counter)}~{HOST_TAG}"


def abandoned(name: str) -> bool:
    """Whether ``name`` (one :data:`TEMP_NAME` matches) was left by a writer on this host that is gone.
    Another host's is never: on a shared file system its writer may be alive there."""
    pid, host = TEMP_NAME.fullmatch(name).group("pid", "host")
    return not ((host and host != HOST_TAG) or _pid_alive(int(pid)))


def temp_entries(root: str) -> Iterator[tuple[str, str, int | None]]:
    """``(directory, name, descriptor of the directory or None)`` of each temporary file under
    ``root``. On POSIX the walk holds each directory open (``os.fwalk``, never following a symlink),
    so what a sweep deletes is in the directory it listed, whatever is renamed meanwhile."""
    if BENEATH and hasattr(os, "fwalk"):
        for directory, _dirs, files, directory_fd in os.fwalk(root):
            yield from ((directory, name, directory_fd) for name in files if TEMP_NAME.fullmatch(name))
    else:
        for directory, _dirs, files in os.walk(root):
            yield from ((directory, name, None) for name in files if TEMP_NAME.fullmatch(name))


def sweep(root: str) -> int:
    """Remove the temporary files under ``root`` that a writer on this host left as it died (see
    :func:`abandoned`); return how many."""
    removed = 0
    for directory, name, directory_fd in temp_entries(root):
        if abandoned(name):
            with contextlib.suppress(OSError):
                os.unlink(at(directory_fd, directory, name), dir_fd=directory_fd)
                removed += 1
    return removed


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to the file ``path`` atomically (temp file in the same directory, fsync, rename).

    For files outside any store (task files, metrics, reports). Creates the
    directory if needed; no temp file survives an error.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temp = os.path.join(directory, temp_name(path))
    try:
        with open(temp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temp)
        raise
    with contextlib.suppress(OSError):  # the rename durable too; a file system that cannot say so keeps it
        fsync_directory(directory)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":  # os.kill(pid, 0) terminates on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True
