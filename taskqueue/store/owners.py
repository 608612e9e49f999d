"""Owners: which process holds a task row, and whether that process still lives.

An owner token names one open store of one process::

    host:pid:start:nonce        e.g.  build-7:4242:3f9c2a1b.81234:5e0c9a1d2b3c

``start`` identifies the process beyond its pid: the boot it runs in and its
start time in clock ticks (``/proc/<pid>/stat``), so a pid reused by another
process -- after a reboot, in a container, on wrap-around -- is never
mistaken for the owner. Where ``/proc`` is missing it is ``-`` and liveness
falls back on the pid and the lease. ``nonce`` tells two stores of one
process apart. Tokens written by earlier versions (``host:pid:nonce``) parse
with an unknown start.

Every open row that a process owns carries a lease (``lease_until``, wall
clock), renewed by its heartbeat while it lives. :func:`alive` is the one
place that decides whether an owner may still be working on a row.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import NamedTuple

HOSTNAME = socket.gethostname()
_OPEN_HERE: set[str] = set()  # tokens of the stores open in this process


class Owner(NamedTuple):
    host: str
    pid: int | None
    start: str | None  # "<boot>.<ticks>", or None when unknown
    nonce: str

    @classmethod
    def parse(cls, token: str) -> "Owner":
        parts = token.split(":")
        if len(parts) == 3:  # host:pid:nonce, written before start times were recorded
            parts.insert(2, "-")
        if len(parts) != 4:
            return cls(token, None, None, "")
        host, pid, start, nonce = parts
        return cls(host, int(pid) if pid.isascii() and pid.isdigit() else None, None if start == "-" else start, nonce)


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip().replace("-", "")[:12]
    except OSError:
        return ""


_BOOT = _boot_id()


def process_start(pid: int) -> str | None:
    """``"<boot>.<start ticks>"`` of process ``pid``; None where /proc cannot tell.

    Raises ``ProcessLookupError`` if /proc exists and has no such process.
    """
    if not _BOOT:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    except OSError:
        return None
    # Field 22 (starttime) counts from the field after the command name, which may hold spaces
    # and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2:].split()
    return f"{_BOOT}.{int(fields[19])}"


def new_token() -> str:
    """A fresh owner token for a store opened by this process; registered as open here."""
    pid = os.getpid()
    token = f"{HOSTNAME}:{pid}:{process_start(pid) or '-'}:{uuid.uuid4().hex[:12]}"
    _OPEN_HERE.add(token)
    return token


def closed(token: str) -> None:
    """The store holding ``token`` closed: its rows belong to nobody alive in this process."""
    _OPEN_HERE.discard(token)


def here(owner: str) -> bool:
    """Whether ``owner`` is a process of this host (whose liveness :func:`alive` can see)."""
    return Owner.parse(owner).host == HOSTNAME


def alive(owner: str | None, lease_until: float | None, now: float, me: str) -> bool:
    """Whether the owner of a row may still be working on it (so nobody else may take it).

    * no owner: nobody;
    * ``me``: yes;
    * an expired lease: no -- a live owner renews its leases, so whatever the pid says;
    * another host: yes (we cannot see its processes; its lease decides, above);
    * this host: the process must exist and, where it is known, have the recorded
      start time (a reused pid is another process); a token of this very process
      is alive only while its store is open here.
    """
    if not owner:
        return False
    if owner == me:
        return True
    if lease_until is not None and lease_until < now:
        return False
    parsed = Owner.parse(owner)
    if parsed.host != HOSTNAME:
        return True
    if parsed.pid is None:
        return False
    if parsed.pid == os.getpid():
        return owner in _OPEN_HERE
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(parsed.pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        foreign = True
    else:
        foreign = False
    if parsed.start is None:
        return True
    try:
        return process_start(parsed.pid) in (None, parsed.start)
    except ProcessLookupError:
        # Absent from /proc. For another user's process that exists, /proc may hide it (mounted with
        # hidepid, systemd's ProtectProc): its start time is unknown, and its lease decides (above).
        return foreign
