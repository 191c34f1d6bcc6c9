"""A real HTTP SMS gateway on loopback for the contract test: stdlib ``http.server`` in a thread.

It checks the bearer token (401 otherwise), records every request it receives, and answers from a
script of ``FakeReply`` values (the same type that scripts the fake gateway), then 202. A reply
with ``error="timeout"`` never answers until the server stops; ``error="connection_error"`` closes
the connection without a response; ``trickle_next`` makes replies that drip one byte at a time.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from service.adapters.sms import FakeReply

# Longest a "never answers" handler waits: far beyond any client timeout in the tests, and a
# bound so that a forgotten stop() cannot hang the run.
HANG_LIMIT_S = 30.0
DRIP_LIMIT_S = 2.0


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _Server(ThreadingHTTPServer):
    # Non-daemon handler threads joined by server_close(), so no thread outlives a test.
    daemon_threads = False
    block_on_close = True


class SmsReceiver:
    def __init__(self, token: str) -> None:
        self.token = token
        self.received: list[Received] = []
        self._script: list[FakeReply] = []
        self._trickle = 0
        # Seconds each accepted message waits before its answer: a gateway farther away than
        # loopback (the anti-enumeration padding must match its time, not a loopback's 1 ms).
        self.delay_s = 0.0
        self._lock = threading.Lock()
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.received.append(
                        Received(
                            method="POST",
                            path=self.path,
                            headers={k.lower(): v for k, v in self.headers.items()},
                            body=body,
                        )
                    )
                    authorized = self.headers.get("Authorization") == f"Bearer {receiver.token}"
                    reply = (
                        receiver._script.pop(0) if authorized and receiver._script else FakeReply()
                    )
                    trickle = authorized and receiver._trickle > 0
                    if trickle:
                        receiver._trickle -= 1
                if not authorized:
                    self._answer(401, None)
                elif trickle:
                    self._drip()
                elif reply.error == "timeout":
                    receiver._release.wait(HANG_LIMIT_S)
                    self.close_connection = True  # the client has long given up
                elif reply.error == "connection_error":
                    self.close_connection = True  # no status line at all
                else:
                    if receiver.delay_s:
                        time.sleep(receiver.delay_s)
                    self._answer(reply.status, reply.retry_after)

            def _answer(self, status: int, retry_after: str | None) -> None:
                if status == 204:
                    payload = b""  # 204 has no content (RFC 9110 15.3.5)
                elif status < 300:
                    payload = b'{"status":"ok"}'
                else:
                    payload = b'{"error":"scripted"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                if retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.end_headers()
                self.wfile.write(payload)

            def _drip(self) -> None:
                # A byte every 50 ms: no single read ever waits long enough for a read timeout.
                self.send_response(200)
                self.send_header("Content-Length", "100000")
                self.end_headers()
                # Bounded, so a client without a deadline fails the test instead of hanging it.
                stop_at = time.monotonic() + DRIP_LIMIT_S
                while not receiver._release.wait(0.05) and time.monotonic() < stop_at:
                    try:
                        self.wfile.write(b" ")
                        self.wfile.flush()
                    except OSError:
                        return  # the client gave up, as it should
                self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                return None  # keep the test output clean

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1/sms"

    def script(self, *replies: FakeReply) -> None:
        with self._lock:
            self._script.extend(replies)

    def trickle_next(self, count: int) -> None:
        """The next ``count`` authorized requests get a 200 whose body never finishes."""
        with self._lock:
            self._trickle += count

    def start(self) -> SmsReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
