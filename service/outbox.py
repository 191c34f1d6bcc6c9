"""The outbox: what an approval must tell the world, delivered after commit and until acknowledged.

An approval writes its events in the same transaction as the approval itself (nothing acknowledged
is lost if the process dies right after). Any worker delivers: it leases a batch of due events
with one conditional update, delivers them, and marks them delivered. A worker killed
between delivery and marking leaves the lease to run out and another delivers again, so delivery
is at least once; every event carries its id so the receiver keeps exactly one (it dedupes).

- ``account_unlocked``: a webhook POST to the account system, signed with HMAC-SHA256 over
  ``<timestamp>.<body>`` (header ``X-FairUnlock-Signature: sha256=<hex>``), 2xx = acknowledged.
- ``notify_person``: a text message to the phone on file (NIST-63B4-4.6), with no secret in it.
- ``notify_code_reused``: the same, when a TOTP code was used again (ASVS4-2.8.5).
- ``notify_review``: the same, when a reviewer decided or asks for more.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import urlsplit

import httpx

from service.adapters.sms import SmsDeliveryError
from service.context import ServiceContext
from service.flows.enrolment import phone_on_file
from service.flows.unlock import ACCOUNT_ID_PURPOSE
from service.persistence.outbox import FailedAttempt, LeasedEvent, OutboxRepository
from service.settings import SettingsError
from service.worker_loop import WorkerLoop

log = logging.getLogger("fairunlock.outbox")

# What the person is told: where to look, never a code, a reason or any personal data.
NOTICES: dict[str, dict[str, str]] = {
    "notify_person": {
        "en": "FairUnlock: your account was unlocked just now. "
        "If this was not you, contact support at once.",
        "zh-CN": "FairUnlock：您的账号刚刚已解封。如非本人操作，请立即联系客服。",  # noqa: RUF001
    },
    # ASVS4-2.8.5: an authenticator code used a second time is refused, and its holder told.
    "notify_code_reused": {
        "en": "FairUnlock: an authenticator code that was already used was just entered to "
        "unlock your account. If this was not you, contact support at once.",
        "zh-CN": "FairUnlock：刚刚有人使用已用过的验证器动态码尝试解封您的账号。"  # noqa: RUF001
        "如非本人操作，请立即联系客服。",  # noqa: RUF001
    },
    "notify_review": {
        "en": "FairUnlock: a reviewer has looked at your unlock request. Open the app to see it.",
        "zh-CN": "FairUnlock：工作人员已处理您的解封申请，请在应用中查看。",  # noqa: RUF001
    },
}
REVIEW_NOTICES: dict[str, dict[str, str]] = {
    "denied": {
        "en": "FairUnlock: a reviewer has decided on your unlock request. Open the app to see "
        "why and how to contest it.",
        "zh-CN": "FairUnlock：工作人员已对您的解封申请作出决定，请在应用中查看理由及申诉方式。",  # noqa: RUF001
    },
    "need_more_info": {
        "en": "FairUnlock: a reviewer needs more information for your unlock request. "
        "Open the app to answer.",
        "zh-CN": "FairUnlock：工作人员需要您补充信息以处理解封申请，请在应用中回复。",  # noqa: RUF001
    },
}
LEASE = timedelta(seconds=60)
MAX_BACKOFF = timedelta(hours=1)
BATCH = 50
# Deliveries of a batch under way at once: each may hold a database connection (a notice reads
# the phone on file) that requests need too.
PARALLEL = 8


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    url: str | None = None
    secret: str | None = field(default=None, repr=False)
    timeout_s: float = 5.0

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, production: bool) -> WebhookConfig:
        url = env.get("FAIRUNLOCK_WEBHOOK_URL") or None
        secret = env.get("FAIRUNLOCK_WEBHOOK_SECRET") or None
        if production and (url is None or secret is None):
            raise SettingsError(
                "FAIRUNLOCK_WEBHOOK_URL and FAIRUNLOCK_WEBHOOK_SECRET are required in production: "
                "the account system must learn of every approval"
            )
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in {"http", "https"} or not parts.hostname:
                raise SettingsError("FAIRUNLOCK_WEBHOOK_URL must be an http(s) URL")
            if secret is None or len(secret) < 16:
                raise SettingsError("FAIRUNLOCK_WEBHOOK_SECRET must be set, at least 16 characters")
        return cls(url=url, secret=secret)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def backoff(attempts: int) -> timedelta:
    """Exponential with jitter: 2 s, 4 s, 8 s, … capped at an hour."""
    base = min(MAX_BACKOFF.total_seconds(), 2.0**attempts)
    return timedelta(seconds=base * (0.5 + random.random() / 2))  # noqa: S311 - jitter, not a secret


class DeliveryError(Exception):
    """This attempt failed; the event stays in the outbox for the next one."""


class OutboxDispatcher(WorkerLoop):
    def __init__(
        self, ctx: ServiceContext, webhook: WebhookConfig, client: httpx.AsyncClient | None = None
    ) -> None:
        super().__init__("fairunlock-outbox", log)
        self._ctx = ctx
        self._webhook = webhook
        self._client = client or httpx.AsyncClient(timeout=webhook.timeout_s)

    async def aclose(self) -> None:
        await self.stop()
        await self._client.aclose()

    async def deliver_due(self, limit: int = BATCH) -> int:
        """Deliver what is due now; returns how many were acknowledged.

        One transaction leases the batch and one settles it: per event, two write transactions
        were most of the deliverer's cost, and with several workers each one's claims of the
        same events, all but one lost, took turns at SQLite's write lock with the requests. The
        batch's deliveries run ``PARALLEL`` at a time, so a receiver that times out holds the
        batch up for a few timeouts, well within the lease, not one per event."""
        ctx = self._ctx
        async with ctx.engine.begin() as conn:
            leased = await OutboxRepository(conn).lease_due(ctx.clock(), LEASE, limit)
        if not leased:
            return 0
        turns = asyncio.Semaphore(PARALLEL)

        async def attempt(event: LeasedEvent) -> None:
            async with turns:
                await self._attempt(event)

        outcomes = await asyncio.gather(*(attempt(e) for e in leased), return_exceptions=True)
        delivered: list[str] = []
        failed: list[FailedAttempt] = []
        unexpected: BaseException | None = None
        now = ctx.clock()
        for event, outcome in zip(leased, outcomes, strict=True):
            if outcome is None:
                delivered.append(event.id)
                log.info("outbox event delivered", extra={"event_id": event.id, "kind": event.kind})
            elif isinstance(outcome, DeliveryError):
                retry_at = now + backoff(event.attempts + 1)
                failed.append(FailedAttempt(event.id, retry_at, str(outcome)))
                log.warning(
                    "outbox delivery failed",
                    extra={"event_id": event.id, "kind": event.kind, "error": str(outcome)},
                )
            else:
                # Not a delivery's failure but a fault (its lease runs out and it is tried again);
                # the rest of the batch is still settled before it is raised.
                unexpected = unexpected or outcome
        async with ctx.engine.begin() as conn:
            await OutboxRepository(conn).settle(delivered, failed, now)
        if unexpected is not None:
            raise unexpected
        return len(delivered)

    async def _attempt(self, event: LeasedEvent) -> None:
        if event.kind == "account_unlocked":
            await self._webhook_post(event.id, json.loads(event.payload))
        elif event.kind in NOTICES:
            await self._notify(event.id, event.subject, event.kind, json.loads(event.payload))
        else:
            raise DeliveryError(f"unknown event kind {event.kind!r}")

    def _account_id(self, payload: Mapping[str, object]) -> str:
        sealed = payload.get("account_id_sealed")
        if not isinstance(sealed, str):
            raise DeliveryError("event carries no account id")
        return self._ctx.sealer.open(sealed, ACCOUNT_ID_PURPOSE)

    async def _webhook_post(self, event_id: str, payload: Mapping[str, object]) -> None:
        if self._webhook.url is None or self._webhook.secret is None:
            # Development without an account system: say so loudly and count it as handled.
            log.warning(
                "DEVELOPMENT: no FAIRUNLOCK_WEBHOOK_URL; account_unlocked event not sent anywhere",
                extra={"event_id": event_id},
            )
            return
        body = json.dumps(
            {
                "event_id": event_id,
                "type": "account_unlocked",
                "account_id": self._account_id(payload),
                "unlock_request_id": payload.get("unlock_request_id"),
                "via": payload.get("via"),
                "approved_at": payload.get("approved_at"),
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        timestamp = str(int(time.time()))
        headers = {
            "content-type": "application/json",
            "x-fairunlock-event-id": event_id,
            "x-fairunlock-timestamp": timestamp,
            "x-fairunlock-signature": sign(self._webhook.secret, timestamp, body),
        }
        try:
            response = await self._client.post(self._webhook.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"webhook: {type(exc).__name__}") from None
        if not 200 <= response.status_code < 300:
            raise DeliveryError(f"webhook answered {response.status_code}")

    async def _notify(
        self, event_id: str, subject: str, kind: str, payload: Mapping[str, object]
    ) -> None:
        ctx = self._ctx
        account_id = self._account_id(payload)
        async with ctx.engine.connect() as conn:
            phone = await phone_on_file(conn, ctx, account_id, subject)
        if phone is None:
            return  # no channel on file: nothing to send, nothing to retry
        texts = NOTICES[kind]
        if kind == "notify_review":
            texts = REVIEW_NOTICES.get(str(payload.get("outcome")), texts)
        text = texts["en"] if payload.get("locale") == "en" else texts["zh-CN"]
        try:
            await ctx.sms.send(phone, text, event_id)
        except SmsDeliveryError as exc:
            raise DeliveryError(f"sms: {exc.reason}") from None

    # --- in the service -------------------------------------------------------------------------

    def start(self, interval: float = 0.5) -> None:
        self.start_loop(interval)

    async def run_pass(self) -> None:
        await self.deliver_due()
