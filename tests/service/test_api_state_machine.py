"""The principles over a person's history, not one request: a hypothesis state machine at the API
level enrols and unenrols methods, grants and withdraws face consent, asks for decisions, starts
challenges on earlier decisions and proves them (a recovery code, face), in any order. After every
step, every decision the API returns keeps DESIGN.md principles 1-3 (face never first, never the
only method, never without consent current at the time it is used; review always available; the
engine never denies; approval only with the factors the offer asks for)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.service.conftest import PERSONA_REQUEST, Api
from tests.service.test_api_properties import assert_principles, contexts

FACE_REFUSED = {"method_not_offered", "face_consent_required"}


class UnlockHistory(RuleBasedStateMachine):
    api: Api

    def __init__(self) -> None:
        super().__init__()
        self.account = f"acct-sm-{uuid.uuid4().hex[:12]}"
        self.base = f"/v1/accounts/{self.account}"
        self.consent = False
        self.codes: list[str] = []
        # Each decision: its id, its offer's methods, and the face challenges started on it.
        self.decisions: list[dict[str, Any]] = []
        # request id, challenge id, nonce, the account's reference at the provider
        self.face_sessions: list[tuple[str, str, str, str]] = []

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.api.client.request(method, path, headers=self.api.headers(), **kwargs)

    # --- what the person enrols -----------------------------------------------------------

    @initialize(consent=st.booleans())
    def enrolled_for_face(self, consent: bool) -> None:
        """Most histories start where face can be offered (a phone and a real-name identity,
        perhaps consent): the steps that follow then reach the cases that matter, such as consent
        withdrawn between a decision and its face challenge."""
        self.set_phone(True)
        self.link_identity(True)
        if consent:
            self.grant_consent()

    @rule(verified=st.booleans())
    def set_phone(self, verified: bool) -> None:
        r = self._call(
            "PUT", f"{self.base}/phone", json={"phone": "+8613800005678", "verified": verified}
        )
        assert r.status_code == 200, r.text

    @rule(real_name=st.booleans())
    def link_identity(self, real_name: bool) -> None:
        body = {"subject": f"s-{self.account}", "real_name_verified": real_name}
        r = self._call("PUT", f"{self.base}/linked-identities/gov-eid", json=body)
        assert r.status_code == 200, r.text

    @rule()
    def issue_recovery_codes(self) -> None:
        r = self._call("POST", f"{self.base}/recovery-codes")
        assert r.status_code == 201, r.text
        self.codes = list(r.json()["codes"])

    @rule()
    def grant_consent(self) -> None:
        version = self._call("GET", "/v1/face-consent/notice").json()["version"]
        body = {"notice_version": version, "purpose": "account_unlock", "accepted": True}
        assert self._call("PUT", f"{self.base}/face-consent", json=body).status_code == 200
        self.consent = True

    @rule()
    def withdraw_consent(self) -> None:
        assert self._call("DELETE", f"{self.base}/face-consent").status_code == 200
        self.consent = False

    # --- decisions, challenges, proofs ------------------------------------------------------

    @rule(context=contexts, locale=st.sampled_from(["en", "zh-CN"]))
    def decide(self, context: dict[str, Any], locale: str) -> None:
        body = {**PERSONA_REQUEST, "account_id": self.account, "locale": locale, "context": context}
        r = self._call("POST", "/v1/unlock-requests", json=body)
        assert r.status_code == 201, r.text
        d = r.json()
        assert_principles(d, consent_granted=self.consent)
        self.decisions.append(d)

    @precondition(lambda self: self.decisions)
    @rule(data=st.data())
    def start_face(self, data: st.DataObject) -> None:
        d = data.draw(st.sampled_from(self.decisions))
        r = self._call("POST", f"/v1/unlock-requests/{d['id']}/challenges", json={"method": "face"})
        offered = "face" in [m["method"] for m in d["offer"]["methods"]]
        if r.status_code == 201:
            # Face started: it was offered, and consent is current now (not only then).
            assert offered, d["offer"]
            assert self.consent, "a face session started without current consent"
            s = r.json()["session"]
            self.face_sessions.append((d["id"], r.json()["id"], s["nonce"], s["subject"]))
        else:
            assert r.status_code in (409, 429), r.text
            if r.status_code == 409 and r.json()["code"] in FACE_REFUSED:
                assert not (offered and self.consent), r.text

    @precondition(lambda self: self.face_sessions)
    @rule(data=st.data())
    def prove_face(self, data: st.DataObject) -> None:
        request_id, challenge_id, nonce, sub = data.draw(st.sampled_from(self.face_sessions))
        now = int(time.time())
        face = self.api.face
        claims = {
            "iss": face.provider, "aud": face.audience, "iat": now, "exp": now + 120,
            "nonce": nonce, "sub": sub, "result": "match", "liveness": "pass",
            "matcher_version": "m-1",
        }  # fmt: skip
        r = self._call(
            "POST",
            f"/v1/unlock-requests/{request_id}/challenges/{challenge_id}/verify",
            json={"attestation": face.sign_attestation(claims)},
        )
        if r.status_code == 200:
            assert self.consent, "a face result counted without current consent"
            assert "face" in r.json()["factors_satisfied"]
            assert_principles(r.json(), consent_granted=True)
        else:
            assert r.status_code in (409, 422, 429), r.text
            if r.json()["code"] == "face_consent_required":
                assert not self.consent

    @precondition(lambda self: self.decisions and self.codes)
    @rule(data=st.data())
    def prove_recovery_code(self, data: st.DataObject) -> None:
        d = data.draw(st.sampled_from(self.decisions))
        r = self._call(
            "POST", f"/v1/unlock-requests/{d['id']}/challenges", json={"method": "recovery_code"}
        )
        if r.status_code != 201:
            assert r.status_code in (409, 429), r.text
            return
        code = self.codes.pop()
        verify = f"/v1/unlock-requests/{d['id']}/challenges/{r.json()['id']}/verify"
        proven = self._call("POST", verify, json={"code": code})
        assert proven.status_code in (200, 409, 422, 429), proven.text
        if proven.status_code == 200:
            assert_principles(proven.json(), consent_granted=True)

    @precondition(lambda self: self.decisions)
    @rule(data=st.data())
    def read_back(self, data: st.DataObject) -> None:
        d = data.draw(st.sampled_from(self.decisions))
        r = self._call("GET", f"/v1/unlock-requests/{d['id']}")
        assert r.status_code == 200, r.text
        assert r.json()["offer"] == d["offer"]  # the offer as decided, never rewritten
        assert r.json()["status"] != "denied"


@pytest.mark.slow
def test_every_decision_keeps_the_principles_over_any_history(api: Api) -> None:
    class History(UnlockHistory):
        pass

    History.api = api
    run_state_machine_as_test(
        History,
        settings=settings(
            max_examples=25,
            stateful_step_count=15,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
