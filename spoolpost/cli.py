"""The ``spoolpost`` command line (click). Each command parses its flags, calls one
library function and formats the result: human text by default, ``--json`` for
machines. Errors print ``Error: …`` and exit non-zero; the API key is never
printed.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from spoolpost._version import __version__
from spoolpost.client import key_fingerprint
from spoolpost.dispatcher import DeliveryConfig, Dispatcher, FlushResult
from spoolpost.errors import SpoolpostError
from spoolpost.policy import RetryPolicy
from spoolpost.spool import Spool
from spoolpost.transport import DEFAULT_HOST, HttpTransport

F = TypeVar("F", bound=Callable[..., Any])

#: ``spoolpost drain`` exit codes, for cron.
EXIT_EMPTY = 0
EXIT_REMAIN = 3
EXIT_OUTAGE = 4
EXIT_PAUSED = 5
EXIT_DEAD = 6


def spool_argument(func: F) -> F:
    """The SPOOL argument: a path, or ``$SPOOLPOST_SPOOL``."""
    return click.argument(
        "spool",
        envvar="SPOOLPOST_SPOOL",
        type=click.Path(dir_okay=False, path_type=Path),
    )(func)


def endpoint_options(func: F) -> F:
    """``--host`` and ``--api-key`` (also ``SPOOLPOST_HOST``, ``SPOOLPOST_API_KEY``)."""
    func = click.option(
        "--api-key",
        envvar="SPOOLPOST_API_KEY",
        required=True,
        help="Project API key [env SPOOLPOST_API_KEY]. Never printed.",
    )(func)
    return click.option(
        "--host",
        envvar="SPOOLPOST_HOST",
        default=DEFAULT_HOST,
        show_default=True,
        help="Ingestion base URL [env SPOOLPOST_HOST].",
    )(func)


def _open(path: Path, *, must_exist: bool = True) -> Spool:
    if must_exist and not path.exists():
        raise click.ClickException(f"no spool at {path}")
    try:
        return Spool(path)
    except SpoolpostError as exc:
        raise click.ClickException(str(exc)) from exc


def _emit(data: dict[str, Any], as_json: bool, human: Callable[[], None]) -> None:
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="spoolpost")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug) to stderr.")
def cli(verbose: int) -> None:
    """spoolpost: crash-safe analytics capture. Inspect and deliver spools.

    Every command takes its spool path and endpoint settings from flags or
    SPOOLPOST_* environment variables, and is safe to run while apps use the
    same spool.
    """
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="spoolpost: %(levelname)s %(message)s")


@cli.command()
@spool_argument
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def inspect(spool: Path, as_json: bool) -> None:
    """Show counts and bytes by state, ages, dead reasons and counters of SPOOL."""
    s = _open(spool)
    try:
        stats = s.stats(time.time())
    finally:
        s.close()

    def human() -> None:
        click.echo(f"spool           {stats.path} (schema v{stats.schema_version})")
        for state in ("pending", "leased", "dead"):
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


@cli.command()
@spool_argument
@endpoint_options
@click.option(
    "--budget",
    type=click.FloatRange(min=0),
    default=None,
    help="Stop after this many seconds (default: no limit).",
)
@click.option(
    "--outage-after",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Stop after this many transient failures in a row (an outage).",
)
@click.option("--gzip", is_flag=True, help="Send gzip-compressed request bodies.")
@click.option("--force-key", is_flag=True, help="Deliver a spool created for another API key.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def drain(
    spool: Path,
    host: str,
    api_key: str,
    budget: float | None,
    outage_after: int,
    gzip: bool,
    force_key: bool,
    as_json: bool,
) -> None:
    """Deliver SPOOL until it is empty, the budget runs out, or the endpoint is down.

    \b
    Exit codes (for cron):
      0  nothing left to deliver, nothing dead-lettered by this run
      3  events remain (the budget ran out)
      4  events remain: the endpoint is down (an outage)
      5  events remain: delivery paused by a configuration fault (401/403/404/3xx)
      6  nothing left, but this run dead-lettered events (see inspect)
      1  an error (bad spool, bad settings)
    """
    s = _open(spool)
    try:
        result = drain_spool(
            s,
            HttpTransport(host, api_key, gzip=gzip),
            budget=budget,
            outage_after=outage_after,
            force_key=force_key,
            progress=sys.stderr.isatty() and not as_json,
        )
    except SpoolpostError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        s.close()
    code = drain_exit_code(result)
    summary = {
        "delivered": result.delivered,
        "dead": result.dead,
        "remaining": result.pending,
        "paused": result.paused,
        "outage": result.outage,
        "exit_code": code,
    }

    def human() -> None:
        line = (
            f"delivered {result.delivered}, dead-lettered {result.dead}, remaining {result.pending}"
        )
        if result.paused:
            line += f"; paused: {result.paused}"
        if result.outage:
            line += f"; endpoint down: {result.outage}"
        click.echo(line)

    _emit(summary, as_json, human)
    sys.exit(code)


def drain_exit_code(result: FlushResult) -> int:
    """The documented ``spoolpost drain`` exit code for a drain's result."""
    if result.pending:
        if result.paused:
            return EXIT_PAUSED
        return EXIT_OUTAGE if result.outage else EXIT_REMAIN
    return EXIT_DEAD if result.dead else EXIT_EMPTY


def drain_spool(
    spool: Spool,
    transport: HttpTransport,
    *,
    budget: float | None = None,
    outage_after: int = 3,
    force_key: bool = False,
    config: DeliveryConfig | None = None,
    retry: RetryPolicy | None = None,
    progress: bool = False,
) -> FlushResult:
    """Deliver everything in ``spool`` now; stop at ``budget`` seconds (None: no
    limit), after ``outage_after`` transient failures in a row, or on a pause.

    Raises :class:`~spoolpost.errors.KeyMismatch` if the spool belongs to
    another API key (unless ``force_key``).
    """
    spool.bind_key(key_fingerprint(transport.api_key), force=force_key)
    dispatcher = Dispatcher(
        spool, transport, config=config or DeliveryConfig(flush_interval=0.0), retry=retry
    )
    dispatcher.start()
    try:
        watermark = spool.watermark(time.time())
        timeout = float("inf") if budget is None else budget
        if not progress:
            return dispatcher.flush(watermark, timeout, outage_after=outage_after)
        states = spool.states_through(watermark)
        total = states.get("pending", 0) + states.get("leased", 0)
        with click.progressbar(length=total, label="draining", file=sys.stderr) as bar:
            done = [0]

            def advance(pending: int) -> None:
                bar.update(max(0, total - pending - done[0]))
                done[0] = max(done[0], total - pending)

            return dispatcher.flush(
                watermark, timeout, states, outage_after=outage_after, progress=advance
            )
    finally:
        dispatcher.stop(5.0)


@cli.command()
@click.option("--events", type=click.IntRange(min=100), default=20_000, show_default=True)
@click.option("--threads", type=click.IntRange(min=1, max=64), default=4, show_default=True)
@click.option(
    "--spool",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Spool file to use (default: a new one in a temporary folder).",
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
    from spoolpost.demo import run_demo

    report = run_demo(events=events, threads=threads, spool=spool)
    _emit(report.as_dict(), as_json, lambda: click.echo(report.text()))
    if report.lost:
        sys.exit(1)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="spoolpost")
