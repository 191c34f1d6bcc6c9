"""The retention job: operational records are deleted once their period ends (PIPL-19: kept only
as long as necessary; ASVS5-14.2.7: deleted automatically on schedule).

What it deletes, each after its configured period (settings: FAIRUNLOCK_RETENTION_*_DAYS):

- verification attempts (method, outcome, when; a keyed digest of the source address): the risk
  engine and the throttles count them over at most a day or the policy's failed-verification
  window, so the period must be longer than both (checked when the app is built); attempts of a
  request whose review case is open stay, the reviewer sees them;
- records of text messages sent (a keyed digest of the number, when): the send limits count a day;
- outbox events once delivered (an undelivered one is never deleted: it is still owed);
- the secret of a challenge (an SMS code's keyed hash, an OIDC or face session's sealed state)
  an hour after the challenge expired (``CHALLENGE_SECRET_GRACE``; not configurable: nothing can
  be proven with it once expired); the challenge's record stays with its request.

A consequence of the attempts' period: a denied request may be appealed at any time, and a case
opened after the period shows the reviewer the decision and its audit entries but no longer the
attempts (set FAIRUNLOCK_RETENTION_ATTEMPTS_DAYS to the appeal horizon the platform promises).

What it does not delete: the audit log (tamper-evident; processing records are kept at least
three years, PIPL-56), decisions and review cases (the records a person's appeal and an auditor
rely on), and an account's data, which goes by erasure. Every worker runs the job; the deletes
are idempotent and skip rows another worker is deleting.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from policy.config import Policy
from service.flows.throttle_windows import (
    METHOD_FAILURES_WINDOW,
    SMS_SENDS_WINDOWS,
    SOURCE_FAILURES_WINDOW,
)
from service.persistence.retention import RetentionRepository
from service.settings import Settings, SettingsError
from service.worker_loop import WorkerLoop

log = logging.getLogger("fairunlock.retention")

PURGE_BATCH = 1000
# How long after its expiry a challenge's secret is wiped: a proof sent just before the expiry
# is answered as it would have been, by the expiry, never by a secret gone missing.
CHALLENGE_SECRET_GRACE = timedelta(hours=1)

Purge = Callable[[RetentionRepository, datetime, int], Awaitable[int]]


@dataclass(frozen=True)
class RetentionPeriods:
    attempts: timedelta
    sms_sends: timedelta
    delivered_events: timedelta

    @classmethod
    def of(cls, settings: Settings, policy: Policy) -> RetentionPeriods:
        """The configured periods, refused when one would delete what a window still counts."""
        periods = cls(
            attempts=timedelta(days=settings.retention_attempts_days),
            sms_sends=timedelta(days=settings.retention_sms_sends_days),
            delivered_events=timedelta(days=settings.retention_outbox_days),
        )
        counted = max(
            METHOD_FAILURES_WINDOW,
            SOURCE_FAILURES_WINDOW,
            timedelta(hours=policy.thresholds.failed_verifications_window_hours),
        )
        if periods.attempts <= counted:
            raise SettingsError(
                "FAIRUNLOCK_RETENTION_ATTEMPTS_DAYS must be longer than the longest window "
                f"verification attempts are counted over ({counted})"
            )
        if periods.sms_sends <= max(SMS_SENDS_WINDOWS):
            raise SettingsError(
                "FAIRUNLOCK_RETENTION_SMS_SENDS_DAYS must be longer than the send limits' "
                f"longest window ({max(SMS_SENDS_WINDOWS)})"
            )
        return periods


async def purge_expired(
    engine: AsyncEngine, periods: RetentionPeriods, now: datetime, batch: int = PURGE_BATCH
) -> dict[str, int]:
    """Delete (for challenges: wipe the secret of) what is past its period at ``now``: how many
    rows of each kind. Each batch is its own short transaction, so writers wait for at most one
    batch."""
    purges: dict[str, tuple[timedelta, Purge]] = {
        "verification_attempts": (periods.attempts, RetentionRepository.purge_attempts),
        "sms_sends": (periods.sms_sends, RetentionRepository.purge_sms_sends),
        "delivered_outbox_events": (
            periods.delivered_events,
            RetentionRepository.purge_delivered_events,
        ),
        "challenge_secrets": (CHALLENGE_SECRET_GRACE, RetentionRepository.wipe_challenge_secrets),
    }
    counts: dict[str, int] = {}
    for kind, (period, purge) in purges.items():
        counts[kind] = 0
        while True:
            async with engine.begin() as conn:
                deleted = await purge(RetentionRepository(conn), now - period, batch)
            counts[kind] += deleted
            if deleted < batch:
                break
    return counts


class RetentionJob(WorkerLoop):
    """``purge_expired`` every ``interval`` seconds inside a service worker. The first pass comes
    half to one interval after the start, at random: a starting worker stays quick, and workers
    started together do not all purge at the same moment."""

    def __init__(
        self,
        engine: AsyncEngine,
        periods: RetentionPeriods,
        clock: Callable[[], datetime],
        interval: float,
    ) -> None:
        super().__init__("fairunlock-retention", log)
        self._engine = engine
        self._periods = periods
        self._clock = clock
        self._interval = interval

    def start(self) -> None:
        spread = random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret
        self.start_loop(self._interval, first_after=self._interval * spread)

    async def run_pass(self) -> None:
        counts = await purge_expired(self._engine, self._periods, self._clock())
        if any(counts.values()):
            log.info("retention: expired records deleted or wiped", extra={"deleted": counts})
