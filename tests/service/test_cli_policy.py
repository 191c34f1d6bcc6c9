"""``fairunlock policy check|explain``: exit 0, exit 1 naming the broken rule, exit 2 naming the
bad field — never a traceback."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import policy
from service.cli import main
from tests.service.conftest import PERSONA_REQUEST

SHIPPED = Path(policy.__file__).parent / "default.toml"

# DESIGN.md's request object plus what `policy explain` takes besides: the time and the account.
PERSONA: dict[str, Any] = {
    **copy.deepcopy(PERSONA_REQUEST),
    "now": "2026-11-21T10:00:00Z",
    "account": {
        "phone": {"verified": True},
        "linked_identities": [{"provider": "gov-eid", "real_name_verified": True}],
        "face_consent": "active",
    },
}


def test_shipped_policy_passes_policy_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(SHIPPED)]) == 0
    assert "ok, version" in capsys.readouterr().out


def test_policy_check_names_the_broken_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        SHIPPED.read_text().replace("requires_consent = true", "requires_consent = false")
    )
    assert main(["policy", "check", str(bad)]) == 1
    assert "FACE_WITHOUT_CONSENT" in capsys.readouterr().err


def test_policy_check_of_a_missing_file_is_an_input_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["policy", "check", str(tmp_path / "nope.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_explain_json_lines_gives_one_result_per_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    critical = json.loads(json.dumps(PERSONA))
    critical["context"]["network"] = "tor"
    critical["context"]["geo"] = {"country": "DE", "lat": 52.52, "lon": 13.40}
    critical["context"]["last_login"]["at"] = "2026-11-21T09:30:00Z"
    facts = tmp_path / "facts.jsonl"
    facts.write_text(json.dumps(PERSONA) + "\n\n" + json.dumps(critical) + "\n")
    assert main(["policy", "explain", str(SHIPPED), "--facts", str(facts), "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["risk"]["level"] == "medium"
    assert [m["method"] for m in first["offer"]["methods"]] == ["linked_identity", "sms", "face"]
    assert first["offer"]["methods"][-1]["optional_alternative"] is True
    assert first["review"]["available"] is True
    assert first["policy"]["sha256"]
    assert "人工复核" in first["explanation"]
    assert second["risk"]["level"] == "critical"
    assert second["offer"]["review_required"] is True


def test_explain_single_object_human_readable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps(PERSONA, indent=2))
    assert main(["policy", "explain", str(SHIPPED), "--facts", str(facts)]) == 0
    out = capsys.readouterr().out
    assert "risk: medium" in out
    assert "face: strong (optional alternative)" in out


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda f: f.pop("account_id"), "account_id"),
        (lambda f: f.update(lock_reason="bored"), "lock_reason"),
        (lambda f: f.update(locale="fr"), "locale"),
        (lambda f: f["context"].update(network="wifi"), "context.network"),
        (lambda f: f["context"].update(ip=42), "context.ip"),
        (lambda f: f["context"]["geo"].update(lat=123.0), "context.geo.lat"),
        (lambda f: f["context"]["geo"].update(country="China"), "context.geo.country"),
        (lambda f: f["context"].update(sim_swap_at="yesterday"), "context.sim_swap_at"),
        (
            lambda f: f["context"].update(account_created_at="2016-03-02T08:00:00"),
            "context.account_created_at",
        ),
        (lambda f: f["context"].update(known_device_ids="d-1"), "context.known_device_ids"),
        (lambda f: f["context"].update(favourite_colour="blue"), "context.favourite_colour"),
        (
            lambda f: f["account"].update(throttled_methods=["email"]),
            "account.throttled_methods[0]",
        ),
        (lambda f: f["account"].update(face_consent="yes"), "account.face_consent"),
        (
            lambda f: f["account"].update(recovery_codes_remaining=-1),
            "account.recovery_codes_remaining",
        ),
        (
            lambda f: f["account"]["linked_identities"][0].update(real_name_verified="yes"),
            "account.linked_identities[0].real_name_verified",
        ),
        (lambda f: f.update(now="soon"), "now"),
    ],
)
def test_explain_bad_facts_exit_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mutate: Any, field: str
) -> None:
    facts_value = json.loads(json.dumps(PERSONA))
    mutate(facts_value)
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps(facts_value))
    assert main(["policy", "explain", str(SHIPPED), "--facts", str(facts), "--json"]) == 2
    captured = capsys.readouterr()
    assert f": {field}: " in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_explain_invalid_json_names_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    facts = tmp_path / "facts.jsonl"
    facts.write_text(json.dumps(PERSONA) + "\n{not json\n")
    assert main(["policy", "explain", str(SHIPPED), "--facts", str(facts), "--json"]) == 2
    assert "line 2" in capsys.readouterr().err


def test_console_script_runs_without_traceback(tmp_path: Path) -> None:
    script = shutil.which("fairunlock", path=str(Path(sys.executable).parent))
    assert script is not None, "the fairunlock console script is not installed in this environment"
    facts = tmp_path / "facts.json"
    facts.write_text("[1, 2]")
    result = subprocess.run(
        [script, "policy", "explain", str(SHIPPED), "--facts", str(facts)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "must be an object" in result.stderr
    assert "Traceback" not in result.stderr
