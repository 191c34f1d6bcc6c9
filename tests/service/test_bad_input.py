"""Bad input gets a 4xx problem+json naming the field, and changes nothing (DESIGN.md principles;
ASVS4-5.1 input validation). Every field of the unlock request is tried malformed, missing, of the
wrong type and oversized; unknown fields and wrong content types too."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from service.persistence.api_keys import Role
from tests.service.conftest import PERSONA_REQUEST, Api

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = body
        for p in parents:
            target = target[p]
        target[last] = value

    return mutate


def _drop(path: str) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = body
        for p in parents:
            target = target[p]
        del target[last]

    return mutate


LONG = "x" * 600
CASES: list[tuple[str, Mutation, str]] = [
    ("missing account_id", _drop("account_id"), "account_id"),
    ("account_id wrong type", _set("account_id", 1024), "account_id"),
    ("account_id bad characters", _set("account_id", "acct 1024; drop"), "account_id"),
    ("account_id oversized", _set("account_id", "a" * 200), "account_id"),
    ("missing lock_reason", _drop("lock_reason"), "lock_reason"),
    ("unknown lock_reason", _set("lock_reason", "bored"), "lock_reason"),
    ("locale unknown", _set("locale", "fr"), "locale"),
    ("missing context", _drop("context"), "context"),
    ("context wrong type", _set("context", "203.0.113.7"), "context"),
    ("missing ip", _drop("context.ip"), "context.ip"),
    ("ip not an address", _set("context.ip", "not-an-ip"), "context.ip"),
    ("ip wrong type", _set("context.ip", 203), "context.ip"),
    ("device_id oversized", _set("context.device_id", LONG), "context.device_id"),
    ("device_id empty", _set("context.device_id", ""), "context.device_id"),
    ("user_agent oversized", _set("context.user_agent", LONG), "context.user_agent"),
    ("geo wrong type", _set("context.geo", [31.2, 121.4]), "context.geo"),
    ("country lower case", _set("context.geo.country", "cn"), "context.geo.country"),
    ("lat out of range", _set("context.geo.lat", 91), "context.geo.lat"),
    ("lon wrong type", _set("context.geo.lon", "east"), "context.geo.lon"),
    ("network unknown kind", _set("context.network", "wifi"), "context.network"),
    ("sim_swap_at not a time", _set("context.sim_swap_at", "yesterday"), "context.sim_swap_at"),
    (
        "credential_changed_at naive",
        _set("context.credential_changed_at", "2026-11-20T09:12:00"),
        "context.credential_changed_at",
    ),
    (
        "account_created_at wrong type",
        _set("context.account_created_at", {"year": 2016}),
        "context.account_created_at",
    ),
    ("last_login wrong type", _set("context.last_login", "2026-11-20"), "context.last_login"),
    (
        "last_login.at naive",
        _set("context.last_login.at", "2026-11-20T09:12:00"),
        "context.last_login.at",
    ),
    (
        "last_login.geo.lat wrong type",
        _set("context.last_login.geo.lat", "north"),
        "context.last_login.geo.lat",
    ),
    (
        "known_device_ids wrong type",
        _set("context.known_device_ids", "d-11aa"),
        "context.known_device_ids",
    ),
    (
        "known_device_ids too many",
        _set("context.known_device_ids", [f"d-{i}" for i in range(101)]),
        "context.known_device_ids",
    ),
    ("unknown top-level field", _set("favourite_colour", "blue"), "favourite_colour"),
    ("unknown context field", _set("context.face_image", "base64..."), "context.face_image"),
    ("unknown geo field", _set("context.geo.altitude", 10), "context.geo.altitude"),
]


# Values a lenient decoder turns into another type: numbers into datetimes, strings of digits into
# numbers, "true" and 1 into booleans. Each leaf of the request gets every one of a JSON type other
# than its own; none may pass as a value of the leaf's type.
COERCIBLE: list[Any] = [5, 1764000000, 1.5, True, "true", "1", "31.2"]
# The leaves that hold null in PERSONA_REQUEST are optional times: a string is their JSON type.
NULLABLE_TIME = "2026-11-20T09:12:00Z"


def _json_kind(value: Any) -> str:
    # bool before int: True is an int in Python, not in JSON.
    for kind, types in (("bool", bool), ("number", int | float), ("string", str)):
        if isinstance(value, types):
            return kind
    raise AssertionError(value)


def _leaves(body: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    leaves: list[tuple[str, Any]] = []
    for name, value in body.items():
        path = f"{prefix}{name}"
        if isinstance(value, dict):
            leaves += _leaves(value, f"{path}.")
        elif isinstance(value, list):
            leaves += [(f"{path}[0]", value[0])]
        else:
            leaves.append((path, NULLABLE_TIME if value is None else value))
    return leaves


def _set_leaf(path: str, value: Any) -> Mutation:
    if path.endswith("[0]"):
        return _set(path.removesuffix("[0]"), [value])
    return _set(path, value)


WRONG_TYPES: list[tuple[str, Mutation, str]] = [
    (f"{path} = {json.dumps(wrong)}", _set_leaf(path, wrong), path)
    for path, value in _leaves(PERSONA_REQUEST)
    for wrong in COERCIBLE
    if _json_kind(wrong) != _json_kind(value)
]


def test_the_wrong_type_table_covers_every_leaf_of_the_request() -> None:
    covered = {field for _, _, field in WRONG_TYPES}
    assert covered == {path for path, _ in _leaves(PERSONA_REQUEST)}
    assert len(WRONG_TYPES) > 60, len(WRONG_TYPES)


def _state(api: Api) -> tuple[int, int, int]:
    return api.count("unlock_requests"), api.count("audit_inbox"), api.count("audit_log")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [(m, f) for _, m, f in [*CASES, *WRONG_TYPES]],
    ids=[c[0] for c in [*CASES, *WRONG_TYPES]],
)
def test_malformed_unlock_request_is_problem_json_naming_the_field_and_writes_nothing(
    sqlite_api: Api, mutate: Mutation, field: str
) -> None:
    """Each field malformed, missing, oversized or of the wrong type (WRONG_TYPES: of another
    JSON type that a lenient decoder would have coerced), unknown fields: refused, not coerced."""
    before = _state(sqlite_api)
    body = copy.deepcopy(PERSONA_REQUEST)
    mutate(body)
    r = sqlite_api.client.post("/v1/unlock-requests", json=body, headers=sqlite_api.headers())
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["code"] == "invalid_request"
    assert [e["field"] for e in problem["errors"]] == [field], problem
    assert _state(sqlite_api) == before


@pytest.mark.parametrize(
    ("content", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 400, "bad_request"),
        (b"", "application/json", 400, "invalid_request"),
        (b"[]", "application/json", 400, "invalid_request"),
        (b"account_id=acct-1", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (json.dumps(PERSONA_REQUEST).encode(), "text/plain", 415, "unsupported_media_type"),
        (b"\xff\xfe\x00garbage", "application/json", 400, "bad_request"),
        # Invalid UTF-8 inside a JSON string: msgspec's UnicodeDecodeError was a 500.
        (b'{"account_id": "\xff\xfe"}', "application/json", 400, "bad_request"),
    ],
    ids=[
        "malformed-json",
        "empty-body",
        "array-body",
        "form",
        "text-plain",
        "invalid-utf8",
        "invalid-utf8-in-a-string",
    ],
)
def test_wrong_body_or_content_type_is_4xx_problem(
    sqlite_api: Api, content: bytes, content_type: str, status: int, code: str
) -> None:
    before = _state(sqlite_api)
    r = sqlite_api.client.post(
        "/v1/unlock-requests",
        content=content,
        headers={**sqlite_api.headers(), "content-type": content_type},
    )
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == code
    assert _state(sqlite_api) == before


def test_oversized_body_is_413(sqlite_api: Api) -> None:
    body = copy.deepcopy(PERSONA_REQUEST)
    body["context"]["user_agent"] = "x" * (sqlite_api.app.state.settings.max_body_bytes + 10)
    before = _state(sqlite_api)
    r = sqlite_api.client.post("/v1/unlock-requests", json=body, headers=sqlite_api.headers())
    assert r.status_code == 413
    assert r.json()["code"] == "body_too_large"
    assert _state(sqlite_api) == before


def test_deeply_nested_json_is_refused_cleanly(sqlite_api: Api) -> None:
    nested = "[" * 5000 + "]" * 5000
    r = sqlite_api.client.post(
        "/v1/unlock-requests",
        content=nested.encode(),
        headers={**sqlite_api.headers(), "content-type": "application/json"},
    )
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "body_too_deep"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/accounts/acct-1/phone", {"phone": 8613800005678}, "phone"),
        ("/v1/accounts/acct-1/phone", {"phone": "+8613800005678", "verified": "yes"}, "verified"),
        ("/v1/accounts/acct-1/phone", {}, "phone"),
        (
            "/v1/accounts/acct-1/face-consent",
            {"notice_version": "v", "purpose": "marketing", "accepted": True},
            "purpose",
        ),
        (
            "/v1/accounts/acct-1/face-consent",
            {"notice_version": "v", "purpose": "account_unlock"},
            "accepted",
        ),
        ("/v1/accounts/acct-1/linked-identities/gov-eid", {"subject": "s"}, "real_name_verified"),
        # Consent is a JSON true and nothing that a lenient decoder would read as one (FRM-6).
        *(
            (
                "/v1/accounts/acct-1/face-consent",
                {"notice_version": "v", "purpose": "account_unlock", "accepted": lenient},
                "accepted",
            )
            for lenient in (1, "1", "true")
        ),
        ("/v1/accounts/acct-1/phone", {"phone": "+8613800005678", "verified": "true"}, "verified"),
        (
            "/v1/accounts/acct-1/linked-identities/gov-eid",
            {"subject": "s", "real_name_verified": "true"},
            "real_name_verified",
        ),
    ],
)
def test_malformed_enrolment_bodies_name_the_field(
    sqlite_api: Api, path: str, body: dict[str, Any], field: str
) -> None:
    r = sqlite_api.client.put(path, json=body, headers=sqlite_api.headers())
    assert r.status_code == 400, r.text
    assert field in [e["field"] for e in r.json()["errors"]]
    assert sqlite_api.count("accounts") == 0


@pytest.mark.parametrize("account_id", ["acct%201", "a" * 200, "acct<script>"])
def test_bad_account_id_in_the_path_is_400(sqlite_api: Api, account_id: str) -> None:
    r = sqlite_api.client.get(f"/v1/accounts/{account_id}/methods", headers=sqlite_api.headers())
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("query", ["assignee=x%00", "assignee=x%0D%0Ay", "cursor=%1B"])
def test_control_characters_in_review_queue_filters_are_400(api: Api, query: str) -> None:
    # A NUL in `assignee` reached PostgreSQL and came back a 500 before the filter had a pattern.
    r = api.client.get(f"/v1/review-cases?{query}", headers=api.headers(Role.SUPERVISOR))
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_request"
