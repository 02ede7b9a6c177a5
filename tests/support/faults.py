"""A registry that misbehaves on purpose: a proxy on 127.0.0.1 in front of a real one.

Modes (switchable while it runs):
  ok                   forward everything
  reject_manifests     answer manifest PUTs with 400 MANIFEST_INVALID, forward the rest
  dead_after_preflight forward /v2/ and upload-session opening and cancelling (what a
                       preflight does), then hang up on every request from the first blob
                       check on, for good
  fail_first N / status  answer the first N requests with `status` (503, 429...), then forward
"""

from __future__ import annotations

import http.server
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

import requests


@dataclass
class FaultState:
    mode: str = "ok"
    fail_first: int = 0
    status: int = 503
    dead: bool = False
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _handle(self) -> None:
        state = self.server.state
        with state.lock:
            state.requests.append(f"{self.command} {self.path}")
            if state.fail_first > 0:
                state.fail_first -= 1
                failing = True
            else:
                failing = False
            if (
                state.mode == "dead_after_preflight"
                and self.command == "HEAD"
                and "/blobs/" in self.path
            ):
                state.dead = True
            dead = state.dead
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if dead:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if failing:
            self._reply(state.status, b'{"errors":[{"code":"UNAVAILABLE","message":"injected"}]}')
            return
        if (
            state.mode == "reject_manifests"
            and self.command == "PUT"
            and "/manifests/" in self.path
        ):
            self._reply(
                400,
                b'{"errors":[{"code":"MANIFEST_INVALID","message":"rejected by the test proxy"}]}',
            )
            return
        self._forward(body)

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {"Content-Type": "application/json"}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _forward(self, body: bytes) -> None:
        upstream = self.server.upstream
        headers = {
            k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")
        }
        response = requests.request(
            self.command,
            upstream + self.path,
            headers=headers,
            data=body if body else None,
            allow_redirects=False,
            timeout=60,
        )
        self.send_response(response.status_code)
        for key, value in response.headers.items():
            lowered = key.lower()
            if lowered in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                continue
            shown = (
                value.replace(upstream, f"http://{self.server.host}")
                if lowered == "location"
                else value
            )
            self.send_header(key, shown)
        content = response.content
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    state: FaultState
    upstream: str
    host: str


class FaultProxy:
    """Start with `FaultProxy(upstream_url)`; `.host` is what the spec names; `.stop()`."""

    def __init__(self, upstream: str, mode: str = "ok") -> None:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.state = FaultState(mode=mode)
        self.server.upstream = upstream.rstrip("/")
        port = self.server.server_address[1]
        self.host = f"127.0.0.1:{port}"
        self.server.host = self.host
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def state(self) -> FaultState:
        return self.server.state

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
