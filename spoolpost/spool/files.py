"""The file at a spool's path, before and beside SQLite.

- :func:`classify` — what is at a path (missing, empty, a spool, not SQLite,
  another application's database, a spool whose header is destroyed); the one
  place that decides whether a file is a spool. :func:`check_spool_file` (the
  operator commands) and :func:`prepare_file` (opening a spool) turn its
  verdict into their own errors; :func:`foreign_tables` is the same check on a
  connection already open.
- :func:`make_folders`, :func:`prepare_file`, :func:`make_private` — folders
  ``0700``, the file ``0600`` (events carry personal data);
- :func:`side_files`, :func:`move_aside`, :func:`file_id` — the -wal/-shm
  files, moving a corrupt spool aside, noticing that another process did;
- :func:`check_filesystem` — refusing network filesystems, where WAL is unsafe.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import re
import sqlite3
import stat
import tempfile
import time
import urllib.parse
from pathlib import Path

from spoolpost.errors import ConfigError, SpoolCorrupt, UnsupportedFilesystem

log = logging.getLogger("spoolpost")

#: The first 16 bytes of every SQLite database file.
SQLITE_HEADER = b"SQLite format 3\x00"

_NETWORK_FS = frozenset(
    {"nfs", "nfs4", "cifs", "smbfs", "smb3", "9p", "afs", "ceph", "glusterfs", "lustre", "gpfs"}
    | {"fuse.sshfs", "fuse.glusterfs", "fuse.ceph", "davfs", "fuse.davfs2", "ncpfs", "coda"}
    | {"fuse.s3fs", "fuse.rclone", "fuse.gcsfuse", "fuse.juicefs", "fuse.goofys"}
)
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")

FileId = tuple[int, int]


class FileKind(enum.Enum):
    """What :func:`classify` found at a path."""

    MISSING = "missing"
    FOLDER = "folder"
    EMPTY = "empty"
    #: An SQLite database that holds no tables, or a spoolpost schema.
    SPOOL = "spool"
    #: Not empty and without the SQLite header (a file given by mistake).
    NOT_SQLITE = "not-sqlite"
    #: Without the SQLite header but with a -wal or -shm beside it: a spool in
    #: WAL mode whose first page was destroyed.
    DESTROYED = "destroyed"
    #: An SQLite database with tables but no spoolpost schema version.
    FOREIGN = "foreign"
    #: Not a regular file: a device (``/dev/null``), a FIFO, a socket.
    SPECIAL = "special"


# -- is this file a spool? ------------------------------------------------------------


def side_files(path: Path) -> tuple[Path, Path]:
    """The spool's ``-wal`` and ``-shm`` files (they may not exist)."""
    return Path(f"{path}-wal"), Path(f"{path}-shm")


def kind_of_head(path: Path, head: bytes) -> FileKind:
    """The verdict from a file's first bytes ``head`` (b"" for an empty file):
    EMPTY, SPOOL (the SQLite header; its tables are not looked at), DESTROYED or
    NOT_SQLITE."""
    if not head:
        return FileKind.EMPTY
    if head == SQLITE_HEADER:
        return FileKind.SPOOL
    if any(side.exists() for side in side_files(path)):
        return FileKind.DESTROYED
    return FileKind.NOT_SQLITE


def foreign_tables(conn: sqlite3.Connection) -> list[str]:
    """The tables of another application's database open as ``conn``: its
    table names if it holds tables but no spoolpost schema version
    (``PRAGMA user_version`` 0), else []. Run it inside a transaction when
    another process may be creating the spool, so that both reads see one state."""
    if conn.execute("PRAGMA user_version").fetchone()[0]:
        return []
    names = conn.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
    return sorted(str(name) for (name,) in names)


def foreign_error(where: str, tables: list[str]) -> SpoolCorrupt:
    """The error for a database holding ``tables`` that is not a spool; ``where``
    names it (``spool <path>``)."""
    return SpoolCorrupt(
        f"{where} is a SQLite database but not a spoolpost spool "
        f"(it holds {', '.join(tables[:5])}); refusing to change it"
    )


def classify(path: Path) -> FileKind:
    """What is at ``path``, changing nothing: an SQLite file is read through a
    read-only connection, in one snapshot. One that SQLite cannot read is called
    SPOOL (opening it as a spool decides: a corrupt spool is moved aside)."""
    kind = file_type(path)
    if kind is not None:
        return kind  # a device or FIFO is never opened: it would block, or be changed
    with open(path, "rb") as f:
        kind = kind_of_head(path, f.read(len(SQLITE_HEADER)))
    if kind is not FileKind.SPOOL:
        return kind
    uri = "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error:
        return kind
    try:
        conn.execute("BEGIN")
        return FileKind.FOREIGN if foreign_tables(conn) else kind
    except sqlite3.Error:
        return kind
    finally:
        conn.close()


def file_type(path: Path) -> FileKind | None:
    """MISSING, FOLDER or SPECIAL (a device, FIFO, socket) from ``stat`` alone,
    following links; None for a regular file. Nothing is opened."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return FileKind.MISSING
    except OSError:
        return None  # let opening it say what is wrong (permissions, I/O)
    if stat.S_ISDIR(mode):
        return FileKind.FOLDER
    return None if stat.S_ISREG(mode) else FileKind.SPECIAL


def check_spool_file(path: Path) -> None:
    """Raise :class:`~spoolpost.errors.ConfigError` if ``path`` exists and is not a
    spool (a folder, a file that is not SQLite, another application's database).
    Worded for an operator who may have mistyped the path."""
    kind = classify(path)
    if kind is FileKind.FOLDER:
        raise ConfigError(f"{path} is a folder, not a spool file")
    if kind in (FileKind.NOT_SQLITE, FileKind.DESTROYED):
        raise ConfigError(f"{path} is not a spoolpost spool (not an SQLite database)")
    if kind is FileKind.FOREIGN:
        raise ConfigError(f"{path} is an SQLite database, but not a spoolpost spool")
    if kind is FileKind.SPECIAL:
        raise ConfigError(special_file_message(path))


def special_file_message(path: Path) -> str:
    """Why ``path`` (a device, FIFO or socket) is refused as a spool."""
    return f"{path} is not a regular file (a device, FIFO or socket); a spool must be a file"


# -- creating the file and keeping it private -----------------------------------------


def make_folders(path: Path) -> None:
    """Create the missing folders of the spool file ``path`` one by one, each
    ``0700`` (``mkdir -p`` would give only the last one that mode). Folders that
    already exist are left as they are. Raises :class:`ConfigError`."""
    missing: list[Path] = []
    folder = path.parent
    try:
        while not folder.exists() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            with contextlib.suppress(FileExistsError):  # another process was first
                folder.mkdir(mode=0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create or reach the folder of spool {path}: {exc}") from exc


def folder_problem(path: Path) -> str:
    """The OS error that SQLite hides when it cannot create the -wal and -shm
    files beside the spool ``path`` (it says only "attempt to write a readonly
    database"), found by creating and removing a file of our own there; "" if
    that works."""
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        return (
            f" (SQLite must create {path.name}-wal and {path.name}-shm"
            f" in {path.parent}: {exc.strerror})"
        )
    os.close(fd)
    os.unlink(probe)
    return ""


def prepare_file(path: Path) -> FileId:
    """Create the spool file ``path`` ``0600`` if it is missing, make sure that
    SQLite may have it, and make it private before SQLite opens it. Returns the
    file's (device, inode).

    Only an empty file or one that starts with the SQLite header is handed to
    SQLite: anything else (a file the path was pointed at by mistake) raises
    :class:`SpoolCorrupt` and is left untouched, where SQLite would call it
    corrupt and it would be moved aside. The exception: a file without the
    header that has a ``-wal`` or ``-shm`` beside it was an SQLite database in
    WAL mode (a spool whose first page was destroyed); it is moved aside and a
    new spool started, so the app keeps running. Raises :class:`ConfigError`
    for OS errors.
    """
    kind = file_type(path)
    if kind is FileKind.SPECIAL:
        raise ConfigError(special_file_message(path))
    if kind is FileKind.MISSING:
        set_orphans_aside(path)
    try:
        # O_NONBLOCK: a FIFO swapped in after the check above must not hang the open.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot open spool {path}: {exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(special_file_message(path))
        head = os.pread(fd, len(SQLITE_HEADER), 0) if st.st_size else b""
        kind = kind_of_head(path, head)
        if kind is FileKind.DESTROYED:
            os.close(fd)
            fd = -1
            move_aside(path, (st.st_dev, st.st_ino), SpoolCorrupt("its SQLite header is destroyed"))
            return prepare_file(path)
        if kind is FileKind.NOT_SQLITE:
            raise SpoolCorrupt(
                f"spool {path} is not an SQLite database; refusing to change it. "
                "Point spoolpost at another path or remove the file"
            )
        make_private(path, fd, st.st_mode)
    except OSError as exc:
        raise ConfigError(f"cannot open spool {path}: {exc}") from exc
    finally:
        if fd >= 0:
            os.close(fd)
    return (st.st_dev, st.st_ino)


def make_private(path: Path, fd: int, mode: int) -> None:
    """Take group and other access away (``0600``) from the spool file ``path``,
    open as ``fd`` with ``mode``, and from its existing -wal and -shm: events
    carry personal data, and SQLite gives the -wal and -shm it creates the spool
    file's mode. Logged at INFO when a mode changes."""
    changed = []
    if mode & 0o077:
        os.fchmod(fd, 0o600)
        changed.append(f"{path.name} (was {stat.S_IMODE(mode):04o})")
    for side in side_files(path):
        try:
            side_mode = os.stat(side).st_mode
        except FileNotFoundError:
            continue
        if side_mode & 0o077:
            os.chmod(side, 0o600)
            changed.append(f"{side.name} (was {stat.S_IMODE(side_mode):04o})")
    if changed:
        log.info(
            "spool %s: other users could access %s; made it 0600 (events carry personal data)",
            path,
            ", ".join(changed),
        )


# -- corrupt files and files replaced by another process --------------------------------


def file_id(path: Path) -> FileId | None:
    """(device, inode) of the file now at ``path``; None if there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def move_aside(
    path: Path, failed: FileId | None, exc: BaseException, *, logged: bool = True
) -> Path | None:
    """Move the corrupt spool ``path`` (and its -wal, -shm) to
    ``<path>.corrupt-<UTC time>``, logged at ERROR with ``exc`` (unless not
    ``logged``: the caller logs what it carried over); return where.

    If the file at ``path`` is no longer ``failed``, the one that failed (another
    process moved it aside first and started a new spool), leave the new one
    alone and return None.
    """
    current = file_id(path)
    if current is None or (failed is not None and current != failed):
        return None
    when = stamp()
    aside = path.with_name(f"{path.name}.corrupt-{when}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.corrupt-{when}-{n}")
        n += 1
    os.replace(path, aside)
    for suffix in ("-wal", "-shm"):
        side = Path(str(path) + suffix)
        with contextlib.suppress(FileNotFoundError):
            os.replace(side, Path(str(aside) + suffix))
    if logged:
        log.error(
            "spool %s is corrupt (%s); moved it aside to %s and started a new spool",
            path,
            exc,
            aside,
        )
    return aside


def stamp() -> str:
    """Now as a UTC time for file names (``20260101T000000Z``)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def set_orphans_aside(path: Path, ours: set[FileId] | None = None) -> list[Path]:
    """Move a ``-wal``/``-shm`` orphaned beside ``path`` to
    ``<path>.orphaned-<UTC time>-wal``/``-shm`` and return their new paths: with
    no spool file at ``path``, any there; else only those whose (device, inode)
    is in ``ours`` (the side files of the file a process just left).

    They belong to a spool that was deleted or moved while a process had it
    open (that process still writes through them and carries its rows over when
    it notices; see docs/architecture.md, "The file replaced, deleted or
    damaged"). A new database opened beside them would read their pages as its
    own, without an error; renamed, they stay with the process that has them open."""
    missing = file_type(path) is FileKind.MISSING
    if not missing and not ours:
        return []
    when = stamp()
    moved = []
    for side in side_files(path):
        if not missing and file_id(side) not in (ours or set()):
            continue
        suffix = str(side)[len(str(path)) :]
        aside = path.with_name(f"{path.name}.orphaned-{when}{suffix}")
        try:
            os.rename(side, aside)
        except (FileNotFoundError, NotADirectoryError):
            continue
        moved.append(aside)
    if moved:
        log.warning(
            "spool %s: its %s belong to a spool file gone from the path; moved them aside"
            " to %s so that a new spool does not read them as its own",
            path,
            " and ".join(p.name[len(path.name) + len(".orphaned-") + len(when) :] for p in moved),
            ", ".join(str(p) for p in moved),
        )
    return moved


# -- network filesystems ---------------------------------------------------------------


def _unescape_mount(field: str) -> str:
    """Undo the octal escapes of /proc/mounts (``\\040`` space, ``\\011`` tab, …)."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m[1], 8)), field)


def mount_of(target: str, mounts: str) -> tuple[str, str]:
    """(mount point, filesystem type) of the mount holding the absolute path
    ``target``, given the text of ``/proc/mounts``; ("", "") if none matches.
    The last of equally long matches wins (it is mounted over the others)."""
    best, fstype = "", ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = _unescape_mount(fields[1])
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, fstype = mount, fields[2]
    return best, fstype


def is_network_fs(fstype: str) -> bool:
    """True for a filesystem type on which SQLite WAL is unsafe (NFS, SMB, FUSE
    network mounts, …)."""
    return fstype in _NETWORK_FS or fstype.startswith("nfs")


def check_filesystem(path: Path, mounts: str | None = None) -> None:
    """Raise :class:`UnsupportedFilesystem` if ``path`` lies on a network filesystem.

    SQLite's WAL mode needs shared memory between processes on one host and
    does not work over NFS/SMB and the like (https://sqlite.org/wal.html).
    ``mounts`` is the text of ``/proc/mounts`` (default: read it; where it is
    missing nothing is checked).
    """
    if mounts is None:
        try:
            with open("/proc/mounts", encoding="utf-8", errors="replace") as f:
                mounts = f.read()
        except OSError:
            return
    mount, fstype = mount_of(str(path.resolve()), mounts)
    if is_network_fs(fstype):
        raise UnsupportedFilesystem(
            f"spool {path} is on a {fstype} filesystem mounted at {mount}; SQLite WAL "
            "does not work on network filesystems. Put the spool on a local disk "
            "(or pass allow_network_fs=True if you know better)."
        )
