"""Write or check the committed OpenAPI document, deterministically (sorted keys, indent 2)."""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
from litestar import Litestar
from litestar.handlers import HTTPRouteHandler
from litestar.params import ParameterKwarg
from litestar.routes import HTTPRoute

from service.app import create_app
from service.settings import Settings

REF = "#/components/schemas/{name}"
# KwargDefinition attribute -> JSON Schema keyword, for the bounds Litestar drops when they are 0.
_BOUNDS = {
    "ge": "minimum",
    "gt": "exclusiveMinimum",
    "le": "maximum",
    "lt": "exclusiveMaximum",
    "min_length": "minLength",
    "max_length": "maxLength",
    "min_items": "minItems",
    "max_items": "maxItems",
}


def _operations(app: Litestar) -> Iterator[tuple[str, str, HTTPRouteHandler]]:
    """(method, OpenAPI path template, handler) for every HTTP route of the app."""
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
            for handler in route.route_handlers:
                for method in handler.http_methods:
                    yield method.lower(), path, handler


def _request_components(app: Litestar, components: dict[str, Any]) -> None:
    """Request bodies as msgspec, which decodes them, describes them: Litestar's own rendering
    leaves out ``additionalProperties: false`` (``forbid_unknown_fields``), the constraints on
    list items, and ``extra_json_schema``, so a body that fits it could still be refused."""
    bodies = {
        data.annotation
        for _, _, handler in _operations(app)
        if (data := handler.parsed_fn_signature.parameters.get("data")) is not None
    }
    _, exact = msgspec.json.schema_components(sorted(bodies, key=repr), ref_template=REF)
    for name, component in exact.items():
        current = components.get(name)
        if current is not None and "enum" in component:
            # An enum shared with responses: the same values, or two types share a name.
            if sorted(map(str, current.get("enum", []))) != sorted(map(str, component["enum"])):
                raise LookupError(f"component {name} differs between msgspec and Litestar")
            continue
        if current is not None and current.get("title", name) != name:
            raise LookupError(f"component {name} is another type in Litestar's document")
        components[name] = component


def _restore_zero_bounds(app: Litestar, paths: dict[str, Any]) -> None:
    """Litestar drops a parameter bound that is 0 (``ge=0``) from optional parameters."""
    for method, path, handler in _operations(app):
        operation = paths.get(path, {}).get(method)
        if operation is None:
            continue
        by_name = {p["name"]: p for p in operation.get("parameters", [])}
        for name, field in handler.parsed_fn_signature.parameters.items():
            kwarg = field.kwarg_definition
            if not isinstance(kwarg, ParameterKwarg):
                continue
            param = by_name.get(kwarg.query or kwarg.header or kwarg.cookie or name)
            if param is None:
                continue
            for attr, keyword in _BOUNDS.items():
                value = getattr(kwarg, attr, None)
                if value is not None and value == 0 and keyword not in param["schema"]:
                    param["schema"][keyword] = value


def make_truthful(app: Litestar, schema: dict[str, Any]) -> dict[str, Any]:
    """The generated document, corrected where Litestar describes less than the server
    enforces (so a client, or schemathesis, is not promised what it will be refused)."""
    _request_components(app, schema["components"]["schemas"])
    _restore_zero_bounds(app, schema["paths"])
    return schema


def render() -> str:
    # A throwaway data directory: describing the API must not create keys or files in ./var.
    with tempfile.TemporaryDirectory(prefix="fairunlock-openapi-") as data_dir:
        app = create_app(Settings(data_dir=Path(data_dir)))
        schema: dict[str, Any] = make_truthful(app, app.openapi_schema.to_schema())
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", type=Path, metavar="FILE")
    mode.add_argument("--check", type=Path, metavar="FILE")
    args = parser.parse_args(argv)
    text = render()
    if args.write is not None:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text, encoding="utf-8")
        return 0
    path: Path = args.check
    committed = path.read_text(encoding="utf-8") if path.exists() else ""
    if committed == text:
        return 0
    diff = difflib.unified_diff(
        committed.splitlines(keepends=True), text.splitlines(keepends=True), str(path), "app"
    )
    sys.stderr.writelines(list(diff)[:200])
    sys.stderr.write(f"\n{path} differs from the app: run `make openapi` and commit the result.\n")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
