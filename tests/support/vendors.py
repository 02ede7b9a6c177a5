"""Emulations of GitHub's, GitLab's and Docker Hub's APIs in front of a real registry.

These are emulations written from each vendor's documentation (and, where the documentation
is silent, from what the vendor was seen answering in public issue threads); every behaviour
names its source in a comment. None of them is the vendor's code.

Each emulation is one threaded HTTP server on 127.0.0.1 (its own port, a daemon thread of the
test process, stopped by ``stop()``) that serves two things:

1. the registry API, ``/v2/...``, forwarded to a real distribution 2.8
   (tests/support/services.py) with bodies streamed, headers passed and ``Location`` headers
   rewritten to point at the emulation; only the vendor's refusals are the emulation's own
   (registry auth stays open: the REST API is where the tokens are checked);
2. the vendor's REST API, backed by that registry: reads come from its registry API and from
   its storage folder (the only place that lists every manifest of a repository, untagged
   ones too: ``_manifests/revisions/sha256/<hex>/link``, and every tag:
   ``_manifests/tags/<tag>/current/link``); deletes really delete, through its registry API.

Times: a manifest's creation time is the mtime of its revision link file, a tag's push time
the mtime of its ``current/link`` (a test ages them with ``os.utime``); GitLab's tag
``created_at`` is the image config's ``created``, as GitLab documents, else the former.

Removing one tag (GitLab, Docker Hub) on distribution 2.8, which deletes manifests but not
tags: the tag is moved onto a tiny unique manifest that is then deleted by digest (its tags go
with it), leaving the image and its other tags alone. That is GitLab's own way with
registries that cannot delete a tag (app/services/projects/container_repository/third_party/
delete_tags_service.rb: "Replace a tag on the registry with a dummy tag").
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import requests

from tests.support.services import Registry

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}
_HOP |= {"proxy-connection", "proxy-authenticate", "proxy-authorization"}
Query = dict[str, str]
Headers = Message  # the request's headers, looked up without regard to case
Body = Callable[[], bytes]
Tokens = Mapping[str, set[str]]
_MANIFEST_PATH = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)$")


@dataclass(frozen=True)
class Call:
    """One request the emulation answered: its method, path (query apart) and status."""

    method: str
    path: str
    status: int
    query: str = ""


@dataclass
class Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _json(status: int, body: object, headers: Mapping[str, str] | None = None) -> Answer:
    return Answer(
        status,
        json.dumps(body).encode(),
        {"Content-Type": "application/json"} | dict(headers or {}),
    )


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the backend registry ------------------------------------------------------------------


class Backend:
    """The real registry behind an emulation: its storage for listings, its API for the rest."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.verify: str | bool = str(registry.ca_file) if registry.ca_file else True
        self._repos = registry.root / "docker" / "registry" / "v2" / "repositories"
        self._cache: dict[str, tuple[str, dict[str, object]]] = {}

    def repositories(self) -> list[str]:
        """Every repository with at least one manifest, sorted."""
        if not self._repos.is_dir():
            return []
        found = {str(p.parent.relative_to(self._repos)) for p in self._repos.rglob("_manifests")}
        return sorted(r for r in found if self.manifests(r))

    def manifests(self, repo: str) -> dict[str, float]:
        """Every manifest of `repo`, tagged or not: digest -> mtime of its revision link."""
        folder = self._repos / repo / "_manifests" / "revisions" / "sha256"
        links = folder.glob("*/link") if folder.is_dir() else iter(())
        return {f"sha256:{p.parent.name}": p.stat().st_mtime for p in links}

    def tags(self, repo: str) -> dict[str, tuple[str, float]]:
        """tag -> (digest, mtime of its current link)."""
        folder = self._repos / repo / "_manifests" / "tags"
        found = {}
        for link in folder.glob("*/current/link") if folder.is_dir() else iter(()):
            found[link.parent.parent.name] = (link.read_text().strip(), link.stat().st_mtime)
        return found

    def manifest(self, repo: str, digest: str) -> tuple[str, dict[str, object]]:
        """(media type, document) of a manifest, read through the registry API."""
        if digest not in self._cache:
            r = self._get(f"/v2/{repo}/manifests/{digest}", {"Accept": ", ".join(MANIFEST_TYPES)})
            self._cache[digest] = (r.headers.get("Content-Type", ""), r.json())
        return self._cache[digest]

    def blob_json(self, repo: str, digest: str) -> dict[str, object]:
        return dict(self._get(f"/v2/{repo}/blobs/{digest}", {}).json())

    def children(self, repo: str) -> set[str]:
        """Digests some index of `repo` refers to."""
        found: set[str] = set()
        for digest in self.manifests(repo):
            doc = self.manifest(repo, digest)[1]
            found |= {str(d["digest"]) for d in _list(doc, "manifests")}
        return found

    def delete_manifest(self, repo: str, digest: str) -> int:
        """DELETE through the registry API; distribution 2.8 removes the tags that point at it
        too (registry/handlers/manifests.go, DeleteManifest: Untag for each tag found)."""
        r = requests.delete(
            f"{self.registry.url()}/v2/{repo}/manifests/{digest}", verify=self.verify, timeout=30
        )
        return r.status_code

    def untag(self, repo: str, tag: str) -> None:
        """Remove one tag only: move it onto a unique empty image, then delete that image."""
        config = json.dumps(
            {"architecture": "none", "os": "none", "untag": tag, "nonce": secrets.token_hex(8)}
        )
        data = config.encode()
        digest = f"sha256:{_sha256(data)}"
        url = self.registry.url()
        start = requests.post(f"{url}/v2/{repo}/blobs/uploads/", verify=self.verify, timeout=30)
        location = start.headers["Location"]
        location = location if location.startswith("http") else url + location
        put = requests.put(
            location, params={"digest": digest}, data=data, verify=self.verify, timeout=30
        )
        put.raise_for_status()
        dummy = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPES[2],
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest,
                "size": len(data),
            },
            "layers": [],
        }
        body = json.dumps(dummy).encode()
        headers = {"Content-Type": MANIFEST_TYPES[2]}
        r = requests.put(
            f"{url}/v2/{repo}/manifests/{tag}",
            data=body,
            headers=headers,
            verify=self.verify,
            timeout=30,
        )
        r.raise_for_status()
        self.delete_manifest(repo, f"sha256:{_sha256(body)}")

    def _get(self, path: str, headers: dict[str, str]) -> requests.Response:
        r = requests.get(
            self.registry.url() + path, headers=headers, verify=self.verify, timeout=30
        )
        r.raise_for_status()
        return r


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _list(doc: Mapping[str, object], key: str) -> list[dict[str, object]]:
    value = doc.get(key)
    return [dict(v) for v in value] if isinstance(value, list) else []


# --- the server ----------------------------------------------------------------------------


class Emulation:
    """The server both APIs share; a vendor's subclass answers its REST routes and refusals."""

    def __init__(self, registry: Registry) -> None:
        self.backend = Backend(registry)
        self.calls: list[Call] = []
        self.registry_calls: list[Call] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(
            ("127.0.0.1", 0), type("Handler", (_Handler,), {"emulation": self})
        )
        self._server.daemon_threads = True
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self.url = f"http://{self.host}"

    def start(self) -> Emulation:
        threading.Thread(
            target=self._server.serve_forever, name=type(self).__name__, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def record(self, calls: list[Call], call: Call) -> None:
        with self._lock:
            calls.append(call)

    def rest(
        self, method: str, path: str, query: Query, headers: Headers, body: Body
    ) -> Answer | None:
        """The vendor's answer to a REST request, None when the path is not one of its routes
        (then the request body is still unread: `body()` reads it)."""
        raise NotImplementedError

    def refuse(self, method: str, path: str) -> Answer | None:
        """The vendor's refusal of a registry API request, None to forward it."""
        raise NotImplementedError


class _Handler(BaseHTTPRequestHandler):
    emulation: Emulation
    protocol_version = "HTTP/1.1"

    def log_message(self, *_: object) -> None:  # quiet
        return

    def _any(self) -> None:
        self._consumed = False
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        emulation = self.emulation
        answer = emulation.rest(self.command, url.path, query, self.headers, self._read)
        calls = emulation.calls
        if answer is None:
            calls, answer = emulation.registry_calls, emulation.refuse(self.command, url.path)

        def note(status: int) -> None:  # before the answer goes out: a client sees it recorded
            emulation.record(calls, Call(self.command, url.path, status, url.query))

        if answer is None:
            self._forward(note)
        else:
            self._read()
            note(answer.status)
            self._send(answer)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any

    def _send(self, answer: Answer) -> None:
        self.send_response(answer.status)
        for k, v in answer.headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body)

    def _chunked(self) -> bool:
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower()

    def _body(self) -> Iterator[bytes]:
        if self._chunked():
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                yield self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers
                pass
            return
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk

    def _read(self) -> bytes:
        """The whole request body, once (then b"")."""
        if self._consumed:
            return b""
        self._consumed = True
        return b"".join(self._body())

    def _forward(self, note: Callable[[int], None]) -> None:
        """Pass the request to the backend registry and stream its answer back."""
        backend = self.emulation.backend.registry
        conn: http.client.HTTPConnection = (
            http.client.HTTPSConnection(backend.host, timeout=120, context=_tls(backend))
            if backend.tls
            else http.client.HTTPConnection(backend.host, timeout=120)
        )
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", backend.host)
            for k, v in self.headers.items():
                if k.lower() not in _HOP:
                    conn.putheader(k, v)
            chunked = self._chunked()
            if chunked:
                conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for chunk in self._body():
                conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if chunked else chunk)
            if chunked:
                conn.send(b"0\r\n\r\n")
            response = conn.getresponse()
            note(response.status)
            self._relay(response)
        finally:
            conn.close()

    def _relay(self, response: http.client.HTTPResponse) -> None:
        self.send_response(response.status)
        length = response.getheader("Content-Length")
        backend = self.emulation.backend.registry.url()
        for k, v in response.getheaders():
            if k.lower() in _HOP or k.lower() == "content-length":
                continue
            moved = k.lower() == "location" and v.startswith(backend)
            self.send_header(k, self.emulation.url + v[len(backend) :] if moved else v)
        bodyless = self.command == "HEAD" or response.status in (204, 304)
        if length is not None or bodyless:
            self.send_header("Content-Length", length or "0")
        else:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if bodyless:
            return
        while chunk := response.read1(1 << 16):
            self.wfile.write(
                f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" if length is None else chunk
            )
        if length is None:
            self.wfile.write(b"0\r\n\r\n")


def _tls(reg: Registry) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(reg.ca_file) if reg.ca_file else None)


def _bearer(headers: Headers, schemes: tuple[str, ...]) -> str | None:
    scheme, _, value = headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() in schemes and value.strip() else None


def _registry_error(
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    detail: object = None,
) -> Answer:
    error: dict[str, object] = {"code": code, "message": message}
    if detail is not None:
        error["detail"] = detail
    return _json(status, {"errors": [error]}, headers)


def _page(items: list[object], page: int, per_page: int) -> list[object]:
    return items[(page - 1) * per_page : page * per_page]


def _int(value: str | None, default: int, low: int = 1, high: int | None = None) -> int:
    try:
        n = int(value) if value not in (None, "") else default
    except ValueError:
        n = default
    n = max(n, low)
    return min(n, high) if high is not None else n


# --- GitHub --------------------------------------------------------------------------------

GITHUB_DOCS = "https://docs.github.com/rest/packages/packages"


class GithubEmulation(Emulation):
    """GHCR and GitHub's Packages REST API (version 2022-11-28) for one owner.

    docs.github.com/rest/packages/packages: "List package versions for a package owned by an
    organization" (GET /orgs/{org}/packages/{package_type}/{package_name}/versions), "... by a
    user" (/users/{username}/...), "... by the authenticated user" (/user/...), and "Delete
    package version ..." (DELETE .../versions/{package_version_id}, 204). Registry repository
    OWNER/PACKAGE is package PACKAGE of OWNER (repository acme/shop/web is package shop/web of
    acme, sent URL-encoded: shop%2Fweb).
    """

    def __init__(
        self,
        registry: Registry,
        *,
        owner: str,
        owner_kind: str,
        tokens: Tokens,
        deny_delete_as: int = 403,
    ) -> None:
        super().__init__(registry)
        if owner_kind not in {"org", "user"}:
            raise ValueError("owner_kind is 'org' or 'user'")
        self.owner, self.owner_kind, self.tokens = owner, owner_kind, dict(tokens)
        self.deny_delete_as = deny_delete_as
        self._ids: dict[tuple[str, str], int] = {}
        self._next_id = 100_000_001

    def refuse(self, method: str, path: str) -> Answer | None:
        # issue 24: "GHCR answers a manifest DELETE with 405 UNSUPPORTED"; the message is
        # distribution's for that code (registry/api/errcode/register.go, ErrorCodeUnsupported)
        if method == "DELETE" and _MANIFEST_PATH.match(path):
            return _registry_error(405, "UNSUPPORTED", "The operation is unsupported.")
        return None

    def rest(
        self, method: str, path: str, query: Query, headers: Headers, body: Body
    ) -> Answer | None:
        m = re.fullmatch(
            r"/(?:(orgs|users)/([^/]+)|(user))/packages/container/([^/]+)/versions(?:/(\d+))?", path
        )
        if m is None:
            return None
        kind, owner, _me, package, version = m.groups()
        token = _bearer(headers, ("bearer", "token"))
        if token is None:  # GitHub's answer without credentials (docs: "Requires authentication")
            return _json(
                401, {"message": "Requires authentication", "documentation_url": GITHUB_DOCS}
            )
        if token not in self.tokens:
            return _json(
                401,
                {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"},
            )
        wrong_kind = (
            (kind == "orgs") != (self.owner_kind == "org") if kind else self.owner_kind != "user"
        )
        if wrong_kind or (owner is not None and owner.lower() != self.owner.lower()):
            return _json(404, {"message": "Not Found", "documentation_url": GITHUB_DOCS})
        repo = f"{self.owner}/{unquote(package)}"
        answer = _json(404, {"message": "Not Found", "documentation_url": GITHUB_DOCS})
        if method == "GET" and version is None:
            answer = self._list(path, repo, query, self.tokens[token])
        elif method == "DELETE" and version is not None:
            answer = self._delete(repo, int(version), self.tokens[token])
        # a personal access token (classic; prefix ghp_, GitHub's token formats) gets its scopes
        # in X-OAuth-Scopes on every answer (docs.github.com, "Scopes for OAuth apps"); a
        # GITHUB_TOKEN (an installation token, ghs_) does not
        if token.startswith("ghp_"):
            answer.headers["X-OAuth-Scopes"] = ", ".join(sorted(self.tokens[token]))
        return answer

    def _denied(self) -> Answer:
        # a token without the permission: GitHub answers a GITHUB_TOKEN that lacks it "Resource
        # not accessible by integration" (dataaxiom/ghcr-cleanup-action#28, 403); it was also
        # seen answering 404 "Package not found." (vlaurin/action-ghcr-prune#4 and #64,
        # bots-house/ghcr-delete-image-action#105): deny_delete_as=404 picks that one
        if self.deny_delete_as == 404:
            return _json(404, {"message": "Package not found.", "documentation_url": GITHUB_DOCS})
        return _json(
            403,
            {"message": "Resource not accessible by integration", "documentation_url": GITHUB_DOCS},
        )

    def versions(self, repo: str) -> list[dict[str, object]]:
        """Every manifest of `repo` as a package version, newest first (GHCR lists each one,
        platform manifests of an index and untagged ones too)."""
        manifests = self.backend.manifests(repo)
        tags: dict[str, list[str]] = {}
        for tag, (digest, _) in sorted(self.backend.tags(repo).items()):
            tags.setdefault(digest, []).append(tag)
        with self._lock:
            for digest in sorted(manifests, key=lambda d: (manifests[d], d)):
                if (repo, digest) not in self._ids:
                    self._ids[(repo, digest)], self._next_id = self._next_id, self._next_id + 1
        package = repo.split("/", 1)[1]
        base = f"{self.url}/{'orgs' if self.owner_kind == 'org' else 'users'}/{self.owner}/packages/container/{quote(package, safe='')}"
        html = f"https://github.com/{'orgs' if self.owner_kind == 'org' else 'users'}/{self.owner}/packages/container"
        found = []
        for digest, mtime in manifests.items():
            vid = self._ids[(repo, digest)]
            found.append({
                "id": vid,
                "name": digest,
                "url": f"{base}/versions/{vid}",
                "package_html_url": f"{html}/package/{package}",
                "created_at": _iso(mtime),
                "updated_at": _iso(mtime),
                "html_url": f"{html}/{package}/{vid}",
                "metadata": {"package_type": "container", "container": {"tags": tags.get(digest, [])}},
            })  # fmt: skip
        return sorted(found, key=lambda v: (v["created_at"], v["id"]), reverse=True)

    def _list(self, path: str, repo: str, query: dict[str, str], perms: set[str]) -> Answer:
        if "read:packages" not in perms:
            return _json(
                403,
                {
                    "message": "Resource not accessible by integration",
                    "documentation_url": GITHUB_DOCS,
                },
            )
        if repo not in self.backend.repositories():
            return _json(404, {"message": "Package not found.", "documentation_url": GITHUB_DOCS})
        # state: "active" (default) or "deleted"; deleted versions are not kept here
        versions = [] if query.get("state") == "deleted" else self.versions(repo)
        per_page = _int(query.get("per_page"), 30, high=100)  # default 30, max 100 (the docs)
        page = _int(query.get("page"), 1)
        last = max(1, -(-len(versions) // per_page))
        return _json(
            200,
            _page(list(versions), page, per_page),
            _github_links(self.url + path, query, page, last),
        )

    def _delete(self, repo: str, version_id: int, perms: set[str]) -> Answer:
        if "delete:packages" not in perms:  # the docs: read:packages and delete:packages
            return self._denied()
        versions = self.versions(repo) if repo in self.backend.repositories() else []
        chosen = next((v for v in versions if v["id"] == version_id), None)
        if chosen is None:
            return _json(404, {"message": "Package not found.", "documentation_url": GITHUB_DOCS})
        refusal = _last_version_refusal(chosen, versions)
        if refusal is not None:
            return _json(400, {"message": refusal, "documentation_url": GITHUB_DOCS})
        self.backend.delete_manifest(repo, str(chosen["name"]))
        return Answer(204)


def _tags_of(version: Mapping[str, object]) -> list[str]:
    return list(version["metadata"]["container"]["tags"])  # type: ignore[index]


def _last_version_refusal(
    chosen: Mapping[str, object], versions: list[dict[str, object]]
) -> str | None:
    """GitHub refuses to delete a package's last version, and its last tagged version, with 400:
    "You cannot delete the last version of a package. You must delete the package instead."
    (SmartsquareGmbH/delete-old-packages#33, actions/delete-package-versions#231) and "You
    cannot delete the last tagged version of a package. You must delete the package instead."
    (kairos-io/kairos#4723 and #4724, verified against api.github.com; posit-dev/positron#15764)."""
    if len(versions) == 1:
        return (
            "You cannot delete the last version of a package. You must delete the package instead."
        )
    if _tags_of(chosen) and sum(1 for v in versions if _tags_of(v)) == 1:
        return "You cannot delete the last tagged version of a package. You must delete the package instead."
    return None


def _github_links(url: str, query: dict[str, str], page: int, last: int) -> dict[str, str]:
    """The Link header as GitHub sends it: prev/next/last/first, each only where it applies
    (docs.github.com/rest/using-the-rest-api/using-pagination-in-the-rest-api); none when
    everything fits on one page."""
    if last == 1:
        return {}

    def at(n: int) -> str:
        return f"<{url}?{urlencode(query | {'page': str(n)})}>"

    links = []
    if page > 1:
        links.append(f'{at(page - 1)}; rel="prev"')
    if page < last:
        links += [f'{at(page + 1)}; rel="next"', f'{at(last)}; rel="last"']
    if page > 1:
        links.append(f'{at(1)}; rel="first"')
    return {"Link": ", ".join(links)}


def start_github(
    registry: Registry, *, owner: str, owner_kind: str, tokens: Tokens, deny_delete_as: int = 403
) -> GithubEmulation:
    """GHCR and GitHub's REST API for `owner` (an "org" or a "user"); `tokens` maps each token to
    its permissions ("read:packages", "delete:packages"). `.url` is the REST API's base
    (GITHUB_API_URL) and `.host` the registry's host: the same server."""
    emulation = GithubEmulation(
        registry, owner=owner, owner_kind=owner_kind, tokens=tokens, deny_delete_as=deny_delete_as
    )
    emulation.start()
    return emulation


# --- GitLab --------------------------------------------------------------------------------

# GitLab's abilities, as its policies name them (app/policies/project_policy.rb): Reporter
# reads the registry, Developer deletes a tag (destroy_container_image), Maintainer may also
# delete tags in bulk (admin_container_image; lib/api/project_container_repositories.rb checks
# read_container_image, destroy_container_image and admin_container_image route by route).
GITLAB_ROLES: dict[str, frozenset[str]] = {
    "reporter": frozenset({"read_container_image"}),
    "developer": frozenset({"read_container_image", "destroy_container_image"}),
    "maintainer": frozenset(
        {"read_container_image", "destroy_container_image", "admin_container_image"}
    ),
}
_DURATION = re.compile(
    r"(\d+)\s*(months?|mo|minutes?|min|m|hours?|h|days?|d|weeks?|w|years?|y|seconds?|s)"
)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "mo": 2592000, "y": 31536000}


def gitlab_duration(text: str) -> float:
    """Seconds of "1h", "2d", "1month" (GitLab parses older_than with ChronicDuration)."""
    total = 0.0
    for number, unit in _DURATION.findall(text):
        key = "mo" if unit.startswith("mo") else "m" if unit.startswith("mi") else unit[0]
        total += int(number) * _UNITS[key]
    return total


_NO_ROUTE = Answer(
    404, b'{"error":"404 Not Found"}', {"Content-Type": "application/json"}
)  # Grape's


class GitlabEmulation(Emulation):
    """GitLab's container registry and its REST API (/api/v4) for one project.

    docs.gitlab.com/api/container_registry (doc/api/container_registry.md): list registry
    repositories, list a repository's tags, get one tag's details, delete one tag, delete tags
    in bulk; 20 results a page (doc/api/rest/_index.md, pagination). Registry repository
    GROUP/PROJECT/NAME is repository NAME of project GROUP/PROJECT, GROUP/PROJECT alone the
    project's root repository (name "").
    """

    def __init__(self, registry: Registry, *, project_path: str, project_id: int, tokens: Tokens,
                 job_tokens: Tokens | None = None, registry_deletes: bool = False,
                 bulk_interval: float = 3600.0) -> None:  # fmt: skip
        super().__init__(registry)
        self.project_path, self.project_id = project_path, project_id
        self.tokens, self.job_tokens = dict(tokens), dict(job_tokens or {})
        self.registry_deletes, self.bulk_interval = registry_deletes, bulk_interval
        self.api_url = f"{self.url}/api/v4"
        self._ids: dict[str, int] = {}
        self._bulk_at: dict[int, float] = {}

    def refuse(self, method: str, path: str) -> Answer | None:
        if method == "GET" and path == "/jwt/auth":  # the realm: a token, granting what it may
            return _json(200, {"token": secrets.token_urlsafe(24)})
        m = re.match(r"^/v2/(?P<name>.+)/(?:manifests|blobs)/", path)
        if method != "DELETE" or m is None or self.registry_deletes:
            return None
        # a job token without the registry's delete action (issue 24): distribution's answer to
        # a token that lacks a scope (docs/spec/auth/token.md, "insufficient_scope")
        name = m.group("name")
        challenge = (f'Bearer realm="{self.url}/jwt/auth",service="container_registry",'
                     f'scope="repository:{name}:delete",error="insufficient_scope"')  # fmt: skip
        detail = [{"Type": "repository", "Class": "", "Name": name, "Action": "delete"}]
        return _registry_error(
            401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": challenge}, detail
        )

    def _who(self, headers: Headers) -> set[str] | None:
        """The abilities of the token sent; None for no token or an unknown one. A job token
        "only has access to the container registry of the project that created the pipeline"
        (the docs): job_tokens are this project's."""
        if (token := headers.get("PRIVATE-TOKEN")) is not None:
            return self.tokens.get(token)
        if (token := headers.get("JOB-TOKEN")) is not None:
            return self.job_tokens.get(token)
        bearer = _bearer(headers, ("bearer",))
        return self.tokens.get(bearer) if bearer else None

    def rest(
        self, method: str, path: str, query: Query, headers: Headers, body: Body
    ) -> Answer | None:
        m = re.fullmatch(
            r"/api/v4/projects/([^/]+)/registry/repositories(?:/([^/]+)(/tags(?:/([^/]+))?)?)?",
            path,
        )
        if m is None:
            return None
        project, repo_id, tags_part, tag = m.groups()
        abilities = self._who(headers)
        if (
            abilities is None
        ):  # every API answer without a valid token (doc/api/rest/troubleshooting.md)
            return _json(401, {"message": "401 Unauthorized"})
        if unquote(project) not in {str(self.project_id), self.project_path}:
            return _json(404, {"message": "404 Project Not Found"})
        if "read_container_image" not in abilities:
            return _json(403, {"message": "403 Forbidden"})
        if repo_id is None:
            return self._repositories(path, query) if method == "GET" else _NO_ROUTE
        repo = self._repository(repo_id)
        if repo is None:
            return _json(404, {"message": "404 Not found"})
        if tags_part is None:  # GET / DELETE of a repository itself: not emulated
            return _NO_ROUTE
        if tag is None:
            return self._tags(method, path, repo, query, abilities, body)
        return self._tag(method, repo, unquote(tag), abilities)

    def repositories(self) -> list[dict[str, object]]:
        """The project's registry repositories, each as GitLab lists it."""
        paths = [
            r
            for r in self.backend.repositories()
            if r == self.project_path or r.startswith(self.project_path + "/")
        ]
        for r in paths:
            self._ids.setdefault(r, len(self._ids) + 1)
        found = []
        for r in paths:
            created = min(self.backend.manifests(r).values(), default=None)
            found.append({
                "id": self._ids[r],
                "name": r[len(self.project_path) + 1 :],
                "path": r,
                "project_id": self.project_id,
                "location": f"{self.host}/{r}",
                "created_at": _iso(created),
                "cleanup_policy_started_at": None,
                "status": None,
            })  # fmt: skip
        return sorted(found, key=lambda x: int(str(x["id"])))

    def _repository(self, repo_id: str) -> str | None:
        return next((str(r["path"]) for r in self.repositories() if str(r["id"]) == repo_id), None)

    def _repositories(self, path: str, query: dict[str, str]) -> Answer:
        found = self.repositories()
        for r in found:
            tags = sorted(self.backend.tags(str(r["path"])))
            if query.get("tags") == "true":
                r["tags"] = [self._tag_entry(str(r["path"]), t) for t in tags]
            if query.get("tags_count") == "true":
                r["tags_count"] = len(tags)
        return self._paginated(path, query, found)

    def _tag_entry(self, repo: str, tag: str) -> dict[str, object]:
        return {"name": tag, "path": f"{repo}:{tag}", "location": f"{self.host}/{repo}:{tag}"}

    def _paginated(
        self, path: str, query: dict[str, str], items: list[dict[str, object]]
    ) -> Answer:
        """Offset pagination as GitLab answers it: X-Page, X-Per-Page, X-Next-Page,
        X-Prev-Page, X-Total, X-Total-Pages and a Link header (doc/api/rest/_index.md)."""
        per_page = _int(query.get("per_page"), 20, high=100)
        page = _int(query.get("page"), 1)
        pages = max(1, -(-len(items) // per_page))
        url = f"{self.url}{path}"

        def at(n: int) -> str:
            return f"<{url}?{urlencode(query | {'page': str(n), 'per_page': str(per_page)})}>"

        links = [f'{at(page - 1)}; rel="prev"'] if page > 1 else []
        links += [f'{at(page + 1)}; rel="next"'] if page < pages else []
        links += [f'{at(1)}; rel="first"', f'{at(pages)}; rel="last"']
        headers = {
            "X-Page": str(page), "X-Per-Page": str(per_page), "X-Total": str(len(items)),
            "X-Total-Pages": str(pages), "X-Next-Page": str(page + 1) if page < pages else "",
            "X-Prev-Page": str(page - 1) if page > 1 else "", "Link": ", ".join(links),
        }  # fmt: skip
        return _json(200, _page(list(items), page, per_page), headers)

    def tag_details(self, repo: str, tag: str) -> dict[str, object] | None:
        """GET .../tags/:tag_name: revision is the config's digest, total_size the layers'
        (the docs' example; app/models/container_registry/tag.rb)."""
        found = self.backend.tags(repo).get(tag)
        if found is None:
            return None
        digest, pushed = found
        _, doc = self.backend.manifest(repo, digest)
        config = doc.get("config")
        config_digest = str(config["digest"]) if isinstance(config, dict) else None
        revision = config_digest.split(":", 1)[1] if config_digest else None
        created: str | None = _iso(pushed)
        size: int | None = None
        if config_digest:
            created = str(self.backend.blob_json(repo, config_digest).get("created") or created)
            size = sum(int(str(layer.get("size", 0))) for layer in _list(doc, "layers"))
        return self._tag_entry(repo, tag) | {
            "revision": revision, "short_revision": revision[:9] if revision else None,
            "digest": digest, "created_at": created, "total_size": size,
        }  # fmt: skip

    def _tags(
        self,
        method: str,
        path: str,
        repo: str,
        query: dict[str, str],
        abilities: set[str],
        body: Callable[[], bytes],
    ) -> Answer:
        if method == "GET":
            return self._paginated(
                path, query, [self._tag_entry(repo, t) for t in sorted(self.backend.tags(repo))]
            )
        if method != "DELETE":
            return _json(405, {"message": "405 Method Not Allowed"})
        if "admin_container_image" not in abilities:
            return _json(403, {"message": "403 Forbidden"})
        params = dict(query)
        raw = body()
        if raw:
            try:
                params |= {k: str(v) for k, v in json.loads(raw).items()}
            except ValueError:
                params |= dict(parse_qsl(raw.decode(), keep_blank_values=True))
        if not (params.get("name_regex_delete") or params.get("name_regex")):
            # Grape's message for at_least_one_of (lib/api/project_container_repositories.rb)
            return _json(
                400,
                {
                    "error": "name_regex, name_regex_delete are missing, at least one parameter must be provided"
                },
            )
        repo_id = self._ids[repo]
        now = time.time()
        if now - self._bulk_at.get(repo_id, -1e12) < self.bulk_interval:
            message = "This request has already been made. You can run this at most once an hour for a given container repository"
            return _json(400, {"message": message})
        self._bulk_at[repo_id] = now
        for tag in self.bulk_selection(repo, params, now):
            self.backend.untag(repo, tag)
        # 202: GitLab schedules a background job; the emulation does the work before answering
        return _json(202, "202 Accepted")

    def bulk_selection(self, repo: str, params: Mapping[str, str], now: float) -> list[str]:
        """The tags a bulk delete removes, as the docs list the steps: tags matching
        name_regex_delete and not name_regex_keep (whole-name matches), never `latest`, the
        keep_n newest of them kept, then only those older than older_than."""
        delete = re.compile(params.get("name_regex_delete") or params.get("name_regex") or "")
        keep = re.compile(params["name_regex_keep"]) if params.get("name_regex_keep") else None
        chosen = [
            t
            for t in self.backend.tags(repo)
            if t != "latest" and delete.fullmatch(t) and not (keep and keep.fullmatch(t))
        ]
        created = {t: _timestamp(self.tag_details(repo, t)) for t in chosen}
        chosen.sort(key=lambda t: created[t], reverse=True)
        if params.get("keep_n"):
            chosen = chosen[int(params["keep_n"]) :]
        if params.get("older_than"):
            cutoff = now - gitlab_duration(params["older_than"])
            chosen = [t for t in chosen if created[t] < cutoff]
        return chosen

    def _tag(self, method: str, repo: str, tag: str, abilities: set[str]) -> Answer:
        if method == "GET":
            details = self.tag_details(repo, tag)
            return (
                _json(404, {"message": "404 Tag Not Found"})
                if details is None
                else _json(200, details)
            )
        if method != "DELETE":
            return _json(405, {"message": "405 Method Not Allowed"})
        if "destroy_container_image" not in abilities:
            return _json(403, {"message": "403 Forbidden"})
        if tag not in self.backend.tags(repo):
            return _json(404, {"message": "404 Tag Not Found"})
        self.backend.untag(repo, tag)
        return Answer(200)  # "status :ok", no body (lib/api/project_container_repositories.rb)


def _timestamp(details: Mapping[str, object] | None) -> float:
    text = str((details or {}).get("created_at") or "1970-01-01T00:00:00Z")
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def start_gitlab(registry: Registry, *, project_path: str, project_id: int, tokens: Tokens,
                 job_tokens: Tokens | None = None, registry_deletes: bool = False,
                 bulk_interval: float = 3600.0) -> GitlabEmulation:  # fmt: skip
    """GitLab's registry and REST API for one project. `tokens` (PRIVATE-TOKEN) and
    `job_tokens` (JOB-TOKEN) map a token to its abilities (GITLAB_ROLES has each role's);
    `registry_deletes` lets a manifest DELETE through to the registry. `.api_url` is
    CI_API_V4_URL, `.host` the registry (CI_REGISTRY)."""
    emulation = GitlabEmulation(registry, project_path=project_path, project_id=project_id, tokens=tokens,
                                job_tokens=job_tokens, registry_deletes=registry_deletes, bulk_interval=bulk_interval)  # fmt: skip
    emulation.start()
    return emulation


# --- Docker Hub ----------------------------------------------------------------------------

HUB_ERROR: dict[str, object] = {
    "errinfo": {}
}  # Hub's error bodies: {"message", "errinfo"} (docker/hub-feedback#2398)


class DockerHubEmulation(Emulation):
    """Docker Hub's registry and its Hub API (docs.docker.com/reference/api/hub/latest,
    docker/docs content/reference/api/hub/latest.yaml) for the accounts given.

    Registry repository NAMESPACE/REPOSITORY is that Hub repository. `accounts` maps a user to
    (secret, permissions), the permissions "read", "write" and "delete": a personal access
    token's "Read, Write, Delete" scope against "Read & Write" (docs.docker.com/security/
    access-tokens; a Read & Write token cannot delete).
    """

    def __init__(
        self,
        registry: Registry,
        *,
        accounts: Mapping[str, tuple[str, set[str]]],
        private: bool = False,
    ) -> None:
        super().__init__(registry)
        self.accounts, self.private = dict(accounts), private
        self.api_url = self.url
        self._sessions: dict[str, str] = {}

    def refuse(self, method: str, path: str) -> Answer | None:
        m = _MANIFEST_PATH.match(path)
        if method != "DELETE" or m is None:
            return None
        # "Only untagged or unreferenced manifests can be deleted. If the manifest is still
        # referenced by a tag or another image, the registry will return 403 Forbidden."
        # (docs.docker.com/reference/api/registry/latest, Delete image manifest; docker/docs#24078)
        name, ref = m.group("name"), m.group("ref")
        tagged = {d for d, _ in self.backend.tags(name).values()}
        if ref.startswith("sha256:") and (ref in tagged or ref in self.backend.children(name)):
            return _registry_error(
                403, "DENIED", "the manifest is still referenced by a tag or another image"
            )
        return None

    def rest(
        self, method: str, path: str, query: Query, headers: Headers, body: Body
    ) -> Answer | None:
        if method == "POST" and path.rstrip("/") in {"/v2/users/login", "/v2/auth/token"}:
            return self._login(path.rstrip("/"), body())
        m = re.fullmatch(
            r"/v2/(?:namespaces/([^/]+)/repositories/([^/]+)|repositories/([^/]+)/([^/]+))/tags(?:/([^/]+))?/?",
            path,
        )
        if m is None:
            return None
        namespace, repository = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        repo, tag = f"{namespace}/{repository}", m.group(5)
        user = self._sessions.get(_bearer(headers, ("bearer", "jwt")) or "")
        perms = self.accounts[user][1] if user else set()
        if method == "DELETE" and tag is not None:
            return self._delete(repo, unquote(tag), user, perms)
        if method not in {"GET", "HEAD"}:
            return None
        if self.private and "read" not in perms:
            return _json(
                401 if user is None else 403,
                {"message": "authentication required" if user is None else "access denied"}
                | HUB_ERROR,
            )
        if repo not in self.backend.repositories():
            return _json(404, {"message": "object not found"} | HUB_ERROR)
        if tag is None:
            return self._list(path, repo, query)
        found = self.tag(repo, unquote(tag))
        return (
            _json(404, {"message": "tag not found"} | HUB_ERROR)
            if found is None
            else _json(200, found)
        )

    def _login(self, path: str, raw: bytes) -> Answer:
        """POST /v2/users/login {username, password} -> {"token"} (deprecated, still
        documented) and POST /v2/auth/token {identifier, secret} -> {"access_token"}; either
        is then sent as "Authorization: Bearer" ("JWT" is what older clients send)."""
        try:
            doc = json.loads(raw or b"{}")
        except ValueError:
            doc = {}
        user = str(doc.get("username") if path.endswith("login") else doc.get("identifier"))
        secret = str(doc.get("password") if path.endswith("login") else doc.get("secret"))
        if user not in self.accounts or not secrets.compare_digest(self.accounts[user][0], secret):
            # PostUsersLoginErrorResponse: {"detail": ...}
            return _json(401, {"detail": "Incorrect authentication credentials"})
        claims = (
            base64.urlsafe_b64encode(json.dumps({"sub": user, "iat": int(time.time())}).encode())
            .decode()
            .rstrip("=")
        )
        token = f"eyJhbGciOiJIUzI1NiJ9.{claims}.{secrets.token_urlsafe(24)}"
        self._sessions[token] = user
        return _json(200, {"token": token} if path.endswith("login") else {"access_token": token})

    def tag(self, repo: str, tag: str) -> dict[str, object] | None:
        """One tag as the Hub API's `tag` schema has it (images: one per platform)."""
        found = self.backend.tags(repo).get(tag)
        if found is None:
            return None
        digest, pushed = found
        media_type, doc = self.backend.manifest(repo, digest)
        images = [self._image(repo, str(d["digest"]), pushed) for d in _list(doc, "manifests")] or [
            self._image(repo, digest, pushed)
        ]
        return {
            "creator": 1, "id": abs(hash((repo, tag))) % 10**8, "images": images,
            "last_updated": _iso(pushed), "last_updater": 1, "last_updater_username": repo.split("/", 1)[0],
            "name": tag, "repository": abs(hash(repo)) % 10**6, "full_size": sum(int(str(i["size"])) for i in images),
            "v2": True, "tag_status": "active", "tag_last_pulled": None, "tag_last_pushed": _iso(pushed),
            "media_type": media_type, "content_type": "image", "digest": digest,
        }  # fmt: skip

    def _image(self, repo: str, digest: str, pushed: float) -> dict[str, object]:
        _, doc = self.backend.manifest(repo, digest)
        config: dict[str, object] = {}
        if isinstance(doc.get("config"), dict):
            config = self.backend.blob_json(repo, str(doc["config"]["digest"]))  # type: ignore[index]
        return {
            "architecture": config.get("architecture"), "os": config.get("os"), "variant": config.get("variant"),
            "features": None, "os_features": None, "os_version": config.get("os.version"), "digest": digest,
            "size": sum(int(str(layer.get("size", 0))) for layer in _list(doc, "layers")),
            "status": "active", "last_pulled": None, "last_pushed": _iso(pushed),
        }  # fmt: skip

    def _list(self, path: str, repo: str, query: dict[str, str]) -> Answer:
        """{count, next, previous, results}: page_size defaults to 10, max 100 (ListRepositoryTags);
        newest push first, or `ordering` by name / last_updated."""
        tags = self.backend.tags(repo)
        ordering = query.get("ordering", "-last_updated")
        by_name = ordering.lstrip("-") == "name"
        names = sorted(
            tags,
            key=lambda t: (0.0 if by_name else tags[t][1], t),
            reverse=ordering.startswith("-"),
        )
        size = _int(query.get("page_size"), 10, high=100)
        page = _int(query.get("page"), 1)
        if (page - 1) * size >= max(len(names), 1):
            return _json(404, {"message": "object not found"} | HUB_ERROR)

        def at(n: int) -> str | None:
            more = n >= 1 and (n - 1) * size < len(names)
            return (
                f"{self.url}{path}?{urlencode(query | {'page': str(n), 'page_size': str(size)})}"
                if more
                else None
            )

        results = [self.tag(repo, t) for t in _page(list(names), page, size)]  # type: ignore[arg-type]
        return _json(
            200,
            {
                "count": len(names),
                "next": at(page + 1),
                "previous": at(page - 1),
                "results": results,
            },
        )

    def _delete(self, repo: str, tag: str, user: str | None, perms: set[str]) -> Answer:
        """DELETE a tag, 204, only that tag (the image and its other tags stay): the Hub API's
        tag delete (docker/hub-feedback#1759: "delete tag from Hub API DELETE
        hub.docker.com/v2/repositories/{repo}/tags/{tag}", with a login's token)."""
        if user is None:
            return _json(401, {"message": "authentication required"} | HUB_ERROR)
        if "delete" not in perms:
            return _json(403, {"message": "access denied: insufficient scope"} | HUB_ERROR)
        if tag not in self.backend.tags(repo):
            return _json(404, {"message": "tag not found"} | HUB_ERROR)
        self.backend.untag(repo, tag)
        return Answer(204)


def start_dockerhub(
    registry: Registry, *, accounts: Mapping[str, tuple[str, set[str]]], private: bool = False
) -> DockerHubEmulation:
    """Docker Hub's registry and Hub API; `.api_url` stands for https://hub.docker.com and
    `.host` for the registry (registry-1.docker.io)."""
    emulation = DockerHubEmulation(registry, accounts=accounts, private=private)
    emulation.start()
    return emulation
