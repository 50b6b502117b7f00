"""Commands that list a spool's events and change nothing: ``tail`` and ``export``
(``inspect`` is in :mod:`spoolpost.cli.monitor`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import IO

import click

from spoolpost.cli.options import (
    filter_options,
    format_time,
    open_spool,
    spool_argument,
)
from spoolpost.spool.maintenance import Filter, SpooledEvent


def _tail_line(e: SpooledEvent) -> str:
    name = str(e.event.get("event", "?"))
    who = str(e.event.get("distinct_id", "?"))
    line = f"{format_time(e.recent_at)}  {e.state:<7}  {e.uuid}  {name}  {who}"
    if e.attempts:
        line += f"  attempts={e.attempts}"
    if e.state == "dead":
        status = f" {e.status}" if e.status is not None else ""
        line += f"  {e.reason}{status}: {e.detail or ''}"
    elif e.last_error:
        line += f"  last error: {e.last_error}"
    return line


@click.command()
@spool_argument
@filter_options(states=True)
@click.option(
    "-n",
    "limit",
    type=click.IntRange(min=1, max=1_000_000),
    default=20,
    show_default=True,
    help="How many.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON Lines (as export does).")
def tail(
    spool: Path | None,
    states: tuple[str, ...],
    event: str | None,
    reason: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Show the newest events of SPOOL first, filtered by state, event or reason.

    Pending and leased events are ordered by capture time, dead letters by the
    time they were dead-lettered.

    \b
    Example:
        spoolpost tail /var/lib/myapp/events.spool --state dead -n 5
    """
    where = Filter(states=frozenset(states), event=event, reason=reason)
    with open_spool(spool) as s:
        found = s.tail(where, limit, now=time.time())
    for e in found:
        click.echo(e.json_line() if as_json else _tail_line(e))


@click.command()
@spool_argument
@filter_options(states=True)
@click.option(
    "-o",
    "--output",
    type=click.File("w", encoding="utf-8", lazy=True),
    default="-",
    help="Write to this file instead of stdout.",
)
def export(
    spool: Path | None,
    states: tuple[str, ...],
    event: str | None,
    reason: str | None,
    output: IO[str],
) -> None:
    """Write the events of SPOOL as JSON Lines: pending and leased ones in capture
    order, then dead letters.

    Each line is the PostHog event as stored, plus a "spoolpost" object with its
    state, attempts, times and (for dead letters) reason, status and detail.
    `spoolpost import` reads these lines back.

    \b
    Example:
        spoolpost export /var/lib/myapp/events.spool --state dead -o dead.jsonl
    """
    where = Filter(states=frozenset(states), event=event, reason=reason)
    with open_spool(spool) as s:
        for e in s.events(where, now=time.time()):
            output.write(e.json_line() + "\n")
