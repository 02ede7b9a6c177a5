"""Asking the Sigstore services whether they answer, before anything is built: plain GETs
through `requests` with short timeouts, through the proxy cosign would use, trusting the CAs
cosign trusts.

A probe proves that a service answers HTTP (any status below 500), not that it would accept
an upload: a preflight writes nothing to a transparency log. The read paths asked are the
services' own: Rekor v1 `GET /api/v1/log`, Rekor v2 `GET /checkpoint` (C2SP tlog-tiles),
a timestamp authority `GET <url>/certchain` (sigstore/timestamp-authority README), Fulcio
`GET /api/v2/configuration` (Fulcio's OpenAPI).

cosign is a Go program: it takes HTTPS_PROXY for https:// and HTTP_PROXY for http:// URLs
(either case), skips hosts NO_PROXY names, and never proxies localhost or a loopback address
(golang.org/x/net/http/httpproxy). `proxy_for` does the same with the run's environment, not
this process's, and SSL_CERT_FILE names the CA bundle for both.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import requests

from shipit.registry.tls import SharedTLSAdapter
from shipit.stages.sign.child import system_ca_file
from shipit.stages.sign.services import SIGNING_CONFIG_TARGET, Service, TufRepo

TIMEOUT: Final = (5.0, 10.0)  # seconds to connect, seconds to wait for a reply
_PATHS: Final = {("rekor", 1): "/api/v1/log", ("rekor", 2): "/checkpoint"}
_PATHS_BY_KIND: Final = {"tsa": "/certchain", "fulcio": "/api/v2/configuration"}


class ProbeError(Exception):
    """A service did not answer; the message says how, in a few words."""


class Http:
    """GETs with the run's proxies and CAs, short timeouts and no retries."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.session = requests.Session()
        self.session.mount("https://", SharedTLSAdapter())  # the run's TLS context: tls.py
        self.session.trust_env = False  # the run's environment, not this process's
        ca_file = system_ca_file(env)
        self.verify: str | bool = str(ca_file) if ca_file else True

    def close(self) -> None:
        self.session.close()

    def get(self, url: str, headers: Mapping[str, str] | None = None) -> requests.Response:
        proxy = proxy_for(url, self.env)
        try:
            return self.session.get(
                url,
                headers=dict(headers or {}),
                proxies={"http": proxy, "https": proxy} if proxy else {},
                verify=self.verify,
                timeout=TIMEOUT,
                allow_redirects=True,
            )
        except requests.RequestException as exc:
            raise ProbeError(describe(exc, proxy)) from None


def proxy_for(url: str, env: Mapping[str, str]) -> str | None:
    """The proxy a Go program takes for `url` from `env`, None for a direct connection."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if not host or host == "localhost" or _is_loopback_ip(host):
        return None
    name = "HTTPS_PROXY" if parts.scheme == "https" else "HTTP_PROXY"
    proxy = env.get(name) or env.get(name.lower())
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if not proxy or _bypassed(host, port, env.get("NO_PROXY") or env.get("no_proxy") or ""):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def _bypassed(host: str, port: int, no_proxy: str) -> bool:
    """NO_PROXY names the host: `*`, an IP or CIDR, `name` (itself and its subdomains),
    `.name` or `*.name` (subdomains only), each optionally with `:port`."""
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if entry == "*":
            return True
        if "/" in entry:
            try:
                if _ip(host) in ipaddress.ip_network(entry, strict=False):
                    return True
            except (ValueError, TypeError):
                pass
            continue
        name, entry_port = _split_host_port(entry)
        if not name or (entry_port and entry_port != str(port)):
            continue
        if _ip(name) is not None:
            if _ip(name) == _ip(host):
                return True
            continue
        name = name.removeprefix("*")
        if host.endswith(name if name.startswith(".") else "." + name) or host == name:
            return True
    return False


def _split_host_port(entry: str) -> tuple[str, str]:
    if entry.startswith("["):
        close = entry.find("]")
        rest = entry[close + 1 :]
        return entry[1:close], rest[1:] if rest.startswith(":") else ""
    if entry.count(":") == 1:
        name, _, port = entry.partition(":")
        return name, port
    return entry, ""


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _is_loopback_ip(host: str) -> bool:
    found = _ip(host)
    return found is not None and found.is_loopback


def shown_proxy(proxy: str) -> str:
    """A proxy URL without its user and password."""
    parts = urlsplit(proxy)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=netloc).geturl()


def describe(exc: requests.RequestException, proxy: str | None) -> str:
    """What went wrong, in a few words (requests' own text repeats the whole URL twice)."""
    through = f" through the proxy {shown_proxy(proxy)}" if proxy else ""
    text = str(exc)
    if isinstance(exc, requests.exceptions.ProxyError):
        return f"the proxy {shown_proxy(proxy or '')} did not connect: {_cause(text)}"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return f"no connection within {TIMEOUT[0]:.0f} s{through}"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return f"no reply within {TIMEOUT[1]:.0f} s{through}"
    if isinstance(exc, requests.exceptions.SSLError):
        return f"TLS failed{through}: {_cause(text)}"
    return f"{_cause(text)}{through}"


def _cause(text: str) -> str:
    for words in (
        "Connection refused",
        "Name or service not known",
        "Temporary failure in name resolution",
        "No route to host",
        "Network is unreachable",
        "certificate verify failed",
        "Connection reset by peer",
        "Tunnel connection failed",
    ):
        if words in text:
            return words[0].lower() + words[1:]
    return text.rsplit("(Caused by ", 1)[-1].rstrip(")")[:200]


# -- the services --------------------------------------------------------------------------------


def probe_service(http: Http, service: Service) -> None:
    """The service answers HTTP, or ProbeError."""
    path = _PATHS.get((service.kind, service.api_version)) or _PATHS_BY_KIND.get(service.kind, "")
    response = http.get(service.url + path)
    response.close()
    if response.status_code >= 500:
        raise ProbeError(f"HTTP {response.status_code} for {service.url + path}")


# -- the TUF repository ----------------------------------------------------------------------------


def tuf_signing_config(http: Http, repo: TufRepo) -> Mapping[str, Any] | None:
    """The repository's signing config, found the way a TUF client walks to a target
    (timestamp.json, then the snapshot and targets it names, then the target by hash) but
    without checking signatures: only to learn which services cosign will ask, and cosign
    checks what it uses itself. ProbeError when the repository does not answer or lacks the
    signing config; None when its metadata is not shaped as expected (so the services
    cannot be known)."""
    timestamp = _fetch_json(http, repo.mirror, ["timestamp.json"])
    try:
        snapshot_version = int(timestamp["signed"]["meta"]["snapshot.json"]["version"])
        snapshot = _fetch_json(
            http, repo.mirror, [f"{snapshot_version}.snapshot.json", "snapshot.json"]
        )
        targets_version = int(snapshot["signed"]["meta"]["targets.json"]["version"])
        targets = _fetch_json(
            http, repo.mirror, [f"{targets_version}.targets.json", "targets.json"]
        )
        signed = targets["signed"]
        entry = signed["targets"].get(SIGNING_CONFIG_TARGET)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if entry is None:
        if signed.get("delegations"):
            return None  # a delegated role may hold it; cosign will look there
        raise ProbeError(f"its targets hold no {SIGNING_CONFIG_TARGET}")
    try:
        digest = str(entry["hashes"]["sha256"])
    except (KeyError, TypeError):
        return None
    names = [f"targets/{digest}.{SIGNING_CONFIG_TARGET}", f"targets/{SIGNING_CONFIG_TARGET}"]
    document = _fetch_json(http, repo.mirror, names)
    return document if isinstance(document, Mapping) else None


def _fetch_json(http: Http, mirror: str, names: list[str]) -> Any:
    """The first of `names` the repository has, as JSON; ProbeError when none is there."""
    for name in names:
        if mirror.startswith("file://"):
            path = Path(unquote(urlsplit(mirror).path)) / name
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise ProbeError(f"cannot read {path}: {exc.strerror}") from None
        else:
            response = http.get(f"{mirror}/{name}")
            if response.status_code == 404:
                continue
            if response.status_code != 200:
                raise ProbeError(f"HTTP {response.status_code} for {mirror}/{name}")
            text = response.text
        try:
            return json.loads(text)
        except ValueError:
            raise ProbeError(f"{mirror}/{name} is not JSON") from None
    raise ProbeError(f"it has no {names[0]} (is {mirror} a TUF repository?)")


# -- the OIDC token --------------------------------------------------------------------------------


def github_token(http: Http, env: Mapping[str, str]) -> str:
    """The token cosign will get from the GitHub Actions runner (audience `sigstore`, as
    cosign asks: pkg/providers/github/github.go), or ProbeError."""
    url = env.get("ACTIONS_ID_TOKEN_REQUEST_URL", "") + "&audience=sigstore"
    request_token = env.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "")
    response = http.get(url, headers={"Authorization": f"bearer {request_token}"})
    if response.status_code != 200:
        raise ProbeError(f"the runner's token service answered HTTP {response.status_code}")
    try:
        value = response.json()["value"]
    except (ValueError, KeyError, TypeError):
        raise ProbeError("the runner's token service sent no token") from None
    if not isinstance(value, str) or not value:
        raise ProbeError("the runner's token service sent no token")
    return value


def token_problem(token: str, *, now: float) -> str | None:
    """Why an OIDC token cannot be used (not a JWT, expired), or None. The signature is not
    checked: Fulcio does that."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        return "it is not a JWT (three base64url parts joined by dots)"
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return "its payload is not base64url-encoded JSON"
    expires = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(expires, int | float) and expires <= now:
        return f"it expired {now - expires:.0f} s ago"
    return None


def token_audience(token: str) -> list[str]:
    """The token's `aud` claim as a list (empty when it cannot be read)."""
    try:
        payload = token.strip().split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return []
    audience = claims.get("aud") if isinstance(claims, dict) else None
    if isinstance(audience, str):
        return [audience]
    return [a for a in audience if isinstance(a, str)] if isinstance(audience, list) else []
