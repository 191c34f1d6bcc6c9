"""After a full scenario, no phone number, secret, code, token or key is anywhere in the database
in clear (DESIGN.md principle 5; ASVS4-2.10, 6.1; OWASP-LOG-6)."""

from __future__ import annotations

import base64
import copy
import re
from datetime import UTC, datetime
from typing import Any

from service.methods.totp import TotpParameters, code_at
from service.persistence.api_keys import Role
from tests.service.conftest import PERSONA_REQUEST, Api

PHONE_FORMS = ["+8613800005678", "13800005678", "138 0000 5678", "8613800005678"]
OIDC_SUBJECT = "oidc-subject-248289761001"


def _ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def test_no_secret_or_personal_value_in_any_table_after_a_full_scenario(api: Api) -> None:
    h = api.headers()
    account = "/v1/accounts/acct-secret"
    _ok(api.client.put(f"{account}/phone", json={"phone": "+86 138 0000 5678"}, headers=h))
    secret = _ok(api.client.post(f"{account}/totp", headers=h), 201)["secret"]
    code = code_at(secret, datetime.now(UTC), TotpParameters())
    _ok(api.client.post(f"{account}/totp/confirm", json={"code": code}, headers=h))
    _ok(
        api.client.put(
            f"{account}/linked-identities/gov-eid",
            json={"subject": OIDC_SUBJECT, "real_name_verified": True},
            headers=h,
        )
    )
    codes = _ok(api.client.post(f"{account}/recovery-codes", headers=h), 201)["codes"]
    version = _ok(api.client.get("/v1/face-consent/notice", headers=h))["version"]
    _ok(
        api.client.put(
            f"{account}/face-consent",
            json={"notice_version": version, "purpose": "account_unlock", "accepted": True},
            headers=h,
        )
    )
    body = copy.deepcopy(PERSONA_REQUEST)
    body["account_id"] = "acct-secret"
    decision = _ok(api.client.post("/v1/unlock-requests", json=body, headers=h), 201)
    # An SMS code sent and proven, then a recovery code: two factors approve the request (and
    # the approval writes the outbox event the platform is told by).
    challenges = f"/v1/unlock-requests/{decision['id']}/challenges"
    sms = _ok(api.client.post(challenges, json={"method": "sms"}, headers=h), 201)
    sms_code = re.findall(r"\b\d{6}\b", api.sms.sent[-1].message)[0]
    _ok(api.client.post(f"{challenges}/{sms['id']}/verify", json={"code": sms_code}, headers=h))
    rc = _ok(api.client.post(challenges, json={"method": "recovery_code"}, headers=h), 201)
    approved = _ok(
        api.client.post(f"{challenges}/{rc['id']}/verify", json={"code": codes[0]}, headers=h)
    )
    assert approved["status"] == "approved", approved
    assert api.count("outbox_events") >= 1
    # Another account, enrolled, then erased.
    other = "/v1/accounts/acct-other"
    _ok(api.client.put(f"{other}/phone", json={"phone": "+86 139 0000 4321"}, headers=h))
    erased = api.client.delete(other, headers=api.headers(Role.ADMIN))
    assert erased.status_code in (200, 202, 204), erased.text

    dump = api.dump()
    keystore = api.app.state.keystore
    keys = {
        "master key": keystore.master_key,
        "pseudonym key": keystore.pseudonym_key,
        "signing key": keystore.signing_key.private_bytes_raw(),
    }
    needles = {
        **{f"phone {p}": p for p in PHONE_FORMS},
        **{f"erased phone {p}": p for p in ("+8613900004321", "13900004321")},
        "totp secret": secret,
        "totp secret bytes (hex)": base64.b32decode(secret).hex(),
        "totp code": code,
        "sms code": sms_code,
        "oidc subject": OIDC_SUBJECT,
        "account id": "acct-secret",
        "ip address": "203.0.113.7",
        "device id": "d-7f3a",
        **{f"recovery code {i}": c for i, c in enumerate(codes)},
        **{f"recovery code {i} undashed": c.replace("-", "") for i, c in enumerate(codes)},
        **{f"api key {role.value}": key for role, key in api.keys.items()},
        **{f"{name} (hex)": key.hex() for name, key in keys.items()},
        **{f"{name} (base64)": base64.b64encode(key).decode() for name, key in keys.items()},
    }
    found = [name for name, value in needles.items() if value in dump]
    assert not found, f"in clear at rest: {found}"
    # The masked phone is the only phone trace, by design.
    assert "+86 138****5678" in dump
