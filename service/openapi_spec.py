"""Write or check the committed OpenAPI document, deterministically (sorted keys, indent 2)."""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from service.app import create_app
from service.settings import Settings


def render() -> str:
    # A throwaway data directory: describing the API must not create keys or files in ./var.
    with tempfile.TemporaryDirectory(prefix="fairunlock-openapi-") as data_dir:
        app = create_app(Settings(data_dir=Path(data_dir)))
        schema: dict[str, Any] = app.openapi_schema.to_schema()
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
