"""The meta part of the :class:`~spoolpost.spool.Spool` facade: the key and host a
spool belongs to, endpoint states, counters and bounds kept for other processes.
Its SQL is in :mod:`spoolpost.spool.queries`."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from spoolpost.errors import SpoolUnwritable
from spoolpost.spool import queries

if TYPE_CHECKING:
    from spoolpost.spool.db import Database
    from spoolpost.spool.space import SpaceGuard


class MetaMethods:
    """Mixed into :class:`~spoolpost.spool.Spool`, which provides ``_db``,
    ``_space`` and the bounds."""

    _db: Database
    _space: SpaceGuard
    max_spool_bytes: int
    min_free_bytes: int

    def bind_key(self, fingerprint: str, *, force: bool = False) -> None:
        """Record the project-key ``fingerprint`` this spool belongs to, or check it.

        Raises :class:`KeyMismatch` if the spool belongs to another key, unless
        ``force`` (then the spool is re-bound to the new key, logged at WARNING).
        """
        with contextlib.suppress(SpoolUnwritable):  # a full disk: bound at a later start
            self._space.run(lambda: queries.bind_key(self._db, fingerprint, force))

    def bind_host(self, url: str, *, force: bool = False) -> str:
        """Record the ingestion endpoint ``url`` this spool delivers to (meta key
        ``ingestion_host``), or check it: give ``url`` normalised (see
        :func:`spoolpost.delivery.hosts.canonical_host`), so that equivalent
        settings compare equal. Returns the recorded endpoint (``url`` once bound).

        Raises :class:`HostMismatch` if the spool delivers elsewhere, unless
        ``force`` (then it is re-bound to ``url``, logged at WARNING).
        """
        try:
            return self._space.run(lambda: queries.bind_host(self._db, url, force))
        except SpoolUnwritable:  # a full disk: bound at a later start
            return url

    def save_endpoint_state(self, key: str, value: str) -> None:
        """Store one delivering process's endpoint state (``value``: JSON with an
        ``updated_at`` in UTC seconds) under the meta key ``key`` (which starts
        with ``endpoint:``), for ``spoolpost inspect`` in other processes. One
        short write; only the 16 most recently updated records are kept."""
        if not key.startswith(queries.ENDPOINT_PREFIX):
            raise ValueError(f"an endpoint state key starts with 'endpoint:', not {key!r}")
        queries.save_endpoint(self._db, key, value)

    def add_counter(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the persisted counter ``name`` (one short write). Raises
        :class:`SpoolUnwritable` when the disk refuses it."""
        self._space.run(lambda: queries.count(self._db, name, n))

    def record_bound(self) -> None:
        """Keep this spool's ``max_spool_bytes`` and ``min_free_bytes`` in its meta
        table, so that ``spoolpost inspect``/``check`` in another process know how
        full it is, a capture-only app's spool too (one short write; skipped when
        the disk refuses it). Raises :class:`SpoolLocked`."""
        bounds = {"max_spool_bytes": self.max_spool_bytes, "min_free_bytes": self.min_free_bytes}
        with contextlib.suppress(SpoolUnwritable):
            self._space.run(lambda: queries.record_bound(self._db, bounds))

    def meta(self) -> dict[str, str]:
        """The spool's meta table as a dict (host, key_fingerprint, …)."""
        return queries.meta(self._db)
