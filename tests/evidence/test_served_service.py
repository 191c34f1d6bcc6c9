"""The evidence suite's harness itself: a served process answers for every role's key."""

from __future__ import annotations

from service.persistence.api_keys import Role
from tests.evidence.conftest import ServeFactory
from tests.service.conftest import PERSONA_REQUEST


def test_every_role_key_authenticates_against_the_served_process(
    serve_service: ServeFactory, database_url: str
) -> None:
    # The keys come from `fairunlock keys create`, as an operator makes them.
    service = serve_service(database_url, workers=2, keys_via_cli=True)
    assert len(service.worker_pids()) == 2
    with service.client(Role.FRONTEND) as frontend:
        assert frontend.post("/v1/unlock-requests", json=PERSONA_REQUEST).status_code == 201
        # A frontend key reaches its routes and is refused the auditor's.
        assert frontend.get("/v1/audit/checkpoint").status_code == 403
    with service.client(Role.AUDITOR) as auditor:
        assert auditor.get("/v1/audit/checkpoint").status_code == 200
