"""Bad input against the real server process (issue 7): malformed JSON, invalid UTF-8, huge and
chunked bodies, deep nesting, wrong content types, and CR/LF and other control characters in every
string field of every request body, then control characters in paths and query strings.

Every one must be a 4xx ``application/problem+json`` with the stable ``code`` listed here, no
header the input tried to inject, no row written in any table (the audit inbox and log included),
and the process must stay up: a normal request succeeds afterwards.

The in-process twin (``tests/service/test_bad_input.py``) checks field names for the unlock
request in detail; this one covers every body route of the app's route table over HTTP, on SQLite
and PostgreSQL. Each variant sends about 500 requests (15-30 s, most of it starting the server).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import create_async_engine

from service.persistence.api_keys import Role
from tests.evidence.conftest import ServedService, ServeFactory
from tests.evidence.test_contract_fuzz import ENV, role_for, route_table, seed_resources
from tests.service.conftest import PERSONA_REQUEST

PROBLEM = "application/problem+json"
JSON = "application/json"
INJECTED = "X-Injected"
# A valid body for every route that takes one; the test fails when the app gains a body route
# that is not listed here, so the corpus always covers all of them.
VALID_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("PUT", "/v1/accounts/{account_id}/phone"): {"phone": "+8613812345678", "verified": True},
    ("POST", "/v1/accounts/{account_id}/totp/confirm"): {"code": "123456"},
    ("PUT", "/v1/accounts/{account_id}/linked-identities/{provider}"): {
        "subject": "sub-1",
        "real_name_verified": True,
    },
    ("PUT", "/v1/accounts/{account_id}/face-consent"): {
        "notice_version": "v1",
        "purpose": "account_unlock",
        "accepted": True,
        "channel": "frontend",
    },
    ("POST", "/v1/unlock-requests"): PERSONA_REQUEST
    | {
        "context": PERSONA_REQUEST["context"]
        | {
            "sim_swap_at": "2026-11-01T00:00:00Z",
            "credential_changed_at": "2026-11-02T00:00:00Z",
        }
    },
    ("POST", "/v1/unlock-requests/{request_id}/challenges"): {
        "method": "linked_identity",
        "provider": "gov-eid",
    },
    ("POST", "/v1/unlock-requests/{request_id}/challenges/{challenge_id}/verify"): {
        "code": "123456",
        "state": "state-1",
        "attestation": "a.b.c",
    },
    ("POST", "/v1/unlock-requests/{request_id}/appeals"): {
        "statement": "it is me",
        "contact_preference": "sms",
    },
    ("POST", "/v1/review-cases/{case_id}/release"): {"reason": "handing over"},
    ("POST", "/v1/review-cases/{case_id}/decision"): {
        "outcome": "approve",
        "reason_code": "IDENTITY_CONFIRMED",
        "reason": "checked the documents",
    },
    ("POST", "/v1/review-cases/{case_id}/confirmation"): {"agree": True, "reason": "agreed"},
    ("POST", "/v1/review-cases/{case_id}/reveal"): {"field": "phone", "reason": "call back"},
}
# Free text a person writes: a line feed (and tab) is allowed there, CR and other controls not.
MULTI_LINE_FIELDS = {"statement", "reason"}
# Values for every string field: each must be refused as a 400 naming the field.
INJECTIONS = {
    "crlf-header": "ok\r\nX-Injected: yes",
    "cr": "ok\rX-Injected: yes",
    "nul": "ok\x00",
    "escape": "ok\x1b[2J",
    "c1-nel": "ok\x85X-Injected: yes",
    "del": "ok\x7f",
}
SINGLE_LINE_ONLY = {"lf-header": "ok\nX-Injected: yes", "tab": "ok\tok"}


# --- the rows a request could write ------------------------------------------------------------


def _db_url(service: ServedService) -> str:
    return service.env.get(
        "FAIRUNLOCK_DATABASE_URL", f"sqlite+aiosqlite:///{service.data_dir / 'fairunlock.sqlite3'}"
    )


def table_contents(database_url: str) -> dict[str, tuple[int, str]]:
    """Every table of the service's database: its row count and a digest of its rows (in a
    stable order), so a refused request that changed a row in place shows, not only one that
    added or removed rows."""

    async def read() -> dict[str, tuple[int, str]]:
        engine = create_async_engine(database_url)
        try:
            async with engine.connect() as conn:
                metadata = MetaData()
                await conn.run_sync(metadata.reflect)
                assert {"audit_log", "audit_inbox", "unlock_requests"} <= set(metadata.tables)
                contents = {}
                for name, table in sorted(metadata.tables.items()):
                    rows = sorted(repr(tuple(r)) for r in await conn.execute(table.select()))
                    digest = hashlib.sha256("\n".join(rows).encode()).hexdigest()
                    contents[name] = (len(rows), digest)
                return contents
        finally:
            await engine.dispose()

    return asyncio.run(read())


def settled_contents(database_url: str, timeout_s: float = 20) -> dict[str, tuple[int, str]]:
    """The tables' contents once the background work (audit integration, outbox) has stopped
    moving them."""
    deadline = time.monotonic() + timeout_s
    previous = table_contents(database_url)
    while True:
        time.sleep(0.6)
        current = table_contents(database_url)
        if current == previous and current["audit_inbox"][0] == 0:
            return current
        changed = sorted(name for name in current if current[name] != previous.get(name))
        assert time.monotonic() < deadline, f"tables still changing: {changed}"
        previous = current


# --- building the corpus -----------------------------------------------------------------------


def _string_fields(info: msgspec.inspect.Type, prefix: str = "") -> Iterator[str]:
    """Dotted paths of every field whose JSON value is a string (list items as ``name[0]``)."""
    if isinstance(info, msgspec.inspect.Metadata):
        yield from _string_fields(info.type, prefix)
    elif isinstance(info, msgspec.inspect.StructType):
        for f in info.fields:
            yield from _string_fields(f.type, f"{prefix}.{f.encode_name}".lstrip("."))
    elif isinstance(info, msgspec.inspect.UnionType):
        for t in info.types:
            yield from _string_fields(t, prefix)
    elif isinstance(info, msgspec.inspect.ListType):
        yield from _string_fields(info.item_type, f"{prefix}[0]")
    elif isinstance(info, msgspec.inspect.StrType | msgspec.inspect.DateTimeType):
        yield prefix
    elif isinstance(info, msgspec.inspect.EnumType | msgspec.inspect.LiteralType):
        values = [m.value for m in info.cls] if isinstance(info, msgspec.inspect.EnumType) else []
        values += list(getattr(info, "values", ()))
        if any(isinstance(v, str) for v in values):
            yield prefix


def _with(body: dict[str, Any], path: str, value: str) -> dict[str, Any]:
    out = copy.deepcopy(body)
    *parents, last = path.replace("[0]", ".0").split(".")
    target: Any = out
    for p in parents:
        target = target[int(p)] if p.isdigit() else target[p]
    if last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return out


def _concrete(path: str, known: dict[str, str]) -> str:
    for name, value in known.items():
        path = path.replace("{" + name + "}", value)
    return path


# --- the test ----------------------------------------------------------------------------------


class Corpus:
    """Sends bad requests and keeps every way an answer fell short."""

    def __init__(self, service: ServedService) -> None:
        self.service = service
        self.clients = {role: service.client(role) for role in Role}
        self.failures: list[str] = []
        self.sent = 0

    def close(self) -> None:
        for client in self.clients.values():
            client.close()

    def expect(
        self,
        label: str,
        response: httpx.Response,
        status: int,
        code: str | set[str],
        field: str | None = None,
    ) -> None:
        self.sent += 1
        problems: list[str] = []
        if response.status_code != status:
            problems.append(f"status {response.status_code}, expected {status}")
        if not response.headers.get("content-type", "").startswith(PROBLEM):
            problems.append(f"content-type {response.headers.get('content-type')!r}")
        if any(INJECTED.lower() in k.lower() for k in response.headers):
            problems.append(f"injected header reflected: {dict(response.headers)}")
        try:
            problem = response.json()
        except ValueError:
            problem = {}
        codes = {code} if isinstance(code, str) else code
        if problem.get("code") not in codes:
            problems.append(f"code {problem.get('code')!r}, expected {sorted(codes)}")
        if problem.get("status") != response.status_code:
            problems.append("body status differs from the response's")
        if field is not None:
            named = [e.get("field") for e in problem.get("errors") or []]
            if field not in named:
                problems.append(f"errors name {named}, not {field}")
        if problems:
            self.failures.append(f"{label}: {'; '.join(problems)} | {response.text[:300]}")


DEEP = {"body_too_deep", "invalid_request"}  # too deep, or refused at the first wrong type


def _body_corpus(max_body: int) -> list[tuple[str, bytes, str, int, str | set[str]]]:
    """(label, content, content type, status, code) sent to every body route."""
    nested_arrays = b"[" * 100_000 + b"]" * 100_000
    nested_objects = b'{"a":' * 20_000 + b"1" + b"}" * 20_000
    huge = json.dumps({"statement": "x" * (max_body + 1)}).encode()
    return [
        ("malformed", b"{not json", "application/json", 400, "bad_request"),
        ("truncated", b'{"code": "12', "application/json", 400, "bad_request"),
        ("trailing garbage", b'{"code": "1"} x', "application/json", 400, "bad_request"),
        ("nan", b'{"code": NaN}', "application/json", 400, "bad_request"),
        ("invalid utf-8", b'{"code": "\xff\xfe\xfd"}', "application/json", 400, "bad_request"),
        ("lone surrogate", b'{"code": "\\ud800"}', "application/json", 400, "bad_request"),
        ("empty", b"", "application/json", 400, "invalid_request"),
        ("array", b"[]", "application/json", 400, "invalid_request"),
        ("string", b'"x"', "application/json", 400, "invalid_request"),
        ("null", b"null", "application/json", 400, "invalid_request"),
        ("deep arrays", nested_arrays, "application/json", 413, "body_too_large"),
        ("deep arrays, under the size limit", b"[" * 9000 + b"]" * 9000, JSON, 400, DEEP),
        ("deep objects", nested_objects, "application/json", 413, "body_too_large"),
        (
            "deep objects, under the size limit",
            b'{"a":' * 5000 + b"1" + b"}" * 5000,
            JSON,
            400,
            DEEP,
        ),
        ("huge", huge, "application/json", 413, "body_too_large"),
        ("text/plain", b'{"code": "1"}', "text/plain", 415, "unsupported_media_type"),
        ("form", b"code=1", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        ("xml", b"<code>1</code>", "application/xml", 415, "unsupported_media_type"),
        (
            "multipart",
            b"--b\r\n\r\n--b--",
            "multipart/form-data; boundary=b",
            415,
            "unsupported_media_type",
        ),
    ]


def _run_corpus(service: ServedService) -> None:
    known = seed_resources(service)
    routes = route_table(service.data_dir.parent / "route-table")
    body_routes = {key for key, route in routes.items() if route.body is not None}
    assert body_routes == set(VALID_BODIES), (
        f"every body route needs a valid body here: {sorted(body_routes ^ set(VALID_BODIES))}"
    )
    url = _db_url(service)
    before = settled_contents(url)
    corpus = Corpus(service)
    max_body = 64 * 1024
    try:
        for (method, template), valid in sorted(VALID_BODIES.items()):
            role = role_for(routes[(method, template)].roles)
            assert role is not None
            client = corpus.clients[role]
            path = _concrete(template, known)
            label = f"{method} {template}"
            for name, content, content_type, status, code in _body_corpus(max_body):
                r = client.request(
                    method, path, content=content, headers={"content-type": content_type}
                )
                corpus.expect(f"{label} [{name}]", r, status, code)
            # The same huge body, sent chunked: no Content-Length to refuse it by.
            chunks = (b"x" * 8192 for _ in range(max_body // 8192 + 4))
            r = client.request(
                method, path, content=chunks, headers={"content-type": "application/json"}
            )
            corpus.expect(f"{label} [huge, chunked]", r, 413, "body_too_large")
            # Control characters in every string field.
            body_type = msgspec.inspect.type_info(routes[(method, template)].body)
            fields = sorted(set(_string_fields(body_type)))
            assert fields, label
            for field in fields:
                leaf = field.rsplit(".", 1)[-1].removesuffix("[0]")
                payloads = dict(INJECTIONS)
                if leaf not in MULTI_LINE_FIELDS:
                    payloads |= SINGLE_LINE_ONLY
                for name, value in payloads.items():
                    r = client.request(method, path, json=_with(valid, field, value))
                    corpus.expect(
                        f"{label} [{field} {name}]", r, 400, "invalid_request", field=field
                    )
        # Control characters in paths and query strings.
        frontend, supervisor = corpus.clients[Role.FRONTEND], corpus.clients[Role.SUPERVISOR]
        auditor = corpus.clients[Role.AUDITOR]
        for name, value in {"crlf": "%0D%0AX-Injected:%20yes", "nul": "%00", "esc": "%1B"}.items():
            corpus.expect(
                f"account id [{name}]",
                frontend.get(f"/v1/accounts/acct{value}/methods"),
                400,
                "invalid_request",
            )
            corpus.expect(
                f"request id [{name}]",
                frontend.get(f"/v1/unlock-requests/{value}"),
                400,
                "invalid_request",
            )
            for param in ("assignee", "cursor", "status"):
                corpus.expect(
                    f"review queue {param} [{name}]",
                    supervisor.get(f"/v1/review-cases?{param}=x{value}"),
                    400,
                    "invalid_request",
                )
            corpus.expect(
                f"audit entries start [{name}]",
                auditor.get(f"/v1/audit/entries?start=1{value}"),
                400,
                "invalid_request",
            )
    finally:
        corpus.close()
    assert not corpus.failures, f"{len(corpus.failures)} of {corpus.sent}:\n" + "\n".join(
        corpus.failures
    )
    assert corpus.sent > 400, corpus.sent
    after = settled_contents(url)
    changed = sorted(name for name in after if after[name] != before.get(name))
    assert not changed, f"a refused request wrote to {changed}"
    # Still up, and still serving: a normal request, and free text with a line feed in it.
    assert service.process is not None
    assert service.process.poll() is None, service.log_tail()
    with service.client(Role.FRONTEND) as fe:
        created = fe.post("/v1/unlock-requests", json=PERSONA_REQUEST)
        assert created.status_code == 201, created.text
        appeal = fe.post(
            f"/v1/unlock-requests/{created.json()['id']}/appeals",
            json={"statement": "line one\nline two\tand a tab"},
        )
        assert appeal.status_code == 201, appeal.text
    assert httpx.get(f"{service.base_url}/health/ready", timeout=5).status_code == 200


def test_bad_input_is_4xx_problem_json_writes_nothing_and_the_served_process_stays_up(
    serve_service: ServeFactory, database_url: str
) -> None:
    _run_corpus(serve_service(database_url, env=ENV))
