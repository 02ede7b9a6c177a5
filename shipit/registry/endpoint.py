"""Which registry to talk to, and as whom: `Endpoint` and `Credentials`.

An endpoint is a registry host as users write it ("ghcr.io", "127.0.0.1:5000", "docker.io"),
with Docker Hub's two quirks (its API is served by registry-1.docker.io, and its single-name
repositories live in `library/`), the CA file that verifies it and whether it is `insecure`.
Which schemes to try follows the Docker daemon's rule: HTTPS, and plain HTTP as a fallback only
for loopback hosts or registries marked `insecure`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

DOCKER_HUB_HOSTS: Final = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
DOCKER_HUB_API_HOST: Final = "registry-1.docker.io"

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")


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
