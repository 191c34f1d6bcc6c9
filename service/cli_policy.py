"""``fairunlock policy check FILE`` and ``fairunlock policy explain FILE --facts FILE [--json]``.

Exit codes: 0 success; 1 the policy breaks a rule (named); 2 bad input (named field), never a
traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from policy.config import Policy, PolicyError
from policy.engine import decide
from policy.explain import decision_json
from policy.facts import FactsError, parse_facts
from service.policy_source import load_policy_file

EXIT_RULE = 1
EXIT_INPUT = 2


def register(groups: Any) -> None:
    group = groups.add_parser("policy", help="validate and explain risk policies")
    commands = group.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    check = commands.add_parser("check", help="validate a policy; exit 1 naming the broken rule")
    check.add_argument("file", type=Path)
    check.set_defaults(handler=_check)
    explain = commands.add_parser("explain", help="assess facts and print risk and offer")
    explain.add_argument("file", type=Path)
    explain.add_argument("--facts", type=Path, required=True, help="one JSON object or JSON Lines")
    explain.add_argument("--json", action="store_true", help="one JSON result per line")
    explain.set_defaults(handler=_explain)


def _load(path: Path) -> Policy | int:
    try:
        return load_policy_file(path)
    except PolicyError as exc:
        print(f"policy {path}: rule {exc.rule} broken: {exc.message}", file=sys.stderr)
        return EXIT_RULE
    except (OSError, UnicodeDecodeError) as exc:
        print(f"policy {path}: cannot read: {exc}", file=sys.stderr)
        return EXIT_INPUT


def _check(args: argparse.Namespace) -> int:
    policy = _load(args.file)
    if isinstance(policy, int):
        return policy
    print(f"policy {args.file}: ok, version {policy.version}, sha256 {policy.sha256}")
    return 0


def _documents(text: str) -> Iterator[tuple[int, Any]]:
    """One JSON object, or JSON Lines; yields (line number, value)."""
    stripped = text.strip()
    if not stripped:
        raise FactsError("facts", "the file is empty")
    try:
        yield 1, json.loads(stripped)
        return
    except json.JSONDecodeError:
        pass
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise FactsError(
                f"line {number}", f"invalid JSON ({exc.msg} at column {exc.colno})"
            ) from None


def _human(result: dict[str, Any]) -> str:
    risk, offer = result["risk"], result["offer"]
    lines = [f"risk: {risk['level']} (score {risk['score']})"]
    lines += [f"  reason {r['code']} ({r['weight']:+d}): {r['message']}" for r in risk["reasons"]]
    lines.append(
        f"offer: {offer['factors_required']} factor(s), {offer['strong_factors_required']} strong"
    )
    for m in offer["methods"]:
        extra = f" [{m['provider']}]" if "provider" in m else ""
        alt = " (optional alternative)" if m["optional_alternative"] else ""
        lines.append(f"  {m['method']}{extra}: {m['strength']}{alt}")
    lines += [f"  not offered {n['method']}: {n['reason']}" for n in offer["not_offered"]]
    lines.append(f"review: required={offer['review_required']} available=true")
    lines.append(f"explanation: {result['explanation']}")
    return "\n".join(lines)


def _explain(args: argparse.Namespace) -> int:
    policy = _load(args.file)
    if isinstance(policy, int):
        return policy
    try:
        text = args.facts.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"facts {args.facts}: cannot read: {exc}", file=sys.stderr)
        return EXIT_INPUT
    try:
        for number, value in _documents(text):
            try:
                facts = parse_facts(value)
            except FactsError as exc:
                raise FactsError(f"line {number}: {exc.field}", exc.message) from None
            now = facts.now or datetime.now(UTC)
            decision = decide(facts.request, facts.account, facts.history, policy, now)
            result = decision_json(decision, policy, facts.request.locale, include_scores=True)
            result["account_id"] = facts.request.account_id
            if args.json:
                print(json.dumps(result, ensure_ascii=False, sort_keys=True))
            else:
                print(_human(result))
                print()
    except FactsError as exc:
        print(f"facts {args.facts}: {exc.field}: {exc.message}", file=sys.stderr)
        return EXIT_INPUT
    return 0
