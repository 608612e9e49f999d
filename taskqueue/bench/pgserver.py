"""A real PostgreSQL server for the tests and the scale-out benchmark, started and stopped by them.

``initdb`` and ``pg_ctl`` from the server binaries (``/usr/lib/postgresql/*/bin``,
``$TQ_TEST_PG_BIN``, or the PATH) into a fresh temporary directory, trust
authentication, listening on a Unix socket in that directory only (no TCP).
PostgreSQL refuses to run as root: as root the server runs as the ``postgres``
user, and the directory is made theirs (pytest's own temporary directories sit
under a 0700 directory that user cannot enter). The tests turn ``fsync`` off
(they kill workers, never the server); the benchmark leaves every durability
setting at its default.

Tests that need it skip, saying how to get it, when the binaries or psycopg
are missing.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile

INSTALL_HINT = ("PostgreSQL server binaries not found (initdb, pg_ctl): install them (Debian/Ubuntu: "
                "apt-get install postgresql) or point TQ_TEST_PG_BIN at their directory")
DRIVER_HINT = 'psycopg is not installed: pip install "psycopg[binary]"'


def find_bin_dir() -> str | None:
    """The directory holding initdb and pg_ctl, highest version first; None if there is none."""
    candidates = [os.environ.get("TQ_TEST_PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                         key=lambda p: [int(x) for x in p.split("/")[-2].split(".") if x.isdigit()], reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(os.path.dirname(on_path))
    for directory in candidates:
        if directory and all(os.access(os.path.join(directory, tool), os.X_OK) for tool in ("initdb", "pg_ctl")):
            return directory
    return None


def unavailable() -> str | None:
    """Why the server cannot run here, or None."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return DRIVER_HINT
    if find_bin_dir() is None:
        return INSTALL_HINT
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
    return None


class PostgresServer:
    """One server in a temporary directory; :meth:`new_database` gives each test its own database."""

    def __init__(self, *, fsync: bool = False) -> None:
        self.bin = find_bin_dir()
        self.dir = tempfile.mkdtemp(prefix="tq-pg-")
        self.data = os.path.join(self.dir, "data")
        self._as = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._names = itertools.count(1)
        self._fsync = fsync
        self._running = False
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        self.start()

    def start(self) -> None:
        """Start the server (again, after :meth:`shut_down`); returns once it accepts connections."""
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "server.log"), "-w", "-t", "60",
                  "-o", f"-k {self.dir} -c listen_addresses='' -c fsync={'on' if self._fsync else 'off'}"
                        " -c max_connections=200", "start")
        self._running = True

    def shut_down(self) -> None:
        """Stop the server as an administrator would (``-m fast``: every connection is cut), keeping its data."""
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")
        self._running = False

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run([*self._as, os.path.join(self.bin, tool), *args], capture_output=True, text=True,
                                timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr or result.stdout}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.dir}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (if running) and remove its directory."""
        try:
            if self._running:
                self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
