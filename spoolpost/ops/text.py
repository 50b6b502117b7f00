"""Small parsers and formats shared by the operator commands."""

from __future__ import annotations

import re

from spoolpost.capture.encoding import format_timestamp

# -- small parsers -------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``"30s"``, ``"30m"``, ``"12h"``, ``"7d"``, ``"2w"`` (also ``"1.5h"``) in
    seconds. Raises ``ValueError`` naming the accepted forms."""
    match = _DURATION.match(text.lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 30m, 12h, 7d or 2w (units: s m h d w)")
    return float(match[1]) * _UNIT_SECONDS[match[2]]


def format_time(seconds: float | None) -> str:
    """Wall-clock UTC ``seconds`` as RFC 3339 (``-`` for None)."""
    return "-" if seconds is None else format_timestamp(None, round(seconds))
