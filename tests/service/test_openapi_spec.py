"""The committed OpenAPI document declares every route's problem responses (issue 4: "Every
route documents its problem responses"); `make openapi-check` proves the file is the app's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SPEC = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"
# Answer no error by construction: liveness is the process answering, and a scrape whose gauges
# cannot be read serves them stale (service/observability.py, Metrics.refresh).
NEVER_FAIL = {("get", "/health/live"), ("get", "/metrics")}
PUBLIC = {("get", "/health/ready")} | NEVER_FAIL


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    spec = json.loads(SPEC.read_text())
    return [
        (method, path, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
    ]


def test_every_error_an_operation_declares_is_a_problem_document() -> None:
    operations = _operations()
    assert len(operations) >= 30, len(operations)
    for method, path, operation in operations:
        errors = {
            status: response
            for status, response in operation["responses"].items()
            if status[0] in "45"
        }
        if (method, path) in NEVER_FAIL:
            assert not errors, (method, path)
            continue
        assert errors, f"{method.upper()} {path} declares no problem response"
        for status, response in errors.items():
            content = response.get("content", {})
            assert list(content) == ["application/problem+json"], (method, path, status)
            schema = content["application/problem+json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Problem"}, (method, path, status)


def test_every_guarded_operation_declares_401_403_and_503() -> None:
    for method, path, operation in _operations():
        if (method, path) in PUBLIC:
            continue
        declared = set(operation["responses"])
        assert {"401", "403", "503"} <= declared, (method, path, sorted(declared))
