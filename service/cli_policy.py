"""``fairunlock policy check|explain`` (filled in with the risk engine)."""

from __future__ import annotations

from typing import Any


def register(groups: Any) -> None:
    groups.add_parser("policy", help="validate and explain risk policies")
