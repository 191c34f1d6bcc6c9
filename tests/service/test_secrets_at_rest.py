"""After a full scenario, no phone number, secret, code, token or key is anywhere in the database
in clear (DESIGN.md principle 5; ASVS4-2.10, 6.1; OWASP-LOG-6)."""

from __future__ import annotations

import base64
import copy
from datetime import UTC, datetime

from service.methods.totp import TotpParameters, code_at
from service.persistence.api_keys import Role
from tests.service.conftest import PERSONA_REQUEST, Api

PHONE_FORMS = ["+8613800005678", "13800005678", "138 0000 5678", "8613800005678"]
OIDC_SUBJECT = "oidc-subject-248289761001"


def test_no_secret_or_personal_value_in_any_table_after_a_full_scenario(api: Api) -> None:
    h = api.headers()
    account = "/v1/accounts/acct-secret"
    api.client.put(f"{account}/phone", json={"phone": "+86 138 0000 5678"}, headers=h)
    secret = api.client.post(f"{account}/totp", headers=h).json()["secret"]
    code = code_at(secret, datetime.now(UTC), TotpParameters())
    assert (
        api.client.post(f"{account}/totp/confirm", json={"code": code}, headers=h).status_code
        == 200
    )
    api.client.put(
        f"{account}/linked-identities/gov-eid",
        json={"subject": OIDC_SUBJECT, "real_name_verified": True},
        headers=h,
    )
    codes = api.client.post(f"{account}/recovery-codes", headers=h).json()["codes"]
    version = api.client.get("/v1/face-consent/notice", headers=h).json()["version"]
    api.client.put(
        f"{account}/face-consent",
        json={"notice_version": version, "purpose": "account_unlock", "accepted": True},
        headers=h,
    )
    body = copy.deepcopy(PERSONA_REQUEST)
    body["account_id"] = "acct-secret"
    assert api.client.post("/v1/unlock-requests", json=body, headers=h).status_code == 201
    api.client.delete("/v1/accounts/acct-other", headers=api.headers(Role.ADMIN))

    dump = api.dump()
    needles = {
        **{f"phone {p}": p for p in PHONE_FORMS},
        "totp secret": secret,
        "totp secret bytes (hex)": base64.b32decode(secret).hex(),
        "totp code": code,
        "oidc subject": OIDC_SUBJECT,
        "account id": "acct-secret",
        "ip address": "203.0.113.7",
        "device id": "d-7f3a",
        **{f"recovery code {i}": c for i, c in enumerate(codes)},
        **{f"recovery code {i} undashed": c.replace("-", "") for i, c in enumerate(codes)},
        **{f"api key {role.value}": key for role, key in api.keys.items()},
    }
    found = [name for name, value in needles.items() if value in dump]
    assert not found, f"in clear at rest: {found}"
    # The masked phone is the only phone trace, by design.
    assert "+86 138****5678" in dump
