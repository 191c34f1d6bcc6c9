"""UtcDateTime (service/persistence/__init__.py): its one-step SQLite bind processing writes the
same text as the type's process_bind_param followed by SQLAlchemy's SQLite DATETIME formatting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql, sqlite

from service.persistence import UtcDateTime, _sqlite_moment, _sqlite_text

SQLITE = sqlite.dialect()
OFFSETS = st.builds(
    timezone,
    st.timedeltas(
        min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
    ),
)
# Away from the ends of datetime's range, where moving to UTC overflows either way (hypothesis
# takes naive bounds and adds the zones).
MOMENTS = st.datetimes(
    min_value=datetime(2, 1, 1),  # noqa: DTZ001
    max_value=datetime(9998, 12, 31),  # noqa: DTZ001
    timezones=OFFSETS | st.just(UTC),
)


def _sqlalchemys(value: datetime | None) -> object:
    """What SQLAlchemy's own composition does: the type's process_bind_param, then DATETIME's."""
    processed = UtcDateTime().process_bind_param(value, SQLITE)
    formatter = sqlite.DATETIME().bind_processor(SQLITE)  # type: ignore[no-untyped-call]
    assert formatter is not None
    return formatter(processed)


def test_sqlalchemy_uses_the_one_step_processor_on_sqlite_only() -> None:
    assert UtcDateTime()._cached_bind_processor(SQLITE) is _sqlite_text
    assert UtcDateTime()._cached_bind_processor(postgresql.asyncpg.dialect()) is not _sqlite_text  # type: ignore[no-untyped-call]


@given(MOMENTS)
def test_the_one_step_processor_writes_sqlalchemys_text(moment: datetime) -> None:
    assert _sqlite_text(moment) == _sqlalchemys(moment)


def test_none_and_naive_values_are_treated_alike() -> None:
    assert _sqlite_text(None) is None
    assert _sqlalchemys(None) is None
    naive = datetime(2026, 12, 5, 12, 0)  # noqa: DTZ001 - the value under test
    with pytest.raises(ValueError, match="naive"):
        _sqlite_text(naive)
    with pytest.raises(ValueError, match="naive"):
        _sqlalchemys(naive)
    # Whole seconds keep their six zeros, as SQLAlchemy's format writes them.
    assert _sqlite_text(datetime(2026, 12, 5, 12, 0, tzinfo=UTC)) == "2026-12-05 12:00:00.000000"


def _sqlalchemys_read(text: str | None) -> object:
    """What SQLAlchemy's own composition reads: SQLite DATETIME's parse, then the type's
    process_result_value."""
    parse = sqlite.DATETIME().result_processor(SQLITE, None)  # type: ignore[no-untyped-call]
    assert parse is not None
    return UtcDateTime().process_result_value(parse(text), SQLITE)


def test_sqlalchemy_uses_the_one_step_reader_on_sqlite_only() -> None:
    assert UtcDateTime()._cached_result_processor(SQLITE, None) is _sqlite_moment
    pg = postgresql.asyncpg.dialect()  # type: ignore[no-untyped-call]
    assert UtcDateTime()._cached_result_processor(pg, None) is not _sqlite_moment


@given(MOMENTS)
def test_the_one_step_reader_reads_what_sqlalchemy_reads(moment: datetime) -> None:
    text = _sqlite_text(moment)
    read = _sqlite_moment(text)
    assert read == _sqlalchemys_read(text) == moment
    assert read is not None
    assert read.tzinfo is UTC


OTHER_FORMS = {
    "whole seconds": lambda m: m.replace(tzinfo=None).isoformat(" ", "seconds"),
    "a zone of its own": lambda m: m.isoformat(" "),
    "T and a zone": lambda m: m.isoformat(),
    "a date alone": lambda m: m.date().isoformat(),
}


@given(MOMENTS, st.sampled_from(sorted(OTHER_FORMS)))
def test_texts_of_other_forms_are_read_as_sqlalchemy_reads_them(
    moment: datetime, form: str
) -> None:
    # Not what _sqlite_text writes, but what a row written otherwise could hold.
    text = OTHER_FORMS[form](moment)
    read = _sqlite_moment(text)
    assert read == _sqlalchemys_read(text)
    assert read is not None
    assert read.tzinfo is UTC


def test_none_is_read_as_none_and_garbage_is_refused_alike() -> None:
    assert _sqlite_moment(None) is None
    assert _sqlalchemys_read(None) is None
    for garbage in ("", "yesterday", "2026-13-01 00:00:00.000000"):
        with pytest.raises(ValueError, match=r"isoformat|must be in"):
            _sqlite_moment(garbage)
        with pytest.raises(ValueError, match=r"isoformat|must be in"):
            _sqlalchemys_read(garbage)
