"""What the commands share: arguments and options, their parsers, and output formats.

Every command takes its spool from :func:`spool_argument` (SPOOL or
``$SPOOLPOST_SPOOL``) and its endpoint from :func:`host_option` and
:func:`api_key_option`; listing commands filter with :func:`filter_options`, and
commands that print a result do it through :func:`emit` (human text, or one JSON
object with ``--json``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import click

from spoolpost import ops
from spoolpost.client import default_spool_path
from spoolpost.delivery.transport import DEFAULT_HOST
from spoolpost.events.encoding import format_timestamp
from spoolpost.spool import Spool
from spoolpost.spool.maintenance import DEAD_REASONS, STATES

F = TypeVar("F", bound=Callable[..., Any])

# -- the spool and the endpoint ------------------------------------------------------


def spool_argument(func: F) -> F:
    """The SPOOL argument: a path, or ``$SPOOLPOST_SPOOL``."""
    return click.argument(
        "spool",
        envvar="SPOOLPOST_SPOOL",
        required=False,
        type=click.Path(dir_okay=False, path_type=Path),
    )(func)


def spool_path(spool: Path | None, api_key: str | None = None) -> Path:
    """The SPOOL given; else, when an API key is (``api_key``, or
    ``$SPOOLPOST_API_KEY``), the library's default spool for it
    (:func:`~spoolpost.client.default_spool_path`); else ``Error: no spool given``."""
    if spool is not None:
        return spool
    key = api_key or os.environ.get("SPOOLPOST_API_KEY")
    if key and key.strip():
        return default_spool_path(key)
    raise click.ClickException(
        "no spool given: pass SPOOL, set SPOOLPOST_SPOOL, or give the API key "
        "(its default spool is `spoolpost path`)"
    )


def open_spool(spool: Path | None, *, create: bool = False) -> Spool:
    """The SPOOL given, opened by :func:`spoolpost.ops.open_spool`; close it with ``with``."""
    return ops.open_spool(spool_path(spool), create=create)


def api_key_option(func: F) -> F:
    """``--api-key`` (also ``$SPOOLPOST_API_KEY``); never shown, never printed."""
    return click.option(
        "--api-key",
        envvar="SPOOLPOST_API_KEY",
        default=None,
        help="Project API key [env SPOOLPOST_API_KEY]. Never printed.",
    )(func)


def require_api_key(api_key: str | None) -> str:
    """The API key given; ``Error: no API key`` when it is missing or blank."""
    if not api_key or not api_key.strip():
        raise click.ClickException("no API key: pass --api-key or set SPOOLPOST_API_KEY")
    return api_key


def host_option(func: F) -> F:
    """``--host`` (also ``$SPOOLPOST_HOST``); None when not given."""
    return click.option(
        "--host",
        envvar="SPOOLPOST_HOST",
        default=None,
        help="Ingestion base URL [env SPOOLPOST_HOST; default: the endpoint the spool "
        f"recorded when it first delivered, else {DEFAULT_HOST}].",
    )(func)


def output_options(func: F) -> F:
    """``--nl``, ``--csv`` and ``-t/--table`` for commands that list rows (as
    sqlite-utils does): one ``fmt`` parameter, ``nl``/``csv``/``table`` or None for
    the command's own default. Written by :func:`spoolpost.cli.listing.write_rows`."""
    func = click.option("-t", "--table", "fmt", flag_value="table", help="Print an aligned table.")(
        func
    )
    func = click.option("--csv", "fmt", flag_value="csv", help="Print CSV with a header row.")(func)
    return click.option(
        "--nl", "fmt", flag_value="nl", help="Print newline-delimited JSON (one object a line)."
    )(func)


def json_option(func: F) -> F:
    """``--json``: machine-readable output."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)


# -- filters ---------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``"30s"``, ``"30m"``, ``"12h"``, ``"7d"``, ``"2w"`` (also ``"1.5h"``) in
    seconds. Raises ``ValueError`` naming the accepted forms."""
    match = _DURATION.match(text.lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 30m, 12h, 7d or 2w (units: s m h d w)")
    return float(match[1]) * _UNIT_SECONDS[match[2]]


def _uuids(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    try:
        return tuple(str(UUID(v)) for v in values)
    except ValueError:
        raise click.BadParameter(f"not a UUID in {list(values)}") from None


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
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
            "--reason",
            type=click.Choice(DEAD_REASONS),
            help="Only dead letters with this reason.",
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


# -- output ----------------------------------------------------------------------------


def emit(data: Any, as_json: bool, human: Callable[[], None]) -> None:
    """Print ``data`` as one JSON object with ``--json``, else call ``human()``."""
    if as_json:
        click.echo(json.dumps(data, sort_keys=True))
    else:
        human()


def emit_nothing(path: Path, as_json: bool) -> None:
    """One line (or JSON object) saying that there is no spool at ``path`` yet,
    so there is nothing to do."""
    data = {"nothing_to_do": True, "spool": str(path), "exit_code": 0}
    emit(data, as_json, lambda: click.echo(f"nothing to do: no spool at {path} yet"))


def format_age(seconds: float | None) -> str:
    """``seconds`` as ``12.0s``, ``3.5m``, ``2.0h`` or ``1.5d`` (``-`` for None)."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def format_time(seconds: float | None) -> str:
    """Wall-clock UTC ``seconds`` as RFC 3339 (``-`` for None)."""
    return "-" if seconds is None else format_timestamp(None, round(seconds))


def plural(n: int, word: str = "event") -> str:
    """``1 event``, ``2 events``."""
    return f"{n} {word}" + ("" if n == 1 else "s")
