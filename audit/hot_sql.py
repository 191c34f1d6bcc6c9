"""Prebuilt statements on the hot paths, run in place on the driver of the caller's transaction.

Here, below the service, because the audit store's inbox insert is on every hot path too; the
service's repositories use it the same way.

SQLAlchemy's async execution of a prebuilt Core statement costs ~125 µs on SQLite on the machine of
2026-12-03 (a greenlet per statement, five switches, an execution context, result metadata); the
same statement on the ``sqlite3`` connection underneath costs 7-13 µs, and a TOTP proof runs
fourteen. A ``HotStatement`` is compiled by SQLAlchemy once per dialect and parameter shape, and
executed the way SQLAlchemy's default execution context would (its SQL text, its bind and result
processors, its parameter defaults) on the driver connection of the caller's transaction, so it
sees and is seen by every other statement of that transaction and commits or rolls back with it.

"In place" is, on SQLite, service.sqlite_inline's driver (an aiosqlite-shaped connection that
exposes its ``sqlite3.Connection`` as ``.sqlite``); on PostgreSQL, SQLAlchemy's asyncpg adapter,
through the same prepared-statement cache, lock and row-count parsing its cursor uses, once it has
started the transaction. Everywhere else (SQLite in aiosqlite's thread, a connection whose
transaction has not begun, a statement shape only SQLAlchemy's execution can render) the statement
is handed to SQLAlchemy unchanged. Errors come out as SQLAlchemy raises them.

The contract (tests/audit/test_hot_sql.py, on SQLite and PostgreSQL): every ``HotStatement`` run
both ways against the same rows gives the same SQL text, the same rows and row count, and leaves
the same database.
"""

from __future__ import annotations

import re
import sqlite3
import weakref
from collections import namedtuple
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ClauseElement, Delete, Update
from sqlalchemy.sql.compiler import SQLCompiler

Params = Mapping[str, Any]
_Processor = Callable[[Any], Any]

# Every HotStatement, for the contract test (it fails for one it has no case for).
HOT_STATEMENTS: list[HotStatement] = []


class Rows:
    """A statement's rows, read to the end, and its row count: the part of SQLAlchemy's
    ``Result`` the repositories use. Rows are tuples with attribute access and ``_asdict()``."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def all(self) -> list[Any]:
        return self._rows

    def first(self) -> Any | None:
        return self._rows[0] if self._rows else None

    def scalar(self) -> Any | None:
        return self._rows[0][0] if self._rows else None

    def one(self) -> Any:
        if not self._rows:
            raise sa_exc.NoResultFound("No row was found when one was required")
        if len(self._rows) > 1:
            raise sa_exc.MultipleResultsFound("Multiple rows were found when one was required")
        return self._rows[0]

    def scalar_one(self) -> Any:
        return self.one()[0]


@dataclass(frozen=True, slots=True)
class _Compiled:
    """One statement compiled for one dialect and one set of parameter names."""

    compiled: SQLCompiler
    sql: str
    binds: tuple[tuple[str, _Processor | None], ...]
    results: tuple[_Processor | None, ...]
    row_type: Any  # a namedtuple class, or None for a statement without rows
    # construct_params worked out once for these parameter names: per position, the caller's
    # key to read (and its processor), or the statement's own value, processed already.
    plan: tuple[tuple[str | None, Any, _Processor | None], ...] | None

    def parameters(self, params: Params) -> tuple[Any, ...]:
        plan = self.plan
        if plan is not None:
            try:
                return tuple(
                    [
                        value if key is None else params[key] if p is None else p(params[key])
                        for key, value, p in plan
                    ]
                )
            except KeyError:
                pass  # a parameter set of other names (executemany): as SQLAlchemy has it
        return self.constructed(params)

    def constructed(self, params: Params) -> tuple[Any, ...]:
        """The parameters by SQLAlchemy's construct_params, processed: what the plan saves."""
        values = self.compiled.construct_params(params, escape_names=False)
        return tuple(
            values[name] if process is None else process(values[name])
            for name, process in self.binds
        )

    def rows(self, fetched: Iterable[Sequence[Any]]) -> list[Any]:
        make, results = self.row_type._make, self.results
        return [
            make([v if p is None else p(v) for p, v in zip(results, raw, strict=True)])
            for raw in fetched
        ]


class NotHot(Exception):
    """The statement needs what only SQLAlchemy's execution does (Python-side defaults, expanding
    IN parameters, RETURNING with several parameter sets): it cannot be a HotStatement."""


def _compile(
    statement: ClauseElement, dialect: Dialect, keys: tuple[str, ...], many: bool
) -> _Compiled:
    compiled = statement.compile(dialect=dialect, column_keys=list(keys), for_executemany=many)
    assert isinstance(compiled, SQLCompiler)
    if compiled.insert_prefetch or compiled.update_prefetch:
        raise NotHot("Python-side column defaults are computed by SQLAlchemy's execution")
    if compiled.literal_execute_params or compiled.post_compile_params:
        raise NotHot("expanding or literal-execute parameters are rendered at execution")
    if many and (compiled.effective_returning or compiled._insertmanyvalues is not None):
        # SQLAlchemy turns these into multi-row VALUES statements at execution (PostgreSQL).
        raise NotHot("several parameter sets for this INSERT are SQLAlchemy's insertmanyvalues")
    if not compiled.positional or compiled.positiontup is None:
        raise NotHot(f"the {dialect.name} dialect's parameters are not positional")
    processors = compiled._bind_processors
    binds: list[tuple[str, _Processor | None]] = []
    for name in compiled.positiontup:
        process = processors.get(name)
        if process is not None and not callable(process):
            raise NotHot("tuple-typed parameters are processed per element by SQLAlchemy")
        binds.append((name, process))
    columns = compiled._result_columns
    results = tuple(c.type._cached_result_processor(dialect, None) for c in columns)
    row_type = namedtuple("Row", [c.keyname for c in columns], rename=True) if columns else None
    plan = _parameter_plan(compiled, frozenset(keys), tuple(binds))
    return _Compiled(compiled, compiled.string, tuple(binds), results, row_type, plan)


def _parameter_plan(
    compiled: SQLCompiler, keys: frozenset[str], binds: tuple[tuple[str, _Processor | None], ...]
) -> tuple[tuple[str | None, Any, _Processor | None], ...] | None:
    """What ``construct_params(params, escape_names=False)`` does for parameters named ``keys``,
    decided once: each bind takes the caller's value by its key (or its compiled name), else the
    statement's own value. None where that is not fixed (a required parameter missing, whose
    error construct_params raises; a callable value): those take construct_params at every
    execution. Measured: 5.6 -> 3.7 us for a five-parameter statement, 0.8 -> 0.3 us for one;
    the contract test compares the two for every statement and case."""
    # SQLAlchemy 2.1 collects the statement's literal values at compile time and lays the
    # caller's parameters over them.
    collected: Mapping[str, Any] = (
        getattr(compiled, "_collected_params", None) or {}
        if getattr(compiled, "_collect_params", False)
        else {}
    )
    sources: dict[str, tuple[str | None, Any]] = {}
    for bindparam, name in compiled.bind_names.items():
        if bindparam.key in keys:
            source: tuple[str | None, Any] = (bindparam.key, None)
        elif name in keys:
            source = (name, None)
        elif bindparam.key in collected:
            source = (None, collected[bindparam.key])
        elif name in collected:
            source = (None, collected[name])
        elif bindparam.required or bindparam.callable:
            return None
        else:
            source = (None, bindparam.value)
        if sources.setdefault(name, source) != source:
            return None  # two binds of one name that would disagree: SQLAlchemy decides
    plan: list[tuple[str | None, Any, _Processor | None]] = []
    for name, process in binds:
        key, value = sources[name]
        if key is None:
            plan.append((None, value if process is None else process(value), None))
        else:
            plan.append((key, None, process))
    return tuple(plan)


def in_place(conn: AsyncConnection) -> sqlite3.Connection | AsyncAdapt_asyncpg_connection | None:
    """What ``conn``'s statements can run on in place, once its transaction has begun: the
    sqlite3 connection (service.sqlite_inline; BEGIN IMMEDIATE issued at begin), or SQLAlchemy's
    asyncpg adapter once it has started the asyncpg transaction (at the first statement).
    Otherwise None: SQLAlchemy runs the statement (and begins what needs beginning)."""
    sync = conn.sync_connection
    if sync is None or not sync.in_transaction():
        return None
    fairy = sync.connection
    db = getattr(fairy.driver_connection, "sqlite", None)
    if isinstance(db, sqlite3.Connection):
        return db
    adapted: Any = fairy.dbapi_connection
    if isinstance(adapted, AsyncAdapt_asyncpg_connection) and adapted._transaction is not None:
        return adapted
    return None


def in_place_sqlite(conn: AsyncConnection) -> sqlite3.Connection | None:
    db = in_place(conn)
    return db if isinstance(db, sqlite3.Connection) else None


class HotStatement:
    """A Core statement built once (module level) and run with ``await stmt.run(conn, params)``;
    ``params`` a mapping, or a sequence of mappings to run it once for each."""

    __slots__ = ("_compiled", "name", "only_on", "statement")

    def __init__(self, name: str, statement: ClauseElement, *, only_on: str | None = None) -> None:
        self.name = name
        self.statement = statement
        # A statement only one database has (PostgreSQL's advisory locks): its dialect name.
        self.only_on = only_on
        self._compiled: dict[tuple[str, tuple[str, ...], bool], _Compiled | NotHot] = {}
        HOT_STATEMENTS.append(self)

    def __repr__(self) -> str:
        return f"HotStatement({self.name!r})"

    async def run(
        self,
        conn: AsyncConnection,
        params: Params | Sequence[Params] | None = None,
        *,
        outside: sqlite3.Connection | None = None,
    ) -> Rows:
        """Run in ``conn``'s transaction; or, given ``outside`` (service.db.reader: the SQLite
        connection under ``conn`` before its BEGIN), on that connection in whatever read
        transaction the caller holds there, without the write lock."""
        if outside is not None:
            return self.run_sqlite(outside, conn.dialect, params)
        db = in_place(conn)
        try:
            if isinstance(db, sqlite3.Connection):
                return self.run_sqlite(db, conn.dialect, params)
            if db is not None:
                return await self.run_asyncpg(conn, db, params)
        except NotHot:
            pass  # refused before anything ran: this shape of it is SQLAlchemy's to run
        return await self.run_sqlalchemy(conn, params)

    async def run_sqlalchemy(
        self, conn: AsyncConnection, params: Params | Sequence[Params] | None = None
    ) -> Rows:
        result = await conn.execute(self.statement, params)  # type: ignore[call-overload]
        rows = list(result.all()) if result.returns_rows else []
        return Rows(rows, result.rowcount)

    def compiled(self, dialect: Dialect, params: Params | Sequence[Params] | None) -> _Compiled:
        """How this statement runs with these parameters (compiled on first use)."""
        many = not isinstance(params, Mapping) and params is not None and len(params) > 1
        first: Params = (
            {} if params is None else params if isinstance(params, Mapping) else params[0]
        )
        key = (dialect.name, tuple(sorted(first)), many)
        compiled = self._compiled.get(key)
        if compiled is None:
            try:
                compiled = _compile(self.statement, dialect, key[1], many)
            except NotHot as refused:
                compiled = refused
            self._compiled[key] = compiled
        if isinstance(compiled, NotHot):
            raise compiled
        return compiled

    def run_sqlite(
        self,
        db: sqlite3.Connection,
        dialect: Dialect,
        params: Params | Sequence[Params] | None = None,
    ) -> Rows:
        params = _one_execution(params)
        compiled = self.compiled(dialect, params)
        try:
            if params is None or isinstance(params, Mapping):
                cursor = db.execute(compiled.sql, compiled.parameters(params or {}))
            else:
                cursor = db.executemany(compiled.sql, [compiled.parameters(p) for p in params])
            rows = compiled.rows(cursor.fetchall()) if compiled.row_type is not None else []
        except sqlite3.Error as err:
            # As SQLAlchemy raises it (the database-unavailable map reads .orig either way).
            raise sa_exc.DBAPIError.instance(compiled.sql, params, err, sqlite3.Error) from err
        return Rows(rows, cursor.rowcount)

    async def run_asyncpg(
        self,
        conn: AsyncConnection,
        adapted: AsyncAdapt_asyncpg_connection,
        params: Params | Sequence[Params] | None = None,
    ) -> Rows:
        """As SQLAlchemy's asyncpg cursor runs it (its prepared-statement cache, its mutex, its
        row count from the status message), without its execution context around it."""
        params = _one_execution(params)
        dialect = conn.dialect
        compiled = self.compiled(dialect, params)
        driver: Any = adapted  # SQLAlchemy's adapter is untyped inside
        try:
            async with driver._execute_mutex:
                if params is None or isinstance(params, Mapping):
                    prepared, _ = await driver._prepare(
                        compiled.sql, getattr(dialect, "_invalidate_schema_cache_asof", 0)
                    )
                    fetched = await prepared.fetch(*compiled.parameters(params or {}))
                    status = _ROWCOUNT.match(prepared.get_statusmsg() or "")
                    rowcount = int(status.group(1)) if status else -1
                else:
                    await driver._connection.executemany(
                        compiled.sql, [compiled.parameters(p) for p in params]
                    )
                    fetched, rowcount = [], -1  # as SQLAlchemy's executemany reports it
            rows = compiled.rows(fetched) if compiled.row_type is not None else []
        except Exception as err:
            raise await _as_sqlalchemy_error(conn, adapted, compiled.sql, params, err) from err
        return Rows(rows, rowcount)

    async def count_changed(self, conn: AsyncConnection, params: Sequence[Params]) -> int:
        """Run this UPDATE or DELETE once for each parameter set, as ``run`` does, and return how
        many rows the executions changed in all: what a caller checks its expectations against.
        (``run`` reports -1 for several sets on PostgreSQL, asyncpg's executemany keeping no
        status; here they go through its fetchmany with ``RETURNING 1``, one pipelined round
        trip as executemany is, counting the rows that come back.)"""
        statement: Any = self.statement
        if not isinstance(statement, Update | Delete) or statement._returning:
            raise ValueError(f"{self.name}: count_changed is for an UPDATE or a DELETE")
        if not params:
            return 0
        db = in_place(conn)
        try:
            compiled: _Compiled | None = self.compiled(conn.dialect, params)
        except NotHot:
            compiled = None
        if compiled is None or db is None or len(params) == 1:
            # SQLAlchemy's execution (whose executemany row count a dialect may not sum): one by
            # one.
            return sum([(await self.run(conn, p)).rowcount for p in params])
        if isinstance(db, sqlite3.Connection):
            return self.run_sqlite(db, conn.dialect, params).rowcount  # sqlite3 sums them
        driver: Any = db  # SQLAlchemy's adapter is untyped inside
        sql = f"{compiled.sql} RETURNING 1"
        try:
            async with driver._execute_mutex:
                returned = await driver._connection.fetchmany(
                    sql, [compiled.parameters(p) for p in params]
                )
        except Exception as err:
            raise await _as_sqlalchemy_error(conn, db, sql, params, err) from err
        return len(returned)


def _one_execution(params: Params | Sequence[Params] | None) -> Params | Sequence[Params] | None:
    """A sequence of one parameter set is one execution, as SQLAlchemy has it."""
    if params is not None and not isinstance(params, Mapping) and len(params) == 1:
        return params[0]
    return params


_ROWCOUNT = re.compile(r"(?:SELECT|UPDATE|DELETE|INSERT \d+) (\d+)")


async def _as_sqlalchemy_error(
    conn: AsyncConnection,
    adapted: AsyncAdapt_asyncpg_connection,
    sql: str,
    params: Params | Sequence[Params] | None,
    err: Exception,
) -> Exception:
    """The error SQLAlchemy would raise for ``err``: translated by its asyncpg adapter into the
    DBAPI error classes, wrapped as a DBAPIError; a lost connection invalidated, as SQLAlchemy
    does, so the pool does not hand it out again."""
    dbapi_error: Exception = err
    try:
        adapted._handle_exception(err)  # always raises
    except Exception as translated:
        dbapi_error = translated
    dbapi_base: type[Exception] = adapted.dbapi.Error
    if not isinstance(dbapi_error, dbapi_base):
        return dbapi_error
    lost = conn.dialect.is_disconnect(cast(Any, dbapi_error), cast(Any, adapted), None)
    if lost:
        await conn.invalidate(dbapi_error)
    return sa_exc.DBAPIError.instance(
        sql, params, dbapi_error, dbapi_base, connection_invalidated=lost
    )


@contextmanager
def read_snapshot(outside: sqlite3.Connection | None) -> Iterator[None]:
    """A read transaction on ``outside`` (service.db.reader), if given, for the block's
    ``run(..., outside=outside)`` statements: one WAL snapshot for all of them, no write lock."""
    if outside is None:
        yield
        return
    outside.execute("BEGIN")  # deferred: reads only
    try:
        yield
    finally:
        outside.execute("COMMIT")


# One name for every savepoint: the three statements' texts stay in the sqlite3 module's
# statement cache (a name per savepoint was parsed anew each time, two statements per proof).
# Nested savepoints may share it: ROLLBACK TO and RELEASE name the most recent one of that
# name, which, savepoints being properly nested here, is the block's own.
_SAVEPOINT = "SAVEPOINT hot_savepoint"
_ROLLBACK_TO_SAVEPOINT = "ROLLBACK TO hot_savepoint"
_RELEASE_SAVEPOINT = "RELEASE hot_savepoint"
_UNDO_SAVEPOINT = f"{_ROLLBACK_TO_SAVEPOINT}; {_RELEASE_SAVEPOINT}"


@asynccontextmanager
async def savepoint(conn: AsyncConnection) -> AsyncIterator[None]:
    """``conn.begin_nested()``, in place where statements run in place: what the block wrote is
    undone if it raises and kept otherwise, in the caller's transaction. (SQLAlchemy's SAVEPOINT
    and RELEASE cost two of its executions each, a greenlet and a nested transaction object; a
    proof in a batch takes one savepoint: on PostgreSQL 18 % of a proof batch's CPU.)"""
    db = in_place(conn)
    if db is None:  # a transaction not begun yet: SQLAlchemy's SAVEPOINT, which it tracks
        try:
            async with conn.begin_nested():
                yield
        finally:
            # Its RELEASE or ROLLBACK TO took every savepoint set inside it, owed ones included.
            _forget_owed(conn)
        return
    if isinstance(db, sqlite3.Connection):
        db.execute(_SAVEPOINT)
        try:
            yield
        except BaseException as exc:
            with _undoing(exc):
                db.execute(_ROLLBACK_TO_SAVEPOINT)
                db.execute(_RELEASE_SAVEPOINT)
            raise
        db.execute(_RELEASE_SAVEPOINT)
        return
    await _simple_query(conn, db, _owed_releases(conn) + _SAVEPOINT)
    try:
        yield
    except BaseException as exc:
        # One round trip (the simple query protocol takes several statements): the block's
        # writes undone and the transaction usable again, also after a statement that failed.
        with _undoing(exc):
            await _simple_query(conn, db, _owed_releases(conn, undo=True) + _UNDO_SAVEPOINT)
        raise
    _owe_release(conn)


@contextmanager
def _undoing(cause: BaseException) -> Iterator[None]:
    """Around a savepoint's undo after its block raised ``cause``: an undo that fails (the
    connection lost) raises its own error, unless ``cause`` is a cancellation or an exit — that
    stays what the caller sees (a flow catching Exception would otherwise swallow it); the
    transaction is unusable either way."""
    try:
        yield
    except Exception as undo_failed:
        if isinstance(cause, Exception):
            raise
        raise cause from undo_failed  # the undo's failure stays in the traceback


# A kept block's RELEASE is sent with the next savepoint statement of its transaction instead of
# on its own (a round trip of the ten a proof took on PostgreSQL); COMMIT or ROLLBACK releases
# what is still owed. Until then the statements that follow run inside the kept savepoint, which
# changes nothing: its writes stay the transaction's, and a failure there fails the transaction
# as it would have. How many are owed, by SQLAlchemy's transaction object: weakly, so an entry
# goes with its transaction and nothing here keeps a connection alive.
_OWED: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def _transaction(conn: AsyncConnection) -> Any:
    sync = conn.sync_connection
    return None if sync is None else sync.get_transaction()


def _owe_release(conn: AsyncConnection) -> None:
    transaction = _transaction(conn)
    if transaction is not None:
        _OWED[transaction] = _OWED.get(transaction, 0) + 1


def _forget_owed(conn: AsyncConnection) -> None:
    transaction = _transaction(conn)
    if transaction is not None:
        _OWED.pop(transaction, None)


def _owed_releases(conn: AsyncConnection, *, undo: bool = False) -> str:
    """The RELEASEs owed in the current transaction, as a prefix for the next savepoint
    statement (innermost first, so the savepoint that statement names is the most recent).
    Before an enclosing block is undone, each owed savepoint is rolled back too (what it holds
    goes with the enclosing block anyway): RELEASE is refused while a failed statement has left
    the transaction aborted, ROLLBACK TO is not."""
    transaction = _transaction(conn)
    owed = 0 if transaction is None else _OWED.pop(transaction, 0)
    return f"{_UNDO_SAVEPOINT if undo else _RELEASE_SAVEPOINT}; " * owed


async def _simple_query(
    conn: AsyncConnection, adapted: AsyncAdapt_asyncpg_connection, sql: str
) -> None:
    """A parameterless statement on asyncpg, under the adapter's mutex as its cursor runs one."""
    driver: Any = adapted  # SQLAlchemy's adapter is untyped inside
    try:
        async with driver._execute_mutex:
            await driver._connection.execute(sql)
    except Exception as err:
        raise await _as_sqlalchemy_error(conn, adapted, sql, None, err) from err
