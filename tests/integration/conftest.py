"""Fixtures of the integration tests: ``backend`` runs a test once per task-store backend;
``fail_first_start`` injects a store fault."""

from __future__ import annotations

import pytest

from storebackends import backend  # noqa: F401 - a fixture, found by pytest through this import
from taskqueue.store.machine import StateMachine


@pytest.fixture
def fail_first_start(monkeypatch):
    """``fail_first_start(error)``: the next start any store runs raises ``error`` instead of writing
    (locked past the busy timeout, a disk error); later starts run. Returns the pending faults (a
    list, empty once the fault has fired)."""
    def inject(error: BaseException) -> list:
        real_start = StateMachine._start
        failures = [error]

        def start(self, conn, *args):
            if failures:
                raise failures.pop()
            return real_start(self, conn, *args)
        monkeypatch.setattr(StateMachine, "_start", start)
        return failures
    return inject
