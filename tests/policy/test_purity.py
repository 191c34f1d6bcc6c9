"""policy/ is pure (STYLE.md habits 2 and 14): it imports no framework, database, network or
service code, and reads neither files nor the clock."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import policy

SOURCES = sorted(Path(policy.__file__).parent.glob("*.py"))
# rfc8785: canonical JSON (decision_json). msgspec: Struct, the model's frozen records (built
# ten times faster than frozen dataclasses; ~12 % of a decision's instructions); no codec I/O.
ALLOWED_THIRD_PARTY = {"msgspec", "rfc8785"}
# Standard-library modules that do I/O, spawn, or reach the network.
FORBIDDEN_STDLIB = {
    "os", "io", "pathlib", "socket", "subprocess", "shutil", "urllib", "http", "sqlite3",
    "asyncio", "threading", "multiprocessing", "time", "random", "secrets", "importlib", "logging",
}  # fmt: skip
FORBIDDEN_CALLS = {
    "open",
    "print",
    "input",
    "now",
    "utcnow",
    "today",
    "time",
    "read_text",
    "read_bytes",
}


def _imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_policy_module_imports_only_pure_modules(source: Path) -> None:
    tree = ast.parse(source.read_text(encoding="utf-8"))
    for name in _imports(tree):
        if name in {"policy", "__future__"}:
            continue
        if name in ALLOWED_THIRD_PARTY:
            continue
        assert name in sys.stdlib_module_names, f"{source.name} imports {name}"
        assert name not in FORBIDDEN_STDLIB, f"{source.name} imports {name}, which does I/O"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_policy_module_reads_no_file_and_no_clock(source: Path) -> None:
    tree = ast.parse(source.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            assert name not in FORBIDDEN_CALLS, f"{source.name}:{node.lineno} calls {name}()"


def test_the_import_rule_catches_a_violation() -> None:
    bad = ast.parse("import sqlalchemy\nfrom litestar import get\nimport os\n")
    assert {"sqlalchemy", "litestar", "os"} <= _imports(bad)
