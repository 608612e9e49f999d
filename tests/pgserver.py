"""The tests' PostgreSQL server: the benchmark's helper, shared (see taskqueue/bench/pgserver.py)."""

from taskqueue.bench.pgserver import INSTALL_HINT, PostgresServer, unavailable  # noqa: F401
