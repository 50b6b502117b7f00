"""The ``spoolpost`` command line (click).

Each command parses its flags, calls one library function (mostly in
:mod:`spoolpost.ops`) and formats the result: human text by default, ``--json``
for machines. Mistakes (a missing spool, a bad setting, a locked or foreign file)
print ``Error: …`` and exit 1, without a traceback; click's own usage errors exit
2. The API key is never printed. Every command takes its spool from the SPOOL
argument or ``$SPOOLPOST_SPOOL`` and its endpoint from ``--host``/``--api-key`` or
``$SPOOLPOST_HOST``/``$SPOOLPOST_API_KEY``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar
from uuid import UUID

import click

from spoolpost import ops
from spoolpost._version import __version__
from spoolpost.delivery.transport import DEFAULT_HOST, HttpTransport
from spoolpost.errors import SpoolpostError
from spoolpost.ops import (
    EXIT_DEAD,
    EXIT_EMPTY,
    EXIT_OUTAGE,
    EXIT_PAUSED,
    EXIT_REMAIN,
    drain_exit_code,
    drain_spool,
)
from spoolpost.spool import Spool, check_spool_file
from spoolpost.spool.maintenance import STATES, Filter, SpooledEvent

__all__ = [
    "EXIT_DEAD",
    "EXIT_EMPTY",
    "EXIT_INTERRUPTED",
    "EXIT_OUTAGE",
    "EXIT_PAUSED",
    "EXIT_REMAIN",
    "cli",
    "drain_exit_code",
    "drain_spool",
    "main",
]

F = TypeVar("F", bound=Callable[..., Any])

#: ``spoolpost drain`` exit code after Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


class _Cli(click.Group):
    """Turns the errors a user can cause into ``Error: …`` and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise  # click's main() exits quietly when stdout is closed (`| head`)
        except (SpoolpostError, OSError) as exc:
            raise click.ClickException(str(exc)) from exc
        except sqlite3.Error as exc:
            raise click.ClickException(f"spool error: {exc}") from exc


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Logs to whatever ``sys.stderr`` is when a record is written."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _setup_logging(ctx: click.Context, verbose: int) -> None:
    """Log WARNING and up (-v INFO, -vv DEBUG, with urllib3's connection log) to
    stderr for this invocation; the loggers are restored when it ends."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("spoolpost: %(levelname)s %(message)s"))
    names = ["spoolpost", "urllib3"] if verbose >= 2 else ["spoolpost"]
    loggers = [logging.getLogger(name) for name in names]
    saved = [(logger, logger.level) for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel((logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)])

    def restore() -> None:
        for logger, level in saved:
            logger.removeHandler(handler)
            logger.setLevel(level)

    ctx.call_on_close(restore)


# -- shared arguments and options --------------------------------------------------


def spool_argument(func: F) -> F:
    """The SPOOL argument: a path, or ``$SPOOLPOST_SPOOL``."""
    return click.argument(
        "spool",
        envvar="SPOOLPOST_SPOOL",
        required=False,
        type=click.Path(dir_okay=False, path_type=Path),
    )(func)


def _spool_path(spool: Path | None) -> Path:
    if spool is None:
        raise click.ClickException("no spool given: pass SPOOL or set SPOOLPOST_SPOOL")
    return spool


def _open(spool: Path | None, *, create: bool = False) -> Spool:
    return ops.open_spool(_spool_path(spool), create=create)


def api_key_option(func: F) -> F:
    """``--api-key`` (also ``$SPOOLPOST_API_KEY``); never shown, never printed."""
    return click.option(
        "--api-key",
        envvar="SPOOLPOST_API_KEY",
        default=None,
        help="Project API key [env SPOOLPOST_API_KEY]. Never printed.",
    )(func)


def _api_key(api_key: str | None) -> str:
    if not api_key or not api_key.strip():
        raise click.ClickException("no API key: pass --api-key or set SPOOLPOST_API_KEY")
    return api_key


def host_option(func: F) -> F:
    """``--host`` (also ``$SPOOLPOST_HOST``)."""
    return click.option(
        "--host",
        envvar="SPOOLPOST_HOST",
        default=DEFAULT_HOST,
        show_default=True,
        help="Ingestion base URL [env SPOOLPOST_HOST].",
    )(func)


def json_option(func: F) -> F:
    """``--json``: machine-readable output."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)


def _uuids(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    try:
        return tuple(str(UUID(v)) for v in values)
    except ValueError:
        raise click.BadParameter(f"not a UUID in {list(values)}") from None


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return ops.parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def filter_options(
    *, states: bool = False, uuids: bool = False, age: bool = False
) -> Callable[[F], F]:
    """``--event``, ``--reason`` and, as asked, ``--state``, ``--uuid``, ``--older-than``."""

    def decorate(func: F) -> F:
        if age:
            func = click.option(
                "--older-than",
                callback=_duration,
                metavar="AGE",
                help="Only dead letters dead-lettered at least AGE ago (30m, 12h, 7d, 2w).",
            )(func)
        if uuids:
            func = click.option(
                "--uuid",
                "uuids",
                multiple=True,
                callback=_uuids,
                help="Only this uuid (repeatable).",
            )(func)
        func = click.option(
            "--reason", help="Only dead letters with this reason (rejected, too_large, …)."
        )(func)
        func = click.option("--event", help="Only events with this name.")(func)
        if states:
            func = click.option(
                "--state",
                "states",
                multiple=True,
                type=click.Choice(STATES),
                help="Only events in this state (repeatable).",
            )(func)
        return func

    return decorate


def _emit(data: Any, as_json: bool, human: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, sort_keys=True))
    else:
        human()


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _plural(n: int, word: str = "event") -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


# -- the commands --------------------------------------------------------------------


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="spoolpost")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug) to stderr.")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """spoolpost: crash-safe analytics capture. Inspect, repair and deliver spools.

    Every command takes its spool path from SPOOL or $SPOOLPOST_SPOOL and its
    endpoint from --host/--api-key or $SPOOLPOST_HOST/$SPOOLPOST_API_KEY, never
    prints the API key, and is safe to run while apps use the same spool.
    """
    _setup_logging(ctx, verbose)


@cli.command()
@spool_argument
@json_option
def inspect(spool: Path | None, as_json: bool) -> None:
    """Show counts and bytes by state, ages, dead reasons and counters of SPOOL."""
    s = _open(spool)
    try:
        stats = s.stats(time.time())
    finally:
        s.close()

    def human() -> None:
        click.echo(f"spool           {stats.path} (schema v{stats.schema_version})")
        for state in STATES:
            click.echo(f"{state:<15} {stats.counts[state]:>10} events {stats.bytes[state]:>12} B")
        click.echo(f"oldest pending  {_age(stats.oldest_pending_age)}")
        click.echo(f"next attempt in {_age(stats.next_attempt_in)}")
        if stats.dead_reasons:
            reasons = ", ".join(f"{k}={v}" for k, v in sorted(stats.dead_reasons.items()))
            click.echo(f"dead reasons    {reasons}")
        counters = ", ".join(f"{k}={v}" for k, v in sorted(stats.counters.items()))
        click.echo(f"counters        {counters}")
        click.echo(f"file            {stats.file_bytes} B, WAL {stats.wal_bytes} B")

    _emit(stats.as_dict(), as_json, human)


def _tail_line(e: SpooledEvent) -> str:
    name = str(e.event.get("event", "?"))
    who = str(e.event.get("distinct_id", "?"))
    line = f"{ops.format_time(e.recent_at)}  {e.state:<7}  {e.uuid}  {name}  {who}"
    if e.attempts:
        line += f"  attempts={e.attempts}"
    if e.state == "dead":
        status = f" {e.status}" if e.status is not None else ""
        line += f"  {e.reason}{status}: {e.detail or ''}"
    elif e.last_error:
        line += f"  last error: {e.last_error}"
    return line


@cli.command()
@spool_argument
@filter_options(states=True)
@click.option(
    "-n", "limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many."
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
    s = _open(spool)
    try:
        found = s.tail(where, limit, now=time.time())
    finally:
        s.close()
    for e in found:
        click.echo(e.json_line() if as_json else _tail_line(e))


@cli.command()
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
    will be rejected again is dead-lettered again).
    """
    where = Filter(event=event, reason=reason, uuids=uuids, older_than=older_than)
    s = _open(spool)
    now = time.time()
    try:
        n = s.count_dead(where, now=now) if dry_run else s.replay(where, now=now)
    finally:
        s.close()
    verb = "would replay" if dry_run else "replayed"
    _emit(
        {"replayed": n, "dry_run": dry_run},
        as_json,
        lambda: click.echo(f"{verb} {_plural(n, 'dead letter')}"),
    )


@cli.command()
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
    empty) it refuses and deletes nothing.
    """
    where = Filter(event=event, reason=reason, uuids=uuids, older_than=older_than)
    s = _open(spool)
    now = time.time()
    try:
        matching = s.count_dead(where, now=now)
        if matching and not yes:
            _confirm(f"Delete {_plural(matching, 'dead letter')} from {s.path} for good?")
        n = s.purge(where, now=now) if matching else 0
    finally:
        s.close()
    _emit({"purged": n}, as_json, lambda: click.echo(f"purged {_plural(n, 'dead letter')}"))


def _confirm(question: str) -> None:
    try:
        answer = click.confirm(question, default=False, err=True)
    except click.Abort:  # end of input: nobody to ask
        raise click.ClickException(
            "no confirmation could be read (stdin is closed or empty); nothing was "
            "deleted. Pass --yes to purge without asking."
        ) from None
    if not answer:
        raise click.ClickException("not confirmed; nothing was deleted")


@cli.command()
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
    s = _open(spool)
    try:
        for e in s.events(where, now=time.time()):
            output.write(e.json_line() + "\n")
    finally:
        s.close()


@cli.command("import")
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
    (pending, leased or dead) are skipped.
    """
    path = _spool_path(spool)
    check_spool_file(path)  # before waiting for input
    lines = list(source)
    s = ops.open_spool(path, create=True)
    try:
        result = ops.import_events(s, lines)
    finally:
        s.close()
    _emit(
        {"imported": result.imported, "skipped": result.skipped},
        as_json,
        lambda: click.echo(
            f"imported {_plural(result.imported)}"
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


@cli.command()
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
    """
    path = _spool_path(spool)
    key = _api_key(api_key)
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


class _Progress:
    """A progress bar on stderr, made once the total is known."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.done = 0

    def __call__(self, total: int, pending: int) -> None:
        if self.bar is None:
            self.bar = click.progressbar(length=total, label="draining", file=sys.stderr)
            self.bar.__enter__()
        settled = max(self.done, total - pending)
        self.bar.update(settled - self.done)
        self.done = settled

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


class _Interrupts:
    """Ctrl-C (SIGINT) while draining, handled at a safe point.

    The first only counts: the drain raises ``KeyboardInterrupt`` at its next
    progress check (within about a second), outside any spool transaction, so
    delivery stops and the spool can still be read for the summary. A second one
    ends the process at once (``os._exit``), even inside the grace period, with
    exit code 130. Installed only in
    the main thread (where Python runs signal handlers); the previous handler is
    restored on exit.
    """

    def __init__(self, grace: float) -> None:
        self.count = 0
        self.grace = grace
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: object) -> None:
        self.count += 1
        if self.count == 1:  # said at once, so a second press is an informed choice
            click.echo(
                f"interrupted: stopping delivery, waiting up to {self.grace:g}s for requests "
                "in flight (Ctrl-C again quits at once)",
                err=True,
            )
        if self.count > 1:
            # Quit at once, even inside the grace period. The spool is crash-safe:
            # leases this process holds are taken back as soon as it is gone.
            click.echo(
                "interrupted again: quitting without a summary; undelivered events stay "
                "in the spool",
                err=True,
            )
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` once Ctrl-C was pressed."""
        if self.count:
            raise KeyboardInterrupt


def _finite(value: float | None, name: str) -> float | None:
    """Refuse NaN and infinity where click's FloatRange lets them through."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number of seconds", param_hint=name)
    return value


@cli.command()
@spool_argument
@host_option
@api_key_option
@click.option(
    "--budget",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    callback=lambda _ctx, _param, value: _finite(value, "--budget"),
    help="Stop sending after this many seconds (default: no limit); requests in "
    "flight then get --grace, so the run lasts at most budget + grace.",
)
@click.option(
    "--outage-after",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Stop after this many transient failures in a row (an outage).",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    callback=lambda _ctx, _param, value: _finite(value, "--grace"),
    help="At the end, wait this long for requests in flight.",
)
@click.option("--gzip", is_flag=True, help="Send gzip-compressed request bodies.")
@click.option("--force-key", is_flag=True, help="Deliver a spool created for another API key.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def drain(
    spool: Path | None,
    host: str,
    api_key: str | None,
    budget: float | None,
    outage_after: int,
    grace: float,
    gzip: bool,
    force_key: bool,
    as_json: bool,
) -> None:
    """Deliver SPOOL until it is empty, the budget runs out, or the endpoint is down.

    Delivers what was in the spool when it started (events captured meanwhile
    may go too); the summary counts the events that were there at the start.
    Backoff and Retry-After set by
    earlier failures are honoured (within the budget). A progress bar shows on
    a terminal.

    \b
    Exit codes (for cron):
        0  nothing left to deliver, nothing dead-lettered by this run
        3  events remain: the budget ran out
        4  events remain: the endpoint is down (an outage)
        5  events remain: delivery paused by a configuration fault (401/403/404/3xx)
        6  nothing left, but this run dead-lettered events (see tail --state dead)
      130  interrupted (Ctrl-C): sending stops within about a second, requests in
           flight get --grace, then the summary; a second Ctrl-C quits at once
        1  an error (no spool, no API key, a bad host URL, a spool of another key)
        2  a usage error (unknown option, bad value)
    """
    path = _spool_path(spool)
    transport = HttpTransport(host, _api_key(api_key), gzip=gzip)
    s = _open(path)
    bar = _Progress() if sys.stderr.isatty() and not as_json else None
    with _Interrupts(grace) as interrupts:

        def progress(total: int, pending: int) -> None:
            interrupts.check()  # the drain's safe point for a Ctrl-C
            if bar is not None:
                bar(total, pending)

        try:
            try:
                result = drain_spool(
                    s,
                    transport,
                    budget=budget,
                    outage_after=outage_after,
                    force_key=force_key,
                    grace=grace,
                    progress=progress,
                )
            except ops.DrainInterrupted as stopped:
                result = stopped.result
        finally:
            if bar is not None:
                bar.close()
            s.close()
    interrupted = interrupts.count > 0
    code = EXIT_INTERRUPTED if interrupted else drain_exit_code(result)
    summary = {
        "delivered": result.delivered,
        "dead": result.dead,
        "remaining": result.pending,
        "paused": result.paused,
        "outage": result.outage,
        "interrupted": interrupted,
        "exit_code": code,
    }

    def human() -> None:
        line = (
            f"delivered {result.delivered}, dead-lettered {result.dead}, remaining {result.pending}"
        )
        if interrupted:
            line += "; interrupted"
        if result.paused:
            line += f"; paused: {result.paused}"
        if result.outage:
            line += f"; endpoint down: {result.outage}"
        elif code == EXIT_REMAIN:
            line += "; the budget ran out"
        click.echo(line)

    _emit(summary, as_json, human)
    click.get_current_context().exit(code)


@cli.command()
@click.option(
    "--events",
    type=click.IntRange(min=100),
    default=20_000,
    show_default=True,
    help="Events to try to capture.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1, max=64),
    default=4,
    show_default=True,
    help="Capturing threads.",
)
@click.option(
    "--spool",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A new spool file to use and keep (default: a temporary one, deleted).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def demo(events: int, threads: int, spool: Path | None, as_json: bool) -> None:
    """The main job end to end on this machine, on a local endpoint.

    Starts a local endpoint on 127.0.0.1, runs a child process that captures
    EVENTS events from THREADS threads while delivering, SIGKILLs it
    mid-stream, then runs `spoolpost drain` in a new process on the same spool
    and reports: events whose capture() returned, unique events delivered,
    duplicates, lost. Exits 1 if any event was lost.
    """
    from spoolpost.ops.demo import run_demo

    report = run_demo(events=events, threads=threads, spool=spool)
    _emit(report.as_dict(), as_json, lambda: click.echo(report.text()))
    if not report.ok:
        click.get_current_context().exit(1)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="spoolpost")
