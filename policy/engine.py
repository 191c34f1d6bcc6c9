"""The risk engine: signals become a RiskAssessment, the account's methods become an ordered Offer.

Invariants (proved by hypothesis in tests/policy): face is never first, never the only automated
path, never offered without active consent or where it could change nothing, never counted twice
and never without a non-biometric proof beside it; when the non-biometric methods cannot meet the
requirement a person reviews; review is always available; the engine never denies.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from policy.config import FacePlan, MethodPlan, Policy, Requirement
from policy.model import (
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

# Enum members bound once: attribute access on an Enum class costs more than the rest of a check,
# and this module runs ~50,000 times a second (bench/bench_policy.py).
_LOW = RiskLevel.LOW
_RANK = {level: i for i, level in enumerate(LEVELS_ASCENDING)}
_STRONG = Strength.STRONG
_TOTP, _LINKED, _RECOVERY, _SMS, _FACE = (
    Method.TOTP,
    Method.LINKED_IDENTITY,
    Method.RECOVERY_CODE,
    Method.SMS,
    Method.FACE,
)
_TOTP_NONE, _TOTP_UNCONFIRMED = TotpState.NONE, TotpState.UNCONFIRMED
_ACTIVE = ConsentState.ACTIVE
_SIM_SWAP = SignalCode.RECENT_SIM_SWAP
_CONSENT_NOT_OFFERED = {
    ConsentState.NONE: NotOfferedReason.NO_FACE_CONSENT,
    ConsentState.WITHDRAWN: NotOfferedReason.FACE_CONSENT_WITHDRAWN,
    ConsentState.STALE: NotOfferedReason.FACE_CONSENT_STALE,
}
# NotOffered without a provider is a constant per (method, reason): built once, shared.
_NOT_OFFERED = {(m, r): NotOffered(m, r) for m in Method for r in NotOfferedReason}


def assess(signals: tuple[Signal, ...], policy: Policy) -> RiskAssessment:
    weights, network_weights = policy.weights, policy.network_weights
    reasons: list[Reason] = []
    score = 0
    for s in signals:
        weight = weights[s.code] if s.network is None else network_weights[s.network]
        score += weight
        # The code is its own message key (a StrEnum is a str): no per-request string work.
        reasons.append(Reason(s.code, weight, s.code))
    level = _LOW
    for candidate, threshold in policy.level_thresholds:
        if score >= threshold:
            level = candidate
    floors: list[SignalCode] = []
    rank = _RANK[level]
    floor_rank = rank
    for s in signals:
        floor = policy.floors.get(s.code)
        if floor is not None and _RANK[floor] > rank:
            floors.append(s.code)
            floor_rank = max(floor_rank, _RANK[floor])
    # Floors only ever raise the level, so the result stays monotonic in the risk signals.
    level = LEVELS_ASCENDING[floor_rank]
    return RiskAssessment(
        level=level, score=score, reasons=tuple(reasons), floors_applied=tuple(floors)
    )


def _enrolment_gap(
    method: Method, account: AccountFacts, sim_swapped: bool, plan: MethodPlan
) -> NotOfferedReason | None:
    """Why the account cannot use this method at all, whatever the level; None if it can."""
    if method is _TOTP:
        if account.totp is _TOTP_NONE:
            return NotOfferedReason.NOT_ENROLLED
        if account.totp is _TOTP_UNCONFIRMED:
            return NotOfferedReason.NOT_CONFIRMED
    elif method is _RECOVERY:
        remaining = account.recovery_codes_remaining
        if remaining is None:
            return NotOfferedReason.NOT_ENROLLED
        if remaining <= 0:
            return NotOfferedReason.NO_CODES_LEFT
    elif method is _SMS:
        phone = account.phone
        if phone is None:
            return NotOfferedReason.NOT_ENROLLED
        if not phone.verified:
            return NotOfferedReason.PHONE_NOT_VERIFIED
        if sim_swapped and plan.withdraw_after_sim_swap:
            return NotOfferedReason.SIM_SWAP_RECENT
    return None


def _linked_identities(
    account: AccountFacts,
    plan: MethodPlan,
    offered: list[OfferedMethod],
    not_offered: list[NotOffered],
) -> None:
    identities = account.linked_identities
    if not identities:
        not_offered.append(_NOT_OFFERED[_LINKED, NotOfferedReason.NOT_ENROLLED])
        return
    throttled = _LINKED in account.throttled_methods
    for ident in (
        sorted(identities, key=lambda i: i.provider) if len(identities) > 1 else identities
    ):
        if not ident.real_name_verified:
            reason: NotOfferedReason | None = NotOfferedReason.IDENTITY_NOT_REAL_NAME_VERIFIED
        elif not plan.allowed:
            reason = NotOfferedReason.METHOD_NOT_ALLOWED_AT_LEVEL
        elif throttled:
            reason = NotOfferedReason.THROTTLED
        else:
            reason = None
        if reason is None:
            offered.append(OfferedMethod(_LINKED, plan.strength, False, False, ident.provider))
        else:
            not_offered.append(NotOffered(_LINKED, reason, ident.provider))


def make_offer(
    assessment: RiskAssessment,
    account: AccountFacts,
    signals: tuple[Signal, ...],
    policy: Policy,
) -> Offer:
    level_plan = policy.plans[assessment.level]
    need = level_plan.requirement
    sim_swapped = False
    for s in signals:
        if s.code is _SIM_SWAP:
            sim_swapped = True
    throttled = account.throttled_methods
    offered: list[OfferedMethod] = []
    not_offered: list[NotOffered] = []
    for plan in level_plan.methods:
        method = plan.method
        if method is _LINKED:
            _linked_identities(account, plan, offered, not_offered)
            continue
        gap = _enrolment_gap(method, account, sim_swapped, plan)
        if gap is None and not plan.allowed:
            gap = NotOfferedReason.METHOD_NOT_ALLOWED_AT_LEVEL
        if gap is None and method in throttled:
            gap = NotOfferedReason.THROTTLED
        if gap is None:
            offered.append(plan.offered)
        else:
            not_offered.append(_NOT_OFFERED[method, gap])

    distinct: set[Method] = set()
    strong = 0
    for m in offered:
        if m.method not in distinct:
            distinct.add(m.method)
            strong += m.strength is _STRONG
    non_bio_path = len(distinct) >= need.factors and strong >= need.strong

    face = level_plan.face
    if face is not None:
        gap = _face_gap(face, account, need, non_bio_path, len(distinct), strong)
        if gap is None:
            offered.append(face.offered)
        else:
            not_offered.append(_NOT_OFFERED[_FACE, gap])

    if need.review_required and not non_bio_path:
        review = _REVIEW_BOTH
    elif need.review_required:
        review = _REVIEW_LEVEL
    elif not non_bio_path:
        review = _REVIEW_NO_METHOD
    else:
        review = _REVIEW_NOT_REQUIRED
    return Offer(
        factors_required=need.factors,
        strong_factors_required=need.strong,
        methods=tuple(offered),
        not_offered=tuple(not_offered),
        review=review,
        non_biometric_path=non_bio_path,
    )


def _face_gap(
    face: FacePlan,
    account: AccountFacts,
    need: Requirement,
    non_bio_path: bool,
    non_biometric: int,
    non_biometric_strong: int,
) -> NotOfferedReason | None:
    """Why face is not offered at this level for this account, or None when it is."""
    if not face.enabled:
        return NotOfferedReason.FACE_DISABLED
    if not face.allowed:
        return NotOfferedReason.FACE_NOT_ALLOWED_AT_LEVEL
    if account.face_consent is not _ACTIVE:
        return _CONSENT_NOT_OFFERED[account.face_consent]
    if _FACE in account.throttled_methods:
        return NotOfferedReason.THROTTLED
    if not non_bio_path:
        # FRM-10: face would be the only automated way in; a person reviews instead.
        return NotOfferedReason.FACE_WITHOUT_NON_BIOMETRIC_PATH
    face_strong = face.offered.strength is _STRONG
    if not face_can_help(
        need.factors, need.strong, non_biometric, non_biometric_strong, face_strong
    ):
        return NotOfferedReason.FACE_NOT_NEEDED
    return None


_REVIEW_NOT_REQUIRED = ReviewPath(required=False)
_REVIEW_LEVEL = ReviewPath(required=True, reasons=(ReviewReason.LEVEL_REQUIRES_REVIEW,))
_REVIEW_NO_METHOD = ReviewPath(required=True, reasons=(ReviewReason.NO_USABLE_METHOD,))
_REVIEW_BOTH = ReviewPath(
    required=True, reasons=(ReviewReason.LEVEL_REQUIRES_REVIEW, ReviewReason.NO_USABLE_METHOD)
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
    return proofs_meet(
        offer.factors_required,
        offer.strong_factors_required,
        [(m.strength is Strength.STRONG, m.biometric) for m in usable],
    )


def proofs_meet(
    factors_required: int, strong_required: int, proofs: Iterable[tuple[bool, bool]]
) -> bool:
    """Whether distinct methods' proofs, each given as (strong, biometric), meet a requirement.

    NIST-63B4-3.2.3-a: a biometric is used only as part of multi-factor authentication, so a
    biometric proof counts only beside at least one non-biometric proof; never alone."""
    factors = strong = non_biometric = 0
    for is_strong, biometric in proofs:
        factors += 1
        strong += is_strong
        non_biometric += not biometric
    if non_biometric == 0:
        return False
    return factors >= factors_required and strong >= strong_required


def face_can_help(
    factors_required: int,
    strong_required: int,
    non_biometric: int,
    non_biometric_strong: int,
    face_strong: bool,
) -> bool:
    """Whether a face proof can complete some proofs of the offered non-biometric
    methods that fall short alone: some non-empty choice of them, ``n`` methods of which ``s``
    strong, misses the requirement while it and face meet it. When none can, every
    such proof is enough alone and face would be processed for nothing."""
    for s in range(non_biometric_strong + 1):
        for restricted in range(non_biometric - non_biometric_strong + 1):
            n = s + restricted
            if n == 0:
                continue
            alone = n >= factors_required and s >= strong_required
            with_face = n + 1 >= factors_required and s + face_strong >= strong_required
            if with_face and not alone:
                return True
    return False
