"""posthog-python call forms and the module-level default client (issue 4).

The calls users already write against posthog-python are made against a spoolpost
Client and against the spoolpost module, and the bodies the loopback endpoint
records are checked for PostHog's field names. Where posthog-python is installed,
its own requests to a second loopback endpoint are compared field by field.
"""

from __future__ import annotations

import inspect
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from kit import API_KEY

import spoolpost
from spoolpost import Client, Posthog
from spoolpost.testing import LocalEndpoint, RecordedRequest

GIVEN_UUID = "0194e0f7-0000-7000-8000-000000000001"
TS = "2025-01-02T08:34:05+05:30"
ENVELOPE = {"api_key", "historical_migration", "sent_at", "batch"}
EVENT_FIELDS = ["uuid", "event", "distinct_id", "properties", "timestamp"]
#: added to every event by the client (a Posthog adds the Python runtime, too)
OURS = {"$lib", "$lib_version", "$geoip_disable", "$python_runtime", "$python_version"}


@pytest.fixture
def module_settings(
    monkeypatch: pytest.MonkeyPatch, spool_path: Path, endpoint: LocalEndpoint
) -> Iterator[None]:
    """The spoolpost module's settings pointed at this test's spool and endpoint, with
    no default client yet; whatever default client the test makes is shut down."""
    settings: dict[str, Any] = {
        "api_key": API_KEY,
        "project_api_key": None,
        "host": endpoint.url,
        "spool_path": str(spool_path),
        "disabled": False,
        "send": True,
        "deliver": True,
        "before_send": None,
        "disable_geoip": True,
        "client_options": {},
        "default_client": None,
    }
    for name, value in settings.items():
        monkeypatch.setattr(spoolpost, name, value)
    yield
    spoolpost.shutdown()


def test_the_spool_module_is_not_hidden_by_a_setting() -> None:
    import spoolpost.spool as module

    assert module.Spool is spoolpost.Spool


# -- the call forms ---------------------------------------------------------------------------

# (id, the call as posthog-python users write it, event, distinct_id, properties)
CALL_FORMS: list[tuple[str, Callable[[Any], object], str, str, dict[str, Any]]] = [
    (
        "capture-keywords",
        lambda ph: ph.capture(
            "signed_up",
            distinct_id="u1",
            properties={"plan": "pro"},
            groups={"company": "acme"},
            timestamp=TS,
            uuid=GIVEN_UUID,
        ),
        "signed_up",
        "u1",
        {"plan": "pro", "$groups": {"company": "acme"}},
    ),
    (
        "capture-minimal",
        lambda ph: ph.capture("clicked", distinct_id="u1", properties={"button": "buy"}),
        "clicked",
        "u1",
        {"button": "buy"},
    ),
    (
        "capture-geoip-option",
        lambda ph: ph.capture("viewed", distinct_id=7, disable_geoip=True),
        "viewed",
        "7",
        {},
    ),
    (
        "identify",
        lambda ph: ph.identify(distinct_id="u1", properties={"email": "a@example.com"}),
        "$identify",
        "u1",
        {"$set": {"email": "a@example.com"}},
    ),
    (
        "set",
        lambda ph: ph.set(distinct_id="u1", properties={"plan": "pro"}),
        "$set",
        "u1",
        {"$set": {"plan": "pro"}},
    ),
    (
        "set_once",
        lambda ph: ph.set_once(distinct_id="u1", properties={"first_seen": "2025-01-02"}),
        "$set_once",
        "u1",
        {"$set_once": {"first_seen": "2025-01-02"}},
    ),
    (
        "alias-keywords",
        lambda ph: ph.alias(previous_id="anon-1", distinct_id="user-1"),
        "$create_alias",
        "anon-1",
        {"distinct_id": "anon-1", "alias": "user-1"},
    ),
    (
        "alias-positional",
        lambda ph: ph.alias("anon-1", "user-1", None, None, True),
        "$create_alias",
        "anon-1",
        {"distinct_id": "anon-1", "alias": "user-1"},
    ),
    (
        "group_identify",
        lambda ph: ph.group_identify("company", "acme", {"name": "Acme", "employees": 11}),
        "$groupidentify",
        "$company_acme",
        {
            "$group_type": "company",
            "$group_key": "acme",
            "$group_set": {"name": "Acme", "employees": 11},
        },
    ),
    (
        "group_identify-positional-all",
        lambda ph: ph.group_identify("company", 42, {"seats": 5}, TS, GIVEN_UUID, True, "u1"),
        "$groupidentify",
        "u1",
        {"$group_type": "company", "$group_key": "42", "$group_set": {"seats": 5}},
    ),
]


FIXED_FORMS = {"capture-keywords", "group_identify-positional-all"}  # pass uuid= and TS


@pytest.mark.parametrize("target", ["client", "module"])
@pytest.mark.parametrize(
    ("form", "call", "event", "distinct_id", "properties"),
    CALL_FORMS,
    ids=[c[0] for c in CALL_FORMS],
)
@pytest.mark.usefixtures("module_settings")
def test_posthog_call_forms_produce_posthog_bodies(
    target: str,
    form: str,
    call: Callable[[Any], object],
    event: str,
    distinct_id: str,
    properties: dict[str, Any],
    make_client: Callable[..., Client],
    endpoint: LocalEndpoint,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if target == "module":  # a Posthog: no $is_server, to compare with a Client
        monkeypatch.setattr(spoolpost, "is_server", False)
    ph: Client | ModuleType = make_client() if target == "client" else spoolpost
    returned = call(ph)
    ph.flush(timeout=10) if isinstance(ph, Client) else ph.flush(timeout_seconds=10)

    [request] = endpoint.requests
    assert set(request.json) == ENVELOPE
    assert request.json["api_key"] == API_KEY
    [sent] = request.json["batch"]
    assert list(sent) == EVENT_FIELDS
    assert sent["uuid"] == returned
    assert sent["event"] == event
    if target == "module" and distinct_id.startswith("$company"):  # posthog-python 7.x's
        assert str(uuid.UUID(sent["distinct_id"])) == sent["distinct_id"]  # random default
    else:
        assert sent["distinct_id"] == distinct_id
    assert {k: v for k, v in sent["properties"].items() if k not in OURS} == properties
    assert sent["properties"]["$geoip_disable"] is True
    if form in FIXED_FORMS:
        assert (sent["uuid"], sent["timestamp"]) == (GIVEN_UUID, "2025-01-02T03:04:05Z")
    else:
        assert sent["timestamp"] <= request.json["sent_at"]


# -- keyword-only arguments, as in posthog-python 7.x ------------------------------------------

#: The arguments each method takes by position, from posthog-python 7.x (``capture(self,
#: event, **kwargs)``, ``set(self, **kwargs)``, ``set_once(self, **kwargs)``; ``alias``
#: and ``group_identify`` positional). posthog-python 7.x has no ``identify``; its
#: earlier one had ``context`` third, so only its first two are positional here.
POSITIONAL = {
    "capture": ["event"],
    "identify": ["distinct_id", "properties"],
    "set": [],
    "set_once": [],
    "alias": ["previous_id", "distinct_id", "timestamp", "uuid", "disable_geoip"],
    "group_identify": [
        "group_type",
        "group_key",
        "properties",
        "timestamp",
        "uuid",
        "disable_geoip",
        "distinct_id",
    ],
}


@pytest.mark.parametrize("name", sorted(POSITIONAL))
def test_signatures_take_posthog_pythons_positional_arguments_only(name: str) -> None:
    for function, skip in ((getattr(Client, name), 1), (getattr(spoolpost, name), 0)):
        parameters = list(inspect.signature(function).parameters.values())[skip:]
        positional = [p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert positional == POSITIONAL[name]
        assert all(p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in parameters)


# (id, an old positional call, the TypeError it raises)
OLD_CALLS: list[tuple[str, Callable[[Any], object], str]] = [
    (
        "capture-distinct-id-first",
        lambda ph: ph.capture("user-1", "signed_up"),
        "Client.capture() takes 2 positional arguments but 3 were given",
    ),
    (
        "capture-properties-positional",
        lambda ph: ph.capture("signed_up", "user-1", {"plan": "pro"}),
        "Client.capture() takes 2 positional arguments but 4 were given",
    ),
    (
        "identify-context-third",
        lambda ph: ph.identify("user-1", {"a": 1}, {"ip": "1.2.3.4"}),
        "Client.identify() takes from 2 to 3 positional arguments but 4 were given",
    ),
    (
        "set-positional",
        lambda ph: ph.set("user-1", {"plan": "pro"}),
        "Client.set() takes 1 positional argument but 3 were given",
    ),
    (
        "set_once-positional",
        lambda ph: ph.set_once("user-1", {"plan": "pro"}),
        "Client.set_once() takes 1 positional argument but 3 were given",
    ),
]


@pytest.mark.parametrize("target", ["client", "module"])
@pytest.mark.parametrize(
    ("call", "message"), [c[1:] for c in OLD_CALLS], ids=[c[0] for c in OLD_CALLS]
)
@pytest.mark.usefixtures("module_settings")
def test_old_positional_call_forms_raise_type_error_and_send_nothing(
    target: str,
    call: Callable[[Any], object],
    message: str,
    make_client: Callable[..., Client],
    endpoint: LocalEndpoint,
    spool_path: Path,
) -> None:
    ph: Client | ModuleType = make_client() if target == "client" else spoolpost
    with pytest.raises(TypeError) as caught:
        call(ph)

    # the module's functions are Posthog's methods, defined by its CaptureCalls base
    assert str(caught.value) == message.replace("Client.", f"{type(ph).__name__}.").replace(
        "SettingsModule.", "CaptureCalls."
    )
    ph.flush(timeout=10) if isinstance(ph, Client) else ph.flush(timeout_seconds=10)
    assert endpoint.requests == []


# -- compared with posthog-python's own requests -------------------------------------------------

POSTHOG_CONTEXT = {
    "$lib",
    "$lib_version",
    "$geoip_disable",
    "$is_server",
    "$python_runtime",
    "$python_version",
    "$os",
    "$os_version",
    "$os_distro",
}


def as_ingested(event: dict[str, Any]) -> dict[str, Any]:
    """An event as PostHog's ingestion reads it: a top-level ``$set``/``$set_once``
    (posthog-python's habit) merged into the properties; library context left out."""
    properties = {k: v for k, v in event["properties"].items() if k not in POSTHOG_CONTEXT}
    for key in ("$set", "$set_once"):
        if key in event:
            properties[key] = event[key]
    return {
        "uuid": event["uuid"],
        "event": event["event"],
        "distinct_id": event["distinct_id"],
        "properties": properties,
        "timestamp": datetime.fromisoformat(event["timestamp"]),
    }


def test_bodies_match_posthog_pythons_own_requests(
    make_client: Callable[..., Client], endpoint: LocalEndpoint
) -> None:
    posthog = pytest.importorskip("posthog")
    # Every call with a fixed uuid and timestamp, and an explicit group distinct_id
    # (posthog-python now makes a random one), so both libraries must agree exactly.
    calls: list[Callable[[Any], object]] = [
        lambda ph: ph.capture(
            "signed_up",
            distinct_id="u1",
            properties={"plan": "pro", "n": 3},
            groups={"company": "acme"},
            timestamp=TS,
            uuid=GIVEN_UUID,
        ),
        lambda ph: ph.set(
            distinct_id="u1", properties={"plan": "pro"}, timestamp=TS, uuid=GIVEN_UUID
        ),
        lambda ph: ph.set_once(
            distinct_id="u1", properties={"first": "x"}, timestamp=TS, uuid=GIVEN_UUID
        ),
        lambda ph: ph.alias(
            previous_id="anon-1", distinct_id="user-1", timestamp=TS, uuid=GIVEN_UUID
        ),
        lambda ph: ph.group_identify(
            "company", "acme", {"seats": 5}, timestamp=TS, uuid=GIVEN_UUID, distinct_id="u1"
        ),
    ]
    with LocalEndpoint() as theirs_endpoint:
        theirs = posthog.Posthog(
            API_KEY,
            host=theirs_endpoint.url,
            enable_local_evaluation=False,
            capture_mode="v0",  # POST /batch/, the wire format spoolpost speaks
        )
        ours = make_client()
        for call in calls:
            call(theirs)
            call(ours)
        theirs.flush()
        theirs.shutdown()
        ours.flush(timeout=10)
        their_requests: list[RecordedRequest] = theirs_endpoint.requests

    our_requests = endpoint.requests
    assert {r.path for r in their_requests} == {r.path for r in our_requests} == {"/batch/"}
    assert {frozenset(r.json) for r in their_requests} == {frozenset(ENVELOPE)}
    assert {frozenset(r.json) for r in our_requests} == {frozenset(ENVELOPE)}
    their_events = [as_ingested(e) for r in their_requests for e in r.events]
    our_events = [as_ingested(e) for r in our_requests for e in r.events]
    assert our_events == their_events
    assert len(our_events) == len(calls)


# -- the module-level default client (a Posthog: see tests/test_module_api.py too) ------------


def default_client() -> Posthog | None:
    """``spoolpost.default_client`` read afresh (not narrowed by an earlier assert)."""
    return spoolpost.default_client


@pytest.mark.usefixtures("module_settings")
def test_module_client_is_made_on_first_use_and_flushes(endpoint: LocalEndpoint) -> None:
    nothing = spoolpost.flush()  # no default client yet: nothing to flush
    assert spoolpost.default_client is None

    first = spoolpost.capture("e", distinct_id="u1")
    made = default_client()
    second = spoolpost.identify("u1", {"a": 1})
    result = spoolpost.flush(timeout_seconds=10)

    assert nothing is None and result is None
    assert isinstance(made, Posthog) and default_client() is made
    assert endpoint.delivered_uuids() == [first, second]


@pytest.mark.usefixtures("module_settings")
def test_module_shutdown_forgets_the_client_and_a_capture_makes_a_new_one(
    endpoint: LocalEndpoint,
) -> None:
    spoolpost.capture("before", distinct_id="u")
    old = spoolpost.default_client
    assert old is not None

    result = spoolpost.shutdown()
    again = spoolpost.shutdown()
    spoolpost.capture("after", distinct_id="u")
    spoolpost.flush(timeout_seconds=10)

    assert result is None and again is None
    assert spoolpost.default_client is not None and spoolpost.default_client is not old
    assert old.capture("e", distinct_id="u") is None and old.lost == 1
    assert [e["event"] for r in endpoint.requests for e in r.events] == ["before", "after"]


@pytest.mark.usefixtures("module_settings")
def test_configure_replaces_the_default_client(
    endpoint: LocalEndpoint, spool_path: Path, tmp_path: Path
) -> None:
    spoolpost.capture("implicit", distinct_id="u")
    implicit = spoolpost.default_client

    made = spoolpost.configure(
        API_KEY, endpoint.url, spool=str(tmp_path / "other.spool"), historical_migration=True
    )
    spoolpost.capture("configured", distinct_id="u")
    spoolpost.flush(timeout_seconds=10)

    assert spoolpost.default_client is made and made is not implicit
    assert made.client is not None and made.client.spool.path == tmp_path / "other.spool"
    assert implicit is not None and implicit.capture("e", distinct_id="u") is None
    by_event = {e["event"]: r.json for r in endpoint.requests for e in r.events}
    assert by_event["implicit"]["historical_migration"] is False  # flushed as it shut down
    assert by_event["configured"]["historical_migration"] is True


@pytest.mark.usefixtures("module_settings")
@pytest.mark.parametrize(
    "call",
    [
        lambda: spoolpost.capture("e", distinct_id="u"),
        lambda: spoolpost.identify("u"),
        lambda: spoolpost.group_identify("company", "acme"),
        lambda: spoolpost.configure(),
    ],
    ids=["capture", "identify", "group_identify", "configure"],
)
@pytest.mark.parametrize("key", [None, "", "   "], ids=["none", "empty", "blank"])
def test_a_missing_api_key_disables_the_module_client_with_one_warning(
    monkeypatch: pytest.MonkeyPatch,
    call: Callable[[], object],
    key: str | None,
    caplog: pytest.LogCaptureFixture,
    spool_path: Path,
) -> None:
    monkeypatch.setattr(spoolpost, "api_key", key)

    with caplog.at_level(logging.WARNING, logger="spoolpost"):
        result = call()
        again = spoolpost.capture("e", distinct_id="u")

    assert again is None and (result is None or isinstance(result, Posthog))
    made = spoolpost.default_client
    assert made is not None and made.disabled and made.client is None
    assert [r.getMessage() for r in caplog.records] == [
        "spoolpost.api_key is not set: the module-level client is disabled and "
        "capture calls store nothing (set spoolpost.api_key or SPOOLPOST_API_KEY)"
    ]
    assert not spool_path.exists()


@pytest.mark.usefixtures("module_settings")
def test_project_api_key_is_read_too(
    monkeypatch: pytest.MonkeyPatch, endpoint: LocalEndpoint
) -> None:
    monkeypatch.setattr(spoolpost, "api_key", "phc_legacy")
    monkeypatch.setattr(spoolpost, "project_api_key", "phc_project")  # wins, as in posthog

    spoolpost.capture("e", distinct_id="u")
    spoolpost.flush(timeout_seconds=10)

    assert [r.json["api_key"] for r in endpoint.requests] == ["phc_project"]


@pytest.mark.usefixtures("module_settings")
def test_disabled_module_without_a_key_captures_nothing(
    monkeypatch: pytest.MonkeyPatch, spool_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(spoolpost, "api_key", None)
    monkeypatch.setattr(spoolpost, "disabled", True)

    with caplog.at_level(logging.DEBUG, logger="spoolpost"):
        assert spoolpost.capture("e", distinct_id="u") is None
        assert spoolpost.alias("a", "b") is None
        assert spoolpost.flush() is None
    assert not spool_path.exists()
    assert caplog.records == []


@pytest.mark.usefixtures("module_settings")
def test_module_settings_reach_the_client(
    monkeypatch: pytest.MonkeyPatch, endpoint: LocalEndpoint
) -> None:
    def scrub(event: dict[str, Any]) -> dict[str, Any]:
        event["properties"].pop("email")
        return event

    monkeypatch.setattr(spoolpost, "before_send", scrub)
    monkeypatch.setattr(spoolpost, "disable_geoip", False)
    monkeypatch.setattr(spoolpost, "is_server", False)
    monkeypatch.setattr(spoolpost, "super_properties", {"app": "shop"})
    # No batch is ever due by age (flush_interval): only flush_at and flush() send.
    options = {"flush_at": 2, "max_batch_size": 2, "flush_interval": 3600.0}
    monkeypatch.setattr(spoolpost, "client_options", options)

    def capture(i: int) -> None:
        spoolpost.capture("e", distinct_id="u", properties={"email": "a@example.com", "i": i})

    capture(0)
    capture(1)
    # flush_at=2 reached the client: these two go without a flush.
    assert endpoint.wait_for_requests(1)
    for i in range(2, 5):
        capture(i)
    spoolpost.flush(timeout_seconds=10)

    # max_batch_size=2: events 2..4 go as [2, 3] and [4], whether the dispatcher
    # claims 2 and 3 before 4 is captured or all three at once (each batch holds
    # at most 2, and a batch is due only once 2 are waiting, or at the flush).
    # Two senders may POST those two in either order.
    batches = [[e["properties"]["i"] for e in r.events] for r in endpoint.requests]
    assert batches[0] == [0, 1]
    assert sorted(batches[1:]) == [[2, 3], [4]]
    for event in (e for r in endpoint.requests for e in r.events):
        assert set(event["properties"]) == {
            "i",
            "app",
            "$lib",
            "$lib_version",
            "$python_runtime",
            "$python_version",
        }


@pytest.mark.usefixtures("module_settings")
def test_concurrent_first_use_makes_one_client(
    monkeypatch: pytest.MonkeyPatch, endpoint: LocalEndpoint
) -> None:
    barrier = threading.Barrier(8)
    captured: list[str | None] = []
    made: list[Posthog | None] = []

    def first_use() -> None:
        barrier.wait()
        captured.append(spoolpost.capture("e", distinct_id="u"))
        made.append(spoolpost.default_client)

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spoolpost.flush(timeout_seconds=10)

    assert len({id(m) for m in made}) == 1 and spoolpost.default_client is made[0]
    assert sorted(endpoint.delivered_uuids()) == sorted(str(u) for u in captured)


@pytest.mark.parametrize(
    "name", ["capture", "identify", "set", "set_once", "alias", "group_identify"]
)
def test_module_functions_are_the_posthog_methods(name: str) -> None:
    function = getattr(spoolpost, name)

    method = inspect.signature(getattr(Posthog, name))
    assert (
        list(inspect.signature(function).parameters.values())
        == list(method.parameters.values())[1:]
    )
    assert function.__name__ == name
    assert f"Posthog.{name}" in (function.__doc__ or "")
