"""The images a build started from, and the digests they were resolved to.

The names come from the Dockerfile (dockerfile.py); each builder then says which digest each
one had: the SDK engine by the daemon's image inspect right after each platform's build
(`RepoDigests` of the image's repository, and its `Id`), buildx from BuildKit's progress
(`FROM NAME@DIGEST` for every image it pulled), else from the builder's daemon the same way.
An image known only locally (never pushed or pulled) has no registry digest. Podman fills
`RepoDigests` for images that never were in a registry (a digest of the manifest it would
write), so on Podman they are not read at all: a base has a digest only when its name pins one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipit.plan import BuildSettings
from shipit.stages.build.dockerfile import base_images

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True, kw_only=True)
class BaseImage:
    """An image the build started from (`FROM`, `COPY --from`), as far as it was resolved."""

    name: str  # as the Dockerfile names it, normalised (docker.io/library/alpine:3.19)
    digest: str | None = None  # the registry digest the build used (index or manifest)
    image_id: str | None = None  # the daemon's id for it (its config digest), when local


def dockerfile_bases(
    settings: BuildSettings,
    args: Mapping[str, str],
    *,
    automatic: Mapping[str, str],
    buildkit: bool,
) -> tuple[str, ...]:
    """The base images the build's Dockerfile names (see dockerfile.py); none when it cannot
    be read (the build itself says why)."""
    path = Path(settings.context) / settings.dockerfile
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ()
    return base_images(text, args, automatic=automatic, target=settings.target, buildkit=buildkit)


def normalize_ref(name: str) -> str:
    """An image reference in full: `alpine` is `docker.io/library/alpine:latest`; a digest
    reference keeps its digest and drops any tag."""
    repository, at, digest = name.partition("@")
    last = repository.rpartition("/")[2]
    tag = ""
    if ":" in last:
        repository, _, tag = repository.rpartition(":")
    first, slash, rest = repository.partition("/")
    if not slash or not ("." in first or ":" in first or first == "localhost"):
        repository = f"docker.io/{repository}"
        first, _, rest = repository.partition("/")
    if first in ("docker.io", "index.docker.io") and "/" not in rest:
        repository = f"docker.io/library/{rest}"
    if at:
        return f"{repository}@{digest}"
    return f"{repository}:{tag or 'latest'}"


def base_from_inspect(
    name: str, inspected: Mapping[str, Any] | None, *, repo_digests: bool = True
) -> BaseImage:
    """What a daemon's image inspect says of a base image: the registry digest of its
    repository (RepoDigests, unless `repo_digests` is false: Podman's are invented) and its
    id; a name already holding a digest keeps that one."""
    full = normalize_ref(name)
    pinned = full.partition("@")[2] or None
    if inspected is None:
        return BaseImage(name=full, digest=pinned)
    repository = full.partition("@")[0]
    if not pinned:
        repository = repository.rpartition(":")[0]  # the tag goes: RepoDigests have none
    digest = pinned
    for entry in (inspected.get("RepoDigests") or []) if repo_digests else []:
        if not isinstance(entry, str) or "@" not in entry:
            continue
        entry_repository, _, entry_digest = normalize_ref(entry).partition("@")
        if entry_repository == repository and _DIGEST.fullmatch(entry_digest):
            digest = digest or entry_digest
    image_id = inspected.get("Id")
    return BaseImage(
        name=full, digest=digest, image_id=image_id if isinstance(image_id, str) else None
    )


def resolve_bases(
    names: tuple[str, ...],
    platform: str | None,
    resolved: Mapping[tuple[str | None, str], str],
    inspect: Callable[[str], Mapping[str, Any] | None],
) -> tuple[BaseImage, ...]:
    """Each base image with the digest the build resolved it to (`resolved`, by platform or
    for any platform, keyed by normalised name), else what `inspect` of it says."""
    found = []
    for name in names:
        full = normalize_ref(name)
        digest = resolved.get((platform, full)) or resolved.get((None, full))
        if digest is not None:
            found.append(BaseImage(name=full, digest=digest))
        else:
            found.append(base_from_inspect(name, inspect(name)))
    return tuple(found)
