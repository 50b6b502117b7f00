"""encoding: uuid7, format_timestamp and encode_event (fast and slow path)."""

from __future__ import annotations

import base64
import dataclasses
import enum
import itertools
import json
import math
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from datetime import time as dtime
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import time_machine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spoolpost.errors import EncodingError
from spoolpost.events.encoding import _encode_fast, _encode_slow, encode_event
from spoolpost.events.ids import uuid7, uuid7_str
from spoolpost.events.timestamps import format_timestamp

# POSIX TZ strings need no tz database: "EST5" is UTC-5, "IST-5:30" is UTC+05:30.
NEW_YORK = "EST5"
KOLKATA = "IST-5:30"

UUID4 = uuid.UUID("3f2b8c9e-6a1d-4e5f-9b7c-2d4e6f8a0b1c")
IST = timezone(timedelta(hours=5, minutes=30))


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1


class Nested(enum.Enum):
    PRICE = Decimal("1.10")
    COLOR = Color.GREEN


@dataclasses.dataclass
class Owner:
    name: str
    since: date


@dataclasses.dataclass
class Item:
    sku: str
    price: Decimal
    tags: set[str]
    owner: Owner


def encoded_property(value: Any) -> str:
    return encode_event({"properties": {"v": value}}).decode("utf-8")


def wrapped(expected_json: str) -> str:
    return '{"properties":{"v":' + expected_json + "}}"


# ------------------------------------------------------------------ encode_event

ENCODE_CASES: list[tuple[str, Any, str]] = [
    ("none", None, "null"),
    ("str-non-ascii-kept", "café ✓", '"café ✓"'),
    ("nested-plain", {"a": [1, 2.5, True]}, '{"a":[1,2.5,true]}'),
    ("aware-datetime", datetime(2025, 1, 2, 8, 34, 5, tzinfo=IST), '"2025-01-02T03:04:05Z"'),
    (
        "aware-datetime-micros",
        datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
        '"2025-01-02T03:04:05.123456Z"',
    ),
    ("date", date(2025, 1, 2), '"2025-01-02T00:00:00Z"'),
    ("time", dtime(1, 2, 3, 400000), '"01:02:03.400000"'),
    ("decimal-1.10", Decimal("1.10"), "1.1"),
    ("decimal-0.1", Decimal("0.1"), "0.1"),
    ("decimal-integral", Decimal("42.000"), "42"),
    ("decimal-exponent", Decimal("1E+2"), "100"),
    ("decimal-too-precise", Decimal("12345678901234567890.123"), '"12345678901234567890.123"'),
    ("decimal-beyond-int64", Decimal(2**70), '"1180591620717411303424"'),
    ("decimal-nan", Decimal("NaN"), "null"),
    ("decimal-infinity", Decimal("-Infinity"), "null"),
    ("uuid4", UUID4, '"3f2b8c9e-6a1d-4e5f-9b7c-2d4e6f8a0b1c"'),
    ("enum", Color.RED, '"red"'),
    ("int-enum", Level.LOW, "1"),
    ("enum-decimal-value", Nested.PRICE, "1.1"),
    ("enum-enum-value", Nested.COLOR, '"green"'),
    ("set", {2, 1}, "[1,2]"),
    ("frozenset", frozenset({"b", "a"}), '["a","b"]'),
    ("tuple", (1, "a", None), '[1,"a",null]'),
    ("bytes", b"\xff", '"/w=="'),
    ("bytearray", bytearray(b"hi"), '"aGk="'),
    ("memoryview", memoryview(b"hi"), '"aGk="'),
    (
        "dataclass",
        Item("A-1", Decimal("9.99"), {"y", "x"}, Owner("ann", date(2024, 2, 29))),
        '{"sku":"A-1","price":9.99,"tags":["x","y"],'
        '"owner":{"name":"ann","since":"2024-02-29T00:00:00Z"}}',
    ),
    ("mapping", MappingProxyType({"a": 1}), '{"a":1}'),
    ("nan", math.nan, "null"),
    ("inf", math.inf, "null"),
    ("-inf", -math.inf, "null"),
    ("nan-in-list", [1.0, math.nan], "[1.0,null]"),
    ("lone-surrogate", "\ud800x", '"\ufffdx"'),
    ("lone-low-surrogates", "a\udc80\udcffb", '"a\ufffd\ufffdb"'),
    ("surrogate-pair-joined", "\ud83d\ude00", '"😀"'),
    ("surrogate-key", {"\ud800x": 1}, '{"\ufffdx":1}'),
    ("int-key", {1: "a"}, '{"1":"a"}'),
    ("bool-key", {True: "a"}, '{"true":"a"}'),
    ("none-key", {None: "a"}, '{"null":"a"}'),
    ("float-key", {2.5: "a"}, '{"2.5":"a"}'),
    ("nan-key", {math.nan: "a"}, '{"NaN":"a"}'),
    ("uuid-key", {UUID4: 1}, '{"3f2b8c9e-6a1d-4e5f-9b7c-2d4e6f8a0b1c":1}'),
    ("enum-key", {Color.RED: 1}, '{"red":1}'),
    ("date-key", {date(2025, 1, 2): 1}, '{"2025-01-02T00:00:00Z":1}'),
    ("int-and-str-keys-both-kept", {1: "a", "1": "b"}, '{"1":"a","1":"b"}'),
]


@pytest.mark.parametrize(
    ("value", "expected"), [c[1:] for c in ENCODE_CASES], ids=[c[0] for c in ENCODE_CASES]
)
def test_encode_value(value: Any, expected: str) -> None:
    event = {"properties": {"v": value}}
    assert encode_event(event).decode("utf-8") == wrapped(expected)
    assert _encode_slow(event).decode("utf-8") == wrapped(expected)


@pytest.mark.parametrize("tz", [NEW_YORK, KOLKATA])
def test_naive_datetime_of_the_past_is_utc(set_tz: Callable[[str], None], tz: str) -> None:
    set_tz(tz)  # posthog-python's rule: a naive datetime not made just now is UTC
    naive = datetime(2025, 1, 2, 3, 4, 5)
    aware = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert encoded_property(naive) == wrapped('"2025-01-02T03:04:05Z"')
    assert encoded_property(aware) == wrapped('"2025-01-02T03:04:05Z"')  # TZ plays no part


def test_numpy_values() -> None:
    np = pytest.importorskip("numpy")
    cases = [
        (np.int64(7), "7"),
        (np.float32(0.5), "0.5"),
        (np.float64(0.1), "0.1"),
        (np.bool_(True), "true"),
        (np.array([[1, 2], [3, 4]]), "[[1,2],[3,4]]"),
        (np.float64("nan"), "null"),
        (np.array([1.5, np.nan]), "[1.5,null]"),
    ]
    for value, expected in cases:
        assert encoded_property(value) == wrapped(expected), value


def test_encoding_never_imports_numpy() -> None:
    # Load spoolpost.events.encoding (without the package __init__) in a fresh interpreter.
    package_dir = str(Path(__file__).resolve().parents[1] / "spoolpost")
    code = (
        "import sys, types\n"
        "pkg = types.ModuleType('spoolpost'); pkg.__path__ = [sys.argv[1]]\n"
        "sys.modules['spoolpost'] = pkg\n"
        "import spoolpost.events.encoding as e\n"
        "e.encode_event({'properties': {'s': {1, 2}, 'b': b'x', 'n': float('nan')}})\n"
        "assert 'numpy' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code, package_dir], check=True)


def test_unsortable_set_keeps_iteration_order() -> None:
    value = {1, "a"}
    decoded = json.loads(encoded_property(value))["properties"]["v"]
    assert decoded == list(value)


def test_caller_event_is_not_modified() -> None:
    properties: dict[str, Any] = {"s": "\ud800", "n": [math.nan]}
    encode_event({"properties": properties})
    assert properties["s"] == "\ud800"
    assert math.isnan(properties["n"][0])


class Opaque:
    def __repr__(self) -> str:
        return "Opaque()"


class Touchy:
    """Orders by raising something other than TypeError."""

    def __lt__(self, other: object) -> bool:
        raise RuntimeError("no ordering today")


def _recursive_list() -> list[Any]:
    items: list[Any] = [1]
    items.append(items)
    return items


def _recursive_dict() -> dict[str, Any]:
    d: dict[str, Any] = {"a": 1}
    d["self"] = d
    return d


@dataclasses.dataclass
class Holder:
    owner: Any


class BadEnum(enum.Enum):
    X = Opaque()


def _deep_with_nan(depth: int) -> Any:
    value: Any = math.nan
    for _ in range(depth):
        value = [value]
    return value


ERROR_CASES: list[tuple[str, Callable[[], dict[str, Any]], str, str]] = [
    (
        "lock",
        lambda: {"cart": [0, 1, 2, {"price": threading.Lock()}]},
        "properties.cart[3].price",
        "_thread.lock",
    ),
    ("object-in-set", lambda: {"tags": {Opaque()}}, "properties.tags[0]", "Opaque"),
    ("key-with-space", lambda: {"a b": Opaque()}, 'properties["a b"]', "Opaque"),
    ("dollar-key", lambda: {"$set": {"x": Opaque()}}, "properties.$set.x", "Opaque"),
    ("int-key", lambda: {"d": {7: Opaque()}}, 'properties.d["7"]', "Opaque"),
    ("tuple-key", lambda: {"d": {(1, 2): 1}}, "properties.d[(1, 2)]", "key of type tuple"),
    ("object-key", lambda: {"d": {Opaque(): 1}}, "properties.d[Opaque()]", "key of type"),
    (
        "datetime-out-of-range",
        lambda: {"t": datetime(1, 1, 1, tzinfo=IST)},
        "properties.t",
        "out of range in UTC",
    ),
    (
        "failing-conversion",
        lambda: {"s": {Touchy(), Touchy()}},
        "properties.s",
        "no ordering today",
    ),
    ("dataclass-field", lambda: {"h": Holder(Opaque())}, "properties.h.owner", "Opaque"),
    ("enum-value", lambda: {"e": BadEnum.X}, "properties.e", "Opaque"),
    ("recursive-list", lambda: {"l": _recursive_list()}, "properties.l[1]", "circular reference"),
    ("recursive-dict", lambda: {"d": _recursive_dict()}, "properties.d.self", "circular reference"),
    ("too-deep", lambda: {"x": _deep_with_nan(600)}, "properties.x" + "[0]" * 254, "256 levels"),
    ("int-over-digit-limit", lambda: {"i": 10**5000}, "properties.i", "int of more than"),
    ("negative-int-in-list", lambda: {"l": [1, -(10**5000)]}, "properties.l[1]", "int of more"),
    (
        "int-key-over-digit-limit",
        lambda: {"d": {10**5000: 1}},
        "properties.d[<int of 16610 bits>]",
        "int of more than",
    ),
]


@pytest.mark.parametrize(
    ("make", "path", "message"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_encoding_error_names_the_path(
    make: Callable[[], dict[str, Any]], path: str, message: str
) -> None:
    with pytest.raises(EncodingError) as info:
        encode_event({"event": "e", "properties": make()})
    assert info.value.path == path
    assert message in str(info.value)
    assert path in str(info.value)


def test_encoding_error_for_open_file(tmp_path: Path) -> None:
    with open(tmp_path / "f.txt", "w") as f, pytest.raises(EncodingError) as info:
        encode_event({"properties": {"f": f}})
    assert info.value.path == "properties.f"
    assert "TextIOWrapper at properties.f" in str(info.value)


# ------------------------------------------------------------------------ uuid7


def test_uuid7_layout() -> None:
    u = uuid7()
    assert isinstance(u, uuid.UUID)
    assert u.version == 7
    assert u.variant == uuid.RFC_4122


@pytest.mark.parametrize("now", [1_700_000_000.5, 1_600_000_000.25, 4_000_000_000.0])
def test_uuid7_time_prefix_is_now_in_ms(now: float) -> None:
    assert uuid7(now).int >> 80 == int(now * 1000)
    assert uuid.UUID(uuid7_str(now)).int >> 80 == int(now * 1000)


def test_uuid7_str_is_canonical() -> None:
    text = uuid7_str()
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", text
    )
    assert str(uuid.UUID(text)) == text


def test_uuid7_unique() -> None:
    assert len({uuid7() for _ in range(10_000)}) == 10_000
    assert len({uuid7_str() for _ in range(10_000)}) == 10_000


def test_uuid7_sortable_over_sequential_calls() -> None:
    values = [uuid7_str() for _ in range(2_000)]
    assert all(a < b for a, b in itertools.pairwise(values))


def test_uuid7_monotonic_within_one_millisecond_past_counter_overflow() -> None:
    now = 1_800_000_000.0
    values = [uuid7(now).int for _ in range(5_000)]  # > 4096: the counter must borrow
    assert all(a < b for a, b in itertools.pairwise(values))
    assert values[0] >> 80 == int(now * 1000)


def test_uuid7_clock_steps_back() -> None:
    now = 1_900_000_000.0
    first = uuid7(now)
    assert uuid7(now - 1.0) > first  # a small step back keeps the order
    assert uuid7(now - 3600.0).int >> 80 == int((now - 3600.0) * 1000)  # a big one resets


def test_uuid7_unique_across_threads() -> None:
    results: list[list[str]] = [[] for _ in range(4)]
    barrier = threading.Barrier(4)

    def work(out: list[str]) -> None:
        barrier.wait()
        out.extend(uuid7_str(1_950_000_000.0) for _ in range(2_000))

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({u for out in results for u in out}) == 8_000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_uuid7_forked_child_does_not_repeat_parent() -> None:
    now = 1_990_000_000.0
    uuid7(now)  # parent state: this millisecond, a random pool
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the same millisecond and counter step as the parent below
        try:
            os.write(write_fd, uuid7_str(now).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    parent = uuid7_str(now)
    with os.fdopen(read_fd, "rb") as pipe:
        child = pipe.read().decode()
    os.waitpid(pid, 0)
    assert len(child) == 36
    assert child != parent


# ------------------------------------------------------------- format_timestamp

NOW = 1735787045.0  # 2025-01-02T03:04:05Z

TIMESTAMP_CASES: list[tuple[str, Any, float, str]] = [
    ("none", None, NOW, "2025-01-02T03:04:05Z"),
    ("none-micros", None, NOW + 0.123456, "2025-01-02T03:04:05.123456Z"),
    ("none-rounds-up", None, NOW + 0.9999999, "2025-01-02T03:04:06Z"),
    ("offset", "2025-01-02T08:34:05+05:30", 0.0, "2025-01-02T03:04:05Z"),
    ("z", "2025-01-02T03:04:05Z", 0.0, "2025-01-02T03:04:05Z"),
    ("z-fraction", "2025-01-02T03:04:05.5Z", 0.0, "2025-01-02T03:04:05.500000Z"),
    ("aware", datetime(2025, 1, 2, 8, 34, 5, 7, tzinfo=IST), 0.0, "2025-01-02T03:04:05.000007Z"),
    ("date", date(2025, 1, 2), 0.0, "2025-01-02T00:00:00Z"),
    ("date-str", "2025-01-02", 0.0, "2025-01-02T00:00:00Z"),
]


@pytest.mark.parametrize(
    ("value", "now", "expected"),
    [c[1:] for c in TIMESTAMP_CASES],
    ids=[c[0] for c in TIMESTAMP_CASES],
)
def test_format_timestamp(value: Any, now: float, expected: str) -> None:
    assert format_timestamp(value, now) == expected


@pytest.mark.parametrize("tz", [NEW_YORK, KOLKATA])
@pytest.mark.parametrize("value", [datetime(2025, 1, 2, 3, 4, 5), "2025-01-02T03:04:05"])
def test_format_timestamp_naive_of_the_past_is_utc(
    set_tz: Callable[[str], None], tz: str, value: Any
) -> None:
    set_tz(tz)  # posthog-python's rule (posthog.utils.guess_timezone)
    assert format_timestamp(value, 0.0) == "2025-01-02T03:04:05Z"


@pytest.mark.parametrize(
    ("tz", "expected"),
    [(NEW_YORK, "2025-01-02T08:04:05Z"), (KOLKATA, "2025-01-01T21:34:05Z")],
)
@pytest.mark.parametrize("behind", [0.0, 4.9])
def test_format_timestamp_naive_made_by_now_is_local_time(
    set_tz: Callable[[str], None], tz: str, expected: str, behind: float
) -> None:
    set_tz(tz)
    local_now = datetime(2025, 1, 2, 3, 4, 5)
    with time_machine.travel(local_now.astimezone() + timedelta(seconds=behind), tick=False):
        assert format_timestamp(local_now, 0.0) == expected
        # 5 s or more behind, or ahead of now: UTC, as in posthog-python
        assert format_timestamp(local_now - timedelta(seconds=5), 0.0) == "2025-01-02T03:04:00Z"
        assert format_timestamp(local_now + timedelta(seconds=10), 0.0) == "2025-01-02T03:04:15Z"


def test_naive_rule_matches_posthog_python(set_tz: Callable[[str], None]) -> None:
    guess_timezone = pytest.importorskip("posthog.utils").guess_timezone
    set_tz(NEW_YORK)
    for value in [datetime.now(), datetime(2025, 1, 2, 3, 4, 5), datetime.now() + timedelta(1)]:
        ours = format_timestamp(value, 0.0)
        theirs = guess_timezone(value)
        assert datetime.fromisoformat(ours) == theirs


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("yesterday", "invalid timestamp 'yesterday'"),
        ("2025-13-01T00:00:00Z", "invalid timestamp"),
        ("", "invalid timestamp ''"),
        (1735787045, "timestamp must be a datetime, a date, an ISO 8601 str or None, not int"),
    ],
)
def test_format_timestamp_rejects(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        format_timestamp(value, NOW)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=4_000_000_000_000_000))
def test_format_timestamp_now_matches_datetime_path(micros: int) -> None:
    now = micros / 1_000_000
    assert format_timestamp(None, now) == format_timestamp(datetime.fromtimestamp(now, UTC), 0)


# ------------------------------------------------- property test: fast == slow

BAD = object()  # marks, in an expected value, a value that cannot be encoded

Pair = tuple[Any, Any]  # (value to encode, what json.loads must give back)


def surrogate_model(text: str) -> str:
    """U+FFFD for each lone surrogate, a high+low pair read as UTF-16 would."""
    out: list[str] = []
    i = 0
    while i < len(text):
        c = ord(text[i])
        nxt = ord(text[i + 1]) if i + 1 < len(text) else 0
        if 0xD800 <= c <= 0xDBFF and 0xDC00 <= nxt <= 0xDFFF:
            out.append(chr(0x10000 + ((c - 0xD800) << 10) + (nxt - 0xDC00)))
            i += 2
            continue
        out.append("\ufffd" if 0xD800 <= c <= 0xDFFF else text[i])
        i += 1
    return "".join(out)


def decimal_model(d: Decimal) -> Any:
    if not d.is_finite():
        return None
    if -(2**63) <= d < 2**63 and d == d.to_integral_value():
        return int(d)
    if Decimal(repr(float(d))) == d:
        return float(d)
    return str(d)


def rfc3339_model(dt: datetime) -> str:
    offset = dt.utcoffset()
    assert offset is not None
    utc = dt.replace(tzinfo=None) - offset
    fraction = f".{utc.microsecond:06d}" if utc.microsecond else ""
    return utc.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"


def key_model(key: Any) -> str:
    if isinstance(key, str):
        return surrogate_model(key)
    if key is None or isinstance(key, bool):
        return json.dumps(key)
    return str(key)  # int, UUID


@dataclasses.dataclass
class Pairing:
    a: Any
    b: Any


def _surrogate_text(alphabet: st.SearchStrategy[str], max_size: int) -> st.SearchStrategy[str]:
    return st.lists(alphabet, max_size=max_size).map("".join)


text_alphabet = st.one_of(
    st.characters(), st.sampled_from(["\ud800", "\udbff", "\udc00", "\ude00"])
)
# Keys are kept injective under sanitizing (one kind of surrogate, no digits, no U+FFFD),
# so the error path can be looked up in the expected value.
key_alphabet = st.sampled_from(["a", "b", " ", "$", ".", '"', "é", "\ud800"])

nan_float = st.floats().map(lambda f: (f, f if math.isfinite(f) else None))


def _numpy_leaves() -> st.SearchStrategy[Pair]:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is in the dev environment
        return st.nothing()
    return st.one_of(
        st.integers(-(2**63), 2**63 - 1).map(lambda i: (np.int64(i), i)),
        nan_float.map(lambda p: (np.float64(p[0]), p[1])),
        st.floats(width=32).map(
            lambda f: (np.float32(f), float(np.float32(f)) if math.isfinite(f) else None)
        ),
        st.booleans().map(lambda b: (np.bool_(b), b)),
    )


leaves: st.SearchStrategy[Pair] = st.one_of(
    st.none().map(lambda v: (v, v)),
    st.booleans().map(lambda v: (v, v)),
    st.integers(-(2**70), 2**70).map(lambda v: (v, v)),
    nan_float,
    _surrogate_text(text_alphabet, 6).map(lambda s: (s, surrogate_model(s))),
    st.decimals(places=None).map(lambda d: (d, decimal_model(d))),
    st.uuids().map(lambda u: (u, str(u))),
    st.datetimes(
        min_value=datetime(1900, 1, 1),
        max_value=datetime(2100, 1, 1),
        timezones=st.integers(-1439, 1439).map(lambda m: timezone(timedelta(minutes=m))),
    ).map(lambda dt: (dt, rfc3339_model(dt))),
    st.dates().map(lambda d: (d, d.isoformat() + "T00:00:00Z")),
    st.sampled_from([*Color, *Level, *Nested]).map(
        lambda m: (m, {Nested.PRICE: 1.1, Nested.COLOR: "green"}.get(m, m.value))
    ),
    st.binary(max_size=6).map(lambda b: (b, base64.b64encode(b).decode())),
    st.frozensets(st.integers(-50, 50), max_size=5).map(lambda s: (set(s), sorted(s))),
    _numpy_leaves(),
    st.builds(Opaque).map(lambda o: (o, BAD)),
)

keys = st.one_of(
    _surrogate_text(key_alphabet, 4),
    st.integers(-1000, 1000),
    st.booleans(),
    st.none(),
    st.uuids(),
)


def _dict_pair(items: list[tuple[Any, Pair]]) -> Pair:
    value: dict[Any, Any] = {}
    expected_of: dict[Any, Any] = {}
    for key, (v, e) in items:
        value[key] = v
        expected_of[key] = e
    return value, {key_model(k): expected_of[k] for k in value}


def _extend(children: st.SearchStrategy[Pair]) -> st.SearchStrategy[Pair]:
    return st.one_of(
        st.lists(children, max_size=4).map(lambda ps: ([v for v, _ in ps], [e for _, e in ps])),
        st.lists(children, max_size=4).map(
            lambda ps: (tuple(v for v, _ in ps), [e for _, e in ps])
        ),
        st.lists(st.tuples(keys, children), max_size=4).map(_dict_pair),
        st.tuples(children, children).map(
            lambda ab: (Pairing(ab[0][0], ab[1][0]), {"a": ab[0][1], "b": ab[1][1]})
        ),
    )


values = st.recursive(leaves, _extend, max_leaves=12)


def contains_bad(expected: Any) -> bool:
    if expected is BAD:
        return True
    if isinstance(expected, dict):
        return any(contains_bad(v) for v in expected.values())
    if isinstance(expected, list):
        return any(contains_bad(v) for v in expected)
    return False


_SEGMENT = re.compile(r'\.?([^\W\d][\w$]*|\$[\w$]*)|\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]')


def resolve(root: Any, path: str) -> Any:
    """The node of ``root`` (an expected value) that an EncodingError path names."""
    node, pos = root, 0
    while pos < len(path):
        match = _SEGMENT.match(path, pos)
        assert match, f"unparsable path {path!r} at {pos}"
        name, index, quoted = match.groups()
        node = node[int(index)] if index is not None else node[name or json.loads(quoted)]
        pos = match.end()
    return node


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(keys, values), max_size=5).map(_dict_pair))
def test_encode_matches_model_and_fast_equals_slow(pair: Pair) -> None:
    value, expected = pair
    event = {"event": "e", "properties": value}
    if contains_bad(expected):
        with pytest.raises(EncodingError) as info:
            encode_event(event)
        assert info.value.path.startswith("properties")
        assert resolve({"properties": expected}, info.value.path) is BAD
        return
    encoded = encode_event(event)
    assert json.loads(encoded) == {"event": "e", "properties": expected}
    assert encoded == _encode_slow(event)
    try:
        fast = _encode_fast(event)
    except (TypeError, ValueError):
        return  # NaN, a surrogate or a key json rejects: only the slow path can do it
    assert fast == encoded


def test_an_int_over_the_digit_limit_raises_encoding_error_naming_its_path() -> None:
    limit = sys.get_int_max_str_digits()

    with pytest.raises(EncodingError) as info:
        encode_event({"event": "e", "properties": {"i": 10**limit}})

    assert info.value.path == "properties.i"
    assert str(info.value) == (
        f"cannot encode an int of more than {limit} digits (Python's int-to-str limit; "
        "send it as a str) at properties.i"
    )


def test_an_int_at_the_digit_limit_is_encoded_as_a_number() -> None:
    big = 10 ** (sys.get_int_max_str_digits() - 1)  # exactly the limit's digits

    assert encode_event({"i": big}) == b'{"i":' + str(big).encode() + b"}"
