"""S3 faults for tests: a real HTTP proxy (threads, sockets) in front of moto that misbehaves.

Shared by the integration tests (``tests/integration``) and the scale-out
end-to-end tests (``tests/e2e``). The proxy runs in the test process on
127.0.0.1; another process (a Prefect worker, a flow run, a CLI) uses it by
getting ``proxy.url`` as its ``AWS_ENDPOINT_URL`` (see ``s3_env``).

Two ways to misbehave, both recorded in ``proxy.log``/``proxy.details``:

* queued faults (``inject``): the next N requests matching a predicate;
* a seeded random mode (``chaos``): a fraction of the matching requests, with
  faults drawn from ``CHAOS_ACTIONS``. The draws are a fixed sequence for a
  seed, taken in the order requests arrive (with concurrent clients that order
  is the scheduler's, so a run is reproducible per request order, not per key).
"""

from __future__ import annotations

import http.client
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple

import boto3

KEY, SECRET, REGION = "testing", "testing", "us-east-1"

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "expect"}
ERROR_XML = {
    503: b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
    500: b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>",
}

#: Faults answered without forwarding: moto never sees the request.
BEFORE = ("503", "500", "drop")
#: Faults after forwarding: moto did the request (a PUT is stored) but the client gets a 500 or a closed connection.
AFTER = ("forward_500", "forward_drop")
#: What the random mode draws from, uniformly.
CHAOS_ACTIONS = BEFORE + AFTER


def s3_client(endpoint: str, **kw):
    """A boto3 client for ``endpoint`` with the test credentials (default retries unless ``config=`` says otherwise)."""
    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name=REGION, **kw
    )


def s3_env(endpoint: str) -> dict[str, str]:
    """``os.environ`` plus the AWS variables that point a subprocess's boto3 at ``endpoint`` (and nothing else)."""
    return {
        **os.environ,
        "AWS_ACCESS_KEY_ID": KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


class Request(NamedTuple):
    """One request through the proxy and what the proxy did with it (``"forward"`` or a fault)."""

    method: str
    path: str
    action: str


class Detail(NamedTuple):
    """A request with more context: moto's status when the request was forwarded (``None`` if not), and the time."""

    method: str
    path: str
    action: str
    upstream_status: int | None
    conditional: str | None  # the request's If-None-Match / If-Match header, if any
    at: float


class FaultProxy:
    """A threaded HTTP proxy in front of moto that misbehaves on request.

    ``inject(action, times, when)`` queues a fault for the next ``times``
    requests matching ``when(method, path)``: ``"503"``, ``"500"``,
    ``"drop"`` (read the request, close without answering), ``"tamper_meta"``
    (forward, then change the ``x-amz-meta-sha256`` response header),
    ``"forward_500"`` / ``"forward_drop"`` (forward, so the write happens, then
    answer 500 / close without answering). Queued faults come first.

    ``chaos(rate, seed)`` faults a fraction ``rate`` of the other requests
    matching ``when``, each fault drawn from ``actions`` (default
    ``CHAOS_ACTIONS``: 503, 500, drop, forward_500, forward_drop).
    """

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.rules: list[list] = []
        self.log: list[Request] = []
        self.details: list[Detail] = []
        self.lock = threading.Lock()
        self._chaos: tuple[float, random.Random, tuple[str, ...], Callable[[str, str], bool]] | None = None
        self.seed: int | None = None
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def handle_one(self) -> None:
                proxy.handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = handle_one

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def inject(self, action: str, times: int = 1, when: Callable[[str, str], bool] = lambda m, p: True) -> None:
        with self.lock:
            self.rules.append([when, action, times])

    def chaos(
        self,
        rate: float,
        seed: int = 0,
        actions: tuple[str, ...] = CHAOS_ACTIONS,
        when: Callable[[str, str], bool] = lambda m, p: True,
    ) -> None:
        """Fault a fraction ``rate`` of the requests matching ``when`` from now on (``rate=0`` turns it off)."""
        if not 0 <= rate <= 1 or not actions:
            raise ValueError(f"chaos needs 0 <= rate <= 1 and some actions, got {rate!r}, {actions!r}")
        with self.lock:
            self.seed = seed
            self._chaos = (rate, random.Random(seed), tuple(actions), when) if rate else None

    def requests(self, method: str | None = None) -> list[Request]:
        with self.lock:
            return [r for r in self.log if method is None or r.method == method]

    def injected(self) -> list[Detail]:
        """Every fault the proxy injected so far (queued or random), in order."""
        with self.lock:
            return [d for d in self.details if d.action != "forward"]

    def _action(self, method: str, path: str) -> str:
        with self.lock:
            for rule in self.rules:
                when, action, left = rule
                if left > 0 and when(method, path):
                    rule[2] -= 1
                    return action
            if self._chaos is not None:
                rate, rng, actions, when = self._chaos
                if when(method, path):
                    # Two draws per matching request, always: the sequence depends on the seed and the request count only.
                    hit, pick = rng.random(), rng.choice(actions)
                    if hit < rate:
                        return pick
            return "forward"

    def _record(self, h: BaseHTTPRequestHandler, action: str, upstream_status: int | None) -> None:
        cond = h.headers.get("If-None-Match") or h.headers.get("If-Match")
        with self.lock:
            self.log.append(Request(h.command, h.path, action))
            self.details.append(Detail(h.command, h.path, action, upstream_status, cond, time.time()))

    @staticmethod
    def _read_body(h: BaseHTTPRequestHandler) -> bytes:
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(h.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += h.rfile.read(size)
                h.rfile.readline()
        return h.rfile.read(int(h.headers.get("Content-Length") or 0))

    @staticmethod
    def _drop(h: BaseHTTPRequestHandler) -> None:
        h.close_connection = True
        h.connection.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _error(h: BaseHTTPRequestHandler, status: int) -> None:
        payload = ERROR_XML[status]
        h.send_response_only(status)
        h.send_header("Content-Type", "application/xml")
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(payload)

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        body = self._read_body(h)
        action = self._action(h.command, h.path)
        if action in BEFORE:
            self._record(h, action, None)
            if action == "drop":
                self._drop(h)
            else:
                self._error(h, int(action))
            return
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Content-Length"] = str(len(body))
        conn.request(h.command, h.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        self._record(h, action, resp.status)
        if action == "forward_drop":
            self._drop(h)
            return
        if action == "forward_500":
            self._error(h, 500)
            return
        h.send_response_only(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() in HOP_BY_HOP or k.lower() == "content-length":
                continue
            if action == "tamper_meta" and k.lower() == "x-amz-meta-sha256":
                v = "0" * 64
            h.send_header(k, v)
        h.send_header("Content-Length", resp.getheader("Content-Length", "0") if h.command == "HEAD" else str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)
