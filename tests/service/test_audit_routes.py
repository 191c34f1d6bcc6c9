"""Auditor HTTP API on the real app: roles, JSON Lines, proofs that verify, problem+json errors."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from audit.checkpoint import load_public_key_pem, verify_checkpoint
from audit.entry import AuditEvent, EntryKind, decode_entry
from audit.integrator import integrate_all, wait_integrated
from audit.merkle import ProofError, leaf_hash, verify_consistency, verify_inclusion
from audit.store import append_event_now
from service.app import create_app
from service.persistence import metadata
from service.persistence.api_keys import ApiKeyRepository, Role
from service.routes.audit import MAX_PAGE
from service.settings import Settings

ORIGIN = "routes.fairunlock/audit"


@dataclass
class Api:
    client: TestClient[Litestar]
    keys: dict[Role, str]

    def get(self, path: str, role: Role | None = Role.AUDITOR, **params: Any) -> Any:
        headers = {} if role is None else {"Authorization": f"Bearer {self.keys[role]}"}
        return self.client.get(path, headers=headers, params=params)

    def append(self, count: int, *, integrate: bool = True, batch_size: int = 1000) -> list[int]:
        app = self.client.app
        engine = app.state.engine

        async def body() -> list[int]:
            ids = [
                await append_event_now(
                    engine,
                    AuditEvent(EntryKind.DECISION, "svc", "subj", {"n": n}, datetime.now(UTC)),
                )
                for n in range(count)
            ]
            if integrate:
                await integrate_all(engine, app.state.audit_signer, ORIGIN, batch_size)
            return ids

        with self.client.portal() as portal:
            return portal.call(body)


def _settings(tmp_path: Path, **changes: Any) -> Settings:
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'app.sqlite3'}",
        audit_origin=ORIGIN,
        audit_integrator=False,
    )
    return replace(settings, **changes)


def _start(settings: Settings) -> Iterator[Api]:
    app = create_app(settings)
    with TestClient(app) as client:
        keys: dict[Role, str] = {}

        async def setup() -> None:
            async with app.state.engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
                for role in (Role.AUDITOR, Role.FRONTEND):
                    keys[role] = await ApiKeyRepository(conn).create(role, f"{role.value}-key")

        with client.portal() as portal:
            portal.call(setup)
        yield Api(client, keys)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    yield from _start(_settings(tmp_path))


ROUTES = [
    ("/v1/audit/checkpoint", {}),
    ("/v1/audit/entries", {}),
    ("/v1/audit/proofs/inclusion", {"index": 0}),
    ("/v1/audit/proofs/consistency", {"first": 1}),
    ("/v1/audit/public-key", {}),
]


@pytest.mark.parametrize(("path", "params"), ROUTES)
def test_no_key_is_401_and_another_role_is_403(api: Api, path: str, params: dict[str, Any]) -> None:
    api.append(2)
    missing = api.get(path, role=None, **params)
    assert missing.status_code == 401
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert missing.json()["code"] == "unauthenticated"
    forbidden = api.get(path, role=Role.FRONTEND, **params)
    assert forbidden.status_code == 403
    assert forbidden.json()["code"] == "forbidden"
    assert api.get(path, **params).status_code == 200


def test_checkpoint_is_the_latest_signed_note(api: Api) -> None:
    empty = api.get("/v1/audit/checkpoint")
    assert empty.status_code == 404
    assert empty.json()["code"] == "audit_no_checkpoint"
    api.append(5, batch_size=2)
    response = api.get("/v1/audit/checkpoint")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    key = api.client.app.state.audit_signer.public_key
    checkpoint = verify_checkpoint(response.text, key, ORIGIN)
    assert checkpoint.size == 5


def test_public_key_matches_the_signing_key(api: Api) -> None:
    body = api.get("/v1/audit/public-key").json()
    signer = api.client.app.state.audit_signer
    assert load_public_key_pem(body["pem"].encode()) == signer.public_key
    assert body["verifier_key"] == signer.verifier_key()
    assert body["verifier_key"].startswith(f"{ORIGIN}+{signer.key_id.hex()}+")
    assert body["origin"] == ORIGIN


def test_entries_stream_exact_leaf_bytes_as_json_lines(api: Api) -> None:
    api.append(7)
    response = api.get("/v1/audit/entries", start=2, end=6)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/jsonl")
    lines = response.content.split(b"\n")
    assert lines[-1] == b""  # every line, the last too, ends in a newline
    entries = [decode_entry(line) for line in lines[:-1]]  # canonical: decode_entry re-encodes
    assert [e["index"] for e in entries] == [2, 3, 4, 5]
    whole = api.get("/v1/audit/entries").content.splitlines()
    assert len(whole) == 7
    assert whole[2:6] == lines[:-1]
    # The lines hash to the signed root.
    proof = api.get("/v1/audit/proofs/inclusion", index=3).json()
    assert base64.b64decode(proof["leaf_hash"]) == leaf_hash(whole[3])


@pytest.mark.parametrize(
    ("path", "params", "code"),
    [
        ("/v1/audit/entries", {"start": -1}, "invalid_request"),
        ("/v1/audit/entries", {"start": "x"}, "invalid_request"),
        ("/v1/audit/entries", {"start": 5, "end": 3}, "audit_query_invalid"),
        ("/v1/audit/entries", {"start": 0, "end": 99}, "audit_query_invalid"),
        ("/v1/audit/entries", {"start": 0, "end": MAX_PAGE + 1}, "audit_range_too_large"),
        ("/v1/audit/proofs/inclusion", {}, "invalid_request"),
        ("/v1/audit/proofs/inclusion", {"index": 4}, "audit_query_invalid"),
        ("/v1/audit/proofs/inclusion", {"index": 0, "tree_size": 3}, "audit_query_invalid"),
        ("/v1/audit/proofs/inclusion", {"index": 0, "tree_size": 0}, "invalid_request"),
        ("/v1/audit/proofs/consistency", {"first": 0}, "invalid_request"),
        ("/v1/audit/proofs/consistency", {"first": 5}, "audit_query_invalid"),
        ("/v1/audit/proofs/consistency", {"first": 1, "second": 3}, "audit_query_invalid"),
        # Found by schemathesis: integers past SQLite's range were a 500 (OverflowError).
        ("/v1/audit/proofs/consistency", {"first": 2**64}, "invalid_request"),
        ("/v1/audit/proofs/inclusion", {"index": 0, "tree_size": 2**63}, "invalid_request"),
        ("/v1/audit/entries", {"start": 2**63}, "invalid_request"),
    ],
)
def test_bad_parameters_are_400_problem_json(
    api: Api, path: str, params: dict[str, Any], code: str
) -> None:
    api.append(4)  # one batch: the only checkpoint has size 4
    response = api.get(path, **params)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code
    assert body["status"] == 400
    assert "Traceback" not in response.text


def test_inclusion_proofs_from_the_api_verify_against_the_checkpoint_root(api: Api) -> None:
    api.append(13, batch_size=5)  # checkpoints at 5, 10, 13
    key = api.client.app.state.audit_signer.public_key
    leaves = api.get("/v1/audit/entries").content.splitlines()
    for tree_size in (5, 10, 13):
        for index in range(tree_size):
            body = api.get("/v1/audit/proofs/inclusion", index=index, tree_size=tree_size).json()
            checkpoint = verify_checkpoint(body["checkpoint"], key, ORIGIN)
            assert checkpoint.size == tree_size
            assert base64.b64decode(body["root"]) == checkpoint.root
            proof = [base64.b64decode(h) for h in body["proof"]]
            verify_inclusion(leaf_hash(leaves[index]), index, tree_size, proof, checkpoint.root)
            # And the proof is specific: another leaf does not verify with it.
            other = leaf_hash(leaves[(index + 1) % tree_size])
            with pytest.raises(ProofError):
                verify_inclusion(other, index, tree_size, proof, checkpoint.root)


def test_consistency_proofs_from_the_api_verify_between_checkpoints(api: Api) -> None:
    api.append(13, batch_size=5)
    key = api.client.app.state.audit_signer.public_key
    first_note = api.get("/v1/audit/proofs/inclusion", index=0, tree_size=5).json()["checkpoint"]
    first = verify_checkpoint(first_note, key, ORIGIN)
    body = api.get("/v1/audit/proofs/consistency", first=5).json()
    second = verify_checkpoint(body["checkpoint"], key, ORIGIN)
    assert (body["first"], body["second"]) == (5, 13) == (first.size, second.size)
    proof = [base64.b64decode(h) for h in body["proof"]]
    verify_consistency(first.size, second.size, first.root, second.root, proof)
    with pytest.raises(ProofError):
        verify_consistency(first.size, second.size, second.root, second.root, proof)


def test_the_apps_background_integrator_gives_entries_their_index(tmp_path: Path) -> None:
    for api in _start(_settings(tmp_path, audit_integrator=True, audit_interval_ms=10)):
        ids = api.append(3, integrate=False)

        async def indices(
            engine: Any = api.client.app.state.engine, ids: list[int] = ids
        ) -> list[int]:
            return [await wait_integrated(engine, i, timeout=10) for i in ids]

        with api.client.portal() as portal:
            assert portal.call(indices) == [0, 1, 2]
        assert (
            verify_checkpoint(
                api.get("/v1/audit/checkpoint").text,
                api.client.app.state.audit_signer.public_key,
                ORIGIN,
            ).size
            == 3
        )
