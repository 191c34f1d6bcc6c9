"""SendTimings (service/adapters/sms.py): an SMS challenge that sends nothing waits as long as a
recent send took (OWASP-FP-1/2); the served timing test is in tests/evidence."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.adapters.sms import SendTimings


def test_a_worker_that_has_sent_nothing_does_not_wait() -> None:
    began = time.perf_counter()
    asyncio.run(SendTimings().pad())
    assert time.perf_counter() - began < 0.01


def test_padding_waits_for_one_of_the_recent_send_durations() -> None:
    timings = SendTimings(size=4)
    for seconds in (0.5, 0.03, 0.03, 0.03, 0.03):  # the 0.5 s falls out of the window
        timings.record(seconds)
    waited = []
    for _ in range(5):
        began = time.perf_counter()
        asyncio.run(timings.pad())
        waited.append(time.perf_counter() - began)
    assert all(0.03 <= w < 0.3 for w in waited), waited


def test_padding_leaves_out_the_part_of_a_send_already_spent() -> None:
    """A known account without a number on file looked it up; it waits only the rest."""
    timings = SendTimings(size=1)
    timings.record(0.2)
    began = time.perf_counter()
    asyncio.run(timings.pad(spent=0.15))
    waited = time.perf_counter() - began
    assert 0.05 <= waited < 0.15, waited
    began = time.perf_counter()
    asyncio.run(timings.pad(spent=0.5))
    assert time.perf_counter() - began < 0.01


def test_padding_takes_off_how_late_its_waits_wake_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A recorded send already holds the loop's delay in resuming it; a wait that wakes 2 ms late
    each time would otherwise make every unknown id 2 ms slower than a known one."""

    async def late_sleep(seconds: float) -> None:
        time.sleep(seconds + 0.002)

    timings = SendTimings(size=1)
    timings.record(0.010)
    monkeypatch.setattr(asyncio, "sleep", late_sleep)
    waited = []
    for _ in range(40):
        began = time.perf_counter()
        asyncio.run(timings.pad())
        waited.append(time.perf_counter() - began)
    assert waited[0] >= 0.012, waited[0]  # nothing known yet about the lateness
    settled = sorted(waited[-10:])[5]
    # Uncorrected, every wait would take 12 ms and more; the margin above 10 ms is for a busy
    # machine's own lateness, which varies and so cannot be taken off.
    assert 0.0095 <= settled < 0.0115, waited[-10:]
