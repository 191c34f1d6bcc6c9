"""SMS gateway adapter: a Protocol; the ``http``, development ``console`` and fake gateways.

The ``http`` gateway POSTs ``{"to": "<E.164>", "message": "<text>", "id": "<delivery id>"}`` as JSON
to ``FAIRUNLOCK_SMS_HTTP_URL`` with ``Authorization: Bearer $FAIRUNLOCK_SMS_HTTP_TOKEN``; any 2xx is
accepted (DESIGN.md "Command line"). Connection errors, timeouts, 408, 429 and 5xx are retried with
exponential backoff and jitter (honouring ``Retry-After`` up to a cap); other statuses are final.
Every retry carries the same delivery id so the gateway can drop duplicates.

Neither the phone number nor the message text (which holds a one-time code) is ever logged or put
into an exception by the ``http`` gateway or the fake: only the delivery id, status and attempts.
The ``console`` gateway is the one exception, by purpose: in development it writes the message to
the log so a developer can read the code, and it refuses to exist in production.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

import httpx

from service.settings import SettingsError

logger = logging.getLogger("fairunlock.sms")

DEVELOPMENT_MARKER = "DEVELOPMENT ONLY \u2014 NOT SENT"

_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
# Printable ASCII without spaces: it goes into a JSON body and into our logs.
_DELIVERY_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_MAX_MESSAGE_CHARS = 1600  # ten concatenated SMS segments; a longer text is a bug, not a message
_LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost"}


@dataclass(frozen=True, slots=True)
class SmsReceipt:
    delivery_id: str
    gateway: str
    attempts: int


class SmsDeliveryError(Exception):
    """The gateway did not accept the message. Carries no phone number and no message text."""

    def __init__(
        self, delivery_id: str, attempts: int, reason: str, *, status: int | None = None
    ) -> None:
        super().__init__(f"SMS delivery {delivery_id} failed after {attempts} attempt(s): {reason}")
        self.delivery_id = delivery_id
        self.attempts = attempts
        # Stable and short: "http_400", "http_503", "timeout", "connection_error",
        # "retry_after_too_long".
        self.reason = reason
        self.status = status


@runtime_checkable
class SmsGateway(Protocol):
    async def send(self, to_e164: str, message: str, delivery_id: str) -> SmsReceipt: ...

    async def aclose(self) -> None: ...


def _check_send_args(to_e164: str, message: str, delivery_id: str) -> None:
    # Programming errors, not delivery failures: the flow normalises numbers before it sends.
    # The messages name the argument, never its value.
    if not _E164.fullmatch(to_e164):
        raise ValueError("to_e164 must be an E.164 number such as +<country code><number>")
    if not message or len(message) > _MAX_MESSAGE_CHARS:
        raise ValueError(f"message must be 1..{_MAX_MESSAGE_CHARS} characters")
    if not _DELIVERY_ID.fullmatch(delivery_id):
        raise ValueError("delivery_id must be 1..128 characters of [A-Za-z0-9._:-]")


# --- retry policy shared by the http gateway and the fake -----------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3
    backoff_base_s: float = 0.5
    backoff_max_s: float = 8.0
    # A Retry-After longer than this ends the attempts: waiting that long inside a request is
    # worse than failing now, and retrying sooner would ignore what the gateway asked for.
    retry_after_max_s: float = 30.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 10:
            raise ValueError("max_attempts must be between 1 and 10")
        if self.backoff_base_s < 0 or self.backoff_max_s < 0 or self.retry_after_max_s < 0:
            raise ValueError("delays must not be negative")

    def delay(self, attempt: int, retry_after_s: float | None) -> float | None:
        """Seconds to wait after failed attempt ``attempt`` (1-based); None means stop."""
        if retry_after_s is not None:
            return None if retry_after_s > self.retry_after_max_s else retry_after_s
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2.0 ** (attempt - 1))
        # "Equal jitter": at least half the exponential step, so clients that failed together
        # spread out without any of them retrying immediately.
        return ceiling / 2 + secrets.SystemRandom().uniform(0, ceiling / 2)


def parse_retry_after(raw: str | None, *, now: datetime | None = None) -> float | None:
    """RFC 9110 Retry-After: delta-seconds or an HTTP-date; None when absent or unreadable."""
    if raw is None:
        return None
    text = raw.strip()
    if text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    current = now or datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


@dataclass(frozen=True, slots=True)
class _Attempt:
    accepted: bool
    reason: str
    status: int | None = None
    retryable: bool = False
    retry_after_s: float | None = None


def _classify(status: int, retry_after: str | None) -> _Attempt:
    if 200 <= status <= 299:
        return _Attempt(accepted=True, reason="accepted", status=status)
    retryable = status in {408, 429} or 500 <= status <= 599
    return _Attempt(
        accepted=False,
        reason=f"http_{status}",
        status=status,
        retryable=retryable,
        retry_after_s=parse_retry_after(retry_after) if status in {429, 503} else None,
    )


Sleep = Callable[[float], Awaitable[None]]


class _RetryingGateway:
    """The send loop: validation, attempts, backoff, receipts. Subclasses make one attempt."""

    name = "abstract"

    def __init__(self, policy: RetryPolicy, sleep: Sleep | None) -> None:
        self._policy = policy
        self._sleep: Sleep = sleep or asyncio.sleep
        self._closed = False

    async def _attempt(self, to_e164: str, message: str, delivery_id: str) -> _Attempt:
        raise NotImplementedError

    async def send(self, to_e164: str, message: str, delivery_id: str) -> SmsReceipt:
        _check_send_args(to_e164, message, delivery_id)
        if self._closed:
            raise RuntimeError("the SMS gateway is closed")
        attempt = 0
        while True:
            attempt += 1
            result = await self._attempt(to_e164, message, delivery_id)
            if result.accepted:
                logger.info(
                    "sms delivery %s accepted by %s (status %s, attempt %d)",
                    delivery_id,
                    self.name,
                    result.status,
                    attempt,
                )
                return SmsReceipt(delivery_id=delivery_id, gateway=self.name, attempts=attempt)
            if not result.retryable or attempt >= self._policy.max_attempts:
                logger.error(
                    "sms delivery %s failed at %s: %s (attempt %d, final)",
                    delivery_id,
                    self.name,
                    result.reason,
                    attempt,
                )
                raise SmsDeliveryError(delivery_id, attempt, result.reason, status=result.status)
            wait = self._policy.delay(attempt, result.retry_after_s)
            if wait is None:
                logger.error(
                    "sms delivery %s: %s asks to wait %.0f s, beyond the cap; giving up",
                    delivery_id,
                    self.name,
                    result.retry_after_s or 0.0,
                )
                raise SmsDeliveryError(
                    delivery_id, attempt, "retry_after_too_long", status=result.status
                )
            logger.warning(
                "sms delivery %s attempt %d failed at %s: %s; retrying in %.2f s",
                delivery_id,
                attempt,
                self.name,
                result.reason,
                wait,
            )
            await self._sleep(wait)

    async def aclose(self) -> None:
        self._closed = True


class HttpSmsGateway(_RetryingGateway):
    """The real gateway: the JSON POST of DESIGN.md over httpx."""

    name = "http"

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout_s: float = 5.0,
        connect_timeout_s: float = 3.0,
        policy: RetryPolicy | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        super().__init__(policy or RetryPolicy(), sleep)
        self._url = url
        self._token = token
        self._timeout_s = timeout_s
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, connect_timeout_s)),
            # A redirect would carry the bearer token elsewhere; a 3xx is a failure instead.
            follow_redirects=False,
        )

    async def _attempt(self, to_e164: str, message: str, delivery_id: str) -> _Attempt:
        body = json.dumps(
            {"to": to_e164, "message": message, "id": delivery_id}, ensure_ascii=False
        ).encode("utf-8")
        headers = {
            "Authorization": f"Bearer {self._token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        try:
            # httpx's timeouts bound each phase; this bounds the whole attempt, so a server that
            # trickles bytes cannot hold a request open past the timeout either.
            async with asyncio.timeout(self._timeout_s):
                response = await self._client.post(self._url, content=body, headers=headers)
        except (TimeoutError, httpx.TimeoutException):
            return _Attempt(accepted=False, reason="timeout", retryable=True)
        except httpx.TransportError:
            # Refused, reset, or closed without a response: the request may or may not have
            # arrived, which is what the delivery id is for.
            return _Attempt(accepted=False, reason="connection_error", retryable=True)
        return _classify(response.status_code, response.headers.get("Retry-After"))

    async def aclose(self) -> None:
        await super().aclose()
        await self._client.aclose()


class ConsoleSmsGateway:
    """Development only: writes the message to the log instead of sending it."""

    name = "console"

    def __init__(self, *, production: bool) -> None:
        if production:
            raise SettingsError(
                "FAIRUNLOCK_SMS_GATEWAY=console is for development only; "
                "production needs FAIRUNLOCK_SMS_GATEWAY=http"
            )
        self._closed = False

    async def send(self, to_e164: str, message: str, delivery_id: str) -> SmsReceipt:
        _check_send_args(to_e164, message, delivery_id)
        if self._closed:
            raise RuntimeError("the SMS gateway is closed")
        # The point of this gateway is that a developer can read the code; it never runs in
        # production (see __init__), where DESIGN.md principle 5 forbids codes in logs.
        logger.warning("%s: SMS %s to %s: %s", DEVELOPMENT_MARKER, delivery_id, to_e164, message)
        return SmsReceipt(delivery_id=delivery_id, gateway=self.name, attempts=1)

    async def aclose(self) -> None:
        self._closed = True


@dataclass(frozen=True, slots=True)
class FakeReply:
    """What the fake gateway (or a scripted test server) answers to one attempt."""

    status: int = 202
    retry_after: str | None = None
    error: Literal["timeout", "connection_error"] | None = None


@dataclass(frozen=True, slots=True)
class SentSms:
    to: str
    message: str
    delivery_id: str


class FakeSmsGateway(_RetryingGateway):
    """In-memory gateway for unit tests, with the http gateway's retry policy.

    ``sent`` holds the accepted messages, ``attempts`` every attempt. ``fail_next`` scripts the
    answers to the next attempts; ``default`` answers the rest (set it to fail every send).
    The fake never sleeps unless given a ``sleep``.
    """

    name = "fake"

    def __init__(
        self,
        *,
        policy: RetryPolicy | None = None,
        sleep: Sleep | None = None,
        default: FakeReply | None = None,
    ) -> None:
        async def no_sleep(_seconds: float) -> None:
            return None

        super().__init__(policy or RetryPolicy(), sleep or no_sleep)
        self.sent: list[SentSms] = []
        self.attempts: list[SentSms] = []
        self.default = default or FakeReply()
        self._script: list[FakeReply] = []

    def fail_next(self, *replies: FakeReply) -> None:
        self._script.extend(replies)

    async def _attempt(self, to_e164: str, message: str, delivery_id: str) -> _Attempt:
        item = SentSms(to=to_e164, message=message, delivery_id=delivery_id)
        self.attempts.append(item)
        reply = self._script.pop(0) if self._script else self.default
        if reply.error is not None:
            return _Attempt(accepted=False, reason=reply.error, retryable=True)
        result = _classify(reply.status, reply.retry_after)
        if result.accepted:
            self.sent.append(item)
        return result

    @property
    def closed(self) -> bool:
        return self._closed


# --- configuration --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SmsConfig:
    gateway: Literal["console", "http"] = "console"
    url: str | None = None
    token: str | None = field(default=None, repr=False)
    timeout_s: float = 5.0
    max_attempts: int = 3
    production: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, production: bool) -> SmsConfig:
        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value is not None and value.strip() else None

        raw_gateway = get("FAIRUNLOCK_SMS_GATEWAY")
        if raw_gateway is None:
            if production:
                raise SettingsError(
                    "FAIRUNLOCK_SMS_GATEWAY is required in production and must be http"
                )
            raw_gateway = "console"
        gateway = raw_gateway.lower()
        if gateway not in {"console", "http"}:
            raise SettingsError(
                f"FAIRUNLOCK_SMS_GATEWAY must be console or http, got {raw_gateway!r}"
            )
        if gateway == "console":
            if production:
                raise SettingsError(
                    "FAIRUNLOCK_SMS_GATEWAY=console is for development only; use http in production"
                )
            return cls(gateway="console", production=production)

        url = get("FAIRUNLOCK_SMS_HTTP_URL")
        if url is None:
            raise SettingsError(
                "FAIRUNLOCK_SMS_HTTP_URL is required when FAIRUNLOCK_SMS_GATEWAY=http"
            )
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise SettingsError(f"FAIRUNLOCK_SMS_HTTP_URL must be an http(s) URL, got {url!r}")
        if parts.username is not None or parts.password is not None:
            # Credentials belong in the token, and a URL ends up in logs.
            raise SettingsError("FAIRUNLOCK_SMS_HTTP_URL must not contain credentials")
        if production and parts.scheme != "https" and parts.hostname not in _LOOPBACK_HOSTS:
            raise SettingsError(
                "FAIRUNLOCK_SMS_HTTP_URL must use https in production "
                "(plain http only to a loopback sidecar)"
            )

        token = get("FAIRUNLOCK_SMS_HTTP_TOKEN")
        if token is None:
            raise SettingsError(
                "FAIRUNLOCK_SMS_HTTP_TOKEN is required when FAIRUNLOCK_SMS_GATEWAY=http"
            )
        if not all(33 <= ord(ch) <= 126 for ch in token):
            # It goes into a header; the message never echoes the value.
            raise SettingsError("FAIRUNLOCK_SMS_HTTP_TOKEN must be printable ASCII without spaces")

        timeout_s = 5.0
        if (raw := get("FAIRUNLOCK_SMS_HTTP_TIMEOUT_S")) is not None:
            try:
                timeout_s = float(raw)
            except ValueError:
                raise SettingsError(
                    f"FAIRUNLOCK_SMS_HTTP_TIMEOUT_S must be a number of seconds, got {raw!r}"
                ) from None
            if not 0.1 <= timeout_s <= 60:
                raise SettingsError(
                    f"FAIRUNLOCK_SMS_HTTP_TIMEOUT_S must be between 0.1 and 60, got {raw!r}"
                )
        max_attempts = 3
        if (raw := get("FAIRUNLOCK_SMS_HTTP_MAX_ATTEMPTS")) is not None:
            if not raw.isdigit() or not 1 <= int(raw) <= 10:
                raise SettingsError(
                    f"FAIRUNLOCK_SMS_HTTP_MAX_ATTEMPTS must be an integer 1..10, got {raw!r}"
                )
            max_attempts = int(raw)
        return cls(
            gateway="http",
            url=url,
            token=token,
            timeout_s=timeout_s,
            max_attempts=max_attempts,
            production=production,
        )


def build_sms_gateway(config: SmsConfig) -> SmsGateway:
    if config.gateway == "console":
        return ConsoleSmsGateway(production=config.production)
    if config.url is None or config.token is None:
        raise SettingsError("FAIRUNLOCK_SMS_HTTP_URL and FAIRUNLOCK_SMS_HTTP_TOKEN are required")
    return HttpSmsGateway(
        config.url,
        config.token,
        timeout_s=config.timeout_s,
        policy=RetryPolicy(max_attempts=config.max_attempts),
    )


class SendTimings:
    """How long this worker's recent sends took: looking up and decrypting the number on file,
    then the gateway's round trip. An SMS challenge that sends nothing (an unknown account id, or
    an account with no number on file) does neither, or only the lookup, and waits out the rest of
    one of them, so what it skips does not tell the two apart (OWASP-FP-1/2). A worker that has
    sent nothing yet has nothing to imitate and does not wait."""

    __slots__ = ("_late", "_recent")

    def __init__(self, size: int = 64) -> None:
        self._recent: deque[float] = deque(maxlen=size)
        # How late this worker's waits wake up (timer granularity, the loop busy with others),
        # averaged. A recorded send already holds the loop's delay in resuming it; a wait of the
        # same length would add that delay a second time.
        self._late = 0.0

    def record(self, seconds: float) -> None:
        self._recent.append(seconds)

    async def pad(self, spent: float = 0.0) -> None:
        """Wait as long as a recent send took, less the ``spent`` seconds already taken by the
        part of a send this challenge did do."""
        if not self._recent:
            return
        # A recent send's duration, drawn at random: the same distribution, not its mean.
        rest = secrets.choice(self._recent) - spent - self._late
        if rest <= 0:
            return
        began = time.perf_counter()
        await asyncio.sleep(rest)
        self._late += (time.perf_counter() - began - rest - self._late) / 8
