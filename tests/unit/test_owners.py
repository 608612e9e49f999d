"""Owner tokens and liveness: who may still be working on a row (taskqueue.store.owners)."""

from __future__ import annotations

import os
import socket

import pytest

from taskqueue.store import owners
from taskqueue.store.owners import Owner, alive, new_token, process_start

HOST = socket.gethostname()
WAIT_S = 30
NOW = 1000.0
LINUX = os.path.exists("/proc/self/stat") and os.path.exists("/proc/sys/kernel/random/boot_id")






def test_a_token_names_host_pid_start_and_a_nonce_and_parses_back():
    token = new_token()
    try:
        parsed = Owner.parse(token)
        assert (parsed.host, parsed.pid) == (HOST, os.getpid())
        assert parsed.start == process_start(os.getpid())
        assert len(parsed.nonce) == 12 and token != new_token()
    finally:
        owners.closed(token)


def test_tokens_of_earlier_versions_parse_with_an_unknown_start():
    assert Owner.parse("box:123:abcdef") == Owner("box", 123, None, "abcdef")
    assert Owner.parse("garbage") == Owner("garbage", None, None, "")


@pytest.mark.skipif(not LINUX, reason="process start times come from /proc")
def test_process_start_is_stable_for_a_process_and_differs_between_processes(live_pid, dead_pid):
    assert process_start(live_pid) == process_start(live_pid) != process_start(os.getpid())
    with pytest.raises(ProcessLookupError):
        process_start(dead_pid)


def test_nobody_and_me():
    me = new_token()
    try:
        assert alive(None, None, NOW, me) is False and alive("", NOW + 5, NOW, me) is False
        assert alive(me, NOW - 1, NOW, me) is True  # our own rows, whatever the lease says
    finally:
        owners.closed(me)


def test_another_users_process_hidden_from_proc_is_alive_while_its_lease_runs(monkeypatch, dead_pid):
    """/proc mounted with hidepid=2: another user's process answers kill(pid, 0) with EPERM (it exists)
    but has no /proc entry to read its start time from; it must not be taken for dead."""
    def kill(pid, signal):
        assert (pid, signal) == (dead_pid, 0)
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(owners.os, "kill", kill)  # the fault: an OS that hides the process (dead_pid has no /proc entry)
    monkeypatch.setattr(owners, "VIEW", owners.View("b00t"))  # as on Linux, where start times are read
    token = f"{HOST}:{dead_pid}:b00t.1234:x"
    assert alive(token, NOW + 100, NOW, "me") is True
    assert alive(token, NOW - 1, NOW, "me") is False  # its lease ran out: whatever the process table says


def test_a_dead_pid_on_this_host_is_dead_and_a_live_one_alive(dead_pid, live_pid):
    me = "me"
    assert alive(f"{HOST}:{dead_pid}:-:x", NOW + 100, NOW, me) is False
    assert alive(f"{HOST}:{live_pid}:-:x", NOW + 100, NOW, me) is True
    assert alive(f"{HOST}:{live_pid}:x", None, NOW, me) is True  # an old token, no lease: the pid decides


@pytest.mark.skipif(not LINUX, reason="process start times come from /proc")
def test_a_reused_pid_is_not_the_owner(live_pid):
    """The pid lives, but a process started at another time holds it: the owner is dead."""
    start = process_start(live_pid)
    assert alive(f"{HOST}:{live_pid}:{start}:x", NOW + 100, NOW, "me") is True
    boot, ticks = start.split(".")
    assert alive(f"{HOST}:{live_pid}:{boot}.{int(ticks) - 1}:x", NOW + 100, NOW, "me") is False
    assert alive(f"{HOST}:{live_pid}:otherboot.{ticks}:x", NOW + 100, NOW, "me") is False  # before a reboot


def test_an_expired_lease_wins_over_a_live_pid(live_pid):
    """Leases are renewed while their owner lives: one that ran out means a dead or hung owner."""
    assert alive(f"{HOST}:{live_pid}:-:x", NOW - 0.001, NOW, "me") is False


def test_another_host_is_alive_until_its_lease_runs_out(dead_pid):
    other = f"not-{HOST}.example:{dead_pid}:-:x"
    assert alive(other, NOW + 1, NOW, "me") is True
    assert alive(other, None, NOW, "me") is True
    assert alive(other, NOW - 1, NOW, "me") is False


def test_a_token_of_this_process_lives_only_while_its_store_is_open():
    token = new_token()
    assert alive(token, NOW + 100, NOW, "me") is True  # another open store of this process
    owners.closed(token)
    assert alive(token, NOW + 100, NOW, "me") is False  # an earlier incarnation in this process


@pytest.mark.skipif(not LINUX, reason="views come from /proc")
def test_a_token_of_another_machine_or_pid_namespace_under_this_host_name_is_alive_until_its_lease_runs_out(
        dead_pid):
    """Found in review: two workers in containers sharing the host's name and kernel (Docker
    ``--network host``) each have a pid namespace of their own: each looked the other's pid up in
    its own process table, found it dead, and ended its leases -- every task ended WorkerCrashed.
    The same for two machines under one name. A pid there means nothing here: the lease decides,
    as for another host. This machine before its last boot is another matter: that owner is gone."""
    view, _dot, ticks = process_start(os.getpid()).rpartition(".")
    assert view == str(owners.VIEW) and owners.VIEW.boot and owners.VIEW.namespace
    me = owners.VIEW
    elsewhere = [owners.View(me.boot, me.machine, "1"),  # a container on this kernel
                 owners.View(me.boot, "0" * 12, me.namespace)]  # another machine (its boot id too, were it real)
    for other_view in elsewhere:
        other = f"{HOST}:{dead_pid}:{other_view}.{ticks}:x"
        assert owners.here(other) is False
        assert alive(other, NOW + 1, NOW, "me") is True
        assert alive(other, None, NOW, "me") is True
        assert alive(other, NOW - 1, NOW, "me") is False
    for gone in (owners.View("0" * 12, me.machine, me.namespace),  # this machine before a reboot
                 owners.View(me.boot, me.machine, me.namespace)):  # this view: its pid is dead
        token = f"{HOST}:{dead_pid}:{gone}.{ticks}:x"
        assert owners.here(token) is True and alive(token, NOW + 1, NOW, "me") is False


def test_views_parse_back_and_tokens_of_the_previous_format_still_compare():
    view = owners.View("9331b4b46795", "3d1219c7c4c5", "4026531836")
    assert str(view) == "9331b4b46795-m3d1219c7c4c5-p4026531836" and owners.View.parse(str(view)) == view
    assert owners.View.parse("9331b4b46795") == owners.View("9331b4b46795")  # boot only: the previous format
