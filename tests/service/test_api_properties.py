"""At the API level, over random enrolments, consent changes and request contexts: every decision
keeps DESIGN.md principles 1-3 (FRM-6/10/12, PIPL-24, GDPR-22): face never first, never sole,
never unconsented; review always available; reasons, policy hash and audit index always present;
the engine never denies."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.methods.totp import TotpParameters, code_at
from tests.service.conftest import Api

networks = st.sampled_from(
    ["residential", "mobile", "corporate", "proxy", "tor", "datacenter", "malicious", "unknown"]
)
places = st.sampled_from(
    [
        {"country": "CN", "lat": 31.23, "lon": 121.47},
        {"country": "DE", "lat": 52.52, "lon": 13.40},
        {"country": "US"},
    ]
)
times = st.sampled_from(
    [
        "2026-11-21T09:00:00Z",
        "2026-11-01T00:00:00Z",
        "2016-03-02T08:00:00Z",
        "2026-11-22T02:00:00+08:00",
    ]
)
contexts = st.fixed_dictionaries(
    {"ip": st.sampled_from(["203.0.113.7", "2001:db8::1"])},
    optional={
        "device_id": st.sampled_from(["d-1", "d-2"]),
        "geo": places,
        "network": networks,
        "sim_swap_at": times,
        "credential_changed_at": times,
        "account_created_at": times,
        "last_login": st.fixed_dictionaries(
            {}, optional={"at": times, "device_id": st.sampled_from(["d-1", "d-3"]), "geo": places}
        ),
        "known_device_ids": st.lists(st.sampled_from(["d-1", "d-2", "d-3"]), max_size=3),
    },
)
enrolments = st.fixed_dictionaries(
    {
        "phone": st.sampled_from([None, True, False]),
        "totp": st.booleans(),
        "linked": st.sampled_from([None, True, False]),
        "consent": st.sampled_from(["none", "granted", "withdrawn"]),
    }
)


def _enrol(api: Api, account_id: str, e: dict[str, Any]) -> None:
    h, base = api.headers(), f"/v1/accounts/{account_id}"
    if e["phone"] is not None:
        assert (
            api.client.put(
                f"{base}/phone", json={"phone": "+8613800005678", "verified": e["phone"]}, headers=h
            ).status_code
            == 200
        )
    if e["totp"]:
        secret = api.client.post(f"{base}/totp", headers=h).json()["secret"]
        code = code_at(secret, datetime.now(UTC), TotpParameters())
        assert (
            api.client.post(f"{base}/totp/confirm", json={"code": code}, headers=h).status_code
            == 200
        )
    if e["linked"] is not None:
        body = {"subject": "s-" + account_id, "real_name_verified": e["linked"]}
        assert (
            api.client.put(f"{base}/linked-identities/gov-eid", json=body, headers=h).status_code
            == 200
        )
    if e["consent"] != "none":
        version = api.client.get("/v1/face-consent/notice", headers=h).json()["version"]
        body = {"notice_version": version, "purpose": "account_unlock", "accepted": True}
        assert api.client.put(f"{base}/face-consent", json=body, headers=h).status_code == 200
        if e["consent"] == "withdrawn":
            assert api.client.delete(f"{base}/face-consent", headers=h).status_code == 200


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    enrolment=enrolments,
    context=contexts,
    lock_reason=st.sampled_from(
        [
            "suspected_takeover",
            "too_many_failed_logins",
            "unusual_activity",
            "user_requested",
            "payment_risk",
        ]
    ),
    locale=st.sampled_from(["zh-CN", "en"]),
)
def test_every_decision_keeps_the_principles(
    sqlite_api: Api,
    enrolment: dict[str, Any],
    context: dict[str, Any],
    lock_reason: str,
    locale: str,
) -> None:
    api = sqlite_api
    account_id = f"acct-{uuid.uuid4().hex[:12]}"
    _enrol(api, account_id, enrolment)
    body = {
        "account_id": account_id,
        "lock_reason": lock_reason,
        "locale": locale,
        "context": context,
    }
    r = api.client.post("/v1/unlock-requests", json=body, headers=api.headers())
    assert r.status_code == 201, r.text
    d = r.json()

    assert d["status"] in {"pending_verification", "review_required"}  # never "denied"
    methods = d["offer"]["methods"]
    names = [m["method"] for m in methods]
    if "face" in names:
        assert names[0] != "face"
        assert names[-1] == "face"
        assert enrolment["consent"] == "granted"
        face = methods[-1]
        assert face["biometric"] is True
        assert face["optional_alternative"] is True
        non_bio = [m for m in methods if not m["biometric"]]
        distinct = {m["method"] for m in non_bio}
        strong = {m["method"] for m in non_bio if m["strength"] == "strong"}
        assert len(distinct) >= d["offer"]["factors_required"]
        assert len(strong) >= d["offer"]["strong_factors_required"]
    else:
        assert any(n["method"] == "face" for n in d["offer"]["not_offered"])
    assert all(not m["biometric"] for m in methods if m["method"] != "face")
    assert d["review"]["available"] is True
    assert d["review"]["appeal_path"].endswith("/appeals")
    assert d["risk"]["reasons"]
    assert all(r["code"] and r["message"] for r in d["risk"]["reasons"])
    assert len(d["policy"]["sha256"]) == 64
    assert isinstance(d["audit"]["index"], int)
    assert d["explanation"]
