"""The heartbeat's one beat (taskqueue.engine.leases): renew, then settle dead ledgers; each failure
reported under its own name, a closed store ending the beats."""

from __future__ import annotations

import logging

from taskqueue.engine.leases import Heartbeat
from taskqueue.errors import StoreClosed
from taskqueue.logs import LOGGER_NAME


class Store:
    """A store's heartbeat-facing surface: renew() builds an op, post() hands it over."""

    def __init__(self, *, closed: bool = False, settle=None) -> None:
        self.closed, self.posted, self.settled = closed, [], 0
        if settle is not None:
            self.settle_ledgers = settle

    def renew(self, done=None):
        return ("renew", done)

    def post(self, *ops) -> None:
        if self.closed:
            raise StoreClosed("closed")
        self.posted += ops


def beat_once(store) -> bool:
    heartbeat = Heartbeat(store, 3600.0)  # its own thread never beats within the test
    try:
        return heartbeat.beat()
    finally:
        heartbeat.stop()


def test_a_beat_renews_then_settles():
    store = Store()

    def settle() -> int:
        assert len(store.posted) == 1  # the renewal was handed over first
        store.settled += 1
        return 0

    store.settle_ledgers = settle
    assert beat_once(store) and store.settled == 1


def test_a_store_without_ledgers_to_settle_is_renewed_and_nothing_is_logged(caplog):
    store = Store()
    with caplog.at_level(logging.DEBUG, logger=LOGGER_NAME):
        assert beat_once(store)
    assert len(store.posted) == 1 and caplog.records == []


def test_a_failing_settle_is_logged_under_its_own_name_and_the_beats_go_on(caplog):
    def settle() -> int:
        raise OSError("disk gone")

    store = Store(settle=settle)
    with caplog.at_level(logging.ERROR, logger=LOGGER_NAME):
        assert beat_once(store)
    assert [r.event for r in caplog.records] == ["ledger_settle_failed"] and len(store.posted) == 1


def test_a_closed_store_ends_the_beats():
    assert not beat_once(Store(closed=True))

    def closed_meanwhile() -> int:
        raise StoreClosed("closed")

    assert not beat_once(Store(settle=closed_meanwhile))
