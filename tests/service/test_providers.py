"""FAIRUNLOCK_OIDC_PROVIDERS: what a provider's configuration must and may say."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.providers import ProviderConfigError, parse_oidc_providers

ENTRY = {
    "issuer": "https://idp.example/",
    "client_id": "fairunlock",
    "client_secret": "s3cret",
    "redirect_uri": "https://fairunlock.example/callback",
}


def test_a_provider_requires_auth_time_unless_configured_not_to() -> None:
    providers = parse_oidc_providers(
        json.dumps({"gov-eid": ENTRY, "legacy": ENTRY | {"require_auth_time": False}})
    )
    assert providers["gov-eid"].require_auth_time is True
    assert providers["gov-eid"].issuer == "https://idp.example"
    assert providers["legacy"].require_auth_time is False


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (ENTRY | {"require_auth_time": "no"}, "require_auth_time must be true or false"),
        (ENTRY | {"max_age": 60}, "needs exactly"),
        ({k: v for k, v in ENTRY.items() if k != "client_secret"}, "needs exactly"),
    ],
)
def test_a_malformed_provider_entry_is_refused(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ProviderConfigError, match=message):
        parse_oidc_providers(json.dumps({"gov-eid": entry}))
