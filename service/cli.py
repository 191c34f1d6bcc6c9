"""``fairunlock``: the one console script for operators and auditors.

Each command group lives in its own module with a ``register(subparsers)`` function, so this file
only assembles them; nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from service import cli_audit, cli_db, cli_policy, cli_serve

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fairunlock", description="FairUnlock account-unlock service"
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    cli_serve.register(groups)
    cli_policy.register(groups)
    cli_audit.register(groups)
    cli_db.register(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `fairunlock … | head` closes stdout early: not an error worth a traceback.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
