"""Rows of events for the listing commands (``tail``, ``export``): as JSON lines,
CSV or an aligned table (see :func:`~spoolpost.cli.options.output_options`), a
damaged row (a stored body that is not a JSON object) shown as damaged, and a
progress bar on a terminal."""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

import click

from spoolpost.cli.options import format_time
from spoolpost.errors import SpoolpostError
from spoolpost.spool.maintenance import META_KEY, SpooledEvent

log = logging.getLogger("spoolpost")

T = TypeVar("T")

#: The columns of ``--csv`` and ``--table``.
COLUMNS = ("time", "state", "uuid", "event", "distinct_id", "attempts", "detail")


def damage(e: SpooledEvent) -> str | None:
    """Why the stored body of ``e`` cannot be shown (not JSON, not an object), or None."""
    try:
        e.event  # noqa: B018 (decodes it once; cached)
    except SpoolpostError as exc:
        return str(exc)
    return None


def warn_damaged(e: SpooledEvent, why: str) -> None:
    """The one WARNING line (on stderr, through the CLI's log handler) for a damaged row."""
    log.warning("event %s is damaged and shown as such: %s", e.uuid, why)


def detail(e: SpooledEvent, why: str | None = None) -> str:
    """What went wrong with ``e``: DAMAGED, its dead-letter reason, or its last error."""
    if why is not None:
        return f"DAMAGED: {why}"
    if e.state == "dead":
        status = f" {e.status}" if e.status is not None else ""
        return f"{e.reason}{status}: {e.detail or ''}"
    return f"last error: {e.last_error}" if e.last_error else ""


def row(e: SpooledEvent, why: str | None = None) -> dict[str, Any]:
    """``e`` as one row of :data:`COLUMNS`."""
    event = {} if why is not None else e.event
    return {
        "time": format_time(e.recent_at),
        "state": e.state,
        "uuid": e.uuid,
        "event": str(event.get("event", "?")),
        "distinct_id": str(event.get("distinct_id", "?")),
        "attempts": e.attempts,
        "detail": detail(e, why),
    }


def json_line(e: SpooledEvent, why: str | None = None) -> str:
    """``e`` as ``export`` writes it; a damaged row as ``{"uuid": …, "spoolpost":
    {…, "damaged": why, "body": the stored text}}`` (``import`` refuses it)."""
    if why is None:
        return e.json_line()
    meta = {**e.meta(), "damaged": why, "body": e.body.decode("utf-8", "replace")}
    return json.dumps({"uuid": e.uuid, META_KEY: meta}, ensure_ascii=False)


def write_rows(events: Iterable[SpooledEvent], fmt: str, out: IO[str]) -> None:
    """Write ``events`` to ``out`` as ``nl`` (JSON lines), ``csv`` or ``table``,
    a damaged one marked as such (with one WARNING each) and the others unharmed."""
    if fmt == "nl":
        for e in events:
            why = damage(e)
            if why is not None:
                warn_damaged(e, why)
            out.write(json_line(e, why) + "\n")
        return
    rows = []
    for e in events:
        why = damage(e)
        if why is not None:
            warn_damaged(e, why)
        rows.append(row(e, why))
    if fmt == "csv":
        writer = csv.DictWriter(out, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        out.write(table(rows))


def table(rows: list[dict[str, Any]]) -> str:
    """``rows`` as a plain aligned table: a header, a rule, one line a row."""
    cells = [list(COLUMNS)] + [[str(r[c]) for c in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines) + "\n"


def progress(items: Iterable[T], length: int | None, label: str) -> Iterator[T]:
    """``items``, with a progress bar on stderr while they are consumed, only when
    stderr is a terminal (cron, pipes and logs stay quiet)."""
    if not sys.stderr.isatty():
        yield from items
        return
    with click.progressbar(items, length=length, label=label, file=sys.stderr) as bar:
        yield from bar
