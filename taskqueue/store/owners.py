"""Owners: which process holds a task row, and whether that process still lives.

An owner token names one open store of one process::

    host:pid:start:nonce        e.g.  build-7:4242:3f9c2a1b.81234:5e0c9a1d2b3c

``start`` identifies the process beyond its pid: the *view* it runs in and its
start time in clock ticks (``/proc/<pid>/stat``). The view is the boot, the
machine (``/etc/machine-id``) and the pid namespace, ``<boot>-m<machine>-p<ns>``:
a pid means something here only in the same view. So a pid reused by another
process -- on wrap-around, or after a reboot (same machine, another boot: the
owner is gone) -- is never mistaken for the owner; and a pid of another machine
that shares this host name (clones of one image) or of a container that shares
its name and kernel (``--network host``, its own pid namespace) is never looked
up here at all: there, as on another host, the lease decides. Where ``/proc``
is missing ``start`` is ``-`` and liveness falls back on the pid and the lease.
``nonce`` tells two stores of one process apart. Tokens written by earlier
versions parse too: ``host:pid:nonce`` with an unknown start, a start of
``<boot>.<ticks>`` with an unknown machine and namespace.

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


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip().replace("-", "")[:12]
    except (OSError, ValueError):
        return ""


def _pid_namespace() -> str:
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return ""
    return link[5:-1] if link.startswith("pid:[") and link.endswith("]") and link[5:-1].isdigit() else ""


class View(NamedTuple):
    """Where a pid means one process table: a boot of one machine, one pid namespace ("" unknown)."""

    boot: str
    machine: str = ""
    namespace: str = ""

    @classmethod
    def parse(cls, text: str) -> "View":
        boot, *rest = text.split("-")
        machine = next((part[1:] for part in rest if part.startswith("m")), "")
        namespace = next((part[1:] for part in rest if part.startswith("p")), "")
        return cls(boot, machine, namespace)

    def __str__(self) -> str:
        machine = f"-m{self.machine}" if self.machine else ""
        return self.boot + machine + (f"-p{self.namespace}" if self.namespace else "")


VIEW = View(_read("/proc/sys/kernel/random/boot_id"), _read("/etc/machine-id") or _read("/var/lib/dbus/machine-id"),
            _pid_namespace())
SAME, REBOOTED, ELSEWHERE = "same", "rebooted", "elsewhere"


def where(owner: "Owner") -> str:
    """Whether ``owner``'s pid can be looked up here (:data:`SAME`), names a process of this machine
    before its last boot (:data:`REBOOTED`: gone), or means nothing here (:data:`ELSEWHERE`: another
    host name, machine or pid namespace; only its lease tells). A token whose view is unknown (older,
    or written where /proc is missing) is looked up by its pid alone, as before."""
    if owner.host != HOSTNAME:
        return ELSEWHERE
    if owner.start is None:
        return SAME
    view = View.parse(owner.start.rpartition(".")[0])
    if not VIEW.boot or (view.machine and VIEW.machine and view.machine != VIEW.machine):
        return ELSEWHERE  # another machine under this host name (or we cannot tell)
    if view.boot != VIEW.boot:
        return REBOOTED  # this machine (or one its tokens cannot tell from it) before its last boot
    if view.namespace and VIEW.namespace and view.namespace != VIEW.namespace:
        return ELSEWHERE  # a container sharing this host name and kernel, in a pid namespace of its own
    return SAME


def process_start(pid: int) -> str | None:
    """``"<view>.<start ticks>"`` of process ``pid`` (see :class:`View`); None where /proc cannot tell.

    Raises ``ProcessLookupError`` if /proc exists and has no such process.
    """
    if not VIEW.boot:
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
    return f"{VIEW}.{int(fields[19])}"


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
    """Whether ``owner``'s liveness is known here, not only its lease (see :func:`where`)."""
    return where(Owner.parse(owner)) != ELSEWHERE


def alive(owner: str | None, lease_until: float | None, now: float, me: str) -> bool:
    """Whether the owner of a row may still be working on it (so nobody else may take it).

    * no owner: nobody;
    * ``me``: yes;
    * an expired lease: no -- a live owner renews its leases, so whatever the pid says;
    * another host, machine or pid namespace: yes (we cannot see its processes; its lease
      decides, above); this machine before its last boot: no;
    * this host and view: the process must exist and, where it is known, have the recorded
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
    seen = where(parsed)
    if seen == ELSEWHERE:
        return True
    if seen == REBOOTED:
        return False
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
        now_start = process_start(parsed.pid)
        # The same view (see where()): only the start time can differ, if another process has the pid.
        return now_start is None or now_start.rpartition(".")[2] == parsed.start.rpartition(".")[2]
    except ProcessLookupError:
        # Absent from /proc. For another user's process that exists, /proc may hide it (mounted with
        # hidepid, systemd's ProtectProc): its start time is unknown, and its lease decides (above).
        return foreign
