"""Reaching names under a root directory without ever following a symlink out of it.

Where paths can be opened relative to a directory without following symlinks
(POSIX: ``O_NOFOLLOW``, ``O_DIRECTORY`` and the ``*at`` calls: :data:`BENEATH`),
every access walks from the root one name at a time, holding a descriptor of
each directory it passes (:func:`open_directory`), and then names the last
entry beside that descriptor (:func:`at`). A directory swapped for a symlink
after the path was resolved (another process renaming things under the root)
is then refused, never followed out. Elsewhere (Windows) paths are used as
resolved.
"""

from __future__ import annotations

import contextlib
import errno
import os

BENEATH = (hasattr(os, "O_NOFOLLOW") and hasattr(os, "O_DIRECTORY")
           and {os.open, os.mkdir, os.rename, os.unlink, os.stat} <= os.supports_dir_fd)
NOFOLLOW = os.O_NOFOLLOW if BENEATH else 0
# The walk's descriptors only name directories to the *at calls. O_PATH (Linux) asks for no read
# permission, so a directory one may pass through but not list (mode 0o711, 0o733) works as its path
# would; O_PATH descriptors cannot be fsynced (see fsync_held). Elsewhere a directory is opened to read.
_PATH = getattr(os, "O_PATH", 0)
_WALK = (_PATH or os.O_RDONLY) | (os.O_DIRECTORY | os.O_NOFOLLOW if BENEATH else 0)
_READ = os.O_RDONLY | (os.O_DIRECTORY | os.O_NOFOLLOW if BENEATH else 0)
# What opening a name without following it says when the name is a symlink (or no longer a directory):
# ELOOP (Linux, for a file; macOS), ENOTDIR (Linux, with O_DIRECTORY), EMLINK (FreeBSD).
_NOT_THERE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EMLINK})


def open_directory(root: str, directory: str, *, create: bool = False, fsync: bool = True,
                   names: list[str] | None = None) -> int | None:
    """A descriptor of ``directory`` (a resolved path under ``root``, or ``root`` itself) for the
    ``*at`` calls; None where there are none (the caller then uses the resolved path, see :func:`at`).

    Reached from ``root`` one name at a time, never following a symlink: a directory swapped for a
    symlink since the path was resolved is refused (an ``OSError`` that :func:`missing` recognises).
    ``names``: the names from ``root`` to ``directory``, when the caller has them (else derived).
    ``root`` is opened by its path each time: a root deleted and made again, or renamed and
    replaced, is the new one (a descriptor held for the store's life saved two system calls a walk,
    but kept every access in the old directory; found in review). ``create`` makes the missing directories,
    each one's entry made durable (its parent fsynced) when ``fsync`` is on, and opens the last
    one to read where it may be, so that :func:`fsync_held` needs no second open. The caller
    closes the descriptor. Raises ``OSError``.
    """
    if not BENEATH:
        if create:
            os.makedirs(directory, exist_ok=True)
        return None
    if names is None:
        names = [] if directory == root else os.path.relpath(directory, root).split(os.sep)
    fd = _enter(root, None, create and not names)
    try:
        for index, name in enumerate(names, 1):
            try:
                child = _enter(name, fd, create and index == len(names))
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):  # another writer made it meanwhile ...
                    os.mkdir(name, dir_fd=fd)
                if fsync:  # ... and may not have made its entry durable yet
                    fsync_held(fd)
                child = _enter(name, fd, index == len(names))
            parent, fd = fd, child  # before the close: an error there must not close it again
            os.close(parent)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _enter(name: str, dir_fd: int | None, readable: bool) -> int:
    """Open the directory ``name`` (beside ``dir_fd``) without following it; ``readable``: to read,
    where this user may (see :data:`_WALK`), so that it can be fsynced as it is."""
    if readable and _PATH:
        try:
            return os.open(name, _READ, dir_fd=dir_fd)
        except PermissionError:
            pass
    return os.open(name, _WALK, dir_fd=dir_fd)


def at(directory_fd: int | None, directory: str, name: str) -> str:
    """What to pass with ``dir_fd=directory_fd``: the bare name beside a descriptor, else the path."""
    return name if directory_fd is not None else os.path.join(directory, name)


def missing(exc: OSError) -> bool:
    """Whether ``exc``, from reaching a name without following symlinks, means nothing is there."""
    return exc.errno in _NOT_THERE


def fsync_held(directory_fd: int) -> None:
    """fsync the directory ``directory_fd`` holds. An ``O_PATH`` descriptor cannot be (``EBADF``):
    the directory is opened again to read, which a user who may write in it but not list it (mode
    0o733) may not do; its entries then stay as durable as the file system makes them unasked."""
    try:
        os.fsync(directory_fd)
        return
    except OSError as exc:
        if not (_PATH and exc.errno == errno.EBADF):
            raise
    try:
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=directory_fd)
    except PermissionError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(directory: str) -> None:
    """fsync ``directory`` by its path (POSIX; Windows cannot open a directory, and NTFS journals renames)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
