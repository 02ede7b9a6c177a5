"""One HTTP exchange with a registry, and the retries around it.

`Transport` is the bottom layer of the `Registry` client: one `requests` session per registry
(its CA file or `insecure`, a shipit User-Agent, a pool big enough for parallel uploads, the
run's TLS context for its trust setting: `tls`), an
exchange that is logged at debug level without credentials or query strings, and retries of
transient failures with the waits `retry` computes. Each retry is announced through `on_retry`
(the caller shows it with the registry's name) or, without one, the log. Authentication, the
scheme and the API calls are the layers above (`auth`, `door`, `manifests`, `blobs`).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
import requests.adapters
import requests.auth
import urllib3.exceptions

from shipit import __version__
from shipit.registry.endpoint import Endpoint
from shipit.registry.errors import (
    RegistryError,
    exchange_error,
    redact,
    response_error,
    says_rate_limited,
)
from shipit.registry.retry import is_retryable_status, parse_retry_after, retry_delay
from shipit.registry.tls import SharedTLSAdapter

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Options:
    """How patient a `Registry` is: retries per request, backoff and timeout in seconds."""

    retries: int
    backoff: float
    timeout: float
    on_retry: Callable[[str], None] | None

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff < 0 or self.timeout <= 0:
            raise ValueError("retries and backoff must be >= 0 and timeout > 0")


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _may_pass(response: requests.Response) -> bool:
    """429 and most 5xx (see `retry`), and a 403 whose body says it is a rate limit (GitHub's
    secondary rate limit, sigstore/cosign#3434), not a missing permission. Reading the body
    of a 403 keeps it for whoever reads the answer next."""
    if response.status_code == 403:
        return says_rate_limited(403, response.content[:2000].decode("utf-8", "replace"))
    return is_retryable_status(response.status_code)


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


class Transport:
    """The session with one registry host: sending, retrying, and naming what went wrong."""

    def __init__(self, endpoint: Endpoint, options: Options) -> None:
        self.endpoint = endpoint
        self.host = endpoint.host
        self._retries = options.retries
        self._backoff = options.backoff
        self._timeout = options.timeout
        self._on_retry = options.on_retry
        self._verify: bool | str = True
        if endpoint.insecure:
            self._verify = False
        elif endpoint.ca_file is not None:
            self._verify = str(endpoint.ca_file)
        self._session = requests.Session()
        adapter = SharedTLSAdapter(pool_connections=4, pool_maxsize=16)  # one TLS context
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        self._session.headers["User-Agent"] = f"shipit/{__version__}"
        self._lock = threading.Lock()  # guards what the layers above learn: scheme, tokens

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
        """`send()` up to `tries` times while it fails in a way that may pass (see `retry`)."""
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
                if not _may_pass(response) or attempt + 1 >= tries:
                    return response
                reason = f"{response.status_code} {response.reason}"
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                response.close()
            self._wait_to_retry(
                attempt, tries - 1, f"{self.host}: {what} failed ({reason});", retry_after
            )
            attempt += 1

    def _wait_to_retry(
        self, attempt: int, of: int, said: str, retry_after: float | None = None
    ) -> None:
        """Announce retry `attempt` + 1 of `of` after `said`, then wait the backoff for it."""
        delay = retry_delay(attempt, backoff=self._backoff, retry_after=retry_after)
        self._notify_retry(f"{said} retry {attempt + 1}/{of} in {delay:.1f}s")
        _sleep(delay)

    def _notify_retry(self, message: str) -> None:
        if self._on_retry is not None:
            self._on_retry(message)  # the caller shows it, with the registry's name
        else:
            log.info("%s", message)

    def _protocol(self, message: str, status: int | None = None) -> RegistryError:
        return RegistryError(message, host=self.host, kind="protocol", status=status)

    def _error_for(self, response: requests.Response, what: str) -> RegistryError:
        """The error for an unexpected answer, saying what to do next."""
        return response_error(response, what, host=self.host, credentials=self.endpoint.credentials)

    def _transport_error(self, exc: BaseException) -> tuple[RegistryError, bool]:
        """The RegistryError for a failed exchange, and whether trying again may help."""
        return exchange_error(
            exc, host=self.host, api_host=self.endpoint.api_host, timeout=self._timeout
        )
