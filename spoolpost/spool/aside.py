"""Files beside a spool that is being, or was, left: where the open file went, and
what was set aside.

- :func:`whereabouts` — what became of the file a process has open (deleted,
  moved to where), from ``/proc/self/fd``;
- :func:`quarantined` — the files set aside beside a spool: corrupt spools
  (``.corrupt-``), side files of a deleted one (``.orphaned-``, see
  :func:`~spoolpost.spool.files.set_orphans_aside`), rescue copies (``.rescue-``);
- :func:`rescue_path`, :func:`rescues` — the copy a process keeps of a file it
  leaves until its rows are carried over.

See docs/architecture.md, "The file replaced, deleted or damaged".
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from spoolpost.spool.files import FileId, stamp


def whereabouts(known: FileId) -> str | None:
    """What became of the open file ``known`` (device, inode), from this
    process's open descriptors (``/proc/self/fd``, Linux): ``"deleted"``, the path
    it was moved to, or None when no descriptor of it is found (another OS)."""
    fd_dir = Path("/proc/self/fd")
    try:
        fds = list(fd_dir.iterdir())
    except OSError:
        return None
    for fd in fds:
        try:
            st = os.stat(fd)
            if (st.st_dev, st.st_ino) != known or not stat.S_ISREG(st.st_mode):
                continue
            target = os.readlink(fd)
        except OSError:
            continue
        return "deleted" if st.st_nlink == 0 else target.removesuffix(" (deleted)")
    return None


#: Name parts of the files set aside beside a spool, as :func:`quarantined` finds them.
ASIDE_MARKS = (".corrupt-", ".orphaned-", ".rescue-")


def rescue_path(path: Path) -> Path:
    """Where a process copies a spool file it is leaving (deleted, moved or
    replaced) before carrying its rows over: ``<path>.rescue-<UTC time>-<pid>``.
    It is removed once every row is carried; one left behind by a process that
    is gone is carried by the next process that opens the spool."""
    return path.with_name(f"{path.name}.rescue-{stamp()}-{os.getpid()}")


def rescues(path: Path) -> list[tuple[Path, int]]:
    """The rescue copies beside the spool ``path`` (:func:`rescue_path`) with the
    pid of the process that made each, oldest first."""
    found = []
    for aside in quarantined(path):
        name = aside.name[len(path.name) :]
        match = re.fullmatch(r"\.rescue-\d{8}T\d{6}Z-(\d+)", name)
        if match:
            found.append((aside, int(match[1])))
    return found


def quarantined(path: Path) -> list[Path]:
    """The files set aside beside the spool ``path``: corrupt spools
    (``<path>.corrupt-<UTC time>``, with their ``-wal``/``-shm``) and side files of
    a deleted spool (``<path>.orphaned-<UTC time>-wal``/``-shm``), sorted by name.
    Nothing is opened or moved."""
    try:
        names = sorted(p for p in path.parent.iterdir() if p.name.startswith(path.name + "."))
    except OSError:
        return []
    return [
        p
        for p in names
        if any(p.name[len(path.name) :].startswith(m) for m in ASIDE_MARKS)
        and ".carrying-" not in p.name
    ]


def carrying_marker(file: Path) -> Path:
    """The empty file that says this process is carrying the rows of ``file`` (a
    spool moved aside as corrupt): ``<file>.carrying-<pid>``, removed once done."""
    return Path(f"{file}.carrying-{os.getpid()}")


def carrying(path: Path) -> list[tuple[Path, Path, int]]:
    """The markers (:func:`carrying_marker`) beside the spool ``path``: (marker,
    the corrupt file it names, the pid of the process that was carrying)."""
    found = []
    try:
        names = sorted(p for p in path.parent.iterdir() if p.name.startswith(path.name + "."))
    except OSError:
        return []
    for marker in names:
        match = re.fullmatch(r"(.+\.corrupt-[0-9TZ-]+)\.carrying-(\d+)", marker.name)
        if match and marker.name.startswith(f"{path.name}.corrupt-"):
            found.append((marker, marker.with_name(match[1]), int(match[2])))
    return found
