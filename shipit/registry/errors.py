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
