"""The heartbeat: keeps a live process's rows its own, however long its tasks run, and tidies up
after the processes that died meanwhile."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from ..errors import StoreClosed, text_of
from ..logs import LOGGER_NAME
from ..store import TaskStore

_log = logging.getLogger(LOGGER_NAME)


class Heartbeat:
    """A daemon thread renewing the lease of every open row ``store`` owns, every ``interval_s``.

    Another process takes over a row only once its lease has run out (see
    :func:`taskqueue.store.owners.alive`): while this process lives, that
    never happens; once it dies, within ``store.lease_s``. The thread waits on
    an Event between beats, so :meth:`stop` returns at once unless a beat is
    committing a dead process's ledger.

    Each beat also settles the start ledgers of processes that died since the
    store opened (``TaskStore.settle_ledgers``): a long-running process would
    otherwise leave them for the next one to open the store.

    It also tells the workers whether this process's leases can be trusted
    (:meth:`fresh`). A process frozen longer than a lease (SIGSTOP, a VM
    paused, swap) may have had its rows taken over meanwhile; when it resumes,
    its workers must not start the tasks still waiting in its queue on the
    strength of a start they do not wait for. A renewal that comes after the
    leases ran out calls ``on_lapse()``: the items held from before may have
    lost their rows.
    """

    def __init__(self, store: TaskStore, interval_s: float, *, lease_s: float | None = None,
                 on_lapse: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._interval = interval_s
        self._lease_s = lease_s if lease_s is not None else 3 * interval_s
        self._on_lapse = on_lapse
        self._clock = clock
        self.renewed_at = clock()  # when the last renewal that committed was handed over (rows claimed
        # since carry leases of their own, at least as recent)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tq-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            if not self.beat():
                return

    def beat(self) -> bool:
        """Renew this process's leases (handed over, not waited for), then settle the ledgers of dead
        processes (this waits for its commit, only when there is one); False once the store is closed."""
        issued = self._clock()

        def renewed(count: int | None, error: BaseException | None) -> None:
            _report(count, error)
            if error is None:
                if self._clock() - self.renewed_at > self._lease_s:  # the leases ran out before this one
                    self._on_lapse()
                self.renewed_at = issued
        try:
            self._store.post(self._store.renew(done=renewed))
        except StoreClosed:
            return False
        settle = getattr(self._store, "settle_ledgers", None)  # a store written to an older contract: none
        if settle is None:
            return True
        try:
            settle()
        except StoreClosed:
            return False
        except Exception as exc:  # noqa: BLE001 - the next beat tries again; the next store open does too
            _log.error("could not settle the ledgers of dead processes", extra={
                "event": "ledger_settle_failed", "task_id": None, "idempotency_key": None,
                "error_class": type(exc).__name__, "error": text_of(exc)})
        return True

    def fresh(self) -> bool:
        """Whether the leases renewed last still hold with room to spare (two thirds of a lease; a
        beat comes every third): a worker may then start a task without waiting for its start to
        commit. Not after a freeze, until a renewal has committed again."""
        return self._clock() - self.renewed_at < self._lease_s * 2 / 3

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


def _report(_renewed: int, error: BaseException | None) -> None:
    if error is not None:
        _log.error("could not renew leases", extra={"event": "lease_renewal_failed", "task_id": None,
                                                     "idempotency_key": None,
                                                     "error_class": type(error).__name__, "error": text_of(error)})
