"""Configured external parties: linked real-name identity providers (OIDC) by name.

``FAIRUNLOCK_OIDC_PROVIDERS`` is a JSON object mapping a provider name to
``{"issuer", "client_id", "client_secret", "redirect_uri"}`` (DESIGN.md "Command line"), and
optionally ``"require_auth_time": false`` for a provider that puts no ``auth_time`` in its ID tokens
although asked with ``max_age`` (its logins then cannot be checked for freshness); it is the
allow-list for linked identities.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

PROVIDER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class ProviderConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class OidcProvider:
    name: str
    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    redirect_uri: str
    # OIDC Core 3.1.2.1: asked for max_age, a provider MUST put auth_time in the ID token, and
    # only then can the service tell a fresh login from an old session. False only for a
    # provider known not to (its logins then count as fresh: say so in its configuration).
    require_auth_time: bool = True


def _url(name: str, key: str, value: object) -> str:
    if (
        not isinstance(value, str)
        or urlsplit(value).scheme not in {"https", "http"}
        or not urlsplit(value).netloc
    ):
        raise ProviderConfigError(f"FAIRUNLOCK_OIDC_PROVIDERS[{name}].{key} must be an http(s) URL")
    return value


def parse_oidc_providers(raw: str | None) -> dict[str, OidcProvider]:
    if raw is None or not raw.strip():
        return {}
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ProviderConfigError(
            f"FAIRUNLOCK_OIDC_PROVIDERS is not valid JSON ({exc.msg})"
        ) from None
    if not isinstance(doc, dict):
        raise ProviderConfigError("FAIRUNLOCK_OIDC_PROVIDERS must be a JSON object of providers")
    out: dict[str, OidcProvider] = {}
    for name, entry in doc.items():
        if not PROVIDER_NAME.match(name):
            raise ProviderConfigError(f"FAIRUNLOCK_OIDC_PROVIDERS: bad provider name {name!r}")
        required = {"issuer", "client_id", "client_secret", "redirect_uri"}
        if not isinstance(entry, dict) or not required <= set(entry) <= {
            *required,
            "require_auth_time",
        }:
            raise ProviderConfigError(
                f"FAIRUNLOCK_OIDC_PROVIDERS[{name}] needs exactly "
                "issuer, client_id, client_secret, redirect_uri (and may set require_auth_time)"
            )
        if not isinstance(entry.get("require_auth_time", True), bool):
            raise ProviderConfigError(
                f"FAIRUNLOCK_OIDC_PROVIDERS[{name}].require_auth_time must be true or false"
            )
        for key in ("client_id", "client_secret"):
            if not isinstance(entry[key], str) or not entry[key]:
                raise ProviderConfigError(
                    f"FAIRUNLOCK_OIDC_PROVIDERS[{name}].{key} must be a non-empty string"
                )
        out[name] = OidcProvider(
            name=name,
            issuer=_url(name, "issuer", entry["issuer"]).rstrip("/"),
            client_id=entry["client_id"],
            client_secret=entry["client_secret"],
            redirect_uri=_url(name, "redirect_uri", entry["redirect_uri"]),
            require_auth_time=entry.get("require_auth_time", True),
        )
    return out
