"""Who this process is, and whether another process on this host is still alive.

A lease records its owner as (host, pid, process start time). The start time
tells a live owner from a new process that happens to reuse the pid.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class Owner:
    """A lease owner: ``host`` name, ``pid`` and ``start`` (an opaque start-time token)."""

    host: str
    pid: int
    start: str


def process_start(pid: int) -> str | None:
    """An opaque token for when process ``pid`` started, or None if it does not exist.

    On Linux this is field 22 of ``/proc/<pid>/stat`` (clock ticks since boot);
    elsewhere it is ``"?"`` for a process that ``os.kill(pid, 0)`` finds alive.
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
    # A zombie (state Z) has exited; its lease is as good as abandoned.
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


_cached: tuple[int, Owner] | None = None


def current_owner() -> Owner:
    """This process as a lease owner (recomputed after a fork)."""
    global _cached
    pid = os.getpid()
    if _cached is None or _cached[0] != pid:
        _cached = (pid, Owner(socket.gethostname(), pid, process_start(pid) or "?"))
    return _cached[1]


def owner_alive(owner: Owner) -> bool:
    """True unless ``owner`` is a process on this host that is gone.

    A lease from another host is assumed alive (its TTL decides); so is one whose
    start time cannot be read.
    """
    if owner.host != current_owner().host:
        return True
    start = process_start(owner.pid)
    if start is None:
        return False
    return "?" in (start, owner.start) or start == owner.start
