"""How shipit proves who it is to a registry: the bearer token dance, or basic auth.

A registry says how it wants to be spoken to in a 401's `WWW-Authenticate` header (RFC 7235,
parsed here with quoted commas and all). With a bearer challenge the client asks the token
service named in `realm` for a token per set of scopes ("repository:NAME:pull,push"), sending
the credentials as basic auth (Docker's token specification, distribution's
docs/spec/auth/token.md), and caches each token until shortly before it expires. One token per
scope set is fetched at a time: parallel requests that need the same one wait for it.

Each request asks for the scopes it needs. A 401 names, in its challenge's `scope` (several
space-separated, or the parameter repeated), what the registry wants: the client asks for
exactly that and tries once more. A token service grants the intersection of what was asked
and what the account may do, without complaint, so a registry's `error="insufficient_scope"`
for scopes the client already asked for is a missing permission, not a wrong password: the
request is not tried again, and `errors.response_error` names the scope. With a basic challenge
the credentials go along with every request. Credentials go over plain HTTP only to loopback
or `insecure` registries.
"""

from __future__ import annotations

import base64
import functools
import re
import threading
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
            name, value = param.group(1).lower(), param.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            if name == "scope" and name in params:  # repeated: every scope counts
                value = f"{params[name]} {value}"
            params[name] = value
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
    return tuple(sorted({s for entry in scope for s in entry.split()}))


def challenge_scopes(challenge: Challenge) -> tuple[str, ...]:
    """The scopes a challenge names (`scope="a b"`, or repeated), as a cache key."""
    return _scope_key([challenge.params.get("scope", "")])


def _actions(scopes: Iterable[str]) -> dict[tuple[str, str], set[str]]:
    """(type, name) -> actions, from scopes like `repository:team/app:pull,push`."""
    found: dict[tuple[str, str], set[str]] = {}
    for scope in scopes:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        found.setdefault((kind, name), set()).update(a for a in actions.split(",") if a)
    return found


def covers(asked: Iterable[str], wanted: Iterable[str]) -> bool:
    """Whether the scopes `asked` for include every action of every scope `wanted`."""
    have = _actions(asked)
    return all(
        actions <= have.get(resource, set()) or "*" in have.get(resource, set())
        for resource, actions in _actions(wanted).items()
    )


def _needs(scope: str) -> str:
    """`push on team/app and pull on team/base`, from the scopes of a challenge."""
    parts = [
        f"{', '.join(sorted(actions))} on {name}" if kind == "repository" else f"{kind} {name}"
        for (kind, name), actions in sorted(_actions(scope.split()).items())
    ]
    return " and ".join(parts) or "the permission"


def missing_scope(response: requests.Response) -> str | None:
    """The scopes a registry says the request lacked (`error="insufficient_scope"`), if so."""
    for challenge in parse_www_authenticate(response.headers.get("WWW-Authenticate", "")):
        if challenge.scheme == "bearer" and challenge.params.get("error") == "insufficient_scope":
            return " ".join(challenge_scopes(challenge)) or "a scope it does not name"
    return None


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
        self._fetching: dict[tuple[str, ...], threading.Lock] = {}  # one fetch per scope set

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
    ) -> tuple[str, ...] | None:
        """Learn from a 401 how to authenticate: the scopes to send the request again with,
        or None if there is nothing new to try (then the 401 stands)."""
        challenges = parse_www_authenticate(response.headers.get("WWW-Authenticate", ""))
        credentials = self.endpoint.credentials
        for challenge in challenges:
            if challenge.scheme == "bearer" and "realm" in challenge.params:
                wanted = challenge_scopes(challenge) or _scope_key(scope)
                refused = sent.removeprefix("Bearer ") if sent else None
                if (
                    challenge.params.get("error") == "insufficient_scope"
                    and refused is not None
                    and covers(_scope_key(scope), wanted)
                ):
                    return None  # it was asked for and not granted: a missing permission
                with self._lock:
                    self._bearer = challenge
                self._token(challenge, wanted, refused=refused)
                return wanted
        for challenge in challenges:
            if challenge.scheme == "basic" and credentials is not None:
                if self._basic and sent is not None:
                    return None  # the credentials were sent and refused
                self._basic = True
                return scope
        return None

    def _error_for(self, response: requests.Response, what: str) -> RegistryError:
        """A registry's `insufficient_scope` is a missing permission, named with its scope and
        the account, never "wrong credentials"; anything else as `Transport` says."""
        scope = missing_scope(response) if response.status_code == 401 else None
        if scope is None:
            return super()._error_for(response, what)
        credentials = self.endpoint.credentials
        needs = _needs(scope)
        said = f"401 insufficient_scope for {scope}{error_detail(response)}"
        if credentials is None:
            told = (
                f"an anonymous client may not do it ({said}): give this registry credentials"
                f" that may {needs}"
            )
        else:
            told = (
                f"the account {credentials.username!r} may not do it ({said}); the credentials"
                f" were accepted, a permission is missing: grant the account {needs}"
            )
        return RegistryError(
            f"{self.host} refused {what}: {told}",
            host=self.host,
            kind="denied",
            status=401,
        )

    def _token(
        self, challenge: Challenge, scope: tuple[str, ...], *, refused: str | None = None
    ) -> str:
        """A token for `scope`: the cached one unless it expired or is the one `refused`.
        Parallel callers for one scope set wait for a single fetch."""
        key = _scope_key(scope)
        with self._lock:
            fetching = self._fetching.setdefault(key, threading.Lock())
        with fetching:
            with self._lock:
                cached = self._tokens.get(key)
            if cached is not None and cached.value != refused and cached.expires > time.monotonic():
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
