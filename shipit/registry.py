"""A client for the OCI distribution API that copies images between registries byte for byte.

shipit pushes an image through the Docker daemon once, to a seed registry, and copies it from
there to every other registry with this module (DESIGN section 4, step 6): the compressed blobs
and the exact manifest bytes travel unchanged, so every registry stores the same digest, and that
digest is what shipit signs. Inside one registry host, blobs are mounted across repositories
instead of copied.

Why not `oras` (oras-py, the OCI registry client on PyPI): it is made to push local files as
artifacts, not to copy between registries. Its blob upload takes a file path and reads the whole
file into memory, it has no cross-repository mount, and its retry decorator retries only a 500,
with fixed sleeps (no 429/Retry-After, no new upload session after a failure midway). It does
have a per-registry CA and the bearer dance, but those are the small part of the job, so this
module speaks the protocol on `requests` itself.

Every request goes through one door (`Registry._request`): the bearer or basic authentication
dance, retries with bounded exponential backoff and jitter, and a debug log line without
credentials or query strings. Errors are `RegistryError`s whose message names the host and says
what to do next; no password or token ever reaches a message, a log line or a repr.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import functools
import hashlib
import ipaddress
import json
import logging
import random
import re
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlencode, urljoin, urlsplit

import requests
import requests.adapters
import requests.auth
import urllib3.exceptions

from shipit import __version__

log = logging.getLogger(__name__)

OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_FOREIGN_LAYER: Final = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
INDEX_MEDIA_TYPES: Final = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
IMAGE_MEDIA_TYPES: Final = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
MANIFEST_MEDIA_TYPES: Final = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)

DOCKER_HUB_HOSTS: Final = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
DOCKER_HUB_API_HOST: Final = "registry-1.docker.io"

MAX_MANIFEST_BYTES: Final = 4 * 1024 * 1024  # what the distribution registry accepts
STREAM_CHUNK: Final = 1024 * 1024
DEFAULT_UPLOAD_CHUNK: Final = 16 * 1024 * 1024  # for registries that demand chunked uploads
MAX_BACKOFF: Final = 30.0
MAX_RETRY_AFTER: Final = 60.0
MAX_TOKEN_LIFETIME: Final = 3600.0
TOKEN_MARGIN: Final = 10.0
MAX_TAG_PAGES: Final = 1000
MAX_INDEX_DEPTH: Final = 4

ErrorKind = Literal["dns", "connect", "tls", "auth", "denied", "not_found", "protocol", "server"]
BlobAction = Literal["skip", "mount", "copy"]

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST_RE = re.compile(r"(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})")
_TCHAR = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_SCHEME_RE = re.compile(rf"[\s,]*({_TCHAR})(?=\s|,|$)")
_PARAM_RE = re.compile(rf'\s*({_TCHAR})\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)\s*,?')
_URL_QUERY_RE = re.compile(r"(https?://[^\s?'\"]+)\?[^\s'\")]*")
_NON_DISTRIBUTABLE = ("foreign", "nondistributable")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, kw_only=True)
class Credentials:
    """A username and a password or token; the password never shows in a repr or a log."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """One registry host and how to talk to it.

    `host` is what users write: "ghcr.io", "127.0.0.1:5000", "docker.io". `insecure` allows plain
    HTTP and unverified TLS; loopback hosts may speak plain HTTP without it, like the Docker
    daemon allows. `ca_file` is the CA bundle that verifies this registry (and its token service)
    instead of the system's.
    """

    host: str
    insecure: bool = False
    ca_file: Path | None = None
    credentials: Credentials | None = None

    def __post_init__(self) -> None:
        if not self.host or "/" in self.host or any(c.isspace() for c in self.host):
            raise ValueError(f"registry host {self.host!r} is not a host[:port]")

    @property
    def api_host(self) -> str:
        """The host that serves the API: Docker Hub's `docker.io` is `registry-1.docker.io`."""
        return DOCKER_HUB_API_HOST if self.is_docker_hub else self.host

    @property
    def is_docker_hub(self) -> bool:
        return self.host.lower() in DOCKER_HUB_HOSTS

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    def repository(self, name: str) -> str:
        """The repository name the API uses: Docker Hub's official images live in `library/`."""
        if not _REPOSITORY_RE.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid repository name")
        if self.is_docker_hub and "/" not in name:
            return f"library/{name}"
        return name


@dataclass(frozen=True, kw_only=True)
class Descriptor:
    """A reference from a manifest to a blob or to another manifest."""

    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    platform: str | None = None

    @property
    def distributable(self) -> bool:
        """False for foreign (Windows base) layers that registries never store."""
        foreign = any(word in self.media_type for word in _NON_DISTRIBUTABLE)
        return not (foreign and self.urls)


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """A manifest exactly as a registry stores it: the bytes, their media type and digest."""

    media_type: str
    data: bytes = field(repr=False)
    digest: str

    def __post_init__(self) -> None:
        if not _DIGEST_RE.fullmatch(self.digest):
            raise ValueError(f"{self.digest!r} is not a sha256 or sha512 digest")
        if compute_digest(self.data, self.digest.split(":", 1)[0]) != self.digest:
            raise ValueError(f"manifest bytes do not match the digest {self.digest}")

    @classmethod
    def from_bytes(cls, data: bytes, media_type: str | None = None) -> Manifest:
        """The manifest of `data`; the media type defaults to its `mediaType` field."""
        if media_type is None:
            media_type = _document(data).get("mediaType")
            if not isinstance(media_type, str):
                raise ValueError("the manifest has no mediaType; pass media_type")
        return cls(media_type=media_type, data=data, digest=compute_digest(data))

    @property
    def is_index(self) -> bool:
        """A manifest list or OCI index (one manifest per platform)."""
        return self.media_type in INDEX_MEDIA_TYPES

    def children(self) -> tuple[Descriptor, ...]:
        """The manifests an index refers to (empty for an image manifest)."""
        if not self.is_index:
            return ()
        return tuple(_descriptor(d) for d in _list(_document(self.data), "manifests"))

    def blobs(self) -> tuple[Descriptor, ...]:
        """The config and the layers of an image manifest (empty for an index)."""
        if self.is_index:
            return ()
        doc = _document(self.data)
        config = doc.get("config")
        head = (_descriptor(config),) if config is not None else ()
        return head + tuple(_descriptor(d) for d in _list(doc, "layers"))


@dataclass(frozen=True, kw_only=True)
class BlobProgress:
    """One step of a blob's copy: skipped, mounted, or `done` of `size` bytes streamed."""

    digest: str
    size: int
    done: int
    action: BlobAction


@dataclass(frozen=True, kw_only=True)
class CopyResult:
    """What `copy_image` did in the target repository."""

    host: str
    repository: str
    digest: str
    media_type: str
    tags: tuple[str, ...]
    bytes_copied: int
    blobs_copied: tuple[str, ...]
    blobs_mounted: tuple[str, ...]
    blobs_skipped: tuple[str, ...]
    manifests: tuple[str, ...] = ()
    """Child manifests of an index that were written (the index itself is `digest`)."""

    @property
    def ref(self) -> str:
        """`host/repository@digest`, the reference to sign."""
        return f"{self.host}/{self.repository}@{self.digest}"


class RegistryError(Exception):
    """A registry failed or refused; `kind` says how, the message says what to do next.

    kind: "dns", "connect", "tls", "auth" (401), "denied" (403), "not_found", "protocol" (the
    registry answered something this client cannot use), "server" (5xx or 429 after retries).
    """

    def __init__(
        self, message: str, *, host: str, kind: ErrorKind, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.host = host
        self.kind: ErrorKind = kind
        self.status = status

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (
            f"RegistryError(kind={self.kind!r}, host={self.host!r}, status={self.status!r}, "
            f"message={self.message!r})"
        )

    @property
    def transient(self) -> bool:
        """Worth another try: the network or the server failed, not the request."""
        return self.kind in ("connect", "server")


@dataclass(frozen=True)
class Challenge:
    """One challenge of a `WWW-Authenticate` header: scheme (lower case) and parameters."""

    scheme: str
    params: Mapping[str, str]


# --------------------------------------------------------------------------- pure helpers


def compute_digest(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def is_loopback_host(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1, with or without a port."""
    name = host.lower()
    if name.startswith("["):
        name = name[1 : name.find("]")]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def candidate_schemes(endpoint: Endpoint) -> tuple[str, ...]:
    """The schemes to try, in order: HTTPS, then HTTP for insecure or loopback registries."""
    if endpoint.insecure or endpoint.is_loopback:
        return ("https", "http")
    return ("https",)


def parse_www_authenticate(header: str) -> list[Challenge]:
    """The challenges of a `WWW-Authenticate` header (RFC 7235), quoted commas and all."""
    challenges: list[Challenge] = []
    pos = 0
    while pos < len(header):
        scheme = _SCHEME_RE.match(header, pos)
        if scheme is None or scheme.end() == pos:
            break
        pos = scheme.end()
        params: dict[str, str] = {}
        while (param := _PARAM_RE.match(header, pos)) is not None and param.end() > pos:
            value = param.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params[param.group(1).lower()] = value
            pos = param.end()
        challenges.append(Challenge(scheme.group(1).lower(), params))
    return challenges


def is_retryable_status(status: int) -> bool:
    """429 and the 5xx answers that may pass (not 501 Not Implemented or 505)."""
    return status == 429 or (500 <= status <= 599 and status not in (501, 505))


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (seconds or an HTTP date), if usable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_delay(
    attempt: int,
    *,
    backoff: float,
    retry_after: float | None = None,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number `attempt` + 1 (`attempt` counts from 0).

    Exponential backoff with up to 50 % jitter, at most MAX_BACKOFF; a server's Retry-After is
    honoured up to MAX_RETRY_AFTER.
    """
    if retry_after is not None:
        return min(max(retry_after, 0.0), MAX_RETRY_AFTER)
    base = backoff * 2.0 ** min(attempt, 16)
    return min(MAX_BACKOFF, base * (1 + 0.5 * rng()))


def join_location(base_url: str, location: str) -> str:
    """The absolute URL of a `Location` header, which may be relative to the request's URL."""
    return urljoin(base_url, location)


def with_query(url: str, params: Mapping[str, str]) -> str:
    """`url` with `params` appended, keeping a query string it already has byte for byte."""
    extra = urlencode(list(params.items()))
    if not extra:
        return url
    base, _, fragment = url.partition("#")
    separator = "&" if "?" in base else "?"
    if base.endswith(("?", "&")):
        separator = ""
    return f"{base}{separator}{extra}" + (f"#{fragment}" if fragment else "")


def redact(text: str) -> str:
    """`text` without the query strings of URLs (upload states, signed storage URLs)."""
    return _URL_QUERY_RE.sub(r"\1?…", text)


def _document(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the manifest is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError("the manifest is not a JSON object")
    return doc


def _list(doc: Mapping[str, Any], key: str) -> list[Any]:
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise ValueError(f"the manifest's {key!r} is not a list")
    return value


def _descriptor(value: Any) -> Descriptor:
    if not isinstance(value, dict):
        raise ValueError("a descriptor in the manifest is not an object")
    digest, size, media_type = value.get("digest"), value.get("size"), value.get("mediaType", "")
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise ValueError(f"a descriptor in the manifest has a bad digest: {digest!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"the descriptor of {digest} has a bad size: {size!r}")
    platform = value.get("platform")
    platform_name = None
    if isinstance(platform, dict):
        parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
        platform_name = "/".join(str(p) for p in parts if p)
    urls = value.get("urls") or ()
    return Descriptor(
        media_type=str(media_type),
        digest=digest,
        size=size,
        urls=tuple(str(u) for u in urls),
        platform=platform_name,
    )


def _check_digest(digest: str) -> str:
    if not _DIGEST_RE.fullmatch(digest):
        raise ValueError(f"{digest!r} is not a sha256 or sha512 digest")
    return digest


def _check_reference(reference: str) -> str:
    if not (_TAG_RE.fullmatch(reference) or _DIGEST_RE.fullmatch(reference)):
        raise ValueError(f"{reference!r} is neither a valid tag nor a digest")
    return reference


def _ref(repository: str, reference: str) -> str:
    return f"{repository}@{reference}" if ":" in reference else f"{repository}:{reference}"


def _short(digest: str) -> str:
    return digest[:19]


def _pull(repository: str) -> str:
    return f"repository:{repository}:pull"


def _push(repository: str) -> str:
    return f"repository:{repository}:pull,push"


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and everything it wraps (requests -> urllib3 -> socket/ssl), breadth first."""
    queue: list[BaseException] = [exc]
    seen: set[int] = set()
    while queue and len(seen) < 32:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        inner = [getattr(current, "reason", None), current.__cause__, current.__context__]
        inner.extend(current.args)
        queue.extend(e for e in inner if isinstance(e, BaseException))


def _error_detail(response: requests.Response) -> str:
    """`: CODE: message` from a registry's JSON error body, if it has one."""
    try:
        errors = response.json().get("errors")
    except (ValueError, AttributeError, requests.RequestException):
        return ""
    if not isinstance(errors, list):
        return ""
    parts = [
        f"{e.get('code', '?')}: {e.get('message', '')}".strip().rstrip(":")
        for e in errors[:3]
        if isinstance(e, dict)
    ]
    detail = "; ".join(parts)
    return f": {redact(detail)[:300]}" if detail else ""


# --------------------------------------------------------------------------- the client


class _Authorization(requests.auth.AuthBase):
    """Sets (or leaves out) the Authorization header; also keeps ~/.netrc out of our requests."""

    def __init__(self, value: str | None) -> None:
        self.value = value

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if self.value is not None:
            request.headers["Authorization"] = self.value
        return request

    def __repr__(self) -> str:
        return "_Authorization(<redacted>)" if self.value else "_Authorization(None)"


@dataclass(frozen=True)
class _Token:
    value: str = field(repr=False)
    expires: float


class Registry:
    """One registry host, spoken to over the OCI distribution API.

    Safe to share between threads (one `copy_image` per target registry may read the same
    source at once). Repository names are given as users write them; Docker Hub's single-name
    repositories become `library/NAME`.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        retries: int = 3,
        backoff: float = 0.5,
        timeout: float = 30,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        if retries < 0 or backoff < 0 or timeout <= 0:
            raise ValueError("retries and backoff must be >= 0 and timeout > 0")
        self.endpoint = endpoint
        self.host = endpoint.host
        self._retries = retries
        self._backoff = backoff
        self._timeout = timeout
        self._on_retry = on_retry
        self._verify: bool | str = True
        if endpoint.insecure:
            self._verify = False
        elif endpoint.ca_file is not None:
            self._verify = str(endpoint.ca_file)
        self._session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=16)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        self._session.headers["User-Agent"] = f"shipit/{__version__}"
        self._lock = threading.Lock()
        self._scheme: str | None = None
        self._bearer: Challenge | None = None
        self._basic = False
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self._chunk_size: int | None = None  # set when the registry demands chunked uploads
        self._chunk_minimum = 0  # the registry's OCI-Chunk-Min-Length

    def __repr__(self) -> str:
        user = self.endpoint.credentials.username if self.endpoint.credentials else None
        return f"Registry(host={self.host!r}, insecure={self.endpoint.insecure}, user={user!r})"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------------ public API

    def check_push_access(self, repository: str) -> None:
        """Preflight: the registry answers `/v2/` and the credentials may push to `repository`.

        Pushing is proven by opening an upload session (and cancelling it): registries grant
        tokens with less access than asked for without complaint, so a token alone proves little.
        """
        repo = self.endpoint.repository(repository)
        response = self._request("GET", "/v2/", what="the registry API at /v2/")
        with response:
            if response.status_code != 200:
                if response.status_code == 404:
                    raise RegistryError(
                        f"{self.host} does not serve the registry API at /v2/ (404): "
                        "check the registry host name",
                        host=self.host,
                        kind="protocol",
                        status=404,
                    )
                raise self._error_for(response, "access to the registry API at /v2/")
        location = self._start_upload(repo, what=f"a push to {repo}")
        if location is not None:
            self._cancel_upload(location, repo)

    def manifest(self, repository: str, reference: str) -> Manifest:
        """The manifest of `repository:reference` exactly as stored, its digest checked."""
        repo = self.endpoint.repository(repository)
        _check_reference(reference)
        what = f"manifest {_ref(repo, reference)}"
        response = self._request(
            "GET",
            f"/v2/{repo}/manifests/{reference}",
            scope=(_pull(repo),),
            headers={"Accept": ", ".join(MANIFEST_MEDIA_TYPES)},
            stream=True,
            what=what,
        )
        with response:
            if response.status_code != 200:
                raise self._error_for(response, what)
            data = self._read_limited(response, MAX_MANIFEST_BYTES, what)
            header_type = response.headers.get("Content-Type", "").split(";")[0].strip()
            reported = response.headers.get("Docker-Content-Digest")
        return self._manifest_from(data, header_type, reference, reported, what)

    def has_blob(self, repository: str, digest: str) -> bool:
        """Whether `repository` holds the blob `digest`."""
        repo = self.endpoint.repository(repository)
        what = f"blob {_short(_check_digest(digest))} in {repo}"
        return self._exists(f"/v2/{repo}/blobs/{digest}", repo, what)

    def has_manifest(self, repository: str, reference: str) -> bool:
        """Whether `repository` holds a manifest under `reference` (a tag or a digest)."""
        repo = self.endpoint.repository(repository)
        what = f"manifest {_ref(repo, _check_reference(reference))}"
        return self._exists(
            f"/v2/{repo}/manifests/{reference}",
            repo,
            what,
            headers={"Accept": ", ".join(MANIFEST_MEDIA_TYPES)},
        )

    def put_manifest(self, repository: str, reference: str, manifest: Manifest) -> str:
        """Store `manifest`'s bytes under `reference`; returns the digest the registry reports."""
        repo = self.endpoint.repository(repository)
        _check_reference(reference)
        if _DIGEST_RE.fullmatch(reference) and reference != manifest.digest:
            raise ValueError(f"cannot store manifest {manifest.digest} under digest {reference}")
        what = f"the manifest {_ref(repo, reference)}"
        response = self._request(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            scope=(_push(repo),),
            headers={"Content-Type": manifest.media_type},
            data=manifest.data,
            what=f"writing {what}",
        )
        with response:
            if response.status_code not in (200, 201):
                raise self._error_for(response, f"writing {what}")
            reported = response.headers.get("Docker-Content-Digest")
        if reported is not None and reported != manifest.digest:
            raise RegistryError(
                f"{self.host} stored {what} as {reported}, but its bytes are {manifest.digest}: "
                f"the registry rewrote the manifest (does it support {manifest.media_type}?)",
                host=self.host,
                kind="protocol",
            )
        return reported or manifest.digest

    def tags(self, repository: str) -> list[str]:
        """The tags of `repository`, every page of them; [] if the repository does not exist."""
        repo = self.endpoint.repository(repository)
        what = f"the tags of {repo}"
        target = f"/v2/{repo}/tags/list"
        tags: list[str] = []
        for _ in range(MAX_TAG_PAGES):
            response = self._request("GET", target, scope=(_pull(repo),), what=what)
            with response:
                if response.status_code == 404 and not tags:
                    return []
                if response.status_code != 200:
                    raise self._error_for(response, what)
                try:
                    page = response.json().get("tags") or []
                except (ValueError, AttributeError) as exc:
                    raise self._protocol(f"{what} are not a JSON tag list") from exc
                tags.extend(str(t) for t in page)
                following = response.links.get("next", {}).get("url")
                if not following:
                    return tags
                target = join_location(response.url, following)
        raise self._protocol(f"{what} go on for more than {MAX_TAG_PAGES} pages")

    # ------------------------------------------------------------------ blob transfer

    def _start_upload(
        self, repo: str, *, what: str, mount: str | None = None, mount_from: str | None = None
    ) -> str | None:
        """Open an upload session and return its URL, or None when the blob was mounted."""
        target = f"/v2/{repo}/blobs/uploads/"
        scope: tuple[str, ...] = (_push(repo),)
        if mount is not None and mount_from is not None:
            target = with_query(target, {"mount": mount, "from": mount_from})
            scope = (_push(repo), _pull(mount_from))
        response = self._request("POST", target, scope=scope, what=what)
        with response:
            if response.status_code == 201 and mount is not None:
                return None
            if response.status_code != 202:
                raise self._error_for(response, what)
            location = response.headers.get("Location")
            if not location:
                raise self._protocol(f"{self.host} opened an upload without a Location header")
            minimum = response.headers.get("OCI-Chunk-Min-Length", "")
            if minimum.isdigit():  # only matters if we ever send chunks
                self._chunk_minimum = int(minimum)
            return join_location(response.url, location)

    def _cancel_upload(self, url: str, repo: str) -> None:
        try:
            response = self._request(
                "DELETE", url, scope=(_push(repo),), what="cancelling an upload", attempts=1
            )
            response.close()
        except RegistryError as exc:
            log.debug("could not cancel an upload session on %s: %s", self.host, exc)

    def _mount(self, repo: str, digest: str, source_repo: str) -> str | None:
        """Mount `digest` from `source_repo`; None if mounted, else an upload session URL."""
        return self._start_upload(
            repo,
            what=f"mounting blob {_short(digest)} from {source_repo} into {repo}",
            mount=digest,
            mount_from=source_repo,
        )

    def upload_blob(
        self, repository: str, data: bytes | Path, *, known: Descriptor | None = None
    ) -> Descriptor:
        """Store `data` (bytes, or a file streamed from disk) as a blob; skipped if present.

        Returns the blob's descriptor (media type "application/octet-stream": the manifest that
        refers to it names its real type). With `known` (digest and size computed when the
        file was written) the file is not hashed again; its size is still checked, and the
        registry checks the digest before it accepts the blob.
        """
        repo = self.endpoint.repository(repository)
        check = True
        if known is not None and isinstance(data, Path):
            # hashed as it was written: not again for every registry (each checks it anyway)
            blob, source, check = known, _file_chunks(data), False
        elif isinstance(data, Path):
            hasher = hashlib.sha256()
            with data.open("rb") as file:
                while chunk := file.read(STREAM_CHUNK):
                    hasher.update(chunk)
            blob = Descriptor(
                media_type="application/octet-stream",
                digest=f"sha256:{hasher.hexdigest()}",
                size=data.stat().st_size,
            )
            source = _file_chunks(data)
        else:
            blob = Descriptor(
                media_type="application/octet-stream",
                digest=compute_digest(data),
                size=len(data),
            )
            source = _bytes_chunks(data)
        if not self.has_blob(repo, blob.digest):
            origin = f"file {data}" if isinstance(data, Path) else "memory"
            self._upload(repo, blob, source, origin=origin, origin_host=self.host, check=check)
        return blob

    def _upload(
        self,
        repo: str,
        blob: Descriptor,
        source: _BlobSource,
        *,
        origin: str,
        origin_host: str,
        session: str | None = None,
        on_bytes: Callable[[int], None] | None = None,
        check: bool = True,
    ) -> None:
        """Stream `blob` from `source` into `repo`, restarting the upload session on failure.

        `session` is an upload session opened already (by a refused mount). A registry that
        refuses the blob in one request (see `_wants_chunks`) gets it in chunks instead.
        """
        attempt = 0
        while True:
            url = session or self._start_upload(repo, what=f"an upload to {repo}")
            session = None
            if url is None:  # pragma: no cover - only a mount returns None
                return
            try:
                self._upload_once(
                    url,
                    repo,
                    blob,
                    source,
                    origin=(origin, origin_host),
                    on_bytes=on_bytes,
                    check=check,
                )
            except RegistryError as error:
                self._cancel_upload(url, repo)
                what = f"{self.host}: upload of blob {_short(blob.digest)} to {repo}"
                if self._chunk_size is None and _wants_chunks(error):
                    self._chunk_size = max(DEFAULT_UPLOAD_CHUNK, self._chunk_minimum)
                    self._notify_retry(
                        f"{what} was refused in one request ({error.status}); sending it in chunks"
                    )
                    continue
                if not error.transient or attempt >= self._retries:
                    raise
                delay = retry_delay(attempt, backoff=self._backoff)
                self._notify_retry(
                    f"{what} failed ({error.message}); restarting it in a new upload session, "
                    f"retry {attempt + 1}/{self._retries} in {delay:.1f}s"
                )
                _sleep(delay)
                attempt += 1
            else:
                return

    def _upload_once(
        self,
        url: str,
        repo: str,
        blob: Descriptor,
        source: _BlobSource,
        *,
        origin: tuple[str, str],
        on_bytes: Callable[[int], None] | None,
        check: bool = True,
    ) -> None:
        what = f"the upload of blob {_short(blob.digest)} to {repo}"
        with source() as chunks:
            body = _VerifiedBody(
                chunks, blob, origin=origin[0], host=origin[1], on_bytes=on_bytes, check=check
            )
            if self._chunk_size is not None:
                final = self._send_chunks(url, body, repo, what)
                data: _VerifiedBody | bytes = b""
            elif blob.size == 0:
                final, data = url, b""
                list(body)  # checks that the empty blob has the digest of nothing
            else:
                final, data = url, body
            put = self._request(
                "PUT",
                with_query(final, {"digest": blob.digest}),
                scope=(_push(repo),),
                headers={"Content-Type": "application/octet-stream"},
                data=data,
                what=what,
                attempts=1,
            )
        with put:
            if put.status_code not in (201, 204):
                raise self._error_for(put, what)
            reported = put.headers.get("Docker-Content-Digest")
            if reported is not None and reported != blob.digest:
                raise self._protocol(f"{self.host} stored blob {blob.digest} as {reported}")

    def _blob_source(self, repository: str, blob: Descriptor) -> _BlobSource:
        """Opens a streaming GET of `blob` each time it is called (once per upload attempt)."""

        @contextlib.contextmanager
        def chunks() -> Iterator[Iterator[bytes]]:
            with self._open_blob(repository, blob) as response:
                yield response.iter_content(STREAM_CHUNK)

        return chunks

    def _send_chunks(self, url: str, body: _VerifiedBody, repo: str, what: str) -> str:
        """PATCH the blob in chunks of `_chunk_size`; returns the URL to finish the upload."""
        size = self._chunk_size or DEFAULT_UPLOAD_CHUNK
        offset = 0
        for piece in _rechunk(body, size):
            response = self._request(
                "PATCH",
                url,
                scope=(_push(repo),),
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(piece) - 1}",
                },
                data=piece,
                what=what,
                attempts=1,
            )
            with response:
                if response.status_code != 202:
                    raise self._error_for(response, what)
                url = join_location(response.url, response.headers.get("Location") or url)
            offset += len(piece)
        return url

    def _open_blob(self, repository: str, blob: Descriptor) -> requests.Response:
        """A streaming GET of `blob` (the caller closes it)."""
        repo = self._api_repo(repository)
        what = f"blob {_short(blob.digest)} in {repo}"
        response = self._request(
            "GET", f"/v2/{repo}/blobs/{blob.digest}", scope=(_pull(repo),), stream=True, what=what
        )
        if response.status_code != 200:
            with response:
                raise self._error_for(response, what)
        return response

    def _api_repo(self, repository: str) -> str:
        return self.endpoint.repository(repository)

    # ------------------------------------------------------------------ plumbing

    def _exists(
        self, path: str, repo: str, what: str, headers: Mapping[str, str] | None = None
    ) -> bool:
        response = self._request("HEAD", path, scope=(_pull(repo),), headers=headers, what=what)
        with response:
            if response.status_code == 200:
                return True
            if response.status_code == 404:
                return False
            raise self._error_for(response, what)

    def _manifest_from(
        self, data: bytes, header_type: str, reference: str, reported: str | None, what: str
    ) -> Manifest:
        media_type = header_type if header_type in MANIFEST_MEDIA_TYPES else None
        try:
            manifest = Manifest.from_bytes(data, media_type)
        except ValueError as exc:
            raise self._protocol(f"{self.host} sent an unusable {what}: {exc}") from exc
        if manifest.media_type not in MANIFEST_MEDIA_TYPES:
            raise self._protocol(
                f"{what} on {self.host} is a {manifest.media_type}, which shipit cannot copy "
                "(it copies Docker schema 2 and OCI manifests and indexes)"
            )
        expected = [d for d in (reported, reference) if d and _DIGEST_RE.fullmatch(d)]
        for digest in expected:
            algorithm = digest.split(":", 1)[0]
            if compute_digest(data, algorithm) != digest:
                raise self._protocol(
                    f"{what} on {self.host} does not match its digest {digest} "
                    f"(its bytes are {manifest.digest})"
                )
        return manifest

    def _read_limited(self, response: requests.Response, limit: int, what: str) -> bytes:
        chunks: list[bytes] = []
        total = 0
        try:
            for chunk in response.iter_content(64 * 1024):
                total += len(chunk)
                if total > limit:
                    raise self._protocol(f"{what} on {self.host} is larger than {limit} bytes")
                chunks.append(chunk)
        except requests.RequestException as exc:
            raise self._transport_error(exc)[0] from exc
        return b"".join(chunks)

    def _base_url(self) -> str:
        with self._lock:
            if self._scheme is None:
                self._scheme = self._choose_scheme()
                if self.endpoint.insecure:
                    log.warning(
                        "TLS certificates of %s are not verified (insecure: true)", self.host
                    )
                log.debug("%s speaks %s", self.host, self._scheme)
            return f"{self._scheme}://{self.endpoint.api_host}"

    def _choose_scheme(self) -> str:
        """HTTPS, or HTTP where allowed and HTTPS fails, the way the Docker daemon decides."""
        schemes = candidate_schemes(self.endpoint)
        if len(schemes) == 1:
            return schemes[0]
        host = self.endpoint.api_host
        attempt = 0
        while True:
            try:
                with self._send("GET", f"https://{host}/v2/", headers={}, authorization=None) as r:
                    self._learn_challenge(r)
            except requests.RequestException as exc:
                https_error, _ = self._transport_error(exc)
            else:
                return "https"
            try:
                response = self._send("GET", f"http://{host}/v2/", headers={}, authorization=None)
            except requests.RequestException as exc:
                http_error, transient = self._transport_error(exc)
                if not transient or attempt >= self._retries:
                    raise (https_error if https_error.kind == "tls" else http_error) from exc
                delay = retry_delay(attempt, backoff=self._backoff)
                self._notify_retry(
                    f"{self.host}: no answer over HTTPS or HTTP ({http_error.message}); "
                    f"retry {attempt + 1}/{self._retries} in {delay:.1f}s"
                )
                _sleep(delay)
                attempt += 1
                continue
            with response:
                if response.status_code == 400 and b"HTTPS" in response.content[:200]:
                    raise https_error  # an HTTPS server whose certificate we do not trust
                self._learn_challenge(response)
            return "http"

    def _learn_challenge(self, response: requests.Response) -> None:
        """Remember from the probe of /v2/ how the registry wants us to authenticate."""
        if response.status_code != 401:
            return
        for challenge in parse_www_authenticate(response.headers.get("WWW-Authenticate", "")):
            if challenge.scheme == "bearer" and "realm" in challenge.params:
                self._bearer = challenge
                return
            if challenge.scheme == "basic" and self.endpoint.credentials is not None:
                self._basic = True
                return

    def _request(
        self,
        method: str,
        target: str,
        *,
        what: str,
        scope: tuple[str, ...] = (),
        headers: Mapping[str, str] | None = None,
        data: bytes | Iterable[bytes] | None = None,
        stream: bool = False,
        attempts: int | None = None,
    ) -> requests.Response:
        """Send a request with authentication and retries; the caller checks the status.

        `target` is a path under the registry or an absolute URL (an upload Location). A 401 is
        answered once with (fresh) credentials; transient failures are retried up to `retries`
        times. A body that is not bytes cannot be sent twice: it gets one attempt.
        """
        url = target if "://" in target else self._base_url() + target
        replayable = data is None or isinstance(data, bytes)
        # credentials only ever go to the registry itself, not to a Location elsewhere
        own_host = _same_host(url, self.endpoint.api_host)
        tries = attempts if attempts is not None else 1 + self._retries
        if not replayable:
            tries = 1
        answered_challenge = False
        while True:
            authorization = self._authorization(scope) if own_host else None
            send = functools.partial(
                self._send,
                method,
                url,
                headers=dict(headers or {}),
                authorization=authorization,
                data=data,
                stream=stream,
            )
            response = self._retrying(send, tries, what)
            if response.status_code != 401 or answered_challenge or not own_host:
                return response
            if not self._answer_challenge(response, scope, sent=authorization) or not replayable:
                return response
            answered_challenge = True
            response.close()

    def _send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        authorization: str | None,
        data: bytes | Iterable[bytes] | None = None,
        stream: bool = False,
        params: Sequence[tuple[str, str]] | None = None,
    ) -> requests.Response:
        """One HTTP exchange, logged without credentials or query strings."""
        if self._verify is False:
            _silence_insecure_warning(url)
        started = time.monotonic()
        try:
            response = self._session.request(
                method,
                url,
                params=params,
                headers=dict(headers),
                data=data,
                stream=stream,
                timeout=(self._timeout, self._timeout),
                verify=self._verify,
                auth=_Authorization(authorization),
                allow_redirects=True,
            )
        except requests.RequestException as exc:
            log.debug("%s %s -> %s", method, redact(url), type(exc).__name__)
            raise
        log.debug(
            "%s %s -> %d (%.2fs)",
            method,
            redact(url),
            response.status_code,
            time.monotonic() - started,
        )
        return response

    def _retrying(
        self, send: Callable[[], requests.Response], tries: int, what: str
    ) -> requests.Response:
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                response = send()
            except requests.RequestException as exc:
                error, transient = self._transport_error(exc)
                if not transient or attempt + 1 >= tries:
                    raise error from exc
                reason = error.message
            else:
                if not is_retryable_status(response.status_code) or attempt + 1 >= tries:
                    return response
                reason = f"{response.status_code} {response.reason}"
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                response.close()
            delay = retry_delay(attempt, backoff=self._backoff, retry_after=retry_after)
            self._notify_retry(
                f"{self.host}: {what} failed ({reason}); "
                f"retry {attempt + 1}/{tries - 1} in {delay:.1f}s"
            )
            _sleep(delay)
            attempt += 1

    def _notify_retry(self, message: str) -> None:
        if self._on_retry is not None:
            self._on_retry(message)  # the caller shows it, with the registry's name
        else:
            log.info("%s", message)

    # ------------------------------------------------------------------ authentication

    def _authorization(self, scope: tuple[str, ...]) -> str | None:
        """The Authorization header for a request needing `scope`, as far as we know it."""
        credentials = self.endpoint.credentials
        if self._basic and credentials is not None:
            return _basic_header(credentials)
        challenge = self._bearer
        if challenge is None:
            return None
        return f"Bearer {self._token(challenge, scope)}"

    def _answer_challenge(
        self, response: requests.Response, scope: tuple[str, ...], *, sent: str | None
    ) -> bool:
        """Learn from a 401 how to authenticate; False if there is nothing new to try."""
        challenges = parse_www_authenticate(response.headers.get("WWW-Authenticate", ""))
        credentials = self.endpoint.credentials
        for challenge in challenges:
            if challenge.scheme == "bearer" and "realm" in challenge.params:
                with self._lock:
                    self._bearer = challenge
                    self._tokens.pop(_scope_key(scope), None)
                self._token(challenge, scope, fresh=True)
                return True
        for challenge in challenges:
            if challenge.scheme == "basic" and credentials is not None:
                if self._basic and sent is not None:
                    return False  # the credentials were sent and refused
                self._basic = True
                return True
        return False

    def _token(self, challenge: Challenge, scope: tuple[str, ...], *, fresh: bool = False) -> str:
        key = _scope_key(scope)
        with self._lock:
            cached = self._tokens.get(key)
        if cached is not None and not fresh and cached.expires > time.monotonic():
            return cached.value
        token = self._fetch_token(challenge, key)
        with self._lock:
            self._tokens[key] = token
        return token.value

    def _fetch_token(self, challenge: Challenge, scope: tuple[str, ...]) -> _Token:
        realm = challenge.params["realm"]
        credentials = self.endpoint.credentials
        realm_url = urlsplit(realm)
        if realm_url.scheme not in ("https", "http"):
            raise self._protocol(f"{self.host} names an unusable token service: {redact(realm)}")
        plain_ok = self.endpoint.insecure or is_loopback_host(realm_url.netloc)
        if realm_url.scheme == "http" and credentials is not None and not plain_ok:
            raise self._protocol(
                f"{self.host} asks for credentials over plain HTTP ({redact(realm)}); "
                "shipit sends them only over HTTPS unless the registry is insecure: true"
            )
        params = [("service", challenge.params["service"])] if "service" in challenge.params else []
        params += [("scope", s) for s in scope]
        what = f"a token from {realm_url.netloc} for {' '.join(scope) or 'the registry'}"
        send = functools.partial(
            self._send,
            "GET",
            realm,
            headers={},
            authorization=_basic_header(credentials) if credentials else None,
            params=params,
        )
        with self._retrying(send, 1 + self._retries, what) as response:
            if response.status_code in (401, 403):
                user = (
                    f"the credentials of {credentials.username!r}"
                    if credentials
                    else "no credentials"
                )
                raise RegistryError(
                    f"the token service of {self.host} ({realm_url.netloc}) refused {user} "
                    f"({response.status_code}{_error_detail(response)}): check the username "
                    "and the password or token of this registry",
                    host=self.host,
                    kind="auth",
                    status=response.status_code,
                )
            if response.status_code != 200:
                raise self._error_for(response, what)
            try:
                body = response.json()
                value = body.get("token") or body.get("access_token")
                lifetime = float(body.get("expires_in") or 60)
            except (ValueError, AttributeError, TypeError) as exc:
                raise self._protocol(f"{what} is not a JSON token") from exc
        if not isinstance(value, str) or not value:
            raise self._protocol(f"{what} came back without a token")
        lifetime = min(max(lifetime, 0.0), MAX_TOKEN_LIFETIME)
        return _Token(value, time.monotonic() + max(lifetime - TOKEN_MARGIN, lifetime / 2))

    # ------------------------------------------------------------------ errors

    def _protocol(self, message: str, status: int | None = None) -> RegistryError:
        return RegistryError(message, host=self.host, kind="protocol", status=status)

    def _error_for(self, response: requests.Response, what: str) -> RegistryError:
        """The error for an unexpected answer, saying what to do next."""
        status = response.status_code
        detail = _error_detail(response)
        credentials = self.endpoint.credentials
        kind: ErrorKind
        if status == 401:
            kind = "auth"
            if credentials is None:
                message = (
                    f"{self.host} asks for credentials for {what} (401{detail}): give this "
                    "registry a username and a password (password_env)"
                )
            else:
                message = (
                    f"{self.host} did not accept the credentials of {credentials.username!r} "
                    f"for {what} (401{detail}): check the username and the password or token, "
                    "and that they may push to this repository"
                )
        elif status in (403, 405):
            kind = "denied"
            who = repr(credentials.username) if credentials else "an anonymous client"
            message = (
                f"{self.host} denied {what} to {who} ({status}{detail}): grant push access "
                "to the repository, or check its name and namespace"
            )
        elif status == 404:
            kind = "not_found"
            message = f"{self.host} has no {what} (404{detail})"
        elif is_retryable_status(status):
            kind = "server"
            message = (
                f"{self.host} failed {what}: {status} {response.reason}{detail}; "
                "try again later or check the registry's health"
            )
        else:
            kind = "protocol"
            message = f"{self.host} answered {status} {response.reason} to {what}{detail}"
        return RegistryError(message, host=self.host, kind=kind, status=status)

    def _transport_error(self, exc: BaseException) -> tuple[RegistryError, bool]:
        """The RegistryError for a failed exchange, and whether trying again may help."""
        causes = list(_causes(exc))
        host = self.host
        cert = next((c for c in causes if isinstance(c, ssl.SSLCertVerificationError)), None)
        tls = next((c for c in causes if isinstance(c, ssl.SSLError)), None)
        if cert is not None or isinstance(exc, requests.exceptions.SSLError) or tls is not None:
            reason = cert.verify_message if cert is not None else str(tls or exc)
            transient = isinstance(tls, ssl.SSLEOFError | ssl.SSLZeroReturnError)
            message = (
                f"TLS with {host} failed ({redact(str(reason))}): trust its CA with ca_file, "
                "or set insecure: true for a registry you run yourself"
            )
            return RegistryError(message, host=host, kind="tls"), transient
        dns = next((c for c in causes if isinstance(c, socket.gaierror)), None)
        if dns is not None or any(
            isinstance(c, urllib3.exceptions.NameResolutionError) for c in causes
        ):
            transient = dns is not None and dns.errno == socket.EAI_AGAIN
            message = (
                f"cannot resolve {self.endpoint.api_host}: check the registry's host name "
                "and this machine's DNS"
            )
            return RegistryError(message, host=host, kind="dns"), transient
        if isinstance(exc, requests.Timeout):
            message = f"{host} did not answer within {self._timeout:g}s"
            return RegistryError(message, host=host, kind="connect"), True
        if isinstance(exc, requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
            os_error = next((c for c in causes if isinstance(c, OSError) and c.strerror), None)
            reason = (os_error.strerror if os_error else None) or type(exc).__name__
            message = (
                f"cannot talk to {host} ({reason}): check that the registry is up and "
                "reachable from here"
            )
            return RegistryError(message, host=host, kind="connect"), True
        message = f"the request to {host} failed: {redact(str(exc))[:300]}"
        return RegistryError(message, host=host, kind="protocol"), False


def _same_host(url: str, host: str) -> bool:
    """Whether `url` points at `host` (host[:port]), default ports included."""
    target, ours = urlsplit(url), urlsplit(f"//{host}")
    default = 443 if target.scheme == "https" else 80
    return (target.hostname or "") == (ours.hostname or "") and (target.port or default) == (
        ours.port or default
    )


def _wants_chunks(error: RegistryError) -> bool:
    """Whether a refused one-request upload (POST then PUT with the body) may pass in chunks.

    413: a proxy limits the body size. 405/501: no monolithic uploads. DIGEST_INVALID: the
    registry ignored the body (our bytes were checked against the digest before it was sent).
    """
    return error.status in (405, 413, 501) or (
        error.status == 400 and "DIGEST_INVALID" in error.message
    )


def _silence_insecure_warning(url: str) -> None:
    """Keep urllib3's warning per request about unverified TLS quiet, for this host only.

    The user asked for `insecure: true` and we log that once; the filter is re-added each time
    because test runners (and `warnings.catch_warnings`) reset filters behind our back.
    """
    hostname = urlsplit(url).hostname or ""
    warnings.filterwarnings(
        "ignore",
        message=re.escape(f"Unverified HTTPS request is being made to host '{hostname}'"),
        category=urllib3.exceptions.InsecureRequestWarning,
    )


def _scope_key(scope: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(scope)))


def _basic_header(credentials: Credentials) -> str:
    pair = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


class _VerifiedBody:
    """A blob streamed from a source: hashed and counted on the way, and never trusted.

    The last chunk is held back until the whole blob has matched its digest and size, so a
    target never completes an upload of wrong bytes. `len()` gives requests a Content-Length.
    """

    def __init__(
        self,
        chunks: Iterator[bytes],
        blob: Descriptor,
        *,
        origin: str,
        host: str,
        on_bytes: Callable[[int], None] | None,
        check: bool = True,
    ) -> None:
        self._chunks = chunks
        self._blob = blob
        self._origin = origin
        self._host = host
        self._on_bytes = on_bytes
        self._check = check

    def __len__(self) -> int:
        return self._blob.size

    def __iter__(self) -> Iterator[bytes]:
        blob = self._blob
        hasher = hashlib.new(blob.digest.split(":", 1)[0]) if self._check else None
        total = 0
        held = b""
        try:
            for chunk in self._chunks:
                if not chunk:
                    continue
                total += len(chunk)
                if total > blob.size:
                    raise self._mismatch(f"more than its {blob.size} bytes")
                if hasher is not None:
                    hasher.update(chunk)
                if held:
                    yield held
                    self._progress(total - len(chunk))
                held = chunk
        except requests.RequestException as exc:
            raise RegistryError(
                f"reading blob {_short(blob.digest)} from {self._origin} broke off after "
                f"{total} bytes: {type(exc).__name__}",
                host=self._host,
                kind="connect",
            ) from exc
        digest = f"{hasher.name}:{hasher.hexdigest()}" if hasher is not None else blob.digest
        if total != blob.size or digest != blob.digest:
            raise self._mismatch(f"{total} bytes with digest {digest}")
        if held:
            yield held
        self._progress(total)

    def _progress(self, done: int) -> None:
        if self._on_bytes is not None:
            self._on_bytes(done)

    def _mismatch(self, got: str) -> RegistryError:
        return RegistryError(
            f"blob {self._blob.digest} from {self._origin} does not match its descriptor "
            f"({self._blob.size} bytes): got {got}; the source registry's copy is damaged",
            host=self._host,
            kind="protocol",
        )


_BlobSource = Callable[[], contextlib.AbstractContextManager[Iterator[bytes]]]
"""Opens a blob's bytes as chunks, once per upload attempt."""


@contextlib.contextmanager
def _bytes_chunks_cm(data: bytes) -> Iterator[Iterator[bytes]]:
    yield (data[i : i + STREAM_CHUNK] for i in range(0, len(data), STREAM_CHUNK))


def _bytes_chunks(data: bytes) -> _BlobSource:
    return functools.partial(_bytes_chunks_cm, data)


@contextlib.contextmanager
def _file_chunks_cm(path: Path) -> Iterator[Iterator[bytes]]:
    with path.open("rb") as file:
        yield iter(functools.partial(file.read, STREAM_CHUNK), b"")


def _file_chunks(path: Path) -> _BlobSource:
    return functools.partial(_file_chunks_cm, path)


def _rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """`chunks` regrouped into pieces of `size` bytes (the last may be shorter)."""
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


# --------------------------------------------------------------------------- copying images


class _ImageCopy:
    """The state of one `copy_image`: what was copied, mounted and skipped."""

    def __init__(
        self,
        source: Registry,
        source_repo: str,
        target: Registry,
        target_repo: str,
        on_progress: Callable[[BlobProgress], None] | None,
    ) -> None:
        self.source, self.target = source, target
        self.source_repo = source.endpoint.repository(source_repo)
        self.target_repo = target.endpoint.repository(target_repo)
        self.on_progress = on_progress
        self.same_host = source.endpoint.api_host.lower() == target.endpoint.api_host.lower()
        self.seen: set[str] = set()
        self.copied: list[str] = []
        self.mounted: list[str] = []
        self.skipped: list[str] = []
        self.manifests: list[str] = []
        self.bytes_copied = 0

    def image(self, manifest: Manifest, depth: int = 0) -> bool:
        """Copy what `manifest` refers to; True if the target already had the manifest."""
        if depth > MAX_INDEX_DEPTH:
            raise self.source._protocol(f"indexes nest deeper than {MAX_INDEX_DEPTH} levels")
        present = self.target.has_manifest(self.target_repo, manifest.digest)
        if manifest.is_index:
            for child in manifest.children():
                if child.digest in self.seen:
                    continue
                self.seen.add(child.digest)
                child_manifest = self.source.manifest(self.source_repo, child.digest)
                if not self.image(child_manifest, depth + 1):
                    self.target.put_manifest(self.target_repo, child.digest, child_manifest)
                    self.manifests.append(child.digest)
        else:
            for blob in manifest.blobs():
                if present:
                    self._skip(blob)  # a registry stores a manifest only with all its blobs
                else:
                    self.blob(blob)
        return present

    def blob(self, blob: Descriptor) -> None:
        if blob.digest in self.seen:
            return
        if not blob.distributable or self.target.has_blob(self.target_repo, blob.digest):
            self._skip(blob)
            return
        self.seen.add(blob.digest)
        session = None
        if self.same_host and self.source_repo != self.target_repo:
            try:
                session = self.target._mount(self.target_repo, blob.digest, self.source_repo)
            except RegistryError as error:
                if error.kind not in ("auth", "denied"):
                    raise
                # the target's credentials may not read the source repository: copy instead
                log.debug("%s: mount of %s refused: %s", self.target.host, blob.digest, error)
            else:
                if session is None:
                    self.mounted.append(blob.digest)
                    self._progress(blob, blob.size, "mount")
                    return
                log.debug("%s refused to mount %s; copying it", self.target.host, blob.digest)
        self.target._upload(
            self.target_repo,
            blob,
            self.source._blob_source(self.source_repo, blob),
            origin=f"{self.source.host}/{self.source_repo}",
            origin_host=self.source.host,
            session=session,
            on_bytes=lambda done: self._progress(blob, done, "copy"),
        )
        self.copied.append(blob.digest)
        self.bytes_copied += blob.size

    def _skip(self, blob: Descriptor) -> None:
        if blob.digest in self.seen:
            return
        self.seen.add(blob.digest)
        self.skipped.append(blob.digest)
        self._progress(blob, blob.size, "skip")

    def _progress(self, blob: Descriptor, done: int, action: BlobAction) -> None:
        if self.on_progress is not None:
            self.on_progress(
                BlobProgress(digest=blob.digest, size=blob.size, done=done, action=action)
            )


def copy_image(  # noqa: PLR0917 - the push stage's call, positional like a copy(src, dst)
    source: Registry,
    source_repo: str,
    digest: str,
    target: Registry,
    target_repo: str,
    tags: Sequence[str],
    *,
    on_progress: Callable[[BlobProgress], None] | None = None,
) -> CopyResult:
    """Copy the image `source_repo@digest` to `target_repo` byte for byte and tag it.

    Blobs the target has are skipped; inside one registry host they are mounted from
    `source_repo`; otherwise they stream from source to target, checked against their digest
    on the way, never whole in memory. An index's child manifests are copied before the index.
    The manifest is written by digest and then under every tag, with the same bytes, so the
    target reports the same digest as the source.
    """
    _check_digest(digest)
    for tag in tags:
        if not _TAG_RE.fullmatch(tag):
            raise ValueError(f"{tag!r} is not a valid tag")
    manifest = source.manifest(source_repo, digest)
    copy = _ImageCopy(source, source_repo, target, target_repo, on_progress)
    copy.seen.add(digest)
    present = copy.image(manifest)
    if not present:
        target.put_manifest(target_repo, digest, manifest)
    written: list[str] = []
    for tag in dict.fromkeys(tags):
        target.put_manifest(target_repo, tag, manifest)
        written.append(tag)
    return CopyResult(
        host=target.host,
        repository=copy.target_repo,
        digest=manifest.digest,
        media_type=manifest.media_type,
        tags=tuple(written),
        bytes_copied=copy.bytes_copied,
        blobs_copied=tuple(copy.copied),
        blobs_mounted=tuple(copy.mounted),
        blobs_skipped=tuple(copy.skipped),
        manifests=tuple(copy.manifests),
    )
