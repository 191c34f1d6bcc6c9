"""The throttles' failures a batch of proofs reads once (ChallengeRepository.failure_book): for
every key, what one proof's own read (``failures_since``, ``method_failures_since``) returns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from service.persistence.challenges import ChallengeRepository, FailureBook
from tests.service.conftest import Api

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
A, B = "a" * 64, "b" * 64
SOURCE, OTHER_SOURCE = "5" * 64, "6" * 64


def test_one_read_for_a_batch_returns_what_each_proofs_own_read_would(api: Api) -> None:
    attempts = [
        (A, "totp", "wrong_code", SOURCE, NOW - timedelta(minutes=5)),
        (A, "totp", "pending", None, NOW - timedelta(hours=3)),
        (A, "totp", "success", SOURCE, NOW - timedelta(minutes=4)),  # not a failure
        (A, "totp", "wrong_code", SOURCE, NOW - timedelta(hours=30)),  # before the day
        (A, "sms", "wrong_code", OTHER_SOURCE, NOW - timedelta(minutes=20)),
        (B, "totp", "wrong_code", SOURCE, NOW - timedelta(minutes=50)),
        (B, "totp", "expired", SOURCE, NOW - timedelta(minutes=70)),  # before the source's hour
    ]
    keys = [(A, "totp", SOURCE), (A, "sms", None), (B, "totp", OTHER_SOURCE), (B, "sms", SOURCE)]
    day, hour = NOW - timedelta(hours=24), NOW - timedelta(hours=1)

    async def read() -> tuple[FailureBook, list[tuple[list[datetime], list[datetime]]]]:
        async with api.app.state.engine.begin() as conn:
            repo = ChallengeRepository(conn)
            for subject, method, outcome, source, at in attempts:
                await repo.record_attempt(subject, "r", method, outcome, source, at)
            book = await repo.failure_book(keys, day, hour)
            own = []
            for subject, method, source in keys:
                if source is None:
                    own.append((await repo.method_failures_since(day, subject, method), []))
                else:
                    own.append(await repo.failures_since(day, subject, method, hour, source))
            await conn.rollback()
        return book, own

    book, own = api.run(read)
    from_book = [
        (book.of_method(s, m, day), [] if x is None else book.from_source(x, hour))
        for s, m, x in keys
    ]
    assert from_book == own
    # The case is not empty: both kinds, several keys.
    assert [len(m) + len(s) for m, s in own] == [2 + 2, 1, 2 + 1, 0 + 2]


def test_a_recorded_failure_counts_from_its_time_on() -> None:
    book = FailureBook({}, {})
    late, early = NOW - timedelta(minutes=1), NOW - timedelta(minutes=30)
    book.add(A, "totp", SOURCE, late)
    book.add(A, "totp", None, early)  # no source: counts for the account only
    assert book.of_method(A, "totp", NOW - timedelta(hours=1)) == [early, late]  # oldest first
    assert book.of_method(A, "totp", NOW - timedelta(minutes=10)) == [late]
    assert book.of_method(A, "sms", NOW - timedelta(hours=1)) == []
    assert book.from_source(SOURCE, NOW - timedelta(hours=1)) == [late]
    assert book.from_source(OTHER_SOURCE, NOW - timedelta(hours=1)) == []
