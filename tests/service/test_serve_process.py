"""The real thing, once: `fairunlock db upgrade`, `fairunlock keys create` and `fairunlock serve`
as processes, and the API over TCP on loopback (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import PERSONA_REQUEST, free_port

BIN = Path(sys.executable).parent


def _env(tmp_path: Path, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAIRUNLOCK_")}
    env["FAIRUNLOCK_DATA_DIR"] = str(tmp_path / "data")
    if database_url.startswith("postgresql"):
        env["FAIRUNLOCK_DATABASE_URL"] = database_url
    return env


@pytest.fixture
def served(tmp_path: Path, database_url: str) -> Iterator[tuple[str, str]]:
    env = _env(tmp_path, database_url)
    subprocess.run(
        [BIN / "fairunlock", "db", "upgrade"], env=env, check=True, capture_output=True, timeout=120
    )
    created = subprocess.run(
        [BIN / "fairunlock", "keys", "create", "--role", "frontend", "--name", "serve-test"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("fu_")
    assert key not in created.stderr
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [BIN / "fairunlock", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "the service did not start in 30 s"
            time.sleep(0.1)
        yield base, key
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_unlock_request_against_a_real_server_process(
    served: tuple[str, str], tmp_path: Path
) -> None:
    base, key = served
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
        assert (
            client.put("/v1/accounts/acct-1024/phone", json={"phone": "+8613800005678"}).status_code
            == 200
        )
        r = client.post("/v1/unlock-requests", json=PERSONA_REQUEST)
        assert r.status_code == 201, r.text
        decision = r.json()
        assert decision["review"]["available"] is True
        assert isinstance(decision["audit"]["index"], int)
        assert client.get(f"/v1/unlock-requests/{decision['id']}").json()["id"] == decision["id"]
        anonymous = httpx.get(f"{base}/v1/unlock-requests/{decision['id']}", timeout=10)
        assert anonymous.status_code == 401
        assert anonymous.headers["content-type"].startswith("application/problem+json")
    # The process's log: JSON lines, an access line with the request's id for each call, and
    # neither the API key nor the phone number anywhere.
    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(line) for line in (tmp_path / "serve.log").read_text().splitlines()]
        access = [line for line in lines if line.get("path", "").startswith("/v1/")]
        if len(access) >= 4 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(access) >= 4, lines
    assert all(line.get("request_id") for line in access), access
    text = (tmp_path / "serve.log").read_text()
    for secret in (key, "13800005678", "8613800005678"):
        assert secret not in text
