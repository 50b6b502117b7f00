"""The exceptions spoolpost raises: one base class, one subclass per situation."""

from __future__ import annotations


class SpoolpostError(Exception):
    """Base class of every exception spoolpost raises on purpose."""


class ConfigError(SpoolpostError, ValueError):
    """Raised when a client, spool or CLI is given settings that cannot work."""


class EncodingError(SpoolpostError, TypeError):
    """Raised by ``capture()`` when a property value cannot be encoded as JSON.

    ``path`` names the offending value, for example ``properties.cart[3].price``.
    """

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class EventTooLarge(SpoolpostError, ValueError):
    """Raised by ``capture()`` when the encoded event exceeds ``max_event_bytes``.

    ``size`` and ``limit`` are in bytes.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"encoded event is {size} bytes, over max_event_bytes={limit}")
        self.size = size
        self.limit = limit


class SpoolFull(SpoolpostError):
    """Raised by ``capture()`` when the spool is at ``max_spool_bytes`` and
    ``on_full`` is ``"raise"``, or ``"block"`` and the block timeout ran out."""


class SpoolUnwritable(SpoolFull):
    """Raised when the spool's filesystem refuses a write: full (ENOSPC, EDQUOT,
    ``SQLITE_FULL``), read-only (EROFS), permission lost, or an I/O error. By
    ``capture()`` as :class:`SpoolFull` is (``on_full="raise"``, or ``"block"``
    past its timeout), so one ``except SpoolFull`` serves both; by delivery's
    writes too. ``condition``: ``"full"``, ``"readonly"`` or ``"ioerror"``;
    ``path``: the spool file."""

    def __init__(self, message: str, *, condition: str, path: object) -> None:
        super().__init__(message)
        self.condition = condition
        self.path = path


class SpoolCorrupt(SpoolpostError):
    """Raised when a spool file is not a usable SQLite database."""


class SpoolLocked(SpoolpostError):
    """Raised when the spool stays locked by another writer past ``busy_timeout``."""


class SchemaTooNew(SpoolpostError):
    """Raised when a spool was written by a newer spoolpost whose schema this one
    does not know."""


class UnsupportedFilesystem(ConfigError):
    """Raised when the spool lies on a network filesystem, where SQLite WAL is unsafe."""


class KeyMismatch(ConfigError):
    """Raised when a spool created for one project API key is delivered with another."""


class HostMismatch(ConfigError):
    """The spool delivers to another ingestion endpoint than the one given."""


class ImportRejected(SpoolpostError, ValueError):
    """Raised by :func:`import_events` when input lines are not valid events;
    nothing was written. ``errors`` holds ``(line number, message)`` pairs."""

    def __init__(self, errors: list[tuple[int, str]], total: int) -> None:
        shown = "\n".join(f"  line {n}: {message}" for n, message in errors)
        more = total - len(errors)
        tail = f"\n  … and {more} more bad line(s)" if more > 0 else ""
        super().__init__(f"{total} bad input line(s); nothing was imported:\n{shown}{tail}")
        self.errors = errors
        self.total = total


class SpoolClosed(SpoolpostError):
    """Raised when a closed spool or a shut-down client is asked to capture."""
