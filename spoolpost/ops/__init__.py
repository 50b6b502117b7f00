"""Operator tools over a spool: the library behind the ``spoolpost`` commands.

Reads and repairs (listing, tail, replay, purge) are :class:`~spoolpost.spool.Spool`
methods; what lies above the storage seam is here: :func:`open_spool`,
import and one-off capture (:mod:`spoolpost.ops.transfer`), the cron drain
(:mod:`spoolpost.ops.drain`), the read-only views for monitoring
(:mod:`spoolpost.ops.status`: inspect's verdict and ``check``;
:mod:`spoolpost.ops.metrics`: Prometheus) and the demo (:mod:`spoolpost.ops.demo`).
"""

from __future__ import annotations

from pathlib import Path

from spoolpost.errors import ConfigError
from spoolpost.ops.drain import (
    DRAIN_CONFIG,
    EXIT_DAMAGED,
    EXIT_DEAD,
    EXIT_EMPTY,
    EXIT_ERROR,
    EXIT_OUTAGE,
    EXIT_PAUSED,
    EXIT_REMAIN,
    DrainInterrupted,
    DrainResult,
    drain_exit_code,
    drain_host,
    drain_spool,
)
from spoolpost.ops.follow import follow
from spoolpost.ops.transfer import (
    ImportResult,
    capture_one,
    import_events,
    parse_import,
)
from spoolpost.spool import Spool, check_spool_file

__all__ = [
    "DRAIN_CONFIG",
    "EXIT_DAMAGED",
    "EXIT_DEAD",
    "EXIT_EMPTY",
    "EXIT_ERROR",
    "EXIT_OUTAGE",
    "EXIT_PAUSED",
    "EXIT_REMAIN",
    "DrainInterrupted",
    "DrainResult",
    "ImportResult",
    "capture_one",
    "drain_exit_code",
    "drain_host",
    "drain_spool",
    "follow",
    "import_events",
    "open_spool",
    "parse_import",
]


def open_spool(path: Path, *, create: bool = False) -> Spool:
    """Open the spool at ``path`` for an operator command.

    Without ``create`` the file must exist. A folder, a file that is not an SQLite
    database, or an SQLite database of another application, is refused untouched
    with a :class:`~spoolpost.errors.ConfigError` worded for a path mistyped on a
    command line (the :class:`Spool` constructor refuses them too). Raises
    :class:`~spoolpost.errors.ConfigError`, or what :class:`Spool` raises.
    """
    path = Path(path).expanduser()
    if not path.exists() and not create:
        raise ConfigError(f"no spool at {path}")
    check_spool_file(path)
    return Spool(path)
