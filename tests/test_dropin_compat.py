"""spoolpost.Posthog against the installed posthog-python: every constructor parameter
posthog-python's ``Posthog.__init__`` has is in our signature, in README's drop-in table
and in exactly one of the drop-in's MAPPED/IGNORED sets. A new posthog-python option
fails here (posthog is pinned in the ``test`` extra, so that happens on a bump)."""

from __future__ import annotations

import inspect
import re
from importlib.metadata import version
from pathlib import Path

import posthog
import pytest

from spoolpost import Posthog
from spoolpost.dropin.settings import IGNORED, MAPPED

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def posthog_parameters() -> list[str]:
    parameters = inspect.signature(posthog.Posthog.__init__).parameters
    return [name for name in parameters if name != "self"]


def readme_drop_in_table() -> dict[str, str]:
    section = README.read_text("utf-8").split("## Drop-in for posthog-python", 1)[1]
    table = section.split("| posthog-python option |", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in table.splitlines():
        match = re.match(r"^\| `([A-Za-z_]+)` \| (.+) \|$", line)
        if match:
            rows[match[1]] = match[2]
    return rows


@pytest.mark.parametrize("name", posthog_parameters())
def test_every_posthog_python_parameter_is_handled(name: str) -> None:
    ours = inspect.signature(Posthog.__init__).parameters
    assert name in ours, f"spoolpost.Posthog does not accept posthog-python's {name!r}"
    assert ours[name].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert name in readme_drop_in_table(), f"README's drop-in table lacks {name!r}"
    assert (name in MAPPED) != (name in IGNORED), f"{name!r} must be mapped or ignored"
    if name in IGNORED:
        assert readme_drop_in_table()[name].startswith("ignored (INFO)")


def test_positional_order_is_posthog_pythons() -> None:
    ours = [
        name
        for name, p in inspect.signature(Posthog.__init__).parameters.items()
        if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and name != "self"
    ]
    assert ours == posthog_parameters()


def test_table_lists_nothing_posthog_python_lacks() -> None:
    assert set(readme_drop_in_table()) == set(posthog_parameters())
    assert set(posthog_parameters()) == MAPPED | IGNORED


def test_readme_names_the_pinned_version() -> None:
    pinned = re.search(r'"posthog==([0-9.]+)"', (ROOT / "pyproject.toml").read_text("utf-8"))
    assert pinned is not None, "pin posthog==X.Y.Z in the test extra"
    assert pinned[1] == version("posthog")
    assert f"posthog-python {pinned[1]}" in README.read_text("utf-8")
