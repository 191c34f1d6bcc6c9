"""The policy is data: a versioned TOML document plus one message catalog per locale.

``load_policy`` parses and validates both and refuses, naming the rule, any policy that would break
a principle of DESIGN.md (face first, face as the sole path, face counted twice or without consent,
a level without a non-biometric path, SMS enough alone above low, …). It reads no files: callers
pass the texts, so this module stays pure.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import rfc8785

from policy.model import (
    BIOMETRIC_METHODS,
    LEVELS_ASCENDING,
    MITIGATING_SIGNALS,
    Locale,
    Method,
    Network,
    NotOfferedReason,
    OfferedMethod,
    ReviewReason,
    RiskLevel,
    SignalCode,
    Strength,
)

MAX_FACTORS = 3
FACTOR_WORDS = ("one", "two", "three")  # catalog keys under [offer], by factors required
RISKY_NETWORKS = frozenset({Network.PROXY, Network.TOR, Network.DATACENTER, Network.MALICIOUS})
# FRM-12: face must never be labelled required or recommended, in any language.
COERCIVE_WORDS = ("required", "recommended", "must", "必须", "推荐", "建议", "需要")


class PolicyError(ValueError):
    """A policy or catalog that must not be used; ``rule`` is a stable name for the broken rule."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{rule}: {message}")
        self.rule = rule
        self.message = message


@dataclass(frozen=True, slots=True)
class SignalThresholds:
    impossible_travel_kmh: float
    impossible_travel_min_km: float
    recent_sim_swap_hours: float
    recent_credential_change_hours: float
    velocity_window_hours: float
    velocity_threshold: int
    failed_verifications_window_hours: float
    failed_verifications_threshold: int
    long_standing_account_days: float


@dataclass(frozen=True, slots=True)
class ReviewSla:
    """Human review: each case's priority, from its request's risk level and origin, and the
    due time that priority gives (one step more urgent per aggravation, never past the first)."""

    priorities: tuple[str, ...]
    sla_hours: Mapping[str, int]
    base_priority: Mapping[RiskLevel, str]
    urgent_origins: frozenset[str]
    long_wait_hours: int

    def priority(self, risk_level: str, origin: str, waited_hours: float, *, reopened: bool) -> str:
        index = self.priorities.index(self.base_priority[RiskLevel(risk_level)])
        index -= origin in self.urgent_origins
        index -= waited_hours >= self.long_wait_hours
        index -= reopened
        return self.priorities[max(0, index)]


@dataclass(frozen=True, slots=True)
class Limits:
    challenge_attempts: int
    challenge_ttl_minutes: int
    method_failures_per_day: int
    source_failures_per_hour: int
    sms_sends_per_hour: int
    sms_sends_per_day: int


@dataclass(frozen=True, slots=True)
class Requirement:
    factors: int
    strong: int
    review_required: bool


@dataclass(frozen=True, slots=True)
class MethodRule:
    strength: Strength
    levels: frozenset[RiskLevel]
    withdraw_after_sim_swap: bool = False
    enabled: bool = True
    requires_consent: bool = False
    max_factors: int = 1


@dataclass(frozen=True, slots=True)
class MethodPlan:
    """One non-biometric method at one level, compiled at load so deciding does no lookups."""

    method: Method
    strength: Strength
    allowed: bool
    withdraw_after_sim_swap: bool
    offered: OfferedMethod


@dataclass(frozen=True, slots=True)
class FacePlan:
    enabled: bool
    allowed: bool
    offered: OfferedMethod


@dataclass(frozen=True, slots=True)
class LevelPlan:
    requirement: Requirement
    methods: tuple[MethodPlan, ...]
    face: FacePlan | None


def _plans(
    order: tuple[Method, ...],
    rules: Mapping[Method, MethodRule],
    requirements: Mapping[RiskLevel, Requirement],
) -> dict[RiskLevel, LevelPlan]:
    plans: dict[RiskLevel, LevelPlan] = {}
    for level in LEVELS_ASCENDING:
        methods = tuple(
            MethodPlan(
                method=m,
                strength=rules[m].strength,
                allowed=rules[m].enabled and level in rules[m].levels,
                withdraw_after_sim_swap=rules[m].withdraw_after_sim_swap,
                offered=OfferedMethod(
                    m, rules[m].strength, biometric=False, optional_alternative=False
                ),
            )
            for m in order
            if m not in BIOMETRIC_METHODS
        )
        face_rule = rules.get(Method.FACE) if Method.FACE in order else None
        face = (
            None
            if face_rule is None
            else FacePlan(
                enabled=face_rule.enabled,
                allowed=level in face_rule.levels,
                # Face is always an optional alternative, never a requirement (FRM-12).
                offered=OfferedMethod(
                    Method.FACE, face_rule.strength, biometric=True, optional_alternative=True
                ),
            )
        )
        plans[level] = LevelPlan(requirements[level], methods, face)
    return plans


@dataclass(frozen=True, slots=True)
class Catalog:
    locale: Locale
    levels: Mapping[RiskLevel, str]
    methods: Mapping[Method, str]
    reasons: Mapping[SignalCode, str]
    not_offered: Mapping[NotOfferedReason, str]
    review: Mapping[str, str]
    offer: Mapping[str, str]
    templates: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Policy:
    version: str
    sha256: str
    thresholds: SignalThresholds
    weights: Mapping[SignalCode, int]
    network_weights: Mapping[Network, int]
    level_thresholds: tuple[tuple[RiskLevel, int], ...]  # ascending: (medium, n), (high, n), …
    floors: Mapping[SignalCode, RiskLevel]
    requirements: Mapping[RiskLevel, Requirement]
    method_order: tuple[Method, ...]
    methods: Mapping[Method, MethodRule]
    # Compiled from the above once at load, for the hot path.
    plans: Mapping[RiskLevel, LevelPlan]
    decision_ttl_minutes: int
    limits: Limits
    review: ReviewSla
    catalogs: Mapping[Locale, Catalog]
    # The parsed documents, for `GET /v1/policy` and for the hash.
    document: Mapping[str, Any]


# --- small typed readers -------------------------------------------------------------------------


def _table(doc: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = doc.get(key)
    if not isinstance(value, dict):
        raise PolicyError("SCHEMA", f"{where}[{key}] must be a table")
    return value


def _int(doc: Mapping[str, Any], key: str, where: str, *, minimum: int | None = None) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError("SCHEMA", f"{where}.{key} must be an integer")
    if minimum is not None and value < minimum:
        raise PolicyError("SCHEMA", f"{where}.{key} must be at least {minimum}")
    return value


def _number(doc: Mapping[str, Any], key: str, where: str) -> float:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise PolicyError("SCHEMA", f"{where}.{key} must be a positive number")
    return float(value)


def _bool(doc: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = doc.get(key, default)
    if not isinstance(value, bool):
        raise PolicyError("SCHEMA", f"{where}.{key} must be true or false")
    return value


def _only_keys(doc: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise PolicyError("SCHEMA", f"{where}: unknown key(s) {', '.join(unknown)}")


def _signal(name: str, where: str) -> SignalCode:
    try:
        return SignalCode(name)
    except ValueError:
        raise PolicyError("UNKNOWN_SIGNAL", f"{where}: unknown signal {name!r}") from None


def _method(name: object, where: str) -> Method:
    try:
        return Method(str(name))
    except ValueError:
        raise PolicyError("UNKNOWN_METHOD", f"{where}: unknown method {name!r}") from None


def _level(name: object, where: str) -> RiskLevel:
    try:
        return RiskLevel(str(name))
    except ValueError:
        raise PolicyError("UNKNOWN_LEVEL", f"{where}: unknown risk level {name!r}") from None


# --- the policy document -------------------------------------------------------------------------

_TOP_KEYS = {
    "version",
    "description",
    "signals",
    "weights",
    "network_weights",
    "levels",
    "floors",
    "requirements",
    "methods",
    "decision",
    "limits",
    "review",
}


def _thresholds(doc: Mapping[str, Any]) -> SignalThresholds:
    t = _table(doc, "signals", "policy")
    fields = SignalThresholds.__dataclass_fields__
    _only_keys(t, set(fields), "[signals]")
    return SignalThresholds(
        impossible_travel_kmh=_number(t, "impossible_travel_kmh", "signals"),
        impossible_travel_min_km=_number(t, "impossible_travel_min_km", "signals"),
        recent_sim_swap_hours=_number(t, "recent_sim_swap_hours", "signals"),
        recent_credential_change_hours=_number(t, "recent_credential_change_hours", "signals"),
        velocity_window_hours=_number(t, "velocity_window_hours", "signals"),
        velocity_threshold=_int(t, "velocity_threshold", "signals", minimum=1),
        failed_verifications_window_hours=_number(
            t, "failed_verifications_window_hours", "signals"
        ),
        failed_verifications_threshold=_int(
            t, "failed_verifications_threshold", "signals", minimum=1
        ),
        long_standing_account_days=_number(t, "long_standing_account_days", "signals"),
    )


def _weights(doc: Mapping[str, Any]) -> tuple[dict[SignalCode, int], dict[Network, int]]:
    raw = _table(doc, "weights", "policy")
    weights: dict[SignalCode, int] = {}
    for name in raw:
        code = _signal(name, "[weights]")
        if code is SignalCode.RISKY_NETWORK:
            raise PolicyError(
                "SCHEMA", "[weights]: RISKY_NETWORK is weighted per network in [network_weights]"
            )
        weights[code] = _int(raw, name, "weights")
    for code in SignalCode:
        if code is not SignalCode.RISKY_NETWORK and code not in weights:
            raise PolicyError("MISSING_WEIGHT", f"[weights] has no weight for {code.value}")
    for code, weight in weights.items():
        # Monotonic by construction: a risk signal can only add, a mitigating one only subtract.
        if code in MITIGATING_SIGNALS and weight > 0:
            raise PolicyError(
                "MITIGATION_RAISES_RISK", f"{code.value} mitigates and must weigh <= 0"
            )
        if code not in MITIGATING_SIGNALS and weight < 0:
            raise PolicyError(
                "RISK_WEIGHT_NEGATIVE", f"{code.value} is a risk signal and must weigh >= 0"
            )
    raw_net = _table(doc, "network_weights", "policy")
    network: dict[Network, int] = {}
    for name in raw_net:
        try:
            kind = Network(name)
        except ValueError:
            raise PolicyError(
                "UNKNOWN_NETWORK", f"[network_weights]: unknown network {name!r}"
            ) from None
        if kind not in RISKY_NETWORKS:
            raise PolicyError("SCHEMA", f"[network_weights]: {name} is not a risky network kind")
        network[kind] = _int(raw_net, name, "network_weights", minimum=0)
    for kind in sorted(RISKY_NETWORKS):
        if kind not in network:
            raise PolicyError("MISSING_WEIGHT", f"[network_weights] has no weight for {kind.value}")
    return weights, network


def _levels(doc: Mapping[str, Any]) -> tuple[tuple[RiskLevel, int], ...]:
    raw = _table(doc, "levels", "policy")
    _only_keys(raw, {"medium", "high", "critical"}, "[levels]")
    out = tuple((level, _int(raw, level.value, "levels")) for level in LEVELS_ASCENDING[1:])
    previous = 0
    for level, threshold in out:
        if threshold <= previous:
            raise PolicyError(
                "THRESHOLDS_NOT_INCREASING",
                f"[levels].{level.value} must be greater than {previous}, got {threshold}",
            )
        previous = threshold
    return out


def _floors(doc: Mapping[str, Any]) -> dict[SignalCode, RiskLevel]:
    raw = doc.get("floors", {})
    if not isinstance(raw, dict):
        raise PolicyError("SCHEMA", "[floors] must be a table")
    floors: dict[SignalCode, RiskLevel] = {}
    for name, level in raw.items():
        code = _signal(name, "[floors]")
        if code in MITIGATING_SIGNALS:
            raise PolicyError("SCHEMA", f"[floors]: {name} mitigates risk and cannot set a floor")
        floors[code] = _level(level, f"[floors].{name}")
    return floors


def _requirements(doc: Mapping[str, Any]) -> dict[RiskLevel, Requirement]:
    raw = _table(doc, "requirements", "policy")
    _only_keys(raw, {lvl.value for lvl in LEVELS_ASCENDING}, "[requirements]")
    out: dict[RiskLevel, Requirement] = {}
    for level in LEVELS_ASCENDING:
        where = f"requirements.{level.value}"
        table = _table(raw, level.value, "[requirements]")
        _only_keys(table, {"factors", "strong", "review_required"}, f"[{where}]")
        factors = _int(table, "factors", where, minimum=1)
        strong = _int(table, "strong", where, minimum=0)
        if factors > MAX_FACTORS:
            raise PolicyError(
                "REQUIREMENT_INVALID", f"[{where}] factors must be at most {MAX_FACTORS}"
            )
        if strong > factors:
            raise PolicyError("REQUIREMENT_INVALID", f"[{where}] strong must not exceed factors")
        out[level] = Requirement(factors, strong, _bool(table, "review_required", where, False))
    return out


def _methods(doc: Mapping[str, Any]) -> tuple[tuple[Method, ...], dict[Method, MethodRule]]:
    raw = _table(doc, "methods", "policy")
    order_raw = raw.get("order")
    if not isinstance(order_raw, list) or not order_raw:
        raise PolicyError("SCHEMA", "[methods].order must be a non-empty list of methods")
    order = tuple(_method(name, "[methods].order") for name in order_raw)
    if len(set(order)) != len(order):
        raise PolicyError("DUPLICATE_METHOD", "[methods].order lists a method twice")
    rules: dict[Method, MethodRule] = {}
    for name, table in raw.items():
        if name == "order":
            continue
        method = _method(name, "[methods]")
        where = f"methods.{name}"
        if not isinstance(table, dict):
            raise PolicyError("SCHEMA", f"[{where}] must be a table")
        _only_keys(
            table,
            {
                "strength",
                "levels",
                "withdraw_after_sim_swap",
                "enabled",
                "requires_consent",
                "max_factors",
            },
            f"[{where}]",
        )
        try:
            strength = Strength(str(table.get("strength")))
        except ValueError:
            raise PolicyError(
                "SCHEMA", f"[{where}].strength must be strong or restricted"
            ) from None
        levels_raw = table.get("levels")
        if not isinstance(levels_raw, list):
            raise PolicyError("SCHEMA", f"[{where}].levels must be a list of risk levels")
        rules[method] = MethodRule(
            strength=strength,
            levels=frozenset(_level(lvl, f"[{where}].levels") for lvl in levels_raw),
            withdraw_after_sim_swap=_bool(table, "withdraw_after_sim_swap", where, False),
            enabled=_bool(table, "enabled", where, True),
            requires_consent=_bool(table, "requires_consent", where, False),
            max_factors=_int(table, "max_factors", where, minimum=0)
            if "max_factors" in table
            else 1,
        )
    for method in order:
        if method not in rules:
            raise PolicyError(
                "SCHEMA",
                f"[methods].order names {method.value} but [methods.{method.value}] is missing",
            )
    for method in rules:
        if method not in order:
            raise PolicyError("SCHEMA", f"[methods.{method.value}] is not in [methods].order")
    return order, rules


def _limits(doc: Mapping[str, Any]) -> Limits:
    raw = _table(doc, "limits", "policy")
    names = list(Limits.__dataclass_fields__)
    _only_keys(raw, set(names), "[limits]")
    values = {name: _int(raw, name, "limits", minimum=1) for name in names}
    if values["sms_sends_per_hour"] > values["sms_sends_per_day"]:
        raise PolicyError("SCHEMA", "[limits].sms_sends_per_hour must not exceed sms_sends_per_day")
    # NIST SP 800-63B 3.2.2: at most 100 consecutive failures on one authenticator.
    if values["method_failures_per_day"] > 100:
        raise PolicyError("LIMIT_TOO_HIGH", "[limits].method_failures_per_day must be at most 100")
    return Limits(**values)


def _review(doc: Mapping[str, Any]) -> ReviewSla:
    raw = _table(doc, "review", "policy")
    _only_keys(
        raw,
        {"priorities", "sla_hours", "base_priority", "urgent_origins", "long_wait_hours"},
        "[review]",
    )
    priorities = raw.get("priorities")
    if (
        not isinstance(priorities, list)
        or not priorities
        or not all(isinstance(p, str) for p in priorities)
    ):
        raise PolicyError("SCHEMA", "[review].priorities must be a non-empty list of names")
    if len(set(priorities)) != len(priorities):
        raise PolicyError("SCHEMA", "[review].priorities lists a name twice")
    hours = _table(raw, "sla_hours", "[review]")
    _only_keys(hours, set(priorities), "[review].sla_hours")
    sla = {p: _int(hours, p, "review.sla_hours", minimum=1) for p in priorities}
    if any(sla[a] > sla[b] for a, b in itertools.pairwise(priorities)):
        raise PolicyError(
            "SLA_NOT_INCREASING", "[review].sla_hours must not shrink as priority falls"
        )
    base_raw = _table(raw, "base_priority", "[review]")
    _only_keys(base_raw, {lvl.value for lvl in LEVELS_ASCENDING}, "[review].base_priority")
    base: dict[RiskLevel, str] = {}
    for level in LEVELS_ASCENDING:
        name = base_raw.get(level.value)
        if name not in priorities:
            raise PolicyError(
                "SCHEMA", f"[review].base_priority.{level.value} must be one of {priorities}"
            )
        base[level] = str(name)
    origins = raw.get("urgent_origins", [])
    if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
        raise PolicyError("SCHEMA", "[review].urgent_origins must be a list of origin names")
    return ReviewSla(
        priorities=tuple(priorities),
        sla_hours=MappingProxyType(sla),
        base_priority=MappingProxyType(base),
        urgent_origins=frozenset(origins),
        long_wait_hours=_int(raw, "long_wait_hours", "review", minimum=1),
    )


def _check_principles(
    order: tuple[Method, ...],
    rules: Mapping[Method, MethodRule],
    requirements: Mapping[RiskLevel, Requirement],
) -> None:
    """The rules of DESIGN.md principle 1 that a policy file could break."""
    face = rules.get(Method.FACE)
    if face is not None:
        position = order.index(Method.FACE)
        if any(m not in BIOMETRIC_METHODS for m in order[position + 1 :]):
            raise PolicyError(
                "FACE_FIRST", "face must come after every non-biometric method in [methods].order"
            )
        if not face.requires_consent:
            raise PolicyError(
                "FACE_WITHOUT_CONSENT", "[methods.face].requires_consent must be true"
            )
        if face.max_factors != 1:
            raise PolicyError("FACE_COUNTS_MORE_THAN_ONE", "[methods.face].max_factors must be 1")
    sms = rules.get(Method.SMS)
    if sms is not None and sms.strength is not Strength.RESTRICTED:
        raise PolicyError(
            "SMS_NOT_RESTRICTED", "[methods.sms].strength must be restricted (NIST SP 800-63B)"
        )
    if sms is not None and not sms.withdraw_after_sim_swap:
        raise PolicyError(
            "SMS_AFTER_SIM_SWAP", "[methods.sms].withdraw_after_sim_swap must be true"
        )
    for level in LEVELS_ASCENDING:
        need = requirements[level]
        non_bio = [
            m
            for m in order
            if m not in BIOMETRIC_METHODS and level in rules[m].levels and rules[m].enabled
        ]
        strong = [m for m in non_bio if rules[m].strength is Strength.STRONG]
        if len(non_bio) < need.factors or len(strong) < need.strong:
            face_here = face is not None and face.enabled and level in face.levels
            rule = "FACE_SOLE_PATH" if face_here else "NO_NON_BIOMETRIC_PATH"
            raise PolicyError(
                rule,
                f"at {level.value} risk the non-biometric methods cannot meet the requirement "
                f"of {need.factors} factor(s) with {need.strong} strong",
            )
        if (
            level is not RiskLevel.LOW
            and sms is not None
            and level in sms.levels
            and need.factors == 1
            and need.strong == 0
        ):
            raise PolicyError(
                "SMS_ALONE_ABOVE_LOW", f"at {level.value} risk an SMS code alone would be enough"
            )


# --- catalogs ------------------------------------------------------------------------------------

REVIEW_KEYS = ("available", "required", *[r.value for r in ReviewReason])
TEMPLATE_FIELDS: dict[str, set[str]] = {
    "risk": {"level"},
    "reasons": {"reasons"},
    "no_reasons": set(),
    "face_optional": set(),
    "sms_not_alone": set(),
    "not_offered": {"items"},
    "review_reasons": {"reasons"},
    "not_offered_item": {"method", "reason"},
    "list_separator": set(),
}


def _messages(
    raw: Mapping[str, Any],
    section: str,
    keys: list[str],
    locale: str,
    *,
    optional: tuple[str, ...] = (),
) -> dict[str, str]:
    table = raw.get(section)
    if not isinstance(table, dict):
        raise PolicyError("MISSING_MESSAGE", f"catalog {locale}: section [{section}] is missing")
    unknown = sorted(set(table) - set(keys) - set(optional))
    if unknown:
        raise PolicyError(
            "UNKNOWN_MESSAGE_KEY",
            f"catalog {locale}: [{section}] has unknown key(s) {', '.join(unknown)}",
        )
    out: dict[str, str] = {}
    for key in keys:
        text = table.get(key)
        if not isinstance(text, str) or not text.strip():
            raise PolicyError(
                "MISSING_MESSAGE", f"catalog {locale}: [{section}].{key} has no message"
            )
        if re.search(r"\d", text):
            # Explanations name categories, never thresholds or weights that would help an attacker.
            raise PolicyError(
                "MESSAGE_REVEALS_NUMBER", f"catalog {locale}: [{section}].{key} contains a number"
            )
        out[key] = text
    return out


def _check_not_coercive(text: str, where: str) -> None:
    lowered = text.lower()
    for word in COERCIVE_WORDS:
        if word in lowered:
            raise PolicyError(
                "FACE_COERCIVE_COPY", f"{where} must not call face verification {word!r}"
            )


def _catalog(locale: Locale, text: str, factor_counts: set[int]) -> Catalog:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError("SCHEMA", f"catalog {locale.value}: not valid TOML ({exc})") from None
    if raw.get("locale") != locale.value:
        raise PolicyError(
            "SCHEMA", f"catalog for {locale.value} declares locale {raw.get('locale')!r}"
        )
    _only_keys(
        raw,
        {"locale", "levels", "methods", "reasons", "not_offered", "review", "offer", "templates"},
        f"catalog {locale.value}",
    )
    loc = locale.value
    levels = _messages(raw, "levels", [lvl.value for lvl in LEVELS_ASCENDING], loc)
    methods = _messages(raw, "methods", [m.value for m in Method], loc)
    reasons = _messages(raw, "reasons", [c.value for c in SignalCode], loc)
    not_offered = _messages(raw, "not_offered", [r.value for r in NotOfferedReason], loc)
    review = _messages(raw, "review", list(REVIEW_KEYS), loc)
    offer_keys = [FACTOR_WORDS[n - 1] for n in sorted(factor_counts)]
    offer = _messages(raw, "offer", offer_keys, loc, optional=FACTOR_WORDS)
    templates = _messages(raw, "templates", list(TEMPLATE_FIELDS), loc)
    for name, allowed in TEMPLATE_FIELDS.items():
        used = {f for _, f, _, _ in string.Formatter().parse(templates[name]) if f}
        if used != allowed and not (name == "list_separator" and not used):
            raise PolicyError(
                "SCHEMA",
                f"catalog {loc}: [templates].{name} must use exactly the fields {sorted(allowed)}",
            )
    for key in (Method.FACE.value,):
        _check_not_coercive(methods[key], f"catalog {loc}: [methods].face")
    _check_not_coercive(templates["face_optional"], f"catalog {loc}: [templates].face_optional")
    for code in NotOfferedReason:
        if code.value.startswith("FACE") or code is NotOfferedReason.NO_FACE_CONSENT:
            _check_not_coercive(
                not_offered[code.value], f"catalog {loc}: [not_offered].{code.value}"
            )
    return Catalog(
        locale=locale,
        levels=MappingProxyType({RiskLevel(k): v for k, v in levels.items()}),
        methods=MappingProxyType({Method(k): v for k, v in methods.items()}),
        reasons=MappingProxyType({SignalCode(k): v for k, v in reasons.items()}),
        not_offered=MappingProxyType({NotOfferedReason(k): v for k, v in not_offered.items()}),
        review=MappingProxyType(review),
        offer=MappingProxyType(offer),
        templates=MappingProxyType(templates),
    )


# --- entry point ---------------------------------------------------------------------------------


def canonical_sha256(document: Mapping[str, Any]) -> str:
    return hashlib.sha256(rfc8785.dumps(document)).hexdigest()


def load_policy(policy_text: str, catalog_texts: Mapping[str, str]) -> Policy:
    """Parse and validate a policy and its catalogs (locale -> TOML text)."""
    try:
        doc = tomllib.loads(policy_text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError("SCHEMA", f"not valid TOML ({exc})") from None
    _only_keys(doc, _TOP_KEYS, "policy")
    version = doc.get("version")
    if not isinstance(version, str) or not version.strip():
        raise PolicyError("VERSION_MISSING", "policy.version must be a non-empty string")
    thresholds = _thresholds(doc)
    weights, network_weights = _weights(doc)
    level_thresholds = _levels(doc)
    floors = _floors(doc)
    requirements = _requirements(doc)
    order, rules = _methods(doc)
    _check_principles(order, rules, requirements)
    decision = _table(doc, "decision", "policy")
    _only_keys(decision, {"ttl_minutes"}, "[decision]")
    ttl = _int(decision, "ttl_minutes", "decision", minimum=1)
    limits = _limits(doc)
    review = _review(doc)

    unknown_locales = sorted(set(catalog_texts) - {loc.value for loc in Locale})
    if unknown_locales:
        raise PolicyError("SCHEMA", f"catalogs for unknown locale(s) {', '.join(unknown_locales)}")
    factor_counts = {r.factors for r in requirements.values()}
    catalogs: dict[Locale, Catalog] = {}
    for locale in Locale:
        if locale.value not in catalog_texts:
            raise PolicyError("MISSING_MESSAGE", f"no message catalog for {locale.value}")
        catalogs[locale] = _catalog(locale, catalog_texts[locale.value], factor_counts)

    # The hash covers everything that shapes a decision and its explanation.
    hashed = {
        "policy": doc,
        "catalogs": {loc: tomllib.loads(catalog_texts[loc]) for loc in sorted(catalog_texts)},
    }
    try:
        digest = canonical_sha256(hashed)
    except Exception as exc:  # rfc8785 refuses values JSON cannot carry (dates, NaN)
        raise PolicyError(
            "SCHEMA", f"policy holds a value with no canonical JSON form ({exc})"
        ) from None
    return Policy(
        version=version,
        sha256=digest,
        thresholds=thresholds,
        weights=MappingProxyType(weights),
        network_weights=MappingProxyType(network_weights),
        level_thresholds=level_thresholds,
        floors=MappingProxyType(floors),
        requirements=MappingProxyType(requirements),
        method_order=order,
        methods=MappingProxyType(rules),
        plans=MappingProxyType(_plans(order, rules, requirements)),
        decision_ttl_minutes=ttl,
        limits=limits,
        review=review,
        catalogs=MappingProxyType(catalogs),
        document=MappingProxyType(hashed),
    )
