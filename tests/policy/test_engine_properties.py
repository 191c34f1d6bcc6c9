"""DESIGN.md principles 1 and 2 as properties over arbitrary requests, accounts and consent states.

FRM-6/8/10/12 (face never first, never sole, never without consent), NIST-63B4-3.2.3 (biometric
never alone as the only factor), PIPL-24 / GDPR-22 (review always available), ASVS4-2.2.2.
"""

from __future__ import annotations

from itertools import combinations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.config import Policy
from policy.engine import assess, decide, satisfies
from policy.model import (
    MITIGATING_SIGNALS,
    AccountFacts,
    ConsentState,
    Decision,
    Method,
    Network,
    NotOfferedReason,
    Offer,
    RequestHistory,
    Signal,
    SignalCode,
    UnlockRequestFacts,
)
from tests.policy.conftest import load_default
from tests.policy.strategies import NOW, accounts, histories, requests

POLICY: Policy = load_default()
EXAMPLES = settings(max_examples=400, deadline=None)


def _decide(
    request: UnlockRequestFacts, account: AccountFacts, history: RequestHistory
) -> Decision:
    return decide(request, account, history, POLICY, NOW)


@EXAMPLES
@given(requests, accounts, histories)
def test_frm10_face_is_never_first_and_comes_after_every_non_biometric_method(
    request: UnlockRequestFacts, account: AccountFacts, history: RequestHistory
) -> None:
    methods = _decide(request, account, history).offer.methods
    if methods:
        assert methods[0].method is not Method.FACE
    seen_face = False
    for m in methods:
        if m.method is Method.FACE:
            seen_face = True
        else:
            assert not seen_face, "a non-biometric method after face"


@EXAMPLES
@given(requests, accounts, histories)
def test_frm10_face_is_never_the_only_path_to_approval(
    request: UnlockRequestFacts, account: AccountFacts, history: RequestHistory
) -> None:
    offer = _decide(request, account, history).offer
    if any(m.method is Method.FACE for m in offer.methods):
        non_bio = frozenset(m.method for m in offer.methods if not m.biometric)
        assert satisfies(offer, non_bio), "face offered although the other methods cannot unlock"


@EXAMPLES
@given(requests, accounts, histories)
def test_frm6_face_is_never_offered_without_active_consent(
    request: UnlockRequestFacts, account: AccountFacts, history: RequestHistory
) -> None:
    offer = _decide(request, account, history).offer
    if any(m.method is Method.FACE for m in offer.methods):
        assert account.face_consent is ConsentState.ACTIVE
    else:
        assert any(n.method is Method.FACE for n in offer.not_offered), (
            "face absent without a reason"
        )


def _subsets(methods: frozenset[Method]) -> list[frozenset[Method]]:
    ordered = sorted(methods, key=lambda m: m.value)
    return [frozenset(c) for size in range(len(ordered) + 1) for c in combinations(ordered, size)]


def _face_completes(offer: Offer, methods: frozenset[Method]) -> bool:
    """Some choice of these methods misses the offer alone and meets it with face (counted over
    every choice, not by the engine's arithmetic)."""
    return any(
        not satisfies(offer, subset) and satisfies(offer, subset | {Method.FACE})
        for subset in _subsets(methods)
    )


@EXAMPLES
@given(requests, accounts, histories)
def test_nist_63b4_face_counts_as_one_factor_at_most(
    request: UnlockRequestFacts, account: AccountFacts, history: RequestHistory
) -> None:
    offer = _decide(request, account, history).offer
    faces = [m for m in offer.methods if m.method is Method.FACE]
    assert len(faces) <= 1
    for m in faces:
        assert m.biometric
        assert m.optional_alternative
    for subset in _subsets(frozenset(m.method for m in offer.methods)):
        with_face = subset | {Method.FACE}
        # Adding face to any set of proofs can stand in for one factor, never for two.
        if satisfies(offer, with_face) and Method.FACE not in subset:
            needed = offer.factors_required - 1
            assert len(subset) >= needed


@EXAMPLES
@given(requests, accounts, histories)
def test_nist_63b4_3_2_3_face_never_counts_without_a_non_biometric_proof(
    request: UnlockRequestFacts, account: AccountFacts, history: RequestHistory
) -> None:
    offer = _decide(request, account, history).offer
    assert not satisfies(offer, frozenset({Method.FACE}))
    non_bio = frozenset(m.method for m in offer.methods if not m.biometric)
    for subset in _subsets(non_bio):
        if satisfies(offer, subset | {Method.FACE}):
            assert subset, "face alone met the requirement"


@EXAMPLES
@given(requests, accounts, histories)
def test_gdpr_5_1_c_face_is_offered_only_where_it_can_complete_a_proof(
    request: UnlockRequestFacts, account: AccountFacts, history: RequestHistory
) -> None:
    decision = _decide(request, account, history)
    offer = decision.offer
    non_bio = frozenset(m.method for m in offer.methods if not m.biometric)
    if any(m.method is Method.FACE for m in offer.methods):
        assert _face_completes(offer, non_bio), "face offered where it completes no proof"
    reasons = {n.reason for n in offer.not_offered if n.method is Method.FACE}
    if NotOfferedReason.FACE_NOT_NEEDED in reasons:
        # satisfies() counts face only when offered: ask what it would complete if it were.
        face = POLICY.plans[decision.assessment.level].face
        assert face is not None
        with_face = msgspec.structs.replace(offer, methods=(*offer.methods, face.offered))
        assert not _face_completes(with_face, non_bio)


@EXAMPLES
@given(requests, accounts, histories)
def test_pipl24_a_non_biometric_path_or_human_review_is_always_present(
    request: UnlockRequestFacts, account: AccountFacts, history: RequestHistory
) -> None:
    offer = _decide(request, account, history).offer
    non_bio = frozenset(m.method for m in offer.methods if not m.biometric)
    assert satisfies(offer, non_bio) or offer.review.required
    assert offer.non_biometric_path == satisfies(offer, non_bio)


@EXAMPLES
@given(requests, accounts, histories)
def test_gdpr22_review_is_always_available(
    request: UnlockRequestFacts, account: AccountFacts, history: RequestHistory
) -> None:
    decision = _decide(request, account, history)
    assert decision.offer.review.available is True
    if decision.assessment.level.value == "critical":
        assert decision.offer.review.required


@EXAMPLES
@given(requests, accounts, histories)
def test_only_enrolled_usable_methods_are_offered(
    request: UnlockRequestFacts, account: AccountFacts, history: RequestHistory
) -> None:
    decision = _decide(request, account, history)
    sim_swapped = any(s.code is SignalCode.RECENT_SIM_SWAP for s in decision.signals)
    for m in decision.offer.methods:
        assert m.method not in account.throttled_methods
        if m.method is Method.SMS:
            assert account.phone is not None
            assert account.phone.verified
            assert not sim_swapped
        if m.method is Method.TOTP:
            assert account.totp.value == "confirmed"
        if m.method is Method.RECOVERY_CODE:
            assert (account.recovery_codes_remaining or 0) > 0
        if m.method is Method.LINKED_IDENTITY:
            assert any(
                i.provider == m.provider and i.real_name_verified for i in account.linked_identities
            )


@EXAMPLES
@given(requests, accounts, histories)
def test_same_input_and_policy_give_the_same_output(
    request: UnlockRequestFacts, account: AccountFacts, history: RequestHistory
) -> None:
    assert _decide(request, account, history) == _decide(request, account, history)


risk_signals = st.sampled_from(
    [
        Signal(c)
        for c in SignalCode
        if c not in MITIGATING_SIGNALS and c is not SignalCode.RISKY_NETWORK
    ]
    + [
        Signal(SignalCode.RISKY_NETWORK, network=n)
        for n in (Network.PROXY, Network.TOR, Network.DATACENTER, Network.MALICIOUS)
    ]
)
any_signals = st.lists(risk_signals | st.just(Signal(SignalCode.LONG_STANDING_ACCOUNT)), max_size=8)


@EXAMPLES
@given(any_signals, risk_signals)
def test_adding_a_risk_signal_never_lowers_the_level(signals: list[Signal], extra: Signal) -> None:
    before = assess(tuple(signals), POLICY)
    after = assess((*signals, extra), POLICY)
    assert after.level.rank >= before.level.rank
    assert after.score >= before.score


@EXAMPLES
@given(requests, accounts, histories, st.integers(1, 10), st.integers(1, 10))
def test_more_failed_verifications_or_requests_never_lower_the_level(
    request: UnlockRequestFacts,
    account: AccountFacts,
    history: RequestHistory,
    more_failed: int,
    more_requests: int,
) -> None:
    worse = RequestHistory(
        history.recent_unlock_requests + more_requests,
        history.recent_failed_verifications + more_failed,
    )
    before = _decide(request, account, history).assessment.level
    after = _decide(request, account, worse).assessment.level
    assert after.rank >= before.rank
