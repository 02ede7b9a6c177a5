"""Unit tests of shipit.registry: the pure helpers, and the client against a tiny in-process
HTTP server on 127.0.0.1 (retries, the bearer and basic dances, uploads), so no network."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import http.server
import json
import logging
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from shipit.registry import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    Challenge,
    Credentials,
    Descriptor,
    Endpoint,
    Manifest,
    Registry,
    RegistryError,
    candidate_schemes,
    copy_image,
    is_loopback_host,
    is_retryable_status,
    join_location,
    parse_retry_after,
    parse_www_authenticate,
    redact,
    retry_delay,
    transport,
    with_query,
)
from shipit.registry.auth import _basic_header, challenge_scopes, covers
from shipit.registry.blobs import _wants_chunks
from shipit.registry.door import _same_host
from shipit.registry.oci import DOCKER_FOREIGN_LAYER
from shipit.registry.retry import MAX_BACKOFF, MAX_RETRY_AFTER
from shipit.registry.streaming import bytes_chunks
from shipit.registry.transport import _Authorization

SECRET = "s3cr3t-Pa55word"


# --------------------------------------------------------------------------- pure helpers


class TestWwwAuthenticate:
    def test_bearer_with_a_scope_that_holds_commas(self) -> None:
        header = (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:samalba/my-app:pull,push"'
        )
        assert parse_www_authenticate(header) == [
            Challenge(
                "bearer",
                {
                    "realm": "https://auth.docker.io/token",
                    "service": "registry.docker.io",
                    "scope": "repository:samalba/my-app:pull,push",
                },
            )
        ]

    def test_basic(self) -> None:
        assert parse_www_authenticate('Basic realm="basic-realm"') == [
            Challenge("basic", {"realm": "basic-realm"})
        ]

    def test_scheme_and_names_are_case_insensitive_values_are_not(self) -> None:
        (challenge,) = parse_www_authenticate('BEARER Realm="https://X/Token", Service=Reg')
        assert challenge.scheme == "bearer"
        assert challenge.params == {"realm": "https://X/Token", "service": "Reg"}

    def test_several_challenges_in_one_header(self) -> None:
        header = 'Basic realm="r1", Bearer realm="https://t/token",service="s"'
        assert [c.scheme for c in parse_www_authenticate(header)] == ["basic", "bearer"]
        assert parse_www_authenticate(header)[1].params["service"] == "s"

    def test_escaped_quote_and_spaces(self) -> None:
        (challenge,) = parse_www_authenticate(r'Bearer  realm = "a \"quoted\" realm" , x=1')
        assert challenge.params == {"realm": 'a "quoted" realm', "x": "1"}

    @pytest.mark.parametrize("header", ["", "   ", ",,,", "="])
    def test_nothing_usable(self, header: str) -> None:
        assert all(not c.params for c in parse_www_authenticate(header))


class TestSchemeAndHosts:
    @pytest.mark.parametrize(
        "host",
        ["127.0.0.1:5000", "127.1.2.3", "localhost", "localhost:5000", "[::1]:5000", "::1"],
    )
    def test_loopback_may_fall_back_to_http(self, host: str) -> None:
        assert is_loopback_host(host)
        assert candidate_schemes(Endpoint(host=host)) == ("https", "http")

    @pytest.mark.parametrize(
        "host", ["ghcr.io", "10.0.0.1:5000", "docker.io", "[2001:db8::1]:443", "localhostx"]
    )
    def test_others_speak_https_only(self, host: str) -> None:
        assert not is_loopback_host(host)
        assert candidate_schemes(Endpoint(host=host)) == ("https",)

    def test_insecure_allows_http(self) -> None:
        assert candidate_schemes(Endpoint(host="reg.internal:5000", insecure=True)) == (
            "https",
            "http",
        )

    @pytest.mark.parametrize("host", ["https://ghcr.io", "ghcr.io/org", "", "a b"])
    def test_host_is_not_a_url(self, host: str) -> None:
        with pytest.raises(ValueError, match="host"):
            Endpoint(host=host)


class TestDockerHub:
    @pytest.mark.parametrize("host", ["docker.io", "index.docker.io", "registry-1.docker.io"])
    def test_api_host(self, host: str) -> None:
        assert Endpoint(host=host).api_host == "registry-1.docker.io"

    def test_official_images_live_in_library(self) -> None:
        hub = Endpoint(host="docker.io")
        assert hub.repository("nginx") == "library/nginx"
        assert hub.repository("myorg/app") == "myorg/app"

    def test_other_registries_keep_names(self) -> None:
        assert Endpoint(host="ghcr.io").api_host == "ghcr.io"
        assert Endpoint(host="ghcr.io").repository("app") == "app"

    @pytest.mark.parametrize("name", ["App", "a//b", "-a", "a/", "a:b", "../x", ""])
    def test_bad_repository_names(self, name: str) -> None:
        with pytest.raises(ValueError, match="repository name"):
            Endpoint(host="ghcr.io").repository(name)


class TestRetryDecisions:
    @pytest.mark.parametrize(
        ("status", "retry"),
        [(429, True), (500, True), (502, True), (503, True), (504, True), (501, False),
         (505, False), (400, False), (401, False), (403, False), (404, False), (200, False)],
    )  # fmt: skip
    def test_which_statuses(self, status: int, retry: bool) -> None:
        assert is_retryable_status(status) is retry

    def test_exponential_with_jitter(self) -> None:
        assert [retry_delay(a, backoff=0.5, rng=lambda: 0.0) for a in range(4)] == [
            0.5,
            1.0,
            2.0,
            4.0,
        ]
        assert retry_delay(1, backoff=0.5, rng=lambda: 1.0) == 1.5

    def test_bounded(self) -> None:
        assert retry_delay(50, backoff=1.0, rng=lambda: 1.0) == MAX_BACKOFF
        assert retry_delay(0, backoff=1.0, retry_after=10_000) == MAX_RETRY_AFTER
        assert retry_delay(0, backoff=1.0, retry_after=-5) == 0.0

    def test_retry_after_is_honoured(self) -> None:
        assert retry_delay(3, backoff=0.5, retry_after=7.0) == 7.0

    def test_parse_retry_after(self) -> None:
        assert parse_retry_after("12") == 12.0
        assert parse_retry_after(None) is None
        assert parse_retry_after("soon") is None
        date = email.utils.formatdate(1_000_030, usegmt=True)
        assert parse_retry_after(date, now=1_000_000) == 30.0
        assert parse_retry_after(date, now=2_000_000) == 0.0


class TestLocations:
    base = "https://ghcr.io/v2/org/app/blobs/uploads/"

    def test_relative(self) -> None:
        assert (
            join_location(self.base, "/v2/org/app/blobs/uploads/u1?_state=abc")
            == "https://ghcr.io/v2/org/app/blobs/uploads/u1?_state=abc"
        )

    def test_absolute_elsewhere(self) -> None:
        loc = "https://upload.example/session/u1?sig=x%3D"
        assert join_location(self.base, loc) == loc

    def test_relative_to_the_path(self) -> None:
        assert join_location(self.base, "u1") == "https://ghcr.io/v2/org/app/blobs/uploads/u1"

    def test_query_is_kept_byte_for_byte(self) -> None:
        url = "https://h/v2/a/blobs/uploads/u1?_state=a%2Bb%3D%3D"
        digest = "sha256:" + "0" * 64
        assert with_query(url, {"digest": digest}) == f"{url}&digest=sha256%3A{'0' * 64}"
        assert with_query("https://h/x", {"a": "1", "b": "c/d"}) == "https://h/x?a=1&b=c%2Fd"
        assert with_query("https://h/x?", {"a": "1"}) == "https://h/x?a=1"

    def test_redact_drops_query_strings(self) -> None:
        text = "GET https://s3.example/blob?X-Amz-Signature=abc&token=t failed"
        assert redact(text) == "GET https://s3.example/blob?… failed"


class TestSecretsStayOut:
    creds = Credentials(username="ci-bot", password=SECRET)

    def test_credentials(self) -> None:
        assert SECRET not in repr(self.creds)
        assert SECRET not in str(self.creds)
        assert "ci-bot" in repr(self.creds)

    def test_endpoint_and_registry(self) -> None:
        endpoint = Endpoint(host="ghcr.io", credentials=self.creds)
        assert SECRET not in repr(endpoint)
        assert SECRET not in str(endpoint)
        registry = Registry(endpoint)
        assert SECRET not in repr(registry)
        assert SECRET not in str(registry)

    def test_authorization_helper(self) -> None:
        auth = _Authorization(_basic_header(self.creds))
        assert SECRET not in repr(auth)
        assert base64.b64encode(f"ci-bot:{SECRET}".encode()).decode() not in repr(auth)

    def test_errors(self) -> None:
        error = RegistryError("ghcr.io refused", host="ghcr.io", kind="auth", status=401)
        assert str(error) == "ghcr.io refused"
        assert "kind='auth'" in repr(error)
        assert error.host == "ghcr.io"
        assert error.status == 401


class TestManifest:
    def test_digest_is_of_the_bytes(self) -> None:
        data = b'{"schemaVersion":2,"mediaType":"%s"}' % DOCKER_MANIFEST.encode()
        manifest = Manifest.from_bytes(data)
        assert manifest.digest == "sha256:" + hashlib.sha256(data).hexdigest()
        assert manifest.media_type == DOCKER_MANIFEST
        assert "data" not in repr(manifest)

    def test_wrong_digest_is_refused(self) -> None:
        with pytest.raises(ValueError, match="do not match"):
            Manifest(media_type=DOCKER_MANIFEST, data=b"{}", digest="sha256:" + "0" * 64)

    def test_blobs_and_children(self) -> None:
        d1, d2, d3 = ("sha256:" + c * 64 for c in "123")
        image = Manifest.from_bytes(
            json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": DOCKER_MANIFEST,
                    "config": {"mediaType": "c", "digest": d1, "size": 3},
                    "layers": [
                        {"mediaType": "l", "digest": d2, "size": 5},
                        {
                            "mediaType": DOCKER_FOREIGN_LAYER,
                            "digest": d3,
                            "size": 9,
                            "urls": ["https://mcr.microsoft.com/x"],
                        },
                    ],
                }
            ).encode()
        )
        assert [b.digest for b in image.blobs()] == [d1, d2, d3]
        assert [b.distributable for b in image.blobs()] == [True, True, False]
        assert image.children() == ()
        index = Manifest.from_bytes(
            json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_INDEX,
                    "manifests": [
                        {
                            "mediaType": DOCKER_MANIFEST,
                            "digest": d1,
                            "size": 7,
                            "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
                        }
                    ],
                }
            ).encode()
        )
        assert index.is_index
        assert index.blobs() == ()
        (child,) = index.children()
        assert (child.digest, child.platform) == (d1, "linux/arm64/v8")

    @pytest.mark.parametrize(
        "doc",
        [
            '{"mediaType": "x", "layers": {}}',
            '{"mediaType": "x", "layers": [{"digest": "md5:1", "size": 1}]}',
            '{"mediaType": "x", "layers": [{"digest": "sha256:%s", "size": -1}]}' % ("a" * 64),
        ],
    )
    def test_bad_descriptors(self, doc: str) -> None:
        with pytest.raises(ValueError, match=r"manifest|descriptor"):
            Manifest.from_bytes(doc.encode()).blobs()


# --------------------------------------------------------------------------- a tiny server


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    cut: bool = False  # send half the body, then drop the connection


RESET = None  # a route returns RESET to cut the connection without an answer
Route = Callable[[Seen], "Reply | None"]


class FakeServer:
    """http.server on 127.0.0.1 in a thread; every request goes to `route`, and is recorded."""

    def __init__(self, route: Route) -> None:
        self.route = route
        self.seen: list[Seen] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True
            wbufsize = 64 * 1024  # headers and body in one write (flushed after each request)

            def handle(self) -> None:
                # a TLS ClientHello (the client tries HTTPS first on loopback): hang up at once
                try:
                    first = self.connection.recv(1, socket.MSG_PEEK)
                except OSError:
                    return
                if first == b"\x16":
                    return
                super().handle()

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                seen = Seen(
                    self.command,
                    url.path,
                    parse_qs(url.query, keep_blank_values=True),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                server.seen.append(seen)
                reply = server.route(seen)
                if reply is None:
                    linger = struct.pack("ii", 1, 0)
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    self.close_connection = True
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if reply.cut:
                    self.wfile.write(reply.body[: len(reply.body) // 2])
                    self.wfile.flush()
                    linger = struct.pack("ii", 1, 0)
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    self.close_connection = True
                    return
                self.wfile.write(reply.body)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _serve

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def calls(self, method: str, path_prefix: str = "") -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path.startswith(path_prefix)]


@pytest.fixture
def serve() -> Iterator[Callable[[Route], FakeServer]]:
    servers: list[FakeServer] = []

    def start(route: Route) -> FakeServer:
        server = FakeServer(route)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits the client asks for, instead of waiting."""
    waits: list[float] = []
    monkeypatch.setattr(transport, "_sleep", waits.append)
    return waits


def manifest_reply(data: bytes, media_type: str = DOCKER_MANIFEST) -> Reply:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return Reply(200, {"Content-Type": media_type, "Docker-Content-Digest": digest}, data)


MANIFEST = b'{"schemaVersion":2,"mediaType":"%s","config":null}' % DOCKER_MANIFEST.encode()


def scripted(*replies: Reply | None, then: Reply | None = None) -> Route:
    """Answers /v2/ with 200 and everything else with `replies` in order, then `then`."""
    queue = list(replies)

    def route(seen: Seen) -> Reply | None:
        if seen.path == "/v2/":
            return Reply(200)
        if queue:
            return queue.pop(0)
        return then

    return route


# --------------------------------------------------------------------------- retries


class TestRetries:
    def test_503_twice_then_200(
        self, serve: Callable[[Route], FakeServer], sleeps: list[float]
    ) -> None:
        server = serve(scripted(Reply(503), Reply(503), manifest_reply(MANIFEST)))
        notes: list[str] = []
        registry = Registry(Endpoint(host=server.host), backoff=0.5, on_retry=notes.append)
        manifest = registry.manifest("app", "v1")
        assert manifest.data == MANIFEST
        assert len(server.calls("GET", "/v2/app/manifests/v1")) == 3
        assert len(notes) == 2
        assert all(server.host in n and "503" in n and "manifest app:v1" in n for n in notes)
        assert "retry 1/3" in notes[0]
        assert "retry 2/3" in notes[1]
        assert 0.5 <= sleeps[0] <= 0.75
        assert 1.0 <= sleeps[1] <= 1.5

    def test_429_honours_retry_after_within_bounds(
        self, serve: Callable[[Route], FakeServer], sleeps: list[float]
    ) -> None:
        server = serve(
            scripted(
                Reply(429, {"Retry-After": "7"}),
                Reply(429, {"Retry-After": "100000"}),
                manifest_reply(MANIFEST),
            )
        )
        Registry(Endpoint(host=server.host)).manifest("app", "v1")
        assert sleeps == [7.0, MAX_RETRY_AFTER]

    def test_connection_reset_is_retried(
        self, serve: Callable[[Route], FakeServer], sleeps: list[float]
    ) -> None:
        server = serve(scripted(RESET, manifest_reply(MANIFEST)))
        notes: list[str] = []
        registry = Registry(Endpoint(host=server.host), on_retry=notes.append)
        assert registry.manifest("app", "v1").data == MANIFEST
        assert len(notes) == 1
        assert "cannot talk to" in notes[0]
        assert len(sleeps) == 1

    def test_gives_up_after_retries(
        self, serve: Callable[[Route], FakeServer], sleeps: list[float]
    ) -> None:
        server = serve(scripted(then=Reply(503)))
        with pytest.raises(RegistryError) as caught:
            Registry(Endpoint(host=server.host), retries=2).manifest("app", "v1")
        assert caught.value.kind == "server"
        assert caught.value.status == 503
        assert server.host in str(caught.value)
        assert len(server.calls("GET", "/v2/app/")) == 3
        assert len(sleeps) == 2

    def test_client_errors_are_not_retried(
        self, serve: Callable[[Route], FakeServer], sleeps: list[float]
    ) -> None:
        server = serve(scripted(then=Reply(404, body=b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')))
        with pytest.raises(RegistryError) as caught:
            Registry(Endpoint(host=server.host)).manifest("app", "v1")
        assert caught.value.kind == "not_found"
        assert "MANIFEST_UNKNOWN" in str(caught.value)
        assert sleeps == []

    def test_connection_refused_is_a_connect_error(self, sleeps: list[float]) -> None:
        with socket.socket() as s:
            # bound but not listening: refused, and no one else can listen there meanwhile
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            registry = Registry(Endpoint(host=f"127.0.0.1:{port}"), retries=1)
            with pytest.raises(RegistryError) as caught:
                registry.check_push_access("app")
        assert caught.value.kind == "connect"
        assert f"127.0.0.1:{port}" in str(caught.value)
        assert len(sleeps) == 1

    def test_unknown_host_is_a_dns_error(self, sleeps: list[float]) -> None:
        with pytest.raises(RegistryError) as caught:
            Registry(Endpoint(host="registry.shipit-test.invalid"), retries=0).check_push_access(
                "app"
            )
        assert caught.value.kind == "dns"
        assert "registry.shipit-test.invalid" in str(caught.value)


class TestManifestChecks:
    def test_digest_header_must_match_the_bytes(self, serve: Callable[[Route], FakeServer]) -> None:
        lying = Reply(
            200,
            {"Content-Type": DOCKER_MANIFEST, "Docker-Content-Digest": "sha256:" + "1" * 64},
            MANIFEST,
        )
        server = serve(scripted(lying))
        with pytest.raises(RegistryError, match="does not match its digest") as caught:
            Registry(Endpoint(host=server.host)).manifest("app", "v1")
        assert caught.value.kind == "protocol"

    def test_media_type_from_the_document_when_the_header_is_vague(
        self, serve: Callable[[Route], FakeServer]
    ) -> None:
        server = serve(scripted(Reply(200, {"Content-Type": "application/json"}, MANIFEST)))
        manifest = Registry(Endpoint(host=server.host)).manifest("app", "v1")
        assert manifest.media_type == DOCKER_MANIFEST

    def test_put_checks_the_reported_digest(self, serve: Callable[[Route], FakeServer]) -> None:
        # the HEAD that asks where the tag points first (404: nowhere yet), then the PUT
        server = serve(
            scripted(Reply(404), Reply(201, {"Docker-Content-Digest": "sha256:" + "2" * 64}))
        )
        with pytest.raises(RegistryError, match="rewrote the manifest"):
            Registry(Endpoint(host=server.host)).put_manifest(
                "app", "v1", Manifest.from_bytes(MANIFEST)
            )
        put = server.calls("PUT")[0]
        assert put.body == MANIFEST
        assert put.headers["content-type"] == DOCKER_MANIFEST

    def test_tags_follow_pages(self, serve: Callable[[Route], FakeServer]) -> None:
        def route(seen: Seen) -> Reply:
            if seen.path == "/v2/":
                return Reply(200)
            if "last" not in seen.query:
                link = '</v2/app/tags/list?last=b&n=2>; rel="next"'
                return Reply(200, {"Link": link}, b'{"name":"app","tags":["a","b"]}')
            return Reply(200, {}, b'{"name":"app","tags":["c"]}')

        server = serve(route)
        assert Registry(Endpoint(host=server.host)).tags("app") == ["a", "b", "c"]


# --------------------------------------------------------------------------- auth


class TokenService:
    """A registry that wants bearer tokens, and its token endpoint on the same server."""

    def __init__(self, username: str = "bot", password: str = SECRET) -> None:
        self.expected = base64.b64encode(f"{username}:{password}".encode()).decode()
        self.issued: list[tuple[str, list[str]]] = []
        self.valid: set[str] = set()
        self.expire_next = False
        self.host = ""

    def challenge(self, scope: str | None) -> Reply:
        header = f'Bearer realm="http://{self.host}/token",service="fake"'
        if scope:
            header += f',scope="{scope}"'
        body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
        return Reply(401, {"WWW-Authenticate": header}, body)

    def __call__(self, seen: Seen) -> Reply:
        if seen.path == "/token":
            if seen.headers.get("authorization") != f"Basic {self.expected}":
                return Reply(401, {}, b'{"details":"bad credentials"}')
            token = f"tok-{len(self.issued) + 1}"
            self.issued.append((token, seen.query.get("scope", [])))
            self.valid.add(token)
            return Reply(200, {}, json.dumps({"token": token, "expires_in": 300}).encode())
        auth = seen.headers.get("authorization", "")
        token = auth.removeprefix("Bearer ")
        if not auth.startswith("Bearer ") or token not in self.valid:
            return self.challenge(None if seen.path == "/v2/" else "repository:app:pull,push")
        if self.expire_next:
            self.expire_next = False
            self.valid.discard(token)
            return self.challenge(None if seen.path == "/v2/" else "repository:app:pull,push")
        if seen.path == "/v2/":
            return Reply(200, {}, b"{}")
        if seen.method == "POST" and seen.path == "/v2/app/blobs/uploads/":
            return Reply(202, {"Location": f"/v2/app/blobs/uploads/{uuid.uuid4()}"})
        if seen.method == "DELETE":
            return Reply(204)
        return Reply(404)


class TestBearer:
    def test_the_dance_with_scope_and_basic_credentials(
        self, serve: Callable[[Route], FakeServer]
    ) -> None:
        tokens = TokenService()
        server = serve(tokens)
        tokens.host = server.host
        creds = Credentials(username="bot", password=SECRET)
        registry = Registry(Endpoint(host=server.host, credentials=creds))
        registry.check_push_access("app")
        scopes = [scope for _, scope in tokens.issued]
        assert ["repository:app:pull,push"] in scopes
        assert len(server.calls("DELETE")) == 1  # the probe upload was cancelled

    def test_tokens_are_cached_per_scope(self, serve: Callable[[Route], FakeServer]) -> None:
        tokens = TokenService()
        server = serve(tokens)
        tokens.host = server.host
        creds = Credentials(username="bot", password=SECRET)
        registry = Registry(Endpoint(host=server.host, credentials=creds))
        registry.check_push_access("app")
        issued = len(tokens.issued)
        registry.check_push_access("app")
        assert len(tokens.issued) == issued

    def test_a_refused_token_is_refreshed_once(self, serve: Callable[[Route], FakeServer]) -> None:
        tokens = TokenService()
        server = serve(tokens)
        tokens.host = server.host
        creds = Credentials(username="bot", password=SECRET)
        registry = Registry(Endpoint(host=server.host, credentials=creds))
        registry.check_push_access("app")
        issued = len(tokens.issued)
        tokens.expire_next = True
        registry.check_push_access("app")
        assert len(tokens.issued) == issued + 1

    def test_wrong_password(self, serve: Callable[[Route], FakeServer]) -> None:
        tokens = TokenService()
        server = serve(tokens)
        tokens.host = server.host
        wrong = Credentials(username="bot", password="not-" + SECRET)
        with pytest.raises(RegistryError) as caught:
            Registry(Endpoint(host=server.host, credentials=wrong)).check_push_access("app")
        assert caught.value.kind == "auth"
        assert caught.value.host == server.host
        assert server.host in str(caught.value)
        assert "'bot'" in str(caught.value)
        assert SECRET not in str(caught.value)
        assert SECRET not in repr(caught.value)
        assert server.calls("POST") == []  # nothing was started

    def test_no_credentials_for_a_push(self, serve: Callable[[Route], FakeServer]) -> None:
        def route(seen: Seen) -> Reply:
            if seen.path == "/token":  # anonymous tokens that cannot push
                return Reply(200, {}, b'{"access_token": "anon"}')
            if seen.path == "/v2/" and seen.headers.get("authorization") == "Bearer anon":
                return Reply(200)
            if seen.path == "/v2/":
                return Reply(401, {"WWW-Authenticate": f'Bearer realm="http://{host}/token"'})
            return Reply(403, {}, b'{"errors":[{"code":"DENIED","message":"no push"}]}')

        server = serve(route)
        host = server.host
        with pytest.raises(RegistryError) as caught:
            Registry(Endpoint(host=host)).check_push_access("org/app")
        assert caught.value.kind == "denied"
        assert caught.value.status == 403
        assert "anonymous" in str(caught.value)
        assert "DENIED: no push" in str(caught.value)

    def test_credentials_never_go_to_a_plain_http_realm_elsewhere(
        self, serve: Callable[[Route], FakeServer]
    ) -> None:
        server = serve(
            lambda seen: Reply(
                401, {"WWW-Authenticate": 'Bearer realm="http://auth.example/token"'}
            )
        )
        creds = Credentials(username="bot", password=SECRET)
        with pytest.raises(RegistryError, match="plain HTTP") as caught:
            Registry(Endpoint(host=server.host, credentials=creds)).check_push_access("app")
        assert caught.value.kind == "protocol"


class TestBasic:
    def route(self, seen: Seen) -> Reply:
        good = "Basic " + base64.b64encode(f"bot:{SECRET}".encode()).decode()
        if seen.headers.get("authorization") != good:
            return Reply(401, {"WWW-Authenticate": 'Basic realm="fake"'})
        if seen.method == "POST":
            return Reply(202, {"Location": "/v2/app/blobs/uploads/u1?_state=x"})
        return Reply(200 if seen.method != "DELETE" else 204)

    def test_basic_after_a_challenge(self, serve: Callable[[Route], FakeServer]) -> None:
        server = serve(self.route)
        creds = Credentials(username="bot", password=SECRET)
        Registry(Endpoint(host=server.host, credentials=creds)).check_push_access("app")
        # the probe of /v2/ learns the challenge; every request after it sends basic
        assert [s.headers.get("authorization") is None for s in server.seen] == [
            True,
            False,
            False,
            False,
        ]
        assert [s.method for s in server.seen] == ["GET", "GET", "POST", "DELETE"]

    def test_wrong_basic_credentials(self, serve: Callable[[Route], FakeServer]) -> None:
        server = serve(self.route)
        creds = Credentials(username="bot", password="nope")
        with pytest.raises(RegistryError) as caught:
            Registry(Endpoint(host=server.host, credentials=creds)).check_push_access("app")
        assert caught.value.kind == "auth"
        assert caught.value.status == 401
        assert "nope" not in str(caught.value)

    def test_missing_credentials(self, serve: Callable[[Route], FakeServer]) -> None:
        server = serve(self.route)
        with pytest.raises(RegistryError, match="asks for credentials") as caught:
            Registry(Endpoint(host=server.host)).check_push_access("app")
        assert caught.value.kind == "auth"


# --------------------------------------------------------------------------- scheme choice


class TestScheme:
    def test_loopback_falls_back_to_http(self, serve: Callable[[Route], FakeServer]) -> None:
        server = serve(scripted(manifest_reply(MANIFEST)))
        registry = Registry(Endpoint(host=server.host))
        registry.manifest("app", "v1")
        assert registry._scheme == "http"

    def test_insecure_warns_once(
        self, serve: Callable[[Route], FakeServer], caplog: pytest.LogCaptureFixture
    ) -> None:
        server = serve(scripted(then=manifest_reply(MANIFEST)))
        registry = Registry(Endpoint(host=server.host, insecure=True))
        with caplog.at_level(logging.DEBUG, logger="shipit.registry"):
            registry.manifest("app", "v1")
            registry.manifest("app", "v2")
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert server.host in warnings[0].getMessage()

    def test_debug_log_has_no_secrets_or_queries(
        self, serve: Callable[[Route], FakeServer], caplog: pytest.LogCaptureFixture
    ) -> None:
        server = serve(TestBasic().route)
        creds = Credentials(username="bot", password=SECRET)
        with caplog.at_level(logging.DEBUG, logger="shipit.registry"):
            Registry(Endpoint(host=server.host, credentials=creds)).check_push_access("app")
        text = "\n".join(r.getMessage() for r in caplog.records)
        assert "POST http://" in text
        assert SECRET not in text
        assert "_state" not in text


# --------------------------------------------------------------------------- uploads


class FakeRegistry:
    """Just enough of the distribution API for uploads, with failures to order."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, bytes] = {}
        self.uploads: dict[str, bytearray] = {}
        self.fail_puts = 0
        self.reject_monolithic = False
        self.refuse_mounts = False

    def __call__(self, seen: Seen) -> Reply:
        parts = seen.path.split("/")
        if seen.path == "/v2/":
            return Reply(200)
        if "/manifests/" in seen.path:
            return self.manifest(parts[-1], seen)
        if seen.method == "HEAD" and "/blobs/" in seen.path:
            return Reply(200 if parts[-1] in self.blobs else 404)
        if seen.method == "POST":
            mount = seen.query.get("mount", [None])[0]
            if mount and mount in self.blobs and not self.refuse_mounts:
                return Reply(201, {"Docker-Content-Digest": mount})
            session = str(uuid.uuid4())
            self.uploads[session] = bytearray()
            return Reply(202, {"Location": f"/v2/app/blobs/uploads/{session}?_state=s%2B1"})
        session = parts[-1]
        if seen.method == "PATCH":
            assert seen.query["_state"] == ["s+1"]
            start = int(seen.headers["content-range"].split("-")[0])
            assert start == len(self.uploads[session])
            self.uploads[session] += seen.body
            return Reply(202, {"Location": f"/v2/app/blobs/uploads/{session}?_state=s%2B1"})
        if seen.method == "PUT":
            return self.put(session, seen)
        if seen.method == "DELETE":
            self.uploads.pop(session, None)
            return Reply(204)
        return Reply(404)

    def manifest(self, reference: str, seen: Seen) -> Reply:
        if seen.method == "PUT":
            digest = "sha256:" + hashlib.sha256(seen.body).hexdigest()
            self.manifests[reference] = self.manifests[digest] = seen.body
            return Reply(201, {"Docker-Content-Digest": digest})
        if reference in self.manifests:
            return manifest_reply(self.manifests[reference])
        return Reply(404)

    def put(self, session: str, seen: Seen) -> Reply:
        assert seen.query["_state"] == ["s+1"]
        if self.fail_puts:
            self.fail_puts -= 1
            return Reply(500)
        if self.reject_monolithic and seen.body:
            return Reply(413)
        data = bytes(self.uploads.pop(session)) + seen.body
        digest = seen.query["digest"][0]
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            return Reply(400, {}, b'{"errors":[{"code":"DIGEST_INVALID"}]}')
        self.blobs[digest] = data
        return Reply(201, {"Docker-Content-Digest": digest})


class TestUploads:
    data = bytes(range(256)) * 12_000  # about 3 MB, several stream chunks

    def test_monolithic_with_a_location_that_has_a_query(
        self, serve: Callable[[Route], FakeServer]
    ) -> None:
        fake = FakeRegistry()
        server = serve(fake)
        blob = Registry(Endpoint(host=server.host)).upload_blob("app", self.data)
        assert fake.blobs[blob.digest] == self.data
        (put,) = server.calls("PUT")
        assert put.headers["content-length"] == str(len(self.data))
        assert "transfer-encoding" not in put.headers

    def test_an_upload_that_fails_restarts_its_session(
        self, serve: Callable[[Route], FakeServer], sleeps: list[float]
    ) -> None:
        fake = FakeRegistry()
        fake.fail_puts = 1
        server = serve(fake)
        notes: list[str] = []
        registry = Registry(Endpoint(host=server.host), on_retry=notes.append)
        blob = registry.upload_blob("app", self.data)
        assert fake.blobs[blob.digest] == self.data
        assert len(server.calls("POST")) == 2  # a new session
        assert len(server.calls("DELETE")) == 1  # the broken one cancelled
        assert len(notes) == 1
        assert "new upload session" in notes[0]

    def test_chunks_when_the_registry_rejects_one_big_body(
        self, serve: Callable[[Route], FakeServer]
    ) -> None:
        fake = FakeRegistry()
        fake.reject_monolithic = True
        server = serve(fake)
        registry = Registry(Endpoint(host=server.host))
        blob = registry.upload_blob("app", self.data)
        assert fake.blobs[blob.digest] == self.data
        assert len(server.calls("PATCH")) == 1  # 3 MB fits one 16 MB chunk
        registry._chunk_size = 1024 * 1024
        other = registry.upload_blob("app", self.data[::-1])
        assert fake.blobs[other.digest] == self.data[::-1]
        ranges = [s.headers["content-range"] for s in server.calls("PATCH")[1:]]
        assert ranges == ["0-1048575", "1048576-2097151", "2097152-3071999"]

    def test_empty_blob(self, serve: Callable[[Route], FakeServer]) -> None:
        fake = FakeRegistry()
        server = serve(fake)
        blob = Registry(Endpoint(host=server.host)).upload_blob("app", b"")
        assert blob.digest == "sha256:" + hashlib.sha256(b"").hexdigest()
        assert fake.blobs[blob.digest] == b""

    def test_file_blob(self, serve: Callable[[Route], FakeServer], tmp_path: Path) -> None:
        fake = FakeRegistry()
        server = serve(fake)
        path = tmp_path / "layer.bin"
        path.write_bytes(self.data)
        blob = Registry(Endpoint(host=server.host)).upload_blob("app", path)
        assert fake.blobs[blob.digest] == self.data
        assert blob.size == len(self.data)

    def test_a_refused_mount_uploads_into_the_session_it_opened(
        self, serve: Callable[[Route], FakeServer]
    ) -> None:
        fake = FakeRegistry()
        server = serve(fake)
        registry = Registry(Endpoint(host=server.host))
        blob = registry.upload_blob("app", self.data)
        fake.refuse_mounts = True
        fake.blobs.pop(blob.digest)  # the target repo lacks it, the source still serves it...
        source = bytes_chunks(self.data)
        session = registry._mount("app", blob.digest, "other")
        assert session is not None
        posts = len(server.calls("POST"))
        registry._upload(
            "app", blob, source, origin="test", origin_host=server.host, session=session
        )
        assert len(server.calls("POST")) == posts  # no second session
        assert fake.blobs[blob.digest] == self.data

    def test_a_damaged_source_never_completes_an_upload(
        self, serve: Callable[[Route], FakeServer]
    ) -> None:
        fake = FakeRegistry()
        server = serve(fake)
        registry = Registry(Endpoint(host=server.host))
        claimed = Descriptor(
            media_type="x", digest="sha256:" + hashlib.sha256(b"good").hexdigest(), size=4
        )
        with pytest.raises(RegistryError, match="does not match") as caught:
            registry._upload("app", claimed, bytes_chunks(b"evil"), origin="src", origin_host="src")
        assert caught.value.kind == "protocol"
        assert caught.value.host == "src"
        assert fake.blobs == {}
        assert all(not s.body for s in server.calls("PUT"))


class TestCredentialsStayHome:
    def test_same_host(self) -> None:
        assert _same_host("https://ghcr.io/v2/x", "ghcr.io")
        assert _same_host("https://ghcr.io:443/v2/x", "ghcr.io")
        assert _same_host("http://127.0.0.1:5000/v2/", "127.0.0.1:5000")
        assert not _same_host("https://storage.example/x", "ghcr.io")
        assert not _same_host("http://127.0.0.1:5001/v2/", "127.0.0.1:5000")
        assert not _same_host("https://ghcr.io.evil/v2/", "ghcr.io")

    def test_no_authorization_for_an_upload_location_elsewhere(
        self, serve: Callable[[Route], FakeServer]
    ) -> None:
        fake = FakeRegistry()
        storage = serve(fake)
        good = "Basic " + base64.b64encode(f"bot:{SECRET}".encode()).decode()

        def registry_route(seen: Seen) -> Reply:
            if seen.headers.get("authorization") != good:
                return Reply(401, {"WWW-Authenticate": 'Basic realm="fake"'})
            reply = fake(seen)
            if seen.method == "POST":
                path = reply.headers["Location"]
                reply.headers["Location"] = f"http://{storage.host}{path}"
            return reply

        server = serve(registry_route)
        creds = Credentials(username="bot", password=SECRET)
        blob = Registry(Endpoint(host=server.host, credentials=creds)).upload_blob("app", b"x")
        assert fake.blobs[blob.digest] == b"x"
        (put,) = storage.calls("PUT")
        assert "authorization" not in put.headers


@pytest.mark.parametrize(
    ("status", "message", "chunks"),
    [(413, "", True), (405, "", True), (501, "", True), (400, "x: DIGEST_INVALID: y", True),
     (400, "x: BLOB_UPLOAD_INVALID", False), (500, "", False), (401, "", False)],
)  # fmt: skip
def test_when_to_fall_back_to_chunks(status: int, message: str, chunks: bool) -> None:
    error = RegistryError(message, host="h", kind="protocol", status=status)
    assert _wants_chunks(error) is chunks


def test_a_source_that_breaks_off_midway_restarts_the_upload(
    serve: Callable[[Route], FakeServer], sleeps: list[float]
) -> None:
    layer = bytes(range(256)) * 8_000
    config = b'{"os":"linux"}'
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "c", "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": "l", "digest": layer_digest, "size": len(layer)}],
        }
    ).encode()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    blobs = {layer_digest: layer, config_digest: config}
    broken = [layer_digest]

    def source_route(seen: Seen) -> Reply:
        name = seen.path.rsplit("/", 1)[-1]
        if seen.path == "/v2/":
            return Reply(200)
        if "/manifests/" in seen.path:
            return manifest_reply(manifest)
        if name in broken:
            broken.remove(name)
            return Reply(200, {}, blobs[name], cut=True)
        return Reply(200, {}, blobs[name])

    source_server, target_fake = serve(source_route), FakeRegistry()
    target_server = serve(target_fake)
    notes: list[str] = []
    target = Registry(Endpoint(host=target_server.host), on_retry=notes.append)

    result = copy_image(
        Registry(Endpoint(host=source_server.host)), "src", digest, target, "app", ["v1"]
    )

    assert target_fake.blobs == blobs
    assert target_fake.manifests["v1"] == manifest
    assert result.digest == digest
    assert set(result.blobs_copied) == set(blobs)
    assert result.bytes_copied == len(layer) + len(config)
    assert len(notes) == 1
    assert source_server.host in notes[0]
    assert "broke off" in notes[0], notes
    assert "new upload session" in notes[0]
    assert len(target_fake.uploads) == 0  # the broken session was cancelled


# --------------------------------------------------------------------------- token scopes


class ScopedRegistry:
    """A registry with token auth that checks scopes as distribution 2.8 does: what each
    request needs (pull to read, pull and push to write, delete to delete, the source's pull
    with a mount), a challenge naming it, `error="insufficient_scope"` when a token lacks it,
    and a token service that grants the intersection of what was asked for and what the
    account may do (registry/handlers/app.go, docs/spec/auth/token.md)."""

    def __init__(
        self, allowed: dict[str, set[str]], *, needs_for_head: str = "pull", slow: float = 0.0
    ) -> None:
        self.allowed = allowed  # repository -> actions the account `bot` may do
        self.needs_for_head = needs_for_head
        self.slow = slow
        self.asked: list[list[str]] = []
        self.granted: dict[str, dict[str, set[str]]] = {}
        self.host = ""
        self._lock = threading.Lock()

    def _challenge(self, needed: list[str], token: str | None) -> Reply:
        header = f'Bearer realm="http://{self.host}/token",service="fake"'
        if needed:
            header += f',scope="{" ".join(needed)}"'
        if token is not None:
            header += ',error="insufficient_scope"'
        body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
        return Reply(401, {"WWW-Authenticate": header}, body)

    def _needed(self, seen: Seen) -> list[str]:
        repo = seen.path.removeprefix("/v2/").split("/blobs/")[0].split("/manifests/")[0]
        if seen.method == "DELETE":
            return [f"repository:{repo}:delete"]
        if seen.method in ("GET", "HEAD"):
            return [f"repository:{repo}:{self.needs_for_head}"]
        needed = [f"repository:{repo}:pull,push"]
        if "mount" in seen.query:
            needed.append(f"repository:{seen.query['from'][0]}:pull")
        return needed

    def __call__(self, seen: Seen) -> Reply:
        if seen.path == "/token":
            scopes = [s for v in seen.query.get("scope", []) for s in v.split()]
            if self.slow:
                time.sleep(self.slow)
            grants: dict[str, set[str]] = {}
            for scope in scopes:
                _, name, actions = scope.split(":")
                grants[name] = set(actions.split(",")) & self.allowed.get(name, set())
            with self._lock:
                self.asked.append(scopes)
                token = f"tok-{len(self.asked)}"
                self.granted[token] = grants
            return Reply(200, {}, json.dumps({"token": token, "expires_in": 300}).encode())
        auth = seen.headers.get("authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        grants = self.granted.get(token or "")
        if grants is None:
            return self._challenge([] if seen.path == "/v2/" else self._needed(seen), None)
        if seen.path == "/v2/":
            return Reply(200, {}, b"{}")
        needed = self._needed(seen)
        for scope in needed:
            _, name, actions = scope.split(":")
            if not set(actions.split(",")) <= grants.get(name, set()):
                return self._challenge(needed, token)
        if seen.method == "POST":
            if "mount" in seen.query:
                return Reply(201, {"Location": seen.path})
            return Reply(202, {"Location": f"{seen.path}{uuid.uuid4()}"})
        if seen.method == "DELETE":
            return Reply(204)
        return Reply(404)


def scoped(
    serve: Callable[[Route], FakeServer], allowed: dict[str, set[str]], **options: Any
) -> tuple[ScopedRegistry, Registry]:
    fake = ScopedRegistry(allowed, **options)
    server = serve(fake)
    fake.host = server.host
    creds = Credentials(username="bot", password=SECRET)
    return fake, Registry(Endpoint(host=server.host, credentials=creds), retries=0)


class TestScopes:
    def test_each_request_asks_for_what_it_needs_and_a_cancel_for_delete(
        self, serve: Callable[[Route], FakeServer]
    ) -> None:
        fake, registry = scoped(serve, {"team/app": {"pull", "push", "delete"}})
        registry.check_push_access("team/app")
        assert fake.asked == [[], ["repository:team/app:pull,push"], ["repository:team/app:delete"]]

    def test_a_challenge_is_answered_with_exactly_the_scopes_it_names(
        self, serve: Callable[[Route], FakeServer]
    ) -> None:
        # a registry that wants push even to read (the client cannot know before it asks)
        fake, registry = scoped(serve, {"team/app": {"pull", "push"}}, needs_for_head="pull,push")
        assert not registry.has_blob("team/app", "sha256:" + "a" * 64)
        assert fake.asked == [["repository:team/app:pull"], ["repository:team/app:pull,push"]]

    def test_a_scope_asked_for_and_not_granted_is_a_missing_permission(
        self, serve: Callable[[Route], FakeServer]
    ) -> None:
        fake, registry = scoped(serve, {"team/app": {"pull"}})
        with pytest.raises(RegistryError) as caught:
            registry.check_push_access("team/app")
        error = caught.value
        assert error.kind == "denied" and error.status == 401
        assert "the account 'bot' may not do it (401 insufficient_scope for" in str(error)
        assert "repository:team/app:pull,push" in str(error)
        assert "grant the account pull, push on team/app" in str(error)
        assert "credentials of" not in str(error) and SECRET not in str(error)
        assert fake.asked.count(["repository:team/app:pull,push"]) == 1  # not asked again

    def test_an_account_that_may_not_delete_leaves_the_upload_and_preflight_passes(
        self, serve: Callable[[Route], FakeServer]
    ) -> None:
        fake, registry = scoped(serve, {"team/app": {"pull", "push"}})
        registry.check_push_access("team/app")  # no error
        assert fake.asked.count(["repository:team/app:delete"]) == 1

    def test_parallel_requests_fetch_one_token_per_scope_set(
        self, serve: Callable[[Route], FakeServer]
    ) -> None:
        fake, registry = scoped(serve, {"team/app": {"pull"}, "team/other": {"pull"}}, slow=0.2)
        registry.has_blob("team/app", "sha256:" + "0" * 64)  # the scheme and /v2/ settled
        fake.asked.clear()
        digests = ["sha256:" + f"{i:x}" * 64 for i in range(1, 9)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            assert not any(pool.map(lambda d: registry.has_blob("team/other", d), digests))
        assert fake.asked == [["repository:team/other:pull"]]

    def test_a_refused_mount_is_an_upload_instead(
        self, serve: Callable[[Route], FakeServer]
    ) -> None:
        fake, registry = scoped(serve, {"team/app": {"pull", "push"}})  # no pull on the source
        session = registry._mount("team/app", "sha256:" + "b" * 64, "other/src")
        assert session is not None and "/v2/team/app/blobs/uploads/" in session
        mounts = [s for s in fake.asked if "repository:other/src:pull" in s]
        assert len(mounts) == 1  # asked with the mount, refused, not asked again


def test_repeated_and_space_separated_scopes_of_a_challenge_all_count() -> None:
    header = (
        'Bearer realm="r",scope="repository:a:pull",scope="repository:b:pull repository:c:push"'
    )
    (challenge,) = parse_www_authenticate(header)
    assert challenge_scopes(challenge) == (
        "repository:a:pull",
        "repository:b:pull",
        "repository:c:push",
    )
    assert covers(["repository:a:pull,push"], ["repository:a:pull"])
    assert not covers(["repository:a:pull"], ["repository:a:pull,push"])
    assert not covers(["repository:a:pull,push"], ["repository:b:pull"])
    assert covers(["repository:a:*"], ["repository:a:delete"])
