"""The spool: one SQLite file (WAL) holding every captured event until it is
delivered or dead-lettered. :class:`Spool` is the storage seam; every SQL
statement of spoolpost lives in this package (see docs/architecture.md)."""

from spoolpost.spool.core import (
    DEFAULT_MAX_SPOOL_BYTES,
    DURABILITY_MODES,
    ON_FULL_POLICIES,
    SQLITE_HEADER,
    Batch,
    Durability,
    OnFull,
    Row,
    Spool,
    SpoolStats,
    Watermark,
    check_filesystem,
    is_network_fs,
    mount_of,
)

__all__ = [
    "DEFAULT_MAX_SPOOL_BYTES",
    "DURABILITY_MODES",
    "ON_FULL_POLICIES",
    "SQLITE_HEADER",
    "Batch",
    "Durability",
    "OnFull",
    "Row",
    "Spool",
    "SpoolStats",
    "Watermark",
    "check_filesystem",
    "is_network_fs",
    "mount_of",
]
