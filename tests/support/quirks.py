"""A quirk proxy: a real registry behind a loopback proxy that answers as a hosted registry does.

`QuirkProxy(upstream_url, profile)` listens on 127.0.0.1 (a port of its own), forwards every
request to a real CNCF distribution 2.8 (the `registry_factory` fixture's), streaming bodies both
ways and rewriting `Location` headers to point at itself, and lets a `Profile` answer first.
Each profile is **a faithful emulation from its documentation**: it answers what the hosted
registry answers according to that registry's own documentation or its users' and clients'
trackers, and each behaviour below cites where it was read. Where a source says *that* a
registry refuses something but not *how* (the status or error code), the comment says so and
the answer chosen is the distribution spec's for that case.

Every request and the status it got is kept in `proxy.log` ("PUT /v2/x/manifests/v1 201"),
and an upload that breaks a rule the profile enforces is kept in `proxy.violations`, so a test
can assert what the client sent as well as what the registry holds afterwards.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final
from urllib.parse import parse_qs, urlsplit

import requests

MiB: Final = 1024 * 1024
# opencontainers/distribution-spec#293 and spec.md "Pushing Manifests": registries SHOULD accept
# manifests up to 4 MiB and MAY answer 413 Payload Too Large above; every hosted registry here
# applies that limit (regclient's defaultManifestMaxPush is the same 4 MiB).
MANIFEST_LIMIT: Final = 4 * MiB

_V2_RE = re.compile(
    r"^/v2/(?P<name>.+?)/(?P<kind>blobs|manifests|tags|referrers)(?:/(?P<rest>.*))?$"
)
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_HOP_BY_HOP: Final = {"connection", "content-length", "transfer-encoding", "keep-alive", "host"}


@dataclass(frozen=True)
class Reply:
    """An answer the profile gives instead of the registry's."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def errors(
        cls, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> Reply:
        """The distribution spec's JSON error body."""
        body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
        return cls(status, body, {"Content-Type": "application/json", **(headers or {})})


@dataclass(frozen=True)
class Incoming:
    """One request as the profile sees it (its body not read yet)."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]

    @property
    def repository(self) -> str | None:
        match = _V2_RE.match(self.path)
        return match.group("name") if match else None

    @property
    def kind(self) -> str | None:
        match = _V2_RE.match(self.path)
        return match.group("kind") if match else None

    @property
    def reference(self) -> str | None:
        """The tag or digest of a manifest request."""
        match = _V2_RE.match(self.path)
        if match is None or match.group("kind") != "manifests":
            return None
        return match.group("rest") or None

    @property
    def upload(self) -> str | None:
        """The upload session's id of a PATCH/PUT/DELETE under blobs/uploads/ID."""
        match = _V2_RE.match(self.path)
        rest = match.group("rest") if match else None
        if match is None or match.group("kind") != "blobs" or not rest:
            return None
        head, _, session = rest.partition("/")
        return session or None if head == "uploads" else None

    @property
    def length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value and value.isdigit() else None

    def header(self, name: str) -> str:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return ""

    def line(self) -> str:
        return f"{self.method} {self.path}"


class Upstream:
    """What a profile may ask the real registry behind the proxy (no auth: a loopback one)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        accept = ", ".join(
            (
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.distribution.manifest.list.v2+json",
            )
        )
        response = requests.head(
            f"{self.url}/v2/{repository}/manifests/{reference}",
            headers={"Accept": accept},
            timeout=30,
        )
        return (
            response.headers.get("Docker-Content-Digest") if response.status_code == 200 else None
        )

    def tags(self, repository: str) -> list[str]:
        response = requests.get(f"{self.url}/v2/{repository}/tags/list", timeout=30)
        if response.status_code != 200:
            return []
        return list(response.json().get("tags") or [])


class Profile:
    """Forwards everything; subclasses answer first where their registry differs.

    `before` sees a request before it is forwarded and may answer it itself (its body is then
    read and dropped). `after` sees the registry's status and headers and may change them.
    Every profile refuses manifests over `MANIFEST_LIMIT` (413), as every hosted registry does.
    """

    name: ClassVar[str] = "distribution"

    def __init__(self, *, front_body_limit: int | None = None) -> None:
        # A reverse proxy in front of the registry that refuses request bodies over this size
        # (413), as corporate proxies and CDNs do: the way a client ends up sending chunks.
        self.front_body_limit = front_body_limit
        self.upstream: Upstream  # set by the proxy
        self.lock = threading.Lock()
        self.violations: list[str] = []

    def before(self, request: Incoming) -> Reply | None:
        if (
            request.method == "PUT"
            and request.kind == "manifests"
            and (request.length or 0) > MANIFEST_LIMIT
        ):
            return Reply.errors(
                413,
                "MANIFEST_INVALID",
                f"manifest too large: {request.length} bytes, the limit is {MANIFEST_LIMIT}",
            )
        limit = self.front_body_limit
        if limit is not None and request.method in ("PUT", "PATCH") and request.kind == "blobs":
            too_big = (request.length or 0) > limit
            streamed = request.length is None and "chunked" in request.header("Transfer-Encoding")
            if too_big or streamed:
                return Reply(
                    413, b"<html>413 Request Entity Too Large</html>", {"Content-Type": "text/html"}
                )
        return None

    def after(self, request: Incoming, status: int, headers: dict[str, str]) -> int:
        return status

    def violation(self, text: str) -> None:
        with self.lock:
            self.violations.append(text)


def _content_range(value: str) -> tuple[int, int] | None:
    match = re.fullmatch(r"\s*(\d+)-(\d+)\s*", value)
    return (int(match.group(1)), int(match.group(2))) if match else None


class Ecr(Profile):
    """Amazon ECR."""

    name = "ecr"

    def __init__(
        self,
        *,
        repositories: set[str] | None = None,
        immutable: bool = True,
        registry_id: str = "123456789012",
        front_body_limit: int | None = None,
    ) -> None:
        super().__init__(front_body_limit=front_body_limit)
        # None: every repository exists. A set: only these (`aws ecr create-repository`).
        self.repositories = repositories
        self.immutable = immutable
        self.registry_id = registry_id
        self.chunks: dict[str, list[int]] = {}  # upload id -> sizes of its Content-Range PATCHes

    def create(self, repository: str) -> None:
        """`aws ecr create-repository --repository-name REPOSITORY`."""
        with self.lock:
            if self.repositories is not None:
                self.repositories.add(repository)

    def before(self, request: Incoming) -> Reply | None:
        repo = request.repository
        # regclient#869 (sudo-bmitch: "pushing to a non-existent repository doesn't automatically
        # create that repository like other registries"), aws/containers-roadmap#853 (create on
        # push was only a request); the answer as users quote it, e.g. aws-actions/
        # amazon-ecr-login#166 and actions/starter-workflows#2647: "name unknown: The repository
        # with name 'service-t' does not exist in the registry with id '***'" (404 NAME_UNKNOWN).
        with self.lock:
            missing = (
                self.repositories is not None and repo is not None and repo not in self.repositories
            )
        if missing:
            return Reply.errors(
                404,
                "NAME_UNKNOWN",
                f"The repository with name '{repo}' does not exist in the registry with id "
                f"'{self.registry_id}'",
            )
        refused = super().before(request)
        if refused is not None:
            return refused
        reference = request.reference
        if (
            self.immutable
            and request.method == "PUT"
            and repo is not None
            and reference is not None
            and not _DIGEST_RE.match(reference)
            and self.upstream.manifest_digest(repo, reference) is not None
        ):
            # aws/containers-roadmap#862, #2179 ("even when the digest has not changed, it fails
            # with ImageTagAlreadyExistsException"), #2380; the registry API's answer as kaniko
            # shows it (osscontainertools/kaniko#204): 400 TAG_INVALID.
            return Reply.errors(
                400,
                "TAG_INVALID",
                f"The image tag '{reference}' already exists in the '{repo}' repository and "
                "cannot be overwritten because the tag is immutable.",
            )
        return self._chunk_rule(request)

    def _chunk_rule(self, request: Incoming) -> Reply | None:
        # dotnet/sdk#33019 (and MaxChunkSizeBytes in dotnet/sdk's Registry.cs, 5248080 bytes
        # for ECR, chosen by host name): ECR "require[s] all chunked uploads to be at least 5MB in
        # size, except the last chunk". ECR does not advertise it: no OCI-Chunk-Min-Length
        # header is documented for ECR (regclient reads the header, dotnet hard-codes the size).
        # The sources do not say what ECR answers to a short chunk; this answers the
        # distribution spec's 416 for a chunk it cannot accept.
        session = request.upload
        if session is None or request.method not in ("PATCH", "PUT"):
            return None
        span = _content_range(request.header("Content-Range"))
        with self.lock:
            earlier = self.chunks.setdefault(session, [])
            short = [size for size in earlier if size < 5 * MiB]
            if span is not None and request.method == "PATCH":
                earlier.append(span[1] - span[0] + 1)
        if short and (span is not None or (request.method == "PUT" and (request.length or 0) > 0)):
            self.violation(f"chunk of {short[0]} bytes before the last in upload {session}")
            return Reply.errors(416, "BLOB_UPLOAD_INVALID", "chunk is smaller than 5242880 bytes")
        return None

    def after(self, request: Incoming, status: int, headers: dict[str, str]) -> int:
        # aws/containers-roadmap#2831 ("Intermediate PATCH requests return 201 Created instead of
        # 202 Accepted"); regclient "Accept a 201 on chunk upload for ECR" (scheme/reg/blob.go).
        if request.method == "PATCH" and request.upload is not None and status == 202:
            return 201
        return status


class Ghcr(Profile):
    """GitHub Container Registry."""

    name = "ghcr"

    def __init__(
        self,
        *,
        rate_limit: int = 0,
        rate_limit_status: int = 429,
        rate_limit_on: str = "",
        front_body_limit: int | None = None,
    ) -> None:
        super().__init__(front_body_limit=front_body_limit)
        self.rate_limit = rate_limit  # how many requests (containing `rate_limit_on`) to refuse
        self.rate_limit_status = rate_limit_status
        self.rate_limit_on = rate_limit_on

    def before(self, request: Incoming) -> Reply | None:
        with self.lock:
            limited = self.rate_limit > 0 and self.rate_limit_on in request.line()
            if limited:
                self.rate_limit -= 1
        if limited and self.rate_limit_status == 403:
            # GitHub's secondary rate limits answer 403 (sigstore/cosign#3434 and GitHub's REST
            # docs "About secondary rate limits"): a 403 whose message says rate limit, with
            # Retry-After when GitHub sends one.
            return Reply.errors(
                403,
                "DENIED",
                "You have exceeded a secondary rate limit. Please wait a few minutes before you "
                "try again.",
                {"Retry-After": "1"},
            )
        if limited:
            return Reply.errors(429, "TOOMANYREQUESTS", "rate limit exceeded", {"Retry-After": "1"})
        refused = super().before(request)
        if refused is not None:
            return refused
        # wasmCloud/wash#268, oras-project/rust-oci-client#35 and #37: a chunked PATCH whose body
        # is over 4 MiB is refused with 416 REQUESTED_RANGE_NOT_SATISFIABLE, "the request body is
        # too large and exceeds the maximum permissible limit of 4.00MiB" (a streamed PATCH, as
        # docker push sends, is not: GHCR takes layers of hundreds of MB).
        if (
            request.method == "PATCH"
            and request.upload is not None
            and request.header("Content-Range")
            and (request.length or 0) > 4 * MiB
        ):
            return Reply.errors(
                416,
                "REQUESTED_RANGE_NOT_SATISFIABLE",
                "the request body is too large and exceeds the maximum permissible limit of 4.00MiB",
            )
        # podman-container-tools/skopeo#1880: DELETE of a manifest is 405 UNSUPPORTED, "The
        # operation is unsupported." (package versions are deleted with GitHub's REST API).
        if request.method == "DELETE" and request.kind == "manifests":
            return Reply.errors(405, "UNSUPPORTED", "The operation is unsupported.")
        return None


class ArtifactRegistry(Profile):
    """Google Artifact Registry."""

    name = "gar"

    def before(self, request: Incoming) -> Reply | None:
        refused = super().before(request)
        if refused is not None:
            return refused
        # dotnet/sdk-container-builds#287, quoting cloud.google.com/artifact-registry/docs/
        # reference/docker-api: "Artifact Registry does not support Docker chunked uploads ...
        # You must use monolithic uploads"; skopeo#1101 (skopeo's chunked copy fails on GAR);
        # kitops-ml/kitops#780. A monolithic upload is POST then one PUT, or one streamed PATCH
        # (no Content-Range). The documentation does not give the answer to a chunk; this gives
        # the distribution spec's 416 for a chunk the registry cannot accept.
        if request.method == "PATCH" and request.header("Content-Range"):
            self.violation(f"chunked PATCH {request.header('Content-Range')}")
            return Reply.errors(
                416,
                "BLOB_UPLOAD_INVALID",
                "chunked uploads are not supported: upload monolithically",
            )
        return None


class DockerHub(Profile):
    """Docker Hub."""

    name = "dockerhub"

    def __init__(
        self, *, toomanyrequests: int = 0, hap429: int = 0, limit_on: str = "", retry_after: int = 1
    ) -> None:
        super().__init__()
        self.toomanyrequests = toomanyrequests
        self.hap429 = hap429
        self.limit_on = limit_on
        self.retry_after = retry_after

    def before(self, request: Incoming) -> Reply | None:
        with self.lock:
            which = None
            if self.limit_on in request.line():
                if self.toomanyrequests > 0:
                    self.toomanyrequests, which = self.toomanyrequests - 1, "json"
                elif self.hap429 > 0:
                    self.hap429, which = self.hap429 - 1, "hap"
        if which == "json":
            # docker/docs#11648 (Docker Hub's rate limit): 429 TOOMANYREQUESTS "You have reached
            # your pull rate limit. You may increase the limit by authenticating and upgrading",
            # with Retry-After (docker/docs PR #24078 documents it for every limited request).
            return Reply.errors(
                429,
                "TOOMANYREQUESTS",
                "You have reached your pull rate limit. You may increase the limit by "
                "authenticating and upgrading: https://www.docker.com/increase-rate-limit",
                {"Retry-After": str(self.retry_after)},
            )
        if which == "hap":
            # docker/hub-feedback#1907, oras-project/rust-oci-client#235: the abuse limit in
            # front of Hub answers 429 with a text/plain body "HAP429" and no JSON error.
            return Reply(429, b"HAP429", {"Content-Type": "text/plain"})
        refused = super().before(request)
        if refused is not None:
            return refused
        # docker/docs PR #24078 and docker/hub-feedback#2360: a manifest DELETE over the
        # registry API is refused (403) while any tag points at the digest; untagged digests go.
        repo, reference = request.repository, request.reference
        if request.method == "DELETE" and repo is not None and reference is not None:
            if not _DIGEST_RE.match(reference):
                return Reply.errors(405, "UNSUPPORTED", "The operation is unsupported.")
            tagged = [
                t
                for t in self.upstream.tags(repo)
                if self.upstream.manifest_digest(repo, t) == reference
            ]
            if tagged:
                return Reply.errors(
                    403,
                    "DENIED",
                    f"requested access to the resource is denied: {reference} is tagged",
                )
        return None


class Acr(Profile):
    """Azure Container Registry."""

    name = "acr"

    def before(self, request: Incoming) -> Reply | None:
        refused = super().before(request)
        if refused is not None:
            return refused
        # dotnet/sdk's Registry.cs, UploadBlobChunkedAsync: "ACR throws an error with the .NET
        # type {"Range":"bytes 0-84521/*","Reason":"the Content-Range header format is invalid"}",
        # so the SDK writes `Content-Range: START-END` by hand. The status is not quoted; this
        # gives the distribution spec's 416 for an invalid Content-Range.
        value = request.header("Content-Range")
        if request.method == "PATCH" and value and _content_range(value) is None:
            self.violation(f"Content-Range {value!r}")
            body = json.dumps(
                {"Range": value, "Reason": "the Content-Range header format is invalid"}
            )
            return Reply(416, body.encode(), {"Content-Type": "application/json"})
        return None


class Harbor(Profile):
    """Harbor."""

    name = "harbor"

    def __init__(
        self,
        *,
        projects: set[str],
        immutable: str | None = None,
        front_body_limit: int | None = None,
    ) -> None:
        super().__init__(front_body_limit=front_body_limit)
        self.projects = projects  # the projects that exist (a repository's first path segment)
        self.immutable = (
            re.compile(immutable) if immutable else None
        )  # an immutability rule on tags

    def before(self, request: Incoming) -> Reply | None:
        refused = super().before(request)
        if refused is not None:
            return refused
        source = (request.query.get("from") or [""])[0]
        if request.method == "POST" and request.query.get("mount") and source:
            project = source.split("/", 1)[0]
            if project not in self.projects:
                # goharbor/harbor#17097, google/go-containerregistry#1393: a mount from a project
                # that does not exist answers 401 "UNAUTHORIZED: project examplegroup not found",
                # not the spec's 202 (an upload session).
                return Reply.errors(
                    401, "UNAUTHORIZED", f"project {project} not found: project {project} not found"
                )
        repo, reference = request.repository, request.reference
        if (
            self.immutable is not None
            and request.method == "PUT"
            and repo is not None
            and reference is not None
            and not _DIGEST_RE.match(reference)
            and self.immutable.search(reference)
            and self.upstream.manifest_digest(repo, reference) is not None
        ):
            # goharbor/harbor#9427, the immutable tag middleware: a tag a rule matches that
            # exists already is refused with 412 (403 in the first draft), code DENIED, "The
            # tag:REPO:TAG is immutable, cannot be overwrite."
            return Reply.errors(
                412, "DENIED", f"The tag:{repo}:{reference} is immutable, cannot be overwrite."
            )
        return None


class Artifactory(Profile):
    """JFrog Artifactory."""

    name = "artifactory"

    def before(self, request: Incoming) -> Reply | None:
        # moby/moby#22531 (aaronlehmann: "I don't think Artifactory supports the cross-repository
        # push feature"): the mount never happens, docker uploads the layer instead. Emulated as
        # the spec's answer for a registry without mounts: the parameters are dropped and a plain
        # upload session opens (202).
        return super().before(request)

    def rewrite_query(self, request: Incoming, query: str) -> str:
        if request.method == "POST" and request.kind == "blobs" and "mount=" in query:
            return ""
        return query


PROFILES: Final[dict[str, type[Profile]]] = {
    p.name: p for p in (Ecr, Ghcr, ArtifactRegistry, DockerHub, Acr, Harbor, Artifactory)
}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _handle(self) -> None:
        split = urlsplit(self.path)
        request = Incoming(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query),
            headers=dict(self.headers.items()),
        )
        profile = self.server.profile
        reply = profile.before(request)
        if reply is not None:
            for _ in self._body(request):  # read and drop: the connection stays usable
                pass
            self._reply(request, reply)
            return
        query = split.query
        rewrite = getattr(profile, "rewrite_query", None)
        if rewrite is not None:
            query = rewrite(request, query)
        self._forward(request, split.path + (f"?{query}" if query else ""))

    def _body(self, request: Incoming) -> Iterator[bytes]:
        """The request's body as it arrives: `Content-Length` bytes, or a chunked body."""
        if "chunked" in request.header("Transfer-Encoding").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers, up to a blank line
                        pass
                    return
                left = size
                while left:
                    piece = self.rfile.read(min(left, MiB))
                    if not piece:
                        return
                    left -= len(piece)
                    yield piece
                self.rfile.readline()
        left = request.length or 0
        while left > 0:
            piece = self.rfile.read(min(left, MiB))
            if not piece:
                return
            left -= len(piece)
            yield piece

    def _reply(self, request: Incoming, reply: Reply) -> None:
        self.server.record(f"{self.command} {self.path} {reply.status}")
        self.send_response(reply.status)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def _forward(self, request: Incoming, target: str) -> None:
        upstream = self.server.profile.upstream.url
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        has_body = request.length is not None or "chunked" in request.header("Transfer-Encoding")
        data: Any = None
        if has_body and request.length is not None:
            headers["Content-Length"] = str(request.length)
            data = _Sized(self._body(request), request.length)
        elif has_body:
            data = self._body(request)
        with requests.request(
            self.command,
            upstream + target,
            headers=headers,
            data=data,
            allow_redirects=False,
            stream=True,
            timeout=120,
        ) as response:
            out_headers = {
                k: v for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP
            }
            out_headers.pop("Content-Encoding", None)
            for key in list(out_headers):
                if key.lower() == "location":
                    out_headers[key] = out_headers[key].replace(
                        upstream, f"http://{self.server.host}"
                    )
            status = self.server.profile.after(request, response.status_code, out_headers)
            self.server.record(f"{self.command} {self.path} {status}")
            self.send_response(status)
            for key, value in out_headers.items():
                self.send_header(key, value)
            length = response.headers.get("Content-Length")
            if self.command == "HEAD":
                if length is not None:
                    self.send_header("Content-Length", length)
                self.end_headers()
                return
            if length is not None:
                self.send_header("Content-Length", length)
                self.end_headers()
                for piece in response.raw.stream(MiB, decode_content=False):
                    self.wfile.write(piece)
                return
            content = response.content
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


class _Sized:
    """A streamed body whose length is known: requests sends a Content-Length, not chunks."""

    def __init__(self, chunks: Iterator[bytes], length: int) -> None:
        self._chunks = chunks
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    profile: Profile
    host: str
    log: list[str]
    log_lock: threading.Lock

    def record(self, line: str) -> None:
        with self.log_lock:
            self.log.append(line)

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # a client that hung up midway is not the proxy's failure


class QuirkProxy:
    """`QuirkProxy(upstream_url, profile)`: `.host` is what a spec names, `.stop()` ends it."""

    def __init__(self, upstream: str, profile: Profile) -> None:
        profile.upstream = Upstream(upstream)
        self.profile = profile
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.profile = profile
        self.server.log = []
        self.server.log_lock = threading.Lock()
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.server.host = self.host
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self.thread.start()

    @property
    def log(self) -> list[str]:
        with self.server.log_lock:
            return list(self.server.log)

    @property
    def violations(self) -> list[str]:
        with self.profile.lock:
            return list(self.profile.violations)

    def requests(self, method: str, contains: str = "") -> list[str]:
        """The log lines of `method` requests whose line contains `contains`."""
        return [line for line in self.log if line.startswith(f"{method} ") and contains in line]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def __enter__(self) -> QuirkProxy:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


@contextlib.contextmanager
def quirk_proxy(upstream: str, profile: Profile) -> Iterator[QuirkProxy]:
    proxy = QuirkProxy(upstream, profile)
    try:
        yield proxy
    finally:
        proxy.stop()
