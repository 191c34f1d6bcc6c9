"""Strict parsing of facts given as JSON values (``policy explain`` and the tests).

The input is DESIGN.md's request object, plus optional ``account`` (AccountFacts), ``history``
(RequestHistory) and ``now``. Every error names the field; unknown fields are refused so that a
typo is never silently read as "unknown".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from policy.model import (
    AccountFacts,
    ConsentState,
    GeoPoint,
    LastLogin,
    LinkedIdentity,
    Locale,
    LockReason,
    Method,
    Network,
    PhoneOnFile,
    RequestContext,
    RequestHistory,
    TotpState,
    UnlockRequestFacts,
)

MAX_ID_LENGTH = 128
MAX_TEXT_LENGTH = 512
MAX_KNOWN_DEVICES = 1000

E = TypeVar("E", bound=StrEnum)
T = TypeVar("T")


class FactsError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Facts:
    request: UnlockRequestFacts
    account: AccountFacts
    history: RequestHistory
    now: datetime | None


def _object(value: Any, field: str, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise FactsError(field or "facts", "must be an object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise FactsError(f"{field}.{unknown[0]}" if field else unknown[0], "unknown field")
    return value


def _path(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def _required_str(
    obj: Mapping[str, Any], key: str, parent: str, *, limit: int = MAX_ID_LENGTH
) -> str:
    value = _str(obj, key, parent, limit=limit)
    if value is None:
        raise FactsError(_path(parent, key), "is required")
    return value


def _str(
    obj: Mapping[str, Any], key: str, parent: str, *, limit: int = MAX_ID_LENGTH
) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise FactsError(_path(parent, key), "must be a non-empty string")
    if len(value) > limit:
        raise FactsError(_path(parent, key), f"must be at most {limit} characters")
    return value


def _enum_or(cls: type[E], obj: Mapping[str, Any], key: str, parent: str, default: E) -> E:
    value = _enum(cls, obj, key, parent)
    return default if value is None else value


def _enum(cls: type[E], obj: Mapping[str, Any], key: str, parent: str) -> E | None:
    value = obj.get(key)
    if value is None:
        return None
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(e.value for e in cls)
        raise FactsError(_path(parent, key), f"must be one of {allowed}") from None


def parse_time(value: Any, field: str) -> datetime:
    if not isinstance(value, str):
        raise FactsError(field, "must be an RFC 3339 date-time string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise FactsError(field, "must be an RFC 3339 date-time string") from None
    if moment.tzinfo is None:
        raise FactsError(field, "must include a time zone offset")
    return moment


def _time(obj: Mapping[str, Any], key: str, parent: str) -> datetime | None:
    value = obj.get(key)
    return None if value is None else parse_time(value, _path(parent, key))


def _number(obj: Mapping[str, Any], key: str, parent: str, bound: float) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not -bound <= value <= bound
    ):
        raise FactsError(_path(parent, key), f"must be a number between -{bound:g} and {bound:g}")
    return float(value)


def _count(obj: Mapping[str, Any], key: str, parent: str) -> int:
    value = obj.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FactsError(_path(parent, key), "must be a non-negative integer")
    return value


def _optional(
    obj: Mapping[str, Any], key: str, parent: str, parse: Callable[[Any, str], T]
) -> T | None:
    value = obj.get(key)
    return None if value is None else parse(value, _path(parent, key))


def _geo(value: Any, field: str) -> GeoPoint:
    obj = _object(value, field, {"country", "lat", "lon"})
    country = _str(obj, "country", field, limit=2)
    if country is not None and (
        len(country) != 2 or not country.isalpha() or not country.isascii()
    ):
        raise FactsError(f"{field}.country", "must be an ISO 3166-1 alpha-2 code")
    return GeoPoint(
        country=country, lat=_number(obj, "lat", field, 90), lon=_number(obj, "lon", field, 180)
    )


def _last_login(value: Any, field: str) -> LastLogin:
    obj = _object(value, field, {"at", "device_id", "geo"})
    return LastLogin(
        at=_time(obj, "at", field),
        device_id=_str(obj, "device_id", field),
        geo=_optional(obj, "geo", field, _geo),
    )


def _device_ids(value: Any, field: str) -> frozenset[str]:
    if not isinstance(value, list) or len(value) > MAX_KNOWN_DEVICES:
        raise FactsError(field, f"must be a list of at most {MAX_KNOWN_DEVICES} device ids")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item or len(item) > MAX_ID_LENGTH:
            raise FactsError(f"{field}[{i}]", "must be a non-empty string")
    return frozenset(value)


_CONTEXT_FIELDS = {
    "ip", "device_id", "user_agent", "geo", "network", "sim_swap_at", "credential_changed_at",
    "account_created_at", "last_login", "known_device_ids",
}  # fmt: skip


def parse_context(value: Any, field: str = "context") -> RequestContext:
    obj = _object(value, field, _CONTEXT_FIELDS)
    return RequestContext(
        ip=_required_str(obj, "ip", field, limit=45),
        device_id=_str(obj, "device_id", field),
        user_agent=_str(obj, "user_agent", field, limit=MAX_TEXT_LENGTH),
        geo=_optional(obj, "geo", field, _geo),
        network=_enum(Network, obj, "network", field),
        sim_swap_at=_time(obj, "sim_swap_at", field),
        credential_changed_at=_time(obj, "credential_changed_at", field),
        account_created_at=_time(obj, "account_created_at", field),
        last_login=_optional(obj, "last_login", field, _last_login),
        known_device_ids=_optional(obj, "known_device_ids", field, _device_ids),
    )


def _linked(value: Any, field: str) -> tuple[LinkedIdentity, ...]:
    if not isinstance(value, list):
        raise FactsError(field, "must be a list")
    out = []
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        obj = _object(item, where, {"provider", "real_name_verified"})
        provider = _required_str(obj, "provider", where)
        verified = obj.get("real_name_verified")
        if not isinstance(verified, bool):
            raise FactsError(f"{where}.real_name_verified", "must be true or false")
        out.append(LinkedIdentity(provider, verified))
    return tuple(out)


def _phone(value: Any, field: str) -> PhoneOnFile:
    obj = _object(value, field, {"verified"})
    if not isinstance(obj.get("verified"), bool):
        raise FactsError(f"{field}.verified", "must be true or false")
    return PhoneOnFile(verified=obj["verified"])


def _methods(value: Any, field: str) -> frozenset[Method]:
    if not isinstance(value, list):
        raise FactsError(field, "must be a list of methods")
    out = set()
    for i, item in enumerate(value):
        try:
            out.add(Method(item))
        except ValueError:
            raise FactsError(
                f"{field}[{i}]", f"must be one of {', '.join(m.value for m in Method)}"
            ) from None
    return frozenset(out)


def parse_account(value: Any, field: str = "account") -> AccountFacts:
    obj = _object(
        value,
        field,
        {
            "totp",
            "linked_identities",
            "recovery_codes_remaining",
            "phone",
            "face_consent",
            "throttled_methods",
        },
    )
    remaining = obj.get("recovery_codes_remaining")
    if remaining is not None and (
        isinstance(remaining, bool) or not isinstance(remaining, int) or remaining < 0
    ):
        raise FactsError(
            f"{field}.recovery_codes_remaining", "must be a non-negative integer or null"
        )
    return AccountFacts(
        totp=_enum_or(TotpState, obj, "totp", field, TotpState.NONE),
        linked_identities=_optional(obj, "linked_identities", field, _linked) or (),
        recovery_codes_remaining=remaining,
        phone=_optional(obj, "phone", field, _phone),
        face_consent=_enum_or(ConsentState, obj, "face_consent", field, ConsentState.NONE),
        throttled_methods=_optional(obj, "throttled_methods", field, _methods) or frozenset(),
    )


def parse_history(value: Any, field: str = "history") -> RequestHistory:
    obj = _object(value, field, {"recent_unlock_requests", "recent_failed_verifications"})
    return RequestHistory(
        recent_unlock_requests=_count(obj, "recent_unlock_requests", field),
        recent_failed_verifications=_count(obj, "recent_failed_verifications", field),
    )


def parse_request(obj: Mapping[str, Any], parent: str = "") -> UnlockRequestFacts:
    lock_reason = _enum(LockReason, obj, "lock_reason", parent)
    if lock_reason is None:
        raise FactsError(_path(parent, "lock_reason"), "is required")
    if "context" not in obj:
        raise FactsError(_path(parent, "context"), "is required")
    return UnlockRequestFacts(
        account_id=_required_str(obj, "account_id", parent),
        lock_reason=lock_reason,
        context=parse_context(obj["context"], _path(parent, "context")),
        locale=_enum_or(Locale, obj, "locale", parent, Locale.ZH_CN),
    )


def parse_facts(value: Any) -> Facts:
    obj = _object(
        value, "", {"account_id", "lock_reason", "locale", "context", "account", "history", "now"}
    )
    return Facts(
        request=parse_request(obj),
        account=_optional(obj, "account", "", parse_account) or AccountFacts(),
        history=_optional(obj, "history", "", parse_history) or RequestHistory(),
        now=_optional(obj, "now", "", parse_time),
    )
