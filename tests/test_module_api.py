"""The module-level API as posthog-python's module (issue 9): unknown settings warn
once, the default client falls back to the per-user spool when the default folder
cannot be made, and the CLI finds that spool by the same rule."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from kit import API_KEY

import spoolpost
import spoolpost.testing
from spoolpost.cli import cli
from spoolpost.dropin.module import SettingsModule, SettingWarning
from spoolpost.spool.location import fallback_spool_path, preferred_spool_path
from spoolpost.testing import LocalEndpoint


@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SettingsModule, "_warned", set())


@pytest.mark.usefixtures("fresh_warnings")
@pytest.mark.parametrize(
    ("name", "hint"), [("api_kye", "api_key"), ("spool", "spool_path"), ("dbug", "debug")]
)
def test_an_unknown_setting_warns_once(
    name: str, hint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monkeypatch.setattr(spoolpost, name, "x", raising=False)
        monkeypatch.setattr(spoolpost, name, "y", raising=False)

    assert [(w.category, str(w.message)) for w in caught] == [
        (
            SettingWarning,
            f"spoolpost.{name} is not a setting spoolpost reads; it has no effect "
            f"(did you mean {hint}?)",
        )
    ]
    assert getattr(spoolpost, name) == "y"


@pytest.mark.usefixtures("fresh_warnings")
def test_settings_functions_and_submodule_imports_do_not_warn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name, value in [("debug", False), ("on_error", None), ("spool_path", None)]:
            monkeypatch.setattr(spoolpost, name, value)
        monkeypatch.setattr(spoolpost, "capture", spoolpost.capture)  # a test's patch
        spoolpost.testing = spoolpost.testing  # as the import system sets a submodule


@pytest.fixture
def homeless(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME and XDG_STATE_HOME under a file (no folder can be made there); the
    per-user fallback under ``tmp_path/var-tmp``. Returns that fallback base."""
    blocked = tmp_path / "file"
    blocked.write_text("")
    base = tmp_path / "var-tmp"
    base.mkdir()
    monkeypatch.delenv("SPOOLPOST_SPOOL", raising=False)
    monkeypatch.setenv("HOME", str(blocked / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(blocked / "state"))
    monkeypatch.setenv("SPOOLPOST_FALLBACK_DIR", str(base))
    return base


@pytest.fixture
def module_client(monkeypatch: pytest.MonkeyPatch, endpoint: LocalEndpoint) -> Iterator[None]:
    for name, value in [
        ("api_key", API_KEY),
        ("project_api_key", None),
        ("host", endpoint.url),
        ("spool_path", None),
        ("default_client", None),
    ]:
        monkeypatch.setattr(spoolpost, name, value)
    yield
    spoolpost.shutdown()


@pytest.mark.usefixtures("module_client")
def test_module_client_falls_back_to_the_per_user_spool_and_the_cli_finds_it(
    homeless: Path, endpoint: LocalEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    fallback = fallback_spool_path(API_KEY)
    assert fallback.parent.parent == homeless

    with caplog.at_level(logging.ERROR, logger="spoolpost"):
        uid = spoolpost.capture("e", distinct_id="u1")
        spoolpost.capture("f", distinct_id="u1")
    spoolpost.flush()

    assert uid is not None and endpoint.delivered_uuids()[0] == uid
    assert [r.getMessage() for r in caplog.records] == [
        f"the spool folder of {preferred_spool_path(API_KEY)} cannot be created; "
        f"using {fallback} instead"
    ]
    assert fallback.exists()
    env = {"SPOOLPOST_API_KEY": API_KEY}
    path = CliRunner().invoke(cli, ["path"], env=env)
    inspect = CliRunner().invoke(cli, ["inspect", "--json"], env=env)
    assert (path.exit_code, path.output) == (0, f"{fallback}\n")
    assert inspect.exit_code == 0 and str(fallback) in inspect.output


def test_the_default_spool_is_the_preferred_one_when_it_can_be_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SPOOLPOST_SPOOL", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    result = CliRunner().invoke(cli, ["path"], env={"SPOOLPOST_API_KEY": API_KEY})
    assert result.output == f"{preferred_spool_path(API_KEY)}\n"
    assert str(preferred_spool_path(API_KEY)).startswith(str(tmp_path / "state"))
    assert not (tmp_path / "state").exists()  # resolving creates nothing


@pytest.mark.usefixtures("module_client")
def test_module_on_error_debug_and_send_mean_what_posthog_python_means(
    monkeypatch: pytest.MonkeyPatch, spool_path: Path, endpoint: LocalEndpoint
) -> None:
    heard: list[Exception] = []
    monkeypatch.setattr(spoolpost, "spool_path", str(spool_path))
    monkeypatch.setattr(spoolpost, "on_error", lambda error, events: heard.append(error))
    monkeypatch.setattr(spoolpost, "send", False)

    uid = spoolpost.capture("e", distinct_id="u1")  # send=False: a uuid, nothing stored
    spoolpost.shutdown()
    monkeypatch.setattr(spoolpost, "send", True)
    assert spoolpost.capture("bad\nname", distinct_id="u1") is None  # logged, not raised
    client = spoolpost.default_client
    spoolpost.shutdown()
    monkeypatch.setattr(spoolpost, "debug", True)
    try:
        with pytest.raises(ValueError, match="control characters"):
            spoolpost.capture("bad\nname", distinct_id="u1")
    finally:
        logging.getLogger("spoolpost").setLevel(logging.NOTSET)

    assert uid is not None and endpoint.requests == []
    assert client is not None and client.lost == 1 and len(heard) == 1


@pytest.mark.usefixtures("module_client")
def test_module_capture_ai_goes_to_the_ai_endpoint(
    monkeypatch: pytest.MonkeyPatch, spool_path: Path, endpoint: LocalEndpoint
) -> None:
    monkeypatch.setattr(spoolpost, "spool_path", str(spool_path))
    uid = spoolpost.capture_ai("$ai_generation", distinct_id="u1", properties={"$ai_model": "m"})
    spoolpost.flush()
    (request,) = endpoint.requests
    assert request.path == "/i/v0/ai/batch/"
    assert uid is not None and request.uuids == [uid]


def test_a_state_folder_nobody_can_make_falls_back_even_for_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root passes os.access everywhere, yet no folder can be made under /proc: the
    rule tries, so the CLI finds the spool the library fell back to."""
    monkeypatch.delenv("SPOOLPOST_SPOOL", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", "/proc/spoolpost-no-such-folder")
    monkeypatch.setenv("SPOOLPOST_FALLBACK_DIR", str(tmp_path))
    result = CliRunner().invoke(cli, ["path"], env={"SPOOLPOST_API_KEY": API_KEY})
    assert result.output == f"{fallback_spool_path(API_KEY)}\n"
    assert str(fallback_spool_path(API_KEY)).startswith(str(tmp_path))
