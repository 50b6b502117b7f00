"""Commands for watching a spool, none of which writes to it: ``inspect``
(the verdict and the facts behind it), ``check`` (Nagios), ``metrics``
(Prometheus) and ``path`` (where the library's default spool is)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from spoolpost.cli.options import (
    api_key_option,
    emit,
    format_age,
    format_time,
    json_option,
    parse_duration,
    plural,
    spool_argument,
    spool_path,
)
from spoolpost.client import default_spool_path
from spoolpost.errors import SpoolpostError
from spoolpost.ops.metrics import metrics_text, write_textfile
from spoolpost.ops.status import UNKNOWN, Threshold, Thresholds, quarantine, report, unreadable
from spoolpost.ops.status import check as check_spool
from spoolpost.spool.maintenance import STATES
from spoolpost.spool.reader import Observation, SpoolReader


def observe(spool: Path | None, api_key: str | None = None) -> Observation:
    """Read the spool given (or the key's default one) read-only, now."""
    return SpoolReader(spool_path(spool, api_key)).observe(time.time())


def _observe_or_fail(path: Path, answer: Callable[[Exception], None]) -> Observation:
    """Read the spool at ``path``; when it cannot be read (missing, corrupt, not a
    spool), give ``answer(error)`` its machine-readable output (stdout), then say
    ``Error: …`` on stderr and exit 1 (the documented code)."""
    try:
        return SpoolReader(path).observe(time.time())
    except (SpoolpostError, OSError) as exc:
        answer(exc)
        click.echo(f"Error: {exc}", err=True)
        raise click.exceptions.Exit(1) from None


def _human(r: dict[str, Any]) -> None:
    echo = click.echo
    echo(f"state           {r['summary']}")
    echo(f"spool           {r['path']} (schema v{r['schema_version']})")
    for state in STATES:
        echo(f"{state:<15} {r['counts'][state]:>10} events {r['bytes'][state]:>12} B")
    echo(f"retrying        {r['retrying']} (next due {format_time(r['next_retry_at'])})")
    age = r["oldest_pending_at"]
    echo(f"oldest pending  {format_time(age)} ({format_age(r['oldest_pending_age'])} ago)")
    last = r["last_error"]
    echo(
        f"last error      {format_time(last['at'])} {last['message']}"
        if last
        else "last error      -"
    )
    echo(f"last success    {format_time(r['last_success_at'])}")
    for lease in r["leases"]:
        alive = "running" if lease["alive"] else "GONE"
        if lease.get("left_at_stop"):
            alive += ", stopped with this request in flight"
        echo(
            f"lease           {plural(lease['events'])} to pid {lease['pid']} on {lease['host']}"
            f" ({alive}), until {format_time(lease['expires_at'])};"
            f" taken back {lease['taken_back']}"
        )
    echo(f"key             fingerprint {r['key_fingerprint'] or '-'}")
    echo(f"delivers to     {r['ingestion_host'] or '- (not recorded yet)'}")
    echo(f"created on      {r['created_on'] or '-'}")
    echo(
        f"full            {r['full']:.1%} of {r['max_spool_bytes']} B ({r['bound_source']}),"
        f" used {r['used_bytes']} B"
    )
    free = "unknown" if r["fs_free_bytes"] is None else f"{r['fs_free_bytes']} B"
    echo(
        f"disk            {free} free, floor min_free_bytes={r['min_free_bytes']} B"
        f" ({r['floor_source']})" + (": BELOW IT, captures refused" if r["below_floor"] else "")
    )
    if r["dead_reasons"]:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(r["dead_reasons"].items()))
        echo(f"dead reasons    {reasons}")
    counters = ", ".join(f"{k}={v}" for k, v in sorted(r["counters"].items()))
    echo(f"counters        {counters}")
    echo(f"file            {r['file_bytes']} B, WAL {r['wal_bytes']} B")
    _aside(r["quarantined"])


def _aside(found: list[dict[str, Any]]) -> None:
    for a in found:
        what = "corrupt spool" if a["kind"] == "corrupt" else "orphaned side file"
        click.echo(f"set aside       {a['path']} ({what}, {a['bytes']} B)")


@click.command()
@spool_argument
@api_key_option
@json_option
def inspect(spool: Path | None, api_key: str | None, as_json: bool) -> None:
    """Say whether SPOOL is healthy, backing off, paused, in an outage or stuck,
    and show why: counts, errors, leases, endpoint and bounds, and files set
    aside beside it (corrupt spools, orphaned side files). Never writes, never
    sends: the file is opened read-only, and a corrupt file is reported, not
    moved. Exit 0 when the spool was read; 1 when it cannot be (missing,
    corrupt, not a spool): then --json still prints an object whose "state" is
    missing, corrupt or unreadable, with "error".

    \b
    Example:
        spoolpost inspect /var/lib/myapp/events.spool
        spoolpost inspect /var/lib/myapp/events.spool --json | jq .state
    """
    where = spool_path(spool, api_key)

    def answer(exc: Exception) -> None:
        if as_json:
            click.echo(json.dumps(unreadable(where, exc), sort_keys=True))
        else:
            _aside(quarantine(where))

    r = report(_observe_or_fail(where, answer))
    emit(r, as_json, lambda: _human(r))


def _limits(text: str, percent: bool, name: str) -> Threshold:
    """``WARN[,CRIT]``: durations (``15m,1h``), counts or percentages."""
    parts = text.split(",")
    if len(parts) > 2 or not all(p.strip() for p in parts):
        raise click.BadParameter(f"{text!r} is not WARNING[,CRITICAL]", param_hint=name)
    values = []
    for part in parts:
        part = part.strip()
        try:
            if name == "--max-pending-age":
                values.append(parse_duration(part))
            elif percent:
                match = re.fullmatch(r"(\d+(?:\.\d+)?)%?", part)
                if match is None:
                    raise ValueError
                values.append(float(match[1]) / 100)
            elif part.isdigit():
                values.append(float(part))
            else:
                raise ValueError
        except ValueError as exc:
            hint = str(exc) or f"{part!r} is not a {'percentage' if percent else 'number'}"
            raise click.BadParameter(hint, param_hint=name) from None
    if len(values) == 2 and values[1] < values[0]:
        raise click.BadParameter(
            f"critical {parts[1]} is below warning {parts[0]}", param_hint=name
        )
    return Threshold(*values)


@click.command()
@spool_argument
@api_key_option
@click.option("--max-pending-age", metavar="WARN[,CRIT]", help="Oldest pending event: 15m,1h.")
@click.option("--max-dead", metavar="WARN[,CRIT]", help="Dead letters: 0,100.")
@click.option("--max-full", metavar="WARN[,CRIT]", help="Used share of max_spool_bytes: 80%,95%.")
def check(
    spool: Path | None,
    api_key: str | None,
    max_pending_age: str | None,
    max_dead: str | None,
    max_full: str | None,
) -> None:
    """Check SPOOL for monitoring (Nagios plugin conventions): one line, and exit
    0 ok, 1 warning, 2 critical, 3 unknown (the spool cannot be read). A value
    above WARN warns, above CRIT is critical; a paused, outage or stuck spool,
    and files set aside beside it (corrupt spools: look, then remove them), are
    at least a warning.

    \b
    Example:
        spoolpost check /var/lib/myapp/events.spool \\
            --max-pending-age 15m,1h --max-dead 0,100 --max-full 80%,95%
    """
    limits = Thresholds(
        pending_age=_limits(max_pending_age, False, "--max-pending-age")
        if max_pending_age
        else None,
        dead=_limits(max_dead, False, "--max-dead") if max_dead else None,
        full=_limits(max_full, True, "--max-full") if max_full else None,
    )
    ctx = click.get_current_context()
    try:
        obs = observe(spool, api_key)
    except (SpoolpostError, OSError, click.ClickException) as exc:
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        aside = quarantine(spool) if spool is not None else []
        more = f"; {len(aside)} file(s) set aside beside it" if aside else ""
        click.echo(f"SPOOLPOST UNKNOWN - {message}{more}")
        ctx.exit(UNKNOWN)
    code, line = check_spool(obs, limits)
    click.echo(line)
    ctx.exit(code)


@click.command()
@spool_argument
@api_key_option
@click.option(
    "--textfile",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file atomically (node_exporter's textfile collector) instead of stdout.",
)
def metrics(spool: Path | None, api_key: str | None, textfile: Path | None) -> None:
    """Print SPOOL's state in the Prometheus text format: gauges spoolpost_up,
    spoolpost_pending, _leased, _dead, _bytes, _oldest_pending_age_seconds,
    _paused, _quarantined_files; counters spoolpost_delivered_total,
    _dead_lettered_total, _dropped_total. When SPOOL cannot be read (missing,
    corrupt) it still prints (or writes) spoolpost_up 0 and
    spoolpost_quarantined_files, then exits 1.

    \b
    Example:
        spoolpost metrics /var/lib/myapp/events.spool \\
            --textfile /var/lib/node_exporter/textfile_collector/spoolpost.prom
    """
    where = spool_path(spool, api_key)

    def answer(exc: Exception) -> None:  # spoolpost_up 0, then the error and exit 1
        if textfile is None:
            click.echo(metrics_text(None, where), nl=False)
        else:
            write_textfile(None, textfile, where)

    obs = _observe_or_fail(where, answer)
    if textfile is None:
        click.echo(metrics_text(obs), nl=False)
    else:
        write_textfile(obs, textfile)


@click.command()
@api_key_option
def path(api_key: str | None) -> None:
    """Print the default spool path for the API key: the one Client and the
    module-level API use without spool= ($SPOOLPOST_SPOOL, else
    $XDG_STATE_HOME/spoolpost/<key fingerprint>.spool). Every command uses it
    when given a key and no SPOOL.

    \b
    Example:
        SPOOLPOST_API_KEY=phc_your_project_key spoolpost path
    """
    if not api_key or not api_key.strip():
        raise click.ClickException("no API key: pass --api-key or set SPOOLPOST_API_KEY")
    click.echo(str(default_spool_path(api_key)))
