"""Commands that list a spool's events and change nothing: ``tail`` and ``export``
(``inspect`` is in :mod:`spoolpost.cli.monitor`)."""

from __future__ import annotations

import csv
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import click

from spoolpost import ops
from spoolpost.cli.listing import COLUMNS, damage, progress, row, warn_damaged, write_rows
from spoolpost.cli.options import filter_options, open_spool, output_options, spool_argument
from spoolpost.spool.maintenance import STATES, Filter, SpooledEvent


def _tail_line(e: SpooledEvent) -> str:
    why = damage(e)
    if why is not None:
        warn_damaged(e, why)
    r = row(e, why)
    line = f"{r['time']}  {e.state:<7}  {e.uuid}  {r['event']}  {r['distinct_id']}"
    if e.attempts:
        line += f"  attempts={e.attempts}"
    return line + (f"  {r['detail']}" if r["detail"] else "")


class _Stop:
    """Ctrl-C and SIGTERM end ``tail -f`` cleanly (exit 0) at its next poll; the
    previous handlers come back afterwards. Installed in the main thread only."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, lambda *_: self.event.set())
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


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
@click.option(
    "-f", "--follow", is_flag=True, help="Keep printing events as they arrive (Ctrl-C stops)."
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05, max=60),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="With --follow, how often to look.",
)
@click.option(
    "--max-polls",
    type=click.IntRange(min=0),
    default=None,
    hidden=True,
    help="With --follow, stop after this many polls (for tests).",
)
@output_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON Lines (the same as --nl).")
def tail(
    spool: Path | None,
    states: tuple[str, ...],
    event: str | None,
    reason: str | None,
    limit: int,
    follow: bool,
    interval: float,
    max_polls: int | None,
    fmt: str | None,
    as_json: bool,
) -> None:
    """Show the newest events of SPOOL, filtered by state, event or reason.

    Pending and leased events are ordered by capture time, dead letters by the
    time they were dead-lettered; without --follow the newest come first. With
    --follow the newest are shown oldest first, then each event as it arrives
    (or is dead-lettered) until Ctrl-C or SIGTERM. --nl, --csv and --table
    choose the format (--table not with --follow). A damaged row (a stored body
    that is not a JSON object) is shown as DAMAGED, with a WARNING naming it.

    \b
    Example:
        spoolpost tail /var/lib/myapp/events.spool --state dead -n 5 --table
        spoolpost tail /var/lib/myapp/events.spool -f --nl
    """
    fmt = "nl" if as_json and fmt is None else fmt
    if follow and fmt == "table":
        raise click.UsageError("--table needs every row first; use --nl or --csv with --follow")
    where = Filter(states=frozenset(states), event=event, reason=reason)
    if not follow:
        with open_spool(spool) as s:
            found = s.tail(where, limit, now=time.time())
        _print(found, fmt, header=True)
        return
    with open_spool(spool) as s, _Stop() as stop:
        events = ops.follow(
            s,
            where,
            limit=limit,
            sleep=lambda: stop.event.wait(interval),
            now=time.time,
            max_polls=max_polls,
        )
        header = True
        for e in events:
            _print([e], fmt, header=header)
            header = False
            sys.stdout.flush()


def _print(found: list[SpooledEvent], fmt: str | None, *, header: bool) -> None:
    out = sys.stdout
    if fmt is None:
        for e in found:
            click.echo(_tail_line(e))
    elif fmt == "csv" and not header:
        for e in found:  # a followed CSV has one header, at the top
            why = damage(e)
            if why is not None:
                warn_damaged(e, why)
            csv.DictWriter(out, COLUMNS, lineterminator="\n").writerow(row(e, why))
    else:
        write_rows(found, fmt, out)


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
@output_options
def export(
    spool: Path | None,
    states: tuple[str, ...],
    event: str | None,
    reason: str | None,
    output: IO[str],
    fmt: str | None,
) -> None:
    """Write the events of SPOOL as JSON Lines: pending and leased ones in capture
    order, then dead letters.

    Each line is the PostHog event as stored, plus a "spoolpost" object with its
    state, attempts, times and (for dead letters) reason, status and detail.
    `spoolpost import` reads these lines back. --csv and --table write one row
    an event instead. A damaged row (a stored body that is not a JSON object) is
    written marked "damaged" (with its stored text), with a WARNING naming it;
    the other rows are written as usual. A progress bar shows on a terminal.

    \b
    Example:
        spoolpost export /var/lib/myapp/events.spool --state dead -o dead.jsonl
        spoolpost export /var/lib/myapp/events.spool --state dead --csv -o dead.csv
    """
    where = Filter(states=frozenset(states), event=event, reason=reason)
    with open_spool(spool) as s:
        now = time.time()
        total = sum(s.stats(now).counts.get(state, 0) for state in states or STATES)
        events = progress(s.events(where, now=now), total, "exporting")
        write_rows(events, fmt or "nl", output)
