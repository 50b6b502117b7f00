"""The ``spoolpost`` command line (click).

Each command parses its flags, calls one library function (mostly in
:mod:`spoolpost.ops`) and formats the result: human text by default, ``--json``
for machines. Mistakes (a missing spool, a bad setting, a locked or foreign file)
print ``Error: …`` and exit 1, without a traceback; click's own usage errors exit
2. The API key is never printed. Every command takes its spool from the SPOOL
argument or ``$SPOOLPOST_SPOOL`` and its endpoint from ``--host``/``--api-key`` or
``$SPOOLPOST_HOST``/``$SPOOLPOST_API_KEY``.

This module holds the ``cli`` group, its error handling and logging; the commands
live in :mod:`~spoolpost.cli.views` (inspect, tail, export),
:mod:`~spoolpost.cli.repair` (replay, purge, import, capture, compact),
:mod:`~spoolpost.cli.deliver` (drain) and :mod:`~spoolpost.cli.demo`, over the
shared options of :mod:`~spoolpost.cli.options`.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
from typing import Any

import click

from spoolpost._version import __version__
from spoolpost.cli import deliver, demo, monitor, repair, views
from spoolpost.cli.deliver import EXIT_INTERRUPTED
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


cli.add_command(monitor.inspect)
cli.add_command(views.tail)
cli.add_command(repair.replay)
cli.add_command(repair.purge)
cli.add_command(views.export)
cli.add_command(repair.import_)
cli.add_command(repair.capture)
cli.add_command(repair.compact)
cli.add_command(deliver.drain)
cli.add_command(demo.demo)
cli.add_command(monitor.check)
cli.add_command(monitor.metrics)
cli.add_command(monitor.path)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="spoolpost")
