"""Shared fixtures for every test directory.

Kept small and generic on purpose: an object store in a sandbox guarded by a
canary, a stepping clock, and a deterministic image factory. Fixtures own
their resources (create, ``yield``, check/clean up).
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from taskqueue.objectstore import LocalObjectStore


def _snapshot(top: Path, skip: str) -> dict[str, object]:
    """Everything under ``top`` except the subtree ``top/skip``: path -> bytes, 'dir' or ('link', target)."""
    found: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        rel_dir = os.path.relpath(dirpath, top)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != skip]
            filenames = [f for f in filenames if f != skip]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if os.path.islink(path):
                found[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                found[rel] = "dir"
            else:
                with open(path, "rb") as f:
                    found[rel] = f.read()
    return found


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[Path]:
    """A directory ``tmp_path/sandbox/canary`` holding a few files, beside the store root.

    Yields the canary directory. At teardown it fails the test if anything in
    ``tmp_path/sandbox`` outside ``sandbox/store`` was created, changed or
    removed: the check that nothing escapes the object store root (through
    ``..``, a symlink, or a badly joined path). Put your own scratch files in
    ``tmp_path``, not in the sandbox.
    """
    sandbox = tmp_path / "sandbox"
    canary_dir = sandbox / "canary"
    (canary_dir / "sub").mkdir(parents=True)
    (canary_dir / "secret.txt").write_bytes(b"do not touch\n")
    (canary_dir / "sub" / "data.bin").write_bytes(bytes(range(256)))
    before = _snapshot(sandbox, skip="store")
    yield canary_dir
    after = _snapshot(sandbox, skip="store")
    assert after == before, "something outside the store root was written, changed or removed"


@pytest.fixture
def store_root(canary: Path) -> Path:
    """The (not yet created) root directory of the ``store`` fixture: ``tmp_path/sandbox/store``.

    Depends on ``canary``, so a test using it is also checked for escapes.
    """
    return canary.parent / "store"


@pytest.fixture
def store(store_root: Path) -> Iterator[LocalObjectStore]:
    """A :class:`LocalObjectStore` at ``store_root`` with default settings (64 KiB chunks, fsync on).

    Guarded by ``canary``. At teardown it also asserts that no temporary
    file was left behind under the root.
    """
    s = LocalObjectStore(store_root)
    yield s
    assert s.temp_files() == [], "a write left a temporary file behind"


class FakeClock:
    """A monotonic clock a test steps by hand; pass ``clock`` as ``clock=`` and ``sleep`` as ``sleep=``.

    * ``clock()`` returns ``now``, then advances it by ``step`` (0 by default),
      so ``step > 0`` models work that takes time between readings.
    * ``sleep(s)`` records ``s`` in ``sleeps`` and advances ``now`` by ``s``;
      it never blocks.
    * ``advance(s)`` moves time forward explicitly.
    """

    def __init__(self, start: float = 1000.0, step: float = 0.0) -> None:
        self.now = start
        self.step = step
        self.sleeps: list[float] = []
        self.reads = 0

    def __call__(self) -> float:
        value = self.now
        self.now += self.step
        self.reads += 1
        return value

    def clock(self) -> float:
        return self()

    def sleep(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake_clock() -> FakeClock:
    """A fresh :class:`FakeClock` at t=1000.0 with ``step=0``; set ``fake_clock.step`` to make reads advance it."""
    return FakeClock()


@pytest.fixture
def make_image():
    """Factory ``make_image(width, height, format="PNG", mode="RGB") -> bytes`` of a deterministic gradient.

    The same arguments always give the same bytes. Skips the test if Pillow
    is not installed.
    """
    Image = pytest.importorskip("PIL.Image")

    def make(width: int, height: int, format: str = "PNG", mode: str = "RGB") -> bytes:
        image = Image.new("RGB", (width, height))
        image.putdata([((x * 255) // max(width - 1, 1), (y * 255) // max(height - 1, 1), (x ^ y) & 0xFF)
                       for y in range(height) for x in range(width)])
        if mode != "RGB":
            image = image.convert(mode)
        buf = io.BytesIO()
        image.save(buf, format=format)
        return buf.getvalue()

    return make


@pytest.fixture(scope="session", autouse=True)
def sigint_at_its_default() -> Iterator[None]:
    """A shell without job control starts a background command with SIGINT ignored (``./.ci/run &``
    in a script), and every command a test starts would inherit that, and ignore the SIGINT its
    test sends (a command keeps a signal ignored at its start, as a background job must). The
    suite's commands start with SIGINT at its default, whatever started the suite."""
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a handler: reset to default at exec
    yield
    if ignored:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the whole session (see ``tests/pgserver.py``); skips if unavailable."""
    import pgserver

    why = pgserver.unavailable()
    if why:
        pytest.skip(why)
    server = pgserver.PostgresServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def dead_pid() -> int:
    """The pid of a process of ours that has exited (and been reaped)."""
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait(30)
        try:
            os.kill(proc.pid, 0)
        except ProcessLookupError:
            return proc.pid
    pytest.skip("could not find a pid that stays unused")


@pytest.fixture(scope="session")
def live_pid() -> Iterator[int]:
    """The pid of another live process on this host (it waits for its stdin to close)."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    yield proc.pid
    proc.stdin.close()
    proc.wait(30)
