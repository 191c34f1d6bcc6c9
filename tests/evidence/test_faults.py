"""Faults under load (issue 7): the real ``fairunlock serve`` with two workers on loopback, a
bounded load generator (threads, one httpx client each), and faults a machine really has: a
worker SIGKILLed mid-request, the audit integrator killed mid-batch with its worker, PostgreSQL
stopped and started under load, and an audit commit the database refuses.

The promise each test checks is the same: nothing acknowledged is lost. A decision that got a
2xx is in the database and in the audit log at the index it was told, the log exports and
verifies with ``fairunlock audit export`` / ``fairunlock audit verify``, and no decision row
exists without its audit entry. While the database is down the caller gets 503
``database_unavailable`` problem+json, never a 500.

The PostgreSQL outage test stops a private cluster of its own (initdb/pg_ctl from
/usr/lib/postgresql/*/bin, in a temporary directory on a free port), never the shared server;
the full-disk test fills a 16 MiB tmpfs of its own (skipped where mount is not allowed). The
integrator alone killed mid-batch is tests/audit/test_integrator_processes.py; here it dies
with the service workers that run it. The service tests are ``slow`` (make test runs them);
several print their figures (pytest -rP shows them). Every test runs on SQLite and, when a
server answers, on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from audit.entry import AuditEvent, EntryKind, event_to_payload
from audit.export import export_bundle
from audit.store import AuditStore
from audit.verify import verify_bundle
from service.db import create_engine
from service.errors import database_unavailable
from service.keystore import KeyStore
from service.methods.totp import TotpParameters, code_at
from service.persistence.api_keys import Role
from service.settings import Settings
from tests.evidence.conftest import ServedService, ServeFactory
from tests.service.conftest import PERSONA_REQUEST, free_port
from tests.service.test_challenges_api import previous_step

PROBLEM_JSON = "application/problem+json"
TOTP = TotpParameters()
UNAVAILABLE = "database_unavailable"


# -- the load generator --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request: when it started and ended (monotonic), and what came back."""

    started: float
    ended: float
    status: int | None  # None: no HTTP answer (connection reset by a killed worker, ...)
    content_type: str
    body: dict[str, Any] | None
    error: str | None = None
    # What was asked: "decision" (POST /v1/unlock-requests), "proof" (a TOTP verify, whose
    # challenge is ``challenge_id``) or "setup" (the enrolment and challenge before a proof).
    kind: str = "decision"
    challenge_id: str | None = None


@dataclass
class Load:
    """``threads`` clients posting unlock requests back to back until stopped or capped, and
    ``proof_threads`` more proving TOTP codes back to back: each enrols a TOTP for a new account,
    makes its unlock request, starts a challenge and sends the right code.

    Every account id is fresh, so the decisions do not feed each other's velocity signals.
    """

    service: ServedService
    threads: int = 8
    proof_threads: int = 0
    max_per_thread: int = 2_000
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for n in range(self.threads + self.proof_threads):
            run = self._run if n < self.threads else self._run_proofs
            worker = threading.Thread(target=run, args=(n,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=60)
            assert not worker.is_alive(), "a load thread hung"
        with self._lock:
            return list(self.outcomes)

    def acked(self, kind: str | None = None) -> list[Outcome]:
        """The outcomes answered 2xx (of ``kind``, if given)."""
        with self._lock:
            return [
                o
                for o in self.outcomes
                if o.status is not None
                and 200 <= o.status < 300
                and (kind is None or o.kind == kind)
            ]

    def wait_acked(self, count: int, timeout_s: float = 30, kind: str | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.acked(kind)) < count:
            assert time.monotonic() < deadline, (
                f"only {len(self.acked(kind))} of {count} acknowledged in {timeout_s} s; "
                f"last outcomes {self.outcomes[-3:]}\n{self.service.log_tail()}"
            )
            time.sleep(0.02)

    def _run(self, thread: int) -> None:
        with self.service.client(Role.FRONTEND, timeout=20) as client:
            for n in range(self.max_per_thread):
                if self._stop.is_set():
                    return
                body = PERSONA_REQUEST | {"account_id": f"load-{thread}-{n}-{time.monotonic_ns()}"}
                self._post(client, "/v1/unlock-requests", body, "decision")

    def _run_proofs(self, thread: int) -> None:
        with self.service.client(Role.FRONTEND, timeout=20) as client:
            for n in range(self.max_per_thread):
                if self._stop.is_set():
                    return
                account = f"proof-{thread}-{n}-{time.monotonic_ns()}"
                enrolled = self._post(client, f"/v1/accounts/{account}/totp", None, "setup")
                if enrolled is None:
                    continue  # no answer (its worker was killed): the next account
                secret = enrolled["secret"]
                # Confirmed with the previous step's code, so the current one is still unused.
                code = code_at(secret, previous_step(), TOTP)
                confirm = f"/v1/accounts/{account}/totp/confirm"
                if self._post(client, confirm, {"code": code}, "setup") is None:
                    continue
                body = PERSONA_REQUEST | {"account_id": account}
                decision = self._post(client, "/v1/unlock-requests", body, "decision")
                if decision is None:
                    continue
                challenges = f"/v1/unlock-requests/{decision['id']}/challenges"
                challenge = self._post(client, challenges, {"method": "totp"}, "setup")
                if challenge is None:
                    continue
                code = code_at(secret, datetime.now(UTC), TOTP)
                verify = f"{challenges}/{challenge['id']}/verify"
                self._post(client, verify, {"code": code}, "proof", challenge["id"])

    def _post(
        self,
        client: httpx.Client,
        path: str,
        body: dict[str, Any] | None,
        kind: str,
        challenge_id: str | None = None,
    ) -> dict[str, Any] | None:
        """POST and record the outcome; the answer's body when it is a 2xx."""
        started = time.monotonic()
        try:
            response = client.post(path, json=body) if body is not None else client.post(path)
        except httpx.TransportError as exc:
            outcome = Outcome(started, time.monotonic(), None, "", None, repr(exc), kind)
        else:
            try:
                parsed = response.json()
            except ValueError:
                parsed = None
            outcome = Outcome(
                started,
                time.monotonic(),
                response.status_code,
                response.headers.get("content-type", ""),
                parsed,
                kind=kind,
                challenge_id=challenge_id,
            )
        with self._lock:
            self.outcomes.append(outcome)
        ok = outcome.status is not None and 200 <= outcome.status < 300
        return outcome.body if ok else None


def acknowledged_indices(outcomes: list[Outcome]) -> dict[str, int]:
    """Decision id -> the audit index the 201 gave, for every acknowledged decision."""
    acked: dict[str, int] = {}
    for o in outcomes:
        if o.kind == "decision" and o.status is not None and 200 <= o.status < 300:
            assert o.body is not None
            index = o.body["audit"]["index"]
            assert isinstance(index, int), f"a 2xx without its audit index: {o.body}"
            acked[o.body["id"]] = index
    return acked


# -- what the database and the log hold ----------------------------------------------------


def run_sql(database_url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of one statement, through the service's own engine factory (SQLite or PostgreSQL)."""

    async def main() -> list[tuple[Any, ...]]:
        engine = create_engine(database_url)
        try:
            async with engine.begin() as conn:
                result = await conn.execute(text(sql))
                return [tuple(r) for r in result] if result.returns_rows else []
        finally:
            await engine.dispose()

    return asyncio.run(main())


def database_of(service: ServedService) -> str:
    """The URL the served process uses (SQLite lives in its data directory)."""
    return Settings.from_env(service.env).resolved_database_url


def decision_rows(database_url: str) -> set[str]:
    return {r[0] for r in run_sql(database_url, "SELECT id FROM unlock_requests")}


def rows_without_audit_entry(database_url: str) -> int:
    """Unlock requests whose audit entry is neither queued nor in the log: partial writes."""
    (count,) = run_sql(
        database_url,
        "SELECT count(*) FROM unlock_requests u WHERE NOT EXISTS "
        "(SELECT 1 FROM audit_log l WHERE l.inbox_id = u.audit_inbox_id) AND NOT EXISTS "
        "(SELECT 1 FROM audit_inbox i WHERE i.id = u.audit_inbox_id)",
    )[0]
    return int(count)


@dataclass(frozen=True, slots=True)
class VerifiedLog:
    size: int
    entries: list[dict[str, Any]]

    def decisions(self) -> dict[str, int]:
        """unlock_request_id -> index of its decision entry (not an approval's, which names
        ``via``); fails on a duplicate."""
        found: dict[str, int] = {}
        for entry in self.entries:
            data = entry["data"]
            if (
                entry["kind"] == EntryKind.DECISION.value
                and "unlock_request_id" in data
                and "via" not in data
            ):
                request_id = entry["data"]["unlock_request_id"]
                assert request_id not in found, f"decision {request_id} logged twice"
                found[request_id] = entry["index"]
        return found


def export_and_verify(service: ServedService, out: Path, *, cli: bool = False) -> VerifiedLog:
    """Export the whole log and verify the bundle offline against the log's public key.

    ``cli``: with ``fairunlock audit export`` and ``fairunlock audit verify`` as an operator
    would; otherwise the same two functions they call (audit.export.export_bundle,
    audit.verify.verify_bundle) in this process, which saves two interpreter starts per test.
    """
    settings = Settings.from_env(service.env)
    keystore = KeyStore.load(settings)
    if cli:
        service.cli("audit", "export", "--out", str(out), "--purpose", "fault test")
        key = out.parent / f"{out.name}-pub.pem"
        key.write_bytes(keystore.public_key_pem())
        assert service.cli("audit", "verify", str(out), "--key", str(key)).strip()
    else:

        async def export() -> None:
            engine = create_engine(settings.resolved_database_url)
            try:
                await export_bundle(
                    engine,
                    out,
                    signer=keystore.signer(settings.audit_origin),
                    origin=settings.audit_origin,
                    actor="test:faults",
                    purpose="fault test",
                )
            finally:
                await engine.dispose()

        asyncio.run(export())
        verify_bundle(out, keystore.signing_key.public_key())
    manifest = json.loads((out / "manifest.json").read_text())
    entries = [json.loads(line) for line in (out / "entries.jsonl").read_bytes().splitlines()]
    assert [e["index"] for e in entries] == list(range(len(entries)))
    assert (manifest["from"], manifest["to"]) == (0, len(entries))
    return VerifiedLog(size=len(entries), entries=entries)


def assert_acknowledged_kept(
    service: ServedService, database_url: str, acked: dict[str, int], log: VerifiedLog
) -> None:
    """Every acknowledged decision: readable by id at its index, and that log entry names it.
    Every decision row has its entry, and every decision entry its row."""
    logged = log.decisions()
    with service.client(Role.FRONTEND) as client, ThreadPoolExecutor(8) as pool:

        def read(request_id: str) -> tuple[str, int, Any]:
            response = client.get(f"/v1/unlock-requests/{request_id}")
            return request_id, response.status_code, response.json()

        for request_id, status, body in pool.map(read, acked):
            assert status == 200, f"acknowledged {request_id} lost: {body}"
            index = acked[request_id]
            assert body["audit"]["index"] == index
            assert index < log.size
            assert logged.get(request_id) == index, f"{request_id} not at index {index} in the log"
    assert decision_rows(database_url) == set(logged), "decision rows and log entries differ"
    assert rows_without_audit_entry(database_url) == 0


def assert_acknowledged_proofs_kept(
    service: ServedService, outcomes: list[Outcome], log: VerifiedLog
) -> int:
    """Every acknowledged proof (a TOTP verify answered 200): its request still shows what the
    answer said (status, the TOTP factor), and the log holds its successful attempt and, when
    the answer said approved, the approval. How many there were."""
    proofs = [o for o in outcomes if o.kind == "proof" and o.status == 200]
    successes = {
        e["data"]["challenge_id"]
        for e in log.entries
        if e["kind"] == EntryKind.VERIFICATION_ATTEMPT.value and e["data"]["outcome"] == "success"
    }
    approvals = {
        e["data"]["unlock_request_id"]
        for e in log.entries
        if e["kind"] == EntryKind.DECISION.value and e["data"].get("via") == "verification"
    }
    with service.client(Role.FRONTEND) as client:
        for o in proofs:
            assert o.body is not None
            assert "totp" in o.body["factors_satisfied"], o.body
            request_id = o.body["id"]
            now = client.get(f"/v1/unlock-requests/{request_id}").json()
            assert (now["status"], now["factors_satisfied"]) == (
                o.body["status"],
                o.body["factors_satisfied"],
            ), f"acknowledged proof for {request_id} lost"
            assert o.challenge_id in successes, f"{o.challenge_id}'s success not in the log"
            if o.body["status"] == "approved":
                assert request_id in approvals, f"{request_id}'s approval not in the log"
    return len(proofs)


# -- 1. a worker SIGKILLed under load --------------------------------------------------------


@pytest.mark.slow
def test_sigkilled_worker_under_load_loses_no_acknowledged_decision_or_proof(
    serve_service: ServeFactory, database_url: str, tmp_path: Path
) -> None:
    service = serve_service(database_url, workers=2)
    db = database_of(service)
    load = Load(service, threads=6, proof_threads=4).start()
    try:
        load.wait_acked(60)
        load.wait_acked(10, kind="proof")
        # The worker serving the most of the load's connections: killed, it must drop requests
        # in flight, or the test would prove nothing about them.
        held = service.connections_held()
        victim = max(held, key=lambda pid: held[pid])
        assert held[victim] >= 1, held
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        # The other worker (and the one the supervisor starts in place of the dead) go on.
        load.wait_acked(len(load.acked()) + 60)
        load.wait_acked(len(load.acked("proof")) + 10, kind="proof")
    finally:
        outcomes = load.stop()
    assert victim not in service.worker_pids()
    # Then the whole service crashes (supervisor and workers at once) and starts again.
    service.stop(signal.SIGKILL)
    service.start()

    acked = acknowledged_indices(outcomes)
    after_kill = [o for o in outcomes if o.started > killed_at and o.status == 201]
    assert len(after_kill) >= 40, "the service did not go on serving after the kill"
    # A request in flight on the killed worker may get no answer; nothing may get an error.
    answered = [o for o in outcomes if o.status is not None]
    errors = [o for o in answered if o.status is None or not 200 <= o.status < 300]
    assert not errors, errors[:3]
    # The kill cut connections with a request on them (or about to be sent on them).
    assert len(answered) < len(outcomes), f"nothing was in flight on the killed worker {held}"
    log = export_and_verify(service, tmp_path / "bundle", cli=True)
    assert_acknowledged_kept(service, db, acked, log)
    proofs = assert_acknowledged_proofs_kept(service, outcomes, log)
    assert proofs >= 20, f"only {proofs} proofs acknowledged"
    print(
        f"{len(outcomes)} requests, {len(acked)} decisions and {proofs} proofs acknowledged, "
        f"{len(outcomes) - len(answered)} unanswered (in flight on the killed worker), "
        f"{len(after_kill)} acknowledged after the kill; log size {log.size}"
    )


# -- 2. the audit integrator killed mid-batch, with its workers --------------------------------


def _head_and_backlog(database_url: str) -> tuple[int, int]:
    """(log size, inbox backlog), read in one statement and so from one snapshot: restarted
    workers integrating between two reads would make the pair add up wrong. On SQLite a plain
    WAL reader, so a busy integrator's BEGIN IMMEDIATE does not make the probe wait."""
    both = (
        "SELECT (SELECT coalesce(max(size), 0) FROM audit_head), (SELECT count(*) FROM audit_inbox)"
    )
    if database_url.startswith("sqlite"):
        path = database_url.split(":///", 1)[1]
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            size, backlog = conn.execute(both).fetchone()
        finally:
            conn.close()
    else:
        ((size, backlog),) = run_sql(database_url, both)
    return int(size), int(backlog)


def _seed_inbox(database_url: str, total: int) -> None:
    async def main() -> None:
        engine = create_engine(database_url)
        now = datetime.now(UTC)
        try:
            async with engine.begin() as conn:
                await AuditStore(conn).enqueue_many(
                    [
                        event_to_payload(
                            AuditEvent(
                                EntryKind.VERIFICATION_ATTEMPT,
                                "seed",
                                None,
                                {"n": n},
                                now,
                            )
                        )
                        for n in range(total)
                    ]
                )
        finally:
            await engine.dispose()

    asyncio.run(main())


@pytest.mark.slow
def test_workers_killed_mid_integration_lose_and_duplicate_no_entry(
    serve_service: ServeFactory, database_url: str, tmp_path: Path
) -> None:
    """Both workers run the background integrator; a backlog is queued, and both are SIGKILLed
    once the first batch is committed. The batch in flight must vanish whole, and the workers
    the supervisor starts in their place (a fresh leader) integrate the rest exactly once.
    The integrator alone (``fairunlock audit integrate``) killed mid-batch is
    tests/audit/test_integrator_processes.py::test_sigkilled_integrator_loses_and_duplicates_nothing.
    """
    total, batch = 12_000, 3_000
    service = serve_service(
        database_url,
        workers=2,
        env={"FAIRUNLOCK_AUDIT_BATCH_SIZE": str(batch), "FAIRUNLOCK_AUDIT_INTERVAL_MS": "20"},
    )
    db = database_of(service)
    killed = service.worker_pids()
    _seed_inbox(db, total)
    deadline = time.monotonic() + 60
    while (state := _head_and_backlog(db))[0] == 0:
        assert time.monotonic() < deadline, "no batch integrated in 60 s"
        time.sleep(0.005)
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    for pid in killed:  # gone (the supervisor reaps them) before the log is looked at
        with suppress(psutil.NoSuchProcess):
            psutil.Process(pid).wait(timeout=10)
    size, backlog = _head_and_backlog(db)
    assert 0 < size < total, f"the kill did not land mid-run ({state} then {size})"
    assert size % batch == 0, "part of a batch became visible"
    assert size + backlog == total, "an entry was lost or integrated twice"

    service.wait_live()
    deadline = time.monotonic() + 90
    while _head_and_backlog(db) != (total, 0):
        assert time.monotonic() < deadline, f"backlog not drained: {_head_and_backlog(db)}"
        time.sleep(0.05)
    assert not set(killed) & set(service.worker_pids())
    with service.client(Role.FRONTEND) as client:
        response = client.post("/v1/unlock-requests", json=PERSONA_REQUEST)
    assert response.status_code == 201
    assert response.json()["audit"]["index"] == total

    log = export_and_verify(service, tmp_path / "bundle")
    seeded = [e["data"]["n"] for e in log.entries if e["actor"] == "seed"]
    assert seeded == list(range(total)), "entries lost, duplicated or reordered"


# -- 3. PostgreSQL stopped and started under load ----------------------------------------------


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: (len(p), p))
    for candidate in reversed(found):  # the newest major version first
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


@dataclass
class PrivatePostgres:
    """A throwaway cluster: its own directory and port, trust auth, stopped and removed after."""

    bin: Path
    root: Path
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_owner(self, *argv: str) -> list[str]:
        # initdb and the server refuse to run as root: run them as the postgres user.
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)

    def _run(self, *argv: str) -> None:
        done = subprocess.run(
            self._as_owner(*argv), capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, f"{argv[0]}: {done.stdout}{done.stderr}"

    def init(self) -> None:
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.root / "data"),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.root / "data"),
            "-o",
            options,
            "-l",
            str(self.root / "server.log"),
            "-w",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.root / "data" / "postmaster.pid").exists()


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    pg_bin = _postgres_bin()
    if pg_bin is None:
        pytest.skip(
            "no initdb/pg_ctl under /usr/lib/postgresql/*/bin: cannot run a private cluster"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a postgres user: initdb would refuse to run")
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: initdb would refuse to run")
    # Not under pytest's tmp_path: the postgres user must be able to reach the directory.
    root = Path(tempfile.mkdtemp(prefix="fairunlock-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    cluster = PrivatePostgres(pg_bin, root)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        if cluster.running():
            cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def _is_unavailable_problem(o: Outcome) -> bool:
    return (
        o.status == 503
        and o.content_type.startswith(PROBLEM_JSON)
        and o.body is not None
        and o.body.get("code") == UNAVAILABLE
    )


def _ready(service: ServedService) -> httpx.Response:
    return httpx.get(f"{service.base_url}/health/ready", timeout=10)


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_outage_under_load_answers_503_and_recovers_without_restart(
    serve_service: ServeFactory, private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    service = serve_service(private_postgres.url, workers=2)
    assert service.process is not None
    supervisor, workers = service.process.pid, sorted(service.worker_pids())
    assert _ready(service).status_code == 200

    load = Load(service).start()
    try:
        load.wait_acked(60)
        stopping = time.monotonic()
        private_postgres.stop("fast")
        down = time.monotonic()
        time.sleep(2.0)  # under load, with the database gone
        during = [_ready(service) for _ in range(6)]
        with service.client(Role.FRONTEND) as client:
            some_id = next(iter(acknowledged_indices(load.acked())))
            read_during = client.get(f"/v1/unlock-requests/{some_id}")
        # The server answers before pg_ctl returns: the outage ends when the start begins.
        starting = time.monotonic()
        private_postgres.start()
        up = time.monotonic()
        deadline = up + 30
        while not all(_ready(service).status_code == 200 for _ in range(6)):
            assert time.monotonic() < deadline, (
                f"not ready 30 s after restart\n{service.log_tail()}"
            )
            time.sleep(0.1)
        recovered = time.monotonic()
        load.wait_acked(len(load.acked()) + 100)
    finally:
        outcomes = load.stop()

    # No restart: the same supervisor and the same workers served throughout.
    assert service.process.pid == supervisor
    assert sorted(service.worker_pids()) == workers

    assert all(o.status is not None for o in outcomes), [o.error for o in outcomes if o.error][:3]
    outage = [o for o in outcomes if o.started >= down and o.ended <= starting]
    assert len(outage) >= 20, "too little load reached the service during the outage"
    assert all(_is_unavailable_problem(o) for o in outage), [
        (o.status, o.body) for o in outage if not _is_unavailable_problem(o)
    ][:3]
    # Around the stop and the start: an answer is a decision or the outage's 503, nothing else.
    for o in outcomes:
        assert o.status == 201 or _is_unavailable_problem(o), (o.status, o.body)
    assert read_during.status_code == 503
    assert read_during.json()["code"] == UNAVAILABLE
    for response in during:
        assert response.status_code == 503
        assert response.headers["content-type"].startswith(PROBLEM_JSON)
        assert response.json()["code"] == UNAVAILABLE
    after = [o for o in outcomes if o.started >= recovered]
    assert len(after) >= 60
    assert {o.status for o in after} == {201}, "the service did not recover without a restart"
    assert any(o.status == 201 for o in outcomes if stopping > o.started)

    acked = acknowledged_indices(outcomes)
    log = export_and_verify(service, tmp_path / "bundle")
    assert_acknowledged_kept(service, private_postgres.url, acked, log)
    print(
        f"{len(outcomes)} requests, {len(acked)} acknowledged, "
        f"{sum(o.status == 503 for o in outcomes)} answered 503, {len(outage)} of them "
        f"while the database was down ({up - down:.1f} s); ready again {recovered - up:.1f} s "
        f"after the restart; {len(after)} acknowledged after; log size {log.size}"
    )


# -- 4. an audit commit the database refuses ---------------------------------------------------


def _refuse_audit_commits(database_url: str) -> Callable[[], None]:
    """Make every commit that integrates an audit entry fail AT COMMIT (the INSERT itself works),
    as a full disk or a lost fsync would; returns the undo."""
    if database_url.startswith("sqlite"):
        # A deferred foreign key is checked at COMMIT.
        for sql in (
            "CREATE TABLE refuse_parent (id INTEGER PRIMARY KEY)",
            "CREATE TABLE refuse_child (parent_id INTEGER REFERENCES refuse_parent(id) "
            "DEFERRABLE INITIALLY DEFERRED)",
            "CREATE TRIGGER refuse_commit AFTER INSERT ON audit_log "
            "BEGIN INSERT INTO refuse_child VALUES (-1); END",
        ):
            run_sql(database_url, sql)

        def undo_sqlite() -> None:
            run_sql(database_url, "DROP TRIGGER refuse_commit")

        return undo_sqlite
    run_sql(
        database_url,
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'commit refused'; END $$",
    )
    run_sql(
        database_url,
        "CREATE CONSTRAINT TRIGGER refuse_commit AFTER INSERT ON audit_log "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse()",
    )

    def undo_postgres() -> None:
        run_sql(database_url, "DROP TRIGGER refuse_commit ON audit_log")

    return undo_postgres


@pytest.mark.slow
def test_failed_audit_commit_is_an_error_to_the_caller_and_leaves_no_decision_unlogged(
    serve_service: ServeFactory, database_url: str, tmp_path: Path
) -> None:
    service = serve_service(database_url, workers=2)
    db = database_of(service)
    with service.client(Role.FRONTEND) as client:
        first = client.post("/v1/unlock-requests", json=PERSONA_REQUEST)
        assert first.status_code == 201
        before = decision_rows(db)
        undo = _refuse_audit_commits(db)
        refused = [client.post("/v1/unlock-requests", json=PERSONA_REQUEST) for _ in range(2)]
        for response in refused:
            assert response.status_code >= 500, response.text
            assert response.headers["content-type"].startswith(PROBLEM_JSON)
            assert "traceback" not in response.text.lower()
            assert response.json()["status"] == response.status_code
        # Mostly the decision rolls back with its audit entry. On PostgreSQL, when another
        # worker held the integration lock, the decision commits with its entry queued and the
        # caller's wait for the index fails: an error all the same, and the entry is not lost.
        assert rows_without_audit_entry(db) == 0
        # A refused answer is a problem without the request's id, so the rows are counted: on
        # SQLite the one writer integrates every batch itself, and a failed commit takes the
        # decision back; on PostgreSQL at most the refused ones stay (checked in the log below).
        stored_anyway = decision_rows(db) - before
        if db.startswith("sqlite"):
            assert stored_anyway == set(), stored_anyway
        else:
            assert len(stored_anyway) <= len(refused), stored_anyway
        undo()
        again = client.post("/v1/unlock-requests", json=PERSONA_REQUEST)
        assert again.status_code == 201
    log = export_and_verify(service, tmp_path / "bundle")
    acked = {first.json()["id"]: first.json()["audit"]["index"]}
    acked[again.json()["id"]] = again.json()["audit"]["index"]
    # Including the ones stored anyway: every decision row is in the log once the fault clears.
    assert_acknowledged_kept(service, db, acked, log)


# -- the classification the 503 rests on -------------------------------------------------------


def test_only_connection_level_database_errors_count_as_unavailable() -> None:
    def wrapped(exc: Exception) -> sa_exc.StatementError:
        return sa_exc.DBAPIError.instance("SELECT 1", {}, exc, sqlite3.Error)

    assert database_unavailable(wrapped(sqlite3.OperationalError("database or disk is full")))
    assert database_unavailable(wrapped(sqlite3.OperationalError("database is locked")))
    assert database_unavailable(sa_exc.TimeoutError("QueuePool limit reached"))
    # Constraint violations and bugs stay 500s, also when SQLite calls them operational errors.
    assert not database_unavailable(wrapped(sqlite3.IntegrityError("UNIQUE constraint failed")))
    with sqlite3.connect(":memory:") as db:
        try:
            db.execute("SELECT * FROM no_such_table")
        except sqlite3.OperationalError as exc:
            no_table: sqlite3.OperationalError = exc
    assert no_table.sqlite_errorname == "SQLITE_ERROR"
    assert not database_unavailable(wrapped(no_table))
    assert not database_unavailable(ValueError("a bug"))
    # A refused connection counts only when the database driver raised it.
    assert not database_unavailable(ConnectionRefusedError(111, "Connection refused"))


# -- 5. the disk fills up under the SQLite database ----------------------------------------------


@pytest.fixture
def tiny_disk() -> Iterator[Path]:
    """A 16 MiB tmpfs of its own: filling it affects nothing else. Needs root (mount)."""
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill needs root and mount(8)")
    mount_point = Path(tempfile.mkdtemp(prefix="fairunlock-disk-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0777", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        mount_point.rmdir()
        pytest.skip(f"cannot mount a tmpfs to fill ({mounted.stderr.strip() or 'not root'})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
        mount_point.rmdir()


def _fill(directory: Path) -> Path:
    """Write a file until the filesystem is full; returns it (delete it to free the space)."""
    filler = directory / "filler"
    chunk = b"\0" * 65_536
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
    with (directory / "filler-tail").open("wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 512)
        except OSError:
            pass
    return filler


@pytest.mark.slow
def test_full_disk_is_an_error_to_the_caller_and_loses_no_acknowledged_decision(
    serve_service: ServeFactory, tiny_disk: Path, tmp_path: Path
) -> None:
    db = f"sqlite+aiosqlite:///{tiny_disk / 'fairunlock.sqlite3'}"
    service = serve_service(db, workers=2, env={"FAIRUNLOCK_DATABASE_URL": db})
    assert database_of(service) == db
    outcomes: list[Outcome] = []
    with service.client(Role.FRONTEND, timeout=60) as client:

        def post(n: int) -> Outcome:
            started = time.monotonic()
            body = PERSONA_REQUEST | {"account_id": f"disk-{n}"}
            response = client.post("/v1/unlock-requests", json=body)
            return Outcome(
                started,
                time.monotonic(),
                response.status_code,
                response.headers.get("content-type", ""),
                response.json(),
            )

        outcomes += [post(n) for n in range(20)]
        assert {o.status for o in outcomes} == {201}
        _fill(tiny_disk)
        n = 20
        # The WAL reuses space it already has, so commits go on for a while: until they fail.
        while sum(o.status != 201 for o in outcomes) < 5:
            assert n < 3_000, "no write failed on a full disk"
            outcomes.append(post(n))
            n += 1
        for path in tiny_disk.glob("filler*"):
            path.unlink()
        deadline = time.monotonic() + 30
        while (o := post(n)).status != 201:
            outcomes.append(o)
            n += 1
            assert time.monotonic() < deadline, f"no recovery after freeing space: {o.body}"
        recovered = [post(n + 1 + k) for k in range(10)]

    failed = [o for o in outcomes if o.status != 201]
    assert all(_is_unavailable_problem(o) for o in failed), [(o.status, o.body) for o in failed]
    assert {o.status for o in recovered} == {201}, "the service did not recover without a restart"
    acked = acknowledged_indices([*outcomes, *recovered])
    assert rows_without_audit_entry(db) == 0
    log = export_and_verify(service, tmp_path / "bundle")
    assert_acknowledged_kept(service, db, acked, log)
    print(
        f"{len(outcomes) + len(recovered)} requests, {len(acked)} acknowledged, "
        f"{len(failed)} refused with 503 on the full disk; log size {log.size}"
    )
