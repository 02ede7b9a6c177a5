"""`RegistryError`, and how a registry's answer or a failed exchange becomes one.

Every failure names the registry host and, where there is something to do, says what (give
credentials, grant push access, trust the CA, check the host name...). Messages carry no
password or token, and no URL query string (upload states and signed storage URLs hold
secrets of their own).
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Iterator
from typing import Literal

import requests
import urllib3.exceptions

from shipit.registry.endpoint import Credentials
from shipit.registry.retry import is_retryable_status

ErrorKind = Literal[
    "dns", "connect", "tls", "auth", "denied", "not_found", "protocol", "server", "unsupported"
]

_URL_QUERY_RE = re.compile(r"(https?://[^\s?'\"]+)\?[^\s'\")]*")


class RegistryError(Exception):
    """A registry failed or refused; `kind` says how, the message says what to do next.

    kind: "dns", "connect", "tls", "auth" (401), "denied" (403), "not_found", "protocol" (the
    registry answered something this client cannot use), "server" (5xx or 429 after retries),
    "unsupported" (the registry does not do this at all, such as deletes turned off).
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


def redact(text: str) -> str:
    """`text` without the query strings of URLs (upload states, signed storage URLs)."""
    return _URL_QUERY_RE.sub(r"\1?…", text)


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


def error_detail(response: requests.Response) -> str:
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


def response_error(
    response: requests.Response, what: str, *, host: str, credentials: Credentials | None
) -> RegistryError:
    """The error for an unexpected answer to `what`, saying what to do next."""
    status = response.status_code
    detail = error_detail(response)
    answered = registry_answer_error(status, detail, what, host=host)
    if answered is not None:
        return answered
    kind: ErrorKind
    if status == 401:
        kind = "auth"
        if credentials is None:
            message = (
                f"{host} asks for credentials for {what} (401{detail}): give this "
                "registry a username and a password (password_env)"
            )
        else:
            message = (
                f"{host} did not accept the credentials of {credentials.username!r} "
                f"for {what} (401{detail}): check the username and the password or token, "
                "and that they may push to this repository"
            )
    elif status in (403, 405):
        kind = "denied"
        who = repr(credentials.username) if credentials else "an anonymous client"
        message = (
            f"{host} denied {what} to {who} ({status}{detail}): grant push access "
            "to the repository, or check its name and namespace"
        )
    elif status == 404:
        kind = "not_found"
        message = f"{host} has no {what} (404{detail})"
    elif is_retryable_status(status):
        kind = "server"
        message = (
            f"{host} failed {what}: {status} {response.reason}{detail}; "
            "try again later or check the registry's health"
        )
    else:
        kind = "protocol"
        message = f"{host} answered {status} {response.reason} to {what}{detail}"
    return RegistryError(message, host=host, kind=kind, status=status)


def exchange_error(
    exc: BaseException, *, host: str, api_host: str, timeout: float
) -> tuple[RegistryError, bool]:
    """The RegistryError for a failed exchange, and whether trying again may help."""
    causes = list(_causes(exc))
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
            f"cannot resolve {api_host}: check the registry's host name and this machine's DNS"
        )
        return RegistryError(message, host=host, kind="dns"), transient
    if isinstance(exc, requests.Timeout):
        message = f"{host} did not answer within {timeout:g}s"
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


# What hosted registries answer where the plain status would mislead (docs/registries.md, "Registry
# compatibility"); read from the answer itself, never from the host name.
_IMMUTABLE_RE = re.compile(r"\bTAG_INVALID\b|\bimmutable\b", re.IGNORECASE)
_RATE_LIMIT_RE = re.compile(r"rate.?limit|TOOMANYREQUESTS", re.IGNORECASE)


def says_rate_limited(status: int, text: str) -> bool:
    """A 403 (GitHub's secondary rate limit, sigstore/cosign#3434) or 429 whose body says
    "rate limit": worth waiting and trying again, not a missing permission."""
    return status == 429 or (status == 403 and _RATE_LIMIT_RE.search(text) is not None)


def registry_answer_error(
    status: int, detail: str, what: str, *, host: str
) -> RegistryError | None:
    """The error for an answer whose code says more than its status, or None.

    - 404 NAME_UNKNOWN: the repository does not exist, and this registry does not create
      repositories on push (Amazon ECR: regclient#869, aws/containers-roadmap#853);
    - 400 TAG_INVALID (ECR), 412 (Harbor's immutable tag middleware), or a 403/409 that says
      "immutable": the tag exists and may not be moved (aws/containers-roadmap#862,
      goharbor/harbor#9427);
    - 413 to a manifest: over the size the registry takes (opencontainers/distribution-spec#293);
    - a 403 that says "rate limit" (GitHub's secondary rate limit): not a permission problem.
    """
    said = f"{status}{detail}"
    if status == 404 and "NAME_UNKNOWN" in detail:
        return RegistryError(
            f"{host} has no repository for {what} ({said}): create the repository first; "
            "this registry does not create repositories on push (Amazon ECR: "
            "`aws ecr create-repository --repository-name NAME`, or a repository creation "
            "template for create-on-push)",
            host=host,
            kind="not_found",
            status=status,
        )
    immutable = (status == 400 and "TAG_INVALID" in detail) or status == 412
    if immutable or (status in (403, 409) and _IMMUTABLE_RE.search(detail)):
        return RegistryError(
            f"{host} refused {what}: the tag exists already and the repository's tags are "
            f"immutable ({said}): publish under a new tag (a new version), or delete the tag or "
            "exclude it from the immutability rule in the registry's settings",
            host=host,
            kind="denied",
            status=status,
        )
    if status == 413 and "manifest" in what:
        return RegistryError(
            f"{host} refused {what} as too large ({said}): registries need only take manifests "
            "up to 4 MiB; publish fewer platforms or layers in one manifest, or smaller "
            "annotations",
            host=host,
            kind="unsupported",
            status=status,
        )
    if status == 403 and _RATE_LIMIT_RE.search(detail):
        return RegistryError(
            f"{host} is rate limiting {what} ({said}): wait and run again, or authenticate "
            "for a higher limit",
            host=host,
            kind="server",
            status=status,
        )
    return None
