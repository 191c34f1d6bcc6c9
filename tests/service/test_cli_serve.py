"""`fairunlock serve`: what it tells the operator before the server starts (service.serving)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from service import cli_serve
from tests.service.test_observability import restore_logging

__all__ = ["restore_logging"]  # the fixture, imported for the tests here


def _serve(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workers: int, database_url: str | None
) -> dict[str, Any]:
    monkeypatch.setenv("FAIRUNLOCK_DATA_DIR", str(tmp_path))
    if database_url is not None:
        monkeypatch.setenv("FAIRUNLOCK_DATABASE_URL", database_url)
    started: dict[str, Any] = {}
    monkeypatch.setattr("service.serving.serve", lambda app, **kwargs: started.update(kwargs))
    args = argparse.Namespace(host=None, port=None, workers=workers)
    assert cli_serve._serve(args) == 0
    return started


def _warnings(err: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [line for line in lines if line["level"] == "WARNING"]


@pytest.mark.usefixtures("restore_logging")
def test_several_workers_on_sqlite_are_served_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _serve(monkeypatch, tmp_path, 2, None)["workers"] == 2
    [warning] = _warnings(capsys.readouterr().err)
    assert "SQLite has one writer" in warning["message"]
    assert warning["workers"] == 2


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize(
    ("workers", "database_url"),
    [(1, None), (2, "postgresql+asyncpg://postgres@127.0.0.1:5432/test")],
    ids=["one worker on SQLite", "two workers on PostgreSQL"],
)
def test_no_warning_where_workers_add_throughput(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    workers: int,
    database_url: str | None,
) -> None:
    assert _serve(monkeypatch, tmp_path, workers, database_url)["workers"] == workers
    assert _warnings(capsys.readouterr().err) == []
