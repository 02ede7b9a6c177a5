"""The sign stage's records: what to sign, how, with which cosign, and what came of it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from shipit.registry import is_loopback_host

KMS_SCHEMES: Final = ("awskms://", "gcpkms://", "azurekms://", "hashivault://", "k8s://")
_DIGEST_REF = re.compile(r"(?P<name>[^\s@]+)@(?P<digest>sha256:[0-9a-f]{64})")


@dataclass(frozen=True, kw_only=True)
class SignTarget:
    """One pushed image to sign or verify, with how to reach its registry."""

    ref: str  # "host/repo@sha256:..."; never a tag
    insecure: bool = False  # plain HTTP or unverified TLS allowed for this registry
    ca_file: Path | None = None  # private CA for this registry
    username: str | None = None  # None = the docker config in the environment, or anonymous
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        match = _DIGEST_REF.fullmatch(self.ref)
        if match is None:
            raise ValueError(
                f"{self.ref!r} is not a digest reference (host/repo@sha256:<64 hex>):"
                " shipit signs digests, never tags"
            )
        if ":" in match["name"].rsplit("/", 1)[-1]:
            raise ValueError(f"{self.ref!r} names a tag as well as a digest: sign the digest only")
        if (self.username is None) != (self.password is None):
            raise ValueError(f"credentials for {self.host} need both a username and a password")

    @property
    def host(self) -> str:
        """The registry host, as Docker reads it (no host part means Docker Hub)."""
        name = self.ref.split("@", 1)[0]
        first, _, rest = name.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):
            return first
        return "docker.io"

    @property
    def allows_insecure(self) -> bool:
        """Plain HTTP and unverified TLS are allowed: asked for, or a loopback registry
        without a CA of its own (Docker trusts 127.0.0.0/8 the same way)."""
        return self.insecure or (self.ca_file is None and is_loopback_host(self.host))


@dataclass(frozen=True, kw_only=True)
class SignResult:
    ref: str
    ok: bool
    error: str | None = None
    output: str = field(default="", repr=False, compare=False)  # cosign's stdout, on success


@dataclass(frozen=True, kw_only=True)
class Signer:
    """How to sign, decided by `check_signing` before anything is built."""

    mode: str  # "key" | "keyless"
    key: str | None  # a file path, env://VAR or a KMS URI (mode "key")
    cosign: str  # path of the binary
    major: int  # cosign's major version, 2 or 3 (later majors are handled as 3)


@dataclass(frozen=True, kw_only=True)
class CosignTool:
    path: str
    major: int
    new_bundle_flag: bool  # `cosign sign --new-bundle-format` exists (cosign >= 2.6)
