"""Typed settings read once from ``FAIRUNLOCK_*`` variables and passed into ``create_app``.

Nothing here is cached at import: every call to ``Settings.from_env`` reads the mapping it is given,
so tests build their own settings and no test depends on another's environment.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from service.providers import OidcProvider, ProviderConfigError, parse_oidc_providers

PREFIX = "FAIRUNLOCK_"
ADAPTER_PREFIXES = ("FAIRUNLOCK_SMS_", "FAIRUNLOCK_FACE_", "FAIRUNLOCK_WEBHOOK_")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _bool(name: str, raw: str) -> bool:
    # Strict, like Starlette's Config: "ture" is an error, not False.
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{PREFIX}{name} must be one of {sorted(_TRUE | _FALSE)}, got {raw!r}")


def _int(name: str, raw: str, *, minimum: int, maximum: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{PREFIX}{name} must be an integer, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise SettingsError(f"{PREFIX}{name} must be between {minimum} and {maximum}, got {value}")
    return value


def _origin(name: str, raw: str) -> str:
    # C2SP: the origin is the first line of a note, so it must be one printable line.
    value = raw.strip()
    if not value or any(not ch.isprintable() for ch in value) or "\u2014" in value:
        raise SettingsError(f"{PREFIX}{name} must be one printable line, got {raw!r}")
    return value


def _key32(name: str, raw: str) -> bytes:
    """Decode a base64 (standard or URL-safe) 32-byte key; the error never echoes the value."""
    text = raw.strip()
    try:
        value = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise SettingsError(f"{PREFIX}{name} must be base64 of 32 bytes") from None
    if len(value) != 32:
        raise SettingsError(f"{PREFIX}{name} must be base64 of 32 bytes, got {len(value)} bytes")
    return value


def decode_key32(name: str, raw: str) -> bytes:
    """Public form of the key decoder for service/keystore.py (``name`` without the prefix)."""
    return _key32(name, raw)


@dataclass(frozen=True, slots=True)
class Settings:
    environment: Environment = Environment.DEVELOPMENT
    data_dir: Path = field(default_factory=lambda: Path("var"))
    # None means the embedded SQLite file inside data_dir.
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    log_level: str = "INFO"
    # Request bodies above this are refused with 413 before they are parsed.
    max_body_bytes: int = 64 * 1024
    # A policy file other than the shipped default (absolute or relative path).
    policy_file: Path | None = None
    # The audit log's C2SP origin line; it names the log in every checkpoint and entry.
    audit_origin: str = "fairunlock.local/audit"
    # Keys (service/keystore.py). In development, unset keys are generated into data_dir/keys;
    # in production each must be configured, by file or (for the symmetric keys) base64 value.
    audit_signing_key_file: Path | None = None
    master_key_file: Path | None = None
    master_key_b64: str | None = field(default=None, repr=False)
    pseudonym_key_file: Path | None = None
    pseudonym_key_b64: str | None = field(default=None, repr=False)
    # The in-service integrator: entries per batch (one transaction, one checkpoint) and the idle
    # poll interval. Disable it where a separate `fairunlock audit integrate` process runs.
    audit_integrator: bool = True
    audit_batch_size: int = 1000
    audit_interval_ms: int = 100
    # Retention of operational records (service/retention.py), in days, and how often each
    # worker's job deletes what is past it.
    retention_attempts_days: int = 180
    retention_sms_sends_days: int = 30
    retention_outbox_days: int = 30
    retention_interval_s: int = 3600
    # FAIRUNLOCK_OIDC_PROVIDERS: the allow-list of linked real-name identity providers (JSON).
    oidc_providers_json: str | None = field(default=None, repr=False)
    # The adapters' own variables (FAIRUNLOCK_SMS_*, FAIRUNLOCK_FACE_*, FAIRUNLOCK_WEBHOOK_*), read
    # and validated by each adapter's config (service/wiring.py) when the app is built.
    adapter_env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def is_production(self) -> bool:
        return self.environment is Environment.PRODUCTION

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'fairunlock.sqlite3').resolve()}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        source = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = source.get(PREFIX + name)
            return value if value not in (None, "") else None

        kwargs: dict[str, object] = {}
        if (raw := get("ENVIRONMENT")) is not None:
            try:
                kwargs["environment"] = Environment(raw.strip().lower())
            except ValueError:
                allowed = [e.value for e in Environment]
                raise SettingsError(
                    f"{PREFIX}ENVIRONMENT must be one of {allowed}, got {raw!r}"
                ) from None
        if (raw := get("DATA_DIR")) is not None:
            kwargs["data_dir"] = Path(raw)
        if (raw := get("DATABASE_URL")) is not None:
            kwargs["database_url"] = raw
        if (raw := get("HOST")) is not None:
            kwargs["host"] = raw
        if (raw := get("PORT")) is not None:
            kwargs["port"] = _int("PORT", raw, minimum=0, maximum=65535)
        if (raw := get("WORKERS")) is not None:
            kwargs["workers"] = _int("WORKERS", raw, minimum=1, maximum=64)
        if (raw := get("LOG_LEVEL")) is not None:
            level = raw.strip().upper()
            if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
                raise SettingsError(f"{PREFIX}LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")
            kwargs["log_level"] = level
        if (raw := get("MAX_BODY_BYTES")) is not None:
            kwargs["max_body_bytes"] = _int("MAX_BODY_BYTES", raw, minimum=1024, maximum=16 << 20)
        if (raw := get("POLICY_FILE")) is not None:
            kwargs["policy_file"] = Path(raw)
        if (raw := get("AUDIT_ORIGIN")) is not None:
            kwargs["audit_origin"] = _origin("AUDIT_ORIGIN", raw)
        for name, attr in (
            ("AUDIT_SIGNING_KEY_FILE", "audit_signing_key_file"),
            ("MASTER_KEY_FILE", "master_key_file"),
            ("PSEUDONYM_KEY_FILE", "pseudonym_key_file"),
        ):
            if (raw := get(name)) is not None:
                kwargs[attr] = Path(raw)
        for name, attr in (
            ("MASTER_KEY", "master_key_b64"),
            ("PSEUDONYM_KEY", "pseudonym_key_b64"),
        ):
            if (raw := get(name)) is not None:
                _key32(name, raw)  # fail at startup, not at first use
                kwargs[attr] = raw.strip()
        if (raw := get("AUDIT_INTEGRATOR")) is not None:
            kwargs["audit_integrator"] = _bool("AUDIT_INTEGRATOR", raw)
        if (raw := get("AUDIT_BATCH_SIZE")) is not None:
            kwargs["audit_batch_size"] = _int("AUDIT_BATCH_SIZE", raw, minimum=1, maximum=50_000)
        if (raw := get("AUDIT_INTERVAL_MS")) is not None:
            kwargs["audit_interval_ms"] = _int("AUDIT_INTERVAL_MS", raw, minimum=5, maximum=60_000)
        for name, attr, minimum, maximum in (
            ("RETENTION_ATTEMPTS_DAYS", "retention_attempts_days", 2, 36_500),
            ("RETENTION_SMS_SENDS_DAYS", "retention_sms_sends_days", 2, 36_500),
            ("RETENTION_OUTBOX_DAYS", "retention_outbox_days", 1, 36_500),
            ("RETENTION_INTERVAL_S", "retention_interval_s", 60, 86_400),
        ):
            if (raw := get(name)) is not None:
                kwargs[attr] = _int(name, raw, minimum=minimum, maximum=maximum)
        if (raw := get("OIDC_PROVIDERS")) is not None:
            kwargs["oidc_providers_json"] = raw
        kwargs["adapter_env"] = {
            k: v
            for k, v in source.items()
            if k.startswith(ADAPTER_PREFIXES) and v not in (None, "")
        }
        settings = cls(**kwargs)  # type: ignore[arg-type]
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse what is only safe in development, and malformed structured values."""
        if self.is_production and self.database_url is None:
            raise SettingsError(
                f"{PREFIX}DATABASE_URL is required in production: "
                "the embedded SQLite file is for development"
            )
        try:
            parse_oidc_providers(self.oidc_providers_json)
        except ProviderConfigError as exc:
            raise SettingsError(str(exc)) from None

    @property
    def oidc_providers(self) -> dict[str, OidcProvider]:
        return parse_oidc_providers(self.oidc_providers_json)
