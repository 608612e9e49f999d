"""The heartbeat: keeps a live process's rows its own, however long its tasks run, and tidies up
after the processes that died meanwhile."""

from __future__ import annotations

import logging
import threading

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
    """

    def __init__(self, store: TaskStore, interval_s: float) -> None:
        self._store = store
        self._interval = interval_s
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
        try:
            self._store.post(self._store.renew(done=_report))
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

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


def _report(_renewed: int, error: BaseException | None) -> None:
    if error is not None:
        _log.error("could not renew leases", extra={"event": "lease_renewal_failed", "task_id": None,
                                                     "idempotency_key": None,
                                                     "error_class": type(error).__name__, "error": text_of(error)})
