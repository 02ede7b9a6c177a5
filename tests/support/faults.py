"""Things that misbehave on purpose, on loopback only: a registry proxy and a Docker socket proxy.

`FaultProxy` is an HTTP proxy on 127.0.0.1 in front of a real registry. Its faults, switchable
while it runs (change `proxy.state` under `proxy.state.lock`, or pass them to the constructor):

  mode ok                   forward everything
  mode reject_manifests     answer manifest PUTs with 400 MANIFEST_INVALID, forward the rest
  mode unauthorized_manifests
                            answer manifest PUTs with 401 UNAUTHORIZED and a Basic challenge,
                            as a registry does when the token or password expired midway
                            (blobs are still accepted)
  mode dead_after_preflight forward /v2/ and upload-session opening and cancelling (what a
                            preflight does), then hang up on every request from the first blob
                            check on, for good
  mode dead_after_first_manifest
                            forward everything up to and including the first manifest PUT
                            (or the first `state.manifests_to_live` of them), then hang up
                            on every request, for good
  down_for SECONDS          nothing listens for the first SECONDS after start: connections are
                            refused by the kernel (the port is bound, so nobody else takes it);
                            with down_how="reset" it listens but resets every request instead
  reset_first N             hang up on the next N requests without a reply (a TCP reset)
  fail_first N / status     answer the next N requests with `status` (503, 429...)
  start_on TEXT             reset_first and fail_first wait for the first request whose
                            "METHOD path" contains TEXT ("HEAD /v2/" is the push's first blob
                            check: a preflight never sends a HEAD)
  flaky(p_status, p_reset, seed)
                            each request, at random from a seeded generator: answered with
                            `status` with probability p_status, reset with probability p_reset

Resets are counted before status failures, so `reset_first=2, fail_first=2` fails the next
four requests: two resets, then two 503s. Every injected fault is recorded in
`state.injected` ("503 GET /v2/", "reset PUT /v2/..."), every request that reached the proxy
in `state.requests`.

`UnixSocketProxy` forwards a unix socket (a Docker daemon's) byte for byte, both ways, with a
thread per direction; `close()` cuts every connection at once, as a daemon that dies would.
"""

from __future__ import annotations

import contextlib
import http.server
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

_UNAVAILABLE = b'{"errors":[{"code":"UNAVAILABLE","message":"injected by the test proxy"}]}'
_UNAUTHORIZED = (
    b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required",'
    b'"detail":"token expired (injected by the test proxy)"}]}'
)
_MANIFEST_INVALID = (
    b'{"errors":[{"code":"MANIFEST_INVALID","message":"rejected by the test proxy"}]}'
)


@dataclass
class FaultState:
    mode: str = "ok"
    fail_first: int = 0
    status: int = 503
    reset_first: int = 0
    down_until: float = 0.0  # time.monotonic() until which the proxy is down
    down_how: str = "refuse"  # refuse | reset
    p_status: float = 0.0  # flaky: share of requests answered with `status`
    p_reset: float = 0.0  # flaky: share of requests reset
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    start_on: str | None = None  # counted faults wait for a request containing this
    manifests_forwarded: int = 0
    manifests_to_live: int = 1  # dead_after_first_manifest: manifest PUTs forwarded first
    dead: bool = False
    requests: list[str] = field(default_factory=list)
    injected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def decide(self, command: str, path: str) -> str:
        """What to do with one request: forward, reset, fail, dead, reject or unauthorized."""
        line = f"{command} {path}"
        manifest_put = command == "PUT" and "/manifests/" in path
        with self.lock:
            self.requests.append(line)
            self._update_death(command, path, manifest_put)
            if self.start_on is not None and self.start_on in line:
                self.start_on = None
            action = self._fault()
            if action == "forward" and manifest_put:
                action = {
                    "reject_manifests": "reject",
                    "unauthorized_manifests": "unauthorized",
                }.get(self.mode, "forward")
            if action != "forward":
                shown = str(self.status) if action == "fail" else action
                self.injected.append(f"{shown} {line}")
            return action

    def _update_death(self, command: str, path: str, manifest_put: bool) -> None:
        if self.mode == "dead_after_preflight" and command == "HEAD" and "/blobs/" in path:
            self.dead = True
        if self.mode == "dead_after_first_manifest" and manifest_put:
            if self.manifests_forwarded >= self.manifests_to_live:
                self.dead = True
            self.manifests_forwarded += 1

    def _fault(self) -> str:
        """The fault for the request at hand (lock held): dead, reset, fail or forward."""
        if self.dead:
            return "dead"
        if time.monotonic() < self.down_until:
            return "reset"
        if self.start_on is not None:  # not armed yet
            return "forward"
        if self.reset_first > 0:
            self.reset_first -= 1
            return "reset"
        if self.fail_first > 0:
            self.fail_first -= 1
            return "fail"
        if self.p_status or self.p_reset:
            draw = self.rng.random()
            if draw < self.p_reset:
                return "reset"
            if draw < self.p_reset + self.p_status:
                return "fail"
        return "forward"

    def count(self, prefix: str) -> int:
        """How many injected faults start with `prefix` ("reset", "503", ...)."""
        with self.lock:
            return sum(1 for item in self.injected if item.startswith(prefix))


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _handle(self) -> None:
        state = self.server.state
        action = state.decide(self.command, self.path)
        body = self._body()
        if action == "dead":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if action == "reset":
            self._reset()
            return
        if action == "fail":
            self._reply(state.status, _UNAVAILABLE, {"Content-Type": "application/json"})
            return
        if action == "reject":
            self._reply(400, _MANIFEST_INVALID, {"Content-Type": "application/json"})
            return
        if action == "unauthorized":
            self._reply(
                401,
                _UNAUTHORIZED,
                {
                    "Content-Type": "application/json",
                    "WWW-Authenticate": 'Basic realm="shipit-test"',
                },
            )
            return
        self._forward(body)

    def _body(self) -> bytes:
        """The request's body: `Content-Length` bytes, or a chunked body (RFC 9112, 7.1: a hex
        size line, the data and CRLF, until a chunk of size 0 and the trailer section)."""
        if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""
        parts = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline().strip():  # the trailer section, up to a blank line
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()  # the CRLF after the chunk's data

    def _reset(self) -> None:
        """Hang up without a reply: SO_LINGER 0 makes the close a TCP reset, not a FIN."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # the socket really closes once the handler's files are closed, right after this
        self.connection.close()

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _forward(self, body: bytes) -> None:
        upstream = self.server.upstream
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in ("host", "content-length", "transfer-encoding")
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

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # a client that went away mid-reply is part of the game here


class FaultProxy:
    """Start with `FaultProxy(upstream_url, ...)`; `.host` is what the spec names; `.stop()`.

    `down_for` seconds of downtime start at construction (refused connections, until
    `come_up()` if that comes first). Also a context manager.
    """

    def __init__(
        self,
        upstream: str,
        mode: str = "ok",
        *,
        fail_first: int = 0,
        status: int = 503,
        reset_first: int = 0,
        down_for: float = 0.0,
        down_how: str = "refuse",
        start_on: str | None = None,
    ) -> None:
        if down_how not in ("refuse", "reset"):
            raise ValueError(f"down_how must be refuse or reset, not {down_how!r}")
        self.server = _Server(("127.0.0.1", 0), _Handler, bind_and_activate=False)
        try:
            self.server.server_bind()  # bound but not listening: connections are refused
        except OSError:
            self.server.server_close()
            raise
        self.server.state = FaultState(
            mode=mode,
            fail_first=fail_first,
            status=status,
            reset_first=reset_first,
            start_on=start_on,
        )
        self.server.upstream = upstream.rstrip("/")
        port = self.server.server_address[1]
        self.host = f"127.0.0.1:{port}"
        self.server.host = self.host
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._up = threading.Event()  # set by `come_up`, or when `down_for` has run out
        self._serving = False
        refuse_for = down_for if down_how == "refuse" else 0.0
        if down_for > 0 and down_how == "reset":
            self.server.state.down_until = time.monotonic() + down_for
        if refuse_for <= 0:  # listening before the constructor returns: no race with a client
            self.server.server_activate()
            self._serving = True
        self.thread = threading.Thread(target=self._serve, args=(refuse_for,), daemon=True)
        self.thread.start()

    def _serve(self, refuse_for: float) -> None:
        if not self._serving:
            self._up.wait(refuse_for)
            with self._lock:
                if self._stopping.is_set():
                    return  # stopped while still down
                self._activate()
        self.server.serve_forever(poll_interval=0.1)

    def _activate(self) -> None:
        """listen() (lock held): from now on connections are accepted, queued until served."""
        if not self._serving:
            self.server.server_activate()
            self._serving = True

    def come_up(self) -> None:
        """End a refusing downtime now, whatever `down_for` said: the next connect succeeds.

        Tests that need a registry down for "a while" bring it up on an event (the client's
        second retry, say), so how long the downtime lasts never depends on machine speed.
        """
        with self._lock:
            if not self._stopping.is_set():
                self._activate()
        self._up.set()

    @property
    def state(self) -> FaultState:
        return self.server.state

    def flaky(self, p_status: float, p_reset: float, *, seed: int, status: int = 503) -> None:
        """From now on fail requests at random: `p_status` with `status`, `p_reset` reset."""
        with self.state.lock:
            self.state.p_status = p_status
            self.state.p_reset = p_reset
            self.state.status = status
            self.state.rng = random.Random(seed)

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            serving = self._serving
        self._up.set()  # a thread still waiting for the downtime to end ends now
        if serving:
            self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


class UnixSocketProxy:
    """A unix socket at `path` that forwards every connection to the socket `upstream`.

    `wait_for(marker)` waits until `marker` passed from the upstream to a client (e.g. the
    classic builder's "Running in" once a RUN step started); `close()` stops listening and
    cuts every open connection both ways, as a daemon that went away. Bounded: every thread
    polls with a timeout and is joined with one.
    """

    def __init__(self, upstream: Path, path: Path) -> None:
        self.upstream = upstream
        self.path = path
        self._lock = threading.Lock()
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._markers: dict[bytes, threading.Event] = {}
        self.connections = 0
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        accept = threading.Thread(target=self._accept, name="unix-proxy-accept", daemon=True)
        self._threads.append(accept)
        accept.start()

    def watch(self, marker: bytes) -> threading.Event:
        """An event set once `marker` went from the upstream to a client."""
        with self._lock:
            return self._markers.setdefault(marker, threading.Event())

    def wait_for(self, marker: bytes, timeout: float) -> bool:
        return self.watch(marker).wait(timeout)

    def _accept(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(str(self.upstream))
            except OSError:
                client.close()
                upstream.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self.connections += 1
                self._sockets += [client, upstream]
                pumps = [
                    threading.Thread(
                        target=self._pump, args=(client, upstream, False), daemon=True
                    ),
                    threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True),
                ]
                self._threads += pumps
            for pump in pumps:
                pump.start()

    def _pump(self, source: socket.socket, target: socket.socket, from_upstream: bool) -> None:
        tail = b""
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                break
            if not data:
                break
            if from_upstream:
                tail = self._observe(tail + data)
            try:
                target.sendall(data)
            except OSError:
                break
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    def _observe(self, data: bytes) -> bytes:
        with self._lock:
            markers = list(self._markers.items())
        longest = max((len(m) for m, _ in markers), default=1)
        for marker, event in markers:
            if marker in data:
                event.set()
        return data[-longest:]

    def close(self) -> None:
        """The daemon goes away: no new connections, every open one cut both ways."""
        with self._lock:
            self._closed = True
            sockets = list(self._sockets)
            threads = list(self._threads)
        with contextlib.suppress(OSError):
            self.listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout=5)
        for sock in sockets:
            sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> UnixSocketProxy:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@contextlib.contextmanager
def fault_proxy(upstream: str, mode: str = "ok", **faults: Any) -> Iterator[FaultProxy]:
    """A FaultProxy for the length of a `with` block."""
    proxy = FaultProxy(upstream, mode, **faults)
    try:
        yield proxy
    finally:
        proxy.stop()
