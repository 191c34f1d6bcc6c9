"""A pass repeated inside a service worker until the app stops: the outbox's deliveries, the
retention job's deletes. A failed pass is logged and the next one runs at its time."""

from __future__ import annotations

import asyncio
import contextlib
import logging


class WorkerLoop:
    """Runs ``run_pass`` every ``interval`` seconds (the first at once, or ``first_after``
    seconds after the start) from ``start_loop`` until ``stop``."""

    def __init__(self, name: str, log: logging.Logger) -> None:
        self._name = name
        self._log = log
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def run_pass(self) -> None:
        raise NotImplementedError

    def start_loop(self, interval: float, *, first_after: float = 0.0) -> None:
        running = self._task
        # A second loop would run beside the first, which stop() could no longer reach. One
        # left on an event loop that is closed (an app served again, as tests do) never runs
        # again: it is dropped, not awaited.
        if running is not None and not running.done() and not running.get_loop().is_closed():
            raise RuntimeError(f"{self._name} is running already")
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._loop(interval, first_after), name=self._name)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self, interval: float, first_after: float) -> None:
        if first_after > 0 and await self._stopped_within(first_after):
            return
        while not self._stop.is_set():
            try:
                await self.run_pass()
            except Exception:
                # The database may be down for a while: keep the loop alive and say so.
                self._log.exception("%s pass failed; retrying", self._name)
            await self._stopped_within(interval)

    async def _stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        return self._stop.is_set()
