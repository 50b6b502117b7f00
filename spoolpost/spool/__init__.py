"""The spool: one SQLite file (WAL) holding every captured event until it is
delivered or dead-lettered. :class:`Spool` (in :mod:`~spoolpost.spool.core`) is
the storage seam; every SQL statement of spoolpost lives in this package (see
docs/architecture.md, "Module map")."""

from spoolpost.spool.append import (
    DEFAULT_BLOCK_TIMEOUT,
    DEFAULT_MAX_SPOOL_BYTES,
    DEFAULT_ON_FULL,
    ON_FULL_POLICIES,
    OnFull,
)
from spoolpost.spool.core import Spool
from spoolpost.spool.db import (
    DEFAULT_BUSY_TIMEOUT,
    DEFAULT_DURABILITY,
    DURABILITY_MODES,
    Durability,
)
from spoolpost.spool.files import (
    SQLITE_HEADER,
    check_filesystem,
    check_spool_file,
    is_network_fs,
    mount_of,
)
from spoolpost.spool.leases import Batch, Row
from spoolpost.spool.maintenance import Filter, SpooledEvent
from spoolpost.spool.queries import SpoolSnapshot, SpoolStats, Watermark
from spoolpost.spool.settlement import Doomed, Settled, Settlement
from spoolpost.spool.space import DEFAULT_MIN_FREE_BYTES
from spoolpost.spool.sql import AI_LANE
from spoolpost.spool.stamps import RequestStamp, Stamper

__all__ = [
    "AI_LANE",
    "DEFAULT_BLOCK_TIMEOUT",
    "DEFAULT_BUSY_TIMEOUT",
    "DEFAULT_DURABILITY",
    "DEFAULT_MAX_SPOOL_BYTES",
    "DEFAULT_MIN_FREE_BYTES",
    "DEFAULT_ON_FULL",
    "DURABILITY_MODES",
    "ON_FULL_POLICIES",
    "SQLITE_HEADER",
    "Batch",
    "Doomed",
    "Durability",
    "Filter",
    "OnFull",
    "RequestStamp",
    "Row",
    "Settled",
    "Settlement",
    "Spool",
    "SpoolSnapshot",
    "SpoolStats",
    "SpooledEvent",
    "Stamper",
    "Watermark",
    "check_filesystem",
    "check_spool_file",
    "is_network_fs",
    "mount_of",
]
