"""The documents the registry API moves: media types, digests, `Descriptor` and `Manifest`.

A `Manifest` is kept exactly as a registry stores it (its bytes, media type and digest), so
what is written to one registry is byte for byte what was read or built, and has the same
digest. Its descriptors name the config and layers of an image, or the per-platform manifests
of an index. The checks of tags, digests and references live here too.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_FOREIGN_LAYER: Final = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
INDEX_MEDIA_TYPES: Final = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
IMAGE_MEDIA_TYPES: Final = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
MANIFEST_MEDIA_TYPES: Final = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)

TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})")
_NON_DISTRIBUTABLE = ("foreign", "nondistributable")


@dataclass(frozen=True, kw_only=True)
class Descriptor:
    """A reference from a manifest to a blob or to another manifest."""

    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    platform: str | None = None

    @property
    def distributable(self) -> bool:
        """False for foreign (Windows base) layers that registries never store."""
        foreign = any(word in self.media_type for word in _NON_DISTRIBUTABLE)
        return not (foreign and self.urls)


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """A manifest exactly as a registry stores it: the bytes, their media type and digest."""

    media_type: str
    data: bytes = field(repr=False)
    digest: str

    def __post_init__(self) -> None:
        if not DIGEST_RE.fullmatch(self.digest):
            raise ValueError(f"{self.digest!r} is not a sha256 or sha512 digest")
        if compute_digest(self.data, self.digest.split(":", 1)[0]) != self.digest:
            raise ValueError(f"manifest bytes do not match the digest {self.digest}")

    @classmethod
    def from_bytes(cls, data: bytes, media_type: str | None = None) -> Manifest:
        """The manifest of `data`; the media type defaults to its `mediaType` field."""
        if media_type is None:
            media_type = _document(data).get("mediaType")
            if not isinstance(media_type, str):
                raise ValueError("the manifest has no mediaType; pass media_type")
        return cls(media_type=media_type, data=data, digest=compute_digest(data))

    @property
    def is_index(self) -> bool:
        """A manifest list or OCI index (one manifest per platform)."""
        return self.media_type in INDEX_MEDIA_TYPES

    def children(self) -> tuple[Descriptor, ...]:
        """The manifests an index refers to (empty for an image manifest)."""
        if not self.is_index:
            return ()
        return tuple(_descriptor(d) for d in _list(_document(self.data), "manifests"))

    def blobs(self) -> tuple[Descriptor, ...]:
        """The config and the layers of an image manifest (empty for an index)."""
        if self.is_index:
            return ()
        doc = _document(self.data)
        config = doc.get("config")
        head = (_descriptor(config),) if config is not None else ()
        return head + tuple(_descriptor(d) for d in _list(doc, "layers"))


def compute_digest(data: bytes, algorithm: str = "sha256") -> str:
    """The `algorithm:hex` digest of `data`."""
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _document(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the manifest is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError("the manifest is not a JSON object")
    return doc


def _list(doc: Mapping[str, Any], key: str) -> list[Any]:
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise ValueError(f"the manifest's {key!r} is not a list")
    return value


def _descriptor(value: Any) -> Descriptor:
    if not isinstance(value, dict):
        raise ValueError("a descriptor in the manifest is not an object")
    digest, size, media_type = value.get("digest"), value.get("size"), value.get("mediaType", "")
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise ValueError(f"a descriptor in the manifest has a bad digest: {digest!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"the descriptor of {digest} has a bad size: {size!r}")
    platform = value.get("platform")
    platform_name = None
    if isinstance(platform, dict):
        parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
        platform_name = "/".join(str(p) for p in parts if p)
    urls = value.get("urls") or ()
    return Descriptor(
        media_type=str(media_type),
        digest=digest,
        size=size,
        urls=tuple(str(u) for u in urls),
        platform=platform_name,
    )


def check_digest(digest: str) -> str:
    """`digest` if it is a sha256 or sha512 digest; ValueError if not."""
    if not DIGEST_RE.fullmatch(digest):
        raise ValueError(f"{digest!r} is not a sha256 or sha512 digest")
    return digest


def check_reference(reference: str) -> str:
    """`reference` if it is a valid tag or a digest; ValueError if not."""
    if not (TAG_RE.fullmatch(reference) or DIGEST_RE.fullmatch(reference)):
        raise ValueError(f"{reference!r} is neither a valid tag nor a digest")
    return reference


def repo_ref(repository: str, reference: str) -> str:
    """`repository:tag` or `repository@digest`, for messages."""
    return f"{repository}@{reference}" if ":" in reference else f"{repository}:{reference}"


def short_digest(digest: str) -> str:
    """The first 12 hex digits of a sha256 digest, for messages."""
    return digest[:19]
