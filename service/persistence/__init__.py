"""SQLAlchemy tables and repositories of the service (the audit log's live in audit/store.py)."""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import BindParameter, DateTime, Dialect, MetaData, String, bindparam
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import TypeDecorator

from audit.entry import format_time

# A fixed naming convention keeps Alembic autogenerate deterministic across backends.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


def subjects_array() -> BindParameter[Any]:
    """PostgreSQL: a batch's accounts as one array parameter, ``subjects``. One statement then
    serves every batch size, where a parameter per account (s0..s{n-1}, as on SQLite, which has
    no arrays) made one statement per size, each planned afresh until PostgreSQL settled on a
    generic plan for it."""
    return bindparam("subjects", type_=postgresql.ARRAY(String))


_SQLITE_DEFAULT_STORAGE = (
    "%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d"
)


def _sqlite_text(value: datetime | None) -> str | None:
    """UtcDateTime's bind processing on SQLite in one step: UTC, then SQLAlchemy's text
    (``YYYY-MM-DD HH:MM:SS.ffffff``), from the audit log's RFC 3339 text (cut from msgspec's:
    datetime.isoformat formats through PyUnicode_FromFormat, ~0.85 against ~0.2 µs)."""
    if value is None:
        return None
    if value.tzinfo is not UTC:
        if value.tzinfo is None:
            raise ValueError("naive datetime given for a UTC timestamp column")
        value = value.astimezone(UTC)
    return format_time(value)[:-1].replace("T", " ")


_FROM_ISO = datetime.fromisoformat
_SQLITE_TEXT_LENGTH = len("YYYY-MM-DD HH:MM:SS.ffffff")


def _sqlite_moment(value: str | None) -> datetime | None:
    """UtcDateTime's result processing on SQLite in one step: SQLAlchemy's (fromisoformat, then
    process_result_value's replace(tzinfo=UTC), whose keyword parsing costs ~0.5 µs) for the text
    _sqlite_text writes ("YYYY-MM-DD HH:MM:SS.ffffff"), read with its zone (~0.13 µs); any other
    text SQLAlchemy's way."""
    if value is None:
        return None
    if len(value) == _SQLITE_TEXT_LENGTH and value[19] == "." and value[20:].isdigit():
        return _FROM_ISO(value + "+00:00")
    moment = _FROM_ISO(value)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, on SQLite (which stores no zone)
    as on PostgreSQL; a naive value is refused rather than guessed."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Any:
        # On SQLite (text storage in SQLAlchemy's default format) one function instead of this
        # type's process_bind_param followed by SQLAlchemy's %-formatting: ~1.5 -> ~1.0 us per
        # timestamp, a dozen per proof. tests/service/persistence/test_utc_datetime.py proves
        # the two write the same text.
        storage = getattr(self.impl_instance.dialect_impl(dialect), "_storage_format", None)
        if dialect.name == "sqlite" and storage == _SQLITE_DEFAULT_STORAGE:
            return _sqlite_text
        return super().bind_processor(dialect)

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        # On SQLite, with SQLAlchemy's text parsed by fromisoformat (no custom regexp), one
        # function for its parse and process_result_value; tests/service/persistence/
        # test_utc_datetime.py proves the two read the same moments.
        impl = self.impl_instance.dialect_impl(dialect)
        if (
            dialect.name == "sqlite"
            and getattr(impl, "_reg", None) is None
            and getattr(impl, "_storage_format", None) == _SQLITE_DEFAULT_STORAGE
        ):
            return _sqlite_moment
        return super().result_processor(dialect, coltype)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given for a UTC timestamp column")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        moment: datetime = value
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


T = TypeVar("T")


def padded(values: Sequence[T]) -> list[T]:
    """``values`` (not empty) padded to the next power of two by repeating the last: a
    statement built per count of parameters then comes in seven sizes up to 64, not 64 (each
    size is compiled once per process and prepared once per PostgreSQL connection). For IN
    lists, OR-ed keys and re-entrant locks, where a repeated value changes nothing."""
    if not values:
        raise ValueError("nothing to pad")
    size = 1 << (len(values) - 1).bit_length()
    return [*values, *[values[-1]] * (size - len(values))]
