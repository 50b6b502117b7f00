"""capture_exception (a ``$exception`` event built as posthog-python 7.x builds it) and
posthog-python's flag calls, answered "not evaluated", on Posthog and the module API.

The installed posthog-python is the reference: its exception builder for the same
exceptions, and its flag answers when its ``/flags`` request fails. A real spool under
tmp_path and the loopback endpoint."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import posthog
import pytest
from kit import API_KEY
from posthog.exception_utils import exceptions_from_error_tuple, handle_in_app

import spoolpost
from spoolpost import Posthog
from spoolpost.dropin import flags
from spoolpost.dropin.flags import UNEVALUATED
from spoolpost.events.exceptions import ExcInfo
from spoolpost.testing import LocalEndpoint, Response


@pytest.fixture
def ph(spool_path: Path, endpoint: LocalEndpoint) -> Iterator[Posthog]:
    client = Posthog(API_KEY, host=endpoint.url, spool=str(spool_path))
    yield client
    client.shutdown()


def theirs(info: ExcInfo) -> list[dict[str, Any]]:
    """posthog-python's ``$exception_list`` for ``info``, as JSON would carry it."""
    values = exceptions_from_error_tuple(info)
    built = handle_in_app({"exception": {"values": values}})["exception"]["values"]
    decoded: list[dict[str, Any]] = json.loads(json.dumps(built))
    return decoded


def chained() -> ExcInfo:
    try:
        try:
            {}["missing"]
        except KeyError as exc:
            raise ValueError("bad input") from exc
    except ValueError:
        return sys.exc_info()
    raise AssertionError


def with_context_and_errno() -> ExcInfo:
    try:
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            raise OSError(2, "no such file") from None
    except OSError:
        return sys.exc_info()
    raise AssertionError


def implicit_context() -> ExcInfo:
    try:
        try:
            int("x")
        except ValueError:
            raise RuntimeError("while handling")  # noqa: B904
    except RuntimeError:
        return sys.exc_info()
    raise AssertionError


def group() -> ExcInfo:
    try:
        raise ExceptionGroup("many", [ValueError("a"), TypeError("b")])
    except ExceptionGroup:
        return sys.exc_info()
    raise AssertionError


@pytest.mark.parametrize("make", [chained, with_context_and_errno, implicit_context, group])
def test_the_exception_event_is_built_as_posthog_python_builds_it(
    make: Any, ph: Posthog, endpoint: LocalEndpoint
) -> None:
    info = make()
    uid = ph.capture_exception(info[1], distinct_id="u1", properties={"route": "/cart"})
    ph.flush()

    assert uid is not None
    [event] = endpoint.requests[0].events
    assert (event["event"], event["distinct_id"], event["uuid"]) == ("$exception", "u1", uid)
    props = event["properties"]
    assert props["$exception_list"] == theirs(info)
    assert props["$exception_level"] == "error" and props["route"] == "/cart"


def test_the_exception_being_handled_is_captured_once(ph: Posthog, endpoint: LocalEndpoint) -> None:
    try:
        raise KeyError("k")
    except KeyError as exc:
        first = ph.capture_exception()  # sys.exc_info()
        again = ph.capture_exception(exc)
        third = ph.capture_exception(exc)  # marked by the call before
    ph.flush()

    assert first is not None and again is not None and third is None
    assert [e["uuid"] for e in endpoint.requests[0].events] == [first, again]


def test_a_never_raised_exception_gets_the_stack_of_its_capture(
    ph: Posthog, endpoint: LocalEndpoint
) -> None:
    uid = ph.capture_exception(ValueError("never raised"), distinct_id="u1")
    ph.flush()

    assert uid is not None
    [entry] = endpoint.requests[0].events[0]["properties"]["$exception_list"]
    assert entry["mechanism"]["synthetic"] is True
    assert (entry["type"], entry["value"]) == ("ValueError", "never raised")
    frames = entry["stacktrace"]["frames"]
    assert frames[-1]["function"] == "test_a_never_raised_exception_gets_the_stack_of_its_capture"
    assert not any(str(f["module"]).startswith("spoolpost") for f in frames)


@pytest.mark.parametrize("debug", [False, True])
def test_capture_exception_never_raises(
    spool_path: Path, endpoint: LocalEndpoint, caplog: pytest.LogCaptureFixture, debug: bool
) -> None:
    ph = Posthog(API_KEY, host=endpoint.url, spool=str(spool_path), debug=debug)
    try:
        with caplog.at_level(logging.WARNING, "spoolpost"):
            nothing = ph.capture_exception()  # no exception is being handled
            wrong = ph.capture_exception("not an exception")  # type: ignore[arg-type]
            try:
                raise ValueError("v")
            except ValueError as exc:
                bad_option = ph.capture_exception(exc, no_such_option=1)
    finally:
        ph.shutdown()

    # Loss accounting: 3 calls, none had an event to store; nothing stored, none lost.
    assert (nothing, wrong, bad_option) == (None, None, None)
    assert "No exception information available" in caplog.text
    assert "Failed to capture exception: Expected Exception object to report" in caplog.text
    assert "unexpected keyword argument 'no_such_option'" in caplog.text
    assert ph.lost == 0


@pytest.mark.usefixtures("ph")
def test_the_module_function_captures_through_the_default_client(
    monkeypatch: pytest.MonkeyPatch, spool_path: Path, endpoint: LocalEndpoint, tmp_path: Path
) -> None:
    other = tmp_path / "module.spool"
    for name, value in {
        "api_key": API_KEY,
        "host": endpoint.url,
        "spool_path": str(other),
        "default_client": None,
    }.items():
        monkeypatch.setattr(spoolpost, name, value)
    try:
        try:
            raise LookupError("gone")
        except LookupError:
            uid = spoolpost.capture_exception(distinct_id="u2")
        spoolpost.flush()
    finally:
        spoolpost.shutdown()
    assert uid is not None
    [event] = endpoint.requests[0].events
    assert event["event"] == "$exception" and event["uuid"] == uid
    assert event["properties"]["$exception_list"][0]["type"] == "LookupError"


# -- feature flags: not evaluated --------------------------------------------------------

ARGS: dict[str, tuple[Any, ...]] = {
    "get_all_flags": ("u",),
    "get_all_flags_and_payloads": ("u",),
    "evaluate_flags": ("u",),
    "get_remote_config_payload": ("k",),
    "feature_flag_definitions": (),
    "load_feature_flags": (),
    "get_feature_flag_evaluation_runtime": ("k",),
    "get_feature_flag_keys_by_evaluation_runtime": ("server",),
}


def answer(value: Any) -> Any:
    """A flag answer, comparable: an evaluations snapshot by what it says."""
    if hasattr(value, "is_enabled"):
        return ("snapshot", list(value.keys), value.is_enabled("k"), value.get_flag("k"))
    return value


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # posthog-python's own, on its calls
@pytest.mark.parametrize("name", sorted(UNEVALUATED))
def test_flag_calls_answer_as_posthog_python_does_when_it_cannot_evaluate(
    name: str,
    ph: Posthog,
    endpoint: LocalEndpoint,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(flags, "_told", set())  # as in a new process
    args = ARGS.get(name, ("k", "u"))
    # posthog-python's /flags request fails (its events are answered as usual).
    endpoint.set_handler(lambda r: Response(503) if r.path.startswith("/flags") else None)
    reference = posthog.Posthog(API_KEY, host=endpoint.url)
    try:
        expected = answer(getattr(reference, name)(*args))
    finally:
        reference.shutdown()
    endpoint.set_handler(None)
    endpoint.clear()

    with caplog.at_level(logging.INFO, "spoolpost"):
        ours = [answer(getattr(ph, name)(*args)), answer(getattr(spoolpost, name)(*args))]

    assert ours == [expected, expected]
    assert endpoint.requests == []  # spoolpost asked nothing
    told = [
        r.getMessage() for r in caplog.records if "is not evaluated by spoolpost" in r.getMessage()
    ]
    assert len(told) <= 1  # once per function per process
