"""Plain-language explanations and the JSON shapes of the decision object's ``risk`` and ``offer``.

Person-facing output names categories only; ``include_scores`` adds the score breakdown that
agents and auditors see (DESIGN.md principle 3).
"""

from __future__ import annotations

from typing import Any

from policy.config import FACTOR_WORDS, Catalog, Policy
from policy.model import Decision, Locale, Method, NotOffered, Offer, RiskAssessment, Strength


def _not_offered_label(item: NotOffered, catalog: Catalog) -> str:
    label = catalog.methods[item.method]
    if item.provider:
        label = f"{label} ({item.provider})"
    return catalog.templates["not_offered_item"].format(
        method=label, reason=catalog.not_offered[item.reason]
    )


def explain(decision: Decision, catalog: Catalog) -> str:
    a, offer = decision.assessment, decision.offer
    t = catalog.templates
    sep = t["list_separator"]
    parts = [t["risk"].format(level=catalog.levels[a.level])]
    if a.reasons:
        parts.append(
            t["reasons"].format(reasons=sep.join(catalog.reasons[r.code] for r in a.reasons))
        )
    else:
        parts.append(t["no_reasons"])
    if offer.review.required:
        parts.append(catalog.review["required"])
        reasons = sep.join(catalog.review[r.value] for r in offer.review.reasons)
        parts.append(t["review_reasons"].format(reasons=reasons))
    if offer.methods:
        parts.append(catalog.offer[FACTOR_WORDS[offer.factors_required - 1]])
        sms_offered = any(
            m.method is Method.SMS and m.strength is Strength.RESTRICTED for m in offer.methods
        )
        if sms_offered and offer.strong_factors_required > 0:
            parts.append(t["sms_not_alone"])
        if any(m.biometric for m in offer.methods):
            parts.append(t["face_optional"])
    if offer.not_offered:
        items = sep.join(_not_offered_label(n, catalog) for n in offer.not_offered)
        parts.append(t["not_offered"].format(items=items))
    parts.append(catalog.review["available"])
    # Every part is a whole sentence; Chinese sentences are written without a space between them.
    return ("" if catalog.locale is Locale.ZH_CN else " ").join(parts)


def risk_json(
    assessment: RiskAssessment, catalog: Catalog, *, include_scores: bool
) -> dict[str, Any]:
    reasons: list[dict[str, Any]] = []
    for r in assessment.reasons:
        item: dict[str, Any] = {"code": r.code.value, "message": catalog.reasons[r.code]}
        if include_scores:
            item["weight"] = r.weight
        reasons.append(item)
    out: dict[str, Any] = {"level": assessment.level.value, "reasons": reasons}
    if include_scores:
        out["score"] = assessment.score
        out["floors_applied"] = [c.value for c in assessment.floors_applied]
    return out


def offer_json(offer: Offer, catalog: Catalog) -> dict[str, Any]:
    methods: list[dict[str, Any]] = []
    for m in offer.methods:
        item: dict[str, Any] = {
            "method": m.method.value,
            "biometric": m.biometric,
            "optional_alternative": m.optional_alternative,
            "strength": m.strength.value,
        }
        if m.provider is not None:
            item["provider"] = m.provider
        methods.append(item)
    not_offered: list[dict[str, Any]] = []
    for n in offer.not_offered:
        entry: dict[str, Any] = {
            "method": n.method.value,
            "reason": n.reason.value,
            "message": catalog.not_offered[n.reason],
        }
        if n.provider is not None:
            entry["provider"] = n.provider
        not_offered.append(entry)
    return {
        "factors_required": offer.factors_required,
        "strong_factors_required": offer.strong_factors_required,
        "methods": methods,
        "not_offered": not_offered,
        "review_required": offer.review.required,
        "review_reasons": [
            {"code": r.value, "message": catalog.review[r.value]} for r in offer.review.reasons
        ],
    }


def decision_json(
    decision: Decision, policy: Policy, locale: Locale, *, include_scores: bool
) -> dict[str, Any]:
    """The decision object's ``risk``, ``offer``, ``explanation``, ``review`` and ``policy``."""
    catalog = policy.catalogs[locale]
    return {
        "risk": risk_json(decision.assessment, catalog, include_scores=include_scores),
        "offer": offer_json(decision.offer, catalog),
        "explanation": explain(decision, catalog),
        "review": {
            "available": decision.offer.review.available,
            "required": decision.offer.review.required,
        },
        "policy": {"version": policy.version, "sha256": policy.sha256},
    }
