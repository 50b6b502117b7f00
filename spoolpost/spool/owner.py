"""Who this process is, and whether another process on this host is still alive.

A lease records its owner as (host, pid, start token). The start token is
``<boot id>/<pid namespace>/<start time>``: the start time tells a live owner
from a new process that reuses the pid, the boot id tells a lease left before a
reboot, and the pid namespace tells a process in another container sharing the
spool (same host name, pids we cannot see): such an owner is judged by its
lease's expiry, never by a pid lookup.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class Owner:
    """A lease owner: ``host`` name, ``pid`` and ``start`` (an opaque start token)."""

    host: str
    pid: int
    start: str


def _read_first_line(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.readline().strip()
    except OSError:
        return ""


def boot_id() -> str:
    """This kernel's boot id (``/proc/sys/kernel/random/boot_id``), or ``""``."""
    return _read_first_line("/proc/sys/kernel/random/boot_id")


def pid_namespace() -> str:
    """An id of this process's pid namespace (``/proc/self/ns/pid``), or ``""``."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """An opaque token for when process ``pid`` started, or None if it does not exist.

    On Linux this is field 22 of ``/proc/<pid>/stat`` (clock ticks since boot);
    elsewhere it is ``"?"`` for a process that ``os.kill(pid, 0)`` finds alive.
    A zombie (exited, not yet reaped) counts as gone.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return _alive_by_signal(pid)
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rfind(b")") + 2 :].split()
    if fields and fields[0] == b"Z":
        return None
    return fields[19].decode() if len(fields) > 19 else "?"


def _alive_by_signal(pid: int) -> str | None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return "?"
    return "?"


def start_token(pid: int, boot: str, namespace: str) -> str | None:
    """The start token of a lease owner: ``<boot>/<namespace>/<start time>``,
    or None if process ``pid`` does not exist."""
    start = process_start(pid)
    return None if start is None else f"{boot}/{namespace}/{start}"


def _split_token(token: str) -> tuple[str, str, str]:
    parts = token.split("/")
    if len(parts) != 3:  # an opaque token: only its start time is known
        return "", "", token
    return parts[0], parts[1], parts[2]


_cached: tuple[int, Owner] | None = None


def current_owner() -> Owner:
    """This process as a lease owner (recomputed after a fork)."""
    global _cached
    pid = os.getpid()
    if _cached is None or _cached[0] != pid:
        token = start_token(pid, boot_id(), pid_namespace()) or f"{boot_id()}/{pid_namespace()}/?"
        _cached = (pid, Owner(socket.gethostname(), pid, token))
    return _cached[1]


def owner_alive(owner: Owner, me: Owner | None = None) -> bool:
    """True unless ``owner`` is a process on this host that is gone.

    ``me`` is the judging process (default :func:`current_owner`). An owner on
    another host, in another pid namespace, or whose start time cannot be read
    is assumed alive (its lease's expiry decides). An owner from before this
    host's last reboot is gone.
    """
    me = me or current_owner()
    if owner.host != me.host:
        return True
    boot, namespace, start = _split_token(owner.start)
    my_boot, my_namespace, _ = _split_token(me.start)
    if boot and my_boot and boot != my_boot:
        return False
    if namespace != my_namespace:
        return True
    now_start = process_start(owner.pid)
    if now_start is None:
        return False
    return "?" in (now_start, start) or now_start == start
