"""An app over HTTP on a real database (SQLite; PostgreSQL when reachable), a key per role."""

from __future__ import annotations

import copy
import dataclasses
import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import ColumnElement, text

from service.adapters.face import FakeFaceVerifier
from service.adapters.oidc import FakeOidcClient
from service.adapters.sms import FakeSmsGateway
from service.app import create_app
from service.context import ServiceContext
from service.persistence.api_keys import ApiKeyRepository, Role
from service.settings import Settings
from service.wiring import Adapters

OIDC_PROVIDERS = {
    "gov-eid": {
        "issuer": "http://127.0.0.1:9/gov-eid",
        "client_id": "fairunlock",
        "client_secret": "test-client-secret",
        "redirect_uri": "http://127.0.0.1:9/callback",
    }
}

PERSONA_REQUEST: dict[str, Any] = {
    "account_id": "acct-1024",
    "lock_reason": "suspected_takeover",
    "locale": "zh-CN",
    "context": {
        "ip": "203.0.113.7",
        "device_id": "d-7f3a",
        "user_agent": "Mozilla/5.0",
        "geo": {"country": "CN", "lat": 31.23, "lon": 121.47},
        "network": "residential",
        "sim_swap_at": None,
        "credential_changed_at": None,
        "account_created_at": "2016-03-02T08:00:00Z",
        "last_login": {
            "at": "2026-11-20T09:12:00Z",
            "device_id": "d-11aa",
            "geo": {"country": "CN", "lat": 31.20, "lon": 121.44},
        },
        "known_device_ids": ["d-11aa", "d-5c02"],
    },
}


@dataclass
class Api:
    """A running app, its test client and one bearer header per role."""

    app: Litestar
    client: TestClient[Litestar]
    keys: dict[Role, str]
    adapters: Adapters

    @property
    def sms(self) -> FakeSmsGateway:
        assert isinstance(self.adapters.sms, FakeSmsGateway)
        return self.adapters.sms

    @property
    def oidc(self) -> FakeOidcClient:
        assert isinstance(self.adapters.oidc, FakeOidcClient)
        return self.adapters.oidc

    @property
    def face(self) -> FakeFaceVerifier:
        assert isinstance(self.adapters.face, FakeFaceVerifier)
        return self.adapters.face

    def headers(self, role: Role | None = Role.FRONTEND) -> dict[str, str]:
        return {} if role is None else {"Authorization": f"Bearer {self.keys[role]}"}

    @property
    def ctx(self) -> ServiceContext:
        ctx: ServiceContext = self.app.state.ctx
        return ctx

    def set_clock(self, clock: Callable[[], datetime]) -> None:
        self.app.state.ctx = dataclasses.replace(self.ctx, clock=clock)

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run an async function on the app's event loop (its engine lives there)."""
        with self.client.portal() as portal:
            return portal.call(fn, *args)

    def deliver_outbox(self, until: Callable[[], bool], timeout: float = 10.0) -> None:
        """Deliver due outbox events until ``until()`` holds. The app's own dispatcher loop runs
        too and may hold an event's lease while this pass runs, so one pass is not enough."""
        deadline = time.monotonic() + timeout
        while True:
            self.run(self.app.state.outbox.deliver_due)
            if until() or time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def create_unlock_request(self, account_id: str) -> dict[str, Any]:
        """POST PERSONA_REQUEST for ``account_id`` as the frontend; the decision (201)."""
        body = copy.deepcopy(PERSONA_REQUEST)
        body["account_id"] = account_id
        r = self.client.post("/v1/unlock-requests", json=body, headers=self.headers())
        assert r.status_code == 201, r.text
        decision: dict[str, Any] = r.json()
        return decision

    def count(self, table: str) -> int:
        async def count() -> int:
            async with self.app.state.engine.connect() as conn:
                return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())

        return int(self.run(count))

    def dump(self) -> str:
        """Every row of every table, as text: for searching secrets at rest."""

        async def dump() -> str:
            from service.schema import ALL_METADATA

            out: list[str] = []
            async with self.app.state.engine.connect() as conn:
                for metadata in ALL_METADATA:
                    for table in metadata.sorted_tables:
                        for row in (await conn.execute(table.select())).all():
                            for value in row:
                                if isinstance(value, bytes):
                                    out.append(value.decode("utf-8", "replace"))
                                    out.append(value.hex())
                                else:
                                    out.append(str(value))
            return "\n".join(out)

        return str(self.run(dump))


def stored_indexes(api: Api, table: str) -> dict[str, str]:
    """The ``ix_`` indexes of ``table`` as the database stores them: name -> its definition."""
    engine = api.app.state.engine

    async def read() -> dict[str, str]:
        if engine.dialect.name == "sqlite":
            query = (
                "SELECT name, sql FROM sqlite_master WHERE type = 'index'"
                " AND tbl_name = :table AND name LIKE 'ix%'"
            )
        else:
            query = (
                "SELECT indexname, indexdef FROM pg_indexes"
                " WHERE tablename = :table AND indexname LIKE 'ix%'"
            )
        async with engine.connect() as conn:
            rows = await conn.execute(text(query), {"table": table})
            return {str(name): str(definition) for name, definition in rows}

    found: dict[str, str] = api.run(read)
    return found


def assert_condition_is_the_models(api: Api, definition: str, model: ColumnElement[bool]) -> None:
    """alembic check does not compare partial indexes' conditions: the one a migration gave an
    index (its stored ``definition``) must be the model's, as either database spells it."""
    assert " WHERE " in definition, definition
    written = model.compile(
        dialect=api.app.state.engine.dialect, compile_kwargs={"include_table": False}
    )
    assert _normalized(definition.split(" WHERE ", 1)[1]) == _normalized(str(written))


def _normalized(condition: str) -> str:
    # PostgreSQL stores `<>` for `!=`, parenthesises each term and casts the literals.
    text = "".join(ch for ch in condition.lower() if ch not in "() \n")
    return text.replace("<>", "!=").replace("::charactervarying", "").replace("::text", "")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_settings(tmp_path: Path, database_url: str | None = None, **overrides: Any) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        oidc_providers_json=json.dumps(OIDC_PROVIDERS),
        **overrides,
    )


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[Api]:
    yield from _api(tmp_path, database_url)


@pytest.fixture
def sqlite_api(tmp_path: Path) -> Iterator[Api]:
    """For tests whose subject is not the database: SQLite only, to keep the suite fast."""
    yield from _api(tmp_path, None)


def fake_adapters() -> Adapters:
    face = FakeFaceVerifier(provider="test-provider", audience="fairunlock-test")
    return Adapters(
        sms=FakeSmsGateway(),
        oidc=FakeOidcClient(),
        face=face,
        face_audiences={face.provider: face.audience},
    )


def _api(tmp_path: Path, database_url: str | None, **overrides: Any) -> Iterator[Api]:
    adapters = fake_adapters()
    app = create_app(make_settings(tmp_path, database_url, **overrides), adapters=adapters)
    with TestClient(app) as client:

        async def create_keys() -> dict[Role, str]:
            async with app.state.engine.begin() as conn:
                repo = ApiKeyRepository(conn)
                return {role: await repo.create(role, f"test-{role.value}") for role in Role}

        with client.portal() as portal:
            keys = portal.call(create_keys)
        yield Api(app=app, client=client, keys=keys, adapters=adapters)
