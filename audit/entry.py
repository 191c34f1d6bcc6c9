"""Audit entries: the event a writer appends, and the exact leaf bytes the Merkle tree commits to.

The leaf bytes are RFC 8785 (JCS) canonical JSON, so anyone can re-derive them and the export
line is byte-for-byte what was hashed. Floats are refused outright: JCS formats numbers the
ECMAScript way, which Python's float repr does not always match, and a mismatch would make an
honest entry unverifiable by other tools.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeAlias, cast

import msgspec
import rfc8785

FORMAT_VERSION = 1

# JCS serialises numbers as IEEE doubles; integers beyond this lose precision in other tools.
MAX_SAFE_INTEGER = 2**53 - 1
# Deep nesting is never a legitimate audit payload and would make canonicalisation recurse.
MAX_DEPTH = 32

JSONValue: TypeAlias = "str | int | bool | Sequence[JSONValue] | Mapping[str, JSONValue] | None"

# Keys of the leaf object. Canonical (sorted) order puts `data` before `index`, so everything after
# `data` is a short run of scalars: the verifier relies on that to check index and log cheaply.
ENTRY_KEYS = frozenset({"index", "log", "v", "time", "kind", "actor", "subject", "data"})
_PAYLOAD_KEYS = frozenset({"v", "time", "kind", "actor", "subject", "data"})


class EntryKind(StrEnum):
    DECISION = "decision"
    CHALLENGE_STARTED = "challenge_started"
    VERIFICATION_ATTEMPT = "verification_attempt"
    CONSENT_GRANTED = "consent_granted"
    CONSENT_WITHDRAWN = "consent_withdrawn"
    ENROLMENT = "enrolment"
    REVIEW_OPENED = "review_opened"
    REVIEW_ACTION = "review_action"
    EXPORT = "export"
    ERASURE = "erasure"
    KEY_ROTATED = "key_rotated"
    ACCOUNT_CHANGED = "account_changed"


class EntryError(ValueError):
    """An event or an entry line is malformed; the message names the field and the problem."""


_INVALID, _VALID, _VALID_ASCII_KEYS = 0, 1, 2


_SCALAR_TYPES = frozenset({str, bool, type(None)})
_ENCODE_TIME = msgspec.json.encode
# msgspec's text of a UTC datetime with microseconds: '"YYYY-MM-DDTHH:MM:SS.ffffffZ"'.
_TIME_WITH_FRACTION = 29


def _json_shape(value: object, depth: int = 0) -> int:
    """_VALID_ASCII_KEYS, _VALID or _INVALID, without building any path text (the hot path;
    _explain_json_value says what is wrong).

    Plain dicts and lists (what writers build) are walked without a call per scalar item, which
    is most of a walk's cost; anything else, subclasses included, takes _json_shape_of. The two
    agree on every value (tests/audit/test_entry.py)."""
    kind = type(value)
    if kind in _SCALAR_TYPES:
        return _VALID_ASCII_KEYS
    if depth >= MAX_DEPTH or (kind is not dict and kind is not list):
        return _json_shape_of(value, depth)
    # Items sit at depth + 1 <= MAX_DEPTH, so an in-range int item is valid there.
    shape = _VALID_ASCII_KEYS
    items: Iterable[object]
    if kind is dict:
        mapping = cast(dict[object, object], value)
        for key in mapping:
            if not isinstance(key, str):
                return _INVALID
            if not key.isascii():
                shape = _VALID
        items = mapping.values()
    else:
        items = cast(list[object], value)
    for item in items:
        item_kind = type(item)
        if item_kind in _SCALAR_TYPES:
            continue
        if item_kind is int and -MAX_SAFE_INTEGER <= cast(int, item) <= MAX_SAFE_INTEGER:
            continue
        item_shape = _json_shape(item, depth + 1)
        if item_shape == _INVALID:
            return _INVALID
        shape = min(shape, item_shape)
    return shape


def _json_shape_of(value: object, depth: int) -> int:
    """_json_shape for any value, by isinstance (subclasses of str, int, Mapping, list...)."""
    if value is None or isinstance(value, (bool, str)):
        return _VALID_ASCII_KEYS
    if depth > MAX_DEPTH:
        return _INVALID
    if isinstance(value, int):
        return _VALID_ASCII_KEYS if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else _INVALID
    shape = _VALID_ASCII_KEYS
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return _INVALID
            if not key.isascii():
                shape = _VALID
            shape = min(shape, _json_shape(item, depth + 1))
            if shape == _INVALID:
                return _INVALID
        return shape
    if isinstance(value, (list, tuple)):
        for item in value:
            shape = min(shape, _json_shape(item, depth + 1))
            if shape == _INVALID:
                return _INVALID
        return shape
    return _INVALID


def _check_json_value(value: object, path: str) -> int:
    """Raise EntryError naming the first problem; else the value's _json_shape."""
    shape = _json_shape(value)
    if shape == _INVALID:
        _explain_json_value(value, path)
        raise EntryError(f"{path}: not a JSON value")  # defensive: the walk above names it
    return shape


def _explain_json_value(value: object, path: str, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise EntryError(f"{path}: nested deeper than {MAX_DEPTH} levels")
    # bool is an int subclass, so it must be tested before int.
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise EntryError(f"{path}: integer {value} is outside ±(2**53 - 1)")
        return
    if isinstance(value, float):
        raise EntryError(f"{path}: floats are not allowed (use an integer or a string)")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise EntryError(f"{path}: object key {key!r} is not a string")
            _explain_json_value(item, f"{path}.{key}", depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for position, item in enumerate(value):
            _explain_json_value(item, f"{path}[{position}]", depth + 1)
        return
    raise EntryError(f"{path}: {type(value).__name__} is not a JSON value")


def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds and 'Z', fixed width so entries sort and compare as text."""
    if moment.tzinfo is not UTC:
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise EntryError("time: naive datetime (must be timezone-aware UTC)")
        moment = moment.astimezone(UTC)
    # msgspec writes this form in C (~0.13 µs; the f-string of the fields ~1.2 µs), leaving
    # the fraction out when it is zero.
    text = _ENCODE_TIME(moment)
    if len(text) == _TIME_WITH_FRACTION:
        return text[1:-1].decode()
    return text[1:-2].decode() + ".000000Z"


def parse_time(text: str) -> datetime:
    """Inverse of format_time; only the exact form format_time produces is accepted."""
    try:
        moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        raise EntryError(f"time: {text!r} is not RFC 3339 UTC with microseconds and 'Z'") from None
    if format_time(moment) != text:
        raise EntryError(f"time: {text!r} is not in canonical form")
    return moment


def _check_actor_and_subject(actor: object, subject: object) -> None:
    if not isinstance(actor, str) or not actor:
        raise EntryError("actor: must be a non-empty string")
    if subject is not None and (not isinstance(subject, str) or not subject):
        raise EntryError("subject: must be a non-empty string or None")


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What a writer appends; the integrator gives it an index and the log origin."""

    kind: EntryKind
    actor: str
    subject: str | None
    data: Mapping[str, JSONValue]
    time: datetime
    # What the construction's walk found: only ``new_event_payload`` may trust it (the caller
    # keeps a reference to ``data`` and could change it later; see _event_fields).
    _data_shape: int = field(default=_INVALID, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Validate at construction so a bad event fails in the writer's request, not later in
        # the integrator where nobody can fix it.
        # Typed as object: values decoded from JSON reach here unchecked.
        kind: object = self.kind
        actor: object = self.actor
        subject: object = self.subject
        data: object = self.data
        moment: object = self.time
        if not isinstance(kind, EntryKind):
            try:
                object.__setattr__(self, "kind", EntryKind(str(kind)))
            except ValueError:
                raise EntryError(f"kind: {kind!r} is not an EntryKind") from None
        _check_actor_and_subject(actor, subject)
        if not isinstance(data, Mapping):
            raise EntryError("data: must be a JSON object")
        object.__setattr__(self, "_data_shape", _check_json_value(data, "data"))
        if not isinstance(moment, datetime):
            raise EntryError("time: must be a datetime")
        format_time(moment)  # raises on naive datetimes
        if moment.tzinfo is not UTC:
            object.__setattr__(self, "time", moment.astimezone(UTC))


# Sorted keys, compact, UTF-8 out: for validated ASCII-keyed values, the bytes of
# json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() in a
# seventh of the time (see _canonical).
_SORTED_COMPACT = msgspec.json.Encoder(order="sorted")


def _canonical(obj: Mapping[str, Any], what: str, shape: int | None = None) -> bytes:
    """RFC 8785 canonical JSON of a validated value (no floats, integers within ±(2**53-1)).

    For such values RFC 8785 is the standard library's sorted, compact, non-ASCII-preserving
    JSON — same escapes (quote, backslash, \\b \\t \\n \\f \\r, other controls as lowercase
    \\u00xx) and integer forms — except that RFC 8785 sorts keys by UTF-16 code units, which
    orders differently from code points only for non-ASCII keys. So ASCII-keyed values take a
    C encoder (it is on every decision's path) and the rest the rfc8785 package. The C encoder
    is msgspec's with sorted keys, which writes the same bytes as the standard library's here
    (the same minimal escapes, lowercase \\u00xx, integers, UTF-8) ~7x faster;
    tests/audit/test_entry.py proves all three agree."""
    try:
        if (_json_shape(obj) if shape is None else shape) == _VALID_ASCII_KEYS:
            return _SORTED_COMPACT.encode(obj)
        return rfc8785.dumps(obj)
    except (
        rfc8785.CanonicalizationError,
        msgspec.EncodeError,
        UnicodeEncodeError,
        ValueError,
    ) as exc:
        # Defensive: values are validated beforehand; a lone surrogate cannot be UTF-8.
        raise EntryError(f"{what}: cannot canonicalise: {exc}") from None


def _event_fields(event: AuditEvent, *, checked: bool = False) -> dict[str, Any]:
    # Checked again here: the dataclass is frozen but `data` is the caller's mapping, which may
    # have been mutated (say, a float added) after the event was built.
    if not checked:
        _check_json_value(event.data, "data")
    return {
        "v": FORMAT_VERSION,
        "time": format_time(event.time),
        "kind": event.kind.value,
        "actor": event.actor,
        "subject": event.subject,
        "data": event.data,
    }


def event_to_payload(event: AuditEvent) -> bytes:
    """Canonical JSON of the event without index or log: what the inbox stores."""
    # The top-level keys are ASCII names, so the data's keys decide which encoder is exact.
    shape = _check_json_value(event.data, "data")  # again: see _event_fields
    return _canonical(_event_fields(event, checked=True), "event", shape)


def new_event_payload(
    kind: EntryKind,
    actor: str,
    subject: str | None,
    data: Mapping[str, JSONValue],
    time: datetime,
) -> bytes:
    """``event_to_payload(AuditEvent(kind, actor, subject, data, time))``, walking ``data`` once
    instead of twice: the event is validated, then encoded before any other code runs, so its
    data cannot have changed in between. For writers that build an event only to store it (a
    decision builds one per request). Pass ``data`` that no other thread can change."""
    event = AuditEvent(kind, actor, subject, data, time)
    return _canonical(_event_fields(event, checked=True), "event", event._data_shape)


def struct_event_payload(
    kind: EntryKind, actor: str, subject: str | None, data: msgspec.Struct, time: datetime
) -> bytes:
    """``new_event_payload`` for a writer whose data has a fixed shape: a msgspec Struct whose
    ASCII-named fields hold str, bool, None, integers within ±(2**53-1), str enum members, and
    lists and Structs of those. mypy checks the types and the Struct its integers, so nothing is
    walked here: the bytes come from the same sorted, compact encoder as every event's (it sorts
    Struct fields like dict keys). A decision's data built and checked as a dict cost ~20 µs;
    this ~5 µs. tests/audit/test_entry.py proves it equal to new_event_payload of the same data
    as plain JSON values."""
    _check_actor_and_subject(actor, subject)
    fields = {
        "v": FORMAT_VERSION,
        "time": format_time(time),
        "kind": EntryKind(kind).value,
        "actor": actor,
        "subject": subject,
        "data": data,
    }
    # The Struct's field names are ASCII: the sorted encoder's branch of _canonical.
    return _canonical(fields, "event", _VALID_ASCII_KEYS)


def _refuse_float(text: str) -> Any:
    raise EntryError(f"floats are not allowed: {text}")


def _refuse_constant(text: str) -> Any:
    raise EntryError(f"{text} is not allowed")


def _load_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw, parse_float=_refuse_float, parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise EntryError(f"{what}: not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise EntryError(f"{what}: not JSON ({exc.msg} at offset {exc.pos})") from None
    if not isinstance(obj, dict):
        raise EntryError(f"{what}: not a JSON object")
    return obj


def _event_from_fields(obj: Mapping[str, Any], what: str) -> AuditEvent:
    if obj.get("v") != FORMAT_VERSION or isinstance(obj.get("v"), bool):
        raise EntryError(f"{what}: v is {obj.get('v')!r}, expected {FORMAT_VERSION}")
    time_text = obj["time"]
    if not isinstance(time_text, str):
        raise EntryError(f"{what}: time is not a string")
    return AuditEvent(
        kind=obj["kind"],
        actor=obj["actor"],
        subject=obj["subject"],
        data=obj["data"],
        time=parse_time(time_text),
    )


def payload_to_event(payload: bytes) -> AuditEvent:
    obj = _load_object(payload, "payload")
    if set(obj) != _PAYLOAD_KEYS:
        raise EntryError(f"payload: keys are {sorted(obj)}, expected {sorted(_PAYLOAD_KEYS)}")
    event = _event_from_fields(obj, "payload")
    if event_to_payload(event) != payload:
        raise EntryError("payload: not in canonical form")
    return event


def encode_entry(index: int, origin: str, event: AuditEvent) -> bytes:
    """The leaf bytes: canonical JSON of the event plus its index and log origin, no newline."""
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise EntryError(f"index: {index!r} is not a non-negative integer")
    if index > MAX_SAFE_INTEGER:
        raise EntryError(f"index: {index} is outside the JSON safe integer range")
    if not isinstance(origin, str) or not origin:
        raise EntryError("log: origin must be a non-empty string")
    fields = _event_fields(event)
    fields["index"] = index
    fields["log"] = origin
    return _canonical(fields, "entry")


def decode_entry(line: bytes) -> dict[str, Any]:
    """Parse and validate one leaf; the result has `time` as text and `kind` as a string.

    Raises EntryError naming what is wrong, including a line that is valid JSON but not the
    canonical encoding (which would hash differently from what any honest writer produced).
    """
    if line.endswith(b"\n") or b"\r" in line:
        raise EntryError("entry: contains a line break")
    obj = _load_object(line, "entry")
    if set(obj) != ENTRY_KEYS:
        raise EntryError(f"entry: keys are {sorted(obj)}, expected {sorted(ENTRY_KEYS)}")
    index = obj["index"]
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise EntryError(f"entry: index {index!r} is not a non-negative integer")
    origin = obj["log"]
    if not isinstance(origin, str) or not origin:
        raise EntryError("entry: log is not a non-empty string")
    event = _event_from_fields(obj, "entry")
    if encode_entry(index, origin, event) != line:
        raise EntryError("entry: not in canonical form")
    return obj
