"""The worker loop (service/worker_loop.py) the outbox and the retention job run on: a failed
pass is logged and the next one still runs; the first pass waits only if asked;
stop ends the loop."""

from __future__ import annotations

import asyncio
import logging

import pytest

from service.worker_loop import WorkerLoop

log = logging.getLogger("tests.worker_loop")


class Counting(WorkerLoop):
    def __init__(self, failures: int) -> None:
        super().__init__("counting", log)
        self.passes = 0
        self.failures = failures

    async def run_pass(self) -> None:
        self.passes += 1
        if self.passes <= self.failures:
            raise RuntimeError("database down")


def test_a_failed_pass_is_logged_and_the_next_one_runs(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> int:
        loop = Counting(failures=2)
        loop.start_loop(0.01)
        for _ in range(200):
            if loop.passes >= 4:
                break
            await asyncio.sleep(0.01)
        await loop.stop()
        return loop.passes

    with caplog.at_level(logging.ERROR, logger=log.name):
        assert asyncio.run(scenario()) >= 4
    failed = [r for r in caplog.records if "pass failed" in r.getMessage()]
    assert len(failed) == 2
    assert all(r.exc_info is not None for r in failed)


def test_the_first_pass_waits_only_when_asked_and_stop_ends_the_loop() -> None:
    async def scenario() -> tuple[int, int, int]:
        at_once, delayed = Counting(failures=0), Counting(failures=0)
        at_once.start_loop(10.0)
        delayed.start_loop(10.0, first_after=10.0)
        await asyncio.sleep(0.1)
        counts = (at_once.passes, delayed.passes)
        await at_once.stop()
        await delayed.stop()
        passes = at_once.passes
        await asyncio.sleep(0.05)
        assert at_once.passes == passes  # stopped: no pass after stop
        return (*counts, delayed.passes)

    assert asyncio.run(scenario()) == (1, 0, 0)


def test_a_second_start_while_running_is_refused_and_the_first_loop_still_stops() -> None:
    async def scenario() -> None:
        loop = Counting(failures=0)
        loop.start_loop(0.01)
        with pytest.raises(RuntimeError, match="running already"):
            loop.start_loop(0.01)
        await asyncio.sleep(0.05)
        await loop.stop()
        passes = loop.passes
        await asyncio.sleep(0.05)
        assert passes >= 1
        assert loop.passes == passes  # the one loop there was is stopped
        loop.start_loop(0.01)  # after stop, it starts again
        await asyncio.sleep(0.05)
        await loop.stop()
        assert loop.passes > passes

    asyncio.run(scenario())


def test_a_loop_left_on_a_closed_event_loop_starts_again_on_a_new_one() -> None:
    worker = Counting(failures=0)

    async def start_and_leave() -> None:
        worker.start_loop(10.0, first_after=10.0)
        await asyncio.sleep(0.01)  # the loop's task waits on its stop event

    # An app served on an event loop that is closed without the app being stopped: its loop's
    # task is left pending there for ever.
    old = asyncio.new_event_loop()
    old.run_until_complete(start_and_leave())
    old.close()
    left = asyncio.all_tasks(old)
    assert worker._task in left
    for task in left:  # collected pending, as intended: asyncio need not log it
        task._log_destroy_pending = False  # type: ignore[attr-defined]

    async def start_again() -> int:
        worker.start_loop(0.01)
        for _ in range(100):
            if worker.passes:
                break
            await asyncio.sleep(0.01)
        await worker.stop()
        return worker.passes

    asyncio.run(start_and_leave())
    assert asyncio.run(start_again()) >= 1
