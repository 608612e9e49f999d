"""The paths a command is given, checked before anything is created or processed.

Each refusal is one ``OSError`` or :class:`~taskqueue.errors.ConfigError` whose message starts with
the flag or variable the path came from (``--store: ...``, ``TQ_LOG_FILE (environment): ...``);
``main`` prints it and exits 2.
"""

from __future__ import annotations

import errno
import os
import tempfile

from ..config import Config
from ..errors import ConfigError
from ..keys import TEMP_MARKER
from ..tempfiles import HOST_TAG
from ..store import check_database, is_url


def check_paths(config: Config, *, store: bool = True, outputs: bool = True, tasks: str | None = None) -> None:
    """Refuse paths that cannot work before anything is created or processed; every message starts
    with the flag or variable the path came from (``--store: ...``, ``TQ_LOG_FILE (environment): ...``).

    * the store root (``store``): a directory, or one that can be created (no file in the way, names
      the file system accepts, a parent that takes new entries); writable;
    * a SQLite ``--db``: not a directory, in a directory that exists and, if it exists, this queue's
      database (checked without writing to it); else a name the file system accepts, in a writable
      directory;
    * ``--metrics-out`` and ``--log-file`` (``outputs``): not a directory, in a directory that exists
      and takes new files, names the file system accepts (the metrics are written through a temporary
      file named after them); an existing metrics file must be a regular file (it is replaced), an
      existing log file writable (it is appended to: a named pipe must have a reader); neither may be
      another path of the run (``tasks``, the task file; the database or its side files; the other
      output; anything in the store), which it would overwrite;
    * a SQLite ``--db`` is a file: not ``:memory:`` (gone at exit), and if it exists a regular file.

    Writability is probed by creating and removing a temporary entry (``.tq-probe-*``), which works
    for every user and file system, ``root`` and ``/proc`` included; nothing probed is left behind.
    """
    label = {name: config.source_of(name) for name in ("db", "store", "metrics_out", "log_file")}
    if store:
        _check_store(label["store"], config.store)
    local_db = None if is_url(config.db) else config.db
    if local_db is not None:
        if local_db in ("", ":memory:"):
            raise ConfigError(f"{label['db']}: {local_db!r} is a database in memory, lost at exit: give a file")
        if os.path.isdir(local_db):
            raise IsADirectoryError(f"{label['db']}: {local_db!r} is a directory, not a database file")
        if os.path.lexists(local_db) and not os.path.isfile(local_db):  # a device, a pipe, a dangling link
            raise ConfigError(f"{label['db']}: {local_db!r} is not a regular file")
        parent = _parent(label["db"], local_db)
        if not os.path.lexists(local_db):
            _check_name(label["db"], local_db, parent, extra=len("-journal"))  # SQLite's side files
            _probe(label["db"], local_db, parent)
    if outputs:  # a command that writes them (not enqueue, whatever the environment says)
        _check_apart(config, label, tasks, local_db)
        if config.metrics_out:
            _check_output(label["metrics_out"], config.metrics_out, replaced=True)
        if config.log_file:
            _check_output(label["log_file"], config.log_file, replaced=False)
    if local_db:
        check_database(local_db)


# What a temporary file's name adds to the name of the file it replaces (see tempfiles.atomic_write_text):
# "." + name + ".tmp-" + pid + "-" + counter + "~" + host tag, with room for a 10-digit pid and a 12-digit count.
_TEMP_EXTRA = len(f".{TEMP_MARKER}{'9' * 10}-{'9' * 12}~{HOST_TAG}")


def _check_store(label: str, root: str) -> None:
    if os.path.lexists(root) and not os.path.isdir(root):  # lexists: a dangling link too
        raise NotADirectoryError(f"{label}: {root!r} is not a directory")
    absolute = os.path.abspath(root)
    existing, missing = absolute, []
    while not os.path.lexists(existing):
        existing, name = os.path.split(existing)
        missing.append(name)
    if not os.path.isdir(existing):
        raise NotADirectoryError(f"{label}: {root!r} cannot be created: {existing!r} is not a directory")
    limit = _limit(existing, "PC_NAME_MAX")
    for name in missing:
        if limit and len(os.fsencode(name)) > limit:
            raise ConfigError(f"{label}: {root!r} cannot be created: the name {name!r} is "
                              f"{len(os.fsencode(name))} bytes, at most {limit} on this file system")
    _check_path_length(label, root, absolute, existing)
    _probe(label, root, existing, directory_entry=bool(missing))


def _check_apart(config: Config, label: dict[str, str], tasks: str | None, local_db: str | None) -> None:
    """Refuse an output (the metrics, the log) that is another path of the same run: writing it would
    overwrite the task file, the database (or a side file of it), the other output or an object."""
    taken: list[tuple[str, str]] = []
    if tasks:
        taken.append((tasks, "the task file (--tasks)"))
    if local_db:
        taken += [(local_db + side, f"the database ({label['db']})") for side in ("", "-wal", "-shm", "-journal")]
    root = os.path.realpath(config.store) if config.store else None
    for name, what in (("metrics_out", "the metrics file"), ("log_file", "the log file")):
        path = getattr(config, name)
        if not path:
            continue
        for other, whose in taken:
            if _same_file(path, other):
                raise ConfigError(f"{label[name]}: {path!r} is {whose}: it would be overwritten")
        if root is not None and os.path.realpath(path).startswith(root + os.sep):
            raise ConfigError(f"{label[name]}: {path!r} is inside the object store ({label['store']}): "
                              f"it would be written over an object")
        taken.append((path, f"{what} ({label[name]})"))


def _same_file(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` name the same file: the same path once resolved, or one file by two names."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # either does not exist (yet): different paths are different files
        return False


def _check_output(label: str, path: str, *, replaced: bool) -> None:
    """An output file: ``replaced`` (the metrics) is written through a temporary file and renamed onto
    ``path``; otherwise (the log) it is opened for appending."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{label}: {path!r} is a directory, not a file")
    parent = _parent(label, path)
    if replaced:
        if os.path.lexists(path) and not os.path.isfile(path):
            raise ConfigError(f"{label}: {path!r} is not a regular file (it would be replaced)")
        _check_name(label, path, parent, extra=_TEMP_EXTRA,
                    why=" (it is written through a temporary file named after it)")
        _probe(label, path, parent)
    elif os.path.exists(path):
        if not os.access(path, os.W_OK):
            raise PermissionError(f"{label}: {path!r} is not writable")
        try:  # as the log will be; without waiting (a named pipe nobody reads would block it for good)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_NONBLOCK", 0))
            open(fd, "ab").close()  # what the log's own open does next: seek to the end (refused by /proc files)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                raise ConfigError(f"{label}: {path!r} is a named pipe nobody reads: the run would wait for a "
                                  f"reader before doing anything") from None
            raise PermissionError(f"{label}: {path!r} cannot be appended to ({exc.strerror or exc})") from None
    else:
        _check_name(label, path, parent)
        _probe(label, path, parent)


def _parent(label: str, path: str) -> str:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{label}: {path!r}: directory {parent!r} does not exist")
    return parent


def _limit(directory: str, name: str) -> int | None:
    """``os.pathconf(directory, name)`` (NAME_MAX, PATH_MAX), or None where there is none or it is unknown."""
    try:
        value = os.pathconf(directory, name)
    except (AttributeError, OSError, ValueError):  # no pathconf (Windows), or not known here
        return 255 if name == "PC_NAME_MAX" else None
    return value if value and value > 0 else None


def _check_name(label: str, path: str, parent: str, *, extra: int = 0, why: str = "") -> None:
    """Refuse ``path`` if its file name (plus ``extra`` bytes the queue adds to it) is longer than the
    file system of ``parent`` accepts, or the whole path longer than the system's limit."""
    limit = _limit(parent, "PC_NAME_MAX")
    size = len(os.fsencode(os.path.basename(path)))
    if limit and size + extra > limit:
        raise ConfigError(f"{label}: the file name of {path!r} is {size} bytes, at most {limit - extra} "
                          f"on this file system{why}")
    _check_path_length(label, path, os.path.join(parent, os.path.basename(path)), parent, extra)


def _check_path_length(label: str, path: str, absolute: str, existing: str, extra: int = 0) -> None:
    limit = _limit(existing, "PC_PATH_MAX")
    size = len(os.fsencode(absolute)) + extra
    if limit and size >= limit:
        raise ConfigError(f"{label}: {path!r} is too long a path ({size} bytes as an absolute path, "
                          f"under {limit} here)")


def _probe(label: str, path: str, directory: str, *, directory_entry: bool = False) -> None:
    """Create and remove a temporary file (or directory) in ``directory``; refuse ``path`` if that fails."""
    try:
        if directory_entry:
            os.rmdir(tempfile.mkdtemp(prefix=".tq-probe-", dir=directory))
        else:
            fd, probe = tempfile.mkstemp(prefix=".tq-probe-", dir=directory)
            os.close(fd)
            os.remove(probe)
    except OSError as exc:
        raise PermissionError(f"{label}: {path!r} cannot be written: creating a "
                              f"{'directory' if directory_entry else 'file'} in {directory!r} fails "
                              f"({exc.strerror or exc})") from None
