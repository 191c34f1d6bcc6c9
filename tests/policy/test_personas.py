"""Personas: the case that motivated FairUnlock and the situations around it (FRM-10, FRM-12,
NIST-63B4-3.2.3 restricted SMS, PIPL-24 human review)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from policy.config import Policy
from policy.engine import decide, satisfies
from policy.explain import decision_json
from policy.model import (
    AccountFacts,
    ConsentState,
    Decision,
    GeoPoint,
    LastLogin,
    LinkedIdentity,
    Locale,
    LockReason,
    Method,
    Network,
    NotOfferedReason,
    PhoneOnFile,
    RequestContext,
    RequestHistory,
    ReviewReason,
    RiskLevel,
    SignalCode,
    UnlockRequestFacts,
)

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
SHANGHAI = GeoPoint("CN", 31.23, 121.47)
SHANGHAI_HOME = GeoPoint("CN", 31.20, 121.44)


def _request(**context: Any) -> UnlockRequestFacts:
    base: dict[str, Any] = {
        "ip": "203.0.113.7",
        "device_id": "d-7f3a",
        "geo": SHANGHAI,
        "network": Network.RESIDENTIAL,
        "account_created_at": datetime(2016, 3, 2, 8, tzinfo=UTC),
        "last_login": LastLogin(datetime(2026, 11, 20, 9, 12, tzinfo=UTC), "d-11aa", SHANGHAI_HOME),
        "known_device_ids": frozenset({"d-11aa", "d-5c02"}),
    }
    base.update(context)
    return UnlockRequestFacts(
        "acct-1024",
        LockReason.SUSPECTED_TAKEOVER,
        RequestContext(**base),
        Locale.ZH_CN,
    )


REAL_NAME_ACCOUNT = AccountFacts(
    linked_identities=(LinkedIdentity("gov-eid", real_name_verified=True),),
    phone=PhoneOnFile(verified=True),
)
CONSENTED_ACCOUNT = msgspec.structs.replace(REAL_NAME_ACCOUNT, face_consent=ConsentState.ACTIVE)


def _methods(d: Decision) -> list[Method]:
    return [m.method for m in d.offer.methods]


def _not_offered(d: Decision) -> dict[Method, NotOfferedReason]:
    return {n.method: n.reason for n in d.offer.not_offered}


def test_design_persona_gets_non_biometric_methods_and_no_face_without_consent(
    default_policy: Policy,
) -> None:
    d = decide(_request(), REAL_NAME_ACCOUNT, RequestHistory(), default_policy, NOW)
    codes = [r.code for r in d.assessment.reasons]
    assert SignalCode.NEW_DEVICE in codes
    assert SignalCode.LONG_STANDING_ACCOUNT in codes
    assert SignalCode.IMPOSSIBLE_TRAVEL not in codes
    assert d.assessment.level in (RiskLevel.LOW, RiskLevel.MEDIUM)
    assert _methods(d) == [Method.LINKED_IDENTITY, Method.SMS]
    assert satisfies(d.offer, frozenset({Method.LINKED_IDENTITY}))
    assert _not_offered(d)[Method.FACE] is NotOfferedReason.NO_FACE_CONSENT
    assert d.offer.review.available
    assert not d.offer.review.required


def test_design_persona_with_consent_sees_face_last_as_an_optional_alternative(
    default_policy: Policy,
) -> None:
    d = decide(_request(), CONSENTED_ACCOUNT, RequestHistory(), default_policy, NOW)
    assert _methods(d) == [Method.LINKED_IDENTITY, Method.SMS, Method.FACE]
    face = d.offer.methods[-1]
    assert face.biometric
    assert face.optional_alternative
    text = decision_json(d, default_policy, Locale.EN, include_scores=False)["explanation"]
    assert "optional alternative" in text
    assert "required" not in text.lower()


def test_nist_63b4_3_2_3_face_completes_a_text_message_code_and_never_counts_alone(
    default_policy: Policy,
) -> None:
    d = decide(_request(), CONSENTED_ACCOUNT, RequestHistory(), default_policy, NOW)
    assert d.assessment.level is RiskLevel.MEDIUM
    assert not satisfies(d.offer, frozenset({Method.FACE}))
    assert not satisfies(d.offer, frozenset({Method.SMS}))
    # The person who lost access to the linked account: the code to their phone plus face.
    assert satisfies(d.offer, frozenset({Method.SMS, Method.FACE}))


def test_gdpr_5_1_c_face_is_not_offered_where_any_other_method_is_enough(
    default_policy: Policy,
) -> None:
    # A user-requested lock from a known device: low risk, one factor of any strength.
    facts = UnlockRequestFacts(
        "acct-1024",
        LockReason.USER_REQUESTED,
        RequestContext(
            ip="203.0.113.7",
            device_id="d-11aa",
            geo=SHANGHAI,
            network=Network.RESIDENTIAL,
            account_created_at=datetime(2016, 3, 2, 8, tzinfo=UTC),
            last_login=LastLogin(datetime(2026, 11, 20, 9, 12, tzinfo=UTC), "d-11aa", SHANGHAI),
            known_device_ids=frozenset({"d-11aa"}),
        ),
        Locale.EN,
    )
    d = decide(facts, CONSENTED_ACCOUNT, RequestHistory(), default_policy, NOW)
    assert d.assessment.level is RiskLevel.LOW
    assert _methods(d) == [Method.LINKED_IDENTITY, Method.SMS]
    assert _not_offered(d)[Method.FACE] is NotOfferedReason.FACE_NOT_NEEDED
    text = decision_json(d, default_policy, Locale.EN, include_scores=False)["explanation"]
    assert "face verification would add nothing here" in text


def test_sim_swapped_yesterday_withdraws_sms(default_policy: Policy) -> None:
    d = decide(
        _request(sim_swap_at=NOW - timedelta(days=1)),
        REAL_NAME_ACCOUNT,
        RequestHistory(),
        default_policy,
        NOW,
    )
    assert SignalCode.RECENT_SIM_SWAP in [r.code for r in d.assessment.reasons]
    assert Method.SMS not in _methods(d)
    assert _not_offered(d)[Method.SMS] is NotOfferedReason.SIM_SWAP_RECENT
    assert Method.LINKED_IDENTITY in _methods(d)


def test_nothing_enrolled_goes_to_human_review(default_policy: Policy) -> None:
    account = AccountFacts(face_consent=ConsentState.ACTIVE)
    d = decide(_request(), account, RequestHistory(), default_policy, NOW)
    assert _methods(d) == []
    assert d.offer.review.required
    assert ReviewReason.NO_USABLE_METHOD in d.offer.review.reasons
    # Face with consent but nothing else would make face the only way in: refused.
    assert _not_offered(d)[Method.FACE] is NotOfferedReason.FACE_WITHOUT_NON_BIOMETRIC_PATH


def test_impossible_travel_through_tor_is_critical_and_a_person_decides(
    default_policy: Policy,
) -> None:
    d = decide(
        _request(
            geo=GeoPoint("DE", 52.52, 13.40),
            network=Network.TOR,
            last_login=LastLogin(NOW - timedelta(hours=1), "d-11aa", SHANGHAI_HOME),
        ),
        AccountFacts(
            linked_identities=REAL_NAME_ACCOUNT.linked_identities,
            phone=REAL_NAME_ACCOUNT.phone,
            face_consent=ConsentState.ACTIVE,
        ),
        RequestHistory(),
        default_policy,
        NOW,
    )
    codes = [r.code for r in d.assessment.reasons]
    assert SignalCode.IMPOSSIBLE_TRAVEL in codes
    assert SignalCode.RISKY_NETWORK in codes
    assert d.assessment.level is RiskLevel.CRITICAL
    assert d.offer.review.required
    assert ReviewReason.LEVEL_REQUIRES_REVIEW in d.offer.review.reasons
    assert _not_offered(d)[Method.FACE] is NotOfferedReason.FACE_NOT_ALLOWED_AT_LEVEL
    # Factors are still collected as evidence for the reviewer.
    assert Method.LINKED_IDENTITY in _methods(d)


def test_consent_withdrawn_removes_face(default_policy: Policy) -> None:
    account = AccountFacts(
        linked_identities=REAL_NAME_ACCOUNT.linked_identities,
        phone=REAL_NAME_ACCOUNT.phone,
        face_consent=ConsentState.WITHDRAWN,
    )
    d = decide(_request(), account, RequestHistory(), default_policy, NOW)
    assert Method.FACE not in _methods(d)
    assert _not_offered(d)[Method.FACE] is NotOfferedReason.FACE_CONSENT_WITHDRAWN
    assert satisfies(d.offer, frozenset({Method.LINKED_IDENTITY}))


def test_consent_under_an_older_notice_counts_as_stale(default_policy: Policy) -> None:
    account = AccountFacts(
        phone=PhoneOnFile(True), totp=REAL_NAME_ACCOUNT.totp, face_consent=ConsentState.STALE
    )
    d = decide(_request(), account, RequestHistory(), default_policy, NOW)
    assert _not_offered(d)[Method.FACE] is NotOfferedReason.FACE_CONSENT_STALE


def test_sms_alone_is_never_enough_above_low(default_policy: Policy) -> None:
    account = AccountFacts(phone=PhoneOnFile(True))
    d = decide(_request(), account, RequestHistory(), default_policy, NOW)
    assert d.assessment.level is not RiskLevel.LOW
    assert _methods(d) == [Method.SMS]
    assert not satisfies(d.offer, frozenset({Method.SMS}))
    assert d.offer.review.required
