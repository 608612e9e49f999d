"""A local directory standing in for an object store (MinIO / S3-like).

Keys are ``/``-separated names mapped to files under one root. Reads stream
in chunks; writes take an iterable of chunks and publish atomically: the
bytes go to a temporary file in the destination directory, which is flushed,
fsynced and ``os.replace``d onto the final name, and then the directory is
fsynced. A reader therefore sees an object complete or not at all.

Keys are validated before any I/O, and a path that would resolve outside the
root (through ``..`` or a symlink) is refused: nothing is ever read or written
outside the root.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import re
import socket
import stat
from typing import BinaryIO, Iterable, Iterator

from .errors import InvalidKey, OutputWriteError, SourceMissing, SourceReadError

DEFAULT_CHUNK_SIZE = 64 * 1024
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

_temp_counter = itertools.count()
# Temp files end in "~<host tag>": on a store shared by several machines, a sweep removes only the
# temp files of dead writers on its own host (another host's pids mean nothing here).
HOST_TAG = hashlib.sha1(socket.gethostname().encode("utf-8", "surrogatepass")).hexdigest()[:8]
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


# Opening a named pipe for reading blocks until a writer comes: open without waiting, then look.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation


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

    # -- reads ---------------------------------------------------------------

    def exists(self, key: str) -> bool:
        return os.path.isfile(self.path_for(key))

    def size(self, key: str) -> int:
        try:
            return os.stat(self.path_for(key)).st_size
        except FileNotFoundError:
            raise SourceMissing(f"object {key!r} does not exist") from None

    def read_chunks(self, key: str, chunk_size: int | None = None) -> Iterator[bytes]:
        """Open ``key`` now and return an iterator over its bytes, ``chunk_size`` at a time.

        Raises :class:`SourceMissing` at once if the object is absent, so the
        caller learns of it before consuming anything. The file is closed when
        the iterator is exhausted or closed.
        """
        size = self.chunk_size if chunk_size is None else chunk_size
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        return _ChunkReader(self.open_read(key), size, key)

    # -- writes --------------------------------------------------------------

    def open_read(self, key: str):
        """Open ``key`` for reading as a binary file (for decoders that seek, like Pillow).

        Only a regular file is an object: anything else at the key (a named pipe, whose open would
        block until a writer came, a device) is :class:`SourceMissing`, as :meth:`exists` says.
        """
        try:
            fd = os.open(self.path_for(key), os.O_RDONLY | _NONBLOCK | _BINARY)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise SourceMissing(f"object {key!r} does not exist") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise SourceMissing(f"object {key!r} does not exist (what is there is not a regular file)")
            if _NONBLOCK:
                os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

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
        path = self.path_for(key)
        directory = os.path.dirname(path)
        temp = os.path.join(directory, _temp_name(path))
        try:
            os.makedirs(directory, exist_ok=True)
            with open(temp, "wb") as f:
                yield f
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(temp, path)
            if self.fsync:
                _fsync_directory(directory)
        except BaseException as exc:
            _remove_quietly(temp)
            if isinstance(exc, OSError):
                raise OutputWriteError(f"writing object {key!r}: {exc.strerror or exc}") from exc
            raise

    def write(self, key: str, chunks: Iterable[bytes]) -> int:
        """Publish ``chunks`` as object ``key`` atomically (see :meth:`open_write`); return the size."""
        written = 0
        with self.open_write(key) as f:
            for chunk in chunks:
                f.write(chunk)
                written += len(chunk)
        return written

    def delete(self, key: str) -> bool:
        try:
            os.remove(self.path_for(key))
            return True
        except FileNotFoundError:
            return False

    def temp_files(self) -> list[str]:
        """Paths of temporary files under the root (left by a killed writer)."""
        found = []
        for dirpath, _dirs, files in os.walk(self.root):
            found.extend(os.path.join(dirpath, name) for name in files if TEMP_MARKER in name)
        return found

    def sweep_temp_files(self) -> int:
        """Remove temporary files whose writing process on this host is gone; return how many.

        A temp file of another host (its name's host tag differs) is left alone: on a
        shared filesystem its writer may be alive there.
        """
        removed = 0
        for path in self.temp_files():
            suffix, _, host = path.rsplit(TEMP_MARKER, 1)[1].partition("~")
            if host and host != HOST_TAG:
                continue
            pid_text = suffix.split("-", 1)[0]
            if pid_text.isdigit() and _pid_alive(int(pid_text)):
                continue
            _remove_quietly(path)
            removed += 1
        return removed


class _ChunkReader:
    """An iterator over a file's chunks that owns the file from the start (closing it closes the file)."""

    def __init__(self, f: BinaryIO, size: int, key: str) -> None:
        self._f = f
        self._size = size
        self._key = key

    def __iter__(self) -> "_ChunkReader":
        return self

    def __next__(self) -> bytes:
        try:
            chunk = self._f.read(self._size) if not self._f.closed else b""
        except OSError as exc:  # say it was the source, not the output being written meanwhile
            self.close()
            raise SourceReadError(f"reading object {self._key!r}: {exc.strerror or exc}") from exc
        if not chunk:
            self.close()
            raise StopIteration
        return chunk

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "_ChunkReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        self._f.close()


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to the file ``path`` atomically (temp file in the same directory, fsync, rename).

    For files outside any store (task files, metrics, reports). Creates the
    directory if needed; no temp file survives an error.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temp = os.path.join(directory, _temp_name(path))
    try:
        with open(temp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        _remove_quietly(temp)
        raise


def _temp_name(path: str) -> str:
    """``.<name>.tmp-<pid>-<n>~<host tag>``: which process on which host is writing it."""
    return f".{os.path.basename(path)}{TEMP_MARKER}{os.getpid()}-{next(_temp_counter)}~{HOST_TAG}"


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _fsync_directory(directory: str) -> None:
    if os.name != "posix":  # Windows cannot open a directory for fsync; NTFS journals renames.
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
