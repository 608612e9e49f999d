"""How fast the machine does a fixed piece of work right now: to tell a slower row from a slower host.

On a shared machine the speed of a core can move by a third within minutes (in one of the --full
runs the README quotes, every task cost the pool's workers and the engine's alike some 50 % more
CPU after the second of five rounds). A row that ran in such a stretch is slower for reasons no
implementation controls. Each row therefore times :func:`probe` just before and just after its
load, with the implementation idle: the same work every time (compressing a fixed text with zlib,
as the io rows do, and a loop of plain Python), so its time moves only with the machine. The
rows that write outputs also wait for the disk, whose flushes are shared with the host's other
tenants: :func:`fsync_probe` times what making one small file durable costs there, the same way.
The report gives each row's median of both over its repeats, and their spread, beside the row's
own (see ``verdict.spread_target``).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
import zlib

from ..confined import fsync_directory

ROUNDS = 10  # the probe's figure is the fastest of this many timings (~8 ms each)
FSYNC_ROUNDS = 10  # the fsync probe's figure is the median of this many (a few ms each on a disk)
_TEXT = b"".join(b"line %6d: the quick brown fox jumps over the lazy dog %d\n" % (i, i * 7919 % 1000)
                 for i in range(2048))  # ~120 KiB, compressible as text is


def work() -> int:
    """The fixed work: zlib at level 6 over ``_TEXT`` four ways, and 100,000 turns of a Python loop.
    Returns a value that depends on all of it (so none of it can be skipped)."""
    size = sum(len(zlib.compress(text, 6)) for text in (_TEXT, _TEXT[::-1], _TEXT[1:], _TEXT[:-1]))
    total = 0
    for i in range(100_000):
        total += i * i % 7
    return size + total


def probe(rounds: int = ROUNDS, clock=time.perf_counter) -> float:
    """Milliseconds :func:`work` takes now: the fastest of ``rounds`` timings (wall time, so a core
    taken away by the host counts as well as a slower one). The fastest, not the median: what a
    row leaves behind (the kernel writing its files back, a checkpoint) slows some rounds for a few
    milliseconds, while a host that slowed down for minutes slows every one of them."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds!r}")
    timings = []
    for _ in range(rounds):
        began = clock()
        work()
        timings.append((clock() - began) * 1000.0)
    return min(timings)


def fsync_probe(directory: str, rounds: int = FSYNC_ROUNDS, clock=time.perf_counter) -> float:
    """Milliseconds to make a small file durable in ``directory`` now, as the object store makes an
    output: write 4 KiB to a new file, fsync it and the directory; the median of ``rounds`` (the
    disk's flushes vary from one to the next, and a row meets them all). The file is removed."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds!r}")
    path = os.path.join(directory, ".hostspeed-probe")
    block = bytes(4096)
    timings = []
    try:
        for _ in range(rounds):
            began = clock()
            with open(path, "wb") as f:
                f.write(block)
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(OSError):  # a file system that cannot sync a directory (Windows)
                fsync_directory(directory)
            timings.append((clock() - began) * 1000.0)
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)
    return statistics.median(timings)
