"""spoolpost.Posthog against the installed posthog-python: every constructor parameter
posthog-python's ``Posthog.__init__`` has is in our signature, in README's drop-in table
and in exactly one of the drop-in's MAPPED/IGNORED sets. A new posthog-python option
fails here (posthog is pinned in the ``test`` extra, so that happens on a bump)."""

from __future__ import annotations

import ast
import inspect
import re
from importlib.metadata import version
from pathlib import Path

import posthog
import pytest

import spoolpost
from spoolpost import Posthog
from spoolpost.dropin.flags import CODE_VARIABLE_SETTERS, UNEVALUATED
from spoolpost.dropin.module import POSTHOG_MODULE_SETTINGS
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


# -- the module-level API's settings --------------------------------------------------------


def posthog_module_settings() -> list[str]:
    """The settings posthog-python's module assigns at its top level (``api_key = None``,
    …), read from its source, without ``__version__`` and ``default_client``."""
    tree = ast.parse(Path(posthog.__file__).read_text("utf-8"))
    names = [
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    ]
    return [n for n in names if n not in ("__version__", "default_client")]


def readme_module_table() -> dict[str, str]:
    section = README.read_text("utf-8").split("| posthog-python module setting |", 1)[1]
    rows = {}
    for line in section.split("\n\n", 1)[0].splitlines():
        match = re.match(r"^\| `([A-Za-z_]+)` \| (.+) \|$", line)
        if match:
            rows[match[1]] = match[2]
    return rows


def test_module_settings_are_posthog_pythons() -> None:
    assert list(POSTHOG_MODULE_SETTINGS) == posthog_module_settings()
    assert list(readme_module_table()) == posthog_module_settings()


@pytest.mark.parametrize("name", posthog_module_settings())
def test_every_posthog_module_setting_is_read(name: str) -> None:
    assert name in vars(spoolpost), f"spoolpost has no module setting {name!r}"
    ours = inspect.signature(Posthog.__init__).parameters
    if name not in ("api_key", "host", "project_api_key"):  # these read the environment
        assert vars(spoolpost)[name] == ours[name].default  # no INFO line by default
    if name in IGNORED:
        assert readme_module_table()[name].startswith("ignored (INFO)")


# -- the module-level API's functions -------------------------------------------------------


def posthog_module_functions() -> list[str]:
    """The public functions posthog-python's module defines, read from its source."""
    tree = ast.parse(Path(posthog.__file__).read_text("utf-8"))
    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")
    ]


def readme_function_table() -> dict[str, str]:
    section = README.read_text("utf-8").split("| posthog-python module function |", 1)[1]
    rows = {}
    for line in section.split("\n\n", 1)[0].splitlines():
        match = re.match(r"^\| `([A-Za-z_]+)` \| (.+) \|$", line)
        if match:
            rows[match[1]] = match[2]
    return rows


def test_readme_lists_every_posthog_module_function_and_nothing_else() -> None:
    assert list(readme_function_table()) == posthog_module_functions()


@pytest.mark.parametrize("name", posthog_module_functions())
def test_every_posthog_module_function_exists_or_is_absent_with_a_reason(name: str) -> None:
    row = readme_function_table()[name]
    if row.startswith("absent: "):
        assert len(row) > len("absent: ") + 10, f"say why {name!r} is absent"
        assert not hasattr(spoolpost, name)
        return
    assert callable(getattr(spoolpost, name, None)), f"spoolpost has no function {name!r}"
    if name in UNEVALUATED:
        assert row.startswith("not evaluated (INFO once)")
        assert callable(getattr(Posthog, name))  # on the class too, as in posthog-python
    if name in CODE_VARIABLE_SETTERS:
        assert row.startswith("ignored (INFO once)")
