"""Commands that change what a spool holds: ``replay`` and ``purge`` of dead letters,
``import`` of JSON Lines, ``capture`` of one event, and ``compact`` (one full
``VACUUM``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any

import click

from spoolpost import ops
from spoolpost.cli.listing import progress
from spoolpost.cli.options import (
    api_key_option,
    emit,
    filter_options,
    json_option,
    open_spool,
    plural,
    require_api_key,
    spool_argument,
    spool_path,
)
from spoolpost.spool import check_spool_file
from spoolpost.spool.maintenance import Filter


@click.command()
@spool_argument
@filter_options(uuids=True, age=True)
@click.option("--dry-run", is_flag=True, help="Count what would be replayed; change nothing.")
@json_option
def replay(
    spool: Path | None,
    event: str | None,
    reason: str | None,
    uuids: tuple[str, ...],
    older_than: float | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Move dead letters of SPOOL back to pending, attempts reset, due now.

    Without filters every dead letter is replayed. Fix the cause first (a 400 that
    will be rejected again is dead-lettered again). A progress bar shows on a
    terminal. Safe beside running apps: the dead letters are moved in chunks of
    a few milliseconds each, so captures never wait long. Each chunk is
    committed on its own: if the run is interrupted, run it again to replay the
    rest.

    \b
    Example:
        spoolpost replay /var/lib/myapp/events.spool --reason max_attempts --dry-run
    """
    where = Filter(event=event, reason=reason, uuids=uuids, older_than=older_than)
    with open_spool(spool) as s:
        now = time.time()
        n = s.count_dead(where, now=now)
        if not dry_run:
            for _ in progress([where], 1, f"replaying {plural(n, 'dead letter')}"):
                n = s.replay(where, now=now)  # in short chunks, each committed
    verb = "would replay" if dry_run else "replayed"
    emit(
        {"replayed": n, "dry_run": dry_run},
        as_json,
        lambda: click.echo(f"{verb} {plural(n, 'dead letter')}"),
    )


@click.command()
@spool_argument
@filter_options(uuids=True, age=True)
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
def purge(
    spool: Path | None,
    event: str | None,
    reason: str | None,
    uuids: tuple[str, ...],
    older_than: float | None,
    yes: bool,
    as_json: bool,
) -> None:
    """Delete dead letters from SPOOL for good (all of them without filters).

    Asks for confirmation unless --yes; with no answer to read (stdin closed or
    empty) it refuses and deletes nothing. Safe beside running apps: it deletes
    in chunks of a few milliseconds each, each committed on its own; if the run
    is interrupted, run it again to purge the rest.

    \b
    Example:
        spoolpost purge /var/lib/myapp/events.spool --reason rejected --older-than 7d --yes
    """
    where = Filter(event=event, reason=reason, uuids=uuids, older_than=older_than)
    with open_spool(spool) as s:
        now = time.time()
        matching = s.count_dead(where, now=now)
        if matching and not yes:
            _confirm(f"Delete {plural(matching, 'dead letter')} from {s.path} for good?")
        n = s.purge(where, now=now) if matching else 0
    emit({"purged": n}, as_json, lambda: click.echo(f"purged {plural(n, 'dead letter')}"))


def _confirm(question: str, unchanged: str = "deleted", command: str = "purge") -> None:
    try:
        answer = click.confirm(question, default=False, err=True)
    except click.Abort:  # end of input: nobody to ask
        raise click.ClickException(
            f"no confirmation could be read (stdin is closed or empty); nothing was "
            f"{unchanged}. Pass --yes to {command} without asking."
        ) from None
    if not answer:
        raise click.ClickException(f"not confirmed; nothing was {unchanged}")


@click.command("import")
@spool_argument
@click.option(
    "-i",
    "--input",
    "source",
    type=click.File("rb"),
    default="-",
    help="Read from this file instead of stdin.",
)
@json_option
def import_(spool: Path | None, source: IO[bytes], as_json: bool) -> None:
    """Add JSON Lines of PostHog events to SPOOL as pending events (creating it).

    Each line is an object with "event" and "distinct_id", and optionally
    "properties", "timestamp" and "uuid" (a missing uuid gets a new one). Every
    line is checked first: one bad line and nothing is written (the error names
    each bad line's number). Events whose uuid is already in the spool
    (pending, leased or dead) are skipped. A progress bar shows on a terminal.

    Safe beside running apps: events are written in chunks of a few milliseconds
    each, so captures never wait long. Each chunk is committed on its own: if
    the run is interrupted, run it again with the same input; it skips what is
    already in by uuid and adds the rest (lines without a "uuid" get a new one
    each run, so give every line a uuid, as export does, to make a rerun safe).

    \b
    Example:
        spoolpost export old.spool | spoolpost import /var/lib/myapp/events.spool
    """
    path = spool_path(spool)
    check_spool_file(path)  # before waiting for input
    lines = list(source)
    with open_spool(path, create=True) as s:
        result = ops.import_events(s, progress(lines, len(lines), "importing"))
    emit(
        {"imported": result.imported, "skipped": result.skipped},
        as_json,
        lambda: click.echo(
            f"imported {plural(result.imported)}"
            + (f", skipped {result.skipped} already in the spool" if result.skipped else "")
        ),
    )


def _property(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE")
        found[key] = value
    return found


def _properties_json(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> dict[str, Any]:
    if value is None:
        return {}
    try:
        data = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise click.BadParameter("must be a JSON object")
    return data


@click.command()
@click.argument("event")
@spool_argument
@click.option("--distinct-id", required=True, help="Who did it.")
@click.option(
    "-p",
    "--property",
    "properties",
    multiple=True,
    callback=_property,
    metavar="KEY=VALUE",
    help="A string property (repeatable; overrides --properties-json).",
)
@click.option(
    "--properties-json", callback=_properties_json, metavar="JSON", help="Properties as an object."
)
@click.option("--timestamp", help="ISO 8601 time of the event (default: now).")
@click.option("--uuid", help="The event's uuid (default: a new UUIDv7).")
@api_key_option
def capture(
    event: str,
    spool: Path | None,
    distinct_id: str,
    properties: dict[str, str],
    properties_json: dict[str, Any],
    timestamp: str | None,
    uuid: str | None,
    api_key: str | None,
) -> None:
    """Capture one EVENT into SPOOL (created if missing) and print its uuid.

    Nothing is sent: `spoolpost drain` (from cron, say) delivers it. The API key
    only ties the spool to its project, so that a drain with another key refuses.

    \b
    Example:
        spoolpost capture backup_finished /var/lib/myapp/events.spool \\
            --distinct-id host-7 -p bytes=123456
    """
    key = require_api_key(api_key)
    path = spool_path(spool, key)
    try:
        captured = ops.capture_one(
            path,
            key,
            event,
            distinct_id,
            {**properties_json, **properties},
            timestamp=timestamp,
            uuid=uuid,
        )
    except ValueError as exc:  # a bad name, id, timestamp or uuid (and ConfigError)
        raise click.ClickException(str(exc)) from exc
    click.echo(captured)


@click.command()
@spool_argument
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
def compact(spool: Path | None, yes: bool, as_json: bool) -> None:
    """Rewrite SPOOL without its free pages (one full VACUUM), giving them back.

    You rarely need it: a spool gives space back by itself once it drains
    (incremental auto_vacuum, in short steps on the delivery thread and at the
    end of `spoolpost drain`). compact gives it back now, and switches a spool
    made by an older spoolpost to incremental auto_vacuum (which such a spool
    otherwise gets by itself once it is nearly empty).

    It is one VACUUM and cannot be done in chunks: it holds the spool's write
    lock while it copies every stored event, so captures in every process wait
    meanwhile (up to their busy_timeout, then on_full applies). It needs free
    disk space of up to twice the stored events. Asks for confirmation unless
    --yes; with no answer to read it refuses and changes nothing.

    Exit codes: 0 compacted; 1 not confirmed, or an error (a failed VACUUM
    leaves the spool as it was).

    \b
    Example:
        spoolpost compact /var/lib/myapp/events.spool --yes
    """
    with open_spool(spool) as s:
        before = s.file_usage()
        if not yes:
            _confirm(
                f"Compact {s.path} ({_mb(before.file_bytes + before.wal_bytes)}, "
                f"{_mb(before.free_bytes)} free)? It holds the spool's write lock for "
                "the whole VACUUM: captures wait until it is done.",
                unchanged="changed",
                command="compact",
            )
        done = s.compact()
    note = " (switched to incremental auto_vacuum)" if done.converted else ""
    emit(
        {"before_bytes": done.before, "after_bytes": done.after, "converted": done.converted},
        as_json,
        lambda: click.echo(f"compacted {s.path}: {_mb(done.before)} -> {_mb(done.after)}{note}"),
    )


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
