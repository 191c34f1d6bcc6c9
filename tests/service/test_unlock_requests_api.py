"""POST/GET /v1/unlock-requests over HTTP on SQLite and PostgreSQL: the decision object exactly as
DESIGN.md shows it, principles 1-3 (FRM-10, PIPL-24, GDPR-22), anti-enumeration (OWASP-FP-1/2)."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from service.methods import totp
from service.persistence.api_keys import Role
from tests.service.conftest import PERSONA_REQUEST, Api

DECISION_FIELDS = {
    "id", "account_id", "status", "risk", "offer", "factors_satisfied", "explanation", "review",
    "policy", "audit", "created_at", "expires_at",
}  # fmt: skip


def _enrol_persona(api: Api, account_id: str = "acct-1024", *, consent: bool = False) -> None:
    h = api.headers()
    assert (
        api.client.put(
            f"/v1/accounts/{account_id}/phone", json={"phone": "+8613800005678"}, headers=h
        ).status_code
        == 200
    )
    r = api.client.put(
        f"/v1/accounts/{account_id}/linked-identities/gov-eid",
        json={"subject": "248289761001", "real_name_verified": True},
        headers=h,
    )
    assert r.status_code == 200, r.text
    if consent:
        version = api.client.get("/v1/face-consent/notice", headers=h).json()["version"]
        r = api.client.put(
            f"/v1/accounts/{account_id}/face-consent",
            json={"notice_version": version, "purpose": "account_unlock", "accepted": True},
            headers=h,
        )
        assert r.status_code == 200, r.text


def _post(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    r = api.client.post("/v1/unlock-requests", json=body, headers=api.headers())
    assert r.status_code == 201, r.text
    result: dict[str, Any] = r.json()
    return result


def test_design_persona_decision_has_every_field_of_the_contract(api: Api) -> None:
    _enrol_persona(api, consent=True)
    d = _post(api, PERSONA_REQUEST)
    assert set(d) >= DECISION_FIELDS
    assert d["account_id"] == "acct-1024"
    assert d["status"] == "pending_verification"
    assert d["risk"]["level"] == "medium"
    assert {"NEW_DEVICE", "LONG_STANDING_ACCOUNT"} <= {r["code"] for r in d["risk"]["reasons"]}
    assert all(r["message"] and "weight" not in r for r in d["risk"]["reasons"])
    methods = d["offer"]["methods"]
    assert [m["method"] for m in methods] == ["linked_identity", "sms", "face"]
    assert methods[0]["provider"] == "gov-eid"
    assert methods[1]["target"] == "+86 138****5678"
    assert methods[2] == {
        "method": "face",
        "biometric": True,
        "optional_alternative": True,
        "strength": "strong",
    }
    assert {"method": "totp", "reason": "NOT_ENROLLED"}.items() <= d["offer"]["not_offered"][
        0
    ].items()
    assert d["offer"]["factors_required"] == 1
    assert d["factors_satisfied"] == []
    assert "人工复核" in d["explanation"]  # zh-CN, as the request asked
    assert d["review"]["available"] is True
    assert d["review"]["appeal_path"] == f"/v1/unlock-requests/{d['id']}/appeals"
    assert d["policy"]["version"] == api.ctx.policy.version
    assert d["policy"]["sha256"] == api.ctx.policy.sha256
    assert isinstance(d["audit"]["index"], int)
    assert d["audit"]["index"] >= 0

    again = api.client.get(f"/v1/unlock-requests/{d['id']}", headers=api.headers())
    assert again.status_code == 200
    assert again.json() == d


@pytest.mark.parametrize("locale", ["en", "zh-CN"])
def test_every_message_of_a_decision_is_in_the_requests_locale(api: Api, locale: str) -> None:
    """Reasons, methods not offered and the offer's labels read from the policy's catalog for
    the request's locale, and from no other (PIPL-24: an explanation the person can read)."""
    from policy.model import Locale, NotOfferedReason, SignalCode

    _enrol_persona(api)
    body = copy.deepcopy(PERSONA_REQUEST)
    body["locale"] = locale
    d = _post(api, body)
    catalogs = api.ctx.policy.catalogs
    mine, other = catalogs[Locale(locale)], catalogs[Locale("en" if locale == "zh-CN" else "zh-CN")]
    assert d["risk"]["reasons"]
    for reason in d["risk"]["reasons"]:
        assert reason["message"] == mine.reasons[SignalCode(reason["code"])]
        assert reason["message"] != other.reasons[SignalCode(reason["code"])]
    assert d["offer"]["not_offered"]
    for item in d["offer"]["not_offered"]:
        assert item["message"] == mine.not_offered[NotOfferedReason(item["reason"])]
    assert d["explanation"] != _post(api, body | {"locale": other.locale.value})["explanation"]


def test_critical_request_goes_to_review_and_is_never_denied(api: Api) -> None:
    _enrol_persona(api)
    body = copy.deepcopy(PERSONA_REQUEST)
    body["context"].update(network="tor", geo={"country": "DE", "lat": 52.52, "lon": 13.40})
    body["context"]["last_login"]["at"] = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    d = _post(api, body)
    assert d["risk"]["level"] == "critical"
    assert d["status"] == "review_required"
    assert d["review"]["required"] is True
    assert "LEVEL_REQUIRES_REVIEW" in {r["code"] for r in d["review"]["reasons"]}


def test_sim_swap_yesterday_withdraws_sms_over_http(api: Api) -> None:
    _enrol_persona(api)
    body = copy.deepcopy(PERSONA_REQUEST)
    body["context"]["sim_swap_at"] = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    d = _post(api, body)
    assert "sms" not in [m["method"] for m in d["offer"]["methods"]]
    assert {"method": "sms", "reason": "SIM_SWAP_RECENT"}.items() <= next(
        n for n in d["offer"]["not_offered"] if n["method"] == "sms"
    ).items()


def test_decision_expires_when_its_time_passes(api: Api) -> None:
    _enrol_persona(api)
    d = _post(api, PERSONA_REQUEST)
    started = api.client.post(
        f"/v1/unlock-requests/{d['id']}/challenges", json={"method": "sms"}, headers=api.headers()
    )
    assert started.status_code == 201, started.text
    later = datetime.fromisoformat(d["expires_at"]) + timedelta(seconds=1)
    api.set_clock(lambda: later)
    assert (
        api.client.get(f"/v1/unlock-requests/{d['id']}", headers=api.headers()).json()["status"]
        == "expired"
    )
    # Expired, it can no longer be proven: neither a new method nor a proof for an open one.
    base = f"/v1/unlock-requests/{d['id']}/challenges"
    late_start = api.client.post(base, json={"method": "sms"}, headers=api.headers())
    late_proof = api.client.post(
        f"{base}/{started.json()['id']}/verify", json={"code": "123456"}, headers=api.headers()
    )
    for late in (late_start, late_proof):
        assert late.status_code == 409, late.text
        assert late.json()["code"] == "request_closed"
    # A person may still ask for a review of an expired decision.
    appeal = api.client.post(
        f"/v1/unlock-requests/{d['id']}/appeals",
        json={"statement": "it is me"},
        headers=api.headers(),
    )
    assert appeal.status_code == 201, appeal.text


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


def test_unknown_account_gets_the_same_status_and_shape(api: Api) -> None:
    _enrol_persona(api)
    known = _post(api, PERSONA_REQUEST)
    unknown_body = copy.deepcopy(PERSONA_REQUEST)
    unknown_body["account_id"] = "acct-never-seen"
    unknown = _post(api, unknown_body)
    assert unknown["status"] == known["status"]
    assert _shape(unknown["review"]) == _shape(known["review"])
    assert set(unknown) == set(known)
    assert unknown["offer"]["methods"], "an unknown account must look like it has methods"
    sms = [m for m in unknown["offer"]["methods"] if m["method"] == "sms"]
    assert sms
    assert re.fullmatch(r"\+86 13\d\*{4}\d{4}", sms[0]["target"])
    # Stable: the same unknown id always looks the same.
    assert _post(api, unknown_body)["offer"] == unknown["offer"]


def test_an_unknown_id_answers_in_the_shape_of_an_account_enrolled_like_its_profile(
    api: Api,
) -> None:
    """OWASP-FP-1/2, every key at every depth: an unknown id gets a phantom profile (a phone and
    an authenticator, or a phone and recovery codes); a known account enrolled the same way
    answers in exactly the same shape, unlock request and read alike."""
    from tests.enumeration import shape

    h = api.headers()
    known = {"totp": "acct-shape-totp", "recovery_code": "acct-shape-codes"}
    for i, (method, account) in enumerate(known.items()):
        phone = {"phone": f"+86137{i:08d}"}
        assert api.client.put(f"/v1/accounts/{account}/phone", json=phone, headers=h).is_success
        if method == "totp":
            secret = api.client.post(f"/v1/accounts/{account}/totp", headers=h).json()["secret"]
            code = totp.code_at(secret, datetime.now(UTC), totp.TotpParameters())
            confirm = {"code": code}
            assert api.client.post(
                f"/v1/accounts/{account}/totp/confirm", json=confirm, headers=h
            ).is_success
        else:
            assert api.client.post(f"/v1/accounts/{account}/recovery-codes", headers=h).is_success
    compared = set()
    for n in range(40):
        unknown = _post(api, PERSONA_REQUEST | {"account_id": f"acct-shape-unknown-{n}"})
        methods = {m["method"] for m in unknown["offer"]["methods"]}
        profile = "totp" if "totp" in methods else "recovery_code"
        mine = _post(api, PERSONA_REQUEST | {"account_id": known[profile]})
        assert shape(unknown) == shape(mine), (profile, unknown, mine)
        read = {
            d["id"]: api.client.get(f"/v1/unlock-requests/{d['id']}", headers=h).json()
            for d in (unknown, mine)
        }
        assert shape(read[unknown["id"]]) == shape(read[mine["id"]])
        compared.add(profile)
    assert compared == {"totp", "recovery_code"}  # both phantom profiles were met


def test_decisions_are_listed_for_the_person_with_explanations(api: Api) -> None:
    _enrol_persona(api)
    first = _post(api, PERSONA_REQUEST)
    second = _post(api, PERSONA_REQUEST)
    r = api.client.get("/v1/accounts/acct-1024/decisions", headers=api.headers())
    assert r.status_code == 200
    listed = r.json()["decisions"]
    assert [d["id"] for d in listed] == [second["id"], first["id"]]
    assert all(d["explanation"] for d in listed)
    # Another person's decisions are theirs alone.
    _enrol_persona(api, "acct-2048")
    other = _post(api, PERSONA_REQUEST | {"account_id": "acct-2048"})
    again = api.client.get("/v1/accounts/acct-1024/decisions", headers=api.headers()).json()
    assert [d["id"] for d in again["decisions"]] == [second["id"], first["id"]]
    theirs = api.client.get("/v1/accounts/acct-2048/decisions", headers=api.headers()).json()
    assert [d["id"] for d in theirs["decisions"]] == [other["id"]]


def test_repeated_requests_raise_the_recorded_velocity(api: Api) -> None:
    _enrol_persona(api)
    codes = []
    for _ in range(api.ctx.policy.thresholds.velocity_threshold + 1):
        codes.append({r["code"] for r in _post(api, PERSONA_REQUEST)["risk"]["reasons"]})
    assert "REQUEST_VELOCITY" not in codes[0]
    assert "REQUEST_VELOCITY" in codes[-1]


def test_unknown_request_id_is_404_problem(api: Api) -> None:
    r = api.client.get(
        "/v1/unlock-requests/00000000-0000-0000-0000-000000000000", headers=api.headers()
    )
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "unlock_request_not_found"


@pytest.mark.parametrize("role", [Role.ADMIN, Role.AUDITOR])
def test_policy_route_shows_version_and_hash(api: Api, role: Role) -> None:
    r = api.client.get("/v1/policy", headers=api.headers(role))
    assert r.status_code == 200
    assert r.json()["sha256"] == api.ctx.policy.sha256
    assert "policy" in r.json()["document"]


def test_a_decision_whose_audit_integration_fails_leaves_no_row_behind(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decision, its review case and its audit entry are one transaction: when the entry
    cannot be integrated, the caller gets a problem and no table holds any part of the decision
    (a high-risk request, so a review case is opened in the same batch)."""
    from service.flows import unlock

    body = copy.deepcopy(PERSONA_REQUEST)
    body["context"]["network"] = "tor"
    # Known accounts (a phone each): an unknown one is answered with a plausible offer instead.
    for i, account in enumerate(("acct-atomic-control", "acct-atomic")):
        phone = {"phone": f"+86138000{i:05d}"}
        put = api.client.put(f"/v1/accounts/{account}/phone", json=phone, headers=api.headers())
        assert put.status_code == 200, put.text
    # The control: the same request, integrated, writes a decision and a review case.
    body["account_id"] = "acct-atomic-control"
    control = api.client.post("/v1/unlock-requests", json=body, headers=api.headers())
    assert control.status_code == 201, control.text
    assert control.json()["status"] == "review_required"
    assert api.count("review_cases") == 1
    before = api.dump()

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the audit log's disk went away")

    monkeypatch.setattr(unlock, "integrate_direct_in", failing)
    body["account_id"] = "acct-atomic"
    r = api.client.post("/v1/unlock-requests", json=body, headers=api.headers())
    assert r.status_code == 500, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "the audit log's disk" not in r.text  # no internals in the answer
    assert api.dump() == before


def test_a_decision_and_its_audit_entry_commit_together_with_its_index(api: Api) -> None:
    """The batch integrates its entries itself, without the inbox: the index in the answer is
    the entry's, and nothing waits for an integrator afterwards."""
    r = api.client.post("/v1/unlock-requests", json=PERSONA_REQUEST, headers=api.headers())
    assert r.status_code == 201, r.text
    decision = r.json()

    async def logged() -> tuple[int, bytes, int | None]:
        async with api.app.state.engine.connect() as conn:
            inbox_id = (
                await conn.execute(
                    text("SELECT audit_inbox_id FROM unlock_requests WHERE id = :id"),
                    {"id": decision["id"]},
                )
            ).scalar_one()
            row = (
                await conn.execute(
                    text("SELECT seq, leaf FROM audit_log WHERE inbox_id = :i"), {"i": inbox_id}
                )
            ).one()
            queued = (
                await conn.execute(
                    text("SELECT id FROM audit_inbox WHERE id = :i"), {"i": inbox_id}
                )
            ).scalar()
            return int(row.seq), bytes(row.leaf), queued

    seq, leaf, queued = api.run(logged)
    assert decision["audit"]["index"] == seq
    entry = json.loads(leaf)
    assert (entry["kind"], entry["data"]["unlock_request_id"]) == ("decision", decision["id"])
    # Codes and outcomes only, as the decision states them.
    assert entry["data"] == {
        "unlock_request_id": decision["id"],
        "status": decision["status"],
        "lock_reason": PERSONA_REQUEST["lock_reason"],
        "level": decision["risk"]["level"],
        "score": entry["data"]["score"],
        "reasons": [r["code"] for r in decision["risk"]["reasons"]],
        "offered": [m["method"] for m in decision["offer"]["methods"]],
        "not_offered": [
            {"method": n["method"], "reason": n["reason"]} for n in decision["offer"]["not_offered"]
        ],
        "factors_required": decision["offer"]["factors_required"],
        "review_required": decision["review"]["required"],
        "policy_version": decision["policy"]["version"],
        "policy_sha256": decision["policy"]["sha256"],
    }
    assert isinstance(entry["data"]["score"], int)
    assert queued is None  # never an inbox row


def _metric(text_: str, name: str, **labels: str) -> float:
    """A sample's value in Prometheus's text exposition (read by prometheus_client's parser);
    0 when absent."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text_):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def test_the_decision_route_counts_decisions_by_level_and_offers_with_face(api: Api) -> None:
    """/metrics (issue 4): what the unlock route decided, as the scrape sees it."""

    def scrape() -> str:
        r = api.client.get("/metrics")
        assert r.status_code == 200
        return r.text

    before = scrape()
    _enrol_persona(api, consent=True)
    medium = _post(api, PERSONA_REQUEST)  # face consented: offered as the last alternative
    assert medium["offer"]["methods"][-1]["method"] == "face"
    body = copy.deepcopy(PERSONA_REQUEST)
    body["context"].update(network="tor", geo={"country": "DE", "lat": 52.52, "lon": 13.40})
    body["context"]["last_login"]["at"] = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    critical = _post(api, body)
    assert critical["risk"]["level"] == "critical"
    after = scrape()

    def grew(name: str, **labels: str) -> float:
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    decided = "fairunlock_decisions_total"
    assert grew(decided, level="medium", status=medium["status"]) == 1
    assert grew(decided, level="critical", status=critical["status"]) == 1
    offered_face = sum(
        "face" in [m["method"] for m in d["offer"]["methods"]] for d in (medium, critical)
    )
    assert grew("fairunlock_offers_with_face_total") == offered_face >= 1
    route = "/v1/unlock-requests"
    assert grew("fairunlock_http_requests_total", method="POST", route=route, status="201") == 2
