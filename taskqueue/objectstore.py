"""A local directory standing in for an object store (MinIO / S3-like).

Keys are ``/``-separated names mapped to files under one root. Reads stream
in chunks; writes take an iterable of chunks and publish atomically: the
bytes go to a temporary file in the destination directory, which is flushed,
fsynced and ``os.replace``d onto the final name, and then the directory is
fsynced. A reader therefore sees an object complete or not at all.

Keys are validated before any I/O (:mod:`taskqueue.keys`), and a path that would resolve outside the
root (through ``..`` or a symlink) is refused: nothing is ever read or written
outside the root. On POSIX every access reaches its name from the root one name at a time
without following any symlink (:mod:`taskqueue.confined`), so a directory swapped for a symlink
(another process renaming things under the root) is refused, never followed out. A key that
passes no symlink -- nearly all -- is walked so as written; a key may also use a symlink that
stays inside the root: its path is resolved first, then walked the same way.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from typing import BinaryIO, Iterable, Iterator

from .confined import BENEATH, NOFOLLOW, at, fsync_directory, fsync_held, missing, open_directory
from .errors import InvalidKey, OutputWriteError, SourceMissing, SourceReadError
from .keys import MAX_KEY_LENGTH, MAX_SEGMENT_BYTES, MAX_SEGMENT_LENGTH, TEMP_MARKER, validate_key  # noqa: F401
from .tempfiles import HOST_TAG, atomic_write_text, sweep, temp_entries, temp_name  # noqa: F401

DEFAULT_CHUNK_SIZE = 64 * 1024

# Opening a named pipe for reading blocks until a writer comes: open without waiting, then look. On
# Linux the flag has no effect on a regular file (open(2)): read_chunks leaves it set there (one call
# fewer; an EAGAIN would still be a SourceReadError), open_read clears it on the file it hands out.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_LINUX = sys.platform.startswith("linux")
_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation
# The buffer of an object's file, given explicitly: with the default, opening the file asks the
# system twice more (whether it is a terminal, and its block size), each call giving the GIL up.
# Big enough that a compressed output of tens of KiB, header and body, goes out in one write.
FILE_BUFFER = 64 * 1024


class LocalObjectStore:
    """Objects as files under ``root``. Thread-safe: every call is independent.

    ``fsync=False`` skips the two fsyncs of a write (atomicity against a
    crashing process is kept by ``os.replace``; only power-loss durability is
    given up).
    """

    def __init__(self, root: str | os.PathLike, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 fsync: bool = True, create: bool = True) -> None:
        if not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        root = os.fspath(root)
        if create:
            os.makedirs(root, exist_ok=True)
        if not os.path.isdir(root):
            raise NotADirectoryError(errno.ENOTDIR, "object store root is not a directory", root)
        self.root = os.path.realpath(root)
        self.chunk_size = chunk_size
        self.fsync = fsync

    def __repr__(self) -> str:
        return f"LocalObjectStore({self.root!r})"

    # -- paths ---------------------------------------------------------------

    def path_for(self, key: str) -> str:
        """The absolute path of ``key``; raises :class:`InvalidKey` if it escapes the root."""
        validate_key(key)
        path = os.path.join(self.root, *key.split("/"))
        # realpath follows symlinks; a key may use one only if it stays inside the root.
        resolved = os.path.realpath(path)
        if not resolved.startswith(self.root + os.sep):
            raise InvalidKey(f"object key {key!r} resolves outside the store root")
        return resolved

    def _directory(self, directory: str, *, create: bool = False, names: list[str] | None = None) -> int | None:
        """A descriptor of ``directory`` (resolved, under the root; ``names`` from the root to it, if
        known), reached as :func:`~taskqueue.confined.open_directory` says; None where there are no
        ``*at`` calls."""
        return open_directory(self.root, directory, create=create, fsync=self.fsync, names=names)

    def _reach(self, key: str, *, create: bool = False) -> tuple[str, str, int | None]:
        """Where ``key``'s entry is: its directory (resolved, under the root), the entry's name, and
        a descriptor of the directory (see :meth:`_directory`; the caller closes it). The same place
        as :meth:`path_for` names. Raises :class:`InvalidKey` and ``OSError``.

        Most keys pass no symlink, and for them the path as written is the path resolved. The walk
        from the root follows no symlink and fails on one, so the key is walked as written first,
        then its entry looked at (``lstat``): when neither meets a symlink, ``realpath`` -- an
        ``lstat`` of every component, each a system call that gives the GIL up, for the other
        threads to hold -- is saved (on io@100 the engine made 8 % more tasks/s, the stdlib pool 3 %:
        see the README, "The commit path"). Anything else (a symlink, a component missing or not a directory, an entry
        that cannot be looked at) is resolved first, as before, and walked again: the same place,
        the same errors.
        """
        if BENEATH:
            validate_key(key)
            *parents, name = key.split("/")
            directory = os.path.join(self.root, *parents)
            try:
                fd = self._directory(directory, create=create, names=parents)
            except OSError as exc:
                if not missing(exc):
                    raise
            else:
                try:
                    entry = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    return directory, name, fd  # nothing there (yet): the path as written is its path
                except OSError:
                    entry = None
                except BaseException:
                    os.close(fd)
                    raise
                if entry is not None and not stat.S_ISLNK(entry.st_mode):
                    return directory, name, fd
                os.close(fd)
        directory, name = os.path.split(self.path_for(key))
        return directory, name, self._directory(directory, create=create)

    def _stat(self, key: str) -> os.stat_result:
        """``lstat`` of what is at ``key`` now (reached as :meth:`_reach` says). Raises ``OSError``."""
        directory, name, fd = self._reach(key)
        try:
            return os.stat(at(fd, directory, name), dir_fd=fd, follow_symlinks=False)
        finally:
            if fd is not None:
                os.close(fd)

    # -- reads ---------------------------------------------------------------

    def exists(self, key: str) -> bool:
        """Whether a regular file is at ``key``. Raises ``OSError`` when that cannot be told
        (permission denied, an I/O error): not being able to look is not "nothing is there"."""
        try:
            return stat.S_ISREG(self._stat(key).st_mode)
        except OSError as exc:
            if not missing(exc):
                raise
            return False

    def size(self, key: str) -> int:
        """The size of object ``key`` in bytes; :class:`SourceMissing` if no regular file is there."""
        try:
            found = self._stat(key)
        except OSError as exc:
            if not missing(exc):
                raise
            found = None
        if found is None or not stat.S_ISREG(found.st_mode):
            raise SourceMissing(f"object {key!r} does not exist")
        return found.st_size

    def read_chunks(self, key: str, chunk_size: int | None = None) -> Iterator[bytes]:
        """Open ``key`` now and return an iterator over its bytes, ``chunk_size`` at a time.

        Raises :class:`SourceMissing` at once if the object is absent, so the
        caller learns of it before consuming anything. The file is closed when
        the iterator is exhausted or closed.
        """
        size = self.chunk_size if chunk_size is None else chunk_size
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        fd = self._open(key)
        try:
            return _ChunkReader(fd, size, key)
        except BaseException:
            os.close(fd)
            raise

    def open_read(self, key: str):
        """Open ``key`` for reading as a binary file (for decoders that seek, like Pillow).

        Only a regular file is an object: anything else at the key (a named pipe, whose open would
        block until a writer came, a device) is :class:`SourceMissing`, as :meth:`exists` says.
        """
        fd = self._open(key, blocking=True)
        try:
            return os.fdopen(fd, "rb", buffering=FILE_BUFFER)
        except BaseException:
            os.close(fd)
            raise

    def _open(self, key: str, *, blocking: bool = False) -> int:
        """:meth:`open_read`'s descriptor, before a file object is made of it (which costs two more
        system calls: :meth:`read_chunks` reads the descriptor itself); ``O_NONBLOCK`` cleared if
        ``blocking`` or off Linux (see :data:`_NONBLOCK`)."""
        try:
            directory, name, parent = self._reach(key)
            try:
                fd = os.open(at(parent, directory, name), os.O_RDONLY | _NONBLOCK | _BINARY | NOFOLLOW,
                             dir_fd=parent)
            finally:
                if parent is not None:
                    os.close(parent)
        except OSError as exc:
            if not (missing(exc) or isinstance(exc, IsADirectoryError)):
                raise
            raise SourceMissing(f"object {key!r} does not exist") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise SourceMissing(f"object {key!r} does not exist (what is there is not a regular file)")
            if _NONBLOCK and (blocking or not _LINUX):
                os.set_blocking(fd, True)
            return fd
        except BaseException:
            os.close(fd)
            raise

    # -- writes --------------------------------------------------------------

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        """Context manager yielding a binary file whose contents become object ``key`` on exit.

        The file is a temporary in the destination directory. On a clean exit
        it is fsynced and renamed onto the key, then the directory is fsynced
        (this blocks for the fsyncs). If the body raises, the temporary is
        removed, nothing is published, and the error propagates; ``OSError``s
        are wrapped in :class:`OutputWriteError` with the ``OSError`` as
        ``__cause__``, so the retry policy can read its errno.
        """
        with self._publishing(key) as fd, os.fdopen(fd, "wb", buffering=FILE_BUFFER, closefd=False) as f:
            yield f
            f.flush()

    def write(self, key: str, chunks: Iterable[bytes]) -> int:
        """Publish ``chunks`` as object ``key`` atomically (see :meth:`open_write`); return the size.

        Written to the descriptor itself, up to :data:`FILE_BUFFER` bytes at a time: a file object
        would cost two more system calls to make."""
        written, pending, held = 0, [], 0
        with self._publishing(key) as fd:
            for chunk in chunks:
                pending.append(bytes(chunk))  # bytes as they are; anything else copied (a buffer may be refilled)
                held += len(chunk)
                if held >= FILE_BUFFER:
                    written += self._write_out(fd, b"".join(pending))
                    pending, held = [], 0
            written += self._write_out(fd, b"".join(pending))
        return written

    @staticmethod
    def _write_out(fd: int, data: bytes) -> int:
        """Write all of ``data`` to the temporary file ``fd`` (a write may take less than it is
        given); return its length."""
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        return len(data)

    @contextlib.contextmanager
    def _publishing(self, key: str) -> Iterator[int]:
        """:meth:`open_write` on a descriptor of the temporary file, which this closes."""
        parent = created = fd = None
        try:
            directory, name, parent = self._reach(key, create=True)
            temp = temp_name(name)
            fd = os.open(at(parent, directory, temp), os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | _BINARY,
                         0o666, dir_fd=parent)
            created = temp
            yield fd
            if self.fsync:
                os.fsync(fd)
            closing, fd = fd, None
            os.close(closing)
            os.replace(at(parent, directory, temp), at(parent, directory, name), src_dir_fd=parent,
                       dst_dir_fd=parent)
            created = None
            if self.fsync:
                if parent is not None:
                    fsync_held(parent)
                else:
                    fsync_directory(directory)
        except BaseException as exc:
            if fd is not None:
                os.close(fd)
            if created is not None:
                with contextlib.suppress(OSError):
                    os.unlink(at(parent, directory, created), dir_fd=parent)
            if isinstance(exc, OSError):
                raise OutputWriteError(f"writing object {key!r}: {exc.strerror or exc}") from exc
            raise
        finally:
            if parent is not None:
                os.close(parent)

    def delete(self, key: str) -> bool:
        try:
            directory, name, parent = self._reach(key)
        except OSError as exc:
            if not missing(exc):
                raise
            return False
        try:
            os.unlink(at(parent, directory, name), dir_fd=parent)
            return True
        except FileNotFoundError:
            return False
        finally:
            if parent is not None:
                os.close(parent)

    def temp_files(self) -> list[str]:
        """Paths of temporary files under the root (left by a killed writer)."""
        return [os.path.join(directory, name) for directory, name, _fd in temp_entries(self.root)]

    def sweep_temp_files(self) -> int:
        """Remove temporary files whose writing process on this host is gone; return how many
        (another host's are left alone: on a shared file system their writers may be alive there)."""
        return sweep(self.root)


class _ChunkReader:
    """An iterator over a file's chunks that owns its descriptor from the start (closing it closes that)."""

    def __init__(self, fd: int, size: int, key: str) -> None:
        self._fd: int | None = fd
        self._size = size
        self._key = key

    def __iter__(self) -> "_ChunkReader":
        return self

    def __next__(self) -> bytes:
        if self._fd is None:
            raise StopIteration
        try:
            chunk = os.read(self._fd, self._size)
        except OSError as exc:  # say it was the source, not the output being written meanwhile
            self.close()
            raise SourceReadError(f"reading object {self._key!r}: {exc.strerror or exc}") from exc
        if not chunk:
            self.close()
            raise StopIteration
        return chunk

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> "_ChunkReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
