"""What a build hands to the rest of the run: one image per platform, wherever it lives.

Every engine yields the same thing: for each platform, either an image loaded into a Docker
daemon (the SDK engine, or buildx's `--load` with the docker driver on the classic image
store) or a manifest in an OCI layout on disk (buildx's `--output type=oci`, any other driver
or the containerd image store). Scanning and pushing work on both kinds alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from shipit.log import Console
from shipit.plan import ImagePlan
from shipit.stages.build.bases import BaseImage


@dataclass(frozen=True, kw_only=True)
class PlatformImage:
    """One platform's image: in a daemon (`image_id`, `local_ref`) or in an OCI layout."""

    platform: str | None  # None: one image for the builder's own platform, not named
    image_id: str | None = None  # the image in the daemon (its config digest on the classic store)
    local_ref: str | None = None  # the name it has there
    docker_host: str | None = None  # the daemon holding it, when not the run's own
    layout: Path | None = None  # the OCI layout holding it
    manifest: str | None = None  # its manifest's digest in the layout
    bases: tuple[BaseImage, ...] = ()  # the images it was built from

    @property
    def label(self) -> str:
        return self.platform or "default platform"


@dataclass(frozen=True, kw_only=True)
class BuiltImage:
    platforms: tuple[PlatformImage, ...]
    layout_digest: str | None = None  # what buildx reported for the whole layout

    @property
    def image_id(self) -> str | None:
        """What the report calls the image: the one image's id, or the build's digest."""
        if len(self.platforms) == 1:
            only = self.platforms[0]
            return only.image_id or only.manifest
        return self.layout_digest


class Builder(Protocol):
    def build(self, image: ImagePlan, console: Console) -> BuiltImage: ...


def platform_slug(platform: str | None) -> str:
    """`linux/arm64/v8` -> `linux-arm64-v8`, for file names and local tags."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", platform or "default")


def local_name(image: ImagePlan, platform: str | None = None) -> str:
    """The name the daemon knows a build by: its first full ref, as `docker build -t`; with
    several platforms, that ref's tag plus the platform (`...:1.2.3-linux-arm64`)."""
    base = (
        image.refs[0] if image.refs else f"{image.name}:{image.tags[0] if image.tags else 'shipit'}"
    )
    if platform is None:
        return base
    repository, _, tag = base.rpartition(":")
    suffix = f"-{platform_slug(platform)}"
    return f"{repository}:{tag[: 128 - len(suffix)]}{suffix}"


def platform_args(platform: str | None) -> dict[str, str]:
    """BuildKit's automatic platform args (TARGETPLATFORM, TARGETOS, TARGETARCH,
    TARGETVARIANT: docs.docker.com/build/building/variables), which the classic builder does
    not set, so a Dockerfile's `ARG TARGETARCH` means the same under both engines."""
    if platform is None:
        return {}
    os_name, arch, *variant = platform.split("/")
    args = {"TARGETPLATFORM": platform, "TARGETOS": os_name, "TARGETARCH": arch}
    if variant:
        args["TARGETVARIANT"] = variant[0]
    return args
