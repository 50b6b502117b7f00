"""Where a spool lives when the caller names none: the one rule that
:class:`~spoolpost.client.Client`, :class:`~spoolpost.Posthog`, the module-level API
and ``spoolpost path``/``inspect``/``check`` share.

1. ``$SPOOLPOST_SPOOL`` when set;
2. else ``$XDG_STATE_HOME/spoolpost/<key fingerprint>.spool`` (``~/.local/state``
   when ``XDG_STATE_HOME`` is unset), when that file exists or its folder can be
   created (the nearest existing ancestor is a writable folder);
3. else the per-user fallback ``<base>/spoolpost-<uid>/<key fingerprint>.spool``,
   ``<base>`` being ``$SPOOLPOST_FALLBACK_DIR`` or ``/var/tmp`` (which survives
   reboots, where ``/tmp`` may not): a service user without a home keeps capturing.

Resolving creates nothing, so a read-only command can use it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

__all__ = [
    "FALLBACK_BASE",
    "default_spool_path",
    "fallback_spool_path",
    "key_fingerprint",
    "preferred_spool_path",
]

#: The folder under which the per-user fallback folder is made (see the module doc).
FALLBACK_BASE = "/var/tmp"


def key_fingerprint(api_key: str) -> str:
    """A short, non-reversible fingerprint of a project API key (SHA-256, 16 hex)."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:16]


def preferred_spool_path(api_key: str) -> Path:
    """Rules 1 and 2 of the module doc, without the check: where the spool should be."""
    configured = os.environ.get("SPOOLPOST_SPOOL")
    if configured:
        return Path(configured).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or os.path.join("~", ".local", "state")
    return Path(state).expanduser() / "spoolpost" / f"{key_fingerprint(api_key)}.spool"


def fallback_spool_path(api_key: str) -> Path:
    """Rule 3: ``$SPOOLPOST_FALLBACK_DIR`` (default ``/var/tmp``)
    ``/spoolpost-<uid>/<key fingerprint>.spool``."""
    base = os.environ.get("SPOOLPOST_FALLBACK_DIR") or FALLBACK_BASE
    return Path(base) / f"spoolpost-{os.getuid()}" / f"{key_fingerprint(api_key)}.spool"


def creatable(path: Path) -> bool:
    """True when ``path`` exists, or a folder can be made in its nearest existing
    ancestor (so the folders down to it can be made). Tried with a folder made and
    removed at once, not ``os.access``: root passes every permission check, yet
    cannot make folders under ``/proc`` or on a read-only filesystem."""
    if path.exists():
        return True
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return False
            try:
                os.rmdir(tempfile.mkdtemp(prefix=".spoolpost-probe-", dir=parent))
            except OSError:
                return False
            return True
    return False


def default_spool_path(api_key: str) -> Path:
    """The default spool for ``api_key`` by the three rules of the module doc
    (``$SPOOLPOST_SPOOL`` is used as given, never replaced by the fallback)."""
    preferred = preferred_spool_path(api_key)
    if os.environ.get("SPOOLPOST_SPOOL") or creatable(preferred):
        return preferred
    return fallback_spool_path(api_key)
