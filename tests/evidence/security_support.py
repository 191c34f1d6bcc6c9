"""Helpers shared by the security evidence tests (races, brute force, enumeration, secrets): the
steps a frontend takes against a served process, a loopback HTTP SMS gateway wired in by
environment, and a way to fire many requests at the same instant."""

from __future__ import annotations

import copy
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from service.methods.totp import TotpParameters, code_at
from tests.evidence.conftest import ServedService, service_env
from tests.service.adapters.sms_support import SmsReceiver
from tests.service.conftest import PERSONA_REQUEST

T = TypeVar("T")
TOTP = TotpParameters()
SMS_TOKEN = "sms-gateway-token-for-the-evidence-suite"
PHONE = "+8613800005678"


@contextmanager
def sms_gateway() -> Iterator[tuple[SmsReceiver, dict[str, str]]]:
    """A loopback HTTP SMS gateway and the environment that points ``fairunlock serve`` at it
    (the ``http`` gateway, never the development console one that logs the message)."""
    receiver = SmsReceiver(SMS_TOKEN).start()
    try:
        yield (
            receiver,
            {
                "FAIRUNLOCK_SMS_GATEWAY": "http",
                "FAIRUNLOCK_SMS_HTTP_URL": receiver.url,
                "FAIRUNLOCK_SMS_HTTP_TOKEN": SMS_TOKEN,
            },
        )
    finally:
        receiver.stop()


def sms_codes(receiver: SmsReceiver) -> list[str]:
    """Every one-time code the gateway was asked to deliver, oldest first."""
    codes = []
    for received in receiver.received:
        match = re.search(r"\b(\d{6})\b", received.json()["message"])
        if match:
            codes.append(match.group(1))
    return codes


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    return response.json()


def set_phone(client: httpx.Client, account: str, phone: str = PHONE) -> None:
    ok(client.put(f"/v1/accounts/{account}/phone", json={"phone": phone}))


def enrol_totp(client: httpx.Client, account: str) -> str:
    """Enrol and confirm TOTP with the previous step's code, so the current step stays unused."""
    return enrol_totp_with_code(client, account)[0]


def enrol_totp_with_code(client: httpx.Client, account: str) -> tuple[str, str]:
    """``enrol_totp``, also returning the code that confirmed the enrolment."""
    secret: str = ok(client.post(f"/v1/accounts/{account}/totp"), 201)["secret"]
    code = code_at(secret, datetime.now(UTC) - timedelta(seconds=TOTP.period), TOTP)
    ok(client.post(f"/v1/accounts/{account}/totp/confirm", json={"code": code}))
    return secret, code


def current_totp(secret: str) -> str:
    return code_at(secret, datetime.now(UTC), TOTP)


def recovery_codes(client: httpx.Client, account: str) -> list[str]:
    codes: list[str] = ok(client.post(f"/v1/accounts/{account}/recovery-codes"), 201)["codes"]
    return codes


def request_body(account: str, **context: Any) -> dict[str, Any]:
    body = copy.deepcopy(PERSONA_REQUEST)
    body["account_id"] = account
    body["context"].update(context)
    return body


def unlock_request(client: httpx.Client, account: str, **context: Any) -> dict[str, Any]:
    decision: dict[str, Any] = ok(
        client.post("/v1/unlock-requests", json=request_body(account, **context)), 201
    )
    return decision


def start(client: httpx.Client, request_id: str, method: str) -> httpx.Response:
    return client.post(f"/v1/unlock-requests/{request_id}/challenges", json={"method": method})


def verify_path(request_id: str, challenge_id: str) -> str:
    return f"/v1/unlock-requests/{request_id}/challenges/{challenge_id}/verify"


def at_once(service: ServedService, count: int, call: Callable[[httpx.Client], T]) -> list[T]:
    """``call`` from ``count`` clients, each on its own warm connection, released together by a
    barrier so the requests reach the workers at the same moment."""
    barrier = threading.Barrier(count)

    def one(_: int) -> T:
        with httpx.Client(
            base_url=service.base_url, headers=service.headers(), timeout=60
        ) as client:
            client.get("/health/live")  # open the connection before the barrier
            barrier.wait(timeout=60)
            return call(client)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


def database_url_of(service: ServedService) -> str:
    url = service.env.get("FAIRUNLOCK_DATABASE_URL")
    return url or f"sqlite+aiosqlite:///{(service.data_dir / 'fairunlock.sqlite3').resolve()}"


def query(service: ServedService, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Rows of one read-only statement against the served process's database."""
    import asyncio

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def run() -> list[tuple[Any, ...]]:
        engine = create_async_engine(database_url_of(service))
        try:
            async with engine.connect() as conn:
                return [tuple(r) for r in (await conn.execute(text(sql), params)).all()]
        finally:
            await engine.dispose()

    return asyncio.run(run())


# --- one served process per test module ------------------------------------------------------


@contextmanager
def module_service(
    tmp: Path, backend: str, *, workers: int = 2, env: dict[str, str] | None = None
) -> Iterator[ServedService]:
    """Like the ``serve_service`` fixture, but for a whole module: one ``db upgrade`` and the keys
    created in-process (the CLI's own repository), so the start costs seconds, not one CLI run per
    role. PostgreSQL gets a fresh database, dropped afterwards."""
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine

    from service.persistence.api_keys import ApiKeyRepository, Role
    from tests.conftest import PG_ADMIN_URL, _pg_reachable

    pg_name: str | None = None
    if backend == "postgres":
        if (reason := _pg_reachable()) is not None:
            pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL} ({reason})")
        pg_name = f"fu_test_{secrets.token_hex(6)}"
        _pg_admin(PG_ADMIN_URL, f'CREATE DATABASE "{pg_name}"')
        base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
        url = f"{base}/{pg_name}"
    else:
        url = f"sqlite+aiosqlite:///{tmp / 'fairunlock.sqlite3'}"
    data_dir = tmp / "data"
    service = ServedService(
        env=service_env(data_dir, url) | (env or {}),
        data_dir=data_dir,
        log_path=tmp / "serve.log",
        workers=workers,
    )
    try:
        service.cli("db", "upgrade")

        async def create_keys() -> dict[Role, str]:
            engine = create_async_engine(database_url_of(service))
            try:
                async with engine.begin() as conn:
                    repo = ApiKeyRepository(conn)
                    return {role: await repo.create(role, f"ev-{role.value}") for role in Role}
            finally:
                await engine.dispose()

        service.keys.update(asyncio.run(create_keys()))
        service.start()
        yield service
    finally:
        service.stop()
        if pg_name is not None:
            _pg_admin(PG_ADMIN_URL, f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


def _pg_admin(admin_url: str, sql: str) -> None:
    import asyncio

    import asyncpg  # type: ignore[import-untyped]

    async def run() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def add_key(service: ServedService, role: str, name: str) -> str:
    """One more API key, in-process (reviewers are told apart by their key's name)."""
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine

    from service.persistence.api_keys import ApiKeyRepository, Role

    async def create() -> str:
        engine = create_async_engine(database_url_of(service))
        try:
            async with engine.begin() as conn:
                return await ApiKeyRepository(conn).create(Role(role), name)
        finally:
            await engine.dispose()

    return asyncio.run(create())


# --- one served process for the four security evidence modules -------------------------------

FACE_PROVIDER = "facecorp"
FACE_AUDIENCE = "fairunlock-evidence"
OIDC_SUBJECT = "oidc-subject-7731902264"


@dataclass
class SecurityStack:
    """``fairunlock serve`` with two workers at DEBUG, texting through a loopback HTTP SMS gateway,
    linked to a loopback OIDC provider (whose login is ``OIDC_SUBJECT``) and trusting one face
    provider's key."""

    service: ServedService
    sms: SmsReceiver
    face_key: Any  # joserfc OKPKey: the face provider's private key
    oidc_provider: str  # its name in FAIRUNLOCK_OIDC_PROVIDERS
    oidc_tenant: Any  # oidc_support.Tenant: the provider's side (the tokens it issued)


@contextmanager
def security_stack(tmp: Path, backend: str) -> Iterator[SecurityStack]:
    import json

    from joserfc.jwk import OKPKey

    from tests.service.adapters.oidc_support import (
        CLIENT_ID,
        CLIENT_SECRET,
        REDIRECT_URI,
        ScriptedProvider,
        Tenant,
    )

    face_key = OKPKey.generate_key("Ed25519")
    face = {
        FACE_PROVIDER: {
            "public_key_pem": face_key.as_pem(private=False).decode(),
            "audience": FACE_AUDIENCE,
        }
    }
    oidc = ScriptedProvider()
    oidc.start()
    try:
        tenant = Tenant(subject=OIDC_SUBJECT)
        config = oidc.add_tenant(tenant)
        providers = {
            config.name: {
                "issuer": config.issuer,
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "redirect_uri": REDIRECT_URI,
            }
        }
        with sms_gateway() as (receiver, sms_env):
            env = sms_env | {
                "FAIRUNLOCK_LOG_LEVEL": "DEBUG",
                "FAIRUNLOCK_OIDC_PROVIDERS": json.dumps(providers),
                "FAIRUNLOCK_FACE_PROVIDERS": json.dumps(face),
            }
            with module_service(tmp, backend, workers=2, env=env) as service:
                assert len(service.worker_pids()) == 2
                yield SecurityStack(service, receiver, face_key, config.name, tenant)
    finally:
        oidc.stop()
