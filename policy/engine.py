"""The risk engine: signals become a RiskAssessment, the account's methods become an ordered Offer.

Invariants (proved by hypothesis in tests/policy): face is never first, never the only automated
path, never offered without active consent, never counted twice; when the non-biometric methods
cannot meet the requirement a person reviews; review is always available; the engine never denies.
"""

from __future__ import annotations

from datetime import datetime

from policy.config import Policy
from policy.model import (
    BIOMETRIC_METHODS,
    LEVELS_ASCENDING,
    AccountFacts,
    ConsentState,
    Decision,
    Method,
    NotOffered,
    NotOfferedReason,
    Offer,
    OfferedMethod,
    Reason,
    RequestHistory,
    ReviewPath,
    ReviewReason,
    RiskAssessment,
    RiskLevel,
    Signal,
    SignalCode,
    Strength,
    TotpState,
    UnlockRequestFacts,
)
from policy.signals import derive_signals

_CONSENT_NOT_OFFERED = {
    ConsentState.NONE: NotOfferedReason.NO_FACE_CONSENT,
    ConsentState.WITHDRAWN: NotOfferedReason.FACE_CONSENT_WITHDRAWN,
    ConsentState.STALE: NotOfferedReason.FACE_CONSENT_STALE,
}


def _weight(signal: Signal, policy: Policy) -> int:
    if signal.network is not None:
        return policy.network_weights[signal.network]
    return policy.weights[signal.code]


def assess(signals: tuple[Signal, ...], policy: Policy) -> RiskAssessment:
    reasons = tuple(Reason(s.code, _weight(s, policy), s.code.value) for s in signals)
    score = sum(r.weight for r in reasons)
    level = RiskLevel.LOW
    for candidate, threshold in policy.level_thresholds:
        if score >= threshold:
            level = candidate
    floors: list[SignalCode] = []
    for signal in signals:
        floor = policy.floors.get(signal.code)
        if floor is not None and floor.rank > level.rank:
            floors.append(signal.code)
    if floors:
        # Floors never lower a level, so the result stays monotonic in the risk signals.
        level = LEVELS_ASCENDING[max(policy.floors[c].rank for c in floors)]
    return RiskAssessment(level=level, score=score, reasons=reasons, floors_applied=tuple(floors))


def _availability(
    method: Method,
    account: AccountFacts,
    sim_swapped: bool,
    policy: Policy,
    level: RiskLevel,
) -> list[OfferedMethod | NotOffered]:
    """Whether the account can use one non-biometric method now, and if not, why."""
    rule = policy.methods[method]
    strength = rule.strength
    if method is Method.TOTP:
        if account.totp is TotpState.NONE:
            return [NotOffered(method, NotOfferedReason.NOT_ENROLLED)]
        if account.totp is TotpState.UNCONFIRMED:
            return [NotOffered(method, NotOfferedReason.NOT_CONFIRMED)]
    elif method is Method.LINKED_IDENTITY:
        if not account.linked_identities:
            return [NotOffered(method, NotOfferedReason.NOT_ENROLLED)]
        out: list[OfferedMethod | NotOffered] = []
        for ident in sorted(account.linked_identities, key=lambda i: i.provider):
            if not ident.real_name_verified:
                out.append(
                    NotOffered(
                        method, NotOfferedReason.IDENTITY_NOT_REAL_NAME_VERIFIED, ident.provider
                    )
                )
            elif level not in rule.levels:
                out.append(
                    NotOffered(method, NotOfferedReason.METHOD_NOT_ALLOWED_AT_LEVEL, ident.provider)
                )
            elif method in account.throttled_methods:
                out.append(NotOffered(method, NotOfferedReason.THROTTLED, ident.provider))
            else:
                out.append(OfferedMethod(method, strength, False, False, ident.provider))
        return out
    elif method is Method.RECOVERY_CODE:
        if account.recovery_codes_remaining is None:
            return [NotOffered(method, NotOfferedReason.NOT_ENROLLED)]
        if account.recovery_codes_remaining <= 0:
            return [NotOffered(method, NotOfferedReason.NO_CODES_LEFT)]
    elif method is Method.SMS:
        if account.phone is None:
            return [NotOffered(method, NotOfferedReason.NOT_ENROLLED)]
        if not account.phone.verified:
            return [NotOffered(method, NotOfferedReason.PHONE_NOT_VERIFIED)]
        if sim_swapped and rule.withdraw_after_sim_swap:
            return [NotOffered(method, NotOfferedReason.SIM_SWAP_RECENT)]
    if level not in rule.levels or not rule.enabled:
        return [NotOffered(method, NotOfferedReason.METHOD_NOT_ALLOWED_AT_LEVEL)]
    if method in account.throttled_methods:
        return [NotOffered(method, NotOfferedReason.THROTTLED)]
    return [OfferedMethod(method, strength, False, False)]


def _face(
    account: AccountFacts, policy: Policy, level: RiskLevel, non_bio_path: bool
) -> OfferedMethod | NotOffered:
    rule = policy.methods[Method.FACE]
    if not rule.enabled:
        return NotOffered(Method.FACE, NotOfferedReason.FACE_DISABLED)
    if level not in rule.levels:
        return NotOffered(Method.FACE, NotOfferedReason.FACE_NOT_ALLOWED_AT_LEVEL)
    if account.face_consent is not ConsentState.ACTIVE:
        return NotOffered(Method.FACE, _CONSENT_NOT_OFFERED[account.face_consent])
    if Method.FACE in account.throttled_methods:
        return NotOffered(Method.FACE, NotOfferedReason.THROTTLED)
    if not non_bio_path:
        return NotOffered(Method.FACE, NotOfferedReason.FACE_WITHOUT_NON_BIOMETRIC_PATH)
    return OfferedMethod(Method.FACE, rule.strength, True, True)


def make_offer(
    assessment: RiskAssessment,
    account: AccountFacts,
    signals: tuple[Signal, ...],
    policy: Policy,
) -> Offer:
    level = assessment.level
    need = policy.requirements[level]
    sim_swapped = any(s.code is SignalCode.RECENT_SIM_SWAP for s in signals)
    offered: list[OfferedMethod] = []
    not_offered: list[NotOffered] = []
    for method in policy.method_order:
        if method in BIOMETRIC_METHODS:
            continue
        for item in _availability(method, account, sim_swapped, policy, level):
            if isinstance(item, OfferedMethod):
                offered.append(item)
            else:
                not_offered.append(item)

    distinct = {m.method for m in offered}
    strong = {m.method for m in offered if m.strength is Strength.STRONG}
    non_bio_path = len(distinct) >= need.factors and len(strong) >= need.strong

    if Method.FACE in policy.methods and Method.FACE in policy.method_order:
        face = _face(account, policy, level, non_bio_path)
        if isinstance(face, OfferedMethod):
            offered.append(face)
        else:
            not_offered.append(face)

    review_reasons: list[ReviewReason] = []
    if need.review_required:
        review_reasons.append(ReviewReason.LEVEL_REQUIRES_REVIEW)
    if not non_bio_path:
        review_reasons.append(ReviewReason.NO_USABLE_METHOD)
    return Offer(
        factors_required=need.factors,
        strong_factors_required=need.strong,
        methods=tuple(offered),
        not_offered=tuple(not_offered),
        review=ReviewPath(required=bool(review_reasons), reasons=tuple(review_reasons)),
        non_biometric_path=non_bio_path,
    )


def decide(
    request: UnlockRequestFacts,
    account: AccountFacts,
    history: RequestHistory,
    policy: Policy,
    now: datetime,
) -> Decision:
    """Derive, assess and offer in one call: the whole engine for one unlock request."""
    signals = derive_signals(request, history, policy, now)
    assessment = assess(signals, policy)
    return Decision(
        signals=signals,
        assessment=assessment,
        offer=make_offer(assessment, account, signals, policy),
    )


def satisfies(offer: Offer, satisfied: frozenset[Method]) -> bool:
    """Whether proofs of these methods meet the offer; face counts once and only if offered."""
    offered = {m.method: m for m in offer.methods}
    usable = [offered[m] for m in satisfied if m in offered]
    strong = [m for m in usable if m.strength is Strength.STRONG]
    return len(usable) >= offer.factors_required and len(strong) >= offer.strong_factors_required
