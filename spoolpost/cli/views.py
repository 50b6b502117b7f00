"""Commands that read a spool and change nothing: ``inspect``, ``tail`` and ``export``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import IO

import click

from spoolpost.cli.options import (
    emit,
    filter_options,
    format_age,
    format_time,
    json_option,
    open_spool,
    spool_argument,
)
from spoolpost.spool.maintenance import STATES, Filter, SpooledEvent


@click.command()
@spool_argument
@json_option
def inspect(spool: Path | None, as_json: bool) -> None:
    """Show counts and bytes by state, ages, dead reasons and counters of SPOOL."""
    with open_spool(spool) as s:
        stats = s.stats(time.time())

    def human() -> None:
        click.echo(f"spool           {stats.path} (schema v{stats.schema_version})")
        for state in STATES:
            click.echo(f"{state:<15} {stats.counts[state]:>10} events {stats.bytes[state]:>12} B")
        click.echo(f"oldest pending  {format_age(stats.oldest_pending_age)}")
        click.echo(f"next attempt in {format_age(stats.next_attempt_in)}")
        if stats.dead_reasons:
            reasons = ", ".join(f"{k}={v}" for k, v in sorted(stats.dead_reasons.items()))
            click.echo(f"dead reasons    {reasons}")
        counters = ", ".join(f"{k}={v}" for k, v in sorted(stats.counters.items()))
        click.echo(f"counters        {counters}")
        click.echo(f"file            {stats.file_bytes} B, WAL {stats.wal_bytes} B")

    emit(stats.as_dict(), as_json, human)


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
    """
    where = Filter(states=frozenset(states), event=event, reason=reason)
    with open_spool(spool) as s:
        for e in s.events(where, now=time.time()):
            output.write(e.json_line() + "\n")
