"""Waiting for another process to reach a state, with a hang guard (for the tests that run subprocesses).

Polls only to decide *when* to act (send a signal, read a result), never what the outcome is.
"""

from __future__ import annotations

import time

HANG = 120.0  # seconds: guards against a hang, never a speed expectation


def wait_until(predicate, what: str, proc=None, interval: float = 0.005):
    """Poll ``predicate()`` until it returns a true value, which is returned.

    Fails if ``proc`` exits first (with what it printed, when its stdout is a pipe), or after
    ``HANG`` seconds (a hang guard).
    """
    deadline = time.monotonic() + HANG
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout is not None else ""
            raise AssertionError(f"process exited ({proc.returncode}) before {what}: {output}")
        if time.monotonic() > deadline:
            raise AssertionError(f"hang guard: still waiting for {what}")
        time.sleep(interval)
