"""No secret in clear anywhere the served process writes (issue 7; DESIGN.md principle 5;
ASVS4-2.10, 6.1; OWASP-LOG-6): after a full scenario over HTTP — every method (SMS through the
HTTP gateway, TOTP, a linked identity through a loopback OIDC provider, recovery codes, face with
consent and a signed attestation), every review path (approve, four-eyes approve and confirm,
need more information and the person's answer, deny, a supervisor's reveal), an audit export and
an erasure — every table, every file in the data directory (the SQLite file and its WAL byte for
byte), the service's log (at DEBUG) and the export bundle are searched for every known secret
value: the phone number in all its forms, the SMS codes, the TOTP secret and codes, the recovery
codes, every API key, the OIDC subject, authorization code and state, and the face attestation.

tests/service/test_secrets_at_rest.py covers the tables in-process; this adds the served process,
its logs and the bundle. It runs on PostgreSQL too."""

from __future__ import annotations

import base64
import functools
import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from joserfc.jwk import OKPKey

from service.adapters.face import sign_attestation
from service.persistence.api_keys import Role
from tests.evidence.conftest import ServedService
from tests.evidence.security_support import (
    FACE_AUDIENCE,
    FACE_PROVIDER,
    OIDC_SUBJECT,
    SMS_TOKEN,
    SecurityStack,
    add_key,
    current_totp,
    database_url_of,
    enrol_totp_with_code,
    ok,
    recovery_codes,
    set_phone,
    sms_codes,
    start,
    unlock_request,
    verify_path,
)
from tests.service.adapters.oidc_support import (
    CLIENT_SECRET,
    callback_params,
)
from tests.service.adapters.sms_support import SmsReceiver

ACCOUNT = "acct-secret-ev"
PHONE_FORMS = ["+8613800005678", "13800005678", "138 0000 5678", "8613800005678", "138-0000-5678"]


class Secrets:
    """Every secret value the scenario handles, by name."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {f"phone {p}": p for p in PHONE_FORMS}

    def add(self, name: str, value: str) -> None:
        assert value, name
        self.values[name] = value


def _approved(response: httpx.Response) -> dict[str, Any]:
    decision: dict[str, Any] = ok(response)
    return decision


def _scenario(
    service: ServedService, receiver: SmsReceiver, face_key: OKPKey, found: Secrets, out: Path
) -> list[str]:
    """Runs every method and review path; returns the CLI's outputs (they are searched too)."""
    cli_output: list[str] = []
    for role, key in service.keys.items():
        found.add(f"api key {role.value}", key)
    reviewers = {
        name: add_key(service, role, name)
        for name, role in (
            ("agent-a", "agent"),
            ("agent-b", "agent"),
            ("supervisor-a", "supervisor"),
            ("supervisor-b", "supervisor"),
        )
    }
    for name, key in reviewers.items():
        found.add(f"api key {name}", key)

    def as_(name: str) -> httpx.Client:
        return httpx.Client(
            base_url=service.base_url,
            headers={"Authorization": f"Bearer {reviewers[name]}"},
            timeout=30,
        )

    with service.client() as client:
        # Enrolment: every method, and face consent.
        set_phone(client, ACCOUNT, "+86 138 0000 5678")
        secret, enrolment_code = enrol_totp_with_code(client, ACCOUNT)
        found.add("totp secret", secret)
        found.add("totp enrolment code", enrolment_code)
        found.add("totp secret bytes (hex)", base64.b32decode(secret).hex())
        provider = next(iter(json.loads(service.env["FAIRUNLOCK_OIDC_PROVIDERS"])))  # the one
        ok(
            client.put(
                f"/v1/accounts/{ACCOUNT}/linked-identities/{provider}",
                json={"subject": OIDC_SUBJECT, "real_name_verified": True},
            )
        )
        found.add("oidc subject", OIDC_SUBJECT)
        found.add("oidc client secret", CLIENT_SECRET)
        codes = recovery_codes(client, ACCOUNT)
        for i, code in enumerate(codes):
            found.add(f"recovery code {i}", code)
            found.add(f"recovery code {i} undashed", code.replace("-", ""))
        notice = ok(client.get("/v1/face-consent/notice"))
        ok(
            client.put(
                f"/v1/accounts/{ACCOUNT}/face-consent",
                json={
                    "notice_version": notice["version"],
                    "purpose": "account_unlock",
                    "accepted": True,
                },
            )
        )

        # SMS: a wrong code, then the right one; then TOTP approves.
        r1 = unlock_request(client, ACCOUNT)
        sms = ok(start(client, r1["id"], "sms"), 201)
        code = sms_codes(receiver)[-1]
        found.add("sms code", code)
        wrong = "000000" if code != "000000" else "111111"
        assert (
            client.post(verify_path(r1["id"], sms["id"]), json={"code": wrong}).status_code == 422
        )
        ok(client.post(verify_path(r1["id"], sms["id"]), json={"code": code}))
        totp = ok(start(client, r1["id"], "totp"), 201)
        totp_code = current_totp(secret)
        found.add("totp code", totp_code)
        assert (
            _approved(client.post(verify_path(r1["id"], totp["id"]), json={"code": totp_code}))[
                "status"
            ]
            == "approved"
        )

        # A recovery code.
        r2 = unlock_request(client, ACCOUNT)
        rc = ok(start(client, r2["id"], "recovery_code"), 201)
        ok(client.post(verify_path(r2["id"], rc["id"]), json={"code": codes[0]}))

        # The linked identity, through the provider's authorization endpoint.
        r3 = unlock_request(client, ACCOUNT)
        linked = ok(start(client, r3["id"], "linked_identity"), 201)
        redirect = httpx.get(linked["authorization_url"], follow_redirects=False, timeout=10)
        oidc_code, state = callback_params(redirect.headers["location"])
        found.add("oidc authorization code", oidc_code)
        found.add("oidc state", state)
        ok(
            client.post(
                verify_path(r3["id"], linked["id"]), json={"code": oidc_code, "state": state}
            )
        )

        # Face, with a signed attestation for the challenge's nonce.
        r4 = unlock_request(client, ACCOUNT)
        assert any(m["method"] == "face" for m in r4["offer"]["methods"]), r4["offer"]
        face = ok(
            client.post(
                f"/v1/unlock-requests/{r4['id']}/challenges",
                json={"method": "face", "provider": FACE_PROVIDER},
            ),
            201,
        )
        now = datetime.now(UTC)
        attestation = sign_attestation(
            {
                "iss": FACE_PROVIDER,
                "aud": FACE_AUDIENCE,
                "iat": int(now.timestamp()),
                "exp": int((now + timedelta(minutes=5)).timestamp()),
                "nonce": face["session"]["nonce"],
                "sub": face["session"]["subject"],
                "result": "match",
                "liveness": "pass",
                "matcher_version": "m-1",
            },
            face_key,
        )
        found.add("face attestation", attestation)
        ok(client.post(verify_path(r4["id"], face["id"]), json={"attestation": attestation}))

        # Review: approve at medium risk (one reviewer).
        r5 = unlock_request(client, ACCOUNT)
        case5 = client.post(f"/v1/unlock-requests/{r5['id']}/appeals", json={"statement": "me"})
        assert case5.status_code == 201, case5.text
        # At high risk (four-eyes), with a reveal, need-more-info, the answer, then deny; and
        # another approved by one reviewer and confirmed by a second.
        r6 = unlock_request(client, ACCOUNT, network="tor")
        case6 = ok(client.post(f"/v1/unlock-requests/{r6['id']}/appeals", json={}), 201)
        r7 = unlock_request(client, ACCOUNT, network="tor")
        case7 = ok(
            client.post(
                f"/v1/unlock-requests/{r7['id']}/appeals",
                json={"statement": "travelling", "contact_preference": "sms"},
            ),
            201,
        )

    approve = {"outcome": "approve", "reason_code": "IDENTITY_CONFIRMED", "reason": "matches"}
    with as_("agent-a") as agent:
        base5 = f"/v1/review-cases/{case5.json()['id']}"
        ok(agent.post(f"{base5}/claim"))
        ok(agent.post(f"{base5}/decision", json=approve))
        base6 = f"/v1/review-cases/{case6['id']}"
        ok(agent.post(f"{base6}/claim"))
        assert ok(agent.post(f"{base6}/decision", json=approve))["status"] == (
            "awaiting_confirmation"
        )
        base7 = f"/v1/review-cases/{case7['id']}"
        ok(agent.post(f"{base7}/claim"))
        ok(
            agent.post(
                f"{base7}/decision",
                json={
                    "outcome": "need_more_info",
                    "reason_code": "EVIDENCE_REQUESTED",
                    "reason": "a document please",
                },
            )
        )
    with as_("supervisor-a") as supervisor:
        revealed = ok(
            supervisor.post(f"{base6}/reveal", json={"field": "phone", "reason": "call back"})
        )
        assert revealed["value"] == PHONE_FORMS[0]
        ok(supervisor.post(f"{base6}/confirmation", json={"agree": True, "reason": "agreed"}))
    with service.client() as client:
        ok(
            client.post(
                f"/v1/unlock-requests/{r7['id']}/appeals", json={"statement": "here it is"}
            ),
        )
    with as_("agent-b") as agent:
        ok(agent.post(f"{base7}/claim"))
        ok(
            agent.post(
                f"{base7}/decision",
                json={"outcome": "deny", "reason_code": "FRAUD_INDICATORS", "reason": "forged"},
            )
        )

    # Every SMS the gateway was asked to send (codes and notices) is a secret from here on.
    for i, c in enumerate(sms_codes(receiver)):
        found.add(f"sms code {i}", c)

    # Erasure, then an export of the whole log (after the integrator caught up).
    with service.client(Role.ADMIN) as admin:
        erased = admin.delete(f"/v1/accounts/{ACCOUNT}")
        assert erased.status_code in (200, 202, 204), erased.text
    _wait_for_integration(service)
    cli_output.append(service.cli("audit", "export", "--out", str(out)))
    return cli_output


def _wait_for_integration(service: ServedService, timeout_s: float = 30) -> None:
    with service.client(Role.AUDITOR) as auditor:
        deadline = time.monotonic() + timeout_s
        last = -1
        while time.monotonic() < deadline:
            r = auditor.get("/v1/audit/checkpoint")
            # A C2SP checkpoint: origin, tree size, root hash, then signatures.
            size = int(r.text.splitlines()[1]) if r.status_code == 200 else 0
            if size == last and size > 0:
                return
            last = size
            time.sleep(1.0)


def _table_dump(service: ServedService) -> str:
    """Every row of every table (found by inspection, so a new table is covered), as text."""
    import asyncio

    from sqlalchemy import MetaData
    from sqlalchemy.ext.asyncio import create_async_engine

    async def run() -> str:
        engine = create_async_engine(database_url_of(service))
        out: list[str] = []
        try:
            async with engine.connect() as conn:
                metadata = MetaData()
                await conn.run_sync(metadata.reflect)
                assert len(metadata.tables) >= 10, sorted(metadata.tables)
                for table in metadata.sorted_tables:
                    for row in (await conn.execute(table.select())).all():
                        for value in row:
                            if isinstance(value, bytes | memoryview):
                                raw = bytes(value)
                                out.append(raw.decode("utf-8", "replace"))
                                out.append(raw.hex())
                            else:
                                out.append(str(value))
        finally:
            await engine.dispose()
        return "\n".join(out)

    return asyncio.run(run())


def _files(root: Path) -> str:
    """Every file under ``root``, byte for byte (as Latin-1, so any byte sequence is searchable)."""
    return "\n".join(
        p.read_bytes().decode("latin-1") for p in sorted(root.rglob("*")) if p.is_file()
    )


# The fraction of a stored time ("09:27:26.622961"): six digits that stand alone, and with a
# hundred codes against a few thousand stored times, one matched a code by chance in one run of
# four. A code is never written in that position, so it is no place to look for one.
_TIME_FRACTION = re.compile(r"(?<=\d\d:\d\d:\d\d)\.\d{1,6}")


@functools.cache
def _without_time_fractions(text: str) -> str:
    return _TIME_FRACTION.sub(".", text)


def _occurs(needle: str, haystack: str) -> bool:
    # Short numeric codes must stand alone: inside hex or base64 they are chance, not a leak.
    if needle.isdigit() and len(needle) <= 8:
        pattern = rf"(?<![0-9A-Za-z]){needle}(?![0-9A-Za-z])"
        return re.search(pattern, _without_time_fractions(haystack)) is not None
    return needle in haystack


def test_no_secret_in_tables_files_logs_or_the_export_after_a_full_scenario(
    security_stack: SecurityStack, tmp_path: Path
) -> None:
    service, receiver, face_key = (
        security_stack.service,
        security_stack.sms,
        security_stack.face_key,
    )
    found = Secrets()
    found.add("sms gateway token", SMS_TOKEN)
    bundle_dir = tmp_path / "bundle"
    cli_output = _scenario(service, receiver, face_key, found, bundle_dir)
    # The tokens the OIDC provider issued for the linked-identity proof (the service got them).
    issued = security_stack.oidc_tenant.issued_tokens
    assert issued, "the linked-identity proof fetched no token"
    for i, token in enumerate(issued):
        found.add(f"oidc token {i}", token)
    # The gateway received what the person must get; it is the only place a code may be.
    ours = [r.json() for r in receiver.received if r.json()["to"] == PHONE_FORMS[0]]
    assert any(found.values["sms code"] in m["message"] for m in ours), ours

    log = service.log_path.read_text(errors="replace")
    assert '"level":"DEBUG"' in log, "the run did not log at DEBUG"
    assert "console" not in service.env["FAIRUNLOCK_SMS_GATEWAY"]
    places = {
        "tables": _table_dump(service),
        "data directory files": _files(service.data_dir),
        "log": log,
        "export bundle": _files(bundle_dir),
        "cli output": "\n".join(cli_output),
    }
    assert (bundle_dir / "entries.jsonl").stat().st_size > 0
    # Positive controls: each place holds what it should, so an empty search proves nothing.
    assert "fairunlock.local/audit" in places["export bundle"]
    assert "supervisor-a" in places["tables"]  # a reviewer's key name, on the record
    assert "/v1/review-cases/" in places["log"]
    assert "SQLite format 3" in places["data directory files"] or "postgres" in str(
        service.env.get("FAIRUNLOCK_DATABASE_URL")
    )
    # Not secrets, but personal data: reported, not asserted (see the issue notes).
    for name, value in (("account id", ACCOUNT), ("ip", "203.0.113.7")):
        where = [place for place, text in places.items() if value in text]
        print(f"{name} appears in: {where or 'nowhere'}")
    leaks = [
        f"{name} in {place}"
        for place, text in places.items()
        for name, value in found.values.items()
        if _occurs(value, text)
    ]
    assert not leaks, f"in clear: {leaks}"
