"""SendTimings (service/adapters/sms.py): an SMS challenge that sends nothing waits as long as a
recent send took (OWASP-FP-1/2); the served timing test is in tests/evidence."""

from __future__ import annotations

import asyncio
import time

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
