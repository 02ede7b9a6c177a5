"""How shipit proves who it is to a registry: the bearer token dance, or basic auth.

A registry says how it wants to be spoken to in a 401's `WWW-Authenticate` header (RFC 7235,
parsed here with quoted commas and all). With a bearer challenge the client asks the token
service named in `realm` for a token per scope ("repository:NAME:pull,push"), sending the
credentials as basic auth, and caches each token until shortly before it expires; a token a
registry refuses is fetched again once. With a basic challenge the credentials go along with
every request. Credentials go over plain HTTP only to loopback or `insecure` registries.
"""

from __future__ import annotations

import base64
import functools
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

import requests

from shipit.registry.endpoint import Credentials, Endpoint, is_loopback_host
from shipit.registry.errors import RegistryError, error_detail, redact
from shipit.registry.transport import Options, Transport

MAX_TOKEN_LIFETIME: Final = 3600.0
TOKEN_MARGIN: Final = 10.0

_TCHAR = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_SCHEME_RE = re.compile(rf"[\s,]*({_TCHAR})(?=\s|,|$)")
_PARAM_RE = re.compile(rf'\s*({_TCHAR})\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)\s*,?')


@dataclass(frozen=True)
class Challenge:
    """One challenge of a `WWW-Authenticate` header: scheme (lower case) and parameters."""

    scheme: str
    params: Mapping[str, str]


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


def pull_scope(repository: str) -> str:
    """The token scope that reads `repository`."""
    return f"repository:{repository}:pull"


def push_scope(repository: str) -> str:
    """The token scope that reads and writes `repository`."""
    return f"repository:{repository}:pull,push"


def delete_scope(repository: str) -> str:
    """The token scope that deletes in `repository` (distribution asks for the `delete` action
    on DELETE requests: registry/handlers/app.go, appendAccessRecords)."""
    return f"repository:{repository}:delete"


def _scope_key(scope: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(scope)))


def _basic_header(credentials: Credentials) -> str:
    pair = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


@dataclass(frozen=True)
class _Token:
    value: str = field(repr=False)
    expires: float


class Authenticating(Transport):
    """`Transport` plus what the registry asked for: a bearer challenge or basic credentials."""

    def __init__(self, endpoint: Endpoint, options: Options) -> None:
        super().__init__(endpoint, options)
        self._bearer: Challenge | None = None
        self._basic = False
        self._tokens: dict[tuple[str, ...], _Token] = {}

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
                    f"({response.status_code}{error_detail(response)}): check the username "
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
