"""``spoolpost demo``: the main job end to end on this machine."""

from __future__ import annotations

from pathlib import Path

import click

from spoolpost.cli.options import emit


@click.command()
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

    \b
    Example:
        spoolpost demo --events 2000 --threads 4
    """
    from spoolpost.ops.demo import run_demo

    report = run_demo(events=events, threads=threads, spool=spool)
    emit(report.as_dict(), as_json, lambda: click.echo(report.text()))
    if not report.ok:
        click.get_current_context().exit(1)
