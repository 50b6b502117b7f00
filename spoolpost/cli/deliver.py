"""``spoolpost drain``: deliver a spool from cron, with a progress bar and Ctrl-C handling."""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from spoolpost import ops
from spoolpost.cli.options import (
    api_key_option,
    emit,
    emit_nothing,
    format_time,
    host_option,
    open_spool,
    require_api_key,
    spool_argument,
    spool_path,
)
from spoolpost.delivery.barrier import FlushResult
from spoolpost.delivery.transport import HttpTransport
from spoolpost.delivery.wire import resolve_capture_mode, wire_format
from spoolpost.errors import SpoolCorrupt
from spoolpost.ops import EXIT_REMAIN, drain_exit_code, drain_spool

#: ``spoolpost drain`` exit code after Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


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
            # SIGTERM (systemd's stop) is handled like Ctrl-C.
            self._previous = {
                sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)
            }
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            for sig, previous in self._previous.items():
                signal.signal(sig, previous)

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


@click.command()
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
@click.option(
    "--capture-mode",
    type=click.Choice(["v0", "legacy", "v1", "analytics_v1"], case_sensitive=False),
    default=None,
    help="PostHog's wire protocol: v0 (/batch/) or v1 (/i/v1/analytics/events, per-event "
    "results). Default: $SPOOLPOST_CAPTURE_MODE, $POSTHOG_CAPTURE_MODE, else v0.",
)
@click.option(
    "--capture-compression",
    type=click.Choice(["none", "gzip", "deflate", "zstd"], case_sensitive=False),
    default=None,
    help="Request-body compression for v1. Default: $POSTHOG_CAPTURE_COMPRESSION, else "
    "gzip with --gzip, else none. v0 ignores it (as posthog-python) and sends gzip only "
    "with --gzip.",
)
@click.option("--force-key", is_flag=True, help="Deliver a spool created for another API key.")
@click.option(
    "--force-host",
    is_flag=True,
    help="Deliver to --host although the spool recorded another endpoint (re-binds it).",
)
@click.option(
    "--now",
    "retry_now",
    is_flag=True,
    help="Try at once, ignoring stored backoff and Retry-After (retries become due now).",
)
@click.option("-q", "--quiet", is_flag=True, help="No output unless there is something to act on.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def drain(
    spool: Path | None,
    host: str | None,
    api_key: str | None,
    budget: float | None,
    outage_after: int,
    grace: float,
    gzip: bool,
    capture_mode: str | None,
    capture_compression: str | None,
    force_key: bool,
    force_host: bool,
    retry_now: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Deliver SPOOL until it is empty, the budget runs out, or the endpoint is down.

    Delivers what was in the spool when it started (events captured meanwhile
    may go too); the summary counts the events that were there at the start.
    Backoff and Retry-After set by earlier failures are honoured (within the
    budget): when nothing can become due within --budget, before the start or
    after a Retry-After met while draining, it exits 3 at once, saying until
    when and why; --now tries at once. Without --host it delivers where the
    spool first delivered.
    A progress bar shows on a terminal. SIGTERM is handled like Ctrl-C. With
    --quiet it prints only for exit codes other than 0 and 3.

    \b
    Exit codes (for cron):
        0  nothing left to deliver, nothing dead-lettered by this run
        3  events remain: the budget ran out, or nothing can become due within it
        4  events remain: the endpoint is down (an outage)
        5  events remain: delivery paused by a configuration fault (401/403/404/3xx)
        6  nothing left, but this run dead-lettered events (see tail --state dead)
        7  the spool was damaged: the file is set aside as SPOOL.corrupt-<time>, what
           could be read is carried into a new spool at SPOOL and delivered as far
           as this run went; the summary (and one ERROR) says what could not be read
      130  interrupted (Ctrl-C, SIGTERM): sending stops within about a second, requests in
           flight get --grace, then the summary; a second Ctrl-C quits at once
        1  an error (no spool, no API key, a bad host URL, a spool of another key)
        2  a usage error (unknown option, bad value)

    \b
    Example:
        spoolpost drain /var/lib/myapp/events.spool --host https://eu.i.posthog.com \\
            --budget 240 --quiet
    """
    key = require_api_key(api_key)
    wire = wire_format(resolve_capture_mode(capture_mode))  # a bad mode fails before any open
    path = spool_path(spool, key)
    if not path.exists():
        if not quiet:
            emit_nothing(path, as_json)
        return
    s = open_spool(path)
    try:
        transport = HttpTransport(
            ops.drain_host(s, host), key, wire=wire, gzip=gzip, compression=capture_compression
        )
    except BaseException:
        s.close()
        raise
    bar = _Progress() if sys.stderr.isatty() and not (as_json or quiet) else None
    with _Interrupts(grace) as interrupts:

        def progress(total: int, pending: int) -> None:
            interrupts.check()  # the drain's safe point for a Ctrl-C
            if bar is not None:
                bar(total, pending)

        # Not `with s`: the spool is closed before the SIGINT handler is restored,
        # so a Ctrl-C while closing still counts as the drain's interrupt.
        try:
            try:
                result: FlushResult = drain_spool(
                    s,
                    transport,
                    budget=budget,
                    outage_after=outage_after,
                    force_key=force_key,
                    force_host=force_host,
                    retry_now=retry_now,
                    grace=grace,
                    progress=progress,
                )
            except ops.DrainInterrupted as stopped:
                result = stopped.result
            except SpoolCorrupt as exc:  # damaged past what a new spool could take in
                click.echo(f"Error: {exc}", err=True)
                click.get_current_context().exit(ops.EXIT_DAMAGED)
        finally:
            if bar is not None:
                bar.close()
            s.close()
    interrupted = interrupts.count > 0
    code = EXIT_INTERRUPTED if interrupted else drain_exit_code(result)
    waiting_until: float | None = getattr(result, "waiting_until", None)
    waiting_for: str | None = getattr(result, "waiting_for", None)
    damaged: tuple[str, ...] = getattr(result, "damaged", ())
    summary = {
        "delivered": result.delivered,
        "dead": result.dead,
        "remaining": result.pending,
        "paused": result.paused,
        "outage": result.outage,
        "interrupted": interrupted,
        "exit_code": code,
        "waiting_until": waiting_until,
        "waiting_for": waiting_for,
        "damaged": list(damaged),
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
        elif waiting_until is not None:
            line += (
                f"; nothing is due before {format_time(waiting_until)}, past the "
                f"budget (waiting for: {waiting_for or 'a stored backoff'}); "
                "--now tries at once"
            )
        elif code == EXIT_REMAIN:
            line += "; the budget ran out"
        if damaged:
            line += f"; damaged: {damaged[-1].split(' was ', 1)[-1]}"
        click.echo(line)

    if not quiet or code not in (ops.EXIT_EMPTY, EXIT_REMAIN):
        emit(summary, as_json, human)
    click.get_current_context().exit(code)
