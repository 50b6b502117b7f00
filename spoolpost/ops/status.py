"""Is anything stuck, and why: the library behind ``spoolpost inspect``, ``check``
and ``metrics``. Everything here reads the spool through
:class:`~spoolpost.spool.reader.SpoolReader` and never writes.

- :func:`report` turns an :class:`Observation` into the ``inspect`` report: a
  :class:`Verdict` (one state and one line) and the facts below it, as one
  JSON-able dict whose schema README documents ("inspect --json").
- :func:`check` compares an observation with :class:`Thresholds` (Nagios codes).
- :func:`metrics_registry` exposes one as Prometheus metrics.
- :func:`quarantine` lists the files set aside beside a spool (corrupt ones,
  side files of a deleted one); :func:`unreadable` is the machine-readable
  answer when the spool itself cannot be read (missing, corrupt).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spoolpost.errors import SpoolCorrupt
from spoolpost.events.timestamps import format_timestamp
from spoolpost.spool import DEFAULT_MAX_SPOOL_BYTES, DEFAULT_MIN_FREE_BYTES, aside, files
from spoolpost.spool.files import FileKind
from spoolpost.spool.reader import EndpointState, LeaseInfo, Observation

#: Transient failures in a row that ``inspect`` calls an outage (drain's default).
OUTAGE_AFTER = 3
#: How full (used bytes / ``max_spool_bytes``) ``inspect`` calls a full spool.
FULL_AT = 0.95

STATES = ("healthy", "backing_off", "paused", "outage", "stuck")


def _at(seconds: float | None) -> str:
    return "-" if seconds is None else format_timestamp(None, round(seconds))


@dataclass(frozen=True)
class Verdict:
    """The one-line state of a spool: ``state`` (one of :data:`STATES`),
    ``line`` (what to print), and where they apply ``since``/``until`` (UTC
    seconds) and the HTTP ``status`` of a pause."""

    state: str
    line: str
    since: float | None = None
    until: float | None = None
    status: int | None = None


def bound(obs: Observation) -> tuple[int, str]:
    """``max_spool_bytes`` as the last delivering process recorded it, else as the
    last client (capture-only ones too) recorded it in the meta table, else the
    default: (bytes, ``"recorded"`` or ``"default"``)."""
    for e in obs.endpoints:
        value = e.data.get("max_spool_bytes")
        if isinstance(value, int) and value > 0:
            return value, "recorded"
    stored = obs.meta.get("max_spool_bytes", "")
    if stored.isdigit() and int(stored) > 0:
        return int(stored), "recorded"
    return DEFAULT_MAX_SPOOL_BYTES, "default"


def floor(obs: Observation) -> tuple[int, str]:
    """``min_free_bytes`` as the last client recorded it in the meta table, else
    the default: (bytes, ``"recorded"`` or ``"default"``)."""
    stored = obs.meta.get("min_free_bytes", "")
    if stored.isdigit():
        return int(stored), "recorded"
    return DEFAULT_MIN_FREE_BYTES, "default"


def below_floor(obs: Observation) -> bool:
    """True when the filesystem's free bytes are under ``min_free_bytes``."""
    return obs.fs_free_bytes is not None and obs.fs_free_bytes < floor(obs)[0]


def fullness(obs: Observation) -> float:
    """Used bytes over the bound, 0.0 to 1.0 (and above when over it)."""
    return obs.used_bytes / bound(obs)[0]


def _who(e: EndpointState) -> str:
    return f"pid {e.owner.pid} on {e.owner.host}, " + ("running" if e.alive else "gone")


def left_at_stop(obs: Observation, lease: LeaseInfo) -> bool:
    """True when ``lease`` belongs to a process that stopped delivery cleanly with
    its request still in flight (a drain at its budget's end, a shutdown at its
    deadline: its endpoint record has ``stopped_at`` at or after the lease was
    taken): the next delivering process takes it back, as planned; not stuck."""
    for e in obs.endpoints:
        stopped = e.data.get("stopped_at")
        if e.owner == lease.owner and stopped is not None:
            return float(stopped) >= lease.created_at
    return False


def verdict(obs: Observation) -> Verdict:
    """The state of the spool, first match wins: paused (the latest endpoint
    record is paused by a configuration fault), outage (its gate closed after
    :data:`OUTAGE_AFTER` failures in a row), stuck (leases of a gone owner that
    did not stop cleanly, see :func:`left_at_stop`; or the spool
    :data:`FULL_AT` full), backing off (the gate or every pending retry is due
    later), else healthy (saying so when a stopped process left leases)."""
    now = obs.now
    latest = obs.endpoints[0] if obs.endpoints else None
    data: dict[str, Any] = latest.data if latest else {}
    if latest and data.get("paused_reason"):
        status = data.get("paused_status")
        since = data.get("paused_since")
        by = f"HTTP {status}" if status else str(data["paused_reason"])
        return Verdict(
            "paused",
            f"paused by {by} since {_at(since)} ({_who(latest)}): check host and API key; "
            "a drain with corrected settings sends at once",
            since=since,
            until=data.get("paused_until"),
            status=status,
        )
    gate_until = float(data.get("gate_until") or 0.0)
    if latest and int(data.get("gate_failures") or 0) >= OUTAGE_AFTER and gate_until > now:
        return Verdict(
            "outage",
            f"outage: {data['gate_failures']} failures in a row, last {data.get('last_error')}"
            f"; next probe at {_at(gate_until)}",
            since=data.get("last_error_at"),
            until=gate_until,
        )
    gone = [lease for lease in obs.leases if not lease.alive and lease.events]
    left = [lease for lease in gone if left_at_stop(obs, lease)]
    gone = [lease for lease in gone if lease not in left]
    if gone:
        n = sum(lease.events for lease in gone)
        pids = ", ".join(sorted({str(lease.owner.pid) for lease in gone}))
        return Verdict(
            "stuck",
            f"stuck: {n} event(s) leased to gone process(es) {pids}; the next delivering "
            "process takes them back at once",
        )
    if fullness(obs) >= FULL_AT:
        return Verdict("stuck", f"stuck: the spool is {fullness(obs):.0%} full")
    if below_floor(obs):
        return Verdict(
            "stuck",
            f"stuck: the filesystem has {obs.fs_free_bytes} B free, under min_free_bytes="
            f"{floor(obs)[0]}: captures are refused (on_full) until delivery or you free space",
        )
    pending = obs.stats.counts["pending"]
    fresh = pending - obs.retrying
    retry_at = obs.next_retry_at
    if gate_until > now or (fresh == 0 and retry_at is not None and retry_at > now):
        until = max(gate_until, retry_at or 0.0) if fresh == 0 else gate_until
        after = data.get("last_error") or obs.last_error or "a failure"
        why = " (Retry-After)" if data.get("retry_after") else ""
        return Verdict(
            "backing_off", f"backing off until {_at(until)}{why} after {after}", until=until
        )
    if left:
        n = sum(lease.events for lease in left)
        pids = ", ".join(sorted({str(lease.owner.pid) for lease in left}))
        return Verdict(
            "healthy",
            f"healthy; {n} event(s) were in flight when process(es) {pids} stopped; "
            "the next delivering process takes them back at once",
        )
    return Verdict("healthy", "healthy")


def _lease(obs: Observation, lease: LeaseInfo) -> dict[str, Any]:
    return {
        "token": lease.token,
        "host": lease.owner.host,
        "pid": lease.owner.pid,
        "alive": lease.alive,
        "events": lease.events,
        "created_at": lease.created_at,
        "expires_at": lease.expires_at,
        "taken_back": "at expiry" if lease.alive else "at once",
        "left_at_stop": not lease.alive and left_at_stop(obs, lease),
    }


def quarantine(path: Path) -> list[dict[str, Any]]:
    """The files set aside beside the spool ``path`` (:func:`aside.quarantined`):
    ``[{"path", "kind": "corrupt" or "orphaned", "bytes"}]``, by name. ``corrupt``:
    a spool moved aside as ``<path>.corrupt-<UTC time>`` (with its ``-wal``/``-shm``)
    after its readable rows were carried into a new spool; ``orphaned``: the
    ``-wal``/``-shm`` of a spool deleted under a process, moved aside before a new
    spool opened beside them. Nothing is opened or moved."""
    found = []
    for file in aside.quarantined(path):
        try:
            size = file.stat().st_size
        except OSError:
            continue
        name = file.name[len(path.name) :]
        kind = next(k for k in ("corrupt", "orphaned", "rescue") if name.startswith(f".{k}-"))
        found.append({"path": str(file), "kind": kind, "bytes": size})
    return found


#: ``state`` of :func:`unreadable`'s answer.
UNREADABLE_STATES = ("missing", "corrupt", "unreadable")


def unreadable(path: Path, error: Exception) -> dict[str, Any]:
    """The ``inspect --json`` object for a spool that cannot be read: ``path``,
    ``state`` (``missing``: no file at ``path``; ``corrupt``: SQLite finds it
    damaged, and it is left as it is; ``unreadable``: anything else, e.g. not a
    spool, a newer schema, permissions), ``summary`` and ``error`` (the message),
    and ``quarantined`` (:func:`quarantine`)."""
    if files.file_type(path) is FileKind.MISSING:
        state = "missing"
    elif isinstance(error, SpoolCorrupt):
        state = "corrupt"
    else:
        state = "unreadable"
    return {
        "path": str(path),
        "state": state,
        "summary": f"{state}: {error}",
        "error": str(error),
        "quarantined": quarantine(path),
    }


def report(obs: Observation) -> dict[str, Any]:
    """The ``inspect --json`` object (schema in README, "inspect --json"): the
    keys of :meth:`SpoolStats.as_dict` plus ``state``, ``summary``, ``since``,
    ``until``, ``status``, ``retrying``, ``next_retry_at``, ``last_error``,
    ``last_success_at``, ``oldest_pending_at``, ``leases``, ``key_fingerprint``,
    ``created_on``, ``ingestion_host``, ``max_spool_bytes``, ``bound_source``,
    ``used_bytes``, ``full``, ``min_free_bytes``, ``floor_source``, ``fs_free_bytes``,
    ``below_floor`` and ``endpoints``. Times are UTC seconds or null."""
    v = verdict(obs)
    latest = obs.endpoints[0].data if obs.endpoints else {}
    last_error: dict[str, Any] | None = None
    candidates = [(obs.last_error_at, obs.last_error)]
    candidates += [(e.data.get("last_error_at"), e.data.get("last_error")) for e in obs.endpoints]
    dated = [(at, msg) for at, msg in candidates if at is not None and msg]
    if dated:
        at, msg = max(dated, key=lambda c: float(c[0]))
        last_error = {"message": msg, "at": at}
    successes = [e.data.get("last_success_at") for e in obs.endpoints]
    known = [float(s) for s in successes if s is not None]
    age = obs.stats.oldest_pending_age
    limit, source = bound(obs)
    return obs.stats.as_dict() | {
        "state": v.state,
        "summary": v.line,
        "since": v.since,
        "until": v.until,
        "status": v.status,
        "retrying": obs.retrying,
        "next_retry_at": obs.next_retry_at,
        "last_error": last_error,
        "last_success_at": max(known) if known else None,
        "oldest_pending_at": None if age is None else obs.now - age,
        "leases": [_lease(obs, lease) for lease in obs.leases],
        "key_fingerprint": obs.meta.get("key_fingerprint"),
        "created_on": obs.meta.get("host"),
        "ingestion_host": obs.meta.get("ingestion_host") or latest.get("url"),
        "max_spool_bytes": limit,
        "bound_source": source,
        "used_bytes": obs.used_bytes,
        "full": round(fullness(obs), 4),
        "min_free_bytes": floor(obs)[0],
        "floor_source": floor(obs)[1],
        "fs_free_bytes": obs.fs_free_bytes,
        "below_floor": below_floor(obs),
        "endpoints": [e.data | {"alive": e.alive} for e in obs.endpoints],
        "quarantined": quarantine(Path(obs.stats.path)),
    }


# -- check ---------------------------------------------------------------------------

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
_LEVELS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


@dataclass(frozen=True)
class Threshold:
    """A warning and an optional critical limit: a value above ``warning`` warns,
    above ``critical`` is critical."""

    warning: float
    critical: float = math.inf

    def level(self, value: float) -> int:
        if value > self.critical:
            return CRITICAL
        return WARNING if value > self.warning else OK


@dataclass(frozen=True)
class Thresholds:
    """``check``'s limits, each None when not checked: ``pending_age`` in seconds
    (the oldest pending event), ``dead`` (dead letters), ``full`` (a fraction
    of ``max_spool_bytes``, 0.8 for 80 %)."""

    pending_age: Threshold | None = None
    dead: Threshold | None = None
    full: Threshold | None = None


def check(obs: Observation, limits: Thresholds) -> tuple[int, str]:
    """The Nagios-style exit code (0 ok, 1 warning, 2 critical) and one line of
    text for ``obs`` against ``limits``; a paused or stuck spool, and files set
    aside beside it (:func:`quarantine`), are at least a warning."""
    age = obs.stats.oldest_pending_age or 0.0
    measures = [
        ("oldest pending", age, limits.pending_age, f"{age:.0f}s"),
        ("dead", float(obs.stats.counts["dead"]), limits.dead, str(obs.stats.counts["dead"])),
        ("full", fullness(obs), limits.full, f"{fullness(obs):.1%}"),
    ]
    code, parts = OK, []
    for name, value, limit, shown in measures:
        level = limit.level(value) if limit is not None else OK
        code = max(code, level)
        parts.append(f"{name} {shown}" + ("" if level == OK else f" ({_LEVELS[level]})"))
    v = verdict(obs)
    if v.state in ("paused", "outage", "stuck"):
        code = max(code, WARNING)
    aside = quarantine(Path(obs.stats.path))
    if aside:  # damage happened: someone should look (and remove them once done)
        code = max(code, WARNING)
        names = ", ".join(Path(a["path"]).name for a in aside)
        parts.append(f"{len(aside)} file(s) set aside: {names} (WARNING)")
    return code, f"SPOOLPOST {_LEVELS[code]} - {v.line}; " + ", ".join(parts)
