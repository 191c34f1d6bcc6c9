"""The evidence suite (issue 7) runs against the real thing: ``fairunlock serve`` as a process on
loopback, with a key for every role, on SQLite and PostgreSQL. ``ServedService`` can stop and start
the server and kill single workers, for the fault tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from service.db import create_engine
from service.keystore import KeyStore
from service.persistence.api_keys import ApiKeyRepository, Role
from service.schema import upgrade
from service.serving import listening_sockets
from service.settings import Settings
from tests.service.conftest import free_port

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 60.0


def fairunlock(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    """Run the ``fairunlock`` CLI; its stdout, or the test fails with its stderr."""
    done = subprocess.run(
        [str(BIN / "fairunlock"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"fairunlock {' '.join(args)}: {done.stderr}"
    return done.stdout


@dataclass
class ServedService:
    """One ``fairunlock serve`` (supervisor plus workers) on a data directory of its own."""

    env: dict[str, str]
    data_dir: Path
    log_path: Path
    workers: int
    port: int = field(default_factory=free_port)
    keys: dict[Role, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers(self, role: Role = Role.FRONTEND) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role]}"}

    def client(self, role: Role = Role.FRONTEND, timeout: float = 10) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers(role), timeout=timeout)

    def cli(self, *args: str, timeout: float = 120) -> str:
        return fairunlock(self.env, *args, timeout=timeout)

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                str(BIN / "fairunlock"),
                "serve",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
            ],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.wait_live()

    def wait_live(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.process is not None
            assert self.process.poll() is None, self.log_tail()
            with suppress(httpx.TransportError):
                live = httpx.get(f"{self.base_url}/health/live", timeout=1).status_code == 200
                # Every worker listens on a socket of its own (service.serving) once its app
                # has started: a load begun before the last one would reach only the others.
                listening = listening_sockets(self.port)
                if live and (listening is None or len(listening) >= self.workers):
                    return
            assert time.monotonic() < deadline, f"no answer in {timeout_s} s\n{self.log_tail()}"
            time.sleep(0.1)

    def worker_pids(self) -> list[int]:
        """The worker processes (with one worker uvicorn serves in the supervisor itself)."""
        assert self.process is not None
        children = psutil.Process(self.process.pid).children(recursive=False)
        pids = []
        for child in children:
            try:
                # A worker just killed is a zombie until uvicorn reaps it: not a worker any more.
                if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(
                    child.cmdline()
                ):
                    pids.append(child.pid)
            except (psutil.ZombieProcess, psutil.NoSuchProcess):
                continue
        return pids or [self.process.pid]

    def connections_held(self) -> dict[int, int]:
        """Worker pid -> the established client connections it holds on the service's port."""
        return {
            pid: sum(
                1
                for conn in psutil.Process(pid).net_connections(kind="tcp")
                if conn.status == psutil.CONN_ESTABLISHED and conn.laddr.port == self.port
            )
            for pid in self.worker_pids()
        }

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def service_env(data_dir: Path, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAIRUNLOCK_")}
    env["FAIRUNLOCK_DATA_DIR"] = str(data_dir)
    if database_url.startswith("postgresql"):
        env["FAIRUNLOCK_DATABASE_URL"] = database_url
    return env


ServeFactory = Callable[..., ServedService]


@pytest.fixture
def serve_service(tmp_path: Path) -> Iterator[ServeFactory]:
    """``serve_service(database_url, workers=1, env={...}, keys_via_cli=False)``: migrated, the
    development keys made, one API key per role, started; every service started is stopped at
    the end of the test. The set-up runs in this process (seven ``fairunlock`` runs cost ~2-3 s
    each, and the fault tests start several services); ``keys_via_cli`` runs the CLI instead."""
    started: list[ServedService] = []

    def factory(
        database_url: str,
        *,
        workers: int = 1,
        env: dict[str, str] | None = None,
        keys_via_cli: bool = False,
    ) -> ServedService:
        data_dir = tmp_path / f"data-{len(started)}"
        full_env = service_env(data_dir, database_url) | (env or {})
        service = ServedService(
            env=full_env, data_dir=data_dir, log_path=tmp_path / "serve.log", workers=workers
        )
        if keys_via_cli:
            service.cli("db", "upgrade")
            for role in Role:
                out = service.cli(
                    "keys", "create", "--role", role.value, "--name", f"ev-{role.value}"
                )
                key = out.strip().splitlines()[-1]
                assert key.startswith("fu_")
                service.keys[role] = key
        else:
            asyncio.run(_set_up_in_process(service, full_env, data_dir))
        started.append(service)
        service.start()
        return service

    yield factory
    for service in started:
        service.stop()


async def _set_up_in_process(service: ServedService, env: dict[str, str], data_dir: Path) -> None:
    settings = Settings.from_env(env)
    data_dir.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(upgrade, settings.resolved_database_url)
    KeyStore.load(settings)  # creates the development keys once, before the workers race
    engine = create_engine(settings.resolved_database_url)
    try:
        async with engine.begin() as conn:
            repo = ApiKeyRepository(conn)
            for role in Role:
                service.keys[role] = await repo.create(role, f"ev-{role.value}")
    finally:
        await engine.dispose()


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def security_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[object]:
    """One served process (two workers, DEBUG, HTTP SMS gateway, OIDC and face providers on
    loopback) shared by the security evidence modules: races, brute force, enumeration and
    secrets use their own accounts, numbers and addresses, and a start costs ~15 s. SQLite, and
    PostgreSQL unless no server answers. Yields a security_support.SecurityStack."""
    from tests.evidence.security_support import security_stack as stack

    with stack(tmp_path_factory.mktemp(f"security-{request.param}"), request.param) as s:
        yield s
