"""The start ledger: attempts a process has begun, before their start is committed.

An attempt must be counted before it runs, so that a task that kills its
process is charged for it and dead-lettered after ``max_attempts``. Committing
the start and waiting for it costs a worker one round trip to the committer per
task -- under the GIL the largest part of what durability costs (the worker
hands over, the writer wins the GIL back for every SQLite step, then hands
back). A worker instead writes ``(row id, version)`` into its process's ledger
and posts the start without waiting for it.

The ledger is a small file mapped into memory: writing an entry is a copy
into a shared page, no system call, no GIL released. A killed process's
pages stay in the kernel's page cache, so its successor reads what it had
begun, like the WAL of a ``synchronous=NORMAL`` database (a power cut may
lose both). Recovery *replays* a dead owner's ledger before taking its rows
over: an entry whose row still stands at that version, waiting and owned by
that owner, is a start that never got committed, and is committed then
(``running``, attempts + 1), after which the row is handled as any row whose
process died mid-attempt. An entry whose start did commit names a version the
row has left behind ((id, version) names one state of one row, never reused)
and changes nothing, so entries need no erasing, replay is idempotent, and a
slot is free for reuse as soon as its start is committed.

When every slot waits for its start to commit (the writer is far behind), or
the store has no ledger (PostgreSQL, whose owners may live on other hosts),
the worker commits its start and waits, as before.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import time
import zlib
from typing import Any, Iterable, Iterator

from . import owners

SLOTS = 128  # starts that may wait for their commit at once; one more waits for it
_HEADER = 256  # the owner token, UTF-8, NUL-padded
_ENTRY = struct.Struct("<qqI4x")  # row id, version, CRC-32 of the two (a torn entry never matches)
_KEY = struct.Struct("<qq")
SIZE = _HEADER + SLOTS * _ENTRY.size
SUFFIX = ".attempts"
TEMPORARY = ".tmp"  # a ledger being created (see Ledger.__init__), renamed at once
STALE_TEMPORARY_S = 60.0  # a creation takes microseconds: a temporary file this old was left by a killed one


def directory_for(database: str) -> str:
    """Where the ledgers of the processes using the SQLite file ``database`` live."""
    return database + "-attempts"


def path_for(directory: str, token: str) -> str | None:
    """The ledger file of owner ``token`` in ``directory`` (None if the token cannot name one).

    Named by pid and nonce, not by host: processes in containers that share a
    database on one kernel have different host names but the same directory;
    the owner token in the file's header says whose it is.
    """
    owner = owners.Owner.parse(token)
    if owner.pid is None or not (owner.nonce.isascii() and owner.nonce.isalnum()):
        return None
    return os.path.join(directory, f"{owner.pid}-{owner.nonce}{SUFFIX}")


class Ledger:
    """This process's ledger for one open store (owner ``token``). Thread-safe.

    :meth:`begin` records an attempt and returns its slot (None when every slot
    is taken); :meth:`end` frees the slot once the attempt is counted in the
    database (its start, or a replay of it, committed). Raises ``OSError`` if
    the file cannot be created.
    """

    def __init__(self, directory: str, token: str) -> None:
        path = path_for(directory, token)
        header = token.encode()
        if path is None or len(header) > _HEADER:
            raise ValueError(f"owner token {token!r} cannot name a ledger")
        os.makedirs(directory, exist_ok=True)  # permissions as SQLite's own -wal and -shm files: the umask's
        # Written whole under a temporary name, then renamed: a ledger never lacks its owner's name.
        temporary = f"{path}.{os.getpid()}{TEMPORARY}"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        mapped = None
        try:
            # Written out, not made by a sparse ftruncate: on a full disk this raises ENOSPC here (the
            # store goes on without a ledger), where a store into the mapping would kill the process
            # with SIGBUS.
            pending = memoryview(header.ljust(SIZE, b"\0"))
            while pending:
                pending = pending[os.write(fd, pending):]
            mapped = mmap.mmap(fd, SIZE)
            os.rename(temporary, path)
        except BaseException:
            if mapped is not None:
                mapped.close()
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        finally:
            os.close(fd)  # the mapping keeps the file
        self._map = mapped
        self.path = path
        self._free = list(range(SLOTS - 1, -1, -1))  # list.pop()/append() are atomic under the GIL

    def begin(self, row_id: int, version: int) -> int | None:
        """Record that the attempt on ``row_id`` at ``version`` begins -> its slot, or None if full."""
        try:
            slot = self._free.pop()
        except IndexError:
            return None
        key = _KEY.pack(row_id, version)
        _ENTRY.pack_into(self._map, _HEADER + slot * _ENTRY.size, row_id, version, zlib.crc32(key))
        return slot

    def end(self, slot: int, *, erase: bool = False) -> None:
        """The attempt recorded in ``slot`` is counted in the database: the slot may be reused.
        ``erase``: the attempt never began after all (its start was never handed over)."""
        if erase:
            _ENTRY.pack_into(self._map, _HEADER + slot * _ENTRY.size, 0, 0, 0)
        self._free.append(slot)

    @property
    def unsettled(self) -> int:
        """Attempts begun and not yet counted in the database."""
        return SLOTS - len(self._free)

    def close(self) -> None:
        """Unmap the file and delete it -- unless an attempt it records is still not counted in the
        database (the store failed): then it stays, for whoever opens the store next to replay."""
        keep = self.unsettled > 0
        self._map.close()
        if not keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            with contextlib.suppress(OSError):  # the last one out removes the directory
                os.rmdir(os.path.dirname(self.path))


def read(path: str) -> tuple[str, list[tuple[int, int]]]:
    """The owner token of the ledger at ``path`` and its entries ``(row id, version)``.

    Raises ``OSError`` if it cannot be read. Unused and torn slots are skipped.
    """
    with open(path, "rb") as f:
        data = f.read(SIZE)
    token = data[:_HEADER].rstrip(b"\0").decode("utf-8", "replace")
    entries = []
    for offset in range(_HEADER, len(data) - _ENTRY.size + 1, _ENTRY.size):
        row_id, version, check = _ENTRY.unpack_from(data, offset)
        if row_id > 0 and check == zlib.crc32(data[offset:offset + _KEY.size]):
            entries.append((row_id, version))
    return token, entries


def sweep_temporary(directory: str | None, now: float | None = None) -> int:
    """Delete the temporary files that processes killed while creating their ledger left in
    ``directory`` (last modified more than :data:`STALE_TEMPORARY_S` before ``now``, this host's
    wall clock by default: on a share, the two clocks must roughly agree) -> files deleted.

    Such a file was never renamed into a ledger, so no attempt was ever recorded in it; left
    alone, it would keep the directory from being removed. What cannot be listed or deleted is
    left alone.
    """
    try:
        names = os.listdir(directory) if directory is not None else []
    except OSError:
        return 0
    now = time.time() if now is None else now
    deleted = 0
    for name in names:
        if not (name.endswith(TEMPORARY) and SUFFIX + "." in name):  # "<pid>-<nonce>.attempts.<pid>.tmp"
            continue
        path = os.path.join(directory, name)
        with contextlib.suppress(OSError):
            if now - os.stat(path).st_mtime > STALE_TEMPORARY_S:
                os.unlink(path)
                deleted += 1
    return deleted


# -- replay: committing the starts a dead process had begun -------------------------------------------

def replay_entries(conn: Any, statement: str, token: str, entries: list[tuple[int, int]], now: float) -> int:
    """Run the store's ``replay`` statement for each entry of owner ``token`` -> rows started."""
    return sum(conn.execute(statement, (now, row_id, version, token)).rowcount for row_id, version in entries)


def replay(conn: Any, statement: str, directory: str, tokens: Iterable[str], now: float) -> int:
    """Replay the ledgers of the orphaned owners ``tokens`` -> rows started.

    An owner without a ledger here (another host, PostgreSQL, an older
    version), or whose ledger cannot be read, is skipped: its rows are taken
    over as its committed starts say.
    """
    started = 0
    for token in tokens:
        path = path_for(directory, token) if token else None
        if path is None:
            continue
        try:
            written_by, entries = read(path)
        except OSError:  # none (it never began an attempt here, or it was settled), or unreadable
            continue
        if written_by == token:
            started += replay_entries(conn, statement, token, entries, now)
    return started


def of_the_dead(directory: str | None, me: str, now: float) -> Iterator[tuple[str, str, list[tuple[int, int]]]]:
    """``(path, owner token, entries)`` of each ledger in ``directory`` whose process is gone.

    Ledgers it cannot read (another user's) are skipped; so is a directory it cannot list.
    """
    try:
        names = sorted(os.listdir(directory)) if directory is not None else []
    except OSError:
        return
    for name in names:
        path = os.path.join(directory, name)
        if not name.endswith(SUFFIX):
            continue
        try:
            token, entries = read(path)
        except OSError:
            continue
        if path_for(directory, token) == path and not owners.alive(token, None, now, me):
            yield path, token, entries
