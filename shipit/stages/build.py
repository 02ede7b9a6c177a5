"""The build stage: one image from its plan, through a builder behind a small interface.

The builder used today drives the Docker SDK, which speaks the classic builder API, not
BuildKit: no `RUN --mount`, no `--secret`, no multi-platform image in one build. A
`docker buildx` builder can take its place later by implementing `Builder`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from shipit.docker_api import BuildRequest, Daemon, DaemonError, StreamError
from shipit.errors import StageError
from shipit.log import Console, counted
from shipit.plan import ImagePlan


@dataclass(frozen=True, kw_only=True)
class BuiltImage:
    image_id: str  # sha256:... of the image config
    local_ref: str  # the name it was built as, in the daemon


class Builder(Protocol):
    def build(self, image: ImagePlan, console: Console) -> BuiltImage: ...


class SdkBuilder:
    """Builds with the Docker SDK (docker-py) against the daemon `Daemon` talks to."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def build(self, image: ImagePlan, console: Console) -> BuiltImage:
        local_ref = local_name(image)
        settings = image.build
        request = BuildRequest(
            context=Path(settings.context),
            dockerfile=settings.dockerfile,
            tag=local_ref,
            target=settings.target,
            platform=settings.platform,
            build_args=settings.build_args,
            labels=settings.labels,
            pull=settings.pull,
            cache_from=settings.cache_from,
        )
        with console.group(f"build {image.name} {image.version.text}"):
            try:
                image_id = self.daemon.build(request, _build_log(console))
            except StreamError as exc:
                where = f"{exc.step} failed" if exc.step else "failed"
                raise StageError("build", f"image {image.name}: {where}: {exc}") from None
            except DaemonError as exc:
                raise StageError("build", f"image {image.name}: {exc}") from None
            for ref in image.refs:
                repository, _, tag = ref.rpartition(":")
                self.daemon.tag(image_id, repository, tag)
            tagged = counted(len(image.refs), "ref")
            console.write(f"built {image.name} as {image_id[:19]}, tagged {tagged}")
        return BuiltImage(image_id=image_id, local_ref=local_ref)


_NOISE = re.compile(
    r"^( ---> (Running in |Using cache$|[0-9a-f]{12}$|$)|Removing intermediate container )"
)


def _build_log(console: Console) -> Callable[[str], None]:
    """The build's lines; the classic builder's bookkeeping only with -v."""

    def show(line: str) -> None:
        if console.verbosity > 0 or not _NOISE.match(line):
            console.write(line)

    return show


def local_name(image: ImagePlan) -> str:
    """The name the daemon knows the build by: its first full ref, as `docker build -t`."""
    if image.refs:
        return image.refs[0]
    return f"{image.name}:{image.tags[0] if image.tags else 'shipit'}"
