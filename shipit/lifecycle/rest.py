"""A small client for the vendors' REST APIs that `shipit prune` deletes through.

GitHub's Packages API, GitLab's container registry API and Docker Hub's API are plain JSON
over HTTPS with a token in a header. This is the one place they are spoken to: a session per
API, the token only ever in a header (never in a URL, a log line or an error), transient
failures retried with the registry client's policy (429 and 5xx, `Retry-After` honoured:
`shipit.registry.retry`), and pagination as each vendor does it: a `Link` header with
`rel="next"` (GitHub, GitLab: RFC 8288) or a `next` URL in the body (Docker Hub).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final
from urllib.parse import urljoin, urlsplit

import requests

from shipit import __version__
from shipit.registry.endpoint import is_loopback_host
from shipit.registry.errors import ErrorKind, RegistryError, redact
from shipit.registry.retry import is_retryable_status, parse_retry_after, retry_delay
from shipit.registry.tls import SharedTLSAdapter

_LINK_NEXT = re.compile(r'<([^>]+)>\s*;[^,]*\brel="?next"?')
MAX_PAGES: Final = 1000  # 100 000 versions at 100 a page: more is a loop, not a registry


class ApiError(RegistryError):
    """A vendor API refused or failed: a `RegistryError` whose `host` is the API's, so that
    whatever handles a registry's refusal handles it too; `status` None: no answer."""

    def __init__(self, message: str, *, host: str = "", status: int | None = None) -> None:
        super().__init__(message, host=host, kind=_kind(status), status=status)


def _kind(status: int | None) -> ErrorKind:
    if status is None:
        return "connect"
    if status == 401:
        return "auth"
    if status == 403:
        return "denied"
    if status == 404:
        return "not_found"
    return "server" if is_retryable_status(status) else "protocol"


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


class Rest:
    """One vendor API at `base` (e.g. https://api.github.com), with `headers` on every call."""

    def __init__(
        self,
        base: str,
        headers: Mapping[str, str],
        *,
        name: str,
        insecure: bool = False,
        retries: int = 3,
        timeout: float = 30,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.base = base.rstrip("/")
        self.name = name  # "GitHub's API at api.github.com", for messages
        url = urlsplit(self.base)
        self.host = url.netloc
        if url.scheme == "http" and not (insecure or is_loopback_host(url.netloc)):
            raise ApiError(
                f"{name} is plain HTTP ({self.base}): shipit sends a token only over HTTPS"
                " (or to loopback, or to a registry marked insecure: true)",
                host=url.netloc,
            )
        self._session = requests.Session()
        self._session.mount("https://", SharedTLSAdapter())  # the run's TLS context: tls.py
        self._session.headers.update({"User-Agent": f"shipit/{__version__}", **headers})
        self._session.trust_env = False  # no ~/.netrc credentials of someone else's
        self._verify = not insecure
        self._retries = retries
        self._timeout = timeout
        self._on_retry = on_retry

    def close(self) -> None:
        self._session.close()

    def authorize(self, value: str) -> None:
        """The `Authorization` header from now on (a token got by logging in)."""
        self._session.headers["Authorization"] = value

    def url(self, path: str) -> str:
        return path if "://" in path else f"{self.base}{path}"

    def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        expect: tuple[int, ...] = (200,),
        what: str,
    ) -> requests.Response:
        """One call, retried while it may pass; an `ApiError` unless its status is expected."""
        url = self.url(path)
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                response = self._session.request(
                    method, url, params=params, json=json, timeout=self._timeout,
                    verify=self._verify, allow_redirects=False,
                )  # fmt: skip
            except requests.RequestException as exc:
                if attempt >= self._retries:
                    raise ApiError(
                        f"{self.name} did not answer {what}: {type(exc).__name__}", host=self.host
                    ) from exc
                reason = type(exc).__name__
            else:
                if response.status_code in expect:
                    return response
                if not is_retryable_status(response.status_code) or attempt >= self._retries:
                    raise self.error(response, what)
                reason = f"{response.status_code} {response.reason}"
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            delay = retry_delay(attempt, backoff=0.5, retry_after=retry_after)
            if self._on_retry is not None:
                self._on_retry(f"{self.name}: {what} failed ({reason}); retry in {delay:.1f}s")
            _sleep(delay)
            attempt += 1

    def error(self, response: requests.Response, what: str) -> ApiError:
        return ApiError(
            f"{self.name} answered {response.status_code} to {what}{_said(response)}",
            host=self.host,
            status=response.status_code,
        )

    def json(self, response: requests.Response, what: str) -> Any:
        """The JSON body of an answer, or an `ApiError` that says it was not JSON."""
        try:
            return response.json()
        except ValueError:
            raise ApiError(
                f"{self.name} answered {what} with something that is not JSON", host=self.host
            ) from None

    def pages(
        self, path: str, *, params: Mapping[str, str] | None = None, what: str
    ) -> Iterator[Any]:
        """Every item of a listing, page after page (`Link: rel="next"`, or a body's `next`)."""
        url: str | None = path
        query: Mapping[str, str] | None = params
        for _ in range(MAX_PAGES):
            if url is None:
                return
            response = self.call("GET", url, params=query, what=what)
            body = self.json(response, what)
            items = body.get("results") if isinstance(body, dict) else body
            if not isinstance(items, list):
                raise ApiError(
                    f"{self.name} answered {what} with something that is not a list",
                    host=self.host,
                )
            yield from items
            query = None  # a next URL carries its own query
            url = _next(response, body)
        raise ApiError(f"{self.name} kept paginating {what} past {MAX_PAGES} pages", host=self.host)


def _next(response: requests.Response, body: Any) -> str | None:
    match = _LINK_NEXT.search(response.headers.get("Link", ""))
    if match is not None:
        return urljoin(response.url, str(match.group(1)))
    following = body.get("next") if isinstance(body, dict) else None
    return urljoin(response.url, following) if isinstance(following, str) and following else None


def _said(response: requests.Response) -> str:
    """`: message` from a vendor's JSON error (`message`, `detail`, `error`), if any."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()[:200]
        return f": {redact(text)}" if text else ""
    if isinstance(body, dict):
        for key in ("message", "detail", "error", "errinfo"):
            value = body.get(key)
            if isinstance(value, str | dict) and value:
                return f": {redact(str(value))[:300]}"
    return ""
