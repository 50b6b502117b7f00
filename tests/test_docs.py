"""README's configuration table is checked against the code, which owns every default.

A default changed in code, an option added to ``Client`` or a row left stale in README
fails here, so the numbers are written once (in the code) and the table follows them.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from spoolpost import Client, PausePolicy, RetryPolicy
from spoolpost.spool import DEFAULT_BLOCK_TIMEOUT

README = Path(__file__).resolve().parents[1] / "README.md"
KIB = 1024
MIB = 1024 * 1024
#: Client arguments README's table does not list, on purpose.
NOT_IN_TABLE = {"api_key", "clock"}


def readme_table() -> dict[str, tuple[str, str]]:
    """``option -> (default, meaning)`` from README's "## Configuration" table."""
    text = README.read_text("utf-8")
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[str, str]] = {}
    for line in section.splitlines():
        match = re.match(r"^\| `([a-z_]+)` \| (.*?) \| (.*) \|$", line)
        if match:
            rows[match[1]] = (match[2], match[3])
    return rows


def size(value: int) -> str:
    for unit, scale in (("MiB", MIB), ("KiB", KIB)):
        if value % scale == 0:
            return f"{value // scale} {unit}"
    return f"{value} B"


def rendered(name: str, default: Any) -> str:
    """The README cell for a Client default, in README's own notation."""
    if name in ("max_spool_bytes", "min_free_bytes", "max_batch_bytes", "max_event_bytes"):
        return size(default)
    if name == "flush_interval" or name == "shutdown_timeout":
        return f"{float(default)} s"
    if name == "lease_ttl":
        return f"{default:g} s"
    if name == "senders" and default == 0:
        return "`min(cpu, 4)`"
    if name == "host":
        return f"`{default}`"
    if isinstance(default, bool):
        return f"`{default}`"
    if isinstance(default, str):
        return f'`"{default}"`'
    if isinstance(default, tuple):
        return f"`{default}`"
    if default is None:
        return "None"
    return str(default)


CLIENT_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(Client).parameters.items()
    if name not in NOT_IN_TABLE
}
#: Options whose README cell is prose rather than the literal default.
PROSE = {"spool", "retry", "pause"}


def test_every_client_option_has_a_row_and_every_row_an_option() -> None:
    assert set(readme_table()) == set(CLIENT_DEFAULTS)


@pytest.mark.parametrize("name", sorted(set(CLIENT_DEFAULTS) - PROSE))
def test_readme_states_the_default_the_code_has(name: str) -> None:
    default, _ = readme_table()[name]
    assert default == rendered(name, CLIENT_DEFAULTS[name])


def test_readme_states_the_retry_and_pause_policies_defaults() -> None:
    retry = RetryPolicy()
    _, meaning = readme_table()["retry"]
    assert f"`initial_backoff` {retry.initial_backoff:g} s" in meaning
    assert f"`max_backoff` {retry.max_backoff:g} s" in meaning
    assert f"`max_retry_after` {retry.max_retry_after:g} s" in meaning
    assert f"`max_attempts` {retry.max_attempts}" in meaning
    assert retry.max_event_age == 7 * 86400 and "`max_event_age` 7 days" in meaning
    pause = PausePolicy()
    _, meaning = readme_table()["pause"]
    assert f"`initial` {pause.initial:g} s" in meaning
    assert f"`maximum` {pause.maximum:g} s" in meaning


def test_readme_states_how_long_block_waits() -> None:
    _, meaning = readme_table()["on_full"]
    assert f"`block` ({DEFAULT_BLOCK_TIMEOUT:g} s)" in meaning
