"""One contract for every SMS gateway: the http gateway against a real HTTP server on loopback, and
the in-memory fake, pass the same tests (issue 5, "SMS code"; DESIGN.md "Command line").

Scripted answers (``FakeReply``) drive both: the loopback server answers them over HTTP, the fake
answers them in memory. Delays are real but small; the only second-long wait is the Retry-After
test, because Retry-After has one-second resolution.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol

import pytest

from service.adapters.sms import (
    DEVELOPMENT_MARKER,
    ConsoleSmsGateway,
    FakeReply,
    FakeSmsGateway,
    HttpSmsGateway,
    RetryPolicy,
    SmsConfig,
    SmsDeliveryError,
    SmsGateway,
    SmsReceipt,
    build_sms_gateway,
    parse_retry_after,
)
from service.settings import SettingsError
from tests.service.adapters.sms_support import SmsReceiver

TOKEN = "test-token-5f1c0e"  # a test credential for the loopback server
NUMBER = "+8613800005678"
MESSAGE = "FairUnlock code 493027. It expires in 10 minutes. Never share it."
DELIVERY_ID = "dlv-7f3a9c"

FAST = RetryPolicy(max_attempts=3, backoff_base_s=0.01, backoff_max_s=0.05, retry_after_max_s=2)

Sent = tuple[str, str, str]  # (to, message, id) as the gateway received it


class Harness(Protocol):
    kind: str

    def script(self, *replies: FakeReply) -> None: ...

    def gateway(
        self,
        policy: RetryPolicy = FAST,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        timeout_s: float = 2.0,
    ) -> SmsGateway: ...

    def requests(self) -> list[Sent]: ...


class HttpHarness:
    kind = "http"

    def __init__(self, receiver: SmsReceiver) -> None:
        self.receiver = receiver

    def script(self, *replies: FakeReply) -> None:
        self.receiver.script(*replies)

    def gateway(
        self,
        policy: RetryPolicy = FAST,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        timeout_s: float = 2.0,
    ) -> SmsGateway:
        return HttpSmsGateway(
            self.receiver.url, TOKEN, timeout_s=timeout_s, policy=policy, sleep=sleep
        )

    def requests(self) -> list[Sent]:
        out = []
        for r in self.receiver.received:
            doc = r.json()
            out.append((doc["to"], doc["message"], doc["id"]))
        return out


class FakeHarness:
    kind = "fake"

    def __init__(self) -> None:
        self._pending: list[FakeReply] = []
        self.fakes: list[FakeSmsGateway] = []

    def script(self, *replies: FakeReply) -> None:
        self._pending.extend(replies)

    def gateway(
        self,
        policy: RetryPolicy = FAST,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        timeout_s: float = 2.0,
    ) -> SmsGateway:
        # Like the server's script, the answers are consumed once, by whichever gateway asks.
        fake = FakeSmsGateway(policy=policy, sleep=sleep)
        fake.fail_next(*self._pending)
        self._pending.clear()
        self.fakes.append(fake)
        return fake

    def requests(self) -> list[Sent]:
        return [(a.to, a.message, a.delivery_id) for f in self.fakes for a in f.attempts]


@pytest.fixture(params=["http", "fake"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    if request.param == "http":
        receiver = SmsReceiver(TOKEN).start()
        try:
            yield HttpHarness(receiver)
        finally:
            receiver.stop()
    else:
        yield FakeHarness()


def send_once(gateway: SmsGateway) -> SmsReceipt:
    """Send the test message and close the gateway in the same event loop."""

    async def main() -> SmsReceipt:
        try:
            return await gateway.send(NUMBER, MESSAGE, DELIVERY_ID)
        finally:
            await gateway.aclose()

    return asyncio.run(main())


def recording_sleep(waits: list[float]) -> Callable[[float], Awaitable[None]]:
    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(seconds)

    return sleep


# --- the contract ---------------------------------------------------------------------------------


def test_2xx_is_accepted_on_the_first_attempt(harness: Harness) -> None:
    for status in (200, 201, 202, 204):
        harness.script(FakeReply(status))
    for status in (200, 201, 202, 204):
        receipt = send_once(harness.gateway())
        assert receipt == SmsReceipt(delivery_id=DELIVERY_ID, gateway=harness.kind, attempts=1), (
            status
        )
    assert harness.requests()[-1] == (NUMBER, MESSAGE, DELIVERY_ID)


def test_500_then_200_is_retried_with_the_same_delivery_id(harness: Harness) -> None:
    harness.script(FakeReply(500), FakeReply(200))
    receipt = send_once(harness.gateway())
    assert receipt.attempts == 2
    # The same id both times, so the gateway can drop the duplicate if the first one got through.
    assert harness.requests() == [(NUMBER, MESSAGE, DELIVERY_ID)] * 2


def test_connection_dropped_without_a_response_is_retried(harness: Harness) -> None:
    harness.script(FakeReply(error="connection_error"))
    assert send_once(harness.gateway()).attempts == 2
    assert [r[2] for r in harness.requests()] == [DELIVERY_ID, DELIVERY_ID]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_4xx_is_final_and_not_retried(harness: Harness, status: int) -> None:
    harness.script(FakeReply(status))
    with pytest.raises(SmsDeliveryError) as caught:
        send_once(harness.gateway())
    assert (caught.value.attempts, caught.value.reason, caught.value.status) == (
        1,
        f"http_{status}",
        status,
    )
    assert caught.value.delivery_id == DELIVERY_ID
    assert len(harness.requests()) == 1


def test_5xx_retried_until_max_attempts_with_growing_jittered_backoff(harness: Harness) -> None:
    policy = RetryPolicy(max_attempts=3, backoff_base_s=0.04, backoff_max_s=1.0)
    harness.script(FakeReply(503), FakeReply(502), FakeReply(500))
    waits: list[float] = []
    with pytest.raises(SmsDeliveryError) as caught:
        send_once(harness.gateway(policy, recording_sleep(waits)))
    assert (caught.value.attempts, caught.value.reason) == (3, "http_500")
    assert len(harness.requests()) == 3
    # Equal jitter: step n waits between half and all of base * 2**(n-1).
    assert len(waits) == 2
    assert 0.02 <= waits[0] <= 0.04
    assert 0.04 <= waits[1] <= 0.08


def test_a_server_that_never_answers_times_out_within_a_bound(harness: Harness) -> None:
    harness.script(*[FakeReply(error="timeout")] * 3)
    started = time.monotonic()
    with pytest.raises(SmsDeliveryError) as caught:
        send_once(harness.gateway(timeout_s=0.3))
    elapsed = time.monotonic() - started
    assert (caught.value.attempts, caught.value.reason) == (3, "timeout")
    assert len(harness.requests()) == 3
    # Three timeouts of 0.3 s plus two backoffs of at most 0.05 s, and slack for a busy machine.
    assert elapsed < 3 * 0.3 + 2 * 0.05 + 1.0


def test_429_retry_after_is_honoured(harness: Harness) -> None:
    harness.script(FakeReply(429, retry_after="1"))
    waits: list[float] = []
    started = time.monotonic()
    receipt = send_once(harness.gateway(sleep=recording_sleep(waits)))
    elapsed = time.monotonic() - started
    assert receipt.attempts == 2
    assert waits == [1.0]  # the gateway's value, not the (much shorter) backoff
    assert 1.0 <= elapsed < 3.0


def test_retry_after_beyond_the_cap_ends_the_attempts(harness: Harness) -> None:
    harness.script(FakeReply(429, retry_after="120"))
    started = time.monotonic()
    with pytest.raises(SmsDeliveryError) as caught:
        send_once(harness.gateway())
    assert (caught.value.attempts, caught.value.reason) == (1, "retry_after_too_long")
    assert time.monotonic() - started < 1.0
    assert len(harness.requests()) == 1


def test_bad_arguments_are_refused_before_anything_is_sent(harness: Harness) -> None:
    gateway = harness.gateway()

    async def main() -> None:
        try:
            for to, message, delivery_id in [
                ("13800005678", MESSAGE, DELIVERY_ID),  # not E.164
                ("+86 138 0000 5678", MESSAGE, DELIVERY_ID),
                (NUMBER, "", DELIVERY_ID),
                (NUMBER, MESSAGE, ""),
                (NUMBER, MESSAGE, "id with spaces"),
            ]:
                with pytest.raises(ValueError, match=r"^(to_e164|message|delivery_id) ") as caught:
                    await gateway.send(to, message, delivery_id)
                assert NUMBER not in str(caught.value)
        finally:
            await gateway.aclose()

    asyncio.run(main())
    assert harness.requests() == []


def test_a_closed_gateway_refuses_to_send(harness: Harness) -> None:
    gateway = harness.gateway()

    async def main() -> None:
        await gateway.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await gateway.send(NUMBER, MESSAGE, DELIVERY_ID)

    asyncio.run(main())
    assert harness.requests() == []


def test_number_and_message_never_reach_logs_or_errors(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    # DESIGN.md principle 5: no OTP in any log; the number is personal data.
    caplog.set_level(logging.DEBUG)
    harness.script(FakeReply(503), FakeReply(202))
    send_once(harness.gateway())
    harness.script(FakeReply(400))
    with pytest.raises(SmsDeliveryError) as caught:
        send_once(harness.gateway())
    texts = [r.getMessage() for r in caplog.records] + [str(caught.value), repr(caught.value)]
    assert any(DELIVERY_ID in t for t in texts)  # the log is there, it names the delivery
    for text in texts:
        assert NUMBER not in text
        assert "13800005678" not in text
        assert "493027" not in text


# --- the http gateway only: what travels over the wire -------------------------------------------


@pytest.fixture
def receiver() -> Iterator[SmsReceiver]:
    server = SmsReceiver(TOKEN).start()
    try:
        yield server
    finally:
        server.stop()


def test_http_request_is_exactly_the_specified_json_post(receiver: SmsReceiver) -> None:
    send_once(HttpSmsGateway(receiver.url, TOKEN, policy=FAST))
    [request] = receiver.received
    assert request.method == "POST"
    assert request.path == "/v1/sms"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {"to": NUMBER, "message": MESSAGE, "id": DELIVERY_ID}


def test_http_non_ascii_message_travels_as_utf8_json(receiver: SmsReceiver) -> None:
    text = "FairUnlock 验证码 493027, 10 分钟内有效。"
    gateway = HttpSmsGateway(receiver.url, TOKEN, policy=FAST)

    async def main() -> None:
        try:
            await gateway.send(NUMBER, text, DELIVERY_ID)
        finally:
            await gateway.aclose()

    asyncio.run(main())
    assert receiver.received[0].json()["message"] == text


def test_http_wrong_token_is_refused_by_the_server_and_not_retried(receiver: SmsReceiver) -> None:
    with pytest.raises(SmsDeliveryError) as caught:
        send_once(HttpSmsGateway(receiver.url, "not-the-token", policy=FAST))
    assert (caught.value.attempts, caught.value.reason) == (1, "http_401")
    assert len(receiver.received) == 1
    assert "not-the-token" not in str(caught.value)


def test_http_nothing_listening_is_a_connection_error_after_max_attempts() -> None:
    # Bind and close a socket to get a port nobody listens on.
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(SmsDeliveryError) as caught:
        send_once(HttpSmsGateway(f"http://127.0.0.1:{port}/v1/sms", TOKEN, policy=FAST))
    assert (caught.value.attempts, caught.value.reason) == (3, "connection_error")


def test_http_a_server_that_trickles_bytes_is_cut_off_by_the_attempt_deadline(
    receiver: SmsReceiver,
) -> None:
    # httpx's read timeout restarts with every byte; the per-attempt deadline does not.
    receiver.trickle_next(3)
    started = time.monotonic()
    with pytest.raises(SmsDeliveryError) as caught:
        send_once(HttpSmsGateway(receiver.url, TOKEN, timeout_s=0.3, policy=FAST))
    assert (caught.value.attempts, caught.value.reason) == (3, "timeout")
    assert time.monotonic() - started < 3 * 0.3 + 2 * 0.05 + 1.0


def test_http_redirect_is_not_followed(receiver: SmsReceiver) -> None:
    # Following it would hand the bearer token to wherever the Location points.
    receiver.script(FakeReply(307))
    with pytest.raises(SmsDeliveryError) as caught:
        send_once(HttpSmsGateway(receiver.url, TOKEN, policy=FAST))
    assert (caught.value.attempts, caught.value.reason) == (1, "http_307")


# --- console gateway ------------------------------------------------------------------------------


def test_console_gateway_logs_the_message_with_the_development_marker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="fairunlock.sms")
    receipt = send_once(ConsoleSmsGateway(production=False))
    assert receipt == SmsReceipt(delivery_id=DELIVERY_ID, gateway="console", attempts=1)
    [record] = [r for r in caplog.records if r.name == "fairunlock.sms"]
    assert DEVELOPMENT_MARKER in record.getMessage()
    assert "NOT SENT" in record.getMessage()
    assert MESSAGE in record.getMessage()  # a developer needs to read the code


def test_console_gateway_is_refused_in_production() -> None:
    with pytest.raises(SettingsError, match="FAIRUNLOCK_SMS_GATEWAY"):
        ConsoleSmsGateway(production=True)
    with pytest.raises(SettingsError, match="FAIRUNLOCK_SMS_GATEWAY"):
        build_sms_gateway(SmsConfig(gateway="console", production=True))


# --- configuration --------------------------------------------------------------------------------

HTTP_ENV = {
    "FAIRUNLOCK_SMS_GATEWAY": "http",
    "FAIRUNLOCK_SMS_HTTP_URL": "https://sms.example.net/v1/send",
    "FAIRUNLOCK_SMS_HTTP_TOKEN": TOKEN,
}


def test_config_defaults_to_console_in_development_only() -> None:
    assert SmsConfig.from_env({}, production=False).gateway == "console"
    with pytest.raises(SettingsError, match="FAIRUNLOCK_SMS_GATEWAY is required in production"):
        SmsConfig.from_env({}, production=True)
    with pytest.raises(SettingsError, match="FAIRUNLOCK_SMS_GATEWAY=console"):
        SmsConfig.from_env({"FAIRUNLOCK_SMS_GATEWAY": "console"}, production=True)


def test_config_http_reads_every_variable_and_hides_the_token() -> None:
    env = {
        **HTTP_ENV,
        "FAIRUNLOCK_SMS_HTTP_TIMEOUT_S": "2.5",
        "FAIRUNLOCK_SMS_HTTP_MAX_ATTEMPTS": "5",
    }
    config = SmsConfig.from_env(env, production=True)
    assert (config.gateway, config.url, config.token, config.timeout_s, config.max_attempts) == (
        "http",
        "https://sms.example.net/v1/send",
        TOKEN,
        2.5,
        5,
    )
    assert TOKEN not in repr(config)


@pytest.mark.parametrize(
    ("change", "variable"),
    [
        ({"FAIRUNLOCK_SMS_GATEWAY": "carrier-pigeon"}, "FAIRUNLOCK_SMS_GATEWAY"),
        ({"FAIRUNLOCK_SMS_HTTP_URL": ""}, "FAIRUNLOCK_SMS_HTTP_URL"),
        ({"FAIRUNLOCK_SMS_HTTP_URL": "ftp://sms.example.net/"}, "FAIRUNLOCK_SMS_HTTP_URL"),
        ({"FAIRUNLOCK_SMS_HTTP_URL": "https://u:p@sms.example.net/"}, "FAIRUNLOCK_SMS_HTTP_URL"),
        ({"FAIRUNLOCK_SMS_HTTP_URL": "http://sms.example.net/"}, "FAIRUNLOCK_SMS_HTTP_URL"),
        ({"FAIRUNLOCK_SMS_HTTP_TOKEN": ""}, "FAIRUNLOCK_SMS_HTTP_TOKEN"),
        ({"FAIRUNLOCK_SMS_HTTP_TOKEN": "two words"}, "FAIRUNLOCK_SMS_HTTP_TOKEN"),
        ({"FAIRUNLOCK_SMS_HTTP_TIMEOUT_S": "soon"}, "FAIRUNLOCK_SMS_HTTP_TIMEOUT_S"),
        ({"FAIRUNLOCK_SMS_HTTP_TIMEOUT_S": "0"}, "FAIRUNLOCK_SMS_HTTP_TIMEOUT_S"),
        ({"FAIRUNLOCK_SMS_HTTP_MAX_ATTEMPTS": "0"}, "FAIRUNLOCK_SMS_HTTP_MAX_ATTEMPTS"),
        ({"FAIRUNLOCK_SMS_HTTP_MAX_ATTEMPTS": "3.5"}, "FAIRUNLOCK_SMS_HTTP_MAX_ATTEMPTS"),
    ],
)
def test_config_refuses_bad_values_naming_the_variable(
    change: dict[str, str], variable: str
) -> None:
    with pytest.raises(SettingsError, match=variable) as caught:
        SmsConfig.from_env({**HTTP_ENV, **change}, production=True)
    assert "two words" not in str(caught.value)  # a token is never echoed


def test_config_allows_plain_http_only_to_loopback_in_production() -> None:
    env = {**HTTP_ENV, "FAIRUNLOCK_SMS_HTTP_URL": "http://127.0.0.1:8025/send"}
    assert SmsConfig.from_env(env, production=True).url == "http://127.0.0.1:8025/send"
    env = {**HTTP_ENV, "FAIRUNLOCK_SMS_HTTP_URL": "http://sms.example.net/send"}
    assert SmsConfig.from_env(env, production=False).url == "http://sms.example.net/send"


def test_build_returns_the_configured_gateway() -> None:
    async def main() -> None:
        http = build_sms_gateway(SmsConfig.from_env(HTTP_ENV, production=True))
        console = build_sms_gateway(SmsConfig.from_env({}, production=False))
        try:
            assert isinstance(http, HttpSmsGateway)
            assert isinstance(console, ConsoleSmsGateway)
        finally:
            await http.aclose()
            await console.aclose()

    asyncio.run(main())


def test_retry_after_parses_seconds_and_http_dates() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 11, 22, 5, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7", now=now) == 7.0
    assert parse_retry_after("Sun, 22 Nov 2026 05:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Sun, 22 Nov 2026 04:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after("-5", now=now) is None
    assert parse_retry_after(None) is None
