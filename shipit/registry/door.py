"""The door every registry API call goes through: the scheme, then authentication and retries.

`Door._request` is the one place a call leaves from. The scheme is settled on the first call,
the way the Docker daemon decides: HTTPS, except that a loopback or `insecure` registry is
probed at `/v2/` and spoken to over plain HTTP if HTTPS fails; a probe's 401 also tells how to
authenticate. Each request carries the Authorization header for its scope, a 401 is answered
once with fresh credentials, and transient failures are retried by `Transport`. Credentials
only ever go to the registry's own host, never to an upload `Location` elsewhere (object
storage). The caller checks the status.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping
from urllib.parse import urlencode, urljoin, urlsplit

import requests

from shipit.registry.auth import Authenticating, pull_scope
from shipit.registry.endpoint import Endpoint, candidate_schemes
from shipit.registry.transport import Options

log = logging.getLogger(__name__)


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


def _same_host(url: str, host: str) -> bool:
    """Whether `url` points at `host` (host[:port]), default ports included."""
    target, ours = urlsplit(url), urlsplit(f"//{host}")
    default = 443 if target.scheme == "https" else 80
    return (target.hostname or "") == (ours.hostname or "") and (target.port or default) == (
        ours.port or default
    )


class Door(Authenticating):
    """`Authenticating` plus the scheme, and `_request`: the door of every API call."""

    def __init__(self, endpoint: Endpoint, options: Options) -> None:
        super().__init__(endpoint, options)
        self._scheme: str | None = None

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
                self._wait_to_retry(
                    attempt,
                    self._retries,
                    f"{self.host}: no answer over HTTPS or HTTP ({http_error.message});",
                )
                attempt += 1
                continue
            with response:
                if response.status_code == 400 and b"HTTPS" in response.content[:200]:
                    raise https_error  # an HTTPS server whose certificate we do not trust
                self._learn_challenge(response)
            return "http"

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
        answered once, with a token for the scopes its challenge names (see `auth`), unless
        it says a permission is missing; transient failures are retried up to `retries`
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
            wanted = self._answer_challenge(response, scope, sent=authorization)
            if wanted is None or not replayable:
                return response
            scope = wanted  # exactly what the challenge names
            answered_challenge = True
            response.close()

    def _exists(
        self, path: str, repo: str, what: str, headers: Mapping[str, str] | None = None
    ) -> bool:
        response = self._request(
            "HEAD", path, scope=(pull_scope(repo),), headers=headers, what=what
        )
        with response:
            if response.status_code == 200:
                return True
            if response.status_code == 404:
                return False
            raise self._error_for(response, what)
