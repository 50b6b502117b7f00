"""The v1 byte path: a stored event of the shape this version's capture writes is
spliced into its v1 shape from its bytes; it must decode to exactly what
to_v1_event (posthog-python's _to_v1_event) gives, and any body it cannot vouch
for takes the decoding path (see docs/architecture.md, "The v1 wire format")."""

from __future__ import annotations

import json
from typing import Any

import pytest

from spoolpost._version import __version__
from spoolpost.delivery.reshape import LIB, UnsendableEvents, splice_batch, splice_v1, v1_batch
from spoolpost.delivery.wire import PostHogV1, to_v1_event
from spoolpost.events import build
from spoolpost.events.encoding import encode_event

T0 = 1_700_000_000.0


def stored(event: str = "e", properties: dict[str, Any] | None = None, **kw: Any) -> bytes:
    """The bytes capture stores for this event."""
    return encode_event(build.capture_event(event, kw.pop("distinct_id", "u1"), properties, now=T0))


def lib_tail() -> str:
    return f'"$lib":"spoolpost","$lib_version":"{__version__}"'


#: Bodies the byte path takes: what capture writes.
SPLICED = {
    "no-properties": stored(),
    "flat": stored("page_view", {"$current_url": "https://x/", "plan": "pro", "n": 3, "t": False}),
    "non-ascii": stored("café ☕", {"city": "Zürich", "emoji": "😀"}, distinct_id="ü"),
    "dollar-keys": stored("e", {"$os": "Linux", "$set": 1, "$browser": "x"}),
    "lists": stored("e", {"tags": ["a", "b"], "nums": [1, 2.5, None]}),
}

#: Bodies it must leave to the decoding path (each still reshaped correctly).
DECODED = {
    "nested": stored("e", {"a": {"b": 1}}),
    "moved-key-as-value": stored("e", {"k": "$session_id"}),  # harmless, but not vouched for
    "brace-in-string": stored("e", {"url": "https://x/{id}"}),
    "session-and-window": stored("e", {"$session_id": "s1", "$window_id": "w1", "a": 1}),
    "options": stored("e", {"$process_person_profile": False, "$cookieless_mode": "true"}),
    "escaped-event-name": stored('say "hi"', {"a": 1}),
    "escaped-property": stored("e", {"q": 'a "quoted" \\ value', "ctl": "\x01"}),
    "top-level-set": encode_event(build.identify_event("u1", {"name": "x"}, now=T0)),
    "older-version": stored("e", {"a": 1}).replace(
        f'"$lib_version":"{__version__}"'.encode(), b'"$lib_version":"0.0.1"'
    ),
    "lib-overridden-first": (
        b'{"uuid":"u","event":"e","distinct_id":"d","properties":{"$lib":"other","a":1,'
        + lib_tail().encode()
        + b'},"timestamp":"2023-11-14T22:13:20Z"}'
    ),
    "extra-top-level-key": (
        b'{"uuid":"u","event":"e","distinct_id":"d","properties":{"a":1},"zzz":{'
        + lib_tail().encode()
        + b'},"timestamp":"2023-11-14T22:13:20Z"}'
    ),
    "other-key-order": (
        b'{"event":"e","uuid":"u","distinct_id":"d","properties":{"a":1,'
        + lib_tail().encode()
        + b'},"timestamp":"2023-11-14T22:13:20Z"}'
    ),
    "head-key-renamed": (
        b'{"uuid":"u","name":"e","distinct_id":"d","event":"x","properties":{'
        + lib_tail().encode()
        + b'},"timestamp":"t"}'
    ),
    "pretty-printed": json.dumps(json.loads(stored("e", {"a": 1})), indent=1).encode(),
}


def test_the_lib_name_is_the_one_capture_writes() -> None:
    assert LIB == build.LIB


@pytest.mark.parametrize("name", sorted(SPLICED))
def test_what_capture_writes_is_spliced_and_decodes_as_to_v1_event(name: str) -> None:
    body = SPLICED[name]
    spliced = splice_v1(body)
    assert spliced is not None
    assert json.loads(spliced) == to_v1_event(json.loads(body))


@pytest.mark.parametrize("name", sorted(DECODED))
def test_any_other_body_is_decoded_and_reshaped(name: str) -> None:
    body = DECODED[name]
    assert splice_v1(body) is None
    assert json.loads(v1_batch([body])) == to_v1_event(json.loads(body))


def test_a_mixed_request_body_is_the_reshaped_batch() -> None:
    bodies = [*SPLICED.values(), *DECODED.values()]
    _, raw = PostHogV1(historical_migration=True).request("phc_k", bodies, T0, None)
    sent = json.loads(raw)
    assert sent["batch"] == [to_v1_event(json.loads(b)) for b in bodies]
    assert sent["historical_migration"] is True and set(sent) == {
        "created_at",
        "batch",
        "historical_migration",
    }


def test_batch_totals_are_not_taken_for_a_body_that_only_balances_another() -> None:
    # Between them the two bodies hold two of each brace and one $lib each, but
    # the first is not an event and the second has a nested object: neither is
    # spliced, and the first is named as unsendable.
    odd = b'{"$lib":1,"$lib_version":2}'
    nested = stored("e", {"a": {"b": 1}})
    assert splice_batch([odd, nested]) is None
    assert splice_v1(odd) is None and splice_v1(nested) is None
    with pytest.raises(UnsendableEvents) as caught:
        v1_batch([odd, nested])
    assert list(caught.value.bad) == [0]


def test_a_batch_of_what_capture_writes_is_spliced_whole() -> None:
    bodies = list(SPLICED.values()) * 3
    spliced = splice_batch(bodies)
    assert spliced is not None
    assert json.loads(b"[" + spliced + b"]") == [to_v1_event(json.loads(b)) for b in bodies]
    assert spliced == b",".join(s for s in map(splice_v1, bodies) if s is not None)


def test_one_odd_body_sends_its_batch_body_by_body() -> None:
    bodies = [*SPLICED.values(), DECODED["nested"], *SPLICED.values()]
    assert splice_batch(bodies) is None
    batch = json.loads(b"[" + v1_batch(bodies) + b"]")
    assert batch == [to_v1_event(json.loads(b)) for b in bodies]


@pytest.mark.parametrize(
    "body",
    [
        b'{"uuid":"u","event":"e","distinct_id":"d"7,"properties":{"a":1,'
        + lib_tail().encode()
        + b'},"timestamp":"t"}',
        b'{"uuid":"u","event":"e","distinct_id":"d","properties":{"a":1,'
        + lib_tail().encode()
        + b'},"timestamp":"t","x":"y"}',
        b'{"uuid":"u","event":"e","distinct_id":"d","properties":{"a":1},"b":{'
        + lib_tail()[1:].encode()
        + b'},"timestamp":"t"}',
    ],
    ids=["junk-after-head", "key-after-timestamp", "object-after-properties"],
)
def test_a_layout_that_only_looks_alike_is_not_spliced(body: bytes) -> None:
    assert splice_v1(body) is None
    assert splice_batch([body, SPLICED["flat"]]) is None
