"""The outbox: an approval reaches the account system through a signed webhook, retried with
backoff until acknowledged, and survives the service being killed between approval and delivery
(delivered at least once; the receiver keeps one per event id)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from litestar.testing import TestClient
from sqlalchemy import select, update

from service.app import create_app
from service.methods.totp import TotpParameters, code_at
from service.persistence.api_keys import ApiKeyRepository, Role
from service.persistence.tables import outbox_events
from tests.service.conftest import (
    PERSONA_REQUEST,
    Api,
    fake_adapters,
    free_port,
    make_settings,
)
from tests.service.persistence.test_outbox_leases import outbox_payloads, outbox_rows
from tests.service.test_review_api import _audit_events

SECRET = "webhook-secret-0123456789abcdef"
BIN = Path(sys.executable).parent


class Receiver(BaseHTTPRequestHandler):
    """The account system: records deliveries, answers with the scripted statuses."""

    deliveries: ClassVar[list[dict[str, Any]]] = []
    statuses: ClassVar[list[int]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        timestamp = self.headers["x-fairunlock-timestamp"]
        expected = (
            "sha256="
            + hmac.new(
                SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256
            ).hexdigest()
        )
        status = self.statuses.pop(0) if self.statuses else 200
        self.deliveries.append(
            {
                "event_id": self.headers["x-fairunlock-event-id"],
                "signature_ok": hmac.compare_digest(
                    expected, self.headers["x-fairunlock-signature"]
                ),
                "body": json.loads(body),
                "status": status,
            }
        )
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver_port() -> int:
    Receiver.deliveries = []
    Receiver.statuses = []
    return free_port()


class Running:
    def __init__(self, port: int) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Receiver)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def webhook_api(tmp_path: Path, receiver_port: int) -> Iterator[Api]:
    env = {
        "FAIRUNLOCK_WEBHOOK_URL": f"http://127.0.0.1:{receiver_port}/hooks",
        "FAIRUNLOCK_WEBHOOK_SECRET": SECRET,
    }
    adapters = fake_adapters()
    app = create_app(make_settings(tmp_path, None, adapter_env=env), adapters=adapters)
    with TestClient(app) as client:

        async def keys() -> dict[Role, str]:
            async with app.state.engine.begin() as conn:
                repo = ApiKeyRepository(conn)
                return {
                    Role.FRONTEND: await repo.create(Role.FRONTEND, "fe"),
                    Role.ADMIN: await repo.create(Role.ADMIN, "admin"),
                }

        with client.portal() as portal:
            api = Api(app=app, client=client, keys=portal.call(keys), adapters=adapters)
        yield api


def _approve(api: Api, account_id: str) -> str:
    h = api.headers()
    secret = api.client.post(f"/v1/accounts/{account_id}/totp", headers=h).json()["secret"]
    earlier = code_at(secret, datetime.now(UTC) - timedelta(seconds=30), TotpParameters())
    assert (
        api.client.post(
            f"/v1/accounts/{account_id}/totp/confirm", json={"code": earlier}, headers=h
        ).status_code
        == 200
    )
    body = {**PERSONA_REQUEST, "account_id": account_id}
    decision = api.client.post("/v1/unlock-requests", json=body, headers=h).json()
    ch = api.client.post(
        f"/v1/unlock-requests/{decision['id']}/challenges", json={"method": "totp"}, headers=h
    ).json()
    code = code_at(secret, datetime.now(UTC), TotpParameters())
    r = api.client.post(
        f"/v1/unlock-requests/{decision['id']}/challenges/{ch['id']}/verify",
        json={"code": code},
        headers=h,
    )
    assert r.json()["status"] == "approved", r.text
    request_id: str = decision["id"]
    return request_id


def _pending(api: Api) -> list[tuple[datetime, int]]:
    async def pending() -> list[tuple[datetime, int]]:
        async with api.app.state.engine.connect() as conn:
            rows = await conn.execute(
                select(outbox_events.c.next_attempt_at, outbox_events.c.attempts).where(
                    outbox_events.c.kind == "account_unlocked",
                    outbox_events.c.delivered_at.is_(None),
                )
            )
            return [(r[0], r[1]) for r in rows]

    result: list[tuple[datetime, int]] = api.run(pending)
    return result


async def _due_now(api: Api) -> None:
    async with api.app.state.engine.begin() as conn:
        await conn.execute(
            update(outbox_events).values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
        )


def test_approval_webhook_is_signed_and_retried_until_acknowledged(
    webhook_api: Api, receiver_port: int
) -> None:
    api = webhook_api
    running = Running(receiver_port)
    try:
        Receiver.statuses = [503]
        request_id = _approve(api, "acct-hook")
        # The background loop runs too; driving it here makes the test independent of its timing.
        api.run(api.app.state.outbox.deliver_due)
        assert [d["status"] for d in Receiver.deliveries][:1] == [503]
        pending = _pending(api)
        assert len(pending) == 1
        assert pending[0][0] > datetime.now(UTC), "a failed delivery waits for its backoff"
        assert pending[0][1] == 1
        api.run(_due_now, api)  # as if the backoff had passed
        api.run(api.app.state.outbox.deliver_due)
    finally:
        running.stop()
    ok = [d for d in Receiver.deliveries if d["status"] == 200]
    assert len(ok) == 1
    assert len({d["event_id"] for d in Receiver.deliveries}) == 1, (
        "a retry carries the same event id"
    )
    assert ok[0]["signature_ok"]
    assert ok[0]["body"] == {
        "event_id": ok[0]["event_id"],
        "type": "account_unlocked",
        "account_id": "acct-hook",
        "unlock_request_id": request_id,
        "via": "verification",
        "approved_at": ok[0]["body"]["approved_at"],
    }


def _serve(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("ab")
    proc = subprocess.Popen(
        [BIN / "fairunlock", "serve", "--port", str(port)],
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    handle.close()
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_killed_between_approval_and_delivery_the_webhook_still_arrives_once(
    tmp_path: Path, receiver_port: int
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAIRUNLOCK_")}
    env.update(
        FAIRUNLOCK_DATA_DIR=str(tmp_path / "data"),
        FAIRUNLOCK_WEBHOOK_URL=f"http://127.0.0.1:{receiver_port}/hooks",
        FAIRUNLOCK_WEBHOOK_SECRET=SECRET,
    )
    subprocess.run(
        [BIN / "fairunlock", "db", "upgrade"], env=env, check=True, capture_output=True, timeout=120
    )
    key = subprocess.run(
        [BIN / "fairunlock", "keys", "create", "--role", "frontend", "--name", "fe"],
        env=env, check=True, capture_output=True, text=True, timeout=60,
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    port = free_port()
    log = tmp_path / "serve.log"
    proc = _serve(env, port, log)
    approvals = []
    try:
        # The receiver is down: the approvals are committed, their webhooks cannot be delivered.
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        ) as c:
            for i in range(3):
                account = f"acct-kill-{i}"
                secret = c.post(f"/v1/accounts/{account}/totp").json()["secret"]
                earlier = code_at(
                    secret, datetime.now(UTC) - timedelta(seconds=30), TotpParameters()
                )
                c.post(f"/v1/accounts/{account}/totp/confirm", json={"code": earlier})
                decision = c.post(
                    "/v1/unlock-requests", json={**PERSONA_REQUEST, "account_id": account}
                ).json()
                ch = c.post(
                    f"/v1/unlock-requests/{decision['id']}/challenges", json={"method": "totp"}
                ).json()
                code = code_at(secret, datetime.now(UTC), TotpParameters())
                r = c.post(
                    f"/v1/unlock-requests/{decision['id']}/challenges/{ch['id']}/verify",
                    json={"code": code},
                )
                assert r.json()["status"] == "approved"
                approvals.append(decision["id"])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    running = Running(receiver_port)
    try:
        proc = _serve(env, port, log)
        try:
            deadline = time.monotonic() + 60
            while len({d["body"]["unlock_request_id"] for d in Receiver.deliveries}) < len(
                approvals
            ):
                assert time.monotonic() < deadline, f"delivered only {Receiver.deliveries}"
                time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
    finally:
        running.stop()
    by_request: dict[str, set[str]] = {}
    for d in Receiver.deliveries:
        assert d["signature_ok"]
        by_request.setdefault(d["body"]["unlock_request_id"], set()).add(d["event_id"])
    # One event per approval: a redelivery repeats the same id, which the receiver keeps once.
    assert sorted(by_request) == sorted(approvals)
    assert all(len(ids) == 1 for ids in by_request.values())


def test_a_fault_in_one_delivery_still_settles_the_rest_of_its_batch(
    webhook_api: Api, receiver_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's deliveries run side by side: one that fails with a fault, not a delivery error
    (here the phone lookup of the notice), is raised for the loop to log after the others are
    settled; its own event keeps its lease and is tried again when that runs out."""
    from service import outbox

    api = webhook_api
    api.run(api.app.state.outbox.stop)  # this test drives every pass itself
    running = Running(receiver_port)
    try:
        _approve(api, "acct-fault")

        async def broken(*args: object) -> str | None:
            raise RuntimeError("the phone lookup broke")

        monkeypatch.setattr(outbox, "phone_on_file", broken)
        with pytest.raises(RuntimeError, match="phone lookup broke"):
            api.run(api.app.state.outbox.deliver_due)
    finally:
        running.stop()

    events = {row.kind: row for row in outbox_rows(api)}
    assert [d["status"] for d in Receiver.deliveries] == [200]
    assert events["account_unlocked"].delivered_at is not None  # settled as delivered
    notice = events["notify_person"]
    assert notice.delivered_at is None
    assert notice.attempts == 0
    assert notice.next_attempt_at > datetime.now(UTC) + timedelta(seconds=30)  # still leased


def test_erasure_removes_the_accounts_events_and_cancels_what_was_not_delivered(
    webhook_api: Api, receiver_port: int
) -> None:
    """PIPL-47: an event carries the account id (sealed with the service-wide key, so it can
    be opened): an erasure removes the account's events, delivered ones with the rest, cancels
    what had not gone out, counts it in its answer and its audit entry, and touches no other
    account's events."""
    api = webhook_api
    api.run(api.app.state.outbox.stop)  # this test drives every pass itself
    running = Running(receiver_port)
    try:
        delivered_request = _approve(api, "acct-delivered")
        api.run(api.app.state.outbox.deliver_due)
    finally:
        running.stop()
    assert [d["body"]["account_id"] for d in Receiver.deliveries] == ["acct-delivered"]
    pending_request = _approve(api, "acct-pending")
    other_request = _approve(api, "acct-other")

    admin = api.headers(Role.ADMIN)
    erased = api.client.delete("/v1/accounts/acct-pending", headers=admin)
    assert erased.status_code == 200, erased.text
    assert erased.json()["deliveries_cancelled"] == 2  # the webhook and the notice
    erased = api.client.delete("/v1/accounts/acct-delivered", headers=admin)
    assert erased.json()["deliveries_cancelled"] == 0

    left = {p["unlock_request_id"] for p in outbox_payloads(api)}
    assert left == {other_request}, "only the account not erased keeps its events"
    assert {pending_request, delivered_request}.isdisjoint(left)

    running = Running(receiver_port)
    try:
        api.run(api.app.state.outbox.deliver_due)
    finally:
        running.stop()
    assert [d["body"]["account_id"] for d in Receiver.deliveries] == [
        "acct-delivered",
        "acct-other",
    ], "a cancelled delivery never goes out"

    counts = sorted(
        e["data"]["deliveries_cancelled"] for e in _audit_events(api) if e["kind"] == "erasure"
    )
    assert counts == [0, 2]
