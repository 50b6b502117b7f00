"""Fault injection for the hostile-condition tests (a kit, no tests here).

Real faults, no mocks:

- :func:`small_disk`: a real tmpfs of a given size mounted under the test's
  ``tmp_path`` (root and ``mount`` needed; the test says so with
  ``record_property("fault", disk.kind)``), filled by the spool itself or by
  :meth:`SmallDisk.fill` (another program's file), and always unmounted.
  Where ``mount`` is refused, ``kind`` is ``"max_page_count"``: a plain folder,
  and :meth:`SmallDisk.limit` caps the spool's write connection with
  ``PRAGMA max_page_count`` (SQLite's own SQLITE_FULL) instead.
- :func:`ext4_disk`: a small ext4 image on a loop device, mounted with
  ``errors=remount-ro``; :meth:`Ext4Disk.make_readonly` trips the kernel's
  ``trigger_fs_error`` so that the filesystem is remounted read-only under the
  running spool, as a real disk error does (EROFS on every write). The kernel
  keeps such a mount read-only until it is unmounted.
- :func:`as_nobody`: the ``user``/``group`` for a subprocess that drops root (uid
  and gid 65534), because root ignores permission bits (``chmod 000``).
- :func:`probe_write`: the errno a fresh write in a folder meets (the proof that a
  fault bites), or None.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from spoolpost.spool import Spool

NOBODY = 65534


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False)


@functools.cache
def can_mount() -> str | None:
    """None if this process may mount a tmpfs, else why not."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    probe = Path(f"/tmp/spoolpost-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        done = _run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe))
        if done.returncode != 0:
            return f"mount refused: {done.stderr.strip()}"
        _run("umount", str(probe))
        return None
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


def unmount(mountpoint: Path) -> None:
    """Unmount, lazily if something still holds files there (a test that failed)."""
    if _run("umount", str(mountpoint)).returncode != 0:
        _run("umount", "-l", str(mountpoint))


def probe_write(folder: Path) -> int | None:
    """Create, write and remove a 64 KiB file in ``folder``; the errno that stopped it
    (ENOSPC, EROFS, EACCES, …) or None when it worked."""
    probe = folder / ".probe"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        return exc.errno
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


def free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


@dataclass
class SmallDisk:
    """A small filesystem (``kind`` "tmpfs") or a page-capped spool ("max_page_count")."""

    folder: Path
    kind: str
    size: int

    @property
    def spool_path(self) -> Path:
        return self.folder / "events.spool"

    def fill(self, leave: int = 0) -> int:
        """Write a file of zeros until the filesystem has at most ``leave`` bytes free
        (ENOSPC ends it); returns its size. Another program filling the disk."""
        filler = self.folder / "filler"
        written = 0
        with open(filler, "ab") as f:
            while True:
                room = free_bytes(self.folder) - leave
                if room <= 0:
                    break
                try:
                    f.write(b"\0" * min(room, 1 << 20))
                    f.flush()
                except OSError as exc:
                    assert exc.errno in (errno.ENOSPC, errno.EDQUOT), exc
                    break
                written += min(room, 1 << 20)
        return written

    def unfill(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.folder / "filler").unlink()

    def limit(self, spool: Spool, extra_pages: int) -> None:
        """("max_page_count" only) cap the spool's write connection at its page count
        plus ``extra_pages``. Reaches into the spool: the one way to make SQLite
        itself answer SQLITE_FULL without a small filesystem."""
        assert self.kind == "max_page_count"
        with spool._db.wlock:
            conn = spool._db.writer()
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count={pages + extra_pages}")


@contextlib.contextmanager
def small_disk(base: Path, size: int) -> Iterator[SmallDisk]:
    """A tmpfs of ``size`` bytes mounted at ``base/disk`` (mode 0777), unmounted
    afterwards whatever happens; a plain folder (kind "max_page_count") where this
    machine cannot mount."""
    mountpoint = base / "disk"
    mountpoint.mkdir(parents=True, exist_ok=True)
    if can_mount() is not None:
        yield SmallDisk(mountpoint, "max_page_count", size)
        return
    done = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(mountpoint))
    assert done.returncode == 0, done.stderr
    try:
        yield SmallDisk(mountpoint, "tmpfs", size)
    finally:
        unmount(mountpoint)


@dataclass
class Ext4Disk:
    """An ext4 filesystem on a loop device, mounted at ``folder``."""

    image: Path
    folder: Path

    @property
    def spool_path(self) -> Path:
        return self.folder / "events.spool"

    def device(self) -> str:
        """The loop device's name under /sys/fs/ext4 (``loop3``)."""
        for line in Path("/proc/mounts").read_text().splitlines():
            source, target = line.split()[:2]
            if target == str(self.folder):
                return Path(source).name
        raise AssertionError(f"{self.folder} is not mounted")

    def make_readonly(self) -> None:
        """Trip an ext4 error: with ``errors=remount-ro`` the kernel remounts the
        filesystem read-only at once, under open files (EROFS from then on)."""
        Path(f"/sys/fs/ext4/{self.device()}/trigger_fs_error").write_text("spoolpost test\n")

    def remount(self) -> None:
        """Clear the fault as an operator would: unmount, check, mount again (every
        file on it must be closed)."""
        unmount(self.folder)
        _run("e2fsck", "-fy", str(self.image))
        done = _run("mount", "-o", "loop,errors=remount-ro", str(self.image), str(self.folder))
        assert done.returncode == 0, done.stderr


def can_ext4() -> str | None:
    """None if this machine can mount an ext4 image and trip its errors, else why not."""
    why = can_mount()
    if why is not None:
        return why
    if not Path("/sys/fs/ext4").is_dir() or _run("which", "mkfs.ext4").returncode != 0:
        return "no ext4 support or no mkfs.ext4"
    return None


@contextlib.contextmanager
def ext4_disk(base: Path, size: int = 16 << 20) -> Iterator[Ext4Disk]:
    """A fresh ext4 image of ``size`` bytes mounted at ``base/ext4``, unmounted after."""
    image, mountpoint = base / "ext4.img", base / "ext4"
    mountpoint.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size)
    done = _run("mkfs.ext4", "-q", "-F", str(image))
    assert done.returncode == 0, done.stderr
    done = _run("mount", "-o", "loop,errors=remount-ro", str(image), str(mountpoint))
    assert done.returncode == 0, done.stderr
    os.chmod(mountpoint, 0o777)
    try:
        yield Ext4Disk(image, mountpoint)
    finally:
        unmount(mountpoint)


_CAPTURE_CHILD = """
import sys
from spoolpost import Client
key, spool, before, pad, durability = sys.argv[1:6]
client = Client(
    key, "http://127.0.0.1:9", spool=spool, send=False, min_free_bytes=0, durability=durability
)
props = {"pad": "x" * int(pad)}
for i in range(int(before)):
    print(client.capture("before", distinct_id="u1", properties=props), flush=True)
print("READY", flush=True)
sys.stdin.readline()  # the parent brings the fault on meanwhile
refused = 0
while True:  # until SIGKILL
    uuid = client.capture("during", distinct_id="u1", properties=props)
    if uuid is None:
        refused += 1
        if refused == 5:
            print("REFUSED", flush=True)
    else:
        print(uuid, flush=True)
"""


class CaptureChild:
    """A capture-only app in a subprocess (``min_free_bytes=0``): ``before`` captures,
    then READY; after :meth:`go` it captures until SIGKILLed, printing each uuid
    capture() returned (the loss accounting's "returned") and REFUSED once five
    captures were dropped. :attr:`stderr` is what it logged."""

    def __init__(
        self, spool: Path, key: str, *, before: int, pad: int = 0, durability: str = "process"
    ) -> None:
        self.args = [key, str(spool), str(before), str(pad), durability]
        self.stderr = ""

    def __enter__(self) -> CaptureChild:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CAPTURE_CHILD, *self.args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return self

    def until(self, marker: str) -> list[str]:
        """The lines printed before ``marker``."""
        assert self.proc.stdout is not None
        seen = []
        for line in self.proc.stdout:
            if line.strip() == marker:
                return seen
            seen.append(line.strip())
        raise AssertionError(f"the child ended before {marker}: {self.proc.communicate()}")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait() == -signal.SIGKILL

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.stderr = self.proc.communicate()[1]


def as_nobody(folder: Path) -> dict[str, int]:
    """Give ``folder`` to uid/gid 65534 and return ``subprocess`` keyword arguments
    that run a child as that user (root ignores permission bits)."""
    os.chown(folder, NOBODY, NOBODY)
    return {"user": NOBODY, "group": NOBODY, "extra_groups": []}


def integrity(path: Path) -> str:
    """``PRAGMA integrity_check`` of the spool file, read by a separate connection."""
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def set_immutable(spool: Path, on: bool = True) -> None:
    """``chattr +i`` (``on``) or ``-i`` on the spool file and its ``-wal``: from then on
    every write SQLite makes to them fails with EPERM while reads work, and ``-i``
    clears it under the open files (an ext4 read-only remount cannot be undone
    without closing them). Not the ``-shm``: SQLite maps it, and a store into an
    immutable mapped file is a SIGBUS. Root and a filesystem with attributes
    (:func:`ext4_disk`) needed."""
    for path in (spool, Path(f"{spool}-wal")):
        done = _run("chattr", "+i" if on else "-i", str(path))
        assert done.returncode == 0, done.stderr
