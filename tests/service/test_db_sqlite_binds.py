"""service/db.py on SQLite: the identity adapters (NATIVE_BINDS) that spare sqlite3 its failed
``__adapt__`` look-up bind every value as sqlite3 binds it without them."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from service import db

VALUES: list[object] = [None, b"", b"\x00\xffblob", memoryview(b"a view"), bytes(4096)]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_each_adapter_returns_the_value_it_is_given(value: object) -> None:
    adapters = dict(db.NATIVE_BINDS)
    same = adapters[type(value)](value)
    assert type(same) is type(value)
    if isinstance(value, memoryview):
        assert isinstance(same, memoryview)
        assert same.obj is value.obj
        assert same.tobytes() == value.tobytes()
    else:
        assert same is value


def test_create_engine_registers_them_for_sqlite(tmp_path: Path) -> None:
    async def main() -> None:
        engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
        await engine.dispose()

    asyncio.run(main())
    for kind, same in db.NATIVE_BINDS:
        assert sqlite3.adapters[(kind, sqlite3.PrepareProtocol)] is same


def _stored(values: list[object]) -> list[tuple[str, object]]:
    with sqlite3.connect(":memory:") as conn:
        conn.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, v)")
        conn.executemany("INSERT INTO t (v) VALUES (?)", [(v,) for v in values])
        rows = conn.execute("SELECT typeof(v), v FROM t ORDER BY n").fetchall()
    conn.close()
    return [(kind, value) for kind, value in rows]


def test_the_values_are_stored_as_without_the_adapters() -> None:
    registered = {
        kind: sqlite3.adapters.pop((kind, sqlite3.PrepareProtocol), None)
        for kind, _ in db.NATIVE_BINDS
    }
    try:
        without = _stored(VALUES)
        db.register_native_binds()
        with_them = _stored(VALUES)
    finally:
        for kind, adapter in registered.items():
            if adapter is not None:
                sqlite3.register_adapter(kind, adapter)
    assert with_them == without
    assert [kind for kind, _ in with_them] == ["null", "blob", "blob", "blob", "blob"]
    assert with_them[3] == ("blob", b"a view")
