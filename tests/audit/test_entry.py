"""Audit entries: canonical RFC 8785 leaf bytes, round trips, and what is refused."""

from __future__ import annotations

import json
from collections import UserDict, UserList
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from enum import IntEnum, StrEnum
from typing import Any

import msgspec
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.entry import (
    FORMAT_VERSION,
    MAX_DEPTH,
    MAX_SAFE_INTEGER,
    AuditEvent,
    EntryError,
    EntryKind,
    _canonical,
    _json_shape,
    decode_entry,
    encode_entry,
    event_to_payload,
    format_time,
    new_event_payload,
    parse_time,
    payload_to_event,
    struct_event_payload,
)

ORIGIN = "fairunlock.example.com/audit"
WHEN = datetime(2026, 11, 22, 3, 4, 5, 60, tzinfo=UTC)


def _event(**overrides: Any) -> AuditEvent:
    fields: dict[str, Any] = {
        "kind": EntryKind.VERIFICATION_ATTEMPT,
        "actor": "api-key:ops",
        "subject": "pA7x9Qm2Zr4Lw8Kc",
        "data": {"method": "totp", "outcome": "failure", "attempt": 3, "nested": {"b": 1, "a": []}},
        "time": WHEN,
    }
    fields.update(overrides)
    return AuditEvent(**fields)


def test_entry_is_canonical_json_with_sorted_keys_and_no_whitespace() -> None:
    line = encode_entry(41, ORIGIN, _event())
    assert line == (
        b'{"actor":"api-key:ops","data":{"attempt":3,"method":"totp",'
        b'"nested":{"a":[],"b":1},"outcome":"failure"},"index":41,'
        b'"kind":"verification_attempt","log":"fairunlock.example.com/audit",'
        b'"subject":"pA7x9Qm2Zr4Lw8Kc","time":"2026-11-22T03:04:05.000060Z","v":1}'
    )
    assert not line.endswith(b"\n")


def test_entry_has_exactly_the_documented_keys() -> None:
    obj = json.loads(encode_entry(0, ORIGIN, _event(subject=None)))
    assert sorted(obj) == sorted(["index", "log", "v", "time", "kind", "actor", "subject", "data"])
    assert obj["v"] == FORMAT_VERSION
    assert obj["subject"] is None


def test_non_ascii_is_utf8_not_escaped_and_controls_are_escaped() -> None:
    line = encode_entry(0, ORIGIN, _event(data={"note": "Zoë\u2028\x01\n"}))
    assert "Zoë\u2028".encode() in line
    assert b"\\u0001\\n" in line
    assert b"\n" not in line  # one entry is one line of the export


def test_decode_round_trips_and_returns_the_parsed_object() -> None:
    event = _event()
    line = encode_entry(7, ORIGIN, event)
    obj = decode_entry(line)
    assert obj["index"] == 7
    assert obj["log"] == ORIGIN
    assert obj["kind"] == "verification_attempt"
    assert obj["time"] == "2026-11-22T03:04:05.000060Z"
    assert obj["data"] == event.data


def test_payload_round_trips_to_an_equal_event() -> None:
    event = _event()
    payload = event_to_payload(event)
    assert b'"index"' not in payload
    assert b'"log"' not in payload
    assert payload_to_event(payload) == event


json_scalars = st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)


# hypothesis wants naive bounds and applies the timezone itself.
_NAIVE_MIN = datetime(1970, 1, 1)  # noqa: DTZ001
_NAIVE_MAX = datetime(9999, 1, 1)  # noqa: DTZ001
events = st.builds(
    AuditEvent,
    kind=st.sampled_from(EntryKind),
    actor=st.text(min_size=1),
    subject=st.none() | st.text(min_size=1),
    data=st.dictionaries(st.text(), json_values, max_size=5),
    time=st.datetimes(min_value=_NAIVE_MIN, max_value=_NAIVE_MAX, timezones=st.just(UTC)),
)


@given(event=events, index=st.integers(0, 2**53 - 1))
@settings(max_examples=200, deadline=None)
def test_any_valid_event_round_trips_through_entry_and_payload(
    event: AuditEvent, index: int
) -> None:
    line = encode_entry(index, ORIGIN, event)
    assert b"\n" not in line
    assert b"\r" not in line
    obj = decode_entry(line)
    assert obj["index"] == index
    assert payload_to_event(event_to_payload(event)) == event
    # Canonical: Python's sorted compact dump agrees for these value types (no floats).
    reparsed = json.loads(line)
    assert json.dumps(reparsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogatepass"
    ) == line or _has_non_bmp_key(reparsed)


def _has_non_bmp_key(value: Any) -> bool:
    """JCS sorts keys by UTF-16 code units and Python by code points; they differ only here."""
    if isinstance(value, dict):
        return any(
            any(ord(char) > 0xFFFF for char in key) or _has_non_bmp_key(item)
            for key, item in value.items()
        )
    if isinstance(value, list):
        return any(_has_non_bmp_key(item) for item in value)
    return False


@pytest.mark.parametrize(
    "data",
    [{"score": 0.5}, {"nested": {"deep": [1, 2.0]}}, {"nan": float("nan")}, {"inf": float("inf")}],
)
def test_floats_are_refused(data: dict[str, Any]) -> None:
    with pytest.raises(EntryError, match="float"):
        _event(data=data)


def test_floats_in_a_stored_payload_or_line_are_refused() -> None:
    payload = event_to_payload(_event()).replace(b'"attempt":3', b'"attempt":3.0')
    with pytest.raises(EntryError, match="float"):
        payload_to_event(payload)
    line = encode_entry(1, ORIGIN, _event()).replace(b'"attempt":3', b'"attempt":3.5')
    with pytest.raises(EntryError, match="float"):
        decode_entry(line)
    with pytest.raises(EntryError, match="NaN"):
        decode_entry(line.replace(b'"attempt":3.5', b'"attempt":NaN'))


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(EntryError, match="naive"):
        _event(time=datetime(2026, 11, 22, 3, 4, 5))  # noqa: DTZ001 - the point of the test


def test_other_timezones_are_normalised_to_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    event = _event(time=datetime(2026, 11, 22, 5, 4, 5, 60, tzinfo=plus_two))
    assert event.time.tzinfo is UTC
    assert format_time(event.time) == "2026-11-22T03:04:05.000060Z"
    assert encode_entry(0, ORIGIN, event) == encode_entry(0, ORIGIN, _event())


_OFFSETS = st.builds(
    timezone,
    st.timedeltas(
        min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
    ),
)


@given(
    st.datetimes(
        min_value=datetime(2, 1, 1),  # noqa: DTZ001 - hypothesis adds the zones
        max_value=datetime(9998, 12, 31),  # noqa: DTZ001
        timezones=_OFFSETS | st.just(UTC),
    )
    | st.datetimes(min_value=_NAIVE_MIN, max_value=_NAIVE_MAX, timezones=st.just(UTC)).map(
        lambda moment: moment.replace(microsecond=0)
    )
)
def test_time_text_is_utc_with_six_fraction_digits_whatever_the_zone(moment: datetime) -> None:
    # The form as the fields spell it (format_time cuts it from msgspec's text instead).
    utc = moment.astimezone(UTC)
    expected = (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T"
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}.{utc.microsecond:06d}Z"
    )
    assert format_time(moment) == expected
    assert parse_time(expected) == utc


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"kind": "made_up"}, "kind"),
        ({"actor": ""}, "actor"),
        ({"actor": 5}, "actor"),
        ({"subject": ""}, "subject"),
        ({"data": ["not", "an", "object"]}, "data"),
        ({"data": {"blob": b"bytes"}}, "bytes is not a JSON value"),
        ({"data": {"big": 2**53}}, "outside"),
        ({"data": {1: "non-string key"}}, "not a string"),
        ({"time": "2026-11-22T03:04:05Z"}, "time"),
    ],
)
def test_invalid_events_are_refused_naming_the_field(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(EntryError, match=message):
        _event(**overrides)


def test_kind_given_as_its_string_value_is_accepted() -> None:
    assert _event(kind="erasure").kind is EntryKind.ERASURE


def test_entry_kind_values_are_the_lower_case_names() -> None:
    assert {kind.value for kind in EntryKind} == {
        "decision",
        "challenge_started",
        "verification_attempt",
        "consent_granted",
        "consent_withdrawn",
        "enrolment",
        "review_opened",
        "review_action",
        "export",
        "erasure",
        "key_rotated",
        "account_changed",
    }
    assert all(kind.value == kind.name.lower() for kind in EntryKind)


@pytest.mark.parametrize(
    ("index", "origin"), [(-1, ORIGIN), (True, ORIGIN), (2**53, ORIGIN), (0, "")]
)
def test_encode_entry_rejects_bad_index_or_origin(index: int, origin: str) -> None:
    with pytest.raises(EntryError):
        encode_entry(index, origin, _event())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda line: line + b"\n", "line break"),
        (lambda line: line.replace(b'"v":1', b'"v":1\r'), "line break"),
        (lambda line: line[:-1], "not JSON"),
        (lambda line: b"[" + line + b"]", "not a JSON object"),
        (lambda line: line.replace(b'"index":5,', b""), "keys are"),
        (lambda line: line.replace(b'"v":1}', b'"v":1,"extra":0}'), "keys are"),
        (lambda line: line.replace(b'"v":1', b'"v":2'), "v is 2"),
        (lambda line: line.replace(b'"index":5', b'"index":-5'), "index"),
        (lambda line: line.replace(b'"index":5', b'"index":05'), "not JSON"),
        (lambda line: line.replace(b",", b", ", 1), "canonical"),
        (
            lambda line: line.replace(
                b'"time":"2026-11-22T03:04:05.000060Z"', b'"time":"yesterday"'
            ),
            "time",
        ),
        (lambda line: line.replace(b'"kind":"decision"', b'"kind":"party"'), "kind"),
        (lambda line: b"\xff" + line, "UTF-8"),
    ],
)
def test_decode_entry_names_what_is_wrong(mutate: Any, message: str) -> None:
    line = encode_entry(5, ORIGIN, _event(kind=EntryKind.DECISION))
    decode_entry(line)
    with pytest.raises(EntryError, match=message):
        decode_entry(mutate(line))


def test_payload_must_have_exactly_the_payload_keys() -> None:
    line = encode_entry(5, ORIGIN, _event())
    with pytest.raises(EntryError, match="keys are"):
        payload_to_event(line)


@given(event=events)
@settings(max_examples=200, deadline=None)
def test_an_event_built_and_encoded_in_one_step_is_the_same_payload(event: AuditEvent) -> None:
    assert new_event_payload(
        event.kind, event.actor, event.subject, event.data, event.time
    ) == event_to_payload(event)


@pytest.mark.parametrize(
    "data",
    [{"score": 0.5}, {"nested": {"deep": [1, 2.0]}}, {"big": 2**53}, {1: "int key"}, {"s": {1}}],
)
def test_an_event_built_and_encoded_in_one_step_is_still_checked(data: dict[Any, Any]) -> None:
    with pytest.raises(EntryError, match="data"):
        new_event_payload(EntryKind.DECISION, "actor", None, data, WHEN)


class _Level(StrEnum):
    HIGH = "high"


class _Count(IntEnum):
    TWO = 2


def _reference_shape(value: object, depth: int = 0) -> int:
    """The walk as first written (one isinstance chain, one call per value): the fast walk must
    agree with it on every value. 2: valid with ASCII keys, 1: valid, 0: invalid."""
    if value is None or isinstance(value, (bool, str)):
        return 2
    if depth > MAX_DEPTH:
        return 0
    if isinstance(value, int):
        return 2 if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else 0
    if isinstance(value, Mapping):
        shapes = [2]
        for key, item in value.items():
            if not isinstance(key, str):
                return 0
            shapes += [2 if key.isascii() else 1, _reference_shape(item, depth + 1)]
        return min(shapes)
    if isinstance(value, (list, tuple)):
        return min([2, *(_reference_shape(item, depth + 1) for item in value)])
    return 0


_any_scalar = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**53 - 1, 2**53, -(2**53) + 1, -(2**53), _Count.TWO])
    | st.floats()
    | st.text(max_size=3)
    | st.just(_Level.HIGH)
    | st.builds(bytes)
    | st.frozensets(st.integers(), max_size=2)
)
_any_values = st.recursive(
    _any_scalar,
    lambda children: (
        st.lists(children, max_size=3)
        | st.lists(children, max_size=3).map(tuple)
        | st.lists(children, max_size=3).map(UserList)
        | st.dictionaries(
            st.text(max_size=3) | st.sampled_from([1, None, _Level.HIGH, "é"]), children, max_size=3
        )
        | st.dictionaries(st.text(max_size=3), children, max_size=3).map(UserDict)
    ),
    max_leaves=12,
)


def _nested(depth: int, leaf: object) -> object:
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@given(value=_any_values)
@settings(max_examples=1000, deadline=None)
def test_the_fast_walk_agrees_with_the_plain_walk_on_any_value(value: object) -> None:
    assert _json_shape(value) == _reference_shape(value)


@pytest.mark.parametrize("depth", [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, MAX_DEPTH + 2])
@pytest.mark.parametrize("leaf", [1, "s", None, [], {}, 2**60, {"é": 1}])
def test_the_fast_walk_agrees_with_the_plain_walk_at_the_depth_limit(
    depth: int, leaf: object
) -> None:
    value = _nested(depth, leaf)
    assert _json_shape(value) == _reference_shape(value)


def test_data_mutated_after_construction_is_checked_again_when_encoding() -> None:
    data: dict[str, Any] = {"attempt": 1}
    event = _event(data=data)
    data["score"] = 0.5  # the caller's dict is shared with the frozen event
    with pytest.raises(EntryError, match="float"):
        encode_entry(0, ORIGIN, event)
    with pytest.raises(EntryError, match="float"):
        event_to_payload(event)


_text = st.text(
    st.characters(codec="utf-8") | st.sampled_from(['"', "\\", "\x00", "\x1f", "\x7f", "\u2028"])
)
_canonical_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | _text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=20,
)


@given(value=st.dictionaries(_text, _canonical_values, max_size=6))
@settings(max_examples=500, deadline=None)
def test_fast_canonical_json_is_byte_identical_to_rfc8785(value: dict[str, Any]) -> None:
    # The C encoder serves ASCII-keyed values on the hot path; rfc8785 is the reference.
    assert _canonical(value, "test") == rfc8785.dumps(value)


_ascii_keys = st.text(st.characters(max_codepoint=0x7F), max_size=6)
_ascii_keyed_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | _text,
    lambda children: (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(_ascii_keys, children, max_size=4)
    ),
    max_leaves=20,
)


@given(value=st.dictionaries(_ascii_keys, _ascii_keyed_values, max_size=6))
@settings(max_examples=1000, deadline=None)
def test_ascii_keyed_canonical_json_is_the_standard_librarys_and_rfc8785s(
    value: dict[str, Any],
) -> None:
    # The hot path's encoder (msgspec, sorted keys) against both references.
    stdlib = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8", "surrogatepass")
    try:
        canonical = _canonical(value, "test")
    except EntryError:  # a lone surrogate: not UTF-8, refused by every path
        with pytest.raises(rfc8785.CanonicalizationError):
            rfc8785.dumps(value)
        return
    assert canonical == stdlib == rfc8785.dumps(value)


def test_non_ascii_keys_sort_by_utf16_code_units_as_rfc8785_requires() -> None:
    # U+FF61 sorts after U+1F600 in UTF-16 (0xFF61 > 0xD83D) but before it by code point.
    value = {"\uff61": 1, "\U0001f600": 2}
    assert _canonical(value, "test") == rfc8785.dumps(value)
    assert _canonical(value, "test").index("\U0001f600".encode()) < _canonical(value, "test").index(
        "\uff61".encode()
    )


class _Part(msgspec.Struct):
    name: str
    level: _Level | None


class _Shaped(msgspec.Struct):
    """A writer's fixed shape (see struct_event_payload): every kind of field it allows."""

    text: str
    count: int
    flag: bool
    maybe: str | None
    level: _Level
    codes: list[str]
    parts: list[_Part]
    nested: _Part


_shaped = st.builds(
    _Shaped,
    text=st.text(),
    count=st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER),
    flag=st.booleans(),
    maybe=st.none() | st.text(),
    level=st.sampled_from(_Level),
    codes=st.lists(st.text() | st.sampled_from(_Level), max_size=4),
    parts=st.lists(st.builds(_Part, st.text(), st.none() | st.sampled_from(_Level)), max_size=3),
    nested=st.builds(_Part, st.text(), st.none() | st.sampled_from(_Level)),
)


@given(
    data=_shaped,
    kind=st.sampled_from(EntryKind),
    actor=st.text(min_size=1),
    subject=st.none() | st.text(min_size=1),
    time=st.datetimes(min_value=_NAIVE_MIN, max_value=_NAIVE_MAX, timezones=st.just(UTC)),
)
@settings(max_examples=300, deadline=None)
def test_a_struct_event_payload_is_the_payload_of_the_same_data_as_json_values(
    data: _Shaped, kind: EntryKind, actor: str, subject: str | None, time: datetime
) -> None:
    try:
        expected = new_event_payload(kind, actor, subject, msgspec.to_builtins(data), time)
    except EntryError:
        # A lone surrogate cannot be UTF-8: refused either way.
        with pytest.raises(EntryError):
            struct_event_payload(kind, actor, subject, data, time)
        return
    assert struct_event_payload(kind, actor, subject, data, time) == expected


def test_a_struct_event_payload_checks_what_the_struct_does_not() -> None:
    data = _Part("x", None)
    with pytest.raises(EntryError, match="actor"):
        struct_event_payload(EntryKind.DECISION, "", None, data, WHEN)
    with pytest.raises(EntryError, match="subject"):
        struct_event_payload(EntryKind.DECISION, "a", "", data, WHEN)
    with pytest.raises(EntryError, match="naive"):
        struct_event_payload(EntryKind.DECISION, "a", None, data, WHEN.replace(tzinfo=None))
